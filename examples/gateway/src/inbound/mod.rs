//! HTTP/1.1 from clients over plain TCP, read and answered by the gateway itself for the plain
//! case, hyper for everything else.
//!
//! Most requests a proxy serves are HTTP/1.1 without a body (GET, HEAD, DELETE…) on a kept-alive
//! connection. For those the connection's task reads the head into the worker thread's buffer
//! (one per thread, not per connection), turns it into a request with one allocation for the
//! head's bytes, answers it through the gateway's pipeline and writes the response head with
//! the body's first part in one write. An idle connection holds its socket and its task and no
//! buffer: a kept-alive client costs a few KiB, where hyper keeps its read and write buffers
//! and its dispatcher for the connection's whole life.
//!
//! The first request that is anything else — a body, `Expect`, an upgrade (WebSocket, h2c),
//! HTTP/1.0 or HTTP/2, a head over `max_header_bytes` or `max_headers`, bytes that are not
//! HTTP — hands the connection to hyper with the bytes read so far, and hyper serves it from
//! there as it serves every connection over TLS: its answers (400, 431, 100-continue) and its
//! limits stay as they were.
//!
//! `header_timeout` bounds the wait for the next request and for its whole head; a stopping
//! gateway closes idle connections at once and busy ones after their response
//! (`Connection: close`). Like hyper, the gateway does not read a connection while its request
//! is being answered: requests a client pipelines are answered in order.

mod head;
mod replay;
mod respond;

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;
pub(crate) use head::Limits;
use head::Parsed;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How much one read takes (the thread's buffer); a longer head continues in a buffer of the
/// connection's own.
const READ_SIZE: usize = 16 * 1024;

thread_local! {
    /// The worker's read buffer: a head is read into it and parsed before the task waits again.
    static READ: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// What every connection of a worker shares.
pub(crate) struct Server {
    pub shared: Arc<Shared>,
    pub hyper: auto::Builder<TokioExecutor>,
    pub limits: Limits,
    pub header_timeout: Duration,
}

/// Serves one plain-TCP connection until it closes, the client's or the gateway's way.
pub(crate) async fn serve(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let mut conn = Conn {
        stream,
        // Bytes read past a head (pipelined requests) or an unfinished head.
        pending: Vec::new(),
        stop,
    };
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    loop {
        let (req, mut close) = match conn.next_request(&server, timer.as_mut()).await {
            Next::Request(req, close) => (req, close),
            Next::Hyper => {
                let Conn {
                    stream,
                    pending,
                    stop,
                } = conn;
                return hyper(&server, replay::Replay::new(pending, stream), peer, stop).await;
            }
            Next::Close => break,
        };
        let to_head = req.method() == http::Method::HEAD;
        let response = crate::handle(server.shared.clone(), peer, false, req).await;
        close |= *conn.stop.borrow();
        // The connection ends after an answer that closes it, or unannounced when the client
        // went away or the answer broke off.
        let kept = respond::write(&mut conn.stream, to_head, response, close).await;
        if !matches!(kept, Ok(true)) {
            break;
        }
    }
    replay::close(conn.stream);
    Ok(())
}

/// Serves a connection with hyper (HTTP/1.1 with upgrades, or HTTP/2), until it closes or the
/// gateway stops: then hyper finishes the requests it is answering and closes.
pub(crate) async fn hyper<I>(
    server: &Server,
    io: I,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let via_tls = server.shared.tls.is_some();
    let service = hyper_service(server.shared.clone(), peer, via_tls);
    let mut conn = pin!(
        server
            .hyper
            .serve_connection_with_upgrades(TokioIo::new(io), service)
    );
    tokio::select! {
        ended = conn.as_mut() => return ended,
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// The pipeline as hyper's service for one connection.
fn hyper_service(
    shared: Arc<Shared>,
    peer: SocketAddr,
    via_tls: bool,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<Body>, std::convert::Infallible>>
             + Send,
> + Clone {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        // An HTTP/1 request without a body needs no boxed body.
        let bodiless =
            req.version() <= http::Version::HTTP_11 && hyper::body::Body::is_end_stream(req.body());
        let req = req.map(|b| {
            if bodiless {
                Body::empty()
            } else {
                Body::new(b)
            }
        });
        async move { Ok::<_, std::convert::Infallible>(crate::handle(shared, peer, via_tls, req).await) }
    })
}

/// A connection between requests.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
    stop: watch::Receiver<bool>,
}

/// What comes next on a connection.
// Returned once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A plain request, and whether the client asked to close after it.
    Request(http::Request<Body>, bool),
    /// Something for hyper (the bytes read are in `pending`).
    Hyper,
    /// The client closed, went silent past `header_timeout`, or the gateway is stopping.
    Close,
}

impl Conn {
    /// Reads the next request head: from what was read already, else from the socket.
    async fn next_request(
        &mut self,
        server: &Server,
        mut timer: Pin<&mut tokio::time::Sleep>,
    ) -> Next {
        let limits = server.limits;
        if !self.pending.is_empty()
            && let Some(next) = parsed(&mut self.pending, limits)
        {
            return next;
        }
        let (stream, pending) = (&mut self.stream, &mut self.pending);
        let mut deadline = None;
        loop {
            // What the socket holds now: no system call when Tokio knows it holds nothing (a
            // read shorter than the buffer drained it).
            match poll_fn(|cx| Poll::Ready(poll_head(stream, pending, cx, limits))).await {
                Poll::Ready(Ok(Some(next))) => return next,
                Poll::Ready(Ok(None)) => continue,
                Poll::Ready(Err(_)) => return Next::Close,
                Poll::Pending => {}
            }
            // Nothing yet: wait, within `header_timeout` of the first wait.
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + server.header_timeout);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                read = poll_fn(|cx| poll_head(stream, pending, cx, limits)) => match read {
                    Ok(Some(next)) => return next,
                    Ok(None) => {}
                    Err(_) => return Next::Close,
                },
                _ = timer.as_mut() => return Next::Close,
                _ = self.stop.wait_for(|stopped| *stopped) => return Next::Close,
            }
        }
    }
}

