//! # omega-rate-limit
//!
//! `RateLimitLayer`: GCRA rate limiting for Tower services, in this process or cluster-wide
//! over Redis.
//!
//! - **GCRA** with a rate, a burst and a weighted cost per request ([`Quota`]; a burst of 0 is
//!   an error, [`Quota::try_with_burst`]).
//! - **Several limits per request** (per user, per endpoint, global, ...), checked together:
//!   a request denied by one limit takes nothing from the others.
//! - **Keys** from omega-core's one key vocabulary ([`KeySource`](omega_core::key::KeySource)):
//!   closures, and with feature `http` the built-in `Header`, `Query`, `PathSegment`, `Path`,
//!   `ClientIp` (trusted proxies only) and `Endpoint` (the route template). What a request
//!   without the key means is each limit's choice ([`Limit::on_missing_key`]: not counted by
//!   default, or refused with 400); a `ClientIp` limit on a server that records no peer
//!   addresses refuses every request with [`PeerAddrMissing`] (500, naming the fix) rather than
//!   silently counting nothing.
//! - **In memory** (the default): one atomic per key, lock-free for known keys, memory bounded
//!   by a key count with idle keys dropped first; no cleanup thread.
//! - **Redis** (`redis` feature): one Lua script per decision on the server's clock, checking
//!   every limit at once; on Redis Cluster one call per slot, all at once, with refunds on
//!   denial. The scripts do the in-memory GCRA's integer arithmetic, so Redis and memory make
//!   the same decisions with the same figures. A script that runs twice (a request re-sent
//!   after a dropped connection) takes its cells once. Each limit chooses what happens when
//!   Redis fails ([`OnBackendFailure`]); a decision has one deadline, the backend's operation
//!   timeout, whatever it waits for (a lease, the exact limits' call, the slots of a cluster),
//!   then its failure policies decide.
//! - **Lease mode** (`redis` feature, per limit, `Limit::lease`): an instance takes a batch of
//!   cells in one call and spends them locally (also beside exact limits, which alone make a
//!   round trip); over any window `W` the cluster admits at most
//!   `burst + rate × (W + max_hold)`, and over a long run exactly what exact mode admits. The
//!   docs of `Lease` say how many cells can go unused.
//! - **Shadow mode** per limit, and **quota changes while serving** ([`RateLimiter::set_quota`]),
//!   atomic: a decision sees the old quota or the new one, never a mix.
//! - **Rejections** through omega-core's one strategy, as on every Omega Penta layer: by
//!   default the service fails with [`RateLimited`] (boxed); [`RateLimitLayer::respond`]
//!   (feature `http`) answers 429 with `Retry-After` and the IETF `RateLimit` fields on every
//!   response ([`headers`]: every policy of the request, the binding limit's state); a gRPC call
//!   gets `RESOURCE_EXHAUSTED`. With `grpc`, `RateLimited` converts into a `tonic::Status`. A
//!   request whose cost is above a limit's burst can never be admitted: it is refused without
//!   `Retry-After` ([`RateLimited::retry_after`] is `None`), as governor's
//!   `InsufficientCapacity`.
//! - **Adaptive concurrency** ([`adaptive`]: [`AdaptiveConcurrencyLayer`]): a limit on the
//!   requests in flight learnt from the downstream's latency and errors, per partition (a
//!   route, ...), with Vegas, Gradient2 or AIMD; a request over it is refused at once (503,
//!   gRPC `RESOURCE_EXHAUSTED`) through the same strategy; [`adaptive::AdaptiveRate`] makes a
//!   limit's rate follow it.
//! - **Configuration** (`serde` feature, module [`config`]): limits as files write them,
//!   validated with every mistake at its field.
//! - **Metrics** (`metrics` feature): allowed, denied and shadow-denied requests per limit,
//!   and Redis decision latency, through the `metrics` crate. Install the recorder before
//!   building limiters: handles are registered at build time.
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
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | limits shared through Redis or Redis Cluster; lease mode |
//! | `http` | [`RateLimitLayer::respond`], the `RateLimit` header fields, omega-core's HTTP key sources |
//! | `axum` | `Endpoint` reads axum's `MatchedPath`, `ClientIp` axum's `ConnectInfo` |
//! | `grpc` | `From<RateLimited> for tonic::Status` |
//! | `serde` | the configuration sections, [`config`] and [`adaptive::config`] |
//! | `metrics` | counters and latency through the `metrics` crate; the adaptive limits' gauges |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adaptive;
#[cfg(feature = "serde")]
pub mod config;
mod error;
pub mod future;
#[cfg(feature = "http")]
pub mod headers;
mod layer;
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
#[cfg(feature = "redis")]
mod task_queue;

pub use adaptive::{
    AdaptiveConcurrency, AdaptiveConcurrencyLayer, AdaptiveLimiter, ConcurrencyLimited,
};
pub use error::{ConfigError, PeerAddrMissing, RateLimited};
pub use future::ResponseFuture;
pub use layer::RateLimitLayer;
#[cfg(feature = "redis")]
pub use lease::{DEFAULT_MAX_HOLD, Lease};
pub use limit::{Limit, MAX_LIMITS, OnBackendFailure};
pub use limiter::RateLimiter;
pub use limiter::builder::RateLimiterBuilder;
pub use limiter::decision::{Binding, Decision, Denied, Refused};
pub use memory::DEFAULT_MAX_KEYS;
pub use quota::{Quota, QuotaError};
pub use service::RateLimit;

/// The shared rejection vocabulary, re-exported for convenience.
#[cfg(feature = "http")]
pub use omega_core::reject::Respond;
pub use omega_core::reject::{BoxError, KeepError, OnRejection, Refusal};
