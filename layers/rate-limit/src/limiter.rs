//! The limiter: a set of limits over one backend, shared by every clone.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use omega_core::{Backend, Clock, Nanos};

use crate::error::{ConfigError, RateLimited};
use crate::limit::{HotGcra, Limit, LimitState, OnBackendFailure, Params};
use crate::memory::{DEFAULT_MAX_KEYS, LocalBuckets};
use crate::quota::{Gcra, Quota, Step};

/// The most limits one limiter checks per request.
pub const MAX_LIMITS: usize = 16;

/// Checks requests against a set of limits, in memory or in Redis. Cloning is cheap and every
/// clone shares the same buckets, so per-clone limits (tower#794) cannot happen.
///
/// ```
/// use omega_rate_limit::{Limit, Quota, RateLimiter};
///
/// let limiter = RateLimiter::<u64>::builder()
///     .limit(Limit::global("global", Quota::per_second(2)))
///     .build()
///     .unwrap();
/// assert!(limiter.check_local(&1).is_allowed());
/// assert!(limiter.check_local(&2).is_allowed());
/// assert!(!limiter.check_local(&3).is_allowed());
/// ```
pub struct RateLimiter<Req> {
    pub(crate) inner: Arc<Inner<Req>>,
}

impl<Req> Clone for RateLimiter<Req> {
    fn clone(&self) -> Self {
        RateLimiter {
            inner: self.inner.clone(),
        }
    }
}

impl<Req> fmt::Debug for RateLimiter<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.inner.limits.iter().map(|l| &*l.name).collect();
        f.debug_struct("RateLimiter")
            .field("limits", &names)
            .field("backend", &self.inner.backend_name())
            .finish()
    }
}

type CostFn<Req> = Box<dyn Fn(&Req) -> u32 + Send + Sync>;

pub(crate) struct Inner<Req> {
    pub(crate) limits: Box<[LimitState<Req>]>,
    cost: Option<CostFn<Req>>,
    clock: Clock,
    pub(crate) store: Store,
}

pub(crate) enum Store {
    Memory,
    #[cfg(feature = "redis")]
    Redis(crate::redis_store::RedisStore),
}

impl<Req> Inner<Req> {
    fn backend_name(&self) -> String {
        match &self.store {
            Store::Memory => "memory".to_owned(),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.backend().target().to_owned(),
        }
    }
}

/// Builds a [`RateLimiter`].
pub struct RateLimiterBuilder<Req> {
    limits: Vec<Limit<Req>>,
    cost: Option<CostFn<Req>>,
    clock: Clock,
    backend: Backend,
    max_keys: usize,
    scope: Option<String>,
}

impl<Req> fmt::Debug for RateLimiterBuilder<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterBuilder")
            .field("limits", &self.limits)
            .field("backend", &self.backend)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

/// A limit name or a scope: non-empty visible ASCII without braces, so that it reads the same
/// in a Redis key and in a `RateLimit` header field.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['{', '}']) && name.bytes().all(|b| b.is_ascii_graphic())
}

impl<Req> RateLimiterBuilder<Req> {
    /// Adds a limit. Every limit that applies to a request must admit it.
    pub fn limit(mut self, limit: Limit<Req>) -> Self {
        self.limits.push(limit);
        self
    }

    /// The cost of a request in cells (default 1 for every request). A cost of 0 checks
    /// without consuming.
    pub fn cost(mut self, cost: impl Fn(&Req) -> u32 + Send + Sync + 'static) -> Self {
        self.cost = Some(Box::new(cost));
        self
    }

