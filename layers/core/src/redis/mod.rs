//! The Redis backend: one standalone server or a Redis Cluster, through redis-rs.
//!
//! [`RedisBackend`] keeps one multiplexed connection (or one cluster connection) that every
//! clone and every task shares, and bounds every operation by
//! [`RedisConfig::op_timeout`], so a hung or dead Redis never hangs a request:
//!
//! - while the connection is known to be broken, operations fail at once with
//!   [`ErrorKind::Unavailable`] instead of waiting for a reconnect;
//! - a single supervisor task per backend reconnects with jittered exponential backoff, so a
//!   restarting Redis sees one connection attempt per backoff step per process, not one per
//!   request;
//! - several timeouts in a row (a paused or overloaded server) drop the connection too, so
//!   later operations fail fast until the server answers a `PING` again;
//! - [`RedisBackend::health`] reports up/down, since when, and the last error.
//!
//! A timeout or a connection lost mid-operation leaves the outcome unknown
//! ([`Error::outcome_unknown`]): the backend never retries an operation on its own, except a
//! script answered with `NOSCRIPT`, which did not run.

mod config;
mod pubsub;
mod script;

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rand::Rng;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, RedisFuture, ServerErrorKind};
use tokio::sync::Notify;

pub use config::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_OP_TIMEOUT, RedisConfig};
pub use pubsub::{Subscription, SubscriptionEvent};
/// redis-rs's command builders and value types, for [`RedisBackend::query`] and
/// [`RedisBackend::pipeline`].
pub use redis::{Cmd, FromRedisValue, Pipeline, ToRedisArgs, Value, cmd, pipe};
pub use script::{Script, ScriptCall};

use crate::error::{Error, ErrorKind, Result};
use crate::health::{Health, HealthStatus};
use crate::keyspace::Keyspace;
use config::{Target, redact};

/// A handle on Redis or Redis Cluster, shared by clones.
#[derive(Clone)]
pub struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    target: Arc<str>,
    connector: Connector,
    cfg: RedisConfig,
    conn: ArcSwapOption<Live>,
    generation: AtomicU64,
    up: AtomicBool,
    health: Mutex<HealthState>,
    consecutive_timeouts: AtomicU32,
    connect_attempts: AtomicU64,
    wake: Arc<Notify>,
    #[cfg(feature = "metrics")]
    metrics: OpMetrics,
}

/// What kind of operation a Redis call is, for the latency metric's `op` label.
#[derive(Clone, Copy)]
enum Op {
    Command = 0,
    Pipeline = 1,
    Script = 2,
}

/// The backend's metrics, registered once per backend (feature `metrics`):
/// [`crate::metrics::BACKEND_UP`], [`crate::metrics::BACKEND_OP_SECONDS`] per kind of operation,
/// and [`crate::metrics::BACKEND_ERRORS`] (registered when an error first happens).
#[cfg(feature = "metrics")]
struct OpMetrics {
    up: metrics::Gauge,
    seconds: [metrics::Histogram; 3],
}

#[cfg(feature = "metrics")]
impl OpMetrics {
    fn new(target: &str) -> Self {
        let seconds = |op: &'static str| metrics::histogram!(crate::metrics::BACKEND_OP_SECONDS, "target" => target.to_owned(), "op" => op);
        OpMetrics {
            up: metrics::gauge!(crate::metrics::BACKEND_UP, "target" => target.to_owned()),
            seconds: [seconds("command"), seconds("pipeline"), seconds("script")],
        }
    }
}

impl Op {
    #[cfg(feature = "metrics")]
    fn label(self) -> &'static str {
        ["command", "pipeline", "script"][self as usize]
    }
}

struct Live {
    conn: Conn,
    generation: u64,
}

struct HealthState {
    status: HealthStatus,
    since: SystemTime,
    last_error: Option<String>,
}

// One per backend, never moved on a hot path: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Connector {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Wakes the supervisor so it sees the backend is gone and ends.
        self.wake.notify_one();
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.shared.target)
            .field("up", &self.shared.up.load(Ordering::Relaxed))
            .field("op_timeout", &self.shared.cfg.op_timeout)
            .finish()
    }
}

