//! HTTP: key extractors, and a layer that answers rejections itself (feature `http`).
//!
//! [`HttpRateLimitLayer`] works on `http::Request` / `http::Response` services (axum, hyper,
//! tonic). A denied request gets a `429 Too Many Requests` with `Retry-After` in whole seconds,
//! rounded up; a gRPC call (feature `grpc`) gets a trailers-only response with `grpc-status: 8`
//! (`RESOURCE_EXHAUSTED`). Every response, admitted or not, carries the IETF
//! `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) for the
//! most constrained limit that applied:
//!
//! ```text
//! RateLimit-Policy: "per_user";q=10;w=60
//! RateLimit: "per_user";r=7;t=18
//! ```
//!
//! `q` is the limit's burst, `w` the seconds a drained bucket takes to fill, `r` the requests
//! left and `t` the seconds until the bucket is full again (both rounded up).
//!
//! Key extractors, for [`crate::Limit::keyed`]:
//! - [`Header`]: a header's value, such as an API key (borrowed: no allocation);
//! - [`ClientIp`]: the peer address, or the client named by `Forwarded` / `X-Forwarded-For`
//!   when, and only when, the peer is a trusted proxy;
//! - [`Endpoint`]: the method and axum's route template ([`axum::extract::MatchedPath`]),
//!   never the raw path, so `/users/1` and `/users/2` share `GET /users/{id}`.
//!
//! ```
//! use axum::{Router, routing::get};
//! use omega_rate_limit::http::{ClientIp, Endpoint, Header, HttpRateLimitLayer};
//! use omega_rate_limit::{Limit, Quota, RateLimiter};
//!
//! let limiter = RateLimiter::builder()
//!     .limit(Limit::global("global", Quota::per_second(5_000)))
//!     .limit(Limit::keyed("per_api_key", Quota::per_minute(600), Header::new("x-api-key")))
//!     .limit(Limit::keyed("per_ip", Quota::per_second(20), ClientIp::trusting(["10.0.0.0/8"]).unwrap()))
//!     .limit(Limit::keyed("per_endpoint", Quota::per_second(1_000), Endpoint))
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "hello" }))
//!     .layer(HttpRateLimitLayer::new(limiter));
//! # let _ = app;
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use ::http::header::{HeaderName, HeaderValue};
use ::http::{HeaderMap, Request, Response, StatusCode};
use axum::extract::{ConnectInfo, MatchedPath};
use ipnet::IpNet;
use omega_core::http::{retry_after_value, seconds_rounded_up};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{ConfigError, RateLimited};
use crate::limit::KeyExtractor;
use crate::limiter::{Binding, Decision, RateLimiter};

/// The `RateLimit-Policy` field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` field.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

// ---------------------------------------------------------------------------------------------
// Key extractors
// ---------------------------------------------------------------------------------------------

/// Keys a limit by a request header's value (an API key, a tenant id, ...). Requests without
/// the header, or with a value that is not visible ASCII, are not counted by this limit; pair
/// it with a global or per-IP limit so they are still bounded.
#[derive(Clone, Debug)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// Keys by the header `name`.
    ///
    /// # Panics
    /// When `name` is not a valid header name (a programming error, like `HeaderName::from_static`).
    pub fn new(name: &str) -> Self {
        Header {
            name: HeaderName::try_from(name)
                .unwrap_or_else(|_| panic!("{name:?} is not a valid header name")),
        }
    }

    /// Keys by an already parsed header name.
    pub fn from_name(name: HeaderName) -> Self {
        Header { name }
    }
}

impl<B: 'static> KeyExtractor<Request<B>> for Header {
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>> {
        let value = req.headers().get(&self.name)?.to_str().ok()?;
        (!value.is_empty()).then_some(Cow::Borrowed(value))
    }
}

