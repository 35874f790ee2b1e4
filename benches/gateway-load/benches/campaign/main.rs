//! The multi-process scale-and-fault campaign (not part of the README's test command: run by
//! hand with `scripts/campaign.sh`, and reported).
//!
//! Four gateway processes share one Redis — a single server, then the 3-node harness cluster,
//! each node behind a fault proxy — in front of three upstream nodes this process serves, and
//! one load generator spreads keep-alive connections across the four. Printed, per Redis:
//!
//! 1. a global limit of R/s held cluster-wide (admitted / (R × T + burst)), also while Redis is
//!    paused (each gateway then enforces a quarter of it) and after the faults below;
//! 2. how long a breaker opened on one gateway, a shard-map change made through one admin API,
//!    and a cache tag purge take to reach all four, and how many requests reach a removed node
//!    after the swap;
//! 3. faults under load — Redis paused (SIGSTOP) for 5 s, killed and restarted, cut by the
//!    fault proxy for 5 s; an upstream node killed; one gateway killed — with the count of each
//!    outcome, the worst latency, how many requests waited past the route's timeout, and
//!    whether the next second of load is all answered without a restart;
//! 4. resident memory of the gateways before and after 1M distinct client keys.
//!
//! Options (after `--`): `--rate R` (2000), `--seconds T` (10), `--keys N` (1000000),
//! `--redis single|cluster|both` (both).

mod fleet;
mod load;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleet::{Gateway, SharedRedis};
use load::{Keys, Plan, Tally};
use serde_json::json;
use tokio::time::Instant;
use upstream::Node;

/// The route timeout every proxied route has.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections per gateway.
const CONNECTIONS: usize = 4;

struct Options {
    rate: u64,
    seconds: u64,
    keys: u64,
    redis: String,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            rate: 2000,
            seconds: 10,
            keys: 1_000_000,
            redis: "both".into(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
            match arg.as_str() {
                "--rate" => o.rate = value().parse().expect("--rate: a number"),
                "--seconds" => o.seconds = value().parse().expect("--seconds: a number"),
                "--keys" => o.keys = value().parse().expect("--keys: a number"),
                "--redis" => o.redis = value(),
                "--bench" => {}
                other => panic!("unknown option {other}; see the top of benches/campaign/main.rs"),
            }
        }
        o
    }
}

fn main() {
    let o = Options::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if o.redis != "cluster" {
            campaign(SharedRedis::single().await, &o).await;
        }
        if o.redis != "single" {
            campaign(SharedRedis::cluster().await, &o).await;
        }
    });
}

fn config(redis: &str, nodes: &[Node], rate: u64) -> serde_json::Value {
    let nodes: Vec<_> = nodes
        .iter()
        .map(|n| json!({ "id": n.id, "url": n.url() }))
        .collect();
    let timeout = format!("{}s", ROUTE_TIMEOUT.as_secs());
    json!({
        "redis": redis,
        // All four run on one host: each votes alone, and one trip spreads at once.
        "shared_breakers": { "quorum": 1 },
        "server": { "workers": 1 },
        "upstreams": { "pool": {
            "key": { "header": "x-user-id" },
            "nodes": nodes,
            "failover": 2,
            "breaker": { "failure_rate": 50, "window": 10, "minimum_calls": 4, "wait": "3s" }
        }},
        "routes": [
            { "prefix": "/limited", "upstream": "pool", "timeout": timeout,
              // While Redis is away, each of the four enforces a quarter of the limit.
              "limits": [{ "name": "global", "key": "global", "rate": rate, "per": "1s",
                           "on_redis_failure": { "local": 25 } }] },
            { "prefix": "/cached", "upstream": "pool", "timeout": timeout,
              "cache": { "tags_header": "surrogate-key" } },
            { "prefix": "/api", "upstream": "pool", "timeout": timeout,
              "limits": [{ "name": "per_user", "key": { "header": "x-user-id" }, "rate": 100000, "per": "1s" }] }
        ]
    })
}

