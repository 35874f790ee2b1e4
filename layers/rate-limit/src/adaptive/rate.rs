//! Rate adaptation: a GCRA limit whose rate follows the adaptive controller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Estimate, LimitListener};
use crate::error::ConfigError;
use crate::limiter::RateLimiter;
use crate::quota::Quota;

/// Makes a [`RateLimiter`] limit's quota follow an adaptive limit: `limit` requests per RTT
/// (the last window's average), with a burst of `limit`. By Little's law that is the rate the
/// downstream serves at the limit, so "requests per second" follows the downstream.
///
/// It is a [`LimitListener`]: give it to
/// [`AdaptiveLimiterBuilder::on_update`](super::AdaptiveLimiterBuilder::on_update). It changes
/// the quota through [`RateLimiter::set_quota`] (atomic; every key keeps its state) when the
/// rate moved by more than 1%, at most once per window, never per request. With partitions,
/// [`AdaptiveRate::partition`] chooses the one to follow (by default every partition's update
/// sets the quota).
///
/// ```
/// use omega_rate_limit::adaptive::{AdaptiveLimiter, AdaptiveRate};
/// use omega_rate_limit::{Limit, Quota, RateLimiter};
///
/// let rate = RateLimiter::<()>::builder()
///     .limit(Limit::global("downstream", Quota::per_second(100)))
///     .build()
///     .unwrap();
/// let adaptive = AdaptiveLimiter::<()>::builder()
///     .on_update(AdaptiveRate::new(rate.clone(), "downstream").unwrap())
///     .build()
///     .unwrap();
/// # let _ = adaptive;
/// ```
pub struct AdaptiveRate<Req> {
    limiter: RateLimiter<Req>,
    limit: Arc<str>,
    partition: Option<Box<str>>,
    /// The rate last set, in requests per second (`f64` bits).
    last: AtomicU64,
}

impl<Req> std::fmt::Debug for AdaptiveRate<Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveRate")
            .field("limit", &self.limit)
            .field("partition", &self.partition)
            .finish()
    }
}

impl<Req: 'static> AdaptiveRate<Req> {
    /// Follows into `limiter`'s limit named `limit`; an error when it has none of that name.
    pub fn new(limiter: RateLimiter<Req>, limit: &str) -> Result<Self, ConfigError> {
        let (name, _) = limiter
            .quotas()
            .into_iter()
            .find(|(name, _)| &**name == limit)
            .ok_or_else(|| ConfigError(format!("no limit is named {limit:?}")))?;
        Ok(AdaptiveRate {
            limiter,
            limit: name,
            partition: None,
            last: AtomicU64::new(0f64.to_bits()),
        })
    }

    /// Follows only `partition` (its key as text).
    pub fn partition(mut self, partition: impl Into<Box<str>>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// The quota an estimate means: `limit` per RTT, burst `limit`; `None` before the first
    /// RTT.
    pub fn quota(estimate: &Estimate) -> Option<Quota> {
        if estimate.rtt().is_zero() {
            return None;
        }
        Quota::new(estimate.limit().max(1), estimate.rtt()).ok()
    }
}

impl<Req: 'static> LimitListener for AdaptiveRate<Req>
where
    RateLimiter<Req>: Send + Sync,
{
    fn limit_changed(&self, partition: &str, estimate: &Estimate) {
        if self.partition.as_deref().is_some_and(|p| p != partition) {
            return;
        }
        let Some(quota) = Self::quota(estimate) else {
            return;
        };
        let rate = f64::from(estimate.limit().max(1)) / estimate.rtt().as_secs_f64();
        let last = f64::from_bits(self.last.load(Ordering::Relaxed));
        if last > 0.0 && ((rate - last) / last).abs() <= 0.01 {
            return;
        }
        self.last.store(rate.to_bits(), Ordering::Relaxed);
        // The name was checked when this was built, and limits are never removed.
        let _ = self.limiter.set_quota(&self.limit, quota);
    }
}
