//! Cluster mode against a real `redis-server`: instances split one budget, an idle instance
//! leaves its share to the busy ones, a stopped one is dropped, and without Redis each keeps
//! its share.
#![cfg(feature = "redis")]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_rate_limit::adaptive::{
    AdaptiveConcurrencyLayer, AdaptiveLimiter, Aimd, Cluster, ConcurrencyLimited,
};
use omega_testkit::RedisServer;
use tower::{Layer, ServiceExt, service_fn};

const BUDGET: u32 = 100;
const PERIOD: Duration = Duration::from_millis(100);

async fn backend(url: String) -> Backend {
    Backend::redis(
        RedisConfig::url(url)
            .op_timeout(Duration::from_millis(200))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .unwrap()
}

/// The downstream every instance calls: 2 ms a call, whatever the load (the budget, not
/// latency, is what bounds it), counting the calls in flight and their peak.
#[derive(Clone, Default)]
struct Downstream {
    busy: Arc<AtomicU32>,
    peak: Arc<AtomicU32>,
}

/// One instance: its limiter, and while `busy`, 150 clients sending requests through it.
struct Instance {
    limiter: AdaptiveLimiter<()>,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Instance {
    async fn start(backend: &Backend, downstream: &Downstream, busy: bool) -> Instance {
        // An algorithm that only grows (no drops here, and a latency tolerance no RTT on a busy
        // test machine reaches), so that the share is what bounds each instance.
        let limiter = AdaptiveLimiter::<()>::builder()
            .name("db")
            .algorithm(Aimd::default().latency_tolerance(1_000.0))
            .initial(200)
            .cluster(Cluster::new(backend, BUDGET).unwrap().period(PERIOD))
            .build()
            .unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        if busy {
            let d = downstream.clone();
            let svc = AdaptiveConcurrencyLayer::new(limiter.clone()).layer(service_fn(move |()| {
                let d = d.clone();
                async move {
                    let now = d.busy.fetch_add(1, Ordering::SeqCst) + 1;
                    d.peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    d.busy.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(())
                }
            }));
            for _ in 0..150 {
                let (svc, stop, served) = (svc.clone(), stop.clone(), served.clone());
                clients.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match svc.clone().oneshot(()).await {
                            Ok(()) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                assert!(e.is::<ConcurrencyLimited>(), "{e}");
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                }));
            }
        }
        Instance {
            limiter,
            served,
            stop,
            clients,
        }
    }

    fn max(&self) -> u32 {
        self.limiter.estimate("").unwrap().max()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.unwrap();
        }
    }
}

