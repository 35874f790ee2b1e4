//! SnapshotLayer beside cqrs-es (with postgres-es), in one run.
//!
//! - `snapshot_rehydrate_10k`: load an aggregate with 10,000 events (~120 B of JSON each,
//!   state ~1 KB): `full_replay_<backend>` (no snapshot) and `snapshot_tail_<backend>` (a
//!   snapshot at 9,901 and the 99 events after it) for memory, fs, sqlite, postgres and
//!   redis; the same two loads through cqrs-es's `PersistedEventStore` over postgres-es
//!   (`cqrs_es_full_replay_postgres`, `cqrs_es_snapshot_tail_postgres`: its snapshot store,
//!   JSON, with the same snapshot point).
//! - Sizes of full (JSON, binary, binary + zstd) and delta snapshots of that aggregate are
//!   printed before the groups run.
//! - `snapshot_command_throughput`: one hot aggregate, one command at a time through the
//!   layer (cached, with snapshotting every 100 events in the background, and without
//!   snapshotting), on memory and PostgreSQL; commands per second = 1 / time.
//!
//! PostgreSQL and Redis are the test kit's throwaway servers on loopback (PostgreSQL with
//! `fsync=off`); SQLite is a WAL file in a temp dir.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use omega_core::redis::{RedisBackend, RedisConfig};
use omega_snapshot::{
    Aggregate, AggregateId, CommandId, Envelope, EventStore, Format, FsStore, MemoryStore,
    NewEvent, PgStore, RedisStore, Repository, SnapshotConfig, SnapshotLayer, SnapshotStore,
    SqliteStore, StreamId, Trigger,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// A backend's name with its event and snapshot stores.
type NamedStores = (&'static str, Arc<dyn EventStore>, Arc<dyn SnapshotStore>);

const EVENTS: u64 = 10_000;
const SNAPSHOT_AT: u64 = 9_901;
const LINES: usize = 96;
const MEMOS: usize = 4;

/// The bench aggregate: 96 ledger lines, the last 4 memos and a few counters (~1 KB as
/// JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Book {
    lines: Vec<i64>,
    postings: u64,
    memos: Vec<String>,
    largest: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum BookEvent {
    Posted {
        line: u16,
        amount: i64,
        memo: String,
    },
}

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

fn post(book: &mut Book, line: u16, amount: i64, memo: &str) {
    if book.lines.len() < LINES {
        book.lines.resize(LINES, 0);
    }
    book.lines[usize::from(line) % LINES] += amount;
    book.postings += 1;
    book.largest = book.largest.max(amount);
    if book.memos.len() == MEMOS {
        book.memos.remove(0);
    }
    book.memos.push(memo.to_owned());
}

impl Aggregate for Book {
    const TYPE: &'static str = "book";
    type Command = BookEvent;
    type Event = BookEvent;
    type Error = Never;

    fn apply(&mut self, BookEvent::Posted { line, amount, memo }: &BookEvent) {
        post(self, *line, *amount, memo);
    }

    fn decide(&self, c: &BookEvent) -> Result<Vec<BookEvent>, Never> {
        Ok(vec![c.clone()])
    }
}

impl cqrs_es::DomainEvent for BookEvent {
    fn event_type(&self) -> String {
        "Posted".into()
    }

    fn event_version(&self) -> String {
        "1.0".into()
    }
}

impl cqrs_es::Aggregate for Book {
    const TYPE: &'static str = "book";
    type Command = BookEvent;
    type Event = BookEvent;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        command: BookEvent,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Never> {
        sink.write(command, self).await;
        Ok(())
    }

    fn apply(&mut self, BookEvent::Posted { line, amount, memo }: BookEvent) {
        post(self, line, amount, &memo);
    }
}

fn event(i: u64) -> BookEvent {
    BookEvent::Posted {
        line: (i * 7 % LINES as u64) as u16,
        amount: (i as i64 * 37) % 10_000 - 5_000,
        memo: format!(
            "invoice {i:08} settled by transfer, ref {:016x}",
            i * 2_654_435_761
        ),
    }
}

fn new_event(i: u64) -> NewEvent {
    NewEvent {
        schema: 1,
        payload: serde_json::to_vec(&event(i)).unwrap(),
    }
}

/// Appends events `from..=to` in batches of 500.
async fn fill(store: &dyn EventStore, stream: &StreamId, from: u64, to: u64) {
    let mut v = from;
    while v <= to {
        let end = (v + 499).min(to);
        let batch: Vec<NewEvent> = (v..=end).map(new_event).collect();
        store
            .append(stream, v - 1, &CommandId::random(), &batch)
            .await
            .unwrap();
        v = end + 1;
    }
}

fn quiet() -> SnapshotConfig {
    SnapshotConfig::default()
        .trigger(Trigger::never())
        .cache_capacity(0)
}

struct Target {
    name: &'static str,
    repo: Repository<Book>,
}

/// Two aggregates in `store`: "full" (events only) and "snap" (a snapshot at 9,901).
async fn prepare<S: EventStore + SnapshotStore + Clone>(name: &'static str, store: S) -> Target {
    let repo: Repository<Book> = Repository::builder(store.clone())
        .config(quiet())
        .build()
        .unwrap();
    let full = StreamId::new(<Book as Aggregate>::TYPE, id("full"));
    let snap = StreamId::new(<Book as Aggregate>::TYPE, id("snap"));
    fill(&store, &full, 1, EVENTS).await;
    fill(&store, &snap, 1, SNAPSHOT_AT).await;
    assert_eq!(
        repo.snapshot_now(&id("snap")).await.unwrap(),
        Some(SNAPSHOT_AT)
    );
    fill(&store, &snap, SNAPSHOT_AT + 1, EVENTS).await;
    let loaded = repo.load(&id("snap")).await.unwrap();
    assert_eq!(
        (loaded.snapshot_version(), loaded.replayed()),
        (Some(SNAPSHOT_AT), EVENTS - SNAPSHOT_AT)
    );
    let replayed = repo.load(&id("full")).await.unwrap();
    assert_eq!(replayed.snapshot_version(), None);
    assert_eq!(replayed.state().postings, EVENTS);
    Target { name, repo }
}

fn id(s: &str) -> AggregateId {
    AggregateId::new(s).unwrap()
}

struct Servers {
    _redis: omega_testkit::RedisServer,
    _pg: omega_testkit::PgDatabase,
    _dir: tempfile::TempDir,
    pg_url: String,
    targets: Vec<Target>,
}

async fn servers() -> Servers {
    let dir = tempfile::tempdir().unwrap();
    let redis = omega_testkit::RedisServer::start();
    let pg = omega_testkit::PgDatabase::create().await;
    let pg_url = pg.url().to_owned();
    let backend =
        RedisBackend::connect(RedisConfig::url(redis.url()).op_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
    let targets = vec![
        prepare("memory", MemoryStore::new()).await,
        prepare("fs", FsStore::open(dir.path().join("fs")).unwrap()).await,
        prepare(
            "sqlite",
            SqliteStore::open(dir.path().join("bench.db"))
                .await
                .unwrap(),
        )
        .await,
        prepare("postgres", PgStore::connect(&pg_url).await.unwrap()).await,
        prepare("redis", RedisStore::new(backend)).await,
    ];
    Servers {
        _redis: redis,
        _pg: pg,
        _dir: dir,
        pg_url,
        targets,
    }
}

/// The same two aggregates in postgres-es's tables, written directly (as its repository
/// would: JSON payloads, a snapshot row with `last_sequence` 9,901).
async fn prepare_cqrs(url: &str) -> sqlx::PgPool {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE events (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
           sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
           event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
           PRIMARY KEY (aggregate_type, aggregate_id, sequence));
         CREATE TABLE snapshots (aggregate_type text NOT NULL, aggregate_id text NOT NULL,
           last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
           current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
           payload json NOT NULL, PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));",
    )
    .execute(&pool)
    .await
    .unwrap();
    for agg in ["full", "snap"] {
        for chunk in (1..=EVENTS).collect::<Vec<_>>().chunks(1000) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) ",
            );
            q.push_values(chunk, |mut b, &i| {
                b.push_bind("book")
                    .push_bind(agg)
                    .push_bind(i as i64)
                    .push_bind("Posted")
                    .push_bind("1.0")
                    .push_bind(serde_json::to_value(event(i)).unwrap())
                    .push_bind(serde_json::json!({}));
            });
            q.build().execute(&pool).await.unwrap();
        }
    }
    let mut state = Book::default();
    for i in 1..=SNAPSHOT_AT {
        Aggregate::apply(&mut state, &event(i));
    }
    sqlx::query("INSERT INTO snapshots VALUES ('book', 'snap', $1, 1, $2)")
        .bind(SNAPSHOT_AT as i64)
        .bind(serde_json::to_value(&state).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    pool
}

