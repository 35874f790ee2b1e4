//! Every store against its real server: the store contract, and the property that a
//! rehydrated aggregate equals the pure replay of its events, whatever the snapshot schedule,
//! deltas and corruptions.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{Env, Kind, Ledger, LedgerCommand, LedgerEvent, id, replay, start};
use futures_util::StreamExt;
use omega_snapshot::{
    Appended, BoxFuture, CommandId, Envelope, Format, NewEvent, Repository, SnapshotConfig,
    SnapshotEvent, SnapshotKind, SnapshotLayer, SnapshotMeta, SnapshotRecord, SnapshotStore,
    StoreError, StreamId, Trigger,
};
use proptest::prelude::*;
use tower::ServiceExt;

fn ev(n: u8) -> NewEvent {
    NewEvent {
        schema: 1,
        payload: vec![n; usize::from(n) + 1],
    }
}

/// The contract of `EventStore` and `SnapshotStore` (see `store.rs`).
async fn contract(env: &Env) {
    let (events, snaps) = (&env.events, &env.snapshots);
    let s = StreamId::new("contract", id(&format!("c-{:?}", env.kind)));
    let other = StreamId::new("contract", id("other {weird}/id"));
    let c1 = CommandId::new("c1").unwrap();
    let c2 = CommandId::new("c2").unwrap();

    assert_eq!(events.version(&s).await.unwrap(), 0);
    assert!(events.read(&s, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        events.append(&s, 0, &c1, &[ev(1), ev(2)]).await.unwrap(),
        Appended::Appended { version: 2 }
    );
    // The same command again: a duplicate, checked before the version.
    assert_eq!(
        events.append(&s, 0, &c1, &[ev(1), ev(2)]).await.unwrap(),
        Appended::Duplicate { version: 2 }
    );
    assert_eq!(
        events.append(&s, 2, &c1, &[ev(9)]).await.unwrap(),
        Appended::Duplicate { version: 2 }
    );
    // A stale expected version: a conflict naming the actual one, nothing appended.
    let err = events.append(&s, 1, &c2, &[ev(3)]).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(err.actual_version(), Some(2));
    let err = events.append(&s, 5, &c2, &[ev(3)]).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(events.version(&s).await.unwrap(), 2);
    assert_eq!(
        events.append(&s, 2, &c2, &[ev(3)]).await.unwrap(),
        Appended::Appended { version: 3 }
    );
    assert_eq!(events.applied(&s, &c1).await.unwrap(), Some(2));
    assert_eq!(events.applied(&s, &c2).await.unwrap(), Some(3));
    assert_eq!(
        events
            .applied(&s, &CommandId::new("c3").unwrap())
            .await
            .unwrap(),
        None
    );
    let all = events.read(&s, 0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(all[2].payload, ev(3).payload);
    assert!(all[0].recorded_at_ms > 0);
    let page = events.read(&s, 1, 1).await.unwrap();
    assert_eq!((page.len(), page[0].version), (1, 2));
    // Streams are independent.
    assert_eq!(
        events.append(&other, 0, &c1, &[ev(7)]).await.unwrap(),
        Appended::Appended { version: 1 }
    );
    // A long stream, read in pages through `stream`.
    for i in 0..20u8 {
        let c = CommandId::new(format!("bulk-{i}")).unwrap();
        let v = 3 + u64::from(i) * 3;
        events
            .append(&s, v, &c, &[ev(i), ev(i), ev(i)])
            .await
            .unwrap();
    }
    let streamed: Vec<u64> = events
        .stream(&s, 10, 7)
        .map(|e| e.unwrap().version)
        .collect()
        .await;
    assert_eq!(streamed, (11..=63).collect::<Vec<_>>());

    // Snapshots: never backwards, same version replaced, load_before, list, prune.
    let snap = |v: u64, b: u8| SnapshotRecord {
        version: v,
        bytes: vec![b; 60],
    };
    assert_eq!(snaps.load_before(&s, u64::MAX).await.unwrap(), None);
    assert!(snaps.save(&s, &snap(10, 1)).await.unwrap());
    assert!(snaps.save(&s, &snap(20, 2)).await.unwrap());
    assert!(
        !snaps.save(&s, &snap(15, 3)).await.unwrap(),
        "moved backwards"
    );
    assert!(
        snaps.save(&s, &snap(20, 4)).await.unwrap(),
        "same version replaced"
    );
    assert_eq!(snaps.load(&s, 20).await.unwrap(), Some(snap(20, 4)));
    assert_eq!(snaps.load(&s, 15).await.unwrap(), None);
    assert_eq!(
        snaps.load_before(&s, u64::MAX).await.unwrap(),
        Some(snap(20, 4))
    );
    assert_eq!(snaps.load_before(&s, 20).await.unwrap(), Some(snap(10, 1)));
    assert_eq!(snaps.load_before(&s, 10).await.unwrap(), None);
    let list = snaps.list(&s).await.unwrap();
    assert_eq!(list.iter().map(|m| m.version).collect::<Vec<_>>(), [20, 10]);
    assert_eq!(list[0].size, 60);
    assert!(!list[0].header_ok, "not a real snapshot header");
    snaps.prune(&s, &[10, 99]).await.unwrap();
    assert_eq!(snaps.list(&s).await.unwrap().len(), 1);
    assert!(snaps.list(&other).await.unwrap().is_empty());

    // Deletion.
    snaps.delete_snapshots(&s).await.unwrap();
    assert!(snaps.list(&s).await.unwrap().is_empty());
    events.delete_stream(&s).await.unwrap();
    assert_eq!(events.version(&s).await.unwrap(), 0);
    assert_eq!(events.applied(&s, &c1).await.unwrap(), None);
    assert_eq!(
        events.append(&s, 0, &c1, &[ev(5)]).await.unwrap(),
        Appended::Appended { version: 1 }
    );
    assert_eq!(events.version(&other).await.unwrap(), 1);
}

/// A snapshot store that hands out damaged bytes for chosen snapshots (as a disk or a bad
/// write would), over a real store.
#[derive(Clone)]
struct Tamper {
    inner: Arc<dyn SnapshotStore>,
    marks: Arc<Mutex<HashMap<(StreamId, u64), u8>>>,
}

impl Tamper {
    fn damage(&self, bytes: &mut Vec<u8>, mode: u8, version: u64) {
        match mode % 4 {
            0 => {
                let i = (version as usize * 7919) % bytes.len();
                bytes[i] ^= 0x5a;
            }
            1 => bytes.truncate(bytes.len() / 2),
            2 => bytes.iter_mut().skip(48).for_each(|b| *b = 0),
            _ => *bytes = b"not a snapshot".to_vec(),
        }
    }

    fn fix(&self, stream: &StreamId, rec: Option<SnapshotRecord>) -> Option<SnapshotRecord> {
        rec.map(|mut r| {
            let mark = self
                .marks
                .lock()
                .unwrap()
                .get(&(stream.clone(), r.version))
                .copied();
            if let Some(mode) = mark {
                self.damage(&mut r.bytes, mode, r.version);
            }
            r
        })
    }
}

impl SnapshotStore for Tamper {
    fn save<'a>(
        &'a self,
        s: &'a StreamId,
        r: &'a SnapshotRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let saved = self.inner.save(s, r).await?;
            if saved {
                self.marks.lock().unwrap().remove(&(s.clone(), r.version));
            }
            Ok(saved)
        })
    }
    fn load<'a>(
        &'a self,
        s: &'a StreamId,
        v: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        Box::pin(async move { Ok(self.fix(s, self.inner.load(s, v).await?)) })
    }
    fn load_before<'a>(
        &'a self,
        s: &'a StreamId,
        v: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        Box::pin(async move { Ok(self.fix(s, self.inner.load_before(s, v).await?)) })
    }
    fn list<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<Vec<SnapshotMeta>, StoreError>> {
        self.inner.list(s)
    }
    fn prune<'a>(&'a self, s: &'a StreamId, v: &'a [u64]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.inner.prune(s, v).await?;
            let mut marks = self.marks.lock().unwrap();
            for v in v {
                marks.remove(&(s.clone(), *v));
            }
            Ok(())
        })
    }
    fn delete_snapshots<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_snapshots(s)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Command(Vec<LedgerEvent>),
    Refuse,
    Flush,
    Corrupt(u8, u8),
    Reload,
}

