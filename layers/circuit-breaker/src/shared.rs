//! Breaker state shared across instances through Redis (feature `redis`).
//!
//! Calls never touch Redis: only transitions do, from a spawned task.
//!
//! - When a breaker opens by itself (its window tripped, its probes failed, or HALF_OPEN timed
//!   out), the instance casts a vote in a sorted set of the breaker's name (one member per
//!   instance, scored by the server's time). When the instances that voted within the vote
//!   window reach the quorum (1 by default), the same script stores the breaker's OPEN key
//!   with the OPEN wait as its TTL, and the instance then publishes the opening on the
//!   breakers' channel.
//! - Every instance subscribes to that channel: a breaker of the same name in CLOSED or
//!   HALF_OPEN opens for the published wait (transition cause [`Cause::Remote`]). Openings that
//!   come from Redis are not published again.
//! - When a breaker closes after successful probes, its vote and the OPEN key are deleted.
//! - When an instance starts (a breaker is attached) and every time its subscription is
//!   (re)established, it reads the OPEN keys, so it learns about circuits opened while it was
//!   away.
//! - While Redis is down, every instance decides alone; an opening made meanwhile is voted
//!   (and published) once Redis is back, while the breaker is still OPEN.
//!
//! Everything goes through the one [`RedisBackend`] handle the instance already has: its
//! connection, its timeouts, and its subscription ([`RedisBackend::subscribe`]), which
//! reconnects with the backend's backoff. On a Redis Cluster a breaker's vote set and OPEN
//! key share one hash tag (the breaker's name), so the script sees both, and the channel is a
//! sharded channel (`SSUBSCRIBE` / `SPUBLISH`): the opening is published after the script, to
//! the node that owns the channel, never from inside the script.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> omega_core::Result<()> {
//! use omega_circuit_breaker::CircuitBreaker;
//! use omega_circuit_breaker::shared::RedisSync;
//! use omega_core::redis::{RedisBackend, RedisConfig};
//!
//! let backend = RedisBackend::connect(RedisConfig::parse("redis://127.0.0.1:6379")?).await?;
//! let sync = RedisSync::builder(backend).quorum(2).build()?;
//! let breaker = CircuitBreaker::new("payments");
//! sync.attach(&breaker);
//! # Ok(()) }
//! ```
//!
//! [`Cause::Remote`]: crate::Cause::Remote

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use omega_core::redis::{RedisBackend, Script, Subscription, SubscriptionEvent};
use tokio::sync::Notify;

use crate::breaker::{CircuitBreaker, Transition, TransitionHook, WeakBreaker};
use crate::event::Cause;
use crate::state::State;

/// Votes, and stores the OPEN key once the quorum is reached. Returns the number of votes,
/// negative while below the quorum. The caller publishes the opening after it (on a cluster
/// the channel's slot is not the keys' slot).
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
  return n
end
return -n
";

/// How many OPEN keys a catch-up reads at once.
const CATCH_UP_CONCURRENCY: usize = 32;

/// What a catch-up reads: a breaker name, and the one breaker to open (a newly attached one),
/// or every breaker of that name (`None`, after a (re)subscription).
type CatchUp = (Arc<str>, Option<WeakBreaker>);

/// Shares OPEN transitions of the breakers attached to it through one Redis (or Redis
/// Cluster). Clones share the subscription.
#[derive(Clone)]
pub struct RedisSync {
    inner: Arc<SyncInner>,
}

struct SyncInner {
    backend: RedisBackend,
    channel: Arc<str>,
    instance: String,
    quorum: u32,
    vote_window: Duration,
    script: Script,
    breakers: Mutex<HashMap<Arc<str>, Vec<WeakBreaker>>>,
    subscribed: AtomicBool,
    attached: AtomicU64,
    subscriptions: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    keys_read: AtomicU64,
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
#[derive(Debug)]
pub struct RedisSyncBuilder {
    backend: RedisBackend,
    quorum: u32,
    vote_window: Duration,
    instance: Option<String>,
}

impl RedisSyncBuilder {
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

