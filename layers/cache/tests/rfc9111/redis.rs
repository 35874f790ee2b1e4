//! The same shared cache over a real Redis (L2): what one instance stores answers the
//! others, purges reach every instance, and the RFC 9111 rules hold for what comes from L2.

use std::sync::Arc;
use std::time::Duration;

use omega_cache::{Cache, HttpCacheLayer, HttpCodec, HttpPolicy, Partition, StoredResponse};
use omega_core::Keyspace;
use omega_core::redis::{RedisBackend, RedisConfig};
use omega_testkit::RedisServer;
use tower::Layer;

use super::support::*;

/// One instance (its own backend handle and subscription, as another process has) of the
/// cache over `url`, in front of `origin`.
async fn instance(url: &str, origin: &Origin) -> Rig {
    let cfg = RedisConfig::parse(url)
        .unwrap()
        .keyspace(Keyspace::new("rfc9111").unwrap())
        .op_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_millis(300));
    let backend = RedisBackend::connect(cfg).await.unwrap();
    let clock = omega_core::Clock::system();
    let cache: Cache<Arc<StoredResponse>> = Cache::builder()
        .name("omega")
        .codec(HttpCodec)
        .clock(clock.clone())
        .partition(Partition::new("pages").max_entry_bytes(64 * 1024))
        .redis(backend)
        .build()
        .unwrap();
    eventually(|| cache.is_synced()).await;
    let policy = HttpPolicy::new("pages").tags_from("surrogate-key");
    let svc = HttpCacheLayer::new(cache.clone(), policy).layer(Forward::to(origin.addr));
    Rig { svc, cache, clock }
}

/// Waits (bounded, 5 s) until `f` holds.
async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}

/// Waits (bounded) until a GET of `path` on `rig` is a hit, or not.
async fn until_hit(rig: &Rig, path: &str, hit: bool) -> Answer {
    for _ in 0..100 {
        let a = rig.get(path, &[]).await;
        if a.hit() == hit {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never became hit={hit}");
}

// RFC 9111 §4: a stored response answers requests to any instance sharing the store, with
// its headers, `Age` and `Cache-Status`, as from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_stored_by_one_instance_answers_another() {
    let server = RedisServer::start();
    let origin = Origin::start(|_, n| {
        res(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("etag", "\"v1\""),
                ("x-a", "1"),
            ],
            format!("{n}"),
        )
    })
    .await;
    let (a, b) = (
        instance(&server.url(), &origin).await,
        instance(&server.url(), &origin).await,
    );
    assert_eq!(a.get("/a", &[]).await.body, "1");
    let from_l2 = until_hit(&b, "/a", true).await;
    assert_eq!(from_l2.body, "1");
    assert_eq!(
        (from_l2.field("etag"), from_l2.field("x-a")),
        ("\"v1\"", "1")
    );
    assert!(from_l2.field("age").parse::<u64>().is_ok());
    // A client's conditional request is answered from what came from Redis (§4.3.2).
    assert_eq!(
        b.get("/a", &[("if-none-match", "\"v1\"")]).await.status,
        304
    );
    assert_eq!(origin.calls("/a"), 1);
}

// RFC 9111 §4.1 over L2: variants stored by one instance answer only matching requests on
// another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_are_shared_and_still_selected_by_vary() {
    let server = RedisServer::start();
    let origin = Origin::start(|seen, n| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("-", |v| v.to_str().unwrap());
        res(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("vary", "accept-language"),
            ],
            format!("{lang} {n}"),
        )
    })
    .await;
    let (a, b) = (
        instance(&server.url(), &origin).await,
        instance(&server.url(), &origin).await,
    );
    a.get("/a", &[("accept-language", "en")]).await;
    let mut en = None;
    for _ in 0..100 {
        let r = b.get("/a", &[("accept-language", "en")]).await;
        if r.hit() {
            en = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(en.expect("the variant from Redis").body, "en 1");
    let fr = b.get("/a", &[("accept-language", "fr")]).await;
    assert!(!fr.hit());
    assert!(fr.body.starts_with("fr "));
}

// Purges (§4.4 invalidation after an unsafe request; `Surrogate-Key` tags) reach every
// instance: the others stop answering with what was purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_and_tag_purges_reach_every_instance() {
    let server = RedisServer::start();
    let origin = Origin::start(|seen, n| {
        if seen.method == http::Method::POST {
            return res(204, &[], "");
        }
        res(
            200,
            &[("cache-control", "max-age=3600"), ("surrogate-key", "all")],
            format!("{n}"),
        )
    })
    .await;
    let (a, b) = (
        instance(&server.url(), &origin).await,
        instance(&server.url(), &origin).await,
    );
    for path in ["/a", "/b"] {
        a.get(path, &[]).await;
        until_hit(&b, path, true).await;
    }
    a.send(request(http::Method::POST, "/a", &[])).await;
    until_hit(&b, "/a", false).await;
    assert!(b.get("/b", &[]).await.hit());
    a.cache.invalidate_tag("all").await.unwrap();
    until_hit(&b, "/b", false).await;
}

// Concurrent misses for one URL reach the origin once across instances too: one instance
// takes the key's lease in Redis, the others wait for what it stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_several_instances_reach_the_origin_once() {
    let server = RedisServer::start();
    let origin = Origin::with_delay(Duration::from_millis(400), |_, n| {
        res(200, &[("cache-control", "max-age=3600")], format!("{n}"))
    })
    .await;
    let (a, b) = (
        instance(&server.url(), &origin).await,
        instance(&server.url(), &origin).await,
    );
    let mut set = tokio::task::JoinSet::new();
    for rig in [&a, &b, &a, &b] {
        let svc = rig.svc.clone();
        set.spawn(async move {
            let res = tower::ServiceExt::oneshot(svc, get("/a", &[]))
                .await
                .unwrap();
            Answer::read(res).await
        });
    }
    while let Some(answer) = set.join_next().await {
        assert_eq!(answer.unwrap().body, "1");
    }
    assert_eq!(origin.calls("/a"), 1);
}
