//! An operation runs at most once: a reply lost with its connection is never answered by
//! sending the request again (on a server and on a cluster), redirects (`MOVED`, `ASK`) are
//! followed without running a script twice, and a backend marked down by a timeout is probed
//! back up without any traffic.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::{eventually, keys_on};
use omega_core::ErrorKind;
use omega_core::redis::{RedisBackend, RedisConfig, Script};
use omega_testkit::{FaultProxy, RedisCluster, RedisServer};

const OP_TIMEOUT: Duration = Duration::from_millis(200);

/// Counts its runs: every run adds one to `KEYS[1]`.
const COUNT: &str = "return redis.call('INCR', KEYS[1])";

fn tuned(cfg: RedisConfig) -> RedisConfig {
    cfg.op_timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_millis(300))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// Evaluates `COUNT` on `key` with its reply dropped by `proxy`: the call fails with an
/// unknown outcome within the op timeout, and the script ran exactly once.
async fn lost_reply_runs_once(backend: &RedisBackend, proxy: &FaultProxy, key: &str) -> i64 {
    let script = Script::new("count", COUNT);
    assert_eq!(
        backend.eval::<i64>(&script.call().key(key)).await.unwrap(),
        1
    );
    proxy.drop_next_reply();
    let started = Instant::now();
    let outcome = backend.eval::<i64>(&script.call().key(key)).await;
    let took = started.elapsed();
    assert_eq!(proxy.pending_reply_drops(), 0, "the reply was not dropped");
    println!("the call whose reply was lost answered {outcome:?} after {took:?}");
    assert!(took <= OP_TIMEOUT + Duration::from_millis(50), "{took:?}");
    match outcome {
        Err(e) => assert!(e.outcome_unknown(), "{e}"),
        Ok(n) => panic!("the script ran again after its reply was lost: it answered {n}"),
    }
    eventually("the backend to answer again", || async {
        backend.query::<i64>(redis::cmd("GET").arg(key)).await.ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_whose_reply_is_lost_runs_once_on_a_server() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let backend = RedisBackend::connect(tuned(RedisConfig::url(proxy.url())))
        .await
        .unwrap();
    let runs = lost_reply_runs_once(&backend, &proxy, "runs").await;
    assert_eq!(runs, 2, "two calls, two runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_whose_reply_is_lost_runs_once_on_a_cluster() {
    let cluster = RedisCluster::start();
    // Each node behind its own proxy, and announced at the proxy's port, so the client that
    // discovers the topology talks to the nodes through the proxies only.
    let mut proxies = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let proxy = FaultProxy::start(node.addr()).await;
        cluster.announce_port(i, proxy.addr().port());
        proxies.push(proxy);
    }
    let seeds: Vec<String> = proxies.iter().map(FaultProxy::url).collect();
    let backend = RedisBackend::connect(tuned(RedisConfig::cluster(seeds)))
        .await
        .unwrap();
    let key = keys_on(&cluster, 1, 1).remove(0);
    let runs = lost_reply_runs_once(&backend, &proxies[1], &key).await;
    let stored = cluster.nodes()[1].cli(&["GET", &key]);
    assert_eq!(
        (runs, stored.as_str()),
        (2, "2"),
        "two calls must run the script twice, not three times"
    );
}

/// A slot moves from node `a` to node `b` while the backend uses it: during the migration a
/// script on a key not yet moved is answered `ASK` and runs on `b` (once, `NOSCRIPT` there
/// included); after it, the stale slot map sends calls to `a`, which answers `MOVED`; each
/// call runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_and_a_script_runs_once() {
    let cluster = RedisCluster::start();
    let backend = RedisBackend::connect(tuned(RedisConfig::cluster(cluster.urls())))
        .await
        .unwrap();
    let script = Script::new("count", COUNT);
    let (a, b) = (0, 1);
    let moved = keys_on(&cluster, a, 1).remove(0);
    let slot = omega_core::hash_slot(moved.as_bytes()).to_string();
    // A key of the same slot that does not exist yet.
    let asked = format!("{{{moved}}}:asked");
    assert_eq!(
        backend
            .eval::<i64>(&script.call().key(&moved))
            .await
            .unwrap(),
        1
    );
    let id = |i: usize| cluster.nodes()[i].cli(&["CLUSTER", "MYID"]);
    let (id_a, id_b) = (id(a), id(b));
    let node_b = cluster.nodes()[b].addr();

    cluster.nodes()[b].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id_a]);
    cluster.nodes()[a].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id_b]);
    // `asked` is not on `a`: `a` answers ASK, the call goes to `b` with ASKING.
    assert_eq!(
        backend
            .eval::<i64>(&script.call().key(&asked))
            .await
            .unwrap(),
        1
    );
    let port_b = node_b.port().to_string();
    cluster.nodes()[a].cli(&[
        "MIGRATE",
        "127.0.0.1",
        &port_b,
        "",
        "0",
        "5000",
        "KEYS",
        &moved,
    ]);
    for i in 0..cluster.nodes().len() {
        cluster.nodes()[i].cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &id_b]);
    }
    // The backend still maps the slot to `a`, which now answers MOVED.
    assert_eq!(
        backend
            .eval::<i64>(&script.call().key(&moved))
            .await
            .unwrap(),
        2
    );
    let get = |k: &str| cluster.nodes()[b].cli(&["GET", k]);
    assert_eq!((get(&moved), get(&asked)), ("2".into(), "1".into()));
    // Plain commands follow the new owner too.
    let v: i64 = backend.query(redis::cmd("GET").arg(&moved)).await.unwrap();
    assert_eq!(v, 2);
}

