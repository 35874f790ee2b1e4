//! Lease mode: an instance takes a batch of cells from Redis in one call and spends them
//! locally, so most decisions make no round trip. The user-facing guarantees are on [`Lease`].

mod slot;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use omega_core::Nanos;

use crate::error::ConfigError;
pub(crate) use slot::{FetchGuard, Slot, Spend};

/// The default longest time a lease is held.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_millis(500);

/// How a limit leases cells from Redis (see [`crate::Limit::lease`]): an instance takes a
/// batch of cells in one call and spends them locally, so most decisions make no round trip.
///
/// # How it works
///
/// For each key of a leased limit the instance holds a lease: a number of cells taken from the
/// key's Redis bucket by one script call, and the time the call was sent. A request spends its
/// cost from the lease without touching Redis, also in a limiter whose other limits are exact
/// (only those make a round trip). When a lease falls below a quarter of the batch, or a
/// request pays from it in the last quarter of its hold, a background task tops it up with
/// another batch while requests keep spending what is left, so a key in use does not stall
/// when its lease runs out or expires. Top-ups that come due within a sixteenth of the hold
/// (at most 10 ms) share one script call (one per hash slot on a cluster), so that many keys
/// renewed every `max_hold` cost Redis and the instance a few calls rather than one per key;
/// a lease running low is sent at once, with what is queued. When the lease cannot pay at all,
/// one task fetches a new batch (the others wait for it rather than all asking Redis, and
/// share its failure if it fails); a fetch takes `min(batch, cells available)` cells, as long
/// as at least the request's cost is available, and otherwise the key is denied locally until
/// Redis said a cell comes back.
///
/// # The bound
///
/// Every cell an instance admits was taken from the shared Redis bucket first, by the same
/// GCRA the exact mode runs, and is spent within `max_hold` of the moment its call was sent,
/// or dropped: cells left when a top-up lands keep their own lease's expiry (they are spent
/// first), they do not ride on the new one. Over any window of length `W`, the cells admitted
/// by all instances together were taken from Redis within `W + max_hold`, so, for a quota of
/// `rate` cells per second and a burst of `burst`,
///
/// ```text
/// admitted in any window W  ≤  burst + rate × (W + max_hold)
/// ```
///
/// and over a long run exactly what exact mode admits (burst + rate × period). Leases change
/// *when* cells are spent, never how many the cluster admits in total.
///
/// # Cells that go unused
///
/// Cells not spent within `max_hold` of their call are dropped (cells left when a fetch or a
/// top-up lands stay spendable until then). Those cells are lost to the cluster: per key and
/// instance, at most two batches every `max_hold` (a lease is renewed at most once in three
/// quarters of a hold, and a top-up for a lease running low lands on less than a quarter of
/// a batch). With N instances, a key whose traffic is spread thinly may therefore see up to
/// N × 2 × `batch` cells unused per `max_hold`, and a key in use takes a batch every three
/// quarters of `max_hold` whatever it spends of it; keep `batch` below what a key spends in a
/// hold at the rate it is allowed (and leases for hot keys, such as a global
/// limit), or `max_hold` short. A denial that follows a taken lease gives its cells back to the
/// lease, so it costs nothing.
///
/// # Memory
///
/// Leases are kept per key up to the limiter's key bound. When it is reached, leases that hold
/// nothing go first, then the eighth that expires soonest; a lease a request is using is kept.
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

    /// The longest a leased cell is held, from the moment its call to Redis was sent, before
    /// it is dropped unused. The bound on a window `W` is `burst + rate × (W + max_hold)`.
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

    /// `max_hold` in nanoseconds.
    pub(crate) fn hold_nanos(&self) -> Nanos {
        omega_core::clock::duration_nanos(self.max_hold)
    }
}

/// What paying from a lease in place gave.
pub(crate) struct Paid {
    /// Cells left in the lease.
    pub(crate) remaining: u32,
    /// Time until the key's Redis bucket is full, as of the last fetch.
    pub(crate) reset: Nanos,
    /// How many of the cells came from the previous lease (for a give-back).
    pub(crate) from_old: u32,
    /// The right to top the lease up, when it runs low or old.
    pub(crate) top_up: Option<FetchGuard>,
    /// The lease runs low (rather than old): its top-up should not wait.
    pub(crate) running_low: bool,
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

    /// The slot of `key`, made on first use. When the map is full, slots that hold nothing
    /// and that no request holds go first, then the eighth that expires soonest (their
    /// unused cells are lost, as for an expired lease); never all at once.
    pub(crate) fn slot(
        &self,
        key: Option<u64>,
        now: Nanos,
        redis_key: impl FnOnce() -> Vec<u8>,
    ) -> Arc<Slot> {
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
            self.make_room(&mut slots, now);
        }
        let slot = Arc::new(Slot::new(redis_key()));
        slots.insert(key, slot.clone());
        slot
    }

    fn make_room(&self, slots: &mut SlotMap, now: Nanos) {
        let idle = |s: &Arc<Slot>| Arc::strong_count(s) == 1;
        slots.retain(|_, s| !idle(s) || s.holds_cells(now));
        if slots.len() < self.max_keys {
            return;
        }
        let eighth = (self.max_keys / 8).max(1);
        let mut by_expiry: Vec<(Nanos, u64)> = slots
            .iter()
            .filter(|(_, s)| idle(s))
            .map(|(&k, s)| (s.expires(), k))
            .collect();
        let n = eighth.min(by_expiry.len());
        if n > 0 {
            by_expiry.select_nth_unstable(n - 1);
            for &(_, k) in &by_expiry[..n] {
                slots.remove(&k);
            }
        }
        if slots.len() >= self.max_keys {
            // Every slot is in use by a request: forget an arbitrary eighth rather than grow.
            let drop: Vec<u64> = slots.keys().copied().take(eighth).collect();
            for k in drop {
                slots.remove(&k);
            }
        }
    }

    /// Pays from the lease of `key` if it exists and can pay (see [`Paid`]).
    pub(crate) fn try_pay(&self, key: Option<u64>, cost: u32, now: Nanos) -> Option<Paid> {
        let low_water = (self.lease.batch / 4).max(1);
        let renew_before = self.lease.hold_nanos() / 4;
        match key {
            None => self
                .global
                .get()?
                .try_pay(cost, now, low_water, renew_before),
            Some(k) => {
                let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                slots.get(&k)?.try_pay(cost, now, low_water, renew_before)
            }
        }
    }

    /// Gives back what [`Leases::try_pay`] took (`from_old` of it from the previous lease).
    pub(crate) fn give_back(&self, key: Option<u64>, cost: u32, from_old: u32, now: Nanos) {
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
            slot.give_back(cost, from_old, now);
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
