//! The Redis backend: one standalone server or a Redis Cluster, through redis-rs.
//!
//! [`RedisBackend`] keeps one multiplexed connection per server (on a cluster, one per
//! primary) that every clone and every task shares, and bounds every operation by
//! [`RedisConfig::op_timeout`], so a hung or dead Redis never hangs a request:
//!
//! - while a server's connection is known to be broken, operations on it fail at once with
//!   [`ErrorKind::Unavailable`] instead of waiting for a reconnect;
//! - one supervisor task per server reconnects with jittered exponential backoff, so a
//!   restarting Redis sees one connection attempt per backoff step per process, not one per
//!   request;
//! - several timeouts in a row (a paused or overloaded server) drop the connection too, so
//!   later operations fail fast until the server answers a `PING` again;
//! - a timeout marks the server down; the supervisor then probes it with a `PING` at the
//!   backoff pace, so it is up again as soon as it answers, even if nobody sends an
//!   operation (a layer that checks [`RedisBackend::is_up`] before each call sends none);
//! - [`RedisBackend::health`] reports up/down, since when, and the last error, and
//!   [`RedisBackend::node_health`] the same per server.
//! - the supervisors and the connections run on the tokio runtime the backend was created
//!   on; when that runtime shuts down while the backend lives on (a test suite sharing it
//!   across `#[tokio::test]`s, a program that connects on one runtime and serves on
//!   another), the next operation opens the connections again on its own runtime and starts
//!   the supervisors there, within its operation timeout.
//!
//! ## Redis Cluster
//!
//! Each primary is a server of its own, as above: its own connection, health, fail-fast and
//! supervisor, so a hung or dead primary costs the operations on its slots a timeout only
//! until it is known bad (`timeouts_before_reconnect` timeouts), and costs the other primaries'
//! slots nothing. This is how libmemcached treats the servers of a pool (its server failure
//! limit and retry timeout): a bad server is skipped until it answers again, not the pool.
//! [`RedisBackend::is_up`] and [`RedisBackend::health`] say whether the whole cluster
//! answers; [`RedisBackend::is_up_for`] and [`RedisBackend::node_health`] say it per primary. [`RedisBackend::connect`] needs one seed that answers `CLUSTER SLOTS`
//! within the connect timeout: with a primary down it connects and serves the other slots.
//! The topology is refreshed on a `MOVED`, when a primary is lost, and at the backoff pace
//! while one is down (to notice a failover). Operations are routed by the slot of their key
//! (a script's first key, a pipeline's first key); commands without a key go to any primary,
//! except `SCRIPT LOAD`/`FLUSH`, `FUNCTION LOAD`/`FLUSH`/`DELETE`/`RESTORE`, `CONFIG SET`,
//! `FLUSHALL` and `FLUSHDB`, which go to every primary and must succeed on each. Keys of one
//! command, pipeline or script must share a slot (use one hash tag,
//! [`crate::Keyspace::tagged`]): the node refuses others with `CROSSSLOT`.
//!
//! ## At most once
//!
//! The backend never sends a request again once it may have run. A timeout or a connection
//! lost mid-operation leaves the outcome unknown ([`Error::outcome_unknown`]) and is returned
//! as it is. A request is sent again only when the server said it did not run it: a script
//! answered `NOSCRIPT` (sent again with `EVAL`), and on a cluster a request answered `MOVED`
//! or `ASK` (sent to the node named, with `ASKING` for `ASK`; at most
//! [`MAX_REDIRECTS`] times; a pipeline only when every command was redirected, a `MULTI`
//! pipeline when `EXEC` was aborted). redis-rs's cluster client, whose retries re-send a
//! request after a dropped connection, is not used for operations.

mod cluster;
mod config;
mod conn;
mod dispatch;
mod node;
mod pubsub;
mod route;
mod script;
mod state;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisResult, ServerErrorKind};
use tokio::time::Instant;

pub use config::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_OP_TIMEOUT, RedisConfig};
pub use pubsub::{Subscription, SubscriptionEvent};
/// redis-rs's command builders and value types, for [`RedisBackend::query`] and
/// [`RedisBackend::pipeline`].
pub use redis::{Cmd, FromRedisValue, Pipeline, ToRedisArgs, Value, cmd, pipe};
pub use script::{Script, ScriptCall};

