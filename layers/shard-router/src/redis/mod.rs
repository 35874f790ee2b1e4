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
//!
//! **Epochs only move forward.** A router adopts a stored topology only when its epoch is newer
//! than the one it routes on. When Redis loses the topology (a restart without persistence) it
//! comes back empty, or re-seeded by a router joining with its initial map: a router holding a
//! newer epoch then stores its own map again ([`Refresh::Reseeded`]), so the stored topology
//! converges on the newest epoch any router holds, and changes build on that map. A router
//! re-seeds only from the newest epoch it knows of (stored, announced, or its own): one that
//! heard of a newer epoch than it holds leaves the re-seed to a router that holds it
//! ([`Refresh::Stale`], [`SyncError::Stale`]). Every re-seed is reported: by
//! [`RedisTopology::refresh`], [`RedisTopology::reseeds`] and (feature `metrics`) the
//! [`METRIC_RESEEDS`] counter.
//!
//! One case is left: a router that never heard of the newest epoch (it was cut off while the
//! others changed the topology) and changes the topology right after Redis lost it re-seeds
//! from its own map; the routers holding a newer epoch replace that map within a poll
//! interval, and the change is lost (their refreshes report the re-seed).

mod codec;

pub mod registry;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Re-seeds of stored topologies through the `metrics` crate (feature `metrics`): Redis had
/// lost a topology (or held an older epoch than a router) and a router stored its own again;
/// label `topology` (the stored key).
pub const METRIC_RESEEDS: &str = "omega_shard_router_topology_reseeds_total";

/// A shared-topology operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncError {
    /// Redis failed or could not be reached (the local topology is unchanged).
    Redis(omega_core::Error),
    /// The change was invalid, or the stored topology could not be decoded.
    Topology(TopologyError),
    /// Redis lost the topology (none stored, or an older epoch than this router's) and this
    /// router knows of a newer epoch than the one it holds: it does not re-seed Redis from its
    /// stale map, and the change is not applied. A router holding the newest epoch re-seeds
    /// Redis on its next refresh; this router adopts it then, and the change can be retried.
    Stale {
        /// The epoch this router holds.
        local: u64,
        /// The newest epoch it knows of.
        newest: u64,
    },
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Redis(e) => write!(f, "shared topology: {e}"),
            SyncError::Topology(e) => write!(f, "shared topology: {e}"),
            SyncError::Stale { local, newest } => write!(
                f,
                "shared topology: Redis lost the topology, and this router holds epoch {local} \
                 while epoch {newest} exists: it leaves the re-seed to a router that holds it"
            ),
        }
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::Redis(e) => Some(e),
            SyncError::Topology(e) => Some(e),
            SyncError::Stale { .. } => None,
        }
    }
}

/// What [`RedisTopology::refresh`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refresh {
    /// Nothing to do: the stored topology has the local epoch (or none is stored and the
    /// local topology is empty, or another router stored one meanwhile).
    Unchanged,
    /// The stored topology was newer and replaced the local one.
    Adopted {
        /// Its epoch.
        epoch: u64,
    },
    /// Redis had lost the topology (none stored, or an older epoch than the local one): the
    /// local topology, the newest this router knows of, was stored again.
    Reseeded(Reseed),
    /// Redis lost the topology, but this router knows of a newer epoch than it holds: it left
    /// Redis alone (see [`SyncError::Stale`]).
    Stale {
        /// The epoch this router holds.
        local: u64,
        /// The newest epoch it knows of.
        newest: u64,
    },
}

/// A re-seed: Redis held no topology (`found: None`) or an older one (`found: Some(epoch)`),
/// and a router stored its own (of epoch `epoch`) again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reseed {
    /// The epoch Redis held, if any.
    pub found: Option<u64>,
    /// The epoch stored again.
    pub epoch: u64,
}

