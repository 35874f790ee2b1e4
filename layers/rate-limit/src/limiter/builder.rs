//! Building a [`RateLimiter`]: its limits, costs, backend, scope, clock and key bound.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use omega_core::key::{KeyMissing, MissingKey, check_name};
use omega_core::{Backend, Clock};

use super::{CostFn, Inner, RateLimiter, Store};
use crate::error::{ConfigError, PeerAddrMissing};
use crate::limit::{
    HotGcra, Limit, LimitState, MAX_LIMITS, Missing, Named, OnBackendFailure, Params, Policy,
};
use crate::memory::{DEFAULT_MAX_KEYS, LocalBuckets};

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
            .field("scope", &self.scope)
            .finish()
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
}

impl<Req: 'static> RateLimiterBuilder<Req> {
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
    /// A name ([`check_name`]); no effect in memory, where every limiter has its own buckets.
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

    /// Builds the limiter. Fails on duplicate or invalid limit names ([`check_name`]), an
    /// invalid scope, more than [`MAX_LIMITS`] limits, an invalid fallback share or lease, or
    /// with no limit at all.
    pub fn build(self) -> Result<RateLimiter<Req>, ConfigError> {
        self.check()?;
        let store = match self.backend {
            Backend::Memory => Store::Memory,
            #[cfg(feature = "redis")]
            Backend::Redis(r) => Store::Redis(Arc::new(crate::redis_store::RedisStore::new(r))),
            // A backend this build of the crate cannot use (omega-core has more features on
            // than this crate: Redis without this crate's `redis` feature).
            other => {
                return Err(ConfigError(format!(
                    "backend {} needs a feature of omega-rate-limit that is off (`redis`)",
                    other.health().target
                )));
            }
        };
        let max_keys = self.max_keys;
        #[cfg(feature = "redis")]
        let remote = matches!(store, Store::Redis(_));
        let scope = self.scope;
        let limits = self
            .limits
            .into_iter()
            .map(|l| {
                let missing = if l.key.is_some() && l.client_ip {
                    Some(Missing::PeerAddr(PeerAddrMissing::new(l.name.clone())))
                } else if l.key.is_some() && l.missing == MissingKey::Reject {
                    let what = l.key.as_ref().map(|k| k.describe()).unwrap_or_default();
                    Some(Missing::Key(KeyMissing::new(format!(
                        "{what} (limit {:?})",
                        l.name
                    ))))
                } else {
                    None
                };
                LimitState {
                    #[cfg(feature = "redis")]
                    leases: l
                        .lease
                        .filter(|_| remote)
                        .map(|lease| crate::lease::Leases::new(lease, max_keys)),
                    params: ArcSwap::from_pointee(Params::new(l.quota, l.on_failure)),
                    hot: HotGcra::new(l.quota.gcra(), l.shadow),
                    quota_lock: std::sync::Mutex::new(()),
                    key: l.key,
                    missing,
                    shadow: l.shadow,
                    on_failure: l.on_failure,
                    local: LocalBuckets::new(max_keys),
                    metrics: crate::metrics::LimitMetrics::new(&l.name),
                    #[cfg(feature = "redis")]
                    redis_name: match &scope {
                        Some(scope) => format!("rl:{scope}:{}", l.name),
                        None => format!("rl:{}", l.name),
                    },
                    name: Named {
                        policy: Policy::new(&l.name, &l.quota),
                        text: l.name,
                    },
                }
            })
            .collect();
        #[cfg(not(feature = "redis"))]
        let _ = scope;
        Ok(RateLimiter {
            inner: Arc::new(Inner {
                limits,
                cost: self.cost,
                clock: self.clock,
                store,
                #[cfg(feature = "redis")]
                renewals: crate::task_queue::TaskQueue::new(),
                #[cfg(feature = "http")]
                policies: super::policies::Policies::default(),
            }),
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
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
        if let Some(scope) = &self.scope {
            check_name("scope", scope).map_err(|e| ConfigError(format!("invalid scope: {e}")))?;
        }
        for (i, l) in self.limits.iter().enumerate() {
            check_name("limit name", &l.name)
                .map_err(|e| ConfigError(format!("limit #{}: {e}", i + 1)))?;
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
        Ok(())
    }
}
