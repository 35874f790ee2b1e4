//! A flood of new keys (a keyed layer whose key is a client-supplied path segment: any client
//! can send a new one per request) costs the registry the same per insert however many
//! breakers it holds, stays within `max_breakers`, and leaves the existing breakers alone.
//!
//! The cost is counted in allocations (this binary's global allocator counts the test
//! thread's), which a copy of the whole map per insert makes grow with the registry's size;
//! the time per insert is printed beside it.

use std::time::Instant;

use omega_circuit_breaker::{
    BreakerRegistry, CircuitBreaker, CircuitBreakerConfig, SlidingWindow, State,
};
use omega_testkit::alloc::{CountingAlloc, allocations};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn registry(max: usize) -> BreakerRegistry<String> {
    BreakerRegistry::builder()
        .config(
            CircuitBreakerConfig::default().sliding_window(SlidingWindow::ConsecutiveFailures(1)),
        )
        .max_breakers(max)
        .build()
        .unwrap()
}

/// Creates the breakers of `keys`; returns the allocations per insert and the time per insert.
fn flood(r: &BreakerRegistry<String>, keys: &[String]) -> (f64, f64) {
    let started = Instant::now();
    let n = allocations(|| {
        for k in keys {
            r.get_or_create(k.as_str());
        }
    });
    let micros = started.elapsed().as_secs_f64() * 1e6;
    (n as f64 / keys.len() as f64, micros / keys.len() as f64)
}

fn keys(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// A few breakers that exist before the flood, half of them OPEN.
fn residents(r: &BreakerRegistry<String>) -> Vec<(CircuitBreaker, State)> {
    (0..8)
        .map(|i| {
            let b = r.get_or_create(format!("resident-{i}").as_str());
            if i % 2 == 0 {
                b.try_acquire().unwrap().failure();
            } else {
                b.try_acquire().unwrap().success();
            }
            let state = b.state();
            (b, state)
        })
        .collect()
}

fn assert_kept(r: &BreakerRegistry<String>, residents: &[(CircuitBreaker, State)], all: bool) {
    for (i, (b, state)) in residents.iter().enumerate() {
        let key = format!("resident-{i}");
        if *state == State::Open || all {
            let now = r
                .get(key.as_str())
                .unwrap_or_else(|| panic!("{key} was dropped"));
            assert!(now.same_as(b), "{key} was replaced");
            assert_eq!(now.state(), *state, "{key} changed state");
        }
    }
}

#[test]
fn a_flood_of_new_keys_costs_the_same_per_insert_at_any_size() {
    const SIZE: usize = 20_000;
    const SAMPLE: usize = 1_000;
    let r = registry(1_000_000);
    let residents = residents(&r);
    let (early_allocs, early_us) = flood(&r, &keys("early", 0..SAMPLE));
    let _ = flood(&r, &keys("fill", 0..SIZE - 2 * SAMPLE));
    let (late_allocs, late_us) = flood(&r, &keys("late", 0..SAMPLE));
    eprintln!(
        "per new key: {early_allocs:.1} allocations, {early_us:.2} µs with ~{} breakers; \
         {late_allocs:.1} allocations, {late_us:.2} µs with ~{SIZE}",
        SAMPLE
    );
    assert_eq!(r.len(), SIZE + residents.len());
    // A copy of the map per insert allocates once per key held (~20,000 here); an insert
    // whose cost does not depend on the size allocates the same at 1,000 and at 20,000.
    assert!(
        late_allocs <= early_allocs + 16.0,
        "an insert costs more with more breakers: {early_allocs:.1} -> {late_allocs:.1} \
         allocations per new key"
    );
    assert_kept(&r, &residents, true);
}

#[test]
fn a_flood_at_capacity_evicts_in_constant_time_and_keeps_open_breakers() {
    const MAX: usize = 4_000;
    let r = registry(MAX);
    let residents = residents(&r);
    let _ = flood(&r, &keys("fill", 0..MAX));
    assert_eq!(r.len(), MAX);
    // Every insert now evicts one breaker.
    let (allocs, us) = flood(&r, &keys("flood", 0..10_000));
    eprintln!("at capacity ({MAX}): {allocs:.1} allocations, {us:.2} µs per new key");
    assert_eq!(r.len(), MAX, "the registry stays within max_breakers");
    // Finding a victim among all the breakers and copying the map costs thousands of
    // allocations per insert at this size; a constant-time eviction a few dozen.
    assert!(
        allocs <= 64.0,
        "{allocs:.1} allocations per new key at capacity"
    );
    // The OPEN residents survive the flood: only CLOSED breakers make room.
    assert_kept(&r, &residents, false);
    // And a lookup of an existing breaker still finds it without creating anything.
    assert_eq!(allocations(|| r.get("resident-0").unwrap()), 0);
}
