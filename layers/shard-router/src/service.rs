//! The Tower service: routes each request to the service of the node that owns its key.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::{BoxError, ShardError, ShardErrorKind};
use crate::handle::TopologyHandle;
use crate::hash::ShardKey;
use crate::topology::{Node, Topology};

/// Finds the shard key of a request and hashes it the way the topology routes.
///
/// Implemented for closures `Fn(&Req) -> Option<K>` with `K:` [`ShardKey`] (a string, bytes
/// or an integer), and, with the `http` feature, by [`crate::http::Header`],
/// [`crate::http::PathSegment`] and [`crate::http::QueryParam`], which hash the key in place.
pub trait KeyExtractor<Req>: Send + Sync + 'static {
    /// The key's hash under `topology` ([`Topology::hash`]), or `None` when the request has no
    /// key.
    fn key_hash(&self, req: &Req, topology: &Topology) -> Option<u64>;
}

impl<Req, F, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    K: ShardKey,
{
    #[inline]
    fn key_hash(&self, req: &Req, topology: &Topology) -> Option<u64> {
        self(req).map(|k| topology.hash(&k))
    }
}

/// Whether a request that failed on one node is sent again to the next node of its
/// preference list (see [`ShardRouterBuilder::retry_elsewhere`]).
pub trait RetryPolicy<Req>: Send + Sync + 'static {
    /// A copy of the request to send elsewhere, or `None` to never retry it.
    fn clone_request(&self, req: &Req) -> Option<Req>;
    /// Whether this error means "try the next node" (for example an open circuit).
    fn retry_elsewhere(&self, error: &BoxError) -> bool;
}

/// Never sends a request to a second node after it was sent to one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetry;

impl<Req> RetryPolicy<Req> for NoRetry {
    fn clone_request(&self, _: &Req) -> Option<Req> {
        None
    }

    fn retry_elsewhere(&self, _: &BoxError) -> bool {
        false
    }
}

/// Sends a copy of the request to the next node when the predicate accepts the error.
#[derive(Clone, Copy)]
pub struct RetryElsewhere<F>(F);

impl<F> fmt::Debug for RetryElsewhere<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryElsewhere")
    }
}

impl<Req, F> RetryPolicy<Req> for RetryElsewhere<F>
where
    Req: Clone,
    F: Fn(&BoxError) -> bool + Send + Sync + 'static,
{
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn retry_elsewhere(&self, error: &BoxError) -> bool {
        (self.0)(error)
    }
}

type Available = Arc<dyn Fn(&Node) -> bool + Send + Sync>;
type MakeService<S> = Box<dyn Fn(&Node) -> S + Send + Sync>;

#[derive(Clone)]
struct Config {
    attempts: usize,
    available: Option<Available>,
    bound: Option<f64>,
    reroute_removed: bool,
}

/// Builds a [`ShardRouter`]; start with [`ShardRouter::builder`].
#[derive(Clone)]
pub struct ShardRouterBuilder<K, P> {
    handle: TopologyHandle,
    key: K,
    retry: P,
    cfg: Config,
}

impl<K, P> fmt::Debug for ShardRouterBuilder<K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouterBuilder")
            .field("handle", &self.handle)
            .field("attempts", &self.cfg.attempts)
            .field("bounded_load", &self.cfg.bound)
            .finish_non_exhaustive()
    }
}

/// The key extractor before [`ShardRouterBuilder::key`] is called: every request lacks a key.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<Req> KeyExtractor<Req> for NoKey {
    fn key_hash(&self, _: &Req, _: &Topology) -> Option<u64> {
        None
    }
}

impl<K, P> ShardRouterBuilder<K, P> {
    /// How each request's key is found (a closure `Fn(&Req) -> Option<K>` or an HTTP
    /// extractor). A request without a key fails with [`ShardErrorKind::NoKey`].
    pub fn key<K2>(self, key: K2) -> ShardRouterBuilder<K2, P> {
        ShardRouterBuilder {
            handle: self.handle,
            key,
            retry: self.retry,
            cfg: self.cfg,
        }
    }

    /// Consider up to `nodes` nodes of the key's preference list (default 1: the owner only).
    /// The first one that is available (see [`is_available`](Self::is_available)), has a
    /// service, and whose service becomes ready without an error gets the request; a node
    /// whose `poll_ready` fails is skipped. With 1, such a request fails with
    /// [`ShardErrorKind::Unavailable`] (or the readiness error itself).
    pub fn failover(mut self, nodes: usize) -> Self {
        self.cfg.attempts = nodes.max(1);
        self
    }

