//! The in-memory rate limiter beside governor, in one run.
//!
//! The in-memory groups time the lean check of each library: our `RateLimiter::admit`
//! (verdict only, as `RateLimitLayer` uses it) and governor's `check` / `check_key`.
//!
//! - `rate_limit_direct`: one global bucket, a check that admits (the quota is effectively
//!   unlimited, so every iteration takes the admit path).
//! - `rate_limit_keyed_1k`: 1,000 keys cycled, admit path.
//! - `rate_limit_deny`: one bucket that is always empty (the read-only deny path).
//! - `rate_limit_tower_call`: one request through the layer to a no-op inner service: our
//!   `RateLimitLayer` with `.respond()` beside tower_governor's `GovernorLayer`, both with a
//!   global key and both adding their rate-limit header fields to every response (ours: the
//!   IETF `RateLimit-Policy` / `RateLimit`; tower_governor's `use_headers`:
//!   `x-ratelimit-limit` / `x-ratelimit-remaining`).
//! - `rate_limit_redis`: 64 decisions in flight against a throwaway `redis-server`, throughput
//!   in decisions per second: `omega_exact` checks three limits (global, per user, per
//!   endpoint) in one script call; `omega_lease` the same three limits in lease mode;
//!   `lua_baseline` a plain single-limit GCRA script through redis-rs `EVALSHA`.

use std::hint::black_box;
use std::num::NonZeroU32;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use governor::{Quota as GQuota, RateLimiter as GLimiter};
use http::{Request, Response};
use omega_core::Backend;
use omega_core::key::{Key, KeySource};
use omega_core::redis::RedisConfig;
use omega_rate_limit::{Lease, Limit, Quota, RateLimitLayer, RateLimiter};
use tower::{Layer, Service, service_fn};

const KEYS: u64 = 1_000;

fn direct(c: &mut Criterion) {
    if let Some(n) = rows::iters() {
        rows::run(n);
        std::process::exit(0);
    }
    let mut g = c.benchmark_group("rate_limit_direct");
    let omega = RateLimiter::<()>::builder()
        .limit(Limit::global("global", Quota::per_second(1_000_000_000)))
        .build()
        .unwrap();
    g.bench_function("omega", |b| {
        b.iter(|| black_box(omega.admit(black_box(&())).is_ok()))
    });
    let gov = GLimiter::direct(GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
    g.bench_function("governor", |b| b.iter(|| black_box(gov.check().is_ok())));
    g.finish();
}

fn deny(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_deny");
    let omega = RateLimiter::<()>::builder()
        .limit(Limit::global("global", Quota::per_hour(1)))
        .build()
        .unwrap();
    let _ = omega.check_local(&());
    g.bench_function("omega", |b| {
        b.iter(|| black_box(omega.admit(black_box(&())).is_ok()))
    });
    let gov = GLimiter::direct(GQuota::per_hour(NonZeroU32::new(1).unwrap()));
    let _ = gov.check();
    g.bench_function("governor", |b| b.iter(|| black_box(gov.check().is_ok())));
    g.finish();
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_keyed_1k");
    let keys: Vec<String> = (0..KEYS).map(|k| format!("user-{k}")).collect();
    let omega = RateLimiter::<String>::builder()
        .limit(Limit::keyed(
            "per_user",
            Quota::per_second(1_000_000_000),
            KeyRef,
        ))
        .build()
        .unwrap();
    let mut i = 0usize;
    g.bench_function("omega", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(omega.admit(&keys[i]).is_ok())
        })
    });
    let gov = GLimiter::keyed(GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
    let mut i = 0usize;
    g.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });
    g.finish();
}

/// Borrows the request itself as its key (no allocation), as the built-in key sources do.
struct KeyRef;

impl KeySource<String> for KeyRef {
    fn key<'a>(&self, req: &'a String) -> Option<Key<'a>> {
        Some(Key::from(req.as_str()))
    }
}

fn tower_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_tower_call");
    let noop =
        service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
    let limiter = RateLimiter::<Request<()>>::builder()
        .limit(Limit::global("global", Quota::per_second(1_000_000_000)))
        .build()
        .unwrap();
    let mut omega = RateLimitLayer::new(limiter).respond().layer(noop);
    g.bench_function("omega", |b| {
        b.iter(|| {
            let response = omega
                .call(Request::new(()))
                .now_or_never()
                .unwrap()
                .unwrap();
            black_box(response)
        })
    });
    let config = Arc::new(
        tower_governor::governor::GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(1_000_000_000)
            .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
            .use_headers()
            .finish()
            .unwrap(),
    );
    let mut governor = tower_governor::GovernorLayer::new(config).layer(noop);
    g.bench_function("tower_governor", |b| {
        b.iter(|| {
            let response = governor
                .call(Request::new(()))
                .now_or_never()
                .unwrap()
                .unwrap();
            black_box(response)
        })
    });
    g.finish();
}

