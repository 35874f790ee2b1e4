//! Load benchmark of the gateway, on loopback, in one run: requests per second and latency
//! percentiles for
//!
//! 1. the upstream directly;
//! 2. the gateway with no layers (`Gateway::proxy_only`: routing by prefix and the proxy);
//! 3. the gateway with its layers on: three rate limits per request (per user, per client IP,
//!    global), shard routing over three nodes by a user header, a circuit breaker per node,
//!    active health checks every second;
//! 4. the same over Redis (a `redis-server` started for the run; leased limits, breakers and
//!    topology shared), when `redis-server` is installed;
//! 5. the full stack with the route's cache in front of the pool (RFC 9111, in memory): every
//!    request after the first is a hit, answered without the upstream;
//! 6. nginx and HAProxy as plain reverse proxies in front of the same upstream (keep-alive to
//!    the upstream, two workers each), when installed (`apt-get install nginx-light haproxy`).
//!
//! Then each row again with one connection sending requests one after another (the latency a
//! plain keep-alive client sees). The goals: the full stack keeps at least 85% of the
//! no-layer gateway's throughput; the gateway against nginx and HAProxy is reported as a
//! ratio.
//!
//! ```text
//! cargo bench -p omega-gateway-load [-- --seconds 3 --rounds 3 --connections 32 --redis URL --only bare,full]
//! ```
//!
//! A closed loop: each connection is an HTTP/1.1 keep-alive connection that sends its next
//! request when the previous response has been read whole. The load generator, the gateway and
//! the upstream each run on their own Tokio runtime in this process, so on a small machine they
//! share its cores: compare the rows with one another, not with other machines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use omega_gateway::Gateway;
use omega_gateway::GatewayConfig;

mod peers;

/// Distinct values of the user header the load generator sends.
const USERS: usize = 1_000;

struct Options {
    seconds: u64,
    warmup: u64,
    connections: usize,
    /// An existing Redis for the Redis row, instead of a `redis-server` started for the run.
    redis: Option<String>,
    /// Rounds: each row is measured `rounds` times, in turn with the others.
    rounds: u32,
    /// Only these rows (`direct`, `nginx`, `haproxy`, `bare`, `full`, `cached`, `redis`), for profiling
    /// one of them.
    only: Option<Vec<String>>,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            seconds: 3,
            warmup: 1,
            connections: 32,
            redis: None,
            rounds: 3,
            only: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| -> u64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a number"))
            };
            match a.as_str() {
                "--seconds" => o.seconds = value("--seconds"),
                "--warmup" => o.warmup = value("--warmup"),
                "--connections" => o.connections = value("--connections") as usize,
                "--redis" => o.redis = Some(args.next().expect("--redis needs a URL")),
                "--rounds" => o.rounds = value("--rounds") as u32,
                "--only" => {
                    let list = args
                        .next()
                        .expect("--only needs a list: direct,nginx,haproxy,bare,full,redis");
                    o.only = Some(list.split(',').map(str::to_owned).collect());
                }
                // `cargo bench` passes `--bench`; filters are not used here.
                _ => {}
            }
        }
        o
    }
}

/// What one scenario measured.
struct Run {
    name: &'static str,
    requests: u64,
    not_ok: u64,
    errors: u64,
    elapsed: Duration,
    /// Sorted latencies, in microseconds.
    micros: Vec<u32>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let i = ((self.micros.len() as f64 * p).ceil() as usize).clamp(1, self.micros.len()) - 1;
        f64::from(self.micros[i]) / 1000.0
    }
}

/// A runtime on its own thread, kept alive for the whole run.
fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// The upstream: answers every request with a small body, as a fast service would.
async fn upstream() -> SocketAddr {
    let app = axum::Router::new().fallback(|| async { "ok\n" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn config(upstream: SocketAddr, layers: bool, redis: Option<&str>) -> GatewayConfig {
    config_with(upstream, layers, redis, false)
}

/// [`config`], with the route's cache on: the upstream's answers carry no freshness, so the
/// cache keeps them for a heuristic `ttl` of a minute.
fn config_with(
    upstream: SocketAddr,
    layers: bool,
    redis: Option<&str>,
    cache: bool,
) -> GatewayConfig {
    let url = format!("http://{upstream}");
    let lease = redis.map(|_| 512);
    let limits = if layers {
        serde_json::json!([
            { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 1_000_000, "per": "1s", "lease": lease },
            { "name": "per_ip", "key": "client_ip", "rate": 10_000_000, "per": "1s", "lease": lease },
            { "name": "global", "key": "global", "rate": 100_000_000, "per": "1s", "lease": lease },
        ])
    } else {
        serde_json::json!([])
    };
    // Three node ids on the same upstream: the rows differ only in the layers.
    let nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| serde_json::json!({ "id": id, "url": url }))
        .collect();
    let mut doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "upstreams": {
            "pool": {
                "nodes": nodes,
                "key": { "header": "x-user-id" },
                "failover": 2,
                "breaker": { "failure_rate": 50, "window": 100, "minimum_calls": 20, "wait": "5s" }
            }
        },
        "routes": [{ "prefix": "/api", "upstream": "pool", "timeout": "5s", "limits": limits }]
    });
    if let Some(url) = redis {
        doc["redis"] = url.into();
    }
    if cache {
        doc["routes"][0]["cache"] = serde_json::json!({ "ttl": "60s" });
    }
    if layers {
        // Active health checks on, as a production pool would have them.
        doc["upstreams"]["pool"]["health_check"] = serde_json::json!({ "interval": "1s" });
    }
    GatewayConfig::from_json(&doc.to_string()).unwrap()
}

