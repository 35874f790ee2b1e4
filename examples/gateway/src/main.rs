//! `omega-gateway`: the Omega Penta HTTP gateway.
//!
//! ```text
//! omega-gateway [--listen ADDR] [--admin ADDR]    # embedded demo: in-memory state, demo nodes
//! omega-gateway --config gateway.json [--redis redis://127.0.0.1:6379]   (or gateway.yaml)
//! omega-gateway --listen 127.0.0.1:8080 --upstream http://127.0.0.1:9000 [--admin ADDR] [--redis URL] [--cache]
//! omega-gateway announce --redis URL --registry NAME --id ID --url URL [--weight N] [--ttl 10s]
//! ```
//!
//! SIGTERM or Ctrl-C stop accepting and let in-flight requests finish (within
//! `shutdown_grace`); SIGHUP reloads the configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use omega_gateway::{Gateway, GatewayConfig, GatewayError, demo, load_config};

mod cache_front;

const USAGE: &str = "usage:
  omega-gateway [--listen ADDR] [--admin ADDR]   embedded demo (in-memory state, demo upstream nodes;
                                                 127.0.0.1:8080 and 127.0.0.1:9090 by default)
  omega-gateway --config FILE [--redis URL]      routes, pools and limits from a JSON or YAML file (.yaml, .yml)
  omega-gateway --listen ADDR --upstream URL [--admin ADDR] [--redis URL] [--cache]
                                                 proxy everything to one upstream; --cache puts
                                                 RFC 9111's shared cache in front of everything
                                                 (in memory, or shared through --redis)
  omega-gateway announce --redis URL --registry NAME --id ID --url URL [--weight N] [--ttl 10s]
                                                 announce a node to the pools that discover
                                                 registry NAME, until stopped (then withdraw it)";

#[derive(Default)]
struct Args {
    config: Option<PathBuf>,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    upstream: Option<String>,
    redis: Option<String>,
    cache: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--config" => args.config = Some(value("--config")?.into()),
            "--listen" => {
                let v = value("--listen")?;
                args.listen = Some(v.parse().map_err(|_| {
                    format!("--listen {v:?}: not an address such as 127.0.0.1:8080")
                })?);
            }
            "--admin" => {
                let v = value("--admin")?;
                args.admin = Some(v.parse().map_err(|_| {
                    format!("--admin {v:?}: not an address such as 127.0.0.1:9090")
                })?);
            }
            "--upstream" => args.upstream = Some(value("--upstream")?),
            "--redis" => args.redis = Some(value("--redis")?),
            "--cache" => args.cache = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.config.is_some() && (args.upstream.is_some() || args.listen.is_some()) {
        return Err("give either --config, or --listen with --upstream".into());
    }
    if args.upstream.is_some() && args.listen.is_none() {
        return Err("--upstream needs --listen".into());
    }
    if args.config.is_some() && args.admin.is_some() {
        return Err("the configuration file names the admin address".into());
    }
    if args.cache && args.upstream.is_none() {
        return Err("--cache goes with --listen and --upstream".into());
    }
    Ok(args)
}

/// The quick mode: everything to one upstream, with the layers' defaults (a circuit breaker,
/// no rate limit).
fn quick_config(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    upstream: &str,
) -> Result<GatewayConfig, GatewayError> {
    let mut doc = serde_json::json!({
        "listen": listen.to_string(),
        "upstreams": { "default": { "nodes": [{ "id": "upstream", "url": upstream }] } },
        "routes": [{ "prefix": "/", "upstream": "default" }]
    });
    if let Some(admin) = admin {
        doc["admin"] = admin.to_string().into();
    }
    Ok(GatewayConfig::from_json(&doc.to_string())?)
}

/// The embedded demo's upstreams: three demo nodes and the accounts service.
struct Demo {
    nodes: Vec<demo::DemoNode>,
    accounts: demo::accounts::AccountsNode,
}

