//! The HTTP layer on a real axum server over real sockets: status codes, `Retry-After`, the
//! IETF `RateLimit` fields, and each HTTP key extractor.
#![cfg(feature = "http")]

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use omega_rate_limit::http::{ClientIp, Endpoint, Header, HttpRateLimitLayer};
use omega_rate_limit::{Limit, Quota, RateLimiter};
use omega_testkit::http::{get as http_get, request};

type Req = axum::extract::Request;

/// Serves `app` on a free loopback port, recording each connection's peer address.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn app(limiter: RateLimiter<Req>) -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/other", get(|| async { "other" }))
        .layer(HttpRateLimitLayer::new(limiter))
}

async fn status(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    http_get(addr, path, headers).await.unwrap().status
}

#[tokio::test]
async fn admitted_responses_carry_the_fields_and_denials_are_429_with_retry_after() {
    // 3 per minute per API key: a drained bucket takes 60 s to fill.
    let limiter = RateLimiter::builder()
        .limit(Limit::global("global", Quota::per_second(10_000)))
        .limit(Limit::keyed(
            "per_key",
            Quota::per_minute(3),
            Header::new("x-api-key"),
        ))
        .build()
        .unwrap();
    let addr = serve(app(limiter)).await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = http_get(addr, "/users/1", &[("x-api-key", "alpha")])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"user");
        assert_eq!(r.header("ratelimit-policy"), Some(r#""per_key";q=3;w=60"#));
        remaining.push(r.header("ratelimit").unwrap().to_owned());
    }
    assert!(
        remaining[0].starts_with(r#""per_key";r=2;t="#),
        "{remaining:?}"
    );
    assert!(
        remaining[1].starts_with(r#""per_key";r=1;t="#),
        "{remaining:?}"
    );
    assert!(
        remaining[2].starts_with(r#""per_key";r=0;t="#),
        "{remaining:?}"
    );

    let denied = http_get(addr, "/users/1", &[("x-api-key", "alpha")])
        .await
        .unwrap();
    assert_eq!(denied.status, 429);
    // The next cell comes 20 s after the first request; rounded up it is 19 or 20 s away.
    let retry: u64 = denied.header("retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(
        denied.header("ratelimit-policy"),
        Some(r#""per_key";q=3;w=60"#)
    );
    assert_eq!(
        denied.header("ratelimit"),
        Some(format!(r#""per_key";r=0;t={retry}"#).as_str())
    );
    assert!(denied.body.is_empty());

    // Another key has its own bucket; a request without the header is left to the global limit.
    assert_eq!(
        status(addr, "/users/1", &[("x-api-key", "beta")]).await,
        200
    );
    let anonymous = http_get(addr, "/users/1", &[]).await.unwrap();
    assert_eq!(anonymous.status, 200);
    assert!(
        anonymous
            .header("ratelimit")
            .unwrap()
            .starts_with(r#""global";"#),
        "{anonymous:?}"
    );
}

#[tokio::test]
async fn endpoint_keys_use_the_route_template_not_the_raw_path() {
    let limiter = RateLimiter::builder()
        .limit(Limit::keyed("per_endpoint", Quota::per_minute(2), Endpoint))
        .build()
        .unwrap();
    let addr = serve(app(limiter)).await;
    // /users/1 and /users/2 are the same endpoint, GET /users/{id}.
    assert_eq!(status(addr, "/users/1", &[]).await, 200);
    assert_eq!(status(addr, "/users/2", &[]).await, 200);
    assert_eq!(status(addr, "/users/3", &[]).await, 429);
    // Another route and another method are other endpoints.
    assert_eq!(status(addr, "/other", &[]).await, 200);
    let head = request(addr, "HEAD", "/users/4", &[], b"").await.unwrap();
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    // The test client connects from 127.0.0.1.
    let untrusted = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_ip",
            Quota::per_minute(1),
            ClientIp::trusting(["10.0.0.0/8"]).unwrap(),
        ))
        .build()
        .unwrap();
    let addr = serve(app(untrusted)).await;
    assert_eq!(
        status(addr, "/other", &[("x-forwarded-for", "198.51.100.1")]).await,
        200
    );
    // A client that names another address for itself is still itself.
    assert_eq!(
        status(addr, "/other", &[("x-forwarded-for", "198.51.100.2")]).await,
        429
    );

    let behind_proxy = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_ip",
            Quota::per_minute(1),
            ClientIp::trusting(["127.0.0.1"]).unwrap(),
        ))
        .build()
        .unwrap();
    let addr = serve(app(behind_proxy)).await;
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(status(addr, "/other", &xff("198.51.100.1")).await, 200);
    assert_eq!(status(addr, "/other", &xff("198.51.100.2")).await, 200);
    assert_eq!(status(addr, "/other", &xff("198.51.100.1")).await, 429);
    // Forwarded (RFC 7239) names the same client.
    let fwd = [("forwarded", r#"for="198.51.100.2:5000";proto=https"#)];
    assert_eq!(status(addr, "/other", &fwd).await, 429);
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn grpc_calls_are_denied_with_resource_exhausted() {
    let limiter = RateLimiter::builder()
        .limit(Limit::global("global", Quota::per_minute(1)))
        .build()
        .unwrap();
    let addr = serve(app(limiter)).await;
    let grpc = [("content-type", "application/grpc")];
    let first: omega_testkit::http::RawResponse =
        request(addr, "POST", "/other", &grpc, b"").await.unwrap();
    // The route only answers GET: what matters is that the limiter let it through.
    assert_ne!(first.header("grpc-status"), Some("8"));
    let denied = request(addr, "POST", "/other", &grpc, b"").await.unwrap();
    assert_eq!(denied.status, 200);
    assert_eq!(denied.header("grpc-status"), Some("8"));
    assert_eq!(denied.header("content-type"), Some("application/grpc"));
    assert!(denied.header("grpc-message").unwrap().contains("global"));
    assert!(denied.header("retry-after").is_some());

    let status: tonic::Status = omega_rate_limit::RateLimiter::<u8>::builder()
        .limit(Limit::global("g", Quota::per_minute(1).with_burst(1)))
        .build()
        .map(|l| {
            let _ = l.check_local(&0);
            l.check_local(&0).denied().unwrap().into()
        })
        .unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.metadata().get("retry-after").unwrap(), "60");
}
