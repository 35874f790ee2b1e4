//! What a service does with a request: the one local → leased → remote dispatch.
//!
//! [`RateLimiter::decide_now`] decides what can be decided without waiting (every in-memory
//! decision, and lease mode's common case) and otherwise prepares the Redis decision;
//! [`RateLimiter::settle`] turns a decision into what the service does: admit (with the
//! `RateLimit` header fields when its strategy sends them) or refuse.

use omega_core::key::KeyMissing;

use super::decision::{Decision, Refused};
use super::{RateLimiter, Store};
use crate::error::RateLimited;
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
            Store::Memory if advise => Now::Settled(self.settle(&self.check_local(req), advise)),
            Store::Memory => Now::Settled(match self.admit(req) {
                Ok(()) => Settled::Admit,
                Err(refused) => refusal(&refused),
            }),
            #[cfg(feature = "redis")]
            Store::Redis(store) => match self.check_leased_locally(store, req) {
                Some(decision) => Now::Settled(self.settle(&decision, advise)),
                None => match self.prepare_remote(store, req) {
                    Ok(prepared) => Now::Remote(prepared),
                    Err(refused) => Now::Settled(self.settle(&refused, advise)),
                },
            },
        }
    }

    /// What the service does with `decision`; with `advise`, the header fields of its binding
    /// limit go with it (the limit's cached policy value), admitted or denied.
    pub(crate) fn settle(&self, decision: &Decision<'_>, advise: bool) -> Settled {
        #[cfg(feature = "http")]
        if advise {
            let fields = decision
                .binding
                .as_ref()
                .and_then(|b| self.fields(&b.resolve()));
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
        let _ = advise;
        match &decision.refused {
            None => Settled::Admit,
            Some(refused) => refusal(refused),
        }
    }

    /// The header fields of a binding limit, with the limit's cached policy value.
    #[cfg(feature = "http")]
    fn fields(&self, binding: &super::decision::Binding<'_>) -> Option<Fields> {
        let cache = self
            .inner
            .limits
            .iter()
            .find(|l| std::ptr::eq(l.name.as_ptr(), binding.limit.as_ptr()))
            .map(|l| &l.policy);
        Fields::new(
            cache,
            binding.limit,
            binding.burst,
            binding.window,
            binding.remaining,
            binding.reset_after,
        )
    }
}

/// A refusal as the service answers it.
#[cold]
fn refusal(refused: &Refused<'_>) -> Settled {
    match refused {
        Refused::Limited(denied) => Settled::Limited(denied.to_error()),
        Refused::KeyMissing { refusal, .. } => Settled::KeyMissing((*refusal).clone()),
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
            match limiter.settle(&limiter.check_local(&()), true) {
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
            limiter.settle(&limiter.check_local(&()), false),
            Settled::Admit
        ));
    }
}
