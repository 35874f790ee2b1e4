//! Lease mode against a real Redis: two instances under load stay within the global limit,
//! most decisions make no round trip, and leased and exact limits combine atomically.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_rate_limit::{Lease, Limit, Quota, RateLimiter};
use omega_testkit::{RedisCluster, RedisServer};

async fn backend(url: String) -> Backend {
    Backend::redis(RedisConfig::url(url).op_timeout(Duration::from_millis(200)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leasing_instances_admit_no_more_than_the_global_limit() {
    let server = RedisServer::start();
    let (rate, burst) = (300u64, 60u64);
    let quota = Quota::per_second(rate as u32).with_burst(burst as u32);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let limiter = RateLimiter::<u32>::builder()
            .limit(
                Limit::global("global", quota)
                    .lease(Lease::new(20).max_hold(Duration::from_millis(100))),
            )
            .backend(backend(server.url()).await)
            .build()
            .unwrap();
        instances.push(limiter);
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for limiter in &instances {
        for t in 0..16 {
            let limiter = limiter.clone();
            let (admitted, denied) = (admitted.clone(), denied.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < run_for {
                    let d = limiter.check(&t).await;
                    assert!(!d.is_degraded(), "Redis answered every lease call");
                    if d.is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                    // Denials are local and instant; yield so the load stays a load.
                    tokio::task::yield_now().await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed);
    let denied = denied.load(Ordering::Relaxed);
    // Every admitted cell was leased from Redis first: the exact mode's bound holds.
    let bound = burst + (rate as f64 * elapsed).ceil() as u64;
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
    assert!(denied > 0, "the load went over the limit");
    // Leases dropped unused cost some admissions, but the limit was used.
    assert!(admitted >= rate, "{admitted} admitted in {elapsed:.2} s");
    // Denials were decided locally: far fewer script calls than decisions.
    let calls = server.script_calls();
    eprintln!("{admitted} admitted (bound {bound}), {denied} denied, {calls} script calls");
    assert!(
        calls * 4 < admitted + denied,
        "{calls} script calls for {} decisions",
        admitted + denied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_serves_a_batch_of_decisions_per_round_trip() {
    let server = RedisServer::start();
    let limiter = RateLimiter::<u32>::builder()
        .limit(
            Limit::global("global", Quota::per_second(1_000_000).with_burst(100_000))
                .lease(Lease::new(50).max_hold(Duration::from_secs(30))),
        )
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    let before = server.script_calls();
    // 64 decisions in flight at a time; concurrent callers wait for one fetch.
    let mut admitted = 0;
    for _ in 0..16 {
        let limiter = &limiter;
        let batch: Vec<_> = (0..64u32)
            .map(|i| async move { limiter.check(&i).await.is_allowed() })
            .collect();
        for allowed in futures_util::future::join_all(batch).await {
            assert!(allowed);
            admitted += 1;
        }
    }
    let calls = server.script_calls() - before;
    // 1,024 decisions from leases of 50 cells: 21 fetches (a little more if the
    // clock is read between a lease running dry and its renewal).
    assert!(
        (21..=30).contains(&calls),
        "{calls} calls for {admitted} decisions"
    );
    let binding_remaining = limiter.check(&0).await.binding().unwrap().remaining;
    assert!(
        binding_remaining < 50,
        "remaining reports the lease: {binding_remaining}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_and_exact_limits_combine_and_a_denial_gives_the_lease_back() {
    let server = RedisServer::start();
    let limiter = RateLimiter::<String>::builder()
        .limit(
            Limit::global("global", Quota::per_minute(20))
                .lease(Lease::new(10).max_hold(Duration::from_secs(60))),
        )
        .limit(Limit::keyed(
            "per_user",
            Quota::per_minute(2),
            |u: &String| Some(u.clone()),
        ))
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    let ada = "ada".to_owned();
    assert!(limiter.check(&ada).await.is_allowed());
    assert!(limiter.check(&ada).await.is_allowed());
    // Ada's exact per-user limit denies; the global lease keeps its cells.
    for _ in 0..5 {
        let d = limiter.check(&ada).await;
        assert_eq!(d.denied().unwrap().limit(), "per_user");
    }
    // One lease of 10 cells was taken; 2 spent; 8 left for others, then one more lease of
    // the 10 cells Redis still holds, then the global limit denies.
    let mut admitted = 0;
    for i in 0..30 {
        if limiter.check(&format!("user{i}")).await.is_allowed() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 18);
    let d = limiter.check(&"zed".to_owned()).await;
    assert_eq!(d.denied().unwrap().limit(), "global");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_fetch_that_fails_follows_the_failure_policy_and_recovers() {
    let mut server = RedisServer::start();
    let limiter = RateLimiter::<u32>::builder()
        .limit(
            Limit::global("global", Quota::per_second(1_000).with_burst(10))
                .lease(Lease::new(5).max_hold(Duration::from_millis(50)))
                .on_backend_failure(omega_rate_limit::OnBackendFailure::Closed),
        )
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    assert!(limiter.check(&0).await.is_allowed());
    server.kill();
    tokio::time::sleep(Duration::from_millis(60)).await; // the lease expires
    let started = Instant::now();
    let d = limiter.check(&0).await;
    let took = started.elapsed();
    println!("lease fetch from a killed Redis: decided in {took:?} (op timeout 200 ms)");
    assert!(d.is_degraded() && !d.is_allowed(), "{d:?}");
    // One deadline: the operation timeout (200 ms) at most, under the 400 ms of two waits.
    assert!(took < Duration::from_millis(400), "{took:?}");
    server.restart();
    let mut back = false;
    for _ in 0..100 {
        let d = limiter.check(&0).await;
        if !d.is_degraded() && d.is_allowed() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "leases come from Redis again after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_limit_refuses_requests_without_its_key_and_gives_the_lease_back() {
    let server = RedisServer::start();
    let limiter = RateLimiter::<Option<u32>>::builder()
        .limit(
            Limit::global("global", Quota::per_minute(3))
                .lease(Lease::new(3).max_hold(Duration::from_secs(60))),
        )
        .limit(
            Limit::keyed("per_user", Quota::per_minute(100), |u: &Option<u32>| *u)
                .lease(Lease::new(10).max_hold(Duration::from_secs(60)))
                .on_missing_key(omega_core::key::MissingKey::Reject),
        )
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    // The first request takes the leases; later ones are decided in this process.
    assert!(limiter.check(&Some(1)).await.is_allowed());
    for _ in 0..5 {
        let d = limiter.check(&None).await;
        assert!(d.key_missing().is_some(), "{d:?}");
    }
    // The refusals gave back what the global lease paid: its two other cells are there.
    assert!(limiter.check(&Some(2)).await.is_allowed());
    assert!(limiter.check(&Some(3)).await.is_allowed());
    let d = limiter.check(&Some(4)).await;
    assert_eq!(d.denied().unwrap().limit(), "global");
}

/// Keys in use renew their leases before they expire, in the background, and renewals that
/// come due together share one script call: 200 keys, each asked every few milliseconds for
/// well over a second, cost Redis a few calls per renewal window rather than a call per key
/// each time its lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_keys_in_use_are_renewed_in_shared_calls() {
    let server = RedisServer::start();
    let stats = || (server.script_calls(), refused_script_calls(&server));
    let run = renew_keys_in_use(backend(server.url()).await, stats).await;
    assert!(
        run.calls * 4 < run.per_key_each_hold,
        "{} calls: renewals do not share calls (one per key per hold: {})",
        run.calls,
        run.per_key_each_hold
    );
}

/// On a cluster the renewals of one window go in one call per hash slot: Redis refuses no
/// call for keys of several slots (`CROSSSLOT`), and every decision is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_a_cluster_are_renewed_in_one_call_per_slot() {
    let cluster = RedisCluster::start();
    let backend =
        Backend::redis(RedisConfig::cluster(cluster.urls()).op_timeout(Duration::from_millis(500)))
            .await
            .unwrap();
    let stats = || {
        let nodes = cluster.nodes().iter();
        let calls = nodes.clone().map(RedisServer::script_calls).sum();
        (calls, nodes.map(refused_script_calls).sum())
    };
    let run = renew_keys_in_use(backend, stats).await;
    assert_eq!(run.refused, 0, "script calls refused by the cluster");
    assert!(run.calls > 0);
}

/// Script calls the server refused or that failed (a first `EVALSHA` of a script the server
/// does not hold yet fails, and is sent again as `EVAL`).
fn refused_script_calls(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let field = |l: &str, name: &str| -> u64 {
        l.split(name)
            .nth(1)
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| field(l, "rejected_calls=") + field(l, "failed_calls="))
        .sum()
}

struct RenewalRun {
    /// Script calls after the first lease of every key.
    calls: u64,
    /// Script calls refused or failed after the first lease of every key.
    refused: u64,
    /// The calls if every key fetched once per hold.
    per_key_each_hold: u64,
}

/// 200 keys with leases held 200 ms, each asked every few milliseconds for 1.5 s; every
/// decision must be admitted.
async fn renew_keys_in_use(backend: Backend, stats: impl Fn() -> (u64, u64)) -> RenewalRun {
    let hold = Duration::from_millis(200);
    let keys = 200u32;
    let limiter = RateLimiter::<u32>::builder()
        .limit(
            Limit::keyed("per_key", Quota::per_second(1_000_000), |k: &u32| Some(*k))
                .lease(Lease::new(1_000).max_hold(hold)),
        )
        .backend(backend)
        .build()
        .unwrap();
    for k in 0..keys {
        assert!(limiter.check(&k).await.is_allowed());
    }
    let before = stats();
    let started = Instant::now();
    let mut decisions = 0u64;
    while started.elapsed() < Duration::from_millis(1_500) {
        for k in 0..keys {
            assert!(limiter.check(&k).await.is_allowed(), "key {k}");
            decisions += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let after = stats();
    let calls = after.0 - before.0;
    // Fetched when they expire, one call per key per hold: 200 × 1.5 s / 200 ms = 1,500.
    let per_key_each_hold = u64::from(keys) * elapsed.as_millis() as u64 / hold.as_millis() as u64;
    println!(
        "{calls} script calls for {decisions} decisions over {keys} keys in {elapsed:?} \
         (one call per key per hold would be {per_key_each_hold})"
    );
    RenewalRun {
        calls,
        refused: after.1 - before.1,
        per_key_each_hold,
    }
}
