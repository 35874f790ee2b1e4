//! One limit: a name, a quota, what it is keyed by, and how it behaves.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use omega_core::key::{KeyMissing, KeySource, MissingKey};

use crate::quota::{Gcra, Quota};

/// The most limits one limiter checks per request.
pub const MAX_LIMITS: usize = 16;

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
/// A keyed limit takes its key from any [`KeySource`]: a closure `Fn(&Req) -> Option<K>`
/// (`K` a `String`, `&'static str`, bytes or an integer), or one of omega-core's built-in
/// sources (`Header`, `ClientIp`, `Endpoint`, ... with feature `http`), which borrow the key
/// from the request. Buckets are kept per key bytes.
///
/// A request without the key ([`KeySource::key`] gives `None`) is, by default, not counted by
/// that limit ([`MissingKey::Skip`]): pair a keyed limit with a global one so such requests are
/// still bounded, or refuse them with [`Limit::on_missing_key`]`(MissingKey::Reject)`.
///
/// ```
/// use omega_core::key::MissingKey;
/// use omega_rate_limit::{Limit, OnBackendFailure, Quota};
///
/// struct Job { tenant: Option<String> }
///
/// let global = Limit::<Job>::global("global", Quota::per_second(1_000));
/// let per_tenant = Limit::keyed("per_tenant", Quota::per_minute(600), |job: &Job| {
///     job.tenant.clone()
/// })
/// .on_missing_key(MissingKey::Reject)
/// .shadow(true)
/// .on_backend_failure(OnBackendFailure::Local { share: 0.25 });
/// ```
pub struct Limit<Req> {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    pub(crate) key: Option<Box<dyn KeySource<Req>>>,
    pub(crate) missing: MissingKey,
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
            .field("missing", &self.missing)
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
            missing: MissingKey::Skip,
            shadow: false,
            on_failure: OnBackendFailure::default(),
            #[cfg(feature = "redis")]
            lease: None,
        }
    }

    /// One bucket per key from `key` (per user, per client IP, per endpoint, ...).
    pub fn keyed(name: impl Into<Arc<str>>, quota: Quota, key: impl KeySource<Req>) -> Self {
        Limit {
            key: Some(Box::new(key)),
            ..Limit::global(name, quota)
        }
    }

    /// What a request without the key means to this keyed limit: by default
    /// ([`MissingKey::Skip`]) the limit does not count it; [`MissingKey::Reject`] refuses it
    /// with [`KeyMissing`] (400 Bad Request, gRPC `INVALID_ARGUMENT`). No effect on a global
    /// limit.
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
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

/// Where a request stands with one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyOf<'a> {
    /// The limit counts the request in this bucket: `None` for the global bucket, else the
    /// hash of the key.
    Bucket(Option<u64>),
    /// The request has no key and the limit skips it.
    Skip,
    /// The request has no key and the limit refuses it with this refusal.
    Missing(&'a KeyMissing),
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
    pub(crate) key: Option<Box<dyn KeySource<Req>>>,
    /// The refusal of a request without the key, when the limit refuses such requests.
    pub(crate) reject_missing: Option<KeyMissing>,
    pub(crate) shadow: bool,
    pub(crate) on_failure: OnBackendFailure,
    pub(crate) local: crate::memory::LocalBuckets,
    /// Leases of this limit's keys (Redis backends with lease mode only).
    #[cfg(feature = "redis")]
    pub(crate) leases: Option<crate::lease::Leases>,
    pub(crate) metrics: crate::metrics::LimitMetrics,
    /// The limit's last `RateLimit-Policy` value.
    #[cfg(feature = "http")]
    pub(crate) policy: crate::headers::PolicyCache,
}

impl<Req: 'static> LimitState<Req> {
    /// The in-memory bucket of `req` under this limit.
    #[inline(always)]
    pub(crate) fn local_key(&self, req: &Req) -> KeyOf<'_> {
        match &self.key {
            None => KeyOf::Bucket(None),
            Some(source) => match source.key(req) {
                Some(k) => KeyOf::Bucket(Some(self.local.hash(k.as_bytes()))),
                None => match &self.reject_missing {
                    Some(refusal) => KeyOf::Missing(refusal),
                    None => KeyOf::Skip,
                },
            },
        }
    }
}
