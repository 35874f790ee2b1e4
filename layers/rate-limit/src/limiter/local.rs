//! Decisions in this process: the in-memory backend's buckets, lock-free for known keys.

use omega_core::{Clock, Nanos};

use super::RateLimiter;
use super::decision::{Bind, Decision, Denied, Refused, Tally};
use crate::limit::{KeyOf, LimitState, MAX_LIMITS, Missing};
use crate::quota::Step;

/// The refusal of a request without the key of a limit that refuses such requests.
#[cold]
pub(crate) fn missing<'a>(limit: &'a str, missing: &'a Missing) -> Refused<'a> {
    match missing {
        Missing::Key(refusal) => Refused::KeyMissing { limit, refusal },
        Missing::PeerAddr(refusal) => Refused::PeerAddrMissing { limit, refusal },
    }
}

impl<Req: 'static> RateLimiter<Req> {
    /// Decides in memory: the limiter's own buckets (in-memory backend) or the local fallback
    /// buckets. Lock-free for known keys; allocation-free unless a closure key source
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
    /// refused it, without the figures for the `RateLimit` headers. Same buckets and rules as
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
    pub fn admit(&self, req: &Req) -> Result<(), Refused<'_>> {
        let cost = self.cost(req);
        let [l] = &*self.inner.limits else {
            let now = self.inner.clock.now();
            return match self.check_many(req, now, cost).refused {
                None => Ok(()),
                Some(refused) => Err(refused),
            };
        };
        let key = match l.local_key(req) {
            KeyOf::Bucket(key) => key,
            KeyOf::Skip => return Ok(()),
            KeyOf::Missing(m) => return Err(missing(&l.name, m)),
        };
        let g = l.gcra();
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
                Err(Refused::Limited(Denied::local(&l.name, &g, cost, r)))
            }
        }
    }

    /// One limit: no refunds to track, and a decision built in place.
    #[inline]
    fn check_one<'a>(l: &'a LimitState<Req>, req: &Req, clock: &Clock, cost: u32) -> Decision<'a> {
        let key = match l.local_key(req) {
            KeyOf::Bucket(key) => key,
            KeyOf::Skip => return Decision::admitted(None, 0),
            KeyOf::Missing(m) => {
                let mut tally = Tally::new();
                tally.key_missing(&l.name, m);
                return tally.finish(false);
            }
        };
        let g = l.gcra();
        // The clock last, as in `admit`.
        let now = clock.now();
        match l.local.step(key, &g, now, cost) {
            Step::Allow { tat } => {
                l.metrics.allowed();
                // A shadow limit never binds (see `Tally::allow`), nor is it a policy.
                Decision::admitted(
                    (!l.shadow).then_some(Bind::Local {
                        limit: &l.name,
                        g,
                        tat,
                        now,
                    }),
                    u16::from(!l.shadow),
                )
            }
            Step::Deny { retry_after: r } => {
                let mut tally = Tally::new();
                tally.applies(0, l.shadow);
                let (retry, reset) = g.denial(cost, r);
                tally.deny(&l.name, &g, retry, reset, l.shadow);
                if l.shadow {
                    l.metrics.shadow_denied();
                } else {
                    l.metrics.denied();
                }
                tally.finish(false)
            }
        }
    }

    /// Several limits: all must admit; a refusal gives back what the earlier ones took, the
    /// very amount each took (a quota may change meanwhile).
    #[inline(never)]
    fn check_many(&self, req: &Req, now: Nanos, cost: u32) -> Decision<'_> {
        let mut tally = Tally::new();
        // Limits that took cells, as a bit set, and what each took: refunds re-derive their
        // keys (denials only).
        let mut taken: u16 = 0;
        let mut amounts = [0u64; MAX_LIMITS];
        for (i, l) in self.inner.limits.iter().enumerate() {
            let key = match l.local_key(req) {
                KeyOf::Bucket(key) => key,
                KeyOf::Skip => continue,
                KeyOf::Missing(m) => {
                    tally.key_missing(&l.name, m);
                    break;
                }
            };
            tally.applies(i, l.shadow);
            let g = &l.gcra();
            match l.local.step(key, g, now, cost) {
                Step::Allow { tat } => {
                    taken |= 1 << i;
                    amounts[i] = g.interval.saturating_mul(u64::from(cost));
                    tally.allow_local(&l.name, g, tat, now, l.shadow);
                }
                Step::Deny { retry_after: r } => {
                    let (retry, reset) = g.denial(cost, r);
                    tally.deny(&l.name, g, retry, reset, l.shadow);
                    if l.shadow {
                        l.metrics.shadow_denied();
                    } else {
                        l.metrics.denied();
                        tally.stopped_at(i);
                        break;
                    }
                }
            }
        }
        if !tally.is_refused() {
            self.count_allowed(taken);
        } else if taken != 0 {
            for (i, l) in self.inner.limits.iter().enumerate() {
                if taken & (1 << i) == 0 {
                    continue;
                }
                if let KeyOf::Bucket(key) = l.local_key(req) {
                    l.local.refund(key, amounts[i], now);
                }
            }
        }
        tally.finish(false)
    }
}