/// One keep-alive connection sending requests until `end`; latencies of the requests that
/// start after `measure_from`.
async fn connection(
    addr: SocketAddr,
    first_user: usize,
    measure_from: Instant,
    end: Instant,
) -> (u64, u64, u64, Vec<u32>) {
    let (mut requests, mut not_ok, mut errors) = (0u64, 0u64, 0u64);
    let mut micros = Vec::with_capacity(1 << 16);
    let users: Vec<String> = (0..USERS).map(|u| format!("user-{u}")).collect();
    let host = addr.to_string();
    let mut user = first_user;
    'connect: while Instant::now() < end {
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            errors += 1;
            continue;
        };
        stream.set_nodelay(true).unwrap();
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            errors += 1;
            continue;
        };
        tokio::spawn(conn);
        loop {
            let started = Instant::now();
            if started >= end {
                break 'connect;
            }
            user = (user + 1) % USERS;
            let req = Request::get("/api/item")
                .header(hyper::header::HOST, host.as_str())
                .header("x-user-id", users[user].as_str())
                .body(Empty::<Bytes>::new())
                .unwrap();
            if sender.ready().await.is_err() {
                errors += 1;
                continue 'connect;
            }
            let ok = match sender.send_request(req).await {
                Ok(response) => {
                    let status = response.status();
                    match response.into_body().collect().await {
                        Ok(_) => Some(status.is_success()),
                        Err(_) => None,
                    }
                }
                Err(_) => None,
            };
            if started < measure_from {
                continue;
            }
            match ok {
                Some(true) => {}
                Some(false) => not_ok += 1,
                None => {
                    errors += 1;
                    continue 'connect;
                }
            }
            requests += 1;
            micros.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
    }
    (requests, not_ok, errors, micros)
}

/// Drives `addr` with the options' connections for warmup + seconds.
fn load(rt: &tokio::runtime::Runtime, name: &'static str, addr: SocketAddr, o: &Options) -> Run {
    rt.block_on(async {
        let measure_from = Instant::now() + Duration::from_secs(o.warmup);
        let end = measure_from + Duration::from_secs(o.seconds);
        let tasks: Vec<_> = (0..o.connections)
            .map(|c| tokio::spawn(connection(addr, c * 31, measure_from, end)))
            .collect();
        let mut run = Run {
            name,
            requests: 0,
            not_ok: 0,
            errors: 0,
            elapsed: Duration::from_secs(o.seconds),
            micros: Vec::new(),
        };
        for t in tasks {
            let (r, n, e, m) = t.await.unwrap();
            run.requests += r;
            run.not_ok += n;
            run.errors += e;
            run.micros.extend(m);
        }
        run.micros.sort_unstable();
        run
    })
}

