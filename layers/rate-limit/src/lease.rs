//! Lease mode: an instance takes a batch of cells from Redis in one call and spends them
//! locally, so most decisions make no round trip.
//!
//! # How it works
//!
//! For each key of a leased limit the instance holds a lease: a number of cells taken from the
//! key's Redis bucket by one script call, and the time it was taken. A request spends its cost
//! from the lease without touching Redis. When a lease falls below a quarter of the batch, a
//! background task tops it up with another batch while requests keep spending what is left,
//! so a busy key does not stall at the end of each lease. When the lease cannot pay at all,
//! one task fetches a new batch (the others wait for it rather than all asking Redis); a
//! fetch takes `min(batch, cells available)` cells, as long as at least the request's cost is
//! available, and otherwise the key is denied locally until Redis said a cell comes back.
//!
//! # Why the cluster never admits more than the limit
//!
//! Every cell an instance admits was taken from the shared Redis bucket first, by the same
//! GCRA the exact mode runs. So over any period the cells admitted by all instances together
//! are at most the cells Redis handed out: burst + rate × period, exactly as in exact mode.
//! What leases change is *when* cells are spent: a cell taken at time t may be spent until
//! t + `max_hold`, so over a short window W the instances may admit up to
//! burst + rate × (W + `max_hold`), never more in total.
//!
//! # Cells that go unused
//!
//! A lease not fetched or topped up for `max_hold` is dropped with whatever it still holds, and
//! a fetch replaces the leftover (fewer than one request's cost) of the lease it renews. Those
//! cells are lost to the cluster: per key and instance, at most `batch + batch / 4` cells every
//! `max_hold` (a top-up lands on at most a quarter of a batch). With N instances, a key whose
//! traffic is spread thinly may therefore see up to N × 1.25 × `batch` cells unused per
//! `max_hold`; keep `batch` small against the burst (and leases for hot keys, such as a global
//! limit), or `max_hold` short. A denial that follows a taken lease gives its cells back to the
//! lease, so it costs nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use omega_core::Nanos;
use tokio::sync::Notify;

use crate::error::ConfigError;

/// The default longest time a lease is held.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_millis(500);

/// How a limit leases cells from Redis (see [`crate::Limit::lease`]).
///
/// ```
/// use std::time::Duration;
/// use omega_rate_limit::Lease;
///
/// // Take 50 cells per round trip; drop a lease that is 200 ms old.
/// let lease = Lease::new(50).max_hold(Duration::from_millis(200));
/// # let _ = lease;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub(crate) batch: u32,
    pub(crate) max_hold: Duration,
}

impl Lease {
    /// Leases of `batch` cells (at most the limit's burst is taken at once), held for at most
    /// [`DEFAULT_MAX_HOLD`].
    pub fn new(batch: u32) -> Self {
        Lease {
            batch,
            max_hold: DEFAULT_MAX_HOLD,
        }
    }

    /// The longest a lease is held before its unused cells are dropped.
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = max_hold;
        self
    }

    pub(crate) fn validate(&self, limit: &str) -> Result<(), ConfigError> {
        if self.batch == 0 {
            return Err(ConfigError(format!(
                "limit {limit:?}: a lease batch must be at least 1 cell"
            )));
        }
        if self.max_hold.is_zero() {
            return Err(ConfigError(format!(
                "limit {limit:?}: a lease must be held for some time; max_hold is zero"
            )));
        }
        Ok(())
    }
}

/// One key's lease.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The key's Redis key.
    pub(crate) redis_key: Vec<u8>,
    state: Mutex<SlotState>,
    fetched: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    cells: u32,
    /// When the lease must be dropped.
    expires: Nanos,
    /// When the key's Redis bucket was full again, as of the last fetch.
    full_at: Nanos,
    /// Redis had no cell for this key before this time.
    denied_until: Nanos,
    fetching: bool,
}

/// What spending from a lease gave.
#[derive(Debug)]
pub(crate) enum Spend {
    /// Paid from the lease: cells left in it, time until the Redis bucket is full.
    Paid { remaining: u32, reset_after: Nanos },
    /// Redis has no cell for this cost before `retry_after`.
    Denied { retry_after: Nanos },
    /// The lease is empty and this caller fetches: call [`Slot::fetched`] with the result.
    Fetch(FetchGuard),
    /// Another caller is fetching: wait for it, then try again.
    Wait,
}

