//! A breaker's link to its [`RedisSync`](super::RedisSync): the breaker's transition hook,
//! which decides what a transition means for the other instances.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::breaker::{CircuitBreaker, Transition, TransitionHook, WeakBreaker};
use crate::event::Cause;
use crate::state::State;

use super::SyncInner;
use super::ops::Voted;

pub(super) struct Link {
    pub(super) sync: Arc<SyncInner>,
    pub(super) name: Arc<str>,
    pub(super) known: Arc<Mutex<Known>>,
}

/// The shared opening this breaker knows since it last was CLOSED: the one it made (its vote
/// completed the quorum) or followed. Its recovery may end that opening, and no other.
#[derive(Default)]
pub(super) struct Known {
    /// Bumped by every move to CLOSED: a vote answered after it belongs to an earlier cycle.
    cycle: u64,
    token: Option<Arc<str>>,
}

fn lock(m: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which openings vote: the breaker's own trips, on its own calls (its window in CLOSED, or
/// its probes in HALF_OPEN). An opening by hand (`transition_to_open`, `force_open`), one
/// learnt from another instance, or a HALF_OPEN that timed out (no probe answered: no verdict
/// on the dependency, often no traffic at all) is not evidence, and does not vote.
fn votes(cause: Cause) -> bool {
    matches!(
        cause,
        Cause::FailureRate | Cause::SlowCallRate | Cause::ConsecutiveFailures | Cause::ProbesFailed
    )
}

impl TransitionHook for Link {
    fn on_transition(&self, breaker: &CircuitBreaker, t: &Transition<'_>) {
        match (t.to, t.cause) {
            (State::Open, cause) if votes(cause) => self.spawn_vote(breaker, t),
            (State::Open, Cause::Remote) => {
                lock(&self.known).token = t.token.map(Arc::from);
            }
            (State::Closed, cause) => {
                let token = {
                    let mut k = lock(&self.known);
                    k.cycle += 1;
                    k.token.take()
                };
                let clear = match cause {
                    Cause::ProbesSucceeded => false,
                    Cause::Manual => true,
                    _ => return,
                };
                let (sync, name) = (self.sync.clone(), self.name.clone());
                retry(breaker, t.epoch, &self.sync, move || {
                    let (sync, name, token) = (sync.clone(), name.clone(), token.clone());
                    async move {
                        if clear {
                            sync.clear(&name).await
                        } else {
                            sync.recovered(&name, token.as_deref()).await
                        }
                    }
                });
            }
            _ => {}
        }
    }
}

impl Link {
    /// Votes for this opening (and publishes it if the vote completes the quorum), retrying
    /// while Redis is down and the breaker is still in this OPEN.
    fn spawn_vote(&self, breaker: &CircuitBreaker, t: &Transition<'_>) {
        let sync = self.sync.clone();
        let name = self.name.clone();
        let known = self.known.clone();
        let cycle = lock(&known).cycle;
        let weak = breaker.downgrade();
        let clock = breaker.clock().clone();
        let started = clock.now();
        let (epoch, wait) = (t.epoch, t.open_wait);
        let token: Arc<str> =
            format!("{}/{:016x}", sync.token_prefix, rand::random::<u64>()).into();
        let left =
            move || wait.saturating_sub(Duration::from_nanos(clock.now().saturating_sub(started)));
        self.sync.spawn(async move {
            // While Redis is down the instance decides alone; the vote is retried while the
            // breaker stays in this OPEN, so an opening made during an outage still reaches
            // the others once Redis is back.
            let mut backoff = Backoff::new();
            loop {
                if left().is_zero() {
                    return;
                }
                match sync.vote(&name, left(), &token).await {
                    Some(Voted::Quorum) => break,
                    Some(Voted::Counted) => return,
                    None => {}
                }
                if !backoff.wait_in(&weak, epoch).await {
                    return;
                }
            }
            {
                let mut k = lock(&known);
                if k.cycle == cycle {
                    k.token = Some(token.clone());
                }
            }
            // The key is stored: publish it (only that is retried now).
            while !left().is_zero() && !sync.publish(&name, left(), &token).await {
                if !backoff.wait_in(&weak, epoch).await {
                    return;
                }
            }
        });
    }
}

/// Runs `op` until it succeeds, backing off while it fails and the breaker stays in the state
/// of `epoch`.
fn retry<F, Fut>(breaker: &CircuitBreaker, epoch: u32, sync: &Arc<SyncInner>, op: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let weak = breaker.downgrade();
    sync.spawn(async move {
        let mut backoff = Backoff::new();
        while !op().await {
            if !backoff.wait_in(&weak, epoch).await {
                return;
            }
        }
    });
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(20))
    }

    /// Sleeps, then says whether the breaker is still in the state of `epoch`.
    async fn wait_in(&mut self, weak: &WeakBreaker, epoch: u32) -> bool {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        weak.upgrade().is_some_and(|b| b.in_epoch(epoch))
    }
}
