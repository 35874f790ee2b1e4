//! One limit: a name, a quota, what it is keyed by, and how it behaves.

use std::fmt;
use std::sync::Arc;

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicU32, AtomicU64, fence};

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

/// The GCRA parameters of the hot path behind a sequence number: a decision reads interval,
/// capacity and burst of one quota, never a mix of two (an old interval with a new capacity
/// could admit a burst a thousand times too large). Reading is the three relaxed loads between
/// two loads of the sequence number (no lock, no reference count, no write, no dependent
/// load). A reader that meets a quota change being stored does not wait for it: it takes the
/// quota from [`LimitState::params`] instead, which the change stored first
/// ([`LimitState::gcra`]). Writers are serialised by the caller ([`LimitState::quota_lock`]).
pub(crate) struct HotGcra {
    /// Even: the parameters are stable; odd: a writer is storing new ones.
    seq: AtomicU64,
    interval: AtomicU64,
    capacity: AtomicU64,
    burst: AtomicU32,
    /// The limit's shadow flag, beside the parameters so a denial reads one cache line.
    pub(crate) shadow: bool,
}

impl HotGcra {
    pub(crate) fn new(g: Gcra, shadow: bool) -> Self {
        HotGcra {
            seq: AtomicU64::new(0),
            interval: g.interval.into(),
            capacity: g.capacity.into(),
            burst: g.burst.into(),
            shadow,
        }
    }

    /// The parameters of one quota, or `None` while a change is being stored.
    #[inline(always)]
    fn try_load(&self) -> Option<Gcra> {
        let before = self.seq.load(Acquire);
        let g = Gcra {
            interval: self.interval.load(Relaxed),
            capacity: self.capacity.load(Relaxed),
            burst: self.burst.load(Relaxed),
        };
        fence(Acquire);
        (before & 1 == 0 && self.seq.load(Relaxed) == before).then_some(g)
    }

    /// Stores new parameters. Callers hold the limit's `quota_lock` (writers never
    /// interleave) and stored the same quota in `params` first.
    pub(crate) fn store(&self, g: Gcra) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq.wrapping_add(1), Relaxed);
        fence(Release);
        self.interval.store(g.interval, Relaxed);
        self.capacity.store(g.capacity, Relaxed);
        self.burst.store(g.burst, Relaxed);
        self.seq.store(seq.wrapping_add(2), Release);
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
/// One key source is an exception (feature `http`): a request without a key for omega-core's
/// `ClientIp` (given directly, or as `AnyKey::ClientIp` from a configuration) has no peer
/// address because the server records none, which no client can cause or fix. Such a request
/// is refused with [`PeerAddrMissing`](crate::PeerAddrMissing) (500, gRPC `INTERNAL`), whose
/// message names the fix, whatever [`Limit::on_missing_key`] says: skipping it would leave
/// the limit silently counting nothing.
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
    /// The key source is omega-core's `ClientIp`: a missing key means a missing peer address.
    pub(crate) client_ip: bool,
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
            client_ip: false,
            shadow: false,
            on_failure: OnBackendFailure::default(),
            #[cfg(feature = "redis")]
            lease: None,
        }
    }

    /// One bucket per key from `key` (per user, per client IP, per endpoint, ...).
    pub fn keyed<K: KeySource<Req>>(name: impl Into<Arc<str>>, quota: Quota, key: K) -> Self {
        Limit {
            client_ip: is_client_ip(&key),
            key: Some(Box::new(key)),
            ..Limit::global(name, quota)
        }
    }

    /// What a request without the key means to this keyed limit: by default
    /// ([`MissingKey::Skip`]) the limit does not count it; [`MissingKey::Reject`] refuses it
    /// with [`KeyMissing`] (400 Bad Request, gRPC `INVALID_ARGUMENT`). No effect on a global
    /// limit, nor on a `ClientIp` limit, which refuses a request without a peer address with
    /// [`PeerAddrMissing`](crate::PeerAddrMissing) (see [`Limit`]).
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

/// Whether `key` is omega-core's `ClientIp` (or `AnyKey::ClientIp`).
fn is_client_ip<K: 'static>(key: &K) -> bool {
    #[cfg(feature = "http")]
    {
        use omega_core::key::http::{AnyKey, ClientIp};
        let any = key as &dyn std::any::Any;
        any.is::<ClientIp>() || matches!(any.downcast_ref::<AnyKey>(), Some(AnyKey::ClientIp(_)))
    }
    #[cfg(not(feature = "http"))]
    {
        let _ = key;
        false
    }
}

