//! # Omega Penta
//!
//! Five Tower middlewares over shared state: a two-tier query cache, a cluster-wide rate
//! limiter, a circuit breaker, a consistent-hashing shard router and aggregate snapshots for
//! event-sourced handlers. State lives in memory for one process, or in Redis (or Redis
//! Cluster) for many.
//!
//! This crate is the umbrella: it re-exports each layer behind a feature of the same name, and
//! the shared-state core as [`core`]. Layers land one by one; see the README for the status of
//! each.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> omega_penta::core::Result<()> {
//! use omega_penta::core::Backend;
//!
//! // One process: in-memory state, no server needed; a URL shares the state through Redis.
//! let backend = Backend::connect(None).await?;
//! assert!(backend.health().is_up());
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `cache` | [`cache`]: `CacheLayer`, `BatchCache` |
//! | `rate-limit` | [`rate_limit`]: `RateLimitLayer` |
//! | `circuit-breaker` | [`circuit_breaker`]: `CircuitBreakerLayer` |
//! | `shard-router` | [`shard_router`]: `ShardRouterLayer` |
//! | `snapshot` | [`snapshot`]: `SnapshotLayer` (memory and Redis stores; `sql`: PostgreSQL and SQLite; `fs`: files) |
//! | `redis` | Redis and Redis Cluster state (`core::redis`) |
//! | `http` | rejections as HTTP responses (429, 503), HTTP key extractors |
//! | `grpc` | rejections as gRPC status codes |
//! | `metrics` | metrics through the `metrics` crate |
//! | `config` | [`config`]: the whole stack from a JSON file |
//! | `tls` | `rediss://` URLs |
//! | `codec` | JSON and compact binary codecs for stored values |
//! | `full` | all of the above |

#![cfg_attr(docsrs, feature(doc_cfg))]

/// The shared-state core: backends, keys, scripts, clock, codecs, errors.
pub use omega_core as core;

/// `CacheLayer`: a two-tier (moka + Redis) cache, coherent across instances.
#[cfg(feature = "cache")]
pub use omega_cache as cache;

/// `RateLimitLayer`: GCRA rate limiting, in memory or cluster-wide over Redis.
#[cfg(feature = "rate-limit")]
pub use omega_rate_limit as rate_limit;

/// `CircuitBreakerLayer`: resilience4j's circuit breaker, lock-free, shared through Redis.
#[cfg(feature = "circuit-breaker")]
pub use omega_circuit_breaker as circuit_breaker;

/// `ShardRouterLayer`: consistent routing of keys to nodes.
#[cfg(feature = "shard-router")]
pub use omega_shard_router as shard_router;

/// `SnapshotLayer`: event-sourced aggregates that load from a snapshot and a short tail.
#[cfg(feature = "snapshot")]
pub use omega_snapshot as snapshot;

#[cfg(feature = "config")]
pub mod config;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
