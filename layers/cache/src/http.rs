//! HTTP responses in the cache (feature `http`): bodies captured while they stream
//! ([`HttpStorage`]), their codec ([`HttpCodec`]), and a route policy ([`HttpPolicy`]).
//!
//! [`HttpPolicy`] is what a gateway route needs: `GET` and `HEAD` requests keyed by method,
//! host, path and query; listed statuses stored (404 and 410 as negative answers, 5xx counted as
//! failures for stale-if-error); tags from a response header such as `Surrogate-Key`; the TTL
//! from `Cache-Control: s-maxage` / `max-age` when the response has one, within the route's
//! bounds. It is deliberately small: requests with `Authorization`, and responses with
//! `Set-Cookie` or `Cache-Control: no-store` / `private` / `no-cache`, are never shared. A full
//! RFC 9111 policy is another [`Policy`] over the same storage.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CACHE_CONTROL, HOST, HeaderName, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use omega_core::key::Key;
use omega_core::reject::BoxError;

use crate::policy::{Lookup, Policy, Rules, Verdict};
use crate::storage::{Captured, Storage, ValueCodec};

/// A stored HTTP response: status, header fields, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl StoredResponse {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The header fields.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// The body of a cached service's responses: a stored body, a body passed through, or a
/// large body passed on as it streams after the part that was read.
#[derive(Debug)]
pub struct CacheBody<B> {
    kind: Kind<B>,
}

#[derive(Debug)]
enum Kind<B> {
    Full(Option<Bytes>),
    Inner(B),
    /// What was read, then a frame that stopped the capture (trailers, an error), then the
    /// rest of the body.
    Prefixed {
        prefix: Option<Bytes>,
        pending: Option<Result<Frame<Bytes>, BoxError>>,
        rest: B,
    },
}

impl<B> CacheBody<B> {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        CacheBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    fn inner(body: B) -> Self {
        CacheBody {
            kind: Kind::Inner(body),
        }
    }
}

impl<B> Default for CacheBody<B> {
    fn default() -> Self {
        CacheBody::full(Bytes::new())
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Inner(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Prefixed {
                prefix,
                pending,
                rest,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                if let Some(frame) = pending.take() {
                    return Poll::Ready(Some(frame));
                }
                Pin::new(rest).poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Prefixed {
                prefix,
                pending,
                rest,
            } => prefix.is_none() && pending.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Inner(body) => body.size_hint(),
            Kind::Prefixed { prefix, rest, .. } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}

/// Stores `http::Response<B>`: the body is read up to the partition's maximum entry size and
/// stored; a larger body (by its size hint, or once more was read) is passed on as it
/// streams, the part already read first, and a body with trailers is passed on too. Hits
/// answer a copy of the stored status, header fields and body.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpStorage;

impl<B> Storage<Response<B>> for HttpStorage
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<B>>;
    type Value = Arc<StoredResponse>;
    type Capture =
        Pin<Box<dyn std::future::Future<Output = Captured<Self::Response, Self::Value>> + Send>>;

    fn capture(&self, res: Response<B>, max_bytes: usize) -> Self::Capture {
        Box::pin(async move {
            let (parts, mut body) = res.into_parts();
            if body.size_hint().lower() > max_bytes as u64 {
                return Captured::Passed(Response::from_parts(parts, CacheBody::inner(body)));
            }
            let mut buf = BytesMut::new();
            let pass = |parts, buf: BytesMut, pending, body| {
                let kind = Kind::Prefixed {
                    prefix: (!buf.is_empty()).then(|| buf.freeze()),
                    pending,
                    rest: body,
                };
                Captured::Passed(Response::from_parts(parts, CacheBody { kind }))
            };
            loop {
                let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                match frame {
                    None => break,
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            buf.extend_from_slice(&data);
                            if buf.len() > max_bytes {
                                return pass(parts, buf, None, body);
                            }
                        }
                        // Trailers are not stored: the response is passed on, trailers and all.
                        Err(trailers) => return pass(parts, buf, Some(Ok(trailers)), body),
                    },
                    // The upstream body failed: the client sees what was read, then the error.
                    Some(Err(e)) => return pass(parts, buf, Some(Err(e.into())), body),
                }
            }
            Captured::Stored(Arc::new(StoredResponse {
                status: parts.status,
                headers: parts.headers,
                body: buf.freeze(),
            }))
        })
    }

