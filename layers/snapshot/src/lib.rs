//! # omega-snapshot
//!
//! `SnapshotLayer`: event-sourced aggregates that load in constant time. Without snapshots,
//! loading an aggregate replays every event it ever had, and gets slower with each one; with
//! them, it reads the newest snapshot and the few events after it.
//!
//! - **Model**: an [`Aggregate`] (`apply`, `decide`, schema versions, upcasters), an
//!   [`EventStore`] (append with an expected version, read, stream) and a [`SnapshotStore`]
//!   (save, load the newest, list, prune). A [`Repository`] ties them together.
//! - **Layer**: [`SnapshotLayer`] wraps a command handler (a `tower::Service` taking
//!   [`Decide`]: the command and the current state, answering a [`Decision`]: events and a
//!   reply), or the [`Decider`] built from [`Aggregate::decide`]. It loads the aggregate,
//!   appends the decided events with optimistic concurrency, decides again on a conflict (up
//!   to [`SnapshotConfig::max_retries`]), and keeps hot aggregates in an in-process cache
//!   (moka), invalidated on conflict. Commands for one aggregate take turns in a process.
//! - **Exactly once**: every command carries a [`CommandId`]; an append whose outcome is
//!   unknown (a timeout, a lost connection) is sent again with the same id, and the store
//!   answers "duplicate" instead of applying it twice. Clients may choose the id
//!   ([`Envelope::with_id`]) to retry safely themselves.
//! - **Snapshots** are written by a background task, never on the command path, when a
//!   [`Trigger`] fires (every N events, every T, or when measured replay cost passes a
//!   threshold; combinable). Every K-th is full, the others are binary deltas against it
//!   (zstd with the full snapshot as dictionary); full ones are zstd-compressed above a size.
//!   Each carries a header with a CRC-32 checksum, the state's schema version, the codec and
//!   the base version. A snapshot's version never moves backwards.
//! - **Retention** ([`Retention`]): keep the newest N, delete those older than a maximum age,
//!   never the last valid one nor the base of a kept delta.
//! - **Rehydration**: a corrupt, undecodable or old-schema snapshot falls back to the previous
//!   one, then to a full replay; each step is reported ([`SnapshotEvent::Fallback`], metric
//!   `omega_snapshot_fallbacks_total`), damaged snapshots are deleted and a fresh one is
//!   written. Nothing is lost silently: an event that cannot be read fails the load
//!   ([`RehydrationFailed`]).
//! - **Stores**: [`MemoryStore`]; `FsStore` (feature `fs`); `RedisStore` (feature `redis`,
//!   Redis or Redis Cluster, one hash tag per aggregate); `PgStore` and `SqliteStore`
//!   (features `postgres`, `sqlite`, through sqlx, migrations included).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use serde::{Deserialize, Serialize};
//! use omega_snapshot::{Aggregate, AggregateId, Envelope, MemoryStore, Repository, SnapshotLayer};
//! use tower::ServiceExt;
//!
//! #[derive(Clone, Debug, Default, Serialize, Deserialize)]
//! struct Account { open: bool, balance: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! enum Event { Opened, Deposited(i64), Withdrew(i64) }
//!
//! enum Command { Open, Deposit(i64), Withdraw(i64) }
//!
//! #[derive(Debug, PartialEq)]
//! enum Refused { NotOpen, InsufficientFunds }
//! impl std::fmt::Display for Refused {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
//! }
//! impl std::error::Error for Refused {}
//!
//! impl Aggregate for Account {
//!     const TYPE: &'static str = "account";
//!     type Command = Command;
//!     type Event = Event;
//!     type Error = Refused;
//!
//!     fn apply(&mut self, event: &Event) {
//!         match event {
//!             Event::Opened => self.open = true,
//!             Event::Deposited(n) => self.balance += n,
//!             Event::Withdrew(n) => self.balance -= n,
//!         }
//!     }
//!
//!     fn decide(&self, command: &Command) -> Result<Vec<Event>, Refused> {
//!         match command {
//!             Command::Open => Ok(vec![Event::Opened]),
//!             _ if !self.open => Err(Refused::NotOpen),
//!             Command::Deposit(n) => Ok(vec![Event::Deposited(*n)]),
//!             Command::Withdraw(n) if *n > self.balance => Err(Refused::InsufficientFunds),
//!             Command::Withdraw(n) => Ok(vec![Event::Withdrew(*n)]),
//!         }
//!     }
//! }
//!
//! let repo = Repository::<Account>::new(MemoryStore::new());
//! let accounts = SnapshotLayer::new(repo).decider();
//! let id = AggregateId::new("acct-1").unwrap();
//!
//! for command in [Command::Open, Command::Deposit(100)] {
//!     accounts.clone().oneshot(Envelope::new(id.clone(), command)).await.unwrap().unwrap();
//! }
//! // The domain's refusal is the reply, not a failure of the service.
//! let reply = accounts.clone().oneshot(Envelope::new(id.clone(), Command::Withdraw(500))).await.unwrap();
//! assert_eq!(reply.unwrap_err(), Refused::InsufficientFunds);
//! let done = accounts.oneshot(Envelope::new(id, Command::Withdraw(30))).await.unwrap().unwrap();
//! assert_eq!((done.version(), done.state().balance), (3, 70));
//! # }
//! ```
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `zstd` (default) | zstd compression of large snapshots and binary deltas (builds libzstd: needs a C compiler) |
//! | `fs` | `FsStore`: events and snapshots in a directory |
//! | `redis` | `RedisStore`: Redis or Redis Cluster through omega-core's `RedisBackend` |
//! | `postgres` | `PgStore`: PostgreSQL through sqlx 0.8, with migrations |
//! | `sqlite` | `SqliteStore`: SQLite through sqlx 0.8, with migrations (builds SQLite: needs a C compiler) |
//! | `http` | `.respond()`: refusals as 409 / 503 / 500 responses; `http::Request<Envelope<C>>` as a command |
//! | `serde` | `SnapshotConfig::from_json` and `Deserialize`, validated with field names |
//! | `metrics` | metrics through the `metrics` crate (`omega_snapshot_*`) |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod aggregate;
mod config;
mod decider;
mod error;
mod event;
mod format;
#[cfg(feature = "fs")]
mod fs;
pub mod future;
mod layer;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod rehydrate;
mod repository;
mod service;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod sql;
mod store;
mod writer;

