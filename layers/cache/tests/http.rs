//! HTTP responses through the cache (feature `http`): an axum service behind `HttpPolicy` and
//! `HttpStorage`: hits, statuses, `Surrogate-Key` purges, bodies larger than the limit streamed
//! through uncached, `only-if-cached` answered 504 with `.respond()`.
#![cfg(feature = "http")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use omega_cache::{
    Cache, CacheBody, CacheLayer, HttpCodec, HttpPolicy, HttpStorage, Lookup, Partition, Policy,
    StoredResponse, Verdict,
};
use tower::{Layer, ServiceExt};

fn upstream(calls: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/items/{id}",
            get(
                |State(calls): State<Arc<AtomicUsize>>, Path(id): Path<String>| async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    match id.as_str() {
                        "missing" => Response::builder()
                            .status(404)
                            .body(Body::from("no such item"))
                            .unwrap(),
                        "broken" => Response::builder()
                            .status(503)
                            .body(Body::from("down"))
                            .unwrap(),
                        "big" => {
                            // 64 chunks of 1 KiB, streamed.
                            let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1024]));
                            Response::new(Body::new(chunked::Chunks(chunks)))
                        }
                        _ => Response::builder()
                            .header("surrogate-key", format!("item:{id} items"))
                            .header("content-type", "text/plain")
                            .body(Body::from(format!("item {id} (call {n})")))
                            .unwrap(),
                    }
                },
            ),
        )
        .with_state(calls)
}

/// A body that yields its chunks one frame at a time.
mod chunked {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(crate) struct Chunks<I>(pub(crate) I);

    impl<I: Iterator<Item = Result<Vec<u8>, std::io::Error>> + Unpin> http_body::Body for Chunks<I> {
        type Data = bytes::Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
            Poll::Ready(
                self.get_mut()
                    .0
                    .next()
                    .map(|r| r.map(|v| http_body::Frame::data(bytes::Bytes::from(v)))),
            )
        }
    }
}

fn cache() -> Cache<Arc<StoredResponse>> {
    Cache::builder()
        .codec(HttpCodec)
        .partition(
            Partition::new("pages")
                .ttl(Duration::from_secs(60))
                .stale_if_error(Duration::from_secs(60))
                .max_entry_bytes(16 * 1024),
        )
        .build()
        .unwrap()
}

async fn text(res: Response<CacheBody<Body>>) -> (StatusCode, String) {
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn get_req(path: &str) -> Request<Body> {
    Request::get(format!("http://shop{path}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn http_responses_are_cached_by_status_and_purged_by_surrogate_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = cache();
    let policy = HttpPolicy::new("pages").tags_from("surrogate-key");
    let svc = CacheLayer::new(cache.clone(), policy)
        .storage(HttpStorage)
        .layer(upstream(calls.clone()));

    assert_eq!(
        text(svc.clone().oneshot(get_req("/items/1")).await.unwrap())
            .await
            .1,
        "item 1 (call 1)"
    );
    let hit = svc.clone().oneshot(get_req("/items/1")).await.unwrap();
    assert_eq!(hit.headers()["surrogate-key"], "item:1 items");
    assert_eq!(text(hit).await.1, "item 1 (call 1)");
    // 404 is stored as a negative answer.
    for _ in 0..2 {
        let (status, body) = text(
            svc.clone()
                .oneshot(get_req("/items/missing"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status.as_u16(), body.as_str()), (404, "no such item"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A purge by surrogate key.
    cache.invalidate_tag("item:1").await.unwrap();
    assert_eq!(
        text(svc.clone().oneshot(get_req("/items/1")).await.unwrap())
            .await
            .1,
        "item 1 (call 3)"
    );
    // 5xx is a failure: passed on, never stored.
    for _ in 0..2 {
        let (status, _) = text(svc.clone().oneshot(get_req("/items/broken")).await.unwrap()).await;
        assert_eq!(status, 503);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // POST bypasses the cache.
    let post = Request::post("http://shop/items/1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(svc.clone().oneshot(post).await.unwrap().status(), 405);
}

#[tokio::test]
async fn a_body_larger_than_the_limit_streams_through_uncached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = cache();
    let svc = CacheLayer::new(cache.clone(), HttpPolicy::new("pages"))
        .storage(HttpStorage)
        .layer(upstream(calls.clone()));
    for round in 1..=2 {
        let res = svc.clone().oneshot(get_req("/items/big")).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 64 * 1024);
        assert!(body.iter().all(|b| *b == b'x'));
        assert_eq!(calls.load(Ordering::SeqCst), round);
    }
    assert_eq!(cache.stats().stored, 0);
    assert_eq!(cache.stats().passed, 2);
}

#[tokio::test]
async fn only_if_cached_misses_are_answered_504_with_respond() {
    #[derive(Clone)]
    struct OnlyCached(HttpPolicy);
    impl Policy<Request<Body>, Response<Body>> for OnlyCached {
        type Context = ();
        fn lookup<'a>(&'a self, req: &'a Request<Body>) -> Option<Lookup<'a>> {
            let l = Policy::<_, Response<Body>>::lookup(&self.0, req)?;
            Some(if req.headers().contains_key("x-only-if-cached") {
                l.only_if_cached()
            } else {
                l
            })
        }
        fn context(&self, _: &Request<Body>) {}
        fn decide(&self, _: &(), res: &Response<Body>) -> Verdict {
            Policy::<Request<Body>, _>::decide(&self.0, &(), res)
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache(), OnlyCached(HttpPolicy::new("pages")))
        .storage(HttpStorage)
        .respond()
        .layer(upstream(calls.clone()));
    let only = || {
        Request::get("http://shop/items/9")
            .header("x-only-if-cached", "1")
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(svc.clone().oneshot(only()).await.unwrap().status(), 504);
    svc.clone().oneshot(get_req("/items/9")).await.unwrap();
    assert_eq!(svc.clone().oneshot(only()).await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
