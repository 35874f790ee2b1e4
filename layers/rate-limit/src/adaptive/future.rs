//! The response future of [`AdaptiveConcurrency`](super::AdaptiveConcurrency).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::TryFuture;
use omega_core::reject::OnRejection;
use pin_project_lite::pin_project;

use super::partition::{Outcome, Permit};

pin_project! {
    /// The response future of [`AdaptiveConcurrency`](super::AdaptiveConcurrency): the inner
    /// service's future holding the request's slot (freed, with the request's RTT or its
    /// drop, when the inner future ends; freed without a sample when it is dropped before),
    /// or the strategy's answer to a refused request.
    pub struct ResponseFuture<F, Req, Rj>
    where
        F: TryFuture,
        Rj: OnRejection<Req, F::Ok, F::Error>,
    {
        #[pin]
        kind: Kind<F, Req, Rj>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Req, Rj>
    where
        F: TryFuture,
        Rj: OnRejection<Req, F::Ok, F::Error>,
    {
        Inner {
            #[pin]
            future: F,
            permit: Option<Permit>,
            strategy: PhantomData<fn(Req) -> Rj>,
        },
        Answered {
            answer: Option<Result<F::Ok, Rj::Error>>,
        },
    }
}

impl<F, Req, Rj> ResponseFuture<F, Req, Rj>
where
    F: TryFuture,
    Rj: OnRejection<Req, F::Ok, F::Error>,
{
    /// An admitted request (`None`: one the limiter does not count).
    pub(crate) fn inner(future: F, permit: Option<Permit>) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                future,
                permit,
                strategy: PhantomData,
            },
        }
    }

    /// A refused request: the strategy's answer.
    pub(crate) fn ready(answer: Result<F::Ok, Rj::Error>) -> Self {
        ResponseFuture {
            kind: Kind::Answered {
                answer: Some(answer),
            },
        }
    }
}

impl<F, Req, Rj> fmt::Debug for ResponseFuture<F, Req, Rj>
where
    F: TryFuture,
    Rj: OnRejection<Req, F::Ok, F::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, Req, Rj> Future for ResponseFuture<F, Req, Rj>
where
    F: TryFuture,
    Rj: OnRejection<Req, F::Ok, F::Error>,
{
    type Output = Result<F::Ok, Rj::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, permit, .. } => {
                let result = std::task::ready!(future.try_poll(cx));
                if let Some(permit) = permit.take() {
                    // An error, or what the strategy calls a failure (a 5xx answer with
                    // `respond()`), is a drop.
                    permit.finish(if Rj::is_failure(&result) {
                        Outcome::Dropped
                    } else {
                        Outcome::Ok
                    });
                }
                Poll::Ready(result.map_err(Rj::map_err))
            }
            KindProj::Answered { answer } => {
                Poll::Ready(answer.take().expect("polled after completion"))
            }
        }
    }
}
