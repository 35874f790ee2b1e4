//! The background snapshot writer: encodes, chooses full or delta, saves, then prunes.
//!
//! One task per repository takes jobs from a bounded queue, so snapshot writes never run on
//! a command's path and never pile up: a full queue skips the trigger, which fires again.

use std::collections::HashSet;
use std::sync::Arc;

use omega_core::{Clock, Nanos};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::aggregate::{Aggregate, AggregateId, StreamId};
use crate::config::SnapshotConfig;
use crate::error::StoreError;
use crate::event::{self, SnapshotEvent};
use crate::format::{self, Meta, SnapshotKind};
use crate::store::{SnapshotMeta, SnapshotRecord, SnapshotStore};

pub(crate) enum Job<A> {
    Write {
        id: AggregateId,
        state: Arc<A>,
        version: u64,
        /// Damaged snapshots to delete first (found while loading).
        damaged: Vec<u64>,
        force_full: bool,
        reply: Option<oneshot::Sender<Result<Option<u64>, StoreError>>>,
    },
    /// Forget what the writer knows about an aggregate (it is being deleted).
    Forget(AggregateId, oneshot::Sender<()>),
    Flush(oneshot::Sender<()>),
}

/// What the writer remembers per aggregate: the last full snapshot (the base of the next
/// deltas) and the last version written, so versions never go backwards.
#[derive(Clone)]
struct Track {
    full_version: u64,
    full_raw: Arc<[u8]>,
    since_full: u32,
    last_written: u64,
}

