//! A route with `cache`: RFC 9111's shared cache in front of its pool, behind its limits, and
//! purged by tag through the admin API (with the admin token).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use omega_gateway::GatewayConfig;
use omega_testkit::http::{get, request};
use support::start;

/// An origin whose answers may be stored for a minute, tagged `report`.
async fn origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            (
                [
                    ("cache-control", "public, max-age=60"),
                    ("surrogate-key", "report"),
                ],
                format!("answer {n}"),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_route_answers_from_the_cache_until_its_tag_is_purged() {
    let (origin, calls) = origin().await;
    let doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "upstreams": { "pool": {
            "nodes": [{ "id": "o", "url": format!("http://{origin}") }],
            "key": { "header": "x-user-id" }
        }},
        "routes": [
            { "prefix": "/reports", "upstream": "pool", "cache": { "tags_header": "surrogate-key" }, "limits": [
                { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 3, "per": "1m" }
            ]},
            { "prefix": "/", "upstream": "pool" }
        ]
    });
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let ada = [("x-user-id", "ada")];
    let first = get(gw.addr, "/reports/7", &ada).await.unwrap();
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"answer 1"[..])
    );
    let second = get(gw.addr, "/reports/7", &ada).await.unwrap();
    assert_eq!(second.body, b"answer 1", "served from the cache");
    let status = second.header("cache-status").unwrap_or_default().to_owned();
    assert!(status.contains("hit"), "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The limits come first: a cached answer still counts (3 per minute).
    assert_eq!(get(gw.addr, "/reports/7", &ada).await.unwrap().status, 200);
    assert_eq!(get(gw.addr, "/reports/7", &ada).await.unwrap().status, 429);
    // A route without `cache` is not cached.
    get(gw.addr, "/other", &ada).await.unwrap();
    get(gw.addr, "/other", &ada).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Purging needs the token; then the next request goes to the origin.
    let refused = request(gw.admin_addr, "POST", "/cache/purge?tag=report", &[], b"")
        .await
        .unwrap();
    assert_eq!(refused.status, 401);
    let bearer = format!("Bearer {}", gw.admin_token());
    let purged = request(
        gw.admin_addr,
        "POST",
        "/cache/purge?tag=report",
        &[("authorization", bearer.as_str())],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(purged.status, 200, "{purged:?}");
    let bob = [("x-user-id", "bob")];
    let after = get(gw.addr, "/reports/7", &bob).await.unwrap();
    assert_eq!(after.body, b"answer 4", "{after:?}");
    gw.shutdown().await;
}
