//! The cache's request to the origin (the inner service) for a miss or a stale response: made
//! conditional when a stored response has validators (RFC 9111 §4.3.1); a `304` updates the
//! stored response (§4.3.3, §4.3.4); a `304` that selects no stored response (another
//! entity-tag) is not used: the request goes again, unconditional, and its full response is
//! what the client gets (§4.3.4); a full response is stored when RFC 9111 §3 allows, and
//! passed on as it streams when it is too large; a failure answered by a stale copy when
//! `stale-if-error` allows (RFC 5861 §4).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use omega_core::Clock;
use omega_core::key::Key;
use omega_core::reject::BoxError;
use tower_service::Service;

use super::body::CacheBody;
use super::freshness::now_secs;
use super::policy::{HttpPolicy, Storing, Times};
use super::respond::{Asked, from_stored};
use super::reuse::{age, serves_on_error, ttl};
use super::status::{CacheStatus, Fwd};
use super::stored::{Read, StoredResponse, read_body};
use super::validation::{conflicts, freshen, has_validator, make_conditional};
use super::vary;
use crate::entry::Entry;
use crate::load::{Fetched, Upstream};
use crate::policy::Rules;

type Stored = Arc<StoredResponse>;

/// A request the cache sends to the origin, not sent yet.
pub(crate) struct Fetch<S, B> {
    pub(crate) inner: S,
    /// A GET, the client's own validators taken out.
    pub(crate) req: Request<B>,
    pub(crate) policy: Arc<HttpPolicy>,
    pub(crate) name: Arc<str>,
    pub(crate) clock: Clock,
    pub(crate) max_bytes: usize,
    /// Why it is forwarded (`Cache-Status`).
    pub(crate) fwd: Fwd,
}

impl<S, B, ResB> Upstream<Stored> for Fetch<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Out = Result<Response<CacheBody<ResB>>, S::Error>;

    fn variant(&self, spec: &[u8]) -> Option<Key<'_>> {
        Some(Key::from(vary::secondary(spec, self.req.headers())))
    }

    fn call(
        self,
        base: Option<Arc<Entry<Stored>>>,
    ) -> impl Future<Output = Fetched<Self::Out, Stored>> + Send {
        self.run(base)
    }
}

impl<S, B, ResB> Fetch<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    async fn run(
        self,
        base: Option<Arc<Entry<Stored>>>,
    ) -> Fetched<<Self as Upstream<Stored>>::Out, Stored> {
        let Fetch {
            mut inner,
            mut req,
            policy,
            name,
            clock,
            max_bytes,
            fwd,
        } = self;
        let mut validating = base
            .as_ref()
            .filter(|b| b.value.status.is_success() && has_validator(&b.value.headers));
        // The same request, unconditional, in case the origin's `304` selects no stored response.
        let again = validating.map(|_| unconditional(&mut req));
        if let Some(b) = validating {
            make_conditional(req.headers_mut(), &b.value);
        }
        let (mut asked, mut times, mut res) = send(&mut inner, req).await;
        let selects_none = matches!((validating, &res), (Some(b), Ok(r))
            if r.status() == StatusCode::NOT_MODIFIED && conflicts(r.headers(), &b.value));
        if let (true, Some(again)) = (selects_none, again) {
            // §4.3.4: a 304 whose entity-tag is not the stored one selects no stored response,
            // and "the cache MUST NOT use the new response to update any stored responses"; the
            // stored response stays unusable for this request, and the 304 answers a condition
            // the client never set. So the request goes again without the condition (as
            // RFC 2616 §10.3.5 spelled out), to the same instance once it is ready again.
            validating = None;
            (asked, times, res) = match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                Ok(()) => send(&mut inner, again).await,
                Err(e) => (asked, times, Err(e)),
            };
        }
        let status_of = |code: Option<StatusCode>| {
            let mut s = CacheStatus::fwd(fwd);
            s.fwd_status = code.map(|c| c.as_u16());
            s
        };
        let now = clock.now();
        let res = match res {
            Ok(res) => res,
            Err(e) => {
                // Disconnected: a stale copy answers if it may (RFC 9111 §4.2.4, RFC 5861 §4).
                return match base.filter(|b| serves_on_error(b, now)) {
                    Some(b) => {
                        let status = status_of(None).detail("stale-if-error");
                        Fetched::Pass(Ok(stale(&b, now, &status, &name)))
                    }
                    None => Fetched::Pass(Err(e)),
                };
            }
        };
        let code = res.status();
        if code == StatusCode::NOT_MODIFIED
            && let Some(b) = validating
            && !conflicts(res.headers(), &b.value)
        {
            // §4.3.4: the stored response, its fields updated by the 304's.
            let headers = freshen(&b.value.headers, res.headers(), times.response);
            let mut status = status_of(Some(code));
            return match policy.storing(&asked, b.value.status, &headers, times) {
                Ok(storing) => {
                    let ttl = storing.ttl;
                    let value = Arc::new(StoredResponse {
                        status: b.value.status,
                        body: b.value.body.clone(),
                        meta: storing.meta,
                        headers: storing.headers.clone(),
                    });
                    status.stored = true;
                    status.ttl = Some(secs(ttl));
                    let age = value.meta.initial_age;
                    let out = from_stored(&value, Some(age), &Asked::default(), &status, &name);
                    Fetched::Store {
                        rules: rules(storing),
                        value,
                        negative: false,
                        out: Ok(out),
                    }
                }
                Err(why) => {
                    let value = StoredResponse::new(b.value.status, headers, b.value.body.clone());
                    let status = status.detail(why.detail());
                    Fetched::Pass(Ok(from_stored(
                        &value,
                        None,
                        &Asked::default(),
                        &status,
                        &name,
                    )))
                }
            };
        }
        if code.is_server_error()
            && let Some(b) = base.as_ref().filter(|b| serves_on_error(b, now))
        {
            // §4.3.3: a 5xx while validating may be taken as a failure to respond.
            let status = status_of(Some(code)).detail("stale-if-error");
            return Fetched::Pass(Ok(stale(b, now, &status, &name)));
        }
        let storing = policy.storing(&asked, code, res.headers(), times);
        let storing = match storing {
            Ok(s) => s,
            Err(why) => {
                let status = status_of(Some(code)).detail(why.detail());
                return Fetched::Pass(Ok(forwarded(res, &status, &name)));
            }
        };
        match read_body(res, max_bytes).await {
            Read::Whole(parts, body) => {
                let mut status = status_of(Some(code));
                status.stored = true;
                status.ttl = Some(secs(storing.ttl));
                let value = Arc::new(StoredResponse {
                    status: parts.status,
                    headers: storing.headers.clone(),
                    body: body.clone(),
                    meta: storing.meta,
                });
                let mut out = Response::from_parts(parts, CacheBody::full(body));
                status.write(&name, out.headers_mut());
                Fetched::Store {
                    rules: rules(storing),
                    value,
                    negative: false,
                    out: Ok(out),
                }
            }
            Read::Streaming(mut out) => {
                status_of(Some(code))
                    .detail("too-large")
                    .write(&name, out.headers_mut());
                Fetched::Pass(Ok(out))
            }
        }
    }
}

