//! Following the other instances: the subscription's messages, and the OPEN keys read when a
//! breaker is attached or the subscription comes back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use omega_core::redis::{Subscription, SubscriptionEvent};
use tokio::sync::Notify;

use crate::breaker::{CircuitBreaker, WeakBreaker};

use super::SyncInner;

/// How many OPEN keys a catch-up reads at once.
const CATCH_UP_CONCURRENCY: usize = 32;

/// What a catch-up reads: a breaker name, and the one breaker to open (a newly attached one),
/// or every breaker of that name (`None`, after a (re)subscription).
pub(super) type CatchUp = (Arc<str>, Option<WeakBreaker>);

impl SyncInner {
    /// Reads the OPEN key of `target`'s name and opens its breakers (or the one breaker it
    /// names) if the circuit is open in Redis; `false` when Redis did not answer.
    async fn catch_up(&self, target: &CatchUp) -> bool {
        let (name, only) = target;
        let Ok(open) = self.read_open(name).await else {
            return false;
        };
        if let Some((token, wait)) = open {
            match only {
                Some(one) => {
                    if let Some(b) = one.upgrade() {
                        b.open_remote(wait, &token);
                    }
                }
                None => {
                    for b in self.breakers_named(name) {
                        b.open_remote(wait, &token);
                    }
                }
            }
        }
        self.keys_read.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The names of the live attached breakers (dropping the dead entries).
    fn names(&self) -> Vec<Arc<str>> {
        let mut attached = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        attached.map.retain(|_, v| {
            v.retain(WeakBreaker::is_alive);
            !v.is_empty()
        });
        attached.map.keys().cloned().collect()
    }

    fn breakers_named(&self, name: &str) -> Vec<CircuitBreaker> {
        self.breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(name)
            .map(|v| v.iter().filter_map(WeakBreaker::upgrade).collect())
            .unwrap_or_default()
    }

    /// `open|<sender's nonce>|<wait ms>|<token>|<breaker name>`.
    fn on_message(&self, payload: &[u8]) {
        let Ok(payload) = std::str::from_utf8(payload) else {
            return;
        };
        let mut parts = payload.splitn(5, '|');
        let (Some("open"), Some(nonce), Some(wait), Some(token), Some(name)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return;
        };
        if nonce == self.nonce {
            return;
        }
        let Ok(wait_ms) = wait.parse::<u64>() else {
            return;
        };
        for b in self.breakers_named(name) {
            if b.open_remote(Duration::from_millis(wait_ms), token) {
                self.received.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

/// Starts the listener on the current runtime. When it ends before the sync asked it to (its
/// runtime shut down, or its subscription ended), the sync is no longer subscribed, and the
/// next task it starts starts another listener.
pub(super) fn start(inner: &Arc<SyncInner>) {
    let subscription = inner.backend.subscribe(inner.channel.clone());
    let weak = Arc::downgrade(inner);
    let on_lost = {
        let weak = weak.clone();
        move || lost(&weak)
    };
    let shutdown = inner.shutdown.clone();
    omega_core::task::spawn_watched(listen(weak, subscription, shutdown), on_lost);
}

fn lost(weak: &Weak<SyncInner>) {
    if let Some(inner) = weak.upgrade() {
        inner.subscribed.store(false, Ordering::Release);
        inner.listener.set();
    }
}

/// Follows the subscription: messages open breakers; each (re)subscription catches up.
async fn listen(weak: Weak<SyncInner>, mut subscription: Subscription, shutdown: Arc<Notify>) {
    loop {
        let event = tokio::select! {
            event = subscription.next() => event,
            () = shutdown.notified() => return,
        };
        let Some(event) = event else {
            // The subscription's task ended: nothing is heard any more.
            return lost(&weak);
        };
        let Some(inner) = weak.upgrade() else { return };
        match event {
            SubscriptionEvent::Subscribed => {
                // Learn what was opened while we were not listening (the breakers attached
                // from now on read their key when they are attached).
                let targets = inner.names().into_iter().map(|n| (n, None)).collect();
                inner.subscribed.store(true, Ordering::Release);
                inner.subscriptions.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(catch_up_until_answered(weak.clone(), targets));
            }
            SubscriptionEvent::Message(payload) => inner.on_message(&payload),
            SubscriptionEvent::Lost => inner.subscribed.store(false, Ordering::Release),
            _ => {}
        }
    }
}

/// Reads the OPEN keys of `pending`, a few at a time, until Redis has answered for each (it
/// may be down, or not connected yet); ends early when the sync is dropped.
pub(super) async fn catch_up_until_answered(weak: Weak<SyncInner>, mut pending: Vec<CatchUp>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        {
            let Some(inner) = weak.upgrade() else { return };
            let inner = &inner;
            pending = futures_util::stream::iter(pending)
                .map(|target| async move { (!inner.catch_up(&target).await).then_some(target) })
                .buffer_unordered(CATCH_UP_CONCURRENCY)
                .filter_map(std::future::ready)
                .collect()
                .await;
        }
        if pending.is_empty() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
