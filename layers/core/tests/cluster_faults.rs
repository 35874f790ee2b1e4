//! Redis Cluster with one node hung (SIGSTOP) or dead (SIGKILL): operations on the other
//! nodes' slots keep their latency, operations on the bad node's slots fail fast after the
//! first few timeouts, `connect` works with one primary down, and everything recovers.
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Latencies, eventually, keys_on};
use omega_core::redis::{RedisBackend, RedisConfig, SubscriptionEvent};
use omega_core::{ErrorKind, Health, HealthStatus};
use omega_testkit::RedisCluster;

const OP_TIMEOUT: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;
/// How long the load runs while a node is hung or dead.
const WINDOW: Duration = Duration::from_millis(1_500);
/// Concurrent callers on the bad node's keys, and on the healthy nodes' keys.
const BAD_CALLERS: usize = 2;
const GOOD_CALLERS: usize = 4;

fn config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig::cluster(cluster.urls())
        .op_timeout(OP_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeouts_before_reconnect(TIMEOUTS_BEFORE_RECONNECT)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// What the callers saw while one node was bad.
struct Load {
    good: Latencies,
    good_errors: Vec<String>,
    bad: Latencies,
    /// Operations on the bad node's keys that waited at least half the op timeout.
    bad_waited: usize,
    /// Operations on the bad node's keys that failed with `Unavailable` without waiting.
    bad_fast: usize,
    /// Every error kind seen on the bad node's keys.
    bad_kinds: Vec<ErrorKind>,
}

/// Runs `GOOD_CALLERS` loops of `GET` on `good` keys and `BAD_CALLERS` loops on `bad` keys
/// for `WINDOW`, measuring every operation.
async fn run_load(backend: &RedisBackend, good: &[String], bad: &[String]) -> Load {
    let stop = Instant::now() + WINDOW;
    let run = |keys: Vec<String>, caller: usize| {
        let backend = backend.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = caller;
            while Instant::now() < stop {
                let key = &keys[i % keys.len()];
                i += 1;
                let started = Instant::now();
                let r = backend
                    .query::<Option<String>>(redis::cmd("GET").arg(key))
                    .await;
                seen.push((started.elapsed(), r.err()));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen
        })
    };
    let goods: Vec<_> = (0..GOOD_CALLERS).map(|c| run(good.to_vec(), c)).collect();
    let bads: Vec<_> = (0..BAD_CALLERS).map(|c| run(bad.to_vec(), c)).collect();
    let mut load = Load {
        good: Latencies::default(),
        good_errors: Vec::new(),
        bad: Latencies::default(),
        bad_waited: 0,
        bad_fast: 0,
        bad_kinds: Vec::new(),
    };
    for task in goods {
        for (took, err) in task.await.unwrap() {
            load.good.push(took);
            if let Some(e) = err {
                load.good_errors.push(format!("{e} after {took:?}"));
            }
        }
    }
    for task in bads {
        for (took, err) in task.await.unwrap() {
            load.bad.push(took);
            if took >= OP_TIMEOUT / 2 {
                load.bad_waited += 1;
            }
            if let Some(e) = err {
                if e.kind() == ErrorKind::Unavailable && took < OP_TIMEOUT / 2 {
                    load.bad_fast += 1;
                }
                if !load.bad_kinds.contains(&e.kind()) {
                    load.bad_kinds.push(e.kind());
                }
            }
        }
    }
    load
}

/// The bounds only the bug breaks: no healthy operation fails or waits out the timeout, and
/// the bad node costs a timeout only for the first few operations (one per caller in flight
/// while the timeouts add up to `TIMEOUTS_BEFORE_RECONNECT`), not for each of them.
fn check(load: &Load, what: &str) {
    println!(
        "{what}: healthy nodes' keys: {} ops, {}; bad node's keys: {} ops, {}, {} waited >= {:?}, \
         {} failed fast, kinds {:?}",
        load.good.len(),
        load.good.summary(),
        load.bad.len(),
        load.bad.summary(),
        load.bad_waited,
        OP_TIMEOUT / 2,
        load.bad_fast,
        load.bad_kinds
    );
    assert!(
        load.good_errors.is_empty(),
        "{what}: {} operations on healthy nodes failed, first: {:?}",
        load.good_errors.len(),
        load.good_errors.first()
    );
    assert!(
        load.good.max() < OP_TIMEOUT,
        "{what}: an operation on a healthy node took {:?} (op timeout {OP_TIMEOUT:?})",
        load.good.max()
    );
    // No operation outlives its timeout (redis-rs's cluster retries sleep 1.28 s and more);
    // the margin is for a loaded machine's timers, far below that.
    assert!(
        load.bad.max() < OP_TIMEOUT * 2,
        "{what}: an operation on the bad node's keys took {:?} (op timeout {OP_TIMEOUT:?})",
        load.bad.max()
    );
    let allowed = TIMEOUTS_BEFORE_RECONNECT as usize + BAD_CALLERS;
    assert!(
        load.bad_waited <= allowed,
        "{what}: {} operations on the bad node's keys waited for the timeout (at most {allowed} \
         may, until the node is known bad)",
        load.bad_waited
    );
    assert!(
        load.bad_fast > 50,
        "{what}: only {} operations on the bad node's keys failed fast",
        load.bad_fast
    );
}