impl Slot {
    fn new(redis_key: Vec<u8>) -> Self {
        Slot {
            redis_key,
            state: Mutex::new(SlotState::default()),
            fetched: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spends `cost` from the lease, or says what to do instead.
    pub(crate) fn spend(self: &Arc<Self>, cost: u32, now: Nanos) -> Spend {
        let mut st = self.lock();
        if st.expires <= now {
            st.cells = 0;
        }
        if st.cells >= cost {
            st.cells -= cost;
            return Spend::Paid {
                remaining: st.cells,
                reset_after: st.full_at.saturating_sub(now),
            };
        }
        if now < st.denied_until {
            return Spend::Denied {
                retry_after: st.denied_until - now,
            };
        }
        if st.fetching {
            return Spend::Wait;
        }
        st.fetching = true;
        Spend::Fetch(FetchGuard {
            slot: self.clone(),
            done: false,
        })
    }

    /// Waits until the fetch in progress ends (returns at once if none is).
    pub(crate) async fn wait_for_fetch(&self) {
        let notified = self.fetched.notified();
        if !self.lock().fetching {
            return;
        }
        // `notified` was created before the check, so the fetch's notification cannot be missed.
        notified.await;
    }

    /// Starts a top-up when the lease is alive but below `low_water` and nobody is fetching:
    /// the caller fetches in the background and reports with [`FetchGuard::topped_up`].
    fn start_top_up(
        self: &Arc<Self>,
        st: &mut SlotState,
        low_water: u32,
        now: Nanos,
    ) -> Option<FetchGuard> {
        if st.fetching || st.cells >= low_water || st.expires <= now || now < st.denied_until {
            return None;
        }
        st.fetching = true;
        Some(FetchGuard {
            slot: self.clone(),
            done: false,
        })
    }

    /// Gives `cost` cells back to the lease (a later limit denied the request).
    pub(crate) fn give_back(&self, cost: u32, now: Nanos) {
        let mut st = self.lock();
        if st.expires > now {
            st.cells = st.cells.saturating_add(cost);
        }
    }
}

/// The right to fetch a new lease for a slot. Dropping it without [`FetchGuard::granted`] or
/// [`FetchGuard::denied`] (a cancelled request, a Redis error) lets the next caller fetch.
#[derive(Debug)]
pub(crate) struct FetchGuard {
    slot: Arc<Slot>,
    done: bool,
}

impl FetchGuard {
    /// Redis granted `granted` cells (at least `cost`); the request takes `cost` of them.
    /// Returns the cells left in the lease.
    pub(crate) fn granted(
        mut self,
        granted: u32,
        cost: u32,
        full_after: Nanos,
        now: Nanos,
        max_hold: Nanos,
    ) -> u32 {
        let mut st = self.slot.lock();
        st.cells = granted.saturating_sub(cost);
        st.expires = now.saturating_add(max_hold);
        st.full_at = now.saturating_add(full_after);
        st.fetching = false;
        let left = st.cells;
        drop(st);
        self.done = true;
        self.slot.fetched.notify_waiters();
        left
    }

    /// A background top-up brought `granted` more cells: they join what is left, and the
    /// lease is held for `max_hold` from now.
    pub(crate) fn topped_up(
        mut self,
        granted: u32,
        full_after: Nanos,
        now: Nanos,
        max_hold: Nanos,
    ) {
        let mut st = self.slot.lock();
        if st.expires <= now {
            st.cells = 0;
        }
        st.cells = st.cells.saturating_add(granted);
        st.expires = now.saturating_add(max_hold);
        st.full_at = now.saturating_add(full_after);
        st.fetching = false;
        drop(st);
        self.done = true;
        self.slot.fetched.notify_waiters();
    }

    /// The Redis key of the slot being fetched.
    pub(crate) fn redis_key(&self) -> &[u8] {
        &self.slot.redis_key
    }

    /// Redis had no cell before `retry_after`.
    pub(crate) fn denied(mut self, retry_after: Nanos, now: Nanos) {
        let mut st = self.slot.lock();
        st.denied_until = now.saturating_add(retry_after);
        st.fetching = false;
        drop(st);
        self.done = true;
        self.slot.fetched.notify_waiters();
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if !self.done {
            self.slot.lock().fetching = false;
            self.slot.fetched.notify_waiters();
        }
    }
}

/// Key hashes are already uniform: the map uses them as they are.
type SlotMap = HashMap<u64, Arc<Slot>, std::hash::BuildHasherDefault<crate::memory::PassThrough>>;

/// One limit's leases: the global slot, or slots by key hash bounded by a key count.
#[derive(Debug)]
pub(crate) struct Leases {
    pub(crate) lease: Lease,
    global: std::sync::OnceLock<Arc<Slot>>,
    slots: Mutex<SlotMap>,
    max_keys: usize,
}

impl Leases {
    pub(crate) fn new(lease: Lease, max_keys: usize) -> Self {
        Leases {
            lease,
            global: std::sync::OnceLock::new(),
            slots: Mutex::new(SlotMap::default()),
            max_keys: max_keys.max(1),
        }
    }

    /// The slot of `key`, made on first use. When the map is full, slots that nobody else
    /// holds are dropped (their unused cells are lost, as for an expired lease).
    pub(crate) fn slot(&self, key: Option<u64>, redis_key: impl FnOnce() -> Vec<u8>) -> Arc<Slot> {
        let Some(key) = key else {
            return self
                .global
                .get_or_init(|| Arc::new(Slot::new(redis_key())))
                .clone();
        };
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(&key) {
            return slot.clone();
        }
        if slots.len() >= self.max_keys {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
            if slots.len() >= self.max_keys {
                // Every slot is in use: forget an arbitrary half rather than grow.
                let drop: Vec<_> = slots.keys().copied().take(slots.len() / 2 + 1).collect();
                for k in drop {
                    slots.remove(&k);
                }
            }
        }
        let slot = Arc::new(Slot::new(redis_key()));
        slots.insert(key, slot.clone());
        slot
    }

    /// Pays from the lease of `key` if it exists and can pay: cells left, time until the
    /// Redis bucket is full, and the right to top the lease up when it runs low.
    pub(crate) fn try_pay(
        &self,
        key: Option<u64>,
        cost: u32,
        now: Nanos,
    ) -> Option<(u32, Nanos, Option<FetchGuard>)> {
        let low_water = (self.lease.batch / 4).max(1);
        let pay = |slot: &Arc<Slot>| {
            let mut st = slot.lock();
            if st.expires <= now {
                st.cells = 0;
            }
            if st.cells < cost {
                return None;
            }
            st.cells -= cost;
            let top_up = slot.start_top_up(&mut st, low_water, now);
            Some((st.cells, st.full_at.saturating_sub(now), top_up))
        };
        match key {
            None => pay(self.global.get()?),
            Some(k) => {
                let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                pay(slots.get(&k)?)
            }
        }
    }

    /// Gives back what [`Leases::try_pay`] took.
    pub(crate) fn give_back(&self, key: Option<u64>, cost: u32, now: Nanos) {
        let slot = match key {
            None => self.global.get().cloned(),
            Some(k) => self
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&k)
                .cloned(),
        };
        if let Some(slot) = slot {
            slot.give_back(cost, now);
        }
    }

    /// Slots held in memory.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_fetches_and_a_cancelled_fetch_lets_the_next_one() {
        let leases = Leases::new(Lease::new(10), 100);
        let slot = leases.slot(None, || b"k".to_vec());
        let Spend::Fetch(guard) = slot.spend(1, 0) else {
            panic!("an empty lease asks for a fetch")
        };
        assert!(matches!(slot.spend(1, 0), Spend::Wait));
        drop(guard); // cancelled
        let Spend::Fetch(guard) = slot.spend(1, 0) else {
            panic!("after a cancelled fetch the next caller fetches")
        };
        assert_eq!(guard.granted(10, 1, 5_000, 0, 1_000), 9);
        for left in (0..9).rev() {
            assert!(
                matches!(slot.spend(1, 10), Spend::Paid { remaining, .. } if remaining == left)
            );
        }
        assert!(matches!(slot.spend(1, 10), Spend::Fetch(_)));
    }

