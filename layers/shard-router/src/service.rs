//! [`ShardRouter`]: routes each request to the service of the node that owns its key.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use omega_core::key::KeySource;
use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use crate::error::{BoxError, ShardError};
use crate::future::{Hooks, ResponseFuture};
use crate::handle::TopologyHandle;
use crate::hash::ShardKey;
use crate::node::{Change, Node};
use crate::retry::{NoRetry, RetryPolicy};
use crate::routes::{NodeCounters, Routes, Shared};
use crate::topology::Topology;

/// Routes each request to the service of the node that owns the request's key.
///
/// - **Keys**: a [`KeySource`] finds each request's key
///   ([`ShardRouterBuilder::key`](crate::ShardRouterBuilder::key)); the router hashes its
///   bytes with the topology's hash.
/// - **Readiness**: the router is always ready; the chosen node's service is made ready inside
///   the response future (a clone of it, as `tower::ServiceExt::oneshot` does), so a slow or
///   unready node delays only its own requests (no head-of-line blocking), and for at most the
///   [readiness timeout](crate::ShardRouterBuilder::readiness_timeout) per node. Node services
///   must be cheap to clone and clones must share their state (a `Buffer`, an HTTP client, a
///   circuit breaker with shared state).
/// - **Topology changes** (through the [`TopologyHandle`], Redis, or a `Discover` stream) take
///   effect for the next request; a request whose node leaves while its service was becoming
///   ready is routed again on the new topology (or refused, see
///   [`reroute_removed`](crate::ShardRouterBuilder::reroute_removed)). No request is routed to
///   a node after its removal is published.
/// - **Failover** along the key's preference list
///   ([`failover`](crate::ShardRouterBuilder::failover)): nodes that the availability check
///   rejects, that have no service, or whose service fails `poll_ready` are skipped; with
///   [`retry_elsewhere`](crate::ShardRouterBuilder::retry_elsewhere), a request answered with
///   a matching error is sent to the next node.
/// - **Refusals** ([`ShardError`]: no key, no node, none available) go through the rejection
///   strategy `Rj`: with [`KeepError`] (the default) the router fails with the `ShardError`,
///   boxed, and node services' errors are boxed too (`Error = BoxError`); with
///   [`respond`](crate::ShardRouterBuilder::respond) refusals are 400 / 503 responses and node
///   services' errors pass through unchanged.
/// - **Counters** per node ([`ShardRouter::counters`]).
///
/// Clones share everything. Node services must be `Clone + Send + Sync` (for example
/// `BoxCloneSyncService`, a `Buffer`, an HTTP client).
///
/// Awaiting `router.oneshot(req)` inside a spawned async block may make rustc report
/// "implementation of `From` is not general enough" when node services fail with `BoxError`
/// (rust-lang/rust#64552, the same with any tower middleware bounded by `Into<BoxError>`):
/// await `router.call(req)` (the router is always ready), or box the future in a plain
/// function first,
/// `fn send(r: Router, q: Req) -> Pin<Box<dyn Future<Output = ...> + Send>> { Box::pin(r.oneshot(q)) }`.
///
/// ```
/// use omega_shard_router::{Algorithm, Node, ShardRouter, Topology, TopologyHandle};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), tower::BoxError> {
/// let handle = TopologyHandle::new(Topology::new(Algorithm::table(), [
///     Node::new("a", "10.0.0.1:80"),
///     Node::new("b", "10.0.0.2:80"),
/// ])?);
/// let router = ShardRouter::builder(handle.clone())
///     .key(|user: &u64| Some(*user))
///     .build(|node: &Node| {
///         let name = node.id().to_owned();
///         service_fn(move |user: u64| {
///             let name = name.clone();
///             async move { Ok::<_, tower::BoxError>(format!("{user} served by {name}")) }
///         })
///     });
/// let owner = router.owner(&7u64).unwrap();
/// let answer = router.clone().oneshot(7).await?;
/// assert_eq!(answer, format!("7 served by {}", owner.id()));
/// # Ok(()) }
/// ```
pub struct ShardRouter<S, K, P = NoRetry, Rj = KeepError> {
    shared: Arc<Shared<S, K, P, Rj>>,
    /// The routes this clone used last; checked against the shared generation on each call.
    cached: Arc<Routes<S>>,
}

impl<S, K, P, Rj> Clone for ShardRouter<S, K, P, Rj> {
    fn clone(&self) -> Self {
        ShardRouter {
            shared: self.shared.clone(),
            cached: self.cached.clone(),
        }
    }
}

