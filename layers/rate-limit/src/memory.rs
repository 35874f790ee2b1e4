//! In-process buckets: one atomic TAT per key, bounded memory, idle keys forgotten.
//!
//! A limit keeps its keys in sharded hash maps from a 64-bit key hash (foldhash with a
//! per-process random seed, so clients cannot aim collisions) to one `AtomicU64` TAT. A
//! decision takes a shard's read lock (shared, never held across an await) and runs a
//! compare-and-swap loop on the key's TAT; only a key seen for the first time takes the write
//! lock. A denial writes nothing.
//!
//! Memory is bounded by `max_keys`. When a shard is full, keys whose TAT has passed (their
//! bucket is full again, so forgetting them changes nothing) are dropped first; if every key
//! is still active, the eighth of the shard with the least outstanding time is forgotten, which
//! can give those keys back at most their burst. No cleanup thread is needed.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use omega_core::Nanos;

use crate::quota::{Gcra, Step};

const SHARDS: usize = 32;

/// The default bound on keys per limit in memory.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Passes an already-hashed `u64` through (keys are foldhash hashes with a per-process seed,
/// so they are uniform already).
#[derive(Clone, Copy, Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, AtomicU64, BuildHasherDefault<PassThrough>>;

/// One limit's buckets in this process.
#[derive(Debug)]
pub(crate) struct LocalBuckets {
    global: AtomicU64,
    shards: Box<[RwLock<Map>]>,
    shard_cap: usize,
    hasher: foldhash::fast::RandomState,
}

impl LocalBuckets {
    pub(crate) fn new(max_keys: usize) -> Self {
        LocalBuckets {
            global: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| RwLock::new(Map::default())).collect(),
            shard_cap: max_keys.div_ceil(SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The hash of a key's bytes (the limit's single global bucket has none).
    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// One GCRA step on the bucket of `key` (`None`: the global bucket).
    #[inline(always)]
    pub(crate) fn step(&self, key: Option<u64>, g: &Gcra, now: Nanos, cost: u32) -> Step {
        match key {
            None => step_cell(&self.global, g, now, cost),
            Some(h) => self.with_cell(h, now, |cell| step_cell(cell, g, now, cost)),
        }
    }

    /// Gives back `amount` nanoseconds an admitted step took (after another limit denied):
    /// the step's own `interval × cost`, whatever the quota is by now.
    pub(crate) fn refund(&self, key: Option<u64>, amount: u64, now: Nanos) {
        let give_back = |cell: &AtomicU64| {
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(amount))
            });
        };
        match key {
            None => give_back(&self.global),
            Some(h) => self.with_cell(h, now, give_back),
        }
    }

    /// The TAT of a key, without changing it.
    #[cfg(test)]
    pub(crate) fn peek(&self, key: Option<u64>) -> Nanos {
        match key {
            None => self.global.load(Ordering::Acquire),
            Some(h) => {
                let shard = self.shard(h).read().unwrap_or_else(PoisonError::into_inner);
                shard.get(&h).map_or(0, |c| c.load(Ordering::Acquire))
            }
        }
    }

    /// Keys currently held.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<Map> {
        // The map uses the low bits; the shard comes from the high ones.
        &self.shards[(hash >> 59) as usize % SHARDS]
    }

    #[inline]
    fn with_cell<R>(&self, hash: u64, now: Nanos, f: impl FnOnce(&AtomicU64) -> R) -> R {
        let shard = self.shard(hash);
        {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cell) = map.get(&hash) {
                return f(cell);
            }
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.shard_cap && !map.contains_key(&hash) {
            evict(&mut map, now, self.shard_cap);
        }
        f(map.entry(hash).or_insert_with(|| AtomicU64::new(0)))
    }
}

#[inline(always)]
fn step_cell(cell: &AtomicU64, g: &Gcra, now: Nanos, cost: u32) -> Step {
    let mut tat = cell.load(Ordering::Acquire);
    loop {
        match g.step(tat, now, cost) {
            deny @ Step::Deny { .. } => return deny,
            allow @ Step::Allow { tat: next } => {
                match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return allow,
                    Err(actual) => tat = actual,
                }
            }
        }
    }
}

/// Makes room in a full shard: idle keys first, then the least-loaded eighth.
fn evict(map: &mut Map, now: Nanos, cap: usize) {
    map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
    if map.len() < cap {
        return;
    }
    let mut tats: Vec<u64> = map.values().map(|t| t.load(Ordering::Relaxed)).collect();
    let nth = tats.len() / 8;
    let (_, threshold, _) = tats.select_nth_unstable(nth);
    let threshold = *threshold;
    map.retain(|_, tat| tat.load(Ordering::Relaxed) > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Quota;

    #[test]
    fn keys_are_independent_and_denials_write_nothing() {
        let b = LocalBuckets::new(1000);
        let g = Quota::per_second(1).with_burst(2).gcra();
        let (a, c) = (Some(b.hash(b"a")), Some(b.hash(b"c")));
        let now = 1_000_000_000;
        assert!(matches!(b.step(a, &g, now, 2), Step::Allow { .. }));
        let before = b.peek(a);
        assert!(matches!(b.step(a, &g, now, 1), Step::Deny { .. }));
        assert_eq!(b.peek(a), before);
        assert!(matches!(b.step(c, &g, now, 1), Step::Allow { .. }));
        b.refund(a, g.interval * 2, now);
        assert!(matches!(b.step(a, &g, now, 2), Step::Allow { .. }));
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound() {
        let max = 10_000;
        let b = LocalBuckets::new(max);
        let g = Quota::per_minute(10).gcra();
        let mut now = 1;
        for i in 0..1_000_000u64 {
            now += 1_000; // a million keys within one second: every one is still active
            let key = Some(b.hash(i.to_string().as_bytes()));
            let _ = b.step(key, &g, now, 1);
        }
        assert!(b.len() <= max.div_ceil(SHARDS) * SHARDS, "{} keys", b.len());
        assert!(
            b.len() > max / 2,
            "eviction is not too eager: {} keys",
            b.len()
        );
    }

    #[test]
    fn idle_keys_are_reclaimed_before_active_ones() {
        let b = LocalBuckets::new(SHARDS * 4);
        let g = Quota::per_second(1).with_burst(1).gcra();
        let now = 10_000_000_000;
        let active = Some(b.hash(b"active"));
        assert!(matches!(b.step(active, &g, now, 1), Step::Allow { .. }));
        let tat = b.peek(active);
        // Fill every shard with keys that are idle by the time the next ones arrive.
        for i in 0..10_000 {
            let _ = b.step(
                Some(b.hash(format!("idle{i}").as_bytes())),
                &g,
                now - 5_000_000_000,
                1,
            );
        }
        assert_eq!(b.peek(active), tat, "the active key survived the flood");
    }
}