/// Waits until `cond` holds, or fails the test after `within` with what `cond` last saw.
async fn eventually(what: &str, within: Duration, cond: impl Fn() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    while let Err(saw) = cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {saw}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Ok` when `ok`, else the instances' estimates.
fn seen(ok: bool, instances: &[&Instance]) -> Result<(), String> {
    if ok {
        return Ok(());
    }
    Err(instances
        .iter()
        .map(|i| format!("{:?}", i.limiter.estimate("").unwrap()))
        .collect::<Vec<_>>()
        .join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_instances_split_the_budget_and_an_idle_one_leaves_its_share() {
    let redis = RedisServer::start();
    let backend = backend(redis.url()).await;
    let downstream = Downstream::default();
    let a = Instance::start(&backend, &downstream, true).await;
    let idle = Instance::start(&backend, &downstream, false).await;
    // The idle instance wants 1: the busy one gets the other 99.
    eventually("busy instance's share", Duration::from_secs(3), || {
        seen(a.max() == BUDGET - 1 && idle.max() == 1, &[&a, &idle])
    })
    .await;
    let b = Instance::start(&backend, &downstream, true).await;
    // Two busy instances and the idle one: 1 for it, 49 each for the others.
    eventually("an even split", Duration::from_secs(3), || {
        seen(
            a.max() == 49 && b.max() == 49 && idle.max() == 1,
            &[&a, &b, &idle],
        )
    })
    .await;
    // Over a second of the split, the downstream never sees more than the budget.
    downstream.peak.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = downstream.peak.load(Ordering::SeqCst);
    println!(
        "split: {} / {} / {}, downstream peak {peak}, served {} and {}",
        a.max(),
        b.max(),
        idle.max(),
        a.served.load(Ordering::Relaxed),
        b.served.load(Ordering::Relaxed)
    );
    assert!(peak <= BUDGET, "{peak}");
    assert!(a.limiter.estimate("").unwrap().limit() <= 49);
    a.stop().await;
    b.stop().await;
    idle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_is_dropped_and_without_redis_shares_are_kept() {
    let mut redis = RedisServer::start();
    let backend = backend(redis.url()).await;
    let downstream = Downstream::default();
    let a = Instance::start(&backend, &downstream, true).await;
    let b = Instance::start(&backend, &downstream, true).await;
    eventually("an even split", Duration::from_secs(3), || {
        seen(a.max() == 50 && b.max() == 50, &[&a, &b])
    })
    .await;

    // B stops (its limiter is dropped with it): after three periods its entry expires and A
    // gets the whole budget.
    b.stop().await;
    eventually("the whole budget", Duration::from_secs(3), || {
        seen(a.max() == BUDGET, &[&a])
    })
    .await;

    // C starts: an even split again.
    let c = Instance::start(&backend, &downstream, true).await;
    eventually("an even split", Duration::from_secs(3), || {
        seen(a.max() == 50 && c.max() == 50, &[&a, &c])
    })
    .await;

    // Redis dies: each instance keeps its share and goes on serving.
    redis.kill();
    let served = (
        a.served.load(Ordering::Relaxed),
        c.served.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((a.max(), c.max()), (50, 50));
    assert!(a.served.load(Ordering::Relaxed) > served.0);
    assert!(c.served.load(Ordering::Relaxed) > served.1);

    // Back: the exchange resumes (C stops, and A gets the budget again).
    redis.restart();
    c.stop().await;
    eventually(
        "the whole budget after the restart",
        Duration::from_secs(5),
        || seen(a.max() == BUDGET, &[&a]),
    )
    .await;
    a.stop().await;
}

#[tokio::test]
async fn cluster_mode_needs_redis() {
    let err = Cluster::new(&Backend::memory(), 10).unwrap_err();
    assert!(err.to_string().contains("in memory"), "{err}");
}

/// An instance built on one runtime and used on the next (a test suite sharing it across
/// `#[tokio::test]`s): its exchange ended with the first runtime, and it must go on telling
/// its demand, or the others take its share while it still uses it.
#[test]
fn an_instance_used_on_the_next_runtime_keeps_exchanging() {
    let period = Duration::from_millis(50);
    let server = RedisServer::start();
    let limiter = |backend: &Backend| {
        AdaptiveLimiter::<()>::builder()
            .name("rt")
            .cluster(Cluster::new(backend, BUDGET).unwrap().period(period))
            .build()
            .unwrap()
    };
    let first = omega_testkit::runtime();
    let a = first.block_on(async { limiter(&backend(server.url()).await) });
    drop(first);
    omega_testkit::runtime().block_on(async {
        let b = limiter(&backend(server.url()).await);
        let service = |l: &AdaptiveLimiter<()>| {
            AdaptiveConcurrencyLayer::new(l.clone())
                .layer(service_fn(|()| async { Ok::<_, Infallible>(()) }))
        };
        let (sa, sb) = (service(&a), service(&b));
        // Ten periods of use: an instance that stops telling is dropped after three.
        let until = Instant::now() + period * 10;
        while Instant::now() < until {
            sa.clone().oneshot(()).await.unwrap();
            sb.clone().oneshot(()).await.unwrap();
            tokio::time::sleep(period / 5).await;
        }
        let keys = server.cli(&["KEYS", "*adaptive:rt*"]);
        let key = keys.lines().next().expect("the exchange's key");
        assert_eq!(
            server.cli(&["HLEN", key]),
            "2",
            "both instances tell their demand: {}",
            server.cli(&["HGETALL", key])
        );
    });
}
