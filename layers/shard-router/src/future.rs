//! [`ResponseFuture`]: makes the chosen node's service ready, sends the request, and fails
//! over along the key's preference list.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

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
        // The node (in `routes`) whose in-flight counters this request holds.
        in_flight: Option<usize>,
        hooks: Hooks<Rj, Req, S::Response, S::Error, E>,
    }

    impl<S, K, P, Rj, Req, E> PinnedDrop for ResponseFuture<S, K, P, Rj, Req, E>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(node) = this.in_flight.take() {
                this.shared.release(this.routes, node);
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

impl<S, K, P, Rj, Req, E> ResponseFuture<S, K, P, Rj, Req, E>
where
    S: Service<Req> + Clone,
{
    /// A request routed to node `node` of `routes`.
    pub(crate) fn routed(
        shared: Arc<Shared<S, K, P, Rj>>,
        routes: Arc<Routes<S>>,
        hash: u64,
        node: usize,
        req: Req,
        hooks: Hooks<Rj, Req, S::Response, S::Error, E>,
    ) -> Self {
        let svc = routes.services[node].clone();
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
            in_flight: None,
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
            in_flight: None,
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
        // The answer to the request, refused for `err` before it was sent.
        macro_rules! refuse {
            ($err:expr) => {{
                let req = this.req.as_ref().expect("a request not sent yet");
                let answer = (this.hooks.refuse)(&this.shared.reject, req, $err);
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
                    match svc.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            let routes = this.routes.clone();
                            let id = routes.topology.nodes()[*this.node].id_arc().clone();
                            this.tried.push(id);
                            if this.shared.cfg.attempts <= 1 {
                                this.state.set(State::Done);
                                return Poll::Ready(Err((this.hooks.map_err)(e)));
                            }
                            match this.shared.pick(&routes, *this.hash, this.tried) {
                                Ok(next) => {
                                    *this.node = next;
                                    *this.svc = routes.services[next].clone();
                                    *this.failover = true;
                                    continue;
                                }
                                Err(err) => refuse!(err.with_source((this.hooks.boxed)(e))),
                            }
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    // Was the node removed while its service became ready?
                    if this.routes.generation != this.shared.handle.generation() {
                        let fresh = this.shared.routes();
                        let id = this.routes.topology.nodes()[*this.node].id_arc().clone();
                        match fresh.topology.index_of(&id) {
                            Some(i) if fresh.services[i].is_some() => {
                                *this.node = i;
                                *this.routes = fresh;
                            }
                            _ => {
                                if !this.shared.cfg.reroute_removed {
                                    let mut err = ShardError::new(ShardErrorKind::NodeRemoved);
                                    err.tried_node(&id);
                                    refuse!(err);
                                }
                                match this.shared.pick(&fresh, *this.hash, this.tried) {
                                    Ok(next) => {
                                        *this.node = next;
                                        *this.svc = fresh.services[next].clone();
                                        *this.routes = fresh;
                                        continue;
                                    }
                                    Err(err) => refuse!(err),
                                }
                            }
                        }
                    }
                    let req = this.req.take().expect("the request is sent once");
                    if this.tried.len() + 1 < this.shared.cfg.attempts {
                        *this.spare = this.shared.retry.clone_request(&req);
                    }
                    this.shared.acquire(this.routes, *this.node, *this.failover);
                    *this.in_flight = Some(*this.node);
                    let mut svc = this.svc.take().expect("a routed request has a service");
                    let fut = svc.call(req);
                    this.state.set(State::Calling { fut });
                }
                StateProj::Calling { fut } => {
                    let out = match fut.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(out) => out,
                    };
                    if let Some(node) = this.in_flight.take() {
                        this.shared.release(this.routes, node);
                    }
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
                                    *this.svc = routes.services[next].clone();
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
