//! The Tower layer.

use omega_core::reject::KeepError;
use tower_layer::Layer;

use crate::limiter::RateLimiter;
use crate::service::RateLimit;

/// Applies a [`RateLimiter`] to a service. Every service it makes shares the limiter.
///
/// What a refused request gets is the rejection strategy's choice, the same on every Omega
/// Penta layer:
///
/// - by default ([`KeepError`]), the service fails with the refusal, boxed:
///   [`RateLimited`](crate::RateLimited) (or [`KeyMissing`](omega_core::key::KeyMissing) for a
///   request without the key of a limit that refuses such requests), as tower's middleware do;
/// - [`RateLimitLayer::respond`] (feature `http`): an HTTP service answers `429 Too Many
///   Requests` with `Retry-After` itself (a gRPC call: `RESOURCE_EXHAUSTED`), keeps the inner
///   service's error type, and adds the IETF `RateLimit-Policy` / `RateLimit` fields
///   ([`crate::headers`]) to every response;
/// - [`RateLimitLayer::on_rejection`]: any [`OnRejection`](omega_core::reject::OnRejection)
///   strategy, such as a closure `Fn(&Req, &dyn Refusal) -> Res`.
///
/// ```
/// use omega_rate_limit::{Limit, Quota, RateLimitLayer, RateLimiter};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let limiter = RateLimiter::<&'static str>::builder()
///     .limit(Limit::global("global", Quota::per_minute(1)))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(limiter))
///     .service(service_fn(|req: &'static str| async move { Ok::<_, std::convert::Infallible>(req) }));
/// assert_eq!(svc.clone().oneshot("first").await.unwrap(), "first");
/// let err = svc.oneshot("second").await.unwrap_err();
/// assert!(err.is::<omega_rate_limit::RateLimited>());
/// # }
/// ```
#[derive(Debug)]
pub struct RateLimitLayer<Req, Rj = KeepError> {
    limiter: RateLimiter<Req>,
    strategy: Rj,
}

impl<Req, Rj: Clone> Clone for RateLimitLayer<Req, Rj> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
            strategy: self.strategy.clone(),
        }
    }
}

impl<Req> RateLimitLayer<Req> {
    /// A layer that checks every request against `limiter`.
    pub fn new(limiter: RateLimiter<Req>) -> Self {
        RateLimitLayer {
            limiter,
            strategy: KeepError,
        }
    }
}

impl<Req, Rj> RateLimitLayer<Req, Rj> {
    /// HTTP services answer refusals themselves ([`Respond`](omega_core::reject::Respond)):
    /// `429` with `Retry-After`, or a trailers-only gRPC response with `RESOURCE_EXHAUSTED`
    /// for a gRPC call (`400` / `INVALID_ARGUMENT` for a missing key); every response carries
    /// the `RateLimit-Policy` and `RateLimit` fields of the binding limit. The inner service's
    /// error type is kept, so the stack works on axum without `HandleErrorLayer`.
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use omega_core::key::http::{ClientIp, Endpoint, Header};
    /// use omega_rate_limit::{Limit, Quota, RateLimitLayer, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder()
    ///     .limit(Limit::global("global", Quota::per_second(5_000)))
    ///     .limit(Limit::keyed("per_api_key", Quota::per_minute(600), Header::new("x-api-key")))
    ///     .limit(Limit::keyed("per_ip", Quota::per_second(20), ClientIp::trusting(["10.0.0.0/8"]).unwrap()))
    ///     .limit(Limit::keyed("per_endpoint", Quota::per_second(1_000), Endpoint))
    ///     .build()
    ///     .unwrap();
    /// let app: Router = Router::new()
    ///     .route("/users/{id}", get(|| async { "hello" }))
    ///     .layer(RateLimitLayer::new(limiter).respond());
    /// # let _ = app;
    /// ```
    #[cfg(feature = "http")]
    pub fn respond(self) -> RateLimitLayer<Req, omega_core::reject::Respond> {
        self.on_rejection(omega_core::reject::Respond)
    }

    /// Answers refusals with `strategy` (any [`OnRejection`](omega_core::reject::OnRejection),
    /// such as a closure `Fn(&Req, &dyn Refusal) -> Res`).
    pub fn on_rejection<R>(self, strategy: R) -> RateLimitLayer<Req, R> {
        RateLimitLayer {
            limiter: self.limiter,
            strategy,
        }
    }

    /// The limiter (for example to change a quota while serving).
    pub fn limiter(&self) -> &RateLimiter<Req> {
        &self.limiter
    }
}

impl<S, Req, Rj: Clone> Layer<S> for RateLimitLayer<Req, Rj> {
    type Service = RateLimit<S, Req, Rj>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::with_strategy(inner, self.limiter.clone(), self.strategy.clone())
    }
}
