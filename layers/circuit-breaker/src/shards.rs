//! The registry's map: copy-on-write shards, sized so that a shard holds a handful of entries.
//!
//! A lookup hashes the key once, loads its shard (an `ArcSwap`: no lock, no shared write, no
//! allocation) and scans the shard's hashes, a few words. An insert or a removal copies one
//! shard (a few `Arc`s), not the map: its cost does not grow with the number of entries.
//! Writers take one mutex, held for that copy only (never across an `.await`).

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

/// Entries per shard, on average, when the map is full.
const PER_SHARD: usize = 8;
/// The most shards a map has (beyond `PER_SHARD × MAX_SHARDS` entries, shards grow).
const MAX_SHARDS: usize = 1 << 16;

/// One entry: the key, its hash, and the value.
pub(crate) struct Slot<K, V> {
    pub(crate) hash: u64,
    pub(crate) key: K,
    pub(crate) value: V,
}

/// One shard: its entries' hashes (scanned first) and the entries, in the same order.
pub(crate) struct Shard<K, V> {
    hashes: Vec<u64>,
    slots: Vec<Arc<Slot<K, V>>>,
}

impl<K, V> Shard<K, V> {
    fn empty() -> Self {
        Shard {
            hashes: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// The entry of `key` (whose hash is `hash`).
    #[inline]
    pub(crate) fn find<Q>(&self, hash: u64, key: &Q) -> Option<&Arc<Slot<K, V>>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.hashes
            .iter()
            .zip(&self.slots)
            .find(|(h, s)| **h == hash && s.key.borrow() == key)
            .map(|(_, s)| s)
    }

    /// The entries.
    pub(crate) fn slots(&self) -> &[Arc<Slot<K, V>>] {
        &self.slots
    }

    /// A copy with `keep` deciding which entries stay, and `add` appended.
    fn copy(&self, keep: impl Fn(&Slot<K, V>) -> bool, add: Option<Arc<Slot<K, V>>>) -> Self {
        let cap = self.slots.len() + usize::from(add.is_some());
        let mut next = Shard {
            hashes: Vec::with_capacity(cap),
            slots: Vec::with_capacity(cap),
        };
        for (h, s) in self.hashes.iter().zip(&self.slots) {
            if keep(s) {
                next.hashes.push(*h);
                next.slots.push(s.clone());
            }
        }
        if let Some(s) = add {
            next.hashes.push(s.hash);
            next.slots.push(s);
        }
        next
    }
}

/// The sharded map. The caller serializes writes (see the module's documentation).
pub(crate) struct Shards<K, V> {
    shards: Box<[ArcSwap<Shard<K, V>>]>,
    bits: u32,
    hasher: RandomState,
}

impl<K, V> Shards<K, V> {
    /// A map sized for `capacity` entries: `capacity / 8` shards (a power of two).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = (capacity / PER_SHARD)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        let empty = Arc::new(Shard::empty());
        Shards {
            shards: (0..n).map(|_| ArcSwap::new(empty.clone())).collect(),
            bits: n.trailing_zeros(),
            hasher: RandomState::new(),
        }
    }

    /// The number of shards.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The index of the shard of `hash` (its top bits; the shard scans compare all of it).
    #[inline]
    pub(crate) fn index(&self, hash: u64) -> usize {
        if self.bits == 0 {
            0
        } else {
            (hash >> (64 - self.bits)) as usize
        }
    }

    /// The current version of shard `i`.
    #[inline]
    pub(crate) fn load(&self, i: usize) -> Guard<Arc<Shard<K, V>>> {
        self.shards[i].load()
    }

    /// Adds `slot` to its shard (the caller checked that its key is not there).
    pub(crate) fn insert(&self, slot: Slot<K, V>) {
        let i = self.index(slot.hash);
        let next = self.shards[i].load().copy(|_| true, Some(Arc::new(slot)));
        self.shards[i].store(Arc::new(next));
    }

    /// Removes the entries of shard `i` for which `remove` says so; returns them.
    pub(crate) fn remove_where(
        &self,
        i: usize,
        remove: impl Fn(&Slot<K, V>) -> bool,
    ) -> Vec<Arc<Slot<K, V>>> {
        let current = self.shards[i].load_full();
        let removed: Vec<_> = current
            .slots
            .iter()
            .filter(|s| remove(s))
            .cloned()
            .collect();
        if !removed.is_empty() {
            let next = current.copy(|s| !removed.iter().any(|r| std::ptr::eq(&**r, s)), None);
            self.shards[i].store(Arc::new(next));
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_in_their_shard_and_removed() {
        let map: Shards<String, u32> = Shards::new(100);
        assert_eq!(map.len(), 16);
        for i in 0..100u32 {
            let key = format!("k{i}");
            let hash = map.hash(key.as_str());
            map.insert(Slot {
                hash,
                key,
                value: i,
            });
        }
        let total: usize = (0..map.len()).map(|i| map.load(i).slots().len()).sum();
        assert_eq!(total, 100);
        let h = map.hash("k42");
        assert_eq!(map.load(map.index(h)).find(h, "k42").unwrap().value, 42);
        assert!(map.load(map.index(h)).find(h, "k420").is_none());
        let removed = map.remove_where(map.index(h), |s| s.value == 42);
        assert_eq!(removed.len(), 1);
        assert!(map.load(map.index(h)).find(h, "k42").is_none());
        assert_eq!(Shards::<String, u32>::new(0).len(), 1);
        assert_eq!(Shards::<String, u32>::new(10_000).len(), 2048);
    }
}
