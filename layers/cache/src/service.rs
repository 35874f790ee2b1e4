//! The Tower service: hits answered at once, misses loaded once, stale entries refreshed once.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::NotCached;
use crate::future::ResponseFuture;
use crate::load::{Fetched, Loaded};
use crate::partition::Found;
use crate::policy::{Policy, Rules, Verdict};
use crate::stats::Count;
use crate::storage::{Captured, Storage, Values};

/// The service [`CacheLayer`](crate::CacheLayer) builds around an inner service `S`: a
/// cache of values `V`, what is cached decided by the policy `P`, responses stored through
/// `St`, refusals answered by `R`. Clones share the cache. See the [crate docs](crate).
pub struct CacheService<S, V, P, St = Values, R = KeepError> {
    pub(crate) inner: S,
    pub(crate) cache: Cache<V>,
    pub(crate) policy: Arc<P>,
    pub(crate) storage: St,
    pub(crate) reject: R,
}

impl<S: Clone, V, P, St: Clone, R: Clone> Clone for CacheService<S, V, P, St, R> {
    fn clone(&self) -> Self {
        CacheService {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            storage: self.storage.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<
    S: std::fmt::Debug,
    V: Clone + Send + Sync + 'static,
    P,
    St: std::fmt::Debug,
    R: std::fmt::Debug,
> std::fmt::Debug for CacheService<S, V, P, St, R>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .field("storage", &self.storage)
            .field("reject", &self.reject)
            .finish_non_exhaustive()
    }
}

impl<S, V, P, St, R> CacheService<S, V, P, St, R> {
    /// The cache.
    pub fn cache(&self) -> &Cache<V> {
        &self.cache
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What `call` decided while the request was borrowed.
enum Step<V> {
    Bypass,
    Hit,
    Stale {
        part: usize,
        key: Box<[u8]>,
        entry: Arc<Entry<V>>,
    },
    Miss {
        part: usize,
        key: Box<[u8]>,
        fallback: Option<Arc<Entry<V>>>,
    },
    NotCached(NotCached),
}

impl<S, V, P, St, R, Req> Service<Req> for CacheService<S, V, P, St, R>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
    V: Clone + Send + Sync + 'static,
    P: Policy<Req, S::Response>,
    St: Storage<S::Response, Value = V>,
    R: OnRejection<Req, St::Response, S::Error>,
    R::Error: Send + 'static,
{
    type Response = St::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, St::Response, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(R::map_err)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut answer = None;
        let step = {
            let cache = &self.cache.inner;
            match self.policy.lookup(&req) {
                None => Step::Bypass,
                Some(lookup) => match cache.index(lookup.partition) {
                    None => Step::Bypass,
                    Some(part) => {
                        let p = &cache.parts[part];
                        let key = lookup.key.as_bytes();
                        match p.find(key, cache.clock.now()) {
                            Found::Fresh(e) => {
                                p.count(Count::Hit);
                                answer = Some(self.storage.respond(&e.value));
                                Step::Hit
                            }
                            Found::Stale(e, claimed) => {
                                p.count(Count::Stale);
                                answer = Some(self.storage.respond(&e.value));
                                if claimed {
                                    Step::Stale {
                                        part,
                                        key: key.into(),
                                        entry: e,
                                    }
                                } else {
                                    Step::Hit
                                }
                            }
                            found if lookup.only_if_cached => {
                                drop(found);
                                p.count(Count::Miss);
                                Step::NotCached(NotCached::new(lookup.partition))
                            }
                            Found::Fallback(e) => Step::Miss {
                                part,
                                key: key.into(),
                                fallback: Some(e),
                            },
                            Found::Miss => Step::Miss {
                                part,
                                key: key.into(),
                                fallback: None,
                            },
                        }
                    }
                },
            }
        };
        match step {
            Step::Hit => ResponseFuture::ready(Ok(answer.expect("a hit has an answer"))),
            Step::Bypass => {
                type Map<A, B, E1, E2> = fn(Result<A, E1>) -> Result<B, E2>;
                let map: Map<S::Response, St::Response, S::Error, R::Error> =
                    |r| r.map(St::pass).map_err(R::map_err);
                ResponseFuture::inner(self.inner.call(req), map)
            }
            Step::NotCached(refusal) => ResponseFuture::ready(self.reject.reject(&req, refusal)),
            Step::Stale { part, key, entry } => {
                let upstream = self.upstream(part, req);
                let cache = self.cache.clone();
                tokio::spawn(async move { cache.refresh(part, key, entry, upstream).await });
                ResponseFuture::ready(Ok(answer.expect("a stale hit has an answer")))
            }
            Step::Miss {
                part,
                key,
                fallback,
            } => {
                let upstream = self.upstream(part, req);
                let cache = self.cache.clone();
                let storage = self.storage.clone();
                ResponseFuture::boxed(Box::pin(async move {
                    match cache.load(part, &key, fallback, upstream).await {
                        Loaded::Cached { entry, refresh } => {
                            if let Some(upstream) = refresh {
                                let (c, e) = (cache.clone(), entry.clone());
                                tokio::spawn(
                                    async move { c.refresh(part, key, e, upstream).await },
                                );
                            }
                            Ok(storage.respond(&entry.value))
                        }
                        Loaded::Own(out) => out.map_err(R::map_err),
                    }
                }))
            }
        }
    }
}

type Upstream<T, E, V> = Fetched<Result<T, E>, V>;

impl<S, V, P, St, R> CacheService<S, V, P, St, R> {
    /// The upstream call for `req`, not started: the inner instance that was made ready, the
    /// request, the policy's context; the response judged and captured.
    #[allow(clippy::type_complexity)]
    fn upstream<Req>(
        &mut self,
        part: usize,
        req: Req,
    ) -> impl FnOnce() -> std::pin::Pin<
        Box<dyn Future<Output = Upstream<St::Response, S::Error, V>> + Send>,
    > + Send
    + 'static
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        S::Error: Send + 'static,
        Req: Send + 'static,
        V: Clone + Send + Sync + 'static,
        P: Policy<Req, S::Response>,
        St: Storage<S::Response, Value = V>,
    {
        // The instance that was made ready serves this call; the clone serves the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let context = self.policy.context(&req);
        let policy = self.policy.clone();
        let storage = self.storage.clone();
        let max = self.cache.inner.parts[part].cfg.max_entry_bytes;
        move || {
            Box::pin(async move {
                let res = match inner.call(req).await {
                    Ok(res) => res,
                    Err(e) => return Fetched::Failed(Err(e)),
                };
                match policy.decide(&context, &res) {
                    Verdict::Store(rules) => capture(&storage, res, max, rules, false).await,
                    Verdict::Negative(rules) => capture(&storage, res, max, rules, true).await,
                    Verdict::Pass => Fetched::Pass(Ok(St::pass(res))),
                    Verdict::Failure => Fetched::Failed(Ok(St::pass(res))),
                }
            })
        }
    }
}

async fn capture<Res, St: Storage<Res>, E>(
    storage: &St,
    res: Res,
    max: usize,
    rules: Rules,
    negative: bool,
) -> Upstream<St::Response, E, St::Value> {
    match storage.capture(res, max).await {
        Captured::Stored(value) => Fetched::Store {
            out: Ok(storage.respond(&value)),
            value,
            rules,
            negative,
        },
        Captured::Passed(response) => Fetched::Pass(Ok(response)),
    }
}