    /// Where the buckets live (default: in memory). With Redis, limits hold across every
    /// process that shares the Redis and keyspace.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// A scope for this limiter's Redis keys (`rl:{scope}:{limit}:{key}` instead of
    /// `rl:{limit}:{key}`). Limiters over one Redis share the buckets of limits with the same
    /// name, across processes as intended, but also across unrelated limiters of one process:
    /// give each limiter that must keep its own buckets (one per route, say) its own scope.
    /// Visible ASCII without braces; no effect in memory, where every limiter has its own
    /// buckets.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The clock for in-memory buckets (default: [`Clock::fast`]; tests that pause tokio's
    /// clock pass [`Clock::system`], property tests [`Clock::manual`]). Redis uses its own.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The most keys a keyed limit holds in memory (default 100,000); idle keys are dropped
    /// first when it is reached. Also bounds the local fallback used while Redis is down.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Builds the limiter. Fails on duplicate or empty limit names, on more than
    /// [`MAX_LIMITS`] limits, on an invalid fallback share, or with no limit at all.
    pub fn build(self) -> Result<RateLimiter<Req>, ConfigError> {
        if self.limits.is_empty() {
            return Err(ConfigError(
                "a rate limiter needs at least one limit".into(),
            ));
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(ConfigError(format!(
                "{} limits given; at most {MAX_LIMITS} apply to one request",
                self.limits.len()
            )));
        }
        if let Some(scope) = &self.scope
            && !is_plain_name(scope)
        {
            return Err(ConfigError(format!(
                "invalid scope {scope:?}: use a non-empty name of visible ASCII characters, \
                 without spaces or braces"
            )));
        }
        for (i, l) in self.limits.iter().enumerate() {
            if !is_plain_name(&l.name) {
                return Err(ConfigError(format!(
                    "limit #{} has an invalid name {:?}: use a non-empty name of visible ASCII \
                     characters, without spaces or braces",
                    i + 1,
                    l.name
                )));
            }
            if self.limits[..i].iter().any(|o| o.name == l.name) {
                return Err(ConfigError(format!("two limits are named {:?}", l.name)));
            }
            if let OnBackendFailure::Local { share } = l.on_failure
                && !(share > 0.0 && share <= 1.0)
            {
                return Err(ConfigError(format!(
                    "limit {:?}: the local fallback share must be in (0, 1], got {share}",
                    l.name
                )));
            }
            #[cfg(feature = "redis")]
            if let Some(lease) = &l.lease {
                lease.validate(&l.name)?;
            }
        }
        let store = match self.backend {
            Backend::Memory => Store::Memory,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => Store::Redis(crate::redis_store::RedisStore::new(r)),
            #[allow(unreachable_patterns)]
            other => {
                return Err(ConfigError(format!(
                    "backend {} is not supported by this build",
                    other.health().target
                )));
            }
        };
        let max_keys = self.max_keys;
        #[cfg(feature = "redis")]
        let remote = matches!(store, Store::Redis(_));
        let limits = self
            .limits
            .into_iter()
            .map(|l| LimitState {
                #[cfg(feature = "redis")]
                leases: l
                    .lease
                    .filter(|_| remote)
                    .map(|lease| crate::lease::Leases::new(lease, max_keys)),
                params: ArcSwap::from_pointee(Params::new(l.quota, l.on_failure)),
                hot: HotGcra::new(l.quota.gcra(), l.shadow),
                key: l.key,
                shadow: l.shadow,
                on_failure: l.on_failure,
                local: LocalBuckets::new(max_keys),
                metrics: crate::metrics::LimitMetrics::new(&l.name),
                #[cfg(feature = "http")]
                policy_header: ArcSwap::from_pointee(None),
                #[cfg(feature = "redis")]
                redis_name: match &self.scope {
                    Some(scope) => format!("rl:{scope}:{}", l.name),
                    None => format!("rl:{}", l.name),
                },
                name: l.name,
            })
            .collect();
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                limits,
                cost: self.cost,
                clock: self.clock,
                store,
            }),
        })
    }
}

/// The outcome of checking one request. It borrows the limiter's limit names, so making one
/// touches no reference count and allocates nothing; the header figures ([`Decision::binding`])
/// are computed only when asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    denied: Option<Denied<'a>>,
    binding: Option<Bind<'a>>,
    shadow_denied: u32,
    degraded: bool,
}

/// Why [`RateLimiter::admit`] (or a [`Decision`]) denied a request, borrowed from the limiter:
/// making one allocates nothing and touches no reference count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied<'a> {
    limit: &'a Arc<str>,
    /// Nanoseconds until admitted; `u64::MAX` for never (kept raw: the deny path makes no
    /// `Duration` unless asked).
    retry_nanos: u64,
    burst: u32,
}

impl Denied<'_> {
    /// The limit that denied the request.
    pub fn limit(&self) -> &str {
        self.limit
    }

    /// How long until the same request would be admitted ([`Duration::MAX`]: never, its cost
    /// is above the burst).
    pub fn retry_after(&self) -> Duration {
        if self.retry_nanos == u64::MAX {
            Duration::MAX
        } else {
            Duration::from_nanos(self.retry_nanos)
        }
    }

    /// The owned error, for returning from a service.
    pub fn to_error(&self) -> RateLimited {
        RateLimited {
            limit: self.limit.clone(),
            retry_after: self.retry_after(),
            quota_burst: self.burst,
        }
    }
}

