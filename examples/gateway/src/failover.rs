//! What happens when a node does not answer: which requests go to the next node of their
//! key's preference list ([`Failover`]), and the 502 when none is left
//! ([`AnswerUnreachable`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use omega_penta::shard_router::RetryPolicy;

use crate::proxy;

/// Which requests its node did not answer go to the next node of the key's preference list
/// (within the pool's `failover`):
/// - a request whose node could not be reached: nothing was sent, so any request goes again,
///   its body too while no attempt has read it (bodies stream through a [`BodySlot`], never
///   copied);
/// - an idempotent request without a body that its node broke off before the response head
///   (a reset, a close), within the pool's retry budget: such a retry repeats work the node
///   may have done, so it is bounded, as Envoy bounds it, to a share of the traffic.
///
/// [`BodySlot`]: crate::body::BodySlot
#[derive(Clone, Debug)]
pub(crate) struct Failover {
    budget: Arc<tower::retry::budget::TpsBudget>,
}

impl Failover {
    pub(crate) fn new(budget: &omega_penta::config::RetryBudget) -> Self {
        Failover {
            budget: Arc::new(tower::retry::budget::TpsBudget::new(
                Duration::from_secs(10),
                budget.min_per_second,
                budget.percent / 100.0,
            )),
        }
    }
}

impl RetryPolicy<Request<Body>, proxy::Unanswered> for Failover {
    fn clone_request(&self, req: &Request<Body>) -> Option<Request<Body>> {
        use tower::retry::budget::Budget;
        self.budget.deposit();
        let body = if axum::body::HttpBody::size_hint(req.body()).exact() == Some(0) {
            Body::empty()
        } else {
            req.extensions().get::<crate::body::BodySlot>()?.reader()
        };
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }

    fn retry_elsewhere(&self, e: &proxy::Unanswered) -> bool {
        use tower::retry::budget::Budget;
        if !e.replayable {
            return false;
        }
        if !e.sent {
            return true;
        }
        let again = e.idempotent && self.budget.withdraw();
        metrics::counter!(
            "omega_gateway_retries_total",
            "outcome" => if again { "retried" } else if e.idempotent { "over_budget" } else { "not_idempotent" }
        )
        .increment(1);
        again
    }
}

/// Answers a request whose node (and every next one) could not be reached with 502, so the
/// route's pipeline never fails.
pub(crate) struct AnswerUnreachable<S, E> {
    inner: S,
    /// An error `poll_ready` reported: the next call is answered with it, unsent.
    not_ready: Option<Arc<str>>,
    _error: std::marker::PhantomData<fn() -> E>,
}

/// Turns a node error into its 502.
type Answer<E> = fn(Result<http::Response<Body>, E>) -> Result<http::Response<Body>, Infallible>;

impl<S: Clone, E> Clone for AnswerUnreachable<S, E> {
    fn clone(&self) -> Self {
        AnswerUnreachable::new(self.inner.clone())
    }
}

impl<S, E> AnswerUnreachable<S, E> {
    pub(crate) fn new(inner: S) -> Self {
        AnswerUnreachable {
            inner,
            not_ready: None,
            _error: std::marker::PhantomData,
        }
    }
}

impl<S, E> tower::Service<Request<Body>> for AnswerUnreachable<S, E>
where
    S: tower::Service<Request<Body>, Response = http::Response<Body>, Error = E>,
    S::Future: Send + 'static,
    E: std::fmt::Display,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<http::Response<Body>, Infallible>>,
        futures_util::future::Map<S::Future, Answer<E>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            std::task::Poll::Ready(Err(e)) => {
                self.not_ready = Some(e.to_string().into());
                std::task::Poll::Ready(Ok(()))
            }
            other => other.map(|_| Ok(())),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        use futures_util::FutureExt;
        if let Some(e) = self.not_ready.take() {
            return futures_util::future::Either::Left(std::future::ready(Ok(proxy::status(
                StatusCode::BAD_GATEWAY,
                &e,
            ))));
        }
        let answer: Answer<E> =
            |r| Ok(r.unwrap_or_else(|e| proxy::status(StatusCode::BAD_GATEWAY, &e.to_string())));
        futures_util::future::Either::Right(self.inner.call(req).map(answer))
    }
}
