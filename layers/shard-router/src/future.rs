//! [`ResponseFuture`]: makes the chosen node's service ready (within the readiness timeout),
//! sends the request, and fails over along the key's preference list. The request's load on
//! its node is counted from the moment it is routed until it is answered or given up.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::{BoxError, ShardError, ShardErrorKind};
use crate::retry::RetryPolicy;
use crate::routes::{Routes, Shared};

/// The rejection strategy's functions, captured where the router's `Service` impl knows them,
/// so that the future's type names the router's error type `E` directly: an async block that
/// awaits the future never has to prove the strategy's bounds for erased lifetimes
/// (rust-lang/rust#64552, which `BoxError: Into<BoxError>` trips).
pub(crate) struct Hooks<Rj, Req, Res, Err, E> {
    /// The strategy's [`map_err`](omega_core::reject::OnRejection::map_err).
    pub(crate) map_err: fn(Err) -> E,
    /// The strategy's [`reject`](omega_core::reject::OnRejection::reject).
    pub(crate) refuse: fn(&Rj, &Req, ShardError) -> Result<Res, E>,
    /// A node service's error as the [`ShardError`]'s source.
    pub(crate) boxed: fn(Err) -> BoxError,
}

pin_project! {
    /// The response future of [`ShardRouter`](crate::ShardRouter).
    ///
    /// `E` is the router's error type: the rejection strategy's
    /// ([`OnRejection::Error`](omega_core::reject::OnRejection::Error)).
    pub struct ResponseFuture<S, K, P, Rj, Req, E>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        shared: Arc<Shared<S, K, P, Rj>>,
        routes: Arc<Routes<S>>,
        hash: u64,
        node: usize,
        svc: Option<S>,
        req: Option<Req>,
        spare: Option<Req>,
        tried: Vec<Arc<str>>,
        failover: bool,
        // The answer to a request refused before it was sent to a node.
        refused: Option<Result<S::Response, E>>,
        // Whether this request's load is counted on `node` of `routes`.
        reserved: bool,
        // When waiting for the node's readiness stops (started on the first wait).
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        hooks: Hooks<Rj, Req, S::Response, S::Error, E>,
    }

    impl<S, K, P, Rj, Req, E> PinnedDrop for ResponseFuture<S, K, P, Rj, Req, E>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if std::mem::take(this.reserved) {
                this.shared.release(this.routes, *this.node);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Ready,
        Calling { #[pin] fut: F },
        Done,
    }
}

impl<S, K, P, Rj, Req, E> fmt::Debug for ResponseFuture<S, K, P, Rj, Req, E>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("node", &self.node)
            .field("tried", &self.tried)
            .finish_non_exhaustive()
    }
}

/// A node whose service did not become ready within the readiness timeout: the source of the
/// [`ShardError`] when no other node could take the request.
#[derive(Debug)]
struct NotReady {
    node: Arc<str>,
    after: Duration,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {:?} was not ready within {:?} (the readiness timeout)",
            self.node, self.after
        )
    }
}

impl std::error::Error for NotReady {}

/// Whether waiting for a node's readiness has lasted `timeout`; the clock starts on the first
/// wait. Without a tokio runtime there is no clock, and no timeout.
fn timed_out(
    deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Option<Duration>,
    cx: &mut Context<'_>,
) -> bool {
    let Some(after) = timeout else {
        return false;
    };
    let sleep = match deadline {
        Some(sleep) => sleep,
        None => {
            if tokio::runtime::Handle::try_current().is_err() {
                return false;
            }
            deadline.insert(Box::pin(tokio::time::sleep(after)))
        }
    };
    sleep.as_mut().poll(cx).is_ready()
}

impl<S, K, P, Rj, Req, E> ResponseFuture<S, K, P, Rj, Req, E>
where
    S: Service<Req> + Clone,
{
    /// A request routed to node `node` of `routes`, its load counted there (by `pick`).
    pub(crate) fn routed(
        shared: Arc<Shared<S, K, P, Rj>>,
        routes: Arc<Routes<S>>,
        hash: u64,
        node: usize,
        req: Req,
        hooks: Hooks<Rj, Req, S::Response, S::Error, E>,
    ) -> Self {
        let svc = shared.service(&routes, node);
        let failover = routes.topology.owner_index(hash) != Some(node);
        ResponseFuture {
            state: State::Ready,
            shared,
            routes,
            hash,
            node,
            svc,
            req: Some(req),
            spare: None,
            tried: Vec::new(),
            failover,
            refused: None,
            reserved: true,
            deadline: None,
            hooks,
        }
    }

    /// A request refused before it was routed, answered with `answer`.
    pub(crate) fn refused(
        shared: Arc<Shared<S, K, P, Rj>>,
        routes: Arc<Routes<S>>,
        answer: Result<S::Response, E>,
        hooks: Hooks<Rj, Req, S::Response, S::Error, E>,
    ) -> Self {
        ResponseFuture {
            state: State::Done,
            shared,
            routes,
            hash: 0,
            node: 0,
            svc: None,
            req: None,
            spare: None,
            tried: Vec::new(),
            failover: false,
            refused: Some(answer),
            reserved: false,
            deadline: None,
            hooks,
        }
    }
}

