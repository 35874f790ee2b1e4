//! Lease top-ups in the background, batched (feature `redis`).
//!
//! A lease that runs low, or whose current part enters the last quarter of its hold while a
//! request pays from it, is topped up in the background (see [`crate::Lease`]). The top-ups
//! that come due within a short window share one call of the lease script: with many keys
//! (one lease per user, renewed every `max_hold`), Redis runs one script per window rather
//! than one per key, and the instance makes one round trip. The window is a sixteenth of
//! the hold, at most [`MAX_WINDOW`]: the lease being renewed still pays meanwhile, since a
//! renewal starts a quarter of the hold before the lease expires. A lease that runs low is
//! sent at once, with whatever is queued. On a cluster, one call per hash slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use omega_core::{Clock, Nanos, hash_slot};
use tokio::sync::{Semaphore, mpsc};

use crate::lease::{FetchGuard, Lease};
use crate::quota::Gcra;
use crate::redis_store::{LeaseAsk, LeaseGrant, RedisStore};
use crate::task_queue::TaskQueue;

/// The longest a top-up waits for others to share its call.
pub(crate) const MAX_WINDOW: Duration = Duration::from_millis(10);
/// The most top-ups one call carries.
const MAX_BATCH: usize = 256;
/// Calls in flight at once (per limiter).
const MAX_IN_FLIGHT: usize = 4;

/// One lease to top up: the right to do it, and what to ask for.
pub(crate) struct TopUp {
    guard: FetchGuard,
    gcra: Gcra,
    lease: Lease,
    /// The lease runs low (rather than old): sent without waiting for others.
    running_low: bool,
}

/// The queue of a limiter's top-ups.
pub(crate) type Queue = TaskQueue<TopUp>;

/// Queues a top-up of the lease behind `guard`; starts the batching task on first use, on
/// the current runtime, and again after that runtime shut down (without a runtime, the guard
/// is dropped and the next caller fetches).
pub(crate) fn top_up(
    queue: &Queue,
    store: &Arc<RedisStore>,
    clock: &Clock,
    guard: FetchGuard,
    gcra: Gcra,
    lease: Lease,
    running_low: bool,
) {
    let top_up = TopUp {
        guard,
        gcra,
        lease,
        running_low,
    };
    let start = |rx| drop(tokio::spawn(run(store.clone(), clock.clone(), rx)));
    // Unsent (no runtime), the guard is dropped: the next caller fetches.
    let _ = queue.send(top_up, start);
}

/// How long a top-up of `lease` may wait for others.
fn window(lease: &Lease) -> Duration {
    (lease.max_hold / 16).min(MAX_WINDOW)
}

/// Collects the top-ups of each window and sends them, up to `MAX_IN_FLIGHT` calls at once;
/// a lease running low is sent at once, with what is queued. Ends when the limiter (the
/// queue's sender) is dropped.
async fn run(store: Arc<RedisStore>, clock: Clock, mut queue: mpsc::UnboundedReceiver<TopUp>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut now = first.running_low;
        let until = tokio::time::Instant::now() + window(&first.lease);
        let mut batch = vec![first];
        while !now && batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, queue.recv()).await {
                Ok(Some(t)) => {
                    now = t.running_low;
                    batch.push(t);
                }
                Ok(None) | Err(_) => break,
            }
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(t) => batch.push(t),
                Err(_) => break,
            }
        }
        let (store, clock) = (store.clone(), clock.clone());
        tokio::spawn(async move {
            if store.is_cluster() {
                // One call per hash slot, all at once.
                let mut groups: HashMap<u16, Vec<TopUp>> = HashMap::new();
                for t in batch {
                    groups
                        .entry(hash_slot(t.guard.redis_key()))
                        .or_default()
                        .push(t);
                }
                let calls = groups.into_values().map(|g| send(&store, &clock, g));
                futures_util::future::join_all(calls).await;
            } else {
                send(&store, &clock, batch).await;
            }
            drop(slot);
        });
    }
}

/// One call for `batch`; each guard gets its lease's answer, or the failure.
async fn send(store: &RedisStore, clock: &Clock, batch: Vec<TopUp>) {
    let asks: Vec<LeaseAsk<'_>> = batch
        .iter()
        .map(|t| LeaseAsk {
            key: t.guard.redis_key(),
            gcra: t.gcra,
            min: 1,
            want: t.lease.batch.min(t.gcra.burst).max(1),
        })
        .collect();
    let sent: Nanos = clock.now();
    let result = store.lease_many(&asks, None).await;
    drop(asks);
    let now = clock.now();
    match result {
        Ok(grants) => {
            for (t, grant) in batch.into_iter().zip(grants) {
                match grant {
                    LeaseGrant::Granted {
                        cells,
                        full_after_ns,
                    } => t
                        .guard
                        .topped_up(cells, full_after_ns, sent, now, t.lease.hold_nanos()),
                    LeaseGrant::Denied { retry_ns } => t.guard.denied(retry_ns, now),
                }
            }
        }
        Err(_) => batch.into_iter().for_each(|t| t.guard.failed()),
    }
}