/// Sends `req`: the fields it was sent with, when, and the origin's answer.
async fn send<S, B>(
    inner: &mut S,
    req: Request<B>,
) -> (HeaderMap, Times, Result<S::Response, S::Error>)
where
    S: Service<Request<B>>,
{
    let asked = req.headers().clone();
    let request = now_secs();
    let res = inner.call(req).await;
    let times = Times {
        request,
        response: now_secs(),
    };
    (asked, times, res)
}

/// A copy of `req` (a GET the cache forwards, its client's validators taken out) for an
/// unconditional retry, without content: the body cannot be cloned, and content in a GET has
/// no generally defined semantics and cannot alter the request's meaning or target (RFC 9110
/// §9.3.1), which is why the cache keys GETs without it. The copy has no `Content-Length` or
/// `Transfer-Encoding` (it has no content); `req` keeps its body.
fn unconditional<B: Default>(req: &mut Request<B>) -> Request<B> {
    let (parts, body) = std::mem::take(req).into_parts();
    let mut again = Request::from_parts(parts.clone(), B::default());
    again.headers_mut().remove(CONTENT_LENGTH);
    again.headers_mut().remove(TRANSFER_ENCODING);
    *req = Request::from_parts(parts, body);
    again
}

/// The engine's rules for a response stored as `storing` says.
fn rules(storing: Storing) -> Rules {
    Rules {
        ttl: Some(storing.ttl),
        stale_while_revalidate: Some(storing.swr),
        stale_if_error: Some(storing.sie),
        keep: storing.keep,
        tags: storing.tags,
        vary: storing.vary,
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A stored response answering stale.
fn stale<B>(
    b: &Entry<Stored>,
    now: omega_core::Nanos,
    status: &CacheStatus,
    name: &str,
) -> Response<CacheBody<B>> {
    let mut status = status.clone();
    status.ttl = Some(ttl(b, now));
    from_stored(
        &b.value,
        Some(age(b, now)),
        &Asked::default(),
        &status,
        name,
    )
}

/// A response passed on as the origin gave it, with `Cache-Status`.
pub(crate) fn forwarded<B>(
    res: Response<B>,
    status: &CacheStatus,
    name: &str,
) -> Response<CacheBody<B>> {
    let mut res = res.map(CacheBody::inner);
    status.write(name, res.headers_mut());
    res
}