/// The binding limit as recorded: figures known (Redis, denials) or a local TAT to turn into
/// figures on demand (a division the admit path does not pay for).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bind<'a> {
    Known(Binding<'a>),
    Local {
        limit: &'a Arc<str>,
        g: Gcra,
        tat: Nanos,
        now: Nanos,
    },
}

impl<'a> Bind<'a> {
    fn resolve(&self) -> Binding<'a> {
        match self {
            Bind::Known(b) => b.clone(),
            Bind::Local { limit, g, tat, now } => Binding {
                limit,
                burst: g.burst,
                window: Duration::from_nanos(g.capacity),
                remaining: g.remaining(*tat, *now),
                reset_after: Duration::from_nanos(Gcra::reset_after(*tat, *now)),
            },
        }
    }

    fn remaining(&self) -> u32 {
        match self {
            Bind::Known(b) => b.remaining,
            Bind::Local { g, tat, now, .. } => g.remaining(*tat, *now),
        }
    }
}

/// The limit with the fewest cells left after a decision: what the `RateLimit` header fields
/// report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The limit's name.
    pub limit: &'a str,
    /// Its burst: the most cells available at once.
    pub burst: u32,
    /// The time a drained bucket takes to fill up again (`burst` emission intervals).
    pub window: Duration,
    /// Cells left.
    pub remaining: u32,
    /// Time until its bucket is full again.
    pub reset_after: Duration,
}

impl<'a> Decision<'a> {
    /// `true` when the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.denied.is_none()
    }

    /// Why the request was denied (the limit that frees up last, when several denied).
    pub fn denied(&self) -> Option<RateLimited> {
        self.denied.as_ref().map(Denied::to_error)
    }

    /// Turns the decision into a result.
    pub fn into_result(self) -> Result<Decision<'a>, RateLimited> {
        match &self.denied {
            Some(d) => Err(d.to_error()),
            None => Ok(self),
        }
    }

    /// The most constrained limit that applied (for headers).
    pub fn binding(&self) -> Option<Binding<'a>> {
        self.binding.as_ref().map(Bind::resolve)
    }

    /// How many shadow limits would have denied this request.
    pub fn shadow_denied(&self) -> u32 {
        self.shadow_denied
    }

    /// `true` when Redis failed and the limits' failure policies decided.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }
}

/// Accumulates a decision limit by limit.
struct Tally<'a> {
    denied: Option<Denied<'a>>,
    binding: Option<Bind<'a>>,
    shadow_denied: u32,
}

impl<'a> Tally<'a> {
    fn new() -> Self {
        Tally {
            denied: None,
            binding: None,
            shadow_denied: 0,
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline]
    fn allow(
        &mut self,
        name: &'a Arc<str>,
        g: &Gcra,
        remaining: u32,
        reset_after: Duration,
        shadow: bool,
    ) {
        // A shadow limit never denies, so it never binds: clients are not told to slow down
        // for it.
        if !shadow
            && self
                .binding
                .as_ref()
                .is_none_or(|b| remaining < b.remaining())
        {
            self.binding = Some(Bind::Known(Binding {
                limit: name,
                burst: g.burst,
                window: Duration::from_nanos(g.capacity),
                remaining,
                reset_after,
            }));
        }
    }

    /// A local bucket admitted, leaving its TAT at `tat`. The first limit's figures are not
    /// computed at all unless a second limit (or the caller) needs them.
    #[inline]
    fn allow_local(&mut self, name: &'a Arc<str>, g: &Gcra, tat: Nanos, now: Nanos, shadow: bool) {
        if shadow {
            return;
        }
        let replace = match &self.binding {
            None => true,
            Some(b) => g.remaining(tat, now) < b.remaining(),
        };
        if replace {
            self.binding = Some(Bind::Local {
                limit: name,
                g: *g,
                tat,
                now,
            });
        }
    }

    fn deny(&mut self, name: &'a Arc<str>, g: &Gcra, retry_after: Duration, shadow: bool) {
        if shadow {
            self.shadow_denied += 1;
            return;
        }
        if self
            .denied
            .as_ref()
            .is_none_or(|d| retry_after > d.retry_after())
        {
            self.denied = Some(Denied {
                limit: name,
                retry_nanos: omega_core::clock::duration_nanos(retry_after),
                burst: g.burst,
            });
            // The headers report the limit the denial names.
            self.binding = Some(Bind::Known(Binding {
                limit: name,
                burst: g.burst,
                window: Duration::from_nanos(g.capacity),
                remaining: 0,
                reset_after: retry_after,
            }));
        }
    }

    fn finish(self, degraded: bool) -> Decision<'a> {
        Decision {
            denied: self.denied,
            binding: self.binding,
            shadow_denied: self.shadow_denied,
            degraded,
        }
    }
}

