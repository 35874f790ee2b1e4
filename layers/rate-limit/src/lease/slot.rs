//! One key's lease: the cells this instance holds, who fetches more, and when they expire.

use std::sync::{Arc, Mutex, PoisonError};

use omega_core::Nanos;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Paid;

/// One key's lease.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The key's Redis key.
    pub(crate) redis_key: Vec<u8>,
    state: Mutex<SlotState>,
    fetched: Notify,
}

/// The cells of a lease in two parts, each with its own expiry: what the last fetch or top-up
/// brought, and what was left of the lease before it (spent first). A cell never outlives
/// `max_hold` from the moment the call that took it was sent.
#[derive(Debug, Default)]
struct SlotState {
    cells: u32,
    /// When `cells` must be dropped.
    expires: Nanos,
    /// Cells left from earlier leases when the current one landed.
    old_cells: u32,
    /// When `old_cells` must be dropped (the earliest expiry of what they came from).
    old_expires: Nanos,
    /// When the key's Redis bucket was full again, as of the last fetch.
    full_at: Nanos,
    /// Redis had no cell for this key before this time.
    denied_until: Nanos,
    fetching: bool,
    /// Counts the fetches that ended; `failed` says how the last one did.
    fetches: u64,
    failed: bool,
}

impl SlotState {
    fn expire(&mut self, now: Nanos) {
        if self.old_expires <= now {
            self.old_cells = 0;
        }
        if self.expires <= now {
            self.cells = 0;
        }
    }

    fn available(&self) -> u32 {
        self.old_cells.saturating_add(self.cells)
    }

    /// Takes `cost` cells (the caller checked they are there), the oldest first; returns how
    /// many came from the old part.
    fn take(&mut self, cost: u32) -> u32 {
        let from_old = cost.min(self.old_cells);
        self.old_cells -= from_old;
        self.cells -= cost - from_old;
        from_old
    }

    /// A new lease of `granted` cells, dropped at `expires`: what is left joins the old part,
    /// which keeps the earliest expiry of what it holds (a cell's life is never extended).
    fn install(&mut self, granted: u32, expires: Nanos) {
        if self.cells > 0 {
            if self.old_cells == 0 {
                self.old_expires = self.expires;
            }
            self.old_cells = self.old_cells.saturating_add(self.cells);
        }
        self.cells = granted;
        self.expires = expires;
    }

    fn fetch_ended(&mut self, failed: bool) {
        self.fetching = false;
        self.fetches += 1;
        self.failed = failed;
    }
}

/// What spending from a lease gave.
#[derive(Debug)]
pub(crate) enum Spend {
    /// Paid from the lease: cells left in it, time until the Redis bucket is full, and how
    /// many cells came from the previous lease.
    Paid {
        remaining: u32,
        reset_after: Nanos,
        from_old: u32,
    },
    /// Redis has no cell for this cost before `retry_after`.
    Denied { retry_after: Nanos },
    /// The lease is empty and this caller fetches: call [`FetchGuard::granted`] or
    /// [`FetchGuard::denied`] with the result.
    Fetch(FetchGuard),
    /// Another caller is fetching: wait for it ([`Slot::wait_for_fetch`]), then try again.
    Wait,
}

/// Why waiting for another caller's fetch ended without a lease.
#[derive(Debug)]
pub(crate) enum WaitError {
    /// The decision's deadline came first.
    Deadline,
    /// The fetch failed: the waiters share its failure rather than fetch one after another.
    FetchFailed,
}

