//! [`CircuitBreakerService`]: a service guarded by a circuit breaker.

use std::task::{Context, Poll};

use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use crate::breaker::CircuitBreaker;
use crate::classify::{Classify, ErrorsAreFailures};
use crate::future::ResponseFuture;
use crate::select::{Selector, Single};

/// A service guarded by a circuit breaker; made by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// - `P` chooses the breaker ([`Single`], or [`Keyed`](crate::Keyed) for one per key);
/// - `C` classifies outcomes ([`Classify`]);
/// - `Rj` answers refused requests ([`OnRejection`]): [`KeepError`] by default, so the service
///   fails with [`CircuitOpen`](crate::CircuitOpen) in a `BoxError`; with `Respond` (feature
///   `http`) it answers a 503 with `Retry-After` (a trailers-only `UNAVAILABLE` to a gRPC
///   call) and keeps the inner error type.
///
/// Readiness is the inner service's; admission is decided in `call` (axum treats services as
/// always ready). Clones share the breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S, P = Single, C = ErrorsAreFailures, Rj = KeepError> {
    pub(crate) inner: S,
    pub(crate) selector: P,
    pub(crate) classify: C,
    pub(crate) reject: Rj,
}

impl<S> CircuitBreakerService<S> {
    /// Wraps `inner` with `breaker`.
    pub fn new(inner: S, breaker: CircuitBreaker) -> Self {
        CircuitBreakerService {
            inner,
            selector: Single(breaker),
            classify: ErrorsAreFailures,
            reject: KeepError,
        }
    }
}

impl<S, C, Rj> CircuitBreakerService<S, Single, C, Rj> {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.selector.0
    }
}

impl<S, P, C, Rj> CircuitBreakerService<S, P, C, Rj> {
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

impl<S, Req, P, C, Rj> Service<Req> for CircuitBreakerService<S, P, C, Rj>
where
    S: Service<Req>,
    P: Selector<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    Rj: OnRejection<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = Rj::Error;
    type Future = ResponseFuture<S::Future, C, Rj, Req, S::Response, Rj::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Rj::map_err)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.selector.acquire(&req) {
            Ok(permit) => {
                ResponseFuture::running(self.inner.call(req), permit, self.classify.clone())
            }
            Err(open) => ResponseFuture::ready(self.reject.reject(&req, open)),
        }
    }
}
