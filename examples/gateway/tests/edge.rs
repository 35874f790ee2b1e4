//! The proxy listener as hostile clients meet it: a client that never finishes its request
//! head, one that sends too much head, too many connections, uploads that break off.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use omega_gateway::GatewayConfig;
use omega_testkit::http::get;
use support::{config, json, start, status_for, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_server(limits: serde_json::Value, a: SocketAddr) -> GatewayConfig {
    let mut doc = serde_json::to_value(config(&[("a", a)], serde_json::json!([]))).unwrap();
    doc["server"] = limits;
    GatewayConfig::from_json(&doc.to_string()).unwrap()
}

/// Reads until the peer closes; how long that took (`None`: still open after `within`).
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((started.elapsed(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Slowloris: a request head that never ends is cut at `header_timeout`, and so is a
/// kept-alive connection that sends nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off() {
    let a = upstream("a", false).await;
    let gw = start(with_server(
        serde_json::json!({ "header_timeout": "1s" }),
        a.addr,
    ))
    .await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\n")
        .await
        .unwrap();
    // Only the bug keeps it open for 20 s; the timeout is 1 s.
    let (took, _) = closed_within(&mut slow, Duration::from_secs(20))
        .await
        .expect("an unfinished request head keeps its connection");
    println!("an unfinished head was cut after {took:?} (header_timeout 1s)");

    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\n\r\n")
        .await
        .unwrap();
    let (took, answer) = closed_within(&mut idle, Duration::from_secs(20))
        .await
        .expect("an idle kept-alive connection is kept for ever");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    println!("an idle kept-alive connection was closed after {took:?}");
    gw.shutdown().await;
}

/// A head over `max_header_bytes`, or with more than `max_headers` fields, gets 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_much_head_gets_431() {
    let a = upstream("a", false).await;
    let gw = start(with_server(
        serde_json::json!({ "max_header_bytes": 8192, "max_headers": 20 }),
        a.addr,
    ))
    .await;
    let big = "x".repeat(16 * 1024);
    let r = get(
        gw.addr,
        "/api/x",
        &[("x-user-id", "u"), ("x-big", big.as_str())],
    )
    .await;
    let status = r.map(|r| r.status).unwrap_or(0);
    assert_eq!(status, 431, "a 16 KiB header");
    let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("x-user-id", "u"));
    let r = get(gw.addr, "/api/x", &headers).await;
    assert_eq!(r.map(|r| r.status).unwrap_or(0), 431, "30 header fields");
    assert_eq!(a.hits.load(Ordering::Relaxed), 0);
    let metrics =
        String::from_utf8(get(gw.admin_addr, "/metrics", &[]).await.unwrap().body).unwrap();
    let counted: u64 = metrics
        .lines()
        .find(|l| l.starts_with("omega_gateway_refused_total{reason=\"header_too_large\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no header_too_large count in:\n{metrics}"));
    assert!(counted >= 2, "{counted}");
    assert_eq!(status_for(gw.addr, "u").await, 200);
    gw.shutdown().await;
}

/// At the defaults (100 fields), a head with 90 fields is served and one with 120 gets 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_field_limit_holds() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    for (fields, expected) in [(90, 200), (120, 431)] {
        let names: Vec<String> = (0..fields).map(|i| format!("x-h{i}")).collect();
        let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        headers.push(("x-user-id", "u"));
        let r = get(gw.addr, "/api/x", &headers).await;
        assert_eq!(
            r.map(|r| r.status).unwrap_or(0),
            expected,
            "{fields} fields"
        );
    }
    gw.shutdown().await;
}

/// One connection over `max_connections` is answered 503 and closed; once one closes, new
/// ones are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503() {
    let a = upstream("a", false).await;
    let gw = start(with_server(
        serde_json::json!({ "max_connections": 2 }),
        a.addr,
    ))
    .await;
    let one = TcpStream::connect(gw.addr).await.unwrap();
    let two = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut three = TcpStream::connect(gw.addr).await.unwrap();
    let (_, answer) = closed_within(&mut three, Duration::from_secs(10))
        .await
        .expect("the third connection is closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    drop((one, two));
    let mut served = false;
    for _ in 0..100 {
        if get(gw.addr, "/api/x", &[("x-user-id", "u")])
            .await
            .map(|r| r.status)
            .ok()
            == Some(200)
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "connections are served again below the limit");
    let metrics = get(gw.admin_addr, "/metrics", &[]).await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("omega_gateway_refused_total{reason=\"connections\"}")),
        "{text}"
    );
    gw.shutdown().await;
}

