//! # omega-circuit-breaker
//!
//! `CircuitBreakerLayer`: resilience4j's circuit breaker for Tower services and plain futures,
//! lock-free on its hot path, reconfigurable while serving, and optionally shared across
//! instances through Redis.
//!
//! - **States** CLOSED, OPEN, HALF_OPEN, plus DISABLED, FORCED_OPEN and METRICS_ONLY, with
//!   manual transitions on the [`CircuitBreaker`] (clones are handles on one breaker).
//! - **Failure detection** ([`SlidingWindow`]): count-based or time-based window with a
//!   failure-rate threshold, a slow-call duration and slow-call-rate threshold, a minimum number
//!   of calls; or a number of consecutive failures.
//! - **OPEN** waits, with optional exponential backoff and jitter over repeated openings, then
//!   moves to HALF_OPEN on a timer (no traffic needed), or on the next call or state read.
//! - **HALF_OPEN** admits exactly N probes however many tasks race; a dropped probe gives its
//!   permit back; results of calls admitted in an earlier state are ignored (an epoch in the
//!   permit); after an optional maximum wait it opens again. A change of N while serving
//!   applies from the next HALF_OPEN (the cycle under way keeps its own N, as resilience4j's
//!   HALF_OPEN state does). An optional ramp-up after closing admits a growing share of
//!   traffic.
//! - **Classification** ([`Classify`]): errors, HTTP 5xx and gRPC status codes
//!   ([`http::HttpClassifier`], feature `http`), or any predicate; ignored outcomes.
//! - **Per-key breakers** in a [`BreakerRegistry`] with a maximum size and idle eviction; the
//!   keyed layer takes its key from any [`KeySource`](omega_core::key::KeySource). Lookups
//!   take no lock; a new key costs the same however many breakers exist (copy-on-write
//!   shards of a few breakers each), so clients sending new keys cannot slow everyone down.
//! - **Readiness**: the layer's `poll_ready` is the inner service's, except that a breaker
//!   that will refuse whatever the request (OPEN, FORCED_OPEN) answers ready at once and
//!   refuses in `call`: rejections do not wait for the inner service. A guarded future
//!   ([`CircuitBreaker::call`]) takes its permit when first polled; the service takes it in
//!   `call`, where the inner service's `call` runs (see [`CircuitBreakerService`]).
//! - **Health** ([`HealthSnapshot`]), **events** ([`CircuitBreaker::events`], a tokio
//!   broadcast) and **metrics** (feature `metrics`).
//! - **Rejection** as [`CircuitOpen`] (a [`Refusal`]: 503, gRPC `UNAVAILABLE`, `Retry-After`
//!   the time until the next probe). The layer's rejection strategy ([`OnRejection`]), the
//!   same on every Omega Penta layer, keeps it an error ([`KeepError`], the default) or
//!   answers it (`Respond`, feature `http`); with `grpc`, `From<CircuitOpen> for
//!   tonic::Status`.
//! - **Shared state** (feature `redis`, `shared::RedisSync`): OPEN transitions shared through
//!   the instance's one Redis handle (standalone or Cluster) once a quorum of instances (2 by
//!   default, under stable instance ids) tripped on their own calls; followers jitter their
//!   wait; a recovery ends only the opening it knew, a manual close or reset clears the shared
//!   state; never a Redis round trip per call.
//! - **Configuration files** (feature `serde`, `config::BreakerConfig`).
//!
//! ## Cost per call
//!
//! CLOSED with a count-based or consecutive window: one atomic load to admit, and once the
//! window holds only successes, one atomic load to record a success; no lock, no allocation,
//! no clock reading. A slow-call duration adds a clock reading at the start and at the end of
//! each call; a time-based window adds a clock reading and a short uncontended lock per
//! recorded call. Failures, transitions and OPEN take slower (still lock-free, except
//! transitions) paths.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use omega_circuit_breaker::{CallError, CircuitBreaker, CircuitBreakerConfig, SlidingWindow, State};
//!
//! let breaker = CircuitBreaker::with_config(
//!     "payment_gateway",
//!     CircuitBreakerConfig::default()
//!         .sliding_window(SlidingWindow::ConsecutiveFailures(3))
//!         .wait_duration(Duration::from_secs(30)),
//! )
//! .unwrap();
//! for _ in 0..3 {
//!     let r: Result<(), _> = breaker.call(async { Err("boom") }).await;
//!     assert!(matches!(r, Err(CallError::Inner("boom"))));
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let r = breaker.call(async { Ok::<_, &str>(()) }).await;
//! assert!(matches!(r, Err(CallError::Rejected(_))));
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `http` | `http::HttpClassifier`, `.http()` / `.respond()`: 503 + `Retry-After` / gRPC `UNAVAILABLE` responses, `.grpc()` (statuses in trailers) |
//! | `axum` | `http`, and omega-core's key sources read axum's `MatchedPath` and `ConnectInfo` |
//! | `grpc` | `From<CircuitOpen> for tonic::Status` |
//! | `redis` | `shared::RedisSync`: OPEN shared across instances (Redis or Redis Cluster) |
//! | `serde` | `config::BreakerConfig`: the breaker's section of a configuration file |
//! | `metrics` | metrics through the `metrics` crate |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod admission;
mod breaker;
mod builder;
mod classify;
#[cfg(feature = "serde")]
pub mod config;
mod error;
mod event;
mod future;
#[cfg(feature = "http")]
mod grpc;
mod health;
#[cfg(feature = "http")]
pub mod http;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod permit;
mod registry;
mod select;
mod service;
mod settings;
mod shards;
#[cfg(feature = "redis")]
pub mod shared;
mod state;
mod window;

pub use breaker::CircuitBreaker;
pub use builder::CircuitBreakerBuilder;
pub use classify::{Classify, ClassifyFn, ErrorsAreFailures, Outcome};
pub use error::{CallError, CircuitOpen, ConfigError};
pub use event::{Cause, Event, EventKind};
pub use future::ResponseFuture;
#[cfg(feature = "http")]
pub use grpc::{GrpcBody, GrpcCircuitBreakerLayer, GrpcCircuitBreakerService, GrpcResponseFuture};
pub use health::HealthSnapshot;
pub use layer::CircuitBreakerLayer;
pub use omega_core::Clock;
#[cfg(feature = "http")]
pub use omega_core::reject::Respond;
pub use omega_core::reject::{BoxError, KeepError, OnRejection, Refusal};
pub use permit::{Call, OwnedPermit, Permit};
pub use registry::{BreakerRegistry, BreakerRegistryBuilder, DEFAULT_MAX_BREAKERS};
pub use select::{Keyed, Selector, Single};
pub use service::CircuitBreakerService;
pub use settings::{CircuitBreakerConfig, MAX_WINDOW_CALLS, MAX_WINDOW_SECONDS, SlidingWindow};
pub use state::State;

// The README's examples run as doctests (they use axum and the `http` feature).
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
