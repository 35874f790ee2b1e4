//! The state machine, transition by transition, with time under test control (tokio's paused
//! clock read through `Clock::system`, or a manual clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use omega_circuit_breaker::{
    CallError, Cause, CircuitBreaker, CircuitBreakerConfig, Clock, Event, EventKind, Outcome,
    SlidingWindow, State,
};
use tokio::sync::broadcast::Receiver;
use tokio::time::advance;

fn breaker(config: CircuitBreakerConfig) -> CircuitBreaker {
    CircuitBreaker::builder("test")
        .config(config)
        .clock(Clock::system())
        .build()
        .unwrap()
}

fn ok(b: &CircuitBreaker) {
    b.try_acquire().expect("admitted").success();
}

fn fail(b: &CircuitBreaker) {
    b.try_acquire().expect("admitted").failure();
}

fn transitions(rx: &mut Receiver<Event>) -> Vec<(State, State, Cause)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let EventKind::Transition { from, to, cause } = e.kind {
            out.push((from, to, cause));
        }
    }
    out
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn count_window_opens_at_the_threshold_and_recovers_through_half_open() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(10))
            .minimum_calls(5)
            .failure_rate_threshold(50.0)
            .wait_duration(secs(10))
            .permitted_calls_in_half_open(2),
    );
    let mut rx = b.events();
    for _ in 0..4 {
        fail(&b);
    }
    // 4 failures out of 4 calls: below the minimum of 5 calls.
    assert_eq!(b.state(), State::Closed);
    let h = b.health();
    assert_eq!((h.calls, h.failed_calls, h.failure_rate), (4, 4, None));
    ok(&b); // 4 of 5 = 80 %
    assert_eq!(b.state(), State::Open);
    let open = b.try_acquire().unwrap_err();
    assert_eq!(open.state(), State::Open);
    assert_eq!(open.retry_after(), Some(secs(10)));
    assert!(!b.is_call_permitted());

    advance(secs(9)).await;
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.health().next_transition_in, Some(secs(1)));
    advance(secs(1)).await;
    // No call needed: a reader sees HALF_OPEN once the wait is over.
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.health().probes_left, Some(2));

    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert_eq!(b.try_acquire().unwrap_err().state(), State::HalfOpen);
    p1.success();
    assert_eq!(b.state(), State::HalfOpen);
    p2.success();
    assert_eq!(b.state(), State::Closed);
    // A fresh window.
    assert_eq!(b.health().calls, 0);
    assert_eq!(b.health().rejected_calls, 2);
    assert_eq!(
        transitions(&mut rx),
        vec![
            (State::Closed, State::Open, Cause::FailureRate),
            (State::Open, State::HalfOpen, Cause::WaitElapsed),
            (State::HalfOpen, State::Closed, Cause::ProbesSucceeded),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn count_window_evicts_old_failures() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(4))
            .minimum_calls(4)
            .failure_rate_threshold(75.0),
    );
    // F F S S, then F: the window is F S S F (50 %), then F: S S F F (50 %), F: S F F F (75 %).
    fail(&b);
    fail(&b);
    ok(&b);
    ok(&b);
    assert_eq!(b.health().failure_rate, Some(50.0));
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.health().failure_rate, Some(50.0));
    fail(&b);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_clean_window_is_left_by_successes_and_dirtied_by_one_failure() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(3))
            .minimum_calls(3)
            .failure_rate_threshold(60.0),
    );
    for _ in 0..10 {
        ok(&b); // the window fills with successes, then writes stop
    }
    assert_eq!(b.health().calls, 3);
    fail(&b); // S S F: 33 %
    fail(&b); // S F F: 66 % -> OPEN
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_calls_older_than_the_window() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::TimeBased(10))
            .minimum_calls(4)
            .failure_rate_threshold(50.0),
    );
    fail(&b);
    fail(&b);
    ok(&b);
    assert_eq!(b.health().calls, 3);
    advance(secs(11)).await;
    // The three calls left the window: one more failure is 1 of 1, below the minimum.
    assert_eq!(b.health().calls, 0);
    fail(&b);
    assert_eq!(b.state(), State::Closed);
    ok(&b);
    ok(&b);
    assert_eq!(b.state(), State::Closed);
    advance(secs(1)).await;
    fail(&b); // 2 of 4 within the last 10 s
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_at_the_slow_call_rate() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(4))
            .minimum_calls(4)
            .slow_call_duration(Duration::from_millis(100))
            .slow_call_rate_threshold(50.0),
    );
    let mut rx = b.events();
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Ok::<_, ()>(())
    };
    let fast = || async { Ok::<_, ()>(()) };
    b.call(fast()).await.unwrap();
    b.call(slow()).await.unwrap();
    b.call(fast()).await.unwrap();
    assert_eq!(b.state(), State::Closed);
    let h = b.health();
    assert_eq!((h.calls, h.slow_calls, h.failed_calls), (3, 1, 0));
    b.call(slow()).await.unwrap(); // 2 of 4 slow
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        transitions(&mut rx),
        vec![(State::Closed, State::Open, Cause::SlowCallRate)]
    );
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_and_a_success_resets_the_run() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(3))
            .wait_duration(secs(5))
            .permitted_calls_in_half_open(1),
    );
    fail(&b);
    fail(&b);
    ok(&b);
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Closed);
    fail(&b);
    assert_eq!(b.state(), State::Open);
    advance(secs(5)).await;
    assert_eq!(b.state(), State::HalfOpen);
    fail(&b); // the one probe fails
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn repeated_openings_back_off_exponentially_up_to_the_cap() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(1))
            .wait_duration(secs(1))
            .exponential_backoff(2.0, secs(5))
            .permitted_calls_in_half_open(1),
    );
    fail(&b);
    let mut waits = Vec::new();
    for _ in 0..4 {
        assert_eq!(b.state(), State::Open);
        let wait = b.health().next_transition_in.unwrap();
        waits.push(wait.as_secs());
        advance(wait).await;
        assert_eq!(b.state(), State::HalfOpen);
        fail(&b);
    }
    assert_eq!(waits, [1, 2, 4, 5]);
    advance(secs(5)).await;
    ok(&b); // the probe succeeds: CLOSED, and the backoff starts over
    assert_eq!(b.state(), State::Closed);
    fail(&b);
    assert_eq!(b.health().next_transition_in, Some(secs(1)));
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_bounds() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(1))
            .wait_duration(secs(10))
            .jitter(0.5),
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        b.reset();
        fail(&b);
        let wait = b.health().next_transition_in.unwrap();
        assert!(wait >= secs(5) && wait <= secs(15), "{wait:?}");
        seen.insert(wait);
    }
    assert!(seen.len() > 1, "jitter varies the wait");
}