async fn print_sizes() {
    let store = MemoryStore::new();
    let stream = StreamId::new(<Book as Aggregate>::TYPE, id("sizes"));
    fill(&store, &stream, 1, EVENTS).await;
    let size = |format: Format, compress: bool| {
        let store = store.clone();
        async move {
            let mut config = quiet().snapshot_format(format);
            config = if compress {
                config.compress_above(1)
            } else {
                config.no_compression()
            };
            let repo: Repository<Book> = Repository::builder(store.clone())
                .config(config)
                .build()
                .unwrap();
            let sizes_stream = StreamId::new(<Book as Aggregate>::TYPE, id("sizes"));
            SnapshotStore::delete_snapshots(&store, &sizes_stream)
                .await
                .unwrap();
            repo.snapshot_now(&id("sizes")).await.unwrap();
            SnapshotStore::list(&store, &sizes_stream).await.unwrap()[0].size
        }
    };
    let json = size(Format::Json, false).await;
    let json_z = size(Format::Json, true).await;
    let bin = size(Format::Binary, false).await;
    let bin_z = size(Format::Binary, true).await;
    // Deltas: a full snapshot, then deltas after 1 and after 10 more events (each event
    // changes one of 64 lines: under 10% of the state).
    let delta_store = MemoryStore::new();
    let ds = StreamId::new(<Book as Aggregate>::TYPE, id("delta"));
    let repo: Repository<Book> = Repository::builder(delta_store.clone())
        .config(
            SnapshotConfig::default()
                .trigger(Trigger::every_events(1))
                .full_every(100)
                .compress_above(1),
        )
        .build()
        .unwrap();
    fill(&delta_store, &ds, 1, EVENTS - 11).await;
    let svc = SnapshotLayer::new(repo.clone()).decider();
    let mut sizes = Vec::new();
    for i in EVENTS - 10..=EVENTS {
        svc.clone()
            .oneshot(Envelope::new(id("delta"), event(i)))
            .await
            .unwrap()
            .unwrap();
        repo.flush().await;
        let list = SnapshotStore::list(&delta_store, &ds).await.unwrap();
        sizes.push((list[0].version, list[0].size, list[0].base));
    }
    // Loading wrote a full snapshot at 9,989; each command since wrote a delta against it.
    let base = sizes[0].2.expect("a delta");
    let list = SnapshotStore::list(&delta_store, &ds).await.unwrap();
    let full = list
        .iter()
        .find(|m| m.version == base)
        .expect("the base is kept")
        .size;
    let one = sizes[0];
    let ten = sizes[9];
    println!(
        "snapshot sizes, 10k-event aggregate: full JSON {json} B, JSON + zstd {json_z} B, binary {bin} B, \
         binary + zstd {bin_z} B ({:.1}x smaller than JSON); delta after 1 event {} B, after 10 events {} B \
         ({:.0}% and {:.0}% of the full binary + zstd snapshot, {full} B)",
        json as f64 / bin_z as f64,
        one.1,
        ten.1,
        one.1 as f64 * 100.0 / full as f64,
        ten.1 as f64 * 100.0 / full as f64,
    );
    assert!(sizes.iter().all(|s| s.2 == Some(base)), "{sizes:?}");
}