pub(crate) struct Shared<A: Aggregate> {
    snapshots: Arc<dyn SnapshotStore>,
    config: SnapshotConfig,
    clock: Clock,
    epoch_ms: u64,
    epoch: Nanos,
    reports: broadcast::Sender<SnapshotEvent>,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> Shared<A> {
    /// What the writer needs of a repository: where snapshots go, the policy, the time and
    /// (as a wall-clock reading `epoch_ms` taken now) where reports go.
    pub(crate) fn new(
        snapshots: Arc<dyn SnapshotStore>,
        config: SnapshotConfig,
        clock: Clock,
        epoch_ms: u64,
        reports: broadcast::Sender<SnapshotEvent>,
    ) -> Self {
        Shared {
            snapshots,
            config,
            epoch: clock.now(),
            clock,
            epoch_ms,
            reports,
            _aggregate: std::marker::PhantomData,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch_ms + self.clock.now().saturating_sub(self.epoch) / 1_000_000
    }

    fn report(&self, event: SnapshotEvent) {
        event::record(A::TYPE, &event);
        let _ = self.reports.send(event);
    }
}

pub(crate) async fn run<A: Aggregate>(mut rx: mpsc::Receiver<Job<A>>, shared: Shared<A>) {
    let tracks: moka::sync::Cache<AggregateId, Track> = moka::sync::Cache::builder()
        .max_capacity(shared.config.cache_capacity.max(1024))
        .build();
    while let Some(job) = rx.recv().await {
        match job {
            Job::Flush(done) => {
                let _ = done.send(());
            }
            Job::Forget(id, done) => {
                tracks.invalidate(&id);
                let _ = done.send(());
            }
            Job::Write {
                id,
                state,
                version,
                damaged,
                force_full,
                reply,
            } => {
                let result =
                    write(&shared, &tracks, &id, &state, version, damaged, force_full).await;
                if let Err(e) = &result {
                    shared.report(SnapshotEvent::WriteFailed {
                        aggregate: id.clone(),
                        version,
                        error: e.to_string(),
                    });
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
    }
}

async fn write<A: Aggregate>(
    shared: &Shared<A>,
    tracks: &moka::sync::Cache<AggregateId, Track>,
    id: &AggregateId,
    state: &A,
    version: u64,
    damaged: Vec<u64>,
    force_full: bool,
) -> Result<Option<u64>, StoreError> {
    let stream = StreamId::new(A::TYPE, id.clone());
    let track = tracks.get(id);
    if track.as_ref().is_some_and(|t| t.last_written > version)
        || (!force_full && track.as_ref().is_some_and(|t| t.last_written == version))
    {
        return Ok(None);
    }
    if !damaged.is_empty() {
        shared.snapshots.prune(&stream, &damaged).await?;
        shared.report(SnapshotEvent::Pruned {
            aggregate: id.clone(),
            versions: damaged,
        });
    }
    let cfg = &shared.config;
    let raw = cfg
        .snapshot_format
        .encode(state)
        .map_err(|e| StoreError::backend(format!("cannot encode the state: {e}")))?;
    let meta = Meta {
        format: cfg.snapshot_format,
        schema: A::SNAPSHOT_SCHEMA,
        version,
        created_at_ms: shared.now_ms(),
    };
    let delta = match &track {
        Some(t) if !force_full && t.since_full + 1 < cfg.full_every && t.full_version < version => {
            format::delta(
                meta,
                &raw,
                t.full_version,
                &t.full_raw,
                cfg.compression_level,
            )
            .map(|bytes| (bytes, t.clone()))
        }
        _ => None,
    };
    let (bytes, kind) = match &delta {
        Some((bytes, _)) => (bytes.clone(), SnapshotKind::Delta),
        None => {
            let compress = cfg
                .compress_above
                .filter(|min| raw.len() >= *min)
                .map(|_| cfg.compression_level);
            (format::full(meta, &raw, compress), SnapshotKind::Full)
        }
    };
    let size = bytes.len();
    let record = SnapshotRecord { version, bytes };
    if !shared.snapshots.save(&stream, &record).await? {
        // A newer snapshot exists (another process wrote it): ours would move backwards.
        return Ok(None);
    }
    let next = match delta {
        Some((_, t)) => Track {
            since_full: t.since_full + 1,
            last_written: version,
            ..t
        },
        None => Track {
            full_version: version,
            full_raw: Arc::from(raw),
            since_full: 0,
            last_written: version,
        },
    };
    tracks.insert(id.clone(), next);
    shared.report(SnapshotEvent::Written {
        aggregate: id.clone(),
        version,
        kind,
        bytes: size,
    });
    retain(shared, &stream, id, version).await;
    Ok(Some(version))
}

/// Applies the retention after the snapshot at `valid` was written. Failures are reported
/// (pruning is retried after the next write).
async fn retain<A: Aggregate>(shared: &Shared<A>, stream: &StreamId, id: &AggregateId, valid: u64) {
    let list = match shared.snapshots.list(stream).await {
        Ok(list) => list,
        Err(e) => {
            shared.report(SnapshotEvent::WriteFailed {
                aggregate: id.clone(),
                version: valid,
                error: format!("listing snapshots for retention: {e}"),
            });
            return;
        }
    };
    let doomed = doomed(&list, &shared.config, valid, shared.now_ms());
    if doomed.is_empty() {
        return;
    }
    match shared.snapshots.prune(stream, &doomed).await {
        Ok(()) => shared.report(SnapshotEvent::Pruned {
            aggregate: id.clone(),
            versions: doomed,
        }),
        Err(e) => shared.report(SnapshotEvent::WriteFailed {
            aggregate: id.clone(),
            version: valid,
            error: format!("pruning snapshots: {e}"),
        }),
    }
}

/// The snapshots retention deletes from `list` (newest first), given that `valid` is known
/// good: never `valid` itself, never the base of a kept delta.
pub(crate) fn doomed(
    list: &[SnapshotMeta],
    config: &SnapshotConfig,
    valid: u64,
    now_ms: u64,
) -> Vec<u64> {
    let r = config.retention;
    let mut sorted: Vec<&SnapshotMeta> = list.iter().collect();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.version));
    let max_age_ms = r
        .max_age
        .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX));
    let mut keep: HashSet<u64> = HashSet::new();
    for (rank, m) in sorted.iter().enumerate() {
        let too_many = rank >= r.keep_last;
        let too_old = max_age_ms.is_some_and(|age| now_ms.saturating_sub(m.created_at_ms) > age);
        if m.version == valid || (m.header_ok && !too_many && !too_old) {
            keep.insert(m.version);
        }
    }
    let bases: Vec<u64> = sorted
        .iter()
        .filter(|m| keep.contains(&m.version))
        .filter_map(|m| m.base)
        .collect();
    keep.extend(bases);
    sorted
        .iter()
        .map(|m| m.version)
        .filter(|v| !keep.contains(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Retention;
    use std::time::Duration;

    fn meta(version: u64, at: u64, base: Option<u64>) -> SnapshotMeta {
        SnapshotMeta {
            version,
            size: 10,
            created_at_ms: at,
            base,
            header_ok: true,
        }
    }

    #[test]
    fn retention_keeps_the_valid_one_and_the_bases() {
        let cfg = SnapshotConfig::default().retention(Retention::keep_last(2));
        // 500 is a delta on 300; 400 a delta on 300; 300 full; 200, 100 full.
        let list = vec![
            meta(500, 50, Some(300)),
            meta(400, 40, Some(300)),
            meta(300, 30, None),
            meta(200, 20, None),
            meta(100, 10, None),
        ];
        assert_eq!(doomed(&list, &cfg, 500, 60), vec![200, 100]);

        // Everything too old: the valid one and its base survive.
        let cfg = SnapshotConfig::default()
            .retention(Retention::keep_last(10).max_age(Duration::from_millis(5)));
        assert_eq!(doomed(&list, &cfg, 500, 1000), vec![400, 200, 100]);

        // A corrupt header is never kept, unless it is the one just written.
        let mut bad = meta(250, 25, None);
        bad.header_ok = false;
        let cfg = SnapshotConfig::default().retention(Retention::keep_last(10));
        assert_eq!(
            doomed(&[meta(300, 30, None), bad], &cfg, 300, 40),
            vec![250]
        );
    }
}
