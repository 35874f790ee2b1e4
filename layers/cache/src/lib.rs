//! # omega-cache
//!
//! `CacheLayer`: a two-tier cache for Tower services that stays coherent across instances.
//! The same slow query, asked again and again by many services, is answered from memory; one
//! instance's answer serves the others through Redis; a purge reaches every instance.
//!
//! - **L1** ([`Partition`]): moka's synchronous cache per partition (TinyLFU admission, a byte
//!   weigher, per-entry expiry). A hit is a lookup and a clock reading: no boxed future, no
//!   allocation, no lock.
//! - **L2** (feature `redis`): Redis or Redis Cluster through omega-core's handle. One value per
//!   entry carries its stored / fresh-until / stale-until times and tags, so an L2 hit is one
//!   round trip (one script call, which also takes the lease on a miss); L2 hits are promoted
//!   to L1. Without Redis, or while it is down, the cache works from memory and the upstream:
//!   no request fails because of the cache.
//! - **What is cached** is a [`Policy`]: key, partition and tags from the request; the
//!   [`Verdict`] (store with [`Rules`], store as a negative answer, pass, failure) from the
//!   response. [`Resolver`] builds one from a [`KeySource`](omega_core::key::KeySource) and
//!   closures.
//! - **HTTP** (feature `http`): [`HttpCacheLayer`] is RFC 9111's shared cache in front of an
//!   HTTP service (the responses' `Cache-Control` decides, `Vary`, revalidation, `Age`,
//!   `Cache-Status`, invalidation after unsafe methods; see [`http`]); [`HttpPolicy`] holds the
//!   choices RFC 9111 leaves to the cache.
//! - **How responses are stored** is a [`Storage`]: values stored as they are ([`Values`]), or
//!   HTTP bodies captured while they stream ([`HttpStorage`]); a [`ValueCodec`] gives their
//!   bytes ([`RawBytes`], [`Json`], [`Binary`], [`HttpCodec`], yours). A response larger than
//!   the partition's limit passes through, never buffered whole.
//! - **Partitions**, each with its own capacity, TTLs, size limit and codec; flush one with
//!   [`Cache::flush_partition`].
//! - **Coalescing**: concurrent misses for one key make one upstream call in a process; with
//!   Redis, one across instances (a short lease per key; others wait a bounded time, then load
//!   themselves).
//! - **Freshness**: TTL, stale-while-revalidate (exactly one background refresh per stale
//!   window, the stale value served meanwhile), stale-if-error, negative caching with its own
//!   TTL.
//! - **Invalidation** by key, tag and partition ([`Cache::invalidate`],
//!   [`Cache::invalidate_tag`], [`Cache::flush_partition`]): L2 delete plus a pub/sub message
//!   on which every instance drops its L1 copies; after a gap in the subscription an instance
//!   drops its L1 rather than serve what it may have missed. On Redis Cluster a tag's entries
//!   are one set under one hash tag and a partition's generation is one key: no scan of every
//!   node.
//! - **Batches** ([`BatchCache`]): a request for many items split into per-item keys, only the
//!   misses loaded, in one call, merged in order; the TTL the least of its parts'.
//! - **Counters** ([`Stats`]) and, with feature `metrics`, hit / miss / stale / coalesced /
//!   evicted metrics.
//! - **Refusals**: a request that may only be answered from the cache
//!   ([`Lookup::only_if_cached`]) and misses is refused with [`NotCached`] through the shared
//!   [`OnRejection`] strategy ([`KeepError`] by default; `.respond()` answers 504).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), omega_cache::BoxError> {
//! use std::time::Duration;
//! use bytes::Bytes;
//! use omega_cache::{Cache, CacheLayer, Partition, RawBytes, Resolver, Rules, Verdict};
//! use tower::{Layer, ServiceExt};
//!
//! // A cache with one partition (add `.redis(backend)` to share it between instances).
//! let cache = Cache::<Bytes>::builder()
//!     .codec(RawBytes)
//!     .partition(
//!         Partition::new("reports")
//!             .ttl(Duration::from_secs(60))
//!             .stale_while_revalidate(Duration::from_secs(30))
//!             .negative_ttl(Duration::from_secs(5)),
//!     )
//!     .build()?;
//!
//! // What is cached: keyed by the report id, tagged by it, empty answers as negative ones.
//! let policy = Resolver::new(|id: &u64| Some(*id))
//!     .partition("reports")
//!     .tags(|id: &u64| [format!("report:{id}")])
//!     .judge(|body: &Bytes| {
//!         if body.is_empty() { Verdict::Negative(Rules::new()) } else { Verdict::Store(Rules::new()) }
//!     });
//! let slow_query = tower::service_fn(|id: u64| async move {
//!     Ok::<_, std::io::Error>(Bytes::from(format!("report {id}")))
//! });
//! let svc = CacheLayer::new(cache.clone(), policy).layer(slow_query);
//!
//! assert_eq!(svc.clone().oneshot(7).await?, "report 7"); // a miss: the query runs
//! assert_eq!(svc.clone().oneshot(7).await?, "report 7"); // a hit
//! cache.invalidate_tag("report:7").await?; // on every instance, with Redis
//! assert_eq!(cache.stats().hits, 1);
//! # Ok(()) }
//! ```
//!
//! ## Cost of a hit
//!
//! The policy borrows the key from the request (or builds it inline), moka's synchronous
//! lookup clones an `Arc`, one clock reading decides fresh or stale, the answer is a clone of
//! the stored value (`Bytes`, an `Arc`), and the response future is ready at once. A test
//! counts the allocations of 100,000 hits through the layer: zero.
//!
//! ## Features
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | L2 in Redis or Redis Cluster, cross-instance coalescing and invalidation |
//! | `http` | [`HttpCacheLayer`] and [`HttpPolicy`] (RFC 9111's shared cache), [`HttpStorage`], [`HttpCodec`], `.respond()` (504 for `only-if-cached`) |
//! | `serde` | [`config`]: the configuration section, validated with field paths |
//! | `codec` | [`Json`] and [`Binary`] codecs for serde values |
//! | `metrics` | counters through the `metrics` crate ([`metric_names`]) |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch;
#[cfg(feature = "redis")]
mod bus;
mod cache;
#[cfg(feature = "serde")]
pub mod config;
mod entry;
pub mod error;
mod flight;
mod front;
pub mod future;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "redis")]
mod l2;
mod layer;
mod load;
mod partition;
mod policy;
mod refresh;
mod service;
mod stats;
mod storage;
mod store;

