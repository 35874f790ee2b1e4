//! Quota changes are atomic: a decision racing `set_quota` sees the old quota or the new one,
//! never a mix, and a refund gives back exactly what its step took.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use omega_core::Clock;
use omega_rate_limit::{Limit, Quota, RateLimiter};

/// Two quotas whose mix would be wrong: A is 1 per second with a burst of 1,000 (an interval
/// of 1 s, a capacity of 1,000 s), B is 1,000 per second with a burst of 1 (1 ms, 1 ms).
/// A request costing 500,000 is above both bursts, so neither admits it; B's interval with
/// A's capacity (a burst a million cells deep) would.
#[test]
fn a_decision_racing_set_quota_never_mixes_two_quotas() {
    let a = Quota::per_second(1).with_burst(1_000);
    let b = Quota::per_second(1_000).with_burst(1);
    let clock = Clock::manual();
    clock.set(1_000_000_000_000);
    let limiter = RateLimiter::<u32>::builder()
        .limit(Limit::global("global", a))
        .cost(|c: &u32| *c)
        .clock(clock)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (limiter, stop) = (limiter.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                limiter.set_quota("global", b).unwrap();
                limiter.set_quota("global", a).unwrap();
                flips += 2;
            }
            flips
        })
    };
    let started = Instant::now();
    let (mut checks, mut admitted) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..1_000 {
            checks += 1;
            if limiter.admit(&500_000).is_ok() {
                admitted += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    println!(
        "{checks} checks against {flips} quota changes: {admitted} admitted a cost of 500,000"
    );
    assert_eq!(admitted, 0, "a decision saw B's interval with A's capacity");
}

/// A request admitted by one limit and denied by the next gives back what the first took,
/// even when the first limit's quota changes in between (here: while the second limit's key
/// is read).
#[test]
fn a_refund_gives_back_what_was_taken_across_a_quota_change() {
    let slow = Quota::per_second(1).with_burst(10);
    let fast = Quota::per_second(1_000).with_burst(10);
    let clock = Clock::manual();
    clock.set(1_000_000_000_000);
    let shared: Arc<OnceLock<RateLimiter<u32>>> = Arc::new(OnceLock::new());
    let during_check = shared.clone();
    let limiter = RateLimiter::<u32>::builder()
        .limit(Limit::global("first", slow))
        .limit(Limit::keyed(
            "second",
            Quota::per_hour(1),
            move |user: &u32| {
                // The first limit's quota changes after it took its cell for this request.
                if let Some(l) = during_check.get() {
                    l.set_quota("first", fast).unwrap();
                }
                Some(*user)
            },
        ))
        .clock(clock.clone())
        .build()
        .unwrap();
    // User 7 spends the second limit's only cell.
    assert!(limiter.admit(&7).is_ok());
    shared.set(limiter.clone()).unwrap();
    // Denied by the second limit: the first gives its cell back (1 s of it, as taken).
    assert_eq!(limiter.admit(&7).unwrap_err().limit(), "second");
    limiter.set_quota("first", slow).unwrap();
    // The first limit had 10 cells and the first request took one: 9 remain, not 8. (Each
    // check below changes the first limit's quota again while reading the second key: it is
    // set back before the next check, so the first limit decides under `slow`.)
    let mut left = 0;
    for user in 100..200 {
        // Users whose second-limit key is fresh; the first limit decides.
        match limiter.check_local(&user).refused() {
            None => left += 1,
            Some(r) => {
                assert_eq!(r.limit(), "first");
                break;
            }
        }
        limiter.set_quota("first", slow).unwrap();
    }
    assert_eq!(left, 9, "the refund gave back another amount than it took");
}
