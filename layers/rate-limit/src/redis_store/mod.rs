//! Limits in Redis: one Lua script per decision, on the Redis server's clock.
//!
//! On a standalone Redis, decisions that are made at the same time share one script call
//! ([`batch`]): while calls are in flight, new decisions queue, and the next call carries
//! every queued decision (`GCRA_BATCH`). The script decides them one after the other, in
//! arrival order, each all-or-none exactly as if it ran alone; a key that several decisions
//! touch is read and written once. An idle limiter sends each decision at once, so batching
//! adds no wait; under load it cuts Redis's work per decision (one `EVALSHA`, one `TIME`, one
//! `MGET`, one `SET` per distinct key) and the client's.
//!
//! The script receives every limit that applies to a request and admits the request only when
//! all enforcing limits have room; then it takes from all of them, otherwise from none. The
//! arithmetic is the in-memory GCRA's, exactly (integer nanoseconds relative to now; see
//! `scripts`), and each key expires when its bucket is full again, so Redis holds only active
//! keys.
//!
//! On Redis Cluster the keys of one request usually live in different slots (each limit key is
//! its own hash tag, so one hot key does not pin every limit to one node). The store then runs
//! the script once per slot, all slots at once; when a slot denies (or fails), it gives back
//! in the background what the other slots took (refund mode). Until the refund lands another
//! request may see those cells as taken: a cluster can deny a little more than a single
//! server, never admit more.
//!
//! # One deadline per decision
//!
//! Each decision has one deadline, the backend's operation timeout from when it started:
//! the queue for a batched call, the per-slot calls of a cluster and a lease fetch before them
//! all end by it, and refunds run in the background, so no decision waits longer than the
//! timeout (plus scheduling), whatever fails.
//!
//! # Scripts that run twice
//!
//! redis-rs's cluster client re-sends a request whose connection dropped after it was sent,
//! so a script could run twice within one timeout. Every call carries a decision id that the
//! script remembers for a few seconds: a second run takes nothing and answers as the first
//! did (see `scripts`).
//!
//! When a cluster node is down (or the cluster refuses commands while it is incomplete), the
//! decisions whose keys live there fail within the operation timeout and each limit follows
//! its failure policy; redis-rs reconnects to the node when it is back, and decisions go to
//! the cluster again by themselves (`tests/redis.rs` kills a node of a 3-node cluster). A node
//! that restarts without persistence comes back empty: its keys start with full buckets.

mod batch;
mod scripts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use omega_core::redis::{RedisBackend, Script, ScriptCall};
use omega_core::{Keyspace, hash_slot};
use tokio::time::Instant;

use crate::quota::Gcra;
use scripts::{GCRA_BATCH, GCRA_LEASE, GCRA_MULTI};

/// What a lease call gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaseGrant {
    /// `cells` taken; the bucket is full again `full_after_ns` from now.
    Granted { cells: u32, full_after_ns: u64 },
    /// Fewer cells than asked for are available; ns until there are enough.
    Denied { retry_ns: u64 },
}

/// One key's lease asked of Redis: up to `want` cells, at least `min`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseAsk<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) gcra: Gcra,
    pub(crate) min: u32,
    pub(crate) want: u32,
}

/// One limit's part in a Redis decision.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    /// The Redis key (binary-safe: it embeds the request's key bytes).
    pub(crate) key: Vec<u8>,
    pub(crate) gcra: Gcra,
    pub(crate) cost: u32,
    pub(crate) shadow: bool,
}

/// What the script said about one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RemoteStep {
    /// Admitted; cells left and time until full, in ns.
    Allow { remaining: u32, reset_ns: u64 },
    /// Over the limit (a shadow limit reports this without denying); ns until admitted.
    Deny { retry_ns: u64, reset_ns: u64 },
}

/// Decision ids: a random per-store prefix and a counter, 16 bytes.
struct DecisionIds {
    nonce: u64,
    next: AtomicU64,
}

impl DecisionIds {
    fn new() -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        DecisionIds {
            nonce: seed.hash_one((std::process::id(), now)),
            next: AtomicU64::new(0),
        }
    }

    /// The id key of a call whose first key is `first`: in its hash slot.
    fn key(&self, first: &[u8]) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut k = Vec::with_capacity(first.len() + 19);
        k.extend_from_slice(first);
        k.extend_from_slice(b":d:");
        k.extend_from_slice(&self.nonce.to_le_bytes());
        k.extend_from_slice(&n.to_le_bytes());
        k
    }
}