/// How a limit refuses a request without its key.
#[derive(Debug)]
pub(crate) enum Missing {
    /// The limit was told to ([`MissingKey::Reject`]).
    Key(KeyMissing),
    /// The key is the client's IP and the server records no peer address.
    PeerAddr(crate::error::PeerAddrMissing),
}

/// A limit's `RateLimit-Policy` value (feature `http`), made when its quota is set and read
/// only when a response carries it.
#[derive(Default)]
pub(crate) struct Policy {
    #[cfg(feature = "http")]
    value: ArcSwap<Option<::http::HeaderValue>>,
}

impl Policy {
    pub(crate) fn new(name: &str, quota: &Quota) -> Self {
        let policy = Policy::default();
        policy.set(name, quota);
        policy
    }

    /// Makes the value of `quota`.
    pub(crate) fn set(&self, name: &str, quota: &Quota) {
        #[cfg(feature = "http")]
        self.value
            .store(Arc::new(crate::headers::policy_value(name, quota)));
        #[cfg(not(feature = "http"))]
        let _ = (name, quota);
    }

    /// The value; `None` for a name no header can carry.
    #[cfg(feature = "http")]
    pub(crate) fn header(&self) -> Option<::http::HeaderValue> {
        (**self.value.load()).clone()
    }
}

/// One limit has one policy: two references are equal when they are the same.
impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Policy {}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[cfg(feature = "http")]
        return f.debug_tuple("Policy").field(&self.header()).finish();
        #[cfg(not(feature = "http"))]
        f.write_str("Policy")
    }
}

/// A limit's name and its `RateLimit-Policy` value: what a refusal borrows from the limiter
/// (one reference for both).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Named {
    pub(crate) text: Arc<str>,
    pub(crate) policy: Policy,
}

impl std::ops::Deref for Named {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

/// Where a request stands with one limit.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeyOf<'a> {
    /// The limit counts the request in this bucket: `None` for the global bucket, else the
    /// hash of the key.
    Bucket(Option<u64>),
    /// The request has no key and the limit skips it.
    Skip,
    /// The request has no key and the limit refuses it.
    Missing(&'a Missing),
}

/// A limit inside a limiter: its quota can change while serving.
pub(crate) struct LimitState<Req> {
    /// The name, and the `RateLimit-Policy` value.
    pub(crate) name: Named,
    /// The start of this limit's Redis keys: `rl:{name}`, or `rl:{scope}:{name}` in a scoped
    /// limiter.
    #[cfg(feature = "redis")]
    pub(crate) redis_name: String,
    /// The quota and the fallback parameters, read off the hot path.
    pub(crate) params: ArcSwap<Params>,
    /// The GCRA parameters of the hot path, read without a lock or a reference count.
    pub(crate) hot: HotGcra,
    /// Serialises quota changes (writers of `params` and `hot`).
    pub(crate) quota_lock: std::sync::Mutex<()>,
    pub(crate) key: Option<Box<dyn KeySource<Req>>>,
    /// The refusal of a request without the key, when the limit refuses such requests.
    pub(crate) missing: Option<Missing>,
    pub(crate) shadow: bool,
    pub(crate) on_failure: OnBackendFailure,
    pub(crate) local: crate::memory::LocalBuckets,
    /// Leases of this limit's keys (Redis backends with lease mode only).
    #[cfg(feature = "redis")]
    pub(crate) leases: Option<crate::lease::Leases>,
    pub(crate) metrics: crate::metrics::LimitMetrics,
}

impl<Req> LimitState<Req> {
    /// The limit's GCRA parameters, all of one quota: from the hot copy, or while a quota
    /// change is being stored there, from `params` (never waiting for the writer).
    #[inline(always)]
    pub(crate) fn gcra(&self) -> Gcra {
        match self.hot.try_load() {
            Some(g) => g,
            None => self.changing_gcra(),
        }
    }

    #[cold]
    #[inline(never)]
    fn changing_gcra(&self) -> Gcra {
        self.params.load().gcra
    }
}

impl<Req: 'static> LimitState<Req> {
    /// The in-memory bucket of `req` under this limit.
    #[inline(always)]
    pub(crate) fn local_key(&self, req: &Req) -> KeyOf<'_> {
        match &self.key {
            None => KeyOf::Bucket(None),
            // Matched in place: moving the key out of the source's return slot copies it
            // whole (64 bytes) before its first byte is read.
            Some(source) => match &source.key(req) {
                Some(k) => KeyOf::Bucket(Some(self.local.hash(k.as_bytes()))),
                None => match &self.missing {
                    Some(missing) => KeyOf::Missing(missing),
                    None => KeyOf::Skip,
                },
            },
        }
    }
}
