//! The front of a partition's L1: a small table of entries recently hit in moka, read before
//! moka so that a hit on a hot key costs a hash, one atomic pointer load and a key compare
//! instead of moka's whole lookup (its read log, frequency sketch and maintenance).
//!
//! moka stays the store, and its admission and eviction stay authoritative:
//!
//! - an entry enters the front only when moka answered a lookup with it, fresh;
//! - one front hit in [`SAMPLE`] (counted per thread) is answered through moka instead, so
//!   moka's frequency sketch and LRU order still see the front's keys, and the front learns
//!   of a newer entry or a removal at that key;
//! - whatever moka drops the front drops: a store or an invalidation at a key clears that
//!   key's slot after moka has changed; a tag purge, a partition flush and a pub/sub gap clear
//!   every slot. An entry moka evicts or expires leaves the front on the next lookup of its key
//!   that reaches moka (at once where moka has an eviction listener: with
//!   [`Partition::count_evictions`](crate::Partition::count_evictions); moka's listener
//!   allocates, so it is not set for the front alone). What the front may hold past moka is
//!   bounded: only entries weighing at most the partition's capacity / [`SLOTS`] go in, so at
//!   most one capacity's worth, and in practice the hot entries moka holds as well.
//!
//! Freshness is checked on every front hit as on a moka hit; only a fresh entry is answered
//! from the front (stale, fallback and expired entries take moka's path, which claims the
//! refresh).
//!
//! **Why a front entry never outlives an invalidation.** Each slot has a sequence number,
//! odd while a writer holds the slot. A lookup reads its slot's sequence *before* asking moka;
//! it may fill the slot with moka's answer only if the sequence has not moved since (a
//! compare-and-swap that also takes the slot). A clear takes the slot whatever its state and
//! moves the sequence, after the change in moka. So a fill that read moka before a clear
//! finds the sequence moved and gives up, and a fill that read the sequence after the clear
//! read moka after it too: whatever the slot holds once a clear has returned is moka's answer
//! after that clear. Readers only load the slot's entry (`arc-swap`: lock-free, no reference
//! count taken), so they never wait for a writer.

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use omega_core::Nanos;

use crate::entry::{Entry, Freshness};

/// How many slots a partition's front has (a power of two): 16 KiB of slots.
pub(crate) const SLOTS: usize = 1024;

/// One front hit in `SAMPLE` on a thread goes through moka instead (see the module docs).
pub(crate) const SAMPLE: u32 = 8;

/// The front table of one partition.
pub(crate) struct Front<V> {
    slots: Box<[FrontSlot<V>]>,
    hasher: foldhash::fast::RandomState,
    /// The heaviest entry that goes in (see the module docs).
    max_weight: u64,
}

struct FrontSlot<V> {
    /// Even while no writer holds the slot; moved by every fill and every clear.
    seq: AtomicU64,
    entry: ArcSwapOption<Entry<V>>,
}

/// A key's slot, and its sequence read before moka was asked (see [`Front::fill`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    slot: usize,
    seq: u64,
}

thread_local! {
    /// Front hits on this thread, for [`SAMPLE`].
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// `true` on one call in [`SAMPLE`] on this thread.
#[inline]
fn sampled() -> bool {
    TICKS.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n % SAMPLE == 0
    })
}