    /// A health check per node, asked before a request is sent to it: nodes for which it
    /// answers `false` are skipped along the preference list. The gateway passes "the node's
    /// circuit is not open" here. It must be cheap (it runs on every request).
    pub fn is_available(mut self, f: impl Fn(&Node) -> bool + Send + Sync + 'static) -> Self {
        self.cfg.available = Some(Arc::new(f));
        self
    }

    /// Bounded loads: a node with `c ×` its weight's share of the requests in flight (plus
    /// one) already in flight is skipped, and the request goes to the next node of its
    /// preference list that is under its bound (`c > 1`, for example 1.25). Protects against
    /// hot keys at the cost of affinity for the spilled requests.
    pub fn bounded_load(mut self, c: f64) -> Self {
        self.cfg.bound = Some(c.max(1.0));
        self
    }

    /// What happens to a request routed to a node that leaves the topology before the request
    /// is sent (while the node's service was becoming ready): routed again on the new
    /// topology (`true`, the default) or failed with [`ShardErrorKind::NodeRemoved`].
    pub fn reroute_removed(mut self, reroute: bool) -> Self {
        self.cfg.reroute_removed = reroute;
        self
    }

    /// Sends a request again to the next node of its preference list (within
    /// [`failover`](Self::failover)) when its node answered with an error that `pred`
    /// accepts, for example `|e| e.is::<CircuitOpen>()`. Needs `Req: Clone`: the router keeps
    /// a copy of each request while there is a next node to try.
    pub fn retry_elsewhere<F>(self, pred: F) -> ShardRouterBuilder<K, RetryElsewhere<F>>
    where
        F: Fn(&BoxError) -> bool + Send + Sync + 'static,
    {
        ShardRouterBuilder {
            handle: self.handle,
            key: self.key,
            retry: RetryElsewhere(pred),
            cfg: self.cfg,
        }
    }

    /// The router, with each node's service made by `make` when the node first appears in
    /// the topology (and dropped when it leaves).
    pub fn build<S>(self, make: impl Fn(&Node) -> S + Send + Sync + 'static) -> ShardRouter<S, K, P>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.finish(Some(Box::new(make)))
    }

    /// The router without a service factory: services are given with
    /// [`ShardRouter::insert_service`] or by a [`Discover`](tower::discover::Discover) stream
    /// ([`ShardRouter::discover`]).
    pub fn build_without_services<S>(self) -> ShardRouter<S, K, P>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.finish(None)
    }

    fn finish<S>(self, make: Option<MakeService<S>>) -> ShardRouter<S, K, P>
    where
        S: Clone + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            routes: ArcSwap::from_pointee(Routes {
                generation: u64::MAX,
                registry_version: u64::MAX,
                topology: self.handle.load(),
                services: Vec::new(),
                stats: Vec::new(),
            }),
            handle: self.handle,
            key: self.key,
            retry: self.retry,
            cfg: self.cfg,
            make,
            registry: Mutex::new(Registry {
                services: HashMap::new(),
                stats: HashMap::new(),
            }),
            registry_version: AtomicU64::new(0),
            total_in_flight: AtomicU64::new(0),
        });
        let cached = shared.routes();
        ShardRouter { shared, cached }
    }
}

struct Registry<S> {
    services: HashMap<Arc<str>, S>,
    stats: HashMap<Arc<str>, Arc<NodeStats>>,
}

#[derive(Default)]
struct NodeStats {
    requests: AtomicU64,
    failovers: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    #[cfg(feature = "metrics")]
    counter: Option<metrics::Counter>,
}

/// One node's request counters (see [`ShardRouter::counters`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeCounters {
    /// The node's id.
    pub id: Arc<str>,
    /// Requests sent to the node's service.
    pub requests: u64,
    /// Of those, requests that came here because a node before it in the key's preference
    /// list was unavailable, not ready, over its load bound, or failed with a retryable error.
    pub failovers: u64,
    /// Requests the node's service answered with an error.
    pub errors: u64,
    /// Requests sent and not yet answered.
    pub in_flight: u64,
}

struct Routes<S> {
    generation: u64,
    registry_version: u64,
    topology: Arc<Topology>,
    services: Vec<Option<S>>,
    stats: Vec<Arc<NodeStats>>,
}

struct Shared<S, K, P> {
    handle: TopologyHandle,
    key: K,
    retry: P,
    cfg: Config,
    make: Option<MakeService<S>>,
    routes: ArcSwap<Routes<S>>,
    registry: Mutex<Registry<S>>,
    registry_version: AtomicU64,
    total_in_flight: AtomicU64,
}

