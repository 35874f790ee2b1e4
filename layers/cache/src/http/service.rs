//! [`HttpCacheLayer`] and its service [`HttpCache`]: RFC 9111's shared cache in front of an
//! HTTP service.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::RANGE;
use http::{Request, Response};
use http_body::Body;
use omega_core::reject::{BoxError, OnRejection, Respond};
use tower_layer::Layer;
use tower_service::Service;

use super::body::CacheBody;
use super::fetch::{Fetch, forwarded};
use super::policy::HttpPolicy;
use super::request::{Lookup, Plan, Target, conditions, invalidated, plan, take_conditions};
use super::respond::{Asked, conditional, from_stored};
use super::reuse::{Reuse, age, judge, ttl};
use super::status::{CacheStatus, Fwd};
use super::stored::StoredResponse;
use super::vary;
use crate::cache::Cache;
use crate::entry::{Slot, Variant};
use crate::error::NotCached;
use crate::future::ResponseFuture;
use crate::load::{Loaded, Source, key_of};
use crate::stats::Count;

type Stored = Arc<StoredResponse>;

/// Puts RFC 9111's shared cache in front of an HTTP service; every service it makes (and
/// every clone of them) shares the [`Cache`]. See the [module docs](crate::http).
///
/// `R` answers an `only-if-cached` request the cache cannot satisfy: [`Respond`] by default
/// (504, RFC 9111 §5.2.1.7); `.on_rejection(strategy)` takes any
/// [`OnRejection`](crate::OnRejection) strategy.
pub struct HttpCacheLayer<R = Respond> {
    cache: Cache<Stored>,
    policy: Arc<HttpPolicy>,
    name: Arc<str>,
    reject: R,
}

