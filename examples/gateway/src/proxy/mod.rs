//! Forwarding one request to one upstream node.
//!
//! The request and response bodies stream through (nothing is buffered whole). Hop-by-hop
//! headers (RFC 9110 §7.6.1: `Connection` and every header it names, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and the
//! `Proxy-Authorization` / `Proxy-Authenticate` pair) are removed in both directions. The
//! upstream sees `Host` set to its own authority, the original host in `X-Forwarded-Host`, the
//! client appended to `X-Forwarded-For` and `Forwarded`, and `X-Forwarded-Proto`.

use std::future::Future;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use omega_penta::core::key::http::ClientIp;

use crate::body::{IdleTimeout, Side};
pub use crate::client::{Client, Clients, TlsClient, client};
use crate::headers::{
    X_FORWARDED_HOST, X_FORWARDED_PROTO, add_forwarded, grpc_timeout, join_cookies,
    remove_forwarding,
};
pub use crate::headers::{remove_hop_by_hop, valid_host};
pub use error::{Unanswered, UpstreamError};
use error::{cause, caused_by_the_client, over_the_body_limit};

mod error;

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
    metrics::counter!("omega_gateway_refused_total", "reason" => "body_too_large").increment(1);
    status(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is over this route's limit of {max} bytes"),
    )
}

/// Whether `path` is under `prefix` (`/api` matches `/api` and `/api/x`, not `/apix`).
pub fn matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
}

/// `path` and `query` as a request target.
fn origin_form(path: &str, query: Option<&str>) -> Option<PathAndQuery> {
    match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")).ok(),
        None => PathAndQuery::try_from(path).ok(),
    }
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
        let length = axum::body::HttpBody::size_hint(req.body()).exact();
        let bodiless = length == Some(0);
        // A body of known length goes by `Content-Length` through the gateway's own client.
        let sized = length.is_some();
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

        // The upstream target: the path with the route prefix removed when configured; else
        // the client's as it was parsed (no copy) when it is in origin form already, and its
        // path and query otherwise (an absolute-form `http://host?q` has no path).
        let query = parts.uri.query();
        let path_and_query = match (&route, parts.uri.path_and_query()) {
            (Some(r), _) if r.strip_prefix && r.prefix != "/" => {
                let path = parts.uri.path();
                let rest = &path[r.prefix.len().min(path.len())..];
                if rest.starts_with('/') {
                    origin_form(rest, query)
                } else {
                    origin_form(&format!("/{rest}"), query)
                }
            }
            (_, Some(pq)) if pq.as_str().starts_with('/') => Some(pq.clone()),
            _ => origin_form(parts.uri.path(), query),
        };
        let Some(path_and_query) = path_and_query else {
            return Ok(status(StatusCode::BAD_REQUEST, "invalid request path"));
        };
        let uri = match Uri::builder()
            .scheme(if self.https { "https" } else { "http" })
            .authority(authority.clone())
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
            remove_forwarding(&mut parts.headers);
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
            add_forwarded(
                &mut parts.headers,
                peer,
                proto,
                original_host.as_ref(),
                trusted,
            );
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
        let tls = match self.https.then(|| self.clients.get_tls()) {
            None => None,
            Some(Ok(client)) => Some(client),
            Some(Err(e)) => {
                return Ok(status(
                    StatusCode::BAD_GATEWAY,
                    &format!("node {} cannot be reached over TLS: {e}", self.node),
                ));
            }
        };
        // One timer for whichever client sends the request.
        let sent = async {
            Ok(if let Some(client) = tls {
                Answer::Hyper(client.request(upstream_req).await?)
            } else if http2 {
                Answer::Hyper(self.clients.get().request(upstream_req).await?)
            } else if sized && upgrade.is_none() {
                let (head, body) = upstream_req.into_parts();
                let body = (!bodiless).then_some(body);
                Answer::Wire(
                    self.clients
                        .http1()
                        .send_own(&authority, head, body)
                        .await?,
                )
            } else {
                Answer::Hyper(self.clients.http1().send(&authority, upstream_req).await?)
            })
        };
        let result: Result<Result<Answer, UpstreamError>, _> =
            tokio::time::timeout(timeout, sent).await;
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
        let (mut parts, body) = match response {
            Answer::Hyper(r) if r.status() == StatusCode::SWITCHING_PROTOCOLS => {
                return Ok(self.switch(r, upgrade, route.as_deref()));
            }
            Answer::Hyper(r) => {
                let (parts, body) = r.into_parts();
                (
                    parts,
                    Body::new(IdleTimeout::new(body, Side::Node, body_timeout)),
                )
            }
            // A body that came whole with its head has nothing to wait for.
            Answer::Wire(r) if !r.body().is_streaming() => {
                let (parts, body) = r.into_parts();
                (parts, Body::new(body))
            }
            Answer::Wire(r) => {
                let (parts, body) = r.into_parts();
                (
                    parts,
                    Body::new(IdleTimeout::new(body, Side::Node, body_timeout)),
                )
            }
        };
        remove_hop_by_hop(&mut parts.headers);
        if route.as_ref().is_some_and(|r| r.log) {
            parts
                .extensions
                .insert(crate::access_log::ServedBy(self.node.clone()));
        }
        Ok(Response::from_parts(parts, body))
    }
}

/// A node's answer, from hyper's client or the gateway's own ([`crate::wire`]).
enum Answer {
    Hyper(Response<hyper::body::Incoming>),
    Wire(Response<crate::wire::NodeBody>),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(matches("/api", "/api"));
        assert!(matches("/api", "/api/users"));
        assert!(!matches("/api", "/apix"));
        assert!(matches("/", "/anything"));
        assert!(matches("/api/", "/api/x"));
    }
}
