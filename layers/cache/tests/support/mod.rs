//! Shared by the Redis tests: an upstream that counts its calls, and cache instances over one
//! Redis (each with its own backend handle and subscription, as separate processes have).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use omega_cache::{Cache, CacheLayer, CacheService, Partition, RawBytes, Resolver, Rules, Verdict};
use omega_core::Keyspace;
use omega_core::redis::{RedisBackend, RedisConfig};
use tower::Layer;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts calls; answers `"<key>#<n>"` after `delay`.
#[derive(Clone)]
pub struct Upstream {
    pub calls: Arc<AtomicUsize>,
    pub delay: Duration,
}

impl Upstream {
    pub fn new(delay: Duration) -> Self {
        Upstream {
            calls: Arc::default(),
            delay,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl tower::Service<String> for Upstream {
    type Response = Bytes;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: String) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = self.delay;
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Bytes::from(format!("{key}#{n}")))
        })
    }
}

/// A policy: the request is the key; tags `t:<key>` and `all`.
pub fn policy() -> omega_cache::Resolver<
    impl Fn(&String) -> Option<String> + Send + Sync + 'static,
    omega_cache::TagFn<String>,
    omega_cache::StoreAll,
> {
    Resolver::new(|k: &String| Some(k.clone()))
        .partition("p")
        .tags(|k: &String| [format!("t:{k}"), "all".to_owned()])
}

pub async fn backend(url: &str, prefix: &str, op_timeout: Duration) -> RedisBackend {
    let cfg = RedisConfig::parse(url)
        .unwrap()
        .keyspace(Keyspace::new(prefix).unwrap())
        .op_timeout(op_timeout)
        .connect_timeout(Duration::from_millis(300))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500));
    RedisBackend::connect(cfg).await.unwrap()
}

/// One instance: a cache over `url` with partitions `p` (60 s TTL) and `q`.
/// An instance with a generous operation timeout: the tests that use it count L2 hits and
/// upstream calls, which a slow machine must not turn into misses (a timeout is a miss by
/// design; `faults.rs` tests that with the default 50 ms).
pub async fn instance(url: &str, prefix: &str) -> Cache<Bytes> {
    instance_with(url, prefix, Duration::from_secs(1), |p| p).await
}

pub async fn instance_with(
    url: &str,
    prefix: &str,
    op_timeout: Duration,
    tune: impl Fn(Partition<Bytes>) -> Partition<Bytes>,
) -> Cache<Bytes> {
    let cache = Cache::<Bytes>::builder()
        .codec(RawBytes)
        .partition(tune(Partition::new("p").ttl(Duration::from_secs(60))))
        .partition(Partition::new("q").ttl(Duration::from_secs(60)))
        .redis(backend(url, prefix, op_timeout).await)
        .build()
        .unwrap();
    eventually("the cache to subscribe", || cache.is_synced()).await;
    cache
}

#[allow(clippy::type_complexity)]
pub fn service(
    cache: &Cache<Bytes>,
    up: &Upstream,
) -> CacheService<
    Upstream,
    Bytes,
    omega_cache::Resolver<
        impl Fn(&String) -> Option<String> + Send + Sync + 'static,
        omega_cache::TagFn<String>,
        omega_cache::StoreAll,
    >,
> {
    CacheLayer::new(cache.clone(), policy()).layer(up.clone())
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub fn store(rules: Rules) -> Verdict {
    Verdict::Store(rules)
}

/// The p-th percentile (0..=100) of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p / 100.0).round() as usize;
    samples[i]
}
