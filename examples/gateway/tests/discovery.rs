//! Node discovery: a node announced with `omega-gateway announce` joins a pool with `discover`
//! and gets its keys; when its announcer dies, the node leaves once its TTL has passed.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use omega_gateway::GatewayConfig;
use omega_testkit::http::get;
use support::{KillOnDrop, json, start, upstream};

async fn nodes(admin: SocketAddr) -> Vec<String> {
    let shards = json(&get(admin, "/shards/pool", &[]).await.unwrap());
    shards["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn within(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "gave up: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_nodes_join_and_leave_a_pool() {
    let redis = omega_testkit::RedisServer::start();
    let (a, b) = (upstream("a", false).await, upstream("b", false).await);
    let mut doc =
        serde_json::to_value(support::config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["redis"] = redis.url().into();
    doc["upstreams"]["pool"]["discover"] =
        serde_json::json!({ "poll": "100ms", "stable_polls": 2 });
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    assert_eq!(nodes(gw.admin_addr).await, ["a"]);

    let mut announcer = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_omega-gateway"))
            .args([
                "announce",
                "--redis",
                &redis.url(),
                "--registry",
                "pool",
                "--id",
                "b",
            ])
            .args(["--url", &format!("http://{}", b.addr), "--ttl", "1s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let joined = within("b joins", async || {
        nodes(gw.admin_addr).await.contains(&"b".to_owned())
    })
    .await;
    println!("an announced node joined the pool after {joined:?}");
    // Some keys are b's now.
    let mut served_by_b = 0;
    for i in 0..40 {
        let user = format!("user-{i}");
        let r = get(gw.addr, "/api/x", &[("x-user-id", user.as_str())])
            .await
            .unwrap();
        if json(&r)["node"] == "b" {
            served_by_b += 1;
        }
    }
    assert!(served_by_b > 0, "no key went to the discovered node");

    // The announcer dies without withdrawing: b leaves after its TTL.
    let _ = announcer.0.kill();
    let _ = announcer.0.wait();
    let left = within("b leaves", async || {
        !nodes(gw.admin_addr).await.contains(&"b".to_owned())
    })
    .await;
    println!("a node whose announcer died left after {left:?} (TTL 1 s)");
    for i in 0..20 {
        let user = format!("user-{i}");
        let r = get(gw.addr, "/api/x", &[("x-user-id", user.as_str())])
            .await
            .unwrap();
        assert_eq!(json(&r)["node"], "a");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_without_redis_is_refused() {
    let a = upstream("a", false).await;
    let mut doc =
        serde_json::to_value(support::config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["upstreams"]["pool"]["discover"] = serde_json::json!({});
    let e = omega_gateway::Gateway::new(
        GatewayConfig::from_json(&doc.to_string()).unwrap(),
        None,
        None,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("upstreams.pool.discover"), "{e}");
}
