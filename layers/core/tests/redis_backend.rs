//! The Redis backend against real servers started by the test harness: restarts, pauses,
//! a broken network, scripts on a cluster, and bad input.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_core::redis::{RedisBackend, RedisConfig, Script, Subscription, SubscriptionEvent};
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
async fn commands_answer_and_failures_are_typed() {
    let server = RedisServer::start();
    let backend = Backend::redis(config(server.url())).await.unwrap();
    let redis = backend.as_redis().unwrap();
    let _: () = redis
        .query(redis::cmd("SET").arg("k").arg("v1").arg("PX").arg(30_000))
        .await
        .unwrap();
    let v: Option<Vec<u8>> = redis.query(redis::cmd("GET").arg("k")).await.unwrap();
    assert_eq!(v.as_deref(), Some(&b"v1"[..]));
    let n: i64 = redis
        .pipeline(redis::pipe().atomic().incr("n", 5).ignore().incr("n", -2))
        .await
        .map(|(n,): (i64,)| n)
        .unwrap();
    assert_eq!(n, 3);
    let e = redis
        .query::<i64>(redis::cmd("INCR").arg("k"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Server, "{e}");
    assert!(e.to_string().contains("INCR"), "{e}");
    assert!(backend.health().is_up());
    let ttl: i64 = server.cli(&["PTTL", "k"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "PTTL k = {ttl}");
    assert!(Backend::memory().health().is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_caller_cannot_read_fails_the_call_not_the_connection() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(config(server.url())).await.unwrap();
    let attempts = backend.connect_attempts();
    let get = redis::cmd("GET").arg("missing").to_owned();
    for _ in 0..3 {
        let e = backend.query::<String>(&get).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("GET"), "{e}");
        let e = backend
            .pipeline::<(String,)>(redis::pipe().get("missing"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        let script = Script::new("nothing", "return false");
        let e = backend.eval::<String>(&script.call()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol, "{e}");
        assert!(
            backend.is_up(),
            "the server answered: {:?}",
            backend.health()
        );
    }
    assert_eq!(backend.health().status, HealthStatus::Up);
    assert_eq!(
        backend.connect_attempts(),
        attempts,
        "the connection is kept: the server answered every call"
    );
    let v: Option<String> = backend.query(&get).await.unwrap();
    assert_eq!(v, None);
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

    // A reset is noticed either by an operation that fails or by the supervisor, which may
    // reconnect before any operation is sent: what must happen is a new connection.
    let attempts = backend.connect_attempts();
    proxy.reset_connections();
    eventually("a new connection after the reset", || async {
        let pong = backend.query::<String>(&ping).await.ok();
        (backend.connect_attempts() > attempts)
            .then_some(pong)
            .flatten()
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
        let _: () = redis_backend
            .query(redis::cmd("SET").arg(&from).arg(100))
            .await
            .unwrap();
        let call = script.call().key(&from).key(&to).arg(30);
        assert_eq!(redis_backend.eval::<i64>(&call).await.unwrap(), 1);
        let to_value: Option<i64> = redis_backend
            .query(redis::cmd("GET").arg(&to))
            .await
            .unwrap();
        assert_eq!(to_value, Some(30));
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

/// Waits (at most 15 s) for the next event of `sub` that `want` accepts, skipping others.
async fn next_matching(
    sub: &mut Subscription,
    what: &str,
    want: impl Fn(&SubscriptionEvent) -> bool,
) -> SubscriptionEvent {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(e)) if want(&e) => return e,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the subscription ended while waiting for {what}"),
            Err(_) => panic!("gave up waiting for {what}"),
        }
    }
}

/// Publishes `payload` until `sub` receives it (a publish right after `Subscribed` on another
/// connection may race the subscription's registration on a cluster node).
async fn deliver(backend: &RedisBackend, sub: &mut Subscription, payload: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = backend.publish(sub.channel(), payload).await;
        if let Ok(Some(SubscriptionEvent::Message(m))) =
            tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            && m == payload
        {
            return;
        }
        assert!(Instant::now() < deadline, "{payload:?} never arrived");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_a_restart_and_a_pause_and_says_what_it_missed() {
    let mut server = RedisServer::start();
    let backend = RedisBackend::connect(config(server.url())).await.unwrap();
    let mut sub = backend.subscribe("omega:{t}:events");
    next_matching(&mut sub, "subscribed", |e| {
        *e == SubscriptionEvent::Subscribed
    })
    .await;
    assert_eq!(
        backend.publish("omega:{t}:events", b"one").await.unwrap(),
        1
    );
    assert_eq!(
        next_matching(&mut sub, "a message", |_| true).await,
        SubscriptionEvent::Message(b"one".to_vec())
    );

    // Killed: the consumer hears that it lost the subscription, then that it is back.
    server.kill();
    next_matching(&mut sub, "lost after a kill", |e| {
        *e == SubscriptionEvent::Lost
    })
    .await;
    server.restart();
    next_matching(&mut sub, "back after a restart", |e| {
        *e == SubscriptionEvent::Subscribed
    })
    .await;
    deliver(&backend, &mut sub, b"two").await;

    // Paused: the connection stays open but answers nothing; the keepalive notices.
    server.pause();
    let paused = Instant::now();
    next_matching(&mut sub, "lost while paused", |e| {
        *e == SubscriptionEvent::Lost
    })
    .await;
    println!("a paused server was noticed after {:?}", paused.elapsed());
    server.resume();
    next_matching(&mut sub, "back after a pause", |e| {
        *e == SubscriptionEvent::Subscribed
    })
    .await;
    deliver(&backend, &mut sub, b"three").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_subscription_follows_its_node_on_a_cluster() {
    let mut cluster = RedisCluster::start();
    let backend = RedisBackend::connect(
        RedisConfig::cluster(cluster.urls())
            .op_timeout(Duration::from_millis(500))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let channel = "omega:{breakers}:open";
    let mut sub = backend.subscribe(channel);
    next_matching(&mut sub, "subscribed", |e| {
        *e == SubscriptionEvent::Subscribed
    })
    .await;
    deliver(&backend, &mut sub, b"one").await;

    // The node that owns the channel's slot answers a read of that name; the others redirect.
    let owner = (0..cluster.nodes().len())
        .find(|&i| !cluster.nodes()[i].cli(&["GET", channel]).contains("MOVED"))
        .expect("one node owns the channel's slot");
    cluster.nodes_mut()[owner].kill();
    next_matching(&mut sub, "lost with its node", |e| {
        *e == SubscriptionEvent::Lost
    })
    .await;
    cluster.nodes_mut()[owner].restart();
    next_matching(&mut sub, "back with its node", |e| {
        *e == SubscriptionEvent::Subscribed
    })
    .await;
    deliver(&backend, &mut sub, b"two").await;
}
