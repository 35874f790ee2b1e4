//! The Tower service.

use std::task::{Context, Poll};

use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use super::future::ResponseFuture;
use super::{AdaptiveLimiter, Admission};

/// A service that admits a request only while its partition has fewer requests in flight
/// than its adaptive limit ([`AdaptiveLimiter`]).
///
/// Readiness is the inner service's; admission is decided in `call` (axum treats services as
/// always ready), and a refused request is answered at once by the rejection strategy `Rj`
/// ([`OnRejection`]): by default ([`KeepError`]) the service fails with
/// [`ConcurrencyLimited`](super::ConcurrencyLimited), boxed; see
/// [`AdaptiveConcurrencyLayer`](super::AdaptiveConcurrencyLayer) for the others. An error of
/// the inner service counts as a drop.
#[derive(Debug)]
pub struct AdaptiveConcurrency<S, Req, Rj = KeepError> {
    inner: S,
    limiter: AdaptiveLimiter<Req>,
    strategy: Rj,
}

impl<S: Clone, Req, Rj: Clone> Clone for AdaptiveConcurrency<S, Req, Rj> {
    fn clone(&self) -> Self {
        AdaptiveConcurrency {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            strategy: self.strategy.clone(),
        }
    }
}

impl<S, Req> AdaptiveConcurrency<S, Req> {
    /// Wraps `inner`, keeping refusals as errors ([`KeepError`]).
    pub fn new(inner: S, limiter: AdaptiveLimiter<Req>) -> Self {
        AdaptiveConcurrency::with_strategy(inner, limiter, KeepError)
    }
}

impl<S, Req, Rj> AdaptiveConcurrency<S, Req, Rj> {
    pub(crate) fn with_strategy(inner: S, limiter: AdaptiveLimiter<Req>, strategy: Rj) -> Self {
        AdaptiveConcurrency {
            inner,
            limiter,
            strategy,
        }
    }

    /// The limiter.
    pub fn limiter(&self) -> &AdaptiveLimiter<Req> {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, Rj> Service<Req> for AdaptiveConcurrency<S, Req, Rj>
where
    S: Service<Req>,
    Req: 'static,
    Rj: OnRejection<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = Rj::Error;
    type Future = ResponseFuture<S::Future, Req, Rj>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Rj::map_err)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.limiter.admit(&req) {
            Admission::Admitted(permit) => {
                ResponseFuture::inner(self.inner.call(req), Some(permit))
            }
            Admission::Unlimited => ResponseFuture::inner(self.inner.call(req), None),
            Admission::Limited(refusal) => {
                ResponseFuture::ready(self.strategy.reject(&req, refusal))
            }
            Admission::KeyMissing(refusal) => {
                ResponseFuture::ready(self.strategy.reject(&req, refusal))
            }
        }
    }
}
