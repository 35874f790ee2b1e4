//! The proxy listener: plain HTTP/1.1 requests read and answered by the gateway itself
//! (`inbound`), everything else (bodies that stream, upgrades, h2c, TLS) on hyper's
//! connection API, with the limits a server at the edge needs, nginx's defaults where nginx
//! has one.
//!
//! | setting (`server` section) | default | over it |
//! |---|---|---|
//! | `header_timeout`: the whole request head, and the wait for the next request on a kept-alive connection | 60 s | connection closed |
//! | `body_timeout`: the wait for the next part of a body, the client's upload or a node's answer | 60 s | 408 for an upload; a stalled answer's connection is closed |
//! | `max_connections`: connections served at once | 10,000 | 503 and close; `omega_gateway_refused_total{reason="connections"}` |
//! | `max_header_bytes`: the request head | 32 KiB | 431; `omega_gateway_refused_total{reason="header_too_large"}` |
//! | `max_headers`: header fields in a request | 100 | 431; the same |
//! | `h2_max_concurrent_streams` | 128 | streams refused |
//! | `h2_max_header_list_size` | 32 KiB | stream refused |
//!
//! | `tunnel_idle_timeout`: an upgraded connection (WebSocket) with no byte either way | 60 s | tunnel closed |
//! | `workers`: threads serving connections, each with its own single-threaded Tokio runtime | the machine's cores | |
//!
//! HTTP/2 rapid resets are bounded by h2's own limit on pending reset streams.
//!
//! Each worker accepts from the same listening socket and serves the connections it accepted
//! on its own thread, with everything a request needs on that thread (no work stealing, no
//! cross-thread wake-up per request); an idle worker is the one the kernel wakes for a new
//! connection. Shared state (limits, breakers, routes) is the same for all of them.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use omega_penta::config::Dur;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Shared;

/// The proxy listener's limits (`server` in the gateway's file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// The longest wait for a whole request head, and for the next request on an idle
    /// kept-alive connection (nginx: `client_header_timeout` 60 s).
    pub header_timeout: Dur,
    /// The longest wait for the next part of a body: a client's request body (answered 408,
    /// nginx's `client_body_timeout`) or a node's response body (the client's connection is
    /// closed, nginx's `proxy_read_timeout`); 60 s.
    pub body_timeout: Dur,
    /// Connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// The largest request head, in bytes (at least 8,192; nginx: 4 × 8 KiB buffers).
    pub max_header_bytes: usize,
    /// The most header fields in one request.
    pub max_headers: usize,
    /// Threads serving connections (default: the machine's cores).
    pub workers: usize,
    /// The longest an upgraded connection (WebSocket) stays open with no byte either way
    /// (nginx: `proxy_read_timeout`, 60 s).
    pub tunnel_idle_timeout: Dur,
    /// Concurrent streams per HTTP/2 connection (nginx: 128).
    pub h2_max_concurrent_streams: u32,
    /// The largest HTTP/2 header list, in bytes.
    pub h2_max_header_list_size: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_timeout: Dur(Duration::from_secs(60)),
            body_timeout: Dur(Duration::from_secs(60)),
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_headers: HYPER_MAX_HEADERS,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            tunnel_idle_timeout: Dur(Duration::from_secs(60)),
            h2_max_concurrent_streams: 128,
            h2_max_header_list_size: 32 * 1024,
        }
    }
}

impl ServerLimits {
    /// Checks what serde cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max_connections: must be at least 1".into());
        }
        if self.max_header_bytes < 8192 {
            return Err("max_header_bytes: must be at least 8192".into());
        }
        if self.workers == 0 || self.workers > 1024 {
            return Err("workers: must be between 1 and 1024".into());
        }
        if self.max_headers == 0 || self.h2_max_concurrent_streams == 0 {
            return Err("max_headers and h2_max_concurrent_streams must be at least 1".into());
        }
        if self.header_timeout.0.is_zero() {
            return Err("header_timeout: must be more than 0s".into());
        }
        if self.tunnel_idle_timeout.0.is_zero() {
            return Err("tunnel_idle_timeout: must be more than 0s".into());
        }
        if self.body_timeout.0.is_zero() {
            return Err("body_timeout: must be more than 0s".into());
        }
        Ok(())
    }
}

