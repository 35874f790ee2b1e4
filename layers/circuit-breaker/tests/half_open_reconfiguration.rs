//! Changing `permitted_calls_in_half_open` while the breaker is in HALF_OPEN: the cycle under
//! way keeps the number of probes it started with (it admits that many and decides after that
//! many results), and the new number applies from the next HALF_OPEN, as resilience4j's
//! `HalfOpenState` captures the number when it is created.

use std::time::Duration;

use omega_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, Clock, SlidingWindow, State};
use tokio::time::advance;

fn config(probes: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::ConsecutiveFailures(1))
        .wait_duration(Duration::from_secs(10))
        .permitted_calls_in_half_open(probes)
}

fn breaker(probes: u32) -> CircuitBreaker {
    CircuitBreaker::builder("probes")
        .config(config(probes))
        .clock(Clock::system())
        .build()
        .unwrap()
}

/// Opens `b` with one failure and waits until it is HALF_OPEN.
async fn to_half_open(b: &CircuitBreaker) {
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), State::Open);
    advance(Duration::from_secs(10)).await;
    assert_eq!(b.state(), State::HalfOpen);
}

/// Takes probe permits until the breaker refuses one; the permits are returned.
fn take_all(b: &CircuitBreaker) -> Vec<omega_circuit_breaker::Permit<'_>> {
    let mut permits = Vec::new();
    while let Ok(p) = b.try_acquire() {
        permits.push(p);
        assert!(permits.len() <= 1023, "HALF_OPEN admitted without a bound");
    }
    permits
}

#[tokio::test(start_paused = true)]
async fn raising_the_probes_during_half_open_does_not_wedge_the_breaker() {
    let b = breaker(2);
    to_half_open(&b).await;
    b.update_config(|c| c.permitted_calls_in_half_open(5))
        .unwrap();

    // The cycle under way admits the 2 probes it started with, and decides on their 2 results.
    let permits = take_all(&b);
    eprintln!(
        "after raising 2 -> 5: this cycle admitted {}",
        permits.len()
    );
    assert_eq!(permits.len(), 2);
    for p in permits {
        p.success();
    }
    // Before the fix the breaker waited for 5 results with no permit left: HALF_OPEN for ever.
    advance(Duration::from_secs(3600)).await;
    let h = b.health();
    eprintln!(
        "one hour after its 2 probes succeeded: {} with {:?} permits left",
        h.state, h.probes_left
    );
    assert_eq!(h.state, State::Closed, "wedged in HALF_OPEN: {h:?}");

    // The next HALF_OPEN admits the new number, and needs all of their results.
    to_half_open(&b).await;
    let permits = take_all(&b);
    assert_eq!(permits.len(), 5);
    let mut permits = permits.into_iter();
    for p in permits.by_ref().take(4) {
        p.success();
    }
    assert_eq!(b.state(), State::HalfOpen);
    permits.next().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn lowering_the_probes_during_half_open_keeps_the_cycle_consistent() {
    let b = breaker(5);
    to_half_open(&b).await;
    b.update_config(|c| c.permitted_calls_in_half_open(2))
        .unwrap();

    let permits = take_all(&b);
    assert_eq!(permits.len(), 5, "this cycle started with 5 permits");
    let mut permits = permits.into_iter();
    for p in permits.by_ref().take(2) {
        p.success();
    }
    // Before the fix the breaker closed after 2 results while 3 admitted probes were still
    // out: their results were thrown away, and the cycle admitted more probes than it
    // judged on.
    let state = b.state();
    eprintln!(
        "after lowering 5 -> 2: 5 probes admitted, 2 succeeded, state {state}, {} still out",
        permits.len()
    );
    assert_eq!(state, State::HalfOpen, "closed with probes still out");
    // A failure among the probes admitted is still heard.
    permits.next().unwrap().failure();
    assert_eq!(b.state(), State::Open, "the third probe's failure counts");
    drop(permits);

    // The next HALF_OPEN admits the new number and closes after it.
    advance(Duration::from_secs(10)).await;
    assert_eq!(b.state(), State::HalfOpen);
    let permits = take_all(&b);
    assert_eq!(permits.len(), 2);
    for p in permits {
        p.success();
    }
    assert_eq!(b.state(), State::Closed);
}
