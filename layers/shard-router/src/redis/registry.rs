//! A node registry in Redis: nodes announce themselves with a heartbeat and a TTL, and routers
//! follow who is alive, so that nodes join and leave a pool without an operator.
//!
//! Each registry `name` is two keys in one hash slot (so it works on Redis Cluster): a sorted
//! set of node ids scored by when their last heartbeat expires, and a hash of each node's URL
//! and weight. Times are Redis's own (`TIME` inside the scripts), so the clocks of announcing
//! and following machines do not matter. A node whose heartbeat stops is gone once its TTL has
//! passed; the next read removes it.
//!
//! [`Damper`] turns what the registry says into topology changes: a node joins after it has
//! been seen alive in `stable_polls` reads in a row (a node flapping on and off does not move
//! keys back and forth at every read), and leaves when it is no longer alive. It only manages
//! the nodes it added itself: nodes configured by other means stay.
//!
//! The same damped changes come as a [`tower::discover::Discover`] stream from
//! [`Registry::discover`], for anything that consumes one: [`ShardRouter::discover`], tower's
//! `balance`, or a user's own pool.
//!
//! [`ShardRouter::discover`]: crate::ShardRouter::discover

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use omega_core::redis::{RedisBackend, Script};

use crate::error::{TopologyError, TopologyErrorKind};
use crate::handle::TopologyHandle;
use crate::node::{Change, Node};
use crate::topology::Topology;

/// Records one heartbeat: the node's expiry (Redis time + TTL) and its details.
const ANNOUNCE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return now
"#;

/// Drops the expired nodes, then lists the others with their details.
const LIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"#;

/// Removes one node at once (a clean shutdown).
const WITHDRAW: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

fn script(
    slot: &'static std::sync::OnceLock<Script>,
    name: &'static str,
    source: &str,
) -> &'static Script {
    slot.get_or_init(|| Script::new(name, source))
}

static ANNOUNCE_SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
static LIVE_SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
static WITHDRAW_SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();

/// The nodes of one pool, as they announce themselves.
#[derive(Clone)]
pub struct Registry {
    backend: RedisBackend,
    live: Arc<str>,
    details: Arc<str>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// The registry `name` (1 to 128 visible ASCII characters, no braces) in `backend`'s
    /// keyspace.
    pub fn new(backend: RedisBackend, name: &str) -> Result<Self, TopologyError> {
        omega_core::key::check_name("registry name", name)
            .map_err(|e| TopologyError::new(TopologyErrorKind::InvalidConfig, e.to_string()))?;
        let ks = backend.keyspace().clone();
        let tag = format!("nodes:{name}");
        Ok(Registry {
            live: Arc::from(ks.tagged(&tag, &["live"])),
            details: Arc::from(ks.tagged(&tag, &["details"])),
            backend,
        })
    }