/// The embedded default: three demo nodes behind per-user and global limits, a cached slow
/// route, and event-sourced accounts with snapshots on SQLite.
async fn demo_config(
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) -> Result<(GatewayConfig, Demo), GatewayError> {
    let any = || SocketAddr::from(([127, 0, 0, 1], 0));
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(
            demo::start(id)
                .await
                .map_err(|e| GatewayError::Bind(any(), e))?,
        );
    }
    let accounts = demo::accounts::start()
        .await
        .map_err(|e| GatewayError::Bind(any(), e))?;
    let listen = listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin = admin.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090)));
    let doc = serde_json::json!({
        "listen": listen.to_string(),
        "admin": admin.to_string(),
        "upstreams": {
            "accounts": {
                "nodes": [{ "id": "accounts", "url": format!("http://{}", accounts.addr) }],
                "breaker": { "failure_rate": 50, "window": 10, "minimum_calls": 5, "wait": "15s" }
            },
            "demo": {
                "nodes": nodes.iter().map(|n| serde_json::json!({ "id": n.id, "url": n.url() })).collect::<Vec<_>>(),
                "key": { "header": "x-user-id" },
                "breaker": { "failure_rate": 50, "window": 10, "minimum_calls": 5, "wait": "15s" }
            }
        },
        "routes": [{
            "prefix": "/",
            "upstream": "demo",
            "timeout": "5s",
            "limits": [
                { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 10, "per": "10s" },
                { "name": "global", "key": "global", "rate": 200, "per": "1s" }
            ]
        }, {
            "prefix": "/slow",
            "upstream": "demo",
            "timeout": "5s",
            "cache": {},
            "limits": [{ "name": "global", "key": "global", "rate": 200, "per": "1s" }]
        }, {
            "prefix": "/accounts",
            "upstream": "accounts",
            "timeout": "5s",
            "max_body": 4096,
            "limits": [{ "name": "per_account_client", "key": "client_ip", "rate": 20, "per": "1s", "burst": 40 }]
        }]
    });
    Ok((
        GatewayConfig::from_json(&doc.to_string())?,
        Demo { nodes, accounts },
    ))
}

fn print_demo(gateway: &Gateway, addr: SocketAddr, admin: SocketAddr, demo: &Demo) {
    let nodes = &demo.nodes;
    println!("omega-gateway: embedded demo, in-memory state");
    println!("  proxy  http://{addr}    admin  http://{admin}");
    for n in nodes {
        println!("  demo node {}  {}", n.id, n.url());
    }
    println!(
        "  accounts   http://{}  (events and snapshots in SQLite at {})",
        demo.accounts.addr,
        demo.accounts.database.display()
    );
    // A user id owned by each node, to show routing and failover.
    let mut owned = Vec::new();
    for node in nodes {
        if let Some(user) = (0..10_000)
            .map(|i| format!("user-{i}"))
            .find(|u| gateway.owner("demo", u).as_deref() == Some(node.id.as_str()))
        {
            owned.push((node.id.clone(), user));
        }
    }
    let (node_c, user_c) = owned.last().cloned().unwrap_or_default();
    println!();
    println!("Shard routing (a user always reaches the same node):");
    for (node, user) in &owned {
        println!("  curl -s -H 'x-user-id: {user}' http://{addr}/hello      # node {node}");
    }
    println!("  curl -s 'http://{admin}/shards/demo/owner?key={user_c}'");
    println!();
    println!(
        "Rate limiting (10 requests per 10 s per user; the 11th gets a 429 with its headers):"
    );
    println!(
        "  for i in $(seq 11); do curl -si -H 'x-user-id: ada' http://{addr}/hello | grep -iE '^(HTTP|retry-after|ratelimit)'; done"
    );
    println!();
    println!(
        "Circuit breaker (node {node_c} fails 5 times, its circuit opens, its users fail over):"
    );
    println!(
        "  for i in $(seq 5); do curl -s -o /dev/null -w '%{{http_code}}\\n' -H 'x-user-id: {user_c}' -H 'x-demo-fail: 1' http://{addr}/hello; done"
    );
    println!("  curl -s http://{admin}/breakers");
    println!("  curl -s -H 'x-user-id: {user_c}' http://{addr}/hello     # served by another node");
    println!();
    println!("Caching (/slow takes 300 ms upstream; the second time the gateway's cache answers):");
    println!(
        "  for i in 1 2; do curl -s -o /dev/null -D - -w 'took %{{time_total}}s\\n' -H 'x-user-id: ada' http://{addr}/slow/report | grep -iE '^(cache-status|took)'; done"
    );
    println!();
    println!(
        "Event-sourced accounts (SnapshotLayer, snapshots every 20 events, 422 on a refusal):"
    );
    println!("  curl -s -X POST http://{addr}/accounts/ada/open");
    println!(
        "  curl -s -X POST -H 'content-type: application/json' -d '{{\"amount\": 100}}' http://{addr}/accounts/ada/deposit"
    );
    println!(
        "  curl -s -X POST -H 'content-type: application/json' -d '{{\"amount\": 500}}' http://{addr}/accounts/ada/withdraw   # 422"
    );
    println!("  curl -s http://{addr}/accounts/ada");
    println!();
    println!("More: http://{admin}/limits  http://{admin}/shards/demo  http://{admin}/metrics");
    println!("Stop with Ctrl-C.");
}