/// A request with a user and an endpoint, keyed without allocating.
struct ApiCall {
    user: String,
    endpoint: &'static str,
}

struct User;
impl KeySource<ApiCall> for User {
    fn key<'a>(&self, req: &'a ApiCall) -> Option<Key<'a>> {
        Some(Key::from(req.user.as_str()))
    }
}

struct Endpoint;
impl KeySource<ApiCall> for Endpoint {
    fn key<'a>(&self, req: &'a ApiCall) -> Option<Key<'a>> {
        Some(Key::from(req.endpoint))
    }
}

/// The three limits of a typical API, generous enough that every decision admits.
fn three_limits(backend: Backend, lease: Option<Lease>) -> RateLimiter<ApiCall> {
    let quota = Quota::per_second(1_000_000_000).with_burst(1_000_000);
    let with_lease = |l: Limit<ApiCall>| match lease {
        Some(lease) => l.lease(lease),
        None => l,
    };
    RateLimiter::builder()
        .limit(with_lease(Limit::global("global", quota)))
        .limit(with_lease(Limit::keyed("per_user", quota, User)))
        .limit(with_lease(Limit::keyed("per_endpoint", quota, Endpoint)))
        .backend(backend)
        .build()
        .unwrap()
}

/// A plain single-limit GCRA script, as services write by hand.
const LUA_GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > interval * burst then return 0 end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 1
"#;

const IN_FLIGHT: usize = 64;

fn redis(c: &mut Criterion) {
    let server = omega_testkit::RedisServer::start();
    // One thread drives the decisions, the batching task and the Redis connection, as a
    // single-threaded service would; the same for every id.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let calls: Vec<ApiCall> = (0..1_000)
        .map(|i| ApiCall {
            user: format!("user-{i}"),
            endpoint: ["GET /a", "GET /b", "POST /c"][i % 3],
        })
        .collect();
    let connect = || {
        rt.block_on(Backend::redis(
            RedisConfig::url(server.url()).op_timeout(Duration::from_secs(1)),
        ))
        .unwrap()
    };
    let exact = three_limits(connect(), None);
    let lease = three_limits(
        connect(),
        Some(Lease::new(4096).max_hold(Duration::from_secs(60))),
    );

    let mut g = c.benchmark_group("rate_limit_redis");
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    let mut next = 0usize;
    for (id, limiter) in [("omega_exact", &exact), ("omega_lease", &lease)] {
        g.bench_function(id, |b| {
            b.iter(|| {
                let start = next;
                next = next.wrapping_add(IN_FLIGHT);
                rt.block_on(async {
                    let batch = (0..IN_FLIGHT).map(|i| {
                        let call = &calls[(start + i) % calls.len()];
                        async move { limiter.check(call).await.is_allowed() }
                    });
                    let admitted = futures_util::future::join_all(batch).await;
                    assert!(admitted.into_iter().all(|a| a), "Redis decided every call");
                })
            })
        });
    }

    let client = redis::Client::open(server.url()).unwrap();
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let script = redis::Script::new(LUA_GCRA);
    g.bench_function("lua_baseline", |b| {
        b.iter(|| {
            let start = next;
            next = next.wrapping_add(IN_FLIGHT);
            rt.block_on(async {
                let batch = (0..IN_FLIGHT).map(|i| {
                    let mut conn = conn.clone();
                    let key = format!("lua:{}", calls[(start + i) % calls.len()].user);
                    let script = &script;
                    async move {
                        let ok: i64 = script
                            .key(key)
                            .arg(1)
                            .arg(1_000_000)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        ok == 1
                    }
                });
                let admitted = futures_util::future::join_all(batch).await;
                assert!(admitted.into_iter().all(|a| a));
            })
        })
    });
    g.finish();
}

criterion_group!(benches, direct, deny, keyed, tower_call, redis);
criterion_main!(benches);

/// With `OMEGA_BENCH_ITERS=n` set, the bench runs `n` iterations of each row in one function
/// per row (`rows::keyed_omega`, ...) and nothing else, for instruction counts that do not
/// depend on the machine's load: `OMEGA_BENCH_ITERS=100000 valgrind --tool=callgrind <bench
/// binary>`, then `callgrind_annotate --inclusive=yes` and the rows' totals divided by `n`
/// (the Redis rows: by `n` batches of 64 decisions).
mod rows {
    use super::*;

    pub(super) fn iters() -> Option<u64> {
        std::env::var("OMEGA_BENCH_ITERS").ok()?.parse().ok()
    }

