//! What the repository reports: events on a broadcast channel, and metrics (feature `metrics`).

use std::fmt;
use std::time::Duration;

use crate::aggregate::AggregateId;
use crate::format::SnapshotKind;

/// Why a stored snapshot was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackReason {
    /// Its header or checksum is wrong (a torn or damaged write).
    Corrupt(String),
    /// It was written with an older state schema and no upcaster took it.
    OldSchema {
        /// The schema it was written with.
        found: u32,
    },
    /// It was written by newer code (a higher state schema).
    NewerSchema {
        /// The schema it was written with.
        found: u32,
    },
    /// Its body could not be decoded into the state, or the upcaster failed.
    Undecodable(String),
    /// It is a delta whose base is missing or unusable.
    MissingBase {
        /// The base version.
        base: u64,
    },
}

impl FallbackReason {
    /// A short label (`corrupt`, `old_schema`, `newer_schema`, `undecodable`, `missing_base`),
    /// as the metric's `reason` label.
    pub fn label(&self) -> &'static str {
        match self {
            FallbackReason::Corrupt(_) => "corrupt",
            FallbackReason::OldSchema { .. } => "old_schema",
            FallbackReason::NewerSchema { .. } => "newer_schema",
            FallbackReason::Undecodable(_) => "undecodable",
            FallbackReason::MissingBase { .. } => "missing_base",
        }
    }

    /// `true` when the snapshot is damaged (and the repository deletes it when it heals).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            FallbackReason::Corrupt(_)
                | FallbackReason::Undecodable(_)
                | FallbackReason::MissingBase { .. }
        )
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FallbackReason::Corrupt(d) => write!(f, "corrupt: {d}"),
            FallbackReason::OldSchema { found } => write!(f, "old schema {found}, no upcaster"),
            FallbackReason::NewerSchema { found } => write!(f, "newer schema {found}"),
            FallbackReason::Undecodable(d) => write!(f, "undecodable: {d}"),
            FallbackReason::MissingBase { base } => {
                write!(f, "base snapshot {base} missing or unusable")
            }
        }
    }
}

/// Something the repository did or found, sent to every receiver from
/// [`Repository::subscribe`](crate::Repository::subscribe).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotEvent {
    /// A stored snapshot was skipped while loading; an older one or a full replay was used.
    Fallback {
        /// The aggregate.
        aggregate: AggregateId,
        /// The skipped snapshot's version.
        version: u64,
        /// Why.
        reason: FallbackReason,
    },
    /// An aggregate was loaded. `from_snapshot` is the version of the snapshot used (`None`:
    /// a full replay from the first event).
    Rehydrated {
        /// The aggregate.
        aggregate: AggregateId,
        /// The snapshot used.
        from_snapshot: Option<u64>,
        /// How many events were replayed after it.
        replayed: u64,
        /// How many snapshots were skipped.
        fallbacks: u32,
        /// How long loading took.
        took: Duration,
    },
    /// A snapshot was written in the background.
    Written {
        /// The aggregate.
        aggregate: AggregateId,
        /// Its version.
        version: u64,
        /// Full or delta.
        kind: SnapshotKind,
        /// Its size in bytes, header included.
        bytes: usize,
    },
    /// Writing a snapshot failed; the trigger fires again later.
    WriteFailed {
        /// The aggregate.
        aggregate: AggregateId,
        /// The version it would have had.
        version: u64,
        /// The store's error.
        error: String,
    },
    /// Snapshots were deleted by retention, or because they were damaged.
    Pruned {
        /// The aggregate.
        aggregate: AggregateId,
        /// Their versions.
        versions: Vec<u64>,
    },
    /// An append met a concurrent writer; the command is decided again (or refused after the
    /// last retry).
    Conflict {
        /// The aggregate.
        aggregate: AggregateId,
        /// Which attempt conflicted (1 for the first).
        attempt: u32,
    },
}