/// One read from the socket into the thread's buffer, parsed with what came before it:
/// `Ok(None)` when the head is still unfinished.
fn poll_head(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    cx: &mut Context<'_>,
    limits: head::Limits,
) -> Poll<std::io::Result<Option<Next>>> {
    READ.with_borrow_mut(|buf| {
        let mut read = ReadBuf::new(buf);
        ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
        let read = read.filled();
        if read.is_empty() {
            // Closed by the client, between requests or in the middle of a head.
            return Poll::Ready(Ok(Some(Next::Close)));
        }
        if !pending.is_empty() {
            pending.extend_from_slice(read);
            return Poll::Ready(Ok(parsed(pending, limits)));
        }
        Poll::Ready(Ok(match head::parse(read, limits) {
            Parsed::Request(req, len, close) => {
                pending.extend_from_slice(&read[len..]);
                Some(Next::Request(req, close))
            }
            Parsed::Partial => {
                pending.extend_from_slice(read);
                None
            }
            Parsed::Other => {
                pending.extend_from_slice(read);
                Some(Next::Hyper)
            }
        }))
    })
}

/// The request at the start of `pending`, if its head is complete.
fn parsed(pending: &mut Vec<u8>, limits: head::Limits) -> Option<Next> {
    match head::parse(pending, limits) {
        Parsed::Request(req, len, close) => {
            pending.drain(..len);
            if pending.is_empty() {
                // An idle connection keeps no buffer.
                *pending = Vec::new();
            }
            Some(Next::Request(req, close))
        }
        Parsed::Partial => None,
        Parsed::Other => Some(Next::Hyper),
    }
}
