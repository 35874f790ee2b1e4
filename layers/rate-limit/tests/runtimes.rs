//! A Redis-backed limiter outlives the tokio runtime it was first used on: its background
//! tasks (the exact-mode batcher, the lease renewals) and its backend's connections ran
//! there, and the next runtime that uses it decides against Redis as before (a test suite
//! sharing one limiter across `#[tokio::test]`s, a program that warms up on one runtime and
//! serves on another).
#![cfg(feature = "redis")]

use std::time::Duration;

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_rate_limit::{Lease, Limit, OnBackendFailure, Quota, RateLimiter};
use omega_testkit::RedisServer;

#[test]
fn a_limiter_decides_against_redis_on_the_next_runtime() {
    let server = RedisServer::start();
    let first = omega_testkit::runtime();
    let backend = first
        .block_on(Backend::redis(
            RedisConfig::url(server.url()).op_timeout(Duration::from_millis(500)),
        ))
        .unwrap();
    // Generous quotas: every decision is admitted while Redis answers, and denied (the
    // failure policy) when it cannot be asked.
    let quota = Quota::per_second(100_000).with_burst(10_000);
    let limiter = RateLimiter::<u32>::builder()
        .limit(Limit::global("exact", quota).on_backend_failure(OnBackendFailure::Closed))
        .limit(
            Limit::global("leased", quota)
                .lease(Lease::new(4).max_hold(Duration::from_millis(200)))
                .on_backend_failure(OnBackendFailure::Closed),
        )
        .backend(backend)
        .build()
        .unwrap();

    let decide = |rt: &tokio::runtime::Runtime, n: usize| {
        rt.block_on(async {
            let mut admitted = 0;
            for _ in 0..n {
                let d = limiter.check(&0).await;
                assert!(!d.is_degraded(), "Redis answered: {d:?}");
                admitted += usize::from(d.is_allowed());
                // Leases run low and are renewed in the background meanwhile.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            admitted
        })
    };
    assert_eq!(decide(&first, 50), 50);
    drop(first);

    let calls = server.script_calls();
    let second = omega_testkit::runtime();
    assert_eq!(decide(&second, 50), 50, "the second runtime's decisions");
    let made = server.script_calls() - calls;
    assert!(
        made >= 50,
        "each exact decision is a script call on the second runtime: {made} calls"
    );
}
