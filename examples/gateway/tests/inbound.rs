//! The gateway's serving of client connections, as clients meet it on real sockets.

mod support;

use std::time::Duration;

use support::{config, start, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upload answered before it was read (413 over a route's `max_body`) gets its answer: the
/// gateway drains what the client still sends instead of resetting the connection, which
/// would fail the client's write of the rest of its upload — and many clients (hyper's among
/// them) report that failure rather than read the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answered_early_gets_its_answer() {
    let a = upstream("a", false).await;
    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["routes"][0]["max_body"] = 1000.into();
    let gw = start(omega_gateway::GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    for attempt in 0..5 {
        // As many clients do (hyper's among them): the whole request first, then the answer.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let head =
            "POST /api/up HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nContent-Length: 67108864\r\n\r\n";
        let mut upload = head.as_bytes().to_vec();
        upload.resize(head.len() + 64 * 1024 * 1024, b'x');
        let sent = tokio::time::timeout(Duration::from_secs(40), s.write_all(&upload))
            .await
            .expect("the upload is taken");
        assert!(
            sent.is_ok(),
            "attempt {attempt}: the upload was cut: {sent:?}"
        );
        let mut answer = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut answer))
            .await
            .expect("the connection ends");
        assert!(
            answer.starts_with(b"HTTP/1.1 413"),
            "attempt {attempt}: sending {sent:?}, reading {ended:?}, {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    gw.shutdown().await;
}
