//! Shared test fixtures: a ledger aggregate, and every backend against its real server.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use omega_snapshot::{
    Aggregate, AggregateId, EventStore, FsStore, MemoryStore, PgStore, RedisStore, Repository,
    SnapshotConfig, SnapshotStore, SqliteStore,
};
use serde::{Deserialize, Serialize};

/// A ledger whose state grows with its events (a map of tags and a bounded log), so
/// snapshots have something to compress and deltas something to skip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub balance: i64,
    pub entries: u64,
    pub tags: BTreeMap<String, i64>,
    pub log: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEvent {
    Credit(i64),
    Debit(i64),
    Tag(String, i64),
    Note(u32),
}

#[derive(Clone, Debug)]
pub enum LedgerCommand {
    Record(Vec<LedgerEvent>),
    Refuse,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused by the domain")
    }
}

impl std::error::Error for Refused {}

impl Aggregate for Ledger {
    const TYPE: &'static str = "ledger";
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = Refused;

    fn apply(&mut self, event: &LedgerEvent) {
        self.entries += 1;
        match event {
            LedgerEvent::Credit(n) => self.balance += n,
            LedgerEvent::Debit(n) => self.balance -= n,
            LedgerEvent::Tag(k, v) => {
                self.tags.insert(k.clone(), *v);
            }
            LedgerEvent::Note(n) => {
                self.log.push(*n);
                if self.log.len() > 64 {
                    self.log.remove(0);
                }
            }
        }
    }

    fn decide(&self, command: &LedgerCommand) -> Result<Vec<LedgerEvent>, Refused> {
        match command {
            LedgerCommand::Record(events) => Ok(events.clone()),
            LedgerCommand::Refuse => Err(Refused),
        }
    }
}

pub fn replay(events: &[LedgerEvent]) -> Ledger {
    let mut l = Ledger::default();
    for e in events {
        l.apply(e);
    }
    l
}

pub fn id(s: &str) -> AggregateId {
    AggregateId::new(s).unwrap()
}

/// The backends every store test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Fs,
    Sqlite,
    Postgres,
    Redis,
    Cluster,
}

pub const ALL: [Kind; 6] = [
    Kind::Memory,
    Kind::Fs,
    Kind::Sqlite,
    Kind::Postgres,
    Kind::Redis,
    Kind::Cluster,
];

/// A store on a real server, and what keeps that server alive.
pub struct Env {
    pub kind: Kind,
    pub events: Arc<dyn EventStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub guards: Vec<Box<dyn Any + Send + Sync>>,
}

impl Env {
    pub fn repo(&self, config: SnapshotConfig) -> Repository<Ledger> {
        Repository::with_stores(self.events.clone(), self.snapshots.clone())
            .config(config)
            .build()
            .unwrap()
    }
}

fn env<S: EventStore + SnapshotStore + Clone>(
    kind: Kind,
    store: S,
    guards: Vec<Box<dyn Any + Send + Sync>>,
) -> Env {
    Env {
        kind,
        events: Arc::new(store.clone()),
        snapshots: Arc::new(store),
        guards,
    }
}

pub async fn start(kind: Kind) -> Env {
    match kind {
        Kind::Memory => env(kind, MemoryStore::new(), vec![]),
        Kind::Fs => {
            let dir = tempfile::tempdir().unwrap();
            let store = FsStore::open(dir.path()).unwrap();
            env(kind, store, vec![Box::new(dir)])
        }
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path().join("events.db"))
                .await
                .unwrap();
            env(kind, store, vec![Box::new(dir)])
        }
        Kind::Postgres => {
            let db = omega_testkit::PgDatabase::create().await;
            let store = PgStore::connect(db.url()).await.unwrap();
            env(kind, store, vec![Box::new(db)])
        }
        Kind::Redis => {
            let server = omega_testkit::RedisServer::start();
            let backend = omega_core::redis::RedisBackend::connect(
                omega_core::redis::RedisConfig::url(server.url())
                    // Behaviour, not fault timing: a loaded machine must not turn a
                    // slow script into a store error.
                    .op_timeout(std::time::Duration::from_secs(2)),
            )
            .await
            .unwrap();
            env(kind, RedisStore::new(backend), vec![Box::new(server)])
        }
        Kind::Cluster => {
            let cluster = omega_testkit::RedisCluster::start();
            let backend = omega_core::redis::RedisBackend::connect(
                omega_core::redis::RedisConfig::cluster(cluster.urls())
                    // Behaviour, not fault timing: a loaded machine must not turn a
                    // slow script into a store error.
                    .op_timeout(std::time::Duration::from_secs(2)),
            )
            .await
            .unwrap();
            assert!(backend.is_cluster());
            env(kind, RedisStore::new(backend), vec![Box::new(cluster)])
        }
    }
}
