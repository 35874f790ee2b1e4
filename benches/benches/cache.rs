//! The cache beside tower-resilience's cache layer and moka itself, in one run.
//!
//! - `cache_l1_hit`: a hit through the Tower layer (`omega`: omega-cache's `CacheLayer`;
//!   `tower_resilience`: tower-resilience-cache's `CacheLayer`), and moka's own synchronous
//!   lookup (`moka_direct`: the floor under omega's L1). 64 hot keys, `Bytes` values, the inner
//!   service a constant; each call is `poll_ready`, `call` and one poll of the future.
//! - `cache_l1_hit_2_threads`: the same hits from two threads on one shared cache (per call per
//!   thread).
//! - `cache_l2_hit`: `omega` through the layer, every lookup an L2 hit in a local
//!   `redis-server` (an L2-only partition: no L1), 1,000 keys stored by another instance. The
//!   median is printed too.
//! - The hit ratio on a Zipf(1.0) trace of 5,000,000 requests over 10,000 keys of equal size,
//!   the cache holding 1% of them (fixed seed): omega (moka's TinyLFU under the layer), an LRU,
//!   the optimum of a cache holding a fixed set (the 100 most requested keys of the trace), and
//!   Belady's clairvoyant optimum, printed before the timed benches.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use omega_cache::{Cache, CacheLayer, Partition, RawBytes, Resolver, Rules, Verdict};
use rand::SeedableRng;
use rand_distr::Distribution;
use tower_layer::Layer;
use tower_service::Service;

/// The cheapest inner service: always ready, answers a constant body.
#[derive(Clone)]
struct Cheap(Bytes);

impl Service<u64> for Cheap {
    type Response = Bytes;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Bytes, std::io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: u64) -> Self::Future {
        std::future::ready(Ok(self.0.clone()))
    }
}

/// `poll_ready`, `call`, one poll: a hit is ready at once in every layer measured.
fn hit<S: Service<u64>>(svc: &mut S, key: u64) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(key));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("a hit must be ready at once"),
    }
}

const HOT: u64 = 64;

