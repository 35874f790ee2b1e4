//! L2: entries in Redis or Redis Cluster, through omega-core's handle (feature `redis`).
//!
//! Keys (with the backend's prefix, `omega` by default, and the cache's name):
//!
//! | key | what |
//! |---|---|
//! | `omega:{cache/part/gen/skey}` | an entry's envelope (deadlines, tags, value), expiring at its last deadline; or the marker of a key whose responses vary |
//! | `omega:{cache/part/gen/skey\0id\0secondary}` | one variant of such a key |
//! | `omega:{cache/part/gen/skey}:lease` | the short lease of the instance loading that entry |
//! | `omega:{cache/t/tag}` | the entry keys that carry `tag` (a set, one hash tag per tag) |
//! | `omega:cache:gen:part` | the partition's generation: flushing a partition increments it |
//! | `omega:cache:invalidate` | the channel of invalidations (sharded on a cluster) |
//!
//! The partition's generation is part of every entry key, so a flush is one `INCR` on any
//! deployment (the old generation's keys expire by themselves), and a tag's members are found in
//! one set without scanning every node; an entry and its lease share a hash tag, so looking an
//! entry up and taking its lease on a miss is one script call: an L2 hit is one round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use omega_core::redis::{Cmd, Pipeline, RedisBackend, Script, Value, cmd, pipe};
use omega_core::{Keyspace, hash_slot};

/// Looks an entry up and, on a miss, takes its lease; answers `{1, envelope}`, `{2}` (lease
/// taken), `{3}` (lease held by another instance) or `{0}` (not found, no lease asked).
const FETCH: &str = r"
if ARGV[1] ~= '2' then
  local v = redis.call('GET', KEYS[1])
  if v then return {1, v} end
end
if ARGV[1] == '0' then return {0} end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {2} end
return {3}
";

/// Deletes a lease if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// While Redis is marked down, one operation per this interval checks whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// How [`L2::fetch`] works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Read the entry only.
    Get,
    /// Read the entry, or take the lease if there is none.
    GetOrLease,
    /// Take the lease.
    LeaseOnly,
}

/// What [`L2::fetch`] found.
#[derive(Debug)]
pub(crate) enum Fetch {
    Hit(Vec<u8>),
    Acquired(Lease),
    Held,
    Miss,
}

/// A lease on loading one entry.
#[derive(Debug)]
pub(crate) struct Lease {
    token: u64,
}

/// Settings of the cross-instance coalescing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseCfg {
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) poll: Duration,
}

/// The L2 of one cache.
pub(crate) struct L2 {
    pub(crate) backend: RedisBackend,
    name: Arc<str>,
    ks: Keyspace,
    pub(crate) lease: LeaseCfg,
    gens: Box<[AtomicU64]>,
    synced: AtomicBool,
    /// Whether the invalidation listener ended with its runtime: the next use of L2 starts
    /// another.
    pub(crate) listener: omega_core::task::Lost,
    /// When an operation last went out while the backend was marked down (milliseconds since
    /// `born`): one probe per [`PROBE_EVERY`], so L2 comes back when Redis does.
    probed: AtomicU64,
    born: std::time::Instant,
    channel: String,
    fetch: Script,
}

impl L2 {
    pub(crate) fn new(
        backend: RedisBackend,
        name: Arc<str>,
        partitions: usize,
        lease: LeaseCfg,
    ) -> Self {
        let ks = backend.keyspace().clone();
        let channel = ks.key(&[&name, "invalidate"]);
        L2 {
            backend,
            name,
            ks,
            lease,
            gens: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            synced: AtomicBool::new(false),
            listener: omega_core::task::Lost::new(),
            probed: AtomicU64::new(0),
            born: std::time::Instant::now(),
            channel,
            fetch: Script::new("cache_fetch", FETCH),
        }
    }

