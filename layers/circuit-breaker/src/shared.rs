//! Breaker state shared across instances through Redis (feature `redis`).
//!
//! Calls never touch Redis: only transitions do, from a spawned task.
//!
//! - When a breaker opens by itself (its window tripped, its probes failed, or HALF_OPEN timed
//!   out), the instance casts a vote in a sorted set of the breaker's name (one member per
//!   instance, scored by the server's time). When the instances that voted within the vote
//!   window reach the quorum (1 by default), the same script stores the breaker's OPEN key
//!   with the OPEN wait as its TTL and publishes the opening on a pub/sub channel.
//! - Every instance subscribes to that channel: a breaker of the same name in CLOSED or
//!   HALF_OPEN opens for the published wait (transition cause [`Cause::Remote`]). Openings that
//!   come from Redis are not published again.
//! - When a breaker closes after successful probes, its vote and the OPEN key are deleted.
//! - When an instance starts (a breaker is attached) or its subscription comes back after an
//!   outage, it reads the OPEN keys, so it learns about circuits opened while it was away.
//! - While Redis is down, every instance decides alone; an opening made meanwhile is voted
//!   once Redis is back (while the breaker is still OPEN), and the subscription reconnects
//!   with backoff.
//!
//! One Redis ([`RedisSync::builder`]) or a Redis Cluster ([`RedisSync::cluster`]) carries the
//! votes and the channel. On a cluster, a breaker's vote set and OPEN key share one hash tag
//! (so one script sees both), the script's `PUBLISH` reaches subscribers on every node, and the
//! subscription is made on one seed at a time, moving to the next when it fails.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use omega_circuit_breaker::CircuitBreaker;
//! use omega_circuit_breaker::shared::RedisSync;
//!
//! let sync = RedisSync::builder("redis://127.0.0.1:6379").quorum(2).build().unwrap();
//! let breaker = CircuitBreaker::new("payments");
//! sync.attach(&breaker);
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use omega_core::Keyspace;
use omega_core::redis::{RedisBackend, RedisConfig, Script};
use tokio::sync::Notify;

use crate::breaker::{CircuitBreaker, Inner};
use crate::event::Cause;
use crate::state::State;

const VOTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  return n
end
return -n
";

/// Shares OPEN transitions of the breakers attached to it through one Redis. Clones share the
/// connection and the subscription.
#[derive(Clone)]
pub struct RedisSync {
    inner: Arc<SyncInner>,
}

struct SyncInner {
    backend: RedisBackend,
    keyspace: Keyspace,
    channel: String,
    instance: String,
    quorum: u32,
    vote_window: Duration,
    script: Script,
    breakers: Mutex<HashMap<Arc<str>, Vec<Weak<Inner>>>>,
    subscribed: AtomicBool,
    attached: AtomicU64,
    subscriptions: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    runtime: tokio::runtime::Handle,
    shutdown: Arc<Notify>,
}

impl Drop for SyncInner {
    fn drop(&mut self) {
        self.shutdown.notify_one();
    }
}

impl std::fmt::Debug for RedisSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSync")
            .field("target", &self.inner.backend.target())
            .field("instance", &self.inner.instance)
            .field("quorum", &self.inner.quorum)
            .field("subscribed", &self.is_subscribed())
            .finish()
    }
}

/// Builds a [`RedisSync`].
pub struct RedisSyncBuilder {
    seeds: Vec<String>,
    cluster: bool,
    keyspace: Option<Keyspace>,
    quorum: u32,
    vote_window: Duration,
    op_timeout: Duration,
    instance: Option<String>,
}

impl std::fmt::Debug for RedisSyncBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Seeds without their credentials.
        let seeds: Vec<&str> = self
            .seeds
            .iter()
            .map(|s| s.rsplit_once('@').map_or(s.as_str(), |(_, host)| host))
            .collect();
        f.debug_struct("RedisSyncBuilder")
            .field("seeds", &seeds)
            .field("cluster", &self.cluster)
            .field("quorum", &self.quorum)
            .field("vote_window", &self.vote_window)
            .finish()
    }
}

