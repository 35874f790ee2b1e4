//! # omega-core
//!
//! The vocabulary every Omega Penta layer shares, and the state they keep together:
//!
//! - [`reject`]: one way to refuse a request. Layers describe refusals with typed errors
//!   ([`reject::Refusal`]); an [`reject::OnRejection`] strategy, the same on every layer,
//!   keeps them as errors ([`reject::KeepError`], the default) or answers them
//!   ([`reject::Respond`]: 429 / 503 with `Retry-After`, gRPC status codes).
//! - [`key`]: one way to say where a request's key comes from ([`key::KeySource`]: closures,
//!   and the built-ins `Header`, `Query`, `PathSegment`, `Path`, `ClientIp`, `Endpoint`,
//!   `Global`), what a missing key means ([`key::MissingKey`]), and one rule for names.
//! - [`Backend`]: in memory, or Redis ([`redis::RedisBackend`], standalone or Cluster, from one
//!   URL: `redis://`, `rediss://`, `redis+cluster://`), chosen at run time. Every Redis
//!   operation has a timeout and runs at most once (never re-sent once it may have run), a
//!   dead or hung server fails fast (on a cluster, per primary: the others' slots are not
//!   slowed), one supervisor per server reconnects with jittered backoff and probes a server
//!   marked down, [`Health`] says up or down, since when and why (per primary with
//!   [`redis::RedisBackend::node_health`]), and [`redis::RedisBackend::subscribe`] keeps a
//!   pub/sub subscription (sharded on a cluster) across reconnects, telling its consumer what
//!   it may have missed.
//! - [`Keyspace`]: a prefix for every key, and Redis Cluster hash tags for keys that one script
//!   touches together ([`hash_slot`] computes a key's slot); [`redis::Script`]: Lua scripts run
//!   by SHA and reloaded after `SCRIPT FLUSH` or a failover.
//! - [`config`]: what every layer's configuration shares: durations, errors naming their
//!   field; with feature `serde`, key sources and parsing that reports a field's path.
//! - [`Clock`]: cheap time readings that tests control; [`codec`]: JSON and compact binary
//!   codecs for stored values (feature `codec`); one [`Error`] type whose messages name the
//!   server, the operation and the kind of failure.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> omega_core::Result<()> {
//! use omega_core::key::{Global, KeySource};
//! use omega_core::{Backend, Keyspace};
//!
//! let backend = Backend::connect(None).await?; // or Some("redis+cluster://h1:7000,h2:7001")
//! let key = Keyspace::new("shop")?.tagged("user:7", &["visits"]);
//! assert_eq!(key, "shop:{user:7}:visits");
//! assert!(Global.key(&()).is_some());
//! # let _ = backend;
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | [`redis::RedisBackend`]: Redis and Redis Cluster through redis-rs |
//! | `tls` | `rediss://` URLs |
//! | `http` | [`reject::Respond`], the HTTP key sources ([`key::http`]), [`http`] helpers |
//! | `axum` | `Endpoint` and `ClientIp` read axum's `MatchedPath` and `ConnectInfo` |
//! | `serde` | the serde side of [`config`]: key sources, parsing with field paths |
//! | `metrics` | backend health, operation latency and errors through the `metrics` crate |
//! | `codec` | [`codec::JsonCodec`] and [`codec::BinaryCodec`] |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
pub mod clock;
#[cfg(feature = "codec")]
pub mod codec;
pub mod config;
mod error;
mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
mod keyspace;
pub mod metrics;
#[cfg(feature = "redis")]
pub mod redis;
pub mod reject;
pub mod task;

pub use backend::Backend;
pub use clock::{Clock, Nanos};
pub use error::{Error, ErrorKind, Result};
pub use health::{Health, HealthStatus};
pub use keyspace::{DEFAULT_PREFIX, Keyspace, hash_slot};