    fn respond(&self, value: &Arc<StoredResponse>) -> Self::Response {
        let mut res = Response::new(CacheBody::full(value.body.clone()));
        *res.status_mut() = value.status;
        *res.headers_mut() = value.headers.clone();
        res
    }

    fn pass(res: Response<B>) -> Self::Response {
        res.map(CacheBody::inner)
    }
}

/// The bytes of a [`StoredResponse`]: status, header fields, body.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpCodec;

impl ValueCodec<Arc<StoredResponse>> for HttpCodec {
    fn name(&self) -> &'static str {
        "http"
    }

    fn encode(&self, v: &Arc<StoredResponse>) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::with_capacity(64 + v.body.len());
        out.extend_from_slice(&v.status.as_u16().to_be_bytes());
        out.extend_from_slice(&(v.headers.len() as u32).to_be_bytes());
        for (name, value) in &v.headers {
            out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&v.body);
        Ok(out)
    }

    fn decode(&self, b: &[u8]) -> Result<Arc<StoredResponse>, BoxError> {
        let bad = || BoxError::from("not a stored HTTP response");
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], BoxError> {
            let s = b.get(at..at + n).ok_or_else(bad)?;
            at += n;
            Ok(s)
        };
        let status = StatusCode::from_u16(u16::from_be_bytes(take(2)?.try_into()?))?;
        let n = u32::from_be_bytes(take(4)?.try_into()?) as usize;
        let mut headers = HeaderMap::with_capacity(n);
        for _ in 0..n {
            let len = u32::from_be_bytes(take(4)?.try_into()?) as usize;
            let name = HeaderName::from_bytes(take(len)?)?;
            let len = u32::from_be_bytes(take(4)?.try_into()?) as usize;
            let value = HeaderValue::from_bytes(take(len)?)?;
            headers.append(name, value);
        }
        Ok(Arc::new(StoredResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(&b[at..]),
        }))
    }
}

/// A route's cache policy for HTTP; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct HttpPolicy {
    partition: Arc<str>,
    statuses: Vec<u16>,
    negative: Vec<u16>,
    tags_header: Option<HeaderName>,
    ttl: Option<Duration>,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl HttpPolicy {
    /// Responses of `partition`: 200, 203, 204, 300, 301, 308 stored; 404 and 410 stored as
    /// negative answers; the partition's TTL unless the response says otherwise.
    pub fn new(partition: impl Into<Arc<str>>) -> Self {
        HttpPolicy {
            partition: partition.into(),
            statuses: vec![200, 203, 204, 300, 301, 308],
            negative: vec![404, 410],
            tags_header: None,
            ttl: None,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::MAX,
        }
    }

    /// The statuses stored as answers.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// The statuses stored as negative answers (the partition's negative TTL).
    pub fn negative_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.negative = statuses.into_iter().collect();
        self
    }

    /// Tags each response with the space- or comma-separated values of this header field
    /// (`Surrogate-Key`, `Cache-Tag`).
    ///
    /// # Panics
    /// When `name` is not a header name.
    pub fn tags_from(mut self, name: &str) -> Self {
        self.tags_header = Some(HeaderName::try_from(name).expect("a header name"));
        self
    }

    /// The TTL of responses that do not say (default: the partition's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Bounds the TTL a response asks for.
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max.max(min);
        self
    }

    fn rules<B>(&self, res: &Response<B>) -> Rules {
        let mut rules = Rules::new();
        let asked = max_age(res.headers()).or(self.ttl);
        if let Some(ttl) = asked {
            rules = rules.ttl(ttl.clamp(self.min_ttl, self.max_ttl));
        }
        if let Some(h) = &self.tags_header {
            for v in res.headers().get_all(h) {
                if let Ok(v) = v.to_str() {
                    rules = rules.tags(
                        v.split([' ', ','])
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned),
                    );
                }
            }
        }
        rules
    }
}

