//! Hit, miss, stale, coalesced and evicted counters through the `metrics` crate, read back with
//! `metrics-util`'s debugging recorder.
#![cfg(feature = "metrics")]

use std::time::Duration;

use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use omega_cache::{Cache, CacheLayer, Partition, RawBytes, Resolver};
use tower::{Layer, ServiceExt};

/// A counter's name, labels and value.
type Row = (String, Vec<(String, String)>, u64);

fn counter(snapshot: &[Row], name: &str, result: Option<&str>) -> u64 {
    snapshot
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && labels.iter().any(|(k, v)| k == "partition" && v == "p")
                && result.is_none_or(|r| labels.iter().any(|(k, v)| k == "result" && v == r))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

#[test]
fn lookups_are_counted_by_result() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The handles are registered when the cache is built, so counting later costs no lookup.
    let cache = metrics::with_local_recorder(&recorder, || {
        Cache::<Bytes>::builder()
            .codec(RawBytes)
            .partition(
                Partition::new("p")
                    .ttl(Duration::from_millis(50))
                    .stale_while_revalidate(Duration::from_secs(60))
                    .capacity(8 * 1024)
                    .count_evictions(true),
            )
            .build()
            .unwrap()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let inner = tower::service_fn(|k: u64| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 512 + k as usize % 7]))
        });
        let svc = CacheLayer::new(
            cache.clone(),
            Resolver::new(|k: &u64| Some(*k)).partition("p"),
        )
        .layer(inner);
        // 10 concurrent misses for key 0: one miss leads, nine are coalesced.
        let tasks: Vec<_> = (0..10)
            .map(|_| tokio::spawn(svc.clone().oneshot(0)))
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        svc.clone().oneshot(0).await.unwrap(); // a hit
        tokio::time::sleep(Duration::from_millis(80)).await;
        svc.clone().oneshot(0).await.unwrap(); // stale, refreshed in the background
        // Enough entries to overflow 8 KiB.
        for k in 1..40 {
            svc.clone().oneshot(k).await.unwrap();
        }
    });
    cache.entry_count(); // runs moka's pending evictions
    let snapshot: Vec<Row> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(v) => {
                let labels = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                Some((key.key().name().to_owned(), labels, v))
            }
            _ => None,
        })
        .collect();
    let requests = "omega_cache_requests_total";
    assert_eq!(counter(&snapshot, requests, Some("hit")), 1);
    assert_eq!(counter(&snapshot, requests, Some("stale")), 1);
    assert_eq!(counter(&snapshot, requests, Some("coalesced")), 9);
    assert_eq!(counter(&snapshot, requests, Some("miss")), 10 + 39);
    assert!(counter(&snapshot, "omega_cache_upstream_total", Some("stored")) >= 40);
    let evicted = counter(&snapshot, "omega_cache_evicted_total", None);
    assert!(evicted > 0, "{snapshot:?}");
    assert_eq!(evicted, cache.stats().evicted);
}