impl<V> Front<V> {
    /// The front of a partition of `capacity` bytes.
    pub(crate) fn new(capacity: u64) -> Self {
        Front {
            max_weight: capacity / SLOTS as u64,
            slots: (0..SLOTS)
                .map(|_| FrontSlot {
                    seq: AtomicU64::new(0),
                    entry: ArcSwapOption::empty(),
                })
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The slot of `key`.
    #[inline]
    pub(crate) fn slot(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) & (SLOTS - 1)
    }

    /// The fresh entry of `key` at `now`, if the front holds it, seen through `f` (no reference
    /// count is taken). `None` also on the sampled hits that must go through moka.
    #[inline]
    pub(crate) fn hit<R>(
        &self,
        slot: usize,
        key: &[u8],
        now: Nanos,
        f: impl FnOnce(&Arc<Entry<V>>) -> R,
    ) -> Option<R> {
        let guard = self.slots[slot].entry.load();
        let e = guard.as_ref()?;
        if *e.key != *key || e.freshness(now) != Freshness::Fresh || sampled() {
            return None;
        }
        Some(f(e))
    }

    /// Read before asking moka about a key in `slot`; [`Front::fill`] takes it back.
    #[inline]
    pub(crate) fn ticket(&self, slot: usize) -> Ticket {
        Ticket {
            slot,
            seq: self.slots[slot].seq.load(Ordering::Acquire),
        }
    }

    /// Puts `entry`, moka's fresh answer for the lookup that took `ticket`, in its slot, unless
    /// the slot moved since (a clear or another fill came in), already holds it, or holds
    /// another fresh key (replaced only on one such call in [`SAMPLE`], so two hot keys that
    /// share a slot do not take turns on every hit).
    pub(crate) fn fill(&self, ticket: Ticket, entry: &Arc<Entry<V>>, now: Nanos) {
        let s = &self.slots[ticket.slot];
        if ticket.seq & 1 == 1 || u64::from(entry.weight) > self.max_weight {
            return;
        }
        if let Some(current) = &*s.entry.load() {
            if Arc::ptr_eq(current, entry) {
                return;
            }
            if current.key != entry.key && current.freshness(now) == Freshness::Fresh && !sampled()
            {
                return;
            }
        }
        if s.seq
            .compare_exchange(
                ticket.seq,
                ticket.seq + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return;
        }
        s.entry.store(Some(entry.clone()));
        s.seq.store(ticket.seq + 2, Ordering::Release);
    }

    /// Takes `slot` (waiting for a fill that holds it: a pointer store, no lock or await), lets
    /// `f` change it, and moves its sequence on, so fills that read it before give up.
    fn with_slot(&self, slot: usize, f: impl FnOnce(&ArcSwapOption<Entry<V>>)) {
        let s = &self.slots[slot];
        let mut seq = s.seq.load(Ordering::Relaxed);
        loop {
            if seq & 1 == 1 {
                std::hint::spin_loop();
                seq = s.seq.load(Ordering::Relaxed);
                continue;
            }
            match s
                .seq
                .compare_exchange_weak(seq, seq + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => seq = now,
            }
        }
        f(&s.entry);
        s.seq.store(seq + 2, Ordering::Release);
    }

    /// Clears the slot of `key`: call it after moka changed at `key` (a store, an invalidation).
    pub(crate) fn clear_key(&self, key: &[u8]) {
        self.with_slot(self.slot(key), |e| {
            if e.load().is_some() {
                e.store(None);
            }
        });
    }

    /// Clears `slot` if it holds an entry of `key` (moka no longer answers it fresh).
    #[inline]
    pub(crate) fn forget(&self, slot: usize, key: &[u8]) {
        let holds = |e: &ArcSwapOption<Entry<V>>| e.load().as_ref().is_some_and(|c| *c.key == *key);
        if holds(&self.slots[slot].entry) {
            self.with_slot(slot, |e| {
                if holds(e) {
                    e.store(None);
                }
            });
        }
    }

    /// Clears the slot of `key` if it holds `entry` (moka evicted or expired it).
    pub(crate) fn clear_entry(&self, key: &[u8], entry: &Arc<Entry<V>>) {
        self.with_slot(self.slot(key), |e| {
            if e.load().as_ref().is_some_and(|c| Arc::ptr_eq(c, entry)) {
                e.store(None);
            }
        });
    }

    /// Clears every slot: call it after moka dropped entries it cannot name (a tag purge, a
    /// partition flush, a pub/sub gap).
    pub(crate) fn clear_all(&self) {
        for slot in 0..SLOTS {
            self.with_slot(slot, |e| {
                if e.load().is_some() {
                    e.store(None);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::entry::Wall;

    fn entry(key: &[u8], ttl: Duration) -> Arc<Entry<u32>> {
        let wall = Wall::from_now(ttl, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        Arc::new(Entry::new(7, wall, Box::new([]), 1, 0).at(key))
    }

    /// Hits until one is not sampled (at most `SAMPLE` tries).
    fn hit(front: &Front<u32>, key: &[u8], now: Nanos) -> Option<u32> {
        let slot = front.slot(key);
        (0..SAMPLE).find_map(|_| front.hit(slot, key, now, |e| e.value))
    }

    #[test]
    fn a_fill_answers_fresh_hits_of_its_key_only() {
        let front = Front::new(1 << 20);
        let e = entry(b"a", Duration::from_secs(10));
        assert_eq!(hit(&front, b"a", 0), None);
        front.fill(front.ticket(front.slot(b"a")), &e, 0);
        assert_eq!(hit(&front, b"a", 0), Some(7));
        assert_eq!(hit(&front, b"b", 0), None);
        // Past its freshness, the front does not answer (moka's path claims the refresh).
        assert_eq!(hit(&front, b"a", 11_000_000_000), None);
        front.clear_key(b"a");
        assert_eq!(hit(&front, b"a", 0), None);
    }

    #[test]
    fn a_fill_that_read_its_slot_before_a_clear_gives_up() {
        let front = Front::new(1 << 20);
        let e = entry(b"a", Duration::from_secs(10));
        let ticket = front.ticket(front.slot(b"a"));
        // An invalidation lands between the lookup in moka and the fill.
        front.clear_key(b"a");
        front.fill(ticket, &e, 0);
        assert_eq!(hit(&front, b"a", 0), None);
        let ticket = front.ticket(front.slot(b"a"));
        front.clear_all();
        front.fill(ticket, &e, 0);
        assert_eq!(hit(&front, b"a", 0), None);
        // A fill with a ticket read after the clear goes in; an eviction of another entry
        // leaves it, its own eviction clears it.
        front.fill(front.ticket(front.slot(b"a")), &e, 0);
        front.clear_entry(b"a", &entry(b"a", Duration::from_secs(10)));
        assert_eq!(hit(&front, b"a", 0), Some(7));
        front.clear_entry(b"a", &e);
        assert_eq!(hit(&front, b"a", 0), None);
    }

    #[test]
    fn one_hit_in_sample_goes_to_moka() {
        let front = Front::new(1 << 20);
        let e = entry(b"a", Duration::from_secs(10));
        front.fill(front.ticket(front.slot(b"a")), &e, 0);
        let slot = front.slot(b"a");
        let hits = (0..SAMPLE * 100)
            .filter(|_| front.hit(slot, b"a", 0, |e| e.value).is_some())
            .count();
        assert_eq!(hits, (SAMPLE as usize - 1) * 100);
    }
}
