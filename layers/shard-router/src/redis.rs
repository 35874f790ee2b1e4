//! The topology shared through Redis (feature `redis`).
//!
//! One hash per topology name holds the epoch and the encoded topology (nodes, and for the
//! slot table the table itself, since it depends on the history of changes). Changes go
//! through a compare-and-set script on the epoch, so two routers changing the topology at
//! once never lose a change, and each successful change is published on a channel. Every
//! router follows the stored topology: on a notification, and by polling the epoch (one
//! `HGET`) as a safety net for notifications missed while disconnected. While Redis is
//! unreachable a router keeps routing on its last topology; changes fail with the backend's
//! error and nothing is half-applied.
//!
//! Keys: `<prefix>:{shard:<name>}:topology` (a hash with fields `epoch` and `data`), channel
//! `<prefix>:shard:<name>:changes`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use omega_core::redis::{RedisBackend, Script};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::handle::TopologyHandle;
use crate::topology::{Algorithm, Change, Node, Topology, TopologyError, TopologyErrorKind};

const CAS: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'epoch')
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'data', ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[2])
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

/// A topology kept in Redis and mirrored into a local [`TopologyHandle`].
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
/// let backend = RedisBackend::connect(RedisConfig::url("redis://127.0.0.1:6379")).await?;
/// let handle = TopologyHandle::new(Topology::empty(Algorithm::table())?);
/// let shared = RedisTopology::new(backend, "users", handle.clone())?;
/// shared.join(Topology::new(Algorithm::table(), [Node::new("a", "10.0.0.1:80")])?).await?;
/// let _sync = shared.spawn_sync(Duration::from_secs(1), Some("redis://127.0.0.1:6379".into()));
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
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl RedisTopology {
    /// The shared topology `name` (letters, digits, `-`, `_`, `.`) in `backend`'s keyspace,
    /// mirrored into `handle`.
    pub fn new(
        backend: RedisBackend,
        name: &str,
        handle: TopologyHandle,
    ) -> Result<Self, TopologyError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(TopologyError::new(
                TopologyErrorKind::InvalidConfig,
                format!("topology name {name:?}: use letters, digits, '-', '_' and '.'"),
            ));
        }
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

    /// The channel changes are published on.
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
    /// concurrent change), publishes the change, and updates the local handle.
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
    /// which then replaces the local one. Returns whether the local topology changed.
    pub async fn refresh(&self) -> Result<bool, SyncError> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(&*self.key).arg("epoch");
        let epoch: Option<u64> = self.backend.query(&cmd).await?;
        match epoch {
            Some(e) if e != self.handle.epoch() => match self.load().await? {
                Some(t) => {
                    self.handle.store(t);
                    Ok(true)
                }
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }

    /// Keeps the local handle in step with Redis in a background task: refreshes every
    /// `poll`, and at once when a change is published (with `subscribe_url`, a `redis://`
    /// URL of the same server: notifications need a connection of their own). Errors (Redis
    /// down) leave the last topology in place; the task retries on the next tick. Stops when
    /// the returned guard is dropped.
    pub fn spawn_sync(&self, poll: Duration, subscribe_url: Option<String>) -> SyncTask {
        let wake = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        if let Some(url) = subscribe_url {
            tasks.push(tokio::spawn(subscribe(
                url,
                self.channel.clone(),
                wake.clone(),
            )));
        }
        let this = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = wake.notified() => {}
                }
                let _ = this.refresh().await;
            }
        }));
        SyncTask { tasks }
    }

    async fn load(&self) -> Result<Option<Arc<Topology>>, SyncError> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(&*self.key).arg("data");
        let data: Option<Vec<u8>> = self.backend.query(&cmd).await?;
        match data {
            None => Ok(None),
            Some(bytes) => Ok(Some(Arc::new(decode(&bytes)?))),
        }
    }

    async fn cas(&self, expected: Option<u64>, next: &Topology) -> Result<bool, SyncError> {
        let call = cas_script()
            .call()
            .key(&*self.key)
            .arg(expected.map(|e| e.to_string()).unwrap_or_default())
            .arg(next.epoch().to_string())
            .arg(encode(next))
            .arg(&*self.channel);
        let done: i64 = self.backend.eval(&call).await?;
        Ok(done == 1)
    }
}