/// How long a script remembers a decision id (ms): four operation timeouts and at least 2 s,
/// longer than a re-send of a call whose caller still waits (a client drops a request whose
/// caller gave up).
fn id_lifetime(op_timeout: Duration) -> u64 {
    (op_timeout.as_millis() as u64).saturating_mul(4).max(2_000)
}

pub(crate) struct RedisStore {
    backend: RedisBackend,
    script: Script,
    batch_script: Script,
    /// The queue of the batching task, started on first use (standalone Redis only).
    batcher: crate::task_queue::TaskQueue<batch::Pending>,
    lease_script: Script,
    ids: std::sync::Arc<DecisionIds>,
    metrics: crate::metrics::StoreMetrics,
    /// Tests decide at a time they choose (µs since the epoch; 0: the server's clock).
    #[cfg(test)]
    pub(crate) test_now_us: std::sync::Arc<AtomicU64>,
}

impl RedisStore {
    pub(crate) fn new(backend: RedisBackend) -> Self {
        RedisStore {
            script: Script::new("rate_limit_gcra", GCRA_MULTI),
            lease_script: Script::new("rate_limit_lease", GCRA_LEASE),
            batch_script: Script::new("rate_limit_batch", GCRA_BATCH),
            batcher: crate::task_queue::TaskQueue::new(),
            ids: std::sync::Arc::new(DecisionIds::new()),
            metrics: crate::metrics::StoreMetrics::new(backend.target()),
            #[cfg(test)]
            test_now_us: Default::default(),
            backend,
        }
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::StoreMetrics {
        &self.metrics
    }

    pub(crate) fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// The deadline of a decision starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.backend.op_timeout()
    }

    /// The time the scripts decide at: 0, the server's clock; tests choose their own.
    fn now_arg(&self) -> u64 {
        #[cfg(test)]
        return self.test_now_us.load(Ordering::Relaxed);
        #[cfg(not(test))]
        0
    }

    /// A call of `script` with its common arguments (the time, the id's lifetime).
    fn call(&self, script: &Script) -> ScriptCall {
        script
            .call()
            .arg(self.now_arg())
            .arg(id_lifetime(self.backend.op_timeout()))
    }