    /// This instance's identifier (default: random).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Subscribes to the breakers' channel (in the background: a service starts while Redis
    /// is down). Must be called within a tokio runtime; outside one, it fails with a
    /// configuration error.
    pub fn build(self) -> omega_core::Result<RedisSync> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            omega_core::Error::config("RedisSync must be built inside a tokio runtime")
        })?;
        let instance = self
            .instance
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let channel: Arc<str> = self.backend.keyspace().key(&["cb", "events"]).into();
        let subscription = self.backend.subscribe(channel.clone());
        let inner = Arc::new(SyncInner {
            backend: self.backend,
            channel,
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
            keys_read: AtomicU64::new(0),
            runtime,
            shutdown: Arc::new(Notify::new()),
        });
        let shutdown = inner.shutdown.clone();
        inner
            .runtime
            .spawn(listen(Arc::downgrade(&inner), subscription, shutdown));
        Ok(RedisSync { inner })
    }
}

impl RedisSync {
    /// Starts a builder over `backend`, the instance's one Redis handle (standalone or
    /// cluster). Keys and the channel are in the backend's keyspace.
    pub fn builder(backend: RedisBackend) -> RedisSyncBuilder {
        RedisSyncBuilder {
            backend,
            quorum: 1,
            vote_window: Duration::from_secs(60),
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
        if !breaker.set_hook(Box::new(link)) {
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
                    v.retain(WeakBreaker::is_alive);
                    !v.is_empty()
                });
            }
            let entry = map.entry(breaker.inner.name.clone()).or_default();
            entry.retain(WeakBreaker::is_alive);
            entry.push(breaker.downgrade());
        }
        let sync = Arc::downgrade(&self.inner);
        let target = (breaker.inner.name.clone(), Some(breaker.downgrade()));
        self.inner
            .runtime
            .spawn(catch_up_until_answered(sync, vec![target]));
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

    /// Openings received from other instances through the channel (not those read when
    /// catching up).
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::Acquire)
    }

    /// How many OPEN keys this instance has read: one per breaker attached, and one per
    /// breaker name on every (re)subscription.
    pub fn open_keys_read(&self) -> u64 {
        self.inner.keys_read.load(Ordering::Acquire)
    }

    /// This instance's identifier.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// The backend used for votes, keys and the channel.
    pub fn backend(&self) -> &RedisBackend {
        &self.inner.backend
    }

    /// The channel openings are published on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
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

/// A breaker's link to its [`RedisSync`]: the breaker's transition hook.
struct Link {
    sync: Arc<SyncInner>,
    name: Arc<str>,
}

impl TransitionHook for Link {
    fn on_transition(&self, breaker: &CircuitBreaker, t: &Transition) {
        let automatic_open = t.to == State::Open
            && matches!(
                t.cause,
                Cause::FailureRate
                    | Cause::SlowCallRate
                    | Cause::ConsecutiveFailures
                    | Cause::ProbesFailed
                    | Cause::HalfOpenTimeout
            );
        let recovered = t.to == State::Closed && t.cause == Cause::ProbesSucceeded;
        if !automatic_open && !recovered {
            return;
        }
        let sync = self.sync.clone();
        let name = self.name.clone();
        let weak = breaker.downgrade();
        let clock = breaker.clock().clone();
        let started = clock.now();
        let (epoch, wait) = (t.epoch, t.open_wait);
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
                if !weak.upgrade().is_some_and(|b| b.in_epoch(epoch)) {
                    return;
                }
            }
        });
    }
}

impl SyncInner {
    fn open_key(&self, name: &str) -> String {
        self.backend.keyspace().tagged(name, &["cb", "open"])
    }

    fn votes_key(&self, name: &str) -> String {
        self.backend.keyspace().tagged(name, &["cb", "votes"])
    }

