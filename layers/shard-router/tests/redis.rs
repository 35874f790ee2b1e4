//! The shared topology over a real Redis and a real 3-node Redis Cluster: two routers converge
//! after a change (through notifications and through polling), concurrent changes are not
//! lost, a router keeps routing on its last topology while Redis is down, a Redis that lost
//! the topology gets it back from the routers, and a router catches up on a change announced
//! while its channel's cluster node was down.
#![cfg(feature = "redis")]

use std::time::Duration;

use omega_core::redis::{RedisBackend, RedisConfig};
use omega_shard_router::redis::{RedisTopology, SyncError, decode, encode};
use omega_shard_router::{
    Algorithm, BoxError, Change, KetamaFlavor, Node, ShardRouter, Topology, TopologyErrorKind,
    TopologyHandle,
};
use omega_testkit::{RedisCluster, RedisServer};
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

type Instance = (
    RedisTopology,
    TopologyHandle,
    omega_shard_router::redis::SyncTask,
);

/// A router "process": its own backend, handle and sync task.
async fn instance(server: &RedisServer, poll: Duration) -> Instance {
    joined(backend(server.url()).await, "users", poll).await
}

async fn joined(backend: RedisBackend, name: &str, poll: Duration) -> Instance {
    let handle = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let shared = RedisTopology::new(backend, name, handle.clone()).unwrap();
    shared.join(initial()).await.unwrap();
    let task = shared.spawn_sync(poll);
    (shared, handle, task)
}

async fn wait_epoch(h: &TopologyHandle, epoch: u64) {
    wait_epoch_within(h, epoch, Duration::from_secs(5)).await;
}

async fn wait_epoch_within(h: &TopologyHandle, epoch: u64, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if h.epoch() == epoch {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("epoch {epoch} not reached in {limit:?} (at {})", h.epoch());
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
    let (a, ha, _ta) = instance(&server, Duration::from_secs(3600)).await;
    let (_b, hb, _tb) = instance(&server, Duration::from_secs(3600)).await;
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
    let (a, ha, _ta) = instance(&server, Duration::from_millis(20)).await;
    let (b, hb, _tb) = instance(&server, Duration::from_millis(20)).await;
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
    let (a, ha, _ta) = instance(&server, Duration::from_millis(20)).await;
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
        Algorithm::Ketama(KetamaFlavor::Libketama),
        Algorithm::Ketama(KetamaFlavor::Libmemcached),
        Algorithm::Ketama(KetamaFlavor::SpymemcachedWeighted),
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
async fn a_redis_that_lost_the_topology_gets_it_back_from_the_routers() {
    let mut server = RedisServer::start();
    let (a, ha, _ta) = instance(&server, Duration::from_millis(20)).await;
    let t = a
        .apply(&[Change::Add(Node::new("n3", "10.0.0.3:80"))])
        .await
        .unwrap();
    assert_eq!(t.epoch(), 2);
    // Redis restarts empty (no persistence); the sync task stores the local topology again.
    server.restart();
    let key = a.key().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.cli(&["HGET", &key, "epoch"]) != "2" {
        assert!(tokio::time::Instant::now() < deadline, "never re-seeded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A router joining now adopts the fleet's topology, not its own initial one.
    let (_c, hc, _tc) = instance(&server, Duration::from_secs(3600)).await;
    same_routing(&ha.load(), &hc.load());
    assert_eq!(hc.load().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_names_follow_the_name_rule() {
    let server = RedisServer::start();
    let handle = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let backend = backend(server.url()).await;
    for bad in ["", "two words", "{tag}"] {
        let err = RedisTopology::new(backend.clone(), bad, handle.clone()).unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::InvalidConfig, "{bad:?}");
        assert!(err.to_string().contains("topology name"), "{err}");
    }
    let ok = RedisTopology::new(backend, "api:v2", handle).unwrap();
    assert_eq!(ok.key(), "omega:{shard:api:v2}:topology");
    assert_eq!(ok.channel(), "omega:shard:api:v2:changes");
}

async fn cluster_backend(cluster: &RedisCluster) -> RedisBackend {
    RedisBackend::connect(
        RedisConfig::cluster(cluster.urls())
            .op_timeout(Duration::from_millis(500))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .unwrap()
}

/// The node that owns `key`'s slot (and a sharded channel of that name): it answers a read of
/// it, the others redirect.
fn owner_of(cluster: &RedisCluster, key: &str) -> usize {
    (0..cluster.nodes().len())
        .find(|&i| !cluster.nodes()[i].cli(&["GET", key]).contains("MOVED"))
        .expect("one node owns the slot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_converge_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let backend = cluster_backend(&cluster).await;
        assert!(backend.is_cluster());
        instances.push(joined(backend, "users", Duration::from_secs(3600)).await);
    }
    same_routing(&instances[0].1.load(), &instances[1].1.load());
    // Changes go through either router and reach the other through the sharded channel (or,
    // when the announcement comes before the other's subscription is up, through the re-read
    // that follows the subscription).
    for (i, node) in ["n3", "n4"].into_iter().enumerate() {
        let (from, to) = (&instances[i % 2], &instances[(i + 1) % 2]);
        let t = from
            .0
            .apply(&[Change::Add(Node::new(node, "10.0.0.9:80"))])
            .await
            .unwrap();
        wait_epoch_within(&to.1, t.epoch(), Duration::from_secs(15)).await;
        same_routing(&from.1.load(), &to.1.load());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_catches_up_after_its_channels_node_was_killed_and_restarted() {
    let mut cluster = RedisCluster::start();
    // The other nodes keep serving their slots while one is down.
    for node in cluster.nodes() {
        node.cli(&["CONFIG", "SET", "cluster-require-full-coverage", "no"]);
    }
    let (a_backend, b_backend) = (
        cluster_backend(&cluster).await,
        cluster_backend(&cluster).await,
    );
    // A topology whose channel lives on another node than its stored topology.
    let scratch = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let (name, channel_node) = (0..)
        .map(|i| format!("users{i}"))
        .find_map(|name| {
            let t = RedisTopology::new(a_backend.clone(), &name, scratch.clone()).unwrap();
            let (k, c) = (owner_of(&cluster, t.key()), owner_of(&cluster, t.channel()));
            (k != c).then_some((name, c))
        })
        .unwrap();
    let (a, ha, _ta) = joined(a_backend, &name, Duration::from_secs(3600)).await;
    let (_b, hb, _tb) = joined(b_backend, &name, Duration::from_secs(3600)).await;
    // B hears A's changes through the channel (its poll is an hour away).
    let t = a
        .apply(&[Change::Add(Node::new("n3", "10.0.0.3:80"))])
        .await
        .unwrap();
    wait_epoch_within(&hb, t.epoch(), Duration::from_secs(15)).await;

    // The channel's node dies: A's next change is stored, but its announcement is lost.
    cluster.nodes_mut()[channel_node].kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let t = loop {
        match a.apply(&[Change::remove("n1")]).await {
            Ok(t) => break t,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(ha.epoch(), t.epoch());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(hb.epoch(), t.epoch(), "B cannot have heard of it");

    // The node is back: B's subscription is re-established, and B re-reads the topology.
    cluster.nodes_mut()[channel_node].restart();
    wait_epoch_within(&hb, t.epoch(), Duration::from_secs(30)).await;
    same_routing(&ha.load(), &hb.load());
    assert!(hb.load().node("n1").is_none());
}
