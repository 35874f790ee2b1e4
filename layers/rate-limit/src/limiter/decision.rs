//! What a check says: admitted or not, why, and the figures of the binding limit.

use std::time::Duration;

use omega_core::Nanos;
use omega_core::key::KeyMissing;

use crate::error::{PeerAddrMissing, RateLimited};
use crate::limit::{MAX_LIMITS, Missing, Named};
use crate::quota::Gcra;

/// The outcome of checking one request. It borrows the limiter's limit names, so making one
/// touches no reference count and allocates nothing; the header figures ([`Decision::binding`])
/// are computed only when asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub(crate) refused: Option<Refused<'a>>,
    pub(crate) binding: Option<Bind<'a>>,
    shadow_denied: u32,
    degraded: bool,
    /// The limits whose policies the request is under (enforcing limits it has a key for),
    /// as far as the decision checked them: bit `i` for limit `i`.
    pub(crate) policies: u16,
    /// Limits from this index on were not checked (a denial ended the decision).
    pub(crate) unchecked_from: u8,
}

/// Why a request was refused, borrowed from the limiter: making one allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused<'a> {
    /// A limit denied it: it is over the limit's quota.
    Limited(Denied<'a>),
    /// It has no key for a limit that refuses such requests
    /// ([`MissingKey::Reject`](omega_core::key::MissingKey::Reject)).
    KeyMissing {
        /// The limit's name.
        limit: &'a str,
        /// The refusal.
        refusal: &'a KeyMissing,
    },
    /// A limit keyed by the client's IP address saw a request without a peer address: the
    /// server does not record them (feature `http`; see [`PeerAddrMissing`]).
    PeerAddrMissing {
        /// The limit's name.
        limit: &'a str,
        /// The refusal, which names the fix.
        refusal: &'a PeerAddrMissing,
    },
}

impl Refused<'_> {
    /// The limit that refused the request.
    pub fn limit(&self) -> &str {
        match self {
            Refused::Limited(d) => d.limit(),
            Refused::KeyMissing { limit, .. } | Refused::PeerAddrMissing { limit, .. } => limit,
        }
    }

    /// How long until the same request would be admitted: `None` when it never will be (its
    /// cost is above the burst, it lacks the key, or the server records no peer address).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refused::Limited(d) => d.retry_after(),
            Refused::KeyMissing { .. } | Refused::PeerAddrMissing { .. } => None,
        }
    }
}

/// Why a limit denied a request, borrowed from the limiter: making one allocates nothing and
/// touches no reference count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied<'a> {
    /// The limit (its name and policy value, read only when an error is made).
    pub(crate) limit: &'a Named,
    /// Nanoseconds until admitted, or, when `never`, until the bucket is full again (kept
    /// raw: the deny path makes no `Duration` unless asked).
    pub(crate) nanos: u64,
    /// The limit's capacity (`burst` intervals), in nanoseconds.
    pub(crate) window: u64,
    pub(crate) burst: u32,
    /// The request's cost is above the burst: it is never admitted.
    pub(crate) never: bool,
}

impl<'a> Denied<'a> {
    /// A denial by `limit` under `g`: admitted in `retry` ns (`u64::MAX`: never), the bucket
    /// full again in `reset` ns (read only for never).
    #[inline]
    pub(crate) fn new(limit: &'a Named, g: &Gcra, retry: u64, reset: u64) -> Self {
        let never = retry == u64::MAX;
        Denied {
            limit,
            nanos: if never { reset } else { retry },
            window: g.capacity,
            burst: g.burst,
            never,
        }
    }