async fn campaign(mut redis: SharedRedis, o: &Options) {
    let binary = fleet::gateway_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = vec![
        Node::start("n1").await,
        Node::start("n2").await,
        Node::start("n3").await,
    ];
    let doc = config(&redis.url(), &nodes, o.rate);
    let mut gateways = Vec::new();
    for i in 0..4 {
        gateways.push(Gateway::start(&binary, dir.path(), i, doc.clone()).await);
    }
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let seconds = Duration::from_secs(o.seconds);
    println!(
        "\n## {}: 4 gateway processes, 3 upstream nodes, {CONNECTIONS} connections per gateway\n",
        redis.name()
    );

    // 1. A global limit held cluster-wide (again after the Redis faults, below).
    let limited = plan("/limited", seconds);
    let mut limit_rows = vec![limit_row(
        "steady",
        &load::run(&addrs, &limited).await,
        o.rate,
    )];

    // 2. Propagation.
    println!(
        "| change made through gateway 1 | reached all four after | requests to the removed node afterwards |"
    );
    println!("|---|---|---|");
    let took = breaker_spreads(&gateways, &nodes[2]).await;
    println!("| n3's circuit opened (n3 failing) | {} | |", ms(took));
    let (took, after) = node_removed(&gateways, &addrs, &nodes[1], seconds).await;
    println!(
        "| n2 removed from the shard map (under load) | {} | {after} |",
        ms(took)
    );
    let took = purge_spreads(&gateways, &nodes).await;
    println!("| cache tag purged | {} | |\n", ms(took));

    // The limit while Redis is paused (after the propagation figures, which need Redis).
    let paused = with_fault(&addrs, &limited, 5, &mut redis, pause, resume).await;
    limit_rows.push(limit_row(
        "Redis paused 5 s of it (on_redis_failure: local 25%)",
        &paused,
        o.rate,
    ));

    // 3. Faults under load.
    println!(
        "| fault under load ({} s runs, fault at 2 s) | requests | 2xx | 429 | 503 | other status | connection errors | timed out (client, 5 s) | past the route timeout ({} s) | p99 | worst | next second all 2xx |",
        o.seconds,
        ROUTE_TIMEOUT.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let api = plan("/api", seconds);

    let t = with_fault(&addrs, &api, 5, &mut redis, pause, resume).await;
    fault_row("Redis paused 5 s", t, &addrs).await;
    let t = with_fault(
        &addrs,
        &api,
        3,
        &mut redis,
        SharedRedis::kill,
        SharedRedis::restart,
    )
    .await;
    fault_row("Redis killed, restarted after 3 s", t, &addrs).await;

    let t = with_fault(&addrs, &api, 5, &mut redis, cut, heal).await;
    fault_row("Redis cut by the fault proxy for 5 s", t, &addrs).await;

    limit_rows.push(limit_row(
        "after the Redis faults, no restart",
        &load::run(&addrs, &limited).await,
        o.rate,
    ));

    let t = with_fault(&addrs, &api, 5, &mut nodes[2], Node::kill, Node::restart).await;
    fault_row("upstream node n3 killed, back after 5 s", t, &addrs).await;

    // 4. Memory with many distinct client keys (before a gateway is killed, so all four count).
    let before: Vec<u64> = gateways.iter().map(Gateway::rss_kib).collect();
    let keys = Plan {
        keys: Keys::Distinct,
        max_requests: o.keys,
        duration: Duration::from_secs(600),
        ..plan("/api", seconds)
    };
    let t = load::run(&addrs, &keys).await;
    let after: Vec<u64> = gateways.iter().map(Gateway::rss_kib).collect();

    let run = tokio::spawn(load_owned(addrs.clone(), api.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    gateways[3].kill();
    let tally = run.await.unwrap();
    fault_row("gateway 4 of 4 killed (stays down)", tally, &addrs[..3]).await;

    println!();
    println!(
        "| global limit of {} /s | requests | admitted (2xx) | refused (429) | other | admitted / (R × T + burst) |",
        o.rate
    );
    println!("|---|---|---|---|---|---|");
    for row in limit_rows {
        println!("{row}");
    }
    println!();
    println!(
        "| distinct client keys (per-user limit over Redis) | answered 2xx | in | RSS per gateway before | after | growth per key |"
    );
    println!("|---|---|---|---|---|---|");
    let mib = |v: &[u64]| {
        v.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let grown: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    println!(
        "| {} | {} | {:.1} s | {} MiB | {} MiB | {:.1} bytes |",
        t.requests(),
        t.ok,
        t.elapsed.as_secs_f64(),
        mib(&before),
        mib(&after),
        grown as f64 * 1024.0 / t.requests().max(1) as f64
    );
    for n in &mut nodes {
        n.kill();
    }
}

/// One row of the global limit's table; the burst is one second's worth.
fn limit_row(name: &str, t: &Tally, rate: u64) -> String {
    let bound = rate as f64 * t.elapsed.as_secs_f64() + rate as f64;
    format!(
        "| {name} ({:.1} s) | {} | {} | {} | {} | {:.3} |",
        t.elapsed.as_secs_f64(),
        t.requests(),
        t.ok,
        t.limited,
        t.requests() - t.ok - t.limited,
        t.ok as f64 / bound
    )
}

fn plan(path: &'static str, duration: Duration) -> Plan {
    Plan {
        path,
        connections_per_gateway: CONNECTIONS,
        duration,
        max_requests: u64::MAX,
        keys: Keys::Users(1000),
        deadline: Duration::from_secs(5),
    }
}

/// Runs `plan`; 2 s into it, `start(target)`, and `hold` seconds later `end(target)`.
async fn with_fault<T>(
    addrs: &[SocketAddr],
    plan: &Plan,
    hold: u64,
    target: &mut T,
    start: impl FnOnce(&mut T),
    end: impl FnOnce(&mut T),
) -> Tally {
    let run = tokio::spawn(load_owned(addrs.to_vec(), plan.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    start(target);
    tokio::time::sleep(Duration::from_secs(hold)).await;
    end(target);
    run.await.unwrap()
}

fn pause(redis: &mut SharedRedis) {
    redis.pause();
}

fn resume(redis: &mut SharedRedis) {
    redis.resume();
}

fn cut(redis: &mut SharedRedis) {
    redis.cut();
}

fn heal(redis: &mut SharedRedis) {
    redis.heal();
}

async fn load_owned(addrs: Vec<SocketAddr>, plan: Plan) -> Tally {
    load::run(&addrs, &plan).await
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Prints a fault run's row, after one more second of load that shows whether all is well again.
async fn fault_row(name: &str, t: Tally, addrs: &[SocketAddr]) {
    let past_timeout = t
        .micros
        .iter()
        .filter(|&&m| u128::from(m) > ROUTE_TIMEOUT.as_micros() + 100_000)
        .count();
    let after = load::run(addrs, &plan("/api", Duration::from_secs(1))).await;
    let recovered = if after.ok == after.requests() && after.ok > 0 {
        "yes".to_owned()
    } else {
        format!("no: {} of {}", after.ok, after.requests())
    };
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {past_timeout} | {:.1} ms | {:.0} ms | {recovered} |",
        t.requests(),
        t.ok,
        t.limited,
        t.unavailable,
        t.other_status,
        t.connection_errors,
        t.timeouts,
        t.quantile_ms(0.99),
        t.quantile_ms(1.0),
    );
}

/// A user whose requests the pool sends to `node` first.
async fn user_on(gateway: &Gateway, node: &str) -> String {
    for i in 0..1000 {
        let user = format!("user-{i}");
        let owner = gateway
            .admin_json(&format!("/shards/pool/owner?key={user}"))
            .await;
        if owner["owner"] == node {
            return user;
        }
    }
    panic!("no user of 1000 is owned by {node}");
}

/// Polls `check` on every gateway until all pass; how long that took.
async fn until_all(
    gateways: &[Gateway],
    started: Instant,
    mut check: impl AsyncFnMut(&Gateway) -> bool,
) -> Duration {
    let deadline = started + Duration::from_secs(30);
    for g in gateways {
        while !check(g).await {
            assert!(Instant::now() < deadline, "not reached within 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    started.elapsed()
}

/// Node `node` fails; requests through gateway 1 open its circuit there; how long until the
/// other three see it open.
async fn breaker_spreads(gateways: &[Gateway], node: &Node) -> Duration {
    let user = user_on(&gateways[0], node.id).await;
    node.state.failing.store(true, Ordering::Relaxed);
    let id = node.id;
    let open = async |g: &Gateway| g.admin_json("/breakers").await["pool"][id]["state"] == "Open";
    let mut tripped = None;
    for _ in 0..40 {
        let _ =
            omega_testkit::http::get(gateways[0].addr, "/api/x", &[("x-user-id", user.as_str())])
                .await;
        if open(&gateways[0]).await {
            tripped = Some(Instant::now());
            break;
        }
    }
    let tripped = tripped.expect("the circuit did not open on gateway 1 after 40 failures");
    let took = until_all(gateways, tripped, open).await;
    node.state.failing.store(false, Ordering::Relaxed);
    took
}

/// Under load, `node` is removed through gateway 1's admin API: how long until all four route
/// without it, and how many requests reached it after that (200 ms after, for requests that
/// were already on their way).
async fn node_removed(
    gateways: &[Gateway],
    addrs: &[SocketAddr],
    node: &Node,
    seconds: Duration,
) -> (Duration, u64) {
    let run = tokio::spawn(load_owned(addrs.to_vec(), plan("/api", seconds)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let r = gateways[0]
        .admin_call("DELETE", &format!("/shards/pool/nodes/{}", node.id), "")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = node.id;
    let took = until_all(gateways, started, async |g: &Gateway| {
        let map = g.admin_json("/shards/pool").await;
        map["nodes"]
            .as_array()
            .is_some_and(|nodes| !nodes.iter().any(|n| n["id"] == id))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = node.state.hits.load(Ordering::Relaxed);
    run.await.unwrap();
    let after = node.state.hits.load(Ordering::Relaxed) - before;
    // Back in, for the runs that follow.
    let body = json!({ "id": node.id, "url": node.url() }).to_string();
    let r = gateways[0]
        .admin_call("POST", "/shards/pool/nodes", &body)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    until_all(gateways, Instant::now(), async |g: &Gateway| {
        let map = g.admin_json("/shards/pool").await;
        map["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|n| n["id"] == id))
    })
    .await;
    (took, after)
}

/// Every gateway caches `/cached/item`; the nodes' version changes; a tag purge through gateway
/// 1: how long until all four serve the new version.
async fn purge_spreads(gateways: &[Gateway], nodes: &[Node]) -> Duration {
    let body = async |g: &Gateway| {
        let r = omega_testkit::http::get(g.addr, "/cached/item", &[("x-user-id", "cache-user")])
            .await
            .unwrap();
        String::from_utf8_lossy(&r.body).into_owned()
    };
    let old = body(&gateways[0]).await;
    for g in gateways {
        body(g).await;
    }
    for n in nodes {
        n.state.version.fetch_add(1, Ordering::Relaxed);
    }
    for g in gateways {
        assert_eq!(
            body(g).await,
            old,
            "the gateways serve the cached version before the purge"
        );
    }
    let started = Instant::now();
    let r = gateways[0]
        .admin_call("POST", "/cache/purge?tag=campaign-items", "")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let old = &old;
    until_all(gateways, started, async |g: &Gateway| body(g).await != *old).await
}
