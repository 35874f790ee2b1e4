//! Redis killed, restarted, paused and resumed under load: no request fails because of the
//! cache; L1 keeps serving, misses go upstream. The worst latency of each phase is printed.
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use omega_testkit::RedisServer;
use support::*;
use tower::ServiceExt;

const PHASES: [&str; 5] = ["up", "killed", "restarted", "paused", "resumed"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_paused_under_load_fails_no_request() {
    let mut server = RedisServer::start();
    // Short TTLs keep misses (and so L2 lookups and stores) coming all the time.
    let tune = |p: omega_cache::Partition<Bytes>| p.ttl(Duration::from_millis(100));
    let cache = instance_with(&server.url(), "faults", Duration::from_millis(50), tune).await;
    let up = Upstream::new(Duration::from_millis(1));
    let svc = service(&cache, &up);

    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (svc, phase, stop, errors) = (svc.clone(), phase.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut worst = [Duration::ZERO; PHASES.len()];
            let mut count = [0u64; PHASES.len()];
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 31 + 7) % 200;
                let p = usize::from(phase.load(Ordering::Relaxed));
                let t0 = Instant::now();
                match svc.clone().oneshot(format!("k{i}")).await {
                    Ok(v) => assert!(v.starts_with(format!("k{i}#").as_bytes())),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                worst[p] = worst[p].max(t0.elapsed());
                count[p] += 1;
                tokio::task::yield_now().await;
            }
            (worst, count)
        }));
    }
    let step = |n: u8, d: u64| {
        let phase = phase.clone();
        async move {
            phase.store(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
    };
    step(0, 700).await;
    server.kill();
    step(1, 1500).await;
    server.restart();
    step(2, 1500).await;
    eventually("L2 back after the restart", || cache.is_synced()).await;
    server.pause();
    step(3, 2000).await;
    server.resume();
    step(4, 1500).await;
    stop.store(true, Ordering::Relaxed);

    let mut worst = [Duration::ZERO; PHASES.len()];
    let mut count = [0u64; PHASES.len()];
    for t in tasks {
        let (w, c) = t.await.unwrap();
        for p in 0..PHASES.len() {
            worst[p] = worst[p].max(w[p]);
            count[p] += c[p];
        }
    }
    for p in 0..PHASES.len() {
        eprintln!(
            "redis {:>9}: {:>7} requests, worst latency {:?}",
            PHASES[p], count[p], worst[p]
        );
    }
    eprintln!("stats {:?}, upstream calls {}", cache.stats(), up.calls());
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "no request may fail because of the cache"
    );
    assert!(count.iter().all(|c| *c > 0), "{count:?}");
    eventually("L2 back after the pause", || cache.is_synced()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_comes_back_after_a_short_pause_that_did_not_drop_the_connection() {
    let server = RedisServer::start();
    let fast = Duration::from_millis(50);
    let a = instance_with(&server.url(), "probe", fast, |p| p).await;
    let b = instance_with(&server.url(), "probe", fast, |p| p).await;
    let up = Upstream::new(Duration::ZERO);
    let (sa, sb) = (service(&a, &up), service(&b, &up));
    // One operation times out: the backend is marked down, its connection kept.
    server.pause();
    assert_eq!(sb.clone().oneshot("x".into()).await.unwrap(), "x#1");
    server.resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        let key = format!("y{i}");
        sa.clone().oneshot(key.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        sb.clone().oneshot(key).await.unwrap();
    }
    let s = b.stats();
    eprintln!("after the pause: B {s:?}");
    assert!(s.l2_hits >= 15, "B reads L2 again: {s:?}");
}
