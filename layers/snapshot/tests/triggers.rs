//! Triggers, retention and fallback, transition by transition, under tokio's paused clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Ledger, LedgerCommand, LedgerEvent, id};
use omega_snapshot::{
    AggregateId, BoxFuture, CommandId, Envelope, EventStore, FallbackReason, MemoryStore, NewEvent,
    RecordedEvent, Repository, Retention, Snapshot, SnapshotConfig, SnapshotEvent, SnapshotKind,
    SnapshotLayer, SnapshotMeta, SnapshotRecord, SnapshotStore, StoreError, StreamId, Trigger,
};
use tokio::sync::Semaphore;
use tower::ServiceExt;

type Svc = Snapshot<omega_snapshot::Decider<Ledger>, Ledger>;

fn setup(store: MemoryStore, config: SnapshotConfig) -> (Repository<Ledger>, Svc) {
    let repo: Repository<Ledger> = Repository::builder(store).config(config).build().unwrap();
    let svc = SnapshotLayer::new(repo.clone()).decider();
    (repo, svc)
}

async fn note(svc: &Svc, a: &AggregateId, n: u32) -> u64 {
    svc.clone()
        .oneshot(Envelope::new(
            a.clone(),
            LedgerCommand::Record(vec![LedgerEvent::Note(n)]),
        ))
        .await
        .unwrap()
        .unwrap()
        .version()
}

async fn versions(store: &MemoryStore, repo: &Repository<Ledger>, a: &AggregateId) -> Vec<u64> {
    repo.flush().await;
    SnapshotStore::list(store, &repo.stream_id(a))
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_n_events() {
    let store = MemoryStore::new();
    let (repo, svc) = setup(
        store.clone(),
        SnapshotConfig::default()
            .trigger(Trigger::every_events(3))
            .full_every(1)
            .retention(Retention::keep_last(10)),
    );
    let a = id("a");
    for n in 1..=2 {
        note(&svc, &a, n).await;
    }
    assert_eq!(versions(&store, &repo, &a).await, Vec::<u64>::new());
    note(&svc, &a, 3).await;
    assert_eq!(versions(&store, &repo, &a).await, [3]);
    for n in 4..=8 {
        note(&svc, &a, n).await;
    }
    assert_eq!(versions(&store, &repo, &a).await, [6, 3]);
    note(&svc, &a, 9).await;
    assert_eq!(versions(&store, &repo, &a).await, [9, 6, 3]);
}

#[tokio::test(start_paused = true)]
async fn every_period_of_time() {
    let store = MemoryStore::new();
    let (repo, svc) = setup(
        store.clone(),
        SnapshotConfig::default().trigger(Trigger::every(Duration::from_secs(60))),
    );
    let a = id("a");
    note(&svc, &a, 1).await; // loads at t=0
    tokio::time::advance(Duration::from_secs(59)).await;
    note(&svc, &a, 2).await;
    assert!(versions(&store, &repo, &a).await.is_empty());
    tokio::time::advance(Duration::from_secs(1)).await;
    note(&svc, &a, 3).await;
    assert_eq!(versions(&store, &repo, &a).await, [3]);
    // Nothing new since: no snapshot however long we wait.
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(versions(&store, &repo, &a).await, [3]);
    note(&svc, &a, 4).await;
    assert_eq!(versions(&store, &repo, &a).await, [4, 3]);
}

/// An event store whose reads take 1 ms per event (on the paused clock).
#[derive(Clone)]
struct Slow(MemoryStore);

impl EventStore for Slow {
    fn append<'a>(
        &'a self,
        s: &'a StreamId,
        e: u64,
        c: &'a CommandId,
        ev: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<omega_snapshot::Appended, StoreError>> {
        self.0.append(s, e, c, ev)
    }
    fn read<'a>(
        &'a self,
        s: &'a StreamId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let events = self.0.read(s, after, limit).await?;
            tokio::time::sleep(Duration::from_millis(events.len() as u64)).await;
            Ok(events)
        })
    }
    fn version<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.0.version(s)
    }
    fn applied<'a>(
        &'a self,
        s: &'a StreamId,
        c: &'a CommandId,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        self.0.applied(s, c)
    }
    fn delete_stream<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.delete_stream(s)
    }
}