#[cfg(feature = "metrics")]
pub(crate) mod names {
    /// Counter: aggregates loaded; labels `aggregate_type`, `source` (`snapshot`, `replay`).
    pub(crate) const REHYDRATIONS: &str = "omega_snapshot_rehydrations_total";
    /// Histogram (seconds): time to load an aggregate; label `aggregate_type`.
    pub(crate) const REHYDRATE_SECONDS: &str = "omega_snapshot_rehydrate_seconds";
    /// Counter: snapshots skipped while loading; labels `aggregate_type`, `reason`.
    pub(crate) const FALLBACKS: &str = "omega_snapshot_fallbacks_total";
    /// Counter: snapshots written; labels `aggregate_type`, `kind` (`full`, `delta`).
    pub(crate) const WRITTEN: &str = "omega_snapshot_written_total";
    /// Histogram (bytes): size of written snapshots; labels `aggregate_type`, `kind`.
    pub(crate) const WRITTEN_BYTES: &str = "omega_snapshot_bytes";
    /// Counter: failed snapshot writes; label `aggregate_type`.
    pub(crate) const WRITE_FAILURES: &str = "omega_snapshot_write_failures_total";
    /// Counter: snapshots deleted; label `aggregate_type`.
    pub(crate) const PRUNED: &str = "omega_snapshot_pruned_total";
    /// Counter: version conflicts on append; label `aggregate_type`.
    pub(crate) const CONFLICTS: &str = "omega_snapshot_conflicts_total";
    /// Counter: commands whose append found the command already applied; label `aggregate_type`.
    pub(crate) const DUPLICATES: &str = "omega_snapshot_duplicate_commands_total";
    /// Counter: snapshot triggers skipped because the writer queue was full.
    pub(crate) const SKIPPED: &str = "omega_snapshot_skipped_total";
}

/// Records the metric that goes with an event (feature `metrics`; otherwise nothing).
#[allow(unused_variables)]
pub(crate) fn record(kind: &'static str, event: &SnapshotEvent) {
    #[cfg(feature = "metrics")]
    {
        use metrics::{counter, histogram};
        match event {
            SnapshotEvent::Fallback { reason, .. } => {
                counter!(names::FALLBACKS, "aggregate_type" => kind, "reason" => reason.label())
                    .increment(1);
            }
            SnapshotEvent::Rehydrated {
                from_snapshot,
                took,
                ..
            } => {
                let source = if from_snapshot.is_some() {
                    "snapshot"
                } else {
                    "replay"
                };
                counter!(names::REHYDRATIONS, "aggregate_type" => kind, "source" => source)
                    .increment(1);
                histogram!(names::REHYDRATE_SECONDS, "aggregate_type" => kind)
                    .record(took.as_secs_f64());
            }
            SnapshotEvent::Written {
                kind: snap, bytes, ..
            } => {
                let k = match snap {
                    SnapshotKind::Full => "full",
                    SnapshotKind::Delta => "delta",
                };
                counter!(names::WRITTEN, "aggregate_type" => kind, "kind" => k).increment(1);
                histogram!(names::WRITTEN_BYTES, "aggregate_type" => kind, "kind" => k)
                    .record(*bytes as f64);
            }
            SnapshotEvent::WriteFailed { .. } => {
                counter!(names::WRITE_FAILURES, "aggregate_type" => kind).increment(1);
            }
            SnapshotEvent::Pruned { versions, .. } => {
                counter!(names::PRUNED, "aggregate_type" => kind).increment(versions.len() as u64);
            }
            SnapshotEvent::Conflict { .. } => {
                counter!(names::CONFLICTS, "aggregate_type" => kind).increment(1);
            }
        }
    }
}

/// Counts a duplicate command or a skipped trigger (feature `metrics`).
#[allow(unused_variables)]
pub(crate) fn count(kind: &'static str, what: Counted) {
    #[cfg(feature = "metrics")]
    {
        let name = match what {
            Counted::Duplicate => names::DUPLICATES,
            Counted::Skipped => names::SKIPPED,
        };
        metrics::counter!(name, "aggregate_type" => kind).increment(1);
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Counted {
    Duplicate,
    Skipped,
}