fn rehydrate(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    rt.block_on(print_sizes());
    let servers = rt.block_on(servers());
    let cqrs_pool = rt.block_on(prepare_cqrs(&servers.pg_url));
    let mut g = c.benchmark_group("snapshot_rehydrate_10k");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for t in &servers.targets {
        g.bench_function(format!("full_replay_{}", t.name), |b| {
            b.iter(|| rt.block_on(async { black_box(t.repo.load(&id("full")).await.unwrap()) }))
        });
        g.bench_function(format!("snapshot_tail_{}", t.name), |b| {
            b.iter(|| rt.block_on(async { black_box(t.repo.load(&id("snap")).await.unwrap()) }))
        });
    }
    {
        use cqrs_es::EventStore as _;
        use cqrs_es::persist::PersistedEventStore;
        use postgres_es::PostgresEventRepository as Repo;
        let full: PersistedEventStore<_, Book> =
            PersistedEventStore::new_event_store(Repo::new(cqrs_pool.clone()));
        let snap: PersistedEventStore<_, Book> =
            PersistedEventStore::new_snapshot_store(Repo::new(cqrs_pool), 100);
        // Both load the same state as ours.
        let check = rt.block_on(async {
            let mut a = full.load_aggregate("full").await.ok().unwrap();
            let mut b = snap.load_aggregate("snap").await.ok().unwrap();
            (
                cqrs_es::AggregateContext::aggregate(&mut a).clone(),
                cqrs_es::AggregateContext::aggregate(&mut b).clone(),
            )
        });
        let ours = rt
            .block_on(servers.targets[0].repo.load(&id("full")))
            .unwrap();
        assert_eq!(&check.0, &**ours.state());
        assert_eq!(&check.1, &**ours.state());
        g.bench_function("cqrs_es_full_replay_postgres", |b| {
            b.iter(|| {
                rt.block_on(async { black_box(full.load_aggregate("full").await.ok().unwrap()) })
            })
        });
        g.bench_function("cqrs_es_snapshot_tail_postgres", |b| {
            b.iter(|| {
                rt.block_on(async { black_box(snap.load_aggregate("snap").await.ok().unwrap()) })
            })
        });
    }
    g.finish();
    drop(servers);
}