    /// A denial of `cost` by an in-memory step of `limit` under `g` ([`Step::Deny`]'s
    /// `retry_after`). Only `cost > burst` is compared on the way: the figures of a request
    /// that is never admitted are computed when read.
    ///
    /// [`Step::Deny`]: crate::quota::Step::Deny
    #[inline]
    pub(crate) fn local(limit: &'a Named, g: &Gcra, cost: u32, retry_after: u64) -> Self {
        let never = cost > g.burst;
        Denied {
            limit,
            nanos: if never {
                never_reset(g, cost, retry_after)
            } else {
                retry_after
            },
            window: g.capacity,
            burst: g.burst,
            never,
        }
    }

    /// Nanoseconds until admitted, `u64::MAX` for never: the order of denials.
    fn retry_nanos(&self) -> u64 {
        if self.never { u64::MAX } else { self.nanos }
    }
}

impl Denied<'_> {
    /// The limit that denied the request.
    pub fn limit(&self) -> &str {
        self.limit
    }

    /// How long until the same request would be admitted; `None` when it never will be (its
    /// cost is above the limit's burst).
    pub fn retry_after(&self) -> Option<Duration> {
        (!self.never).then(|| Duration::from_nanos(self.nanos))
    }

    /// What the `RateLimit` field reports: no cell left and the retry-after; for a request
    /// that can never be admitted, the bucket's real state (cells left, time until full).
    fn state(&self) -> (u32, Duration) {
        if !self.never {
            return (0, Duration::from_nanos(self.nanos));
        }
        let interval = (self.window / u64::from(self.burst.max(1))).max(1);
        let free = self.window.saturating_sub(self.nanos) / interval;
        (
            u32::try_from(free).unwrap_or(u32::MAX).min(self.burst),
            Duration::from_nanos(self.nanos),
        )
    }

    /// The owned error, for returning from a service.
    pub fn to_error(&self) -> RateLimited {
        #[cfg(feature = "http")]
        let (remaining, reset) = self.state();
        RateLimited {
            limit: self.limit.text.clone(),
            retry_after: self.retry_after(),
            quota_burst: self.burst,
            window: Duration::from_nanos(self.window),
            #[cfg(feature = "http")]
            remaining,
            #[cfg(feature = "http")]
            reset,
            #[cfg(feature = "http")]
            policy: self.limit.policy.header(),
            #[cfg(feature = "http")]
            fields: None,
        }
    }
}

/// The reset of a request that is never admitted (off the deny path's way).
#[cold]
#[inline(never)]
fn never_reset(g: &Gcra, cost: u32, retry_after: u64) -> u64 {
    g.denial(cost, retry_after).1
}

/// The binding limit as recorded: figures known (Redis, denials) or a local TAT to turn into
/// figures on demand (a division the admit path does not pay for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bind<'a> {
    Known(Binding<'a>),
    Local {
        limit: &'a Named,
        g: Gcra,
        tat: Nanos,
        now: Nanos,
    },
}

impl<'a> Bind<'a> {
    pub(crate) fn resolve(&self) -> Binding<'a> {
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

/// The limit with the fewest cells left after a decision: what the `RateLimit` header field
/// reports.
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
    /// Time until its bucket is full again (for a denied request: until it would be
    /// admitted).
    pub reset_after: Duration,
}

impl<'a> Decision<'a> {
    /// `true` when the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.refused.is_none()
    }

    /// Why a limit denied the request (the limit that frees up last, when several denied).
    /// `None` when the request was admitted, or refused for another reason
    /// ([`Decision::key_missing`], [`Decision::refused`]).
    pub fn denied(&self) -> Option<RateLimited> {
        match &self.refused {
            Some(Refused::Limited(d)) => Some(d.to_error()),
            _ => None,
        }
    }

    /// The refusal of a request without the key of a limit that refuses such requests.
    pub fn key_missing(&self) -> Option<KeyMissing> {
        match &self.refused {
            Some(Refused::KeyMissing { refusal, .. }) => Some((*refusal).clone()),
            _ => None,
        }
    }

    /// Why the request was refused, if it was.
    pub fn refused(&self) -> Option<&Refused<'a>> {
        self.refused.as_ref()
    }

    /// Turns the decision into a result.
    pub fn into_result(self) -> Result<Decision<'a>, Refused<'a>> {
        match self.refused {
            Some(r) => Err(r),
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

    /// A decision made in place: one local limit admitted the request (or, with `binding`
    /// `None`, no limit applied), under the policies of `policies`.
    #[inline]
    pub(crate) fn admitted(binding: Option<Bind<'a>>, policies: u16) -> Self {
        Decision {
            refused: None,
            binding,
            shadow_denied: 0,
            degraded: false,
            policies,
            unchecked_from: MAX_LIMITS as u8,
        }
    }
}

/// Accumulates a decision limit by limit.
pub(crate) struct Tally<'a> {
    refused: Option<Refused<'a>>,
    binding: Option<Bind<'a>>,
    shadow_denied: u32,
    policies: u16,
    unchecked_from: u8,
}