/// One timeout marks the backend down without dropping its connection (it takes
/// `timeouts_before_reconnect` of them); with no traffic at all, the backend probes the
/// server and is up again soon after the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_marked_down_by_a_timeout_is_probed_back_up_without_traffic() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(tuned(RedisConfig::url(server.url())))
        .await
        .unwrap();
    check_probe(&backend, || server.pause(), || server.resume(), "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_marked_down_by_a_timeout_is_probed_back_up_without_traffic() {
    let cluster = RedisCluster::start();
    let backend = RedisBackend::connect(tuned(RedisConfig::cluster(cluster.urls())))
        .await
        .unwrap();
    let key = keys_on(&cluster, 2, 1).remove(0);
    let node = &cluster.nodes()[2];
    check_probe(&backend, || node.pause(), || node.resume(), &key).await;
}

async fn check_probe(
    backend: &RedisBackend,
    pause: impl FnOnce(),
    resume: impl FnOnce(),
    key: &str,
) {
    assert!(backend.is_up());
    pause();
    let e = backend
        .query::<Option<String>>(redis::cmd("GET").arg(key))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(!backend.is_up());
    resume();
    let resumed = Instant::now();
    // No operation from here on: only the backend's own probe can bring it up.
    let deadline = resumed + Duration::from_secs(5);
    while !backend.is_up() {
        assert!(
            Instant::now() < deadline,
            "the backend stayed down for {:?} after the server resumed, with nobody sending \
             an operation",
            resumed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("up again {:?} after the resume", resumed.elapsed());
    let v: Option<String> = backend.query(redis::cmd("GET").arg(key)).await.unwrap();
    assert_eq!(v, None);
}

/// A slot moves to a node the backend's topology does not know (it joined the cluster after
/// the backend connected): the `MOVED` answer makes the operation wait for a refresh of the
/// topology, within its op timeout, and run there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_a_node_the_backend_does_not_know_is_followed() {
    let mut cluster = RedisCluster::start();
    let backend = RedisBackend::connect(tuned(RedisConfig::cluster(cluster.urls())))
        .await
        .unwrap();
    let script = Script::new("count", COUNT);
    let key = keys_on(&cluster, 0, 1).remove(0);
    assert_eq!(
        backend.eval::<i64>(&script.call().key(&key)).await.unwrap(),
        1
    );
    assert_eq!(backend.node_health().len(), 3);

    let new = cluster.add_node();
    let slot = omega_core::hash_slot(key.as_bytes()).to_string();
    let id = |i: usize| cluster.nodes()[i].cli(&["CLUSTER", "MYID"]);
    let (id_old, id_new) = (id(0), id(new));
    cluster.nodes()[new].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id_old]);
    cluster.nodes()[0].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id_new]);
    let port = cluster.nodes()[new].port().to_string();
    cluster.nodes()[0].cli(&["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", &key]);
    for i in 0..cluster.nodes().len() {
        cluster.nodes()[i].cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &id_new]);
    }

    let started = Instant::now();
    let n = backend.eval::<i64>(&script.call().key(&key)).await.unwrap();
    let took = started.elapsed();
    println!("MOVED to a new node, refreshed and run there in {took:?}");
    assert_eq!(n, 2);
    assert!(took < OP_TIMEOUT, "{took:?}");
    assert_eq!(cluster.nodes()[new].cli(&["GET", &key]), "2");
    let nodes = backend.node_health();
    let new_addr = cluster.nodes()[new].addr().to_string();
    assert!(
        nodes.iter().any(|h| h.target == new_addr && h.is_up()),
        "{nodes:?}"
    );
    // `SCRIPT LOAD` goes to every primary, the new one included.
    let other = Script::new("other", "return 7");
    backend.load_script(&other).await.unwrap();
    for node in cluster.nodes() {
        assert_eq!(node.cli(&["SCRIPT", "EXISTS", other.sha()]), "1");
    }
}

