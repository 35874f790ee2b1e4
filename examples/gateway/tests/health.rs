//! Active health checks: a node failing its checks leaves routing and comes back when it
//! passes again; a node's open circuit is probed by the checks, never by a user's request.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use omega_gateway::GatewayConfig;
use omega_testkit::http::get;
use support::{json, start, upstream};

/// A node whose health endpoint and API can each be made to fail; counts API requests.
struct Switchable {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    api_ok: Arc<AtomicBool>,
    api_hits: Arc<AtomicU64>,
}

async fn switchable(id: &'static str) -> Switchable {
    let healthy = Arc::new(AtomicBool::new(true));
    let api_ok = Arc::new(AtomicBool::new(true));
    let api_hits = Arc::new(AtomicU64::new(0));
    let (h, ok, hits) = (healthy.clone(), api_ok.clone(), api_hits.clone());
    let app = axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let h = h.clone();
                async move {
                    if h.load(Ordering::SeqCst) {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }),
        )
        .fallback(move || {
            let (ok, hits) = (ok.clone(), hits.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let status = if ok.load(Ordering::SeqCst) {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                (status, format!("{{\"node\":\"{id}\"}}"))
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Switchable {
        addr,
        healthy,
        api_ok,
        api_hits,
    }
}

fn config(a: SocketAddr, b: SocketAddr, unhealthy_threshold: u32) -> GatewayConfig {
    let doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "upstreams": {
            "pool": {
                "nodes": [{ "id": "a", "url": format!("http://{a}") }, { "id": "b", "url": format!("http://{b}") }],
                "key": { "header": "x-user-id" },
                "breaker": { "failure_rate": 50, "window": 4, "minimum_calls": 4, "wait": "300ms" },
                "health_check": { "path": "/healthz", "interval": "100ms", "timeout": "1s", "healthy_threshold": 2, "unhealthy_threshold": unhealthy_threshold }
            }
        },
        "routes": [{ "prefix": "/", "upstream": "pool", "timeout": "5s" }]
    });
    GatewayConfig::from_json(&doc.to_string()).unwrap()
}

async fn owned_by(admin: SocketAddr, node: &str) -> String {
    for i in 0.. {
        let u = format!("user-{i}");
        let r = json(
            &get(admin, &format!("/shards/pool/owner?key={u}"), &[])
                .await
                .unwrap(),
        );
        if r["owner"] == node {
            return u;
        }
    }
    unreachable!()
}

async fn served_by(addr: SocketAddr, user: &str) -> (u16, String) {
    let r = get(addr, "/x", &[("x-user-id", user)]).await.unwrap();
    let node = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["node"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (r.status, node)
}

async fn node_health(admin: SocketAddr, node: &str) -> String {
    let shards = json(&get(admin, "/shards/pool", &[]).await.unwrap());
    shards["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .map(|n| n["health"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Polls `check` every 50 ms for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_failing_its_checks_leaves_routing_and_comes_back() {
    let a = upstream("a", false).await;
    let b = switchable("b").await;
    let gw = start(config(a.addr, b.addr, 2)).await;
    let user = owned_by(gw.admin_addr, "b").await;
    assert_eq!(served_by(gw.addr, &user).await, (200, "b".into()));

    // Its health endpoint fails (its API still answers): routing skips it.
    b.healthy.store(false, Ordering::SeqCst);
    eventually("b is down", || async {
        node_health(gw.admin_addr, "b").await == "down"
    })
    .await;
    assert_eq!(served_by(gw.addr, &user).await, (200, "a".into()));

    b.healthy.store(true, Ordering::SeqCst);
    eventually("b is back", || async {
        served_by(gw.addr, &user).await == (200, "b".into())
    })
    .await;
    assert_eq!(node_health(gw.admin_addr, "b").await, "up");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_circuits_are_probed_by_the_checks_not_by_users() {
    let a = upstream("a", false).await;
    let b = switchable("b").await;
    // Failing checks never take b out here (the threshold is out of reach): only its circuit
    // keeps users away, and the checks are its probes.
    let gw = start(config(a.addr, b.addr, 1_000)).await;
    let user = owned_by(gw.admin_addr, "b").await;

    // b's API fails: four users' requests fail and open its circuit.
    b.api_ok.store(false, Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    for _ in 0..4 {
        assert_eq!(served_by(gw.addr, &user).await.0, 500);
    }
    let hits = b.api_hits.load(Ordering::SeqCst);
    // For several of the breaker's waits, users are served by a and none is sent to b as a
    // half-open probe: the checks probe (and fail) instead, and b's health stays "up".
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(served_by(gw.addr, &user).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        statuses.iter().all(|s| *s == (200, "a".to_owned())),
        "{statuses:?}"
    );
    assert_eq!(
        b.api_hits.load(Ordering::SeqCst),
        hits,
        "a user's request probed b"
    );
    assert_eq!(node_health(gw.admin_addr, "b").await, "up");

    // b recovers: a passing check closes its circuit, and its users come back to it.
    b.api_ok.store(true, Ordering::SeqCst);
    b.healthy.store(true, Ordering::SeqCst);
    eventually("b serves its users again", || async {
        served_by(gw.addr, &user).await == (200, "b".into())
    })
    .await;
    let breakers = json(&get(gw.admin_addr, "/breakers", &[]).await.unwrap());
    assert_eq!(breakers["pool"]["b"]["state"], "Closed", "{breakers}");
    gw.shutdown().await;
}
