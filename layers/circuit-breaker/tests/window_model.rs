//! The lock-free windows against a plain model: whatever the sequence of outcomes, the
//! breaker's counts equal those of "the last N calls" (count-based) or "the current run of
//! failures" (consecutive), including while the success path skips writing to a clean window.

use std::collections::VecDeque;
use std::time::Duration;

use omega_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, Clock, SlidingWindow, State};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Call {
    Ok,
    Fail,
    SlowOk,
    SlowFail,
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => Just(Call::Ok),
        2 => Just(Call::Fail),
        1 => Just(Call::SlowOk),
        1 => Just(Call::SlowFail),
    ]
}

fn run(b: &CircuitBreaker, clock: &Clock, c: Call) -> (bool, bool) {
    let permit = b.try_acquire().unwrap();
    let (failed, slow) = match c {
        Call::Ok => (false, false),
        Call::Fail => (true, false),
        Call::SlowOk => (false, true),
        Call::SlowFail => (true, true),
    };
    if slow {
        clock.advance(Duration::from_millis(10));
    }
    if failed {
        permit.failure()
    } else {
        permit.success()
    }
    (failed, slow)
}

proptest! {
    #[test]
    fn count_window_matches_the_last_n_calls(
        size in 1u32..70,
        calls in proptest::collection::vec(call(), 0..400),
    ) {
        let clock = Clock::manual();
        let b = CircuitBreaker::builder("model")
            .config(
                CircuitBreakerConfig::default()
                    .sliding_window(SlidingWindow::CountBased(size))
                    .minimum_calls(1)
                    .slow_call_duration(Duration::from_millis(10)),
            )
            .clock(clock.clone())
            .build()
            .unwrap();
        b.metrics_only(); // record everything, never open
        let mut model = VecDeque::new();
        for c in calls {
            model.push_back(run(&b, &clock, c));
            if model.len() > size as usize {
                model.pop_front();
            }
            let h = b.health();
            prop_assert_eq!(h.state, State::MetricsOnly);
            prop_assert_eq!(h.calls, model.len() as u64);
            prop_assert_eq!(h.failed_calls, model.iter().filter(|o| o.0).count() as u64);
            prop_assert_eq!(h.slow_calls, model.iter().filter(|o| o.1).count() as u64);
        }
    }

    #[test]
    fn without_slow_calls_the_fast_path_keeps_the_window_exact(
        size in 1u32..70,
        calls in proptest::collection::vec(prop_oneof![8 => Just(false), 1 => Just(true)], 0..600),
    ) {
        // No slow-call duration: successes into a clean window take the write-free path.
        let b = CircuitBreaker::with_config(
            "model",
            CircuitBreakerConfig::default()
                .sliding_window(SlidingWindow::CountBased(size))
                .minimum_calls(1),
        )
        .unwrap();
        b.metrics_only();
        let mut model = VecDeque::new();
        for failed in calls {
            let p = b.try_acquire().unwrap();
            if failed { p.failure() } else { p.success() }
            model.push_back(failed);
            if model.len() > size as usize {
                model.pop_front();
            }
            let h = b.health();
            prop_assert_eq!(h.calls, model.len() as u64);
            prop_assert_eq!(h.failed_calls, model.iter().filter(|f| **f).count() as u64);
        }
    }

    #[test]
    fn consecutive_mode_opens_exactly_at_the_nth_failure_in_a_row(
        threshold in 1u32..8,
        calls in proptest::collection::vec(prop_oneof![3 => Just(false), 2 => Just(true)], 0..200),
    ) {
        let b = CircuitBreaker::with_config(
            "model",
            CircuitBreakerConfig::default()
                .sliding_window(SlidingWindow::ConsecutiveFailures(threshold)),
        )
        .unwrap();
        let mut run = 0;
        for failed in calls {
            let p = b.try_acquire().unwrap();
            if failed { p.failure(); run += 1 } else { p.success(); run = 0 }
            let expected = if run >= threshold { State::Open } else { State::Closed };
            prop_assert_eq!(b.state(), expected);
            if expected == State::Open {
                break;
            }
        }
    }
}