impl<S: Clone, K, P> Shared<S, K, P> {
    /// `true` while `routes` were built from the current topology and services.
    #[inline]
    fn is_fresh(&self, routes: &Routes<S>) -> bool {
        routes.generation == self.handle.generation()
            && routes.registry_version == self.registry_version.load(Ordering::Acquire)
    }

    #[inline]
    fn routes(&self) -> Arc<Routes<S>> {
        let r = self.routes.load_full();
        if self.is_fresh(&r) {
            return r;
        }
        self.rebuild()
    }

    #[cold]
    fn rebuild(&self) -> Arc<Routes<S>> {
        let mut reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let rv = self.registry_version.load(Ordering::Acquire);
        let cur = self.routes.load_full();
        if self.is_fresh(&cur) {
            return cur;
        }
        let (generation, topology) = self.handle.load_with_generation();
        let mut services = Vec::with_capacity(topology.len());
        let mut stats = Vec::with_capacity(topology.len());
        for node in topology.nodes() {
            let svc = match (reg.services.get(node.id()), &self.make) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(make)) => {
                    let s = make(node);
                    reg.services.insert(node.id_arc().clone(), s.clone());
                    Some(s)
                }
                (None, None) => None,
            };
            services.push(svc);
            let st = reg
                .stats
                .entry(node.id_arc().clone())
                .or_insert_with(|| Arc::new(new_stats(node)))
                .clone();
            stats.push(st);
        }
        if self.make.is_some() {
            reg.services.retain(|id, _| topology.node(id).is_some());
        }
        reg.stats.retain(|id, _| topology.node(id).is_some());
        let routes = Arc::new(Routes {
            generation,
            registry_version: rv,
            topology,
            services,
            stats,
        });
        self.routes.store(routes.clone());
        routes
    }

    fn usable(&self, routes: &Routes<S>, i: usize, tried: &[Arc<str>]) -> bool {
        let node = &routes.topology.nodes()[i];
        routes.services[i].is_some()
            && !tried.iter().any(|t| **t == *node.id())
            && self.cfg.available.as_ref().is_none_or(|f| f(node))
    }

    fn overloaded(&self, routes: &Routes<S>, i: usize, c: f64) -> bool {
        let t = &routes.topology;
        let total = self.total_in_flight.load(Ordering::Relaxed) + 1;
        let w = f64::from(t.nodes()[i].weight());
        let all = t.total_weight() as f64;
        let cap = (c * total as f64 * w / all).ceil();
        routes.stats[i].in_flight.load(Ordering::Relaxed) as f64 >= cap
    }

    /// The node for `hash`, skipping `tried` nodes: the owner on the fast path.
    fn pick(&self, routes: &Routes<S>, hash: u64, tried: &[Arc<str>]) -> Result<usize, ShardError> {
        let t = &routes.topology;
        let Some(owner) = t.owner_index(hash) else {
            return Err(ShardError::new(ShardErrorKind::NoNode));
        };
        if tried.is_empty()
            && self.cfg.available.is_none()
            && self.cfg.bound.is_none()
            && routes.services[owner].is_some()
        {
            return Ok(owner);
        }
        let mut candidates = Vec::new();
        t.preference_indices(hash, self.cfg.attempts, &mut candidates);
        if let Some(c) = self.cfg.bound
            && let Some(i) = t.next_index(hash, |i| {
                !self.usable(routes, i, tried) || self.overloaded(routes, i, c)
            })
        {
            return Ok(i);
        }
        if let Some(&i) = candidates.iter().find(|&&i| self.usable(routes, i, tried)) {
            return Ok(i);
        }
        let mut err = ShardError::new(ShardErrorKind::Unavailable);
        err.tried = tried.to_vec();
        for &i in &candidates {
            let id = t.nodes()[i].id_arc();
            if !err.tried.contains(id) {
                err.tried.push(id.clone());
            }
        }
        Err(err)
    }
}

fn new_stats(node: &Node) -> NodeStats {
    #[cfg(feature = "metrics")]
    {
        NodeStats {
            counter: Some(metrics::counter!(
                crate::METRIC_REQUESTS,
                "node" => node.id().to_owned()
            )),
            ..NodeStats::default()
        }
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = node;
        NodeStats::default()
    }
}

