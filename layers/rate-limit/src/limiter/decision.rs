//! What a check says: admitted or not, why, and the figures of the binding limit.

use std::sync::Arc;
use std::time::Duration;

use omega_core::Nanos;
use omega_core::key::KeyMissing;

use crate::error::RateLimited;
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
}

/// Why a request was refused, borrowed from the limiter: making one allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Refused<'_> {
    /// The limit that refused the request.
    pub fn limit(&self) -> &str {
        match self {
            Refused::Limited(d) => d.limit(),
            Refused::KeyMissing { limit, .. } => limit,
        }
    }

    /// How long until the same request would be admitted: [`Duration::MAX`] for never (its
    /// cost is above the burst, or it lacks the key).
    pub fn retry_after(&self) -> Duration {
        match self {
            Refused::Limited(d) => d.retry_after(),
            Refused::KeyMissing { .. } => Duration::MAX,
        }
    }
}

/// Why a limit denied a request, borrowed from the limiter: making one allocates nothing and
/// touches no reference count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied<'a> {
    pub(crate) limit: &'a Arc<str>,
    /// Nanoseconds until admitted; `u64::MAX` for never (kept raw: the deny path makes no
    /// `Duration` unless asked).
    pub(crate) retry_nanos: u64,
    pub(crate) burst: u32,
    /// The limit's capacity (`burst` intervals), in nanoseconds.
    pub(crate) window: u64,
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
            window: Duration::from_nanos(self.window),
            #[cfg(feature = "http")]
            fields: None,
        }
    }
}

/// The binding limit as recorded: figures known (Redis, denials) or a local TAT to turn into
/// figures on demand (a division the admit path does not pay for).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bind<'a> {
    Known(Binding<'a>),
    Local {
        limit: &'a Arc<str>,
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
        self.refused.is_none()
    }

    /// Why a limit denied the request (the limit that frees up last, when several denied).
    /// `None` when the request was admitted, or refused for lacking a key
    /// ([`Decision::key_missing`]).
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
    /// `None`, no limit applied).
    #[inline]
    pub(crate) fn admitted(binding: Option<Bind<'a>>) -> Self {
        Decision {
            refused: None,
            binding,
            shadow_denied: 0,
            degraded: false,
        }
    }
}

/// Accumulates a decision limit by limit.
pub(crate) struct Tally<'a> {
    refused: Option<Refused<'a>>,
    binding: Option<Bind<'a>>,
    shadow_denied: u32,
}

impl<'a> Tally<'a> {
    pub(crate) fn new() -> Self {
        Tally {
            refused: None,
            binding: None,
            shadow_denied: 0,
        }
    }

    /// `true` once a limit refused the request.
    #[inline]
    pub(crate) fn is_refused(&self) -> bool {
        self.refused.is_some()
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline]
    pub(crate) fn allow(
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
    pub(crate) fn allow_local(
        &mut self,
        name: &'a Arc<str>,
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

    pub(crate) fn deny(
        &mut self,
        name: &'a Arc<str>,
        g: &Gcra,
        retry_after: Duration,
        shadow: bool,
    ) {
        if shadow {
            self.shadow_denied += 1;
            return;
        }
        let later = match &self.refused {
            None => true,
            Some(Refused::Limited(d)) => retry_after > d.retry_after(),
            Some(Refused::KeyMissing { .. }) => false,
        };
        if later {
            self.refused = Some(Refused::Limited(Denied {
                limit: name,
                retry_nanos: omega_core::clock::duration_nanos(retry_after),
                burst: g.burst,
                window: g.capacity,
            }));
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

    /// The request lacks the key of a limit that refuses such requests: that refusal stands,
    /// whatever the other limits say.
    pub(crate) fn key_missing(&mut self, name: &'a str, refusal: &'a KeyMissing) {
        self.refused = Some(Refused::KeyMissing {
            limit: name,
            refusal,
        });
        self.binding = None;
    }

    pub(crate) fn finish(self, degraded: bool) -> Decision<'a> {
        Decision {
            refused: self.refused,
            binding: self.binding,
            shadow_denied: self.shadow_denied,
            degraded,
        }
    }
}

/// The retry-after of a denial: never, when the cost is above the burst.
pub(crate) fn retry_after(g: &Gcra, cost: u32, nanos: u64) -> Duration {
    if cost > g.burst {
        Duration::MAX
    } else {
        Duration::from_nanos(nanos)
    }
}
