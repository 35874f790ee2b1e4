//! [`ResponseFuture`]: the response future of [`CircuitBreakerService`](crate::CircuitBreakerService).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use omega_core::reject::OnRejection;
use pin_project_lite::pin_project;

use crate::classify::Classify;
use crate::permit::OwnedPermit;

pin_project! {
    /// The response future of [`CircuitBreakerService`](crate::CircuitBreakerService): the
    /// inner service's future, whose outcome is recorded on the call's permit when it
    /// completes, or the answer to a refused request.
    ///
    /// `F` is the inner future, `C` the classifier, `Rj` the rejection strategy, `Req` the
    /// request type, `T` the response type and `Er` the service's error type.
    pub struct ResponseFuture<F, C, Rj, Req, T, Er> {
        #[pin]
        kind: Kind<F, C, T, Er>,
        _strategy: PhantomData<fn() -> (Rj, Req)>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C, T, Er> {
        Running { #[pin] fut: F, permit: Option<OwnedPermit>, classify: C },
        Ready { result: Option<Result<T, Er>> },
    }
}

impl<F, C, Rj, Req, T, Er> ResponseFuture<F, C, Rj, Req, T, Er> {
    /// The call is admitted (`permit`: by the breaker that guards it, if any).
    #[inline]
    pub(crate) fn running(fut: F, permit: Option<OwnedPermit>, classify: C) -> Self {
        ResponseFuture {
            kind: Kind::Running {
                fut,
                permit,
                classify,
            },
            _strategy: PhantomData,
        }
    }

    /// The call is refused; `result` is the strategy's answer.
    #[inline]
    pub(crate) fn ready(result: Result<T, Er>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                result: Some(result),
            },
            _strategy: PhantomData,
        }
    }
}

impl<F, C, Rj, Req, T, Er> std::fmt::Debug for ResponseFuture<F, C, Rj, Req, T, Er> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, C, Rj, Req, T, E> Future for ResponseFuture<F, C, Rj, Req, T, Rj::Error>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    Rj: OnRejection<Req, T, E>,
{
    type Output = Result<T, Rj::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Running {
                fut,
                permit,
                classify,
            } => {
                let result = std::task::ready!(fut.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record(classify.classify(&result));
                }
                Poll::Ready(result.map_err(Rj::map_err))
            }
            KindProj::Ready { result } => {
                Poll::Ready(result.take().expect("polled after completion"))
            }
        }
    }
}