    /// Runs `call` by `deadline` (default: one operation timeout from now).
    async fn eval(
        &self,
        call: &ScriptCall,
        deadline: Option<Instant>,
    ) -> omega_core::Result<Vec<i64>> {
        let timeout = self.backend.op_timeout();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout);
        if Instant::now() >= deadline {
            // Nothing is sent: a call that cannot be answered in time must not take anything.
            return Err(omega_core::Error::timeout(timeout)
                .during(format!("script {} (no time left)", call.script().name())));
        }
        match tokio::time::timeout_at(deadline, self.backend.eval(call)).await {
            Ok(result) => result,
            Err(_) => Err(omega_core::Error::timeout(timeout).during(format!(
                "script {} at {}",
                call.script().name(),
                self.backend.target()
            ))),
        }
    }

    /// Takes a lease of up to `want` cells (at least `min`) from `key`, by `deadline`.
    pub(crate) async fn lease(
        &self,
        key: &[u8],
        gcra: &Gcra,
        min: u32,
        want: u32,
        deadline: Option<Instant>,
    ) -> omega_core::Result<LeaseGrant> {
        let ask = LeaseAsk {
            key,
            gcra: *gcra,
            min,
            want,
        };
        let grants = self.lease_many(&[ask], deadline).await?;
        Ok(grants[0])
    }

    /// Takes the leases of `asks` in one call, by `deadline` (one grant per ask, in order).
    /// On a cluster the keys must share a hash slot ([`RedisStore::is_cluster`]).
    pub(crate) async fn lease_many(
        &self,
        asks: &[LeaseAsk<'_>],
        deadline: Option<Instant>,
    ) -> omega_core::Result<Vec<LeaseGrant>> {
        let Some(first) = asks.first() else {
            return Ok(Vec::new());
        };
        let mut call = self.call(&self.lease_script);
        for ask in asks {
            call = call
                .arg(ask.gcra.interval)
                .arg(ask.gcra.capacity)
                .arg(ask.min)
                .arg(ask.want)
                .key(ask.key);
        }
        let call = call.key(self.ids.key(first.key));
        let raw = self.eval(&call, deadline).await?;
        // A reply too short for a key (which the script never sends) grants it nothing.
        let at = |i: usize| raw.get(i).copied().unwrap_or(0);
        Ok((0..asks.len())
            .map(|i| {
                let (first, second) = (at(2 * i), at(2 * i + 1).max(0) as u64);
                if first > 0 {
                    LeaseGrant::Granted {
                        cells: u32::try_from(first).unwrap_or(u32::MAX),
                        full_after_ns: second,
                    }
                } else {
                    LeaseGrant::Denied { retry_ns: second }
                }
            })
            .collect())
    }

    /// Whether the backend is a cluster (a multi-key call then needs one hash slot).
    pub(crate) fn is_cluster(&self) -> bool {
        self.backend.is_cluster()
    }

    /// Takes from every item or from none, by `deadline`, and hands the items back. Errors
    /// are the backend's, or a timeout when the decision reached its deadline.
    pub(crate) async fn take(
        &self,
        items: Vec<Item>,
        deadline: Option<Instant>,
    ) -> (Vec<Item>, omega_core::Result<Vec<RemoteStep>>) {
        let deadline = deadline.unwrap_or_else(|| self.deadline());
        if self.backend.is_cluster() {
            let result = self.take_on_cluster(&items, deadline).await;
            return (items, result);
        }
        let start = |rx| {
            batch::start(
                batch::Batcher {
                    backend: self.backend.clone(),
                    script: self.batch_script.clone(),
                    ids: self.ids.clone(),
                    #[cfg(test)]
                    test_now_us: self.test_now_us.clone(),
                },
                rx,
            )
        };
        let op_timeout = self.backend.op_timeout();
        batch::submit(&self.batcher, start, items, deadline, op_timeout).await
    }

    /// One call per slot, all at once; a denial or a failure gives back, in the background,
    /// what the other slots took.
    async fn take_on_cluster(
        &self,
        items: &[Item],
        deadline: Instant,
    ) -> omega_core::Result<Vec<RemoteStep>> {
        let groups = by_slot(items, 0..items.len());
        let calls = groups.iter().map(|members| {
            let group: Vec<&Item> = members.iter().map(|&i| &items[i]).collect();
            async move { self.run_refs(&group, false, Some(deadline)).await }
        });
        let results = futures_util::future::join_all(calls).await;
        let mut steps = vec![
            RemoteStep::Allow {
                remaining: u32::MAX,
                reset_ns: 0
            };
            items.len()
        ];
        let (mut error, mut denied) = (None, false);
        let mut taken: Vec<Item> = Vec::new();
        for (members, result) in groups.iter().zip(results) {
            match result {
                Ok((admitted, group_steps)) => {
                    for (&i, step) in members.iter().zip(group_steps) {
                        steps[i] = step;
                        if admitted && matches!(step, RemoteStep::Allow { .. }) {
                            taken.push(items[i].clone());
                        }
                    }
                    denied |= !admitted;
                }
                Err(e) => error = Some(e),
            }
        }
        if (denied || error.is_some()) && !taken.is_empty() {
            self.refund_later(taken);
        }
        match error {
            Some(e) => Err(e),
            None => Ok(steps),
        }
    }

    /// Gives back what `taken` took, in the background (one call per slot, each within the
    /// operation timeout). A failed refund leaves those cells taken until they replenish: it
    /// can cost admissions, never add any.
    fn refund_later(&self, taken: Vec<Item>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = RefundStore {
            backend: self.backend.clone(),
            script: self.script.clone(),
            ids: self.ids.clone(),
        };
        runtime.spawn(async move {
            let calls = by_slot(&taken, 0..taken.len()).into_iter().map(|members| {
                let group: Vec<&Item> = members.iter().map(|&i| &taken[i]).collect();
                let call = multi_call(&store.script, &store.ids, &group, true, 0, &store.backend);
                let backend = store.backend.clone();
                async move { backend.eval::<Vec<i64>>(&call).await }
            });
            futures_util::future::join_all(calls).await;
        });
    }

    /// One `GCRA_MULTI` call over `items` (one slot), by `deadline`: whether every enforcing
    /// limit admitted, and each item's step.
    pub(crate) async fn run_refs(
        &self,
        items: &[&Item],
        refund: bool,
        deadline: Option<Instant>,
    ) -> omega_core::Result<(bool, Vec<RemoteStep>)> {
        let call = multi_call(
            &self.script,
            &self.ids,
            items,
            refund,
            self.now_arg(),
            &self.backend,
        );
        let raw = self.eval(&call, deadline).await?;
        let admitted = raw.first().copied() == Some(1);
        Ok((admitted, parse_steps(raw.get(1..).unwrap_or_default())))
    }
}

