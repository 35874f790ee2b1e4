//! The quorum and the shared OPEN key against a real Redis.
//!
//! - The default quorum is 2, so one instance alone never opens its peers.
//! - An instance's id is stable (the host name unless set): one that restarts votes again
//!   under the same id, so its votes count once.
//! - Only real trips vote: a forced or manual open, a HALF_OPEN timeout and a remote open
//!   do not.
//! - A shared opening consumes its votes: one instance with a local fault cannot re-open its
//!   peers each cycle with a vote left over from the last outage.
//! - A recovery deletes the OPEN key only if it holds the opening this instance knew (it set
//!   it, or followed it); a manual close or reset clears the shared state.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_circuit_breaker::shared::RedisSync;
use omega_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow, State};
use omega_core::Keyspace;
use omega_core::redis::{RedisBackend, RedisConfig};
use omega_testkit::RedisServer;

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::ConsecutiveFailures(2))
        .wait_duration(Duration::from_secs(30))
        .permitted_calls_in_half_open(1)
}

async fn backend(url: &str) -> RedisBackend {
    let cfg = RedisConfig::url(url)
        .keyspace(Keyspace::new("cbvotes").unwrap())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500));
    RedisBackend::connect(cfg).await.unwrap()
}

/// An instance: `id` (`None`: the default id) and `quorum` (`None`: the default quorum).
async fn instance(
    server: &RedisServer,
    id: Option<&str>,
    quorum: Option<u32>,
) -> (RedisSync, CircuitBreaker) {
    let mut builder = RedisSync::builder(backend(&server.url()).await);
    if let Some(id) = id {
        builder = builder.instance_id(id);
    }
    if let Some(q) = quorum {
        builder = builder.quorum(q);
    }
    let sync = builder.build().unwrap();
    let b = CircuitBreaker::with_config("payments", config()).unwrap();
    sync.attach(&b);
    eventually("the subscription", || sync.is_subscribed()).await;
    (sync, b)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Long enough for a message or a script that was going to come (loopback: ~1 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn trip(b: &CircuitBreaker) {
    for _ in 0..2 {
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(b.state(), State::Open);
}

/// A breaker's own probe: HALF_OPEN, then one probe with this outcome.
fn probe(b: &CircuitBreaker, ok: bool) {
    b.transition_to_half_open();
    let p = b.try_acquire().unwrap();
    if ok { p.success() } else { p.failure() }
}

fn votes(server: &RedisServer, sync: &RedisSync) -> String {
    server.cli(&["ZRANGE", &sync.votes_key("payments"), "0", "-1"])
}

fn open_key(server: &RedisServer, sync: &RedisSync) -> String {
    server.cli(&["GET", &sync.open_key("payments")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_one_instance_alone_does_not_open_its_peers() {
    let server = RedisServer::start();
    let (sa, a) = instance(&server, Some("a"), None).await;
    let (_sb, b) = instance(&server, Some("b"), None).await;
    let (_sc, c) = instance(&server, Some("c"), None).await;
    trip(&a);
    eventually("a's vote", || votes(&server, &sa) == "a").await;
    settle().await;
    eprintln!(
        "one instance tripped (default quorum): peer b is {}",
        b.state()
    );
    assert_eq!(b.state(), State::Closed, "one instance opened every peer");
    assert_eq!(open_key(&server, &sa), "");
    // A second instance agreeing opens the rest.
    trip(&b);
    eventually("c to follow the quorum of two", || c.state() == State::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_restarts_votes_under_the_same_id() {
    let server = RedisServer::start();
    let (sp, peer) = instance(&server, Some("peer"), Some(2)).await;
    let mut ids = Vec::new();
    // A crash-looping instance: three starts with the default id, each tripping at once.
    for _ in 0..3 {
        let (s, b) = instance(&server, None, Some(2)).await;
        ids.push(s.instance_id().to_owned());
        trip(&b);
        eventually("the vote", || votes(&server, &s).contains(s.instance_id())).await;
    }
    settle().await;
    let held = server
        .cli(&["ZCARD", &sp.votes_key("payments")])
        .parse::<u32>()
        .unwrap();
    eprintln!(
        "3 starts under ids {ids:?}: {held} vote(s) held; the peer is {}",
        peer.state()
    );
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "ids change per start: {ids:?}"
    );
    assert_eq!(held, 1, "a restarted instance voted again under a new id");
    assert_eq!(peer.state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_real_trips_vote() {
    let server = RedisServer::start();
    let (sa, a) = instance(&server, Some("a"), Some(1)).await;
    let (_sb, b) = instance(&server, Some("b"), Some(1)).await;
    // Forced and manual opens are an operator's, not evidence.
    a.force_open();
    a.transition_to_closed();
    a.transition_to_open();
    a.transition_to_closed();
    // A HALF_OPEN that timed out without traffic has no verdict on the dependency.
    a.update_config(|c| c.max_wait_in_half_open(Duration::from_millis(50)))
        .unwrap();
    a.transition_to_half_open();
    eventually("the HALF_OPEN timeout", || a.state() == State::Open).await;
    settle().await;
    let held = votes(&server, &sa);
    eprintln!(
        "after a forced, a manual open and a HALF_OPEN timeout: votes [{held}], b is {}",
        b.state()
    );
    assert_eq!(held, "", "a vote without a trip");
    assert_eq!(b.state(), State::Closed);

    // A remote open does not vote either: b follows a real trip of a and casts nothing.
    a.transition_to_closed();
    trip(&a);
    eventually("b to follow", || b.state() == State::Open).await;
    settle().await;
    assert!(!votes(&server, &sa).contains('b'), "b voted for following");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_faulty_instance_cannot_reopen_its_peers_each_cycle() {
    let server = RedisServer::start();
    let (sa, a) = instance(&server, Some("a"), Some(2)).await;
    let (_sx, x) = instance(&server, Some("x"), Some(2)).await;
    let (_sb, b) = instance(&server, Some("b"), Some(2)).await;
    // A real outage: a and x trip, the quorum opens b.
    trip(&a);
    trip(&x);
    eventually("b to follow", || b.state() == State::Open).await;
    // The dependency is back: b's probe succeeds (a is still waiting). x has a fault of its
    // own: its probe fails, and it trips again, alone.
    probe(&b, true);
    assert_eq!(b.state(), State::Closed);
    probe(&x, false);
    assert_eq!(x.state(), State::Open);
    settle().await;
    eprintln!(
        "x tripped again alone: votes [{}], b is {}",
        votes(&server, &sa),
        b.state()
    );
    assert_eq!(b.state(), State::Closed, "x re-opened b with a's old vote");
    assert_eq!(a.state(), State::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_deletes_only_the_opening_it_knew() {
    let server = RedisServer::start();
    let (sa, a) = instance(&server, Some("a"), Some(1)).await;
    let (_sb, b) = instance(&server, Some("b"), Some(1)).await;
    trip(&a);
    eventually("b to follow", || b.state() == State::Open).await;
    // An operator (or another outage) writes the key since: a's recovery must leave it.
    let key = sa.open_key("payments");
    server.cli(&["SET", &key, "operator", "PX", "60000"]);
    probe(&a, true);
    assert_eq!(a.state(), State::Closed);
    settle().await;
    let left = open_key(&server, &sa);
    eprintln!("a recovered from its own opening; the key written since holds [{left}]");
    assert_eq!(left, "operator", "a deleted an opening it did not make");

    // b followed a's opening, then the key was replaced: b's recovery leaves it too.
    probe(&b, true);
    settle().await;
    assert_eq!(open_key(&server, &sa), "operator");

    // The instance whose opening is in the key removes it when it recovers.
    server.cli(&["DEL", &key]);
    trip(&a);
    eventually("a's key", || !open_key(&server, &sa).is_empty()).await;
    eventually("b to follow", || b.state() == State::Open).await;
    probe(&b, true); // b followed this opening: its recovery ends it
    eventually("the key to go", || open_key(&server, &sa).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_close_or_reset_clears_the_shared_state() {
    let server = RedisServer::start();
    let (sa, a) = instance(&server, Some("a"), Some(1)).await;
    let (_sb, b) = instance(&server, Some("b"), Some(1)).await;
    trip(&a);
    eventually("b to follow", || b.state() == State::Open).await;
    // The operator overrides: a is reset. A newcomer must not re-open from the old key.
    a.reset();
    settle().await;
    let left = open_key(&server, &sa);
    let (_sc, c) = instance(&server, Some("c"), Some(1)).await;
    settle().await;
    eprintln!(
        "after a.reset(): the OPEN key holds [{left}], a newcomer is {}",
        c.state()
    );
    assert_eq!(left, "", "reset left the shared OPEN key");
    assert_eq!(c.state(), State::Closed);

    // A manual close of a follower clears it too.
    trip(&a);
    eventually("c to follow", || c.state() == State::Open).await;
    c.transition_to_closed();
    eventually("the key to go", || open_key(&server, &sa).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_from_before_a_reset_does_not_count() {
    let server = RedisServer::start();
    let (sq, q) = instance(&server, Some("q"), Some(2)).await;
    let (_sr, r) = instance(&server, Some("r"), Some(2)).await;
    let (_ss, s) = instance(&server, Some("s"), Some(2)).await;
    trip(&q);
    eventually("q's vote", || votes(&server, &sq).contains('q')).await;
    q.reset();
    settle().await;
    let held = votes(&server, &sq);
    trip(&r);
    settle().await;
    eprintln!(
        "q voted, then was reset: votes held [{held}]; r trips: s is {}",
        s.state()
    );
    assert_eq!(s.state(), State::Closed, "a vote survived the reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_made_while_redis_is_paused_clears_the_shared_state_once_it_is_back() {
    const OP_TIMEOUT: Duration = Duration::from_secs(1);
    let server = RedisServer::start();
    let cfg = RedisConfig::url(server.url())
        .keyspace(Keyspace::new("cbvotes").unwrap())
        .op_timeout(OP_TIMEOUT)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500));
    let sa = RedisSync::builder(RedisBackend::connect(cfg).await.unwrap())
        .instance_id("a")
        .quorum(1)
        .build()
        .unwrap();
    let a = CircuitBreaker::with_config("payments", config()).unwrap();
    sa.attach(&a);
    trip(&a);
    eventually("a's key", || !open_key(&server, &sa).is_empty()).await;
    // SIGSTOP: Redis keeps its port, every command hangs until the op timeout (1 s here).
    server.pause();
    let started = Instant::now();
    a.reset();
    let took = started.elapsed();
    assert_eq!(a.state(), State::Closed);
    tokio::time::sleep(2 * OP_TIMEOUT).await;
    server.resume();
    eventually("the key to go once Redis is back", || {
        open_key(&server, &sa).is_empty()
    })
    .await;
    eprintln!("reset with Redis paused took {took:?}; the key went once Redis was back");
    // Waiting on Redis would take the op timeout at least.
    assert!(took < OP_TIMEOUT / 2, "the reset waited on Redis: {took:?}");
}
