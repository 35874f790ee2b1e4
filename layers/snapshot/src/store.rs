//! The storage traits: an event store with optimistic concurrency, and a snapshot store.
//!
//! Both work on bytes: the [`Repository`](crate::Repository) encodes events and snapshots, so a
//! store knows nothing about the aggregate and one store serves every aggregate type. Both are
//! object safe (`Arc<dyn EventStore>`), returning boxed futures.
//!
//! A store must guarantee:
//!
//! - **append** is atomic: all events of one call are stored, or none; it fails with
//!   [`StoreError::conflict`] unless the stream's version is exactly `expected`, and answers
//!   [`Appended::Duplicate`] when a batch with the same [`CommandId`] was appended before
//!   (checked *before* the version, so a retried append whose first attempt landed is not
//!   reported as a conflict);
//! - **save** never lets the latest snapshot's version move backwards: it stores nothing
//!   (answering `false`) when a snapshot with a greater version exists; a snapshot with the
//!   same version is replaced;
//! - a crash never leaves a torn write visible (readers see the old or the new value).

use std::future::Future;
use std::pin::Pin;

use futures_util::stream::BoxStream;

use crate::aggregate::{CommandId, StreamId};
use crate::error::StoreError;
use crate::format::{HEADER_LEN, Header};

/// A boxed, sendable future, as the store traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event to append: its schema version and encoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The schema version of the payload.
    pub schema: u32,
    /// The encoded event.
    pub payload: Vec<u8>,
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Its version in the stream: 1 for the first event.
    pub version: u64,
    /// The schema version of the payload.
    pub schema: u32,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub recorded_at_ms: u64,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The events were appended; the stream is now at `version`.
    Appended {
        /// The version of the last appended event.
        version: u64,
    },
    /// A batch with the same command id was appended before (ending at `version`); nothing
    /// was appended now.
    Duplicate {
        /// The version of the last event of the earlier batch.
        version: u64,
    },
}

/// The events of an aggregate, appended with an expected version.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` (at least one) if the stream is at version `expected` (0 for a new
    /// stream), remembering `command` so the same command is never appended twice.
    fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: u64,
        command: &'a CommandId,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Appended, StoreError>>;

    /// Up to `limit` events with versions above `after`, in order.
    fn read<'a>(
        &'a self,
        stream: &'a StreamId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>>;

    /// The stream's version: the version of its last event, 0 when it has none.
    fn version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The version at which a batch carrying `command` ended, if one was appended.
    fn applied<'a>(
        &'a self,
        stream: &'a StreamId,
        command: &'a CommandId,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>>;

    /// Deletes the stream's events and remembered command ids.
    fn delete_stream<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The events with versions above `after` as a stream, read in pages of `page` events,
    /// so a long stream is never held in memory at once.
    fn stream<'a>(
        &'a self,
        stream: &'a StreamId,
        after: u64,
        page: usize,
    ) -> BoxStream<'a, Result<RecordedEvent, StoreError>> {
        use futures_util::StreamExt;
        let page = page.max(1);
        futures_util::stream::unfold(Some(after), move |cursor| async move {
            let after = cursor?;
            match self.read(stream, after, page).await {
                Ok(events) => {
                    let next = match events.last() {
                        Some(last) if events.len() == page => Some(last.version),
                        _ => None,
                    };
                    let items: Vec<Result<RecordedEvent, StoreError>> =
                        events.into_iter().map(Ok).collect();
                    Some((futures_util::stream::iter(items), next))
                }
                Err(e) => Some((futures_util::stream::iter(vec![Err(e)]), None)),
            }
        })
        .flatten()
        .boxed()
    }
}

/// A stored snapshot: its version and its bytes (header and body, see the crate docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The version of the last event the snapshot includes.
    pub version: u64,
    /// The header and body.
    pub bytes: Vec<u8>,
}

/// What a snapshot store lists about one snapshot, read from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The version of the last event it includes.
    pub version: u64,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written, in milliseconds since the Unix epoch (0 if the header is unreadable).
    pub created_at_ms: u64,
    /// For a delta, the version of the full snapshot it is based on.
    pub base: Option<u64>,
    /// `false` when the header could not be read (the snapshot is corrupt).
    pub header_ok: bool,
}

impl SnapshotMeta {
    /// The metadata of the snapshot at `version`, `size` bytes long, from the first bytes of
    /// its data (at least [`SnapshotMeta::HEADER_LEN`] of them, else it counts as corrupt).
    /// For store implementations.
    pub fn from_prefix(version: u64, size: u64, prefix: &[u8]) -> SnapshotMeta {
        match Header::peek(prefix) {
            Some(h) if h.version == version => SnapshotMeta {
                version,
                size,
                created_at_ms: h.created_at_ms,
                base: h.base(),
                header_ok: true,
            },
            _ => SnapshotMeta {
                version,
                size,
                created_at_ms: 0,
                base: None,
                header_ok: false,
            },
        }
    }

    /// How many leading bytes [`SnapshotMeta::from_prefix`] needs.
    pub const HEADER_LEN: usize = HEADER_LEN;
}

/// Snapshots of an aggregate's state.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores `snapshot` unless one with a greater version exists (then answers `false` and
    /// stores nothing); replaces one with the same version. Atomic: a crash leaves the old
    /// snapshot or the new one, never a torn one.
    fn save<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: &'a SnapshotRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The snapshot at exactly `version`.
    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>>;

    /// The newest snapshot with a version below `before` (`u64::MAX`: the newest of all).
    fn load_before<'a>(
        &'a self,
        stream: &'a StreamId,
        before: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>>;

    /// Every snapshot of the stream, newest first.
    fn list<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Vec<SnapshotMeta>, StoreError>>;

    /// Deletes the snapshots at `versions` (missing ones are ignored).
    fn prune<'a>(
        &'a self,
        stream: &'a StreamId,
        versions: &'a [u64],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes every snapshot of the stream.
    fn delete_snapshots<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