#[tokio::test(start_paused = true)]
async fn when_replay_costs_too_much() {
    let store = MemoryStore::new();
    let config = SnapshotConfig::default().trigger(Trigger::replay_cost(Duration::from_millis(10)));
    let writer: Repository<Ledger> = Repository::builder(store.clone())
        .config(SnapshotConfig::default().trigger(Trigger::never()))
        .build()
        .unwrap();
    let w = SnapshotLayer::new(writer.clone()).decider();
    let a = id("a");
    for n in 0..9 {
        note(&w, &a, n).await;
    }
    let slow = |config: SnapshotConfig| -> Repository<Ledger> {
        Repository::with_stores(Arc::new(Slow(store.clone())), Arc::new(store.clone()))
            .config(config)
            .build()
            .unwrap()
    };
    // 9 events cost 9 ms to replay: under the threshold, no snapshot.
    let repo = slow(config.clone());
    let loaded = repo.load(&a).await.unwrap();
    assert_eq!(loaded.took(), Duration::from_millis(9));
    assert!(versions(&store, &repo, &a).await.is_empty());
    // 10 events cost 10 ms: a snapshot.
    note(&w, &a, 9).await;
    let repo = slow(config.clone());
    repo.load(&a).await.unwrap();
    assert_eq!(versions(&store, &repo, &a).await, [10]);
    // Through the layer, the cost per event (1 ms) is estimated for new events: the 10th
    // event after the snapshot triggers the next one.
    let repo = slow(config);
    let svc = SnapshotLayer::new(repo.clone()).decider();
    for n in 0..3 {
        note(&w, &a, n).await; // 13
    }
    note(&svc, &a, 0).await; // loads 3 events in 3 ms, 14
    for n in 0..5 {
        note(&svc, &a, n).await; // 19
    }
    assert_eq!(versions(&store, &repo, &a).await, [10]);
    note(&svc, &a, 0).await; // 20: 10 events since the snapshot, 10 ms
    assert_eq!(versions(&store, &repo, &a).await, [20, 10]);
}

#[tokio::test(start_paused = true)]
async fn triggers_combine() {
    let store = MemoryStore::new();
    let (repo, svc) = setup(
        store.clone(),
        SnapshotConfig::default()
            .trigger(Trigger::every_events(5).or(Trigger::every(Duration::from_secs(10)))),
    );
    let a = id("a");
    for n in 0..5 {
        note(&svc, &a, n).await;
    }
    assert_eq!(versions(&store, &repo, &a).await, [5]);
    note(&svc, &a, 6).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    note(&svc, &a, 7).await;
    assert_eq!(versions(&store, &repo, &a).await, [7, 5]);
}

/// A snapshot store whose saves wait for a permit, to show commands never wait for them.
#[derive(Clone)]
struct Gated {
    inner: MemoryStore,
    gate: Arc<Semaphore>,
}

impl SnapshotStore for Gated {
    fn save<'a>(
        &'a self,
        s: &'a StreamId,
        r: &'a SnapshotRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let _permit = self.gate.acquire().await.unwrap();
            self.inner.save(s, r).await
        })
    }
    fn load<'a>(
        &'a self,
        s: &'a StreamId,
        v: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        self.inner.load(s, v)
    }
    fn load_before<'a>(
        &'a self,
        s: &'a StreamId,
        v: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        self.inner.load_before(s, v)
    }
    fn list<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<Vec<SnapshotMeta>, StoreError>> {
        self.inner.list(s)
    }
    fn prune<'a>(&'a self, s: &'a StreamId, v: &'a [u64]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.prune(s, v)
    }
    fn delete_snapshots<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_snapshots(s)
    }
}

