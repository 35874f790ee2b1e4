//! One limit: a name, a quota, what it is keyed by, and how it behaves.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::quota::{Gcra, Quota};

/// Produces the key a limit counts a request under; `None` means the limit does not apply to
/// this request.
///
/// Implemented for closures `Fn(&Req) -> Option<String>`; the built-in extractors borrow from
/// the request instead, so they do not allocate.
pub trait KeyExtractor<Req>: Send + Sync + 'static {
    /// The key of `req`.
    fn key<'a>(&self, req: &'a Req) -> Option<Cow<'a, str>>;
}

impl<Req, F> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> Option<String> + Send + Sync + 'static,
{
    fn key<'a>(&self, req: &'a Req) -> Option<Cow<'a, str>> {
        self(req).map(Cow::Owned)
    }
}

/// What a limit does when its Redis backend fails (timeout, refused, unavailable).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OnBackendFailure {
    /// Admit the request as far as this limit is concerned.
    Open,
    /// Deny the request (retry after one emission interval).
    Closed,
    /// Enforce `share` (0 < share ≤ 1) of the quota in this process until Redis is back: with N
    /// instances, `1/N` keeps the cluster near its limit. This is the default, with a share of
    /// 1.0: each instance then admits at most the whole limit, never an unlimited stream.
    Local {
        /// The fraction of the quota enforced locally.
        share: f64,
    },
}

impl Default for OnBackendFailure {
    fn default() -> Self {
        OnBackendFailure::Local { share: 1.0 }
    }
}

/// GCRA parameters readable with three relaxed loads. A decision racing a quota change may
/// mix old and new values once; each mix is a valid quota no looser than the larger of the
/// two in burst and rate.
pub(crate) struct HotGcra {
    interval: std::sync::atomic::AtomicU64,
    capacity: std::sync::atomic::AtomicU64,
    burst: std::sync::atomic::AtomicU32,
    /// The limit's shadow flag, beside the parameters so a denial reads one cache line.
    pub(crate) shadow: bool,
}

impl HotGcra {
    pub(crate) fn new(g: Gcra, shadow: bool) -> Self {
        HotGcra {
            interval: g.interval.into(),
            capacity: g.capacity.into(),
            burst: g.burst.into(),
            shadow,
        }
    }

    #[inline(always)]
    pub(crate) fn load(&self) -> Gcra {
        use std::sync::atomic::Ordering::Relaxed;
        Gcra {
            interval: self.interval.load(Relaxed),
            capacity: self.capacity.load(Relaxed),
            burst: self.burst.load(Relaxed),
        }
    }

    pub(crate) fn store(&self, g: Gcra) {
        use std::sync::atomic::Ordering::Relaxed;
        self.interval.store(g.interval, Relaxed);
        self.capacity.store(g.capacity, Relaxed);
        self.burst.store(g.burst, Relaxed);
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Params {
    pub(crate) quota: Quota,
    pub(crate) gcra: Gcra,
    /// The scaled quota used when Redis is down under [`OnBackendFailure::Local`].
    pub(crate) fallback: Gcra,
}

impl Params {
    pub(crate) fn new(quota: Quota, on_failure: OnBackendFailure) -> Self {
        let fallback = match on_failure {
            OnBackendFailure::Local { share } => quota.scaled(share).gcra(),
            _ => quota.gcra(),
        };
        Params {
            quota,
            gcra: quota.gcra(),
            fallback,
        }
    }
}

/// A limit, before it joins a [`crate::RateLimiter`].
///
/// ```
/// use omega_rate_limit::{Limit, OnBackendFailure, Quota};
///
/// struct Job { tenant: String }
///
/// let global = Limit::<Job>::global("global", Quota::per_second(1_000));
/// let per_tenant = Limit::keyed("per_tenant", Quota::per_minute(600), |job: &Job| {
///     Some(job.tenant.clone())
/// })
/// .shadow(true)
/// .on_backend_failure(OnBackendFailure::Local { share: 0.25 });
/// ```
pub struct Limit<Req> {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    pub(crate) key: Option<Box<dyn KeyExtractor<Req>>>,
    pub(crate) shadow: bool,
    pub(crate) on_failure: OnBackendFailure,
    #[cfg(feature = "redis")]
    pub(crate) lease: Option<crate::lease::Lease>,
}

impl<Req> fmt::Debug for Limit<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("keyed", &self.key.is_some())
            .field("shadow", &self.shadow)
            .field("on_failure", &self.on_failure)
            .finish()
    }
}

