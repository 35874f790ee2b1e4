//! A node that cannot be reached fails no client request that can go elsewhere: the request
//! was never sent, so it goes to the next node of its key's preference list.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use omega_testkit::http::{get, request};
use support::{config, json, start, upstream};

/// An address where nothing listens (connections are refused).
fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_no_request_that_can_go_elsewhere() {
    let a = upstream("a", false).await;
    let b = upstream("b", false).await;
    let dead = dead_address();
    let gw = start(config(
        &[("a", a.addr), ("b", b.addr), ("c", dead)],
        serde_json::json!([]),
    ))
    .await;
    let mut served_by = BTreeMap::<String, u32>::new();
    let mut failed = Vec::new();
    let mut owned_by_dead = 0;
    for i in 0..120 {
        let user = format!("user-{i}");
        if gw_owner(gw.admin_addr, &user).await == "c" {
            owned_by_dead += 1;
        }
        let r = get(gw.addr, "/api/x", &[("x-user-id", user.as_str())])
            .await
            .unwrap();
        if r.status == 200 {
            *served_by
                .entry(json(&r)["node"].as_str().unwrap().to_owned())
                .or_default() += 1;
        } else {
            failed.push((user, r.status));
        }
    }
    println!("{owned_by_dead} of 120 users are owned by the dead node; served by {served_by:?}");
    assert!(
        owned_by_dead > 0,
        "the test needs keys owned by the dead node"
    );
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(!served_by.contains_key("c"));

    // A request with a body goes too, body and all: no attempt had read it.
    let user = owned_by(gw.admin_addr, "c").await;
    let payload = support::bytes_of(3, 200_000);
    let r = request(
        gw.addr,
        "POST",
        "/api/upload",
        &[("x-user-id", user.as_str())],
        &payload,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let doc = json(&r);
    assert_ne!(doc["node"], "c");
    assert_eq!(doc["len"], payload.len());
    assert_eq!(doc["sum"], support::checksum(&payload));
    gw.shutdown().await;
}

/// A node that takes requests and closes their connections without answering.
async fn resetting_node() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                // An abortive close: the gateway sees a reset before any response head.
                let _ = s.set_zero_linger();
                drop(s);
            });
        }
    });
    addr
}

/// A node that breaks a request off before answering: an idempotent request without a body
/// goes to the next node, within the pool's retry budget; others get 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_go_elsewhere_after_a_reset_within_the_budget() {
    let a = upstream("a", false).await;
    let b = upstream("b", false).await;
    let r = resetting_node().await;
    let nodes = [("a", a.addr), ("b", b.addr), ("r", r)];
    let gw = start(config(&nodes, serde_json::json!([]))).await;
    let user = owned_by(gw.admin_addr, "r").await;
    let user = [("x-user-id", user.as_str())];
    let got = get(gw.addr, "/api/x", &user).await.unwrap();
    assert_eq!(got.status, 200, "{got:?}");
    assert_ne!(json(&got)["node"], "r");
    // POST is not idempotent: the node may have acted on it.
    let post = request(gw.addr, "POST", "/api/x", &user, b"")
        .await
        .unwrap();
    assert_eq!(post.status, 502, "{post:?}");
    // A request whose body was sent is never sent twice.
    let put = request(gw.addr, "PUT", "/api/x", &user, b"a body")
        .await
        .unwrap();
    assert_eq!(put.status, 502, "{put:?}");
    gw.shutdown().await;

    // With no budget, no retry.
    let mut doc = serde_json::to_value(config(&nodes, serde_json::json!([]))).unwrap();
    doc["upstreams"]["pool"]["retry_budget"] =
        serde_json::json!({ "percent": 0, "min_per_second": 0 });
    let gw = start(omega_gateway::GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let got = get(gw.addr, "/api/x", &user).await.unwrap();
    assert_eq!(got.status, 502, "{got:?}");
    gw.shutdown().await;
}

/// A node that does not accept within the pool's `connect_timeout` is skipped at that
/// deadline, not the system's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_accept_fails_over_at_the_connect_timeout() {
    let a = upstream("a", false).await;
    let (blackhole, _held) = unaccepting_node().await;
    let mut doc = serde_json::to_value(config(
        &[("a", a.addr), ("x", blackhole)],
        serde_json::json!([]),
    ))
    .unwrap();
    doc["upstreams"]["pool"]["connect_timeout"] = "300ms".into();
    let gw = start(omega_gateway::GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let user = owned_by(gw.admin_addr, "x").await;
    let started = std::time::Instant::now();
    let got = get(gw.addr, "/api/x", &[("x-user-id", user.as_str())])
        .await
        .unwrap();
    let took = started.elapsed();
    println!(
        "a request owned by an unanswering node was served after {took:?} (connect_timeout 300ms)"
    );
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(json(&got)["node"], "a");
    // The default (5 s) or the system's (minutes) would be the bug.
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    gw.shutdown().await;
}

/// A listener whose accept queue is full and never drained: new connections get no answer to
/// their SYN (Linux drops it), so connecting waits until the connecting side gives up.
async fn unaccepting_node() -> (SocketAddr, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(0).unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    // The listener must stay open (not accepting) for the test's length.
    std::mem::forget(listener);
    (addr, held)
}

/// A key owned by `node`.
async fn owned_by(admin: SocketAddr, node: &str) -> String {
    for i in 0.. {
        let u = format!("user-{i}");
        if gw_owner(admin, &u).await == node {
            return u;
        }
    }
    unreachable!()
}

async fn gw_owner(admin: SocketAddr, user: &str) -> String {
    let r = get(admin, &format!("/shards/pool/owner?key={user}"), &[])
        .await
        .unwrap();
    json(&r)["owner"].as_str().unwrap().to_owned()
}

/// A test upstream that can be killed: its listener and every open connection go at once.
async fn killable_upstream(id: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(
                move |req: http::Request<hyper::body::Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(
                        support::serve_test_request(id, false, req.map(axum::body::Body::new))
                            .await,
                    )
                },
            );
            connections.spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// One node of three killed under load (16 connections, keys spread over every node): no
/// client request fails. Requests in flight on the node when it dies were broken off before
/// their answer and go again elsewhere; later ones find its port closed and fail over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_under_load_fails_no_request() {
    let a = upstream("a", false).await;
    let b = upstream("b", false).await;
    let (c, kill_c) = killable_upstream("c").await;
    let gw = start(config(
        &[("a", a.addr), ("b", b.addr), ("c", c)],
        serde_json::json!([]),
    ))
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..16 {
        let stop = stop.clone();
        let addr = gw.addr;
        clients.push(tokio::spawn(async move {
            let mut outcomes = BTreeMap::<String, u32>::new();
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let user = format!("user-{client}-{i}");
                let outcome = match get(addr, "/api/x", &[("x-user-id", user.as_str())]).await {
                    Ok(r) if r.status == 200 => "200".to_owned(),
                    Ok(r) => r.status.to_string(),
                    Err(e) => format!("error: {e}"),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            outcomes
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    kill_c.abort();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut outcomes = BTreeMap::<String, u32>::new();
    for c in clients {
        for (k, v) in c.await.unwrap() {
            *outcomes.entry(k).or_default() += v;
        }
    }
    let breakers = json(&get(gw.admin_addr, "/breakers", &[]).await.unwrap());
    println!(
        "outcomes with node c killed after 0.7 s of 2.2 s: {outcomes:?}; c's circuit: {}",
        breakers["pool"]["c"]["state"]
    );
    assert!(
        outcomes.get("200").copied().unwrap_or(0) > 100,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.len(), 1, "requests failed: {outcomes:?}");
    gw.shutdown().await;
}
