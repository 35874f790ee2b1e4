//! One Redis server (a standalone server, or one primary of a cluster): its connection, its
//! health, and the task that keeps both.
//!
//! - An operation takes the installed connection; while there is none (the node is known to
//!   be broken) it fails at once with [`ErrorKind::Unavailable`].
//! - A broken connection, or `timeouts_before_reconnect` timeouts in a row, drop the
//!   connection and wake the node's supervisor, which reconnects with jittered exponential
//!   backoff (a `PING` must answer within the connect timeout).
//! - A timeout marks the node down while its connection is kept (fewer timeouts than the
//!   threshold): the supervisor then probes it with a `PING` at the backoff pace, so the node
//!   comes back up without waiting for an operation to succeed (a layer that gates on
//!   `is_up()` sends none). A probe that times out counts as a timeout.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::RedisError;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::conn::{is_broken, map_error};
use super::state::{Context, HealthState, jitter, spawn_task};
use crate::error::{Error, ErrorKind, Result};
use crate::health::{Health, HealthStatus};

pub(crate) struct Node {
    pub(crate) addr: Arc<str>,
    client: redis::Client,
    conn: ArcSwapOption<Live>,
    generation: AtomicU64,
    up: AtomicBool,
    state: Mutex<NodeState>,
    timeouts: AtomicU32,
    wake: Notify,
}

struct NodeState {
    health: HealthState,
    /// Left the topology: counts no more in the backend's health; its supervisor ends.
    retired: bool,
}

struct Live {
    conn: MultiplexedConnection,
    generation: u64,
}

impl Node {
    /// A node that is down until its first connection is installed; it counts as down in
    /// `ctx` from now on.
    pub(crate) fn new(ctx: &Context, addr: Arc<str>, client: redis::Client) -> Arc<Node> {
        ctx.node_changed(1, None);
        Arc::new(Node {
            addr,
            client,
            conn: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            up: AtomicBool::new(false),
            state: Mutex::new(NodeState {
                health: HealthState::down(),
                retired: false,
            }),
            timeouts: AtomicU32::new(0),
            wake: Notify::new(),
        })
    }

    /// The installed connection and its generation.
    #[inline]
    pub(crate) fn live(&self) -> Option<(MultiplexedConnection, u64)> {
        let guard = self.conn.load();
        guard.as_deref().map(|l| (l.conn.clone(), l.generation))
    }

    #[inline]
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn health(&self) -> Health {
        self.lock().health.snapshot(&self.addr)
    }

    /// Wakes the supervisor (to reconnect, or to notice the backend is gone).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Takes the node out of the backend's health and ends its supervisor.
    pub(crate) fn retire(&self, ctx: &Context) {
        let mut s = self.lock();
        if !s.retired {
            s.retired = true;
            let was_down = !self.up.load(Ordering::Acquire);
            drop(s);
            if was_down {
                ctx.node_changed(-1, None);
            }
        }
        self.wake();
    }

    fn is_retired(&self) -> bool {
        self.lock().retired
    }

