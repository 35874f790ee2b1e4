//! Instances that open because another one did (through a real Redis) jitter their OPEN wait
//! as their own openings do, so that they do not all probe at the same instant, and such an
//! opening does not raise their own backoff.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_circuit_breaker::shared::RedisSync;
use omega_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow, State};
use omega_core::Keyspace;
use omega_core::redis::{RedisBackend, RedisConfig};
use omega_testkit::RedisServer;

async fn sync(url: &str, id: &str) -> RedisSync {
    let cfg = RedisConfig::url(url)
        .keyspace(Keyspace::new("cbfollow").unwrap())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500));
    RedisSync::builder(RedisBackend::connect(cfg).await.unwrap())
        .instance_id(id)
        .quorum(1)
        .build()
        .unwrap()
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

fn wait_left(b: &CircuitBreaker) -> Duration {
    b.health().next_transition_in.expect("an OPEN wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_jitter_their_open_wait() {
    const WAIT: Duration = Duration::from_secs(30);
    const JITTER: f64 = 0.5;
    let server = RedisServer::start();
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::ConsecutiveFailures(2))
        .wait_duration(WAIT)
        .jitter(JITTER);
    let leader = sync(&server.url(), "leader").await;
    let mut followers = Vec::new();
    for i in 0..4 {
        let s = sync(&server.url(), &format!("follower-{i}")).await;
        let b = CircuitBreaker::with_config("payments", config.clone()).unwrap();
        s.attach(&b);
        followers.push((s, b));
    }
    eventually("subscriptions", || {
        leader.is_subscribed() && followers.iter().all(|(s, _)| s.is_subscribed())
    })
    .await;
    let a = CircuitBreaker::with_config("payments", config).unwrap();
    leader.attach(&a);

    trip(&a);
    let leader_wait = wait_left(&a);
    eventually("every follower to open", || {
        followers.iter().all(|(_, b)| b.state() == State::Open)
    })
    .await;
    let waits: Vec<Duration> = followers.iter().map(|(_, b)| wait_left(b)).collect();
    let spread = *waits.iter().max().unwrap() - *waits.iter().min().unwrap();
    eprintln!(
        "leader waits {leader_wait:?}; followers wait {waits:?}: spread {spread:?} \
         (jitter ±{JITTER} of the wait left)"
    );
    // Without jitter the followers' waits differ by the propagation time only (a few ms);
    // with ±50 % of ~the leader's wait, four of them fall within 200 ms of each other with a
    // probability below 1e-6.
    assert!(
        spread >= Duration::from_millis(200),
        "the followers probe together: {waits:?}"
    );
    for w in &waits {
        assert!(
            *w >= leader_wait.mul_f64(1.0 - JITTER) - Duration::from_secs(1)
                && *w <= leader_wait.mul_f64(1.0 + JITTER),
            "a follower's wait {w:?} is outside ±{JITTER} of {leader_wait:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_open_does_not_raise_the_followers_backoff() {
    const WAIT: Duration = Duration::from_secs(10);
    let server = RedisServer::start();
    let config = CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::ConsecutiveFailures(2))
        .wait_duration(WAIT)
        .exponential_backoff(2.0, Duration::from_secs(300))
        .permitted_calls_in_half_open(1);
    let (sa, sb) = (
        sync(&server.url(), "a").await,
        sync(&server.url(), "b").await,
    );
    let (a, b) = (
        CircuitBreaker::with_config("orders", config.clone()).unwrap(),
        CircuitBreaker::with_config("orders", config).unwrap(),
    );
    sa.attach(&a);
    sb.attach(&b);
    eventually("subscriptions", || sa.is_subscribed() && sb.is_subscribed()).await;

    trip(&a);
    eventually("b to follow", || b.state() == State::Open).await;
    // b's own first opening: its probe fails. Its backoff level is its own history (no
    // opening of its own yet), so it waits the base wait, not twice it.
    b.transition_to_half_open();
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), State::Open);
    let own = wait_left(&b);
    eprintln!("b's first own opening, after following a's: waits {own:?} (base {WAIT:?})");
    assert!(
        own <= WAIT,
        "the remote opening raised b's backoff: {own:?}"
    );
    // Its second own opening doubles, as usual.
    b.transition_to_half_open();
    b.try_acquire().unwrap().failure();
    let second = wait_left(&b);
    assert!(second > WAIT && second <= 2 * WAIT, "{second:?}");
}
