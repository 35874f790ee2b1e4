//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once the node has
//! answered `101 Switching Protocols`, the client's connection and the node's are joined and
//! bytes flow both ways until either side closes, nothing has moved for
//! `server.tunnel_idle_timeout` (60 s, nginx's `proxy_read_timeout`), or the gateway shuts down.
//!
//! The handshake is an ordinary request: it passes the route's limits, the shard router and the
//! node's breaker like any other. Open tunnels are counted per route in
//! `omega_gateway_tunnels{route}`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every tunnel of a gateway shares: the signal that ends them all, and their idle
/// timeout.
#[derive(Debug)]
pub struct Tunnels {
    stop: tokio::sync::watch::Sender<bool>,
    idle_timeout: Duration,
}

impl Tunnels {
    /// Tunnels closed after `idle_timeout` without a byte either way.
    pub fn new(idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Tunnels {
            stop: tokio::sync::watch::channel(false).0,
            idle_timeout,
        })
    }

    /// Ends every open tunnel (the gateway is shutting down).
    pub fn close_all(&self) {
        self.stop.send_replace(true);
    }

    /// Joins the client's upgraded connection to the node's, on its own task.
    pub fn open(&self, client: OnUpgrade, node: OnUpgrade, route: &str) {
        let mut stop = self.stop.subscribe();
        let idle_timeout = self.idle_timeout;
        let open = metrics::gauge!("omega_gateway_tunnels", "route" => route.to_owned());
        tokio::spawn(async move {
            let (Ok(client), Ok(node)) = tokio::join!(client, node) else {
                return;
            };
            open.increment(1.0);
            let started = Instant::now();
            let last = AtomicU64::new(0);
            let mut client = Active::new(TokioIo::new(client), &last, started);
            let mut node = Active::new(TokioIo::new(node), &last, started);
            let idle = async {
                loop {
                    let quiet = started
                        .elapsed()
                        .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                    if quiet >= idle_timeout {
                        return;
                    }
                    tokio::time::sleep(idle_timeout - quiet).await;
                }
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut node) => {}
                () = idle => {}
                _ = stop.wait_for(|stopped| *stopped) => {}
            }
            open.decrement(1.0);
        });
    }
}

/// A stream that records when bytes last moved through it.
struct Active<'a, S> {
    inner: S,
    last: &'a AtomicU64,
    started: Instant,
}

impl<'a, S> Active<'a, S> {
    fn new(inner: S, last: &'a AtomicU64, started: Instant) -> Self {
        Active {
            inner,
            last,
            started,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` with an `Upgrade`).
pub fn wants_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::UPGRADE)
        && headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}
