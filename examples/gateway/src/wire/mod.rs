//! HTTP/1.1 to `http://` nodes in the request's own task, for requests without a body or with
//! a body of known length.
//!
//! Most proxied requests carry no body (GET, HEAD, DELETE…), and most others say how long it
//! is. For those the gateway writes the request and reads the response itself, on a keep-alive
//! connection of the worker thread that serves the client, inside the task that serves the
//! client: no connection task, no channel to it, no task wake-up between the two sides, one
//! reused 8 KiB read buffer per connection instead of a new one per response. A response whose
//! body has already arrived with its head (a small answer) is handed on whole and its
//! connection goes back to the thread's idle list at once; a longer one streams, and its
//! connection goes back when the last byte has been read. A request body goes out frame by
//! frame while the connection is watched: an early answer (a 413 before the upload is read)
//! reaches the client. Chunked uploads, protocol switches (WebSocket), `https://` and HTTP/2
//! nodes keep hyper's client (see [`crate::pool`]).
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding`
//! (chunked, with trailers) before `Content-Length`; otherwise the body ends when the node
//! closes the connection, which is then not reused. Interim 1xx answers are skipped. A
//! connection is reused only when its response was framed, said nothing of closing and left
//! no byte unread. Taking an idle connection asks Tokio (no system call) whether the node has
//! closed it or written to it since; a request whose reused connection breaks before a byte of
//! answer goes again on a new connection when its method is idempotent and its body was not
//! read yet.

mod body;
mod outgoing;

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Response, StatusCode, Version, request};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::idle::{IdleLists, Usable};

pub use body::NodeBody;

/// How much a read asks for.
const READ_SIZE: usize = 8 * 1024;
/// The largest response head (or chunk-size line, or trailer section) taken from a node.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head or trailer section.
const MAX_HEADERS: usize = 100;

/// Room for the fields the layers add to an answer on its way to the client (a request id,
/// `RateLimit`, `RateLimit-Policy` — one field, a value per limit —, `Cache-Status`): a map
/// sized for the node's fields alone grew, a reallocation and a rehash, once per request
/// behind limits.
const ADDED_FIELDS: usize = 4;

/// Why a node gave no (whole) answer.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made: nothing was sent.
    Connect(std::io::Error),
    /// The connection failed before the response head was complete.
    Io(std::io::Error),
    /// The node closed the connection before the response head was complete.
    Closed,
    /// The node's answer is not HTTP/1.1 as a proxy can pass on.
    Invalid(&'static str),
    /// The node closed the connection, or broke it, in the middle of the body.
    BodyCut,
    /// The client's request body failed while it was being sent (it stalled past the body
    /// timeout, or the client went away).
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "cannot connect: {e}"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Closed => f.write_str("the node closed the connection before answering"),
            Error::Invalid(what) => write!(f, "invalid response from the node: {what}"),
            Error::BodyCut => f.write_str("the node's response body broke off"),
            Error::Body(e) => write!(f, "the request body failed: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) | Error::Io(e) => Some(e),
            Error::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

/// A connection's read buffer, allocated (and zeroed) once and reused: the bytes read and not
/// yet used are `data[start..end]`.
struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn new() -> Self {
        Buffer {
            data: vec![0; READ_SIZE],
            start: 0,
            end: 0,
        }
    }

    /// Drops the first `n` bytes read.
    fn advance(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The first `n` bytes read, copied out.
    fn take(&mut self, n: usize) -> Bytes {
        let bytes = Bytes::copy_from_slice(&self[..n]);
        self.advance(n);
        bytes
    }

    /// Room for the next read: what was read moves to the front, and the buffer grows (up to
    /// twice `MAX_HEAD`) when it holds an unfinished head that fills it.
    fn spare(&mut self) -> &mut [u8] {
        if self.data.len() - self.end < READ_SIZE / 4 && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < 2 * MAX_HEAD {
            self.data.resize(self.data.len() * 2, 0);
        }
        &mut self.data[self.end..]
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }
}

/// One keep-alive connection to a node, with its reused buffers.
struct Conn {
    stream: TcpStream,
    /// What has been read and not yet used.
    buf: Buffer,
    /// The request head being written.
    out: Vec<u8>,
}

impl Conn {
    /// Reads more into the buffer: the number of bytes read, 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut read = ReadBuf::new(self.buf.spare());
        if read.remaining() == 0 {
            return Poll::Ready(Err(std::io::Error::other("read buffer full")));
        }
        std::task::ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.buf.end += n;
        Poll::Ready(Ok(n))
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Whether the node left the idle connection alone: no end of stream, no stray bytes.
    /// Tokio's readiness says so without a system call unless something arrived.
    fn quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// The idle connections of one pool's nodes, one list per worker thread and node.
#[derive(Default)]
pub struct Idle {
    lists: IdleLists<Conn>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").finish_non_exhaustive()
    }
}

/// Sends the request `head` with `body` (of known length; `None`: no body) to the node at
/// `authority` over an idle connection of this thread, or a new one made within
/// `connect_timeout`. The request's URI goes in origin form; a request without `Host` gets the
/// node's authority.
pub async fn send(
    idle: &Arc<Idle>,
    authority: &Authority,
    head: &request::Parts,
    mut body: Option<Body>,
    connect_timeout: Duration,
) -> Result<Response<NodeBody>, Error> {
    let with_body = body.is_some();
    let quiet = |conn: &mut Conn| {
        if conn.quiet() {
            Usable::Ready
        } else {
            Usable::Closed
        }
    };
    if let Some(conn) = idle.lists.take(authority, quiet) {
        match exchange(conn, idle, authority, head, &mut body).await {
            Ok(response) => return Ok(response),
            // The node closed the idle connection as the request went out: once more, on a
            // new connection, when sending it again is harmless and its body was not read.
            Err(Error::Closed | Error::Io(_))
                if head.method.is_idempotent() && (body.is_some() || !with_body) => {}
            Err(e) => return Err(e),
        }
    }
    let conn = connect(authority, connect_timeout).await?;
    exchange(conn, idle, authority, head, &mut body).await
}

async fn connect(authority: &Authority, timeout: Duration) -> Result<Conn, Error> {
    let stream = crate::idle::open(authority, timeout)
        .await
        .map_err(Error::Connect)?;
    Ok(Conn {
        stream,
        buf: Buffer::new(),
        out: Vec::with_capacity(512),
    })
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// What the head of a response says about its body and its connection.
struct Head {
    framing: Framing,
    reusable: bool,
}

fn framing(
    response: &httparse::Response<'_, '_>,
    status: u16,
    to_head: bool,
) -> Result<Head, Error> {
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = response.version == Some(0);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Error::Invalid("Content-Length is not a number"))?;
            if length.is_some_and(|m| m != n) {
                return Err(Error::Invalid("two different Content-Length values"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // The last coding applied is the one that frames the body.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    let framing = if to_head || status == 204 || status == 304 {
        Framing::None
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    // Both framings at once: the body is read by `Transfer-Encoding`, and the connection is
    // not trusted for another message (RFC 9112 §6.3).
    let reusable = !close && framing != Framing::Close && !(transfer_encoding && length.is_some());
    Ok(Head { framing, reusable })
}

/// Writes the request on `conn` and reads the response head.
async fn exchange(
    mut conn: Conn,
    idle: &Arc<Idle>,
    authority: &Authority,
    head: &request::Parts,
    body: &mut Option<Body>,
) -> Result<Response<NodeBody>, Error> {
    let length = body.as_ref().map(|b| http_body::Body::size_hint(b).lower());
    outgoing::encode(&mut conn.out, head, authority, length);
    let whole = match body.take() {
        // The head goes with the body's first part, in one write. Boxed: its state stays out
        // of the future of every bodiless request.
        Some(body) => Box::pin(outgoing::write_with_body(&mut conn, body)).await?,
        None => {
            conn.stream.write_all(&conn.out).await.map_err(Error::Io)?;
            true
        }
    };
    // The answer to a HEAD request has no body, whatever its head says.
    let to_head = head.method == Method::HEAD;
    loop {
        // Nothing to parse before the first read.
        if !conn.buf.is_empty()
            && let Some(response) = parse(&mut conn, to_head)?
        {
            let (response, mut head) = response;
            // A body cut short by the node's early answer leaves the connection unusable.
            head.reusable &= whole;
            return Ok(body::with_body(conn, response, head, idle, authority));
        }
        if conn.buf.len() >= MAX_HEAD {
            return Err(Error::Invalid("response head too large"));
        }
        match conn.fill().await {
            Ok(0) if conn.buf.is_empty() => return Err(Error::Closed),
            Ok(0) => return Err(Error::Invalid("the response head broke off")),
            Ok(_) => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// The response head at the start of `conn`'s buffer, when it is complete (interim 1xx
/// answers skipped). The head, and the body when it came whole, are taken out of the buffer
/// with a single copy.
fn parse(conn: &mut Conn, to_head: bool) -> Result<Option<(Response<Bytes>, Head)>, Error> {
    loop {
        // Left uninitialised: httparse writes the fields it returns (no 3 KiB of zeroes per
        // answer).
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &conn.buf,
            &mut fields,
        );
        let head_len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Error::Invalid("not an HTTP/1.1 response head")),
        };
        let status = response.code.unwrap_or_default();
        if (100..200).contains(&status) {
            if status == 101 {
                return Err(Error::Invalid("the node switched protocols unasked"));
            }
            conn.buf.advance(head_len);
            continue;
        }
        let status = StatusCode::from_u16(status).map_err(|_| Error::Invalid("status code"))?;
        let mut head = framing(&response, status.as_u16(), to_head)?;
        // A small answer is usually all here already: copy it out with its head at once.
        let whole = match head.framing {
            Framing::Length(n) if (conn.buf.len() - head_len) as u64 >= n => Some(n as usize),
            Framing::None => Some(0),
            _ => None,
        };
        let taken = head_len + whole.unwrap_or(0);
        let message = Bytes::copy_from_slice(&conn.buf[..taken]);
        let base = conn.buf.as_ptr() as usize;
        let mut headers = HeaderMap::with_capacity(response.headers.len() + ADDED_FIELDS);
        for h in response.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| Error::Invalid("header name"))?;
            let start = h.value.as_ptr() as usize - base;
            let value = HeaderValue::from_maybe_shared(message.slice(start..start + h.value.len()))
                .map_err(|_| Error::Invalid("header value"))?;
            headers.append(name, value);
        }
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let body = match whole {
            Some(n) => {
                head.framing = Framing::None;
                message.slice(head_len..head_len + n)
            }
            None => Bytes::new(),
        };
        conn.buf.advance(taken);
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some((response, head)));
    }
}
