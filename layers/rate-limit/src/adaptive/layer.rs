//! The Tower layer.

use omega_core::reject::KeepError;
use tower_layer::Layer;

use super::AdaptiveLimiter;
use super::service::AdaptiveConcurrency;

/// Applies an [`AdaptiveLimiter`] to a service. Every service it makes shares the limiter's
/// limits.
///
/// What a refused request gets is the rejection strategy's choice, the same on every Omega
/// Penta layer (and with the same defaults as [`RateLimitLayer`](crate::RateLimitLayer)):
///
/// - by default ([`KeepError`]), the service fails with the refusal, boxed:
///   [`ConcurrencyLimited`](super::ConcurrencyLimited) (or
///   [`KeyMissing`](omega_core::key::KeyMissing) for a request without the partition's key
///   when the limiter refuses those);
/// - `AdaptiveConcurrencyLayer::respond` (feature `http`): an HTTP service answers `503
///   Service Unavailable` itself (a gRPC call: `RESOURCE_EXHAUSTED`) and keeps the inner
///   service's error type;
/// - with [`AdaptiveConcurrencyLayer::on_rejection`], any
///   [`OnRejection`](omega_core::reject::OnRejection) strategy, such as a closure
///   `Fn(&Req, &dyn Refusal) -> Res`.
#[derive(Debug)]
pub struct AdaptiveConcurrencyLayer<Req, Rj = KeepError> {
    limiter: AdaptiveLimiter<Req>,
    strategy: Rj,
}

impl<Req, Rj: Clone> Clone for AdaptiveConcurrencyLayer<Req, Rj> {
    fn clone(&self) -> Self {
        AdaptiveConcurrencyLayer {
            limiter: self.limiter.clone(),
            strategy: self.strategy.clone(),
        }
    }
}

impl<Req> AdaptiveConcurrencyLayer<Req> {
    /// A layer that admits requests within `limiter`'s limits.
    pub fn new(limiter: AdaptiveLimiter<Req>) -> Self {
        AdaptiveConcurrencyLayer {
            limiter,
            strategy: KeepError,
        }
    }
}

impl<Req, Rj> AdaptiveConcurrencyLayer<Req, Rj> {
    /// HTTP services answer refusals themselves ([`Respond`](omega_core::reject::Respond)):
    /// `503`, or a trailers-only gRPC response with `RESOURCE_EXHAUSTED` for a gRPC call
    /// (`400` / `INVALID_ARGUMENT` for a missing key). The inner service's error type is kept,
    /// so the stack works on axum without `HandleErrorLayer`.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use omega_core::key::http::Endpoint;
    /// use omega_rate_limit::adaptive::{AdaptiveConcurrencyLayer, AdaptiveLimiter, Gradient2};
    ///
    /// // One limit per route, between 5 and 500 requests in flight.
    /// let limiter = AdaptiveLimiter::builder()
    ///     .algorithm(Gradient2::default())
    ///     .min(5)
    ///     .max(500)
    ///     .partition_by(Endpoint)
    ///     .build()
    ///     .unwrap();
    /// let app: Router = Router::new()
    ///     .route("/orders/{id}", get(|| async { "order" }))
    ///     .layer(AdaptiveConcurrencyLayer::new(limiter).respond());
    /// # let _ = app;
    /// ```
    #[cfg(feature = "http")]
    pub fn respond(self) -> AdaptiveConcurrencyLayer<Req, omega_core::reject::Respond> {
        self.on_rejection(omega_core::reject::Respond)
    }

    /// Answers refusals with `strategy` (any [`OnRejection`](omega_core::reject::OnRejection)).
    pub fn on_rejection<R>(self, strategy: R) -> AdaptiveConcurrencyLayer<Req, R> {
        AdaptiveConcurrencyLayer {
            limiter: self.limiter,
            strategy,
        }
    }

    /// The limiter.
    pub fn limiter(&self) -> &AdaptiveLimiter<Req> {
        &self.limiter
    }
}

impl<S, Req, Rj: Clone> Layer<S> for AdaptiveConcurrencyLayer<Req, Rj> {
    type Service = AdaptiveConcurrency<S, Req, Rj>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrency::with_strategy(inner, self.limiter.clone(), self.strategy.clone())
    }
}
