//! What the gateway's end-to-end tests share: test upstreams that echo what they receive, a
//! configuration over them, a gateway started in this process.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::serve::ListenerExt;
use http::{Response, StatusCode};
use omega_gateway::{Gateway, GatewayConfig};
use omega_testkit::http::{RawResponse, get};

/// A test upstream: echoes what it received, streams bodies both ways, answers any status,
/// and can be slow or fail on demand.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) hits: Arc<AtomicU64>,
}

pub(crate) async fn upstream(id: &'static str, failing: bool) -> Upstream {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            serve_test_request(id, failing, req).await
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Like nginx or any tuned upstream, it writes each part as soon as it has it.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream { addr, hits }
}

pub(crate) async fn serve_test_request(id: &str, failing: bool, req: Request) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    if failing {
        let mut r = Response::new(Body::from("broken"));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    if let Some(code) = path.strip_prefix("/api/status/") {
        let mut r = Response::new(Body::from(format!("status {code}")));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return r;
    }
    if path == "/api/slow" {
        tokio::time::sleep(Duration::from_millis(800)).await;
        return Response::new(Body::from("slow done"));
    }
    if path == "/api/two-parts" {
        // A streamed body whose second part comes 5 ms after the first (server-sent events,
        // a chunked report): each part must reach the client as soon as it is written.
        let parts = futures_util::stream::unfold(0u8, |i| async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(b"first ".to_vec()), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((Ok(b"second".to_vec()), 2))
                }
                _ => None,
            }
        });
        return Response::new(Body::from_stream(parts));
    }
    if let Some(size) = path.strip_prefix("/api/download/") {
        // A streamed body of `size` bytes, in 64 KiB chunks.
        let size: usize = size.parse().unwrap();
        let chunks = (0..size.div_ceil(65_536)).map(move |i| {
            let n = (size - i * 65_536).min(65_536);
            Ok::<_, std::io::Error>(bytes_of(i as u8, n))
        });
        return Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
    }
    // Echo: method, headers, and the body's length and checksum, read as a stream.
    let method = req.method().to_string();
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let mut stream = req.into_body().into_data_stream();
    let (mut len, mut sum) = (0u64, 0u64);
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        // An upload the client broke off ends here; its answer goes nowhere.
        let Ok(chunk) = chunk else { break };
        len += chunk.len() as u64;
        sum = chunk
            .iter()
            .fold(sum, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)));
    }
    let doc = serde_json::json!({
        "node": id, "method": method, "path": path, "query": query, "headers": headers, "len": len,
        "sum": sum,
    });
    let mut r = Response::new(Body::from(doc.to_string()));
    r.headers_mut()
        .insert("x-upstream-node", id.parse().unwrap());
    r.headers_mut()
        .insert("connection", "x-secret-hop".parse().unwrap());
    r.headers_mut().insert("x-secret-hop", "1".parse().unwrap());
    r
}

pub(crate) fn bytes_of(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add(i as u8)).collect()
}

pub(crate) fn checksum(data: &[u8]) -> u64 {
    data.iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)))
}

pub(crate) fn config(nodes: &[(&str, SocketAddr)], limits: serde_json::Value) -> GatewayConfig {
    let doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "shutdown_grace": "5s",
        "upstreams": {
            "pool": {
                "nodes": nodes.iter().map(|(id, a)| serde_json::json!({ "id": id, "url": format!("http://{a}") })).collect::<Vec<_>>(),
                "key": { "header": "x-user-id" },
                "failover": 3,
                "breaker": { "failure_rate": 50, "window": 10, "minimum_calls": 4, "wait": "60s" }
            }
        },
        "routes": [{ "prefix": "/api", "upstream": "pool", "timeout": "5s", "limits": limits }]
    });
    GatewayConfig::from_json(&doc.to_string()).unwrap()
}

/// The status of `GET /api/x` as `user`.
pub(crate) async fn status_for(addr: SocketAddr, user: &str) -> u16 {
    get(addr, "/api/x", &[("x-user-id", user)])
        .await
        .unwrap()
        .status
}

/// A gateway on `config` (no file, no Redis), serving.
pub(crate) async fn start(config: GatewayConfig) -> omega_gateway::Running {
    Gateway::new(config, None, None)
        .await
        .unwrap()
        .start()
        .await
        .unwrap()
}

pub(crate) fn json(r: &RawResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {r:?}"))
}

/// Kills a gateway process when the test ends, passed or not.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (10 s at most) until something accepts connections at `addr`.
pub(crate) async fn wait_until_up(addr: SocketAddr) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway at {addr} did not start");
}