impl<S, K, P, Rj, Req, E> Future for ResponseFuture<S, K, P, Rj, Req, E>
where
    S: Service<Req> + Clone,
    P: RetryPolicy<Req, S::Error>,
{
    type Output = Result<S::Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Gives this request's load on its node back.
        macro_rules! unreserve {
            () => {
                if std::mem::take(this.reserved) {
                    this.shared.release(this.routes, *this.node);
                }
            };
        }
        // The answer to the request, refused for `err` before it was sent.
        macro_rules! refuse {
            ($err:expr) => {{
                let err = $err;
                unreserve!();
                let req = this.req.as_ref().expect("a request not sent yet");
                let answer = (this.hooks.refuse)(&this.shared.reject, req, err);
                this.state.set(State::Done);
                return Poll::Ready(answer);
            }};
        }
        loop {
            match this.state.as_mut().project() {
                StateProj::Done => {
                    let answer = this.refused.take().expect("polled after completion");
                    return Poll::Ready(answer);
                }
                StateProj::Ready => {
                    let svc = this.svc.as_mut().expect("a routed request has a service");
                    // `Some(error)`: readiness failed; `Some(None)`: it timed out.
                    let failed = match svc.poll_ready(cx) {
                        Poll::Ready(Ok(())) => None,
                        Poll::Ready(Err(e)) => Some(Some(e)),
                        Poll::Pending => {
                            let timeout = this.shared.cfg.ready_timeout;
                            if !timed_out(this.deadline, timeout, cx) {
                                return Poll::Pending;
                            }
                            Some(None)
                        }
                    };
                    // Checked here: assigning `None` drops the old value out of line, a call
                    // per request even when no wait started.
                    if this.deadline.is_some() {
                        *this.deadline = None;
                    }
                    if let Some(error) = failed {
                        // The node cannot take the request: the next node of its list may.
                        let routes = this.routes.clone();
                        let id = routes.topology.nodes()[*this.node].id_arc().clone();
                        this.tried.push(id.clone());
                        unreserve!();
                        let source = |e: Option<S::Error>| -> BoxError {
                            match e {
                                Some(e) => (this.hooks.boxed)(e),
                                None => Box::new(NotReady {
                                    node: id.clone(),
                                    after: this.shared.cfg.ready_timeout.unwrap_or_default(),
                                }),
                            }
                        };
                        if this.shared.cfg.attempts <= 1 {
                            match error {
                                Some(e) => {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err((this.hooks.map_err)(e)));
                                }
                                None => refuse!(
                                    ShardError::new(ShardErrorKind::Unavailable)
                                        .with_tried(this.tried)
                                        .with_source(source(None))
                                ),
                            }
                        }
                        match this.shared.pick(&routes, *this.hash, this.tried) {
                            Ok(next) => {
                                *this.node = next;
                                *this.reserved = true;
                                *this.svc = this.shared.service(&routes, next);
                                *this.failover = true;
                                continue;
                            }
                            Err(err) => refuse!(err.with_source(source(error))),
                        }
                    }
                    // Was the node removed while its service became ready?
                    if this.routes.generation != this.shared.handle.generation() {
                        let fresh = this.shared.routes();
                        let id = this.routes.topology.nodes()[*this.node].id_arc().clone();
                        match fresh.topology.index_of(&id) {
                            Some(i) if fresh.has_service(i) => {
                                // Still there: the load moves along (the same counters
                                // unless the node left and came back meanwhile).
                                if !Arc::ptr_eq(&fresh.stats[i], &this.routes.stats[*this.node]) {
                                    unreserve!();
                                    fresh.stats[i].in_flight.fetch_add(1, Ordering::Relaxed);
                                    this.shared.count_total();
                                    *this.reserved = true;
                                }
                                *this.node = i;
                                *this.routes = fresh;
                            }
                            _ => {
                                if !this.shared.cfg.reroute_removed {
                                    let mut err = ShardError::new(ShardErrorKind::NodeRemoved);
                                    err.tried_node(&id);
                                    refuse!(err);
                                }
                                unreserve!();
                                match this.shared.pick(&fresh, *this.hash, this.tried) {
                                    Ok(next) => {
                                        *this.node = next;
                                        *this.reserved = true;
                                        *this.svc = this.shared.service(&fresh, next);
                                        *this.routes = fresh;
                                        continue;
                                    }
                                    Err(err) => refuse!(err),
                                }
                            }
                        }
                    }
                    let req = this.req.take().expect("the request is sent once");
                    // A copy for the next attempt, only when there can be one: attempts
                    // left and another node to try (a one-node pool copies nothing).
                    let attempt = this.tried.len() + 1;
                    if attempt < this.shared.cfg.attempts && attempt < this.routes.topology.len() {
                        *this.spare = this.shared.retry.clone_request(&req);
                    }
                    this.shared.acquire(this.routes, *this.node, *this.failover);
                    let mut svc = this.svc.take().expect("a routed request has a service");
                    let fut = svc.call(req);
                    this.state.set(State::Calling { fut });
                }
                StateProj::Calling { fut } => {
                    let out = match fut.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(out) => out,
                    };
                    unreserve!();
                    match out {
                        Ok(resp) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(resp));
                        }
                        Err(e) => {
                            this.routes.stats[*this.node]
                                .errors
                                .fetch_add(1, Ordering::Relaxed);
                            if let Some(req) = this.spare.take()
                                && this.shared.retry.retry_elsewhere(&e)
                            {
                                let routes = this.shared.routes();
                                let id = this.routes.topology.nodes()[*this.node].id_arc().clone();
                                this.tried.push(id);
                                if let Ok(next) = this.shared.pick(&routes, *this.hash, this.tried)
                                {
                                    *this.node = next;
                                    *this.reserved = true;
                                    *this.svc = this.shared.service(&routes, next);
                                    *this.routes = routes;
                                    *this.req = Some(req);
                                    *this.failover = true;
                                    this.state.set(State::Ready);
                                    continue;
                                }
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Err((this.hooks.map_err)(e)));
                        }
                    }
                }
            }
        }
    }
}