fn retry_after(g: &Gcra, cost: u32, nanos: u64) -> Duration {
    if cost > g.burst {
        Duration::MAX
    } else {
        Duration::from_nanos(nanos)
    }
}

impl<Req: 'static> RateLimiter<Req> {
    /// Starts a limiter.
    pub fn builder() -> RateLimiterBuilder<Req> {
        RateLimiterBuilder {
            limits: Vec::new(),
            cost: None,
            clock: Clock::fast(),
            backend: Backend::memory(),
            max_keys: DEFAULT_MAX_KEYS,
            scope: None,
        }
    }

    /// `true` when decisions are made in this process (no await needed).
    pub fn is_local(&self) -> bool {
        matches!(self.inner.store, Store::Memory)
    }

    /// Changes a limit's quota while serving. The next decision uses it; every key keeps its
    /// state (a key that used its burst under the old quota stays as far behind under the new
    /// one, in time).
    pub fn set_quota(&self, limit: &str, quota: Quota) -> Result<(), ConfigError> {
        let l = self
            .inner
            .limits
            .iter()
            .find(|l| &*l.name == limit)
            .ok_or_else(|| ConfigError(format!("no limit is named {limit:?}")))?;
        l.params.store(Arc::new(Params::new(quota, l.on_failure)));
        l.hot.store(quota.gcra());
        Ok(())
    }

    /// The current quota of every limit, by name.
    pub fn quotas(&self) -> Vec<(Arc<str>, Quota)> {
        self.inner
            .limits
            .iter()
            .map(|l| (l.name.clone(), l.params.load().quota))
            .collect()
    }

    /// How many keys a limit holds in this process (its buckets in memory, or its fallback
    /// buckets with Redis); `None` for an unknown limit name.
    pub fn local_keys(&self, limit: &str) -> Option<usize> {
        let l = self.inner.limits.iter().find(|l| &*l.name == limit)?;
        Some(l.local.len())
    }

    /// Counts an admitted request for every limit in `applied`.
    #[inline]
    fn count_allowed(&self, applied: u16) {
        if cfg!(feature = "metrics") {
            for (i, l) in self.inner.limits.iter().enumerate() {
                if applied & (1 << i) != 0 {
                    l.metrics.allowed();
                }
            }
        }
    }

    fn cost(&self, req: &Req) -> u32 {
        self.inner.cost.as_ref().map_or(1, |c| c(req))
    }

    /// Decides in memory: the limiter's own buckets (in-memory backend) or the local fallback
    /// buckets. Lock-free for known keys; allocation-free unless a closure key extractor
    /// allocates.
    #[inline]
    pub fn check_local(&self, req: &Req) -> Decision<'_> {
        let cost = self.cost(req);
        match &*self.inner.limits {
            [only] => Self::check_one(only, req, &self.inner.clock, cost),
            _ => self.check_many(req, self.inner.clock.now(), cost),
        }
    }

    /// The lean check, in memory: admits the request (taking its cells) or says which limit
    /// denied it, without the figures for the `RateLimit` headers. Same buckets and rules as
    /// [`RateLimiter::check_local`]; use it when only the verdict matters.
    ///
    /// ```
    /// use omega_rate_limit::{Limit, Quota, RateLimiter};
    ///
    /// let limiter = RateLimiter::<()>::builder()
    ///     .limit(Limit::global("global", Quota::per_minute(1)))
    ///     .build()
    ///     .unwrap();
    /// assert!(limiter.admit(&()).is_ok());
    /// assert_eq!(limiter.admit(&()).unwrap_err().limit(), "global");
    /// ```
    #[inline(always)]
    pub fn admit(&self, req: &Req) -> Result<(), Denied<'_>> {
        let cost = self.cost(req);
        let [l] = &*self.inner.limits else {
            let now = self.inner.clock.now();
            return match self.check_many(req, now, cost).denied {
                None => Ok(()),
                Some(d) => Err(d),
            };
        };
        let Some(key) = l.local_key(req) else {
            return Ok(());
        };
        let g = l.hot.load();
        // The clock last: everything that does not depend on the time is ready when it
        // returns (a clock read is the slowest step, and on some VMs it serialises).
        let now = self.inner.clock.now();
        match l.local.step(key, &g, now, cost) {
            Step::Allow { .. } => {
                l.metrics.allowed();
                Ok(())
            }
            Step::Deny { .. } if l.hot.shadow => {
                l.metrics.shadow_denied();
                Ok(())
            }
            Step::Deny { retry_after: r } => {
                l.metrics.denied();
                Err(Denied {
                    limit: &l.name,
                    retry_nanos: if cost > g.burst { u64::MAX } else { r },
                    burst: g.burst,
                })
            }
        }
    }

    /// One limit: no refunds to track, and a decision built in place.
    #[inline]
    fn check_one<'a>(l: &'a LimitState<Req>, req: &Req, clock: &Clock, cost: u32) -> Decision<'a> {
        let Some(key) = l.local_key(req) else {
            return Tally::new().finish(false);
        };
        let g = l.hot.load();
        // The clock last, as in `admit`.
        let now = clock.now();
        match l.local.step(key, &g, now, cost) {
            Step::Allow { tat } => {
                l.metrics.allowed();
                Decision {
                    denied: None,
                    // A shadow limit never binds (see `Tally::allow`).
                    binding: (!l.shadow).then_some(Bind::Local {
                        limit: &l.name,
                        g,
                        tat,
                        now,
                    }),
                    shadow_denied: 0,
                    degraded: false,
                }
            }
            Step::Deny { retry_after: r } => {
                let mut tally = Tally::new();
                tally.deny(&l.name, &g, retry_after(&g, cost, r), l.shadow);
                if l.shadow {
                    l.metrics.shadow_denied();
                } else {
                    l.metrics.denied();
                }
                tally.finish(false)
            }
        }
    }

    /// Several limits: all must admit; a denial gives back what the earlier ones took.
    #[inline(never)]
    fn check_many(&self, req: &Req, now: Nanos, cost: u32) -> Decision<'_> {
        let mut tally = Tally::new();
        // Limits that took cells, as a bit set: refunds re-derive their keys (denials only).
        let mut taken: u16 = 0;
        for (i, l) in self.inner.limits.iter().enumerate() {
            let Some(key) = l.local_key(req) else {
                continue;
            };
            let g = &l.hot.load();
            match l.local.step(key, g, now, cost) {
                Step::Allow { tat } => {
                    taken |= 1 << i;
                    tally.allow_local(&l.name, g, tat, now, l.shadow);
                }
                Step::Deny { retry_after: r } => {
                    tally.deny(&l.name, g, retry_after(g, cost, r), l.shadow);
                    if l.shadow {
                        l.metrics.shadow_denied();
                    } else {
                        l.metrics.denied();
                        break;
                    }
                }
            }
        }
        if tally.denied.is_none() {
            self.count_allowed(taken);
        } else if taken != 0 {
            for (i, l) in self.inner.limits.iter().enumerate() {
                if taken & (1 << i) == 0 {
                    continue;
                }
                if let Some(key) = l.local_key(req) {
                    l.local.refund(key, &l.hot.load(), now, cost);
                }
            }
        }
        tally.finish(false)
    }

    /// Decides for `req` on the limiter's backend. In memory this never waits; with Redis it
    /// makes one script call (one per slot on a cluster), bounded by the backend's operation
    /// timeout, and applies each limit's failure policy when Redis fails.
    pub async fn check(&self, req: &Req) -> Decision<'_> {
        match &self.inner.store {
            Store::Memory => self.check_local(req),
            #[cfg(feature = "redis")]
            Store::Redis(store) => {
                if let Some(decision) = self.check_leased_locally(req) {
                    return decision;
                }
                let prepared = self.prepare_remote(req);
                // Boxed so that `check`'s own future stays small: lease mode mostly decides
                // above without it.
                Box::pin(self.check_remote(store, prepared)).await
            }
        }
    }
}