impl<'a> Tally<'a> {
    pub(crate) fn new() -> Self {
        Tally {
            refused: None,
            binding: None,
            shadow_denied: 0,
            policies: 0,
            unchecked_from: MAX_LIMITS as u8,
        }
    }

    /// `true` once a limit refused the request.
    #[inline]
    pub(crate) fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    /// The request is under limit `i` (it has the limit's key); a shadow limit is nobody's
    /// policy.
    #[inline]
    pub(crate) fn applies(&mut self, i: usize, shadow: bool) {
        if !shadow {
            self.policies |= 1 << i;
        }
    }

    /// The policies the request is under, as far as checked.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn policies(&self) -> u16 {
        self.policies
    }

    /// The request is under the policies of `policies` (all known beforehand).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_policies(&mut self, policies: u16) {
        self.policies = policies;
    }

    /// The decision ended at limit `i`: later ones were not checked.
    #[inline]
    pub(crate) fn stopped_at(&mut self, i: usize) {
        self.unchecked_from = (i + 1) as u8;
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline]
    pub(crate) fn allow(
        &mut self,
        name: &'a Named,
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
    pub(crate) fn allow_local(
        &mut self,
        name: &'a Named,
        g: &Gcra,
        tat: Nanos,
        now: Nanos,
        shadow: bool,
    ) {
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

    /// A limit denied: admitted no earlier than `retry` ns from now (`u64::MAX`: never), its
    /// bucket full again in `reset` ns.
    pub(crate) fn deny(&mut self, name: &'a Named, g: &Gcra, retry: u64, reset: u64, shadow: bool) {
        if shadow {
            self.shadow_denied += 1;
            return;
        }
        let later = match &self.refused {
            None => true,
            Some(Refused::Limited(d)) => retry > d.retry_nanos(),
            Some(_) => false,
        };
        if later {
            let denied = Denied::new(name, g, retry, reset);
            // The headers report the limit the denial names.
            let (remaining, reset_after) = denied.state();
            self.binding = Some(Bind::Known(Binding {
                limit: name,
                burst: g.burst,
                window: Duration::from_nanos(g.capacity),
                remaining,
                reset_after,
            }));
            self.refused = Some(Refused::Limited(denied));
        }
    }

    /// The request lacks the key of a limit that refuses such requests: that refusal stands,
    /// whatever the other limits say.
    pub(crate) fn key_missing(&mut self, name: &'a str, missing: &'a Missing) {
        self.refused = Some(match missing {
            Missing::Key(refusal) => Refused::KeyMissing {
                limit: name,
                refusal,
            },
            Missing::PeerAddr(refusal) => Refused::PeerAddrMissing {
                limit: name,
                refusal,
            },
        });
        self.binding = None;
    }

    pub(crate) fn finish(self, degraded: bool) -> Decision<'a> {
        Decision {
            refused: self.refused,
            binding: self.binding,
            shadow_denied: self.shadow_denied,
            degraded,
            policies: self.policies,
            unchecked_from: self.unchecked_from,
        }
    }
}
