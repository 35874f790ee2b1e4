//! Forwarding one request to one upstream node.
//!
//! The request and response bodies stream through (nothing is buffered whole). Hop-by-hop
//! headers (RFC 9110 §7.6.1: `Connection` and every header it names, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and the
//! `Proxy-Authorization` / `Proxy-Authenticate` pair) are removed in both directions. The
//! upstream sees `Host` set to its own authority, the original host in `X-Forwarded-Host`, the
//! client appended to `X-Forwarded-For` and `Forwarded`, and `X-Forwarded-Proto`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use omega_penta::core::key::http::ClientIp;

/// A pooled client to `http://` nodes.
pub type Client = HyperClient<HttpConnector, Body>;

/// A pooled client to `https://` nodes.
pub type TlsClient = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// A client with pooled keep-alive connections, waiting at most `connect_timeout` for a new
/// connection.
pub fn client(connect_timeout: Duration) -> Client {
    builder(omega_penta::config::Protocol::Http1).build(connector(connect_timeout))
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector
}

fn builder(protocol: omega_penta::config::Protocol) -> hyper_util::client::legacy::Builder {
    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64);
    if protocol != omega_penta::config::Protocol::Http1 {
        builder
            .http2_only(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(Duration::from_secs(30));
    }
    builder
}

/// A pool's clients: one per thread that sends requests, so that a worker's requests go over
/// connections its own runtime drives (no cross-thread wake-up per request), each waiting at
/// most `connect_timeout` for a new connection. Clients to `https://` nodes are made (and the
/// roots they trust loaded) only when such a node gets a request.
pub struct Clients {
    connect_timeout: Duration,
    protocol: omega_penta::config::Protocol,
    ca: Option<std::path::PathBuf>,
    plain: thread_local::ThreadLocal<Client>,
    tls: thread_local::ThreadLocal<TlsClient>,
    tls_config: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("connect_timeout", &self.connect_timeout)
            .field("protocol", &self.protocol)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl Clients {
    /// Clients speaking `protocol`, waiting at most `connect_timeout` for a connection,
    /// trusting `ca` (or the system's roots) for `https://` nodes.
    pub fn new(
        connect_timeout: Duration,
        protocol: omega_penta::config::Protocol,
        ca: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Clients {
            connect_timeout,
            protocol,
            ca,
            plain: thread_local::ThreadLocal::new(),
            tls: thread_local::ThreadLocal::new(),
            tls_config: std::sync::OnceLock::new(),
        })
    }

    /// This thread's client to `http://` nodes.
    pub fn get(&self) -> &Client {
        self.plain
            .get_or(|| builder(self.protocol).build(connector(self.connect_timeout)))
    }

    /// The TLS settings for `https://` nodes (read once): an error when the pool's `tls.ca`
    /// cannot be read, or no root certificate is found.
    pub fn tls_config(&self) -> Result<&Arc<rustls::ClientConfig>, &str> {
        self.tls_config
            .get_or_init(|| crate::tls::client_config(self.ca.as_deref()))
            .as_ref()
            .map_err(String::as_str)
    }

    /// This thread's client to `https://` nodes.
    pub fn get_tls(&self) -> Result<&TlsClient, &str> {
        let config = self.tls_config()?;
        Ok(self.tls.get_or(|| {
            let mut http = connector(self.connect_timeout);
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((**config).clone())
                .https_only();
            let https = if self.http2() {
                https.enable_http2().wrap_connector(http)
            } else {
                https.enable_http1().wrap_connector(http)
            };
            builder(self.protocol).build(https)
        }))
    }

    /// Whether the nodes speak HTTP/2.
    pub fn http2(&self) -> bool {
        self.protocol != omega_penta::config::Protocol::Http1
    }
}