    #[test]
    fn expired_leases_are_dropped_and_denials_are_remembered() {
        let leases = Leases::new(Lease::new(10), 100);
        let slot = leases.slot(Some(7), || b"k".to_vec());
        let Spend::Fetch(guard) = slot.spend(1, 0) else {
            panic!()
        };
        guard.granted(10, 1, 0, 0, 1_000);
        assert!(matches!(slot.spend(1, 999), Spend::Paid { .. }));
        let Spend::Fetch(guard) = slot.spend(1, 1_000) else {
            panic!("an expired lease holds nothing")
        };
        guard.denied(500, 1_000);
        assert!(matches!(
            slot.spend(1, 1_200),
            Spend::Denied { retry_after: 300 }
        ));
        assert!(matches!(slot.spend(1, 1_500), Spend::Fetch(_)));
    }

    #[test]
    fn a_low_lease_is_topped_up_once_while_it_still_pays() {
        let leases = Leases::new(Lease::new(8), 100);
        let slot = leases.slot(None, || b"k".to_vec());
        let Spend::Fetch(guard) = slot.spend(1, 0) else {
            panic!()
        };
        guard.granted(8, 1, 0, 0, 1_000);
        // 7 cells; the top-up starts below 8 / 4 = 2 cells, exactly once.
        let mut top_ups = Vec::new();
        for _ in 0..6 {
            let (_, _, top_up) = leases.try_pay(None, 1, 10).unwrap();
            top_ups.extend(top_up);
        }
        assert_eq!(top_ups.len(), 1);
        top_ups.pop().unwrap().topped_up(8, 0, 20, 1_000);
        // The top-up joined the one cell left: 9 more requests pay, the 10th does not.
        for _ in 0..9 {
            assert!(leases.try_pay(None, 1, 30).is_some());
        }
        assert!(leases.try_pay(None, 1, 30).is_none());
    }

    #[test]
    fn the_key_count_is_bounded() {
        let leases = Leases::new(Lease::new(10), 8);
        for k in 0..100 {
            let _ = leases.slot(Some(k), || format!("k{k}").into_bytes());
            assert!(leases.len() <= 8);
        }
    }
}