/// What every clone of a [`RedisTopology`] knows.
#[derive(Debug, Default)]
struct Known {
    /// The newest epoch seen: stored, announced, or written by this router.
    newest: AtomicU64,
    reseeds: AtomicU64,
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
/// through the handle. A change made through the handle alone gives the local topology a
/// newer epoch than the stored one, so the next refresh stores it as a re-seed, without the
/// compare-and-set of `apply` against changes made meanwhile by other routers. If Redis is down
/// when a process starts, [`join`](RedisTopology::join) fails; the process can route on a
/// topology it stores in the handle itself and join later.
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
    known: Arc<Known>,
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
            known: Arc::default(),
        })
    }

    /// The newest epoch this router knows of: stored in Redis, announced on the channel, or
    /// written by it.
    pub fn newest_known_epoch(&self) -> u64 {
        self.known.newest.load(Ordering::Relaxed)
    }

    /// How many times this router (any clone of this `RedisTopology`) re-seeded Redis with
    /// its own topology after Redis had lost the stored one.
    pub fn reseeds(&self) -> u64 {
        self.known.reseeds.load(Ordering::Relaxed)
    }

    fn note(&self, epoch: u64) {
        self.known.newest.fetch_max(epoch, Ordering::Relaxed);
    }

    fn reseeded(&self, found: Option<u64>, epoch: u64) -> Reseed {
        self.known.reseeds.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(METRIC_RESEEDS, "topology" => self.key.to_string()).increment(1);
        Reseed { found, epoch }
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
    ///
    /// The stored topology replaces the handle's when its epoch is the same or newer (at the
    /// same epoch Redis wins: a handle built from a local file holds epoch 1 too). A stored
    /// topology older than the handle's is what Redis keeps after losing its data: the handle's
    /// is stored again, as [`refresh`](Self::refresh) does.
    pub async fn join(&self, initial: Topology) -> Result<Arc<Topology>, SyncError> {
        let stored = match self.load().await? {
            Some(stored) => stored,
            None => {
                let initial = Arc::new(initial);
                if self.cas(None, &initial).await? {
                    self.handle.store_unless_older(initial);
                    return Ok(self.handle.load());
                }
                self.load().await?.ok_or_else(|| {
                    TopologyError::new(TopologyErrorKind::Conflict, "the stored topology vanished")
                })?
            }
        };
        if !self.handle.store_unless_older(stored) {
            self.refresh().await?;
        }
        Ok(self.handle.load())
    }

    /// Applies `changes` to the stored topology (compare-and-set on its epoch, retried on a
    /// concurrent change), announces the change, and updates the local handle. Once the
    /// change is stored it stands: if the announcement fails, the other routers pick the
    /// change up when their subscription is back or on their next poll.
    ///
    /// If Redis lost the topology (none stored, or an older epoch than the local one), the
    /// change is applied to the local topology, the newest known, which re-seeds Redis
    /// (counted in [`reseeds`](Self::reseeds)); if this router knows of a newer epoch than it
    /// holds, it fails with [`SyncError::Stale`] instead.
    pub async fn apply(&self, changes: &[Change]) -> Result<Arc<Topology>, SyncError> {
        for _ in 0..16 {
            let stored = self.load().await?;
            let local = self.handle.load();
            let (base, expected, reseed) = match stored {
                Some(t) if t.epoch() >= local.epoch() => {
                    let e = t.epoch();
                    (t, Some(e), None)
                }
                lost => {
                    let found = lost.map(|t| t.epoch());
                    let newest = self.newest_known_epoch();
                    if local.epoch() < newest {
                        return Err(SyncError::Stale {
                            local: local.epoch(),
                            newest,
                        });
                    }
                    let reseed = (local.epoch() > 0).then_some(found);
                    (local, found, reseed)
                }
            };
            let next = Arc::new(base.apply(changes)?);
            if self.cas(expected, &next).await? {
                if let Some(found) = reseed {
                    self.reseeded(found, base.epoch());
                }
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

    /// Brings the local topology and Redis in step: reads the stored epoch and, when it is
    /// newer than the local one, adopts the stored topology. When Redis lost the topology (a
    /// restart without persistence: none stored, or an older epoch, such as a joining
    /// router's initial map), stores the local one again if it is the newest this router knows
    /// of, so that the fleet converges on the newest epoch and routers joining later adopt
    /// it. Never moves the local topology to an older epoch. See [`Refresh`].
    pub async fn refresh(&self) -> Result<Refresh, SyncError> {
        let mut hget = cmd("HGET");
        hget.arg(&*self.key).arg("epoch");
        let stored: Option<u64> = self.backend.query(&hget).await?;
        if let Some(e) = stored {
            self.note(e);
        }
        let local = self.handle.load();
        match stored {
            Some(e) if e > local.epoch() => match self.load().await? {
                Some(t) => {
                    let epoch = t.epoch();
                    Ok(if self.handle.store_if_newer(t) {
                        Refresh::Adopted { epoch }
                    } else {
                        Refresh::Unchanged
                    })
                }
                None => Ok(Refresh::Unchanged),
            },
            Some(e) if e == local.epoch() => Ok(Refresh::Unchanged),
            found => {
                if local.epoch() == 0 {
                    return Ok(Refresh::Unchanged);
                }
                let newest = self.newest_known_epoch();
                if local.epoch() < newest {
                    return Ok(Refresh::Stale {
                        local: local.epoch(),
                        newest,
                    });
                }
                if self.cas(found, &local).await? {
                    Ok(Refresh::Reseeded(self.reseeded(found, local.epoch())))
                } else {
                    Ok(Refresh::Unchanged)
                }
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
    /// counts as news). The epoch is known from then on.
    fn is_news(&self, announced: &[u8]) -> bool {
        let epoch = std::str::from_utf8(announced)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(e) = epoch {
            self.note(e);
        }
        epoch != Some(self.handle.epoch())
    }

    async fn load(&self) -> Result<Option<Arc<Topology>>, SyncError> {
        let mut hget = cmd("HGET");
        hget.arg(&*self.key).arg("data");
        let data: Option<Vec<u8>> = self.backend.query(&hget).await?;
        match data {
            None => Ok(None),
            Some(bytes) => {
                let t = decode(&bytes)?;
                self.note(t.epoch());
                Ok(Some(Arc::new(t)))
            }
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
            self.note(next.epoch());
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