/// `omega-gateway announce ...`: heartbeats for one node until SIGTERM or Ctrl-C, then
/// withdraws it.
async fn announce(args: &[String]) -> Result<(), String> {
    let mut flags = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .filter(|n| ["redis", "registry", "id", "url", "weight", "ttl"].contains(n))
            .ok_or_else(|| format!("announce: unknown argument {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        flags.insert(name, value.clone());
    }
    let need = |name: &str| {
        flags
            .get(name)
            .cloned()
            .ok_or_else(|| format!("announce needs --{name}"))
    };
    let (redis, registry, id, url) = (need("redis")?, need("registry")?, need("id")?, need("url")?);
    omega_penta::config::parse_base_url(&url).map_err(|e| format!("--url: {e}"))?;
    let weight: u32 = flags
        .get("weight")
        .map_or(Ok(1), |w| w.parse())
        .map_err(|_| "--weight: not a whole number".to_owned())?;
    let ttl = flags
        .get("ttl")
        .map_or(
            Ok(omega_penta::config::Dur(std::time::Duration::from_secs(10))),
            |t| t.parse(),
        )
        .map_err(|e| format!("--ttl: {e}"))?
        .0;
    let config = omega_penta::core::redis::RedisConfig::parse(&redis).map_err(|e| e.to_string())?;
    let backend = omega_penta::core::redis::RedisBackend::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    let registry = omega_penta::shard_router::redis::registry::Registry::new(backend, &registry)
        .map_err(|e| e.to_string())?;
    let node = omega_penta::shard_router::Node::new(id.as_str(), url.as_str()).with_weight(weight);
    registry
        .announce(&node, ttl)
        .await
        .map_err(|e| e.to_string())?;
    let heartbeat = registry.spawn_announcer(node, ttl);
    println!(
        "omega-gateway: announcing {id} ({url}) every {:?}, TTL {ttl:?}",
        ttl / 3
    );
    wait_for_stop().await;
    heartbeat.withdraw().await.map_err(|e| e.to_string())?;
    println!("omega-gateway: {id} withdrawn");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_stop() {
    let _ = tokio::signal::ctrl_c().await;
}

async fn run() -> Result<(), GatewayError> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.first().map(String::as_str) == Some("announce") {
        if let Err(e) = announce(&all[1..]).await {
            eprintln!("omega-gateway: {e}\n{USAGE}");
            std::process::exit(2);
        }
        return Ok(());
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(e) => {
            eprintln!("omega-gateway: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let mut demo = None;
    let (config, path) = match (&args.config, &args.upstream, args.listen) {
        (Some(path), _, _) => (load_config(path)?, Some(path.clone())),
        // With --cache the gateway's pipeline listens on a loopback port, behind the cache.
        (None, Some(upstream), Some(_)) if args.cache => {
            let inner = SocketAddr::from(([127, 0, 0, 1], 0));
            (quick_config(inner, args.admin, upstream)?, None)
        }
        (None, Some(upstream), Some(listen)) => (quick_config(listen, args.admin, upstream)?, None),
        _ => {
            let (c, d) = demo_config(args.listen, args.admin).await?;
            demo = Some(d);
            (c, None)
        }
    };
    let gateway = Gateway::new(config, path.clone(), args.redis.clone()).await?;
    // `start` consumes a handle; this one stays for reloads and queries.
    let reloader = gateway.handle();
    let running = gateway.start().await?;
    let front = match args.listen.filter(|_| args.cache) {
        Some(listen) => {
            Some(cache_front::start(listen, running.addr, args.redis.as_deref()).await?)
        }
        None => None,
    };
    if let Some(front) = &front {
        println!(
            "omega-gateway: RFC 9111 shared cache on http://{} ({}), in front of the proxy",
            front.addr,
            if args.redis.is_some() {
                "memory and Redis"
            } else {
                "memory only"
            }
        );
    }
    if let Some(demo) = &demo {
        print_demo(&reloader, running.addr, running.admin_addr, demo);
    } else {
        println!(
            "omega-gateway: proxy on http://{}, admin on http://{}{}",
            running.addr,
            running.admin_addr,
            path.as_ref()
                .map(|p| format!(", config {}", p.display()))
                .unwrap_or_default()
        );
    }
    match running.admin_token_file() {
        Some(file) => println!(
            "omega-gateway: admin token in {} (changes: curl -X POST -H \"Authorization: Bearer $(cat {})\" http://{}/reload)",
            file.display(),
            file.display(),
            running.admin_addr
        ),
        None => println!("omega-gateway: admin changes need the configured bearer token"),
    }
    wait_for_signals(&reloader).await;
    println!("omega-gateway: shutting down, finishing in-flight requests");
    if let Some(front) = front {
        front.shutdown().await;
    }
    running.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signals(gateway: &Gateway) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => match gateway.reload().await {
                Ok(summary) => println!("omega-gateway: {summary}"),
                Err(e) => eprintln!("omega-gateway: reload refused, nothing changed: {e}"),
            },
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_gateway: &Gateway) {
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("omega-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
