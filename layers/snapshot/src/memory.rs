//! The in-memory store: events and snapshots in one process, for tests and single-process use.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::aggregate::{CommandId, StreamId};
use crate::error::StoreError;
use crate::store::{
    Appended, BoxFuture, EventStore, NewEvent, RecordedEvent, SnapshotMeta, SnapshotRecord,
    SnapshotStore, unix_ms,
};

/// Events and snapshots in memory. Clones share the data. Every operation takes one short
/// lock and never awaits under it.
#[derive(Clone, Default)]
pub struct MemoryStore {
    streams: Arc<Mutex<HashMap<StreamId, Stream>>>,
}

#[derive(Default)]
struct Stream {
    events: Vec<Arc<RecordedEvent>>,
    commands: HashMap<CommandId, u64>,
    snapshots: BTreeMap<u64, Arc<Vec<u8>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("streams", &self.lock().len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StreamId, Stream>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventStore for MemoryStore {
    fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: u64,
        command: &'a CommandId,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Appended, StoreError>> {
        let result = (|| {
            if events.is_empty() {
                return Err(StoreError::backend("append of no events"));
            }
            let mut streams = self.lock();
            let s = streams.entry(stream.clone()).or_default();
            if let Some(&version) = s.commands.get(command) {
                return Ok(Appended::Duplicate { version });
            }
            let actual = s.events.len() as u64;
            if actual != expected {
                return Err(StoreError::conflict(expected, actual));
            }
            let at = unix_ms();
            for (i, e) in events.iter().enumerate() {
                s.events.push(Arc::new(RecordedEvent {
                    version: expected + 1 + i as u64,
                    schema: e.schema,
                    payload: e.payload.clone(),
                    recorded_at_ms: at,
                }));
            }
            let version = s.events.len() as u64;
            s.commands.insert(command.clone(), version);
            Ok(Appended::Appended { version })
        })();
        Box::pin(std::future::ready(result))
    }

    fn read<'a>(
        &'a self,
        stream: &'a StreamId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        let events = {
            let streams = self.lock();
            streams.get(stream).map_or_else(Vec::new, |s| {
                let from = usize::try_from(after)
                    .unwrap_or(usize::MAX)
                    .min(s.events.len());
                s.events[from..]
                    .iter()
                    .take(limit)
                    .cloned()
                    .collect::<Vec<_>>()
            })
        };
        let events = events.into_iter().map(|e| (*e).clone()).collect();
        Box::pin(std::future::ready(Ok(events)))
    }

    fn version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<u64, StoreError>> {
        let v = self.lock().get(stream).map_or(0, |s| s.events.len() as u64);
        Box::pin(std::future::ready(Ok(v)))
    }

    fn applied<'a>(
        &'a self,
        stream: &'a StreamId,
        command: &'a CommandId,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let v = self
            .lock()
            .get(stream)
            .and_then(|s| s.commands.get(command).copied());
        Box::pin(std::future::ready(Ok(v)))
    }

    fn delete_stream<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut streams = self.lock();
        if let Some(s) = streams.get_mut(stream) {
            s.events.clear();
            s.commands.clear();
            if s.snapshots.is_empty() {
                streams.remove(stream);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

impl SnapshotStore for MemoryStore {
    fn save<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: &'a SnapshotRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut streams = self.lock();
        let s = streams.entry(stream.clone()).or_default();
        let saved = match s.snapshots.last_key_value() {
            Some((&newest, _)) if newest > snapshot.version => false,
            _ => {
                s.snapshots
                    .insert(snapshot.version, Arc::new(snapshot.bytes.clone()));
                true
            }
        };
        Box::pin(std::future::ready(Ok(saved)))
    }

    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        let bytes = self
            .lock()
            .get(stream)
            .and_then(|s| s.snapshots.get(&version).cloned());
        Box::pin(std::future::ready(Ok(bytes.map(|b| SnapshotRecord {
            version,
            bytes: (*b).clone(),
        }))))
    }

    fn load_before<'a>(
        &'a self,
        stream: &'a StreamId,
        before: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        let found = self.lock().get(stream).and_then(|s| {
            s.snapshots
                .range(..before)
                .next_back()
                .map(|(v, b)| (*v, b.clone()))
        });
        Box::pin(std::future::ready(Ok(found.map(|(version, b)| {
            SnapshotRecord {
                version,
                bytes: (*b).clone(),
            }
        }))))
    }

    fn list<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Vec<SnapshotMeta>, StoreError>> {
        let list = self.lock().get(stream).map_or_else(Vec::new, |s| {
            s.snapshots
                .iter()
                .rev()
                .map(|(v, b)| SnapshotMeta::from_prefix(*v, b.len() as u64, b))
                .collect()
        });
        Box::pin(std::future::ready(Ok(list)))
    }

    fn prune<'a>(
        &'a self,
        stream: &'a StreamId,
        versions: &'a [u64],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        if let Some(s) = self.lock().get_mut(stream) {
            for v in versions {
                s.snapshots.remove(v);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn delete_snapshots<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut streams = self.lock();
        if let Some(s) = streams.get_mut(stream) {
            s.snapshots.clear();
            if s.events.is_empty() {
                streams.remove(stream);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