pub use aggregate::{
    Aggregate, AggregateId, CommandId, CommandRequest, Envelope, Format, InvalidId,
    MAX_COMMAND_ID_LEN, MAX_ID_LEN, Old, StreamId,
};
pub use config::{Retention, SnapshotConfig, Trigger};
#[cfg(feature = "serde")]
pub use config::{RetentionSection, SnapshotSection, TriggerSection};
pub use decider::{Accepted, Decider};
pub use error::{
    ConcurrencyConflict, Error, RehydrationFailed, StoreError, StoreErrorKind, StoreUnavailable,
    as_refusal,
};
pub use event::{FallbackReason, SnapshotEvent};
pub use format::SnapshotKind;
#[cfg(feature = "fs")]
pub use fs::FsStore;
pub use layer::SnapshotLayer;
pub use memory::MemoryStore;
/// Configuration errors, each mistake with its field (omega-core's, as every layer reports them).
pub use omega_core::config::ConfigError;
#[cfg(feature = "http")]
pub use omega_core::reject::Respond;
pub use omega_core::reject::{BoxError, KeepError, OnRejection, Refusal};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
pub use repository::{Loaded, Repository, RepositoryBuilder};
pub use service::{Decide, Decision, Snapshot};
#[cfg(feature = "postgres")]
pub use sql::PgStore;
#[cfg(feature = "sqlite")]
pub use sql::SqliteStore;
pub use store::{
    Appended, BoxFuture, EventStore, NewEvent, RecordedEvent, SnapshotMeta, SnapshotRecord,
    SnapshotStore,
};

// The README's example runs as a doctest.
#[cfg(all(doctest, feature = "sqlite"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