/// `s-maxage`, else `max-age`, from `Cache-Control`.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for v in headers.get_all(CACHE_CONTROL) {
        for d in v.to_str().ok()?.split(',') {
            let d = d.trim();
            if let Some(s) = d.strip_prefix("s-maxage=") {
                return s.trim_matches('"').parse().ok().map(Duration::from_secs);
            }
            if let Some(s) = d.strip_prefix("max-age=") {
                max_age = s.trim_matches('"').parse().ok().map(Duration::from_secs);
            }
        }
    }
    max_age
}

fn never_shared(headers: &HeaderMap) -> bool {
    headers.contains_key(SET_COOKIE)
        || headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|d| {
                    let d = d.trim();
                    d.eq_ignore_ascii_case("no-store")
                        || d.eq_ignore_ascii_case("private")
                        || d.eq_ignore_ascii_case("no-cache")
                })
            })
        })
}

impl<B: 'static, ResB: 'static> Policy<Request<B>, Response<ResB>> for HttpPolicy {
    type Context = ();

    fn lookup<'a>(&'a self, req: &'a Request<B>) -> Option<Lookup<'a>> {
        if !matches!(*req.method(), Method::GET | Method::HEAD)
            || req.headers().contains_key(AUTHORIZATION)
        {
            return None;
        }
        let host = req
            .uri()
            .host()
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let key = Key::format(format_args!("{} {host}{path}", req.method()));
        Some(Lookup::new(&self.partition, key))
    }

    fn context(&self, _req: &Request<B>) {}

    fn decide(&self, _: &(), res: &Response<ResB>) -> Verdict {
        let status = res.status().as_u16();
        if res.status().is_server_error() {
            return Verdict::Failure;
        }
        if never_shared(res.headers()) {
            return Verdict::Pass;
        }
        if self.statuses.contains(&status) {
            Verdict::Store(self.rules(res))
        } else if self.negative.contains(&status) {
            Verdict::Negative(self.rules(res))
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_responses_round_trip_through_the_codec() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let v = Arc::new(StoredResponse {
            status: StatusCode::NOT_FOUND,
            headers,
            body: Bytes::from_static(b"missing"),
        });
        let back = HttpCodec.decode(&HttpCodec.encode(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(HttpCodec.decode(&[0, 200, 0]).is_err());
    }

    #[test]
    fn the_policy_keys_judges_and_tags() {
        let p = HttpPolicy::new("pages")
            .tags_from("surrogate-key")
            .ttl_bounds(Duration::from_secs(1), Duration::from_secs(60));
        let req = Request::get("http://shop/items?id=1").body(()).unwrap();
        let l = Policy::<_, Response<()>>::lookup(&p, &req).unwrap();
        assert_eq!(l.key().as_str(), Some("GET shop/items?id=1"));
        let post = Request::post("/items").body(()).unwrap();
        assert!(Policy::<_, Response<()>>::lookup(&p, &post).is_none());
        let auth = Request::get("/me")
            .header("authorization", "x")
            .body(())
            .unwrap();
        assert!(Policy::<_, Response<()>>::lookup(&p, &auth).is_none());

        let res = Response::builder()
            .header("surrogate-key", "item:1 list")
            .header("cache-control", "public, max-age=3600")
            .body(())
            .unwrap();
        let Verdict::Store(rules) = Policy::<Request<()>, _>::decide(&p, &(), &res) else {
            panic!()
        };
        assert_eq!(rules.ttl, Some(Duration::from_secs(60)));
        assert_eq!(rules.tag_list(), [Arc::from("item:1"), Arc::from("list")]);
        let gone = Response::builder().status(404).body(()).unwrap();
        assert!(matches!(
            Policy::<Request<()>, _>::decide(&p, &(), &gone),
            Verdict::Negative(_)
        ));
        let failed = Response::builder().status(503).body(()).unwrap();
        assert_eq!(
            Policy::<Request<()>, _>::decide(&p, &(), &failed),
            Verdict::Failure
        );
        let private = Response::builder()
            .header("cache-control", "private")
            .body(())
            .unwrap();
        assert_eq!(
            Policy::<Request<()>, _>::decide(&p, &(), &private),
            Verdict::Pass
        );
        let cookie = Response::builder()
            .header("set-cookie", "a=b")
            .body(())
            .unwrap();
        assert_eq!(
            Policy::<Request<()>, _>::decide(&p, &(), &cookie),
            Verdict::Pass
        );
    }
}
