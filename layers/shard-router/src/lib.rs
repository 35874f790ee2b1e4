//! # omega-shard-router
//!
//! `ShardRouter`: consistent routing of keys to nodes for Tower, with minimal movement when
//! nodes come and go and lookups in a few nanoseconds.
//!
//! - [`Topology`]: nodes (id, weight, address), immutable and versioned by an epoch; changes
//!   ([`Change`]: add, remove, reweight) make a new topology, swapped atomically through a
//!   [`TopologyHandle`] while requests are routed.
//! - Algorithms ([`Algorithm`]):
//!   - **slot table** (default): `2^16` slots of node indices, a key's slot is the top bits of
//!     its XXH3 hash. Shares follow weights to within one slot (a Sainte-Laguë apportionment),
//!     and a change moves exactly the slots whose owner must change, only to or from the
//!     changed node. The price: the table depends on the order of changes, so it travels with
//!     the topology (in memory through the handle, across processes through Redis);
//!   - **ring** with virtual nodes (weighted), and the **ketama**-compatible ring (MD5 points
//!     placed as libketama places them);
//!   - **rendezvous** (highest random weight), for small sets; also the failover order after a
//!     table owner.
//! - **Preference lists** of distinct nodes per key ([`Topology::preference_list`]), for
//!   replicas and failover; **bounded loads** for hot keys.
//! - **Tower**: [`ShardRouter`] sends each request to its node's service; only that service
//!   must be ready; failover hooks for circuit breakers; per-node counters; updates from a
//!   handle or a [`Discover`](tower::discover::Discover) stream. [`ShardRouterLayer`] wraps
//!   one inner service (a proxy's HTTP client) and hands it the chosen [`Node`] with each
//!   request.
//! - **Introspection**: owner, preference list, owned fractions, exact preview of a change
//!   ([`Topology::preview`]), epoch, counters.
//! - `redis` feature: [`redis::RedisTopology`] shares the topology through Redis, with change
//!   notifications; routers keep routing on their last topology while Redis is down.
//! - `http` feature: key extractors from a header, a path segment or a query parameter.
//!
//! ## Determinism
//!
//! Every process routes a key to the same node given the same topology: keys are hashed with
//! XXH3-64 (seed 0; MD5 in ketama mode), node scores with the SplitMix64 finalizer over an
//! XXH3 seed of the node id, and weighted rendezvous uses an integer logarithm, never
//! floating-point library functions. `tests/vectors.rs` pins all of them. See [`hash`].
//!
//! ## Choosing an algorithm
//!
//! | | lookup (100 nodes) | busiest node / mean | keys moved on a change | state |
//! |---|---|---|---|---|
//! | table | one slot read, ~5 ns | 1.001 (exact ±1 slot) | the minimum, only to/from the changed node | 128 KiB, depends on the history |
//! | ring (160 points per weight unit) | bucket index + short scan, ~7 ns | ~1.25 | only to/from the changed node; the amount varies ±15% | points; a function of the nodes |
//! | ketama | same, plus MD5 of the key | ~1.23 | as libketama (its point counts depend on all weights) | points; a function of the nodes |
//! | rendezvous | one score per node | statistical (1.00 in expectation) | the minimum, in expectation | none |
//!
//! ## A pool of upstream nodes with a circuit breaker each
//!
//! The router does not depend on a circuit breaker. A gateway builds each node's service
//! (client + breaker) in [`ShardRouterBuilder::build`], and tells the router how to fail
//! over along the key's preference list:
//!
//! - [`is_available`](ShardRouterBuilder::is_available) skips a node before sending, for
//!   example while its circuit is open;
//! - [`retry_elsewhere`](ShardRouterBuilder::retry_elsewhere) sends a copy of the request to
//!   the next node when the node's service answered with an error the predicate accepts;
//! - a node whose service fails `poll_ready` is skipped too.
//!
//! [`failover`](ShardRouterBuilder::failover) sets how many nodes are considered.
//!
//! ```
//! use omega_shard_router::{Algorithm, BoxError, Node, ShardRouter, Topology, TopologyHandle};
//! # #[derive(Debug)] struct CircuitOpen;
//! # impl std::fmt::Display for CircuitOpen {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("open") }
//! # }
//! # impl std::error::Error for CircuitOpen {}
//! # fn circuit_is_open(_node: &str) -> bool { false }
//!
//! let handle = TopologyHandle::new(Topology::new(Algorithm::table(), [
//!     Node::new("a", "10.0.0.1:8080"),
//!     Node::new("b", "10.0.0.2:8080"),
//!     Node::new("c", "10.0.0.3:8080"),
//! ])?);
//! let router = ShardRouter::builder(handle.clone())
//!     .key(|user: &u64| Some(*user))
//!     .failover(3)
//!     .is_available(|node: &Node| !circuit_is_open(node.id()))
//!     .retry_elsewhere(|e: &BoxError| e.is::<CircuitOpen>())
//!     .build(|node: &Node| {
//!         let address = node.address().to_owned();
//!         tower::service_fn(move |user: u64| {
//!             let address = address.clone();
//!             async move { Ok::<_, BoxError>(format!("{user} via {address}")) }
//!         })
//!     });
//! // Where user 42 goes, and where it goes when its node is out.
//! let order = router.preference_list(&42u64, 3);
//! assert_eq!(order.len(), 3);
//! # let _ = router;
//! # Ok::<(), omega_shard_router::TopologyError>(())
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod handle;
pub mod hash;
#[cfg(feature = "http")]
pub mod http;
mod layer;
#[cfg(feature = "redis")]
pub mod redis;
mod ring;
mod service;
mod table;
mod topology;

pub use error::{BoxError, ShardError, ShardErrorKind};
pub use handle::TopologyHandle;
pub use hash::ShardKey;
pub use layer::{ForNode, NodeTarget, ShardRouterLayer};
pub use service::{
    KeyExtractor, NoKey, NoRetry, NodeCounters, ResponseFuture, RetryElsewhere, RetryPolicy,
    ShardRouter, ShardRouterBuilder,
};
pub use topology::{
    Algorithm, Change, Flow, MAX_NODES, Movement, Node, Topology, TopologyError, TopologyErrorKind,
};

/// Requests sent to a node, counted through the `metrics` crate (feature `metrics`); label
/// `node`.
pub const METRIC_REQUESTS: &str = "omega_shard_router_requests_total";

#[cfg(all(doctest, feature = "http", feature = "redis"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