/// Routes each request to the service of the node that owns the request's key.
///
/// - **Readiness**: the router is always ready; the chosen node's service is made ready inside
///   the response future (a clone of it, as `tower::ServiceExt::oneshot` does), so a slow or
///   unready node delays only its own requests (no head-of-line blocking). Node services must
///   be cheap to clone and clones must share their state (a `Buffer`, an HTTP client, a
///   circuit breaker with shared state).
/// - **Topology changes** (through the [`TopologyHandle`], Redis, or a `Discover` stream) take
///   effect for the next request; a request whose node leaves while its service was becoming
///   ready is routed again on the new topology (or fails, see
///   [`ShardRouterBuilder::reroute_removed`]). No request is routed to a node after its removal
///   is published.
/// - **Failover** along the key's preference list ([`ShardRouterBuilder::failover`]): nodes that
///   the availability check rejects, that have no service, or whose service fails `poll_ready`
///   are skipped; with [`ShardRouterBuilder::retry_elsewhere`], a request answered with a
///   matching error is sent to the next node.
/// - **Counters** per node ([`ShardRouter::counters`]).
///
/// Clones share everything. Errors are [`BoxError`]s: the node service's own errors, or a
/// [`ShardError`]. Node services must be `Clone + Send + Sync` (for example
/// `BoxCloneSyncService`, a `Buffer`, an HTTP client).
///
/// Awaiting `router.oneshot(req)` inside a spawned async block may make rustc report
/// "implementation of `From` is not general enough" when node services fail with `BoxError`
/// (rust-lang/rust#64552, the same with any tower middleware bounded by `Into<BoxError>`):
/// box the future in a plain function first,
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
pub struct ShardRouter<S, K, P = NoRetry> {
    shared: Arc<Shared<S, K, P>>,
    /// The routes this clone used last; checked against the shared generation on each call.
    cached: Arc<Routes<S>>,
}

impl<S, K, P> Clone for ShardRouter<S, K, P> {
    fn clone(&self) -> Self {
        ShardRouter {
            shared: self.shared.clone(),
            cached: self.cached.clone(),
        }
    }
}

impl<S, K, P> fmt::Debug for ShardRouter<S, K, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouter")
            .field("handle", &self.shared.handle)
            .finish_non_exhaustive()
    }
}

impl ShardRouter<(), NoKey, NoRetry> {
    /// A builder for a router over the topology of `handle`.
    pub fn builder(handle: TopologyHandle) -> ShardRouterBuilder<NoKey, NoRetry> {
        ShardRouterBuilder {
            handle,
            key: NoKey,
            retry: NoRetry,
            cfg: Config {
                attempts: 1,
                available: None,
                bound: None,
                reroute_removed: true,
            },
        }
    }
}

