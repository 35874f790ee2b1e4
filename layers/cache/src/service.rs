//! The Tower service: hits answered at once, misses loaded once, stale entries refreshed once.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use omega_core::key::Key;
use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use crate::cache::Cache;
use crate::entry::{Entry, Variant};
use crate::error::NotCached;
use crate::future::ResponseFuture;
use crate::load::{Fetched, Loaded, Upstream, key_of};
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
        primary: Box<[u8]>,
        entry: Arc<Entry<V>>,
    },
    Miss {
        part: usize,
        primary: Box<[u8]>,
        variant: Option<Variant>,
        fallback: Option<Arc<Entry<V>>>,
        alone: bool,
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
        let step = self.step(&req, &mut answer);
        match step {
            Step::Hit => ResponseFuture::ready(Ok(answer.expect("a hit has an answer"))),
            Step::Bypass => {
                type Map<A, B, E1, E2> = fn(Result<A, E1>) -> Result<B, E2>;
                let map: Map<S::Response, St::Response, S::Error, R::Error> =
                    |r| r.map(St::pass).map_err(R::map_err);
                ResponseFuture::inner(self.inner.call(req), map)
            }
            Step::NotCached(refusal) => ResponseFuture::ready(self.reject.reject(&req, refusal)),
            Step::Stale {
                part,
                primary,
                entry,
            } => {
                let upstream = self.upstream(part, req);
                let cache = self.cache.clone();
                tokio::spawn(async move { cache.refresh(part, primary, entry, upstream).await });
                ResponseFuture::ready(Ok(answer.expect("a stale hit has an answer")))
            }
            Step::Miss {
                part,
                primary,
                variant,
                fallback,
                alone,
            } => {
                let upstream = self.upstream(part, req);
                let cache = self.cache.clone();
                let storage = self.storage.clone();
                ResponseFuture::boxed(Box::pin(async move {
                    let loaded = if alone {
                        cache.alone(part, &primary, fallback, upstream).await
                    } else {
                        cache
                            .load(part, &primary, variant, fallback, upstream)
                            .await
                    };
                    match loaded {
                        Loaded::Cached {
                            entry,
                            refresh,
                            upstream,
                            ..
                        } => {
                            if let (true, Some(upstream)) = (refresh, upstream) {
                                let (c, e) = (cache.clone(), entry.clone());
                                tokio::spawn(
                                    async move { c.refresh(part, primary, e, upstream).await },
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

impl<S, V: Clone + Send + Sync + 'static, P, St, R> CacheService<S, V, P, St, R> {
    /// Looks `req` up in L1 (its variant too, when its key has them); a hit's answer goes in
    /// `answer`.
    #[inline]
    fn step<Req, Res>(&self, req: &Req, answer: &mut Option<St::Response>) -> Step<V>
    where
        P: Policy<Req, Res>,
        St: Storage<Res, Value = V>,
    {
        let cache = &self.cache.inner;
        let Some(lookup) = self.policy.lookup(req) else {
            return Step::Bypass;
        };
        let Some(part) = cache.index(lookup.partition) else {
            return Step::Bypass;
        };
        let p = &cache.parts[part];
        let primary = lookup.key.as_bytes();
        let now = cache.clock.now();
        let slot = p.front.slot(primary);
        if let Some(hit) = p
            .front
            .hit(slot, primary, now, |e| self.storage.respond(&e.value))
        {
            p.count(Count::Hit);
            *answer = Some(hit);
            return Step::Hit;
        }
        let mut found = p.find_in_moka(primary, slot, now);
        let mut variant = None;
        let mut alone = false;
        if let Found::Vary(m) = &found {
            match self.policy.variant(&m.spec, req) {
                Some(s) => {
                    let v = Variant {
                        id: m.id,
                        spec: m.spec.clone(),
                        secondary: s.as_bytes().into(),
                    };
                    found = p.find(&key_of(primary, Some(&v)), now);
                    variant = Some(v);
                }
                None => {
                    found = Found::Miss;
                    alone = true;
                }
            }
        }
        match found {
            Found::Fresh(e) => {
                p.count(Count::Hit);
                *answer = Some(self.storage.respond(&e.value));
                Step::Hit
            }
            Found::Stale(e, claimed) => {
                p.count(Count::Stale);
                *answer = Some(self.storage.respond(&e.value));
                if claimed {
                    Step::Stale {
                        part,
                        primary: primary.into(),
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
                primary: primary.into(),
                variant,
                fallback: Some(e),
                alone,
            },
            Found::Miss | Found::Vary(_) => Step::Miss {
                part,
                primary: primary.into(),
                variant,
                fallback: None,
                alone,
            },
        }
    }

    /// The upstream call for `req`, not started: the inner instance that was made ready, the
    /// request, the policy's context; the response judged and captured.
    fn upstream<Req>(&mut self, part: usize, req: Req) -> Call<S, Req, P, St>
    where
        S: Service<Req> + Clone,
        P: Policy<Req, S::Response>,
        St: Clone,
    {
        // The instance that was made ready serves this call; the clone serves the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Call {
            context: self.policy.context(&req),
            inner,
            req,
            policy: self.policy.clone(),
            storage: self.storage.clone(),
            max: self.cache.inner.parts[part].cfg.max_entry_bytes,
        }
    }
}

/// An upstream call of [`CacheService`]: the request, to the inner instance made ready for it.
struct Call<S, Req, P: Policy<Req, S::Response>, St>
where
    S: Service<Req>,
{
    inner: S,
    req: Req,
    context: P::Context,
    policy: Arc<P>,
    storage: St,
    max: usize,
}

impl<S, Req, P, St, V> Upstream<V> for Call<S, Req, P, St>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
    V: Clone + Send + Sync + 'static,
    P: Policy<Req, S::Response>,
    St: Storage<S::Response, Value = V>,
{
    type Out = Result<St::Response, S::Error>;

    fn variant(&self, spec: &[u8]) -> Option<Key<'_>> {
        self.policy.variant(spec, &self.req)
    }

    fn call(
        self,
        _base: Option<Arc<Entry<V>>>,
    ) -> impl Future<Output = Fetched<Self::Out, V>> + Send {
        let Call {
            mut inner,
            req,
            context,
            policy,
            storage,
            max,
        } = self;
        async move {
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
        }
    }
}

async fn capture<Res, St: Storage<Res>, E>(
    storage: &St,
    res: Res,
    max: usize,
    rules: Rules,
    negative: bool,
) -> Fetched<Result<St::Response, E>, St::Value> {
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