use crate::error::{Error, ErrorKind, Result};
use crate::health::Health;
use crate::keyspace::{Keyspace, hash_slot};
use cluster::Cluster;
use config::{Target, redact};
use conn::{Conn, bad_url};
pub use dispatch::MAX_REDIRECTS;
use dispatch::{Op, Outcome, attempt, failed, fan_out, routed};
use node::Node;
use route::Route;
use state::{Context, jitter, spawn_task};

/// A handle on Redis or Redis Cluster, shared by clones.
#[derive(Clone)]
pub struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    ctx: Arc<Context>,
    mode: Mode,
}

enum Mode {
    Single(Arc<Node>),
    Cluster(Arc<Cluster>),
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Wakes the supervisors so they see the backend is gone and end.
        self.ctx.close();
        match &self.mode {
            Mode::Single(node) => node.wake(),
            Mode::Cluster(cluster) => cluster.wake_all(),
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("target", &self.shared.ctx.target)
            .field("up", &self.is_up())
            .field("op_timeout", &self.shared.ctx.cfg.op_timeout)
            .finish()
    }
}

impl RedisBackend {
    /// Connects and waits for the first connection: fails with a clear error when the URL is
    /// bad or the server cannot be reached within the connect timeout. After that, the backend
    /// reconnects by itself whenever the connection breaks.
    ///
    /// On a cluster it waits for the first seed to answer `CLUSTER SLOTS`, then for every
    /// primary's first connection attempt (all at once, each within the connect timeout): a
    /// primary that is down does not fail the connect; its slots fail fast until it is back.
    ///
    /// Must be called within a tokio runtime.
    pub async fn connect(cfg: RedisConfig) -> Result<Self> {
        let backend = Self::build(cfg)?;
        let ctx = &backend.shared.ctx;
        match &backend.shared.mode {
            Mode::Single(node) => node.open(ctx).await?,
            Mode::Cluster(cluster) => cluster.refresh(ctx).await?,
        }
        backend.spawn_supervisors();
        Ok(backend)
    }

    /// Builds the backend without waiting: the first connection is made in the background,
    /// and operations fail with [`ErrorKind::Unavailable`] until it is up. Only a bad URL or
    /// configuration fails here. Use it when a service must start while Redis is down.
    ///
    /// Must be called within a tokio runtime.
    pub fn connect_lazy(cfg: RedisConfig) -> Result<Self> {
        let backend = Self::build(cfg)?;
        backend.spawn_supervisors();
        Ok(backend)
    }

