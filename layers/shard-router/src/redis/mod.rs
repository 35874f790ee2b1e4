//! The topology shared through Redis or Redis Cluster (feature `redis`).
//!
//! [`RedisTopology`] keeps the topology and its epoch in one hash (`<prefix>:{shard:<name>}:topology`,
//! one hash tag, so one script changes it on a cluster), changes it with a compare-and-set
//! script, and announces each change on the channel `<prefix>:shard:<name>:changes` with
//! [`RedisBackend::publish`] (`SPUBLISH` on a cluster). [`RedisTopology::spawn_sync`] follows
//! that channel through [`RedisBackend::subscribe`], which keeps the subscription across
//! reconnects; every time the subscription is (re)established the stored topology is read
//! again, so a change announced while a router was not listening is never missed for long.
//! Nothing here opens a connection of its own: the one [`RedisBackend`] handle serves it all.

mod codec;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use omega_core::redis::{RedisBackend, Script, SubscriptionEvent, cmd};
use tokio::task::JoinHandle;

pub use codec::{decode, encode};

use crate::error::{TopologyError, TopologyErrorKind};
use crate::handle::TopologyHandle;
use crate::node::Change;
use crate::topology::Topology;

/// Stores the topology if the stored epoch is still the expected one (`''`: none stored).
const CAS: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'epoch')
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'data', ARGV[3])
  return 1
end
return 0
"#;

fn cas_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new("shard_topology_cas", CAS))
}

/// A shared-topology operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncError {
    /// Redis failed or could not be reached (the local topology is unchanged).
    Redis(omega_core::Error),
    /// The change was invalid, or the stored topology could not be decoded.
    Topology(TopologyError),
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Redis(e) => write!(f, "shared topology: {e}"),
            SyncError::Topology(e) => write!(f, "shared topology: {e}"),
        }
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::Redis(e) => Some(e),
            SyncError::Topology(e) => Some(e),
        }
    }
}

impl From<omega_core::Error> for SyncError {
    fn from(e: omega_core::Error) -> Self {
        SyncError::Redis(e)
    }
}

impl From<TopologyError> for SyncError {
    fn from(e: TopologyError) -> Self {
        SyncError::Topology(e)
    }
}

/// A topology kept in Redis (or Redis Cluster) and mirrored into a local [`TopologyHandle`].
///
/// Redis is the source of truth: change the topology through [`RedisTopology::apply`], not
/// through the handle (a local change would be replaced by the stored topology on the next
/// refresh). If Redis is down when a process starts, [`join`](RedisTopology::join) fails;
/// the process can route on a topology it stores in the handle itself and join later.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use omega_core::redis::{RedisBackend, RedisConfig};
/// use omega_shard_router::{Algorithm, Change, Node, Topology, TopologyHandle};
/// use omega_shard_router::redis::RedisTopology;
///
/// // `redis://host:6379`, or `redis+cluster://h1:7000,h2:7001` for a cluster.
/// let backend = RedisBackend::connect(RedisConfig::parse("redis://127.0.0.1:6379")?).await?;
/// let handle = TopologyHandle::new(Topology::empty(Algorithm::table())?);
/// let shared = RedisTopology::new(backend, "users", handle.clone())?;
/// shared.join(Topology::new(Algorithm::table(), [Node::new("a", "10.0.0.1:80")])?).await?;
/// let _sync = shared.spawn_sync(Duration::from_secs(1));
/// shared.apply(&[Change::Add(Node::new("b", "10.0.0.2:80"))]).await?;
/// assert_eq!(handle.load().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTopology {
    backend: RedisBackend,
    key: Arc<str>,
    channel: Arc<str>,
    handle: TopologyHandle,
}

