//! What a service does with a request: the one local → leased → remote dispatch.
//!
//! [`RateLimiter::decide_now`] decides what can be decided without waiting (every in-memory
//! decision, and lease mode's common case) and otherwise prepares the Redis decision;
//! [`RateLimiter::settle`] turns a decision into what the service does: admit (with the
//! `RateLimit` header fields when its strategy sends them) or refuse.

use omega_core::key::KeyMissing;

use super::decision::{Decision, Refused};
use super::{RateLimiter, Store};
use crate::error::{PeerAddrMissing, RateLimited};
#[cfg(feature = "http")]
use crate::headers::Fields;

/// What the service does with a decided request.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Admit it.
    Admit,
    /// Admit it, and add these fields to its response.
    #[cfg(feature = "http")]
    AdmitWith(Fields),
    /// A limit denied it.
    Limited(RateLimited),
    /// It has no key for a limit that refuses such requests.
    KeyMissing(KeyMissing),
    /// A client-IP limit saw no peer address: the server does not record them.
    PeerAddrMissing(PeerAddrMissing),
}

/// A request as [`RateLimiter::decide_now`] leaves it.
pub(crate) enum Now {
    /// Decided.
    Settled(Settled),
    /// Redis decides: its keys and parameters, ready for [`RateLimiter::check_prepared`].
    #[cfg(feature = "redis")]
    Remote(super::remote::Prepared),
}

impl<Req: 'static> RateLimiter<Req> {
    /// Decides `req` if that needs no wait, else prepares the Redis decision. With `advise`,
    /// decisions carry the figures of the `RateLimit` header fields; without, the in-memory
    /// path is the lean [`RateLimiter::admit`].
    #[inline]
    pub(crate) fn decide_now(&self, req: &Req, advise: bool) -> Now {
        match &self.inner.store {
            Store::Memory if advise => {
                Now::Settled(self.settle(req, &self.check_local(req), advise))
            }
            Store::Memory => Now::Settled(match self.admit(req) {
                Ok(()) => Settled::Admit,
                Err(refused) => refusal(&refused),
            }),
            #[cfg(feature = "redis")]
            Store::Redis(store) => match self.decide_redis(store, req) {
                super::remote::Split::Decided(decision) => {
                    Now::Settled(self.settle(req, &decision, advise))
                }
                super::remote::Split::Remote(prepared) => Now::Remote(prepared),
            },
        }
    }

    /// What the service does with `decision` on `req`; with `advise`, the header fields go
    /// with it, admitted or denied: every policy the request is under, and the binding limit.
    pub(crate) fn settle(&self, req: &Req, decision: &Decision<'_>, advise: bool) -> Settled {
        #[cfg(feature = "http")]
        if advise {
            let fields = self.fields(req, decision);
            return match (&decision.refused, fields) {
                (None, Some(fields)) => Settled::AdmitWith(fields),
                (None, None) => Settled::Admit,
                (Some(Refused::Limited(denied)), fields) => {
                    let mut error = denied.to_error();
                    error.fields = fields;
                    Settled::Limited(error)
                }
                (Some(refused), _) => refusal(refused),
            };
        }
        #[cfg(not(feature = "http"))]
        let _ = (advise, req);
        match &decision.refused {
            None => Settled::Admit,
            Some(refused) => refusal(refused),
        }
    }

    /// The header fields of `decision`: the cached list of the request's policies (limits a
    /// denial kept the decision from reaching are added by their keys, so the list does not
    /// depend on where it stopped) and the binding limit's state.
    #[cfg(feature = "http")]
    fn fields(&self, req: &Req, decision: &Decision<'_>) -> Option<Fields> {
        let limits = &self.inner.limits;
        let mut mask = decision.policies;
        let unchecked = usize::from(decision.unchecked_from);
        for (i, l) in limits.iter().enumerate().skip(unchecked) {
            if !l.shadow && matches!(l.local_key(req), crate::limit::KeyOf::Bucket(_)) {
                mask |= 1 << i;
            }
        }
        let binding = decision.binding.as_ref().map(|b| b.resolve());
        if mask == 0 && binding.is_none() {
            return None;
        }
        let state =
            binding.and_then(|b| crate::headers::state(b.limit, b.remaining, b.reset_after));
        Some(Fields::new(self.inner.policies.list(limits, mask), state))
    }
}

/// A refusal as the service answers it.
#[cold]
fn refusal(refused: &Refused<'_>) -> Settled {
    match refused {
        Refused::Limited(denied) => Settled::Limited(denied.to_error()),
        Refused::KeyMissing { refusal, .. } => Settled::KeyMissing((*refusal).clone()),
        Refused::PeerAddrMissing { refusal, .. } => Settled::PeerAddrMissing((*refusal).clone()),
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::{RateLimiter, Settled};
    use crate::limit::Limit;
    use crate::quota::Quota;

    #[test]
    fn a_limit_s_policy_value_is_cached_until_its_quota_changes() {
        let limiter = RateLimiter::<()>::builder()
            .limit(Limit::global("g", Quota::per_second(1)))
            .build()
            .unwrap();
        let policy = |limiter: &RateLimiter<()>| {
            let mut headers = http::HeaderMap::new();
            match limiter.settle(&(), &limiter.check_local(&()), true) {
                Settled::AdmitWith(fields) => fields.apply(&mut headers),
                Settled::Limited(denied) => {
                    omega_core::reject::Refusal::write_headers(&denied, &mut headers)
                }
                other => panic!("{other:?}"),
            }
            headers["ratelimit-policy"].clone()
        };
        assert_eq!(policy(&limiter), r#""g";q=1;w=1"#);
        assert_eq!(policy(&limiter), r#""g";q=1;w=1"#);
        limiter.set_quota("g", Quota::per_minute(5)).unwrap();
        assert_eq!(policy(&limiter), r#""g";q=5;w=60"#);
        // Without `advise`, no figures are computed.
        assert!(matches!(
            limiter.settle(&(), &limiter.check_local(&()), false),
            Settled::Admit
        ));
    }
}