impl<Req> Limit<Req> {
    /// One bucket for every request.
    pub fn global(name: impl Into<Arc<str>>, quota: Quota) -> Self {
        Limit {
            name: name.into(),
            quota,
            key: None,
            shadow: false,
            on_failure: OnBackendFailure::default(),
            #[cfg(feature = "redis")]
            lease: None,
        }
    }

    /// One bucket per key from `key` (per user, per client IP, per endpoint, ...).
    pub fn keyed(name: impl Into<Arc<str>>, quota: Quota, key: impl KeyExtractor<Req>) -> Self {
        Limit {
            name: name.into(),
            quota,
            key: Some(Box::new(key)),
            shadow: false,
            on_failure: OnBackendFailure::default(),
            #[cfg(feature = "redis")]
            lease: None,
        }
    }

    /// In shadow mode the limit counts and reports what it would deny, but never denies.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// With a Redis backend, takes cells from Redis in batches and spends them in this
    /// process, so most decisions make no round trip (see [`crate::Lease`] for the
    /// guarantees and the cells that can go unused). Ignored by an in-memory limiter, whose
    /// decisions are local anyway.
    #[cfg(feature = "redis")]
    pub fn lease(mut self, lease: crate::lease::Lease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// What to do when Redis fails (default: enforce the whole quota locally).
    pub fn on_backend_failure(mut self, policy: OnBackendFailure) -> Self {
        self.on_failure = policy;
        self
    }
}

/// A limit inside a limiter: its quota can change while serving.
pub(crate) struct LimitState<Req> {
    pub(crate) name: Arc<str>,
    /// The start of this limit's Redis keys: `rl:{name}`, or `rl:{scope}:{name}` in a scoped
    /// limiter.
    #[cfg(feature = "redis")]
    pub(crate) redis_name: String,
    /// The quota and the fallback parameters, read off the hot path.
    pub(crate) params: ArcSwap<Params>,
    /// The GCRA parameters of the hot path, as two atomics: no reference count to touch.
    pub(crate) hot: HotGcra,
    pub(crate) key: Option<Box<dyn KeyExtractor<Req>>>,
    pub(crate) shadow: bool,
    pub(crate) on_failure: OnBackendFailure,
    pub(crate) local: crate::memory::LocalBuckets,
    /// Leases of this limit's keys (Redis backends with lease mode only).
    #[cfg(feature = "redis")]
    pub(crate) leases: Option<crate::lease::Leases>,
    pub(crate) metrics: crate::metrics::LimitMetrics,
    /// The last `RateLimit-Policy` value sent for this limit, with the burst and window (s)
    /// it was made for: it changes only with the quota.
    #[cfg(feature = "http")]
    pub(crate) policy_header: ArcSwap<Option<(u32, u64, http::HeaderValue)>>,
}

impl<Req: 'static> LimitState<Req> {
    /// The in-memory bucket of `req` under this limit: `None` when the limit does not apply,
    /// `Some(None)` for the global bucket, `Some(Some(hash))` for a key.
    #[inline(always)]
    pub(crate) fn local_key(&self, req: &Req) -> Option<Option<u64>> {
        match &self.key {
            None => Some(None),
            Some(extract) => extract.key(req).map(|k| Some(self.local.hash(&k))),
        }
    }
}
