//! The Redis store against real servers: two limiter "processes" sharing one Redis, atomic
//! multi-limit decisions, Redis dying under load, and a 3-node cluster.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_rate_limit::{Limit, OnBackendFailure, Quota, RateLimitLayer, RateLimited, RateLimiter};
use omega_testkit::{RedisCluster, RedisServer};
use tower::{Service, ServiceExt, service_fn};

#[derive(Clone, Debug)]
struct Req {
    user: String,
}

fn req(user: &str) -> Req {
    Req {
        user: user.to_owned(),
    }
}

/// The operation timeout of these tests.
const OP_TIMEOUT: Duration = Duration::from_millis(200);

async fn backend(url: String) -> Backend {
    Backend::redis(
        RedisConfig::url(url)
            .op_timeout(OP_TIMEOUT)
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .unwrap()
}

/// Checks as `user` until a decision comes from Redis again (not from a failure policy);
/// fails the test at `deadline`.
async fn until_redis_decides(limiter: &RateLimiter<Req>, user: &str, deadline: Instant) {
    while limiter.check(&req(user)).await.is_degraded() {
        assert!(
            Instant::now() < deadline,
            "{user}: decisions never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn two_limits(backend: Backend, user_quota: Quota, global_quota: Quota) -> RateLimiter<Req> {
    RateLimiter::builder()
        .limit(Limit::global("global", global_quota))
        .limit(Limit::keyed("per_user", user_quota, |r: &Req| {
            Some(r.user.clone())
        }))
        .backend(backend)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_admit_no_more_than_the_global_limit() {
    let server = RedisServer::start();
    let (rate, burst) = (200u64, 50u64);
    let quota = Quota::per_second(rate as u32).with_burst(burst as u32);
    let mut instances = Vec::new();
    for _ in 0..2 {
        // Each "process" has its own connection and its own limiter.
        let b = backend(server.url()).await;
        instances.push(two_limits(b, Quota::per_second(1_000_000), quota));
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for (i, limiter) in instances.iter().enumerate() {
        for t in 0..16 {
            let limiter = limiter.clone();
            let (admitted, denied) = (admitted.clone(), denied.clone());
            tasks.push(tokio::spawn(async move {
                let r = req(&format!("user{i}-{t}"));
                while started.elapsed() < run_for {
                    let d = limiter.check(&r).await;
                    assert!(!d.is_degraded(), "Redis answered every decision");
                    if d.is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        denied.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed);
    let bound = burst + (rate as f64 * elapsed).ceil() as u64;
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
    assert!(
        denied.load(Ordering::Relaxed) > 0,
        "the load went over the limit"
    );
    // Not starved either: the limit was actually used (at least the burst and half the rate).
    assert!(admitted >= burst + rate / 2, "{admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_by_one_limit_takes_nothing_from_the_others() {
    let server = RedisServer::start();
    let limiter = two_limits(
        backend(server.url()).await,
        Quota::per_minute(2),
        Quota::per_minute(10),
    );
    for _ in 0..2 {
        assert!(limiter.check(&req("ada")).await.is_allowed());
    }
    for _ in 0..20 {
        let d = limiter.check(&req("ada")).await;
        let denied = d.denied().expect("ada is over her limit");
        assert_eq!(denied.limit(), "per_user");
        assert!(
            denied.retry_after().unwrap() > Duration::from_secs(20),
            "{denied}"
        );
    }
    // Eight global cells are left: the 20 denials took none.
    for i in 0..8 {
        assert!(
            limiter.check(&req(&format!("u{i}"))).await.is_allowed(),
            "{i}"
        );
    }
    let d = limiter.check(&req("zed")).await;
    assert_eq!(d.denied().unwrap().limit(), "global");
    // Keys carry the prefix and expire when their bucket is full again.
    let ttl: i64 = server.cli(&["PTTL", "omega:{rl:global}"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 60_001, "PTTL = {ttl}");
}

/// Limiters over one Redis share the buckets of same-named limits, unless their scopes differ
/// (the gateway gives each route its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_keep_same_named_limits_of_two_limiters_apart() {
    let server = RedisServer::start();
    let b = backend(server.url()).await;
    let limiter = |scope: Option<&str>| {
        let mut builder = RateLimiter::<Req>::builder()
            .limit(Limit::global("global", Quota::per_minute(3)))
            .backend(b.clone());
        if let Some(scope) = scope {
            builder = builder.scope(scope);
        }
        builder.build().unwrap()
    };
    let (users, orders) = (limiter(Some("/users")), limiter(Some("/orders")));
    for _ in 0..3 {
        assert!(users.check(&req("a")).await.is_allowed());
    }
    assert!(!users.check(&req("a")).await.is_allowed());
    // Another scope: its own three cells, in its own key.
    for _ in 0..3 {
        assert!(orders.check(&req("a")).await.is_allowed());
    }
    assert!(!orders.check(&req("a")).await.is_allowed());
    let ttl: i64 = server
        .cli(&["PTTL", "omega:{rl:/orders:global}"])
        .parse()
        .unwrap();
    assert!(ttl > 0, "PTTL = {ttl}");
    // Without a scope, two limiters are one bucket.
    let (x, y) = (limiter(None), limiter(None));
    for _ in 0..3 {
        assert!(x.check(&req("a")).await.is_allowed());
    }
    assert!(!y.check(&req("a")).await.is_allowed());
    // A scope with a brace would break the key's hash tag.
    let err = RateLimiter::<Req>::builder()
        .limit(Limit::global("g", Quota::per_minute(3)))
        .scope("a{b")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("invalid scope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_uses_redis_and_clones_share_it() {
    let server = RedisServer::start();
    let limiter = two_limits(
        backend(server.url()).await,
        Quota::per_minute(3),
        Quota::per_minute(100),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service(service_fn(|r: Req| async move {
            Ok::<_, std::convert::Infallible>(r.user)
        }));
    let mut admitted = 0;
    for _ in 0..6 {
        let mut clone = svc.clone();
        match clone.ready().await.unwrap().call(req("bob")).await {
            Ok(user) => {
                assert_eq!(user, "bob");
                admitted += 1;
            }
            Err(e) => assert!(e.is::<RateLimited>(), "{e}"),
        }
    }
    assert_eq!(admitted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policies_hold_while_redis_is_down_and_redis_decides_again_after() {
    let mut server = RedisServer::start();
    let b = backend(server.url()).await;
    let make = |policy: OnBackendFailure, name: &str| {
        RateLimiter::<Req>::builder()
            .limit(Limit::global(name.to_owned(), Quota::per_minute(5)).on_backend_failure(policy))
            .backend(b.clone())
            .build()
            .unwrap()
    };
    let open = make(OnBackendFailure::Open, "open");
    let closed = make(OnBackendFailure::Closed, "closed");
    let local = make(OnBackendFailure::Local { share: 0.4 }, "local");
    for l in [&open, &closed, &local] {
        let d = l.check(&req("x")).await;
        assert!(d.is_allowed() && !d.is_degraded());
    }

    server.kill();
    let mut counts = [0u32; 3];
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        for (i, l) in [&open, &closed, &local].into_iter().enumerate() {
            let started = Instant::now();
            let d = l.check(&req("x")).await;
            worst = worst.max(started.elapsed());
            // One deadline per decision: at most the operation timeout (200 ms) and
            // scheduling, under the 400 ms that two waits in a row would take.
            assert!(
                started.elapsed() < 2 * OP_TIMEOUT,
                "{:?}",
                started.elapsed()
            );
            assert!(d.is_degraded());
            if d.is_allowed() {
                counts[i] += 1;
            }
        }
    }
    println!("Redis killed: the slowest decision took {worst:?} (op timeout {OP_TIMEOUT:?})");
    assert_eq!(counts[0], 20, "fail open admits everything");
    assert_eq!(counts[1], 0, "fail closed admits nothing");
    assert_eq!(
        counts[2], 2,
        "the local fallback enforces 40% of the quota (burst 2)"
    );

    server.restart();
    until_redis_decides(&local, "x", Instant::now() + Duration::from_secs(15)).await;
    // Redis restarted empty: the full quota is there again (one was just used).
    for _ in 0..4 {
        assert!(local.check(&req("x")).await.is_allowed());
    }
    assert!(!local.check(&req("x")).await.is_allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_limit_decisions_on_a_three_node_cluster() {
    let cluster = RedisCluster::start();
    let b =
        Backend::redis(RedisConfig::cluster(cluster.urls()).op_timeout(Duration::from_millis(500)))
            .await
            .unwrap();
    let limiter = RateLimiter::<Req>::builder()
        .limit(Limit::global("global", Quota::per_minute(6)))
        .limit(Limit::keyed("per_user", Quota::per_minute(2), |r: &Req| {
            Some(r.user.clone())
        }))
        .limit(Limit::keyed(
            "per_team",
            Quota::per_minute(100),
            |r: &Req| Some(format!("team-of-{}", r.user)),
        ))
        .backend(b.clone())
        .build()
        .unwrap();
    // The three keys of one request live in different slots.
    let slots: std::collections::HashSet<u16> =
        ["rl:global", "rl:per_user:ann", "rl:per_team:team-of-ann"]
            .iter()
            .map(|t| omega_core::hash_slot(b.keyspace().tagged(t, &[]).as_bytes()))
            .collect();
    assert_eq!(slots.len(), 3);

    assert!(limiter.check(&req("ann")).await.is_allowed());
    assert!(limiter.check(&req("ann")).await.is_allowed());
    for _ in 0..10 {
        let d = limiter.check(&req("ann")).await;
        assert_eq!(d.denied().unwrap().limit(), "per_user");
    }
    // The denials gave back what "global" took before "per_user" said no: 4 cells remain.
    for i in 0..4 {
        assert!(
            limiter.check(&req(&format!("b{i}"))).await.is_allowed(),
            "{i}"
        );
    }
    assert_eq!(
        limiter.check(&req("carl")).await.denied().unwrap().limit(),
        "global"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_batched_together_stay_all_or_none() {
    let server = RedisServer::start();
    let limiter = two_limits(
        backend(server.url()).await,
        Quota::per_minute(5),
        Quota::per_minute(100),
    );
    // 64 decisions at once for one user: they share script calls, decided one by one.
    let limiter_ref = &limiter;
    let decisions = futures_util::future::join_all(
        (0..64).map(|_| async move { limiter_ref.check(&req("ada")).await.is_allowed() }),
    )
    .await;
    assert_eq!(decisions.iter().filter(|&&a| a).count(), 5);
    // The 59 denials took nothing from the global limit: 95 cells are left.
    let others = futures_util::future::join_all(
        (0..120)
            .map(|i| async move { limiter_ref.check(&req(&format!("u{i}"))).await.is_allowed() }),
    )
    .await;
    assert_eq!(others.iter().filter(|&&a| a).count(), 95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_decisions_report_the_binding_limit_and_shadow_denials() {
    let server = RedisServer::start();
    let limiter = RateLimiter::<Req>::builder()
        .limit(Limit::global("global", Quota::per_minute(100)))
        .limit(Limit::keyed("per_user", Quota::per_minute(3), |r: &Req| {
            Some(r.user.clone())
        }))
        .limit(
            Limit::keyed("shadow_user", Quota::per_minute(1), |r: &Req| {
                Some(r.user.clone())
            })
            .shadow(true),
        )
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = limiter.check(&req("ada")).await;
        assert!(d.is_allowed());
        let b = d.binding().unwrap();
        seen.push((b.limit.to_owned(), b.remaining, d.shadow_denied()));
    }
    // The per-user limit binds (fewest cells left); the shadow limit would deny from the
    // second request on, without denying.
    assert_eq!(
        seen,
        [
            ("per_user".to_owned(), 2, 0),
            ("per_user".to_owned(), 1, 1),
            ("per_user".to_owned(), 0, 1)
        ]
    );
    let d = limiter.check(&req("ada")).await;
    let denied = d.denied().unwrap();
    assert_eq!(denied.limit(), "per_user");
    let b = d.binding().unwrap();
    assert_eq!((b.limit, b.remaining), ("per_user", 0));
    assert!(b.reset_after > Duration::from_secs(19) && b.reset_after <= Duration::from_secs(20));
}

/// A cluster node dies under a keyed limit: the keys it held fall back to their failure
/// policy, every decision still returns within the operation timeout, and once the node is
/// back the cluster decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_node_falls_back_and_the_cluster_decides_again_after() {
    let mut cluster = RedisCluster::start();
    let b = Backend::redis(
        RedisConfig::cluster(cluster.urls())
            .op_timeout(OP_TIMEOUT)
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let limiter = RateLimiter::<Req>::builder()
        .limit(
            Limit::keyed("per_user", Quota::per_minute(3), |r: &Req| {
                Some(r.user.clone())
            })
            .on_backend_failure(OnBackendFailure::Local { share: 1.0 }),
        )
        .backend(b.clone())
        .build()
        .unwrap();
    // One decision per user, from Redis; then find the node that holds each user's key.
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    for u in &users {
        let d = limiter.check(&req(u)).await;
        assert!(d.is_allowed() && !d.is_degraded(), "{u}");
    }
    let node_of = |u: &str| {
        let key = b.keyspace().tagged(&format!("rl:per_user:{u}"), &[]);
        (0..3)
            .find(|&n| cluster.nodes()[n].cli(&["EXISTS", &key]) == "1")
            .expect("the key is on some node")
    };
    let victim = node_of("user0");
    let on_victim: Vec<&String> = users.iter().filter(|u| node_of(u) == victim).collect();

    cluster.nodes_mut()[victim].kill();
    let mut worst = Duration::ZERO;
    for u in &on_victim {
        let mut admitted = 0;
        for _ in 0..10 {
            let started = Instant::now();
            let d = limiter.check(&req(u)).await;
            worst = worst.max(started.elapsed());
            // One deadline per decision: at most the operation timeout (200 ms) and
            // scheduling, under the 400 ms that two waits in a row would take.
            assert!(
                started.elapsed() < 2 * OP_TIMEOUT,
                "{u}: {:?}",
                started.elapsed()
            );
            assert!(d.is_degraded(), "{u}: its node is down");
            admitted += u32::from(d.is_allowed());
        }
        // The local fallback enforces the whole quota (3 per minute) on its own.
        assert_eq!(admitted, 3, "{u}");
    }
    println!(
        "cluster node killed: the slowest decision took {worst:?} (op timeout {OP_TIMEOUT:?})"
    );

    cluster.nodes_mut()[victim].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    for u in &on_victim {
        until_redis_decides(&limiter, u, deadline).await;
    }
    // The node came back empty; the decision that left fallback wrote the key there again.
    let key = b
        .keyspace()
        .tagged(&format!("rl:per_user:{}", on_victim[0]), &[]);
    assert_eq!(cluster.nodes()[victim].cli(&["EXISTS", &key]), "1");
}

/// Keys are bytes: a key that is not UTF-8 gets its own bucket, in a Redis key that embeds
/// its bytes, on a standalone server and on a cluster (where each key is its own hash tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_have_their_own_buckets_on_a_server_and_a_cluster() {
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let on_cluster =
        Backend::redis(RedisConfig::cluster(cluster.urls()).op_timeout(Duration::from_millis(500)))
            .await
            .unwrap();
    for b in [backend(server.url()).await, on_cluster] {
        let limiter = RateLimiter::<Vec<u8>>::builder()
            .limit(Limit::keyed(
                "per_key",
                Quota::per_minute(2),
                |k: &Vec<u8>| Some(k.clone()),
            ))
            .backend(b.clone())
            .build()
            .unwrap();
        let (a, c) = (vec![0xff, b'{', 0x00], vec![0xfe, b'{', 0x00]);
        for _ in 0..2 {
            assert!(limiter.check(&a).await.is_allowed());
        }
        let d = limiter.check(&a).await;
        assert!(!d.is_degraded());
        assert_eq!(d.denied().unwrap().limit(), "per_key");
        assert!(limiter.check(&c).await.is_allowed(), "another key");
        // `omega:{rl:per_key:<bytes>}`, the brace escaped as `Keyspace::tagged` escapes it.
        let key = b"omega:{rl:per_key:\xff%7B\x00}";
        let redis = b.as_redis().unwrap();
        let exists: i64 = redis
            .query(omega_core::redis::cmd("EXISTS").arg(&key[..]))
            .await
            .unwrap();
        assert_eq!(exists, 1, "{}", b.health().target);
    }
}

/// A keyed limit told to refuse requests without its key refuses them before asking Redis,
/// through `check` and through the layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_key_are_refused_before_redis_is_asked() {
    let server = RedisServer::start();
    let limiter = RateLimiter::<Req>::builder()
        .limit(Limit::global("global", Quota::per_minute(2)))
        .limit(
            Limit::keyed("per_user", Quota::per_minute(10), |r: &Req| {
                (!r.user.is_empty()).then(|| r.user.clone())
            })
            .on_missing_key(omega_core::key::MissingKey::Reject),
        )
        .backend(backend(server.url()).await)
        .build()
        .unwrap();
    for _ in 0..3 {
        let d = limiter.check(&req("")).await;
        assert!(d.key_missing().is_some() && !d.is_degraded(), "{d:?}");
    }
    let svc = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter.clone()))
        .service(service_fn(|r: Req| async move {
            Ok::<_, std::convert::Infallible>(r.user)
        }));
    let err = svc.clone().oneshot(req("")).await.unwrap_err();
    assert!(err.is::<omega_core::key::KeyMissing>(), "{err}");
    // Nothing was taken from the global limit: both its cells are there.
    assert_eq!(svc.clone().oneshot(req("a")).await.unwrap(), "a");
    assert_eq!(svc.clone().oneshot(req("b")).await.unwrap(), "b");
    let err = svc.oneshot(req("c")).await.unwrap_err();
    assert_eq!(err.downcast_ref::<RateLimited>().unwrap().limit(), "global");
}

/// `.respond()` over Redis: the decision is Redis's, the answer is the same as in memory
/// (429 with `Retry-After` and the fields; admitted responses carry the fields).
#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_the_fields_when_redis_decides() {
    use omega_core::key::http::Header;
    use omega_rate_limit::Lease;

    let server = RedisServer::start();
    let b = backend(server.url()).await;
    for lease in [None, Some(Lease::new(2))] {
        let per_key = Limit::keyed("per_key", Quota::per_minute(3), Header::new("x-api-key"));
        let per_key = match lease {
            Some(lease) => per_key.lease(lease),
            None => per_key,
        };
        let limiter = RateLimiter::<http::Request<()>>::builder()
            .limit(per_key)
            .backend(b.clone())
            .scope(if lease.is_some() { "leased" } else { "exact" })
            .build()
            .unwrap();
        let svc = tower::ServiceBuilder::new()
            .layer(RateLimitLayer::new(limiter).respond())
            .service(service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(()))
            }));
        let call = || {
            let request = http::Request::get("/")
                .header("x-api-key", "k")
                .body(())
                .unwrap();
            svc.clone().oneshot(request)
        };
        for left in [2, 1, 0] {
            let r = call().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["ratelimit-policy"], r#""per_key";q=3;w=60"#);
            let state = r.headers()["ratelimit"].to_str().unwrap();
            // A leased limit reports the cells left in this instance's lease.
            let expected = match lease {
                None => format!(r#""per_key";r={left};t="#),
                Some(_) => r#""per_key";r="#.to_owned(),
            };
            assert!(state.starts_with(&expected), "{lease:?}: {state}");
        }
        let r = call().await.unwrap();
        assert_eq!(r.status(), 429, "{lease:?}");
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "retry-after {retry}");
        assert_eq!(
            r.headers()["ratelimit"],
            format!(r#""per_key";r=0;t={retry}"#).as_str()
        );
    }
}