#[cfg(feature = "redis")]
pub(crate) struct Prepared {
    /// The limits decided by the script.
    items: Vec<crate::redis_store::Item>,
    /// For each item, the limit it belongs to and its in-memory key (for the fallback).
    owners: Vec<(usize, Option<u64>)>,
    /// The leased limits, decided in this process.
    leases: Vec<LeaseItem>,
    cost: u32,
}

#[cfg(feature = "redis")]
struct LeaseItem {
    owner: usize,
    local_key: Option<u64>,
    slot: Arc<crate::lease::Slot>,
    gcra: Gcra,
}

/// What a leased limit said.
#[cfg(feature = "redis")]
enum LeaseStep {
    Paid {
        remaining: u32,
        reset_after: Duration,
    },
    Denied {
        retry_after: Duration,
    },
}

#[cfg(feature = "redis")]
impl<Req: 'static> RateLimiter<Req> {
    /// Decides without Redis and without waiting when every limit is leased and every lease
    /// involved can pay; `None` otherwise (nothing is taken then). This is the common case of
    /// lease mode, and it allocates nothing.
    pub(crate) fn check_leased_locally(&self, req: &Req) -> Option<Decision<'_>> {
        let limits = &self.inner.limits;
        if !limits.iter().all(|l| l.leases.is_some()) {
            return None;
        }
        let now = self.inner.clock.now();
        let cost = self.cost(req);
        let mut tally = Tally::new();
        let mut paid: u16 = 0;
        let mut keys = [None; MAX_LIMITS];
        for (i, l) in limits.iter().enumerate() {
            let Some(key) = l.local_key(req) else {
                continue;
            };
            let leases = l.leases.as_ref()?;
            let g = l.hot.load();
            if cost > g.burst {
                // Never admitted: the full path reports it.
                self.give_back_leases(paid, &keys, cost, now);
                return None;
            }
            match leases.try_pay(key, cost, now) {
                Some((remaining, reset, top_up)) => {
                    if let Some(guard) = top_up {
                        self.top_up(guard, g, leases.lease);
                    }
                    paid |= 1 << i;
                    keys[i] = key;
                    tally.allow(
                        &l.name,
                        &g,
                        remaining,
                        Duration::from_nanos(reset),
                        l.shadow,
                    );
                }
                None => {
                    self.give_back_leases(paid, &keys, cost, now);
                    return None;
                }
            }
        }
        self.count_allowed(paid);
        Some(tally.finish(false))
    }

    /// Tops a lease up in the background (dropping the guard, without a runtime, lets the
    /// next caller fetch instead).
    fn top_up(&self, guard: crate::lease::FetchGuard, g: Gcra, lease: crate::lease::Lease) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limiter = self.clone();
        runtime.spawn(async move {
            let Store::Redis(store) = &limiter.inner.store else {
                return;
            };
            let want = lease.batch.min(g.burst).max(1);
            let result = store.lease(guard.redis_key(), &g, 1, want).await;
            let now = limiter.inner.clock.now();
            match result {
                Ok(crate::redis_store::LeaseGrant::Granted {
                    cells,
                    full_after_us,
                }) => guard.topped_up(
                    cells,
                    full_after_us.saturating_mul(1_000),
                    now,
                    omega_core::clock::duration_nanos(lease.max_hold),
                ),
                Ok(crate::redis_store::LeaseGrant::Denied { retry_us }) => {
                    guard.denied(retry_us.saturating_mul(1_000), now)
                }
                Err(_) => drop(guard),
            }
        });
    }

    fn give_back_leases(&self, paid: u16, keys: &[Option<u64>; MAX_LIMITS], cost: u32, now: Nanos) {
        for (i, l) in self.inner.limits.iter().enumerate() {
            if paid & (1 << i) != 0
                && let Some(leases) = &l.leases
            {
                leases.give_back(keys[i], cost, now);
            }
        }
    }

    /// Extracts keys and parameters, so the request need not be borrowed across the await.
    pub(crate) fn prepare_remote(&self, req: &Req) -> Prepared {
        let Store::Redis(store) = &self.inner.store else {
            unreachable!("prepare_remote on a memory limiter")
        };
        let ks = store.backend().keyspace();
        let cost = self.cost(req);
        // Allocated on first push only: a leased-only limiter fills one vector.
        let mut items = Vec::new();
        let mut owners = Vec::new();
        let mut leases = Vec::new();
        for (i, l) in self.inner.limits.iter().enumerate() {
            let key = match &l.key {
                None => None,
                Some(extract) => match extract.key(req) {
                    Some(k) => Some(k),
                    None => continue,
                },
            };
            let local_key = key.as_deref().map(|k| l.local.hash(k));
            let redis_key = || match key.as_deref() {
                None => ks.tagged(&l.redis_name, &[]),
                Some(k) => ks.tagged(&format!("{}:{k}", l.redis_name), &[]),
            };
            if let Some(l_leases) = &l.leases {
                // The key string is built only the first time this process sees the key.
                leases.push(LeaseItem {
                    owner: i,
                    local_key,
                    slot: l_leases.slot(local_key, redis_key),
                    gcra: l.hot.load(),
                });
                continue;
            }
            items.push(crate::redis_store::Item {
                key: redis_key(),
                gcra: l.hot.load(),
                cost,
                shadow: l.shadow,
            });
            owners.push((i, local_key));
        }
        Prepared {
            items,
            owners,
            leases,
            cost,
        }
    }

    /// Decides a prepared request on Redis.
    pub(crate) async fn check_prepared(&self, prepared: Prepared) -> Decision<'_> {
        let Store::Redis(store) = &self.inner.store else {
            unreachable!("check_prepared on a memory limiter")
        };
        self.check_remote(store, prepared).await
    }

    pub(crate) async fn check_remote(
        &self,
        store: &crate::redis_store::RedisStore,
        prepared: Prepared,
    ) -> Decision<'_> {
        use crate::redis_store::{RemoteStep, from_micros};
        let cost = prepared.cost;
        let mut tally = Tally::new();
        // Limits that admitted the request, for the `allowed` counters.
        let mut admitted: u16 = 0;
        let mut degraded = false;
        // What to give back if a later limit denies: leases paid, fallback buckets taken.
        let mut paid: u16 = 0; // indices into `prepared.leases`
        let mut fallback_taken: Vec<(usize, Option<u64>)> = Vec::new();

        // 1. Leased limits: decided here; a round trip only to renew a lease.
        for (i, item) in prepared.leases.iter().enumerate() {
            let l = &self.inner.limits[item.owner];
            let g = &item.gcra;
            match self.spend_lease(store, l, item, cost).await {
                Ok(LeaseStep::Paid {
                    remaining,
                    reset_after,
                }) => {
                    admitted |= 1 << item.owner;
                    paid |= 1 << i;
                    tally.allow(&l.name, g, remaining, reset_after, l.shadow);
                }
                Ok(LeaseStep::Denied { retry_after }) => {
                    if l.shadow {
                        l.metrics.shadow_denied();
                    } else {
                        l.metrics.denied();
                    }
                    tally.deny(&l.name, g, retry_after, l.shadow);
                }
                Err(_) => {
                    degraded = true;
                    let now = self.inner.clock.now();
                    if self.fallback_step(
                        item.owner,
                        item.local_key,
                        now,
                        cost,
                        &mut tally,
                        &mut fallback_taken,
                    ) {
                        admitted |= 1 << item.owner;
                    }
                }
            }
            if tally.denied.is_some() {
                break;
            }
        }

        // 2. Exact limits: one script call (one per slot on a cluster).
        if tally.denied.is_none() && !prepared.items.is_empty() {
            #[allow(clippy::let_unit_value)] // unit without the `metrics` feature
            let started = crate::metrics::StoreMetrics::start();
            // Boxed: the call's state is large, and leased decisions never need it.
            let (items, result) = Box::pin(store.take(prepared.items)).await;
            store.metrics().decision(started, result.is_ok());
            match result {
                Ok(steps) => {
                    for ((step, &(owner, _)), item) in
                        steps.iter().zip(&prepared.owners).zip(&items)
                    {
                        let l = &self.inner.limits[owner];
                        let g = &item.gcra;
                        match *step {
                            RemoteStep::Allow {
                                remaining,
                                reset_us,
                            } => {
                                admitted |= 1 << owner;
                                tally.allow(&l.name, g, remaining, from_micros(reset_us), l.shadow)
                            }
                            RemoteStep::Deny { retry_us, .. } => {
                                if l.shadow {
                                    l.metrics.shadow_denied();
                                } else {
                                    l.metrics.denied();
                                }
                                tally.deny(
                                    &l.name,
                                    g,
                                    retry_after(g, cost, retry_us * 1_000),
                                    l.shadow,
                                )
                            }
                        }
                    }
                }
                Err(_) => {
                    degraded = true;
                    let now = self.inner.clock.now();
                    for &(owner, key) in &prepared.owners {
                        if self.fallback_step(
                            owner,
                            key,
                            now,
                            cost,
                            &mut tally,
                            &mut fallback_taken,
                        ) {
                            admitted |= 1 << owner;
                        }
                    }
                }
            }
        }

        if tally.denied.is_none() {
            self.count_allowed(admitted);
        } else {
            let now = self.inner.clock.now();
            for (i, item) in prepared.leases.iter().enumerate() {
                if paid & (1 << i) != 0 {
                    item.slot.give_back(cost, now);
                }
            }
            for (owner, key) in fallback_taken {
                let l = &self.inner.limits[owner];
                l.local.refund(key, &l.params.load().fallback, now, cost);
            }
        }
        tally.finish(degraded)
    }

    /// Spends `cost` from a leased limit, renewing its lease from Redis when it cannot pay.
    async fn spend_lease(
        &self,
        store: &crate::redis_store::RedisStore,
        l: &LimitState<Req>,
        item: &LeaseItem,
        cost: u32,
    ) -> omega_core::Result<LeaseStep> {
        use crate::lease::Spend;
        use crate::redis_store::LeaseGrant;
        let g = &item.gcra;
        if cost > g.burst {
            return Ok(LeaseStep::Denied {
                retry_after: Duration::MAX,
            });
        }
        let lease = l
            .leases
            .as_ref()
            .expect("a lease item belongs to a leased limit")
            .lease;
        loop {
            let now = self.inner.clock.now();
            match item.slot.spend(cost, now) {
                Spend::Paid {
                    remaining,
                    reset_after,
                } => {
                    return Ok(LeaseStep::Paid {
                        remaining,
                        reset_after: Duration::from_nanos(reset_after),
                    });
                }
                Spend::Denied { retry_after } => {
                    return Ok(LeaseStep::Denied {
                        retry_after: Duration::from_nanos(retry_after),
                    });
                }
                Spend::Wait => item.slot.wait_for_fetch().await,
                Spend::Fetch(guard) => {
                    let want = lease.batch.max(cost).min(g.burst);
                    #[allow(clippy::let_unit_value)] // unit without the `metrics` feature
                    let started = crate::metrics::StoreMetrics::start();
                    // Boxed: the call's state is large and most spends never need it.
                    let result = Box::pin(store.lease(&item.slot.redis_key, g, cost, want)).await;
                    store.metrics().decision(started, result.is_ok());
                    // On error the guard drops here and the next caller may fetch.
                    let grant = result?;
                    let now = self.inner.clock.now();
                    return Ok(match grant {
                        LeaseGrant::Granted {
                            cells,
                            full_after_us,
                        } => LeaseStep::Paid {
                            remaining: guard.granted(
                                cells,
                                cost,
                                full_after_us.saturating_mul(1_000),
                                now,
                                omega_core::clock::duration_nanos(lease.max_hold),
                            ),
                            reset_after: Duration::from_micros(full_after_us),
                        },
                        LeaseGrant::Denied { retry_us } => {
                            let retry = retry_us.saturating_mul(1_000);
                            guard.denied(retry, now);
                            LeaseStep::Denied {
                                retry_after: Duration::from_nanos(retry),
                            }
                        }
                    });
                }
            }
        }
    }

    /// Redis failed for limit `owner`: its failure policy decides. Returns `true` when the
    /// limit admitted the request; fallback cells taken are recorded in `taken`.
    fn fallback_step<'a>(
        &'a self,
        owner: usize,
        key: Option<u64>,
        now: omega_core::Nanos,
        cost: u32,
        tally: &mut Tally<'a>,
        taken: &mut Vec<(usize, Option<u64>)>,
    ) -> bool {
        let l = &self.inner.limits[owner];
        let params = l.params.load();
        let denied = match l.on_failure {
            OnBackendFailure::Open => false,
            OnBackendFailure::Closed => {
                tally.deny(
                    &l.name,
                    &params.gcra,
                    Duration::from_nanos(params.gcra.interval),
                    l.shadow,
                );
                true
            }
            OnBackendFailure::Local { .. } => {
                let g = &params.fallback;
                match l.local.step(key, g, now, cost) {
                    Step::Allow { tat } => {
                        taken.push((owner, key));
                        tally.allow_local(&l.name, g, tat, now, l.shadow);
                        false
                    }
                    Step::Deny { retry_after: r } => {
                        tally.deny(&l.name, g, retry_after(g, cost, r), l.shadow);
                        true
                    }
                }
            }
        };
        if denied {
            if l.shadow {
                l.metrics.shadow_denied();
            } else {
                l.metrics.denied();
            }
        }
        !denied
    }
}
