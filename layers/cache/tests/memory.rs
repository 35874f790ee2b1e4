//! The cache in one process, without Redis: hits, coalescing, freshness (TTL, stale-while-
//! revalidate, stale-if-error, negative caching), partitions, the size limit, purges.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use omega_cache::{Cache, CacheLayer, NotCached, Partition, RawBytes, Resolver, Rules, Verdict};
use tower::{Layer, Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream that counts its calls, sleeps `delay`, and answers `"<key>#<call>"`; keys
/// starting with `fail` fail, keys starting with `none` answer an empty body, keys starting
/// with `big` answer 4 KiB.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Upstream {
    fn new(delay: Duration) -> Self {
        Upstream {
            calls: Arc::default(),
            delay,
            failing: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

impl Service<String> for Upstream {
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
        let (delay, failing) = (self.delay, self.failing.load(Ordering::SeqCst));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if failing || key.starts_with("fail") {
                return Err("upstream failed".into());
            }
            if key.starts_with("none") {
                return Ok(Bytes::new());
            }
            if key.starts_with("big") {
                return Ok(Bytes::from(vec![b'x'; 4096]));
            }
            Ok(Bytes::from(format!("{key}#{n}")))
        })
    }
}

fn cache(partitions: Vec<Partition<Bytes>>) -> Cache<Bytes> {
    let mut b = Cache::builder().codec(RawBytes);
    for p in partitions {
        b = b.partition(p);
    }
    b.build().unwrap()
}

fn by_key(
    partition: &'static str,
) -> Resolver<
    impl Fn(&String) -> Option<String> + Clone,
    omega_cache::NoTags,
    impl Fn(&Bytes) -> Verdict + Clone,
> {
    Resolver::new(|k: &String| (!k.starts_with("nocache")).then(|| k.clone()))
        .partition(partition)
        .judge(|b: &Bytes| {
            if b.is_empty() {
                Verdict::Negative(Rules::new())
            } else {
                Verdict::Store(Rules::new().tag(format!("len:{}", b.len())))
            }
        })
}

