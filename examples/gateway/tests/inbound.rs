//! The gateway's own HTTP/1.1 serving of plain requests, as clients meet it on real sockets:
//! pipelined requests, heads in pieces, framing of every kind of answer, a connection that
//! moves on to hyper when a request carries a body, and a stopping gateway.

mod support;

use std::time::Duration;

use omega_testkit::http::{Connection, RawResponse, parse_response};
use support::{config, json, start, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads responses off `s` until the server closes it: one per entry of `to_head`.
async fn answers_until_closed(s: &mut TcpStream, to_head: &[bool]) -> Vec<RawResponse> {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    for &h in to_head {
        let (r, used) = parse_response(&raw[at..], h)
            .unwrap_or_else(|| panic!("incomplete: {:?}", String::from_utf8_lossy(&raw[at..])));
        at += used;
        out.push(r);
    }
    assert_eq!(at, raw.len(), "bytes after the last answer");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Three requests in one write; the last asks to close.
    s.write_all(
        b"GET /api/one HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\n\r\n\
          HEAD /api/two HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\n\r\n\
          GET /api/three HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let answers = answers_until_closed(&mut s, &[false, true, false]).await;
    assert_eq!(json(&answers[0])["path"], "/api/one");
    assert_eq!(answers[1].status, 200);
    assert!(answers[1].header("content-length").is_some(), "{answers:?}");
    assert_eq!(json(&answers[2])["path"], "/api/three");
    assert_eq!(answers[2].header("connection"), Some("close"));
    for a in &answers {
        let date = a.header("date").expect("every answer has a Date");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
    }
    gw.shutdown().await;
}

/// A head that arrives a few bytes at a time is read whole; so is one far larger than one
/// read, up to `max_header_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_in_pieces_is_read_whole() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = b"GET /api/pieces HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nConnection: close\r\n\r\n";
    for piece in head.chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answers = answers_until_closed(&mut s, &[false]).await;
    assert_eq!(json(&answers[0])["path"], "/api/pieces");

    let big = "b".repeat(24 * 1024);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!("GET /api/big HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nx-big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let answers = answers_until_closed(&mut s, &[false]).await;
    assert_eq!(json(&answers[0])["headers"]["x-big"], big.as_str());
    gw.shutdown().await;
}

/// Reads the next response off `s` (`raw` keeps what came after it).
async fn next_answer(s: &mut TcpStream, raw: &mut Vec<u8>) -> RawResponse {
    let mut buf = [0u8; 4096];
    loop {
        if let Some((r, used)) = parse_response(raw, false) {
            raw.drain(..used);
            return r;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before an answer");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Plain requests, small uploads that come whole with their head, and uploads that stream
/// share a connection: the first streaming upload hands the connection to hyper, which serves
/// the rest of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_on_to_hyper_at_its_first_streaming_body() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut raw = Vec::new();
    s.write_all(b"GET /api/before HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        json(&next_answer(&mut s, &mut raw).await)["path"],
        "/api/before"
    );
    // Whole with its head.
    s.write_all(
        b"POST /api/small HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let small = json(&next_answer(&mut s, &mut raw).await);
    assert_eq!(
        (small["len"].as_u64(), small["sum"].as_u64()),
        (Some(5), Some(support::checksum(b"hello")))
    );
    // The body comes after the head: hyper's from here on.
    s.write_all(
        b"POST /api/later HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"world").await.unwrap();
    let later = json(&next_answer(&mut s, &mut raw).await);
    assert_eq!(
        (later["len"].as_u64(), later["sum"].as_u64()),
        (Some(5), Some(support::checksum(b"world")))
    );
    s.write_all(b"GET /api/after HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let after = next_answer(&mut s, &mut raw).await;
    assert_eq!(json(&after)["path"], "/api/after");
    assert_eq!(after.header("connection"), Some("close"));
    gw.shutdown().await;
}

/// Streamed answers go out chunked, part by part; 204 and 304 carry no body and keep the
/// connection; a long download arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_answer_is_framed() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let mut c = Connection::open(gw.addr).await.unwrap();
    let user = [("x-user-id", "u")];
    let parts = c.get("/api/two-parts", &user).await.unwrap();
    assert_eq!(parts.header("transfer-encoding"), Some("chunked"));
    assert_eq!(parts.body, b"first second");
    for code in ["204", "304"] {
        let r = c.get(&format!("/api/status/{code}"), &user).await.unwrap();
        assert_eq!(r.status.to_string(), code);
        assert!(r.body.is_empty());
        assert_eq!(r.header("transfer-encoding"), None);
    }
    let size = 3 * 1024 * 1024 + 17;
    let r = c
        .get(&format!("/api/download/{size}"), &user)
        .await
        .unwrap();
    assert_eq!(r.body.len(), size);
    let expected: Vec<u8> = (0..size.div_ceil(65_536))
        .flat_map(|i| support::bytes_of(i as u8, (size - i * 65_536).min(65_536)))
        .collect();
    assert!(r.body == expected, "the download arrived changed");
    let after = c.get("/api/x", &user).await.unwrap();
    assert_eq!(after.status, 200);
    gw.shutdown().await;
}

/// A stopping gateway closes an idle kept-alive connection at once and answers a busy one
/// with `Connection: close` before closing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_closes_idle_connections_and_finishes_busy_ones() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let mut idle = Connection::open(gw.addr).await.unwrap();
    assert_eq!(
        idle.get("/api/x", &[("x-user-id", "u")])
            .await
            .unwrap()
            .status,
        200
    );
    let mut busy = TcpStream::connect(gw.addr).await.unwrap();
    busy.write_all(b"GET /api/slow HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(gw.shutdown());
    let answers = answers_until_closed(&mut busy, &[false]).await;
    assert_eq!(answers[0].body, b"slow done");
    assert_eq!(answers[0].header("connection"), Some("close"));
    let closed = idle.get("/api/x", &[("x-user-id", "u")]).await;
    assert!(closed.is_err(), "an idle connection stays open: {closed:?}");
    stopping.await.unwrap();
}

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

/// The same when the client pauses just as it is answered: the gateway has read all it was
/// sent when it closes, and what the client sends after the pause is drained too, not reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_pauses_as_it_is_answered_early_gets_its_answer() {
    let a = upstream("a", false).await;
    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["routes"][0]["max_body"] = 1000.into();
    let gw = start(omega_gateway::GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head =
        "POST /api/up HTTP/1.1\r\nHost: x\r\nx-user-id: u\r\nContent-Length: 4194304\r\n\r\n";
    let mut first = head.as_bytes().to_vec();
    first.resize(head.len() + 500, b'x');
    s.write_all(&first).await.unwrap();
    // The gateway answers 413 and closes meanwhile, with nothing of this client's left unread.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rest = vec![b'x'; 4 * 1024 * 1024 - 500];
    let sent = tokio::time::timeout(Duration::from_secs(20), s.write_all(&rest))
        .await
        .expect("the rest of the upload is taken");
    assert!(sent.is_ok(), "the rest of the upload was cut: {sent:?}");
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
        .await
        .expect("the connection ends");
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "reading {ended:?}: {:?}",
        String::from_utf8_lossy(&answer)
    );
    gw.shutdown().await;
}