fn value() -> Bytes {
    Bytes::from(vec![b'v'; 256])
}

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let cache = Cache::<Bytes>::builder().codec(RawBytes).build().unwrap();
    let mut omega =
        CacheLayer::new(cache.clone(), Resolver::new(|k: &u64| Some(*k))).layer(Cheap(value()));
    rt.block_on(async {
        for k in 0..HOT {
            tower::ServiceExt::ready(&mut omega)
                .await
                .unwrap()
                .call(k)
                .await
                .unwrap();
        }
    });

    let mut resilience = tower_resilience_cache::CacheLayer::builder()
        .max_size(1024)
        .ttl(Duration::from_secs(3600))
        .key_extractor(|k: &u64| *k)
        .build()
        .unwrap()
        .layer(Cheap(value()));
    rt.block_on(async {
        for k in 0..HOT {
            tower::ServiceExt::ready(&mut resilience)
                .await
                .unwrap()
                .call(k)
                .await
                .unwrap();
        }
    });

    let moka: moka::sync::Cache<u64, Bytes> =
        moka::sync::Cache::builder().max_capacity(1024).build();
    for k in 0..HOT {
        moka.insert(k, value());
    }

    let mut g = c.benchmark_group("cache_l1_hit");
    let mut k = 0u64;
    g.bench_function("omega", |b| {
        b.iter(|| {
            k = (k + 1) % HOT;
            black_box(hit(&mut omega, black_box(k)))
        })
    });
    g.bench_function("tower_resilience", |b| {
        b.iter(|| {
            k = (k + 1) % HOT;
            black_box(hit(&mut resilience, black_box(k)))
        })
    });
    g.bench_function("moka_direct", |b| {
        b.iter(|| {
            k = (k + 1) % HOT;
            black_box(moka.get(&black_box(k)).unwrap())
        })
    });
    g.finish();

    // Two threads on one shared cache: the time is per call per thread.
    let mut g = c.benchmark_group("cache_l1_hit_2_threads");
    fn two<S: Service<u64> + Clone + Send>(b: &mut criterion::Bencher<'_>, svc: &S)
    where
        S::Error: std::fmt::Debug,
        S::Response: Send,
    {
        b.iter_custom(|iters| {
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                let runs: Vec<_> = (0..2u64)
                    .map(|t| {
                        let (mut svc, barrier) = (svc.clone(), &barrier);
                        scope.spawn(move || {
                            barrier.wait();
                            let t0 = Instant::now();
                            for i in 0..iters {
                                black_box(hit(&mut svc, (i + t * 7) % HOT));
                            }
                            t0.elapsed()
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).max().unwrap()
            })
        })
    }
    g.bench_function("omega", |b| two(b, &omega));
    g.bench_function("tower_resilience", |b| two(b, &resilience));
    g.finish();
    let s = cache.stats();
    assert_eq!(s.misses, HOT, "every measured omega call was a hit: {s:?}");
}

fn l2_hit(c: &mut Criterion) {
    let server = omega_testkit::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let instance = |in_memory: bool| {
        let url = server.url();
        rt.block_on(async move {
            let backend =
                omega_core::redis::RedisBackend::connect(omega_core::redis::RedisConfig::url(url))
                    .await
                    .unwrap();
            let cache = Cache::<Bytes>::builder()
                .codec(RawBytes)
                .partition(Partition::new("default").in_memory(in_memory))
                .redis(backend)
                .build()
                .unwrap();
            while !cache.is_synced() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cache
        })
    };
    let writer = instance(true);
    rt.block_on(async {
        for k in 0..1000u64 {
            writer
                .get_with("default", &k.to_le_bytes(), || async {
                    Ok::<_, std::io::Error>((
                        value(),
                        Verdict::Store(Rules::new().ttl(Duration::from_secs(3600))),
                    ))
                })
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let reader = instance(false);
    let svc = CacheLayer::new(reader.clone(), Resolver::new(|k: &u64| Some(*k)))
        .layer(Cheap(Bytes::new()));
    let call = |k: u64| {
        let svc = svc.clone();
        async move { tower::ServiceExt::oneshot(svc, k).await.unwrap() }
    };

    // Our own median, besides criterion's estimate.
    let mut samples: Vec<Duration> = rt.block_on(async {
        let mut v = Vec::with_capacity(2000);
        for i in 0..2000u64 {
            let t0 = Instant::now();
            let body = call(i % 1000).await;
            v.push(t0.elapsed());
            assert_eq!(body.len(), 256, "an L2 hit, not the inner service");
        }
        v
    });
    samples.sort();
    eprintln!(
        "cache_l2_hit/omega: median {:?}, p99 {:?} over 2000 L2 hits (one EVALSHA each)",
        samples[1000], samples[1980]
    );

    let mut g = c.benchmark_group("cache_l2_hit");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    let mut k = 0u64;
    g.bench_function("omega", |b| {
        b.iter(|| {
            k = (k + 1) % 1000;
            rt.block_on(call(k))
        })
    });
    g.finish();
    let s = reader.stats();
    assert_eq!(s.upstream, 0, "every lookup was an L2 hit: {s:?}");
}

/// omega, LRU and the optimum on one Zipf(1.0) trace.
fn hit_ratios() {
    const KEYS: u64 = 10_000;
    const REQUESTS: usize = 5_000_000;
    const CAPACITY: usize = 100;
    let zipf = rand_distr::Zipf::new(KEYS as f64, 1.0).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let trace: Vec<u64> = (0..REQUESTS)
        .map(|_| zipf.sample(&mut rng) as u64 - 1)
        .collect();

    // omega: every entry has the same weight, the partition holds CAPACITY of them.
    let value = Bytes::from(vec![0u8; 64]);
    let weight = 64 + 8 + 160; // encoded value + key + the fixed overhead per entry
    let cache = Cache::<Bytes>::builder()
        .codec(RawBytes)
        .partition(
            Partition::new("z")
                .capacity((CAPACITY * weight) as u64)
                .ttl(Duration::from_secs(3600)),
        )
        .build()
        .unwrap();
    let mut hits = 0usize;
    for k in &trace {
        let key = k.to_le_bytes();
        if cache.get("z", &key).is_some() {
            hits += 1;
        } else {
            cache
                .insert("z", &key, value.clone(), Verdict::Store(Rules::new()))
                .unwrap();
        }
    }
    let omega = hits as f64 / REQUESTS as f64;

    let mut lru = lru::LruCache::new(std::num::NonZeroUsize::new(CAPACITY).unwrap());
    let mut hits = 0usize;
    for k in &trace {
        if lru.get(k).is_some() {
            hits += 1;
        } else {
            lru.put(*k, ());
        }
    }
    let lru = hits as f64 / REQUESTS as f64;

    // The optimum of a cache that keeps a fixed set: the CAPACITY most requested keys of the
    // trace, held throughout (≈ 53% for Zipf(1.0) over 10,000 keys).
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for k in &trace {
        *counts.entry(*k).or_default() += 1;
    }
    let mut counts: Vec<usize> = counts.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let fixed = counts.iter().take(CAPACITY).sum::<usize>() as f64 / REQUESTS as f64;
    // Belady's clairvoyant optimum (knows the future of the trace), with and without the
    // freedom not to admit.
    let belady_bypass = belady(&trace, CAPACITY, true) as f64 / REQUESTS as f64;
    let belady_admit = belady(&trace, CAPACITY, false) as f64 / REQUESTS as f64;
    eprintln!(
        "hit ratio, Zipf(1.0), {KEYS} keys, capacity {CAPACITY} (1%), {REQUESTS} requests, seed 0x5eed: \
         omega {:.2}%, LRU {:.2}%, optimum {:.2}% (the {CAPACITY} most requested keys held throughout); \
         omega/optimum {:.3}; Belady (clairvoyant) {:.2}% ({:.2}% admitting every miss), omega/Belady {:.3}",
        omega * 100.0,
        lru * 100.0,
        fixed * 100.0,
        omega / fixed,
        belady_bypass * 100.0,
        belady_admit * 100.0,
        omega / belady_bypass,
    );
}

/// Belady's optimum: on a miss with a full cache, the key used furthest in the future is the
/// one left out; with `bypass`, that may be the new key itself (the optimum of a cache that may
/// refuse admission, as TinyLFU does), else the new key is always admitted.
fn belady(trace: &[u64], capacity: usize, bypass: bool) -> usize {
    let mut next = vec![usize::MAX; trace.len()];
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, k) in trace.iter().enumerate().rev() {
        if let Some(&j) = last.get(k) {
            next[i] = j;
        }
        last.insert(*k, i);
    }
    let mut cached: BTreeSet<(usize, u64)> = BTreeSet::new();
    let mut at: HashMap<u64, usize> = HashMap::new();
    let mut hits = 0;
    for (i, k) in trace.iter().enumerate() {
        if let Some(n) = at.remove(k) {
            hits += 1;
            cached.remove(&(n, *k));
        } else if cached.len() == capacity {
            let &(far, victim) = cached.last().unwrap();
            if bypass && far <= next[i] {
                continue; // the new key is needed last: leave it out
            }
            cached.remove(&(far, victim));
            at.remove(&victim);
        }
        cached.insert((next[i], *k));
        at.insert(*k, next[i]);
    }
    hits
}

/// With `OMEGA_CACHE_HITS=n` set, the bench makes `n` hits per row of `cache_l1_hit` in one
/// function per row (`rows::omega`, ...) and nothing else, for an instruction count that does
/// not depend on the machine's load:
/// `OMEGA_CACHE_HITS=100000 valgrind --tool=callgrind <bench binary>`, then
/// `callgrind_annotate --inclusive=yes` and the rows' totals divided by `n`.
mod rows {
    use super::*;

    type Omega = <CacheLayer<Bytes, Resolver<fn(&u64) -> Option<u64>>> as Layer<Cheap>>::Service;
    type Resilience = <tower_resilience_cache::CacheLayer<u64, u64> as Layer<Cheap>>::Service;

    pub(super) fn run(n: u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let cache = Cache::<Bytes>::builder().codec(RawBytes).build().unwrap();
        let key: fn(&u64) -> Option<u64> = |k| Some(*k);
        let mut omega: Omega =
            CacheLayer::new(cache.clone(), Resolver::new(key)).layer(Cheap(value()));
        let mut resilience: Resilience = tower_resilience_cache::CacheLayer::builder()
            .max_size(1024)
            .ttl(Duration::from_secs(3600))
            .key_extractor(|k: &u64| *k)
            .build()
            .unwrap()
            .layer(Cheap(value()));
        let moka: moka::sync::Cache<u64, Bytes> =
            moka::sync::Cache::builder().max_capacity(1024).build();
        rt.block_on(async {
            for k in 0..HOT {
                tower::ServiceExt::ready(&mut omega)
                    .await
                    .unwrap()
                    .call(k)
                    .await
                    .unwrap();
                tower::ServiceExt::ready(&mut resilience)
                    .await
                    .unwrap()
                    .call(k)
                    .await
                    .unwrap();
                moka.insert(k, value());
            }
        });
        omega_rows(&mut omega, n);
        resilience_rows(&mut resilience, n);
        moka_rows(&moka, n);
        let s = cache.stats();
        assert_eq!(s.misses, HOT, "every measured omega call was a hit: {s:?}");
        eprintln!("{n} hits per row made");
    }

    #[inline(never)]
    fn omega_rows(svc: &mut Omega, n: u64) {
        for i in 0..n {
            black_box(hit(svc, black_box(i % HOT)));
        }
    }

    #[inline(never)]
    fn resilience_rows(svc: &mut Resilience, n: u64) {
        for i in 0..n {
            black_box(hit(svc, black_box(i % HOT)));
        }
    }

    #[inline(never)]
    fn moka_rows(moka: &moka::sync::Cache<u64, Bytes>, n: u64) {
        for i in 0..n {
            black_box(moka.get(&black_box(i % HOT)).unwrap());
        }
    }
}

fn benches(c: &mut Criterion) {
    if let Some(n) = std::env::var("OMEGA_CACHE_HITS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        rows::run(n);
        return;
    }
    hit_ratios();
    l1_hit(c);
    l2_hit(c);
}

criterion_group!(cache, benches);
criterion_main!(cache);