    fn build(cfg: RedisConfig) -> Result<Self> {
        cfg.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config(
                "the Redis backend must be created inside a tokio runtime",
            ));
        }
        let (ctx, mode) = match cfg.target.clone() {
            Target::Url(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| bad_url(&url, e))?;
                let name: Arc<str> = Arc::from(client.get_connection_info().addr().to_string());
                let ctx = Context::new(cfg, name.clone(), false);
                let node = Node::new(&ctx, name, client);
                (ctx, Mode::Single(node))
            }
            Target::Cluster(seeds) => {
                let cluster = Cluster::new(&seeds)?;
                let names: Vec<String> = seeds.iter().map(|s| redact(s)).collect();
                let target = Arc::from(format!("cluster[{}]", names.join(",")));
                (
                    Context::new(cfg, target, true),
                    Mode::Cluster(Arc::new(cluster)),
                )
            }
        };
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                ctx: Arc::new(ctx),
                mode,
            }),
        })
    }

    /// Starts the backend's tasks on the current runtime: the server's supervisor, or the
    /// cluster's topology task (which starts each primary's supervisor as it connects it).
    fn spawn_supervisors(&self) {
        let ctx = &self.shared.ctx;
        match &self.shared.mode {
            Mode::Single(node) => node.spawn_supervisor(ctx),
            Mode::Cluster(cluster) => {
                // The first round also starts the periodic refresh if a node is down.
                ctx.refresh.notify_one();
                let task = cluster::keep_topology(
                    Arc::downgrade(ctx),
                    Arc::downgrade(cluster),
                    ctx.refresh.clone(),
                    ctx.epoch(),
                );
                spawn_task(ctx, task);
            }
        }
    }

    /// Moves the backend to the current runtime after the one its tasks ran on shut down
    /// (their connections' drivers ran there too): every server's connection is opened again
    /// here, within `deadline`, and the tasks are started again. Operations that come
    /// meanwhile wait for it (within their own deadline).
    #[cold]
    async fn move_here(&self, deadline: Instant) {
        let ctx = &self.shared.ctx;
        let Ok(_moving) = tokio::time::timeout_at(deadline, ctx.moving.lock()).await else {
            return;
        };
        if ctx.next_epoch().is_none() {
            return;
        }
        let nodes: Vec<Arc<Node>> = match &self.shared.mode {
            Mode::Single(node) => vec![node.clone()],
            Mode::Cluster(cluster) => cluster
                .topology()
                .map(|t| t.nodes.clone())
                .unwrap_or_default(),
        };
        let reopen = futures_util::future::join_all(nodes.iter().map(|n| n.reopen(ctx)));
        let _ = tokio::time::timeout_at(deadline, reopen).await;
        if self.is_cluster() {
            nodes.iter().for_each(|n| n.spawn_supervisor(ctx));
        }
        self.spawn_supervisors();
    }

    /// Starts moving the backend to the current runtime in the background, when its tasks
    /// were lost, for callers that look at its health before they send anything.
    fn move_if_lost(&self) {
        if self.shared.ctx.tasks_lost()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && self.shared.ctx.moving.try_lock().is_ok()
        {
            let backend = self.clone();
            let deadline = Instant::now() + self.shared.ctx.cfg.connect_timeout;
            runtime.spawn(async move { backend.move_here(deadline).await });
        }
    }

    /// What this backend talks to: `host:port`, or `cluster[seeds]` (passwords redacted).
    pub fn target(&self) -> &str {
        &self.shared.ctx.target
    }

    /// The keyspace from the configuration.
    pub fn keyspace(&self) -> &Keyspace {
        &self.shared.ctx.cfg.keyspace
    }

    /// The bound on one operation.
    pub fn op_timeout(&self) -> Duration {
        self.shared.ctx.cfg.op_timeout
    }

    /// `true` for a Redis Cluster backend.
    pub fn is_cluster(&self) -> bool {
        matches!(self.shared.mode, Mode::Cluster(_))
    }

    /// `true` while every server answers (on a cluster: every primary, once the topology is
    /// known). A server is down from its first timeout or broken connection until an operation
    /// or the supervisor's probe succeeds. Two atomic loads: cheap enough for a per-request
    /// check. See [`RedisBackend::is_up_for`] for one key.
    pub fn is_up(&self) -> bool {
        self.move_if_lost();
        self.shared.ctx.is_up()
    }

    /// `true` while the server that owns `key` answers: on a cluster, the primary of the key's
    /// slot, whatever the other primaries do; on one server, [`RedisBackend::is_up`]. Costs a
    /// CRC16 of the key and a few atomic loads.
    pub fn is_up_for(&self, key: &[u8]) -> bool {
        self.move_if_lost();
        match &self.shared.mode {
            Mode::Single(node) => node.is_up(),
            Mode::Cluster(cluster) => cluster
                .node_for(Route::Slot(hash_slot(key)))
                .is_some_and(|n| n.is_up()),
        }
    }

    /// How many connection attempts this backend has made (the first one included). The
    /// backoff keeps this low while Redis is down.
    pub fn connect_attempts(&self) -> u64 {
        self.shared.ctx.connect_attempts()
    }

    /// A snapshot of the backend's health: up while every server answers; the last error of
    /// any server.
    pub fn health(&self) -> Health {
        self.shared.ctx.health()
    }

    /// The health of each server, its `target` the server's `host:port`: the one server, or
    /// each primary of the cluster in slot order (empty while the topology is unknown).
    pub fn node_health(&self) -> Vec<Health> {
        match &self.shared.mode {
            Mode::Single(node) => vec![node.health()],
            Mode::Cluster(cluster) => cluster
                .topology()
                .map(|t| t.nodes.iter().map(|n| n.health()).collect())
                .unwrap_or_default(),
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
        let reply = self.run(
            Op::Command,
            || route::of_cmd(cmd),
            1,
            || command_name(cmd),
            |mut conn| async move { cmd.query_async::<Value>(&mut conn).await },
        );
        self.read(reply.await?, || command_name(cmd))
    }

    /// Runs a pipeline (atomically with `MULTI`/`EXEC` when the pipeline says so) within the
    /// operation timeout. On a cluster it goes to the node of its first key.
    pub async fn pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        let replies = if pipe.is_transaction() { 0 } else { pipe.len() };
        let reply = self.run(
            Op::Pipeline,
            || route::of_pipeline(pipe),
            replies,
            || Cow::Borrowed("pipeline"),
            |mut conn| async move { pipe.query_async::<Value>(&mut conn).await },
        );
        self.read(reply.await?, || Cow::Borrowed("pipeline"))
    }

    /// Runs a script call by SHA, falling back to `EVAL` on `NOSCRIPT`; both attempts share
    /// one operation timeout. On a cluster it goes to the node of its first key.
    ///
    /// # When a script may run twice
    ///
    /// One call runs the script at most once: the backend sends it again only after an answer
    /// that says it did not run (`NOSCRIPT`; on a cluster `MOVED` or `ASK`). But a call that
    /// fails with [`ErrorKind::Timeout`] or [`ErrorKind::Disconnected`]
    /// ([`Error::outcome_unknown`]) may have run, or may still run (a paused server runs it
    /// when it resumes): a caller that calls again after such an error may run it twice.
    /// Retry only idempotent scripts, or make the script remember what it did (a request id
    /// it keeps for a while). [`ErrorKind::Unavailable`] and the other errors mean it did not
    /// run (a failing script may have made writes before its error, as Redis scripts do).
    pub async fn eval<T: FromRedisValue>(&self, call: &ScriptCall) -> Result<T> {
        let name = || Cow::Owned(format!("script {}", call.script().name()));
        let reply = self.run(
            Op::Script,
            || {
                call.first_key()
                    .map_or(Route::Any, |k| Route::Slot(hash_slot(k)))
            },
            1,
            name,
            |mut conn| async move {
                match call.command(false).query_async::<Value>(&mut conn).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                        call.command(true).query_async(&mut conn).await
                    }
                    other => other,
                }
            },
        );
        self.read(reply.await?, name)
    }

    /// Reads a reply as the caller's type. It is read after the operation, so that a reply
    /// of another type fails the call ([`ErrorKind::Protocol`]) without counting against the
    /// connection (redis-rs reports it as a parse error, which would drop it).
    fn read<T: FromRedisValue>(
        &self,
        reply: Value,
        op: impl Fn() -> Cow<'static, str>,
    ) -> Result<T> {
        T::from_redis_value(reply).map_err(|e| {
            Error::new(ErrorKind::Protocol, e.to_string())
                .at(&self.shared.ctx.target)
                .during(op())
        })
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
            .at(&self.shared.ctx.target)),
        }
    }

    /// Runs `f` on the connection `route` names, within one operation timeout that covers
    /// redirects. `replies` tells a redirect that nothing ran from one that may have run
    /// (see [`conn::redirect_of`]).
    async fn run<T, F, Fut>(
        &self,
        class: Op,
        route: impl FnOnce() -> Route,
        replies: usize,
        op: impl Fn() -> Cow<'static, str>,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let shared = &*self.shared;
        let ctx = &*shared.ctx;
        let started = Instant::now();
        let deadline = started + ctx.cfg.op_timeout;
        if ctx.tasks_lost() {
            self.move_here(deadline).await;
        }
        let outcome = match &shared.mode {
            Mode::Single(node) => match node.live() {
                None => Err(node.unavailable().during(op())),
                Some((conn, generation)) => {
                    let conn = Conn::Plain(conn);
                    match attempt(ctx, node, conn, generation, deadline, None, &op, &f).await {
                        Outcome::Done(r) => r,
                        Outcome::Redirect(_) => unreachable!("no redirect without a cluster"),
                    }
                }
            },
            Mode::Cluster(cluster) => match route() {
                Route::AllPrimaries => fan_out(ctx, cluster, deadline, &op, &f).await,
                route => routed(ctx, cluster, route, replies, deadline, &op, &f).await,
            },
        };
        #[cfg(feature = "metrics")]
        ctx.metrics.seconds[class as usize].record(started.elapsed().as_secs_f64());
        outcome.map_err(|err| failed(ctx, class, err))
    }
}

fn command_name(cmd: &Cmd) -> Cow<'static, str> {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => Cow::Owned(String::from_utf8_lossy(name).into_owned()),
        _ => Cow::Borrowed("command"),
    }
}
