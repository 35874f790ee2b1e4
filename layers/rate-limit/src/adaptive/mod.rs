//! `AdaptiveConcurrencyLayer`: a concurrency limit learnt from the downstream's latency and
//! errors (issue 18).
//!
//! An [`AdaptiveLimiter`] keeps, per partition (one for every request, or one per key of a
//! [`KeySource`], such as the route), a limit on the requests in flight, and moves it once per
//! window of samples with one of three algorithms ([`Algorithm`]):
//!
//! - [`Vegas`]: the queue estimated from the no-load RTT, as TCP Vegas and Netflix's
//!   concurrency-limits;
//! - [`Gradient2`]: the short-term RTT against its long-term average;
//! - [`Aimd`]: additive increase, multiplicative decrease on errors or latency over a threshold.
//!
//! A request over its partition's limit is refused at once with [`ConcurrencyLimited`]
//! through omega-core's rejection strategy, as on every Omega Penta layer: an error by
//! default, `503 Service Unavailable` with `AdaptiveConcurrencyLayer::respond` (feature
//! `http`; gRPC: `RESOURCE_EXHAUSTED`). An error from the inner service counts as a drop, and
//! so does a `5xx` answer with `respond()` (where failures come as responses); a request
//! dropped before its answer (its future dropped) frees its slot without a sample.
//!
//! The hot path is two clock readings and a few atomics: admission compares the in-flight
//! count with the limit (a compare-and-swap), a completion adds its RTT to the window with
//! atomics, and the completion that closes a window (at least `min_window` long, with at least
//! `min_samples` samples of requests admitted in it) runs the algorithm under a `try_lock`
//! that nothing holds across an await, while others go on. The window's figures are gathered
//! without a lock, so a sample racing the close may land in the next window.
//!
//! A [`LimitListener`] hears every new limit: [`AdaptiveRate`] makes a [`RateLimiter`]
//! limit's rate follow the downstream (`limit` requests per RTT). With feature `redis`,
//! `Cluster` makes instances share one budget per partition (off by default;
//! `AdaptiveLimiterBuilder::cluster`).
//!
//! ```
//! use omega_rate_limit::adaptive::{AdaptiveConcurrencyLayer, AdaptiveLimiter, Vegas};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let limiter = AdaptiveLimiter::<&'static str>::builder()
//!     .algorithm(Vegas::default())
//!     .min(1)
//!     .max(200)
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(AdaptiveConcurrencyLayer::new(limiter.clone()))
//!     .service(service_fn(|req: &'static str| async move { Ok::<_, std::convert::Infallible>(req) }));
//! assert_eq!(svc.oneshot("hello").await.unwrap(), "hello");
//! assert_eq!(limiter.estimate("").unwrap().limit(), 20);
//! # }
//! ```
//!
//! [`RateLimiter`]: crate::RateLimiter
//! [`KeySource`]: omega_core::key::KeySource

mod algorithm;
mod builder;
#[cfg(feature = "redis")]
mod cluster;
#[cfg(feature = "serde")]
pub mod config;
mod error;
pub mod future;
mod layer;
mod metrics;
mod partition;
mod rate;
mod service;
mod settings;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use omega_core::key::{KeyMissing, KeySource, MissingKey};

pub use builder::{
    AdaptiveLimiterBuilder, DEFAULT_INITIAL, DEFAULT_MAX, DEFAULT_MIN, DEFAULT_MIN_SAMPLES,
    DEFAULT_MIN_WINDOW,
};
#[cfg(feature = "redis")]
pub use cluster::{Cluster, DEFAULT_CLUSTER_PERIOD};
pub use error::ConcurrencyLimited;
pub use future::ResponseFuture;
pub use layer::AdaptiveConcurrencyLayer;
pub use rate::AdaptiveRate;
pub use service::AdaptiveConcurrency;
pub use settings::{Aimd, Algorithm, Gradient2, Vegas};

use partition::{Partition, Permit, Settings};

/// A partition's figures: its limit, and the RTTs its algorithm works from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    limit: u32,
    max: u32,
    rtt: Duration,
    baseline_rtt: Duration,
}

impl Estimate {
    /// The current limit on requests in flight.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The highest the limit may go now: `max`, or in cluster mode this instance's share of
    /// the cluster's budget.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The last window's average RTT (zero before the first window).
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// The RTT the algorithm compares it with: the no-load RTT (Vegas, AIMD) or the
    /// long-term average (Gradient2).
    pub fn baseline_rtt(&self) -> Duration {
        self.baseline_rtt
    }
}

/// Hears every limit a window sets ([`AdaptiveLimiterBuilder::on_update`]).
///
/// Called by the request completion that closes a window, with no lock held but the
/// partition's own (never across an await): keep it short.
pub trait LimitListener: Send + Sync + 'static {
    /// `partition` (its key as text; `""` without partitions) now has `estimate`.
    fn limit_changed(&self, partition: &str, estimate: &Estimate);
}

impl<F> LimitListener for F
where
    F: Fn(&str, &Estimate) + Send + Sync + 'static,
{
    fn limit_changed(&self, partition: &str, estimate: &Estimate) {
        self(partition, estimate)
    }
}

/// The default bound on partitions; keys past it share one overflow partition.
pub const DEFAULT_MAX_PARTITIONS: usize = 1_024;

/// The name of the partition keys past [`AdaptiveLimiterBuilder::max_partitions`] share.
pub const OVERFLOW_PARTITION: &str = "~overflow";

/// Adaptive concurrency limits, one per partition, shared by every clone (and so by every
/// service a layer makes).
pub struct AdaptiveLimiter<Req> {
    inner: Arc<Inner<Req>>,
}

