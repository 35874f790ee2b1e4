//! Lease mode keeps its documented bound with warm instances: over any window of length W,
//! the instances together admit at most `burst + rate × (W + max_hold)` (see `Lease`). Cells
//! left in a lease must not live longer than `max_hold` through top-ups; eviction keeps most
//! leases; a limiter with leased and exact limits spends its leases locally.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_rate_limit::{Lease, Limit, Quota, RateLimiter};
use omega_testkit::{FaultProxy, RedisServer};

async fn backend(url: String) -> Backend {
    Backend::redis(RedisConfig::url(url).op_timeout(Duration::from_secs(1)))
        .await
        .unwrap()
}

/// Admits with `limiter` until it denies; returns how many it admitted and when the first
/// and last were admitted.
async fn drain(limiter: &RateLimiter<u32>) -> (u64, Instant, Instant) {
    let (first, mut last) = (Instant::now(), Instant::now());
    let mut admitted = 0;
    for _ in 0..10_000 {
        let d = limiter.check(&0).await;
        assert!(!d.is_degraded(), "{d:?}");
        if !d.is_allowed() {
            break;
        }
        admitted += 1;
        last = Instant::now();
    }
    (admitted, first, last)
}

/// A warm instance: its lease was topped up while it still held a few cells. Those cells
/// were taken long before; they must expire `max_hold` after they were taken, not ride on
/// the top-up. Rate 10/s, burst 100, leases of 48 held 5 s (a top-up starts below 12 cells):
///
/// 1. t0: the instance takes a lease of 48 cells and spends 36 of them (12 left);
/// 2. t0 + 4.9 s (the bucket in Redis is full again, the lease not yet expired): one more
///    request leaves 11 cells and starts a top-up of 48;
/// 3. t1 + 4.9 s: the instance admits all it can, from its lease and then from Redis.
///
/// By the bound, step 3 admits at most `100 + 10 × (W + 5 s)` = 150 + 10·W: the 48 cells of
/// the top-up and Redis's full bucket of 100 (148), not the 11 cells taken at t0 as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_left_at_a_top_up_expire_with_their_own_lease() {
    let server = RedisServer::start();
    let (rate, burst, hold) = (10u64, 100u64, Duration::from_secs(5));
    let limiter = RateLimiter::<u32>::builder()
        .limit(
            Limit::global(
                "global",
                Quota::per_second(rate as u32).with_burst(burst as u32),
            )
            .lease(Lease::new(48).max_hold(hold)),
        )
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    let t0 = Instant::now();
    for i in 0..36 {
        assert!(limiter.check(&0).await.is_allowed(), "request {i}");
    }
    tokio::time::sleep_until((t0 + Duration::from_millis(4_900)).into()).await;
    assert!(limiter.check(&0).await.is_allowed());
    let t1 = Instant::now();
    // The top-up runs in the background: let it land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        t1 - t0 < hold,
        "the first lease was still held at the top-up"
    );

    tokio::time::sleep_until((t1 + Duration::from_millis(4_900)).into()).await;
    let (admitted, first, last) = drain(&limiter).await;
    let window = last - first;
    let bound = burst + (rate as f64 * (window + hold).as_secs_f64()).floor() as u64;
    println!(
        "warm instance: {admitted} admitted in {window:?} after a top-up; bound {bound} \
         (burst {burst} + rate {rate}/s × (W + max_hold {hold:?}))"
    );
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
}

