//! Breaker state shared across instances through Redis (feature `redis`).
//!
//! Calls never touch Redis: only transitions do, from a spawned task.
//!
//! - **Votes.** When a breaker trips on its own calls (its window in CLOSED: failure rate,
//!   slow-call rate, consecutive failures; or its probes in HALF_OPEN failed), the instance
//!   casts a vote in a sorted set of the breaker's name: one member per instance id, scored by
//!   the server's time. Nothing else votes: not an opening by hand (`transition_to_open`,
//!   `force_open`), not one learnt from another instance, not a HALF_OPEN that timed out
//!   (no probe answered: no verdict on the dependency, and often no traffic at all).
//! - **Quorum.** When the instances that voted within the vote window reach the quorum
//!   (**2 by default**), the same script stores the breaker's OPEN key (a token naming this
//!   opening, with the OPEN wait as its TTL) and consumes the votes; the instance then
//!   publishes the opening on the breakers' channel. While the key exists, votes are not
//!   recorded (the circuit is open everywhere already). So one instance alone (a fault of its
//!   own: its network, its host, its configuration) never opens its peers, and it cannot
//!   re-open them each cycle with a vote left over from an earlier outage: every shared
//!   opening needs a quorum of fresh votes. Two is the smallest quorum that needs a second
//!   witness; with N instances, a majority (`N / 2 + 1`) is the stricter choice. `quorum(1)`
//!   spreads every opening (the first trip of any instance opens all).
//! - **Instance ids are stable**: by default the host name (from the kernel, or `HOSTNAME`),
//!   so an instance that crashes and restarts votes again under the same id and counts once.
//!   Instances on one host share the id, and so one vote: a fault of the host is one witness.
//!   Several instances per host that should vote apart set [`RedisSyncBuilder::instance_id`]
//!   (for example the host name and the port, or a pod name); it must stay the same across
//!   restarts, or a crash-looping instance votes again under each new id.
//! - **Followers.** Every instance subscribes to the channel: a breaker of the same name in
//!   CLOSED or HALF_OPEN opens for the published wait, jittered by its own `jitter` (so that
//!   the followers do not all probe at the same instant), with the transition cause
//!   [`Cause::Remote`]. Such an opening is not this breaker's: it neither votes nor raises its
//!   own exponential backoff. Openings that come from Redis are not published again.
//! - **Recovery.** When a breaker closes after successful probes, its vote is removed, and the
//!   OPEN key is deleted only if it still holds the opening this breaker made or followed
//!   (compare and delete, in one script): a recovery never ends a later opening, nor one an
//!   operator wrote.
//! - **Manual close and reset** ([`CircuitBreaker::transition_to_closed`],
//!   [`CircuitBreaker::reset`]) are an operator's override: they delete the breaker's OPEN
//!   key and all of its votes, so instances that start later do not open from them. (Other
//!   instances' breakers stay as they are.)
//! - **Catching up.** When a breaker is attached and every time the subscription is
//!   (re)established, the instance reads the OPEN keys, so it learns about circuits opened
//!   while it was away (and follows them as above).
//! - While Redis is down, every instance decides alone; an opening made meanwhile is voted
//!   (and published) once Redis is back, while the breaker is still OPEN.
//!
//! Everything goes through the one [`RedisBackend`] handle the instance already has: its
//! connection, its timeouts, and its subscription ([`RedisBackend::subscribe`]), which
//! reconnects with the backend's backoff. On a Redis Cluster a breaker's vote set and OPEN
//! key share one hash tag (the breaker's name), so the scripts see both, and the channel is a
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
//! let sync = RedisSync::builder(backend)
//!     .instance_id("api-7f9c") // default: the host name
//!     .quorum(2) // the default
//!     .build()?;
//! let breaker = CircuitBreaker::new("payments");
//! sync.attach(&breaker);
//! # Ok(()) }
//! ```
//!
//! [`Cause::Remote`]: crate::Cause::Remote
//! [`CircuitBreaker::transition_to_closed`]: crate::CircuitBreaker::transition_to_closed
//! [`CircuitBreaker::reset`]: crate::CircuitBreaker::reset

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use omega_core::redis::{RedisBackend, Script};
use tokio::sync::Notify;

