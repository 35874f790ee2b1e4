//! # omega-core
//!
//! The state every Omega Penta layer shares, and the pieces all of them need:
//!
//! - [`Backend`]: in-memory ([`MemoryBackend`]) or Redis ([`redis::RedisBackend`], standalone or
//!   Cluster, behind the `redis` feature), chosen at run time;
//! - bounded Redis operations: every operation has a timeout, a dead Redis fails fast, one
//!   supervisor per backend reconnects with jittered backoff, and [`Health`] says up or down,
//!   since when and why;
//! - [`Keyspace`]: a prefix for every key, and Redis Cluster hash tags for keys that one script
//!   touches together ([`hash_slot`] computes a key's slot);
//! - [`redis::Script`]: Lua scripts run by SHA and reloaded after `SCRIPT FLUSH` or a failover;
//! - [`Clock`]: cheap time readings that tests control (`tokio::time::pause` or a manual clock);
//! - [`codec`]: JSON and compact binary codecs for stored values (feature `codec`);
//! - one [`Error`] type whose messages name the server, the operation and the kind of failure.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> omega_core::Result<()> {
//! use omega_core::{Backend, Keyspace};
//!
//! let backend = Backend::memory(); // or Backend::redis(RedisConfig::url("redis://...")).await?
//! let key = Keyspace::new("shop")?.tagged("user:7", &["visits"]);
//! assert_eq!(backend.incr_by(&key, 1, None).await?, 1);
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | [`redis::RedisBackend`]: Redis and Redis Cluster through redis-rs |
//! | `tls` | `rediss://` URLs |
//! | `codec` | [`codec::JsonCodec`] and [`codec::BinaryCodec`] |
//! | `http` | [`http`]: shared helpers for HTTP and gRPC rejections |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
pub mod clock;
#[cfg(feature = "codec")]
pub mod codec;
mod error;
mod health;
#[cfg(feature = "http")]
pub mod http;
mod keys;
mod memory;
pub mod metrics;
#[cfg(feature = "redis")]
pub mod redis;

pub use backend::Backend;
pub use clock::{Clock, Nanos};
pub use error::{Error, ErrorKind, Result};
pub use health::{Health, HealthStatus};
pub use keys::{DEFAULT_PREFIX, Keyspace, hash_slot};
pub use memory::MemoryBackend;