    /// `true` while the invalidation channel is subscribed (nothing missed) and Redis answers;
    /// while Redis is marked down, `true` for one caller per [`PROBE_EVERY`] (its operation
    /// tells whether Redis is back: a timeout marks the backend down without reconnecting).
    #[inline]
    pub(crate) fn ready(&self) -> bool {
        if !self.synced.load(Ordering::Acquire) {
            return false;
        }
        if self.backend.is_up() {
            return true;
        }
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.probed.load(Ordering::Relaxed);
        now.saturating_sub(last) >= PROBE_EVERY.as_millis() as u64
            && self
                .probed
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }

    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// The key of an entry of partition `part` (index) named `partition`.
    pub(crate) fn entry_key(&self, part: usize, partition: &str, key: &[u8]) -> String {
        let generation = self.gens[part].load(Ordering::Acquire);
        let mut tag = String::with_capacity(self.name.len() + partition.len() + key.len() * 2 + 24);
        tag.push_str(&self.name);
        tag.push('/');
        tag.push_str(partition);
        tag.push('/');
        tag.push_str(&generation.to_string());
        tag.push('/');
        match std::str::from_utf8(key) {
            Ok(s) => {
                tag.push('s');
                tag.push_str(s);
            }
            Err(_) => {
                tag.push('x');
                for b in key {
                    tag.push_str(&format!("{b:02x}"));
                }
            }
        }
        self.ks.tagged(&tag, &[])
    }

    fn lease_key(entry_key: &str) -> String {
        format!("{entry_key}:lease")
    }

    fn tag_key(&self, tag: &str) -> String {
        self.ks.tagged(&format!("{}/t/{tag}", self.name), &[])
    }

    fn gen_key(&self, partition: &str) -> String {
        self.ks.key(&[&self.name, "gen", partition])
    }

