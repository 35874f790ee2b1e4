//! The gateway's own HTTP/1.1 client (requests without a body to `http://` nodes) against a
//! node that answers byte for byte as scripted: each framing RFC 9112 allows reaches the client
//! whole, interim answers are skipped, broken answers are a 502 or a cut body, and a node's
//! connection is used again only when its answer said where it ended.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::{config, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node answering each request with the bytes `script` gives for its path, closing the
/// connection afterwards when it says so. It counts connections and keeps each request head.
struct Node {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    heads: Arc<Mutex<Vec<String>>>,
}

async fn node(script: fn(&str) -> (Vec<u8>, bool)) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let mut head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    // A body is read by its length, except where the node answers first.
                    let length = head
                        .to_ascii_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: ")?.parse::<usize>().ok());
                    if let Some(n) = length.filter(|_| !path.starts_with("/api/early")) {
                        while buf.len() < n {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..n).collect();
                        head.push_str(&format!("\r\n[{} body bytes, sum {}]", n, checksum(&body)));
                    }
                    seen.lock().unwrap().push(head);
                    let (answer, close) = script(&path);
                    if socket.write_all(&answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Node {
        addr,
        accepted,
        heads,
    }
}

/// What the client got: status, headers, and the body or the error it ended with.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Result<Vec<u8>, String>,
}

/// One keep-alive connection to the gateway, through hyper's client: requests one after
/// another.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    async fn send(&mut self, method: &str, path: &str) -> Got {
        self.try_send(method, path)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The response, or why the connection ended without one.
    async fn try_send(&mut self, method: &str, path: &str) -> Result<Got, hyper::Error> {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test")
            .header("x-user-id", "u")
            .body(Empty::new())
            .unwrap();
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(req).await?;
        let (parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(c) => Ok(c.to_bytes().to_vec()),
            Err(e) => Err(e.to_string()),
        };
        Ok(Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |s, &b| s.wrapping_mul(31).wrapping_add(u64::from(b)))
}