/// Two warm instances under load for 3 s: every window of W = 250 ms admits at most
/// `burst + rate × (W + max_hold)`, counted over all instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instances_stay_within_the_bound_in_every_window() {
    let server = RedisServer::start();
    let (rate, burst, hold) = (200u64, 40u64, Duration::from_millis(300));
    let quota = Quota::per_second(rate as u32).with_burst(burst as u32);
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(
            RateLimiter::<u32>::builder()
                .limit(Limit::global("global", quota).lease(Lease::new(16).max_hold(hold)))
                .backend(backend(server.url()).await)
                .build()
                .unwrap(),
        );
    }
    let started = Instant::now();
    let (warm, run) = (Duration::from_secs(1), Duration::from_secs(4));
    let stamps = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for limiter in &instances {
        for t in 0..8u32 {
            let (limiter, stamps) = (limiter.clone(), stamps.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < run {
                    let d = limiter.check(&t).await;
                    if d.is_allowed() && started.elapsed() >= warm {
                        stamps.lock().unwrap().push(Instant::now());
                    }
                    // Bursts and pauses, so leases run low, top up and sit idle.
                    let pause = if t % 2 == 0 { 1 } else { 7 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut stamps = stamps.lock().unwrap().clone();
    stamps.sort();
    let w = Duration::from_millis(250);
    let bound = burst + (rate as f64 * (w + hold).as_secs_f64()).floor() as u64;
    let mut worst = 0;
    let mut j = 0;
    for i in 0..stamps.len() {
        while stamps[i] - stamps[j] > w {
            j += 1;
        }
        worst = worst.max(i - j + 1);
    }
    println!(
        "{} admitted after warm-up; busiest {w:?} window: {worst}, bound {bound}",
        stamps.len()
    );
    assert!(
        worst as u64 <= bound,
        "{worst} admitted in {w:?}, bound {bound}"
    );
    assert!(stamps.len() as u64 > rate, "the limit was used");
}

/// A full lease table drops a few leases, not all: after one new key, the keys revisited
/// (newest first, so that the leases dropped to make room for the revisits are the ones
/// already revisited) still have their leases, but for the eighth that expired soonest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lease_table_keeps_most_leases() {
    let server = RedisServer::start();
    let limiter = RateLimiter::<u32>::builder()
        .limit(
            Limit::keyed("per_key", Quota::per_minute(1_000), |k: &u32| Some(*k))
                .lease(Lease::new(10).max_hold(Duration::from_secs(60))),
        )
        .max_keys(64)
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    for k in 0..64 {
        assert!(limiter.check(&k).await.is_allowed());
    }
    assert!(limiter.check(&1_000).await.is_allowed(), "one more key");
    let before = server.script_calls();
    for k in (0..64).rev() {
        assert!(limiter.check(&k).await.is_allowed());
    }
    let fetches = server.script_calls() - before;
    println!("revisiting 64 leased keys after one more: {fetches} lease fetches");
    assert!(fetches <= 16, "{fetches} of 64 leases were dropped");
}

/// The README's shape: a leased global limit and an exact per-user limit. Once warm, each
/// request makes the exact limit's one round trip and no other: the lease is spent locally
/// and topped up in the background. With 40 ms of latency each way (80 ms round trip), a
/// request that also fetched the lease would take two round trips (160 ms or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_and_exact_limiter_spends_its_lease_locally() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let limiter = RateLimiter::<u32>::builder()
        .limit(
            Limit::global("global", Quota::per_second(10_000))
                .lease(Lease::new(20).max_hold(Duration::from_secs(60))),
        )
        .limit(Limit::keyed(
            "per_user",
            Quota::per_minute(10),
            |u: &u32| Some(*u),
        ))
        .backend(backend(proxy.url()).await)
        .build()
        .unwrap();
    assert!(limiter.check(&0).await.is_allowed(), "warm-up");
    let latency = Duration::from_millis(40);
    proxy.set_latency(latency);
    let mut worst = Duration::ZERO;
    for user in 1..=60 {
        let started = Instant::now();
        let d = limiter.check(&user).await;
        worst = worst.max(started.elapsed());
        assert!(d.is_allowed() && !d.is_degraded(), "{d:?}");
    }
    println!("leased + exact through an 80 ms round trip: worst decision {worst:?}");
    assert!(
        worst < 4 * latency - Duration::from_millis(20),
        "worst {worst:?}: some request made two round trips"
    );
}
