//! The layer: decisions, domain errors, exactly-once commands, conflicts, refusals as
//! errors or responses, upcasting, deletion.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{Ledger, LedgerCommand, LedgerEvent, Refused, id, replay};
use omega_snapshot::{
    Aggregate, Appended, BoxError, BoxFuture, CommandId, ConcurrencyConflict, Decide, Decision,
    Envelope, EventStore, FallbackReason, MemoryStore, NewEvent, Old, RecordedEvent, Refusal,
    RehydrationFailed, Repository, SnapshotConfig, SnapshotLayer, StoreError, StoreUnavailable,
    StreamId, Trigger, as_refusal,
};
use serde::{Deserialize, Serialize};
use tower::{Layer, ServiceExt, service_fn};

fn record(events: Vec<LedgerEvent>) -> LedgerCommand {
    LedgerCommand::Record(events)
}

fn repo(store: MemoryStore, config: SnapshotConfig) -> Repository<Ledger> {
    Repository::builder(store).config(config).build().unwrap()
}

#[tokio::test]
async fn decides_appends_and_answers_domain_errors() {
    let repo = repo(MemoryStore::new(), SnapshotConfig::default());
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let a = id("a");
    let ok = svc
        .clone()
        .oneshot(Envelope::new(
            a.clone(),
            record(vec![LedgerEvent::Credit(5)]),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ok.version(), ok.events(), ok.state().balance), (1, 1, 5));
    let refused = svc
        .clone()
        .oneshot(Envelope::new(a.clone(), LedgerCommand::Refuse))
        .await
        .unwrap();
    assert_eq!(refused.unwrap_err(), Refused);
    let loaded = repo.load(&a).await.unwrap();
    assert_eq!((loaded.version(), loaded.state().balance), (1, 5));
}

#[tokio::test]
async fn a_custom_inner_service_sees_the_state_and_replies() {
    let repo = repo(MemoryStore::new(), SnapshotConfig::default());
    let inner = service_fn(|d: Decide<Ledger, Envelope<LedgerCommand>>| async move {
        let before = (d.version(), d.state().balance);
        let events = d.state().decide(d.command()).unwrap_or_default();
        Ok::<_, std::io::Error>(Decision::new(events, before))
    });
    let svc = SnapshotLayer::new(repo).layer(inner);
    let a = id("a");
    for expected in [(0, 0), (1, 3), (2, 6)] {
        let got = svc
            .clone()
            .oneshot(Envelope::new(
                a.clone(),
                record(vec![LedgerEvent::Credit(3)]),
            ))
            .await
            .unwrap();
        assert_eq!(got, expected);
    }
}

#[tokio::test]
async fn a_client_command_id_is_applied_once() {
    let store = MemoryStore::new();
    let repo = repo(store.clone(), SnapshotConfig::default());
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let a = id("a");
    let key = CommandId::new("idem-1").unwrap();
    let send = || {
        svc.clone().oneshot(Envelope::with_id(
            a.clone(),
            key.clone(),
            record(vec![LedgerEvent::Credit(10), LedgerEvent::Note(1)]),
        ))
    };
    let first = send().await.unwrap().unwrap();
    assert!(!first.is_duplicate());
    // The client sends it again (its answer was lost): not applied twice, also from another
    // process with a cold cache.
    let again = send().await.unwrap().unwrap();
    assert!(again.is_duplicate());
    assert_eq!(again.version(), 2);
    let other = SnapshotLayer::new(Repository::<Ledger>::new(store.clone())).decider();
    let cold = other
        .oneshot(Envelope::with_id(
            a.clone(),
            key.clone(),
            record(vec![LedgerEvent::Credit(10)]),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(cold.is_duplicate());
    assert_eq!(repo.load(&a).await.unwrap().state().balance, 10);
}

/// An event store whose first append lands but answers "outcome unknown" (a timeout after
/// the write), as a Redis or SQL timeout can.
#[derive(Clone)]
struct LandsThenTimesOut {
    inner: MemoryStore,
    failures: Arc<AtomicU32>,
}

impl EventStore for LandsThenTimesOut {
    fn append<'a>(
        &'a self,
        s: &'a StreamId,
        expected: u64,
        c: &'a CommandId,
        e: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Appended, StoreError>> {
        Box::pin(async move {
            let r = self.inner.append(s, expected, c, e).await?;
            let fail = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(StoreError::outcome_unknown("timed out after 50ms"));
            }
            Ok(r)
        })
    }
    fn read<'a>(
        &'a self,
        s: &'a StreamId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        self.inner.read(s, after, limit)
    }
    fn version<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.version(s)
    }
    fn applied<'a>(
        &'a self,
        s: &'a StreamId,
        c: &'a CommandId,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        self.inner.applied(s, c)
    }
    fn delete_stream<'a>(&'a self, s: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_stream(s)
    }
}