/// What the proxy needs to know about the route a request matched (a request extension).
#[derive(Clone, Debug)]
pub struct RouteInfo {
    /// The route's prefix.
    pub prefix: String,
    /// The route's pool.
    pub upstream: String,
    /// Whether requests are logged: answers are marked with the node that gave them.
    pub log: bool,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// The longest wait for the response head.
    pub timeout: Duration,
    /// Which peers are trusted proxies: their forwarding headers are extended, anyone else's
    /// are replaced.
    pub client_ip: ClientIp,
    /// The largest request body, in bytes (`None`: unlimited).
    pub max_body: Option<u64>,
    /// The longest wait for the next part of a body, the client's or a node's.
    pub body_timeout: Duration,
    /// Where upgraded connections (WebSocket) are joined.
    pub tunnels: Arc<crate::tunnel::Tunnels>,
}

/// A request body over its route's `max_body`.
#[derive(Debug, Clone, Copy)]
pub struct BodyTooLarge(pub u64);

impl BodyTooLarge {
    /// The answer: 413.
    pub fn into_response(self) -> Response<Body> {
        too_large(self.0)
    }
}

/// The route's body limit applied to a request: `Err` when its declared length is already
/// over; otherwise the request, its body cut at the limit while it streams.
pub fn limit_body(req: Request<Body>, max: Option<u64>) -> Result<Request<Body>, BodyTooLarge> {
    let Some(max) = max else { return Ok(req) };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyTooLarge(max));
    }
    if declared.is_some() {
        // hyper holds a body to its declared length: nothing more can arrive.
        return Ok(req);
    }
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    Ok(req.map(|b| Body::new(http_body_util::Limited::new(b, limit))))
}

fn too_large(max: u64) -> Response<Body> {
    status(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is over this route's limit of {max} bytes"),
    )
}

/// Whether a request failed because its body grew past the route's limit.
fn over_the_body_limit(e: &hyper_util::client::legacy::Error) -> bool {
    cause::<http_body_util::LengthLimitError>(e).is_some()
}

/// The first error of type `T` in `e`'s chain of sources.
fn cause<T: std::error::Error + 'static>(e: &hyper_util::client::legacy::Error) -> Option<&T> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        source = s.source();
    }
    None
}

/// Whether `path` is under `prefix` (`/api` matches `/api` and `/api/x`, not `/apix`).
pub fn matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
}

/// A short plain-text response.
pub fn status(code: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{message}\n")));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Sends requests to one node. Clones share one allocation, so the per-request clone is a
/// single reference count.
#[derive(Clone)]
pub struct ProxyNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    clients: Arc<Clients>,
    upstream: Arc<str>,
    node: Arc<str>,
    authority: Option<http::uri::Authority>,
    host_value: Option<HeaderValue>,
    /// Whether the node is an `https://` one.
    https: bool,
    metrics: NodeMetrics,
}

impl std::fmt::Debug for ProxyNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyNode")
            .field("upstream", &self.inner.upstream)
            .field("node", &self.inner.node)
            .field("authority", &self.inner.authority)
            .finish()
    }
}

/// A node's metrics, registered once so that recording costs an atomic operation:
/// `omega_gateway_node_requests_total`, `omega_gateway_node_errors_total` (label `kind`:
/// `unreachable`, `timeout`) and `omega_gateway_node_seconds`, each labelled `upstream`
/// and `node`.
struct NodeMetrics {
    requests: metrics::Counter,
    unreachable: metrics::Counter,
    timeouts: metrics::Counter,
    seconds: metrics::Histogram,
}

impl NodeMetrics {
    fn new(upstream: &str, node: &str) -> Self {
        let labels = [("upstream", upstream.to_owned()), ("node", node.to_owned())];
        let errors = |kind: &'static str| {
            let mut l = labels.to_vec();
            l.push(("kind", kind.to_owned()));
            metrics::counter!("omega_gateway_node_errors_total", &l)
        };
        NodeMetrics {
            requests: metrics::counter!("omega_gateway_node_requests_total", &labels),
            unreachable: errors("unreachable"),
            timeouts: errors("timeout"),
            seconds: metrics::histogram!("omega_gateway_node_seconds", &labels),
        }
    }
}