impl<S, K, P> ShardRouter<S, K, P>
where
    S: Clone + Send + Sync + 'static,
{
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
        let r = self.shared.routes();
        r.topology
            .nodes()
            .iter()
            .zip(&r.stats)
            .map(|(n, s)| NodeCounters {
                id: n.id_arc().clone(),
                requests: s.requests.load(Ordering::Relaxed),
                failovers: s.failovers.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                in_flight: s.in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Sets (or replaces) the service of node `id`. A node of the topology without a service
    /// is unavailable.
    pub fn insert_service(&self, id: &str, service: S) {
        let mut reg = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        reg.services.insert(Arc::from(id), service);
        self.shared.registry_version.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops the service of node `id`; returns whether there was one.
    pub fn remove_service(&self, id: &str) -> bool {
        let mut reg = self
            .shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let had = reg.services.remove(id).is_some();
        self.shared.registry_version.fetch_add(1, Ordering::AcqRel);
        had
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
                            t.with(crate::Change::Add(Node::new(id, id)))
                                .map_err(|_| ())
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

impl<S, K, P, Req> Service<Req> for ShardRouter<S, K, P>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    K: KeyExtractor<Req>,
    P: RetryPolicy<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, K, P, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if !self.shared.is_fresh(&self.cached) {
            self.cached = self.shared.routes();
        }
        let shared = &self.shared;
        let routes = self.cached.clone();
        let Some(hash) = shared.key.key_hash(&req, &routes.topology) else {
            let e = ShardError::new(ShardErrorKind::NoKey);
            return ResponseFuture::failed(shared.clone(), routes, e, Into::into);
        };
        match shared.pick(&routes, hash, &[]) {
            Ok(node) => ResponseFuture::routed(shared.clone(), routes, hash, node, req, Into::into),
            Err(e) => ResponseFuture::failed(shared.clone(), routes, e, Into::into),
        }
    }
}

fn release<S, K, P>(routes: &Routes<S>, shared: &Shared<S, K, P>, node: usize) {
    routes.stats[node].in_flight.fetch_sub(1, Ordering::Relaxed);
    if shared.cfg.bound.is_some() {
        shared.total_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project! {
    /// The response future of [`ShardRouter`].
    pub struct ResponseFuture<S, K, P, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        shared: Arc<Shared<S, K, P>>,
        routes: Arc<Routes<S>>,
        hash: u64,
        node: usize,
        svc: Option<S>,
        req: Option<Req>,
        spare: Option<Req>,
        tried: Vec<Arc<str>>,
        failover: bool,
        error: Option<BoxError>,
        // The node (in `routes`) whose in-flight counters this request holds.
        in_flight: Option<usize>,
        // The error conversion, captured where `S::Error: Into<BoxError>` is known, so the
        // future's own bounds stay free of it (higher-ranked bounds on boxed errors trip
        // rustc's `Send` analysis of async blocks that await this future).
        into_box: fn(S::Error) -> BoxError,
    }

    impl<S, K, P, Req> PinnedDrop for ResponseFuture<S, K, P, Req>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(node) = this.in_flight.take() {
                release(this.routes, this.shared, node);
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

impl<S, K, P, Req> fmt::Debug for ResponseFuture<S, K, P, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl<S, K, P, Req> ResponseFuture<S, K, P, Req>
where
    S: Service<Req> + Clone,
{
    fn routed(
        shared: Arc<Shared<S, K, P>>,
        routes: Arc<Routes<S>>,
        hash: u64,
        node: usize,
        req: Req,
        into_box: fn(S::Error) -> BoxError,
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
            error: None,
            in_flight: None,
            into_box,
        }
    }

    fn failed(
        shared: Arc<Shared<S, K, P>>,
        routes: Arc<Routes<S>>,
        e: ShardError,
        into_box: fn(S::Error) -> BoxError,
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
            error: Some(Box::new(e)),
            in_flight: None,
            into_box,
        }
    }
}

impl<S, K, P, Req> Future for ResponseFuture<S, K, P, Req>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    P: RetryPolicy<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Done => {
                    let e = this.error.take().expect("polled after completion");
                    return Poll::Ready(Err(e));
                }
                StateProj::Ready => {
                    let svc = this.svc.as_mut().expect("a routed request has a service");
                    match svc.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            let e: BoxError = (this.into_box)(e);
                            let routes = this.routes.clone();
                            let id = routes.topology.nodes()[*this.node].id_arc().clone();
                            this.tried.push(id);
                            if this.shared.cfg.attempts <= 1 {
                                return Poll::Ready(Err(e));
                            }
                            match this.shared.pick(&routes, *this.hash, this.tried) {
                                Ok(next) => {
                                    *this.node = next;
                                    *this.svc = routes.services[next].clone();
                                    *this.failover = true;
                                    continue;
                                }
                                Err(mut err) => {
                                    err.source = Some(Arc::from(e));
                                    return Poll::Ready(Err(Box::new(err)));
                                }
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
                                    err.tried.push(id);
                                    return Poll::Ready(Err(Box::new(err)));
                                }
                                match this.shared.pick(&fresh, *this.hash, this.tried) {
                                    Ok(next) => {
                                        *this.node = next;
                                        *this.svc = fresh.services[next].clone();
                                        *this.routes = fresh;
                                        continue;
                                    }
                                    Err(err) => return Poll::Ready(Err(Box::new(err))),
                                }
                            }
                        }
                    }
                    let req = this.req.take().expect("the request is sent once");
                    if this.tried.len() + 1 < this.shared.cfg.attempts {
                        *this.spare = this.shared.retry.clone_request(&req);
                    }
                    let stats = &this.routes.stats[*this.node];
                    stats.requests.fetch_add(1, Ordering::Relaxed);
                    #[cfg(feature = "metrics")]
                    if let Some(c) = &stats.counter {
                        c.increment(1);
                    }
                    if *this.failover {
                        stats.failovers.fetch_add(1, Ordering::Relaxed);
                    }
                    stats.in_flight.fetch_add(1, Ordering::Relaxed);
                    if this.shared.cfg.bound.is_some() {
                        this.shared.total_in_flight.fetch_add(1, Ordering::Relaxed);
                    }
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
                        release(this.routes, this.shared, node);
                    }
                    match out {
                        Ok(resp) => {
                            this.state.set(State::Done);
                            *this.error = None;
                            return Poll::Ready(Ok(resp));
                        }
                        Err(e) => {
                            let e: BoxError = (this.into_box)(e);
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
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            }
        }
    }
}
