//! Limits in Redis: one Lua script per decision, on the Redis server's clock.
//!
//! On a standalone Redis, decisions that are made at the same time share one script call:
//! while calls are in flight, new decisions queue, and the next call carries every queued
//! decision (`GCRA_BATCH`). The script decides them one after the other, in arrival order,
//! each all-or-none exactly as if it ran alone; a key that several decisions touch is read
//! and written once. An idle limiter sends each decision at once, so batching adds no wait;
//! under load it cuts Redis's work per decision (one `EVALSHA`, one `TIME`, one `MGET`, one
//! `SET` per distinct key) and the client's. A decision waits at most the backend's operation
//! timeout, queue included.
//!
//! The script receives every limit that applies to a request and admits the request only when
//! all enforcing limits have room; then it takes from all of them, otherwise from none. TATs
//! are kept in microseconds (`TIME`), and each key expires when its bucket is full again, so
//! Redis holds only active keys.
//!
//! On Redis Cluster the keys of one request usually live in different slots (each limit key is
//! its own hash tag, so one hot key does not pin every limit to one node). The store then runs
//! the script once per slot, in limit order; when a later slot denies, it runs the script in
//! refund mode on the slots that already took, so a denial gives back what the other limits
//! took. Between the two calls another request may briefly see those cells as taken: a
//! cluster can deny a little more than a single server, never admit more.
//!
//! When a cluster node is down (or the cluster refuses commands while it is incomplete), the
//! decisions whose keys live there fail within the operation timeout and each limit follows
//! its failure policy; redis-rs reconnects to the node when it is back, and decisions go to
//! the cluster again by themselves (`tests/redis.rs` kills a node of a 3-node cluster). A node
//! that restarts without persistence comes back empty: its keys start with full buckets.

use std::time::Duration;

use omega_core::redis::{RedisBackend, Script};
use omega_core::{Keyspace, hash_slot};

use crate::limit::MAX_LIMITS;
use crate::quota::Gcra;
use scripts::{GCRA_BATCH, GCRA_LEASE, GCRA_MULTI};

mod scripts;

/// The most decisions one batched call carries.
const MAX_BATCH: usize = 256;
/// Batched calls in flight at once (per limiter).
const MAX_IN_FLIGHT: usize = 4;
// Key and parameter indices travel as u16 (see `GCRA_BATCH`).
const _: () = assert!(MAX_BATCH * MAX_LIMITS <= u16::MAX as usize);

/// What a lease call gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaseGrant {
    /// `cells` taken; the bucket is full again `full_after_us` from now.
    Granted { cells: u32, full_after_us: u64 },
    /// Fewer cells than asked for are available; µs until there are enough.
    Denied { retry_us: u64 },
}

/// One limit's part in a Redis decision.
#[derive(Debug)]
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
    /// Admitted; cells left and time until full, in µs.
    Allow { remaining: u32, reset_us: u64 },
    /// Over the limit (a shadow limit reports this without denying); µs until admitted.
    Deny { retry_us: u64, reset_us: u64 },
}

pub(crate) struct RedisStore {
    backend: RedisBackend,
    script: Script,
    batch_script: Script,
    /// The queue of the batching task, started on first use (standalone Redis only).
    batcher: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Pending>>,
    lease_script: Script,
    metrics: crate::metrics::StoreMetrics,
}