fn main() {
    let o = Options::parse();
    // Cores are scarce: the upstream and the load generator get one worker each, the gateway
    // (what is measured) two.
    let upstream_rt = runtime("upstream", 1);
    let gateway_rt = runtime("gateway", 2);
    let load_rt = runtime("load", 1);
    let upstream = upstream_rt.block_on(upstream());

    let installed = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    let redis = (o.redis.is_none() && installed).then(omega_testkit::RedisServer::start);
    let redis_url = o.redis.clone().or_else(|| redis.as_ref().map(|r| r.url()));
    if redis_url.is_none() {
        println!("redis-server not found: the Redis row is left out");
    }

    // Every target is up before the first round; the rounds then take turns, so that noise
    // from the machine falls on every row alike.
    let start = |gateway: Result<Gateway, omega_gateway::GatewayError>| {
        gateway_rt.block_on(gateway.unwrap().start()).unwrap()
    };
    let bare = start(gateway_rt.block_on(Gateway::proxy_only(config(upstream, false, None))));
    let full = start(gateway_rt.block_on(Gateway::new(config(upstream, true, None), None, None)));
    let cached = start(gateway_rt.block_on(Gateway::new(
        config_with(upstream, true, None, true),
        None,
        None,
    )));
    let shared = redis_url.as_deref().map(|url| {
        start(gateway_rt.block_on(Gateway::new(config(upstream, true, Some(url)), None, None)))
    });
    let nginx = peers::nginx(upstream);
    let haproxy = peers::haproxy(upstream);
    let mut targets = vec![("direct", "upstream directly", upstream)];
    if let Some(p) = &nginx {
        targets.push(("nginx", "nginx (proxy_pass, upstream keepalive)", p.addr));
    }
    if let Some(p) = &haproxy {
        targets.push(("haproxy", "HAProxy (http-reuse always)", p.addr));
    }
    targets.extend([
        ("bare", "gateway, no layers", bare.addr),
        ("full", "gateway, limits + router + breakers", full.addr),
        (
            "cached",
            "gateway, full stack + route cache (hits)",
            cached.addr,
        ),
    ]);
    if let Some(g) = &shared {
        targets.push(("redis", "gateway, all layers over Redis (leases)", g.addr));
    }
    targets.retain(|(id, _, _)| {
        o.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|x| x == id))
    });

    let mut runs: Vec<Run> = targets
        .iter()
        .map(|&(_, name, _)| Run {
            name,
            requests: 0,
            not_ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            micros: Vec::new(),
        })
        .collect();
    for _ in 0..o.rounds {
        for (run, &(_, name, addr)) in runs.iter_mut().zip(&targets) {
            let r = load(&load_rt, name, addr, &o);
            run.requests += r.requests;
            run.not_ok += r.not_ok;
            run.errors += r.errors;
            run.elapsed += r.elapsed;
            run.micros.extend(r.micros);
        }
    }
    for run in &mut runs {
        run.micros.sort_unstable();
    }
    // One connection, one request after another: the latency a plain keep-alive client sees.
    let single = Options {
        connections: 1,
        redis: None,
        only: None,
        ..o
    };
    let sequential: Vec<Run> = targets
        .iter()
        .map(|&(_, name, addr)| load(&load_rt, name, addr, &single))
        .collect();
    drop((nginx, haproxy));
    for g in [Some(bare), Some(full), Some(cached), shared]
        .into_iter()
        .flatten()
    {
        gateway_rt.block_on(g.shutdown());
    }

    println!(
        "\n{} connections; per row {} rounds of {} s measured after {} s of warm-up; {USERS} users\n",
        o.connections, o.rounds, o.seconds, o.warmup
    );
    println!(
        "| {:<42} | {:>10} | {:>8} | {:>8} | {:>8} | {:>8} | {:>11} | {:>6} |",
        "scenario", "req/s", "vs nginx", "p50 ms", "p99 ms", "p99.9 ms", "vs no-layer", "non-2xx"
    );
    println!(
        "|{:-<44}|{:->12}|{:->10}|{:->10}|{:->10}|{:->10}|{:->13}|{:->8}|",
        "", "", "", "", "", "", "", ""
    );
    let rps_of = |name: &str| runs.iter().find(|r| r.name == name).map(Run::rps);
    let baseline = rps_of("gateway, no layers").unwrap_or(f64::NAN);
    let nginx_rps = rps_of("nginx (proxy_pass, upstream keepalive)").unwrap_or(f64::NAN);
    for r in &runs {
        println!(
            "| {:<42} | {:>10.0} | {:>8.2} | {:>8.2} | {:>8.2} | {:>8.2} | {:>10.1}% | {:>6} |",
            r.name,
            r.rps(),
            r.rps() / nginx_rps,
            r.percentile(0.50),
            r.percentile(0.99),
            r.percentile(0.999),
            100.0 * r.rps() / baseline,
            r.not_ok + r.errors,
        );
    }
    println!(
        "\nOne connection, sequential requests ({} s each):\n",
        o.seconds
    );
    println!(
        "| {:<42} | {:>10} | {:>8} | {:>8} | {:>8} |",
        "scenario", "req/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    println!(
        "|{:-<44}|{:->12}|{:->10}|{:->10}|{:->10}|",
        "", "", "", "", ""
    );
    for r in &sequential {
        println!(
            "| {:<42} | {:>10.0} | {:>8.3} | {:>8.3} | {:>8.3} |",
            r.name,
            r.rps(),
            r.percentile(0.50),
            r.percentile(0.99),
            r.percentile(0.999),
        );
    }
    if let Some(full) = rps_of("gateway, limits + router + breakers") {
        let ratio = full / baseline;
        println!(
            "\nfull stack / no-layer gateway: {:.1}% (goal: at least 85%) {}",
            100.0 * ratio,
            if ratio >= 0.85 { "met" } else { "NOT met" }
        );
    }
}