/// What a background refund needs of the store.
struct RefundStore {
    backend: RedisBackend,
    script: Script,
    ids: std::sync::Arc<DecisionIds>,
}

/// A `GCRA_MULTI` call: `take` or `refund` over `items`, at `now` (0: the server's clock).
fn multi_call(
    script: &Script,
    ids: &DecisionIds,
    items: &[&Item],
    refund: bool,
    now: u64,
    backend: &RedisBackend,
) -> ScriptCall {
    let mut call = script
        .call()
        .arg(now)
        .arg(id_lifetime(backend.op_timeout()))
        .arg(if refund { "refund" } else { "take" });
    for item in items {
        call = call
            .key(item.key.as_slice())
            .arg(item.gcra.interval)
            .arg(item.gcra.capacity)
            .arg(item.cost)
            .arg(if item.shadow { "1" } else { "0" });
    }
    call.key(ids.key(items.first().map_or(&b""[..], |i| &i.key)))
}

/// Steps from `(flag, a, b)` triples.
fn parse_steps(raw: &[i64]) -> Vec<RemoteStep> {
    raw.chunks_exact(3)
        .map(|c| match c[0] {
            1 => RemoteStep::Allow {
                remaining: u32::try_from(c[1].max(0)).unwrap_or(u32::MAX),
                reset_ns: c[2].max(0) as u64,
            },
            _ => RemoteStep::Deny {
                retry_ns: c[1].max(0) as u64,
                reset_ns: c[2].max(0) as u64,
            },
        })
        .collect()
}

/// Item indices grouped by Redis Cluster slot, in first-seen order.
fn by_slot(items: &[Item], indices: impl Iterator<Item = usize>) -> Vec<Vec<usize>> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for i in indices {
        let slot = hash_slot(&items[i].key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, members)| members).collect()
}

/// The Redis key of a limit's bucket: `prefix:{rl:limit:key}` (or `prefix:{rl:limit}` for a
/// global limit), the whole name one hash tag, so that each bucket has its own slot on a
/// cluster. Built as [`Keyspace::tagged`] builds it (`%`, `{` and `}` of the tag escaped), from
/// the key's bytes, which need not be UTF-8.
pub(crate) fn redis_key(ks: &Keyspace, limit: &str, key: Option<&[u8]>) -> Vec<u8> {
    let prefix = ks.prefix().as_bytes();
    let mut out = Vec::with_capacity(prefix.len() + limit.len() + key.map_or(0, <[u8]>::len) + 8);
    out.extend_from_slice(prefix);
    if !prefix.is_empty() {
        out.push(b':');
    }
    out.push(b'{');
    let mut tag = |bytes: &[u8]| {
        for &b in bytes {
            match b {
                b'%' => out.extend_from_slice(b"%25"),
                b'{' => out.extend_from_slice(b"%7B"),
                b'}' => out.extend_from_slice(b"%7D"),
                b => out.push(b),
            }
        }
    };
    // A limit name is never empty (`check_name`), so neither is the tag.
    tag(limit.as_bytes());
    if let Some(key) = key {
        tag(b":");
        tag(key);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod consistency;
#[cfg(test)]
mod replay;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_are_the_keyspace_s_tagged_keys_and_bytes_are_kept() {
        for prefix in ["omega", ""] {
            let ks = Keyspace::new(prefix).unwrap();
            for key in ["ann", "", "a{b}c", "50%", "é"] {
                let tag = format!("rl:per_user:{key}");
                assert_eq!(
                    redis_key(&ks, "rl:per_user", Some(key.as_bytes())),
                    ks.tagged(&tag, &[]).into_bytes(),
                    "{prefix:?} {key:?}"
                );
            }
            assert_eq!(
                redis_key(&ks, "rl:route:/x:global", None),
                ks.tagged("rl:route:/x:global", &[]).into_bytes()
            );
        }
        let ks = Keyspace::default();
        assert_eq!(
            redis_key(&ks, "rl:k", Some(&[0xff, b'}', 0])),
            b"omega:{rl:k:\xff%7D\x00}"
        );
        // One hash tag per bucket: the whole tag decides the slot.
        let a = redis_key(&ks, "rl:k", Some(&[0xff]));
        assert_eq!(hash_slot(&a), hash_slot(b"rl:k:\xff"));
    }
}