#[tokio::test(start_paused = true)]
async fn an_append_with_unknown_outcome_is_retried_and_never_applied_twice() {
    let store = MemoryStore::new();
    let flaky = LandsThenTimesOut {
        inner: store.clone(),
        failures: Arc::new(AtomicU32::new(2)),
    };
    let repo: Repository<Ledger> =
        Repository::with_stores(Arc::new(flaky), Arc::new(store.clone()))
            .build()
            .unwrap();
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let a = id("a");
    let r = svc
        .clone()
        .oneshot(Envelope::new(
            a.clone(),
            record(vec![LedgerEvent::Credit(7)]),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state().balance, 7);
    let stream = repo.stream_id(&a);
    assert_eq!(
        store.version(&stream).await.unwrap(),
        1,
        "applied exactly once"
    );
    // The next command still works (the cache was dropped and reloaded).
    let r = svc
        .oneshot(Envelope::new(
            a.clone(),
            record(vec![LedgerEvent::Credit(1)]),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.version(), r.state().balance), (2, 8));
}

#[tokio::test]
async fn a_conflict_invalidates_the_cache_and_decides_again() {
    let store = MemoryStore::new();
    let (one, two) = (
        repo(store.clone(), SnapshotConfig::default()),
        repo(store.clone(), SnapshotConfig::default()),
    );
    let (s1, s2) = (
        SnapshotLayer::new(one.clone()).decider(),
        SnapshotLayer::new(two).decider(),
    );
    let mut reports = one.subscribe();
    let a = id("a");
    let send = |svc: &omega_snapshot::Snapshot<omega_snapshot::Decider<Ledger>, Ledger>, n| {
        svc.clone().oneshot(Envelope::new(
            a.clone(),
            record(vec![LedgerEvent::Credit(n)]),
        ))
    };
    send(&s1, 1).await.unwrap().unwrap(); // `one` caches version 1
    send(&s2, 10).await.unwrap().unwrap(); // `two` appends version 2 behind its back
    let r = send(&s1, 100).await.unwrap().unwrap();
    assert_eq!((r.version(), r.state().balance), (3, 111));
    let mut conflicts = 0;
    while let Ok(e) = reports.try_recv() {
        if matches!(e, omega_snapshot::SnapshotEvent::Conflict { .. }) {
            conflicts += 1;
        }
    }
    assert_eq!(conflicts, 1);
}

#[tokio::test(start_paused = true)]
async fn conflicts_past_the_retries_are_refused_with_409() {
    let store = MemoryStore::new();
    let rival = repo(store.clone(), SnapshotConfig::default());
    let main = repo(store, SnapshotConfig::default().max_retries(2));
    let rival_svc = SnapshotLayer::new(rival).decider();
    // Every time the command is decided, a rival appends first.
    let inner = service_fn(move |d: Decide<Ledger, Envelope<LedgerCommand>>| {
        let rival_svc = rival_svc.clone();
        async move {
            let env = Envelope::new(d.aggregate().clone(), record(vec![LedgerEvent::Note(0)]));
            rival_svc.oneshot(env).await.unwrap().unwrap();
            Ok::<_, std::io::Error>(Decision::new(vec![LedgerEvent::Credit(1)], ()))
        }
    });
    let svc = SnapshotLayer::new(main).layer(inner);
    let err = svc
        .oneshot(Envelope::new(id("a"), record(vec![])))
        .await
        .unwrap_err();
    let conflict = err
        .downcast_ref::<ConcurrencyConflict>()
        .expect("a conflict");
    assert_eq!(conflict.attempts(), 3);
    assert_eq!(conflict.status(), 409);
    assert_eq!(as_refusal(&*err).unwrap().grpc_code(), 10);
}

/// An event store that is down.
#[derive(Clone)]
struct Down;

impl EventStore for Down {
    fn append<'a>(
        &'a self,
        _: &'a StreamId,
        _: u64,
        _: &'a CommandId,
        _: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Appended, StoreError>> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn read<'a>(
        &'a self,
        _: &'a StreamId,
        _: u64,
        _: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn version<'a>(&'a self, _: &'a StreamId) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn applied<'a>(
        &'a self,
        _: &'a StreamId,
        _: &'a CommandId,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
    fn delete_stream<'a>(&'a self, _: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::unavailable("connection refused")) })
    }
}

