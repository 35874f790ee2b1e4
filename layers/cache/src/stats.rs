//! Counters of each partition: always kept in memory ([`Stats`]), and exported through the
//! `metrics` crate with feature `metrics`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `omega_cache_requests_total` | `cache`, `partition`, `result` | one per lookup: `hit`, `stale` (served stale, refreshing), `l2_hit`, `miss`, `coalesced` (answered by another request's load), `stale_if_error` |
//! | `omega_cache_evicted_total` | `cache`, `partition` | entries evicted for capacity (with [`Partition::count_evictions`](crate::Partition::count_evictions)) |
//! | `omega_cache_upstream_total` | `cache`, `partition`, `result` | upstream loads: `stored`, `passed` (not cacheable, too large, or a failure) |

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one partition's counters (or their sum, [`Cache::stats`](crate::Cache::stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Fresh L1 hits.
    pub hits: u64,
    /// Hits served stale while a background refresh runs.
    pub stale_hits: u64,
    /// Hits in L2 (then promoted to L1).
    pub l2_hits: u64,
    /// Lookups that found nothing usable in L1.
    pub misses: u64,
    /// Misses answered by another request's load (in this process).
    pub coalesced: u64,
    /// Upstream calls made by the cache (misses and refreshes).
    pub upstream: u64,
    /// Responses stored.
    pub stored: u64,
    /// Responses passed on without storing (not cacheable, too large, an error).
    pub passed: u64,
    /// Failures answered with a stale copy.
    pub stale_if_error: u64,
    /// Background refreshes started.
    pub refreshes: u64,
    /// Entries evicted for capacity (counted where
    /// [`Partition::count_evictions`](crate::Partition::count_evictions) is on).
    pub evicted: u64,
}

impl Stats {
    /// (hits + stale hits + L2 hits) / lookups.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.hits + self.stale_hits + self.l2_hits + self.coalesced;
        let all = self.hits + self.stale_hits + self.misses;
        if all == 0 {
            0.0
        } else {
            (hits.min(all)) as f64 / all as f64
        }
    }

    pub(crate) fn add(&mut self, o: &Stats) {
        self.hits += o.hits;
        self.stale_hits += o.stale_hits;
        self.l2_hits += o.l2_hits;
        self.misses += o.misses;
        self.coalesced += o.coalesced;
        self.upstream += o.upstream;
        self.stored += o.stored;
        self.passed += o.passed;
        self.stale_if_error += o.stale_if_error;
        self.refreshes += o.refreshes;
        self.evicted += o.evicted;
    }
}

/// What a partition counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    Hit,
    Stale,
    L2Hit,
    Miss,
    Coalesced,
    Upstream,
    Stored,
    Passed,
    StaleIfError,
    Refresh,
    Evicted,
}

const N: usize = 11;

/// A partition's counters.
pub(crate) struct Counters {
    n: [AtomicU64; N],
    #[cfg(feature = "metrics")]
    metrics: [Option<metrics::Counter>; N],
}

impl Counters {
    pub(crate) fn new(cache: &str, partition: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (cache, partition);
        Counters {
            n: Default::default(),
            #[cfg(feature = "metrics")]
            metrics: registered(cache, partition),
        }
    }

    #[inline]
    pub(crate) fn count(&self, what: Count) {
        self.n[what as usize].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(c) = &self.metrics[what as usize] {
            c.increment(1);
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let g = |c: Count| self.n[c as usize].load(Ordering::Relaxed);
        Stats {
            hits: g(Count::Hit),
            stale_hits: g(Count::Stale),
            l2_hits: g(Count::L2Hit),
            misses: g(Count::Miss),
            coalesced: g(Count::Coalesced),
            upstream: g(Count::Upstream),
            stored: g(Count::Stored),
            passed: g(Count::Passed),
            stale_if_error: g(Count::StaleIfError),
            refreshes: g(Count::Refresh),
            evicted: g(Count::Evicted),
        }
    }
}

/// The metric names (feature `metrics`).
#[cfg(feature = "metrics")]
pub mod names {
    /// Lookups by result; labels `cache`, `partition`, `result`.
    pub const REQUESTS: &str = "omega_cache_requests_total";
    /// Entries evicted for capacity; labels `cache`, `partition`.
    pub const EVICTED: &str = "omega_cache_evicted_total";
    /// Upstream loads by result; labels `cache`, `partition`, `result`.
    pub const UPSTREAM: &str = "omega_cache_upstream_total";
}

/// Handles registered once per partition, so counting on a hit allocates nothing.
#[cfg(feature = "metrics")]
fn registered(cache: &str, partition: &str) -> [Option<metrics::Counter>; N] {
    use names::{EVICTED, REQUESTS, UPSTREAM};
    let (c, p) = (cache.to_owned(), partition.to_owned());
    let req = |r: &'static str| {
        Some(
            metrics::counter!(REQUESTS, "cache" => c.clone(), "partition" => p.clone(), "result" => r),
        )
    };
    let up = |r: &'static str| {
        Some(
            metrics::counter!(UPSTREAM, "cache" => c.clone(), "partition" => p.clone(), "result" => r),
        )
    };
    [
        req("hit"),
        req("stale"),
        req("l2_hit"),
        req("miss"),
        req("coalesced"),
        None,
        up("stored"),
        up("passed"),
        req("stale_if_error"),
        None,
        Some(metrics::counter!(EVICTED, "cache" => c.clone(), "partition" => p.clone())),
    ]
}