impl fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTopology")
            .field("key", &self.key)
            .field("channel", &self.channel)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl RedisTopology {
    /// The shared topology `name` (a name as [`omega_core::key::check_name`] allows: 1 to 128
    /// visible ASCII characters, no braces) in `backend`'s keyspace, mirrored into `handle`.
    pub fn new(
        backend: RedisBackend,
        name: &str,
        handle: TopologyHandle,
    ) -> Result<Self, TopologyError> {
        omega_core::key::check_name("topology name", name)
            .map_err(|e| TopologyError::new(TopologyErrorKind::InvalidConfig, e.to_string()))?;
        let ks = backend.keyspace().clone();
        let key = ks.tagged(&format!("shard:{name}"), &["topology"]);
        let channel = ks.key(&["shard", name, "changes"]);
        Ok(RedisTopology {
            backend,
            key: Arc::from(key),
            channel: Arc::from(channel),
            handle,
        })
    }

    /// The local handle.
    pub fn handle(&self) -> &TopologyHandle {
        &self.handle
    }

    /// The key the topology is stored under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The channel changes are announced on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Joins the shared topology: adopts the stored one if there is one, else stores
    /// `initial` (the first router to join seeds it; the others adopt it). Returns the
    /// topology now in the handle.
    pub async fn join(&self, initial: Topology) -> Result<Arc<Topology>, SyncError> {
        if let Some(stored) = self.load().await? {
            self.handle.store(stored.clone());
            return Ok(stored);
        }
        let initial = Arc::new(initial);
        if self.cas(None, &initial).await? {
            self.handle.store(initial.clone());
            return Ok(initial);
        }
        let stored = self.load().await?.ok_or_else(|| {
            TopologyError::new(TopologyErrorKind::Conflict, "the stored topology vanished")
        })?;
        self.handle.store(stored.clone());
        Ok(stored)
    }

    /// Applies `changes` to the stored topology (compare-and-set on its epoch, retried on a
    /// concurrent change), announces the change, and updates the local handle. Once the
    /// change is stored it stands: if the announcement fails, the other routers pick the
    /// change up when their subscription is back or on their next poll.
    pub async fn apply(&self, changes: &[Change]) -> Result<Arc<Topology>, SyncError> {
        for _ in 0..16 {
            // Redis lost the topology (a restart without persistence): re-seed it from the
            // local one.
            let (current, expected) = match self.load().await? {
                Some(t) => {
                    let e = t.epoch();
                    (t, Some(e))
                }
                None => (self.handle.load(), None),
            };
            let next = Arc::new(current.apply(changes)?);
            if self.cas(expected, &next).await? {
                self.handle.store_if_newer(next.clone());
                return Ok(next);
            }
        }
        Err(TopologyError::new(
            TopologyErrorKind::Conflict,
            "the stored topology kept changing; gave up after 16 attempts",
        )
        .into())
    }

    /// Reads the stored epoch and, when it differs from the local one, the stored topology,
    /// which then replaces the local one. Returns whether the local topology changed. When
    /// Redis lost the topology (a restart without persistence), the local one (if it is not
    /// empty) is stored again, so that routers joining later adopt it.
    pub async fn refresh(&self) -> Result<bool, SyncError> {
        let mut hget = cmd("HGET");
        hget.arg(&*self.key).arg("epoch");
        let epoch: Option<u64> = self.backend.query(&hget).await?;
        match epoch {
            Some(e) if e != self.handle.epoch() => match self.load().await? {
                Some(t) => {
                    self.handle.store(t);
                    Ok(true)
                }
                None => Ok(false),
            },
            Some(_) => Ok(false),
            None => {
                let local = self.handle.load();
                if local.epoch() > 0 {
                    self.cas(None, &local).await?;
                }
                Ok(false)
            }
        }
    }

    /// Keeps the local handle in step with Redis in a background task: follows the change
    /// channel (re-reading the stored topology each time the subscription is established,
    /// so nothing announced while it was down is missed) and refreshes every `poll` as a
    /// safety net. Errors (Redis down) leave the last topology in place; the subscription
    /// reconnects with the backend's backoff. Stops when the returned guard is dropped.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn_sync(&self, poll: Duration) -> SyncTask {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut events = this.backend.subscribe(this.channel.clone());
            let mut listening = true;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let refresh = tokio::select! {
                    _ = tick.tick() => true,
                    event = events.next(), if listening => match event {
                        Some(SubscriptionEvent::Subscribed) => true,
                        Some(SubscriptionEvent::Message(epoch)) => this.is_news(&epoch),
                        Some(_) => false,
                        None => {
                            listening = false;
                            false
                        }
                    },
                };
                if refresh {
                    let _ = this.refresh().await;
                }
            }
        });
        SyncTask { task }
    }

    /// Whether an announced epoch differs from the local one (an unreadable announcement
    /// counts as news).
    fn is_news(&self, announced: &[u8]) -> bool {
        let epoch = std::str::from_utf8(announced)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        epoch != Some(self.handle.epoch())
    }

    async fn load(&self) -> Result<Option<Arc<Topology>>, SyncError> {
        let mut hget = cmd("HGET");
        hget.arg(&*self.key).arg("data");
        let data: Option<Vec<u8>> = self.backend.query(&hget).await?;
        match data {
            None => Ok(None),
            Some(bytes) => Ok(Some(Arc::new(decode(&bytes)?))),
        }
    }

    /// Stores `next` if the stored epoch is `expected`, and announces it.
    async fn cas(&self, expected: Option<u64>, next: &Topology) -> Result<bool, SyncError> {
        let epoch = next.epoch().to_string();
        let call = cas_script()
            .call()
            .key(&*self.key)
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(&epoch)
            .arg(encode(next));
        let done: i64 = self.backend.eval(&call).await?;
        if done == 1 {
            // Outside the script: on a cluster the channel lives in another slot.
            let _ = self.backend.publish(&self.channel, epoch.as_bytes()).await;
        }
        Ok(done == 1)
    }
}

/// The background task of [`RedisTopology::spawn_sync`]; dropping it stops the task and its
/// subscription.
#[derive(Debug)]
pub struct SyncTask {
    task: JoinHandle<()>,
}

impl Drop for SyncTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