impl RedisBackend {
    /// Connects and waits for the first connection: fails with a clear error when the URL is
    /// bad or the server cannot be reached within the connect timeout. After that, the backend
    /// reconnects by itself whenever the connection breaks.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(cfg: RedisConfig) -> Result<Self> {
        let backend = Self::build(cfg)?;
        let live = backend.shared.open().await?;
        backend.shared.install(live);
        backend.spawn_supervisor(false);
        Ok(backend)
    }

    /// Builds the backend without waiting: the first connection is made in the background,
    /// and operations fail with [`ErrorKind::Unavailable`] until it is up. Only a bad URL or
    /// configuration fails here. Use it when a service must start while Redis is down.
    ///
    /// Must be called within a tokio runtime.
    pub fn connect_lazy(cfg: RedisConfig) -> Result<Self> {
        let backend = Self::build(cfg)?;
        backend.spawn_supervisor(true);
        Ok(backend)
    }

    fn build(cfg: RedisConfig) -> Result<Self> {
        cfg.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "the Redis backend must be created inside a tokio runtime",
            ));
        }
        let (connector, target): (Connector, Arc<str>) = match &cfg.target {
            Target::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| bad_url(url, e))?;
                let name = client.get_connection_info().addr().to_string();
                (Connector::Single(client), Arc::from(name))
            }
            Target::Cluster(seeds) => {
                let client =
                    redis::cluster::ClusterClient::builder(seeds.iter().map(String::as_str))
                        .connection_timeout(cfg.connect_timeout)
                        .response_timeout(cfg.op_timeout)
                        .build()
                        .map_err(|e| bad_url(&seeds.join(","), e))?;
                let names: Vec<String> = seeds.iter().map(|s| redact(s)).collect();
                (
                    Connector::Cluster(client),
                    Arc::from(format!("cluster[{}]", names.join(","))),
                )
            }
        };
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                target: target.clone(),
                connector,
                cfg,
                conn: ArcSwapOption::empty(),
                generation: AtomicU64::new(0),
                up: AtomicBool::new(false),
                health: Mutex::new(HealthState {
                    status: HealthStatus::Down,
                    since: SystemTime::now(),
                    last_error: None,
                }),
                consecutive_timeouts: AtomicU32::new(0),
                connect_attempts: AtomicU64::new(0),
                wake: Arc::new(Notify::new()),
                #[cfg(feature = "metrics")]
                metrics: OpMetrics::new(&target),
            }),
        })
    }

    fn spawn_supervisor(&self, connect_now: bool) {
        let weak = Arc::downgrade(&self.shared);
        let wake = self.shared.wake.clone();
        if connect_now {
            wake.notify_one();
        }
        tokio::spawn(supervise(weak, wake));
    }

    /// What this backend talks to: `host:port`, or `cluster[seeds]` (passwords redacted).
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// The keyspace from the configuration.
    pub fn keyspace(&self) -> &Keyspace {
        &self.shared.cfg.keyspace
    }

    /// The bound on one operation.
    pub fn op_timeout(&self) -> Duration {
        self.shared.cfg.op_timeout
    }

    /// `true` for a Redis Cluster backend.
    pub fn is_cluster(&self) -> bool {
        matches!(self.shared.connector, Connector::Cluster(_))
    }

    /// `true` while the last operation or reconnect probe succeeded. One atomic load: cheap
    /// enough for a per-request check.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// How many connection attempts this backend has made (the first one included). The
    /// backoff keeps this low while Redis is down.
    pub fn connect_attempts(&self) -> u64 {
        self.shared.connect_attempts.load(Ordering::Relaxed)
    }

    /// A snapshot of the backend's health.
    pub fn health(&self) -> Health {
        let h = self
            .shared
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Health {
            status: h.status,
            since: h.since,
            last_error: h.last_error.clone(),
            target: self.shared.target.to_string(),
        }
    }

    /// Runs one command within the operation timeout.
    ///
    /// ```no_run
    /// # async fn f(backend: omega_core::redis::RedisBackend) -> omega_core::Result<()> {
    /// let n: i64 = backend.query(redis::cmd("INCR").arg("omega:hits")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.run(
            Op::Command,
            || command_name(cmd),
            |mut conn| async move { cmd.query_async(&mut conn).await },
        )
        .await
    }

    /// Runs a pipeline (atomically with `MULTI`/`EXEC` when the pipeline says so) within the
    /// operation timeout.
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        self.run(
            Op::Pipeline,
            || Cow::Borrowed("pipeline"),
            |mut conn| async move { pipe.query_async(&mut conn).await },
        )
        .await
    }

    /// Runs a script call by SHA, falling back to `EVAL` on `NOSCRIPT`; both attempts share
    /// one operation timeout.
    pub async fn eval<T: FromRedisValue>(&self, call: &ScriptCall) -> Result<T> {
        self.run(
            Op::Script,
            || Cow::Owned(format!("script {}", call.script().name())),
            |mut conn| async move {
                match call.command(false).query_async(&mut conn).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                        call.command(true).query_async(&mut conn).await
                    }
                    other => other,
                }
            },
        )
        .await
    }

    /// Loads a script into the script cache (`SCRIPT LOAD`), on every primary of a cluster.
    /// Optional: [`RedisBackend::eval`] loads scripts on demand.
    pub async fn load_script(&self, script: &Script) -> Result<()> {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(script.source());
        let sha: Value = self.query(&cmd).await?;
        match sha {
            Value::BulkString(_) | Value::SimpleString(_) | Value::Map(_) | Value::Array(_) => {
                Ok(())
            }
            other => Err(Error::new(
                ErrorKind::Protocol,
                format!("SCRIPT LOAD answered {other:?}"),
            )
            .at(&self.shared.target)),
        }
    }

    async fn run<T, F, Fut>(
        &self,
        class: Op,
        op: impl FnOnce() -> Cow<'static, str>,
        f: F,
    ) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let shared = &*self.shared;
        let (conn, generation) = {
            let guard = shared.conn.load();
            match guard.as_deref() {
                Some(live) => (live.conn.clone(), live.generation),
                None => return Err(shared.failed(class, shared.unavailable().during(op()))),
            }
        };
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(shared.cfg.op_timeout, f(conn)).await;
        #[cfg(feature = "metrics")]
        shared.metrics.seconds[class as usize].record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => {
                shared.on_success();
                Ok(value)
            }
            Ok(Err(e)) => Err(shared.failed(class, shared.on_error(e, generation).during(op()))),
            Err(_elapsed) => {
                let err = Error::timeout(shared.cfg.op_timeout)
                    .at(&shared.target)
                    .during(op());
                shared.on_timeout(&err, generation);
                Err(shared.failed(class, err))
            }
        }
    }
}