impl RedisStore {
    pub(crate) fn new(backend: RedisBackend) -> Self {
        RedisStore {
            script: Script::new("rate_limit_gcra", GCRA_MULTI),
            lease_script: Script::new("rate_limit_lease", GCRA_LEASE),
            batch_script: Script::new("rate_limit_batch", GCRA_BATCH),
            batcher: std::sync::OnceLock::new(),
            metrics: crate::metrics::StoreMetrics::new(backend.target()),
            backend,
        }
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::StoreMetrics {
        &self.metrics
    }

    pub(crate) fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// Takes a lease of up to `want` cells (at least `min`) from `key`.
    pub(crate) async fn lease(
        &self,
        key: &[u8],
        gcra: &Gcra,
        min: u32,
        want: u32,
    ) -> omega_core::Result<LeaseGrant> {
        let call = self
            .lease_script
            .call()
            .key(key)
            .arg(micros(gcra.interval))
            .arg(micros(gcra.capacity))
            .arg(min)
            .arg(want);
        let raw: Vec<i64> = self.backend.eval(&call).await?;
        let (first, second) = (
            raw.first().copied().unwrap_or(0),
            raw.get(1).copied().unwrap_or(0).max(0) as u64,
        );
        Ok(if first > 0 {
            LeaseGrant::Granted {
                cells: u32::try_from(first).unwrap_or(u32::MAX),
                full_after_us: second,
            }
        } else {
            LeaseGrant::Denied { retry_us: second }
        })
    }

    /// Takes from every item or from none, and hands the items back. Errors are the
    /// backend's, or a timeout when the decision waited longer than the operation timeout.
    pub(crate) async fn take(
        &self,
        items: Vec<Item>,
    ) -> (Vec<Item>, omega_core::Result<Vec<RemoteStep>>) {
        if self.backend.is_cluster() {
            let result = self.take_on_cluster(&items).await;
            return (items, result);
        }
        let queue = self.batcher.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(run_batches(
                self.backend.clone(),
                self.batch_script.clone(),
                rx,
            ));
            tx
        });
        let n = items.len();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let timeout = self.backend.op_timeout();
        let lost = || omega_core::Error::timeout(timeout).during("script rate_limit_batch");
        let pending = Pending {
            items,
            reply,
            queued: std::time::Instant::now(),
        };
        if let Err(unsent) = queue.send(pending) {
            return (unsent.0.items, Err(lost()));
        }
        // The batching task answers within the operation timeout, counted from `queued`.
        match answer.await {
            Ok(done) => done,
            Err(_) => (placeholder_items(n), Err(lost())),
        }
    }

    async fn take_on_cluster(&self, items: &[Item]) -> omega_core::Result<Vec<RemoteStep>> {
        let mut steps = vec![
            RemoteStep::Allow {
                remaining: 0,
                reset_us: 0
            };
            items.len()
        ];
        let mut taken: Vec<usize> = Vec::new();
        for members in by_slot(items, 0..items.len()) {
            let group: Vec<&Item> = members.iter().map(|&i| &items[i]).collect();
            let (admitted, group_steps) = match self.run_refs(&group, false).await {
                Ok(r) => r,
                Err(e) => {
                    self.refund(items, &taken).await;
                    return Err(e);
                }
            };
            for (&i, step) in members.iter().zip(group_steps) {
                steps[i] = step;
            }
            if !admitted {
                // Slots not asked yet report a full bucket and took nothing.
                self.refund(items, &taken).await;
                return Ok(steps);
            }
            taken.extend(
                members
                    .into_iter()
                    .filter(|&i| matches!(steps[i], RemoteStep::Allow { .. })),
            );
        }
        Ok(steps)
    }

    /// Gives back what the `taken` items took. A failed refund leaves those cells taken until
    /// they replenish: it can cost admissions, never add any.
    async fn refund(&self, items: &[Item], taken: &[usize]) {
        for members in by_slot(items, taken.iter().copied()) {
            let group: Vec<&Item> = members.iter().map(|&i| &items[i]).collect();
            let _ = self.run_refs(&group, true).await;
        }
    }

    async fn run_refs(
        &self,
        items: &[&Item],
        refund: bool,
    ) -> omega_core::Result<(bool, Vec<RemoteStep>)> {
        let mut call = self
            .script
            .call()
            .arg(if refund { "refund" } else { "take" });
        for item in items {
            call = call
                .key(item.key.as_slice())
                .arg(micros(item.gcra.interval))
                .arg(micros(item.gcra.capacity))
                .arg(item.cost)
                .arg(if item.shadow { "1" } else { "0" });
        }
        let raw: Vec<i64> = self.backend.eval(&call).await?;
        let admitted = raw.first().copied() == Some(1);
        Ok((admitted, parse_steps(raw.get(1..).unwrap_or_default())))
    }
}

/// A decision waiting for a batched call.
struct Pending {
    items: Vec<Item>,
    /// When the decision was queued: its time budget runs from here.
    queued: std::time::Instant,
    reply: tokio::sync::oneshot::Sender<(Vec<Item>, omega_core::Result<Vec<RemoteStep>>)>,
}

/// Items whose originals were not handed back (the decision timed out); only their count
/// matters to the caller, which then decides by the failure policies.
fn placeholder_items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|_| Item {
            key: Vec::new(),
            gcra: Gcra {
                interval: 1,
                capacity: 1,
                burst: 1,
            },
            cost: 0,
            shadow: false,
        })
        .collect()
}

/// The batching task: takes what is queued, up to `MAX_BATCH` decisions, whenever one of
/// `MAX_IN_FLIGHT` calls is free; ends when the limiter is dropped.
async fn run_batches(
    backend: RedisBackend,
    script: Script,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Pending>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (backend, script) = (backend.clone(), script.clone());
        tokio::spawn(async move {
            run_batch(&backend, &script, batch).await;
            drop(slot);
        });
    }
}