fn answer(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// 1 MiB of a pattern that shows misplaced bytes.
fn big() -> Vec<u8> {
    (0..1 << 20).map(|i: u32| (i % 251) as u8).collect()
}

fn framings(path: &str) -> (Vec<u8>, bool) {
    match path {
        "/api/length" => (
            answer("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfixed"),
            false,
        ),
        "/api/chunked" => (
            answer(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                 5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
            ),
            false,
        ),
        "/api/close" => (answer("HTTP/1.1 200 OK\r\n\r\nuntil the end"), true),
        "/api/closing" => (
            answer("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 4\r\n\r\nlast"),
            true,
        ),
        "/api/empty" => (answer("HTTP/1.1 204 No Content\r\n\r\n"), false),
        "/api/unchanged" => (
            answer("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 9\r\n\r\n"),
            false,
        ),
        "/api/interim" => (
            answer(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            ),
            false,
        ),
        // HEAD: the length of what a GET would get, and no body.
        "/api/head" => (
            answer("HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n"),
            false,
        ),
        "/api/big-length" => {
            let mut a = answer(&format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                1 << 20
            ));
            a.extend(big());
            (a, false)
        }
        "/api/big-chunked" => {
            let mut a = answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            for part in big().chunks(10_000) {
                a.extend(format!("{:x}\r\n", part.len()).bytes());
                a.extend(part);
                a.extend(b"\r\n");
            }
            a.extend(b"0\r\n\r\n");
            (a, false)
        }
        _ => (
            answer("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            false,
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_arrives_whole_and_framed_answers_keep_their_connection() {
    let node = node(framings).await;
    let gw = start(config(&[("a", node.addr)], serde_json::json!([]))).await;
    let mut client = Client::open(gw.addr).await;

    // Framed answers, one after another on one client connection (one gateway worker): all
    // over one connection to the node.
    for _ in 0..2 {
        let got = client.send("GET", "/api/length").await;
        assert_eq!((got.status, got.body.unwrap()), (200, b"fixed".to_vec()));
        let got = client.send("GET", "/api/chunked").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body.unwrap(), b"hello world");
        let got = client.send("GET", "/api/empty").await;
        assert_eq!((got.status, got.body.unwrap()), (204, vec![]));
        let got = client.send("GET", "/api/unchanged").await;
        assert_eq!((got.status, got.body.unwrap()), (304, vec![]));
        assert_eq!(got.headers["etag"], "\"v1\"");
        let got = client.send("GET", "/api/interim").await;
        assert_eq!((got.status, got.body.unwrap()), (200, b"ok".to_vec()));
        let got = client.send("HEAD", "/api/head").await;
        assert_eq!((got.status, got.body.unwrap()), (200, vec![]));
        assert_eq!(got.headers["content-length"], "20");
        let got = client.send("GET", "/api/big-length").await;
        assert!(got.body.unwrap() == big(), "1 MiB with Content-Length");
        let got = client.send("GET", "/api/big-chunked").await;
        assert!(got.body.unwrap() == big(), "1 MiB chunked");
    }
    assert_eq!(
        node.accepted.load(Ordering::Relaxed),
        1,
        "framed answers reuse"
    );

    // Answers that end with the connection: read to the end, and the connection not used
    // again.
    for _ in 0..3 {
        let got = client.send("GET", "/api/close").await;
        assert_eq!(
            (got.status, got.body.unwrap()),
            (200, b"until the end".to_vec())
        );
        let got = client.send("GET", "/api/closing").await;
        assert_eq!((got.status, got.body.unwrap()), (200, b"last".to_vec()));
    }
    // The first of them went over the connection the framed answers left open.
    assert_eq!(node.accepted.load(Ordering::Relaxed), 6);

    // What the node was sent: the request line in origin form, the client's host forwarded,
    // no framing header for a request without a body.
    let heads = node.heads.lock().unwrap().clone();
    let first = &heads[0];
    assert!(first.starts_with("GET /api/length HTTP/1.1\r\n"), "{first}");
    let lower = first.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-forwarded-host: gateway.test"),
        "{first}"
    );
    assert!(lower.contains("\r\nhost: "), "{first}");
    assert!(!lower.contains("transfer-encoding"), "{first}");
    gw.shutdown().await;
}

fn broken(path: &str) -> (Vec<u8>, bool) {
    match path {
        "/api/garbage" => (answer("this is not HTTP\r\n\r\n"), true),
        "/api/two-lengths" => (
            answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!"),
            true,
        ),
        "/api/silent" => (Vec::new(), true),
        // A head that never ends (100 KB of fields and counting), the connection kept open.
        "/api/endless-head" => {
            let mut a = answer("HTTP/1.1 200 OK\r\n");
            for i in 0..2_000 {
                a.extend(format!("x-field-{i}: {}\r\n", "a".repeat(40)).bytes());
            }
            (a, false)
        }
        "/api/cut" => (
            answer("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly these"),
            true,
        ),
        "/api/cut-chunked" => (
            answer("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n64\r\nonly these"),
            true,
        ),
        _ => (
            answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            false,
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_answers_are_a_bad_gateway_or_a_cut_body() {
    // A gateway each, so that one node's failures do not open the breaker for the next.
    for path in [
        "/api/garbage",
        "/api/two-lengths",
        "/api/silent",
        "/api/endless-head",
    ] {
        let node = node(broken).await;
        let gw = start(config(&[("a", node.addr)], serde_json::json!([]))).await;
        let got = Client::open(gw.addr).await.send("GET", path).await;
        assert_eq!(got.status, 502, "{path}: {:?}", got.body);
        gw.shutdown().await;
    }
    // A body the node cut short: the client's connection breaks off (before or after the
    // head), never a shorter answer that looks whole.
    for path in ["/api/cut", "/api/cut-chunked"] {
        let node = node(broken).await;
        let gw = start(config(&[("a", node.addr)], serde_json::json!([]))).await;
        match Client::open(gw.addr).await.try_send("GET", path).await {
            Err(e) => println!("{path}: the connection closed: {e}"),
            Ok(got) => assert!(got.body.is_err(), "{path}: {} {:?}", got.status, got.body),
        }
        // The gateway is no worse for it.
        let got = Client::open(gw.addr).await.send("GET", "/api/fine").await;
        assert_eq!((got.status, got.body.unwrap()), (200, b"ok".to_vec()));
        gw.shutdown().await;
    }
}

/// Answers, then closes the connection without saying so (`Connection: close` missing), as a
/// node at its `keepalive_requests` bound or restarting does.
fn one_per_connection(_: &str) -> (Vec<u8>, bool) {
    (
        answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
        true,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_node_closed_unannounced_is_replaced_without_a_failure() {
    let node = node(one_per_connection).await;
    let gw = start(config(&[("a", node.addr)], serde_json::json!([]))).await;
    let mut client = Client::open(gw.addr).await;
    for i in 0..50 {
        let got = client.send("GET", "/api/x").await;
        assert_eq!(
            (got.status, got.body.unwrap()),
            (200, b"ok".to_vec()),
            "request {i}"
        );
    }
    let accepted = node.accepted.load(Ordering::Relaxed);
    println!("{accepted} node connections for 50 requests");
    assert!(accepted >= 50, "{accepted}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_wire_client_hands_on_trailers_and_names_the_host() {
    let node = node(framings).await;
    let idle = Arc::new(omega_gateway::wire::Idle::default());
    let authority: http::uri::Authority = node.addr.to_string().parse().unwrap();
    let (head, ()) = http::Request::get("/api/chunked")
        .body(())
        .unwrap()
        .into_parts();
    for _ in 0..3 {
        let response =
            omega_gateway::wire::send(&idle, &authority, &head, None, Duration::from_secs(5))
                .await
                .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "42");
        assert_eq!(collected.to_bytes(), "hello world");
    }
    assert_eq!(node.accepted.load(Ordering::Relaxed), 1);
    // A request without `Host` gets the node's authority.
    let first = node.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        first.contains(&format!("\r\nhost: {}", node.addr)),
        "{first}"
    );
}

fn uploads(path: &str) -> (Vec<u8>, bool) {
    match path {
        "/api/early" => (
            answer("HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big\n"),
            false,
        ),
        _ => (
            answer("HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"),
            false,
        ),
    }
}

/// `POST path` with `body` on `sender`: status and body.
async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let req = http::Request::post(path)
        .header("host", "gateway.test")
        .header("x-user-id", "u")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_go_whole_and_an_early_answer_reaches_the_client() {
    let node = node(uploads).await;
    let gw = start(config(&[("a", node.addr)], serde_json::json!([]))).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Bodies of known length, one after another: whole, by their length, over one node
    // connection.
    for size in [10, 100_000, 1 << 20] {
        let body = big()[..size].to_vec();
        let (status, answer) = post(&mut sender, "/api/upload", body.clone()).await;
        assert_eq!((status, answer), (201, b"ok".to_vec()), "{size} bytes");
        let head = node.heads.lock().unwrap().last().cloned().unwrap();
        let expected = format!("[{size} body bytes, sum {}]", checksum(&body));
        assert!(head.ends_with(&expected), "{size} bytes: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {size}"))
        );
    }
    assert_eq!(node.accepted.load(Ordering::Relaxed), 1);

    // The node answers 413 at once and reads none of a 32 MiB upload (more than the socket
    // buffers between them hold): the client gets the 413, and the node's connection, its body
    // half sent, is not used again.
    let upload: Vec<u8> = big().repeat(32);
    let (status, answer) = post(&mut sender, "/api/early", upload).await;
    assert_eq!((status, answer), (413, b"too big\n".to_vec()));
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (status, _) = post(&mut sender, "/api/upload", b"again".to_vec()).await;
    assert_eq!(status, 201);
    assert_eq!(node.accepted.load(Ordering::Relaxed), 2);
    gw.shutdown().await;
}
