//! The router's engine, shared by its clones: the routes (the topology with each node's
//! service and counters), rebuilt when the topology or the services change, and the choice
//! of a node for a key hash.
//!
//! - **Services** are made outside the registry lock: a rebuild (on the request path, after a
//!   change) only copies the registry's cells, and a node whose service is not made yet gets
//!   an empty cell that the first request routed to it fills with `make(node)`. A slow `make`
//!   holds up the requests for that node only.
//! - **Load** is counted from the moment a request is routed (`pick` reserves it), so bounded
//!   loads see requests that are still waiting for their node's readiness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use omega_core::key::{KeySource, MissingKey};

use crate::error::{ShardError, ShardErrorKind};
use crate::handle::TopologyHandle;
use crate::node::Node;
use crate::settings::Settings;
use crate::topology::Topology;

/// Requests sent to a node, counted through the `metrics` crate (feature `metrics`); label
/// `node`.
pub const METRIC_REQUESTS: &str = "omega_shard_router_requests_total";

pub(crate) type MakeService<S> = Box<dyn Fn(&Node) -> S + Send + Sync>;

/// A node's service: made (or given) once, shared by every rebuild of the routes.
type Cell<S> = Arc<OnceLock<S>>;

struct Registry<S> {
    services: HashMap<Arc<str>, Cell<S>>,
    stats: HashMap<Arc<str>, Arc<NodeStats>>,
}

#[derive(Default)]
pub(crate) struct NodeStats {
    pub(crate) requests: AtomicU64,
    pub(crate) failovers: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    #[cfg(feature = "metrics")]
    pub(crate) counter: Option<metrics::Counter>,
}

/// One node's request counters (see [`ShardRouter::counters`](crate::ShardRouter::counters)).
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
    /// Requests routed to the node and not yet answered: waiting for the node's service to
    /// become ready, or sent. (Bounded loads count these.)
    pub in_flight: u64,
}

/// The topology with each node's service cell (`None`: the node has no service) and
/// counters, by node index. A cell holds the service once it is made: by the first request
/// routed to the node, outside every lock.
pub(crate) struct Routes<S> {
    pub(crate) generation: u64,
    registry_version: u64,
    pub(crate) topology: Arc<Topology>,
    services: Vec<Option<Cell<S>>>,
    pub(crate) stats: Vec<Arc<NodeStats>>,
}

impl<S> Routes<S> {
    /// Whether node `i` has a service (made or to be made).
    #[inline]
    pub(crate) fn has_service(&self, i: usize) -> bool {
        self.services[i].is_some()
    }
}

/// Everything clones of one router share.
pub(crate) struct Shared<S, K, P, Rj> {
    pub(crate) handle: TopologyHandle,
    pub(crate) key: K,
    pub(crate) retry: P,
    pub(crate) reject: Rj,
    pub(crate) cfg: Settings,
    make: Option<MakeService<S>>,
    routes: ArcSwap<Routes<S>>,
    registry: Mutex<Registry<S>>,
    registry_version: AtomicU64,
    total_in_flight: AtomicU64,
    /// Spreads requests without a key ([`MissingKey::Skip`]) over the key space.
    spread: AtomicU64,
}