    /// One heartbeat for `node`: alive for `ttl` from now (Redis's clock).
    pub async fn announce(&self, node: &Node, ttl: Duration) -> Result<(), omega_core::Error> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let call = script(&ANNOUNCE_SCRIPT, "registry_announce", ANNOUNCE)
            .call()
            .key(&*self.live)
            .key(&*self.details)
            .arg(node.id())
            .arg(format!("{} {}", node.weight(), node.address()))
            .arg(ms);
        let _: i64 = self.backend.eval(&call).await?;
        Ok(())
    }

    /// Removes `id` now, without waiting for its TTL.
    pub async fn withdraw(&self, id: &str) -> Result<(), omega_core::Error> {
        let call = script(&WITHDRAW_SCRIPT, "registry_withdraw", WITHDRAW)
            .call()
            .key(&*self.live)
            .key(&*self.details)
            .arg(id);
        let _: i64 = self.backend.eval(&call).await?;
        Ok(())
    }

    /// The nodes alive now (expired ones are dropped on the way).
    pub async fn live(&self) -> Result<Vec<Node>, omega_core::Error> {
        let call = script(&LIVE_SCRIPT, "registry_live", LIVE)
            .call()
            .key(&*self.live)
            .key(&*self.details);
        let flat: Vec<String> = self.backend.eval(&call).await?;
        Ok(flat
            .chunks(2)
            .filter_map(|pair| {
                let (id, details) = (pair.first()?, pair.get(1)?);
                let (weight, url) = details.split_once(' ')?;
                Some(Node::new(id.as_str(), url).with_weight(weight.parse().ok()?))
            })
            .collect())
    }

    /// Announces `node` every third of `ttl` until the returned guard is dropped (the node
    /// then expires after `ttl`) or [`Announcer::withdraw`]n. A failed heartbeat is retried
    /// at the next one.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn_announcer(&self, node: Node, ttl: Duration) -> Announcer {
        let this = self.clone();
        let every = (ttl / 3).max(Duration::from_millis(10));
        let id = Arc::from(node.id());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = this.announce(&node, ttl).await;
            }
        });
        Announcer {
            registry: self.clone(),
            id,
            task,
        }
    }

    /// Keeps `handle` in step with the registry in a background task: every `poll`, nodes
    /// alive for `stable_polls` reads in a row join, and the nodes it added that are gone
    /// leave (see [`Damper`]). Stops when the returned guard is dropped.
    ///
    /// Must be called within a tokio runtime.
    pub fn spawn_follow(
        &self,
        handle: TopologyHandle,
        poll: Duration,
        stable_polls: u32,
    ) -> Follow {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut damper = Damper::new(stable_polls);
            let mut reads = this.reads(poll);
            loop {
                let live = reads.next(&this).await;
                let changes = damper.changes(&live, &handle.load());
                if !changes.is_empty() && handle.apply(&changes).is_ok() {
                    damper.applied(&changes);
                }
            }
        });
        Follow { task }
    }
}

/// Reads of the registry every `poll`, for the followers.
struct Reads(tokio::time::Interval);

impl Reads {
    /// The next successful read: while Redis does not answer, nothing is known and nothing
    /// changes, so a failed read waits for the next tick.
    async fn next(&mut self, registry: &Registry) -> Vec<Node> {
        loop {
            self.0.tick().await;
            if let Ok(live) = registry.live().await {
                return live;
            }
        }
    }
}

impl Registry {
    fn reads(&self, poll: Duration) -> Reads {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Reads(tick)
    }

    /// The registry as a [`tower::discover::Discover`] stream: every `poll`, nodes alive for
    /// `stable_polls` reads in a row come as `Insert(id, make(&node))`, nodes gone as
    /// `Remove(id)`; a node whose address changed is removed and inserted again with a new
    /// service (weights are not part of `Discover`: a reweight is not reported). While Redis
    /// does not answer, nothing changes. The polling runs on a background task that stops
    /// when the stream is dropped.
    ///
    /// Must be called within a tokio runtime.
    pub fn discover<S, F>(&self, poll: Duration, stable_polls: u32, mut make: F) -> Discovered<S>
    where
        S: Send + 'static,
        F: FnMut(&Node) -> S + Send + 'static,
    {
        use tower::discover::Change as D;
        let this = self.clone();
        // One read's changes at a time: the task waits for the consumer before reading again.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            let mut damper = Damper::new(stable_polls);
            // What the consumer has been told, as a topology the damper can compare with.
            let Ok(mut known) = Topology::empty(crate::Algorithm::default()) else {
                return;
            };
            let mut reads = this.reads(poll);
            loop {
                let live = reads.next(&this).await;
                let changes = damper.changes(&live, &known);
                if changes.is_empty() {
                    continue;
                }
                let Ok(next) = known.apply(&changes) else {
                    continue;
                };
                for change in &changes {
                    let out = match change {
                        Change::Add(node) => D::Insert(node.id_arc().clone(), make(node)),
                        Change::Remove(id) => D::Remove(id.clone()),
                        Change::Reweight(..) => continue,
                    };
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
                damper.applied(&changes);
                known = next;
            }
        });
        Discovered { changes: rx, task }
    }
}