use crate::breaker::{CircuitBreaker, WeakBreaker};

mod link;
mod listen;
mod ops;

/// The default quorum: a second instance must agree before an opening spreads.
pub const DEFAULT_QUORUM: u32 = 2;

/// Shares OPEN transitions of the breakers attached to it through one Redis (or Redis
/// Cluster). Clones share the subscription.
#[derive(Clone)]
pub struct RedisSync {
    inner: Arc<SyncInner>,
}

struct SyncInner {
    backend: RedisBackend,
    channel: Arc<str>,
    /// The stable id this instance votes under.
    instance: String,
    /// Random per `RedisSync`: tells this instance's own messages from the others' (several
    /// instances may share an id).
    nonce: String,
    /// The start of the tokens that name this instance's openings (its id, without `|`).
    token_prefix: String,
    quorum: u32,
    vote_window: Duration,
    vote_script: Script,
    recovered_script: Script,
    breakers: Mutex<Attached>,
    subscribed: AtomicBool,
    attached: AtomicU64,
    subscriptions: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    keys_read: AtomicU64,
    /// Where tasks go when they are started outside a runtime: the one the sync was built on.
    runtime: tokio::runtime::Handle,
    /// The listener ended with its runtime: the next task started (a transition, an
    /// attachment) or [`RedisSync::is_subscribed`] starts another on the current runtime.
    listener: omega_core::task::Lost,
    shutdown: Arc<Notify>,
}

/// The attached breakers by name. Dead entries (a registry evicts idle breakers) are dropped
/// by a sweep once as many attachments as there are names have passed since the last one, so
/// attaching costs O(1) amortized however many breakers there are.
#[derive(Default)]
struct Attached {
    map: HashMap<Arc<str>, Vec<WeakBreaker>>,
    next_sweep: u64,
}

impl SyncInner {
    /// Spawns `task` on the current runtime (the one the sync was built on, outside any); a
    /// listener lost with its runtime is started again here first.
    fn spawn(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.listen_again();
                runtime.spawn(task);
            }
            Err(_) => drop(self.runtime.spawn(task)),
        }
    }

    /// Starts the listener again on the current runtime when the one before ended with its
    /// own: its first subscription catches up on every attached name, as after any gap.
    fn listen_again(self: &Arc<Self>) {
        if self.listener.take() {
            listen::start(self);
        }
    }
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
    /// Open everywhere only when this many instances (distinct instance ids) have tripped the
    /// same breaker within the vote window. Default [`DEFAULT_QUORUM`] (2): one instance alone
    /// never opens its peers. `1` spreads every opening. See the [module](self) for what
    /// votes.
    pub fn quorum(mut self, instances: u32) -> Self {
        self.quorum = instances.max(1);
        self
    }

    /// How long a vote counts (default 60 s).
    pub fn vote_window(mut self, window: Duration) -> Self {
        self.vote_window = window.max(Duration::from_millis(1));
        self
    }

    /// This instance's id, the one it votes under. It must be the same across restarts (a
    /// crash-looping instance must not vote again under a new id) and differ between the
    /// instances that should count as separate witnesses. Default: the host name (instances
    /// of one host then count once).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Subscribes to the breakers' channel (in the background: a service starts while Redis
    /// is down). The sync's tasks run on the runtime of the call that starts them; its
    /// listener, if the runtime it ran on shuts down while the sync lives on (a test suite
    /// sharing it across `#[tokio::test]`s), is started again on the runtime of the next
    /// transition, attachment or [`RedisSync::is_subscribed`], and catches up on the OPEN
    /// keys as after any gap. Must be called within a tokio runtime; outside one, it fails with a
    /// configuration error, as it does without an instance id when the host name cannot be
    /// read, or with an empty one.
    pub fn build(self) -> omega_core::Result<RedisSync> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            omega_core::Error::config("RedisSync must be built inside a tokio runtime")
        })?;
        let instance = match self.instance {
            Some(id) => id,
            None => host_name().ok_or_else(|| {
                omega_core::Error::config(
                    "RedisSync: the host name cannot be read to name this instance; \
                     set a stable id with `instance_id`",
                )
            })?,
        };
        if instance.trim().is_empty() {
            return Err(omega_core::Error::config(
                "RedisSync: the instance id is empty",
            ));
        }
        let channel: Arc<str> = self.backend.keyspace().key(&["cb", "events"]).into();
        let (vote_script, recovered_script) = ops::scripts();
        let inner = Arc::new(SyncInner {
            backend: self.backend,
            channel,
            token_prefix: instance.replace('|', "_"),
            instance,
            nonce: format!("{:016x}", rand::random::<u64>()),
            quorum: self.quorum,
            vote_window: self.vote_window,
            vote_script,
            recovered_script,
            breakers: Mutex::new(Attached::default()),
            subscribed: AtomicBool::new(false),
            attached: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            keys_read: AtomicU64::new(0),
            runtime,
            listener: omega_core::task::Lost::new(),
            shutdown: Arc::new(Notify::new()),
        });
        listen::start(&inner);
        Ok(RedisSync { inner })
    }
}

