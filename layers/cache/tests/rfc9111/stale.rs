//! Serving stale responses (RFC 9111 §4.2.4, RFC 5861): only when the origin or the client
//! allows it, never when a directive forbids it.

use std::time::Duration;

use omega_cache::HttpPolicy;

use super::support::*;

/// An origin whose first answer to each path carries `cc`, then `503`s.
async fn failing_after_first(cc: &'static str) -> Origin {
    Origin::start(move |_, n| {
        if n == 1 {
            res(200, &[("cache-control", cc)], "1")
        } else {
            res(503, &[], "down")
        }
    })
    .await
}

// RFC 5861 §4: within `stale-if-error`, a stale response answers when the origin fails (5xx,
// or no answer at all); after it, the failure is passed on.
#[tokio::test]
async fn stale_if_error_answers_with_a_stale_response_when_the_origin_fails() {
    let origin = failing_after_first("max-age=10, stale-if-error=60").await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    let stale = rig.get("/a", &[]).await;
    assert_eq!((stale.status.as_u16(), stale.body.as_str()), (200, "1"));
    assert!(
        stale.cache_status().contains("fwd=stale; fwd-status=503"),
        "{stale:?}"
    );
    assert!(stale.cache_status().ends_with("detail=stale-if-error"));
    origin.stop().await;
    let disconnected = rig.get("/a", &[]).await;
    assert_eq!(disconnected.body, "1");
    rig.advance(60);
    let gone = tower::ServiceExt::oneshot(rig.svc.clone(), get("/a", &[])).await;
    assert!(gone.is_err(), "past the window the failure is passed on");
}

// RFC 9111 §5.2.2.2: once stale, a `must-revalidate` response MUST NOT be reused without
// validation, even when the origin fails (nor does an out-of-band stale-if-error apply).
#[tokio::test]
async fn must_revalidate_forbids_serving_stale_even_when_the_origin_fails() {
    let origin = failing_after_first("max-age=10, must-revalidate, stale-if-error=600").await;
    let policy = HttpPolicy::new("pages").stale_if_error(Duration::from_secs(600));
    let rig = Rig::with(&origin, policy);
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(rig.get("/a", &[]).await.status, 503);
}

// RFC 9111 §5.2.2.8: `proxy-revalidate` is `must-revalidate` for shared caches.
#[tokio::test]
async fn proxy_revalidate_forbids_serving_stale_in_a_shared_cache() {
    let origin = failing_after_first("max-age=10, proxy-revalidate, stale-if-error=600").await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(rig.get("/a", &[]).await.status, 503);
}

// RFC 9111 §5.2.2.10: `s-maxage` carries `proxy-revalidate`'s semantics.
#[tokio::test]
async fn s_maxage_forbids_serving_stale() {
    let origin = failing_after_first("s-maxage=10, stale-if-error=600").await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(rig.get("/a", &[]).await.status, 503);
}

// RFC 9111 §4.2.4: a cache MUST NOT serve stale unless allowed: without `stale-if-error` (or
// the route's own), a failure is passed on.
#[tokio::test]
async fn a_stale_response_is_not_served_without_permission() {
    let origin = failing_after_first("max-age=10").await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(rig.get("/a", &[]).await.status, 503);
    // The route's stale-if-error is an out-of-band permission (RFC 9111 §4.2.4).
    let origin = failing_after_first("max-age=10").await;
    let rig = Rig::with(
        &origin,
        HttpPolicy::new("pages").stale_if_error(Duration::from_secs(60)),
    );
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(rig.get("/a", &[]).await.body, "1");
}

// RFC 5861 §3: within `stale-while-revalidate`, stale responses answer at once while one
// background request revalidates; its answer then replaces them.
#[tokio::test]
async fn stale_while_revalidate_answers_stale_and_revalidates_once() {
    let origin = counting(
        200,
        &[("cache-control", "max-age=10, stale-while-revalidate=60")],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(15);
    for _ in 0..20 {
        let a = rig.get("/a", &[]).await;
        assert_eq!(a.body, "1");
        assert!(a.hit() && a.cache_status().contains("ttl=-"), "{a:?}");
    }
    eventually(|| origin.calls("/a") == 2).await;
    eventually_async(|| async { rig.get("/a", &[]).await.body == "2" }).await;
    assert_eq!(origin.calls("/a"), 2);
}

// RFC 9111 §4.3.4 with RFC 5861 §3: a background revalidation whose `304` selects no stored
// response does not leave the old response in place: the request goes again, unconditional,
// and its full response replaces the stored one.
#[tokio::test]
async fn a_background_revalidation_answered_304_with_another_validator_stores_the_full_response() {
    let origin = Origin::start(|seen, n| {
        let cc = "max-age=10, stale-while-revalidate=60";
        if seen.headers.contains_key("if-none-match") {
            res(304, &[("cache-control", cc), ("etag", "\"v2\"")], "")
        } else {
            let etag = if n == 1 { "\"v1\"" } else { "\"v2\"" };
            res(
                200,
                &[("cache-control", cc), ("etag", etag)],
                format!("body {n}"),
            )
        }
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(15);
    let stale = rig.get("/a", &[]).await;
    assert!(stale.hit() && stale.body == "body 1", "{stale:?}");
    eventually(|| origin.calls("/a") == 3).await;
    eventually_async(|| async { rig.get("/a", &[]).await.body == "body 3" }).await;
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit(), "{hit:?}");
    assert_eq!(hit.field("etag"), "\"v2\"");
    assert_eq!(origin.calls("/a"), 3);
}

// RFC 5861 §3: past the window, the stale response is not served.
#[tokio::test]
async fn stale_while_revalidate_ends_with_its_window() {
    let origin = counting(
        200,
        &[("cache-control", "max-age=10, stale-while-revalidate=20")],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(40);
    let late = rig.get("/a", &[]).await;
    assert_eq!(late.body, "2");
    assert!(!late.hit());
}

// RFC 9111 §5.2.1.2: a client's `max-stale` accepts a stale response, within its bound if it
// gives one; never one that forbids serving stale.
#[tokio::test]
async fn max_stale_accepts_a_stale_response_within_its_bound() {
    let origin = Origin::start(|seen, n| {
        let cc = if seen.path == "/strict" {
            "max-age=10, must-revalidate"
        } else {
            "max-age=10"
        };
        res(200, &[("cache-control", cc)], format!("{n}"))
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.get("/strict", &[]).await;
    rig.advance(20);
    assert!(
        rig.get("/a", &[("cache-control", "max-stale=30")])
            .await
            .hit()
    );
    assert!(rig.get("/a", &[("cache-control", "max-stale")]).await.hit());
    assert!(
        !rig.get("/strict", &[("cache-control", "max-stale")])
            .await
            .hit()
    );
    assert!(
        !rig.get("/a", &[("cache-control", "max-stale=5")])
            .await
            .hit()
    );
}

/// Waits (bounded) until `f` holds.
async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}

async fn eventually_async<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}
