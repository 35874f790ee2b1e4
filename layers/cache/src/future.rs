//! The response future of [`CacheService`](crate::CacheService).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// A boxed future, for misses (they await L2, a coalesced load or the upstream).
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The response future of [`CacheService`](crate::CacheService): ready at once on a hit
    /// (no box, no allocation), the inner future itself when the cache is bypassed, a boxed
    /// future on a miss.
    pub struct ResponseFuture<F: Future, T, E> {
        #[pin]
        state: State<F, T, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F: Future, T, E> {
        Ready { answer: Option<Result<T, E>> },
        Inner { #[pin] fut: F, map: fn(F::Output) -> Result<T, E> },
        Boxed { fut: BoxFuture<Result<T, E>> },
    }
}

impl<F: Future, T, E> ResponseFuture<F, T, E> {
    pub(crate) fn ready(answer: Result<T, E>) -> Self {
        ResponseFuture {
            state: State::Ready {
                answer: Some(answer),
            },
        }
    }

    pub(crate) fn inner(fut: F, map: fn(F::Output) -> Result<T, E>) -> Self {
        ResponseFuture {
            state: State::Inner { fut, map },
        }
    }

    pub(crate) fn boxed(fut: BoxFuture<Result<T, E>>) -> Self {
        ResponseFuture {
            state: State::Boxed { fut },
        }
    }
}

impl<F: Future, T, E> Future for ResponseFuture<F, T, E> {
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Ready { answer } => Poll::Ready(
                answer
                    .take()
                    .expect("ResponseFuture polled after completion"),
            ),
            StateProj::Inner { fut, map } => fut.poll(cx).map(*map),
            StateProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F: Future, T, E> std::fmt::Debug for ResponseFuture<F, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Ready { .. } => "ready",
            State::Inner { .. } => "inner",
            State::Boxed { .. } => "boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
