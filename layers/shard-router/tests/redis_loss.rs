//! The shared topology when Redis loses its data (a restart without persistence) and comes back
//! empty or re-seeded by a router holding an older map: topologies never move backwards, the
//! stored one converges on the newest epoch a router holds, and a router that knows of a newer
//! epoch than its own does not re-seed from its stale map.
#![cfg(feature = "redis")]

use std::time::Duration;

use omega_core::redis::{RedisBackend, RedisConfig};
use omega_shard_router::redis::{RedisTopology, Refresh, Reseed, SyncError};
use omega_shard_router::{Algorithm, Change, Node, Topology, TopologyHandle};
use omega_testkit::RedisServer;

async fn backend(server: &RedisServer) -> RedisBackend {
    RedisBackend::connect(
        RedisConfig::url(server.url())
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

/// A router "process" without a sync task: refreshes are called by the test.
async fn router(server: &RedisServer) -> (RedisTopology, TopologyHandle) {
    let handle = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let shared = RedisTopology::new(backend(server).await, "users", handle.clone()).unwrap();
    shared.join(initial()).await.unwrap();
    (shared, handle)
}

/// Refreshes until Redis answers again after a restart; the refresh's outcome.
async fn until_up(shared: &RedisTopology) -> Refresh {
    for _ in 0..200 {
        if let Ok(outcome) = shared.refresh().await {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Redis did not come back");
}

fn stored_epoch(server: &RedisServer, shared: &RedisTopology) -> String {
    server.cli(&["HGET", shared.key(), "epoch"])
}

/// Redis restarts empty; a new router joins and seeds it with its initial map (epoch 1). A
/// router at epoch 3 must not go back to epoch 1 on its next refresh: it stores its own, newer
/// map again, and the newcomer adopts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_never_moves_the_topology_backwards() {
    let mut server = RedisServer::start();
    let (a, ha) = router(&server).await;
    a.apply(&[Change::Add(Node::new("n3", "10.0.0.3:80"))])
        .await
        .unwrap();
    let t = a
        .apply(&[Change::Add(Node::new("n4", "10.0.0.4:80"))])
        .await
        .unwrap();
    assert_eq!(t.epoch(), 3);
    server.restart();
    // The newcomer joins the empty Redis: its initial map (epoch 1) is stored.
    let (c, hc) = router(&server).await;
    assert_eq!(hc.epoch(), 1);
    assert_eq!(stored_epoch(&server, &c), "1");
    let outcome = until_up(&a).await;
    println!("A's first refresh after the restart: {outcome:?}");
    assert_eq!(
        outcome,
        Refresh::Reseeded(Reseed {
            found: Some(1),
            epoch: 3
        })
    );
    assert_eq!(a.reseeds(), 1);
    assert_eq!(a.refresh().await.unwrap(), Refresh::Unchanged);
    println!(
        "after the refresh: A at epoch {}, Redis at epoch {}",
        ha.epoch(),
        stored_epoch(&server, &a)
    );
    assert_eq!(ha.epoch(), 3, "A's topology went back from epoch 3");
    assert_eq!(ha.load().len(), 5);
    assert_eq!(
        stored_epoch(&server, &a),
        "3",
        "Redis holds the newest map again"
    );
    assert_eq!(c.refresh().await.unwrap(), Refresh::Adopted { epoch: 3 });
    assert_eq!(hc.epoch(), 3);
    assert_eq!(hc.load().len(), 5);
}

/// Redis restarts empty and a newcomer seeds it with its initial map (epoch 1); a change made
/// through a router at epoch 3 must be applied to that router's map (the newest known), not to
/// the stale one Redis now holds, which would drop the earlier changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_a_loss_builds_on_the_newest_map_known() {
    let mut server = RedisServer::start();
    let (a, ha) = router(&server).await;
    for id in ["n3", "n4"] {
        a.apply(&[Change::Add(Node::new(id, "10.0.0.9:80"))])
            .await
            .unwrap();
    }
    server.restart();
    let (_c, hc) = router(&server).await;
    assert_eq!((hc.epoch(), stored_epoch(&server, &a)), (1, "1".to_owned()));
    // A's connection comes back with the first command after the restart.
    let mut applied = None;
    for _ in 0..200 {
        match a
            .apply(&[Change::Add(Node::new("n5", "10.0.0.5:80"))])
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
    let ids: Vec<&str> = t.nodes().iter().map(|n| n.id()).collect();
    println!("after the change: epoch {}, nodes {ids:?}", t.epoch());
    assert_eq!(
        ids,
        ["n0", "n1", "n2", "n3", "n4", "n5"],
        "earlier changes lost"
    );
    assert_eq!(t.epoch(), 4);
    assert_eq!(ha.epoch(), 4);
    assert_eq!(stored_epoch(&server, &a), "4");
    assert_eq!(a.reseeds(), 1, "the re-seed is reported");
}

/// A router that has seen a newer epoch than the map it holds (its read of that map failed)
/// does not re-seed a Redis that lost its data from its stale map: the change is refused, and
/// the map stays for a router holding the newest epoch to re-seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_knows_its_map_is_stale_does_not_reseed_from_it() {
    let mut server = RedisServer::start();
    let (a, _ha) = router(&server).await;
    let (b, hb) = router(&server).await;
    a.apply(&[Change::Add(Node::new("n3", "10.0.0.3:80"))])
        .await
        .unwrap();
    a.apply(&[Change::Add(Node::new("n4", "10.0.0.4:80"))])
        .await
        .unwrap();
    // B reads the stored epoch (3), but the map itself cannot be read (damaged), so B keeps
    // its map of epoch 1 while knowing epoch 3 exists.
    server.cli(&["HSET", a.key(), "data", "damaged"]);
    assert!(b.refresh().await.is_err());
    assert_eq!(hb.epoch(), 1);
    server.restart();
    assert_eq!(b.newest_known_epoch(), 3);
    assert_eq!(
        until_up(&b).await,
        Refresh::Stale {
            local: 1,
            newest: 3
        }
    );
    let out = b
        .apply(&[Change::Add(Node::new("n9", "10.0.0.9:80"))])
        .await;
    println!(
        "B's change on a lost topology: {:?}; Redis at epoch {:?}",
        out.as_ref().map(|t| t.epoch()),
        stored_epoch(&server, &b)
    );
    assert!(
        matches!(
            out,
            Err(SyncError::Stale {
                local: 1,
                newest: 3
            })
        ),
        "B re-seeded from its stale map of epoch 1"
    );
    assert_eq!(b.reseeds(), 0);
    assert_eq!(hb.epoch(), 1);
    assert_eq!(
        stored_epoch(&server, &b),
        "",
        "nothing stored from the stale map"
    );
}

/// With sync tasks running, the routers converge by themselves after Redis lost its data and a
/// newcomer re-seeded it with an older map: the newest epoch ends up stored and adopted by all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_tasks_converge_on_the_newest_epoch_after_a_loss() {
    let mut server = RedisServer::start();
    let (a, ha) = router(&server).await;
    let _ta = a.spawn_sync(Duration::from_millis(20));
    a.apply(&[Change::Add(Node::new("n3", "10.0.0.3:80"))])
        .await
        .unwrap();
    server.restart();
    let (c, hc) = router(&server).await;
    let _tc = c.spawn_sync(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut lowest = ha.epoch();
    while hc.epoch() != 2 || stored_epoch(&server, &a) != "2" {
        lowest = lowest.min(ha.epoch());
        assert!(tokio::time::Instant::now() < deadline, "never converged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(lowest, 2, "A went backwards meanwhile");
    assert_eq!(hc.load().len(), 4);
    assert!(a.reseeds() >= 1);
}

/// A router whose handle starts from its own file (epoch 1, as the gateway builds it) adopts the
/// stored topology of the same epoch when it joins: at the same epoch, Redis wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_adopts_a_stored_topology_of_the_same_epoch() {
    let server = RedisServer::start();
    let (_a, ha) = router(&server).await;
    let own = Topology::new(
        Algorithm::table(),
        [Node::new("x", "10.9.0.1:80"), Node::new("y", "10.9.0.2:80")],
    )
    .unwrap();
    let handle = TopologyHandle::new(own.clone());
    let b = RedisTopology::new(backend(&server).await, "users", handle.clone()).unwrap();
    let joined = b.join(own).await.unwrap();
    assert_eq!(joined.epoch(), 1);
    assert_eq!(joined.nodes(), ha.load().nodes(), "B kept its own map");
    assert_eq!(handle.load().nodes(), ha.load().nodes());
}
