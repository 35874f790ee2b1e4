//! Gateway instances sharing their state through Redis and Redis Cluster: rate limits, open
//! circuits and shard maps, between gateways in this process and between gateway processes.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use omega_gateway::GatewayConfig;
use omega_testkit::http::{get, request};
use support::{KillOnDrop, config, json, start, status_for, upstream, wait_until_up};

/// Over one Redis, two routes with same-named limits keep their own buckets (as they do in
/// memory), and an endpoint limit has one bucket per method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_keep_their_own_buckets_over_redis() {
    let redis = omega_testkit::RedisServer::start();
    let a = upstream("a", false).await;
    let route = |prefix: &str| {
        serde_json::json!({ "prefix": prefix, "upstream": "pool", "limits": [
            { "name": "global", "key": "global", "rate": 2, "per": "1m" },
            { "name": "per_endpoint", "key": "endpoint", "rate": 1, "per": "1m" },
        ]})
    };
    let doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "redis": redis.url(),
        "upstreams": { "pool": { "nodes": [{ "id": "a", "url": format!("http://{}", a.addr) }] } },
        "routes": [route("/one"), route("/two")],
    });
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let status = |method: &'static str, path: &'static str| async move {
        request(gw.addr, method, path, &[], b"")
            .await
            .unwrap()
            .status
    };
    // One GET and one POST per route pass the endpoint limit; the route's global limit (2)
    // then refuses a third request of either method.
    for path in ["/one", "/two"] {
        assert_eq!(status("GET", path).await, 200, "{path}");
        assert_eq!(status("GET", path).await, 429, "{path}");
        assert_eq!(status("POST", path).await, 200, "{path}");
        let r = request(gw.addr, "PUT", path, &[], b"").await.unwrap();
        assert_eq!(r.status, 429, "{path}");
        assert!(
            r.header("ratelimit").unwrap().starts_with("\"global\";r=0"),
            "{r:?}"
        );
    }
    assert_eq!(a.hits.load(Ordering::Relaxed), 4);
    gw.shutdown().await;
}

/// The admin token of the gateway processes these tests start.
const PROCESS_TOKEN: &str = "test-token-of-the-processes";

