//! Storing responses (RFC 9111 §3): what a shared cache may store, and which of its fields.

use omega_cache::{HttpPolicy, SetCookie};

use super::support::*;

// RFC 9111 §5.2.2.5: a cache MUST NOT store a response with `no-store`.
#[tokio::test]
async fn no_store_response_is_not_stored() {
    let origin = counting(200, &[("cache-control", "max-age=3600, no-store")]).await;
    let rig = Rig::new(&origin);
    let first = rig.get("/a", &[]).await;
    assert_eq!(first.body, "1");
    assert!(
        first.cache_status().ends_with("detail=no-store"),
        "{first:?}"
    );
    assert_eq!(rig.get("/a", &[]).await.body, "2");
}

// RFC 9111 §5.2.2.3: `must-understand` overrides `no-store` for a status the cache
// understands; a response with a status it does not understand is not stored (§3).
#[tokio::test]
async fn must_understand_stores_only_responses_with_understood_statuses() {
    let origin = Origin::start(|seen, n| {
        let status = if seen.path == "/odd" { 599 } else { 200 };
        res(
            status,
            &[("cache-control", "max-age=3600, no-store, must-understand")],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/ok", &[]).await;
    assert!(rig.get("/ok", &[]).await.hit());
    rig.get("/odd", &[]).await;
    assert_eq!(rig.get("/odd", &[]).await.body, "2");
}

// RFC 9111 §5.2.2.7: a shared cache MUST NOT store a response with an unqualified `private`.
#[tokio::test]
async fn private_response_is_not_stored_by_a_shared_cache() {
    let origin = counting(200, &[("cache-control", "private, max-age=3600")]).await;
    let rig = Rig::new(&origin);
    assert_eq!(rig.get("/a", &[]).await.body, "1");
    let second = rig.get("/a", &[]).await;
    assert_eq!(second.body, "2");
    assert!(second.cache_status().ends_with("detail=private"));
}

// RFC 9111 §5.2.2.7: with field names, `private` keeps only those fields from a shared cache:
// the rest of the response may be stored.
#[tokio::test]
async fn private_field_names_are_left_out_of_the_stored_response() {
    let origin = counting(
        200,
        &[
            ("cache-control", "private=\"x-user\", max-age=3600"),
            ("x-user", "alice"),
            ("x-other", "1"),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    let first = rig.get("/a", &[]).await;
    assert_eq!(
        first.field("x-user"),
        "alice",
        "the client it was meant for gets it"
    );
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit());
    assert_eq!(hit.field("x-user"), "");
    assert_eq!(hit.field("x-other"), "1");
}

// RFC 9111 §5.2.2.4: with field names, `no-cache` lets the response be reused without those
// fields.
#[tokio::test]
async fn no_cache_field_names_are_left_out_of_reuse() {
    let origin = counting(
        200,
        &[
            ("cache-control", "no-cache=\"x-a, x-b\""),
            ("cache-control", "max-age=3600"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("x-c", "3"),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit());
    assert_eq!(
        (hit.field("x-a"), hit.field("x-b"), hit.field("x-c")),
        ("", "", "3")
    );
}

// RFC 9111 §3.5: a shared cache MUST NOT reuse a response to a request with `Authorization`
// unless `public`, `s-maxage` or `must-revalidate` allows it; and it answers a request with
// `Authorization` only with a response that allows it.
#[tokio::test]
async fn authorized_requests_share_only_responses_that_allow_it() {
    let origin = Origin::start(|seen, n| {
        let cc = match seen.path.as_str() {
            "/public" => "public, max-age=3600",
            "/smaxage" => "s-maxage=3600",
            "/revalidate" => "max-age=3600, must-revalidate",
            _ => "max-age=3600",
        };
        res(200, &[("cache-control", cc)], format!("{n}"))
    })
    .await;
    let rig = Rig::new(&origin);
    let auth = [("authorization", "Bearer alice")];
    for path in ["/public", "/smaxage", "/revalidate"] {
        rig.get(path, &auth).await;
        assert!(rig.get(path, &[]).await.hit(), "{path}");
        assert!(rig.get(path, &auth).await.hit(), "{path}");
    }
    rig.get("/plain", &auth).await;
    let anonymous = rig.get("/plain", &[]).await;
    assert!(!anonymous.hit() && anonymous.body == "2");
    assert!(rig.get("/plain", &[]).await.hit());
    let authorized = rig.get("/plain", &auth).await;
    assert_eq!(authorized.body, "3");
    assert!(authorized.cache_status().contains("fwd=request"));
}

// RFC 9111 §3: any final status may be stored with explicit freshness; without it, only the
// heuristically cacheable ones (RFC 9110 §15.1) may.
#[tokio::test]
async fn explicit_freshness_makes_any_final_status_storable() {
    let origin = Origin::start(|seen, n| {
        let (status, cc) = match seen.path.as_str() {
            "/500" => (500, "max-age=3600"),
            "/599" => (599, "max-age=3600"),
            "/201" => (201, ""),
            _ => (200, ""),
        };
        let lm = date(-100_000);
        let mut fields = vec![("last-modified", lm.as_str())];
        if !cc.is_empty() {
            fields.push(("cache-control", cc));
        }
        res(status, &fields, format!("{n}"))
    })
    .await;
    let rig = Rig::new(&origin);
    for path in ["/500", "/599", "/200"] {
        rig.get(path, &[]).await;
        assert!(rig.get(path, &[]).await.hit(), "{path}");
    }
    rig.get("/201", &[]).await;
    let again = rig.get("/201", &[]).await;
    assert!(!again.hit());
    assert!(again.cache_status().ends_with("detail=status"));
}

// RFC 9111 §3.1: fields specific to a client's proxy configuration MUST NOT be stored, nor
// those `Connection` lists (hop-by-hop; unit-tested in `validation`, as HTTP/1 carriers drop
// them on the way).
#[tokio::test]
async fn proxy_specific_fields_are_not_stored() {
    let origin = counting(
        200,
        &[
            ("cache-control", "max-age=3600"),
            ("proxy-authenticate", "Basic realm=\"x\""),
            ("x-kept", "1"),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit());
    assert_eq!(hit.field("proxy-authenticate"), "");
    assert_eq!(hit.field("x-kept"), "1");
}

// RFC 9111 §3.3: a cache that does not combine partial content MUST NOT store it: a `206` is
// passed on, never stored.
#[tokio::test]
async fn partial_content_is_not_stored() {
    let origin = Origin::start(|seen, n| {
        let ranged = seen.headers.contains_key("range");
        let (status, fields) = if ranged {
            (
                206,
                vec![
                    ("cache-control", "max-age=3600"),
                    ("content-range", "bytes 0-1/10"),
                ],
            )
        } else {
            (200, vec![("cache-control", "max-age=3600")])
        };
        res(
            status,
            &fields,
            if ranged {
                format!("{n}x")
            } else {
                format!("{n}123456789")
            },
        )
    })
    .await;
    let rig = Rig::new(&origin);
    let range = [("range", "bytes=0-1")];
    assert_eq!(rig.get("/a", &range).await.status, 206);
    let again = rig.get("/a", &range).await;
    assert_eq!((again.status.as_u16(), again.body.as_str()), (206, "2x"));
    assert_eq!(origin.calls("/a"), 2);
}

// RFC 9110 §14.2 (and RFC 9111 §4: a stored response may answer): one byte range of a
// complete stored response is answered `206` from the cache.
#[tokio::test]
async fn a_byte_range_is_answered_from_a_complete_stored_response() {
    let origin =
        Origin::start(|_, _| res(200, &[("cache-control", "max-age=3600")], "0123456789A")).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    for (range, body, content_range) in [
        ("bytes=0-1", "01", "bytes 0-1/11"),
        ("bytes=1-", "123456789A", "bytes 1-10/11"),
        ("bytes=-1", "A", "bytes 10-10/11"),
    ] {
        let part = rig.get("/a", &[("range", range)]).await;
        assert!(part.hit());
        assert_eq!((part.status.as_u16(), part.body.as_str()), (206, body));
        assert_eq!(part.field("content-range"), content_range);
    }
    assert_eq!(origin.calls("/a"), 1);
}

// RFC 9111 §7.3 notes that `Set-Cookie` does not inhibit caching; a shared cache that stored
// it would hand one client's cookie to all. Such a response is not stored by default (as
// Varnish and nginx do); `SetCookie::Strip` stores it without the cookie.
#[tokio::test]
async fn set_cookie_is_never_served_to_another_client() {
    let origin = Origin::start(|_, n| {
        let cookie = format!("id={n}");
        res(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("set-cookie", cookie.as_str()),
            ],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    assert_eq!(rig.get("/a", &[]).await.field("set-cookie"), "id=1");
    let second = rig.get("/a", &[]).await;
    assert_eq!(second.field("set-cookie"), "id=2");
    assert!(second.cache_status().ends_with("detail=set-cookie"));

    let strip = Rig::with(
        &origin,
        HttpPolicy::new("pages").set_cookie(SetCookie::Strip),
    );
    assert_eq!(strip.get("/b", &[]).await.field("set-cookie"), "id=1");
    let hit = strip.get("/b", &[]).await;
    assert!(hit.hit());
    assert_eq!(hit.field("set-cookie"), "");
}

// The partition's size limit: a larger body streams through, whole, and is not stored.
#[tokio::test]
async fn a_response_larger_than_the_limit_streams_through_unstored() {
    let big = "x".repeat(100 * 1024);
    let origin =
        Origin::start(move |_, _| res(200, &[("cache-control", "max-age=3600")], big.clone()))
            .await;
    let rig = Rig::new(&origin);
    for _ in 0..2 {
        let a = rig.get("/big", &[]).await;
        assert_eq!(a.body.len(), 100 * 1024);
        assert!(a.cache_status().ends_with("detail=too-large"));
    }
    assert_eq!(origin.calls("/big"), 2);
}
