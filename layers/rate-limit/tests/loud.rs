//! Mistakes users make fail loudly: a client-IP limit on a server that records no peer
//! address, a burst of zero.

use omega_rate_limit::{Limit, Quota, RateLimiter};

/// `with_burst(0)` is a mistake, not a burst of one: it panics (as `per_second(0)` does), and
/// `try_with_burst(0)` is an error that says why.
#[test]
fn a_burst_of_zero_is_refused() {
    let silent = std::panic::catch_unwind(|| Quota::per_second(10).with_burst(0));
    assert!(silent.is_err(), "with_burst(0) gave {:?}", silent.ok());
    let e = Quota::per_second(10).try_with_burst(0).unwrap_err();
    assert!(e.to_string().contains("burst of 0"), "{e}");
    assert_eq!(Quota::per_second(10).try_with_burst(4).unwrap().burst(), 4);
    let _ = RateLimiter::<()>::builder().limit(Limit::global("g", Quota::per_second(1)));
}

/// The same for a `client_ip` limit built from a configuration section.
#[cfg(all(feature = "http", feature = "serde"))]
#[tokio::test]
async fn a_configured_client_ip_limit_refuses_without_peer_addresses() {
    use omega_core::Backend;
    use omega_core::config::from_json;
    use omega_core::key::http::ClientIp;
    use omega_rate_limit::config::{LimitConfig, rate_limiter};

    let limits: Vec<LimitConfig> =
        from_json(r#"[{ "name": "per_ip", "key": "client_ip", "rate": 5, "per": "1s" }]"#).unwrap();
    let limiter = rate_limiter::<()>(&limits, &Backend::memory(), "r", &ClientIp::peer())
        .unwrap()
        .unwrap();
    let d = limiter.check(&http::Request::new(())).await;
    match d.refused() {
        Some(omega_rate_limit::Refused::PeerAddrMissing { limit, refusal }) => {
            assert_eq!(*limit, "per_ip");
            assert_eq!(omega_core::reject::Refusal::status(*refusal), 500);
        }
        other => panic!("{other:?}"),
    }
}

/// A limit keyed by `ClientIp` on a server that records no peer address (no `PeerAddr`, no
/// axum `ConnectInfo`) cannot tell clients apart: every request is refused with a 500 whose
/// message names the fix, instead of the limit silently not counting anything.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_client_ip_limit_without_peer_addresses_refuses_with_the_fix() {
    use std::convert::Infallible;

    use http::{Request, Response};
    use omega_core::key::http::{ClientIp, PeerAddr};
    use omega_rate_limit::RateLimitLayer;
    use tower::{ServiceExt, service_fn};

    let limiter = RateLimiter::<Request<()>>::builder()
        .limit(Limit::keyed(
            "per_ip",
            Quota::per_minute(1),
            ClientIp::peer(),
        ))
        .build()
        .unwrap();
    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let svc = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter.clone()).respond())
        .service(inner);
    for _ in 0..3 {
        let r = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(r.status(), 500, "{:?}", r.headers());
    }
    // The default strategy fails with an error that says what to do.
    let svc = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter.clone()))
        .service(inner);
    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    println!("{err}");
    assert!(err.to_string().contains("PeerAddr"), "{err}");
    assert!(err.to_string().contains("per_ip"), "{err}");
    // With a peer address the limit works.
    let mut with_peer = Request::new(());
    with_peer
        .extensions_mut()
        .insert(PeerAddr("192.0.2.1:4000".parse().unwrap()));
    assert!(svc.oneshot(with_peer).await.is_ok());
}
