//! Which breaker guards a request: one for every request ([`Single`]), or one per key from a
//! registry ([`Keyed`]).

use std::borrow::{Borrow, Cow};
use std::fmt::{self, Display};
use std::hash::Hash;
use std::sync::Arc;

use omega_core::key::KeySource;

use crate::breaker::CircuitBreaker;
use crate::error::CircuitOpen;
use crate::permit::OwnedPermit;
use crate::registry::BreakerRegistry;

/// Chooses the breaker that guards a request and takes a permit from it.
pub trait Selector<Req> {
    /// A permit for `req` from the breaker that guards it; `Ok(None)` when no breaker guards
    /// it (the request passes unguarded); the open circuit that refuses it otherwise.
    fn acquire(&self, req: &Req) -> Result<Option<OwnedPermit>, CircuitOpen>;

    /// The refusal that every request would get now, whatever the request, if there is one:
    /// the service then answers ready at once without asking the inner service, and refuses
    /// the next request in `call` with it (a layer that will refuse does not wait for the
    /// inner service's readiness). The refusal counts as a rejection when it is decided.
    ///
    /// The default, `None`, leaves readiness to the inner service; [`Single`] refuses while
    /// its breaker is OPEN (before its wait is over), FORCED_OPEN, or HALF_OPEN with every
    /// probe out. [`Keyed`] cannot know without the request's key.
    fn refuse_all(&self) -> Option<CircuitOpen> {
        None
    }
}

/// One breaker for every request.
#[derive(Clone, Debug)]
pub struct Single(pub(crate) CircuitBreaker);

impl Single {
    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.0
    }
}

impl<Req> Selector<Req> for Single {
    #[inline]
    fn acquire(&self, _req: &Req) -> Result<Option<OwnedPermit>, CircuitOpen> {
        self.0.try_acquire_owned().map(Some)
    }

    #[inline]
    fn refuse_all(&self) -> Option<CircuitOpen> {
        self.0.refusal_for_all()
    }
}

/// One breaker per key: the key comes from a [`KeySource`], the breakers from a
/// [`BreakerRegistry`] looked up by the key's text (a key that is not UTF-8 is read lossily).
/// A breaker that exists is found without an allocation; a new key creates its breaker.
///
/// A request without a key (the source gives `None`) passes unguarded.
pub struct Keyed<K, KS> {
    registry: BreakerRegistry<K>,
    key: Arc<KS>,
}

impl<K, KS> Keyed<K, KS> {
    pub(crate) fn new(registry: BreakerRegistry<K>, key: KS) -> Self {
        Keyed {
            registry,
            key: Arc::new(key),
        }
    }

    /// The registry of the breakers.
    pub fn registry(&self) -> &BreakerRegistry<K> {
        &self.registry
    }
}

impl<K, KS> Clone for Keyed<K, KS> {
    fn clone(&self) -> Self {
        Keyed {
            registry: self.registry.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, KS> fmt::Debug for Keyed<K, KS> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyed")
            .field("registry", &self.registry)
            .finish()
    }
}

impl<Req, K, KS> Selector<Req> for Keyed<K, KS>
where
    K: Borrow<str> + From<String> + Hash + Eq + Clone + Display + Send + Sync + 'static,
    KS: KeySource<Req>,
{
    #[inline]
    fn acquire(&self, req: &Req) -> Result<Option<OwnedPermit>, CircuitOpen> {
        let Some(key) = self.key.key(req) else {
            return Ok(None);
        };
        let text: Cow<'_, str> = String::from_utf8_lossy(key.as_bytes());
        self.registry.acquire::<str>(&text).map(Some)
    }
}