#[tokio::test]
async fn a_second_request_is_a_hit_and_unkeyed_requests_bypass() {
    let up = Upstream::new(Duration::ZERO);
    let cache = cache(vec![]);
    let svc = CacheLayer::new(cache.clone(), by_key("default")).layer(up.clone());
    assert_eq!(svc.clone().oneshot("a".into()).await.unwrap(), "a#1");
    assert_eq!(svc.clone().oneshot("a".into()).await.unwrap(), "a#1");
    assert_eq!(
        svc.clone().oneshot("nocache".into()).await.unwrap(),
        "nocache#2"
    );
    assert_eq!(
        svc.clone().oneshot("nocache".into()).await.unwrap(),
        "nocache#3"
    );
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.stored, s.upstream), (1, 1, 1, 1));
    assert_eq!(cache.get("default", b"a").unwrap(), "a#1");
    // Errors pass through and are not stored.
    let err = svc.clone().oneshot("fail".into()).await.unwrap_err();
    assert_eq!(err.to_string(), "upstream failed");
    assert!(svc.oneshot("fail".into()).await.is_err());
    assert_eq!(up.calls(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_upstream_call() {
    let up = Upstream::new(Duration::from_millis(200));
    let cache = cache(vec![]);
    let svc = CacheLayer::new(cache.clone(), by_key("default")).layer(up.clone());
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (svc, barrier) = (svc.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                svc.oneshot("hot".to_owned()).await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "hot#1");
    }
    let s = cache.stats();
    eprintln!(
        "1000 concurrent misses: {} upstream call(s), stats {s:?}",
        up.calls()
    );
    assert_eq!(up.calls(), 1);
    assert_eq!(s.coalesced + s.hits, 999);
}

#[tokio::test]
async fn a_stale_entry_is_served_while_exactly_one_request_refreshes_it() {
    let up = Upstream::new(Duration::from_millis(500));
    let cache = cache(vec![
        Partition::new("swr")
            .ttl(Duration::from_millis(100))
            .stale_while_revalidate(Duration::from_secs(30)),
    ]);
    let svc = CacheLayer::new(cache.clone(), by_key("swr")).layer(up.clone());
    assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "k#1");
    tokio::time::sleep(Duration::from_millis(150)).await;
    // 200 requests in the stale window, while the refresh (500 ms) runs: all answered at once
    // with the stale value.
    let t0 = std::time::Instant::now();
    let mut answers = Vec::new();
    for _ in 0..200 {
        answers.push(svc.clone().oneshot("k".into()).await.unwrap());
    }
    let took = t0.elapsed();
    if took < Duration::from_millis(500) {
        assert!(answers.iter().all(|a| a == "k#1"), "{answers:?}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.get("swr", b"k").is_none_or(|v| v != "k#2") {
        assert!(
            std::time::Instant::now() < deadline,
            "the refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.calls(), 2, "one load, one refresh");
    assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "k#2");
    let s = cache.stats();
    assert_eq!((s.refreshes, s.stale_hits), (1, 200));
}

#[tokio::test]
async fn a_failure_is_answered_by_a_stale_copy_within_its_window() {
    let up = Upstream::new(Duration::ZERO);
    let cache = cache(vec![
        Partition::new("sie")
            .ttl(Duration::from_millis(50))
            .stale_if_error(Duration::from_millis(400)),
    ]);
    let svc = CacheLayer::new(cache.clone(), by_key("sie")).layer(up.clone());
    assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "k#1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    up.fail(true);
    assert_eq!(svc.clone().oneshot("k".into()).await.unwrap(), "k#1");
    assert_eq!(cache.stats().stale_if_error, 1);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        svc.clone().oneshot("k".into()).await.is_err(),
        "past the window"
    );
    up.fail(false);
    assert_eq!(svc.oneshot("k".into()).await.unwrap(), "k#4");
}

#[tokio::test]
async fn negative_answers_have_their_own_ttl() {
    let up = Upstream::new(Duration::ZERO);
    let cache = cache(vec![
        Partition::new("neg")
            .ttl(Duration::from_secs(60))
            .negative_ttl(Duration::from_millis(300)),
    ]);
    let svc = CacheLayer::new(cache.clone(), by_key("neg")).layer(up.clone());
    assert_eq!(svc.clone().oneshot("none".into()).await.unwrap(), "");
    assert_eq!(svc.clone().oneshot("none".into()).await.unwrap(), "");
    assert_eq!(svc.clone().oneshot("pos".into()).await.unwrap(), "pos#2");
    assert_eq!(up.calls(), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(svc.clone().oneshot("none".into()).await.unwrap(), "");
    assert_eq!(svc.oneshot("pos".into()).await.unwrap(), "pos#2");
    assert_eq!(
        up.calls(),
        3,
        "the negative entry expired, the positive one did not"
    );
}

#[tokio::test]
async fn partitions_have_their_own_settings_and_flush_alone() {
    let up = Upstream::new(Duration::ZERO);
    let cache = cache(vec![
        Partition::new("short").ttl(Duration::from_millis(50)),
        Partition::new("long")
            .ttl(Duration::from_secs(60))
            .max_entry_bytes(1024),
    ]);
    let short = CacheLayer::new(cache.clone(), by_key("short")).layer(up.clone());
    let long = CacheLayer::new(cache.clone(), by_key("long")).layer(up.clone());
    short.clone().oneshot("a".into()).await.unwrap();
    long.clone().oneshot("a".into()).await.unwrap();
    assert_eq!(
        up.calls(),
        2,
        "the same key in two partitions is two entries"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(long.clone().oneshot("a".into()).await.unwrap(), "a#2");
    assert_eq!(short.clone().oneshot("a".into()).await.unwrap(), "a#3");
    // Larger than the limit: passed on, not stored.
    assert_eq!(
        long.clone().oneshot("big".into()).await.unwrap().len(),
        4096
    );
    assert_eq!(
        long.clone().oneshot("big".into()).await.unwrap().len(),
        4096
    );
    assert_eq!(up.calls(), 5);
    assert_eq!(cache.partition_stats("long").unwrap().passed, 2);
    // Flushing one partition leaves the other.
    short.clone().oneshot("b".into()).await.unwrap();
    cache.flush_partition("long").await.unwrap();
    assert_eq!(long.oneshot("a".into()).await.unwrap(), "a#7");
    assert_eq!(short.oneshot("b".into()).await.unwrap(), "b#6");
    assert!(cache.flush_partition("nope").await.is_err());
}

#[tokio::test]
async fn keys_and_tags_are_purged() {
    let up = Upstream::new(Duration::ZERO);
    let cache = cache(vec![]);
    let svc = CacheLayer::new(cache.clone(), by_key("default")).layer(up.clone());
    for k in ["ab", "cd", "efg"] {
        svc.clone().oneshot(k.into()).await.unwrap();
    }
    cache.invalidate("default", b"ab").await.unwrap();
    assert!(cache.get("default", b"ab").is_none());
    // "cd#2" has 4 bytes, "efg#3" 5: tag len:4 drops only cd.
    cache.invalidate_tag("len:4").await.unwrap();
    assert!(cache.get("default", b"cd").is_none());
    assert_eq!(cache.get("default", b"efg").unwrap(), "efg#3");
}

#[tokio::test]
async fn only_if_cached_misses_are_refused() {
    use omega_cache::{Lookup, Policy};
    use omega_core::key::Key;
    struct OnlyCached;
    impl Policy<String, Bytes> for OnlyCached {
        type Context = ();
        fn lookup<'a>(&'a self, req: &'a String) -> Option<Lookup<'a>> {
            let l = Lookup::new("default", Key::from(req.trim_start_matches('!')));
            Some(if req.starts_with('!') {
                l.only_if_cached()
            } else {
                l
            })
        }
        fn context(&self, _: &String) {}
        fn decide(&self, _: &(), _: &Bytes) -> Verdict {
            Verdict::Store(Rules::new())
        }
    }
    let up = Upstream::new(Duration::ZERO);
    let cache = cache(vec![]);
    let svc = CacheLayer::new(cache, OnlyCached).layer(up.clone());
    let err = svc.clone().oneshot("!k".into()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<NotCached>().unwrap().partition(),
        "default"
    );
    svc.clone().oneshot("k".into()).await.unwrap();
    assert_eq!(svc.oneshot("!k".into()).await.unwrap(), "k#1");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn get_with_loads_once_and_capacity_evicts() {
    let cache = Cache::<Bytes>::builder()
        .codec(RawBytes)
        .partition(
            Partition::new("tiny")
                .capacity(20 * 1200)
                .count_evictions(true),
        )
        .build()
        .unwrap();
    for i in 0..200u32 {
        let v = cache
            .get_with("tiny", &i.to_le_bytes(), move || async move {
                Ok::<_, BoxError>((Bytes::from(vec![0u8; 1000]), Verdict::Store(Rules::new())))
            })
            .await
            .unwrap();
        assert_eq!(v.len(), 1000);
    }
    let n = cache.entry_count();
    eprintln!(
        "200 entries of ~1.2 KiB into 24 KiB: {n} kept, {} evicted",
        cache.stats().evicted
    );
    assert!(n <= 20, "{n}");
    assert!(cache.stats().evicted >= 150, "{:?}", cache.stats());
    assert!(cache.weighted_size() <= 20 * 1200);
}

#[tokio::test]
async fn building_checks_names_and_codecs() {
    let e = Cache::<Bytes>::builder().build().unwrap_err();
    assert!(e.to_string().contains("has no codec"), "{e}");
    let e = Cache::<Bytes>::builder()
        .codec(RawBytes)
        .partition(Partition::new("a b"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("partition name \"a b\""), "{e}");
    let e = Cache::<Bytes>::builder()
        .codec(RawBytes)
        .partition(Partition::new("a"))
        .partition(Partition::new("a"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("two partitions"), "{e}");
}
