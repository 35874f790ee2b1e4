//! The router's engine, shared by its clones: the routes (the topology with each node's
//! service and counters), rebuilt when the topology or the services change, and the choice
//! of a node for a key hash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use omega_core::key::{KeySource, MissingKey};

use crate::error::{ShardError, ShardErrorKind};
use crate::handle::TopologyHandle;
use crate::node::Node;
use crate::topology::Topology;

/// Requests sent to a node, counted through the `metrics` crate (feature `metrics`); label
/// `node`.
pub const METRIC_REQUESTS: &str = "omega_shard_router_requests_total";

pub(crate) type Available = Arc<dyn Fn(&Node) -> bool + Send + Sync>;
pub(crate) type MakeService<S> = Box<dyn Fn(&Node) -> S + Send + Sync>;

/// The builder's settings.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) attempts: usize,
    pub(crate) available: Option<Available>,
    pub(crate) bound: Option<f64>,
    pub(crate) reroute_removed: bool,
    pub(crate) missing: MissingKey,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attempts: 1,
            available: None,
            bound: None,
            reroute_removed: true,
            missing: MissingKey::Reject,
        }
    }
}

struct Registry<S> {
    services: HashMap<Arc<str>, S>,
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
    /// Requests sent and not yet answered.
    pub in_flight: u64,
}

/// The topology with each node's service (`None`: the node has none) and counters, by node
/// index.
pub(crate) struct Routes<S> {
    pub(crate) generation: u64,
    registry_version: u64,
    pub(crate) topology: Arc<Topology>,
    pub(crate) services: Vec<Option<S>>,
    pub(crate) stats: Vec<Arc<NodeStats>>,
}

/// Everything clones of one router share.
pub(crate) struct Shared<S, K, P, Rj> {
    pub(crate) handle: TopologyHandle,
    pub(crate) key: K,
    pub(crate) retry: P,
    pub(crate) reject: Rj,
    pub(crate) cfg: Config,
    make: Option<MakeService<S>>,
    routes: ArcSwap<Routes<S>>,
    registry: Mutex<Registry<S>>,
    registry_version: AtomicU64,
    total_in_flight: AtomicU64,
    /// Spreads requests without a key ([`MissingKey::Skip`]) over the key space.
    spread: AtomicU64,
}

impl<S, K, P, Rj> Shared<S, K, P, Rj> {
    /// Counts a request sent to node `node` of `routes`.
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
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        if self.cfg.bound.is_some() {
            self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the end of a request sent to node `node` of `routes`.
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
        cfg: Config,
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
            Some(s) => reg.services.insert(Arc::from(id), s).is_some(),
            None => reg.services.remove(id).is_some(),
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