    pub(super) fn run(n: u64) {
        let keys: Vec<String> = (0..KEYS).map(|k| format!("user-{k}")).collect();
        let omega = RateLimiter::<String>::builder()
            .limit(Limit::keyed(
                "per_user",
                Quota::per_second(1_000_000_000),
                KeyRef,
            ))
            .build()
            .unwrap();
        let gov = GLimiter::keyed(GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
        // Every key seen once, so the rows time known keys.
        keyed_omega(&omega, &keys, KEYS);
        keyed_governor(&gov, &keys, KEYS);
        keyed_omega(&omega, &keys, n);
        keyed_governor(&gov, &keys, n);
        if std::env::var_os("OMEGA_BENCH_REDIS").is_some() {
            redis_rows(n);
        }
    }

    #[inline(never)]
    fn keyed_omega(omega: &RateLimiter<String>, keys: &[String], n: u64) {
        let mut i = 0usize;
        for _ in 0..n {
            i = (i + 1) % keys.len();
            black_box(omega.admit(&keys[i]).is_ok());
        }
    }

    #[inline(never)]
    fn keyed_governor(gov: &governor::DefaultKeyedRateLimiter<String>, keys: &[String], n: u64) {
        let mut i = 0usize;
        for _ in 0..n {
            i = (i + 1) % keys.len();
            black_box(gov.check_key(&keys[i]).is_ok());
        }
    }

    fn redis_rows(n: u64) {
        let server = omega_testkit::RedisServer::start();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let calls: Vec<ApiCall> = (0..1_000)
            .map(|i| ApiCall {
                user: format!("user-{i}"),
                endpoint: ["GET /a", "GET /b", "POST /c"][i % 3],
            })
            .collect();
        let connect = || {
            rt.block_on(Backend::redis(
                RedisConfig::url(server.url())
                    .op_timeout(Duration::from_secs(30))
                    .connect_timeout(Duration::from_secs(30)),
            ))
            .unwrap()
        };
        let exact = three_limits(connect(), None);
        let lease = three_limits(
            connect(),
            Some(Lease::new(4096).max_hold(Duration::from_secs(60))),
        );
        let client = redis::Client::open(server.url()).unwrap();
        let conn = rt
            .block_on(client.get_multiplexed_async_connection())
            .unwrap();
        let script = redis::Script::new(LUA_GCRA);
        // Warm: every key and lease seen once.
        redis_omega(&rt, &exact, &calls, 1_000 / IN_FLIGHT as u64 + 1);
        redis_lease(&rt, &lease, &calls, 1_000 / IN_FLIGHT as u64 + 1);
        redis_lua(&rt, &conn, &script, &calls, 1_000 / IN_FLIGHT as u64 + 1);
        redis_omega(&rt, &exact, &calls, n);
        redis_lease(&rt, &lease, &calls, n);
        redis_lua(&rt, &conn, &script, &calls, n);
    }

    fn batch(
        rt: &tokio::runtime::Runtime,
        limiter: &RateLimiter<ApiCall>,
        calls: &[ApiCall],
        n: u64,
    ) {
        let mut next = 0usize;
        for _ in 0..n {
            let start = next;
            next = next.wrapping_add(IN_FLIGHT);
            rt.block_on(async {
                let batch = (0..IN_FLIGHT).map(|i| {
                    let call = &calls[(start + i) % calls.len()];
                    async move { limiter.check(call).await.is_allowed() }
                });
                let admitted = futures_util::future::join_all(batch).await;
                assert!(admitted.into_iter().all(|a| a), "Redis decided every call");
            })
        }
    }

    #[inline(never)]
    fn redis_omega(
        rt: &tokio::runtime::Runtime,
        l: &RateLimiter<ApiCall>,
        calls: &[ApiCall],
        n: u64,
    ) {
        black_box(0); // a body of its own (identical rows would be merged)
        batch(rt, l, calls, n)
    }

    #[inline(never)]
    fn redis_lease(
        rt: &tokio::runtime::Runtime,
        l: &RateLimiter<ApiCall>,
        calls: &[ApiCall],
        n: u64,
    ) {
        black_box(1); // a body of its own (identical rows would be merged)
        batch(rt, l, calls, n)
    }

    #[inline(never)]
    fn redis_lua(
        rt: &tokio::runtime::Runtime,
        conn: &redis::aio::MultiplexedConnection,
        script: &redis::Script,
        calls: &[ApiCall],
        n: u64,
    ) {
        let mut next = 0usize;
        for _ in 0..n {
            let start = next;
            next = next.wrapping_add(IN_FLIGHT);
            rt.block_on(async {
                let batch = (0..IN_FLIGHT).map(|i| {
                    let mut conn = conn.clone();
                    let key = format!("lua:{}", calls[(start + i) % calls.len()].user);
                    async move {
                        let ok: i64 = script
                            .key(key)
                            .arg(1)
                            .arg(1_000_000)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        ok == 1
                    }
                });
                let admitted = futures_util::future::join_all(batch).await;
                assert!(admitted.into_iter().all(|a| a));
            })
        }
    }
}
