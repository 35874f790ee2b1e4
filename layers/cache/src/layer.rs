//! The Tower layer.

use std::sync::Arc;

use omega_core::reject::KeepError;
#[cfg(feature = "http")]
use omega_core::reject::Respond;
use tower_layer::Layer;

use crate::cache::Cache;
use crate::service::CacheService;
use crate::storage::Values;

/// Caches the responses of the service it wraps in a [`Cache`]; every service it makes (and
/// every clone of them) shares that cache.
///
/// `V` is the stored value, `P` the [`Policy`](crate::Policy) (what is cached, where, for how
/// long), `St` the [`Storage`](crate::Storage) (how a response becomes a value: [`Values`] by
/// default, for responses that are values), `R` the [`OnRejection`](crate::OnRejection)
/// strategy: [`KeepError`] by default; `.respond()` (feature `http`) answers an
/// `only-if-cached` miss with 504; `.on_rejection(strategy)` takes any strategy.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use bytes::Bytes;
/// use omega_cache::{Cache, CacheLayer, RawBytes, Resolver};
/// use tower::{Layer, ServiceExt};
///
/// let cache = Cache::<Bytes>::builder().codec(RawBytes).build()?;
/// let slow = tower::service_fn(|id: u64| async move {
///     Ok::<_, std::io::Error>(Bytes::from(format!("report {id}")))
/// });
/// let svc = CacheLayer::new(cache.clone(), Resolver::new(|id: &u64| Some(*id))).layer(slow);
/// assert_eq!(svc.clone().oneshot(7).await?, "report 7");
/// assert_eq!(svc.oneshot(7).await?, "report 7"); // from the cache
/// assert_eq!(cache.stats().hits, 1);
/// # Ok(()) }
/// ```
pub struct CacheLayer<V, P, St = Values, R = KeepError> {
    cache: Cache<V>,
    policy: Arc<P>,
    storage: St,
    reject: R,
}

impl<V, P, St: Clone, R: Clone> Clone for CacheLayer<V, P, St, R> {
    fn clone(&self) -> Self {
        CacheLayer {
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            storage: self.storage.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static, P, St: std::fmt::Debug, R: std::fmt::Debug> std::fmt::Debug
    for CacheLayer<V, P, St, R>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("cache", &self.cache)
            .field("storage", &self.storage)
            .field("reject", &self.reject)
            .finish_non_exhaustive()
    }
}

impl<V, P> CacheLayer<V, P> {
    /// A layer caching in `cache` as `policy` decides; responses are values, stored as they
    /// are ([`Values`]); refusals kept as errors.
    pub fn new(cache: Cache<V>, policy: P) -> Self {
        CacheLayer {
            cache,
            policy: Arc::new(policy),
            storage: Values,
            reject: KeepError,
        }
    }
}

impl<V, P, St, R> CacheLayer<V, P, St, R> {
    /// Stores responses through `storage` (for example `HttpStorage`, feature `http`).
    pub fn storage<St2>(self, storage: St2) -> CacheLayer<V, P, St2, R> {
        CacheLayer {
            cache: self.cache,
            policy: self.policy,
            storage,
            reject: self.reject,
        }
    }

    /// Answers refusals with `strategy` (any [`OnRejection`](crate::OnRejection)).
    pub fn on_rejection<R2>(self, strategy: R2) -> CacheLayer<V, P, St, R2> {
        CacheLayer {
            cache: self.cache,
            policy: self.policy,
            storage: self.storage,
            reject: strategy,
        }
    }

    /// Answers refusals of HTTP requests with responses: 504 for an `only-if-cached` miss
    /// (feature `http`).
    #[cfg(feature = "http")]
    pub fn respond(self) -> CacheLayer<V, P, St, Respond> {
        self.on_rejection(Respond)
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<V> {
        &self.cache
    }

    /// The policy.
    pub fn policy(&self) -> &P {
        &self.policy
    }
}

impl<S, V, P, St: Clone, R: Clone> Layer<S> for CacheLayer<V, P, St, R> {
    type Service = CacheService<S, V, P, St, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            storage: self.storage.clone(),
            reject: self.reject.clone(),
        }
    }
}
