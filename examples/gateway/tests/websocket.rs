//! WebSockets through the gateway, with a real WebSocket client (tokio-tungstenite) and a real
//! WebSocket server (axum) as the node: the handshake passes the route's limits, the 101 joins
//! the two connections, messages flow both ways, and an idle tunnel is closed. `CONNECT` is
//! refused.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt};
use omega_gateway::GatewayConfig;
use support::{config, start};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket node: echoes every text message, prefixed with its name.
async fn echo_node() -> SocketAddr {
    let app = axum::Router::new().fallback(|ws: WebSocketUpgrade| async move {
        ws.on_upgrade(|mut socket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                if let AxMessage::Text(t) = msg
                    && socket
                        .send(AxMessage::Text(format!("echo: {}", t.as_str()).into()))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        })
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn request(
    addr: SocketAddr,
    user: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/api/chat")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-user-id", user.parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_pass_with_their_handshake_rate_limited() {
    let node = echo_node().await;
    let mut doc = serde_json::to_value(config(
        &[("a", node)],
        serde_json::json!([{ "name": "per_user", "key": { "header": "x-user-id" }, "rate": 1, "per": "60s" }]),
    ))
    .unwrap();
    doc["server"] = serde_json::json!({ "tunnel_idle_timeout": "1s" });
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;

    let (mut ws, response) = tokio_tungstenite::connect_async(request(gw.addr, "ada"))
        .await
        .expect("the handshake passes the gateway");
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            answer.into_text().unwrap().as_str(),
            format!("echo: hello {i}")
        );
    }

    // The same user's second handshake is over its limit: 429, no tunnel.
    match tokio_tungstenite::connect_async(request(gw.addr, "ada")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("a limited handshake got {other:?}"),
    }

    // Silent for longer than tunnel_idle_timeout: the gateway closes the tunnel.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("an idle tunnel stays open");
    println!(
        "an idle tunnel was closed after {:?} (tunnel_idle_timeout 1s): {end:?}",
        started.elapsed()
    );
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_close_when_the_gateway_stops() {
    let node = echo_node().await;
    let gw = start(config(&[("a", node)], serde_json::json!([]))).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(request(gw.addr, "bob"))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    let stopping = tokio::spawn(gw.shutdown());
    let end = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("a tunnel outlives the gateway");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the gateway stops with a tunnel open")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = echo_node().await;
    let gw = start(config(&[("a", node)], serde_json::json!([]))).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    gw.shutdown().await;
}
