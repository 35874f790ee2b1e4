//! Request directives (RFC 9111 §5.2.1) and `Pragma` (§5.4).

use super::support::*;

/// An origin answering `max-age=100` with an `ETag`, and `304` to a matching `If-None-Match`.
async fn validating_origin() -> Origin {
    Origin::start(|seen, n| {
        let fields = [("cache-control", "max-age=100"), ("etag", "\"v1\"")];
        if seen
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            res(304, &fields, "")
        } else {
            res(200, &fields, format!("{n}"))
        }
    })
    .await
}

// RFC 9111 §5.2.1.1: `max-age` in a request asks for a response no older than it.
#[tokio::test]
async fn max_age_request_refuses_an_older_response() {
    let origin = validating_origin().await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(30);
    assert!(
        rig.get("/a", &[("cache-control", "max-age=60")])
            .await
            .hit()
    );
    let younger = rig.get("/a", &[("cache-control", "max-age=10")]).await;
    assert!(!younger.hit());
    assert!(
        younger
            .cache_status()
            .contains("fwd=request; fwd-status=304"),
        "{younger:?}"
    );
    assert_eq!(younger.body, "1", "validated, the stored response answers");
}

// RFC 9111 §5.2.1.3: `min-fresh` asks for a response that stays fresh that much longer.
#[tokio::test]
async fn min_fresh_request_refuses_a_response_not_fresh_long_enough() {
    let origin = validating_origin().await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(50);
    assert!(
        rig.get("/a", &[("cache-control", "min-fresh=10")])
            .await
            .hit()
    );
    assert!(
        !rig.get("/a", &[("cache-control", "min-fresh=60")])
            .await
            .hit()
    );
}

// RFC 9111 §5.2.1.4: `no-cache` in a request: no stored response without validation.
#[tokio::test]
async fn no_cache_request_validates_a_fresh_response() {
    let origin = validating_origin().await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    let validated = rig.get("/a", &[("cache-control", "no-cache")]).await;
    assert_eq!(origin.last("/a").headers["if-none-match"], "\"v1\"");
    assert_eq!(
        (validated.status.as_u16(), validated.body.as_str()),
        (200, "1")
    );
    assert_eq!(origin.calls("/a"), 2);
}

// RFC 9111 §5.4 (RFC 7234 §5.4): `Pragma: no-cache` in a request without `Cache-Control` is
// `no-cache`; with `Cache-Control`, `Pragma` is ignored.
#[tokio::test]
async fn pragma_no_cache_counts_only_without_cache_control() {
    let origin = validating_origin().await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    assert!(!rig.get("/a", &[("pragma", "no-cache")]).await.hit());
    assert!(
        rig.get(
            "/a",
            &[("pragma", "no-cache"), ("cache-control", "max-stale=1")]
        )
        .await
        .hit()
    );
}

// RFC 9111 §5.2.1.7: `only-if-cached`: a stored response, or `504`.
#[tokio::test]
async fn only_if_cached_is_answered_from_the_cache_or_with_504() {
    let origin = validating_origin().await;
    let rig = Rig::new(&origin);
    let only = [("cache-control", "only-if-cached")];
    let miss = rig.get("/a", &only).await;
    assert_eq!(miss.status, 504);
    assert!(miss.cache_status().ends_with("detail=only-if-cached"));
    assert_eq!(origin.calls("/a"), 0);
    rig.get("/a", &[]).await;
    assert!(rig.get("/a", &only).await.hit());
}

// RFC 9111 §5.2.1.5: `no-store` in a request: nothing of the exchange is stored (and the
// cache does not answer it either).
#[tokio::test]
async fn no_store_request_is_neither_answered_from_nor_stored() {
    let origin = counting(200, &[("cache-control", "max-age=100")]).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    let forwarded = rig.get("/a", &[("cache-control", "no-store")]).await;
    assert_eq!(forwarded.body, "2");
    assert!(forwarded.cache_status().contains("fwd=request"));
    assert_eq!(
        rig.get("/a", &[]).await.body,
        "1",
        "the response to it was not stored"
    );
}

// RFC 8246 §2: a fresh `immutable` response is not revalidated when a client reloads
// (`no-cache`, `max-age=0`); once stale it is.
#[tokio::test]
async fn immutable_fresh_response_is_not_revalidated_on_reload() {
    let origin = counting(
        200,
        &[
            ("cache-control", "max-age=100, immutable"),
            ("etag", "\"v1\""),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    assert!(rig.get("/a", &[("cache-control", "no-cache")]).await.hit());
    assert!(rig.get("/a", &[("cache-control", "max-age=0")]).await.hit());
    rig.advance(200);
    assert!(!rig.get("/a", &[]).await.hit());
}

// RFC 9111 §4.2.1 and §1.2.2 (request side): an invalid `max-age` is read the strictest way
// (a fresh answer wanted), an invalid `max-stale` or `min-fresh` is ignored.
#[tokio::test]
async fn invalid_request_directive_values_are_read_strictly() {
    let origin = validating_origin().await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(50);
    assert!(
        !rig.get("/a", &[("cache-control", "max-age=abc")])
            .await
            .hit()
    );
    assert!(
        rig.get("/a", &[("cache-control", "min-fresh=abc")])
            .await
            .hit()
    );
    rig.advance(200);
    assert!(
        !rig.get("/a", &[("cache-control", "max-stale=-1")])
            .await
            .hit()
    );
}

// RFC 9110 §9.3.2 and RFC 9111 §4: a stored response to GET answers a HEAD: the same status
// and fields (`Content-Length` included), no content, without the origin.
#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let origin = counting(200, &[("cache-control", "max-age=100"), ("x-a", "1")]).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    let head = rig.send(request(http::Method::HEAD, "/a", &[])).await;
    assert!(head.hit(), "{head:?}");
    assert_eq!((head.status.as_u16(), head.body.as_str()), (200, ""));
    assert_eq!(
        (head.field("x-a"), head.field("content-length")),
        ("1", "1")
    );
    assert_eq!(origin.calls("/a"), 1);
}

// RFC 9111 §3 and RFC 9110 §9.3.2: a HEAD that misses goes to the origin, and its response
// (which has no content) is not stored as the GET's.
#[tokio::test]
async fn a_head_miss_is_forwarded_and_not_stored_for_get() {
    let origin = counting(200, &[("cache-control", "max-age=100")]).await;
    let rig = Rig::new(&origin);
    let head = rig.send(request(http::Method::HEAD, "/a", &[])).await;
    assert!(!head.hit());
    assert_eq!(origin.last("/a").method, http::Method::HEAD);
    let get = rig.get("/a", &[]).await;
    assert!(!get.hit());
    assert_eq!(get.body, "2");
}