#[tokio::test]
async fn an_unavailable_store_is_a_503_refusal() {
    let repo: Repository<Ledger> =
        Repository::with_stores(Arc::new(Down), Arc::new(MemoryStore::new()))
            .build()
            .unwrap();
    let err = SnapshotLayer::new(repo)
        .decider()
        .oneshot(Envelope::new(id("a"), record(vec![])))
        .await
        .unwrap_err();
    let u = err.downcast_ref::<StoreUnavailable>().expect("unavailable");
    assert!(!u.outcome_unknown());
    assert_eq!(u.status(), 503);
    assert_eq!(u.retry_after(), Some(std::time::Duration::from_secs(1)));
}

#[tokio::test]
async fn an_unreadable_event_fails_the_load_instead_of_skipping_it() {
    let store = MemoryStore::new();
    let a = id("a");
    let stream = StreamId::new(Ledger::TYPE, a.clone());
    let bad = NewEvent {
        schema: 1,
        payload: b"{\"Credit\": \"not a number\"}".to_vec(),
    };
    store
        .append(&stream, 0, &CommandId::random(), &[bad])
        .await
        .unwrap();
    let repo = repo(store, SnapshotConfig::default());
    let err = repo.load(&a).await.unwrap_err();
    let omega_snapshot::Error::Rehydration(r) = &err else {
        panic!("{err}")
    };
    assert_eq!(r.version(), Some(1));
    assert_eq!(r.status(), 500);
    let err = SnapshotLayer::new(repo)
        .decider()
        .oneshot(Envelope::new(a, record(vec![])))
        .await
        .unwrap_err();
    assert!(err.is::<RehydrationFailed>(), "{err}");
}

#[tokio::test]
async fn a_closure_strategy_answers_refusals() {
    let repo: Repository<Ledger> =
        Repository::with_stores(Arc::new(Down), Arc::new(MemoryStore::new()))
            .build()
            .unwrap();
    let layer = SnapshotLayer::new(repo).on_rejection(
        |_req: &Envelope<LedgerCommand>,
         r: &dyn Refusal|
         -> Result<omega_snapshot::Accepted<Ledger>, Refused> {
            assert_eq!(r.status(), 503);
            Err(Refused)
        },
    );
    let r = layer
        .decider()
        .oneshot(Envelope::new(id("a"), record(vec![])))
        .await
        .unwrap();
    assert_eq!(r.unwrap_err(), Refused);
}

#[tokio::test]
async fn respond_turns_refusals_into_http_and_grpc_responses() {
    type Req = http::Request<Envelope<LedgerCommand>>;
    let answer = service_fn(|d: Decide<Ledger, Req>| async move {
        let events = d.state().decide(d.command()).unwrap_or_default();
        let body = format!("v{}", d.version() + events.len() as u64);
        Ok::<_, std::convert::Infallible>(Decision::new(events, http::Response::new(body)))
    });
    let good = repo(MemoryStore::new(), SnapshotConfig::default());
    let svc = SnapshotLayer::new(good).respond().layer(answer);
    let req = http::Request::new(Envelope::new(id("a"), record(vec![LedgerEvent::Credit(1)])));
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!((res.status().as_u16(), res.body().as_str()), (200, "v1"));

    let down: Repository<Ledger> =
        Repository::with_stores(Arc::new(Down), Arc::new(MemoryStore::new()))
            .build()
            .unwrap();
    let svc = SnapshotLayer::new(down).respond().layer(answer);
    let req = http::Request::new(Envelope::new(id("a"), record(vec![])));
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let mut req = http::Request::new(Envelope::new(id("a"), record(vec![])));
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
}

// ----- upcasting -----

/// Version 2 of the ledger: amounts became cents, and its state has a new shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct LedgerV2 {
    cents: i64,
    events: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum EventV2 {
    Cents(i64),
}

impl Aggregate for LedgerV2 {
    const TYPE: &'static str = "ledger";
    const SNAPSHOT_SCHEMA: u32 = 2;
    const EVENT_SCHEMA: u32 = 2;
    type Command = i64;
    type Event = EventV2;
    type Error = Refused;

    fn apply(&mut self, EventV2::Cents(c): &EventV2) {
        self.cents += c;
        self.events += 1;
    }

    fn decide(&self, c: &i64) -> Result<Vec<EventV2>, Refused> {
        Ok(vec![EventV2::Cents(*c)])
    }

    fn upcast_event(old: Old<'_>) -> Result<EventV2, BoxError> {
        match old.decode::<LedgerEvent>()? {
            LedgerEvent::Credit(n) => Ok(EventV2::Cents(n * 100)),
            LedgerEvent::Debit(n) => Ok(EventV2::Cents(-n * 100)),
            _ => Ok(EventV2::Cents(0)),
        }
    }

    fn upcast_snapshot(old: Old<'_>) -> Option<Result<Self, BoxError>> {
        Some(old.decode::<Ledger>().map(|l| LedgerV2 {
            cents: l.balance * 100,
            events: l.entries,
        }))
    }
}

