//! [`CircuitBreakerService`]: a service guarded by a circuit breaker.

use std::task::{Context, Poll};

use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use crate::breaker::CircuitBreaker;
use crate::classify::{Classify, ErrorsAreFailures};
use crate::error::CircuitOpen;
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
/// Readiness is the inner service's, except when the circuit will refuse whatever the
/// request (a single breaker that is OPEN, FORCED_OPEN, or HALF_OPEN with every probe out):
/// `poll_ready` then answers ready at once, without waiting for the inner service, and the
/// next `call` is refused with the refusal decided there (as tower's `LoadShed` decides in
/// `poll_ready`). Otherwise admission is decided in `call` (axum treats services as always
/// ready). Clones share the breaker; a clone does not inherit a refusal decided in its
/// original's `poll_ready`.
///
/// The permit is taken in `call`, not when the response future is first polled: `call` is
/// where the inner service's `call` runs, and a service may start its work there (send the
/// request, take a connection), so admission must come first. A response future made while
/// CLOSED therefore runs even if the breaker opens before it is polled; its outcome, from an
/// earlier state, is ignored. (A guarded future, [`CircuitBreaker::call`], takes its permit
/// when first polled.)
#[derive(Debug)]
pub struct CircuitBreakerService<S, P = Single, C = ErrorsAreFailures, Rj = KeepError> {
    pub(crate) inner: S,
    pub(crate) selector: P,
    pub(crate) classify: C,
    pub(crate) reject: Rj,
    /// A refusal decided in `poll_ready`, for the next `call`.
    pub(crate) refused: Option<CircuitOpen>,
}

impl<S: Clone, P: Clone, C: Clone, Rj: Clone> Clone for CircuitBreakerService<S, P, C, Rj> {
    fn clone(&self) -> Self {
        CircuitBreakerService {
            inner: self.inner.clone(),
            selector: self.selector.clone(),
            classify: self.classify.clone(),
            reject: self.reject.clone(),
            // Readiness is not cloned: a clone asks again.
            refused: None,
        }
    }
}

impl<S> CircuitBreakerService<S> {
    /// Wraps `inner` with `breaker`.
    pub fn new(inner: S, breaker: CircuitBreaker) -> Self {
        CircuitBreakerService {
            inner,
            selector: Single(breaker),
            classify: ErrorsAreFailures,
            reject: KeepError,
            refused: None,
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
        if self.refused.is_none() {
            self.refused = self.selector.refuse_all();
            if self.refused.is_none() {
                return self.inner.poll_ready(cx).map_err(Rj::map_err);
            }
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(open) = self.refused.take() {
            return ResponseFuture::ready(self.reject.reject(&req, open));
        }
        match self.selector.acquire(&req) {
            Ok(permit) => {
                ResponseFuture::running(self.inner.call(req), permit, self.classify.clone())
            }
            Err(open) => ResponseFuture::ready(self.reject.reject(&req, open)),
        }
    }
}
