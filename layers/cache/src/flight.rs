//! Coalescing in one process: the first miss for a key loads it, later misses wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::entry::Entry;

/// What a load ended with, as the requests waiting for it see it: the stored entry, or
/// nothing to share (the response was not cacheable, too large, or a failure).
type Shared<V> = Option<Arc<Entry<V>>>;
type Slot<V> = watch::Receiver<Option<Shared<V>>>;
type FlightKey = (u16, Box<[u8]>);

/// The loads under way, by partition and key.
pub(crate) struct Flights<V> {
    map: Mutex<HashMap<FlightKey, Slot<V>, foldhash::fast::RandomState>>,
}

/// Joining a load.
pub(crate) enum Join<V> {
    /// No load was under way: this caller loads, and must [`Lead::finish`].
    Lead(Lead<V>),
    /// Another caller is loading.
    Follow(Slot<V>),
}

/// The leader's side of a load: dropping it without finishing lets the followers retry.
pub(crate) struct Lead<V> {
    flights: Arc<Flights<V>>,
    key: Option<FlightKey>,
    tx: watch::Sender<Option<Shared<V>>>,
}

/// What a follower learned.
pub(crate) enum Followed<V> {
    /// The leader stored this entry.
    Stored(Arc<Entry<V>>),
    /// The leader has nothing to share: go upstream yourself.
    Nothing,
    /// The leader went away (its request was dropped): try again.
    Abandoned,
}

impl<V> Flights<V> {
    pub(crate) fn new() -> Self {
        Flights {
            map: Mutex::new(HashMap::default()),
        }
    }

    /// Leads the load of `key` in partition `part`, or follows the one under way.
    pub(crate) fn join(self: &Arc<Self>, part: u16, key: &[u8]) -> Join<V> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let flight_key = (part, Box::<[u8]>::from(key));
        if let Some(rx) = map.get(&flight_key) {
            return Join::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        map.insert(flight_key.clone(), rx);
        Join::Lead(Lead {
            flights: self.clone(),
            key: Some(flight_key),
            tx,
        })
    }

    /// How many loads are under way.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<V> Lead<V> {
    /// Ends the load: followers get `entry` (or go upstream themselves for `None`).
    pub(crate) fn finish(mut self, entry: Option<Arc<Entry<V>>>) {
        self.remove();
        let _ = self.tx.send(Some(entry));
    }

    fn remove(&mut self) {
        if let Some(key) = self.key.take() {
            self.flights
                .map
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
    }
}

impl<V> Drop for Lead<V> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Waits for the leader of `slot`.
pub(crate) async fn follow<V>(mut slot: Slot<V>) -> Followed<V> {
    match slot.wait_for(Option::is_some).await {
        Ok(done) => match &*done {
            Some(Some(entry)) => Followed::Stored(entry.clone()),
            _ => Followed::Nothing,
        },
        Err(_) => Followed::Abandoned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Wall;
    use std::time::Duration;

    #[tokio::test]
    async fn followers_get_the_leaders_entry_and_a_dropped_leader_lets_them_retry() {
        let flights = Arc::new(Flights::<u32>::new());
        let Join::Lead(lead) = flights.join(0, b"k") else {
            panic!("first joins lead")
        };
        let Join::Follow(slot) = flights.join(0, b"k") else {
            panic!("second follows")
        };
        assert!(
            matches!(flights.join(1, b"k"), Join::Lead(_)),
            "other partition"
        );
        let wall = Wall::from_now(
            Duration::from_secs(1),
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        let entry = Arc::new(Entry::new(7, wall, Box::new([]), 1, 0));
        lead.finish(Some(entry));
        assert!(matches!(follow(slot).await, Followed::Stored(e) if e.value == 7));
        assert_eq!(flights.len(), 0);

        let Join::Lead(lead) = flights.join(0, b"k") else {
            panic!()
        };
        let Join::Follow(slot) = flights.join(0, b"k") else {
            panic!()
        };
        drop(lead);
        assert!(matches!(follow(slot).await, Followed::Abandoned));
        assert_eq!(flights.len(), 0);
    }
}
