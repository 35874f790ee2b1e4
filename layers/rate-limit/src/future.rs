//! The response future of [`RateLimit`](crate::RateLimit).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::TryFuture;
use omega_core::reject::OnRejection;
use pin_project_lite::pin_project;

#[cfg(feature = "http")]
use crate::headers::Fields;

/// A decision Redis made: the rest of the request, boxed (it awaits Redis first).
#[cfg(feature = "redis")]
pub(crate) type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit): the inner service's future for
    /// an admitted request, the strategy's answer for a refused one, and with Redis (when the
    /// decision needs a round trip) a boxed future that awaits the decision first.
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
            advice: Advice,
            strategy: PhantomData<fn(Req) -> Rj>,
        },
        Answered {
            answer: Answer<F::Ok, Rj::Error>,
        },
    }
}

/// What an admitted request's response gets besides the inner service's answer.
enum Advice {
    /// Nothing: the strategy sends no fields.
    Nothing,
    /// The `RateLimit` fields, through [`OnRejection::advise`].
    #[cfg(feature = "http")]
    Fields(Fields),
}

/// The answer to a request the inner service does not answer directly.
enum Answer<T, E> {
    /// Ready: the strategy's answer to a refusal.
    Ready(Option<Result<T, E>>),
    /// Redis decides first.
    #[cfg(feature = "redis")]
    Deferred(Boxed<T, E>),
}

impl<F, Req, Rj> ResponseFuture<F, Req, Rj>
where
    F: TryFuture,
    Rj: OnRejection<Req, F::Ok, F::Error>,
{
    fn with(kind: Kind<F, Req, Rj>) -> Self {
        ResponseFuture { kind }
    }

    /// An admitted request: the inner service's response.
    pub(crate) fn inner(future: F) -> Self {
        Self::with(Kind::Inner {
            future,
            advice: Advice::Nothing,
            strategy: PhantomData,
        })
    }

    /// An admitted request whose response carries `fields` ([`OnRejection::advise`]).
    #[cfg(feature = "http")]
    pub(crate) fn advised(future: F, fields: Fields) -> Self {
        Self::with(Kind::Inner {
            future,
            advice: Advice::Fields(fields),
            strategy: PhantomData,
        })
    }

    /// A refused request: the strategy's answer.
    pub(crate) fn ready(result: Result<F::Ok, Rj::Error>) -> Self {
        Self::with(Kind::Answered {
            answer: Answer::Ready(Some(result)),
        })
    }

    /// A request Redis decides.
    #[cfg(feature = "redis")]
    pub(crate) fn deferred(future: Boxed<F::Ok, Rj::Error>) -> Self {
        Self::with(Kind::Answered {
            answer: Answer::Deferred(future),
        })
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, advice, .. } => match advice {
                Advice::Nothing => future.try_poll(cx).map_err(Rj::map_err),
                #[cfg(feature = "http")]
                Advice::Fields(_) => {
                    let mut response =
                        std::task::ready!(future.try_poll(cx)).map_err(Rj::map_err)?;
                    if let Advice::Fields(fields) = std::mem::replace(advice, Advice::Nothing) {
                        Rj::advise(&mut response, |headers| fields.apply(headers));
                    }
                    Poll::Ready(Ok(response))
                }
            },
            KindProj::Answered { answer } => match answer {
                Answer::Ready(result) => {
                    Poll::Ready(result.take().expect("polled after completion"))
                }
                #[cfg(feature = "redis")]
                Answer::Deferred(future) => future.as_mut().poll(cx),
            },
        }
    }
}