#[tokio::test(start_paused = true)]
async fn half_open_opens_again_after_its_maximum_wait() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(1))
            .wait_duration(secs(10))
            .permitted_calls_in_half_open(1)
            .max_wait_in_half_open(secs(3)),
    );
    let mut rx = b.events();
    fail(&b);
    advance(secs(10)).await;
    let stuck = b.try_acquire().unwrap(); // a probe that never reports
    assert_eq!(b.state(), State::HalfOpen);
    advance(secs(3)).await;
    assert_eq!(b.state(), State::Open);
    stuck.success(); // stale: ignored
    assert_eq!(b.state(), State::Open);
    assert_eq!(
        transitions(&mut rx),
        vec![
            (State::Closed, State::Open, Cause::ConsecutiveFailures),
            (State::Open, State::HalfOpen, Cause::WaitElapsed),
            (State::HalfOpen, State::Open, Cause::HalfOpenTimeout),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_timer_moves_to_half_open_with_no_traffic() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(1))
            .wait_duration(secs(30)),
    );
    let mut rx = b.events();
    fail(&b);
    assert!(matches!(
        rx.recv().await.unwrap().kind,
        EventKind::Transition {
            to: State::Open,
            ..
        }
    ));
    // Nobody calls or reads the state: the event still comes, at the end of the wait.
    let event = rx.recv().await.unwrap();
    assert_eq!(
        event.kind,
        EventKind::Transition {
            from: State::Open,
            to: State::HalfOpen,
            cause: Cause::WaitElapsed
        }
    );
    assert_eq!(&*event.breaker, "test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_tasks_race_for_half_open_and_exactly_n_probes_pass() {
    const PROBES: u32 = 7;
    let b = CircuitBreaker::with_config(
        "race",
        CircuitBreakerConfig::default().permitted_calls_in_half_open(PROBES),
    )
    .unwrap();
    b.transition_to_half_open();
    let reached = Arc::new(AtomicU32::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(10_001));
    let mut tasks = Vec::new();
    for _ in 0..10_000 {
        let (b, reached, gate, start) = (b.clone(), reached.clone(), gate.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            b.call(async {
                reached.fetch_add(1, Ordering::SeqCst);
                // Probes stay in flight until every task has tried.
                gate.acquire().await.unwrap().forget();
                Ok::<_, ()>(())
            })
            .await
        }));
    }
    start.wait().await;
    // Wait until every task has either finished (rejected) or is parked in the service.
    loop {
        let finished = tasks.iter().filter(|t| t.is_finished()).count();
        if finished + reached.load(Ordering::SeqCst) as usize >= 10_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(reached.load(Ordering::SeqCst), PROBES);
    assert_eq!(b.health().probes_left, Some(0));
    gate.add_permits(PROBES as usize);
    let mut admitted = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => admitted += 1,
            Err(CallError::Rejected(_)) => rejected += 1,
            Err(CallError::Inner(())) => unreachable!(),
        }
    }
    assert_eq!((admitted, rejected), (PROBES, 10_000 - PROBES));
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn cancelled_probes_give_their_permits_back() {
    let b = breaker(CircuitBreakerConfig::default().permitted_calls_in_half_open(2));
    b.transition_to_half_open();
    // A probe whose future is dropped before it completes (a client went away).
    let hung = b.call(std::future::pending::<Result<(), ()>>());
    let timed_out = tokio::time::timeout(secs(1), hung).await;
    assert!(timed_out.is_err());
    // A probe in an aborted task.
    let b2 = b.clone();
    let task = tokio::spawn(async move { b2.call(std::future::pending::<Result<(), ()>>()).await });
    tokio::task::yield_now().await;
    assert_eq!(b.health().probes_left, Some(1));
    task.abort();
    let _ = task.await;
    assert_eq!(b.health().probes_left, Some(2));
    // A permit dropped unrecorded, and an ignored outcome.
    drop(b.try_acquire().unwrap());
    b.try_acquire().unwrap().record(Outcome::Ignored);
    assert_eq!(b.health().probes_left, Some(2));
    ok(&b);
    ok(&b);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn results_of_an_earlier_state_do_not_move_the_new_one() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(2))
            .permitted_calls_in_half_open(1),
    );
    let from_closed: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    b.transition_to_half_open();
    for p in from_closed {
        p.failure(); // CLOSED-era failures: ignored in HALF_OPEN
    }
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.health().probes_left, Some(1));
    let probe = b.try_acquire().unwrap();
    b.transition_to_closed();
    probe.failure(); // a HALF_OPEN-era failure: ignored in CLOSED
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.health().failed_calls, 0);
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn results_from_an_earlier_cycle_do_not_reach_the_current_window_or_probes() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(2))
            .permitted_calls_in_half_open(1),
    );
    // A CLOSED call that outlives a whole cycle CLOSED -> OPEN -> HALF_OPEN -> CLOSED.
    let old_call = b.try_acquire().unwrap();
    b.transition_to_open();
    b.transition_to_half_open();
    // A probe that outlives its HALF_OPEN: OPEN again, then a new HALF_OPEN.
    let old_probe = b.try_acquire().unwrap();
    b.transition_to_open();
    b.transition_to_half_open();
    old_probe.failure(); // must not count against the new probes
    assert_eq!(b.health().probes_left, Some(1));
    assert_eq!(b.health().calls, 0);
    ok(&b); // the one real probe succeeds
    assert_eq!(b.state(), State::Closed);
    old_call.failure(); // must not count in the new window
    fail(&b); // one real failure of two
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.health().failed_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn reconfiguration_keeps_the_window_and_applies_on_the_next_call() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(10))
            .minimum_calls(10)
            .failure_rate_threshold(50.0),
    );
    let mut rx = b.events();
    for i in 0..8 {
        if i % 2 == 0 { fail(&b) } else { ok(&b) }
    }
    assert_eq!(b.health().failed_calls, 4);
    b.update_config(|c| {
        c.sliding_window(SlidingWindow::CountBased(20))
            .minimum_calls(5)
            .failure_rate_threshold(55.0)
    })
    .unwrap();
    let h = b.health();
    assert_eq!((h.state, h.calls, h.failed_calls), (State::Closed, 8, 4));
    assert_eq!(b.config().get_failure_rate_threshold(), 55.0);
    ok(&b); // 4 of 9
    assert_eq!(b.state(), State::Closed);
    fail(&b); // 5 of 10 = 50 % < 55 %
    assert_eq!(b.state(), State::Closed);
    b.update_config(|c| c.failure_rate_threshold(40.0)).unwrap();
    fail(&b); // 6 of 11 >= 40 %
    assert_eq!(b.state(), State::Open);
    assert!(matches!(
        rx.try_recv().unwrap().kind,
        EventKind::Reconfigured
    ));
    // Bad values are refused and change nothing.
    assert!(b.update_config(|c| c.failure_rate_threshold(0.0)).is_err());
    assert_eq!(b.config().get_failure_rate_threshold(), 40.0);
    assert_eq!(b.name(), "test");
}

