//! The gateway end to end, over real sockets: test upstreams behind a gateway, requests from
//! a raw HTTP/1.1 client that sees exactly what the gateway sends.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use omega_gateway::{Gateway, GatewayConfig};
use omega_testkit::http::{Connection, exchange, get, request};
use support::{bytes_of, checksum, config, json, start, status_for, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_faithfully() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let user = [("x-user-id", "u1")];

    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let r = request(gw.addr, method, "/api/echo?q=1", &user, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{method}");
        assert_eq!(json(&r)["method"], method);
    }

    // Headers: custom ones pass, hop-by-hop ones (and those Connection names) do not, and the
    // forwarding headers name the client.
    let r = request(
        gw.addr,
        "GET",
        "/api/echo",
        &[
            ("x-user-id", "u1"),
            ("x-custom", "kept"),
            ("connection", "x-private"),
            ("x-private", "dropped"),
            ("proxy-authorization", "secret"),
            ("x-forwarded-for", "198.51.100.7"),
        ],
        b"",
    )
    .await
    .unwrap();
    let h = &json(&r)["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert!(
        h.get("x-private").is_none() && h.get("proxy-authorization").is_none(),
        "{h}"
    );
    // The client is not a trusted proxy: its X-Forwarded-For is its own claim, replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=127.0.0.1;proto=http"),
        "{h}"
    );
    assert_eq!(h["host"], a.addr.to_string());
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string());
    // The upstream's hop-by-hop response headers are removed too; its own headers pass.
    assert_eq!(r.header("x-upstream-node"), Some("a"));
    assert!(r.header("x-secret-hop").is_none(), "{r:?}");

    // A 16 MiB upload streams through and arrives intact.
    let upload = bytes_of(7, 16 << 20);
    let r = request(gw.addr, "POST", "/api/upload", &user, &upload)
        .await
        .unwrap();
    let doc = json(&r);
    assert_eq!(doc["len"], upload.len() as u64);
    assert_eq!(doc["sum"], checksum(&upload));

    // A 16 MiB download streams back.
    let r = get(gw.addr, "/api/download/16777216", &user).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 16 << 20);
    assert_eq!(&r.body[65_536..65_540], &bytes_of(1, 4)[..]);

    // Status codes pass through; a path outside every route is a 404 from the gateway.
    for code in [201u16, 404, 503] {
        let r = get(gw.addr, &format!("/api/status/{code}"), &user)
            .await
            .unwrap();
        assert_eq!(r.status, code);
    }
    assert_eq!(get(gw.addr, "/elsewhere", &user).await.unwrap().status, 404);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_responses_are_not_held_back_by_nagle() {
    // A client on one keep-alive connection, requests one after another: every part of a
    // response must leave the gateway when it arrives. With Nagle's algorithm on the client
    // socket, the second part waits for the client's delayed ACK of the first: 40 ms on Linux.
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let mut conn = Connection::open(gw.addr).await.unwrap();
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let r = conn
            .get("/api/two-parts", &[("x-user-id", "u1")])
            .await
            .unwrap();
        took.push(started.elapsed());
        assert_eq!((r.status, &r.body[..]), (200, &b"first second"[..]));
    }
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "two-part responses over one connection: median {median:?}, max {:?} (upstream pause 5 ms)",
        took[took.len() - 1]
    );
    // The upstream's own pause is 5 ms; the delayed-ACK stall adds about 40 ms to each.
    assert!(
        median < Duration::from_millis(30),
        "median {median:?}: {took:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_their_headers() {
    let a = upstream("a", false).await;
    let limits = serde_json::json!([
        { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 3, "per": "1m" },
        { "name": "global", "key": "global", "rate": 1000, "per": "1s" }
    ]);
    let gw = start(config(&[("a", a.addr)], limits)).await;
    let ada = [("x-user-id", "ada")];
    for left in (0..3).rev() {
        let r = get(gw.addr, "/api/x", &ada).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some(r#""per_user";q=3;w=60"#));
        assert!(
            r.header("ratelimit")
                .unwrap()
                .starts_with(&format!(r#""per_user";r={left};"#))
        );
    }
    let denied = get(gw.addr, "/api/x", &ada).await.unwrap();
    assert_eq!(denied.status, 429);
    let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    // The upstream saw only the admitted requests; another user is still served.
    assert_eq!(a.hits.load(Ordering::Relaxed), 3);
    assert_eq!(status_for(gw.addr, "bob").await, 200);
    gw.shutdown().await;
}

/// Clients may speak HTTP/2 (prior knowledge, `h2c`): the request is forwarded to the
/// upstream over HTTP/1.1 with the same method, headers and body, and the `:authority` as the
/// forwarded host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    use http_body_util::BodyExt;

    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = bytes_of(7, 100_000);
    let req = http::Request::post(format!(
        "http://gateway.test:{}/api/echo?x=1",
        gw.addr.port()
    ))
    .header("x-user-id", "ada")
    // HTTP/2 clients may split cookies into fields of their own (RFC 9113 §8.2.3).
    .header("cookie", "a=1")
    .header("cookie", "b=2")
    .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
    .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["x-upstream-node"], "a");
    let echo: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/echo");
    assert_eq!(echo["len"], body.len());
    assert_eq!(echo["sum"], checksum(&body));
    let host = format!("gateway.test:{}", gw.addr.port());
    assert_eq!(echo["headers"]["x-forwarded-host"], host.as_str());
    assert_eq!(echo["headers"]["host"], a.addr.to_string().as_str());
    assert_eq!(echo["headers"]["cookie"], "a=1; b=2");
    gw.shutdown().await;
}

/// The load benchmark's baseline: the same configuration with every layer left out forwards
/// each request to the pool's first node, with no limit, routing or breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_only_forwards_to_the_first_node_without_layers() {
    let (bad, good) = (upstream("bad", true).await, upstream("good", false).await);
    let limits = serde_json::json!([{ "name": "global", "key": "global", "rate": 2, "per": "1m" }]);
    let config = config(&[("bad", bad.addr), ("good", good.addr)], limits);
    let gw = Gateway::proxy_only(config)
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    // Far past the limit and past the breaker's minimum calls: every request reaches the
    // first node and its 500 comes back as is (no 429, no 503, no failover).
    for user in 0..20 {
        assert_eq!(status_for(gw.addr, &format!("u{user}")).await, 500);
    }
    assert_eq!(bad.hits.load(Ordering::Relaxed), 20);
    assert_eq!(good.hits.load(Ordering::Relaxed), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_on_their_node_and_a_failing_node_fails_over() {
    let good_a = upstream("a", false).await;
    let good_b = upstream("b", false).await;
    let bad_c = upstream("c", true).await;
    let gateway = Gateway::new(
        config(
            &[("a", good_a.addr), ("b", good_b.addr), ("c", bad_c.addr)],
            serde_json::json!([]),
        ),
        None,
        None,
    )
    .await
    .unwrap();
    let owner = |u: &str| gateway.owner("pool", u).unwrap();
    let on_c = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| owner(u) == "c")
        .unwrap();
    let on_a = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| owner(u) == "a")
        .unwrap();
    let handle = gateway.handle();
    let gw = gateway.start().await.unwrap();

    // Stable: a user's requests all reach its node.
    for _ in 0..10 {
        let r = get(gw.addr, "/api/echo", &[("x-user-id", on_a.as_str())])
            .await
            .unwrap();
        assert_eq!(json(&r)["node"], "a");
    }
    // Node c fails: its breaker opens after the minimum of calls...
    let mut failures = 0;
    for _ in 0..4 {
        let r = get(gw.addr, "/api/echo", &[("x-user-id", on_c.as_str())])
            .await
            .unwrap();
        if r.status == 500 {
            failures += 1;
        }
    }
    assert_eq!(failures, 4);
    let breakers: serde_json::Value = json(&get(gw.admin_addr, "/breakers", &[]).await.unwrap());
    assert_eq!(breakers["pool"]["c"]["state"], "Open", "{breakers}");
    // ...and its users are served by the next node of their preference list.
    let c_hits = bad_c.hits.load(Ordering::Relaxed);
    for _ in 0..5 {
        let r = get(gw.addr, "/api/echo", &[("x-user-id", on_c.as_str())])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_ne!(json(&r)["node"], "c");
    }
    assert_eq!(
        bad_c.hits.load(Ordering::Relaxed),
        c_hits,
        "no request reached the open node"
    );
    // Other users did not move.
    let r = get(gw.addr, "/api/echo", &[("x-user-id", on_a.as_str())])
        .await
        .unwrap();
    assert_eq!(json(&r)["node"], "a");
    assert_eq!(handle.owner("pool", &on_c).as_deref(), Some("c"));
    // The metrics name the node: four requests reached c, none since its circuit opened.
    let metrics =
        String::from_utf8(get(gw.admin_addr, "/metrics", &[]).await.unwrap().body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"omega_gateway_node_requests_total{upstream="pool",node="c"} 4"#),
        "{metrics}"
    );
    // Latencies are Prometheus histograms (buckets add up across gateways; quantiles of a
    // summary do not).
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("omega_gateway_request_seconds_bucket{")
                && l.contains(r#"le="0.005""#)),
        "{metrics}"
    );
    assert!(
        metrics.contains("omega_gateway_node_seconds_bucket{"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_limit_while_serving_and_keeps_its_state() {
    let a = upstream("a", false).await;
    let dir = tempfile::tempdir().unwrap();
    // A YAML file: the gateway reads it (and re-reads it on reload) by its extension.
    let path = dir.path().join("gateway.yaml");
    let write = |burst: u32| {
        let mut c = config(
            &[("a", a.addr)],
            serde_json::json!([{ "name": "per_user", "key": { "header": "x-user-id" }, "rate": 2, "per": "1m", "burst": burst }]),
        );
        c.listen = "127.0.0.1:0".parse().unwrap();
        let yaml = serde_yaml_ng::to_string(&serde_json::to_value(&c).unwrap()).unwrap();
        std::fs::write(&path, yaml).unwrap();
        c
    };
    let initial = write(2);
    let gw = Gateway::new(initial, Some(path.clone()), None)
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let ada = [("x-user-id", "ada")];
    assert_eq!(get(gw.addr, "/api/x", &ada).await.unwrap().status, 200);
    assert_eq!(get(gw.addr, "/api/x", &ada).await.unwrap().status, 200);
    assert_eq!(get(gw.addr, "/api/x", &ada).await.unwrap().status, 429);

    let bearer = format!("Bearer {}", gw.admin_token());
    let bearer = [("authorization", bearer.as_str())];
    // Raise the burst to 5: Ada's bucket keeps its state (2 cells used), so 3 more pass.
    write(5);
    let r = request(gw.admin_addr, "POST", "/reload", &bearer, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut admitted = 0;
    for _ in 0..6 {
        if get(gw.addr, "/api/x", &ada).await.unwrap().status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3);
    let limits = json(&get(gw.admin_addr, "/limits", &[]).await.unwrap());
    assert_eq!(limits["/api"][0]["burst"], 5);

    // A broken file is refused and changes nothing.
    std::fs::write(&path, "{ \"routes\": 7 }").unwrap();
    let r = request(gw.admin_addr, "POST", "/reload", &bearer, b"")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("routes"));
    assert_eq!(status_for(gw.addr, "bob").await, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_request_finish() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let addr = gw.addr;
    let admin = gw.admin_addr;
    let slow = tokio::spawn(async move { get(addr, "/api/slow", &[("x-user-id", "u")]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: not ready, no new connections; the slow request still completes.
    let ready = get(admin, "/readyz", &[]).await;
    assert!(ready.map(|r| r.status != 200).unwrap_or(true));
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"slow done");
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped accepting"
    );
}

/// A client that is not a trusted proxy cannot write earlier hops: its forwarding headers
/// are replaced; a trusted proxy's are extended (its `X-Forwarded-Proto: https` kept); a
/// `Host` that would forge a hop in `Forwarded` is refused with 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_from_trusted_proxies_only() {
    let a = upstream("a", false).await;
    let claims = [
        ("x-user-id", "u1"),
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bank.example"),
    ];
    let untrusted = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let r = get(untrusted.addr, "/api/echo", &claims).await.unwrap();
    let h = &json(&r)["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], untrusted.addr.to_string());
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{}\"", untrusted.addr)
    );

    // `Host: a,for=203.0.113.9` would read as a second hop to a naive next tier.
    let out = exchange(
        untrusted.addr,
        b"GET /api/echo HTTP/1.1\r\nHost: a,for=203.0.113.9\r\nx-user-id: u1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        1,
        "the forged host never left"
    );
    untrusted.shutdown().await;

    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["trusted_proxies"] = serde_json::json!(["127.0.0.1"]);
    let trusted = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let r = get(trusted.addr, "/api/echo", &claims).await.unwrap();
    let h = &json(&r)["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "bank.example");
    assert!(
        h["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=203.0.113.9;proto=https, for=127.0.0.1;proto=http"),
        "{h}"
    );
    trusted.shutdown().await;
}

/// A reload that trusts a proxy from now on applies to limits keyed by the client address:
/// the clients behind it get their own buckets (the limiter was reused with the old trust).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_a_changed_list_of_trusted_proxies() {
    let a = upstream("a", false).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.json");
    let write = |trusted: &[&str]| {
        let mut doc = serde_json::to_value(config(
            &[("a", a.addr)],
            serde_json::json!([{ "name": "per_ip", "key": "client_ip", "rate": 1, "per": "1m" }]),
        ))
        .unwrap();
        doc["trusted_proxies"] = serde_json::json!(trusted);
        std::fs::write(&path, doc.to_string()).unwrap();
        GatewayConfig::from_json(&doc.to_string()).unwrap()
    };
    let gw = Gateway::new(write(&[]), Some(path.clone()), None)
        .await
        .unwrap()
        .start()
        .await
        .unwrap();
    let from = |ip: &'static str| [("x-user-id", "u"), ("x-forwarded-for", ip)];
    // No trusted proxy: the header is the client's own claim; everyone is 127.0.0.1.
    assert_eq!(
        get(gw.addr, "/api/x", &from("192.0.2.1"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(gw.addr, "/api/x", &from("192.0.2.2"))
            .await
            .unwrap()
            .status,
        429
    );

    write(&["127.0.0.1"]);
    let bearer = format!("Bearer {}", gw.admin_token());
    let r = request(
        gw.admin_addr,
        "POST",
        "/reload",
        &[("authorization", &bearer)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // 127.0.0.1 is a trusted proxy now: the clients it names count apart.
    assert_eq!(
        get(gw.addr, "/api/x", &from("192.0.2.3"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(gw.addr, "/api/x", &from("192.0.2.4"))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get(gw.addr, "/api/x", &from("192.0.2.3"))
            .await
            .unwrap()
            .status,
        429
    );
    gw.shutdown().await;
}

/// With `pre_drain`, a shutdown first only says "not ready": the proxy keeps serving new
/// requests until the delay ends, the admin API answers 503 on `/readyz` all along, and only
/// then does the proxy stop accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_drain_keeps_serving_while_readyz_says_not_ready() {
    let a = upstream("a", false).await;
    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["pre_drain"] = "1500ms".into();
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let (addr, admin) = (gw.addr, gw.admin_addr);
    assert_eq!(get(admin, "/readyz", &[]).await.unwrap().status, 200);
    let stopping = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(admin, "/readyz", &[]).await.unwrap().status, 503);
    assert_eq!(
        status_for(addr, "u").await,
        200,
        "still serving while pre-draining"
    );
    stopping.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped accepting"
    );
}

#[test]
fn invalid_configs_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{ "routes": [ }"#, "line 1"),
        (
            r#"{ "upstreams": { "p": { "nodes": [] } }, "routes": [{ "prefix": "/", "upstream": "p" }] }"#,
            "upstreams.p.nodes: at least one node is needed",
        ),
        (
            r#"{ "upstreams": { "p": { "nodes": [{ "id": "a", "url": "ftp://x" }] } }, "routes": [{ "prefix": "/", "upstream": "p" }] }"#,
            "upstreams.p.nodes[0].url",
        ),
        (
            r#"{ "upstreams": { "p": { "nodes": [{ "id": "a", "url": "http://127.0.0.1:1" }] } }, "routes": [{ "prefix": "/", "upstream": "q" }] }"#,
            "routes[0].upstream: no upstream is named \"q\"",
        ),
        (
            r#"{ "upstreams": { "p": { "nodes": [{ "id": "a", "url": "http://127.0.0.1:1" }] } }, "routes": [{ "prefix": "/", "upstream": "p", "limits": [{ "name": "x", "key": "global", "rate": 5, "per": "5 minutes" }] }] }"#,
            "routes[0].limits[0].per",
        ),
        (
            r#"{ "upstreams": { "p": { "nodes": [{ "id": "a", "url": "http://127.0.0.1:1" }] } }, "routes": [{ "prefix": "/", "upstream": "p", "timeuot": "1s" }] }"#,
            "unknown field `timeuot`",
        ),
    ];
    // The same checks on YAML files.
    let yaml_cases = [
        ("routes:\n  - prefix: /\n   upstream: p\n", "line 3"),
        (
            "upstreams:\n  p:\n    nodes: [{ id: a, url: 'http://127.0.0.1:1' }]\nroutes:\n  - { prefix: /, upstream: p, limits: [{ name: x, key: global, rate: 0, per: 1s }] }\n",
            "routes[0].limits[0].rate: must be at least 1",
        ),
        (
            "upstreams:\n  p:\n    nodes: [{ id: a, url: 'http://127.0.0.1:1' }]\n    key: { cookie: s }\nroutes: []\n",
            "upstreams.p.key: unknown variant `cookie`",
        ),
    ];
    let files = cases
        .iter()
        .map(|&(t, e)| (t, e, "json"))
        .chain(yaml_cases.iter().map(|&(t, e)| (t, e, "yaml")));
    for (i, (text, expected, ext)) in files.enumerate() {
        let path = dir.path().join(format!("bad{i}.{ext}"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_omega-gateway"))
            .args(["--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} started");
        assert!(stderr.contains(expected), "case {i}: {stderr}");
    }
}
