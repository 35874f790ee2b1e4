//! Breakers shared over a real 3-node Redis Cluster: each instance has its own cluster
//! `RedisBackend`; the vote set and the OPEN key of a breaker share its hash tag, the channel
//! is sharded (`SSUBSCRIBE` / `SPUBLISH`). An OPEN spreads, a newcomer adopts it, and a
//! subscription that comes back after its node was killed and restarted catches up.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_circuit_breaker::shared::RedisSync;
use omega_circuit_breaker::{
    Cause, CircuitBreaker, CircuitBreakerConfig, EventKind, SlidingWindow, State,
};
use omega_core::Keyspace;
use omega_core::redis::{RedisBackend, RedisConfig, cmd};
use omega_testkit::RedisCluster;

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::ConsecutiveFailures(2))
        .wait_duration(Duration::from_secs(60))
        .permitted_calls_in_half_open(1)
}

/// One instance's Redis handle on the cluster.
async fn backend(cluster: &RedisCluster) -> RedisBackend {
    let cfg = RedisConfig::cluster(cluster.urls())
        .keyspace(Keyspace::new("cbcluster").unwrap())
        .op_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500));
    RedisBackend::connect(cfg).await.unwrap()
}

async fn sync(cluster: &RedisCluster, id: &str) -> RedisSync {
    RedisSync::builder(backend(cluster).await)
        .instance_id(id)
        .quorum(1)
        .build()
        .unwrap()
}

fn breaker(sync: &RedisSync, name: &str) -> CircuitBreaker {
    let b = CircuitBreaker::with_config(name, config()).unwrap();
    sync.attach(&b);
    b
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn trip(b: &CircuitBreaker) {
    for _ in 0..2 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Open);
}

/// The node that owns `key`'s slot (the others answer a read of it with `MOVED`).
fn owner(cluster: &RedisCluster, key: &str) -> usize {
    (0..cluster.nodes().len())
        .find(|&i| !cluster.nodes()[i].cli(&["GET", key]).contains("MOVED"))
        .expect("one node owns the slot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_spreads_between_instances_and_a_newcomer_adopts_it() {
    let cluster = RedisCluster::start();
    let (sa, sb) = (sync(&cluster, "a").await, sync(&cluster, "b").await);
    assert!(sa.backend().is_cluster());
    eventually("subscriptions", || sa.is_subscribed() && sb.is_subscribed()).await;
    // Attached once subscribed, b reads its OPEN key once; after that read it can learn of the
    // opening only from the channel (a catch-up read racing the opening would find it first).
    let (a, b) = (breaker(&sa, "search"), breaker(&sb, "search"));
    eventually("b's read of its OPEN key", || sb.open_keys_read() == 1).await;
    let mut events = b.events();

    trip(&a);
    eventually("b to follow through the cluster", || {
        b.state() == State::Open
    })
    .await;
    assert_eq!(sa.published(), 1);
    assert_eq!(sb.received(), 1);
    assert_eq!(
        events.recv().await.unwrap().kind,
        EventKind::Transition {
            from: State::Closed,
            to: State::Open,
            cause: Cause::Remote
        }
    );
    // The vote set and the OPEN key share the breaker's slot; the OPEN key holds the wait.
    assert_eq!(
        owner(&cluster, &sa.votes_key("search")),
        owner(&cluster, &sa.open_key("search"))
    );
    let ttl: i64 = sa
        .backend()
        .query(cmd("PTTL").arg(sa.open_key("search")))
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");

    // An instance that starts now reads the OPEN key from the node that holds its slot.
    let sc = sync(&cluster, "c").await;
    let c = breaker(&sc, "search");
    eventually("c to adopt the open circuit", || c.state() == State::Open).await;
    assert_eq!(
        sc.received(),
        0,
        "c learnt it from the key, not from a message"
    );
    // Other names are not affected.
    assert_eq!(breaker(&sc, "orders").state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_comes_back_with_its_node_catches_up() {
    let mut cluster = RedisCluster::start();
    let (sa, sb) = (sync(&cluster, "a").await, sync(&cluster, "b").await);
    let channel_node = owner(&cluster, sa.channel());
    // A breaker whose keys live on another node than the channel, so they outlive the kill.
    let name = (0..)
        .map(|i| format!("svc-{i}"))
        .find(|n| owner(&cluster, &sa.open_key(n)) != channel_node)
        .unwrap();
    eventually("b's subscription", || sb.is_subscribed()).await;
    let subscriptions = sb.subscriptions();
    let b = breaker(&sb, &name);
    eventually("b's first read of its OPEN key", || {
        sb.open_keys_read() == 1
    })
    .await;

    // An opening whose message b never gets: the OPEN key is written, nothing is published.
    let _: () = sa
        .backend()
        .query(
            cmd("SET")
                .arg(sa.open_key(&name))
                .arg("a")
                .arg("PX")
                .arg(60_000),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.state(), State::Closed, "nothing told b yet");
    assert_eq!(sb.subscriptions(), subscriptions);

    // The node that carries the channel dies and comes back: b's subscription is
    // re-established, and b reads the OPEN keys again.
    cluster.nodes_mut()[channel_node].kill();
    eventually("b to lose its subscription", || !sb.is_subscribed()).await;
    cluster.nodes_mut()[channel_node].restart();
    eventually("b's subscription to come back", || {
        sb.is_subscribed() && sb.subscriptions() > subscriptions
    })
    .await;
    eventually("b to catch up", || b.state() == State::Open).await;
    assert_eq!(
        sb.received(),
        0,
        "caught up from the key, not from a message"
    );
    let left = b.try_acquire().unwrap_err().retry_after().unwrap();
    assert!(left <= Duration::from_secs(60), "{left:?}");

    // And openings spread again over the restored channel.
    let (a2, b2) = (breaker(&sa, "after"), breaker(&sb, "after"));
    trip(&a2);
    eventually("b2 to follow", || b2.state() == State::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_and_reset_clear_the_shared_state_on_the_cluster() {
    let cluster = RedisCluster::start();
    let (sa, sb) = (sync(&cluster, "a").await, sync(&cluster, "b").await);
    let (a, b) = (breaker(&sa, "billing"), breaker(&sb, "billing"));
    eventually("subscriptions", || sa.is_subscribed() && sb.is_subscribed()).await;
    let exists = || async {
        let n: i64 = sa
            .backend()
            .query(cmd("EXISTS").arg(sa.open_key("billing")))
            .await
            .unwrap();
        n == 1
    };
    // A follower's recovery ends the opening it followed (compare and delete in Lua).
    trip(&a);
    eventually("b to follow", || b.state() == State::Open).await;
    assert!(exists().await);
    b.transition_to_half_open();
    b.try_acquire().unwrap().success();
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists().await {
        assert!(Instant::now() < deadline, "b's recovery left the key");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A reset deletes the key and the votes (one DEL of two keys in one slot).
    a.reset();
    trip(&a);
    eventually("b to follow again", || b.state() == State::Open).await;
    assert!(exists().await);
    a.reset();
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists().await {
        assert!(Instant::now() < deadline, "the reset left the key");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