impl RedisSyncBuilder {
    /// The keyspace of the keys and of the channel (default: omega-core's default prefix).
    pub fn keyspace(mut self, keyspace: Keyspace) -> Self {
        self.keyspace = Some(keyspace);
        self
    }

    /// Open everywhere only when this many instances have opened the same breaker within the
    /// vote window (default 1: the first opening spreads).
    pub fn quorum(mut self, instances: u32) -> Self {
        self.quorum = instances.max(1);
        self
    }

    /// How long a vote counts (default 60 s).
    pub fn vote_window(mut self, window: Duration) -> Self {
        self.vote_window = window.max(Duration::from_millis(1));
        self
    }

    /// The bound on each Redis operation (default 200 ms). Operations run in background tasks,
    /// never on a call's path.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// This instance's identifier (default: random).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Starts the connection and the subscription in the background; only a bad URL fails
    /// here, so a service starts while Redis is down. Must be called within a tokio runtime.
    pub fn build(self) -> omega_core::Result<RedisSync> {
        let keyspace = match self.keyspace {
            Some(k) => k,
            None => Keyspace::new(omega_core::DEFAULT_PREFIX)?,
        };
        let cfg = if self.cluster {
            RedisConfig::cluster(self.seeds.clone())
        } else {
            RedisConfig::url(self.seeds[0].clone())
        };
        let cfg = cfg
            .op_timeout(self.op_timeout)
            .reconnect_backoff(Duration::from_millis(20), Duration::from_secs(1))
            .keyspace(keyspace.clone());
        let backend = RedisBackend::connect_lazy(cfg)?;
        let clients = self
            .seeds
            .iter()
            .map(|seed| {
                redis::Client::open(seed.as_str())
                    .map_err(|e| omega_core::Error::config(format!("bad Redis URL: {e}")))
            })
            .collect::<omega_core::Result<Vec<_>>>()?;
        let instance = self
            .instance
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let inner = Arc::new(SyncInner {
            backend,
            channel: keyspace.key(&["cb", "events"]),
            keyspace,
            instance,
            quorum: self.quorum,
            vote_window: self.vote_window,
            script: Script::new("circuit_breaker_vote", VOTE),
            breakers: Mutex::new(HashMap::new()),
            subscribed: AtomicBool::new(false),
            attached: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            runtime: tokio::runtime::Handle::current(),
            shutdown: Arc::new(Notify::new()),
        });
        let shutdown = inner.shutdown.clone();
        tokio::spawn(subscribe(Arc::downgrade(&inner), clients, shutdown));
        Ok(RedisSync { inner })
    }
}

impl RedisSync {
    /// Starts a builder for the Redis at `url` (`redis://host:port`).
    pub fn builder(url: impl Into<String>) -> RedisSyncBuilder {
        RedisSyncBuilder {
            seeds: vec![url.into()],
            cluster: false,
            keyspace: None,
            quorum: 1,
            vote_window: Duration::from_secs(60),
            op_timeout: Duration::from_millis(200),
            instance: None,
        }
    }