fn event() -> impl Strategy<Value = LedgerEvent> {
    prop_oneof![
        (1i64..1000).prop_map(LedgerEvent::Credit),
        (1i64..1000).prop_map(LedgerEvent::Debit),
        ("[a-e]{1,2}", any::<i64>()).prop_map(|(k, v)| LedgerEvent::Tag(k, v)),
        any::<u32>().prop_map(LedgerEvent::Note),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(event(), 1..4).prop_map(Op::Command),
        1 => Just(Op::Refuse),
        2 => Just(Op::Flush),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(i, m)| Op::Corrupt(i, m)),
        2 => Just(Op::Reload),
    ]
}

#[derive(Clone, Debug)]
struct Schedule {
    every: u64,
    full_every: u32,
    compress: bool,
    format: Format,
    keep: usize,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (1u64..6, 1u32..5, any::<bool>(), any::<bool>(), 1usize..4).prop_map(
        |(every, full_every, compress, json, keep)| Schedule {
            every,
            full_every,
            compress,
            format: if json { Format::Json } else { Format::Binary },
            keep,
        },
    )
}

static CASE: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Seen {
    fallbacks: AtomicU64,
    deltas: AtomicU64,
}

async fn check_case(
    env: &Env,
    tamper: &Tamper,
    seen: &Seen,
    sched: &Schedule,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut config = SnapshotConfig::default()
        .trigger(Trigger::every_events(sched.every))
        .full_every(sched.full_every)
        .snapshot_format(sched.format)
        .retention(omega_snapshot::Retention::keep_last(sched.keep));
    config = if sched.compress {
        config.compress_above(1)
    } else {
        config.no_compression()
    };
    let repo: Repository<Ledger> =
        Repository::with_stores(env.events.clone(), Arc::new(tamper.clone()))
            .config(config)
            .build()
            .unwrap();
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let mut reports = repo.subscribe();
    let agg = id(&format!("prop-{}", CASE.fetch_add(1, Ordering::Relaxed)));
    let stream = repo.stream_id(&agg);
    let mut model: Vec<LedgerEvent> = Vec::new();
    let reload = |model: &Vec<LedgerEvent>| {
        let (repo, agg, expected) = (repo.clone(), agg.clone(), replay(model));
        let n = model.len() as u64;
        async move {
            repo.invalidate(&agg);
            let loaded = repo.load(&agg).await.unwrap();
            prop_assert_eq!(loaded.version(), n);
            prop_assert_eq!(&**loaded.state(), &expected, "rehydrated != replay");
            Ok(())
        }
    };
    for op in ops {
        match op {
            Op::Command(events) => {
                let env = Envelope::new(agg.clone(), LedgerCommand::Record(events.clone()));
                let accepted = svc.clone().oneshot(env).await.unwrap().unwrap();
                model.extend(events.iter().cloned());
                prop_assert_eq!(accepted.version(), model.len() as u64);
                prop_assert_eq!(&**accepted.state(), &replay(&model));
            }
            Op::Refuse => {
                let env = Envelope::new(agg.clone(), LedgerCommand::Refuse);
                prop_assert!(svc.clone().oneshot(env).await.unwrap().is_err());
            }
            Op::Flush => repo.flush().await,
            Op::Corrupt(which, mode) => {
                repo.flush().await;
                let list = env.snapshots.list(&stream).await.unwrap();
                if !list.is_empty() {
                    let v = list[usize::from(*which) % list.len()].version;
                    tamper
                        .marks
                        .lock()
                        .unwrap()
                        .insert((stream.clone(), v), *mode);
                }
            }
            Op::Reload => reload(&model).await?,
        }
    }
    repo.flush().await;
    reload(&model).await?;
    // The pure replay straight from the event store agrees too.
    let stored = env.events.read(&stream, 0, 100_000).await.unwrap();
    let decoded: Vec<LedgerEvent> = stored
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect();
    prop_assert_eq!(decoded, model);
    while let Ok(report) = reports.try_recv() {
        match report {
            SnapshotEvent::Fallback { .. } => seen.fallbacks.fetch_add(1, Ordering::Relaxed),
            SnapshotEvent::Written {
                kind: SnapshotKind::Delta,
                ..
            } => seen.deltas.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
    Ok(())
}

fn property(kind: Kind, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(start(kind));
    rt.block_on(contract(&env));
    let tamper = Tamper {
        inner: env.snapshots.clone(),
        marks: Arc::default(),
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (schedule(), proptest::collection::vec(op(), 1..40));
    let seen = Seen::default();
    runner
        .run(&strategy, |(sched, ops)| {
            rt.block_on(check_case(&env, &tamper, &seen, &sched, &ops))
        })
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    // The cases did exercise what they claim to.
    let fallbacks = seen.fallbacks.load(Ordering::Relaxed);
    let deltas = seen.deltas.load(Ordering::Relaxed);
    eprintln!("{kind:?}: {cases} cases, {fallbacks} fallbacks, {deltas} deltas written");
    assert!(fallbacks > 0, "no corrupt snapshot was ever met");
    assert!(deltas > 0, "no delta was ever written");
}

#[test]
fn memory_rehydrates_like_replay() {
    property(Kind::Memory, 64);
}

#[test]
fn fs_rehydrates_like_replay() {
    property(Kind::Fs, 32);
}

#[test]
fn sqlite_rehydrates_like_replay() {
    property(Kind::Sqlite, 32);
}

#[test]
fn postgres_rehydrates_like_replay() {
    property(Kind::Postgres, 32);
}

#[test]
fn redis_rehydrates_like_replay() {
    property(Kind::Redis, 32);
}

#[test]
fn redis_cluster_rehydrates_like_replay() {
    property(Kind::Cluster, 24);
}
