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
//!   - **ring** with virtual nodes (weighted), and the **ketama** continuums of the memcached
//!     clients, each by name ([`KetamaFlavor`]: libketama, libmemcached weighted and unweighted,
//!     spymemcached), checked against the real clients' choices;
//!   - **rendezvous** (highest random weight), for small sets; also the failover order after a
//!     table owner.
//! - **Preference lists** of distinct nodes per key ([`Topology::preference_list`]), for
//!   replicas and failover; **bounded loads** for hot keys, counting each request from the
//!   moment it is routed.
//! - **Tower**: [`ShardRouter`] sends each request to its node's service; only that service
//!   must be ready, within a readiness timeout; failover hooks for circuit breakers; per-node
//!   counters; updates from a handle or a [`Discover`](tower::discover::Discover) stream. The
//!   healthy path is one lookup: the key's preference list is built only when its owner
//!   cannot take the request, and node services are made outside every lock, by the first
//!   request routed to each node. [`ShardRouterLayer`] wraps
//!   one inner service (a proxy's HTTP client) and hands it the chosen [`Node`] with each
//!   request.
//! - **Keys** come from core's [`KeySource`](omega_core::key::KeySource): a closure
//!   `Fn(&Req) -> Option<K>` or a built-in (`Header`, `Query`, `PathSegment`, `Path`,
//!   `ClientIp`, `Endpoint`, with the `http` feature). The router hashes the key's
//!   bytes; an integer key is its little-endian bytes, so `|user: &u64| Some(*user)` routes
//!   where [`Topology::owner`]`(&user)` says. A request without a key is refused (or spread
//!   over the nodes, [`ShardRouterBuilder::missing_key`]).
//! - **Refusals** ([`ShardError`]: no key, no node, none available) follow core's rejection
//!   strategy: kept as errors by default ([`KeepError`]), or answered as 400 / 503 responses
//!   with [`respond`](ShardRouterBuilder::respond) (feature `http`).
//! - **Introspection**: owner, preference list, owned fractions, exact preview of a change
//!   ([`Topology::preview`]), epoch, counters.
//! - **Shared topology** (feature `redis`): [`redis::RedisTopology`] shares the topology
//!   through Redis or Redis Cluster over core's one Redis handle, with change notifications;
//!   routers keep routing on their last topology while Redis is down, epochs never move
//!   backwards, and a Redis that lost the topology is re-seeded from the newest epoch known.
//! - **Configuration** (feature `serde`): [`config::PoolConfig`], the section of a pool of
//!   nodes.
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `http` | [`ShardRouterBuilder::respond`] (refusals as 400 / 503 responses), core's HTTP key sources, the chosen [`Node`] in `http::Request` extensions ([`NodeTarget`]) |
//! | `axum` | core's HTTP key sources read axum's `MatchedPath` and `ConnectInfo` |
//! | `grpc` | `From<ShardError> for tonic::Status` |
//! | `redis` | [`redis::RedisTopology`]: the topology shared through Redis or Redis Cluster |
//! | `serde` | [`config`]: the configuration section of a pool |
//! | `metrics` | requests per node through the `metrics` crate ([`METRIC_REQUESTS`]) |
//!
//! ## Determinism
//!
//! Every process routes a key to the same node given the same topology: keys are hashed with
//! XXH3-64 (seed 0; the client's MD5 or one-at-a-time hash in ketama mode), node scores with the SplitMix64 finalizer over an
//! XXH3 seed of the node id, and weighted rendezvous uses an integer logarithm, never
//! floating-point library functions. `tests/vectors.rs` pins all of them. See [`hash`].
//!
//! ## Choosing an algorithm
//!
//! | | lookup (100 nodes) | busiest node / mean | keys moved on a change | state |
//! |---|---|---|---|---|
//! | table | one slot read, ~5 ns | 1.001 (exact ±1 slot) | the minimum, only to/from the changed node | 128 KiB, depends on the history |
//! | ring (160 points per weight unit) | bucket index + short scan, ~7 ns | ~1.25 | only to/from the changed node; the amount varies ±15% | points; a function of the nodes |
//! | ketama | same, plus MD5 of the key | ~1.23 | as the memcached client (point counts may depend on all weights) | points; a function of the nodes |
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
//! - a node whose service fails `poll_ready`, or stays not ready for the
//!   [`readiness_timeout`](ShardRouterBuilder::readiness_timeout) (default
//!   [`DEFAULT_READINESS_TIMEOUT`], 4 s), is skipped too.
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
//!     // The node service's own error type (here `BoxError`).
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

mod builder;
#[cfg(feature = "serde")]
pub mod config;
mod error;
mod future;
mod handle;
pub mod hash;
mod ketama;
mod layer;
mod movement;
mod node;
#[cfg(feature = "redis")]
pub mod redis;
mod retry;
mod ring;
mod routes;
mod service;
mod settings;
mod table;
mod topology;

pub use builder::{NoKey, ShardRouterBuilder};
pub use error::{BoxError, ShardError, ShardErrorKind, TopologyError, TopologyErrorKind};
pub use future::ResponseFuture;
pub use handle::TopologyHandle;
pub use hash::ShardKey;
pub use ketama::KetamaFlavor;
pub use layer::{ForNode, NodeTarget, ShardRouterLayer};
pub use movement::{Flow, Movement};
pub use node::{Algorithm, Change, MAX_NODES, Node};
#[cfg(feature = "http")]
pub use omega_core::reject::Respond;
pub use omega_core::reject::{KeepError, OnRejection, Refusal};
pub use retry::{NoRetry, RetryElsewhere, RetryPolicy};
pub use routes::{METRIC_REQUESTS, NodeCounters};
pub use service::ShardRouter;
pub use settings::DEFAULT_READINESS_TIMEOUT;
pub use topology::Topology;

#[cfg(all(doctest, feature = "http", feature = "redis", feature = "serde"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
