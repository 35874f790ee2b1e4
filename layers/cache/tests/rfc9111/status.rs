//! `Cache-Status` (RFC 9211): every response says how this cache handled it.

use http::Method;
use omega_cache::HttpPolicy;

use super::support::*;

// RFC 9211 §2.1 and §2.4: a response served from the cache carries `hit` and its remaining
// freshness (`ttl`, seconds).
#[tokio::test]
async fn a_hit_reports_hit_and_the_remaining_freshness() {
    let origin = counting(200, &[("cache-control", "max-age=60")]).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(
        rig.get("/a", &[]).await.cache_status(),
        "omega; hit; ttl=40"
    );
}

// RFC 9211 §2.2, §2.3, §2.5: a forwarded request says why (`fwd`), what came back
// (`fwd-status`), and whether the response was stored (`stored`), with its freshness.
#[tokio::test]
async fn a_miss_reports_why_it_was_forwarded_and_whether_it_was_stored() {
    let origin = counting(200, &[("cache-control", "max-age=60")]).await;
    let rig = Rig::new(&origin);
    assert_eq!(
        rig.get("/a", &[]).await.cache_status(),
        "omega; fwd=uri-miss; fwd-status=200; ttl=60; stored"
    );
    rig.advance(61);
    assert_eq!(
        rig.get("/a", &[]).await.cache_status(),
        "omega; fwd=stale; fwd-status=200; ttl=60; stored"
    );
    let post = rig.send(request(Method::POST, "/a", &[])).await;
    assert_eq!(post.cache_status(), "omega; fwd=method; fwd-status=200");
}

// RFC 9211 §2.7: `detail` says why a response was not stored.
#[tokio::test]
async fn a_response_not_stored_says_why_in_detail() {
    let origin = Origin::start(|seen, n| {
        let cc = match seen.path.as_str() {
            "/no-store" => "no-store",
            "/private" => "private",
            _ => "max-age=60",
        };
        res(200, &[("cache-control", cc)], format!("{n}"))
    })
    .await;
    let rig = Rig::new(&origin);
    for (path, detail) in [("/no-store", "no-store"), ("/private", "private")] {
        let a = rig.get(path, &[]).await;
        assert_eq!(
            a.cache_status(),
            format!("omega; fwd=uri-miss; fwd-status=200; detail={detail}")
        );
    }
}

// RFC 9211 §2: the field is a list whose members are added by each cache in turn, the one
// nearest the origin first: an upstream cache's member is kept and this cache's comes last,
// on a miss and on a hit alike.
#[tokio::test]
async fn this_caches_member_comes_after_those_nearer_the_origin() {
    let origin = counting(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("cache-status", "origin-cdn; fwd=uri-miss"),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    for hit in [false, true] {
        let a = rig.get("/a", &[]).await;
        let members: Vec<&str> = a
            .headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(members.len(), 2, "{members:?}");
        assert_eq!(members[0], "origin-cdn; fwd=uri-miss");
        assert!(members[1].starts_with("omega;"));
        assert_eq!(a.hit(), hit);
    }
}

// RFC 9211 §2: the cache's name is an sf-token or an sf-string; the policy may set it.
#[tokio::test]
async fn the_cache_name_is_a_token_or_a_quoted_string() {
    let origin = counting(200, &[("cache-control", "max-age=60")]).await;
    let rig = Rig::with(&origin, HttpPolicy::new("pages").name("edge cache"));
    rig.get("/a", &[]).await;
    assert_eq!(
        rig.get("/a", &[]).await.cache_status(),
        "\"edge cache\"; hit; ttl=60"
    );
}
