//! Invalidation (RFC 9111 §4.4): a non-error response to an unsafe request invalidates the
//! stored responses of its target URI, and of its `Location` and `Content-Location` when they
//! are on the same origin; and purges by tag (`Surrogate-Key`), the cache's own.

use http::Method;
use omega_cache::HttpPolicy;

use super::support::*;

/// An origin: GETs answered `max-age=3600` with a counter; other methods with `status` and
/// `fields`.
async fn writable(status: u16, fields: &'static [(&'static str, &'static str)]) -> Origin {
    Origin::start(move |seen, n| {
        if seen.method == Method::GET {
            res(200, &[("cache-control", "max-age=3600")], format!("{n}"))
        } else {
            res(status, fields, "done")
        }
    })
    .await
}

// RFC 9111 §4.4: a cache MUST invalidate the target URI when it receives a non-error status
// code in response to an unsafe request method (POST, PUT, DELETE, PATCH and unknown ones).
#[tokio::test]
async fn an_unsafe_request_invalidates_its_target_uri() {
    let origin = writable(200, &[]).await;
    let rig = Rig::new(&origin);
    for method in ["POST", "PUT", "DELETE", "PATCH", "PURGE-ISH"] {
        let path = format!("/{}", method.to_ascii_lowercase());
        rig.get(&path, &[]).await;
        assert!(rig.get(&path, &[]).await.hit(), "{method}");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let write = rig.send(request(method.clone(), &path, &[])).await;
        assert!(
            write.cache_status().contains("fwd=method; fwd-status=200"),
            "{write:?}"
        );
        let after = rig.get(&path, &[]).await;
        assert!(!after.hit(), "{method}");
        assert_eq!(
            after.body, "3",
            "{method}: the GET after it reaches the origin"
        );
    }
}

// RFC 9111 §4.4: only a non-error status invalidates: after a failed write the stored
// response still answers.
#[tokio::test]
async fn an_error_response_to_an_unsafe_request_invalidates_nothing() {
    let origin = writable(500, &[]).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    assert_eq!(rig.send(request(Method::POST, "/a", &[])).await.status, 500);
    assert!(rig.get("/a", &[]).await.hit());
}

// RFC 9111 §4.4: the URIs in `Location` and `Content-Location` are invalidated too (resolved
// against the target, RFC 3986 §5), but only on the same origin, so that one host cannot
// purge another's responses.
#[tokio::test]
async fn location_and_content_location_on_the_same_origin_are_invalidated() {
    let origin = writable(
        201,
        &[
            ("location", "/b"),
            ("content-location", "http://shop/c"),
            ("location", "http://other/d"),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/b", &[]).await;
    rig.get("/c", &[]).await;
    let other = || {
        http::Request::get("http://other/d")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    rig.send(other()).await;
    assert!(rig.send(other()).await.hit());
    rig.send(request(Method::POST, "/a", &[])).await;
    assert!(!rig.get("/b", &[]).await.hit(), "Location");
    assert!(!rig.get("/c", &[]).await.hit(), "Content-Location");
    assert!(
        rig.send(other()).await.hit(),
        "another origin is left alone"
    );
}

// The cache's own purges (beyond RFC 9111, as CDNs do): responses are tagged with the values
// of their `Surrogate-Key` field, and a purge of a tag drops every response that carries it.
#[tokio::test]
async fn surrogate_key_tags_purge_every_tagged_response() {
    let origin = Origin::start(|seen, n| {
        let keys = match seen.path.as_str() {
            "/a" => "product:1 listing",
            "/b" => "product:2, listing",
            _ => "product:3",
        };
        res(
            200,
            &[("cache-control", "max-age=3600"), ("surrogate-key", keys)],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::with(&origin, HttpPolicy::new("pages").tags_from("surrogate-key"));
    for path in ["/a", "/b", "/c"] {
        rig.get(path, &[]).await;
        assert!(rig.get(path, &[]).await.hit(), "{path}");
    }
    rig.cache.invalidate_tag("listing").await.unwrap();
    assert!(!rig.get("/a", &[]).await.hit());
    assert!(!rig.get("/b", &[]).await.hit());
    assert!(rig.get("/c", &[]).await.hit());
    rig.cache.invalidate_tag("product:3").await.unwrap();
    assert!(!rig.get("/c", &[]).await.hit());
}
