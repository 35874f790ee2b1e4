//! The Tower layer: over a plain service, per key (any `KeySource`), with each rejection
//! strategy, and on axum with 503 + `Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use omega_circuit_breaker::{
    BoxError, BreakerRegistry, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
    CircuitOpen, Clock, SlidingWindow, State,
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

fn consecutive(n: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::default()
        .sliding_window(SlidingWindow::ConsecutiveFailures(n))
        .wait_duration(Duration::from_secs(30))
        .permitted_calls_in_half_open(1)
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_breaker_and_rejections_downcast() {
    let breaker = CircuitBreaker::builder("svc")
        .config(consecutive(2))
        .clock(Clock::system())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(service_fn(move |fail: bool| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if fail {
                    Err::<u32, BoxError>("upstream down".into())
                } else {
                    Ok(7)
                }
            }
        }));
    // Two different clones each see one failure: the shared breaker sees two.
    assert!(svc.clone().oneshot(true).await.is_err());
    assert!(svc.clone().oneshot(true).await.is_err());
    assert_eq!(breaker.state(), State::Open);
    let err = svc.clone().oneshot(false).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a rejected call never reaches the service"
    );

    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(svc.clone().oneshot(false).await.unwrap(), 7);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test]
async fn readiness_is_the_inner_services() {
    use tower::Layer;
    let sem = Arc::new(tokio::sync::Semaphore::new(0));
    let mut svc =
        CircuitBreakerLayer::new(CircuitBreaker::new("ready")).layer(ReadyWhen(sem.clone()));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
    sem.add_permits(1);
    assert!(svc.poll_ready(&mut cx).is_ready());
}

#[derive(Clone)]
struct ReadyWhen(Arc<tokio::sync::Semaphore>);

impl Service<()> for ReadyWhen {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.0.available_permits() > 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn per_key_breakers_open_independently() {
    let registry = BreakerRegistry::<String>::new(consecutive(1)).unwrap();
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::keyed(
            registry.clone(),
            |req: &(String, bool)| Some(req.0.clone()),
        ))
        .service(service_fn(|(_, fail): (String, bool)| async move {
            if fail {
                Err::<(), BoxError>("down".into())
            } else {
                Ok(())
            }
        }));
    let node = |s: &str| s.to_string();
    assert!(svc.clone().oneshot((node("a"), true)).await.is_err());
    assert!(!registry.is_call_permitted(&node("a")));
    // "b" has its own breaker, still CLOSED.
    svc.clone().oneshot((node("b"), false)).await.unwrap();
    let err = svc.clone().oneshot((node("a"), false)).await.unwrap_err();
    assert_eq!(err.downcast_ref::<CircuitOpen>().unwrap().breaker(), "a");
    assert_eq!(registry.state(&node("b")), Some(State::Closed));
}

#[tokio::test]
async fn keyed_breakers_take_any_key_source_and_requests_without_a_key_pass() {
    use omega_core::key::{Key, KeySource};

    /// The node named in the request, borrowed from it; `None` for an empty name.
    struct NodeOf;
    impl KeySource<(String, bool)> for NodeOf {
        fn key<'a>(&self, req: &'a (String, bool)) -> Option<Key<'a>> {
            (!req.0.is_empty()).then(|| Key::from(req.0.as_str()))
        }
    }

    let registry = BreakerRegistry::<Arc<str>>::builder()
        .config(consecutive(1))
        .name_prefix("pool/")
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::keyed(registry.clone(), NodeOf))
        .service(service_fn(|(_, fail): (String, bool)| async move {
            if fail {
                Err::<(), BoxError>("down".into())
            } else {
                Ok(())
            }
        }));
    assert!(svc.clone().oneshot(("a".into(), true)).await.is_err());
    let err = svc.clone().oneshot(("a".into(), false)).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().breaker(),
        "pool/a"
    );
    assert_eq!(registry.state("a"), Some(State::Open));

    // Without a key, no breaker guards the request: it is never refused, nothing is recorded.
    for _ in 0..3 {
        assert!(svc.clone().oneshot((String::new(), true)).await.is_err());
    }
    svc.clone().oneshot((String::new(), false)).await.unwrap();
    assert_eq!(registry.len(), 1);

    // A closure works as well, and names that are not UTF-8 are read lossily.
    let bytes = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::keyed(
            registry.clone(),
            |req: &Vec<u8>| Some(req.clone()),
        ))
        .service(service_fn(|_: Vec<u8>| async { Ok::<_, BoxError>(()) }));
    bytes.oneshot(vec![b'n', 0xff]).await.unwrap();
    assert!(registry.get("n\u{fffd}").is_some());
}

#[tokio::test]
async fn a_closure_answers_refusals_and_inner_errors_pass_through() {
    use omega_circuit_breaker::Refusal;

    let breaker = CircuitBreaker::new("fallback");
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()).on_rejection(
            |req: &u32, refusal: &dyn Refusal| {
                format!(
                    "{req}: {} after {:?}",
                    refusal.status(),
                    refusal.retry_after()
                )
            },
        ))
        .service(service_fn(|x: u32| async move {
            if x == 0 {
                Err(std::io::Error::other("zero"))
            } else {
                Ok(x.to_string())
            }
        }));
    assert_eq!(svc.clone().oneshot(7).await.unwrap(), "7");
    // The service's error type is the inner one: no box.
    let err: std::io::Error = svc.clone().oneshot(0).await.unwrap_err();
    assert_eq!(err.to_string(), "zero");
    breaker.force_open();
    assert_eq!(svc.clone().oneshot(7).await.unwrap(), "7: 503 after None");
}

