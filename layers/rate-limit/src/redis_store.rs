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

use omega_core::hash_slot;
use omega_core::redis::{RedisBackend, Script};

use crate::quota::Gcra;

const GCRA_MULTI: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refund = ARGV[1] == 'refund'
local tats = redis.call('MGET', unpack(KEYS))
local out = {1}
local new = {}
local denied = false
for i = 1, #KEYS do
  local b = 1 + 4 * (i - 1)
  local interval = tonumber(ARGV[b + 1])
  local cost = tonumber(ARGV[b + 3])
  local tat = tonumber(tats[i])
  if refund then
    if tat then
      local nt = tat - cost * interval
      if nt <= now then redis.call('DEL', KEYS[i]) else
        redis.call('SET', KEYS[i], nt, 'PX', math.ceil((nt - now) / 1000) + 1)
      end
    end
  else
    local cap = tonumber(ARGV[b + 2])
    if (not tat) or tat < now then tat = now end
    local nt = tat + cost * interval
    local ahead = nt - now
    if ahead <= cap then
      new[i] = nt
      out[#out + 1] = 1
      out[#out + 1] = math.floor((cap - ahead) / interval)
      out[#out + 1] = math.ceil(ahead)
    else
      new[i] = false
      if ARGV[b + 4] ~= '1' then denied = true end
      out[#out + 1] = ARGV[b + 4] == '1' and 2 or 0
      out[#out + 1] = math.ceil(ahead - cap)
      out[#out + 1] = math.ceil(tat - now)
    end
  end
end
if refund then return out end
if denied then
  out[1] = 0
  return out
end
for i = 1, #KEYS do
  if new[i] then
    redis.call('SET', KEYS[i], new[i], 'PX', math.ceil((new[i] - now) / 1000) + 1)
  end
end
return out
"#;

/// Many decisions in one call. `ARGV` holds the number of distinct limit parameter sets `L`,
/// then `L` triples (interval µs, capacity µs, shadow flag), then one binary string with every
/// decision: its limit count `n` (u16), its cost (u32), and `n` pairs (parameter set index,
/// key index in `KEYS`; u16 each), little-endian. Decoding bytes with `string.byte` spares
/// Redis a decimal parse (`strtod`) per number, the largest part of its work per decision
/// when numbers come as strings. The reply
/// holds five numbers per decision, so that Redis converts little:
/// - admitted: `1, j, cells left, µs until full, shadow bits` for its binding limit `j` (the
///   enforcing one with the fewest cells left; 0 when only shadow limits applied);
/// - denied: `0, j, µs until admitted, µs until full, shadow bits` for the denying limit `j`
///   that frees up last.
///
/// Bit `j - 1` of the shadow bits is set when shadow limit `j` would have denied.
const GCRA_BATCH: &str = r#"
local tonumber, floor, ceil = tonumber, math.floor, math.ceil
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local raw = redis.call('MGET', unpack(KEYS))
local tat = {}
for i = 1, #KEYS do
  local v = tonumber(raw[i])
  if (not v) or v < now then v = now end
  tat[i] = v
end
local nl = tonumber(ARGV[1])
local interval, cap, shadow = {}, {}, {}
for l = 1, nl do
  local b = 2 + 3 * (l - 1)
  interval[l] = tonumber(ARGV[b])
  cap[l] = tonumber(ARGV[b + 1])
  shadow[l] = ARGV[b + 2] == '1'
end
local dirty = {}
local out = {}
local o = 0
local blob = ARGV[2 + 3 * nl]
local byte = string.byte
local p, len = 1, #blob
local ls, ks = {}, {}
while p <= len do
  local n0, n1, c0, c1, c2, c3 = byte(blob, p, p + 5)
  local n = n0 + 256 * n1
  local cost = c0 + 256 * (c1 + 256 * (c2 + 256 * c3))
  p = p + 6
  local ok = true
  local bj, best, reset = 0, -1, 0
  local shadows = 0
  for j = 1, n do
    local l0, l1, k0, k1 = byte(blob, p, p + 3)
    p = p + 4
    local l, k = l0 + 256 * l1, k0 + 256 * k1
    ls[j], ks[j] = l, k
    local ahead = tat[k] + cost * interval[l] - now
    if ahead <= cap[l] then
      local left = cap[l] - ahead
      if ok and not shadow[l] and (best < 0 or left < best) then bj, best, reset = j, left, ahead end
    elseif shadow[l] then
      shadows = shadows + 2 ^ (j - 1)
    elseif ok or ahead - cap[l] > best then
      ok = false
      bj, best, reset = j, ahead - cap[l], tat[k] - now
    end
  end
  if ok then
    for j = 1, n do
      local k, l = ks[j], ls[j]
      local nt = tat[k] + cost * interval[l]
      if nt - now <= cap[l] then
        tat[k] = nt
        dirty[k] = true
      end
    end
    out[o + 1] = 1
    out[o + 3] = bj > 0 and floor(best / interval[ls[bj]]) or 0
  else
    out[o + 1] = 0
    out[o + 3] = ceil(best)
  end
  out[o + 2] = bj
  out[o + 4] = ceil(reset)
  out[o + 5] = shadows
  o = o + 5
end
for k in pairs(dirty) do
  redis.call('SET', KEYS[k], tat[k], 'PX', ceil((tat[k] - now) / 1000) + 1)
end
return out
"#;

/// The most decisions one batched call carries.
const MAX_BATCH: usize = 256;
/// Batched calls in flight at once (per limiter).
const MAX_IN_FLIGHT: usize = 4;
// Key and parameter indices travel as u16 (see `GCRA_BATCH`).
const _: () = assert!(MAX_BATCH * crate::MAX_LIMITS <= u16::MAX as usize);

/// Takes a lease: `min(want, available)` cells of one key, provided at least `min` are
/// available; otherwise nothing, and how long until `min` are. Same key format and GCRA as
/// `GCRA_MULTI`, so exact and leasing instances share one bucket.
const GCRA_LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local min = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]))
if (not tat) or tat < now then tat = now end
local ahead = tat - now
local avail = math.floor((cap - ahead) / interval + 1e-9)
if avail < min then
  return {0, math.ceil(ahead + min * interval - cap)}
end
local n = math.min(want, avail)
local nt = tat + n * interval
redis.call('SET', KEYS[1], nt, 'PX', math.ceil((nt - now) / 1000) + 1)
return {n, math.ceil(nt - now)}
"#;

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
    pub(crate) key: String,
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
        key: &str,
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
                .key(item.key.as_str())
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
            key: String::new(),
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
    let mut keys: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut ordered: Vec<&str> = Vec::new();
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
            let key = *keys.entry(item.key.as_str()).or_insert_with(|| {
                ordered.push(item.key.as_str());
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
        let slot = hash_slot(items[i].key.as_bytes());
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