    /// Starts a builder for the Redis Cluster reachable through `seeds` (`redis://host:port`
    /// each).
    ///
    /// # Panics
    /// When `seeds` is empty.
    pub fn cluster<I, S>(seeds: I) -> RedisSyncBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let seeds: Vec<String> = seeds.into_iter().map(Into::into).collect();
        assert!(!seeds.is_empty(), "a Redis Cluster needs at least one seed");
        RedisSyncBuilder {
            seeds,
            cluster: true,
            keyspace: None,
            quorum: 1,
            vote_window: Duration::from_secs(60),
            op_timeout: Duration::from_millis(200),
            instance: None,
        }
    }

    /// Shares `breaker`'s OPEN transitions with the other instances, under its name. A breaker
    /// is attached to one `RedisSync` at most; later calls do nothing. If the circuit is open
    /// elsewhere, the breaker opens too (in the background).
    pub fn attach(&self, breaker: &CircuitBreaker) {
        let link = Link {
            sync: self.inner.clone(),
            name: breaker.inner.name.clone(),
        };
        if breaker.inner.shared.set(link).is_err() {
            return;
        }
        {
            let mut map = self
                .inner
                .breakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Breakers come and go (a registry evicts idle ones): drop the dead entries now and
            // then, so the map follows the live breakers.
            if self.inner.attached.fetch_add(1, Ordering::Relaxed) % 64 == 63 {
                map.retain(|_, v| {
                    v.retain(|w| w.strong_count() > 0);
                    !v.is_empty()
                });
            }
            let entry = map.entry(breaker.inner.name.clone()).or_default();
            entry.retain(|w| w.strong_count() > 0);
            entry.push(Arc::downgrade(&breaker.inner));
        }
        let inner = self.inner.clone();
        let weak = Arc::downgrade(&breaker.inner);
        self.inner.runtime.spawn(async move {
            // Until Redis answers once (it may be down, or not connected yet).
            let mut backoff = Duration::from_millis(10);
            loop {
                let Some(b) = weak.upgrade() else { return };
                if inner.catch_up(&CircuitBreaker { inner: b }).await {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
    }

    /// `true` while the pub/sub subscription is up.
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    /// How many times the subscription was (re)established.
    pub fn subscriptions(&self) -> u64 {
        self.inner.subscriptions.load(Ordering::Acquire)
    }

    /// Openings this instance published (votes that reached the quorum).
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Acquire)
    }

    /// Openings received from other instances.
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::Acquire)
    }

    /// This instance's identifier.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// The backend used for votes and keys.
    pub fn backend(&self) -> &RedisBackend {
        &self.inner.backend
    }

    /// The Redis key holding the OPEN state of the breaker `name` (its TTL is what is left of
    /// the wait).
    pub fn open_key(&self, name: &str) -> String {
        self.inner.open_key(name)
    }

    /// The Redis key holding the votes for opening the breaker `name`.
    pub fn votes_key(&self, name: &str) -> String {
        self.inner.votes_key(name)
    }
}

/// A breaker's link to its [`RedisSync`].
pub(crate) struct Link {
    sync: Arc<SyncInner>,
    name: Arc<str>,
}

impl Link {
    /// Called (under the breaker's transition lock, so it only spawns) after every transition.
    pub(crate) fn on_transition(
        &self,
        breaker: &CircuitBreaker,
        epoch: u32,
        to: State,
        cause: Cause,
        wait: Duration,
    ) {
        let automatic_open = to == State::Open
            && matches!(
                cause,
                Cause::FailureRate
                    | Cause::SlowCallRate
                    | Cause::ConsecutiveFailures
                    | Cause::ProbesFailed
                    | Cause::HalfOpenTimeout
            );
        let recovered = to == State::Closed && cause == Cause::ProbesSucceeded;
        if !automatic_open && !recovered {
            return;
        }
        let sync = self.sync.clone();
        let name = self.name.clone();
        let weak = Arc::downgrade(&breaker.inner);
        let clock = breaker.inner.clock.clone();
        let started = clock.now();
        self.sync.runtime.spawn(async move {
            // While Redis is down the instance decides alone; the vote (or the cleanup) is
            // retried while the breaker stays in this state, so an opening made during an
            // outage still reaches the others once Redis is back.
            let mut backoff = Duration::from_millis(20);
            loop {
                let done = if automatic_open {
                    let left = wait
                        .saturating_sub(Duration::from_nanos(clock.now().saturating_sub(started)));
                    if left.is_zero() {
                        return;
                    }
                    sync.vote(&name, left).await
                } else {
                    sync.recovered(&name).await
                };
                if done {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                let Some(inner) = weak.upgrade() else { return };
                if !(CircuitBreaker { inner }).in_epoch(epoch) {
                    return;
                }
            }
        });
    }
}

impl SyncInner {
    fn open_key(&self, name: &str) -> String {
        self.keyspace.tagged(name, &["cb", "open"])
    }

    fn votes_key(&self, name: &str) -> String {
        self.keyspace.tagged(name, &["cb", "votes"])
    }

