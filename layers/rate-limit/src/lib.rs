//! # omega-rate-limit
//!
//! `RateLimitLayer`: GCRA rate limiting for Tower services, in this process or cluster-wide
//! over Redis.
//!
//! - **GCRA** with a rate, a burst and a weighted cost per request ([`Quota`]).
//! - **Several limits per request** (per user, per endpoint, global, ...), checked together:
//!   a request denied by one limit takes nothing from the others.
//! - **In memory** (the default): one atomic per key, lock-free for known keys, memory bounded
//!   by a key count with idle keys dropped first; no cleanup thread.
//! - **Redis** (`redis` feature): one Lua script per decision on the server's clock, checking
//!   every limit at once; on Redis Cluster one call per slot with refunds on denial. Each limit
//!   chooses what happens when Redis fails ([`OnBackendFailure`]); decisions never wait longer
//!   than the backend's operation timeout.
//! - **Lease mode** (`redis` feature, per limit, [`Limit::lease`]): an instance takes a batch of
//!   cells in one call and spends them locally; the cluster still admits no more than the
//!   limit. The module docs of [`Lease`] say how many cells can go unused.
//! - **Shadow mode** per limit, and **quota changes while serving** ([`RateLimiter::set_quota`]).
//! - **HTTP** (`http` feature, module [`http`]): 429 with `Retry-After` and the IETF
//!   `RateLimit` fields on every response; keys by header, client IP (trusted proxies only)
//!   and endpoint (axum route template). **gRPC** (`grpc`): `RESOURCE_EXHAUSTED`.
//! - **Metrics** (`metrics` feature): allowed, denied and shadow-denied requests per limit,
//!   Redis decision latency and backend health, through the `metrics` crate. Install the
//!   recorder before building limiters: handles are registered at build time.
//!
//! ```
//! use omega_rate_limit::{Limit, Quota, RateLimitLayer, RateLimiter};
//!
//! struct Request { user: String }
//!
//! let limiter = RateLimiter::<Request>::builder()
//!     .limit(Limit::global("global", Quota::per_second(10_000)))
//!     .limit(Limit::keyed("per_user", Quota::per_minute(60).with_burst(10), |r: &Request| {
//!         Some(r.user.clone())
//!     }))
//!     .build()
//!     .unwrap();
//! let layer = RateLimitLayer::new(limiter.clone());
//! # let _ = layer;
//! let d = limiter.check_local(&Request { user: "ada".into() });
//! assert!(d.is_allowed());
//! assert_eq!(d.binding().unwrap().remaining, 9);
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "redis")]
mod lease;
mod limit;
mod limiter;
mod memory;
mod metrics;
mod quota;
#[cfg(feature = "redis")]
mod redis_store;
mod service;

pub use error::{ConfigError, RateLimited};
#[cfg(feature = "redis")]
pub use lease::{DEFAULT_MAX_HOLD, Lease};
pub use limit::{KeyExtractor, Limit, OnBackendFailure};
pub use limiter::{Binding, Decision, Denied, MAX_LIMITS, RateLimiter, RateLimiterBuilder};
pub use memory::DEFAULT_MAX_KEYS;
pub use quota::{Quota, QuotaError};
pub use service::{BoxError, RateLimit, RateLimitLayer, ResponseFuture};