/// Keys a limit by the client's IP address.
///
/// The client is the peer of the connection (axum's [`ConnectInfo<SocketAddr>`], set by
/// `into_make_service_with_connect_info`). When the peer is one of the configured trusted
/// proxies, the forwarding headers are read from the right, skipping trusted hops, and the
/// first untrusted address is the client: a client cannot name another address for itself,
/// because only what a trusted proxy appended is believed. `Forwarded` (RFC 7239) is used when
/// present, otherwise `X-Forwarded-For`. With no trusted proxy configured the headers are
/// ignored.
///
/// A request without connection info (the server was not set up to record peers) is counted
/// under the key `unknown`, so such a setup limits everyone together rather than no one.
#[derive(Clone, Debug, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    /// The peer address only; forwarding headers are ignored.
    pub fn peer() -> Self {
        ClientIp::default()
    }

    /// Believes forwarding headers from peers inside these networks (`"10.0.0.0/8"`,
    /// `"::1/128"`, or a bare address such as `"192.0.2.7"`).
    pub fn trusting<I, S>(proxies: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let trusted = proxies
            .into_iter()
            .map(|p| {
                let p = p.as_ref().trim();
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError(format!(
                            "trusted proxy {p:?} is neither an address nor a network such as 10.0.0.0/8"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(ClientIp { trusted })
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request whose peer is `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let forwarded = headers.get_all(::http::header::FORWARDED);
        let hops: Vec<&str> = if forwarded.iter().next().is_some() {
            forwarded
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(forwarded_for)
                .collect()
        } else {
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .collect()
        };
        for hop in hops.into_iter().rev() {
            // An unparseable hop ("unknown", an obfuscated name, garbage) ends the walk: what
            // lies left of it cannot be attributed to a trusted proxy.
            let Some(ip) = parse_hop(hop) else { break };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }
}

impl<B: 'static> KeyExtractor<Request<B>> for ClientIp {
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>> {
        let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() else {
            return Some(Cow::Borrowed("unknown"));
        };
        Some(Cow::Owned(
            self.client(peer.ip(), req.headers()).to_string(),
        ))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so `::ffff:10.0.0.1` and `10.0.0.1` are one client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The `for=` parameter of one `Forwarded` element, or "" when it has none.
fn forwarded_for(element: &str) -> &str {
    element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
        .map_or("", |(_, v)| v.trim())
}

/// An address from a forwarding hop: `192.0.2.1`, `192.0.2.1:80`, `"[2001:db8::1]:4711"`,
/// `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sock) = hop.parse::<SocketAddr>() {
        return Some(canonical(sock.ip()));
    }
    let inner = hop.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// Keys a limit by endpoint: the method and axum's route template, such as
/// `GET /users/{id}`. Never the raw path, which a client could vary without end.
///
/// The template comes from [`MatchedPath`], which axum sets while routing: add the layer with
/// `Router::layer` or `route_layer`, not around the router. Requests that matched no route
/// share one bucket per method (`GET <unmatched>`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoint;

impl<B: 'static> KeyExtractor<Request<B>> for Endpoint {
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Cow<'a, str>> {
        let path = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("<unmatched>", MatchedPath::as_str);
        let method = req.method().as_str();
        let mut key = String::with_capacity(method.len() + 1 + path.len());
        key.push_str(method);
        key.push(' ');
        key.push_str(path);
        Some(Cow::Owned(key))
    }
}

// ---------------------------------------------------------------------------------------------
// Header fields
// ---------------------------------------------------------------------------------------------

/// The `RateLimit-Policy` and `RateLimit` values for a decision's binding limit.
#[derive(Clone, Debug)]
struct Fields {
    policy: HeaderValue,
    state: HeaderValue,
}

impl Fields {
    fn of<Req: 'static>(limiter: &RateLimiter<Req>, binding: &Binding<'_>) -> Option<Fields> {
        let name = binding.limit;
        let window = seconds_rounded_up(binding.window).max(1);
        let policy = match limiter
            .inner
            .limits
            .iter()
            .find(|l| std::ptr::eq(l.name.as_ptr(), name.as_ptr()))
        {
            Some(l) => {
                let cached = l.policy_header.load();
                match &**cached {
                    Some((burst, w, value)) if *burst == binding.burst && *w == window => {
                        value.clone()
                    }
                    _ => {
                        let value =
                            field(name, (";q=", u64::from(binding.burst)), (";w=", window))?;
                        l.policy_header.store(std::sync::Arc::new(Some((
                            binding.burst,
                            window,
                            value.clone(),
                        ))));
                        value
                    }
                }
            }
            None => field(name, (";q=", u64::from(binding.burst)), (";w=", window))?,
        };
        let state = field(
            name,
            (";r=", u64::from(binding.remaining)),
            (";t=", seconds_rounded_up(binding.reset_after)),
        )?;
        Some(Fields { policy, state })
    }

    fn apply(self, headers: &mut HeaderMap) {
        headers.append(RATELIMIT_POLICY, self.policy);
        headers.append(RATELIMIT, self.state);
    }
}

/// `"name";a=1;b=2`: a structured-field string item (RFC 8941; `"` and `\` escaped) with
/// two integer parameters, formatted on the stack and copied once into the header value.
fn field(name: &str, a: (&str, u64), b: (&str, u64)) -> Option<HeaderValue> {
    let mut buf = StackBuf::new();
    buf.push(b"\"");
    for &c in name.as_bytes() {
        if c == b'"' || c == b'\\' {
            buf.push(b"\\");
        }
        buf.push(&[c]);
    }
    buf.push(b"\"");
    for (key, value) in [a, b] {
        buf.push(key.as_bytes());
        buf.push_u64(value);
    }
    match buf.overflow {
        None => HeaderValue::from_bytes(&buf.bytes[..buf.len]).ok(),
        Some(long) => HeaderValue::try_from(long).ok(),
    }
}

/// A small formatting buffer that spills to a `String` only for very long limit names.
struct StackBuf {
    bytes: [u8; 128],
    len: usize,
    overflow: Option<Vec<u8>>,
}

impl StackBuf {
    fn new() -> Self {
        StackBuf {
            bytes: [0; 128],
            len: 0,
            overflow: None,
        }
    }

    #[inline]
    fn push(&mut self, data: &[u8]) {
        if let Some(v) = &mut self.overflow {
            v.extend_from_slice(data);
        } else if self.len + data.len() <= self.bytes.len() {
            self.bytes[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
        } else {
            let mut v = self.bytes[..self.len].to_vec();
            v.extend_from_slice(data);
            self.overflow = Some(v);
        }
    }

    fn push_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The response for a denied request.
fn rejection<B: Default>(denied: &RateLimited, fields: Option<Fields>, grpc: bool) -> Response<B> {
    let retry_after =
        (denied.retry_after() != std::time::Duration::MAX).then(|| denied.retry_after());
    let mut response = if grpc {
        let mut r = omega_core::http::grpc_rejection(
            omega_core::http::GRPC_RESOURCE_EXHAUSTED,
            &denied.to_string(),
        );
        if let Some(after) = retry_after {
            r.headers_mut()
                .insert(::http::header::RETRY_AFTER, retry_after_value(after));
        }
        r
    } else {
        omega_core::http::rejection(StatusCode::TOO_MANY_REQUESTS, retry_after)
    };
    if let Some(fields) = fields {
        fields.apply(response.headers_mut());
    }
    response
}

fn is_grpc(headers: &HeaderMap) -> bool {
    cfg!(feature = "grpc") && omega_core::http::is_grpc(headers)
}

// ---------------------------------------------------------------------------------------------
// Layer and service
// ---------------------------------------------------------------------------------------------

/// Applies a [`RateLimiter`] to an HTTP service, answering rejections with 429 (or gRPC
/// `RESOURCE_EXHAUSTED`) and adding the `RateLimit` fields to every response. The inner
/// service's errors pass through unchanged, so the stack works on axum without
/// `HandleErrorLayer`. Rejections need `ResBody: Default` (an empty body), as in tower-http.
#[derive(Debug)]
pub struct HttpRateLimitLayer<B> {
    limiter: RateLimiter<Request<B>>,
}

impl<B> Clone for HttpRateLimitLayer<B> {
    fn clone(&self) -> Self {
        HttpRateLimitLayer {
            limiter: self.limiter.clone(),
        }
    }
}

impl<B> HttpRateLimitLayer<B> {
    /// A layer that checks every request against `limiter`.
    pub fn new(limiter: RateLimiter<Request<B>>) -> Self {
        HttpRateLimitLayer { limiter }
    }
}

impl<S, B> Layer<S> for HttpRateLimitLayer<B> {
    type Service = HttpRateLimit<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpRateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service made by [`HttpRateLimitLayer`].
#[derive(Debug)]
pub struct HttpRateLimit<S, B> {
    inner: S,
    limiter: RateLimiter<Request<B>>,
}

impl<S: Clone, B> Clone for HttpRateLimit<S, B> {
    fn clone(&self) -> Self {
        HttpRateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl<S, B> HttpRateLimit<S, B> {
    /// Wraps `inner`.
    pub fn new(inner: S, limiter: RateLimiter<Request<B>>) -> Self {
        HttpRateLimit { inner, limiter }
    }

    /// The limiter (for example to change a quota while serving).
    pub fn limiter(&self) -> &RateLimiter<Request<B>> {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Splits a decision into the fields to send and, when denied, the rejection.
fn settle<Req: 'static, ResBody: Default>(
    limiter: &RateLimiter<Req>,
    decision: &Decision<'_>,
    grpc: bool,
) -> (Option<Fields>, Option<Response<ResBody>>) {
    let fields = decision
        .binding()
        .as_ref()
        .and_then(|b| Fields::of(limiter, b));
    match decision.denied() {
        None => (fields, None),
        Some(denied) => (None, Some(rejection(&denied, fields, grpc))),
    }
}

impl<S, B, ResBody> Service<Request<B>> for HttpRateLimit<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = HttpResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        let local = if self.limiter.is_local() {
            Some(settle(&self.limiter, &self.limiter.check_local(&req), grpc))
        } else {
            self.leased_locally(&req, grpc)
        };
        if let Some((fields, rejected)) = local {
            return match rejected {
                None => HttpResponseFuture {
                    kind: HttpKind::Inner {
                        future: self.inner.call(req),
                        fields,
                    },
                },
                Some(response) => HttpResponseFuture {
                    kind: HttpKind::Ready {
                        response: Some(response),
                    },
                },
            };
        }
        self.call_remote(req, grpc)
    }
}

impl<S, B, ResBody> HttpRateLimit<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    /// Lease mode's common case: decided here, no future to box.
    #[cfg(feature = "redis")]
    fn leased_locally(
        &self,
        req: &Request<B>,
        grpc: bool,
    ) -> Option<(Option<Fields>, Option<Response<ResBody>>)> {
        let decision = self.limiter.check_leased_locally(req)?;
        Some(settle(&self.limiter, &decision, grpc))
    }

    #[cfg(not(feature = "redis"))]
    fn leased_locally(
        &self,
        _req: &Request<B>,
        _grpc: bool,
    ) -> Option<(Option<Fields>, Option<Response<ResBody>>)> {
        None
    }

    #[cfg(feature = "redis")]
    fn call_remote(
        &mut self,
        req: Request<B>,
        grpc: bool,
    ) -> HttpResponseFuture<S::Future, ResBody, S::Error> {
        let limiter = self.limiter.clone();
        let prepared = limiter.prepare_remote(&req);
        // The instance that was made ready serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        HttpResponseFuture {
            kind: HttpKind::Boxed {
                future: Box::pin(async move {
                    let (fields, rejected) = {
                        let decision = limiter.check_prepared(prepared).await;
                        settle(&limiter, &decision, grpc)
                    };
                    if let Some(response) = rejected {
                        return Ok(response);
                    }
                    let mut response = inner.call(req).await?;
                    if let Some(fields) = fields {
                        fields.apply(response.headers_mut());
                    }
                    Ok(response)
                }),
            },
        }
    }

    #[cfg(not(feature = "redis"))]
    fn call_remote(
        &mut self,
        _req: Request<B>,
        _grpc: bool,
    ) -> HttpResponseFuture<S::Future, ResBody, S::Error> {
        unreachable!("without the redis feature every limiter is local")
    }
}

type BoxedResponse<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

pin_project! {
    /// The response future of [`HttpRateLimit`].
    pub struct HttpResponseFuture<F, ResBody, E> {
        #[pin]
        kind: HttpKind<F, ResBody, E>,
    }
}

pin_project! {
    #[project = HttpKindProj]
    enum HttpKind<F, ResBody, E> {
        Inner { #[pin] future: F, fields: Option<Fields> },
        Ready { response: Option<Response<ResBody>> },
        Boxed { future: BoxedResponse<Response<ResBody>, E> },
    }
}

impl<F, ResBody, E> fmt::Debug for HttpResponseFuture<F, ResBody, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpResponseFuture")
    }
}

impl<F, ResBody, E> Future for HttpResponseFuture<F, ResBody, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            HttpKindProj::Inner { future, fields } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(fields) = fields.take() {
                    fields.apply(response.headers_mut());
                }
                Poll::Ready(Ok(response))
            }
            HttpKindProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            HttpKindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_name_another_client() {
        let c = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(c.client(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        assert_eq!(ClientIp::peer().client(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right() {
        let c = ClientIp::trusting(["10.0.0.0/8", "192.0.2.7"]).unwrap();
        // The client put a fake address first; the trusted proxies appended the real one.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.1.1")]);
        assert_eq!(c.client(ip("192.0.2.7"), &h), ip("198.51.100.4"));
        // Several header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.5"),
        ]);
        assert_eq!(c.client(ip("10.0.0.2"), &h), ip("198.51.100.5"));
        // Only trusted hops: the leftmost is the client.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(c.client(ip("10.0.0.2"), &h), ip("10.9.9.9"));
        // Garbage stops the walk at the last trusted hop.
        let h = headers(&[("x-forwarded-for", "198.51.100.4, garbage, 10.1.1.1")]);
        assert_eq!(c.client(ip("10.0.0.2"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn forwarded_is_preferred_and_parsed() {
        let c = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            (
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.2.2.2:80"#,
            ),
        ]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=unknown, for=10.2.2.2")]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("10.2.2.2"));
    }

    #[test]
    fn mapped_addresses_are_one_client() {
        let c = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.4")]);
        assert_eq!(c.client(ip("::ffff:10.0.0.1"), &h), ip("198.51.100.4"));
    }

    #[test]
    fn bad_proxy_lists_are_rejected_with_the_culprit() {
        let err = ClientIp::trusting(["10.0.0.0/8", "ten.zero"]).unwrap_err();
        assert!(err.to_string().contains("ten.zero"), "{err}");
    }

    #[test]
    fn fields_follow_the_draft() {
        let b = Binding {
            limit: "per \"user\"",
            burst: 10,
            window: std::time::Duration::from_millis(59_500),
            remaining: 7,
            reset_after: std::time::Duration::from_millis(17_001),
        };
        let limiter = RateLimiter::<()>::builder()
            .limit(crate::Limit::global("g", crate::Quota::per_second(1)))
            .build()
            .unwrap();
        let f = Fields::of(&limiter, &b).unwrap();
        assert_eq!(f.policy, r#""per \"user\"";q=10;w=60"#);
        assert_eq!(f.state, r#""per \"user\"";r=7;t=18"#);
        // A limit's own policy value is cached until its quota changes.
        let d = limiter.check_local(&());
        let policy = |d: &Decision<'_>| Fields::of(&limiter, &d.binding().unwrap()).unwrap().policy;
        assert_eq!(policy(&d), r#""g";q=1;w=1"#);
        assert_eq!(policy(&limiter.check_local(&())), r#""g";q=1;w=1"#);
        limiter.set_quota("g", crate::Quota::per_minute(5)).unwrap();
        assert_eq!(policy(&limiter.check_local(&())), r#""g";q=5;w=60"#);
    }
}
