//! Invalidations between instances (feature `redis`): each purge deletes from L2, then
//! publishes a message on which every instance drops its L1 copies.
//!
//! A subscription that was lost may have missed messages: when it is back
//! ([`SubscriptionEvent::Subscribed`] after [`SubscriptionEvent::Lost`]) the instance drops its
//! whole L1 and re-reads the partitions' generations instead of serving what it may have
//! missed. Until the first subscription (and while one is lost) L2 is not used: this instance
//! works from memory and the upstream, as it does while Redis is down.

use std::sync::{Arc, Weak};
use std::time::Duration;

use omega_core::redis::SubscriptionEvent;
use tokio::sync::watch;

/// What the listener needs of a cache: who it is, its partitions, and how to drop what it
/// holds. The cache implements it; the listener holds it weakly, so it ends with the cache.
pub(crate) trait Listener: Send + Sync + 'static {
    /// This instance's id (its own messages are skipped).
    fn instance(&self) -> u64;
    /// The names of its partitions (their generations are re-read after a gap).
    fn partition_names(&self) -> Vec<&str>;
    /// Drops every L1 entry (after a gap, anything published meanwhile was missed).
    fn drop_everything(&self);
    /// Applies an invalidation sent at `sent_us` (Unix microseconds).
    fn apply(&self, msg: &Message, sent_us: u64);
}

/// An invalidation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Key { partition: String, key: Vec<u8> },
    Tag(String),
    Partition { partition: String, generation: u64 },
}

const KEY: u8 = 1;
const TAG: u8 = 2;
const PARTITION: u8 = 3;

impl Message {
    /// `[kind][from: u64][sent_at_us: u64][...]`: the sender's instance id (an instance skips
    /// its own messages) and the send time (the delay is measured).
    pub(crate) fn encode(&self, from: u64) -> Vec<u8> {
        let sent = crate::entry::wall_us();
        let mut out = Vec::with_capacity(64);
        match self {
            Message::Key { partition, key } => {
                out.push(KEY);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&sent.to_be_bytes());
                out.extend_from_slice(&(partition.len() as u16).to_be_bytes());
                out.extend_from_slice(partition.as_bytes());
                out.extend_from_slice(key);
            }
            Message::Tag(tag) => {
                out.push(TAG);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&sent.to_be_bytes());
                out.extend_from_slice(tag.as_bytes());
            }
            Message::Partition {
                partition,
                generation,
            } => {
                out.push(PARTITION);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&sent.to_be_bytes());
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(partition.as_bytes());
            }
        }
        out
    }

    /// The message, its sender, and when it was sent (Unix microseconds).
    pub(crate) fn decode(b: &[u8]) -> Option<(Message, u64, u64)> {
        let from = u64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
        let sent = u64::from_be_bytes(b.get(9..17)?.try_into().ok()?);
        let rest = b.get(17..)?;
        let msg = match b[0] {
            KEY => {
                let n = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
                let partition = std::str::from_utf8(rest.get(2..2 + n)?).ok()?.to_owned();
                Message::Key {
                    partition,
                    key: rest[2 + n..].to_vec(),
                }
            }
            TAG => Message::Tag(std::str::from_utf8(rest).ok()?.to_owned()),
            PARTITION => Message::Partition {
                generation: u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
                partition: std::str::from_utf8(rest.get(8..)?).ok()?.to_owned(),
            },
            _ => return None,
        };
        Some((msg, from, sent))
    }
}

/// Starts the task that keeps this cache's subscription, on the current runtime; it ends
/// when `stop`'s sender (held by the cache) is dropped, or the cache is. `after_gap`: the
/// first subscription follows a time without a listener (the one before ended with its
/// runtime), so L1 is dropped then as after any gap.
///
/// A listener that ends otherwise (its runtime shut down, or its subscription's task) leaves
/// L2 unused and L1 empty, since invalidations are no longer heard, and marks itself lost:
/// the cache's next use of L2 starts another (see [`crate::l2::L2::listener`]).
pub(crate) fn spawn_listener<C: Listener>(
    cache: Weak<C>,
    l2: Arc<crate::l2::L2>,
    mut stop: watch::Receiver<()>,
    after_gap: bool,
) {
    let mut sub = l2.backend.subscribe(l2.channel().to_owned());
    let on_lost = {
        let (cache, l2) = (cache.clone(), l2.clone());
        move || lost(&cache, &l2)
    };
    let task = async move {
        let mut first = !after_gap;
        loop {
            let event = tokio::select! {
                e = sub.next() => e,
                _ = stop.changed() => return,
            };
            let Some(event) = event else {
                // The subscription's task ended: nothing is heard any more.
                return lost(&cache, &l2);
            };
            let Some(cache) = cache.upgrade() else { return };
            match event {
                SubscriptionEvent::Subscribed => {
                    if !first {
                        // Anything published while we were away was missed.
                        cache.drop_everything();
                    }
                    first = false;
                    let names = cache.partition_names();
                    let mut delay = Duration::from_millis(20);
                    loop {
                        if l2.load_generations(&names).await.is_ok() {
                            l2.set_synced(true);
                            break;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {},
                            _ = stop.changed() => return,
                        }
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
                SubscriptionEvent::Lost => l2.set_synced(false),
                SubscriptionEvent::Message(payload) => match Message::decode(&payload) {
                    Some((_, from, _)) if from == cache.instance() => {}
                    Some((msg, _, sent)) => cache.apply(&msg, sent),
                    None => {}
                },
                _ => {}
            }
        }
    };
    omega_core::task::spawn_watched(task, on_lost);
}

/// The listener ended before its cache asked it to: L2 is no longer used and L1 is dropped,
/// since invalidations are no longer heard, until another listener has subscribed.
fn lost<C: Listener>(cache: &Weak<C>, l2: &crate::l2::L2) {
    l2.set_synced(false);
    if let Some(cache) = cache.upgrade() {
        cache.drop_everything();
        l2.listener.set();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Key {
                partition: "users".into(),
                key: vec![0, 1, 255],
            },
            Message::Tag("user:7".into()),
            Message::Partition {
                partition: "p".into(),
                generation: 42,
            },
        ] {
            let (back, from, sent) = Message::decode(&m.encode(7)).unwrap();
            assert_eq!((back, from), (m, 7));
            assert!(sent > 0);
        }
        assert!(Message::decode(&[9, 0, 0]).is_none());
    }
}