    /// Reads an entry and/or takes its lease: one round trip.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        entry_key: &str,
        mode: Mode,
    ) -> omega_core::Result<Fetch> {
        let token: u64 = rand::random::<u64>() | 1;
        let m = match mode {
            Mode::Get => "0",
            Mode::GetOrLease => "1",
            Mode::LeaseOnly => "2",
        };
        let call = self
            .fetch
            .call()
            .key(entry_key)
            .key(Self::lease_key(entry_key))
            .arg(m)
            .arg(token)
            .arg(crate::entry::ms(self.lease.ttl).max(1));
        let answer: Vec<Value> = match self.backend.eval(&call).await {
            Ok(a) => a,
            Err(e) => {
                if mode != Mode::Get && e.outcome_unknown() {
                    // The lease may have been taken (the server may run the call once it
                    // answers again): give it back as soon as Redis is back, so nobody waits
                    // for a lease that no load holds.
                    self.release_later(entry_key.to_owned(), Lease { token });
                }
                return Err(e);
            }
        };
        Ok(match answer.as_slice() {
            [Value::Int(1), Value::BulkString(v)] => Fetch::Hit(v.clone()),
            [Value::Int(2)] => Fetch::Acquired(Lease { token }),
            [Value::Int(3)] => Fetch::Held,
            _ => Fetch::Miss,
        })
    }

    /// Reads many entries: one `MGET` on a standalone server; one `GET` per key, sent
    /// together, on a cluster (the keys are in different slots).
    pub(crate) async fn get_many(
        &self,
        keys: &[String],
    ) -> omega_core::Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if !self.backend.is_cluster() {
            return self.backend.query(cmd("MGET").arg(keys)).await;
        }
        let gets = keys.iter().map(|k| async move {
            let mut get = cmd("GET");
            get.arg(k);
            self.backend.query::<Option<Vec<u8>>>(&get).await
        });
        join_all(gets).await.into_iter().collect()
    }

    /// Stores an envelope for `px` milliseconds, adds it to its tags' sets, gives the lease
    /// back (`lease`: the entry key it was taken on, and the lease), and stores the key's
    /// variant marker (`marker`: its key, envelope and life). One pipeline per hash slot (one
    /// in all on a standalone server), run together.
    pub(crate) async fn store(
        &self,
        entry_key: String,
        envelope: Vec<u8>,
        px: u64,
        tags: &[Arc<str>],
        lease: Option<(String, Lease)>,
        marker: Option<(String, Vec<u8>, u64)>,
    ) -> omega_core::Result<()> {
        let mut groups: Vec<(String, Cmd)> = Vec::with_capacity(3 + 3 * tags.len());
        groups.push((entry_key.clone(), {
            let mut c = cmd("SET");
            c.arg(&entry_key).arg(envelope).arg("PX").arg(px.max(1));
            c
        }));
        if let Some((key, lease)) = lease {
            groups.push((key.clone(), release_cmd(&key, lease)));
        }
        if let Some((key, envelope, px)) = marker {
            let mut c = cmd("SET");
            c.arg(&key).arg(envelope).arg("PX").arg(px.max(1));
            groups.push((key, c));
        }
        for tag in tags {
            let tk = self.tag_key(tag);
            let mut sadd = cmd("SADD");
            sadd.arg(&tk).arg(&entry_key);
            groups.push((tk.clone(), sadd));
            for opt in ["NX", "GT"] {
                let mut c = cmd("PEXPIRE");
                c.arg(&tk).arg(px.max(1)).arg(opt);
                groups.push((tk.clone(), c));
            }
        }
        self.run_grouped(groups).await
    }

    /// Gives a lease back without storing anything.
    pub(crate) async fn release(&self, entry_key: &str, lease: Lease) -> omega_core::Result<()> {
        self.backend
            .query::<Value>(&release_cmd(entry_key, lease))
            .await
            .map(drop)
    }

    /// Gives a lease back once Redis answers again (within the lease's life).
    fn release_later(self: &Arc<Self>, entry_key: String, lease: Lease) {
        let l2 = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + l2.lease.ttl;
            let token = lease.token;
            while tokio::time::Instant::now() < deadline {
                if l2.backend.is_up() && l2.release(&entry_key, Lease { token }).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Deletes one entry.
    pub(crate) async fn delete(&self, entry_key: &str) -> omega_core::Result<()> {
        self.backend
            .query::<Value>(cmd("DEL").arg(entry_key))
            .await
            .map(drop)
    }

    /// Deletes every entry tagged `tag` (on every partition), and the tag's set.
    pub(crate) async fn purge_tag(&self, tag: &str) -> omega_core::Result<usize> {
        let tk = self.tag_key(tag);
        let members: Vec<String> = self.backend.query(cmd("SMEMBERS").arg(&tk)).await?;
        let n = members.len();
        let mut groups: Vec<(String, Cmd)> = members
            .into_iter()
            .map(|m| {
                let mut c = cmd("DEL");
                c.arg(&m);
                (m, c)
            })
            .collect();
        groups.push((tk.clone(), {
            let mut c = cmd("DEL");
            c.arg(&tk);
            c
        }));
        self.run_grouped(groups).await?;
        Ok(n)
    }

    /// Moves partition `part` to a new generation; returns it.
    pub(crate) async fn bump(&self, part: usize, partition: &str) -> omega_core::Result<u64> {
        let generation: u64 = self
            .backend
            .query(cmd("INCR").arg(self.gen_key(partition)))
            .await?;
        self.observe(part, generation);
        Ok(generation)
    }

    /// Adopts generation `generation` of partition `part` if it is newer.
    pub(crate) fn observe(&self, part: usize, generation: u64) {
        self.gens[part].fetch_max(generation, Ordering::AcqRel);
    }

    /// Reads every partition's generation (after a (re)subscription).
    pub(crate) async fn load_generations(&self, partitions: &[&str]) -> omega_core::Result<()> {
        let reads = partitions.iter().map(|p| async move {
            let g: Option<u64> = self.backend.query(cmd("GET").arg(self.gen_key(p))).await?;
            Ok::<_, omega_core::Error>(g.unwrap_or(0))
        });
        for (part, g) in join_all(reads).await.into_iter().enumerate() {
            self.observe(part, g?);
        }
        Ok(())
    }

    /// Publishes an invalidation.
    pub(crate) async fn publish(&self, payload: &[u8]) -> omega_core::Result<()> {
        self.backend.publish(&self.channel, payload).await.map(drop)
    }

    /// Runs commands grouped by hash slot: one pipeline per slot on a cluster (a pipeline
    /// must stay in one slot there), one pipeline for all on a standalone server.
    async fn run_grouped(&self, cmds: Vec<(String, Cmd)>) -> omega_core::Result<()> {
        let mut pipes: Vec<(u16, Pipeline)> = Vec::new();
        let cluster = self.backend.is_cluster();
        for (key, c) in cmds {
            let slot = if cluster {
                hash_slot(key.as_bytes())
            } else {
                0
            };
            match pipes.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, p)) => {
                    p.add_command(c).ignore();
                }
                None => {
                    let mut p = pipe();
                    p.add_command(c).ignore();
                    pipes.push((slot, p));
                }
            }
        }
        let runs = pipes.iter().map(|(_, p)| self.backend.pipeline::<Value>(p));
        for r in join_all(runs).await {
            r?;
        }
        Ok(())
    }
}

fn release_cmd(entry_key: &str, lease: Lease) -> Cmd {
    let mut c = cmd("EVAL");
    c.arg(RELEASE)
        .arg(1)
        .arg(L2::lease_key(entry_key))
        .arg(lease.token);
    c
}
