//! The limiter: a set of limits over one backend, shared by every clone.
//!
//! - [`builder`]: building a limiter;
//! - [`decision`]: what a check says;
//! - [`local`]: decisions in this process (the in-memory backend);
//! - `remote` (feature `redis`): decisions on Redis, exact or leased, and the failure policies;
//! - `renew` (feature `redis`): the leases' background top-ups, batched;
//! - `policies` (feature `http`): the requests' `RateLimit-Policy` lists, cached;
//! - [`settle`]: what a service does with a decision.

pub(crate) mod builder;
pub(crate) mod decision;
mod local;
#[cfg(feature = "http")]
mod policies;
#[cfg(feature = "redis")]
mod remote;
#[cfg(feature = "redis")]
mod renew;
pub(crate) mod settle;

use std::fmt;
use std::sync::Arc;

use omega_core::Clock;

use crate::error::ConfigError;
use crate::limit::{LimitState, Params};
use crate::quota::Quota;
use decision::Decision;

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
            .field("backend", &self.inner.store.name())
            .finish()
    }
}

pub(crate) type CostFn<Req> = Box<dyn Fn(&Req) -> u32 + Send + Sync>;

pub(crate) struct Inner<Req> {
    pub(crate) limits: Box<[LimitState<Req>]>,
    pub(crate) cost: Option<CostFn<Req>>,
    pub(crate) clock: Clock,
    pub(crate) store: Store,
    /// The queue of the leases' background top-ups, started on first use.
    #[cfg(feature = "redis")]
    pub(crate) renewals: renew::Queue,
    /// The `RateLimit-Policy` lists of requests, per set of policies.
    #[cfg(feature = "http")]
    pub(crate) policies: policies::Policies,
}

/// Where the buckets live.
pub(crate) enum Store {
    Memory,
    #[cfg(feature = "redis")]
    Redis(Arc<crate::redis_store::RedisStore>),
}

impl Store {
    fn name(&self) -> &str {
        match self {
            Store::Memory => "memory",
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.backend().target(),
        }
    }
}

impl<Req: 'static> RateLimiter<Req> {
    /// `true` when decisions are made in this process (no await needed).
    pub fn is_local(&self) -> bool {
        matches!(self.inner.store, Store::Memory)
    }

    /// Changes a limit's quota while serving. The next decision uses it; every key keeps its
    /// state (a key that used its burst under the old quota stays as far behind under the new
    /// one, in time).
    ///
    /// The change is atomic: a decision racing it uses the old quota or the new one, never a
    /// mix of the two, and a request denied by a later limit gives back to this one exactly
    /// what it took, whichever quota is current by then.
    pub fn set_quota(&self, limit: &str, quota: Quota) -> Result<(), ConfigError> {
        let l = self
            .inner
            .limits
            .iter()
            .find(|l| &*l.name == limit)
            .ok_or_else(|| ConfigError(format!("no limit is named {limit:?}")))?;
        let _writer = l
            .quota_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        l.params.store(Arc::new(Params::new(quota, l.on_failure)));
        l.hot.store(quota.gcra());
        #[cfg(feature = "http")]
        self.inner.policies.changed(l, quota);
        Ok(())
    }

    /// The current quota of every limit, by name.
    pub fn quotas(&self) -> Vec<(Arc<str>, Quota)> {
        self.inner
            .limits
            .iter()
            .map(|l| (l.name.text.clone(), l.params.load().quota))
            .collect()
    }

    /// How many keys a limit holds in this process (its buckets in memory, or its fallback
    /// buckets with Redis); `None` for an unknown limit name.
    pub fn local_keys(&self, limit: &str) -> Option<usize> {
        let l = self.inner.limits.iter().find(|l| &*l.name == limit)?;
        Some(l.local.len())
    }

    /// Decides for `req` on the limiter's backend. In memory this never waits. With Redis,
    /// leased limits pay from their leases in this process and exact limits make one script
    /// call (one per slot on a cluster, all at once); the whole decision has one deadline, the
    /// backend's operation timeout, after which each limit's failure policy decides.
    pub async fn check(&self, req: &Req) -> Decision<'_> {
        // Only the boxed remote call lives across the await: a scrutinee matched around the
        // await (the split: a decision or the prepared call) would be kept in `check`'s own
        // future, which every caller moves.
        #[cfg(feature = "redis")]
        {
            let remote = match &self.inner.store {
                Store::Memory => return self.check_local(req),
                Store::Redis(store) => match self.decide_redis(store, req) {
                    remote::Split::Decided(decision) => return decision,
                    // Boxed so that `check`'s own future stays small: lease mode mostly
                    // decides above without it.
                    remote::Split::Remote(prepared) => Box::pin(self.check_prepared(prepared)),
                },
            };
            remote.await
        }
        #[cfg(not(feature = "redis"))]
        {
            let Store::Memory = &self.inner.store;
            self.check_local(req)
        }
    }

    /// Counts an admitted request for every limit in `applied`.
    #[inline]
    pub(crate) fn count_allowed(&self, applied: u16) {
        if cfg!(feature = "metrics") {
            for (i, l) in self.inner.limits.iter().enumerate() {
                if applied & (1 << i) != 0 {
                    l.metrics.allowed();
                }
            }
        }
    }

    #[inline]
    pub(crate) fn cost(&self, req: &Req) -> u32 {
        self.inner.cost.as_ref().map_or(1, |c| c(req))
    }
}