impl<Req> Clone for AdaptiveLimiter<Req> {
    fn clone(&self) -> Self {
        AdaptiveLimiter {
            inner: self.inner.clone(),
        }
    }
}

impl<Req> fmt::Debug for AdaptiveLimiter<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimiter")
            .field("name", &self.inner.settings.name)
            .field("algorithm", &self.inner.algorithm)
            .field("min", &self.inner.settings.min)
            .field("max", &self.inner.settings.max)
            .finish()
    }
}

struct Inner<Req> {
    algorithm: Algorithm,
    settings: Arc<Settings>,
    partitions: Partitions<Req>,
    /// Cluster mode: the exchange of shares through Redis.
    #[cfg(feature = "redis")]
    cluster: Option<cluster::ClusterTask>,
}

type Map = HashMap<Box<[u8]>, Arc<Partition>, foldhash::fast::RandomState>;

enum Partitions<Req> {
    Global(Arc<Partition>),
    Keyed {
        source: Box<dyn KeySource<Req>>,
        missing: MissingKey,
        map: ArcSwap<Map>,
        insert: Mutex<()>,
        max: usize,
        overflow: Arc<Partition>,
    },
}

/// What admission says about a request.
pub(crate) enum Admission {
    /// Admitted: the permit frees the slot.
    Admitted(Permit),
    /// Not limited: a keyed limiter's request without a key, which it lets pass.
    Unlimited,
    /// Over its partition's limit.
    Limited(ConcurrencyLimited),
    /// Without a key, which the limiter refuses.
    KeyMissing(KeyMissing),
}

impl<Req: 'static> AdaptiveLimiter<Req> {
    /// A builder, with every default: [`Vegas`], limits in `[1, 1000]` starting at 20, one
    /// partition for every request.
    pub fn builder() -> AdaptiveLimiterBuilder<Req> {
        AdaptiveLimiterBuilder::new()
    }

    /// Admission for `req`: a slot in its partition, or why not.
    #[inline]
    pub(crate) fn admit(&self, req: &Req) -> Admission {
        #[cfg(feature = "redis")]
        if let Some(task) = &self.inner.cluster {
            task.keep(&self.inner);
        }
        let partition = match &self.inner.partitions {
            Partitions::Global(p) => p.clone(),
            Partitions::Keyed {
                source, missing, ..
            } => match source.key(req) {
                Some(key) => self.keyed(key.as_bytes()),
                None => {
                    return match missing {
                        MissingKey::Skip => Admission::Unlimited,
                        MissingKey::Reject => {
                            Admission::KeyMissing(KeyMissing::new(source.describe()))
                        }
                    };
                }
            },
        };
        match Partition::try_acquire(partition) {
            Ok(permit) => Admission::Admitted(permit),
            Err(partition) => {
                partition.metrics.rejected();
                Admission::Limited(ConcurrencyLimited::new(
                    partition.name.clone(),
                    partition.limit(),
                ))
            }
        }
    }

    /// The partition of `key`, made on first sight.
    fn keyed(&self, key: &[u8]) -> Arc<Partition> {
        let Partitions::Keyed {
            map,
            insert,
            max,
            overflow,
            ..
        } = &self.inner.partitions
        else {
            unreachable!("keyed partitions only")
        };
        if let Some(p) = map.load().get(key) {
            return p.clone();
        }
        let _writer = insert.lock().unwrap_or_else(PoisonError::into_inner);
        let current = map.load_full();
        if let Some(p) = current.get(key) {
            return p.clone();
        }
        if current.len() >= *max {
            return overflow.clone();
        }
        let name: Arc<str> = String::from_utf8_lossy(key).into();
        let p = Arc::new(self.inner.partition(name, current.len() as u64 + 1));
        let mut next = Map::clone(&current);
        next.insert(key.into(), p.clone());
        map.store(Arc::new(next));
        p
    }

    fn find(&self, partition: &str) -> Option<Arc<Partition>> {
        match &self.inner.partitions {
            Partitions::Global(p) => Some(p.clone()),
            Partitions::Keyed { map, overflow, .. } => {
                if partition == OVERFLOW_PARTITION {
                    return Some(overflow.clone());
                }
                map.load().get(partition.as_bytes()).cloned()
            }
        }
    }

    /// The figures of a partition (any name without partitions; `None` for a key not seen
    /// yet).
    pub fn estimate(&self, partition: &str) -> Option<Estimate> {
        self.find(partition).map(|p| p.estimate())
    }

    /// Requests in flight in a partition.
    pub fn inflight(&self, partition: &str) -> Option<u32> {
        self.find(partition).map(|p| p.inflight())
    }

    /// Every partition's figures, by name (`""` without partitions).
    pub fn estimates(&self) -> Vec<(Arc<str>, Estimate)> {
        match &self.inner.partitions {
            Partitions::Global(p) => vec![(p.name.clone(), p.estimate())],
            Partitions::Keyed { map, overflow, .. } => map
                .load()
                .values()
                .chain(std::iter::once(overflow))
                .map(|p| (p.name.clone(), p.estimate()))
                .collect(),
        }
    }

    /// The algorithm and its settings.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The limiter's name (the `adaptive` label of its metrics).
    pub fn name(&self) -> &str {
        &self.inner.settings.name
    }
}

impl<Req> Inner<Req> {
    /// Every partition made so far.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn partitions(&self) -> Vec<Arc<Partition>> {
        match &self.partitions {
            Partitions::Global(p) => vec![p.clone()],
            Partitions::Keyed { map, overflow, .. } => map
                .load()
                .values()
                .chain(std::iter::once(overflow))
                .cloned()
                .collect(),
        }
    }

    fn partition(&self, name: Arc<str>, seed: u64) -> Partition {
        Partition::new(name, self.settings.clone(), self.algorithm, seed)
    }
}
