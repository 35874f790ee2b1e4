//! The same cache over the harness's 3-node Redis Cluster: L2 hits, a tag purge across two
//! instances (tag sets under one hash tag per tag: no scan of every node), a partition flush
//! (a generation key), key purges, coalescing and batches across slots.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use omega_cache::{BatchCache, Rules, Verdict};
use omega_testkit::RedisCluster;
use support::*;
use tower::ServiceExt;

fn cluster_url(cluster: &RedisCluster) -> String {
    let hosts: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    format!("redis+cluster://{}", hosts.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_and_l2_hits_work_across_instances_on_a_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster_url(&cluster);
    let (a, b) = (instance(&url, "cl").await, instance(&url, "cl").await);
    let up = Upstream::new(Duration::ZERO);
    let (sa, sb) = (service(&a, &up), service(&b, &up));

    // Keys spread over the nodes; B reads A's entries from L2.
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        sa.clone().oneshot(k.clone()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for k in &keys {
        assert!(
            sb.clone()
                .oneshot(k.clone())
                .await
                .unwrap()
                .starts_with(k.as_bytes())
        );
    }
    assert_eq!(up.calls(), 30);
    assert_eq!(b.stats().l2_hits, 30);

    // A tag purge: entries on every node, found through one set.
    let t0 = Instant::now();
    a.invalidate_tag("all").await.unwrap();
    eventually("B to drop every entry", || {
        keys.iter().all(|k| b.get("p", k.as_bytes()).is_none())
    })
    .await;
    eprintln!(
        "cluster: tag purge of 30 entries over 3 nodes seen by B after {:?}",
        t0.elapsed()
    );
    sb.clone().oneshot("key-3".into()).await.unwrap();
    assert_eq!(up.calls(), 31, "deleted from L2 too");

    // Per-key tag purge and key purge.
    tokio::time::sleep(Duration::from_millis(50)).await;
    sa.clone().oneshot("key-3".into()).await.unwrap();
    assert_eq!(up.calls(), 31, "A read B's new entry from L2");
    b.invalidate_tag("t:key-3").await.unwrap();
    eventually("A to drop key-3", || a.get("p", b"key-3").is_none()).await;
    sa.clone().oneshot("key-4".into()).await.unwrap();
    a.invalidate("p", b"key-4").await.unwrap();
    eventually("B to drop key-4", || b.get("p", b"key-4").is_none()).await;

    // A partition flush: one INCR of the generation, seen by both.
    sa.clone().oneshot("key-5".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sb.clone().oneshot("key-5".into()).await.unwrap();
    let calls = up.calls();
    b.flush_partition("p").await.unwrap();
    eventually("A to drop key-5", || a.get("p", b"key-5").is_none()).await;
    sa.clone().oneshot("key-5".into()).await.unwrap();
    assert_eq!(up.calls(), calls + 1);

    // Coalescing across the two instances.
    let up2 = Upstream::new(Duration::from_millis(200));
    let (sa2, sb2) = (service(&a, &up2), service(&b, &up2));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let svc = if i % 2 == 0 { sa2.clone() } else { sb2.clone() };
            tokio::spawn(async move { svc.oneshot("hot".to_owned()).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "hot#1");
    }
    assert_eq!(up2.calls(), 1);

    // Batches: items on different slots, read with one GET each, sent together.
    let ba = BatchCache::new(a.clone(), "q").unwrap();
    let bb = BatchCache::new(b.clone(), "q").unwrap();
    let load = |ids: Vec<u64>| async move {
        Ok::<_, BoxError>(
            ids.iter()
                .map(|i| {
                    (
                        Bytes::from(format!("item{i}")),
                        Verdict::Store(Rules::new()),
                    )
                })
                .collect(),
        )
    };
    ba.get_many(&[1u64, 2, 3, 4, 5, 6], load).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let batch = bb.get_many(&[6u64, 5, 4, 3, 2, 1, 7], load).await.unwrap();
    assert_eq!((batch.cached(), batch.loaded()), (6, 1));
    assert_eq!(batch.items()[0].as_deref(), Some(&b"item6"[..]));
}
