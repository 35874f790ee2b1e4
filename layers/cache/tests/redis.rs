//! Two-tier caching over a real Redis: L2 hits in one round trip, promotion to L1, purges by
//! key, tag and partition reaching every instance (with the delay measured), dropping L1 after
//! a gap in the invalidation channel, coalescing across instances, and batches.
#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use omega_cache::{BatchCache, Rules, Verdict};
use omega_testkit::RedisServer;
use support::*;
use tower::ServiceExt;

fn calls(server: &RedisServer, command: &str) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map(|n| n.parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_hit_is_one_round_trip_and_is_promoted_to_l1() {
    let server = RedisServer::start();
    let (a, b) = (
        instance(&server.url(), "l2").await,
        instance(&server.url(), "l2").await,
    );
    let up = Upstream::new(Duration::ZERO);
    assert_eq!(service(&a, &up).oneshot("k".into()).await.unwrap(), "k#1");
    eventually("the entry in L2", || server.cli(&["DBSIZE"]) != "0").await;
    // Let A's background store finish (entry, tag sets, lease released).
    tokio::time::sleep(Duration::from_millis(50)).await;

    // (A `GET` inside the script counts as a `get` call: count what a client sends.)
    let before = [
        calls(&server, "evalsha"),
        calls(&server, "eval"),
        calls(&server, "set"),
    ];
    let t0 = Instant::now();
    assert_eq!(service(&b, &up).oneshot("k".into()).await.unwrap(), "k#1");
    let took = t0.elapsed();
    let after = [
        calls(&server, "evalsha"),
        calls(&server, "eval"),
        calls(&server, "set"),
    ];
    eprintln!("L2 hit through the layer: {took:?}; commands {before:?} -> {after:?}");
    assert_eq!(after[0] - before[0], 1, "one EVALSHA");
    assert_eq!(
        (after[1], after[2]),
        (before[1], before[2]),
        "no other script, no lease taken"
    );
    assert_eq!(up.calls(), 1);
    assert_eq!(b.stats().l2_hits, 1);
    // Promoted: the next request is an L1 hit, no Redis command at all.
    assert_eq!(service(&b, &up).oneshot("k".into()).await.unwrap(), "k#1");
    assert_eq!(calls(&server, "evalsha"), after[0]);
    assert_eq!(b.stats().hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_reaches_every_instance_within_milliseconds() {
    let server = RedisServer::start();
    let (a, b) = (
        instance(&server.url(), "tags").await,
        instance(&server.url(), "tags").await,
    );
    let up = Upstream::new(Duration::ZERO);
    let (sa, sb) = (service(&a, &up), service(&b, &up));
    let mut seen = Vec::new();
    for i in 0..200 {
        let key = format!("k{i}");
        sa.clone().oneshot(key.clone()).await.unwrap();
        let l2_key = format!("tags:{{cache/p/0/s{key}}}");
        let t = Instant::now();
        while server.cli(&["EXISTS", &l2_key]) != "1" {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{l2_key} not in {}",
                server.cli(&["KEYS", "*"])
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sb.clone().oneshot(key.clone()).await.unwrap();
        assert!(b.get("p", key.as_bytes()).is_some(), "B holds {key} in L1");
        let t0 = Instant::now();
        a.invalidate_tag(&format!("t:{key}")).await.unwrap();
        eventually("B to drop the entry", || {
            b.get("p", key.as_bytes()).is_none()
        })
        .await;
        seen.push(t0.elapsed());
    }
    let mut delays = b.invalidation_delays();
    eprintln!(
        "tag purge, 200 rounds: seen gone by B after p50 {:?} p99 {:?} max {:?} (purge call included); \
         message sent -> applied p50 {:?} p99 {:?}",
        percentile(&mut seen, 50.0),
        percentile(&mut seen, 99.0),
        percentile(&mut seen, 100.0),
        percentile(&mut delays, 50.0),
        percentile(&mut delays, 99.0),
    );
    // Gone from L2 too: B loads it again from the upstream.
    let before = up.calls();
    sb.clone().oneshot("k0".into()).await.unwrap();
    assert_eq!(up.calls(), before + 1);
    // One tag on many entries.
    a.invalidate_tag("all").await.unwrap();
    eventually("B to drop everything tagged all", || {
        b.get("p", b"k0").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_purges_and_partition_flushes_reach_every_instance() {
    let server = RedisServer::start();
    let (a, b) = (
        instance(&server.url(), "keys").await,
        instance(&server.url(), "keys").await,
    );
    let up = Upstream::new(Duration::ZERO);
    let (sa, sb) = (service(&a, &up), service(&b, &up));
    for k in ["x", "y"] {
        sa.clone().oneshot(k.into()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for k in ["x", "y"] {
        sb.clone().oneshot(k.into()).await.unwrap();
    }
    assert_eq!(up.calls(), 2);
    b.invalidate("p", b"x").await.unwrap();
    eventually("A to drop x", || a.get("p", b"x").is_none()).await;
    assert!(a.get("p", b"y").is_some());
    // A flush moves the partition to a new generation on every instance.
    a.flush_partition("p").await.unwrap();
    eventually("B to drop y", || b.get("p", b"y").is_none()).await;
    assert_eq!(sb.clone().oneshot("y".into()).await.unwrap(), "y#3");
    assert_eq!(server.cli(&["GET", "keys:cache:gen:p"]), "1");
    // A new instance reads the generation when it subscribes and finds B's new entry.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = instance(&server.url(), "keys").await;
    assert_eq!(service(&c, &up).oneshot("y".into()).await.unwrap(), "y#3");
    assert_eq!(up.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gap_in_the_channel_an_instance_drops_its_l1() {
    let mut server = RedisServer::start();
    let b = instance(&server.url(), "gap").await;
    let up = Upstream::new(Duration::ZERO);
    service(&b, &up).oneshot("k".into()).await.unwrap();
    server.kill();
    // While Redis is down, L1 keeps serving.
    assert_eq!(service(&b, &up).oneshot("k".into()).await.unwrap(), "k#1");
    eventually("the subscription to be lost", || !b.is_synced()).await;
    assert_eq!(b.get("p", b"k").unwrap(), "k#1");
    server.restart();
    eventually("the subscription to be back", || b.is_synced()).await;
    // Invalidations sent meanwhile may have been missed: the copy is dropped, not served.
    assert!(b.get("p", b"k").is_none());
    assert_eq!(service(&b, &up).oneshot("k".into()).await.unwrap(), "k#2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_two_instances_make_one_upstream_call() {
    let server = RedisServer::start();
    let (a, b) = (
        instance(&server.url(), "lease").await,
        instance(&server.url(), "lease").await,
    );
    let up = Upstream::new(Duration::from_millis(300));
    let (sa, sb) = (service(&a, &up), service(&b, &up));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let svc = if i % 2 == 0 { sa.clone() } else { sb.clone() };
        tasks.push(tokio::spawn(async move {
            svc.oneshot("hot".to_owned()).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "hot#1");
    }
    assert_eq!(up.calls(), 1);
    let (sa, sb) = (a.stats(), b.stats());
    eprintln!("two instances, 100 misses: A {sa:?}, B {sb:?}");
    assert_eq!(
        sa.l2_hits + sb.l2_hits,
        1,
        "the follower instance read L2 once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_is_refreshed_once_across_instances() {
    let server = RedisServer::start();
    let tune = |p: omega_cache::Partition<Bytes>| {
        p.ttl(Duration::from_millis(300))
            .stale_while_revalidate(Duration::from_secs(30))
    };
    let a = instance_with(&server.url(), "swr", Duration::from_millis(50), tune).await;
    let b = instance_with(&server.url(), "swr", Duration::from_millis(50), tune).await;
    let up = Upstream::new(Duration::from_millis(100));
    let (sa, sb) = (service(&a, &up), service(&b, &up));
    assert_eq!(sa.clone().oneshot("k".into()).await.unwrap(), "k#1");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sb.clone().oneshot("k".into()).await.unwrap(), "k#1");
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..50 {
        assert_eq!(sa.clone().oneshot("k".into()).await.unwrap(), "k#1");
        assert_eq!(sb.clone().oneshot("k".into()).await.unwrap(), "k#1");
    }
    eventually("the refresh", || up.calls() == 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(up.calls(), 2, "one refresh for both instances");
    eventually("B to take A's refreshed copy", || {
        b.get("p", b"k").is_some_and(|v| v == "k#2") || a.get("p", b"k").is_some_and(|v| v == "k#2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_load_only_the_missing_items_and_take_the_least_ttl() {
    let server = RedisServer::start();
    let tune = |p: omega_cache::Partition<Bytes>| p.ttl(Duration::from_secs(60));
    let a = BatchCache::new(
        instance_with(&server.url(), "batch", Duration::from_millis(50), tune).await,
        "p",
    )
    .unwrap();
    let b = BatchCache::new(
        instance_with(&server.url(), "batch", Duration::from_millis(50), tune).await,
        "p",
    )
    .unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u64>>::new()));
    let load = |asked: std::sync::Arc<std::sync::Mutex<Vec<Vec<u64>>>>| {
        move |ids: Vec<u64>| async move {
            asked.lock().unwrap().push(ids.clone());
            Ok::<_, BoxError>(
                ids.iter()
                    .map(|id| {
                        let ttl = Duration::from_secs(if *id == 2 { 10 } else { 60 });
                        (
                            Bytes::from(format!("item{id}")),
                            Verdict::Store(Rules::new().ttl(ttl)),
                        )
                    })
                    .collect(),
            )
        }
    };
    let first = a.get_many(&[1u64, 2], load(asked.clone())).await.unwrap();
    assert_eq!(first.loaded(), 2);
    assert!(first.ttl() <= Duration::from_secs(10) && first.ttl() > Duration::from_secs(9));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // B finds 1 and 2 in L2, loads only 3, and answers in the order asked.
    let batch = b
        .get_many(&[3u64, 1, 2], load(asked.clone()))
        .await
        .unwrap();
    let items: Vec<_> = batch.items().iter().map(|i| i.clone().unwrap()).collect();
    assert_eq!(items, ["item3", "item1", "item2"]);
    assert_eq!((batch.cached(), batch.loaded()), (2, 1));
    assert!(batch.ttl() <= Duration::from_secs(10), "{:?}", batch.ttl());
    assert_eq!(*asked.lock().unwrap(), vec![vec![1, 2], vec![3]]);
    assert_eq!(b.cache().stats().l2_hits, 2);
    // All cached now: no load at all.
    let batch = b.get_many(&[1u64, 3], load(asked.clone())).await.unwrap();
    assert_eq!((batch.cached(), batch.loaded()), (2, 0));
    assert!(batch.ttl() > Duration::from_secs(55));
    assert_eq!(asked.lock().unwrap().len(), 2);
}

/// A cache used on a second runtime after the one it was built on shut down (a test suite
/// sharing it across `#[tokio::test]`s): its listener ended with the first runtime, and the
/// cache must neither serve what it can no longer hear invalidated nor stay deaf.
#[test]
fn a_cache_used_on_the_next_runtime_still_hears_invalidations() {
    let server = RedisServer::start();
    let up = Upstream::new(Duration::ZERO);
    let first = omega_testkit::runtime();
    let a = first.block_on(async {
        let a = instance(&server.url(), "rt").await;
        assert_eq!(service(&a, &up).oneshot("k".into()).await.unwrap(), "k#1");
        a
    });
    drop(first);

    omega_testkit::runtime().block_on(async {
        let b = instance(&server.url(), "rt").await;
        service(&a, &up).oneshot("k".into()).await.unwrap();
        eventually("A to subscribe again", || a.is_synced()).await;
        let v = service(&a, &up).oneshot("k".into()).await.unwrap();
        assert_eq!(a.get("p", b"k").as_ref(), Some(&v), "A holds k in L1");
        b.invalidate("p", b"k").await.unwrap();
        eventually("A to drop k", || a.get("p", b"k").is_none()).await;
    });
}
