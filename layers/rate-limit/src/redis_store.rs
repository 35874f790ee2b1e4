//! Limits in Redis: one Lua script per decision, on the Redis server's clock.
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
    lease_script: Script,
    metrics: crate::metrics::StoreMetrics,
}

impl RedisStore {
    pub(crate) fn new(backend: RedisBackend) -> Self {
        RedisStore {
            script: Script::new("rate_limit_gcra", GCRA_MULTI),
            lease_script: Script::new("rate_limit_lease", GCRA_LEASE),
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

    /// Takes from every item or from none. Errors are the backend's (bounded by its timeout).
    pub(crate) async fn take(&self, items: &[Item]) -> omega_core::Result<Vec<RemoteStep>> {
        if !self.backend.is_cluster() {
            return self.run(items, false).await.map(|(_, steps)| steps);
        }
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

    async fn run(
        &self,
        items: &[Item],
        refund: bool,
    ) -> omega_core::Result<(bool, Vec<RemoteStep>)> {
        let refs: Vec<&Item> = items.iter().collect();
        self.run_refs(&refs, refund).await
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
        let steps = raw[1..]
            .chunks_exact(3)
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
            .collect();
        Ok((admitted, steps))
    }
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
