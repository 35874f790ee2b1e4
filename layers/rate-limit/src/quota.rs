//! Quotas and the GCRA arithmetic every store shares.
//!
//! GCRA (the generic cell rate algorithm) is a token bucket kept as one number per key: the
//! theoretical arrival time (TAT), the moment at which the bucket would be full again. With an
//! emission interval `T = period / count` and a capacity of `burst` cells (`cap = burst · T`),
//! a request of cost `n` arriving at `now` is admitted when
//!
//! ```text
//! max(TAT, now) + n·T − now ≤ cap
//! ```
//!
//! and then sets `TAT = max(TAT, now) + n·T`. A key whose TAT is in the past has a full bucket:
//! exactly the state of a key never seen, which is why idle keys can be forgotten for free.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use omega_core::Nanos;
use omega_core::clock::duration_nanos;

/// How much a limit admits: `count` cells per `period`, and up to `burst` at once.
///
/// ```
/// use std::time::Duration;
/// use omega_rate_limit::Quota;
///
/// let q = Quota::per_second(100).with_burst(20);
/// assert_eq!(q.burst(), 20);
/// assert_eq!(q.emission_interval(), Duration::from_millis(10));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Quota({} per {:?}, burst {})",
            self.count, self.period, self.burst
        )
    }
}

/// Why a quota could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaError(String);

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuotaError {}

impl Quota {
    /// `count` cells per `period`, with a burst of `count` (the whole period's worth may arrive
    /// at once, as with governor's quotas).
    ///
    /// Fails when `count` is zero, the period is zero, or a cell would be shorter than one
    /// nanosecond.
    pub fn new(count: u32, period: Duration) -> Result<Self, QuotaError> {
        let Some(count) = NonZeroU32::new(count) else {
            return Err(QuotaError("a quota's count must be at least 1".into()));
        };
        if period.is_zero() {
            return Err(QuotaError(
                "a quota's period must be longer than zero".into(),
            ));
        }
        if duration_nanos(period) < u64::from(count.get()) {
            return Err(QuotaError(format!(
                "{count} per {period:?} is more than one per nanosecond"
            )));
        }
        Ok(Quota {
            count,
            period,
            burst: count,
        })
    }

    /// `count` per second.
    ///
    /// # Panics
    /// When `count` is zero.
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1)).expect("per_second needs a count of at least 1")
    }

    /// `count` per minute.
    ///
    /// # Panics
    /// When `count` is zero.
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60)).expect("per_minute needs a count of at least 1")
    }

    /// `count` per hour.
    ///
    /// # Panics
    /// When `count` is zero.
    pub fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600)).expect("per_hour needs a count of at least 1")
    }

    /// The same rate with a burst of `burst` cells: the most admitted at once.
    ///
    /// # Panics
    /// When `burst` is zero: a limit that admits nothing at once admits nothing at all.
    /// [`Quota::try_with_burst`] returns an error instead, for values read at run time.
    pub fn with_burst(self, burst: u32) -> Self {
        match self.try_with_burst(burst) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        }
    }

    /// The same rate with a burst of `burst` cells, or an error when `burst` is zero.
    ///
    /// ```
    /// use omega_rate_limit::Quota;
    ///
    /// assert_eq!(Quota::per_second(10).try_with_burst(3).unwrap().burst(), 3);
    /// assert!(Quota::per_second(10).try_with_burst(0).is_err());
    /// ```
    pub fn try_with_burst(mut self, burst: u32) -> Result<Self, QuotaError> {
        self.burst = NonZeroU32::new(burst).ok_or_else(|| {
            QuotaError(format!(
                "a burst of 0 admits nothing; {} per {:?} needs a burst of at least 1",
                self.count, self.period
            ))
        })?;
        Ok(self)
    }

    /// Cells per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The most cells admitted at once.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time one cell takes to replenish: `period / count`.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.gcra().interval)
    }

    /// The quota scaled by `share` (0 < share ≤ 1): used for the local fallback when Redis is
    /// down. At least one cell per period and a burst of one remain.
    pub fn scaled(&self, share: f64) -> Quota {
        let share = share.clamp(f64::MIN_POSITIVE, 1.0);
        let scale = |n: NonZeroU32| {
            NonZeroU32::new(((f64::from(n.get()) * share).floor() as u32).max(1))
                .unwrap_or(NonZeroU32::MIN)
        };
        Quota {
            count: scale(self.count),
            period: self.period,
            burst: scale(self.burst),
        }
    }

    pub(crate) fn gcra(&self) -> Gcra {
        let interval = (duration_nanos(self.period) / u64::from(self.count.get())).max(1);
        Gcra {
            interval,
            capacity: interval.saturating_mul(u64::from(self.burst.get())),
            burst: self.burst.get(),
        }
    }
}

