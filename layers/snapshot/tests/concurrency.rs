//! 64 concurrent writers on one aggregate, each with its own repository (its own cache, as
//! 64 processes would have), on every backend: no lost event, every conflict retried or
//! reported.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::Ledger;
use common::{Kind, LedgerCommand, LedgerEvent, id, replay, start};
use omega_snapshot::{
    ConcurrencyConflict, Decide, Decider, Envelope, SnapshotConfig, SnapshotEvent, SnapshotLayer,
    Trigger,
};
use tower::{Layer, Service, ServiceExt};

const WRITERS: u64 = 64;
const COMMANDS: u64 = 4;

async fn writers(kind: Kind) {
    let env = start(kind).await;
    let a = id("hot");
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let repo = env.repo(
            SnapshotConfig::default()
                .trigger(Trigger::every_events(16))
                .max_retries(200)
                .retry_backoff(Duration::from_millis(1)),
        );
        let (a, accepted, refused, conflicts) = (
            a.clone(),
            accepted.clone(),
            refused.clone(),
            conflicts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut reports = repo.subscribe();
            // A handler that yields before it decides, as a real one awaiting something would:
            // writers interleave even on the in-memory store.
            let handler =
                tower::service_fn(|d: Decide<Ledger, Envelope<LedgerCommand>>| async move {
                    tokio::task::yield_now().await;
                    Decider::<Ledger>::new().call(d).await
                });
            let svc = SnapshotLayer::new(repo.clone()).layer(handler);
            for c in 0..COMMANDS {
                let cmd = LedgerCommand::Record(vec![
                    LedgerEvent::Credit(1),
                    LedgerEvent::Note((w * 100 + c) as u32),
                ]);
                match svc.clone().oneshot(Envelope::new(a.clone(), cmd)).await {
                    Ok(Ok(_)) => accepted.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) => panic!("domain error {e}"),
                    Err(e) => {
                        assert!(e.is::<ConcurrencyConflict>(), "{kind:?}: {e}");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            repo.flush().await;
            while let Ok(e) = reports.try_recv() {
                if matches!(e, SnapshotEvent::Conflict { .. }) {
                    conflicts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    assert_eq!(accepted + refused, WRITERS * COMMANDS);
    let repo = env.repo(SnapshotConfig::default());
    let loaded = repo.load(&a).await.unwrap();
    // No lost update: every accepted command's two events are there, nothing else.
    assert_eq!(loaded.version(), accepted * 2, "{kind:?}");
    assert_eq!(loaded.state().balance as u64, accepted);
    let events: Vec<LedgerEvent> = env
        .events
        .read(&repo.stream_id(&a), 0, 100_000)
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect();
    assert_eq!(**loaded.state(), replay(&events));
    let conflicts = conflicts.load(Ordering::Relaxed);
    eprintln!("{kind:?}: {accepted} accepted, {refused} refused, {conflicts} conflicts retried");
    assert!(
        conflicts > 0,
        "64 writers never conflicted: the test did not race"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_64_writers() {
    writers(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fs_64_writers() {
    writers(Kind::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_64_writers() {
    writers(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_64_writers() {
    writers(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_64_writers() {
    writers(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_64_writers() {
    writers(Kind::Cluster).await;
}
