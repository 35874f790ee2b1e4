//! The decorators around futures and functions, timeouts as failures, and time: a manual
//! clock, the CPU clock under tokio's paused clock, and the recovery latency on the real clock.

use std::time::Duration;

use omega_circuit_breaker::{
    CallError, CircuitBreaker, CircuitBreakerConfig, Clock, EventKind, Outcome, SlidingWindow,
    State,
};

fn breaker(config: CircuitBreakerConfig) -> CircuitBreaker {
    CircuitBreaker::builder("test")
        .config(config)
        .clock(Clock::system())
        .build()
        .unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_manual_clock_drives_the_wait_without_a_runtime() {
    let clock = Clock::manual();
    let b = CircuitBreaker::builder("manual")
        .config(
            CircuitBreakerConfig::default()
                .sliding_window(SlidingWindow::ConsecutiveFailures(1))
                .wait_duration(secs(2)),
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), State::Open);
    clock.advance(secs(2));
    assert!(b.is_call_permitted());
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn call_decorator_returns_inner_errors_and_rejections() {
    let b = breaker(
        CircuitBreakerConfig::default().sliding_window(SlidingWindow::ConsecutiveFailures(2)),
    );
    let r: Result<(), CallError<&str>> = b.call(async { Err("down") }).await;
    assert_eq!(r, Err(CallError::Inner("down")));
    // A classifier that ignores this error.
    let r = b
        .call_with(
            async { Err::<(), _>("not found") },
            |_: &Result<(), &str>| Outcome::Ignored,
        )
        .await;
    assert_eq!(r, Err(CallError::Inner("not found")));
    assert_eq!(b.state(), State::Closed);
    let r = b.call_sync(|| Err::<(), _>("down"));
    assert!(matches!(r, Err(CallError::Inner("down"))));
    assert_eq!(b.state(), State::Open);
    let r = b.call(async { Ok::<_, &str>(1) }).await;
    let Err(CallError::Rejected(open)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(open.breaker(), "test");
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(open);
    assert!(
        boxed
            .downcast_ref::<omega_circuit_breaker::CircuitOpen>()
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_count_as_failures() {
    let b = breaker(
        CircuitBreakerConfig::default().sliding_window(SlidingWindow::ConsecutiveFailures(2)),
    );
    // A deadline inside the breaker: a call that times out is an error, so a failure.
    let hanging = || tokio::time::timeout(secs(1), std::future::pending::<Result<(), ()>>());
    for _ in 0..2 {
        let r = b
            .call(async {
                hanging()
                    .await
                    .map_err(|_| "timed out")?
                    .map_err(|()| "failed")
            })
            .await;
        assert_eq!(r, Err(CallError::Inner("timed out")));
    }
    assert_eq!(b.state(), State::Open);
}

/// Recovery latency: after the downstream heals, how long beyond the configured wait until
/// the breaker is CLOSED again. Measured on the real clock and printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_latency_is_measured() {
    use std::time::Instant;
    let wait = Duration::from_millis(50);
    let mut excess = Vec::new();
    for trial in 0..10u64 {
        let b = CircuitBreaker::with_config(
            "recovery",
            CircuitBreakerConfig::default()
                .sliding_window(SlidingWindow::ConsecutiveFailures(1))
                .wait_duration(wait)
                .permitted_calls_in_half_open(1),
        )
        .unwrap();
        let mut rx = b.events();
        b.try_acquire().unwrap().failure();
        let opened = Instant::now();
        // The downstream heals at some point during the wait.
        let heal = opened + Duration::from_millis(5 * trial);
        // A prober that sends one request as soon as HALF_OPEN is announced (a client at
        // 1 req/s would add up to a second here; the timer makes that wait unnecessary).
        loop {
            let e = rx.recv().await.unwrap();
            if let EventKind::Transition {
                to: State::HalfOpen,
                ..
            } = e.kind
            {
                let healed = Instant::now() >= heal;
                let p = b.try_acquire().unwrap();
                if healed { p.success() } else { p.failure() }
            }
            if b.state() == State::Closed {
                break;
            }
        }
        let closed = Instant::now();
        let floor = heal.max(opened + wait);
        excess.push(closed.saturating_duration_since(floor));
    }
    excess.sort();
    eprintln!(
        "recovery excess beyond the wait ({wait:?}): p50 {:?}, max {:?}",
        excess[excess.len() / 2],
        excess[excess.len() - 1]
    );
}

#[tokio::test(start_paused = true)]
async fn a_cpu_clock_under_paused_tokio_time_falls_back_to_lazy_transitions() {
    // The default clock does not follow tokio's paused clock: the timer must not spin.
    let b = CircuitBreaker::with_config(
        "fast-clock",
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(1))
            .wait_duration(Duration::from_millis(500)),
    )
    .unwrap();
    b.try_acquire().unwrap().failure();
    tokio::time::sleep(secs(3600)).await; // tokio time flies, the CPU clock barely moves
    // The timer noticed and ended instead of re-arming itself in a loop.
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        0
    );
    assert_eq!(b.state(), State::Open);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.state(), State::HalfOpen);
}