#[tokio::test(start_paused = true)]
async fn snapshots_are_written_off_the_command_path_and_never_backwards() {
    let store = MemoryStore::new();
    let gate = Arc::new(Semaphore::new(0));
    let gated = Gated {
        inner: store.clone(),
        gate: gate.clone(),
    };
    let repo: Repository<Ledger> =
        Repository::with_stores(Arc::new(store.clone()), Arc::new(gated))
            .config(
                SnapshotConfig::default()
                    .trigger(Trigger::every_events(1))
                    .full_every(1),
            )
            .build()
            .unwrap();
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let a = id("a");
    // Every command triggers a snapshot, and every save is stuck: commands still complete.
    for n in 1..=5 {
        let done = tokio::time::timeout(Duration::from_secs(1), note(&svc, &a, n)).await;
        assert_eq!(done.unwrap(), u64::from(n));
    }
    assert!(
        SnapshotStore::list(&store, &repo.stream_id(&a))
            .await
            .unwrap()
            .is_empty()
    );
    gate.add_permits(100);
    repo.flush().await;
    let written: Vec<u64> = SnapshotStore::list(&store, &repo.stream_id(&a))
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(written, [5, 4, 3]);

    // A stale process (its cache at version 5) never moves the snapshot back.
    let ahead: Repository<Ledger> = Repository::builder(store.clone()).build().unwrap();
    let ahead_svc = SnapshotLayer::new(ahead.clone()).decider();
    for n in 0..5 {
        note(&ahead_svc, &a, n).await;
    }
    assert_eq!(ahead.snapshot_now(&a).await.unwrap(), Some(10));
    let stale = repo.load(&a).await.unwrap(); // loads 10 from the snapshot
    assert_eq!(stale.snapshot_version(), Some(10));
    let older = SnapshotRecord {
        version: 7,
        bytes: SnapshotStore::load(&store, &repo.stream_id(&a), 5)
            .await
            .unwrap()
            .unwrap()
            .bytes,
    };
    assert!(
        !SnapshotStore::save(&store, &repo.stream_id(&a), &older)
            .await
            .unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn retention_keeps_n_and_the_bases_of_kept_deltas() {
    let store = MemoryStore::new();
    let (repo, svc) = setup(
        store.clone(),
        SnapshotConfig::default()
            .trigger(Trigger::every_events(3))
            .full_every(3)
            .retention(Retention::keep_last(2)),
    );
    let a = id("a");
    let mut reports = repo.subscribe();
    let mut kinds = Vec::new();
    for n in 1..=15 {
        note(&svc, &a, n).await;
        repo.flush().await;
        while let Ok(e) = reports.try_recv() {
            if let SnapshotEvent::Written { version, kind, .. } = e {
                kinds.push((version, kind));
            }
        }
    }
    use SnapshotKind::{Delta, Full};
    assert_eq!(
        kinds,
        [(3, Full), (6, Delta), (9, Delta), (12, Full), (15, Delta)]
    );
    // Keep 2 (15 and 12); 12 is also the base of 15.
    assert_eq!(versions(&store, &repo, &a).await, [15, 12]);
    let loaded = repo.load(&a).await.unwrap();
    assert_eq!(
        (loaded.snapshot_version(), loaded.replayed()),
        (Some(15), 0)
    );

    // keep_last(1) with a delta on top: the delta and its base stay.
    let (repo1, svc1) = setup(
        store.clone(),
        SnapshotConfig::default()
            .trigger(Trigger::every_events(1))
            .full_every(4)
            .retention(Retention::keep_last(1)),
    );
    let b = id("b");
    for n in 1..=3 {
        note(&svc1, &b, n).await;
        repo1.flush().await;
    }
    assert_eq!(versions(&store, &repo1, &b).await, [3, 1]);
}

#[tokio::test(start_paused = true)]
async fn retention_by_age_never_deletes_the_last_valid_snapshot() {
    let store = MemoryStore::new();
    let (repo, svc) = setup(
        store.clone(),
        SnapshotConfig::default()
            .trigger(Trigger::every_events(2))
            .full_every(1)
            .retention(Retention::keep_last(10).max_age(Duration::from_secs(3600))),
    );
    let a = id("a");
    for n in 1..=4 {
        note(&svc, &a, n).await;
    }
    assert_eq!(versions(&store, &repo, &a).await, [4, 2]);
    tokio::time::advance(Duration::from_secs(3601)).await;
    for n in 5..=6 {
        note(&svc, &a, n).await;
    }
    // Both older ones are past the age: only the new one stays.
    assert_eq!(versions(&store, &repo, &a).await, [6]);
    tokio::time::advance(Duration::from_secs(7200)).await;
    // However old, the last valid one is never deleted by a write that does not replace it.
    let (repo2, _) = setup(
        store.clone(),
        SnapshotConfig::default()
            .retention(Retention::keep_last(1).max_age(Duration::from_secs(1))),
    );
    assert_eq!(repo2.snapshot_now(&a).await.unwrap(), Some(6));
    assert_eq!(versions(&store, &repo2, &a).await, [6]);
}

async fn damage(store: &MemoryStore, stream: &StreamId, version: u64) {
    // Replace it in place (same version) with a torn copy.
    let mut rec = SnapshotStore::load(store, stream, version)
        .await
        .unwrap()
        .unwrap();
    rec.bytes.truncate(rec.bytes.len() - 3);
    let newest = SnapshotStore::list(store, stream).await.unwrap()[0].version;
    assert_eq!(newest, version, "only the newest can be replaced in place");
    assert!(SnapshotStore::save(store, stream, &rec).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_corrupt_snapshot_falls_back_then_heals() {
    let store = MemoryStore::new();
    let (repo, svc) = setup(
        store.clone(),
        SnapshotConfig::default()
            .trigger(Trigger::every_events(4))
            .full_every(1)
            .retention(Retention::keep_last(3)),
    );
    let a = id("a");
    for n in 1..=10 {
        note(&svc, &a, n).await;
    }
    let stream = repo.stream_id(&a);
    assert_eq!(versions(&store, &repo, &a).await, [8, 4]);

    // 1. The newest is torn: the previous one is used, the fallback reported.
    damage(&store, &stream, 8).await;
    let mut reports = repo.subscribe();
    let loaded = repo.load(&a).await.unwrap();
    assert_eq!((loaded.snapshot_version(), loaded.replayed()), (Some(4), 6));
    assert!(matches!(
        loaded.fallbacks(),
        [(8, FallbackReason::Corrupt(_))]
    ));
    let first = reports.recv().await.unwrap();
    assert!(
        matches!(&first, SnapshotEvent::Fallback { version: 8, reason: FallbackReason::Corrupt(d), .. } if d.contains("torn")),
        "{first:?}"
    );
    // 2. It heals: the damaged one is deleted and a fresh one written at the current version.
    assert_eq!(versions(&store, &repo, &a).await, [10, 4]);
    let mut pruned = false;
    while let Ok(e) = reports.try_recv() {
        pruned |= matches!(e, SnapshotEvent::Pruned { ref versions, .. } if versions == &[8]);
    }
    assert!(pruned);
    let loaded = repo.load(&a).await.unwrap();
    assert_eq!(
        (loaded.snapshot_version(), loaded.fallbacks().len()),
        (Some(10), 0)
    );

    // 3. Every snapshot unusable: a full replay, reported, then healed.
    SnapshotStore::prune(&store, &stream, &[4]).await.unwrap();
    damage(&store, &stream, 10).await;
    let loaded = repo.load(&a).await.unwrap();
    assert_eq!((loaded.snapshot_version(), loaded.replayed()), (None, 10));
    assert_eq!(versions(&store, &repo, &a).await, [10]);
    assert_eq!(repo.load(&a).await.unwrap().replayed(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_delta_without_its_base_falls_back() {
    let store = MemoryStore::new();
    let (repo, svc) = setup(
        store.clone(),
        SnapshotConfig::default()
            .trigger(Trigger::every_events(2))
            .full_every(10)
            .retention(Retention::keep_last(10)),
    );
    let a = id("a");
    for n in 1..=6 {
        note(&svc, &a, n).await;
    }
    assert_eq!(versions(&store, &repo, &a).await, [6, 4, 2]);
    SnapshotStore::prune(&store, &repo.stream_id(&a), &[2])
        .await
        .unwrap();
    let loaded = repo.load(&a).await.unwrap();
    assert_eq!(
        loaded.fallbacks(),
        &[
            (6, FallbackReason::MissingBase { base: 2 }),
            (4, FallbackReason::MissingBase { base: 2 })
        ]
    );
    assert_eq!((loaded.snapshot_version(), loaded.version()), (None, 6));
}

#[test]
fn fallbacks_are_counted_in_metrics() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let (repo, svc) = setup(
                store.clone(),
                SnapshotConfig::default().trigger(Trigger::every_events(2)),
            );
            let a = id("a");
            for n in 1..=2 {
                note(&svc, &a, n).await;
            }
            repo.flush().await;
            damage(&store, &repo.stream_id(&a), 2).await;
            repo.load(&a).await.unwrap();
        });
    });
    let counted: Vec<(String, Vec<String>, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => Some((
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect(),
                n,
            )),
            _ => None,
        })
        .collect();
    let fallbacks = counted
        .iter()
        .find(|(name, _, _)| name == "omega_snapshot_fallbacks_total")
        .unwrap_or_else(|| panic!("{counted:?}"));
    assert_eq!(fallbacks.2, 1);
    assert!(
        fallbacks.1.contains(&"reason=corrupt".to_owned()),
        "{fallbacks:?}"
    );
    assert!(
        counted
            .iter()
            .any(|(n, _, v)| n == "omega_snapshot_written_total" && *v >= 1)
    );
}