#[test]
fn circuit_open_is_a_503_unavailable_refusal_with_the_time_to_the_next_probe() {
    use omega_circuit_breaker::Refusal;

    let b = CircuitBreaker::with_config("r", consecutive(1)).unwrap();
    b.try_acquire().unwrap().failure();
    let open = b.try_acquire().unwrap_err();
    assert_eq!(Refusal::status(&open), 503);
    assert_eq!(open.grpc_code(), omega_core::reject::grpc::UNAVAILABLE);
    let after = Refusal::retry_after(&open).unwrap();
    assert!(after > Duration::ZERO && after <= Duration::from_secs(30));
    b.force_open();
    assert_eq!(Refusal::retry_after(&b.try_acquire().unwrap_err()), None);
}

#[cfg(feature = "http")]
mod on_axum {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::{Request, StatusCode, header};

    fn app(breaker: CircuitBreaker, status: Arc<AtomicU32>) -> Router {
        Router::new()
            .route(
                "/upstream",
                get(move || {
                    let status = status.clone();
                    async move { StatusCode::from_u16(status.load(Ordering::SeqCst) as u16).unwrap() }
                }),
            )
            .layer(CircuitBreakerLayer::new(breaker).http())
    }

    fn get_req(grpc: bool) -> Request<Body> {
        let mut b = Request::get("/upstream");
        if grpc {
            b = b.header(header::CONTENT_TYPE, "application/grpc");
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_upstream_gets_503_with_retry_after_and_grpc_unavailable() {
        let breaker = CircuitBreaker::builder("axum")
            .config(
                CircuitBreakerConfig::default()
                    .sliding_window(SlidingWindow::CountBased(4))
                    .minimum_calls(4)
                    .failure_rate_threshold(50.0)
                    .wait_duration(Duration::from_millis(2500)),
            )
            .clock(Clock::system())
            .build()
            .unwrap();
        let status = Arc::new(AtomicU32::new(200));
        let app = app(breaker.clone(), status.clone());
        for _ in 0..2 {
            let r = app.clone().oneshot(get_req(false)).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        status.store(502, Ordering::SeqCst);
        for _ in 0..2 {
            let r = app.clone().oneshot(get_req(false)).await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY); // the upstream's own answer
        }
        assert_eq!(breaker.state(), State::Open);
        let r = app.clone().oneshot(get_req(false)).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        let g = app.clone().oneshot(get_req(true)).await.unwrap();
        assert_eq!(g.status(), StatusCode::OK);
        assert_eq!(g.headers()["grpc-status"], "14");
        assert_eq!(g.headers()[header::CONTENT_TYPE], "application/grpc");

        // Heal, wait, probe.
        status.store(200, Ordering::SeqCst);
        tokio::time::advance(Duration::from_millis(2500)).await;
        for _ in 0..10 {
            let r = app.clone().oneshot(get_req(false)).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn respond_alone_answers_refusals_and_keeps_the_classifier() {
        let breaker = CircuitBreaker::builder("respond")
            .config(consecutive(1))
            .clock(Clock::system())
            .build()
            .unwrap();
        let app = Router::new()
            .route("/", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .layer(CircuitBreakerLayer::new(breaker.clone()).respond());
        // Errors are failures, responses are not: a 500 leaves the circuit closed.
        let r = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap());
        assert_eq!(r.await.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(breaker.state(), State::Closed);
        breaker.transition_to_open();
        let r = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap());
        let r = r.await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
    }

    #[tokio::test]
    async fn a_breaker_per_header_value() {
        let registry = BreakerRegistry::<String>::new(consecutive(1)).unwrap();
        let app = Router::new()
            .route("/", get(|| async { StatusCode::BAD_GATEWAY }))
            .layer(
                CircuitBreakerLayer::keyed(
                    registry.clone(),
                    omega_core::key::http::Header::new("x-upstream"),
                )
                .http(),
            );
        let req = |upstream: &str| {
            Request::get("/")
                .header("x-upstream", upstream)
                .body(Body::empty())
                .unwrap()
        };
        let r = app.clone().oneshot(req("billing")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let r = app.clone().oneshot(req("billing")).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = app.clone().oneshot(req("search")).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(registry.state("billing"), Some(State::Open));
    }

    #[tokio::test]
    async fn grpc_failure_statuses_in_headers_count() {
        let breaker = CircuitBreaker::with_config("grpc", consecutive(2)).unwrap();
        let app = Router::new()
            .route(
                "/svc/Method",
                get(|| async {
                    (
                        [
                            (header::CONTENT_TYPE, "application/grpc"),
                            (http::HeaderName::from_static("grpc-status"), "14"),
                        ],
                        "",
                    )
                }),
            )
            .layer(CircuitBreakerLayer::new(breaker.clone()).http());
        for _ in 0..2 {
            let r = app
                .clone()
                .oneshot(Request::get("/svc/Method").body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
        assert_eq!(breaker.state(), State::Open);
    }
}

#[cfg(feature = "grpc")]
#[test]
fn circuit_open_becomes_grpc_unavailable() {
    let b = CircuitBreaker::new("grpc-status");
    b.force_open();
    let open = b.try_acquire().unwrap_err();
    let status: tonic::Status = open.into();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("grpc-status"));
}