impl Slot {
    pub(super) fn new(redis_key: Vec<u8>) -> Self {
        Slot {
            redis_key,
            state: Mutex::new(SlotState::default()),
            fetched: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the lease still holds cells at `now`.
    pub(super) fn holds_cells(&self, now: Nanos) -> bool {
        let mut st = self.lock();
        st.expire(now);
        st.available() > 0
    }

    /// When the current lease expires.
    pub(super) fn expires(&self) -> Nanos {
        self.lock().expires
    }

    /// Spends `cost` from the lease, or says what to do instead.
    pub(crate) fn spend(self: &Arc<Self>, cost: u32, now: Nanos) -> Spend {
        let mut st = self.lock();
        st.expire(now);
        if st.available() >= cost {
            let from_old = st.take(cost);
            return Spend::Paid {
                remaining: st.available(),
                reset_after: st.full_at.saturating_sub(now),
                from_old,
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

    /// Pays in place when the lease can, starting a top-up when it runs below `low_water`
    /// or its current part expires within `renew_before` (a key in use renews its lease
    /// before it runs out, rather than a request waiting for the fetch after it expired).
    pub(super) fn try_pay(
        self: &Arc<Self>,
        cost: u32,
        now: Nanos,
        low_water: u32,
        renew_before: Nanos,
    ) -> Option<Paid> {
        let mut st = self.lock();
        st.expire(now);
        if st.available() < cost {
            return None;
        }
        let from_old = st.take(cost);
        let running_low = st.available() < low_water;
        let due = running_low || now.saturating_add(renew_before) >= st.expires;
        let top_up = (!st.fetching && due && now >= st.denied_until).then(|| {
            st.fetching = true;
            FetchGuard {
                slot: self.clone(),
                done: false,
            }
        });
        Some(Paid {
            remaining: st.available(),
            reset: st.full_at.saturating_sub(now),
            from_old,
            top_up,
            running_low,
        })
    }

    /// Waits until the fetch in progress ends, at most until `deadline`. A fetch that failed
    /// fails its waiters too: they apply their failure policy instead of fetching in turn.
    pub(crate) async fn wait_for_fetch(&self, deadline: Instant) -> Result<(), WaitError> {
        let notified = self.fetched.notified();
        let seen = {
            let st = self.lock();
            if !st.fetching {
                return Ok(());
            }
            st.fetches
        };
        // `notified` was created before the check, so the fetch's notification is not missed.
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(WaitError::Deadline);
        }
        let st = self.lock();
        if st.fetches > seen && st.failed {
            return Err(WaitError::FetchFailed);
        }
        Ok(())
    }

    /// Gives `cost` cells back to the lease (a later limit denied the request), `from_old` of
    /// them to the old part: each part only while it has not expired.
    pub(crate) fn give_back(&self, cost: u32, from_old: u32, now: Nanos) {
        let mut st = self.lock();
        st.expire(now);
        if st.old_expires > now {
            st.old_cells = st.old_cells.saturating_add(from_old);
        }
        if st.expires > now {
            st.cells = st.cells.saturating_add(cost - from_old.min(cost));
        }
    }
}

/// The right to fetch a new lease for a slot. [`FetchGuard::failed`] (Redis failed) fails the
/// waiters too; dropping it without an outcome (a cancelled request) lets a waiter fetch.
#[derive(Debug)]
pub(crate) struct FetchGuard {
    slot: Arc<Slot>,
    done: bool,
}

impl FetchGuard {
    /// Redis granted `granted` cells (at least `cost`) by a call sent at `sent`; the request
    /// takes `cost` of them. Returns the cells left and how many the request took from the
    /// previous lease's leftover.
    pub(crate) fn granted(
        mut self,
        granted: u32,
        cost: u32,
        full_after: Nanos,
        sent: Nanos,
        now: Nanos,
        max_hold: Nanos,
    ) -> (u32, u32) {
        let mut st = self.slot.lock();
        st.expire(now);
        st.install(granted, sent.saturating_add(max_hold));
        let pay = cost.min(st.available());
        let from_old = st.take(pay);
        st.full_at = now.saturating_add(full_after);
        st.fetch_ended(false);
        let left = st.available();
        drop(st);
        self.done = true;
        self.slot.fetched.notify_waiters();
        (left, from_old)
    }

    /// A background top-up sent at `sent` brought `granted` more cells. They are held for
    /// `max_hold` from `sent`; what was left keeps its own expiry.
    pub(crate) fn topped_up(
        mut self,
        granted: u32,
        full_after: Nanos,
        sent: Nanos,
        now: Nanos,
        max_hold: Nanos,
    ) {
        let mut st = self.slot.lock();
        st.expire(now);
        st.install(granted, sent.saturating_add(max_hold));
        st.full_at = now.saturating_add(full_after);
        st.fetch_ended(false);
        drop(st);
        self.done = true;
        self.slot.fetched.notify_waiters();
    }

    /// The Redis key of the slot being fetched.
    pub(crate) fn redis_key(&self) -> &[u8] {
        &self.slot.redis_key
    }

    /// Redis failed (or the decision's deadline came): the waiters share the failure.
    pub(crate) fn failed(mut self) {
        self.slot.lock().fetch_ended(true);
        self.done = true;
        self.slot.fetched.notify_waiters();
    }

    /// Redis had no cell before `retry_after`.
    pub(crate) fn denied(mut self, retry_after: Nanos, now: Nanos) {
        let mut st = self.slot.lock();
        st.denied_until = now.saturating_add(retry_after);
        st.fetch_ended(false);
        drop(st);
        self.done = true;
        self.slot.fetched.notify_waiters();
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        if !self.done {
            self.slot.lock().fetch_ended(false);
            self.slot.fetched.notify_waiters();
        }
    }
}