impl<S, K, P, Rj> Shared<S, K, P, Rj> {
    /// Counts a request sent to node `node` of `routes` (its load was reserved by `pick`).
    #[inline]
    pub(crate) fn acquire(&self, routes: &Routes<S>, node: usize, failover: bool) {
        let stats = &routes.stats[node];
        stats.requests.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(c) = &stats.counter {
            c.increment(1);
        }
        if failover {
            stats.failovers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request routed to node `node` of `routes`.
    #[inline]
    fn reserve(&self, routes: &Routes<S>, node: usize) {
        routes.stats[node].in_flight.fetch_add(1, Ordering::Relaxed);
        if self.cfg.bound.is_some() {
            self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request moved onto another node's counters in the total of bounded loads.
    pub(crate) fn count_total(&self) {
        if self.cfg.bound.is_some() {
            self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request routed to node `node` of `routes` if the node is under its bound `c`
    /// (checked and counted in one atomic step per node).
    fn try_reserve(&self, routes: &Routes<S>, node: usize, c: f64) -> bool {
        let counter = &routes.stats[node].in_flight;
        let mut cur = counter.load(Ordering::Relaxed);
        loop {
            if cur as f64 >= self.cap(routes, node, c) {
                return false;
            }
            match counter.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.total_in_flight.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// The most requests node `i` may hold under bound `c`: `c ×` its weight's share of the
    /// requests in flight, plus one.
    fn cap(&self, routes: &Routes<S>, i: usize, c: f64) -> f64 {
        let t = &routes.topology;
        let total = self.total_in_flight.load(Ordering::Relaxed) + 1;
        let w = f64::from(t.nodes()[i].weight());
        let all = t.total_weight() as f64;
        (c * total as f64 * w / all).ceil()
    }

    fn overloaded(&self, routes: &Routes<S>, i: usize, c: f64) -> bool {
        routes.stats[i].in_flight.load(Ordering::Relaxed) as f64 >= self.cap(routes, i, c)
    }

    /// Counts the end of a request routed to node `node` of `routes` (answered, or given up
    /// before it was sent).
    #[inline]
    pub(crate) fn release(&self, routes: &Routes<S>, node: usize) {
        routes.stats[node].in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.cfg.bound.is_some() {
            self.total_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<S: Clone, K, P, Rj> Shared<S, K, P, Rj> {
    pub(crate) fn new(
        handle: TopologyHandle,
        key: K,
        retry: P,
        reject: Rj,
        cfg: Settings,
        make: Option<MakeService<S>>,
    ) -> Self {
        Shared {
            routes: ArcSwap::from_pointee(Routes {
                generation: u64::MAX,
                registry_version: u64::MAX,
                topology: handle.load(),
                services: Vec::new(),
                stats: Vec::new(),
            }),
            handle,
            key,
            retry,
            reject,
            cfg,
            make,
            registry: Mutex::new(Registry {
                services: HashMap::new(),
                stats: HashMap::new(),
            }),
            registry_version: AtomicU64::new(0),
            total_in_flight: AtomicU64::new(0),
            spread: AtomicU64::new(0),
        }
    }

    /// `true` while `routes` were built from the current topology and services.
    #[inline]
    pub(crate) fn is_fresh(&self, routes: &Routes<S>) -> bool {
        routes.generation == self.handle.generation()
            && routes.registry_version == self.registry_version.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn routes(&self) -> Arc<Routes<S>> {
        let r = self.routes.load_full();
        if self.is_fresh(&r) {
            return r;
        }
        self.rebuild()
    }

    /// New routes for the current topology and services. Runs no user code: services still to
    /// make are left to the first request routed to their node.
    #[cold]
    fn rebuild(&self) -> Arc<Routes<S>> {
        let mut reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let rv = self.registry_version.load(Ordering::Acquire);
        let cur = self.routes.load_full();
        if self.is_fresh(&cur) {
            return cur;
        }
        let (generation, topology) = self.handle.load_with_generation();
        let n = topology.len();
        let (mut services, mut stats) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for node in topology.nodes() {
            services.push(match reg.services.get(node.id()) {
                Some(cell) => Some(cell.clone()),
                None if self.make.is_some() => {
                    let cell = Cell::default();
                    reg.services.insert(node.id_arc().clone(), cell.clone());
                    Some(cell)
                }
                None => None,
            });
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

    /// The service of node `i` of `routes`; made here (once, by the first request that needs
    /// it, outside every lock) if it was not made yet.
    #[inline]
    pub(crate) fn service(&self, routes: &Routes<S>, i: usize) -> Option<S> {
        let cell = routes.services[i].as_ref()?;
        match cell.get() {
            Some(svc) => Some(svc.clone()),
            None => self.make_into(cell, &routes.topology.nodes()[i]),
        }
    }

    #[cold]
    fn make_into(&self, cell: &OnceLock<S>, node: &Node) -> Option<S> {
        let make = self.make.as_ref()?;
        Some(cell.get_or_init(|| make(node)).clone())
    }

    /// The hash `req` is routed by: its key's, or for a request without a key a spread hash
    /// ([`MissingKey::Skip`]) or a refusal ([`MissingKey::Reject`]).
    #[inline]
    pub(crate) fn key_hash<Req>(&self, req: &Req, topology: &Topology) -> Result<u64, ShardError>
    where
        K: KeySource<Req>,
    {
        match self.key.key(req) {
            Some(key) => Ok(topology.hash_bytes(key.as_bytes())),
            None => self.no_key(),
        }
    }

    #[cold]
    fn no_key<Req>(&self) -> Result<u64, ShardError>
    where
        K: KeySource<Req>,
    {
        match self.cfg.missing {
            MissingKey::Skip => Ok(crate::hash::mix64(
                self.spread.fetch_add(1, Ordering::Relaxed),
            )),
            _ => Err(ShardError::no_key(self.key.describe())),
        }
    }

    fn usable(&self, routes: &Routes<S>, i: usize, tried: &[Arc<str>]) -> bool {
        let node = &routes.topology.nodes()[i];
        routes.has_service(i)
            && !tried.iter().any(|t| **t == *node.id())
            && self.cfg.available.as_ref().is_none_or(|f| f(node))
    }

    /// The node for `hash`, skipping `tried` nodes, with the request counted on it (release
    /// it with [`Shared::release`]). The owner on the fast path: one table read, the
    /// availability check and, with bounded loads, one compare-and-swap; the key's preference
    /// list is built only when the owner cannot take the request.
    #[inline]
    pub(crate) fn pick(
        &self,
        routes: &Routes<S>,
        hash: u64,
        tried: &[Arc<str>],
    ) -> Result<usize, ShardError> {
        let t = &routes.topology;
        let Some(owner) = t.owner_index(hash) else {
            return Err(ShardError::new(ShardErrorKind::NoNode));
        };
        if tried.is_empty()
            && routes.has_service(owner)
            && self
                .cfg
                .available
                .as_ref()
                .is_none_or(|f| f(&t.nodes()[owner]))
        {
            match self.cfg.bound {
                None => {
                    self.reserve(routes, owner);
                    return Ok(owner);
                }
                Some(c) if self.try_reserve(routes, owner, c) => return Ok(owner),
                Some(_) => {}
            }
        }
        self.pick_along(routes, hash, tried)
    }

    /// [`Shared::pick`] past the owner: with bounded loads the first node of the key's
    /// preference order under its bound, else (or if none is) the first usable node of the
    /// key's preference list within the failover count.
    #[cold]
    fn pick_along(
        &self,
        routes: &Routes<S>,
        hash: u64,
        tried: &[Arc<str>],
    ) -> Result<usize, ShardError> {
        let t = &routes.topology;
        if let Some(c) = self.cfg.bound {
            // A node found under its bound may fill up before it is counted (another thread):
            // look again, at most once per node.
            for _ in 0..=t.len() {
                let next = t.next_index(hash, |i| {
                    !self.usable(routes, i, tried) || self.overloaded(routes, i, c)
                });
                match next {
                    Some(i) if self.try_reserve(routes, i, c) => return Ok(i),
                    Some(_) => continue,
                    None => break,
                }
            }
        }
        let mut candidates = Vec::new();
        t.preference_indices(hash, self.cfg.attempts, &mut candidates);
        if let Some(&i) = candidates.iter().find(|&&i| self.usable(routes, i, tried)) {
            self.reserve(routes, i);
            return Ok(i);
        }
        let mut err = ShardError::new(ShardErrorKind::Unavailable).with_tried(tried);
        for &i in &candidates {
            err.tried_node(t.nodes()[i].id_arc());
        }
        Err(err)
    }

    /// Each node's counters, in id order.
    pub(crate) fn counters(&self) -> Vec<NodeCounters> {
        let r = self.routes();
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

    /// Sets (`Some`) or drops (`None`) the service of node `id`; returns whether it had one.
    pub(crate) fn set_service(&self, id: &str, service: Option<S>) -> bool {
        let mut reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let had = match service {
            Some(s) => reg
                .services
                .insert(Arc::from(id), Arc::new(OnceLock::from(s)))
                .is_some_and(|cell| cell.get().is_some()),
            None => reg
                .services
                .remove(id)
                .is_some_and(|cell| cell.get().is_some()),
        };
        self.registry_version.fetch_add(1, Ordering::AcqRel);
        had
    }
}

fn new_stats(node: &Node) -> NodeStats {
    #[cfg(feature = "metrics")]
    {
        NodeStats {
            counter: Some(metrics::counter!(
                METRIC_REQUESTS,
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