async fn subscribe(url: String, channel: Arc<str>, wake: Arc<Notify>) {
    use futures_util::StreamExt;
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = async {
            let client = ::redis::Client::open(url.as_str())?;
            let mut pubsub =
                tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
                    .await
                    .map_err(|_| {
                        ::redis::RedisError::from(std::io::Error::from(
                            std::io::ErrorKind::TimedOut,
                        ))
                    })??;
            pubsub.subscribe(&*channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        if let Ok(mut pubsub) = attempt.await {
            backoff = Duration::from_millis(50);
            // Catch up on anything published while not subscribed.
            wake.notify_one();
            let mut messages = pubsub.on_message();
            while messages.next().await.is_some() {
                wake.notify_one();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The background tasks of [`RedisTopology::spawn_sync`]; dropping it stops them.
#[derive(Debug)]
pub struct SyncTask {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SyncTask {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

const MAGIC: &[u8; 4] = b"OSR1";

/// Encodes a topology: `OSR1`, epoch (u64), algorithm (u8 tag, u32 parameter), node count
/// (u32), each node as id (u16 length + bytes), weight (u32), address (u16 length + bytes),
/// then for a slot table each slot's node index (u16); all little-endian.
pub fn encode(t: &Topology) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + t.len() * 32 + t.slots().map_or(0, |s| s.len() * 2));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&t.epoch().to_le_bytes());
    let (tag, param) = match t.algorithm() {
        Algorithm::Table { bits } => (0u8, u32::from(bits)),
        Algorithm::Ring { vnodes } => (1, vnodes),
        Algorithm::Ketama => (2, 0),
        Algorithm::Rendezvous => (3, 0),
    };
    out.push(tag);
    out.extend_from_slice(&param.to_le_bytes());
    out.extend_from_slice(&(t.len() as u32).to_le_bytes());
    for n in t.nodes() {
        out.extend_from_slice(&(n.id().len() as u16).to_le_bytes());
        out.extend_from_slice(n.id().as_bytes());
        out.extend_from_slice(&n.weight().to_le_bytes());
        out.extend_from_slice(&(n.address().len() as u16).to_le_bytes());
        out.extend_from_slice(n.address().as_bytes());
    }
    if let Some(slots) = t.slots() {
        for s in slots {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

/// Decodes [`encode`]'s format, checking everything (a table must match its nodes' weights).
pub fn decode(mut b: &[u8]) -> Result<Topology, TopologyError> {
    let bad =
        |m: &str| TopologyError::new(TopologyErrorKind::Decode, format!("stored topology: {m}"));
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head)
    }
    let short = || bad("truncated");
    if take(&mut b, 4).ok_or_else(short)? != MAGIC {
        return Err(bad("not an omega shard topology (bad magic)"));
    }
    let u64_at =
        |b: &mut &[u8]| take(b, 8).map(|x| u64::from_le_bytes(x.try_into().expect("8 bytes")));
    let u32_at =
        |b: &mut &[u8]| take(b, 4).map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes")));
    let u16_at =
        |b: &mut &[u8]| take(b, 2).map(|x| u16::from_le_bytes(x.try_into().expect("2 bytes")));
    let epoch = u64_at(&mut b).ok_or_else(short)?;
    let tag = take(&mut b, 1).ok_or_else(short)?[0];
    let param = u32_at(&mut b).ok_or_else(short)?;
    let algorithm = match tag {
        0 => Algorithm::Table {
            bits: u8::try_from(param).map_err(|_| bad("table bits"))?,
        },
        1 => Algorithm::Ring { vnodes: param },
        2 => Algorithm::Ketama,
        3 => Algorithm::Rendezvous,
        _ => return Err(bad("unknown algorithm")),
    };
    let count = u32_at(&mut b).ok_or_else(short)? as usize;
    if count > crate::MAX_NODES {
        return Err(bad("too many nodes"));
    }
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(u16_at(&mut b).ok_or_else(short)?);
        let id = std::str::from_utf8(take(&mut b, len).ok_or_else(short)?)
            .map_err(|_| bad("id not UTF-8"))?;
        let weight = u32_at(&mut b).ok_or_else(short)?;
        let len = usize::from(u16_at(&mut b).ok_or_else(short)?);
        let addr = std::str::from_utf8(take(&mut b, len).ok_or_else(short)?)
            .map_err(|_| bad("address not UTF-8"))?;
        nodes.push(Node::new(id, addr).with_weight(weight));
    }
    let slots = match algorithm {
        Algorithm::Table { bits } => {
            let m = 1usize
                .checked_shl(u32::from(bits))
                .filter(|_| bits <= 24)
                .ok_or_else(|| bad("table bits"))?;
            let raw = take(&mut b, m * 2).ok_or_else(short)?;
            Some(
                raw.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            )
        }
        _ => None,
    };
    if !b.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Topology::from_parts(epoch, algorithm, nodes, slots)
}
