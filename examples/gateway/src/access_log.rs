//! Request ids and the access log.
//!
//! Every request carries an `X-Request-Id`: the client's when it sent a usable one (1 to 200
//! visible ASCII characters), else a new random one (32 hex digits). The node receives it and
//! the client gets it back, so one id follows a request through every tier and its logs.
//!
//! The access log (`"access_log": { "path": "/var/log/omega/access.jsonl" }`, or `"-"` for
//! standard output; off by default) has one JSON line per request, written when its response
//! body has been sent (or abandoned):
//!
//! ```json
//! {"ts":"1764553200.123","request_id":"4f1c…","client":"203.0.113.9","method":"GET",
//!  "path":"/api/users/7","route":"/api","upstream":"users","node":"b","status":200,
//!  "outcome":"proxied","bytes":512,"complete":true,"ms":1.84}
//! ```
//!
//! `outcome` says who answered: `proxied` (a node), `cache` (the route's cache),
//! `rate_limited` (429 from a limit), `unavailable` (no node could take it: open circuits,
//! unreachable nodes), or `refused` (the gateway answered itself: 400, 404, 413, ...).
//! Lines are handed to a writer thread; when it falls behind, lines are dropped and counted in
//! `omega_gateway_access_log_dropped_total` rather than slowing requests down.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};

/// `X-Request-Id`.
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Where the access log goes (`access_log` in the gateway's file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file (appended to, created if missing), or `-` for standard output.
    pub path: PathBuf,
}

/// The request's id: the client's when usable, else a new one written into `headers`.
pub fn request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID)
        && (1..=200).contains(&id.len())
        && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return id.clone();
    }
    // 32 hex digits in one allocation that clones share (the log and the response take one).
    let mut hex = [0u8; 32];
    let mut n = rand::random::<u128>();
    for digit in hex.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
    let id = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
        .expect("hex digits are a valid header value");
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// Which node answered a request (a response extension the proxy sets when the access log
/// is on).
#[derive(Clone, Debug)]
pub struct ServedBy(pub Arc<str>);

/// The access log's writer: lines go to a thread that writes them out.
#[derive(Debug)]
pub struct AccessLog {
    lines: SyncSender<String>,
}

/// Lines waiting for the writer at most; beyond, lines are dropped (and counted).
const BACKLOG: usize = 64 * 1024;

impl AccessLog {
    /// Opens the log's file (or standard output) and starts its writer.
    pub fn open(config: &AccessLogConfig) -> std::io::Result<Arc<AccessLog>> {
        let out: Box<dyn Write + Send> = if config.path.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&config.path)?,
            )
        };
        let (lines, rx) = std::sync::mpsc::sync_channel(BACKLOG);
        std::thread::Builder::new()
            .name("omega-access-log".into())
            .spawn(move || write_lines(rx, out))?;
        Ok(Arc::new(AccessLog { lines }))
    }

    fn record(&self, line: String) {
        match self.lines.try_send(line) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("omega_gateway_access_log_dropped_total").increment(1);
            }
        }
    }
}

/// Writes lines as they come, flushing whenever none is waiting.
fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

/// What is known of a request when its response head is ready.
#[derive(Debug)]
pub struct Entry {
    /// When the request arrived.
    pub started: Instant,
    /// Its id.
    pub request_id: HeaderValue,
    /// The client's address.
    pub client: IpAddr,
    /// Its method.
    pub method: Method,
    /// Its path (normalised).
    pub path: String,
    /// The route's prefix.
    pub route: Option<String>,
    /// The route's pool.
    pub upstream: Option<String>,
}

impl Entry {
    /// Wraps the response's body so that the line is written when the body ends (or is
    /// dropped), with its size and the time taken.
    pub fn finish(
        self,
        log: &Arc<AccessLog>,
        response: http::Response<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        let node = response.extensions().get::<ServedBy>().map(|s| s.0.clone());
        let status = response.status();
        let outcome = match (&node, status) {
            (Some(_), _) => "proxied",
            (None, StatusCode::TOO_MANY_REQUESTS) => "rate_limited",
            (None, _)
                if response
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("; hit")) =>
            {
                "cache"
            }
            (None, s) if s.is_server_error() => "unavailable",
            (None, _) => "refused",
        };
        let pending = Pending {
            line: Some(Line {
                entry: self,
                node,
                status,
                outcome,
            }),
            bytes: 0,
            log: log.clone(),
        };
        response.map(|body| axum::body::Body::new(Logged { body, pending }))
    }
}

struct Line {
    entry: Entry,
    node: Option<Arc<str>>,
    status: StatusCode,
    outcome: &'static str,
}

/// The line of a response whose body is on its way.
struct Pending {
    line: Option<Line>,
    bytes: u64,
    log: Arc<AccessLog>,
}

impl Pending {
    fn write(&mut self, complete: bool) {
        let Some(line) = self.line.take() else { return };
        let e = &line.entry;
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let doc = serde_json::json!({
            "ts": format!("{}.{:03}", ts.as_secs(), ts.subsec_millis()),
            "request_id": e.request_id.to_str().unwrap_or_default(),
            "client": e.client.to_string(),
            "method": e.method.as_str(),
            "path": e.path,
            "route": e.route,
            "upstream": e.upstream,
            "node": line.node.as_deref(),
            "status": line.status.as_u16(),
            "outcome": line.outcome,
            "bytes": self.bytes,
            "complete": complete,
            "ms": (e.started.elapsed().as_secs_f64() * 1e5).round() / 100.0,
        });
        let mut text = doc.to_string();
        text.push('\n');
        self.log.record(text);
    }
}

pin_project_lite::pin_project! {
    struct Logged {
        #[pin]
        body: axum::body::Body,
        pending: Pending,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            // The server drops a body once it has sent all of it (without reading its end
            // when the length is known), or when the client went away or the node's answer
            // broke off.
            let this = this.project();
            let complete = http_body::Body::is_end_stream(&*this.body);
            this.pending.write(complete);
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.pending.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.pending.write(true),
            Poll::Ready(Some(Err(_))) => this.pending.write(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_client_id_is_kept_and_others_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&mut h), "abc-123");
        for bad in ["", "has space", &"x".repeat(201)] {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = request_id(&mut h);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(h[&X_REQUEST_ID], id);
        }
        let (mut a, mut b) = (HeaderMap::new(), HeaderMap::new());
        assert_ne!(request_id(&mut a), request_id(&mut b));
    }
}