/// The same, without a snapshot upcaster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct LedgerV2NoUpcast(LedgerV2);

impl Aggregate for LedgerV2NoUpcast {
    const TYPE: &'static str = "ledger";
    const SNAPSHOT_SCHEMA: u32 = 2;
    const EVENT_SCHEMA: u32 = 2;
    type Command = i64;
    type Event = EventV2;
    type Error = Refused;

    fn apply(&mut self, e: &EventV2) {
        self.0.apply(e);
    }

    fn decide(&self, c: &i64) -> Result<Vec<EventV2>, Refused> {
        self.0.decide(c)
    }

    fn upcast_event(old: Old<'_>) -> Result<EventV2, BoxError> {
        LedgerV2::upcast_event(old)
    }
}

#[tokio::test]
async fn old_events_and_snapshots_are_upcast_or_skipped() {
    let store = MemoryStore::new();
    let v1 = repo(
        store.clone(),
        SnapshotConfig::default().trigger(Trigger::never()),
    );
    let a = id("a");
    let svc = SnapshotLayer::new(v1.clone()).decider();
    for n in [1, 2, 3] {
        svc.clone()
            .oneshot(Envelope::new(
                a.clone(),
                record(vec![LedgerEvent::Credit(n)]),
            ))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(v1.snapshot_now(&a).await.unwrap(), Some(3));
    svc.oneshot(Envelope::new(
        a.clone(),
        record(vec![LedgerEvent::Debit(1)]),
    ))
    .await
    .unwrap()
    .unwrap();

    // New code reads the old snapshot through its upcaster, and the old event after it.
    let v2: Repository<LedgerV2> = Repository::builder(store.clone()).build().unwrap();
    let loaded = v2.load(&a).await.unwrap();
    assert_eq!(loaded.snapshot_version(), Some(3));
    assert_eq!(
        **loaded.state(),
        LedgerV2 {
            cents: 500,
            events: 4
        }
    );
    // New events are written with schema 2 and read back.
    let svc2 = SnapshotLayer::new(v2.clone()).decider();
    svc2.oneshot(Envelope::new(a.clone(), 50))
        .await
        .unwrap()
        .unwrap();

    // Without a snapshot upcaster, the old snapshot is skipped (reported) and the state is
    // replayed from the (upcast) events; a fresh snapshot is written.
    let plain: Repository<LedgerV2NoUpcast> = Repository::builder(store.clone()).build().unwrap();
    let mut reports = plain.subscribe();
    let loaded = plain.load(&a).await.unwrap();
    assert_eq!(loaded.snapshot_version(), None);
    assert_eq!(
        loaded.fallbacks(),
        &[(3, FallbackReason::OldSchema { found: 1 })]
    );
    assert_eq!(loaded.state().0.cents, 550);
    assert!(matches!(
        reports.recv().await.unwrap(),
        omega_snapshot::SnapshotEvent::Fallback { version: 3, .. }
    ));
    plain.flush().await;
    let healed = plain.load(&a).await.unwrap();
    assert_eq!((healed.snapshot_version(), healed.replayed()), (Some(5), 0));
    // Old code meets the newer snapshot: skipped as newer, replay fails on the newer events.
    let err = v1.load(&a).await.unwrap_err();
    assert!(err.to_string().contains("newer code"), "{err}");
}

#[tokio::test]
async fn deleting_an_aggregate_removes_snapshots_then_events() {
    let store = MemoryStore::new();
    let r = repo(
        store.clone(),
        SnapshotConfig::default().trigger(Trigger::every_events(1)),
    );
    let svc = SnapshotLayer::new(r.clone()).decider();
    let a = id("a");
    for n in 0..3 {
        svc.clone()
            .oneshot(Envelope::new(a.clone(), record(vec![LedgerEvent::Note(n)])))
            .await
            .unwrap()
            .unwrap();
    }
    r.flush().await;
    let stream = r.stream_id(&a);
    assert!(
        !omega_snapshot::SnapshotStore::list(&store, &stream)
            .await
            .unwrap()
            .is_empty()
    );
    r.delete(&a).await.unwrap();
    assert!(
        omega_snapshot::SnapshotStore::list(&store, &stream)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.version(&stream).await.unwrap(), 0);
    let fresh = svc
        .oneshot(Envelope::new(
            a.clone(),
            record(vec![LedgerEvent::Credit(9)]),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((fresh.version(), fresh.state().balance), (1, 9));
    assert_eq!(
        *r.load(&a).await.unwrap().state().as_ref(),
        replay(&[LedgerEvent::Credit(9)])
    );
}
