//! Crashes: Redis killed in the middle of appends, and a process SIGKILLed while it writes
//! filesystem snapshots. No partial state is ever loaded.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Ledger, LedgerCommand, LedgerEvent, id, replay};
use omega_core::redis::{RedisBackend, RedisConfig};
use omega_snapshot::{
    CommandId, Envelope, FsStore, RedisStore, Repository, SnapshotConfig, SnapshotLayer,
    SnapshotStore, StoreUnavailable, Trigger,
};
use omega_testkit::RedisServer;
use tower::ServiceExt;

const BATCH: u32 = 5;

/// Per command: its id, and whether it was acknowledged (`None`: still running).
type Outcomes = BTreeMap<u32, (CommandId, Option<bool>)>;

fn batch(cmd: u32) -> LedgerCommand {
    LedgerCommand::Record(
        (0..BATCH)
            .map(|i| LedgerEvent::Note(cmd * 100 + i))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_append_loses_no_acknowledged_command_and_applies_none_twice() {
    let mut server =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let backend = RedisBackend::connect(
        RedisConfig::url(server.url())
            .op_timeout(Duration::from_millis(300))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let store = RedisStore::new(backend);
    let repo: Repository<Ledger> = Repository::builder(store.clone())
        .config(SnapshotConfig::default().trigger(Trigger::every_events(20)))
        .build()
        .unwrap();
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let a = id("acct");
    // Per command: its id and whether it was acknowledged.
    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8u32 {
        let (svc, a, outcomes) = (svc.clone(), a.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            for c in 0..40u32 {
                let cmd = w * 1000 + c;
                let key = CommandId::new(format!("cmd-{cmd}")).unwrap();
                outcomes.lock().unwrap().insert(cmd, (key.clone(), None));
                let r = svc
                    .clone()
                    .oneshot(Envelope::with_id(a.clone(), key, batch(cmd)))
                    .await;
                let ok = match r {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => panic!("domain error {e}"),
                    Err(e) => {
                        assert!(e.is::<StoreUnavailable>(), "{e}");
                        false
                    }
                };
                outcomes.lock().unwrap().get_mut(&cmd).unwrap().1 = Some(ok);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    server.restart();

    let outcomes = outcomes.lock().unwrap().clone();
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, (_, ok))| *ok == Some(false))
        .collect();
    let acked = outcomes
        .values()
        .filter(|(_, ok)| *ok == Some(true))
        .count();
    assert!(!failed.is_empty(), "the kill did not interrupt any command");
    assert!(acked > 0, "no command went through before the kill");

    // What survived: whole batches only, each command at most once, every acknowledged one.
    let fresh = |store: RedisStore| -> Repository<Ledger> { Repository::new(store) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let loaded = loop {
        match fresh(store.clone()).load(&a).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let events: Vec<LedgerEvent> =
        omega_snapshot::EventStore::read(&store, &repo.stream_id(&a), 0, 1_000_000)
            .await
            .unwrap()
            .iter()
            .map(|e| serde_json::from_slice(&e.payload).unwrap())
            .collect();
    assert_eq!(
        events.len() % BATCH as usize,
        0,
        "a partial batch was stored"
    );
    let mut seen = std::collections::HashSet::new();
    for chunk in events.chunks(BATCH as usize) {
        let LedgerEvent::Note(first) = chunk[0] else {
            panic!("{chunk:?}")
        };
        let cmd = first / 100;
        for (i, e) in chunk.iter().enumerate() {
            assert_eq!(*e, LedgerEvent::Note(cmd * 100 + i as u32), "a torn batch");
        }
        assert!(seen.insert(cmd), "command {cmd} applied twice");
    }
    for (cmd, (_, ok)) in &outcomes {
        if *ok == Some(true) {
            assert!(seen.contains(cmd), "acknowledged command {cmd} was lost");
        }
    }
    assert_eq!(**loaded.state(), replay(&events));

    // The failed commands, sent again with their ids once Redis is back: each lands once.
    for (cmd, (key, _)) in &failed {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let env = Envelope::with_id(a.clone(), key.clone(), batch(**cmd));
            match svc.clone().oneshot(env).await {
                Ok(r) => {
                    let accepted = r.unwrap();
                    assert_eq!(accepted.is_duplicate(), seen.contains(cmd));
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    assert!(e.is::<StoreUnavailable>(), "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let total = fresh(store.clone()).load(&a).await.unwrap();
    assert_eq!(total.version(), outcomes.len() as u64 * u64::from(BATCH));
    eprintln!(
        "{} commands: {acked} acknowledged, {} interrupted ({} had landed)",
        outcomes.len(),
        failed.len(),
        failed.iter().filter(|(c, _)| seen.contains(c)).count()
    );
}

const CHILD_DIR: &str = "OMEGA_SNAPSHOT_CRASH_DIR";

/// Run by `fs_snapshot_writer_killed_with_sigkill_never_leaves_a_torn_snapshot` as a child
/// process: appends and writes big snapshots until it is killed.
#[tokio::test]
#[ignore = "a child process of the SIGKILL test"]
async fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        panic!("run by the SIGKILL test, with {CHILD_DIR} set");
    };
    let store = FsStore::open(dir).unwrap();
    let repo: Repository<Ledger> = Repository::builder(store)
        .config(
            SnapshotConfig::default()
                .trigger(Trigger::never())
                .no_compression(),
        )
        .build()
        .unwrap();
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let a = id("big");
    let mut seed: u64 = std::process::id().into();
    for round in 0u64.. {
        // About 1 MB of state, mostly new each round: slow enough to be killed mid-write.
        let events: Vec<LedgerEvent> = (0..100)
            .map(|i| {
                let s: String = (0..10_000)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        char::from(b'a' + (seed >> 59) as u8)
                    })
                    .collect();
                LedgerEvent::Tag(format!("t{i}"), s.len() as i64 + round as i64).clone_with(s)
            })
            .collect();
        svc.clone()
            .oneshot(Envelope::new(a.clone(), LedgerCommand::Record(events)))
            .await
            .unwrap()
            .unwrap();
        let v = repo.snapshot_now(&a).await.unwrap();
        println!("saved {v:?}");
    }
}

trait CloneWith {
    fn clone_with(self, s: String) -> LedgerEvent;
}

impl CloneWith for LedgerEvent {
    /// A tag whose key carries the big string (keys are what the ledger keeps).
    fn clone_with(self, s: String) -> LedgerEvent {
        match self {
            LedgerEvent::Tag(k, v) => LedgerEvent::Tag(format!("{k}:{s}"), v),
            other => other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_snapshot_writer_killed_with_sigkill_never_leaves_a_torn_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut kills = 0;
    let mut leftovers = 0;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "crash_child_writer", "--nocapture"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for a few saves, then kill at a varying moment.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut saved = 0;
        while saved < 2 {
            let line = lines.next().expect("the child exited early").unwrap();
            if line.starts_with("saved") {
                saved += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(3 + round * 7));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        let store = FsStore::open(dir.path()).unwrap();
        let a = id("big");
        let stream = omega_snapshot::StreamId::new("ledger", a.clone());
        let snaps = store.stream_dir(&stream).join("snapshots");
        leftovers += std::fs::read_dir(&snaps)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                    .count()
            })
            .unwrap_or(0);
        // Every complete snapshot file is intact; the newest is the one loading uses.
        let repo: Repository<Ledger> = Repository::builder(store.clone())
            .config(SnapshotConfig::default().trigger(Trigger::never()))
            .build()
            .unwrap();
        let loaded = repo.load(&a).await.unwrap();
        assert!(
            loaded.fallbacks().is_empty(),
            "a torn snapshot was the latest: {:?}",
            loaded.fallbacks()
        );
        assert!(loaded.snapshot_version().is_some());
        for m in SnapshotStore::list(&store, &stream).await.unwrap() {
            assert!(m.header_ok, "snapshot {} is torn", m.version);
        }
        let events: Vec<LedgerEvent> =
            omega_snapshot::EventStore::read(&store, &stream, 0, 1_000_000)
                .await
                .unwrap()
                .iter()
                .map(|e| serde_json::from_slice(&e.payload).unwrap())
                .collect();
        assert_eq!(events.len() % 100, 0, "a partial batch");
        assert_eq!(**loaded.state(), replay(&events));
    }
    eprintln!("{kills} SIGKILLs, {leftovers} leftover temporary files (ignored), no torn snapshot");
}
