//! One deadline per decision: with Redis paused (SIGSTOP) under many concurrent requests,
//! every decision returns within the operation timeout plus a small constant, then applies
//! its limits' failure policies. The worst case would grow with a chain of waits: lease
//! fetches that run one after another, a leased and an exact limit that each wait the
//! whole timeout, per-slot calls on a cluster.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_rate_limit::{Lease, Limit, OnBackendFailure, Quota, RateLimiter};
use omega_testkit::{RedisCluster, RedisServer};

/// The operation timeout of these tests.
const T: Duration = Duration::from_millis(200);
/// Concurrent requests while Redis is paused.
const N: usize = 120;

#[derive(Clone, Debug)]
struct Req {
    user: String,
}

fn config(cfg: RedisConfig) -> RedisConfig {
    cfg.op_timeout(T)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// A global leased limit and an exact per-user limit (the README's shape), plus an exact
/// per-team limit so that a request's exact keys spread over the cluster's slots.
fn limiter(backend: Backend) -> RateLimiter<Req> {
    let open = OnBackendFailure::Open;
    RateLimiter::builder()
        .limit(
            Limit::global("global", Quota::per_second(100_000))
                .lease(Lease::new(50).max_hold(Duration::from_millis(50)))
                .on_backend_failure(open),
        )
        .limit(
            Limit::keyed("per_user", Quota::per_second(1_000), |r: &Req| {
                Some(r.user.clone())
            })
            .on_backend_failure(open),
        )
        .limit(
            Limit::keyed("per_team", Quota::per_second(1_000), |r: &Req| {
                Some(format!("team-{}", r.user.len() % 3))
            })
            .on_backend_failure(open),
        )
        .backend(backend)
        .build()
        .unwrap()
}

/// `N` concurrent decisions; the slowest one's latency (a decision still pending after
/// 20 timeouts counts as 20 timeouts).
async fn worst_of_concurrent(limiter: &RateLimiter<Req>) -> (Duration, usize) {
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let r = Req {
                    user: format!("user{i}"),
                };
                let started = Instant::now();
                let degraded = match tokio::time::timeout(20 * T, limiter.check(&r)).await {
                    Ok(d) => {
                        assert!(d.is_allowed(), "fail open admits: {d:?}");
                        d.is_degraded()
                    }
                    Err(_) => true,
                };
                (started.elapsed(), degraded)
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut degraded = 0;
    for t in tasks {
        let (took, d) = t.await.unwrap();
        worst = worst.max(took);
        degraded += usize::from(d);
    }
    (worst, degraded)
}

/// The node that serves `key` (the others answer `MOVED`).
fn node_of(cluster: &RedisCluster, key: &str) -> usize {
    (0..3)
        .find(|&n| !cluster.nodes()[n].cli(&["GET", key]).starts_with("MOVED"))
        .expect("some node serves the key")
}

async fn warm_up(limiter: &RateLimiter<Req>) {
    for i in 0..N {
        let d = limiter
            .check(&Req {
                user: format!("user{i}"),
            })
            .await;
        assert!(d.is_allowed() && !d.is_degraded(), "{d:?}");
    }
    // The global lease expires (max_hold 50 ms): every request below must fetch it again.
    tokio::time::sleep(Duration::from_millis(80)).await;
}

/// A paused standalone Redis: 120 concurrent requests of a leased + exact limiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_costs_each_decision_one_timeout_at_most() {
    let server = RedisServer::start();
    let backend = Backend::redis(config(RedisConfig::url(server.url())))
        .await
        .unwrap();
    let limiter = limiter(backend);
    warm_up(&limiter).await;

    server.pause();
    let (worst, degraded) = worst_of_concurrent(&limiter).await;
    server.resume();
    println!(
        "standalone paused: worst decision {worst:?} over {N} concurrent requests \
         ({degraded} degraded), op timeout {T:?}"
    );
    assert!(degraded > 0, "Redis was paused");
    // One timeout plus scheduling; a chain of waits (two timeouts or more) breaks this.
    assert!(
        worst < 2 * T,
        "worst decision {worst:?} with an op timeout of {T:?}"
    );
}

/// One paused node of the 3-node cluster: the same requests; the node holds the global
/// lease's key and some of the per-user and per-team keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_cluster_node_costs_each_decision_one_timeout_at_most() {
    let cluster = RedisCluster::start();
    let backend = Backend::redis(config(RedisConfig::cluster(cluster.urls())))
        .await
        .unwrap();
    let limiter = limiter(backend.clone());
    warm_up(&limiter).await;
    let node = node_of(&cluster, &backend.keyspace().tagged("rl:global", &[]));

    cluster.nodes()[node].pause();
    let (worst, degraded) = worst_of_concurrent(&limiter).await;
    cluster.nodes()[node].resume();
    println!(
        "cluster node paused: worst decision {worst:?} over {N} concurrent requests \
         ({degraded} degraded), op timeout {T:?}"
    );
    assert!(degraded > 0, "a node was paused");
    assert!(
        worst < 2 * T,
        "worst decision {worst:?} with an op timeout of {T:?}"
    );
}

/// A request whose exact limits live on two nodes, one paused: per-slot calls and the
/// refunds that follow share the one deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_slot_calls_and_refunds_share_one_deadline() {
    let cluster = RedisCluster::start();
    let backend = Backend::redis(config(RedisConfig::cluster(cluster.urls())))
        .await
        .unwrap();
    let open = OnBackendFailure::Open;
    let limiter = RateLimiter::<Req>::builder()
        .limit(Limit::global("a", Quota::per_second(100_000)).on_backend_failure(open))
        .limit(
            Limit::keyed("b", Quota::per_second(100_000), |r: &Req| {
                Some(r.user.clone())
            })
            .on_backend_failure(open),
        )
        .limit(Limit::global("c", Quota::per_second(100_000)).on_backend_failure(open))
        .backend(backend.clone())
        .build()
        .unwrap();
    warm_up(&limiter).await;
    // Pause the node of the last global limit, so earlier slots take before it times out.
    let node = node_of(&cluster, &backend.keyspace().tagged("rl:c", &[]));
    cluster.nodes()[node].pause();
    let (worst, degraded) = worst_of_concurrent(&limiter).await;
    cluster.nodes()[node].resume();
    println!("per-slot calls, one node paused: worst decision {worst:?} ({degraded} degraded)");
    assert!(degraded > 0, "a node was paused");
    assert!(worst < 2 * T, "worst decision {worst:?}, op timeout {T:?}");
}