pub use batch::{Batch, BatchCache, ItemKey};
pub use cache::{Cache, CacheBuilder};
pub use error::{CacheError, CacheErrorKind, NotCached};
#[cfg(feature = "http")]
pub use http::{
    CacheBody, HttpCache, HttpCacheLayer, HttpCodec, HttpPolicy, HttpStorage, SetCookie,
    StoredResponse,
};
pub use layer::CacheLayer;
pub use omega_core::Clock;
#[cfg(feature = "http")]
pub use omega_core::reject::Respond;
pub use omega_core::reject::{BoxError, KeepError, OnRejection, Refusal};
pub use partition::{DEFAULT_CAPACITY, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_TTL, Partition};
pub use policy::{
    DEFAULT_PARTITION, Judge, Lookup, NoTags, Policy, RequestTags, Resolver, Rules, StoreAll,
    TagFn, Verdict,
};
pub use service::CacheService;
pub use stats::Stats;
#[cfg(feature = "metrics")]
pub use stats::names as metric_names;
#[cfg(feature = "codec")]
pub use storage::{Binary, Json};
pub use storage::{Captured, InArc, RawBytes, Storage, ValueCodec, Values};

// The README's examples compile as doctests.
#[cfg(all(doctest, feature = "redis", feature = "http"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