impl<S, K, P, Rj> fmt::Debug for ShardRouter<S, K, P, Rj> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouter")
            .field("handle", &self.shared.handle)
            .finish_non_exhaustive()
    }
}

impl<S, K, P, Rj> ShardRouter<S, K, P, Rj>
where
    S: Clone + Send + Sync + 'static,
{
    pub(crate) fn from_shared(shared: Arc<Shared<S, K, P, Rj>>) -> Self {
        let cached = shared.routes();
        ShardRouter { shared, cached }
    }

    /// The topology handle (to change the topology).
    pub fn handle(&self) -> &TopologyHandle {
        &self.shared.handle
    }

    /// The topology requests are routed on now.
    pub fn topology(&self) -> Arc<Topology> {
        self.shared.routes().topology.clone()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.routes().topology.epoch()
    }

    /// The node that owns `key` now.
    pub fn owner<Q: ShardKey + ?Sized>(&self, key: &Q) -> Option<Node> {
        self.topology().owner(key).cloned()
    }

    /// Up to `k` nodes for `key`, in failover order ([`Topology::preference_list`]).
    pub fn preference_list<Q: ShardKey + ?Sized>(&self, key: &Q, k: usize) -> Vec<Node> {
        self.topology()
            .preference_list(key, k)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Request counters of each node of the current topology, in id order.
    pub fn counters(&self) -> Vec<NodeCounters> {
        self.shared.counters()
    }

    /// Sets (or replaces) the service of node `id`. A node of the topology without a service
    /// is unavailable.
    pub fn insert_service(&self, id: &str, service: S) {
        self.shared.set_service(id, Some(service));
    }

    /// Drops the service of node `id`; returns whether there was one.
    pub fn remove_service(&self, id: &str) -> bool {
        self.shared.set_service(id, None)
    }

    /// Follows a [`Discover`](tower::discover::Discover) stream until it ends: an inserted
    /// service joins the topology as a node of weight 1 (id and address = the key) and gets
    /// the service; a removed key leaves the topology, then its service is dropped. Spawn the
    /// returned future. Weighted nodes come through the [`TopologyHandle`] instead.
    pub async fn discover<D>(&self, discover: D) -> Result<(), D::Error>
    where
        D: tower::discover::Discover<Service = S>,
        D::Key: AsRef<str>,
    {
        use tower::discover::Change as D;
        let mut discover = std::pin::pin!(discover);
        loop {
            let change = std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).await;
            match change {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(D::Insert(key, svc))) => {
                    let id = key.as_ref();
                    self.insert_service(id, svc);
                    let _ = self.shared.handle.update(|t| {
                        if t.node(id).is_some() {
                            Err(())
                        } else {
                            t.with(Change::Add(Node::new(id, id))).map_err(|_| ())
                        }
                    });
                }
                Some(Ok(D::Remove(key))) => {
                    let id = key.as_ref();
                    let _ = self.shared.handle.remove(id);
                    self.remove_service(id);
                }
            }
        }
    }
}

/// The strategy's answer to a refused request, as a function pointer for [`Hooks`].
fn refuse<Rj, Req, Res, E>(rj: &Rj, req: &Req, refusal: ShardError) -> Result<Res, Rj::Error>
where
    Rj: OnRejection<Req, Res, E>,
{
    rj.reject(req, refusal)
}

impl<S, K, P, Rj, Req> Service<Req> for ShardRouter<S, K, P, Rj>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    K: KeySource<Req>,
    P: RetryPolicy<Req, S::Error>,
    Rj: OnRejection<Req, S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = Rj::Error;
    type Future = ResponseFuture<S, K, P, Rj, Req, Rj::Error>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Rj::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if !self.shared.is_fresh(&self.cached) {
            self.cached = self.shared.routes();
        }
        let shared = &self.shared;
        let routes = self.cached.clone();
        let hooks = Hooks {
            map_err: Rj::map_err,
            refuse: refuse::<Rj, Req, S::Response, S::Error>,
            boxed: Into::into,
        };
        let picked = shared
            .key_hash(&req, &routes.topology)
            .and_then(|hash| Ok((hash, shared.pick(&routes, hash, &[])?)));
        match picked {
            Ok((hash, node)) => {
                ResponseFuture::routed(shared.clone(), routes, hash, node, req, hooks)
            }
            Err(refusal) => {
                let answer = shared.reject.reject(&req, refusal);
                ResponseFuture::refused(shared.clone(), routes, answer, hooks)
            }
        }
    }
}