impl ProxyNode {
    /// A node at `base_url` (`http://host:port` or `https://host:port`), part of pool
    /// `upstream`.
    pub fn new(clients: Arc<Clients>, upstream: Arc<str>, node: Arc<str>, base_url: &str) -> Self {
        let url = base_url.parse::<Uri>().ok();
        let https = url.as_ref().and_then(Uri::scheme_str) == Some("https");
        let authority = url.and_then(|u| u.authority().cloned());
        let host_value = authority
            .as_ref()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        ProxyNode {
            inner: Arc::new(NodeInner {
                metrics: NodeMetrics::new(&upstream, &node),
                clients,
                upstream,
                node,
                authority,
                host_value,
                https,
            }),
        }
    }
}

/// A request its node did not answer: the connection could not be made (nothing was sent), or
/// the node broke it off before the response head. The router may send it to the next node of
/// the key's preference list (see `table::Failover`).
#[derive(Debug)]
pub struct Unanswered {
    node: Arc<str>,
    error: hyper_util::client::legacy::Error,
    /// Whether anything was sent.
    pub sent: bool,
    /// Whether the request may be sent again: it has no body, or its body is still unread.
    pub replayable: bool,
    /// Whether its method is idempotent (RFC 9110 §9.2.2).
    pub idempotent: bool,
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sent {
            write!(
                f,
                "node {} broke the connection off before answering: {}",
                self.node, self.error
            )
        } else {
            write!(f, "node {} is unreachable: {}", self.node, self.error)
        }
    }
}

impl std::error::Error for Unanswered {}

impl Unanswered {
    /// The answer when no node was left to try: 502.
    pub fn into_response(self) -> Response<Body> {
        status(StatusCode::BAD_GATEWAY, &self.to_string())
    }
}

impl tower::Service<Request<Body>> for ProxyNode {
    type Response = Response<Body>;
    type Error = Unanswered;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Unanswered>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Unanswered>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let node = self.inner.clone();
        Box::pin(async move { node.forward(req).await })
    }
}

