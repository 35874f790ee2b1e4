//! The layer with `.respond()` on a real axum server over real sockets: status codes,
//! `Retry-After`, the IETF `RateLimit` fields, and omega-core's HTTP key sources.
#![cfg(feature = "http")]

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use omega_core::key::MissingKey;
use omega_core::key::http::Header;
#[cfg(feature = "axum")]
use omega_core::key::http::{ClientIp, Endpoint, ForwardingHeader};
use omega_rate_limit::{Limit, Quota, RateLimitLayer, RateLimiter};
use omega_testkit::http::get as http_get;

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
        .layer(RateLimitLayer::new(limiter).respond())
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
        // Every policy of the request, in the limiter's order, one field line each.
        assert_eq!(
            r.headers_named("ratelimit-policy"),
            [r#""global";q=10000;w=1"#, r#""per_key";q=3;w=60"#]
        );
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
        denied.headers_named("ratelimit-policy"),
        [r#""global";q=10000;w=1"#, r#""per_key";q=3;w=60"#]
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

/// `Endpoint` reads axum's `MatchedPath`, `ClientIp` its `ConnectInfo` (feature `axum`).
#[cfg(feature = "axum")]
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
    let head = omega_testkit::http::request(addr, "HEAD", "/users/4", &[], b"")
        .await
        .unwrap();
    assert_eq!(head.status, 200);
}

/// `Endpoint` reads axum's `MatchedPath`, `ClientIp` its `ConnectInfo` (feature `axum`).
#[cfg(feature = "axum")]
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

    // Proxies that write `Forwarded` (RFC 7239): it names the client; X-Forwarded-For, which
    // such proxies pass through from the client, is not believed.
    let behind_rfc_proxy = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_ip",
            Quota::per_minute(1),
            ClientIp::trusting(["127.0.0.1"])
                .unwrap()
                .header(ForwardingHeader::Forwarded),
        ))
        .build()
        .unwrap();
    let addr = serve(app(behind_rfc_proxy)).await;
    let fwd = [("forwarded", r#"for="198.51.100.2:5000";proto=https"#)];
    assert_eq!(status(addr, "/other", &fwd).await, 200);
    assert_eq!(status(addr, "/other", &fwd).await, 429);
    let spoofed = [
        ("forwarded", "for=198.51.100.3"),
        ("x-forwarded-for", "198.51.100.2"),
    ];
    assert_eq!(status(addr, "/other", &spoofed).await, 200);
}

#[tokio::test]
async fn a_request_without_the_key_is_skipped_or_refused_as_each_limit_says() {
    let limiter = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_key",
            Quota::per_minute(1),
            Header::new("x-api-key"),
        ))
        .limit(
            Limit::keyed(
                "per_tenant",
                Quota::per_minute(100),
                Header::new("x-tenant"),
            )
            .on_missing_key(MissingKey::Reject),
        )
        .build()
        .unwrap();
    let addr = serve(app(limiter)).await;
    // No tenant: refused with 400, whatever the other limit says, and no `RateLimit` fields.
    let refused = http_get(addr, "/other", &[("x-api-key", "a")])
        .await
        .unwrap();
    assert_eq!(refused.status, 400);
    assert!(refused.header("ratelimit").is_none(), "{refused:?}");
    assert!(refused.header("retry-after").is_none(), "{refused:?}");
    // The refusal took nothing from the API key's limit (1 per minute).
    let tenant = [("x-tenant", "t1"), ("x-api-key", "a")];
    assert_eq!(status(addr, "/other", &tenant).await, 200);
    assert_eq!(status(addr, "/other", &tenant).await, 429);
    // Without an API key the per-key limit skips the request (the default).
    for _ in 0..3 {
        assert_eq!(status(addr, "/other", &[("x-tenant", "t1")]).await, 200);
    }
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
        omega_testkit::http::request(addr, "POST", "/other", &grpc, b"")
            .await
            .unwrap();
    // The route only answers GET: what matters is that the limiter let it through.
    assert_ne!(first.header("grpc-status"), Some("8"));
    let denied = omega_testkit::http::request(addr, "POST", "/other", &grpc, b"")
        .await
        .unwrap();
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

/// The trust rules the crate's own `ClientIp` had, kept by omega-core's (which this crate now
/// uses): untrusted peers cannot name another client, trusted hops are skipped from the right,
/// garbage ends the walk, RFC 7239 is parsed (when it is the header the proxies write), and
/// IPv4-mapped addresses are one client.
#[test]
fn the_client_ip_source_keeps_the_trust_rules() {
    use std::net::IpAddr;

    use http::HeaderMap;
    use omega_core::key::http::{ClientIp, ForwardingHeader};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::try_from(*k).unwrap(),
                http::HeaderValue::try_from(*v).unwrap(),
            );
        }
        h
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    let c = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
    let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
    assert_eq!(c.client(ip("203.0.113.9"), &h), ip("203.0.113.9"));
    assert_eq!(ClientIp::peer().client(ip("10.0.0.1"), &h), ip("10.0.0.1"));

    let c = ClientIp::trusting(["10.0.0.0/8", "192.0.2.7"]).unwrap();
    let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.1.1")]);
    assert_eq!(c.client(ip("192.0.2.7"), &h), ip("198.51.100.4"));
    let h = headers(&[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-for", "198.51.100.5"),
    ]);
    assert_eq!(c.client(ip("10.0.0.2"), &h), ip("198.51.100.5"));
    let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
    assert_eq!(c.client(ip("10.0.0.2"), &h), ip("10.9.9.9"));
    let h = headers(&[("x-forwarded-for", "198.51.100.4, garbage, 10.1.1.1")]);
    assert_eq!(c.client(ip("10.0.0.2"), &h), ip("10.1.1.1"));

    let c = ClientIp::trusting(["10.0.0.0/8"])
        .unwrap()
        .header(ForwardingHeader::Forwarded);
    let h = headers(&[
        ("x-forwarded-for", "6.6.6.6"),
        (
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.2.2.2:80"#,
        ),
    ]);
    assert_eq!(c.client(ip("10.0.0.3"), &h), ip("2001:db8:cafe::17"));
    let h = headers(&[("forwarded", "for=unknown, for=10.2.2.2")]);
    assert_eq!(c.client(ip("10.0.0.3"), &h), ip("10.2.2.2"));

    let c = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
    let h = headers(&[("x-forwarded-for", "::ffff:198.51.100.4")]);
    assert_eq!(c.client(ip("::ffff:10.0.0.1"), &h), ip("198.51.100.4"));

    let err = ClientIp::trusting(["10.0.0.0/8", "ten.zero"]).unwrap_err();
    assert!(err.to_string().contains("ten.zero"), "{err}");
}