/// One call for a batch of decisions; each gets its own steps back.
async fn run_batch(backend: &RedisBackend, script: &Script, batch: Vec<Pending>) {
    // Distinct keys and distinct limit parameters, numbered from 1 as Lua counts.
    let mut keys: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    let mut ordered: Vec<&[u8]> = Vec::new();
    let mut params: Vec<(u64, u64, bool)> = Vec::new();
    // Every decision in one binary string (see `GCRA_BATCH`): indices fit in u16, as a
    // batch holds at most MAX_BATCH × MAX_LIMITS keys and parameter sets.
    let mut decisions: Vec<u8> = Vec::with_capacity(batch.len() * (6 + 4 * 3));
    for p in &batch {
        decisions.extend_from_slice(&(p.items.len() as u16).to_le_bytes());
        decisions.extend_from_slice(&p.items.first().map_or(0, |i| i.cost).to_le_bytes());
        for item in &p.items {
            let g = (item.gcra.interval, item.gcra.capacity, item.shadow);
            let param = match params.iter().position(|&q| q == g) {
                Some(i) => i + 1,
                None => {
                    params.push(g);
                    params.len()
                }
            };
            let next = ordered.len() + 1;
            let key = *keys.entry(item.key.as_slice()).or_insert_with(|| {
                ordered.push(item.key.as_slice());
                next
            });
            decisions.extend_from_slice(&(param as u16).to_le_bytes());
            decisions.extend_from_slice(&(key as u16).to_le_bytes());
        }
    }
    let mut call = script.call().arg(params.len());
    for (interval, capacity, shadow) in &params {
        call = call
            .arg(micros(*interval))
            .arg(micros(*capacity))
            .arg(if *shadow { "1" } else { "0" });
    }
    call = call.arg(&decisions[..]);
    for key in ordered {
        call = call.key(key);
    }
    drop(keys);
    // The oldest decision's budget bounds the call, so no decision waits past the timeout.
    let timeout = backend.op_timeout();
    let waited = batch
        .iter()
        .map(|p| p.queued.elapsed())
        .max()
        .unwrap_or_default();
    let result: omega_core::Result<Vec<i64>> =
        match tokio::time::timeout(timeout.saturating_sub(waited), backend.eval(&call)).await {
            Ok(result) => result,
            Err(_) => Err(omega_core::Error::timeout(timeout).during("script rate_limit_batch")),
        };
    match result {
        Ok(raw) => {
            let mut at = 0;
            for p in batch {
                let steps = raw
                    .get(at..at + 5)
                    .map(|summary| batch_steps(&p.items, summary))
                    .ok_or_else(|| {
                        omega_core::Error::timeout(backend.op_timeout())
                            .during("script rate_limit_batch: short reply")
                    });
                at += 5;
                let _ = p.reply.send((p.items, steps));
            }
        }
        Err(e) => {
            for p in batch {
                let _ = p.reply.send((p.items, Err(e.clone())));
            }
        }
    }
}

/// Per-limit steps from one decision's summary in a batched reply. Limits other than the
/// binding (or denying) one report as admitted with room to spare, so that the binding one
/// is what the headers show; shadow limits that would have denied report so.
fn batch_steps(items: &[Item], summary: &[i64]) -> Vec<RemoteStep> {
    let (admitted, j, a, b, shadows) = (
        summary[0] == 1,
        summary[1],
        summary[2].max(0) as u64,
        summary[3].max(0) as u64,
        summary[4],
    );
    (0..items.len())
        .map(|i| {
            if i as i64 + 1 == j {
                if admitted {
                    RemoteStep::Allow {
                        remaining: u32::try_from(a).unwrap_or(u32::MAX),
                        reset_us: b,
                    }
                } else {
                    RemoteStep::Deny {
                        retry_us: a,
                        reset_us: b,
                    }
                }
            } else if i < 63 && shadows & (1 << i) != 0 {
                RemoteStep::Deny {
                    retry_us: 0,
                    reset_us: 0,
                }
            } else {
                RemoteStep::Allow {
                    remaining: u32::MAX,
                    reset_us: 0,
                }
            }
        })
        .collect()
}

/// Steps from `(flag, a, b)` triples.
fn parse_steps(raw: &[i64]) -> Vec<RemoteStep> {
    raw.chunks_exact(3)
        .map(|c| match c[0] {
            1 => RemoteStep::Allow {
                remaining: u32::try_from(c[1].max(0)).unwrap_or(u32::MAX),
                reset_us: c[2].max(0) as u64,
            },
            _ => RemoteStep::Deny {
                retry_us: c[1].max(0) as u64,
                reset_us: c[2].max(0) as u64,
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

/// Nanoseconds as fractional microseconds, for the script.
fn micros(nanos: u64) -> f64 {
    nanos as f64 / 1_000.0
}

/// Microseconds from the script as a duration.
pub(crate) fn from_micros(us: u64) -> Duration {
    Duration::from_micros(us)
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
