//! The node registry over a real Redis and a real 3-node Redis Cluster: announced nodes are
//! listed with their address and weight, a node whose heartbeat stops leaves after its TTL, a
//! router follows the registry (nodes join once seen alive in a row, leave when gone), and a
//! node flapping faster than it can be confirmed never joins.
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_core::redis::{RedisBackend, RedisConfig};
use omega_shard_router::redis::registry::{Damper, Registry};
use omega_shard_router::{Algorithm, Node, Topology, TopologyHandle};
use omega_testkit::{RedisCluster, RedisServer};

async fn backend(config: RedisConfig) -> RedisBackend {
    RedisBackend::connect(config.op_timeout(Duration::from_millis(300)))
        .await
        .unwrap()
}

/// Polls `check` every 20 ms for at most 10 s; how long it took.
async fn within(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gave up: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn ids(nodes: &[Node]) -> Vec<String> {
    let mut ids: Vec<String> = nodes.iter().map(|n| n.id().to_owned()).collect();
    ids.sort();
    ids
}

async fn nodes_join_and_leave(registry: Registry) {
    let a = Node::new("a", "http://10.0.0.1:80").with_weight(2);
    registry
        .announce(&a, Duration::from_secs(60))
        .await
        .unwrap();
    let b = registry.spawn_announcer(
        Node::new("b", "http://10.0.0.2:80"),
        Duration::from_millis(600),
    );
    // The announcer's first heartbeat goes out on its own task.
    within("b is announced", async || {
        registry.live().await.is_ok_and(|live| live.len() == 2)
    })
    .await;
    let live = registry.live().await.unwrap();
    assert_eq!(ids(&live), ["a", "b"]);
    let a_live = live.iter().find(|n| n.id() == "a").unwrap();
    assert_eq!(
        (a_live.address(), a_live.weight()),
        ("http://10.0.0.1:80", 2)
    );

    // A router follows: the file's node stays, announced nodes join.
    let handle = TopologyHandle::new(
        Topology::new(
            Algorithm::table(),
            [Node::new("seed", "http://10.0.0.9:80")],
        )
        .unwrap(),
    );
    let _follow = registry.spawn_follow(handle.clone(), Duration::from_millis(50), 2);
    let joined = within("a and b join", async || handle.load().nodes().len() == 3).await;
    println!("announced nodes joined the router's map after {joined:?}");

    // b's heartbeat stops: it leaves after its TTL; a withdrawn node leaves at once.
    drop(b);
    let left = within("b leaves", async || handle.load().node("b").is_none()).await;
    println!("a node whose heartbeat stopped left after {left:?} (TTL 600 ms)");
    assert!(left >= Duration::from_millis(300), "{left:?}");
    registry.withdraw("a").await.unwrap();
    within("a leaves", async || handle.load().node("a").is_none()).await;
    assert!(
        handle.load().node("seed").is_some(),
        "the file's node stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_over_redis() {
    let server = RedisServer::start();
    let registry = Registry::new(backend(RedisConfig::url(server.url())).await, "api").unwrap();
    nodes_join_and_leave(registry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_over_redis_cluster() {
    let cluster = RedisCluster::start();
    let config = RedisConfig::cluster(cluster.urls());
    let backend = backend(config).await;
    assert!(backend.is_cluster());
    nodes_join_and_leave(Registry::new(backend, "api").unwrap()).await;
}

#[test]
fn a_flapping_node_joins_only_once_seen_alive_in_a_row() {
    let topology = Topology::new(
        Algorithm::table(),
        [Node::new("seed", "http://10.0.0.9:80")],
    )
    .unwrap();
    let flappy = [Node::new("f", "http://10.0.0.5:80")];
    let mut damper = Damper::new(3);
    // Alive, gone, alive, alive, gone: never three reads in a row.
    for live in [&flappy[..], &[], &flappy[..], &flappy[..], &[]] {
        assert!(damper.changes(live, &topology).is_empty());
    }
    for _ in 0..2 {
        assert!(damper.changes(&flappy, &topology).is_empty());
    }
    let changes = damper.changes(&flappy, &topology);
    assert_eq!(changes.len(), 1, "{changes:?}");
    // Nodes it did not add are never its to remove.
    assert!(damper.changes(&[], &topology).is_empty());
    // Managing all but the configured nodes: a node another router added leaves too.
    let shared = Topology::new(
        Algorithm::table(),
        [
            Node::new("seed", "http://10.0.0.9:80"),
            Node::new("other", "http://10.0.0.8:80"),
        ],
    )
    .unwrap();
    let mut damper = Damper::managing_all_but(2, [std::sync::Arc::from("seed")]);
    let changes = damper.changes(&[], &shared);
    assert_eq!(
        format!("{changes:?}"),
        format!("{:?}", [omega_shard_router::Change::remove("other")])
    );
}

/// The next change of a `tower::discover::Discover`, within 10 s.
async fn next_change<D>(discover: &mut D) -> tower::discover::Change<D::Key, D::Service>
where
    D: tower::discover::Discover + Unpin,
    D::Error: std::fmt::Debug,
{
    let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *discover).poll_discover(cx));
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("a change within 10 s")
        .expect("the stream goes on")
        .unwrap()
}

/// The registry as a `tower::discover` stream: announced nodes come as inserts with the
/// service made for them, a node whose heartbeat stops comes as a remove after its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_is_a_tower_discover_stream() {
    use tower::discover::Change;
    let server = RedisServer::start();
    let registry = Registry::new(backend(RedisConfig::url(server.url())).await, "api").unwrap();
    registry
        .announce(
            &Node::new("a", "http://10.0.0.1:80"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let b = registry.spawn_announcer(
        Node::new("b", "http://10.0.0.2:80"),
        Duration::from_millis(600),
    );
    // The "service" of each node is its address, to see that `make` saw the node.
    let mut discover = registry.discover(Duration::from_millis(50), 2, |node: &Node| {
        node.address().to_owned()
    });
    let mut inserted = Vec::new();
    while inserted.len() < 2 {
        match next_change(&mut discover).await {
            Change::Insert(id, address) => inserted.push((id.to_string(), address)),
            Change::Remove(id) => panic!("{id} removed before it was inserted"),
        }
    }
    inserted.sort();
    assert_eq!(
        inserted,
        [
            ("a".to_owned(), "http://10.0.0.1:80".to_owned()),
            ("b".to_owned(), "http://10.0.0.2:80".to_owned())
        ]
    );
    drop(b);
    let started = Instant::now();
    match next_change(&mut discover).await {
        Change::Remove(id) => assert_eq!(&*id, "b"),
        Change::Insert(id, _) => panic!("{id} inserted again"),
    }
    println!(
        "b's remove came {:?} after its heartbeat stopped (TTL 600 ms)",
        started.elapsed()
    );
}
