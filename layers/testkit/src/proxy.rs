//! A fault-injecting TCP proxy.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Size of one read buffer.
const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction before the reader stops reading (backpressure).
const IN_FLIGHT: usize = 64;

/// What the proxy does right now; every connection task watches it.
#[derive(Debug, Clone, Default)]
struct Mode {
    latency: Duration,
    blackhole: bool,
    refuse: bool,
    /// Bumped by [`FaultProxy::reset_connections`]; connections older than it reset.
    reset_generation: u64,
}

/// Why a connection ended.
enum End {
    /// Both directions finished (or one failed); close normally.
    Done,
    /// A direction failed; abort the other side too.
    Failed,
    /// [`FaultProxy::reset_connections`]: RST both sides.
    Reset,
    /// The proxy was dropped.
    Shutdown,
}

/// A TCP proxy between a client and a server that can add latency, swallow bytes and reset
/// connections, to test how clients cope with a slow, silent or flaky network.
///
/// It listens on `127.0.0.1:<random port>`; each accepted connection dials the upstream and
/// forwards both directions. Mode changes reach open connections immediately. Dropping the
/// proxy stops the accept loop and every connection.
///
/// It runs on the Tokio runtime that [`start`](Self::start) is called on; a current-thread
/// runtime (the `#[tokio::test]` default) moves bytes only while the test awaits something.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    cut_replies: Arc<AtomicU32>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port, in normal (pass) mode.
    ///
    /// # Panics
    ///
    /// If it cannot bind a loopback port, or when called outside a Tokio runtime.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|err| panic!("FaultProxy cannot bind a loopback port: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("FaultProxy has no local address: {err}"));
        let (mode, rx) = watch::channel(Mode::default());
        let cut_replies = Arc::new(AtomicU32::new(0));
        let accept = tokio::spawn(accept_loop(listener, upstream, rx, cut_replies.clone()));
        FaultProxy {
            addr,
            mode,
            cut_replies,
            accept,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<port>` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// Delays every chunk forwarded, in both directions, by `latency` (order is kept).
    /// Applies to chunks read from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.mode.send_modify(|mode| mode.latency = latency);
    }

    /// Reads and silently discards all bytes in both directions (also chunks still delayed by
    /// latency); connections stay open, new ones are accepted but get nothing.
    pub fn blackhole(&self) {
        self.mode.send_modify(|mode| mode.blackhole = true);
    }

    /// Back to normal forwarding: no latency, no blackhole, no refusing, no armed reply drop.
    pub fn pass(&self) {
        self.cut_replies.store(0, Ordering::SeqCst);
        self.mode.send_modify(|mode| {
            mode.latency = Duration::ZERO;
            mode.blackhole = false;
            mode.refuse = false;
        });
    }

    /// Closes every open connection with a TCP RST on both sides (client and upstream); new
    /// connections are accepted normally.
    ///
    /// The reset happens on the proxy's tasks: the client sees it on its next read. A write
    /// issued before those tasks ran may still succeed, as on a real network.
    pub fn reset_connections(&self) {
        self.mode.send_modify(|mode| mode.reset_generation += 1);
    }

    /// Lets the next request through and loses its reply: the next chunk the server sends
    /// (on any connection) is discarded and that connection is reset on both sides. The
    /// server has run the request; the client sees its connection drop while waiting for the
    /// answer, the case where a client must not blindly send the request again. Each call
    /// arms one more cut; [`pass`](Self::pass) disarms them.
    pub fn drop_next_reply(&self) {
        self.cut_replies.fetch_add(1, Ordering::SeqCst);
    }

    /// How many cuts armed by [`drop_next_reply`](Self::drop_next_reply) have not happened
    /// yet.
    pub fn pending_reply_drops(&self) -> u32 {
        self.cut_replies.load(Ordering::SeqCst)
    }

    /// When `on`, new connections are accepted and immediately reset; open ones are kept.
    pub fn refuse(&self, on: bool) {
        self.mode.send_modify(|mode| mode.refuse = on);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Connection tasks see the watch sender close and end; the accept loop too, but abort
        // it so the listener goes away as soon as possible.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    cut_replies: Arc<AtomicU32>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // EMFILE and the like: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = client.set_nodelay(true);
                if mode.borrow().refuse {
                    abort(&client);
                    continue;
                }
                tokio::spawn(connection(client, upstream, mode.clone(), cut_replies.clone()));
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Makes dropping `stream` send a RST instead of a FIN.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Resolves when the connection must end because of a reset or the proxy's drop.
async fn interrupted(mut mode: watch::Receiver<Mode>, generation: u64) -> End {
    loop {
        if mode.borrow_and_update().reset_generation != generation {
            return End::Reset;
        }
        if mode.changed().await.is_err() {
            return End::Shutdown;
        }
    }
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    cut_replies: Arc<AtomicU32>,
) {
    let generation = mode.borrow().reset_generation;

    let dialed = tokio::select! {
        dialed = TcpStream::connect(upstream) => dialed,
        _ = interrupted(mode.clone(), generation) => {
            abort(&client);
            return;
        }
    };
    let mut server = match dialed {
        Ok(server) => server,
        Err(_) => {
            // Upstream is down. In blackhole mode the client must see silence, not a reset.
            if mode.borrow().blackhole {
                let _ = tokio::select! {
                    end = interrupted(mode.clone(), generation) => end,
                    _ = swallow_while_blackholed(&mut client, mode.clone()) => End::Done,
                };
            }
            abort(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);

    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let pipes = async {
            tokio::try_join!(
                pipe(client_read, server_write, mode.clone(), None),
                pipe(server_read, client_write, mode.clone(), Some(cut_replies)),
            )
        };
        tokio::select! {
            result = pipes => if result.is_ok() { End::Done } else { End::Failed },
            end = interrupted(mode.clone(), generation) => end,
        }
    };
    match end {
        End::Reset | End::Failed => {
            abort(&client);
            abort(&server);
        }
        End::Done | End::Shutdown => {}
    }
}

/// Reads and discards from `client` until blackhole mode ends or the client goes away.
async fn swallow_while_blackholed(client: &mut TcpStream, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        if !mode.borrow_and_update().blackhole {
            return;
        }
        tokio::select! {
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}

/// A chunk read from one side, due for writing to the other side at `due`.
struct Chunk {
    due: Instant,
    data: Vec<u8>,
}

/// Takes one armed cut, if any.
fn take_cut(cuts: &AtomicU32) -> bool {
    cuts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Forwards one direction: a reader stamps each chunk with its due time, a writer writes
/// chunks in order once due. At end of stream the writer shuts down its side. With `cuts`
/// (the server-to-client direction), an armed cut discards the chunk read and fails the
/// connection, which then resets both sides.
async fn pipe<R, W>(
    mut from: R,
    mut to: W,
    mode: watch::Receiver<Mode>,
    cuts: Option<Arc<AtomicU32>>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Chunk>(IN_FLIGHT);
    let read_mode = mode.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            let (latency, blackhole) = {
                let mode = read_mode.borrow();
                (mode.latency, mode.blackhole)
            };
            if blackhole {
                continue;
            }
            if cuts.as_deref().is_some_and(take_cut) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "reply dropped by FaultProxy::drop_next_reply",
                ));
            }
            let chunk = Chunk {
                due: Instant::now() + latency,
                data: buf[..n].to_vec(),
            };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some(chunk) = rx.recv().await {
            if chunk.due > Instant::now() {
                tokio::time::sleep_until(chunk.due).await;
            }
            if mode.borrow().blackhole {
                continue;
            }
            to.write_all(&chunk.data).await?;
        }
        let _ = to.shutdown().await;
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}
