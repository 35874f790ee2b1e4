//! The Tower layer and service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::RateLimited;
use crate::limiter::RateLimiter;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies a [`RateLimiter`] to a service. Every service it makes shares the limiter.
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
pub struct RateLimitLayer<Req> {
    limiter: RateLimiter<Req>,
}

impl<Req> Clone for RateLimitLayer<Req> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: self.limiter.clone(),
        }
    }
}

impl<Req> RateLimitLayer<Req> {
    /// A layer that checks every request against `limiter`.
    pub fn new(limiter: RateLimiter<Req>) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S, Req> Layer<S> for RateLimitLayer<Req> {
    type Service = RateLimit<S, Req>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// A service that admits requests only within the limits of a [`RateLimiter`].
///
/// Readiness is the inner service's; admission is decided in `call`, so it works with axum,
/// which treats services as always ready. Denied requests fail with [`RateLimited`] (boxed).
#[derive(Debug)]
pub struct RateLimit<S, Req> {
    inner: S,
    limiter: RateLimiter<Req>,
}

impl<S: Clone, Req> Clone for RateLimit<S, Req> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl<S, Req> RateLimit<S, Req> {
    /// Wraps `inner`.
    pub fn new(inner: S, limiter: RateLimiter<Req>) -> Self {
        RateLimit { inner, limiter }
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

impl<S, Req> Service<Req> for RateLimit<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let decided = if self.limiter.is_local() {
            Some(self.limiter.admit(&req).map_err(|d| d.to_error()))
        } else {
            self.leased_locally(&req)
        };
        match decided {
            Some(Ok(())) => ResponseFuture::inner(self.inner.call(req)),
            Some(Err(denied)) => ResponseFuture::rejected(denied),
            None => self.call_remote(req),
        }
    }
}

impl<S, Req> RateLimit<S, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    /// Lease mode's common case: decided here, no future to box.
    #[cfg(feature = "redis")]
    fn leased_locally(&self, req: &Req) -> Option<Result<(), RateLimited>> {
        let decision = self.limiter.check_leased_locally(req)?;
        Some(decision.into_result().map(drop))
    }

    #[cfg(not(feature = "redis"))]
    fn leased_locally(&self, _req: &Req) -> Option<Result<(), RateLimited>> {
        None
    }

    #[cfg(feature = "redis")]
    fn call_remote(&mut self, req: Req) -> ResponseFuture<S::Future, S::Response> {
        let limiter = self.limiter.clone();
        let prepared = limiter.prepare_remote(&req);
        // The instance that was made ready serves this request (tower-service, "Be careful
        // when cloning inner services").
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Box::pin(async move {
            let admitted = limiter.check_prepared(prepared).await.into_result();
            match admitted {
                Ok(_) => inner.call(req).await.map_err(Into::into),
                Err(denied) => Err(denied.into()),
            }
        }))
    }

    #[cfg(not(feature = "redis"))]
    fn call_remote(&mut self, _req: Req) -> ResponseFuture<S::Future, S::Response> {
        unreachable!("without the redis feature every limiter is local")
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`].
    pub struct ResponseFuture<F, T> {
        #[pin]
        kind: Kind<F, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T> {
        Inner { #[pin] future: F },
        Rejected { error: Option<RateLimited> },
        Boxed { future: Boxed<T> },
    }
}

impl<F, T> ResponseFuture<F, T> {
    fn inner(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Inner { future },
        }
    }

    fn rejected(error: RateLimited) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { error: Some(error) },
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn boxed(future: Boxed<T>) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { future },
        }
    }
}

impl<F, T> std::fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx).map_err(Into::into),
            KindProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(error.into()))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
