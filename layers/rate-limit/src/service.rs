//! The Tower service.

use std::task::{Context, Poll};

use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::limiter::RateLimiter;
use crate::limiter::settle::{Now, Settled};

/// A service that admits requests only within the limits of a [`RateLimiter`].
///
/// Readiness is the inner service's; admission is decided in `call`, so it works with axum,
/// which treats services as always ready. What a refused request gets is the choice of the
/// rejection strategy `Rj` ([`OnRejection`]): by default ([`KeepError`]) the service fails
/// with [`RateLimited`](crate::RateLimited) or [`KeyMissing`](omega_core::key::KeyMissing),
/// boxed; see [`RateLimitLayer`](crate::RateLimitLayer) for the others.
///
/// Decisions made in this process (every in-memory decision, and lease mode's common case)
/// return the inner service's future in a named future, without a box; a decision that needs
/// Redis boxes the rest of the request.
#[derive(Debug)]
pub struct RateLimit<S, Req, Rj = KeepError> {
    inner: S,
    limiter: RateLimiter<Req>,
    strategy: Rj,
}

impl<S: Clone, Req, Rj: Clone> Clone for RateLimit<S, Req, Rj> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            strategy: self.strategy.clone(),
        }
    }
}

impl<S, Req> RateLimit<S, Req> {
    /// Wraps `inner`, keeping refusals as errors ([`KeepError`]).
    pub fn new(inner: S, limiter: RateLimiter<Req>) -> Self {
        RateLimit::with_strategy(inner, limiter, KeepError)
    }
}

impl<S, Req, Rj> RateLimit<S, Req, Rj> {
    /// Wraps `inner`, answering refusals with `strategy` (the layer's
    /// [`RateLimitLayer::on_rejection`](crate::RateLimitLayer::on_rejection) chooses it).
    pub(crate) fn with_strategy(inner: S, limiter: RateLimiter<Req>, strategy: Rj) -> Self {
        RateLimit {
            inner,
            limiter,
            strategy,
        }
    }

    /// The limiter (for example to change a quota while serving).
    pub fn limiter(&self) -> &RateLimiter<Req> {
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

impl<S, Req, Rj> Service<Req> for RateLimit<S, Req, Rj>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
    Rj: OnRejection<Req, S::Response, S::Error>,
    Rj::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = Rj::Error;
    type Future = ResponseFuture<S::Future, Req, Rj>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Rj::map_err)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Header figures are computed only for a strategy that sends them.
        let advise = cfg!(feature = "http") && Rj::ADVISES;
        match self.limiter.decide_now(&req, advise) {
            Now::Settled(settled) => answer(settled, &mut self.inner, req, &self.strategy),
            #[cfg(feature = "redis")]
            Now::Remote(prepared) => {
                let (limiter, strategy) = (self.limiter.clone(), self.strategy.clone());
                // The instance that was made ready serves this request (tower-service, "Be
                // careful when cloning inner services").
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::deferred(Box::pin(async move {
                    let settled = {
                        let decision = limiter.check_prepared(prepared).await;
                        limiter.settle(&req, &decision, advise)
                    };
                    answer(settled, &mut inner, req, &strategy).await
                }))
            }
        }
    }
}

/// The one place a decided request meets the inner service or the strategy.
fn answer<S, Req, Rj>(
    settled: Settled,
    inner: &mut S,
    req: Req,
    strategy: &Rj,
) -> ResponseFuture<S::Future, Req, Rj>
where
    S: Service<Req>,
    Rj: OnRejection<Req, S::Response, S::Error>,
{
    match settled {
        Settled::Admit => ResponseFuture::inner(inner.call(req)),
        #[cfg(feature = "http")]
        Settled::AdmitWith(fields) => ResponseFuture::advised(inner.call(req), fields),
        Settled::Limited(refusal) => ResponseFuture::ready(strategy.reject(&req, refusal)),
        Settled::KeyMissing(refusal) => ResponseFuture::ready(strategy.reject(&req, refusal)),
        Settled::PeerAddrMissing(refusal) => ResponseFuture::ready(strategy.reject(&req, refusal)),
    }
}