/// The stream of [`Registry::discover`]: `Ok(Insert)` and `Ok(Remove)` changes keyed by node
/// id, never an error (a Redis failure changes nothing). Dropping it stops the polling.
#[derive(Debug)]
pub struct Discovered<S> {
    changes: tokio::sync::mpsc::Receiver<tower::discover::Change<Arc<str>, S>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> futures_core::Stream for Discovered<S> {
    type Item = Result<tower::discover::Change<Arc<str>, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx).map(|change| change.map(Ok))
    }
}

impl<S> Drop for Discovered<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node's heartbeat; dropping it stops the heartbeat (the node expires after its TTL).
#[derive(Debug)]
pub struct Announcer {
    registry: Registry,
    id: Arc<str>,
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Stops the heartbeat and removes the node at once.
    pub async fn withdraw(self) -> Result<(), omega_core::Error> {
        self.task.abort();
        self.registry.withdraw(&self.id).await
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task of [`Registry::spawn_follow`]; dropping it stops following.
#[derive(Debug)]
pub struct Follow {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Turns registry reads into topology changes, damped: a node joins once it has been alive in
/// `stable_polls` reads in a row, leaves once it is no longer alive, and changes its address or
/// weight when its announcement does. By default only nodes this damper added are ever
/// removed; [`Damper::managing_all_but`] makes it manage every node but a fixed set (routers
/// that share one topology, where another router may have added a node).
#[derive(Debug, Default)]
pub struct Damper {
    stable_polls: u32,
    /// Reads in a row each not-yet-added node has been seen alive.
    seen: HashMap<Arc<str>, u32>,
    /// The nodes this damper added.
    added: HashSet<Arc<str>>,
    /// With `Some`, every node but these is the registry's.
    keep: Option<HashSet<Arc<str>>>,
}

impl Damper {
    /// Nodes join after `stable_polls` reads in a row (at least 1).
    pub fn new(stable_polls: u32) -> Self {
        Damper {
            stable_polls: stable_polls.max(1),
            ..Damper::default()
        }
    }

    /// A damper that manages every node of the topology except `keep` (the nodes configured
    /// by other means).
    pub fn managing_all_but(stable_polls: u32, keep: impl IntoIterator<Item = Arc<str>>) -> Self {
        Damper {
            keep: Some(keep.into_iter().collect()),
            ..Damper::new(stable_polls)
        }
    }

    fn manages(&self, id: &str) -> bool {
        match &self.keep {
            Some(keep) => !keep.contains(id),
            None => self.added.contains(id),
        }
    }

    /// The changes that bring `topology` to what `live` says, for this read.
    pub fn changes(&mut self, live: &[Node], topology: &Topology) -> Vec<Change> {
        let mut changes = Vec::new();
        let alive: HashSet<&str> = live.iter().map(Node::id).collect();
        self.seen.retain(|id, _| alive.contains(&**id));
        for node in live {
            match topology.node(node.id()) {
                Some(current) if self.manages(node.id()) => {
                    if current.address() != node.address() {
                        changes.push(Change::remove(node.id()));
                        changes.push(Change::Add(node.clone()));
                    } else if current.weight() != node.weight() {
                        changes.push(Change::reweight(node.id(), node.weight()));
                    }
                }
                // Configured by other means: not the registry's to change.
                Some(_) => {}
                None => {
                    let streak = self.seen.entry(node.id_arc().clone()).or_default();
                    *streak += 1;
                    if *streak >= self.stable_polls {
                        changes.push(Change::Add(node.clone()));
                    }
                }
            }
        }
        for node in topology.nodes() {
            if !alive.contains(node.id()) && self.manages(node.id()) {
                changes.push(Change::Remove(node.id_arc().clone()));
            }
        }
        changes
    }

    /// Records that `changes` were applied.
    pub fn applied(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::Add(node) => {
                    self.seen.remove(node.id());
                    self.added.insert(node.id_arc().clone());
                }
                Change::Remove(id) => {
                    self.added.remove(id);
                }
                Change::Reweight(..) => {}
            }
        }
    }
}