/// Runs the gateway binary.
fn spawn_gateway(args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_omega-gateway"))
        .args(args)
        .env("OMEGA_ADMIN_TOKEN", PROCESS_TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_processes_share_one_global_limit_through_redis() {
    let redis = omega_testkit::RedisServer::start();
    let a = upstream("a", false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    let mut admins = Vec::new();
    for i in 0..2 {
        let mut c = config(
            &[("a", a.addr)],
            serde_json::json!([{ "name": "global", "key": "global", "rate": 20, "per": "1h" }]),
        );
        c.listen = SocketAddr::from(([127, 0, 0, 1], omega_testkit::free_port()));
        c.admin = SocketAddr::from(([127, 0, 0, 1], omega_testkit::free_port()));
        let path = dir.path().join(format!("g{i}.json"));
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        children.push(KillOnDrop(spawn_gateway(&[
            "--config",
            path.to_str().unwrap(),
            "--redis",
            &redis.url(),
        ])));
        addrs.push(c.listen);
        admins.push(c.admin);
    }
    for &addr in &addrs {
        wait_until_up(addr).await;
    }
    let mut admitted = 0;
    for i in 0..60 {
        let r = get(addrs[i % 2], "/api/x", &[("x-user-id", "u")])
            .await
            .unwrap();
        match r.status {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    // One limit of 20 for both processes together, not 20 each.
    assert_eq!(admitted, 20);
    assert_eq!(a.hits.load(Ordering::Relaxed), 20);

    // A node added through one gateway's admin API reaches the other through Redis.
    let b = upstream("b", false).await;
    let body = serde_json::json!({ "id": "b", "url": format!("http://{}", b.addr) }).to_string();
    let r = request(
        admins[0],
        "POST",
        "/shards/pool/nodes",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {PROCESS_TOKEN}")),
        ],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut converged = false;
    for _ in 0..100 {
        let shards = json(&get(admins[1], "/shards/pool", &[]).await.unwrap());
        if shards["nodes"].as_array().map(Vec::len) == Some(2) {
            assert_eq!(shards["epoch"], 2);
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(converged, "the second gateway follows the shared topology");
}

/// Polls `check` every 20 ms until it holds, for at most 15 s; returns how long it took.
async fn within<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Two gateways over one Redis Cluster, named by one `redis+cluster://` URL, share what two
/// gateways over one Redis share: a route's limit, a node's open circuit, the shard map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_limits_circuits_and_shard_maps_over_redis_cluster() {
    let cluster = omega_testkit::RedisCluster::start();
    let seeds: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    let url = format!("redis+cluster://{}", seeds.join(","));
    let a = upstream("a", false).await;
    let c = upstream("c", true).await;
    let d = upstream("d", false).await;
    let doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "redis": url,
        // Both gateways run on this host: they vote apart, and one trip spreads at once.
        "shared_breakers": { "quorum": 1 },
        "upstreams": { "pool": {
            "nodes": [
                { "id": "a", "url": format!("http://{}", a.addr) },
                { "id": "c", "url": format!("http://{}", c.addr) },
            ],
            "key": { "header": "x-user-id" },
            "failover": 2,
            "breaker": { "failure_rate": 50, "window": 10, "minimum_calls": 4, "wait": "60s" }
        }},
        "routes": [
            { "prefix": "/limited", "upstream": "pool", "limits": [
                { "name": "global", "key": "global", "rate": 3, "per": "1m" }
            ]},
            { "prefix": "/api", "upstream": "pool" }
        ]
    });
    let one = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let two = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let owner = |user: String| async move {
        let r = get(
            one.admin_addr,
            &format!("/shards/pool/owner?key={user}"),
            &[],
        )
        .await
        .unwrap();
        json(&r)["owner"].as_str().unwrap().to_owned()
    };
    let mut on_a = None;
    let mut on_c = None;
    for i in 0..200 {
        let user = format!("user-{i}");
        match owner(user.clone()).await.as_str() {
            "a" if on_a.is_none() => on_a = Some(user),
            "c" if on_c.is_none() => on_c = Some(user),
            _ => {}
        }
    }
    let (on_a, on_c) = (on_a.unwrap(), on_c.unwrap());

    // One limit: 3 per minute for both gateways together.
    let mut admitted = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &one } else { &two };
        let r = get(gw.addr, "/limited/x", &[("x-user-id", on_a.as_str())])
            .await
            .unwrap();
        match r.status {
            200 => admitted += 1,
            429 => assert!(r.header("retry-after").is_some(), "{r:?}"),
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    assert_eq!(admitted, 3, "the cluster-wide limit admits 3 in all");

    // One circuit: node c fails through the first gateway; the second learns it is open.
    for _ in 0..4 {
        let r = get(one.addr, "/api/x", &[("x-user-id", on_c.as_str())])
            .await
            .unwrap();
        assert_eq!(r.status, 500);
    }
    let state_on_two = || async {
        let b = json(&get(two.admin_addr, "/breakers", &[]).await.unwrap());
        b["pool"]["c"]["state"] == "Open"
    };
    let took = within("c's circuit open on the second gateway", state_on_two).await;
    println!("an OPEN circuit reached the other gateway in {took:?}");
    let c_hits = c.hits.load(Ordering::Relaxed);
    let r = get(two.addr, "/api/x", &[("x-user-id", on_c.as_str())])
        .await
        .unwrap();
    assert_eq!((r.status, json(&r)["node"].as_str()), (200, Some("a")));
    assert_eq!(c.hits.load(Ordering::Relaxed), c_hits, "c was not tried");

    // One shard map: a node added through the first gateway's admin API joins the second.
    let body = serde_json::json!({ "id": "d", "url": format!("http://{}", d.addr) });
    let bearer = format!("Bearer {}", one.admin_token());
    let r = request(
        one.admin_addr,
        "POST",
        "/shards/pool/nodes",
        &[
            ("content-type", "application/json"),
            ("authorization", bearer.as_str()),
        ],
        body.to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let has_d = || async {
        let s = json(&get(two.admin_addr, "/shards/pool", &[]).await.unwrap());
        s["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|n| n["id"] == "d"))
    };
    let took = within("node d in the second gateway's shard map", has_d).await;
    println!("a shard map change reached the other gateway in {took:?}");
    one.shutdown().await;
    two.shutdown().await;
}

/// A gateway whose Redis is down when it starts still starts and serves (each layer's failure
/// policy applies), and shares its state once Redis answers: its shard map is seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_while_redis_is_down_and_shares_once_it_is_back() {
    let mut redis = omega_testkit::RedisServer::start();
    redis.kill();
    let a = upstream("a", false).await;
    let mut doc = serde_json::to_value(config(
        &[("a", a.addr)],
        serde_json::json!([{ "name": "global", "key": "global", "rate": 1000, "per": "1s" }]),
    ))
    .unwrap();
    doc["redis"] = redis.url().into();
    let started = Instant::now();
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    println!("started with Redis down in {:?}", started.elapsed());
    let r = get(gw.addr, "/api/x", &[("x-user-id", "u")]).await.unwrap();
    assert!(r.status < 500, "{r:?}");

    redis.restart();
    let took = within("the shard map is seeded in Redis", || {
        let keys = redis.cli(&["KEYS", "*"]);
        async move { keys.contains("pool") }
    })
    .await;
    println!("the shard map was shared {took:?} after Redis came back");
    assert_eq!(status_for(gw.addr, "u").await, 200);
    gw.shutdown().await;
}

/// A limit's `on_redis_failure` applies while Redis is down: `closed` denies, `open` admits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limits_redis_failure_policy_applies_while_redis_is_down() {
    let mut redis = omega_testkit::RedisServer::start();
    let a = upstream("a", false).await;
    let route = |prefix: &str, policy: &str| {
        serde_json::json!({ "prefix": prefix, "upstream": "pool", "limits": [
            { "name": "global", "key": "global", "rate": 1000, "per": "1s", "on_redis_failure": policy }
        ] })
    };
    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["redis"] = redis.url().into();
    doc["routes"] = serde_json::json!([route("/closed", "closed"), route("/open", "open")]);
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let user = [("x-user-id", "u")];
    assert_eq!(get(gw.addr, "/closed/x", &user).await.unwrap().status, 200);
    redis.kill();
    let mut statuses = Vec::new();
    for path in ["/closed/x", "/open/x"] {
        statuses.push(get(gw.addr, path, &user).await.unwrap().status);
    }
    assert_eq!(statuses, [429, 200], "closed denies, open admits");
    gw.shutdown().await;
}
