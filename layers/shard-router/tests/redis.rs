//! The shared topology over a real Redis: two routers converge after a change (through
//! notifications and through polling), concurrent changes are not lost, and a router keeps
//! routing on its last topology while Redis is down.
#![cfg(feature = "redis")]

use std::time::Duration;

use omega_core::redis::{RedisBackend, RedisConfig};
use omega_shard_router::redis::{RedisTopology, SyncError, decode, encode};
use omega_shard_router::{
    Algorithm, BoxError, Change, Node, ShardRouter, Topology, TopologyErrorKind, TopologyHandle,
};
use omega_testkit::RedisServer;
use tower::{ServiceExt, service_fn};

async fn backend(url: String) -> RedisBackend {
    RedisBackend::connect(
        RedisConfig::url(url)
            .op_timeout(Duration::from_millis(300))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .unwrap()
}

fn initial() -> Topology {
    Topology::new(
        Algorithm::table(),
        (0..3).map(|i| Node::new(format!("n{i}"), format!("10.0.0.{i}:80"))),
    )
    .unwrap()
}

/// A router "process": its own connection, handle and sync task.
async fn instance(
    server: &RedisServer,
    poll: Duration,
    notify: bool,
) -> (
    RedisTopology,
    TopologyHandle,
    omega_shard_router::redis::SyncTask,
) {
    let handle = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let shared = RedisTopology::new(backend(server.url()).await, "users", handle.clone()).unwrap();
    shared.join(initial()).await.unwrap();
    let task = shared.spawn_sync(poll, notify.then(|| server.url()));
    (shared, handle, task)
}

async fn wait_epoch(h: &TopologyHandle, epoch: u64) {
    for _ in 0..1000 {
        if h.epoch() == epoch {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("epoch {epoch} not reached (at {})", h.epoch());
}

fn same_routing(a: &Topology, b: &Topology) {
    assert_eq!(a.epoch(), b.epoch());
    assert_eq!(a.nodes(), b.nodes());
    assert_eq!(a.slots(), b.slots());
    for k in 0..1000u64 {
        assert_eq!(a.owner(&k).unwrap().id(), b.owner(&k).unwrap().id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_converge_through_notifications() {
    let server = RedisServer::start();
    // A poll interval far beyond the test: only the pub/sub notification can bring B along.
    let (a, ha, _ta) = instance(&server, Duration::from_secs(3600), true).await;
    let (_b, hb, _tb) = instance(&server, Duration::from_secs(3600), true).await;
    same_routing(&ha.load(), &hb.load());
    // Let B's subscription settle, then change through A.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = a
        .apply(&[Change::Add(Node::new("n3", "10.0.0.3:80"))])
        .await
        .unwrap();
    assert_eq!(ha.epoch(), t.epoch());
    wait_epoch(&hb, t.epoch()).await;
    same_routing(&ha.load(), &hb.load());
    let t = a
        .apply(&[Change::remove("n1"), Change::reweight("n0", 3)])
        .await
        .unwrap();
    wait_epoch(&hb, t.epoch()).await;
    same_routing(&ha.load(), &hb.load());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_converge_by_polling_and_concurrent_changes_are_not_lost() {
    let server = RedisServer::start();
    let (a, ha, _ta) = instance(&server, Duration::from_millis(20), false).await;
    let (b, hb, _tb) = instance(&server, Duration::from_millis(20), false).await;
    let mut tasks = Vec::new();
    for (i, s) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for j in 0..5 {
                s.apply(&[Change::Add(Node::new(format!("x{i}-{j}"), "10.1.0.1:80"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 1 initial + 10 changes, none lost.
    wait_epoch(&ha, 11).await;
    wait_epoch(&hb, 11).await;
    assert_eq!(ha.load().len(), 13);
    same_routing(&ha.load(), &hb.load());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_keeps_routing_on_its_last_topology_while_redis_is_down() {
    let mut server = RedisServer::start();
    let (a, ha, _ta) = instance(&server, Duration::from_millis(20), true).await;
    let router = ShardRouter::builder(ha.clone())
        .key(|k: &u64| Some(*k))
        .build(|n: &Node| {
            let id = n.id().to_owned();
            service_fn(move |_: u64| {
                let id = id.clone();
                async move { Ok::<_, BoxError>(id) }
            })
        });
    let before = ha.load();
    server.kill();
    // Changes fail with the backend's error and change nothing locally.
    let err = a
        .apply(&[Change::Add(Node::new("n9", "x"))])
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::Redis(_)), "{err}");
    assert!(a.refresh().await.is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(std::sync::Arc::ptr_eq(&ha.load(), &before));
    for k in 0..100u64 {
        assert_eq!(
            router.clone().oneshot(k).await.unwrap(),
            before.owner(&k).unwrap().id()
        );
    }
    // Redis comes back empty (no persistence): the next change re-seeds it from the local
    // topology.
    server.restart();
    let mut applied = None;
    for _ in 0..200 {
        match a
            .apply(&[Change::Add(Node::new("n9", "10.0.0.9:80"))])
            .await
        {
            Ok(t) => {
                applied = Some(t);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    let t = applied.expect("Redis came back");
    assert_eq!(t.epoch(), before.epoch() + 1);
    assert_eq!(router.topology().len(), 4);
}

#[test]
fn encoding_round_trips_and_rejects_damage() {
    for alg in [
        Algorithm::table(),
        Algorithm::ring(),
        Algorithm::Ketama,
        Algorithm::Rendezvous,
    ] {
        let t = Topology::new(
            alg,
            (0..5).map(|i| Node::new(format!("n{i}"), format!("h{i}:1")).with_weight(i + 1)),
        )
        .unwrap()
        .with(Change::remove("n2"))
        .unwrap();
        let bytes = encode(&t);
        let back = decode(&bytes).unwrap();
        assert_eq!(back.epoch(), t.epoch());
        assert_eq!(back.nodes(), t.nodes());
        assert_eq!(back.slots(), t.slots());
        for k in 0..200u64 {
            assert_eq!(back.owner(&k), t.owner(&k));
        }
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]).unwrap_err().kind(),
            TopologyErrorKind::Decode
        );
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(decode(&bad).unwrap_err().to_string().contains("magic"));
    }
    // A table that does not match its nodes' weights is rejected.
    let t = initial();
    let mut bytes = encode(&t);
    let n = bytes.len();
    let (a, b) = (bytes[n - 2], bytes[n - 4]);
    bytes[n - 2] = if a == 0 { 1 } else { 0 };
    let _ = b;
    let err = decode(&bytes).unwrap_err();
    assert_eq!(err.kind(), TopologyErrorKind::Decode, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_converge_on_a_redis_cluster() {
    let cluster = omega_testkit::RedisCluster::start();
    let urls = cluster.urls();
    let mut instances = Vec::new();
    for i in 0..2 {
        let backend = RedisBackend::connect(
            RedisConfig::cluster(urls.clone()).op_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
        let handle = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
        let shared = RedisTopology::new(backend, "users", handle.clone()).unwrap();
        shared.join(initial()).await.unwrap();
        // Each instance listens on a different node: cluster PUBLISH reaches every node.
        let task = shared.spawn_sync(Duration::from_secs(3600), Some(urls[i].clone()));
        instances.push((shared, handle, task));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = instances[0]
        .0
        .apply(&[Change::Add(Node::new("n3", "10.0.0.3:80"))])
        .await
        .unwrap();
    wait_epoch(&instances[1].1, t.epoch()).await;
    same_routing(&instances[0].1.load(), &instances[1].1.load());
}