    /// Casts this instance's vote, and publishes the opening when the quorum is reached;
    /// `false` when Redis could not be reached (the caller tries again).
    async fn vote(&self, name: &str, wait: Duration) -> bool {
        let wait_ms = wait.as_millis().max(1) as u64;
        let call = self
            .script
            .call()
            .key(self.votes_key(name))
            .key(self.open_key(name))
            .arg(&self.instance)
            .arg(self.vote_window.as_millis().max(1) as u64)
            .arg(self.quorum)
            .arg(wait_ms);
        match self.backend.eval::<i64>(&call).await {
            Ok(n) if n > 0 => {
                let message = format!("open|{}|{}|{}", self.instance, wait_ms, name);
                if self
                    .backend
                    .publish(&self.channel, message.as_bytes())
                    .await
                    .is_err()
                {
                    return false;
                }
                self.published.fetch_add(1, Ordering::AcqRel);
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    async fn recovered(&self, name: &str) -> bool {
        // Both keys share the breaker's hash tag: one pipeline, one node on a cluster.
        let mut pipe = omega_core::redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.votes_key(name))
            .arg(&self.instance)
            .ignore()
            .cmd("DEL")
            .arg(self.open_key(name))
            .ignore();
        self.backend.pipeline::<()>(&pipe).await.is_ok()
    }

    /// Reads the OPEN key of `target`'s name and opens its breakers (or the one breaker it
    /// names) if the circuit is open in Redis; `false` when Redis did not answer.
    async fn catch_up(&self, target: &CatchUp) -> bool {
        let (name, only) = target;
        let mut cmd = omega_core::redis::cmd("PTTL");
        cmd.arg(self.open_key(name));
        let Ok(ms) = self.backend.query::<i64>(&cmd).await else {
            return false;
        };
        if ms > 0 {
            let wait = Duration::from_millis(ms as u64);
            match only {
                Some(one) => {
                    if let Some(b) = one.upgrade() {
                        b.open_remote(wait);
                    }
                }
                None => {
                    for b in self.breakers_named(name) {
                        b.open_remote(wait);
                    }
                }
            }
        }
        self.keys_read.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The names of the live attached breakers (dropping the dead entries).
    fn names(&self) -> Vec<Arc<str>> {
        let mut map = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, v| {
            v.retain(WeakBreaker::is_alive);
            !v.is_empty()
        });
        map.keys().cloned().collect()
    }

    fn breakers_named(&self, name: &str) -> Vec<CircuitBreaker> {
        self.breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|v| v.iter().filter_map(WeakBreaker::upgrade).collect())
            .unwrap_or_default()
    }

    fn on_message(&self, payload: &[u8]) {
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
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
        for b in self.breakers_named(name) {
            if b.open_remote(Duration::from_millis(wait_ms)) {
                self.received.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// Follows the subscription: messages open breakers; each (re)subscription catches up.
async fn listen(weak: Weak<SyncInner>, mut subscription: Subscription, shutdown: Arc<Notify>) {
    loop {
        let event = tokio::select! {
            event = subscription.next() => event,
            () = shutdown.notified() => return,
        };
        let Some(event) = event else { return };
        let Some(inner) = weak.upgrade() else { return };
        match event {
            SubscriptionEvent::Subscribed => {
                // Learn what was opened while we were not listening (the breakers attached
                // from now on read their key when they are attached).
                let targets = inner.names().into_iter().map(|n| (n, None)).collect();
                inner.subscribed.store(true, Ordering::Release);
                inner.subscriptions.fetch_add(1, Ordering::AcqRel);
                inner
                    .runtime
                    .spawn(catch_up_until_answered(weak.clone(), targets));
            }
            SubscriptionEvent::Message(payload) => inner.on_message(&payload),
            SubscriptionEvent::Lost => inner.subscribed.store(false, Ordering::Release),
            _ => {}
        }
    }
}

/// Reads the OPEN keys of `pending`, a few at a time, until Redis has answered for each (it
/// may be down, or not connected yet); ends early when the sync is dropped.
async fn catch_up_until_answered(weak: Weak<SyncInner>, mut pending: Vec<CatchUp>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            let inner = &inner;
            pending = futures_util::stream::iter(pending)
                .map(|target| async move { (!inner.catch_up(&target).await).then_some(target) })
                .buffer_unordered(CATCH_UP_CONCURRENCY)
                .filter_map(std::future::ready)
                .collect()
                .await;
        }
        if pending.is_empty() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