/// Moves `key`'s slot from node `from` to node `to` (the key with it).
fn move_slot(cluster: &RedisCluster, key: &str, from: usize, to: usize) {
    let slot = omega_core::hash_slot(key.as_bytes()).to_string();
    let id = |i: usize| cluster.nodes()[i].cli(&["CLUSTER", "MYID"]);
    let (id_from, id_to) = (id(from), id(to));
    cluster.nodes()[to].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &id_from]);
    cluster.nodes()[from].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &id_to]);
    let port = cluster.nodes()[to].port().to_string();
    cluster.nodes()[from].cli(&["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", key]);
    for i in 0..cluster.nodes().len() {
        cluster.nodes()[i].cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &id_to]);
    }
}

/// Pipelines on a moved slot: sent again to the new owner when every command was answered
/// `MOVED` (a plain pipeline) or `EXEC` was aborted (`MULTI`), so each command runs once;
/// a pipeline of which some commands ran is not sent again and fails as a cluster error.
/// Each case runs on a backend of its own whose slot map predates the moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_follow_moved_only_when_nothing_ran() {
    let cluster = RedisCluster::start();
    let connect = || RedisBackend::connect(tuned(RedisConfig::cluster(cluster.urls())));
    let (plain, atomic, mixed) = (
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    );
    let on_a = keys_on(&cluster, 0, 4);
    let (p, t, stays) = (&on_a[0], &on_a[1], &on_a[2]);
    assert_ne!(
        omega_core::hash_slot(p.as_bytes()),
        omega_core::hash_slot(t.as_bytes())
    );
    for k in [p, t, stays] {
        cluster.nodes()[0].cli(&["SET", k, "1"]);
    }
    move_slot(&cluster, p, 0, 1);
    move_slot(&cluster, t, 0, 1);

    let mut pipe = redis::pipe();
    pipe.incr(p, 1).incr(p, 1);
    let got: (i64, i64) = plain.pipeline(&pipe).await.unwrap();
    assert_eq!(got, (2, 3));

    let mut pipe = redis::pipe();
    pipe.atomic().incr(t, 1).incr(t, 1);
    let got: (i64, i64) = atomic.pipeline(&pipe).await.unwrap();
    assert_eq!(got, (2, 3));

    // `stays` is still on node 0: its INCR runs there, `p`'s is answered MOVED.
    let mut pipe = redis::pipe();
    pipe.incr(stays, 1).incr(p, 1);
    let e = mixed.pipeline::<(i64, i64)>(&pipe).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cluster, "{e}");
    let get = |i: usize, k: &str| cluster.nodes()[i].cli(&["GET", k]);
    assert_eq!(
        (get(1, p), get(1, t), get(0, stays)),
        ("3".into(), "3".into(), "2".into()),
        "every command ran exactly once"
    );
}