/// The host name: the kernel's, else `HOSTNAME` / `COMPUTERNAME`.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

impl RedisSync {
    /// Starts a builder over `backend`, the instance's one Redis handle (standalone or
    /// cluster). Keys and the channel are in the backend's keyspace.
    pub fn builder(backend: RedisBackend) -> RedisSyncBuilder {
        RedisSyncBuilder {
            backend,
            quorum: DEFAULT_QUORUM,
            vote_window: Duration::from_secs(60),
            instance: None,
        }
    }

    /// Shares `breaker`'s OPEN transitions with the other instances, under its name. A breaker
    /// is attached to one `RedisSync` at most; later calls do nothing. If the circuit is open
    /// elsewhere, the breaker opens too (in the background).
    pub fn attach(&self, breaker: &CircuitBreaker) {
        let link = link::Link {
            sync: self.inner.clone(),
            name: breaker.inner.name.clone(),
            known: Arc::default(),
        };
        if !breaker.set_hook(Box::new(link)) {
            return;
        }
        {
            let mut attached = self
                .inner
                .breakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = self.inner.attached.fetch_add(1, Ordering::Relaxed);
            if n >= attached.next_sweep {
                attached.map.retain(|_, v| {
                    v.retain(WeakBreaker::is_alive);
                    !v.is_empty()
                });
                attached.next_sweep = n + (attached.map.len() as u64).max(64);
            }
            let entry = attached.map.entry(breaker.inner.name.clone()).or_default();
            entry.retain(WeakBreaker::is_alive);
            entry.push(breaker.downgrade());
        }
        let sync = Arc::downgrade(&self.inner);
        let target = (breaker.inner.name.clone(), Some(breaker.downgrade()));
        self.inner
            .spawn(listen::catch_up_until_answered(sync, vec![target]));
    }

    /// `true` while the pub/sub subscription is up. Asked on a runtime after the one the
    /// listener ran on shut down, it starts the listener again there (as does the next
    /// transition or attachment).
    pub fn is_subscribed(&self) -> bool {
        self.inner.listen_again();
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

    /// This instance's id, the one it votes under.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// The quorum: how many instances must trip a breaker before its opening spreads.
    pub fn quorum(&self) -> u32 {
        self.inner.quorum
    }

    /// The backend used for votes, keys and the channel.
    pub fn backend(&self) -> &RedisBackend {
        &self.inner.backend
    }

    /// The channel openings are published on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// The Redis key holding the OPEN state of the breaker `name`: the token of the opening,
    /// with what is left of the wait as its TTL.
    pub fn open_key(&self, name: &str) -> String {
        self.inner.open_key(name)
    }

    /// The Redis key holding the votes for opening the breaker `name`.
    pub fn votes_key(&self, name: &str) -> String {
        self.inner.votes_key(name)
    }
}