/// The GCRA parameters of a quota, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// `T`: nanoseconds per cell.
    pub(crate) interval: u64,
    /// `burst · T`.
    pub(crate) capacity: u64,
    pub(crate) burst: u32,
}

/// The outcome of one GCRA step on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Admitted: store `tat`.
    Allow { tat: Nanos },
    /// Denied: admitted no earlier than `retry_after` nanoseconds from now.
    Deny { retry_after: u64 },
}

impl Gcra {
    /// One GCRA step for `cost` cells at `now` on a key whose TAT is `tat`.
    #[inline]
    pub(crate) fn step(&self, tat: Nanos, now: Nanos, cost: u32) -> Step {
        let base = tat.max(now);
        // One cell is the common case: no multiplication on the path after the clock read.
        let increment = if cost == 1 {
            self.interval
        } else {
            self.interval.saturating_mul(u64::from(cost))
        };
        let new_tat = base.saturating_add(increment);
        let ahead = new_tat - now;
        if ahead <= self.capacity {
            Step::Allow { tat: new_tat }
        } else {
            Step::Deny {
                retry_after: ahead - self.capacity,
            }
        }
    }

    /// The figures of a denial of `cost` (from [`Step::Deny`]): nanoseconds until admitted,
    /// `u64::MAX` for never (the cost is above the burst), and, for never, nanoseconds until
    /// the bucket is full again (`retry + capacity` is how far ahead the step would have put
    /// the TAT, `cost` intervals past where it is).
    #[inline]
    pub(crate) fn denial(&self, cost: u32, retry_after: u64) -> (u64, u64) {
        if cost <= self.burst {
            return (retry_after, 0);
        }
        let ahead = retry_after.saturating_add(self.capacity);
        let reset = ahead.saturating_sub(self.interval.saturating_mul(u64::from(cost)));
        (u64::MAX, reset)
    }

    /// Whole cells left after a step that left the key at `tat`.
    #[inline]
    pub(crate) fn remaining(&self, tat: Nanos, now: Nanos) -> u32 {
        let used = tat.saturating_sub(now);
        let free = self.capacity.saturating_sub(used) / self.interval;
        u32::try_from(free).unwrap_or(u32::MAX).min(self.burst)
    }

    /// Time until the key's bucket is full again.
    #[inline]
    pub(crate) fn reset_after(tat: Nanos, now: Nanos) -> u64 {
        tat.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_quotas_are_refused_with_a_reason() {
        assert!(
            Quota::new(0, Duration::from_secs(1))
                .unwrap_err()
                .0
                .contains("count")
        );
        assert!(
            Quota::new(1, Duration::ZERO)
                .unwrap_err()
                .0
                .contains("period")
        );
        assert!(Quota::new(10, Duration::from_nanos(5)).is_err());
    }

    #[test]
    fn a_fresh_key_admits_a_burst_then_one_per_interval() {
        let g = Quota::per_second(10).with_burst(3).gcra();
        assert_eq!(g.interval, 100_000_000);
        let mut tat = 0;
        let now = 5_000_000_000;
        for left in [2, 1, 0] {
            match g.step(tat, now, 1) {
                Step::Allow { tat: t } => {
                    tat = t;
                    assert_eq!(g.remaining(tat, now), left);
                }
                Step::Deny { .. } => panic!("denied within the burst"),
            }
        }
        assert_eq!(
            g.step(tat, now, 1),
            Step::Deny {
                retry_after: 100_000_000
            }
        );
        assert!(matches!(
            g.step(tat, now + 100_000_000, 1),
            Step::Allow { .. }
        ));
        assert_eq!(Gcra::reset_after(tat, now), 300_000_000);
    }

    #[test]
    fn a_cost_above_the_burst_is_never_admitted() {
        let g = Quota::per_second(10).with_burst(3).gcra();
        assert!(matches!(g.step(0, 10_000_000_000, 4), Step::Deny { .. }));
    }

    #[test]
    fn a_burst_of_zero_is_an_error() {
        let e = Quota::per_second(3).try_with_burst(0).unwrap_err();
        assert!(e.0.contains("burst of 0"), "{e}");
    }

    #[test]
    fn scaling_keeps_at_least_one_cell() {
        let q = Quota::per_minute(100).with_burst(10).scaled(0.25);
        assert_eq!((q.count(), q.burst()), (25, 2));
        let q = Quota::per_minute(2).with_burst(1).scaled(0.1);
        assert_eq!((q.count(), q.burst()), (1, 1));
    }
}