impl NodeInner {
    async fn forward(&self, mut req: Request<Body>) -> Result<Response<Body>, Unanswered> {
        // A protocol switch (WebSocket): the `Upgrade` goes to the node, and a 101 joins the
        // two connections.
        let upgrade = (req.version() == http::Version::HTTP_11
            && crate::tunnel::wants_upgrade(req.headers()))
        .then(|| {
            let to = req.headers().get(header::UPGRADE).cloned();
            (hyper::upgrade::on(&mut req), to)
        });
        let Some(authority) = self.authority.clone() else {
            return Ok(status(
                StatusCode::BAD_GATEWAY,
                "the node's URL has no host",
            ));
        };
        let route = req.extensions().get::<Arc<RouteInfo>>().cloned();
        let mut timeout = route
            .as_ref()
            .map_or(Duration::from_secs(30), |r| r.timeout);
        // A gRPC call's own deadline, when shorter, bounds the wait too.
        let grpc = omega_penta::core::http::is_grpc(req.headers());
        if grpc && let Some(deadline) = req.headers().get("grpc-timeout").and_then(grpc_timeout) {
            timeout = timeout.min(deadline);
        }
        let body_timeout = route
            .as_ref()
            .map_or(Duration::from_secs(60), |r| r.body_timeout);
        // Whether the request could go to another node if this one does not answer.
        let bodiless = axum::body::HttpBody::size_hint(req.body()).exact() == Some(0);
        let slot = req.extensions().get::<crate::body::BodySlot>().cloned();
        let idempotent = matches!(
            *req.method(),
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::TRACE
                | http::Method::PUT
                | http::Method::DELETE
        );
        let peer = req
            .extensions()
            .get::<omega_penta::core::key::http::PeerAddr>()
            .map(|p| p.0);
        let (mut parts, body) = req.into_parts();

        // The upstream path: the route prefix removed when configured.
        let path = parts.uri.path();
        let path = match &route {
            Some(r) if r.strip_prefix && r.prefix != "/" => {
                let rest = &path[r.prefix.len().min(path.len())..];
                if rest.starts_with('/') {
                    rest.to_owned()
                } else {
                    format!("/{rest}")
                }
            }
            _ => path.to_owned(),
        };
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri = match Uri::builder()
            .scheme(if self.https { "https" } else { "http" })
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
        {
            Ok(uri) => uri,
            Err(_) => return Ok(status(StatusCode::BAD_REQUEST, "invalid request path")),
        };

        // HTTP/2 clients send the host as the `:authority` pseudo-header, in the URI.
        let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let http2 = self.clients.http2();
        // `TE: trailers` says the client takes trailers (gRPC needs it); HTTP/2 allows it.
        let te_trailers = http2
            && parts
                .headers
                .get_all(header::TE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                });
        remove_hop_by_hop(&mut parts.headers);
        if te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if parts.version == http::Version::HTTP_2 && !http2 {
            join_cookies(&mut parts.headers);
        }
        if let Some((_, Some(to))) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, to.clone());
        }
        if let Some(host) = &self.host_value {
            parts.headers.insert(header::HOST, host.clone());
        }
        let trusted = match (&route, peer) {
            (Some(r), Some(p)) => r.client_ip.is_trusted(p.ip()),
            _ => false,
        };
        if !trusted {
            // What a client says about earlier hops is its own claim: the next tier gets
            // only what this gateway saw.
            for name in FORWARDING {
                parts.headers.remove(name);
            }
        }
        if let Some(host) = &original_host
            && !parts.headers.contains_key(X_FORWARDED_HOST)
        {
            parts.headers.insert(X_FORWARDED_HOST, host.clone());
        }
        let proto = if parts.extensions.get::<crate::tls::ViaTls>().is_some() {
            "https"
        } else {
            "http"
        };
        if let Some(peer) = peer {
            add_forwarded(&mut parts.headers, peer, proto, original_host.as_ref());
        }
        // A trusted TLS terminator's `X-Forwarded-Proto: https` is kept.
        if !parts.headers.contains_key(X_FORWARDED_PROTO) {
            parts
                .headers
                .insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        parts.uri = uri;
        parts.version = if http2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        let upstream_req = Request::from_parts(parts, body);

        self.metrics.requests.increment(1);
        let started = std::time::Instant::now();
        let sent = if self.https {
            match self.clients.get_tls() {
                Ok(client) => client.request(upstream_req),
                Err(e) => {
                    return Ok(status(
                        StatusCode::BAD_GATEWAY,
                        &format!("node {} cannot be reached over TLS: {e}", self.node),
                    ));
                }
            }
        } else {
            self.clients.get().request(upstream_req)
        };
        let result = tokio::time::timeout(timeout, sent).await;
        self.metrics.seconds.record(started.elapsed().as_secs_f64());
        let response = match result {
            Err(_) if grpc => {
                self.metrics.timeouts.increment(1);
                return Ok(omega_penta::core::http::grpc_rejection(
                    4, // DEADLINE_EXCEEDED
                    &format!("node {} did not answer within {timeout:?}", self.node),
                ));
            }
            Err(_) => {
                self.metrics.timeouts.increment(1);
                return Ok(status(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("node {} did not answer within {timeout:?}", self.node),
                ));
            }
            Ok(Err(e)) => {
                self.metrics.unreachable.increment(1);
                if let Some(idle) = cause::<crate::body::BodyIdle>(&e) {
                    // The client stopped sending its body: its failure (408), not the node's.
                    return Ok(status(StatusCode::REQUEST_TIMEOUT, &idle.to_string()));
                }
                if over_the_body_limit(&e) {
                    let max = route.as_ref().and_then(|r| r.max_body).unwrap_or_default();
                    return Ok(too_large(max));
                }
                if caused_by_the_client(&e) {
                    // The client's upload broke off (or it went away): a 4xx, which no
                    // breaker counts against the node.
                    return Ok(status(
                        StatusCode::BAD_REQUEST,
                        "the request body broke off before it was sent",
                    ));
                }
                // Refused or broken off before the response head: the router decides whether
                // it goes to another node.
                return Err(Unanswered {
                    node: self.node.clone(),
                    sent: !e.is_connect(),
                    error: e,
                    replayable: bodiless || slot.is_some_and(|s| s.unread()),
                    idempotent,
                });
            }
            Ok(Ok(r)) => r,
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.switch(response, upgrade, route.as_deref()));
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        if route.as_ref().is_some_and(|r| r.log) {
            parts
                .extensions
                .insert(crate::access_log::ServedBy(self.node.clone()));
        }
        let body = crate::body::IdleTimeout::new(body, crate::body::Side::Node, body_timeout);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

impl NodeInner {
    /// The node switched protocols: the client gets the 101 (with its `Upgrade`), and the two
    /// connections are joined once both are handed over.
    fn switch(
        &self,
        mut response: Response<hyper::body::Incoming>,
        upgrade: Option<(hyper::upgrade::OnUpgrade, Option<HeaderValue>)>,
        route: Option<&RouteInfo>,
    ) -> Response<Body> {
        let (Some((client, _)), Some(route)) = (upgrade, route) else {
            return status(
                StatusCode::BAD_GATEWAY,
                &format!("node {} switched protocols unasked", self.node),
            );
        };
        let node = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        let to = parts.headers.get(header::UPGRADE).cloned();
        remove_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(to) = to {
            parts.headers.insert(header::UPGRADE, to);
        }
        if route.log {
            parts
                .extensions
                .insert(crate::access_log::ServedBy(self.node.clone()));
        }
        route.tunnels.open(client, node, &route.prefix);
        Response::from_parts(parts, Body::empty())
    }
}

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A gRPC call's `grpc-timeout` (1 to 8 digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`).
fn grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Joins `cookie` fields an HTTP/2 client split (RFC 9113 §8.2.3) into the one field
/// HTTP/1.1 allows (RFC 6265 §5.4).
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether the request failed because of what the client sent: its body stream failed (an
/// upload cut off, a client gone), not the node.
fn caused_by_the_client(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        source = s.source();
    }
    false
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The headers that describe earlier hops: kept from trusted proxies only.
const FORWARDING: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    header::FORWARDED,
];

/// Whether `host` is a `Host` a request may carry (RFC 9110 §7.2: `uri-host [":" port]`),
/// restricted to what DNS names and IP literals use, so that it can go into `Forwarded:
/// host="…"` and `X-Forwarded-Host` unchanged: `a,for=203.0.113.9` is refused, not forwarded
/// as a forged hop.
pub fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// Appends the client to `X-Forwarded-For` and `Forwarded` (RFC 7239).
fn add_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    proto: &str,
    host: Option<&HeaderValue>,
) {
    let ip = peer.ip();
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = host
        .filter(|h| valid_host(h.as_bytes()))
        .and_then(|h| h.to_str().ok())
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let forwarded = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {element}"),
        _ => element,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_spec_writes_them() {
        let t = |v: &'static str| grpc_timeout(&HeaderValue::from_static(v));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(matches("/api", "/api"));
        assert!(matches("/api", "/api/users"));
        assert!(!matches("/api", "/apix"));
        assert!(matches("/", "/anything"));
        assert!(matches("/api/", "/api/x"));
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn hosts_that_could_forge_a_hop_are_not_valid() {
        for ok in [
            "example.com",
            "example.com:8080",
            "10.0.0.1:80",
            "[2001:db8::1]:443",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["a,for=203.0.113.9", "a\"b", "a;proto=https", "a b", ""] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        let host = HeaderValue::from_static("example.com");
        add_forwarded(
            &mut h,
            "[2001:db8::1]:4000".parse().unwrap(),
            "http",
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::1");
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[2001:db8::1]\";proto=http;host=\"example.com\""
        );
    }
}