#[tokio::test(start_paused = true)]
async fn a_shrinking_window_keeps_the_most_recent_outcomes() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(8))
            .minimum_calls(8)
            .failure_rate_threshold(90.0),
    );
    for i in 0..8 {
        if i >= 5 { fail(&b) } else { ok(&b) }
    }
    b.update_config(|c| {
        c.sliding_window(SlidingWindow::CountBased(4))
            .minimum_calls(4)
    })
    .unwrap();
    let h = b.health();
    assert_eq!((h.calls, h.failed_calls), (4, 3));
    fail(&b); // F F F F
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn forced_open_disabled_and_metrics_only_behave() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(4))
            .minimum_calls(2),
    );
    b.force_open();
    let open = b.try_acquire().unwrap_err();
    assert_eq!(
        (open.state(), open.retry_after()),
        (State::ForcedOpen, None)
    );
    advance(secs(3600)).await;
    assert_eq!(b.state(), State::ForcedOpen);

    b.disable();
    for _ in 0..10 {
        fail(&b);
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.health().calls, 0, "DISABLED records nothing");

    b.metrics_only();
    for _ in 0..10 {
        fail(&b);
    }
    let h = b.health();
    assert_eq!(
        (h.state, h.calls, h.failed_calls),
        (State::MetricsOnly, 4, 4)
    );
    assert_eq!(h.failure_rate, Some(100.0));

    b.transition_to_closed();
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn ramp_up_admits_a_growing_share_after_closing() {
    let b = breaker(
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(5))
            .permitted_calls_in_half_open(1)
            .ramp_up(secs(10)),
    );
    b.transition_to_half_open();
    ok(&b);
    assert_eq!(b.state(), State::Closed);
    let share = |b: &CircuitBreaker| {
        (0..1000)
            .filter(|_| b.try_acquire().map(|p| p.success()).is_ok())
            .count()
    };
    let at_start = share(&b);
    advance(secs(5)).await;
    let half_way = share(&b);
    advance(secs(5)).await;
    let after = share(&b);
    assert!((80..=120).contains(&at_start), "{at_start}");
    assert!((500..=600).contains(&half_way), "{half_way}");
    assert_eq!(after, 1000);
    assert!(b.is_call_permitted());
}

#[tokio::test(start_paused = true)]
async fn rejections_are_events_and_counted() {
    let b = breaker(CircuitBreakerConfig::default());
    b.force_open();
    let mut rx = b.events();
    assert!(b.try_acquire().is_err());
    assert_eq!(
        rx.try_recv().unwrap().kind,
        EventKind::Rejected {
            state: State::ForcedOpen
        }
    );
    assert_eq!(b.health().rejected_calls, 1);
}