impl Shared {
    /// Counts a failed operation (feature `metrics`) and hands its error back.
    fn failed(&self, class: Op, err: Error) -> Error {
        #[cfg(feature = "metrics")]
        metrics::counter!(
            crate::metrics::BACKEND_ERRORS,
            "target" => self.target.to_string(),
            "op" => class.label(),
            "kind" => err.kind().label()
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = class;
        err
    }

    async fn open(&self) -> Result<Live> {
        self.connect_attempts.fetch_add(1, Ordering::Relaxed);
        let attempt = async {
            let mut conn = match &self.connector {
                Connector::Single(client) => {
                    let cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.cfg.connect_timeout))
                        .set_response_timeout(None);
                    Conn::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&cfg)
                            .await?,
                    )
                }
                Connector::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            };
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        let conn = match tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(map_error(e).at(&self.target).during("connect")),
            Err(_) => {
                return Err(Error::timeout(self.cfg.connect_timeout)
                    .at(&self.target)
                    .during("connect"));
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        Ok(Live { conn, generation })
    }

    fn install(&self, live: Live) {
        self.conn.store(Some(Arc::new(live)));
        self.consecutive_timeouts.store(0, Ordering::Relaxed);
        self.mark_up();
    }

    fn unavailable(&self) -> Error {
        let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let since = h
            .since
            .elapsed()
            .map(|d| format!("down for {:?}", Duration::from_millis(d.as_millis() as u64)))
            .unwrap_or_else(|_| "down".to_owned());
        let detail = match &h.last_error {
            Some(e) => format!("{since}, reconnecting; last error: {e}"),
            None => format!("{since}, connecting"),
        };
        Error::new(ErrorKind::Unavailable, detail).at(&self.target)
    }

    fn on_success(&self) {
        if self.consecutive_timeouts.load(Ordering::Relaxed) != 0 {
            self.consecutive_timeouts.store(0, Ordering::Relaxed);
        }
        if !self.up.load(Ordering::Acquire) {
            self.mark_up();
        }
    }

    fn on_error(&self, e: RedisError, generation: u64) -> Error {
        let broken = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error();
        let err = map_error(e).at(&self.target);
        if broken {
            self.mark_down(&err);
            self.invalidate(generation);
        }
        err
    }

    fn on_timeout(&self, err: &Error, generation: u64) {
        let n = self.consecutive_timeouts.fetch_add(1, Ordering::AcqRel) + 1;
        self.mark_down(err);
        if n >= self.cfg.timeouts_before_reconnect {
            self.invalidate(generation);
        }
    }

    /// Drops the connection of `generation` (not a newer one) and wakes the supervisor.
    fn invalidate(&self, generation: u64) {
        if matches!(self.connector, Connector::Cluster(_)) {
            // The cluster connection refreshes its slots and reconnects to nodes by itself.
            return;
        }
        let current = self.conn.load();
        if current.as_ref().is_some_and(|l| l.generation == generation) {
            let prev = self.conn.compare_and_swap(&current, None);
            if prev.as_ref().is_some_and(|l| l.generation == generation) {
                self.wake.notify_one();
            }
        }
    }

    fn mark_up(&self) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if h.status != HealthStatus::Up {
            h.status = HealthStatus::Up;
            h.since = SystemTime::now();
        }
        self.up.store(true, Ordering::Release);
        #[cfg(feature = "metrics")]
        self.metrics.up.set(1.0);
    }

    fn mark_down(&self, err: &Error) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if h.status != HealthStatus::Down {
            h.status = HealthStatus::Down;
            h.since = SystemTime::now();
        }
        h.last_error = Some(err.to_string());
        self.up.store(false, Ordering::Release);
        #[cfg(feature = "metrics")]
        self.metrics.up.set(0.0);
    }
}

