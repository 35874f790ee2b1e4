//! Concurrent requests (the gateway's rules, RFC 9111 §4 applied to coalesced misses):
//! concurrent misses for one URL reach the origin once; a response that may not be shared
//! (private, for an authorized request, setting a cookie) is never handed to another client.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::support::*;

/// Sends `reqs` at the same time; the answers in any order.
async fn together(rig: &Rig, reqs: Vec<Request<Body>>) -> Vec<Answer> {
    let mut set = JoinSet::new();
    for req in reqs {
        let svc = rig.svc.clone();
        set.spawn(async move { Answer::read(svc.oneshot(req).await.unwrap()).await });
    }
    let mut out = Vec::new();
    while let Some(a) = set.join_next().await {
        out.push(a.unwrap());
    }
    out
}

/// An origin taking 300 ms to answer with `cc`, the request's number as body, and the
/// request's `Authorization` in `x-auth`.
async fn slow(cc: &'static str, cookie: bool) -> Origin {
    Origin::with_delay(Duration::from_millis(300), move |seen, n| {
        let auth = seen
            .headers
            .get("authorization")
            .map_or("", |v| v.to_str().unwrap())
            .to_owned();
        let id = format!("id={n}");
        let mut fields = vec![("cache-control", cc), ("x-auth", auth.as_str())];
        if cookie {
            fields.push(("set-cookie", id.as_str()));
        }
        res(200, &fields, format!("{n}"))
    })
    .await
}

// Concurrent misses for one URL are collapsed (RFC 9211 §2.6 `collapsed`): one request
// reaches the origin and its stored response answers the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_url_reach_the_origin_once() {
    let origin = slow("max-age=60", false).await;
    let rig = Rig::new(&origin);
    let answers = together(&rig, (0..8).map(|_| get("/a", &[])).collect()).await;
    assert_eq!(origin.calls("/a"), 1);
    assert!(
        answers.iter().all(|a| a.status == 200 && a.body == "1"),
        "{answers:?}"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.cache_status().contains("; stored"))
            .count(),
        1
    );
}

// RFC 9111 §5.2.2.7: a shared cache MUST NOT store a `private` response, so it cannot hand
// one client's private response to a concurrent one either: each gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_are_never_served_to_another_client() {
    let origin = slow("private, max-age=60", false).await;
    let rig = Rig::new(&origin);
    let answers = together(&rig, (0..5).map(|_| get("/a", &[])).collect()).await;
    let bodies: BTreeSet<&str> = answers.iter().map(|a| a.body.as_str()).collect();
    assert_eq!(bodies.len(), 5, "{answers:?}");
    assert_eq!(origin.calls("/a"), 5);
}

// RFC 9111 §3.5: a response to a request with `Authorization` that does not allow sharing is
// not stored, so concurrent clients with other credentials each get their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_responses_are_never_served_to_another_client() {
    let origin = slow("max-age=60", false).await;
    let rig = Rig::new(&origin);
    let reqs = (0..4)
        .map(|i| get("/a", &[("authorization", &format!("Bearer user{i}"))]))
        .collect();
    let answers = together(&rig, reqs).await;
    let auths: BTreeSet<&str> = answers.iter().map(|a| a.field("x-auth")).collect();
    assert_eq!(auths.len(), 4, "each client its own response: {answers:?}");
    assert_eq!(origin.calls("/a"), 4);
}

// RFC 9111 §7.3 (Set-Cookie in a shared cache): one client's cookie never reaches another,
// even among concurrent requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_is_never_served_to_a_concurrent_client() {
    let origin = slow("max-age=60", true).await;
    let rig = Rig::new(&origin);
    let answers = together(&rig, (0..5).map(|_| get("/a", &[])).collect()).await;
    for a in &answers {
        assert_eq!(a.field("set-cookie"), format!("id={}", a.body), "{a:?}");
    }
    let cookies: BTreeSet<&str> = answers.iter().map(|a| a.field("set-cookie")).collect();
    assert_eq!(cookies.len(), 5);
}