/// Per-node health: node `bad` (by port) is down with an error naming it, the others up.
fn check_node_health(backend: &RedisBackend, cluster: &RedisCluster, bad: usize) {
    let nodes: Vec<Health> = backend.node_health();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for (i, node) in cluster.nodes().iter().enumerate() {
        let addr = node.addr().to_string();
        let h = nodes
            .iter()
            .find(|h| h.target == addr)
            .unwrap_or_else(|| panic!("no health for {addr} in {nodes:?}"));
        if i == bad {
            assert_eq!(h.status, HealthStatus::Down, "{h:?}");
            let why = h.last_error.as_deref().unwrap_or_default();
            assert!(why.contains(&addr), "{h:?}");
        } else {
            assert_eq!(h.status, HealthStatus::Up, "{h:?}");
        }
    }
}

/// Waits until every key answers again, and returns how long that took.
async fn recovered(backend: &RedisBackend, keys: &[String]) -> Duration {
    let started = Instant::now();
    for key in keys {
        eventually("a key of the recovered node to answer", || async {
            backend
                .query::<Option<String>>(redis::cmd("GET").arg(key))
                .await
                .ok()
        })
        .await;
    }
    started.elapsed()
}

async fn set_all(backend: &RedisBackend, keys: &[String]) {
    for key in keys {
        backend
            .query::<()>(redis::cmd("SET").arg(key).arg("v"))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_fails_fast_and_the_other_nodes_keep_their_latency() {
    let cluster = RedisCluster::start();
    let backend = RedisBackend::connect(config(&cluster)).await.unwrap();
    let bad = keys_on(&cluster, 0, 8);
    let good: Vec<String> = [keys_on(&cluster, 1, 8), keys_on(&cluster, 2, 8)].concat();
    set_all(&backend, &bad).await;
    set_all(&backend, &good).await;

    cluster.nodes()[0].pause();
    let load = run_load(&backend, &good, &bad).await;
    check(&load, "node 0 paused");
    assert!(
        !backend.is_up(),
        "a hung node makes the cluster not fully up"
    );
    assert_eq!(backend.health().status, HealthStatus::Down);
    check_node_health(&backend, &cluster, 0);
    assert!(!backend.is_up_for(bad[0].as_bytes()));
    assert!(backend.is_up_for(good[0].as_bytes()));

    cluster.nodes()[0].resume();
    let took = recovered(&backend, &bad).await;
    println!("node 0 resumed: its keys answered again after {took:?}");
    eventually("the backend to be up again", || async {
        backend.is_up().then_some(())
    })
    .await;
    assert!(backend.node_health().iter().all(Health::is_up));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_fast_and_the_other_nodes_keep_their_latency() {
    let mut cluster = RedisCluster::start();
    let backend = RedisBackend::connect(config(&cluster)).await.unwrap();
    let bad = keys_on(&cluster, 1, 8);
    let good: Vec<String> = [keys_on(&cluster, 0, 8), keys_on(&cluster, 2, 8)].concat();
    set_all(&backend, &good).await;

    cluster.nodes_mut()[1].kill();
    let load = run_load(&backend, &good, &bad).await;
    check(&load, "node 1 killed");
    assert!(!backend.is_up());
    check_node_health(&backend, &cluster, 1);

    cluster.nodes_mut()[1].restart();
    let took = recovered(&backend, &bad).await;
    println!("node 1 restarted: its keys answered again after {took:?}");
    eventually("the backend to be up again", || async {
        backend.is_up().then_some(())
    })
    .await;
}

/// `connect` with one primary down (killed, then paused) succeeds within a bound and serves
/// the healthy slots at once; the bad node's slots fail fast until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_succeeds_with_one_primary_down_and_serves_the_healthy_slots() {
    let mut cluster = RedisCluster::start();
    let bad = keys_on(&cluster, 2, 4);
    let good: Vec<String> = [keys_on(&cluster, 0, 4), keys_on(&cluster, 1, 4)].concat();
    // A bound only a hang or a serial wait on the dead node breaks: two connect timeouts (the
    // topology, then the nodes, each attempted in parallel) plus a margin.
    let bound = CONNECT_TIMEOUT * 2 + Duration::from_millis(500);

    for (what, pause) in [("paused", true), ("killed", false)] {
        if pause {
            cluster.nodes()[2].pause();
        } else {
            cluster.nodes_mut()[2].kill();
        }
        let started = Instant::now();
        let connected = tokio::time::timeout(
            Duration::from_secs(10),
            RedisBackend::connect(config(&cluster)),
        )
        .await;
        let took = started.elapsed();
        println!("connect with node 2 {what}: {took:?}");
        let backend = match connected {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => panic!("connect with node 2 {what} failed after {took:?}: {e}"),
            Err(_) => panic!("connect with node 2 {what} hung for {took:?}"),
        };
        assert!(took < bound, "connect with node 2 {what} took {took:?}");
        let shared = Arc::new(backend);
        set_all(&shared, &good).await;
        for key in &bad {
            let started = Instant::now();
            let e = shared
                .query::<Option<String>>(redis::cmd("GET").arg(key))
                .await
                .unwrap_err();
            let took = started.elapsed();
            assert!(
                e.kind() == ErrorKind::Unavailable && took < OP_TIMEOUT / 2,
                "node 2 {what}: GET on its slot gave {e} after {took:?}"
            );
        }
        check_node_health(&shared, &cluster, 2);
        if pause {
            cluster.nodes()[2].resume();
        } else {
            cluster.nodes_mut()[2].restart();
        }
        let took = recovered(&shared, &bad).await;
        println!("node 2 back after being {what}: its keys answered after {took:?}");
    }
}

/// A sharded subscription lives on the channel's node alone: with another primary hung it is
/// established (redis-rs's cluster client did not get past its connect while any node was
/// paused), and it follows its own node through a pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_subscription_is_established_while_another_primary_is_hung() {
    let cluster = RedisCluster::start();
    let backend = RedisBackend::connect(config(&cluster)).await.unwrap();
    let channel = keys_on(&cluster, 1, 1).remove(0);
    cluster.nodes()[0].pause();
    let started = Instant::now();
    let mut sub = backend.subscribe(channel.clone());
    let subscribed = tokio::time::timeout(Duration::from_secs(5), async {
        while sub.next().await != Some(SubscriptionEvent::Subscribed) {}
    })
    .await;
    let took = started.elapsed();
    println!("subscribed with another primary paused after {took:?}");
    assert!(subscribed.is_ok(), "not subscribed after {took:?}");
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let _ = backend.publish(&channel, b"hello").await;
            if let Ok(Some(SubscriptionEvent::Message(m))) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                return m;
            }
        }
    })
    .await
    .expect("a message while another primary is paused");
    assert_eq!(got, b"hello");
    cluster.nodes()[0].resume();

    // Its own node paused: lost, then back.
    cluster.nodes()[1].pause();
    tokio::time::timeout(Duration::from_secs(10), async {
        while sub.next().await != Some(SubscriptionEvent::Lost) {}
    })
    .await
    .expect("the subscription notices its node is paused");
    cluster.nodes()[1].resume();
    tokio::time::timeout(Duration::from_secs(15), async {
        while sub.next().await != Some(SubscriptionEvent::Subscribed) {}
    })
    .await
    .expect("the subscription is back after its node resumed");
}

/// `connect_lazy` on a cluster with a primary dead: the topology and the live primaries come
/// up in the background, the dead primary's slots fail fast, and it joins once restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_cluster_backend_connects_in_the_background_with_a_primary_down() {
    let mut cluster = RedisCluster::start();
    let bad = keys_on(&cluster, 0, 2);
    let good: Vec<String> = [keys_on(&cluster, 1, 2), keys_on(&cluster, 2, 2)].concat();
    cluster.nodes_mut()[0].kill();
    let backend = RedisBackend::connect_lazy(config(&cluster)).unwrap();
    assert!(!backend.is_up());
    let took = recovered(&backend, &good).await;
    println!("lazy cluster backend served the live primaries after {took:?}");
    for key in &bad {
        let e = backend
            .query::<Option<String>>(redis::cmd("GET").arg(key))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    }
    check_node_health(&backend, &cluster, 0);
    cluster.nodes_mut()[0].restart();
    recovered(&backend, &bad).await;
    eventually("the backend to be up", || async {
        backend.is_up().then_some(())
    })
    .await;
}
