//! The in-process backend: a small key-value store with per-key expiry.
//!
//! It backs [`crate::Backend::Memory`]: one process, no server, the same operations as the
//! Redis backend. Layers keep their hot-path state in their own lock-free structures; this
//! store is for the plain values they share (topologies, snapshots, published state).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, Nanos, duration_nanos};

const SHARDS: usize = 16;
/// Expired entries are swept from a shard after this many writes to it.
const SWEEP_EVERY: u32 = 1024;

/// An in-memory key-value store with per-key expiry. Clones share the store.
#[derive(Clone, Debug)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: Clock,
    shards: [Mutex<Shard>; SHARDS],
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<String, Entry>,
    writes: u32,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_at: Option<Nanos>,
}

impl Entry {
    fn live(&self, now: Nanos) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        MemoryBackend::with_clock(Clock::system())
    }

    /// An empty store whose expiry follows `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        MemoryBackend {
            inner: Arc::new(Inner {
                clock,
                shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            }),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        // FNV-1a: cheap and good enough to spread keys over 16 shards.
        let mut h: u32 = 0x811c_9dc5;
        for b in key.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        self.inner.shards[h as usize % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn deadline(&self, now: Nanos, ttl: Option<Duration>) -> Option<Nanos> {
        ttl.map(|t| now.saturating_add(duration_nanos(t)))
    }

    /// The value of `key`, if present and not expired.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.inner.clock.now();
        let shard = self.shard(key);
        shard
            .map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    /// Stores `value` under `key`, expiring after `ttl` when given.
    pub fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) {
        let now = self.inner.clock.now();
        let expires_at = self.deadline(now, ttl);
        let mut shard = self.shard(key);
        shard.map.insert(
            key.to_owned(),
            Entry {
                value: value.to_vec(),
                expires_at,
            },
        );
        Self::after_write(&mut shard, now);
    }

    /// Stores `value` only when `key` is absent (or expired); returns whether it was stored.
    pub fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> bool {
        let now = self.inner.clock.now();
        let expires_at = self.deadline(now, ttl);
        let mut shard = self.shard(key);
        if shard.map.get(key).is_some_and(|e| e.live(now)) {
            return false;
        }
        shard.map.insert(
            key.to_owned(),
            Entry {
                value: value.to_vec(),
                expires_at,
            },
        );
        Self::after_write(&mut shard, now);
        true
    }

    /// Removes `key`; returns whether a live value was removed.
    pub fn del(&self, key: &str) -> bool {
        let now = self.inner.clock.now();
        self.shard(key).map.remove(key).is_some_and(|e| e.live(now))
    }

    /// Adds `delta` to the integer at `key` (a missing key counts as 0) and returns the new
    /// value. A key created by this call expires after `ttl` when given; an existing key keeps
    /// its expiry. Fails when the stored value is not a decimal integer, as Redis `INCRBY` does.
    pub fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, String> {
        let now = self.inner.clock.now();
        let mut shard = self.shard(key);
        let (current, expires_at) = match shard.map.get(key).filter(|e| e.live(now)) {
            Some(e) => {
                let n = std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(|| format!("value at {key:?} is not an integer"))?;
                (n, e.expires_at)
            }
            None => (0, self.deadline(now, ttl)),
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| format!("increment of {key:?} would overflow"))?;
        shard.map.insert(
            key.to_owned(),
            Entry {
                value: next.to_string().into_bytes(),
                expires_at,
            },
        );
        Self::after_write(&mut shard, now);
        Ok(next)
    }

    /// Time left before `key` expires: `None` when absent, `Some(None)` when it has no expiry.
    pub fn ttl(&self, key: &str) -> Option<Option<Duration>> {
        let now = self.inner.clock.now();
        let shard = self.shard(key);
        let e = shard.map.get(key).filter(|e| e.live(now))?;
        Some(e.expires_at.map(|t| Duration::from_nanos(t - now)))
    }

    /// The number of live keys (expired ones that were not swept yet are not counted).
    pub fn len(&self) -> usize {
        let now = self.inner.clock.now();
        self.inner
            .shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.map.values().filter(|e| e.live(now)).count()
            })
            .sum()
    }

    /// `true` when no live key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn after_write(shard: &mut Shard, now: Nanos) {
        shard.writes += 1;
        if shard.writes >= SWEEP_EVERY {
            shard.writes = 0;
            shard.map.retain(|_, e| e.live(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire_on_the_backend_clock() {
        let clock = Clock::manual();
        let m = MemoryBackend::with_clock(clock.clone());
        m.set("a", b"1", Some(Duration::from_secs(2)));
        m.set("b", b"2", None);
        assert_eq!(m.get("a").as_deref(), Some(&b"1"[..]));
        assert_eq!(m.ttl("a"), Some(Some(Duration::from_secs(2))));
        clock.advance(Duration::from_secs(2));
        assert_eq!(m.get("a"), None);
        assert_eq!(m.ttl("b"), Some(None));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn set_nx_and_incr_behave_like_redis() {
        let clock = Clock::manual();
        let m = MemoryBackend::with_clock(clock.clone());
        assert!(m.set_nx("k", b"x", Some(Duration::from_secs(1))));
        assert!(!m.set_nx("k", b"y", None));
        clock.advance(Duration::from_secs(1));
        assert!(m.set_nx("k", b"y", None));
        assert_eq!(m.incr_by("n", 5, Some(Duration::from_secs(10))).unwrap(), 5);
        assert_eq!(m.incr_by("n", -7, None).unwrap(), -2);
        assert_eq!(m.ttl("n"), Some(Some(Duration::from_secs(10))));
        assert!(
            m.incr_by("k", 1, None)
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(m.del("n"));
        assert!(!m.del("n"));
    }

    #[test]
    fn expired_entries_are_swept() {
        let clock = Clock::manual();
        let m = MemoryBackend::with_clock(clock.clone());
        for i in 0..10_000 {
            m.set(&format!("old{i}"), b"v", Some(Duration::from_millis(1)));
        }
        clock.advance(Duration::from_millis(2));
        for i in 0..(SWEEP_EVERY as usize * SHARDS * 2) {
            m.set(&format!("new{i}"), b"v", None);
        }
        let stored: usize = m
            .inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap().map.len())
            .sum();
        assert_eq!(stored, SWEEP_EVERY as usize * SHARDS * 2);
    }
}