    /// The client that connects to this server.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Connects and checks the connection with a `PING`, within the connect timeout.
    pub(crate) async fn open(&self, ctx: &Context) -> Result<()> {
        ctx.count_attempt();
        let timeout = ctx.cfg.connect_timeout;
        let attempt = async {
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(None);
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        let conn = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(map_error(e).at(&self.addr).during("connect")),
            Err(_) => {
                return Err(Error::timeout(timeout).at(&self.addr).during("connect"));
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.conn.store(Some(Arc::new(Live { conn, generation })));
        self.timeouts.store(0, Ordering::Relaxed);
        self.mark_up(ctx);
        Ok(())
    }

    /// Starts the node's supervisor on the current runtime, woken at once when the node has
    /// no connection.
    pub(crate) fn spawn_supervisor(self: &Arc<Self>, ctx: &Arc<Context>) {
        if self.live().is_none() {
            self.wake();
        }
        let task = supervise(Arc::downgrade(ctx), self.clone(), ctx.epoch());
        spawn_task(ctx, task);
    }

    /// Opens a new connection in place of one whose driver ran on a runtime that shut down;
    /// the node is down until it is installed (on failure, the supervisor retries).
    pub(crate) async fn reopen(&self, ctx: &Context) {
        if self.conn.swap(None).is_some() {
            let err = Error::new(
                ErrorKind::Disconnected,
                "the runtime its connection ran on shut down; reconnecting on another",
            )
            .at(&self.addr);
            self.mark_down(ctx, &err);
        }
        if let Err(e) = self.open(ctx).await {
            self.mark_down(ctx, &e);
        }
    }

    /// Why an operation was not sent: the node has no connection.
    pub(crate) fn unavailable(&self) -> Error {
        let s = self.lock();
        let since = s
            .health
            .since
            .elapsed()
            .map(|d| format!("down for {:?}", Duration::from_millis(d.as_millis() as u64)))
            .unwrap_or_else(|_| "down".to_owned());
        let detail = match &s.health.last_error {
            Some(e) => format!("{since}, reconnecting; last error: {e}"),
            None => format!("{since}, connecting"),
        };
        Error::new(ErrorKind::Unavailable, detail).at(&self.addr)
    }

    #[inline]
    pub(crate) fn on_success(&self, ctx: &Context) {
        if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
        if !self.up.load(Ordering::Acquire) {
            self.mark_up(ctx);
        }
    }

    /// Maps `e`; a broken connection (of `generation`) is dropped and the node marked down.
    pub(crate) fn on_error(&self, ctx: &Context, e: RedisError, generation: u64) -> Error {
        let broken = is_broken(&e);
        let err = map_error(e).at(&self.addr);
        if broken {
            self.mark_down(ctx, &err);
            self.invalidate(ctx, generation);
        }
        err
    }

    /// Counts a timeout: the node is marked down, and after `timeouts_before_reconnect` in a
    /// row its connection (of `generation`) is dropped.
    pub(crate) fn on_timeout(&self, ctx: &Context, err: &Error, generation: u64) {
        let n = self.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
        let went_down = self.mark_down(ctx, err);
        if n >= ctx.cfg.timeouts_before_reconnect {
            self.invalidate(ctx, generation);
        } else if went_down {
            // The supervisor probes a node that is down with its connection kept.
            self.wake();
        }
    }

    /// Drops the connection of `generation` (not a newer one) and wakes the supervisor.
    fn invalidate(&self, ctx: &Context, generation: u64) {
        let current = self.conn.load();
        if current.as_ref().is_some_and(|l| l.generation == generation) {
            let prev = self.conn.compare_and_swap(&current, None);
            if prev.as_ref().is_some_and(|l| l.generation == generation) {
                self.wake();
                // On a cluster, the node's slots may have moved (a failover).
                ctx.refresh.notify_one();
            }
        }
    }

    fn mark_up(&self, ctx: &Context) {
        let mut s = self.lock();
        s.health.set(HealthStatus::Up);
        let was_up = self.up.swap(true, Ordering::AcqRel);
        if !was_up && !s.retired {
            drop(s);
            ctx.node_changed(-1, None);
        }
    }

    /// Marks the node down with `err`; `true` if it was up.
    pub(crate) fn mark_down(&self, ctx: &Context, err: &Error) -> bool {
        let mut s = self.lock();
        s.health.set(HealthStatus::Down);
        s.health.last_error = Some(err.to_string());
        let was_up = self.up.swap(false, Ordering::AcqRel);
        let counted = was_up && !s.retired;
        drop(s);
        if counted {
            ctx.node_changed(1, Some(err));
        } else {
            ctx.record(err);
        }
        was_up
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends one `PING` on the installed connection and records the outcome.
    async fn probe(&self, ctx: &Context) {
        let Some((mut conn, generation)) = self.live() else {
            return;
        };
        let ping = redis::cmd("PING");
        let timeout = ctx.cfg.op_timeout;
        match tokio::time::timeout(timeout, ping.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => self.on_success(ctx),
            Ok(Err(e)) => {
                let err = self.on_error(ctx, e, generation).during("PING (probe)");
                self.mark_down(ctx, &err);
            }
            Err(_) => {
                let err = Error::timeout(timeout)
                    .at(&self.addr)
                    .during("PING (probe)");
                self.on_timeout(ctx, &err, generation);
            }
        }
    }
}

/// The one task per node that reconnects it, and probes it while it is marked down with its
/// connection kept. It holds the backend only weakly, so it ends when the last handle is
/// dropped (which wakes it), when the node leaves the topology, and when the backend's tasks
/// moved to another runtime (a newer `epoch`).
pub(crate) async fn supervise(ctx: Weak<Context>, node: Arc<Node>, epoch: u64) {
    let mut probe_delay: Option<Duration> = None;
    loop {
        let probing = node.conn.load().is_some() && !node.is_up();
        match probe_delay {
            Some(delay) if probing => {
                tokio::select! {
                    () = node.wake.notified() => {}
                    () = tokio::time::sleep(jitter(delay)) => {}
                }
            }
            _ => node.wake.notified().await,
        }
        let Some(shared) = ctx.upgrade() else { return };
        if shared.is_closed() || node.is_retired() {
            return;
        }
        if shared.epoch() != epoch {
            // The wake-up may have been meant for the newer supervisor: pass it on.
            node.wake();
            return;
        }
        if node.conn.load().is_none() {
            probe_delay = None;
            drop(shared);
            if !reconnect(&ctx, &node, epoch).await {
                return;
            }
            continue;
        }
        if node.is_up() {
            probe_delay = None;
            continue;
        }
        // Down with its connection kept: the first probe goes out `backoff_min` after the node
        // went down, the next ones at a doubling delay (up to `backoff_max`).
        match probe_delay {
            None => probe_delay = Some(shared.cfg.backoff_min),
            Some(delay) => {
                node.probe(&shared).await;
                probe_delay = if node.is_up() {
                    None
                } else {
                    Some((delay * 2).min(shared.cfg.backoff_max))
                };
            }
        }
    }
}

/// Reconnects with jittered exponential backoff until a connection is installed; `false`
/// when the backend is gone, the node retired or the supervisor's epoch over.
async fn reconnect(ctx: &Weak<Context>, node: &Arc<Node>, epoch: u64) -> bool {
    let Some(shared) = ctx.upgrade() else {
        return false;
    };
    let mut backoff = shared.cfg.backoff_min;
    drop(shared);
    loop {
        let Some(shared) = ctx.upgrade() else {
            return false;
        };
        if shared.is_closed() || node.is_retired() || shared.epoch() != epoch {
            return false;
        }
        if node.conn.load().is_some() {
            return true;
        }
        match node.open(&shared).await {
            Ok(()) => return true,
            Err(e) => {
                node.mark_down(&shared, &e);
                let max = shared.cfg.backoff_max;
                drop(shared);
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}