/// The one task per backend that re-establishes the connection. It holds only a weak
/// reference, so it ends when the last handle is dropped.
async fn supervise(weak: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(shared) = weak.upgrade() else { return };
        let mut backoff = shared.cfg.backoff_min;
        drop(shared);
        loop {
            let Some(shared) = weak.upgrade() else { return };
            if shared.conn.load().is_some() {
                break;
            }
            match shared.open().await {
                Ok(live) => {
                    shared.install(live);
                    break;
                }
                Err(e) => {
                    shared.mark_down(&e);
                    let max = shared.cfg.backoff_max;
                    drop(shared);
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(max);
                }
            }
        }
    }
}

/// `d` ± 25%.
fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.75..=1.25);
    d.mul_f64(factor)
}

fn command_name(cmd: &Cmd) -> Cow<'static, str> {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => Cow::Owned(String::from_utf8_lossy(name).into_owned()),
        _ => Cow::Borrowed("command"),
    }
}

fn bad_url(url: &str, e: RedisError) -> Error {
    Error::new(ErrorKind::BadUrl, format!("{}: {e}", redact(url)))
}

/// Maps a redis-rs error onto our kinds: timeout vs refused vs protocol vs server.
fn map_error(e: RedisError) -> Error {
    use redis::ErrorKind as K;
    let kind = if e.is_connection_refusal() {
        ErrorKind::Refused
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connection_dropped() {
        ErrorKind::Disconnected
    } else {
        match e.kind() {
            K::Io => ErrorKind::Io,
            K::AuthenticationFailed => ErrorKind::Auth,
            K::Parse | K::UnexpectedReturnType | K::RESP3NotSupported => ErrorKind::Protocol,
            K::InvalidClientConfig => ErrorKind::BadUrl,
            K::ClusterConnectionNotFound => ErrorKind::Cluster,
            K::Server(
                ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::MasterDown,
            ) => ErrorKind::Cluster,
            K::Server(ServerErrorKind::NoPerm) => ErrorKind::Auth,
            _ => ErrorKind::Server,
        }
    };
    Error::new(kind, e.to_string()).with_source(e)
}