/// Serves the proxy on `listener` with `limits.workers` worker threads until `stop` fires;
/// then stops accepting, lets connections finish their requests within `grace`, and ends the
/// rest.
pub(crate) async fn proxy(
    shared: Arc<Shared>,
    listener: TcpListener,
    limits: ServerLimits,
    stop: tokio::sync::oneshot::Receiver<()>,
    grace: Duration,
) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("omega-gateway: the proxy listener cannot be shared by the workers: {e}");
            return;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut done = Vec::new();
    for i in 0..limits.workers {
        let listener = match listener.try_clone() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("omega-gateway: worker {i} gets no listener: {e}");
                continue;
            }
        };
        let (shared, limits, slots, stop) = (
            shared.clone(),
            limits.clone(),
            slots.clone(),
            stop_rx.clone(),
        );
        let (finished_tx, finished) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("omega-gateway-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("omega-gateway: worker {i} has no runtime: {e}");
                        return;
                    }
                };
                runtime.spawn(beat());
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => worker(shared, listener, limits, slots, stop, grace).await,
                        Err(e) => eprintln!("omega-gateway: worker {i} cannot listen: {e}"),
                    }
                });
                // Tasks the worker's requests left behind end with its runtime.
                drop(runtime);
                let _ = finished_tx.send(());
            });
        match spawned {
            Ok(_) => done.push(finished),
            Err(e) => eprintln!("omega-gateway: worker {i} did not start: {e}"),
        }
    }
    drop(listener);
    let _ = stop.await;
    let _ = stop_tx.send(true);
    for finished in done {
        let _ = finished.await;
    }
}

/// hyper's own bound on a request head's fields.
const HYPER_MAX_HEADERS: usize = 100;

/// How often a worker's timer beats (`beat`): shorter than every default timeout.
const BEAT: Duration = Duration::from_millis(500);

/// Keeps a timer due within `BEAT` on a worker's runtime. Tokio's timer wakes its own thread —
/// an eventfd write and one more `epoll_wait` — whenever a timer is set earlier than the
/// earliest one it parked for. A worker waiting on idle connections parks for their
/// `header_timeout` (60 s), so each request's route timeout (30 s) paid that wake-up on a
/// connection making one request at a time. With the beat, the earliest timer is at most
/// `BEAT` away, and a request's timers set no wake-up; the beat itself costs two per second.
async fn beat() {
    let mut beat = tokio::time::interval(BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beat.tick().await;
    }
}

/// One worker: accepts connections from its copy of the listening socket and serves them on
/// its own runtime.
async fn worker(
    shared: Arc<Shared>,
    listener: TcpListener,
    limits: ServerLimits,
    slots: Arc<Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.0)
        .max_buf_size(limits.max_header_bytes);
    // hyper parses a head into an array on the stack at its default bound; any bound set, even
    // that one, moves the array to the heap: an allocation per request.
    if limits.max_headers != HYPER_MAX_HEADERS {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list_size);
    let server = Arc::new(crate::inbound::Server {
        shared,
        hyper: builder,
        limits: crate::inbound::Limits {
            max_bytes: limits.max_header_bytes,
            max_fields: limits.max_headers,
        },
        header_timeout: limits.header_timeout.0,
    });
    let refused = metrics::counter!("omega_gateway_refused_total", "reason" => "connections");
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // pause instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        // Reap finished connection tasks so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            connections.spawn(refuse(stream));
            continue;
        };
        // A proxy writes each part of a response as it arrives: with Nagle's algorithm on,
        // a part written while the previous one is unacknowledged waits for the client's
        // delayed ACK (40 ms on Linux).
        let _ = stream.set_nodelay(true);
        let (server, stop) = (server.clone(), stop.clone());
        match server.shared.tls.as_ref().map(|t| t.get()) {
            None => {
                connections.spawn(async move {
                    count_refusal(crate::inbound::serve(server, stream, peer, stop).await);
                    drop(slot);
                });
            }
            Some(acceptor) => {
                // The handshake is part of the head: it gets `header_timeout`, on the
                // connection's own task.
                let handshake = limits.header_timeout.0;
                connections.spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    count_refusal(crate::inbound::hyper(&server, stream, peer, stop).await);
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    // Idle connections close now, busy ones after their response; at the deadline the rest
    // are ended.
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finished).await.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Counts the refusals hyper answers itself: a request head over `max_header_bytes` or
/// `max_headers` (431), in `omega_gateway_refused_total{reason="header_too_large"}`.
fn count_refusal(ended: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = ended
        && e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse_too_large)
    {
        metrics::counter!("omega_gateway_refused_total", "reason" => "header_too_large")
            .increment(1);
    }
}

/// Answers a connection over `max_connections`: 503, then close.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let _ = stream
        .write_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        )
        .await;
    let _ = stream.shutdown().await;
}
