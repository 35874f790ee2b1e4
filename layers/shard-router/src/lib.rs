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
//! | | lookup | balance (100 nodes) | keys moved on a change | state |
//! |---|---|---|---|---|
//! | table | one slot read | exact ±1 slot | the minimum, only to/from the changed node | 128 KiB, history-dependent |
//! | ring (160 vnodes) | bucket index + scan | ±~20% | ≈ the minimum, to/from the changed node | points, pure function of nodes |
//! | ketama | same | as libketama | same | same |
//! | rendezvous | O(n) scores | statistical | the minimum | none |
//!
//! The gateway's use (circuit breaker per node, failover along the preference list) is shown
//! on [`ShardRouterBuilder::is_available`] and [`ShardRouterBuilder::retry_elsewhere`].

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
