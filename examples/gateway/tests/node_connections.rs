//! The gateway's keep-alive connections to a node, as a node sees them: reused while the node
//! keeps them, replaced when it closes them while idle (as nginx does after its
//! `keepalive_timeout`), without a failed request.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use omega_testkit::http::get;
use support::{config, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node that answers every request on a connection with `ok`, keep-alive, and closes the
/// connection once it has been idle for `idle`; counts the connections it accepted.
async fn node(idle: Duration) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let read = tokio::time::timeout(idle, socket.read(&mut chunk)).await;
                    let Ok(Ok(n)) = read else {
                        // Idle for too long: closed without a word, as a node does.
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_node_closes_while_idle_are_replaced_without_a_failure() {
    let (addr, accepted) = node(Duration::from_millis(100)).await;
    let gw = start(config(&[("a", addr)], serde_json::json!([]))).await;

    // Back to back: each worker thread (one per core) reuses its one connection.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    for _ in 0..10 {
        let r = get(gw.addr, "/api/x", &[("x-user-id", "u")]).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    let back_to_back = accepted.load(Ordering::Relaxed);
    assert!(
        back_to_back <= workers.min(10),
        "{back_to_back} connections for 10 requests in a row ({workers} workers)"
    );

    // With pauses longer than the node keeps an idle connection: each request finds its
    // connection closed by the node, and goes over a new one.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = get(gw.addr, "/api/x", &[("x-user-id", "u")]).await.unwrap();
        assert_eq!(r.status, 200, "request {i} after a pause: {r:?}");
    }
    let after = accepted.load(Ordering::Relaxed);
    println!(
        "connections: {back_to_back} for 10 requests in a row, {after} after 5 more with pauses"
    );
    assert!(after >= back_to_back + 5, "{after}");
    gw.shutdown().await;
}
