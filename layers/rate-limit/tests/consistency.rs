//! Redis decides as memory does: the same quota, cost and history give the same verdict in
//! this process and on Redis (standalone, cluster, lease mode), down to the nanosecond
//! arithmetic. The property test with the time passed in lives beside the scripts
//! (`src/redis_store/tests.rs`); this file checks the case users hit, on the server's clock.
#![cfg(feature = "redis")]

use std::time::Duration;

use omega_core::redis::RedisConfig;
use omega_core::{Backend, Clock};
use omega_rate_limit::{Lease, Limit, Quota, RateLimiter};
use omega_testkit::{RedisCluster, RedisServer};

fn limiter(backend: Backend, quota: Quota, lease: Option<Lease>) -> RateLimiter<u32> {
    let limit = Limit::global("global", quota);
    let limit = match lease {
        Some(lease) => limit.lease(lease),
        None => limit,
    };
    RateLimiter::builder()
        .limit(limit)
        .cost(|cost: &u32| *cost)
        .backend(backend)
        .clock(Clock::manual())
        .build()
        .unwrap()
}

/// 3 per second, a request costing 3 (the whole burst) on a fresh key: memory admits it; so
/// must Redis, on a server, on a cluster and through a lease. With the TAT kept in
/// microsecond doubles near 1.8e15 (a step of 0.25 µs), 999,999.999 µs of cells rounded up
/// to 1,000,000 µs and the request was denied every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_costing_the_whole_burst_is_admitted_over_redis_as_in_memory() {
    let quota = Quota::per_second(3);
    let memory = limiter(Backend::memory(), quota, None);
    assert!(
        memory.check(&3).await.is_allowed(),
        "memory admits the burst"
    );

    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let timeout = Duration::from_secs(1);
    let on_server = Backend::redis(RedisConfig::url(server.url()).op_timeout(timeout))
        .await
        .unwrap();
    let on_cluster = Backend::redis(RedisConfig::cluster(cluster.urls()).op_timeout(timeout))
        .await
        .unwrap();
    let cases = [
        ("server, exact", on_server.clone(), None),
        ("cluster, exact", on_cluster.clone(), None),
        ("server, leased", on_server, Some(Lease::new(3))),
        ("cluster, leased", on_cluster, Some(Lease::new(3))),
    ];
    let mut wrong = Vec::new();
    for (i, (what, backend, lease)) in cases.into_iter().enumerate() {
        let l = RateLimiter::<u32>::builder()
            .limit({
                let limit = Limit::global(format!("whole_burst_{i}"), quota);
                match lease {
                    Some(lease) => limit.lease(lease),
                    None => limit,
                }
            })
            .cost(|cost: &u32| *cost)
            .backend(backend)
            .build()
            .unwrap();
        let whole = l.check(&3).await;
        assert!(!whole.is_degraded(), "{what}: Redis decided");
        // ... and nothing more: the bucket is empty after it.
        let more = l.check(&1).await;
        println!(
            "{what}: cost 3 admitted: {}, then cost 1 admitted: {}",
            whole.is_allowed(),
            more.is_allowed()
        );
        if !whole.is_allowed() || more.is_allowed() {
            wrong.push(format!("{what}: {whole:?} then {more:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "Redis decided otherwise than memory:\n{}",
        wrong.join("\n")
    );
}
