//! Cache keys (RFC 9111 §2, §4): a stored response answers only requests for its own target
//! URI, scheme and host included, so one host's response never answers another (no poisoning
//! across hosts).

use axum::body::Body;
use http::Request;
use omega_cache::HttpPolicy;

use super::support::*;

/// A GET in origin form (`/path`) with a `Host` field, as a server receives it.
fn hosted(path: &str, host: &str) -> Request<Body> {
    Request::get(path)
        .header("host", host)
        .body(Body::empty())
        .unwrap()
}

// RFC 9111 §2: the cache key holds the target URI, whose authority is the `Host` field for a
// request in origin form (RFC 9110 §7.1): a response for one host never answers another; the
// host is compared case-insensitively and without the scheme's default port.
#[tokio::test]
async fn responses_for_one_host_never_answer_another() {
    let origin = counting(200, &[("cache-control", "max-age=3600")]).await;
    let rig = Rig::new(&origin);
    assert_eq!(rig.send(hosted("/a", "one.example")).await.body, "1");
    let other = rig.send(hosted("/a", "two.example")).await;
    assert_eq!(other.body, "2", "another host's request is a miss");
    assert!(other.cache_status().contains("fwd=uri-miss"));
    let again = rig.send(hosted("/a", "ONE.example:80")).await;
    assert!(again.hit());
    assert_eq!(again.body, "1");
    assert_eq!(rig.send(hosted("/a", "two.example")).await.body, "2");
    assert_eq!(origin.calls("/a"), 2);
}

// RFC 9111 §2 and RFC 9110 §4.2: `http` and `https` URIs are different resources; the
// policy's scheme applies to requests in origin form (a TLS listener's), an absolute URI's
// own scheme to the others.
#[tokio::test]
async fn the_scheme_is_part_of_the_key() {
    let origin = counting(200, &[("cache-control", "max-age=3600")]).await;
    let rig = Rig::with(&origin, HttpPolicy::new("pages").scheme("https"));
    assert_eq!(rig.send(hosted("/a", "shop")).await.body, "1");
    let https = rig
        .send(Request::get("https://shop/a").body(Body::empty()).unwrap())
        .await;
    assert!(https.hit(), "https://shop/a is the same resource");
    let http = rig.get("/a", &[]).await;
    assert_eq!(http.body, "2", "http://shop/a is another one");
    assert!(!http.hit());
}

// RFC 9111 §2: the key is the whole target URI: the query is part of it.
#[tokio::test]
async fn the_query_is_part_of_the_key() {
    let origin =
        Origin::start(|seen, _| res(200, &[("cache-control", "max-age=3600")], seen.path.clone()))
            .await;
    let rig = Rig::new(&origin);
    assert_eq!(rig.get("/a?x=1", &[]).await.body, "/a?x=1");
    assert_eq!(rig.get("/a?x=2", &[]).await.body, "/a?x=2");
    let hit = rig.get("/a?x=1", &[]).await;
    assert!(hit.hit());
    assert_eq!(hit.body, "/a?x=1");
    assert!(!rig.get("/a", &[]).await.hit());
}

// RFC 9111 §2 (the key is method and target) and §3 (unkeyed fields): a request field the
// response does not name in `Vary` cannot make the cache store something another client then
// gets under its key; a forwarded-host field does not change which host a request is for.
#[tokio::test]
async fn unkeyed_request_fields_cannot_poison_another_hosts_key() {
    let origin = Origin::start(|seen, n| {
        let fwd = seen
            .headers
            .get("x-forwarded-host")
            .map_or("-", |v| v.to_str().unwrap());
        res(
            200,
            &[("cache-control", "max-age=3600")],
            format!("{fwd} {n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    let mut evil = hosted("/a", "attacker.example");
    evil.headers_mut()
        .insert("x-forwarded-host", "victim.example".parse().unwrap());
    assert_eq!(rig.send(evil).await.body, "victim.example 1");
    let victim = rig.send(hosted("/a", "victim.example")).await;
    assert!(!victim.hit());
    assert_eq!(victim.body, "- 2");
}