fn throughput(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let pg = rt.block_on(omega_testkit::PgDatabase::create());
    let pg_store = rt.block_on(PgStore::connect(pg.url())).unwrap();
    let mut g = c.benchmark_group("snapshot_command_throughput");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    let stores: Vec<NamedStores> = vec![
        (
            "memory",
            Arc::new(MemoryStore::new()),
            Arc::new(MemoryStore::new()),
        ),
        ("postgres", Arc::new(pg_store.clone()), Arc::new(pg_store)),
    ];
    for (name, events, snaps) in stores {
        for (mode, trigger) in [
            ("snapshots_on", Trigger::every_events(100)),
            ("snapshots_off", Trigger::never()),
        ] {
            let repo: Repository<Book> = Repository::with_stores(events.clone(), snaps.clone())
                .config(SnapshotConfig::default().trigger(trigger))
                .build()
                .unwrap();
            let svc = SnapshotLayer::new(repo.clone()).decider();
            let agg = id(&format!("hot-{mode}"));
            let mut i = 0u64;
            g.bench_function(format!("{name}_{mode}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            i += 1;
                            let r = svc
                                .clone()
                                .oneshot(Envelope::new(agg.clone(), event(i)))
                                .await;
                            black_box(r.unwrap().unwrap());
                        }
                        start.elapsed()
                    })
                })
            });
            rt.block_on(repo.flush());
        }
    }
    g.finish();
    drop(pg);
}

criterion_group!(benches, rehydrate, throughput);
criterion_main!(benches);
