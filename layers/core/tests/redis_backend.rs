//! The Redis backend against real servers started by the test harness: restarts, pauses,
//! a broken network, scripts on a cluster, and bad input.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_core::redis::{RedisBackend, RedisConfig, Script};
use omega_core::{Backend, ErrorKind, HealthStatus, Keyspace, hash_slot};
use omega_testkit::{FaultProxy, RedisCluster, RedisServer};

const OP_TIMEOUT: Duration = Duration::from_millis(100);

fn config(url: String) -> RedisConfig {
    RedisConfig::url(url)
        .op_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(300))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// Polls `f` every 10 ms until it returns `Some`, for at most 15 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_operations_match_the_memory_backend() {
    let server = RedisServer::start();
    let redis = Backend::redis(config(server.url())).await.unwrap();
    for backend in [Backend::memory(), redis] {
        let name = backend.health().target;
        backend.set("k", b"v1", None).await.unwrap();
        assert_eq!(
            backend.get("k").await.unwrap().as_deref(),
            Some(&b"v1"[..]),
            "{name}"
        );
        assert!(!backend.set_nx("k", b"v2", None).await.unwrap(), "{name}");
        assert!(
            backend
                .set_nx("fresh", b"x", Some(Duration::from_secs(30)))
                .await
                .unwrap()
        );
        assert_eq!(
            backend
                .incr_by("n", 5, Some(Duration::from_secs(30)))
                .await
                .unwrap(),
            5
        );
        assert_eq!(backend.incr_by("n", -2, None).await.unwrap(), 3);
        assert!(backend.del("k").await.unwrap(), "{name}");
        assert_eq!(backend.get("k").await.unwrap(), None, "{name}");
        let e = backend.incr_by("fresh", 1, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Server, "{name}: {e}");
        assert!(backend.health().is_up(), "{name}");
    }
    // incr_by gave the counter an expiry on Redis too.
    let ttl: i64 = server.cli(&["PTTL", "n"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "PTTL n = {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_restart_failing_fast_while_down() {
    let mut server = RedisServer::start();
    let backend = RedisBackend::connect(config(server.url())).await.unwrap();
    let set = redis::cmd("SET").arg("before").arg("1").to_owned();
    backend.query::<()>(&set).await.unwrap();
    assert_eq!(backend.health().status, HealthStatus::Up);

    server.kill();
    // The first operation finds the connection broken; from then on operations are not sent.
    let first = backend.query::<()>(&set).await.unwrap_err();
    assert!(first.is_unreachable(), "{first}");
    let attempts_before = backend.connect_attempts();
    let mut unavailable = 0;
    for _ in 0..2_000 {
        let e = backend.query::<()>(&set).await.unwrap_err();
        assert!(
            !e.is_timeout(),
            "a dead server must not cost a timeout: {e}"
        );
        if e.kind() == ErrorKind::Unavailable {
            unavailable += 1;
        }
    }
    assert!(
        unavailable > 1_900,
        "only {unavailable} of 2000 failed fast"
    );
    let health = backend.health();
    assert_eq!(health.status, HealthStatus::Down);
    let last = health.last_error.expect("a down backend says why");
    assert!(last.contains(&server.port().to_string()), "{last}");
    // One supervisor with backoff: a handful of attempts, not one per operation.
    let attempts = backend.connect_attempts() - attempts_before;
    assert!(
        attempts < 100,
        "{attempts} reconnect attempts for 2000 operations"
    );

    server.restart();
    let v: String = eventually("the backend to reconnect", || async {
        backend
            .query::<String>(redis::cmd("PING").arg("again"))
            .await
            .ok()
    })
    .await;
    assert_eq!(v, "again");
    assert_eq!(backend.health().status, HealthStatus::Up);
    assert!(
        backend.health().last_error.is_some(),
        "the last error is kept after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_times_out_within_the_bound_then_recovers() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(config(server.url()).timeouts_before_reconnect(2))
        .await
        .unwrap();
    backend
        .query::<()>(redis::cmd("SET").arg("k").arg("1"))
        .await
        .unwrap();

    server.pause();
    let started = Instant::now();
    let e = backend
        .query::<String>(redis::cmd("GET").arg("k"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(started.elapsed() >= OP_TIMEOUT);
    assert!(e.outcome_unknown());
    assert_eq!(
        e.to_string(),
        format!(
            "redis 127.0.0.1:{}: GET timed out (after 100ms)",
            server.port()
        )
    );
    // A second timeout in a row marks the connection hung: later operations fail fast.
    let e = backend
        .query::<String>(redis::cmd("GET").arg("k"))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let e = backend
        .query::<String>(redis::cmd("GET").arg("k"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert_eq!(backend.health().status, HealthStatus::Down);

    server.resume();
    let v: String = eventually("the backend to answer after resume", || async {
        backend
            .query::<String>(redis::cmd("GET").arg("k"))
            .await
            .ok()
    })
    .await;
    assert_eq!(v, "1");
    assert!(backend.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_network_times_out_and_a_reset_reconnects() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let backend = RedisBackend::connect(config(proxy.url())).await.unwrap();
    let ping = redis::cmd("PING").to_owned();
    backend.query::<String>(&ping).await.unwrap();

    proxy.blackhole();
    let e = backend.query::<String>(&ping).await.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    proxy.pass();
    eventually("traffic to flow after the blackhole", || async {
        backend.query::<String>(&ping).await.ok()
    })
    .await;

    proxy.reset_connections();
    eventually("the reset to be noticed", || async {
        backend.query::<String>(&ping).await.err()
    })
    .await;
    eventually("a new connection after the reset", || async {
        backend.query::<String>(&ping).await.ok()
    })
    .await;
    assert!(backend.is_up());
}

const TRANSFER: &str = r#"
local from = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if from < amount then return 0 end
redis.call('DECRBY', KEYS[1], amount)
redis.call('INCRBY', KEYS[2], amount)
return 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_is_reloaded_after_script_flush() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(config(server.url())).await.unwrap();
    let script = Script::new("transfer", TRANSFER);
    let ks = Keyspace::new("t").unwrap();
    let (a, b) = (ks.tagged("acct", &["a"]), ks.tagged("acct", &["b"]));
    backend
        .query::<()>(redis::cmd("SET").arg(&a).arg(10))
        .await
        .unwrap();

    let call = script.call().key(&a).key(&b).arg(4);
    assert_eq!(backend.eval::<i64>(&call).await.unwrap(), 1);
    let exists = server.cli(&["SCRIPT", "EXISTS", script.sha()]);
    assert_eq!(exists, "1", "the first call cached the script");

    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", script.sha()]), "0");
    assert_eq!(backend.eval::<i64>(&call).await.unwrap(), 1);
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", script.sha()]), "1");
    assert_eq!(server.cli(&["GET", &a]), "2");
    assert_eq!(server.cli(&["GET", &b]), "8");
    // The script ran once per call: no blind retry doubled the transfer.
    assert_eq!(
        backend
            .eval::<i64>(&script.call().key(&a).key(&b).arg(4))
            .await
            .unwrap(),
        0
    );

    // A failing script is a server error naming the script.
    let broken = Script::new("broken", "return redis.call('NOPE')");
    let e = backend.eval::<i64>(&broken.call()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Server, "{e}");
    assert!(e.to_string().contains("script broken"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tagged_scripts_run_on_a_three_node_cluster() {
    let cluster = RedisCluster::start();
    let backend = Backend::redis(
        RedisConfig::cluster(cluster.urls())
            .op_timeout(Duration::from_millis(500))
            .keyspace(Keyspace::new("bank").unwrap()),
    )
    .await
    .unwrap();
    let Backend::Redis(redis_backend) = &backend else {
        unreachable!()
    };
    assert!(redis_backend.is_cluster());
    assert!(redis_backend.target().starts_with("cluster["));

    let script = Script::new("transfer", TRANSFER);
    let mut slots = std::collections::HashSet::new();
    for user in 0..12 {
        let tag = format!("user:{user}");
        let from = backend.keyspace().tagged(&tag, &["checking"]);
        let to = backend.keyspace().tagged(&tag, &["savings"]);
        assert_eq!(hash_slot(from.as_bytes()), hash_slot(to.as_bytes()));
        slots.insert(hash_slot(from.as_bytes()));
        backend.set(&from, b"100", None).await.unwrap();
        let call = script.call().key(&from).key(&to).arg(30);
        assert_eq!(redis_backend.eval::<i64>(&call).await.unwrap(), 1);
        assert_eq!(backend.get(&to).await.unwrap().as_deref(), Some(&b"30"[..]));
    }
    assert!(slots.len() > 1, "the tags spread over several slots");

    // Keys without a shared tag land on different slots, and the cluster refuses the script.
    let (x, y) = (
        backend.keyspace().key(&["x"]),
        backend.keyspace().key(&["yy"]),
    );
    assert_ne!(hash_slot(x.as_bytes()), hash_slot(y.as_bytes()));
    let e = redis_backend
        .eval::<i64>(&script.call().key(&x).key(&y).arg(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cluster, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_hosts_give_clear_errors() {
    let e = RedisBackend::connect(RedisConfig::url("http://127.0.0.1:1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadUrl);
    assert!(e.to_string().contains("unknown scheme"), "{e}");

    let e = RedisBackend::connect(RedisConfig::url("redis://:secret@127.0.0.1:notaport"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadUrl, "{e}");
    assert!(
        !e.to_string().contains("secret"),
        "the password leaked: {e}"
    );

    let mut server = RedisServer::start();
    let port = server.port();
    server.kill();
    let e = RedisBackend::connect(config(server.url()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert_eq!(e.operation(), Some("connect"));
    assert!(
        e.to_string().starts_with(&format!(
            "redis 127.0.0.1:{port}: connect connection refused"
        )),
        "{e}"
    );

    // A lazy backend starts anyway, fails fast, and connects once the server appears.
    let lazy = RedisBackend::connect_lazy(config(server.url())).unwrap();
    let e = lazy.query::<String>(&redis::cmd("PING")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    eventually("the lazy backend to record why it is down", || async {
        lazy.health().last_error.filter(|e| e.contains("refused"))
    })
    .await;
    server.restart();
    eventually("the lazy backend to connect", || async {
        lazy.query::<String>(&redis::cmd("PING")).await.ok()
    })
    .await;
}
