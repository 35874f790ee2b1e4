//! Batched decisions on a standalone Redis: decisions made at the same time share one call of
//! `GCRA_BATCH`. A decision waits at most until its deadline, queue included; one that is
//! past its deadline (or whose caller gave up) when its batch forms is answered with a timeout
//! and not sent, so it takes nothing.

use std::sync::Arc;
use std::time::Duration;

use omega_core::redis::{RedisBackend, Script};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{DecisionIds, Item, RemoteStep, id_lifetime};
use crate::limit::MAX_LIMITS;
use crate::quota::Gcra;
use crate::task_queue::TaskQueue;

/// The most decisions one batched call carries.
const MAX_BATCH: usize = 256;
/// Batched calls in flight at once (per limiter).
const MAX_IN_FLIGHT: usize = 4;
// Key and parameter indices travel as u16 (see `GCRA_BATCH`).
const _: () = assert!(MAX_BATCH * MAX_LIMITS <= u16::MAX as usize);

type Reply = (Vec<Item>, omega_core::Result<Vec<RemoteStep>>);

/// A decision waiting for a batched call.
pub(crate) struct Pending {
    items: Vec<Item>,
    /// When the decision must be answered.
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// What the batching task needs.
pub(super) struct Batcher {
    pub(super) backend: RedisBackend,
    pub(super) script: Script,
    pub(super) ids: Arc<DecisionIds>,
    #[cfg(test)]
    pub(super) test_now_us: Arc<std::sync::atomic::AtomicU64>,
}

/// Starts the batching task on `queue`; it ends when the limiter (the queue's sender) is
/// dropped, or with its runtime.
pub(super) fn start(batcher: Batcher, queue: mpsc::UnboundedReceiver<Pending>) {
    tokio::spawn(run_batches(Arc::new(batcher), queue));
}

/// Queues `items` (the batching task started with `start` when it is not running) and waits
/// for their answer, at most until `deadline`.
pub(super) async fn submit(
    queue: &TaskQueue<Pending>,
    start: impl FnOnce(mpsc::UnboundedReceiver<Pending>),
    items: Vec<Item>,
    deadline: Instant,
    op_timeout: Duration,
) -> Reply {
    let n = items.len();
    let lost = || omega_core::Error::timeout(op_timeout).during("script rate_limit_batch");
    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        items,
        deadline,
        reply,
    };
    if let Err(unsent) = queue.send(pending, start) {
        return (unsent.items, Err(lost()));
    }
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(done)) => done,
        Ok(Err(_)) | Err(_) => (placeholder_items(n), Err(lost())),
    }
}

/// Items whose originals were not handed back (the decision timed out); only their count
/// matters to the caller, which then decides by the failure policies.
fn placeholder_items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|_| Item {
            key: Vec::new(),
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

/// Takes what is queued, up to `MAX_BATCH` decisions, whenever one of `MAX_IN_FLIGHT` calls
/// is free.
async fn run_batches(batcher: Arc<Batcher>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(8);
        let now = Instant::now();
        let timeout = batcher.backend.op_timeout();
        let mut next = Some(first);
        while let Some(p) = next.take() {
            // Past its deadline, or its caller gave up: answered, never sent.
            if p.deadline <= now || p.reply.is_closed() {
                let e = omega_core::Error::timeout(timeout).during("script rate_limit_batch");
                let _ = p.reply.send((p.items, Err(e)));
            } else {
                batch.push(p);
            }
            if batch.len() < MAX_BATCH {
                next = queue.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let batcher = batcher.clone();
        tokio::spawn(async move {
            run_batch(&batcher, batch).await;
            drop(slot);
        });
    }
}

/// One call for a batch of decisions; each gets its own steps back.
async fn run_batch(b: &Batcher, batch: Vec<Pending>) {
    // Distinct keys and distinct limit parameters, numbered from 1 as Lua counts.
    let mut keys: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    let mut ordered: Vec<&[u8]> = Vec::new();
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
            let key = *keys.entry(item.key.as_slice()).or_insert_with(|| {
                ordered.push(item.key.as_slice());
                next
            });
            decisions.extend_from_slice(&(param as u16).to_le_bytes());
            decisions.extend_from_slice(&(key as u16).to_le_bytes());
        }
    }
    #[cfg(test)]
    let now = b.test_now_us.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(test))]
    let now = 0u64;
    let timeout = b.backend.op_timeout();
    let mut call = b
        .script
        .call()
        .arg(now)
        .arg(id_lifetime(timeout))
        .arg(params.len());
    for (interval, capacity, shadow) in &params {
        call = call
            .arg(*interval)
            .arg(*capacity)
            .arg(if *shadow { "1" } else { "0" });
    }
    call = call.arg(&decisions[..]);
    let id = b.ids.key(ordered.first().copied().unwrap_or_default());
    for key in ordered {
        call = call.key(key);
    }
    call = call.key(id);
    drop(keys);
    // The earliest deadline bounds the call, so no decision waits past its own.
    let deadline = batch
        .iter()
        .map(|p| p.deadline)
        .min()
        .unwrap_or_else(Instant::now);
    let result: omega_core::Result<Vec<i64>> =
        match tokio::time::timeout_at(deadline, b.backend.eval(&call)).await {
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
                        omega_core::Error::timeout(timeout)
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
                        reset_ns: b,
                    }
                } else {
                    RemoteStep::Deny {
                        retry_ns: a,
                        reset_ns: b,
                    }
                }
            } else if i < 63 && shadows & (1 << i) != 0 {
                RemoteStep::Deny {
                    retry_ns: 0,
                    reset_ns: 0,
                }
            } else {
                RemoteStep::Allow {
                    remaining: u32::MAX,
                    reset_ns: 0,
                }
            }
        })
        .collect()
}