impl<R: Clone> Clone for HttpCacheLayer<R> {
    fn clone(&self) -> Self {
        HttpCacheLayer {
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            name: self.name.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<R: std::fmt::Debug> std::fmt::Debug for HttpCacheLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("cache", &self.cache)
            .field("policy", &self.policy)
            .field("reject", &self.reject)
            .finish()
    }
}

impl HttpCacheLayer {
    /// A shared cache storing in `cache` (its partition named by `policy`), as `policy` says.
    pub fn new(cache: Cache<Stored>, policy: HttpPolicy) -> Self {
        let name = policy
            .name
            .clone()
            .unwrap_or_else(|| Arc::from(cache.name()));
        HttpCacheLayer {
            cache,
            policy: Arc::new(policy),
            name,
            reject: Respond,
        }
    }
}

impl<R> HttpCacheLayer<R> {
    /// Answers an `only-if-cached` miss with `strategy` (any
    /// [`OnRejection`](crate::OnRejection)).
    pub fn on_rejection<R2>(self, strategy: R2) -> HttpCacheLayer<R2> {
        HttpCacheLayer {
            cache: self.cache,
            policy: self.policy,
            name: self.name,
            reject: strategy,
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<Stored> {
        &self.cache
    }

    /// The policy.
    pub fn policy(&self) -> &HttpPolicy {
        &self.policy
    }
}

impl<S, R: Clone> Layer<S> for HttpCacheLayer<R> {
    type Service = HttpCache<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCache {
            inner,
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            name: self.name.clone(),
            reject: self.reject.clone(),
        }
    }
}

/// The service [`HttpCacheLayer`] builds around an HTTP service `S`. Clones share the cache.
///
/// Request bodies implement `Default` (axum's `Body`, `Full`, `Empty`, `()`, `String`, ...):
/// when the origin answers a revalidation with a `304` for another representation than the
/// stored one (another `ETag`), the cache sends the GET again, unconditional and without
/// content, with a default body (RFC 9111 §4.3.4). A body type without `Default` (hyper's
/// `Incoming`) is mapped to one first, e.g. `req.map(axum::body::Body::new)`.
pub struct HttpCache<S, R = Respond> {
    inner: S,
    cache: Cache<Stored>,
    policy: Arc<HttpPolicy>,
    name: Arc<str>,
    reject: R,
}

impl<S: Clone, R: Clone> Clone for HttpCache<S, R> {
    fn clone(&self) -> Self {
        HttpCache {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            policy: self.policy.clone(),
            name: self.name.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<S: std::fmt::Debug, R: std::fmt::Debug> std::fmt::Debug for HttpCache<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S, R> HttpCache<S, R> {
    /// The cache.
    pub fn cache(&self) -> &Cache<Stored> {
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

type Future<S, ResB, E> = ResponseFuture<S, Response<CacheBody<ResB>>, E>;

impl<S, B, ResB, R> Service<Request<B>> for HttpCache<S, R>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
    R: OnRejection<Request<B>, Response<CacheBody<ResB>>, S::Error>,
    R::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = R::Error;
    type Future = Future<S::Future, ResB, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(R::map_err)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match plan(&self.policy, &req) {
            Plan::Pass(fwd) => self.pass(req, CacheStatus::fwd(fwd)),
            Plan::Unsafe(target) => self.write_through(req, target),
            Plan::Lookup(lookup) => self.lookup(req, lookup),
        }
    }
}

/// The inner services the cache fronts (an alias of their bounds).
pub(crate) trait Origin<B, ResB>:
    Service<Request<B>, Response = Response<ResB>, Future: Send + 'static, Error: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<T, B, ResB> Origin<B, ResB> for T
where
    T: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    T::Future: Send + 'static,
    T::Error: Send + 'static,
{
}

/// The response bodies the cache reads (an alias of their bounds).
pub(crate) trait Content:
    Body<Data = Bytes, Error: Into<BoxError>> + Unpin + Send + 'static
{
}

impl<T> Content for T
where
    T: Body<Data = Bytes> + Unpin + Send + 'static,
    T::Error: Into<BoxError>,
{
}

impl<S, R> HttpCache<S, R> {
    /// Forwards `req` as it is; nothing is stored.
    fn pass<B, ResB>(
        &mut self,
        req: Request<B>,
        status: CacheStatus,
    ) -> Future<S::Future, ResB, R::Error>
    where
        S: Origin<B, ResB>,
        B: Send + 'static,
        ResB: Content,
        R: OnRejection<Request<B>, Response<CacheBody<ResB>>, S::Error, Error: Send + 'static>,
    {
        let fut = self.inner.call(req);
        let name = self.name.clone();
        ResponseFuture::boxed(Box::pin(async move {
            let res = fut.await.map_err(R::map_err)?;
            let mut status = status;
            status.fwd_status = Some(res.status().as_u16());
            Ok(forwarded(res, &status, &name))
        }))
    }

    /// Writes an unsafe request through; a non-error response invalidates its target, and its
    /// `Location` and `Content-Location` on the same origin (RFC 9111 §4.4).
    fn write_through<B, ResB>(
        &mut self,
        req: Request<B>,
        target: Target,
    ) -> Future<S::Future, ResB, R::Error>
    where
        S: Origin<B, ResB>,
        B: Send + 'static,
        ResB: Content,
        R: OnRejection<Request<B>, Response<CacheBody<ResB>>, S::Error, Error: Send + 'static>,
    {
        let fut = self.inner.call(req);
        let (cache, policy, name) = (self.cache.clone(), self.policy.clone(), self.name.clone());
        ResponseFuture::boxed(Box::pin(async move {
            let res = fut.await.map_err(R::map_err)?;
            let code = res.status();
            if code.is_success() || code.is_redirection() {
                for key in invalidated(&target, res.headers()) {
                    // The local copies are dropped even when Redis fails.
                    let _ = cache.invalidate(&policy.partition, key.as_bytes()).await;
                }
            }
            let mut status = CacheStatus::fwd(Fwd::Method);
            status.fwd_status = Some(code.as_u16());
            Ok(forwarded(res, &status, &name))
        }))
    }

    /// The request to the origin for `req`, to the inner instance that was made ready.
    fn fetch<B>(&mut self, req: Request<B>, fwd: Fwd, part: usize) -> Fetch<S, B>
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Fetch {
            inner,
            req,
            policy: self.policy.clone(),
            name: self.name.clone(),
            clock: self.cache.inner.clock.clone(),
            max_bytes: self.cache.inner.parts[part].cfg.max_entry_bytes,
            fwd,
        }
    }

    /// A GET or HEAD: answered from the cache when a stored response may, else forwarded
    /// (coalesced with the same misses, made conditional for a stale response).
    fn lookup<B, ResB>(
        &mut self,
        mut req: Request<B>,
        look: Lookup,
    ) -> Future<S::Future, ResB, R::Error>
    where
        S: Origin<B, ResB>,
        B: Default + Send + 'static,
        ResB: Content,
        R: OnRejection<Request<B>, Response<CacheBody<ResB>>, S::Error, Error: Send + 'static>,
    {
        let Some(part) = self.cache.inner.index(&self.policy.partition) else {
            return self.pass(req, CacheStatus::fwd(Fwd::Bypass));
        };
        let inner = &self.cache.inner;
        let p = &inner.parts[part];
        let now = inner.clock.now();
        let primary = look.key.as_bytes();
        let mut miss = Fwd::UriMiss;
        let mut variant = None;
        let entry = match p.get(primary) {
            Some(Slot::Entry(e)) => Some(e),
            Some(Slot::Vary(m)) if m.live(now) => {
                miss = Fwd::VaryMiss;
                let v = Variant {
                    id: m.id,
                    spec: m.spec.clone(),
                    secondary: vary::secondary(&m.spec, req.headers()).into(),
                };
                let e = match p.get(&key_of(primary, Some(&v))) {
                    Some(Slot::Entry(e)) => Some(e),
                    _ => None,
                };
                variant = Some(v);
                e
            }
            _ => None,
        };
        let reuse = entry
            .as_ref()
            .map(|e| judge(e, &look.directives, look.authorized, now));
        let asked = |req: &Request<B>| Asked {
            head: look.head,
            conditions: conditions(req.headers()),
            range: look.range,
        };
        if let (Some(e), Some(Reuse::Serve | Reuse::ServeAndRefresh)) = (&entry, reuse) {
            let left = ttl(e, now);
            let status = CacheStatus::hit(left);
            let res = from_stored(
                &e.value,
                Some(age(e, now)),
                &asked(&req),
                &status,
                &self.name,
            );
            if reuse == Some(Reuse::ServeAndRefresh) {
                p.count(Count::Stale);
                // RFC 5861 §3: one background revalidation per stale window.
                if !look.head && e.claim_refresh() {
                    take_conditions(req.headers_mut());
                    req.headers_mut().remove(RANGE);
                    let fetch = self.fetch(req, Fwd::Stale, part);
                    let (cache, e) = (self.cache.clone(), e.clone());
                    let primary = Box::from(primary);
                    tokio::spawn(async move { cache.refresh(part, primary, e, fetch).await });
                }
            } else {
                p.count(Count::Hit);
            }
            return ResponseFuture::ready(Ok(res));
        }
        if look.directives.only_if_cached {
            p.count(Count::Miss);
            let refusal = NotCached::new(&self.policy.partition);
            let mut answer = self.reject.reject(&req, refusal);
            if let Ok(res) = &mut answer {
                CacheStatus::default()
                    .detail("only-if-cached")
                    .write(&self.name, res.headers_mut());
            }
            return ResponseFuture::ready(answer);
        }
        let (base, fwd, alone) = match (entry, reuse) {
            (Some(e), Some(Reuse::Revalidate(f))) => (Some(e), f, look.alone()),
            (Some(_), Some(Reuse::Unusable(f))) => (None, f, true),
            _ => (None, miss, look.alone()),
        };
        if look.head || look.range.is_some() {
            // HEAD and ranges go to the origin as they are; nothing is stored from them.
            return self.pass(req, CacheStatus::fwd(fwd));
        }
        let asked = Asked {
            conditions: take_conditions(req.headers_mut()),
            ..Asked::default()
        };
        let fetch = self.fetch(req, fwd, part);
        let cache = self.cache.clone();
        let name = self.name.clone();
        let primary: Box<[u8]> = primary.into();
        ResponseFuture::boxed(Box::pin(async move {
            let loaded = if alone {
                cache.inner.parts[part].count(Count::Miss);
                cache.alone(part, &primary, base, fetch).await
            } else {
                cache.load(part, &primary, variant, base, fetch).await
            };
            let res = match loaded {
                Loaded::Own(out) => out.map_err(R::map_err)?,
                Loaded::Cached {
                    entry,
                    source,
                    refresh,
                    upstream,
                } => {
                    let now = cache.inner.clock.now();
                    let reuse = judge(&entry, &look.directives, look.authorized, now);
                    match (reuse, upstream) {
                        (Reuse::Serve | Reuse::ServeAndRefresh, upstream) => {
                            let mut status = match source {
                                Source::L2 => CacheStatus::hit(0),
                                _ => CacheStatus {
                                    collapsed: true,
                                    ..CacheStatus::fwd(fwd)
                                },
                            };
                            status.ttl = Some(ttl(&entry, now));
                            let res = from_stored(
                                &entry.value,
                                Some(age(&entry, now)),
                                &Asked::default(),
                                &status,
                                &name,
                            );
                            if refresh {
                                match upstream {
                                    Some(up) if reuse == Reuse::ServeAndRefresh => {
                                        let (c, e) = (cache.clone(), entry.clone());
                                        tokio::spawn(async move {
                                            c.refresh(part, primary, e, up).await
                                        });
                                    }
                                    _ => entry.release_refresh(),
                                }
                            }
                            res
                        }
                        // What another request brought cannot answer this one: its own trip.
                        (_, Some(up)) => {
                            if refresh {
                                entry.release_refresh();
                            }
                            let base = matches!(reuse, Reuse::Revalidate(_)).then_some(entry);
                            match cache.alone(part, &primary, base, up).await {
                                Loaded::Own(out) => out.map_err(R::map_err)?,
                                Loaded::Cached { entry, .. } => {
                                    let status = CacheStatus::fwd(fwd).detail("stale-if-error");
                                    from_stored(
                                        &entry.value,
                                        None,
                                        &Asked::default(),
                                        &status,
                                        &name,
                                    )
                                }
                            }
                        }
                        (_, None) => {
                            let status = CacheStatus::fwd(fwd).detail("stale-if-error");
                            from_stored(&entry.value, None, &Asked::default(), &status, &name)
                        }
                    }
                }
            };
            Ok(conditional(res, &asked))
        }))
    }
}