/// Uploads that the client breaks off are the client's failure, not the node's: ten of them
/// do not open a healthy node's circuit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_uploads_do_not_open_a_healthy_nodes_circuit() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    for _ in 0..10 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"POST /api/upload HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nContent-Length: 100000\r\n\r\nonly a few bytes",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let breakers = json(&get(gw.admin_addr, "/breakers", &[]).await.unwrap());
    assert_eq!(breakers["pool"]["a"]["state"], "Closed", "{breakers}");
    assert_eq!(status_for(gw.addr, "u").await, 200);
    gw.shutdown().await;
}

/// A route's `max_body`: a declared length over it gets 413 before anything is sent, and a
/// chunked body that grows past it is cut and answered 413; neither counts against the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_a_routes_limit_get_413() {
    let a = upstream("a", false).await;
    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["routes"][0]["max_body"] = 1000.into();
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let user = [("x-user-id", "u")];
    let small = omega_testkit::http::request(gw.addr, "POST", "/api/up", &user, &[7u8; 500])
        .await
        .unwrap();
    assert_eq!(small.status, 200);
    assert_eq!(json(&small)["len"], 500);
    let hits = a.hits.load(Ordering::Relaxed);
    let declared = omega_testkit::http::request(gw.addr, "POST", "/api/up", &user, &[7u8; 5000])
        .await
        .unwrap();
    assert_eq!(declared.status, 413, "{declared:?}");
    assert_eq!(a.hits.load(Ordering::Relaxed), hits, "nothing was sent");

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut req = b"POST /api/up HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(b"3e8\r\n");
        req.extend_from_slice(&[b'x'; 1000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let (_, answer) = closed_within(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let breakers = json(&get(gw.admin_addr, "/breakers", &[]).await.unwrap());
    assert_eq!(breakers["pool"]["a"]["state"], "Closed", "{breakers}");
    gw.shutdown().await;
}

/// Reads until the end of a response head (or the peer closes); `None` after `within`.
async fn head_within(s: &mut TcpStream, within: Duration) -> Option<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at((started + within).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some((started.elapsed(), got))
}

/// An upload that stops arriving is cut at `body_timeout` and answered 408; the node's circuit
/// does not count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stalls_gets_408() {
    let a = upstream("a", false).await;
    let gw = start(with_server(
        serde_json::json!({ "body_timeout": "1s" }),
        a.addr,
    ))
    .await;
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"POST /api/upload HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nContent-Length: 100\r\n\r\nten bytes.",
        )
        .await
        .unwrap();
        // Only the bug waits 20 s; the timeout is 1 s.
        let (took, head) = head_within(&mut s, Duration::from_secs(20))
            .await
            .expect("a stalled upload holds its connection");
        outcomes.push(took);
        assert!(
            head.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
    }
    println!("stalled uploads were answered 408 after {outcomes:?} (body_timeout 1s)");
    let breakers = json(&get(gw.admin_addr, "/breakers", &[]).await.unwrap());
    assert_eq!(breakers["pool"]["a"]["state"], "Closed", "{breakers}");
    gw.shutdown().await;
}

/// A node that stops in the middle of its answer holds the client no longer than
/// `body_timeout`: the client's connection is closed, the answer visibly cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_stalls_is_cut() {
    let node = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = node.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = node.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                .await;
            // ...and nothing more, the connection kept open.
            held.push(s);
        }
    });
    let gw = start(with_server(
        serde_json::json!({ "body_timeout": "1s" }),
        node_addr,
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\n\r\n")
        .await
        .unwrap();
    let (took, got) = closed_within(&mut s, Duration::from_secs(20))
        .await
        .expect("a stalled answer holds the client's connection");
    println!("a stalled answer was cut after {took:?} (body_timeout 1s)");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello"), "{text}");
    gw.shutdown().await;
}
