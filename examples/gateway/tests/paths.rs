//! Request targets end to end: the path routes and limits see, and the path and query a node
//! receives, from origin-form and absolute-form requests, with and without `strip_prefix`.

mod support;

use std::net::SocketAddr;

use omega_gateway::GatewayConfig;
use omega_testkit::http::{exchange, get};
use support::{json, start, upstream};

/// A gateway over one node `a` with `routes`.
fn one_node(a: SocketAddr, routes: serde_json::Value) -> GatewayConfig {
    let doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "upstreams": { "pool": {
            "nodes": [{ "id": "a", "url": format!("http://{a}") }],
            "key": { "header": "x-user-id" }
        }},
        "routes": routes
    });
    GatewayConfig::from_json(&doc.to_string()).unwrap()
}

/// `/x/../users` is `/users`: a route's limits cannot be skipped by writing its path another
/// way, the upstream gets the normal form, and an encoded slash is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_limits_see_the_path_in_normal_form() {
    let a = upstream("a", false).await;
    let gw = start(one_node(
        a.addr,
        serde_json::json!([
            { "prefix": "/users", "upstream": "pool", "limits": [
                { "name": "users", "key": "global", "rate": 1, "per": "1m" }
            ]},
            { "prefix": "/", "upstream": "pool" }
        ]),
    ))
    .await;
    let user = [("x-user-id", "u")];
    let first = get(gw.addr, "/users/7", &user).await.unwrap();
    assert_eq!(first.status, 200);
    for sneaky in [
        "/users/7",
        "/x/../users/7",
        "/x/%2e%2E/users/7",
        "/./users/7",
    ] {
        let r = get(gw.addr, sneaky, &user).await.unwrap();
        assert_eq!(r.status, 429, "{sneaky} must meet /users' limit: {r:?}");
    }
    let other = get(gw.addr, "/users/../other/./x?q=1", &user)
        .await
        .unwrap();
    assert_eq!(other.status, 200);
    assert_eq!(
        json(&other)["path"],
        "/other/x",
        "the upstream gets the normal form"
    );
    assert_eq!(json(&other)["query"], "q=1");
    let encoded = get(gw.addr, "/x%2F..%2Fusers/7", &user).await.unwrap();
    assert_eq!(encoded.status, 400, "{encoded:?}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_the_path_and_query_in_origin_form_without_a_stripped_prefix() {
    let a = upstream("a", false).await;
    let gw = start(one_node(
        a.addr,
        serde_json::json!([
            { "prefix": "/svc", "upstream": "pool", "strip_prefix": true },
            { "prefix": "/", "upstream": "pool" }
        ]),
    ))
    .await;
    let user = [("x-user-id", "u")];
    for (sent, path, query) in [
        ("/svc/users/7?a=1&b=2", "/users/7", Some("a=1&b=2")),
        ("/svc/users/7", "/users/7", None),
        ("/svc", "/", None),
        ("/svc?x=y", "/", Some("x=y")),
        ("/svc/", "/", None),
        // Routes without it send the client's path and query as they came.
        ("/other/x?q=%20", "/other/x", Some("q=%20")),
        // An absolute-form target: its path (`/` when it has none) and query.
        ("http://example.com/svc/a?q=1", "/a", Some("q=1")),
        ("http://example.com/other?q=1", "/other", Some("q=1")),
        ("http://example.com?q=2", "/", Some("q=2")),
        ("http://example.com", "/", None),
    ] {
        let r = get(gw.addr, sent, &user).await.unwrap();
        assert_eq!(r.status, 200, "{sent}: {r:?}");
        let doc = json(&r);
        assert_eq!(doc["path"], path, "{sent}");
        assert_eq!(doc["query"].as_str(), query, "{sent}");
    }
    gw.shutdown().await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with more than one `Host` line, is
/// answered 400 and goes nowhere (a next tier could read either host); HTTP/1.0 may leave it
/// out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_request_needs_exactly_one_host() {
    let a = upstream("a", false).await;
    let gw = start(one_node(
        a.addr,
        serde_json::json!([{ "prefix": "/", "upstream": "pool" }]),
    ))
    .await;
    let end = "x-user-id: u\r\nConnection: close\r\n\r\n";
    for (what, head, answer) in [
        ("no Host", "GET /x HTTP/1.1\r\n", "HTTP/1.1 400"),
        (
            "two Hosts",
            "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
            "HTTP/1.1 400",
        ),
        (
            "one Host twice",
            "GET /x HTTP/1.1\r\nHost: a\r\nhost: a\r\n",
            "HTTP/1.1 400",
        ),
        (
            "HTTP/1.0 without Host",
            "GET /x HTTP/1.0\r\n",
            "HTTP/1.0 200",
        ),
        (
            "HTTP/1.1 with one Host",
            "GET /x HTTP/1.1\r\nHost: a\r\n",
            "HTTP/1.1 200",
        ),
    ] {
        let raw = format!("{head}{end}");
        let out = exchange(gw.addr, raw.as_bytes()).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with(answer), "{what}: {out}");
    }
    assert_eq!(
        a.hits.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "only the requests with one Host or HTTP/1.0 reached the node"
    );
    gw.shutdown().await;
}
