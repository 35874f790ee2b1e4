//! The `RateLimit-Policy` and `RateLimit` fields are valid structured fields
//! (RFC 8941: integers of at most 15 digits) and say what the draft means: each policy's
//! quota over a whole-second window, every policy of the request in the limiter's order and
//! the same from response to response, and the binding one in `RateLimit`.
#![cfg(feature = "http")]

use std::convert::Infallible;

use http::{Request, Response};
use omega_core::key::http::Header;
use omega_rate_limit::{Limit, Quota, RateLimitLayer, RateLimiter};
use tower::{Service, ServiceExt, service_fn};

type Svc = tower::util::BoxCloneService<Request<()>, Response<()>, Infallible>;

fn service(limiter: RateLimiter<Request<()>>) -> Svc {
    tower::util::BoxCloneService::new(
        tower::ServiceBuilder::new()
            .layer(RateLimitLayer::new(limiter).respond())
            .service(service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(()))
            })),
    )
}

fn request(headers: &[(&str, &str)]) -> Request<()> {
    let mut r = Request::get("/").body(()).unwrap();
    for (k, v) in headers {
        r.headers_mut()
            .insert(http::HeaderName::try_from(*k).unwrap(), v.parse().unwrap());
    }
    r
}

async fn call(svc: &Svc, headers: &[(&str, &str)]) -> Response<()> {
    svc.clone().oneshot(request(headers)).await.unwrap()
}

fn values(r: &Response<()>, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Every integer of a structured field has at most 15 digits.
fn assert_valid_integers(field: &str) {
    for param in field.split(';').skip(1) {
        let (_, value) = param.split_once('=').unwrap();
        let value = value.trim_end_matches([',', ' ']);
        assert!(
            value.len() <= 15 && value.bytes().all(|b| b.is_ascii_digit()),
            "{field:?}: {value:?} is not an sf-integer"
        );
    }
}

/// A request costing more than the burst can never be admitted: no `Retry-After`, and the
/// `RateLimit` field tells the bucket's real state (cells left, seconds until full), not a
/// reset 18,446,744,073,709,551,615 seconds away.
#[tokio::test]
async fn a_cost_above_the_burst_gets_valid_fields_and_no_retry_after() {
    let limiter = RateLimiter::<Request<()>>::builder()
        .limit(Limit::global("global", Quota::per_second(10).with_burst(5)))
        .cost(|r: &Request<()>| {
            if r.headers().contains_key("x-big") {
                6
            } else {
                1
            }
        })
        .build()
        .unwrap();
    let svc = service(limiter);
    assert_eq!(call(&svc, &[]).await.status(), 200);
    let r = call(&svc, &[("x-big", "1")]).await;
    println!("cost above the burst: {:?}", r.headers());
    assert_eq!(r.status(), 429);
    assert!(
        r.headers().get("retry-after").is_none(),
        "{:?}",
        r.headers()
    );
    let state = values(&r, "ratelimit");
    assert_eq!(state.len(), 1, "{state:?}");
    assert_valid_integers(&state[0]);
    assert_eq!(state[0], r#""global";r=4;t=1"#);
}

/// 100 per second with a burst of 10 is 100 per second: `q=100;w=1`, not the burst over
/// its 100 ms rounded up to a second (10 per second). Periods that are not whole seconds
/// are scaled to the shortest whole-second window with a whole quota.
#[tokio::test]
async fn the_policy_is_the_quota_over_a_whole_second_window() {
    for (quota, policy) in [
        (Quota::per_second(100).with_burst(10), r#""l";q=100;w=1"#),
        (Quota::per_minute(120).with_burst(20), r#""l";q=120;w=60"#),
        (
            Quota::new(5, std::time::Duration::from_millis(250)).unwrap(),
            r#""l";q=20;w=1"#,
        ),
        (
            Quota::new(1, std::time::Duration::from_millis(300)).unwrap(),
            r#""l";q=10;w=3"#,
        ),
    ] {
        let limiter = RateLimiter::<Request<()>>::builder()
            .limit(Limit::global("l", quota))
            .build()
            .unwrap();
        let r = call(&service(limiter), &[]).await;
        assert_eq!(values(&r, "ratelimit-policy"), [policy], "{quota:?}");
    }
}

/// Two limits apply: `RateLimit-Policy` lists both, in the limiter's order, on every
/// response (admitted or denied); `RateLimit` names the binding one. A keyed limit the
/// request has no key for is not one of its policies.
#[tokio::test]
async fn every_policy_of_the_request_is_listed_and_the_binding_one_is_named() {
    let limiter = RateLimiter::<Request<()>>::builder()
        .limit(Limit::global("global", Quota::per_second(1_000)))
        .limit(Limit::keyed(
            "per_user",
            Quota::per_minute(3),
            Header::new("x-user"),
        ))
        .build()
        .unwrap();
    let svc = service(limiter);
    let both = [r#""global";q=1000;w=1"#, r#""per_user";q=3;w=60"#];
    for left in [2, 1, 0] {
        let r = call(&svc, &[("x-user", "ada")]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(values(&r, "ratelimit-policy"), both);
        let state = values(&r, "ratelimit");
        assert_eq!(state.len(), 1);
        assert!(
            state[0].starts_with(&format!(r#""per_user";r={left};t="#)),
            "{state:?}"
        );
    }
    let denied = call(&svc, &[("x-user", "ada")]).await;
    assert_eq!(denied.status(), 429);
    assert_eq!(
        values(&denied, "ratelimit-policy"),
        both,
        "the same list when denied"
    );
    assert!(values(&denied, "ratelimit")[0].starts_with(r#""per_user";r=0;t="#));
    // Without the user header only the global limit applies.
    let anonymous = call(&svc, &[]).await;
    assert_eq!(values(&anonymous, "ratelimit-policy"), [both[0]]);
}

/// The denial of a limit checked before a later one (which was then never reached) lists the
/// later one too: the list does not depend on where the decision stopped.
#[tokio::test]
async fn a_denial_by_the_first_limit_still_lists_every_policy() {
    let limiter = RateLimiter::<Request<()>>::builder()
        .limit(Limit::global("global", Quota::per_minute(1)))
        .limit(Limit::keyed(
            "per_user",
            Quota::per_minute(3),
            Header::new("x-user"),
        ))
        .build()
        .unwrap();
    let mut svc = service(limiter);
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(request(&[("x-user", "ada")]))
        .await
        .unwrap();
    let second = call(&svc, &[("x-user", "bob")]).await;
    assert_eq!(second.status(), 429);
    assert_eq!(
        values(&first, "ratelimit-policy"),
        values(&second, "ratelimit-policy")
    );
    assert_eq!(values(&second, "ratelimit-policy").len(), 2);
}