    /// Casts this instance's vote; `false` when Redis could not be reached.
    async fn vote(&self, name: &str, wait: Duration) -> bool {
        let wait_ms = wait.as_millis().max(1);
        let message = format!("open|{}|{}|{}", self.instance, wait_ms, name);
        let call = self
            .script
            .call()
            .key(self.votes_key(name))
            .key(self.open_key(name))
            .arg(&self.instance)
            .arg(self.vote_window.as_millis().max(1) as u64)
            .arg(self.quorum)
            .arg(wait_ms as u64)
            .arg(&self.channel)
            .arg(message);
        match self.backend.eval::<i64>(&call).await {
            Ok(n) => {
                if n > 0 {
                    self.published.fetch_add(1, Ordering::AcqRel);
                }
                true
            }
            Err(_) => false,
        }
    }

    async fn recovered(&self, name: &str) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.votes_key(name))
            .arg(&self.instance)
            .ignore()
            .cmd("DEL")
            .arg(self.open_key(name))
            .ignore();
        self.backend.pipeline::<()>(&pipe).await.is_ok()
    }

    /// Opens `breaker` if its circuit is open in Redis; `false` when Redis did not answer.
    async fn catch_up(&self, breaker: &CircuitBreaker) -> bool {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(self.open_key(breaker.name()));
        match self.backend.query::<i64>(&cmd).await {
            Ok(ms) => {
                if ms > 0 {
                    breaker.open_remote(Duration::from_millis(ms as u64));
                }
                true
            }
            Err(_) => false,
        }
    }

    fn breakers(&self) -> Vec<CircuitBreaker> {
        let mut map = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, v| {
            v.retain(|w| w.strong_count() > 0);
            !v.is_empty()
        });
        map.values()
            .flatten()
            .filter_map(Weak::upgrade)
            .map(|inner| CircuitBreaker { inner })
            .collect()
    }

    fn on_message(&self, payload: &str) {
        let mut parts = payload.splitn(4, '|');
        let (Some("open"), Some(instance), Some(wait), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if instance == self.instance {
            return;
        }
        let Ok(wait_ms) = wait.parse::<u64>() else {
            return;
        };
        let targets: Vec<CircuitBreaker> = self
            .breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|v| {
                v.iter()
                    .filter_map(Weak::upgrade)
                    .map(|inner| CircuitBreaker { inner })
                    .collect()
            })
            .unwrap_or_default();
        for b in targets {
            if b.open_remote(Duration::from_millis(wait_ms)) {
                self.received.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

async fn subscribe(weak: Weak<SyncInner>, clients: Vec<redis::Client>, shutdown: Arc<Notify>) {
    let mut backoff = Duration::from_millis(20);
    let mut next = 0;
    loop {
        let client = &clients[next % clients.len()];
        next += 1;
        let channel = match weak.upgrade() {
            Some(inner) => inner.channel.clone(),
            None => return,
        };
        let connected = tokio::time::timeout(Duration::from_secs(1), async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = connected {
            backoff = Duration::from_millis(20);
            let Some(inner) = weak.upgrade() else { return };
            inner.subscribed.store(true, Ordering::Release);
            inner.subscriptions.fetch_add(1, Ordering::AcqRel);
            // Learn what was opened while we were not listening.
            let mut pending = inner.breakers();
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(10);
                loop {
                    let mut left = Vec::new();
                    for b in pending {
                        if !inner.catch_up(&b).await {
                            left.push(b);
                        }
                    }
                    if left.is_empty() {
                        return;
                    }
                    pending = left;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            });
            let mut stream = pubsub.into_on_message();
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else { break };
                        let Some(inner) = weak.upgrade() else { return };
                        if let Ok(payload) = msg.get_payload::<String>() {
                            inner.on_message(&payload);
                        }
                    }
                    () = shutdown.notified() => return,
                }
            }
            match weak.upgrade() {
                Some(inner) => inner.subscribed.store(false, Ordering::Release),
                None => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.notified() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
