//! A script that runs twice takes its cells once. redis-rs's cluster client re-sends a
//! request whose connection dropped after it was sent (16 retries by default, redirects
//! share that budget), so one decision could run its script twice within one timeout. A
//! fault proxy in front of each node drops the connection while the reply is on its way:
//! whether the client re-sends or not, the cells are taken once. (`src/redis_store/replay.rs`
//! sends one call twice on purpose: the second run answers the first's reply.)
#![cfg(feature = "redis")]

use std::time::Duration;

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_rate_limit::{Limit, Quota, RateLimiter};
use omega_testkit::{FaultProxy, RedisCluster, RedisServer};

/// The node that serves `key` (the others answer `MOVED`).
fn node_of(cluster: &RedisCluster, key: &str) -> usize {
    (0..3)
        .find(|&n| !cluster.nodes()[n].cli(&["GET", key]).starts_with("MOVED"))
        .expect("some node serves the key")
}

fn limiter(backend: Backend) -> RateLimiter<u32> {
    RateLimiter::builder()
        .limit(Limit::global("global", Quota::per_minute(100)))
        .backend(backend)
        .build()
        .unwrap()
}

/// Cells left in the global bucket, as Redis reports them to the next decision (which takes
/// one itself).
async fn left_after_one_more(limiter: &RateLimiter<u32>) -> u32 {
    let d = limiter.check(&0).await;
    assert!(d.is_allowed() && !d.is_degraded(), "{d:?}");
    d.binding().unwrap().remaining
}

/// Cells left in the global bucket, from the first decision Redis makes again after a failure
/// (a degraded decision, made while the client reconnects, takes no cell in Redis).
async fn left_once_redis_decides(limiter: &RateLimiter<u32>) -> u32 {
    for _ in 0..250 {
        let d = limiter.check(&0).await;
        if !d.is_degraded() {
            return d.binding().unwrap().remaining;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("Redis did not decide again within 5 s");
}

/// Sends one decision through `proxy` with 150 ms of latency each way and resets the
/// connection 225 ms later: the script has run on the server, its reply is still in the
/// proxy. Returns whether the decision was admitted and whether it was degraded.
async fn decide_through_a_dropped_connection(
    limiter: &RateLimiter<u32>,
    proxy: &FaultProxy,
) -> (bool, bool) {
    proxy.set_latency(Duration::from_millis(150));
    let owned = limiter.clone();
    let decision = tokio::spawn(async move {
        let d = owned.check(&0).await;
        (d.is_allowed(), d.is_degraded())
    });
    tokio::time::sleep(Duration::from_millis(225)).await;
    proxy.pass();
    proxy.reset_connections();
    let (allowed, degraded) = decision.await.unwrap();
    println!("the decision whose connection dropped: allowed {allowed}, degraded {degraded}");
    (allowed, degraded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_re_sent_by_the_cluster_client_takes_its_cells_once() {
    let cluster = RedisCluster::start();
    let mut proxies = Vec::new();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let proxy = FaultProxy::start(node.addr()).await;
        cluster.announce_port(i, proxy.addr().port());
        proxies.push(proxy);
    }
    let seeds: Vec<String> = proxies.iter().map(FaultProxy::url).collect();
    let backend = Backend::redis(RedisConfig::cluster(seeds).op_timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    let limiter = limiter(backend.clone());
    assert_eq!(left_after_one_more(&limiter).await, 99);
    let node = node_of(&cluster, &backend.keyspace().tagged("rl:global", &[]));
    let runs = || cluster.nodes()[node].script_calls();
    let before = runs();
    let (allowed, degraded) = decide_through_a_dropped_connection(&limiter, &proxies[node]).await;
    // A client that re-sends (redis-rs's cluster client did) gets the first run's answer
    // again; one that does not (omega-core's own cluster dispatch) reports a failure.
    println!(
        "cluster: the script was sent {} time(s); the decision: allowed {allowed}, degraded \
         {degraded}",
        runs() - before
    );
    // Three decisions took a cell each: 97 left. A second run of the middle one leaves 96.
    let left = left_once_redis_decides(&limiter).await;
    println!("cluster: {left} cells left after three decisions (97 if each ran once)");
    assert_eq!(left, 97, "a decision's script ran twice");
}

/// On a standalone server nothing re-sends, but the mechanism is the same: the script ran,
/// the reply was lost with the connection, and the caller cannot know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_on_a_server_leaves_the_outcome_unknown() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let backend = Backend::redis(
        RedisConfig::url(proxy.url())
            .op_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let limiter = limiter(backend);
    assert_eq!(left_after_one_more(&limiter).await, 99);
    let (_, degraded) = decide_through_a_dropped_connection(&limiter, &proxy).await;
    assert!(degraded, "the reply was lost: the failure policy decided");
    let left = left_once_redis_decides(&limiter).await;
    println!("server: {left} cells left after three decisions");
    assert_eq!(left, 97, "the lost decision took its cell once");
}
