//! Breakers of several instances sharing a real Redis through each instance's one
//! `RedisBackend`: one opens, the others follow; a quorum; Redis killed and restarted; a
//! subscription cut and re-established catches up. (Redis Cluster: `redis_cluster.rs`.)
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_circuit_breaker::shared::RedisSync;
use omega_circuit_breaker::{
    BreakerRegistry, Cause, CircuitBreaker, CircuitBreakerConfig, EventKind, SlidingWindow, State,
};
use omega_core::Keyspace;
use omega_core::redis::{RedisBackend, RedisConfig};
use omega_testkit::RedisServer;

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::ConsecutiveFailures(2))
        .wait_duration(Duration::from_secs(30))
        .permitted_calls_in_half_open(1)
}

/// An instance's one Redis handle, on the keyspace `prefix`.
async fn backend(cfg: RedisConfig, prefix: &str) -> RedisBackend {
    let cfg = cfg
        .keyspace(Keyspace::new(prefix).unwrap())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500));
    RedisBackend::connect(cfg).await.unwrap()
}

/// One "instance": its own Redis handle (connection, subscription) and breaker.
async fn instance(url: &str, id: &str, quorum: u32) -> (RedisSync, CircuitBreaker) {
    let sync = RedisSync::builder(backend(RedisConfig::url(url), "cbtest").await)
        .instance_id(id)
        .quorum(quorum)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::with_config("payments", config()).unwrap();
    sync.attach(&breaker);
    (sync, breaker)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn trip(b: &CircuitBreaker) {
    for _ in 0..2 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_on_one_instance_opens_the_others_and_newcomers_learn_it() {
    let server = RedisServer::start();
    let (sa, a) = instance(&server.url(), "a", 1).await;
    let (sb, b) = instance(&server.url(), "b", 1).await;
    eventually("subscriptions", || sa.is_subscribed() && sb.is_subscribed()).await;
    let mut events = b.events();

    let t0 = Instant::now();
    trip(&a);
    eventually("b to follow", || b.state() == State::Open).await;
    eprintln!(
        "OPEN propagated to the other instance in {:?}",
        t0.elapsed()
    );
    assert_eq!(sa.published(), 1);
    assert_eq!(sb.received(), 1);
    let e = events.recv().await.unwrap();
    assert_eq!(
        e.kind,
        EventKind::Transition {
            from: State::Closed,
            to: State::Open,
            cause: Cause::Remote
        }
    );
    // The follower rejects with what is left of the wait.
    let open = b.try_acquire().unwrap_err();
    assert!(open.retry_after().unwrap() <= Duration::from_secs(30));
    // A remote opening is not published again.
    assert_eq!(sb.published(), 0);

    // An instance that starts now learns the open circuit from its key.
    let (_sc, c) = instance(&server.url(), "c", 1).await;
    eventually("c to catch up", || c.state() == State::Open).await;
    let ttl: i64 = server
        .cli(&["PTTL", &sa.open_key("payments")])
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "{ttl}");

    // Other breaker names are not affected.
    let other = CircuitBreaker::with_config("inventory", config()).unwrap();
    sb.attach(&other);
    assert_eq!(other.state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_quorum_the_circuit_opens_everywhere_only_when_enough_instances_opened() {
    let server = RedisServer::start();
    let (sa, a) = instance(&server.url(), "a", 2).await;
    let (sb, b) = instance(&server.url(), "b", 2).await;
    let (sc, c) = instance(&server.url(), "c", 2).await;
    eventually("subscriptions", || {
        sa.is_subscribed() && sb.is_subscribed() && sc.is_subscribed()
    })
    .await;
    let votes = sa.votes_key("payments");

    trip(&a);
    eventually("a's vote", || server.cli(&["ZCARD", &votes]) == "1").await;
    // One vote of two: the others stay CLOSED, nothing was published.
    assert_eq!(sa.published(), 0);
    assert_eq!(server.cli(&["EXISTS", &sa.open_key("payments")]), "0");
    assert_eq!(b.state(), State::Closed);
    assert_eq!(c.state(), State::Closed);

    trip(&b); // the second vote reaches the quorum
    eventually("c to follow", || c.state() == State::Open).await;
    assert_eq!(sb.published(), 1);
    // The opening consumed its votes: the next one needs a quorum of its own.
    assert_eq!(server.cli(&["EXISTS", &sa.open_key("payments")]), "1");
    assert_eq!(server.cli(&["ZCARD", &votes]), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_each_instance_decides_alone_and_sharing_resumes_after() {
    let mut server = RedisServer::start();
    let (sa, a) = instance(&server.url(), "a", 1).await;
    let (sb, b) = instance(&server.url(), "b", 1).await;
    eventually("subscriptions", || sa.is_subscribed() && sb.is_subscribed()).await;

    server.kill();
    eventually("subscriptions to drop", || {
        !sa.is_subscribed() && !sb.is_subscribed()
    })
    .await;
    // Calls never wait on Redis: both breakers keep deciding locally.
    trip(&a);
    for _ in 0..100 {
        b.try_acquire().unwrap().success();
    }
    assert_eq!(b.state(), State::Closed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        b.state(),
        State::Closed,
        "nothing can reach b while Redis is down"
    );

    server.restart();
    // Back: a's opening, made during the outage and still in force, reaches b.
    eventually("b to follow once Redis is back", || {
        b.state() == State::Open
    })
    .await;
    eventually("subscriptions to come back", || {
        sa.subscriptions() >= 2 && sb.subscriptions() >= 2
    })
    .await;
    // And new openings spread again.
    let (a2, b2) = (
        CircuitBreaker::with_config("orders", config()).unwrap(),
        CircuitBreaker::with_config("orders", config()).unwrap(),
    );
    sa.attach(&a2);
    sb.attach(&b2);
    trip(&a2);
    eventually("b2 to follow", || b2.state() == State::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_shares_every_breaker_and_recovery_clears_the_key() {
    let server = RedisServer::start();
    let sync = async |id: &str| {
        RedisSync::builder(backend(RedisConfig::url(server.url()), "cbreg").await)
            .instance_id(id)
            .quorum(1)
            .build()
            .unwrap()
    };
    let (s1, s2) = (sync("one").await, sync("two").await);
    let r1 = BreakerRegistry::<String>::builder()
        .config(config())
        .shared(s1.clone())
        .build()
        .unwrap();
    let r2 = BreakerRegistry::<String>::builder()
        .config(config())
        .shared(s2.clone())
        .build()
        .unwrap();
    eventually("subscriptions", || s1.is_subscribed() && s2.is_subscribed()).await;
    let node = "node-7".to_string();
    let b2 = r2.get_or_create("node-7");
    let b1 = r1.get_or_create("node-7");
    trip(&b1);
    eventually("r2's node-7 to follow", || !r2.is_call_permitted(&node)).await;
    assert_eq!(b2.state(), State::Open);

    // b1 recovers through its own probe: the shared OPEN key goes away.
    b1.transition_to_half_open();
    b1.try_acquire().unwrap().success();
    assert_eq!(b1.state(), State::Closed);
    let key = s1.open_key("node-7");
    eventually("the OPEN key to be deleted", || {
        server.cli(&["EXISTS", &key]) == "0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_comes_back_catches_up_on_what_it_missed() {
    let server = RedisServer::start();
    let sync = async |id: &str| {
        RedisSync::builder(backend(RedisConfig::url(server.url()), "cbtest").await)
            .instance_id(id)
            .build()
            .unwrap()
    };
    let (sa, sb) = (sync("a").await, sync("b").await);
    eventually("subscriptions", || sa.is_subscribed() && sb.is_subscribed()).await;
    let b = CircuitBreaker::with_config("payments", config()).unwrap();
    sb.attach(&b);
    eventually("b's first read of its OPEN key", || {
        sb.open_keys_read() == 1
    })
    .await;
    assert_eq!(sb.subscriptions(), 1);

    // An opening whose message b never gets: the OPEN key is written, nothing is published.
    server.cli(&["SET", &sa.open_key("payments"), "a", "PX", "60000"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.state(), State::Closed, "nothing told b yet");

    // The subscriptions' connections are cut; each comes back and reads the OPEN keys again.
    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eventually("b's subscription to come back", || {
        sb.is_subscribed() && sb.subscriptions() >= 2
    })
    .await;
    eventually("b to catch up", || b.state() == State::Open).await;
    assert_eq!(
        sb.received(),
        0,
        "caught up from the key, not from a message"
    );
}

/// An instance whose sync was built on a runtime that has since shut down (a test suite
/// sharing it across `#[tokio::test]`s): its openings still reach the others, and it hears
/// theirs again once its listener is back on the runtime it is used on.
#[test]
fn a_sync_used_on_the_next_runtime_shares_and_hears_openings() {
    let server = RedisServer::start();
    let first = omega_testkit::runtime();
    let (sa, a) = first.block_on(async {
        let (sa, a) = instance(&server.url(), "a", 1).await;
        eventually("a's subscription", || sa.is_subscribed()).await;
        (sa, a)
    });
    drop(first);

    omega_testkit::runtime().block_on(async {
        let (sb, b) = instance(&server.url(), "b", 1).await;
        eventually("b's subscription", || sb.is_subscribed()).await;
        trip(&a);
        eventually("b to follow a", || b.state() == State::Open).await;
        eventually("a's subscription, again", || sa.is_subscribed()).await;
        let a2 = CircuitBreaker::with_config("orders", config()).unwrap();
        let b2 = CircuitBreaker::with_config("orders", config()).unwrap();
        sa.attach(&a2);
        sb.attach(&b2);
        trip(&b2);
        eventually("a to follow b", || a2.state() == State::Open).await;
    });
}
