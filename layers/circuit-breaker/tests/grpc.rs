//! `CircuitBreakerLayer::grpc`: a gRPC call's status is read from its trailers, after its
//! messages, when the body is read; trailers-only errors, HTTP errors and rejections as with
//! `http()`; a body dropped before its end is a cancelled call.
#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use omega_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, GrpcBody, SlidingWindow, State,
};
use tower::{Layer, ServiceExt, service_fn};

/// A response body from a list of frames; `Pending` after them when `hang` (a stream that is
/// still open).
#[derive(Default)]
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    hang: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.frames.pop_front() {
            Some(f) => Poll::Ready(Some(Ok(f))),
            None if self.hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.hang
    }
}

/// What the test server answers, chosen by the request path.
fn answer(path: &str) -> Response<Frames> {
    let message = || Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"));
    let trailers = |code: &str| {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        Frame::trailers(t)
    };
    let (frames, hang, head_status) = match path {
        // Two messages, then the status in the trailers.
        "/ok" => (vec![message(), message(), trailers("0")], false, None),
        "/fails_mid_stream" => (vec![message(), trailers("14")], false, None),
        "/not_found" => (vec![message(), trailers("5")], false, None),
        // A trailers-only error: the status is in the headers.
        "/trailers_only" => (vec![], false, Some("13")),
        // The stream ends without a status.
        "/no_status" => (vec![message()], false, None),
        "/hangs" => (vec![message()], true, None),
        other => panic!("unexpected {other}"),
    };
    let mut r = Response::new(Frames {
        frames: frames.into(),
        hang,
    });
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    if let Some(code) = head_status {
        r.headers_mut().insert("grpc-status", code.parse().unwrap());
    }
    r
}

fn grpc_request(path: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::with_config(
        "grpc",
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(10))
            .minimum_calls(4)
            .failure_rate_threshold(50.0)
            .wait_duration(Duration::from_secs(60))
            .permitted_calls_in_half_open(1),
    )
    .unwrap()
}

/// The test server: answers by path.
type Server = fn(Request<()>) -> std::future::Ready<Result<Response<Frames>, Infallible>>;

type Svc = omega_circuit_breaker::GrpcCircuitBreakerService<
    tower::util::ServiceFn<Server>,
    omega_circuit_breaker::Single,
    omega_circuit_breaker::Respond,
>;

fn service(b: &CircuitBreaker) -> Svc {
    let server: Server = |req| std::future::ready(Ok(answer(req.uri().path())));
    CircuitBreakerLayer::new(b.clone())
        .grpc()
        .layer(service_fn(server))
}

/// Makes a call and reads its body to the end.
async fn call(svc: &Svc, path: &str) -> Response<GrpcBody<Frames>> {
    svc.clone().oneshot(grpc_request(path)).await.unwrap()
}

async fn call_to_end(svc: &Svc, path: &str) -> Option<HeaderMap> {
    let body = call(svc, path).await.into_body();
    body.collect().await.unwrap().trailers().cloned()
}

#[tokio::test]
async fn statuses_in_trailers_are_recorded_when_they_arrive() {
    let b = breaker();
    let svc = service(&b);
    // The head alone records nothing: the call is recorded when its trailers are read.
    let response = call(&svc, "/fails_mid_stream").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(b.health().calls, 0);
    let trailers = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .trailers()
        .cloned();
    assert_eq!(
        trailers.unwrap()["grpc-status"],
        "14",
        "the trailers pass through"
    );
    assert_eq!((b.health().calls, b.health().failed_calls), (1, 1));

    // OK and NOT_FOUND (not in the failure set) are successes.
    call_to_end(&svc, "/ok").await;
    call_to_end(&svc, "/not_found").await;
    assert_eq!((b.health().calls, b.health().failed_calls), (3, 1));
    // A second UNAVAILABLE makes 2 of 4: the circuit opens.
    call_to_end(&svc, "/fails_mid_stream").await;
    assert_eq!(b.state(), State::Open);

    // An open circuit answers a trailers-only UNAVAILABLE.
    let rejected = call(&svc, "/ok").await;
    assert_eq!(rejected.status(), StatusCode::OK);
    assert_eq!(rejected.headers()["grpc-status"], "14");
    assert_eq!(b.health().rejected_calls, 1);
}

#[tokio::test]
async fn the_head_decides_when_it_tells() {
    let b = breaker();
    let svc = service(&b);
    // A trailers-only INTERNAL is recorded at the head, before the body is read.
    let _unread = call(&svc, "/trailers_only").await;
    assert_eq!((b.health().calls, b.health().failed_calls), (1, 1));
    // An HTTP error from something in between (a proxy) is recorded at the head too.
    let http_error =
        CircuitBreakerLayer::new(b.clone())
            .grpc()
            .layer(service_fn(|_req: Request<()>| async {
                let mut r = Response::new(Frames::default());
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                Ok::<_, Infallible>(r)
            }));
    let r = http_error.oneshot(grpc_request("/x")).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!((b.health().calls, b.health().failed_calls), (2, 2));
}

#[tokio::test]
async fn a_stream_without_a_status_is_a_failure() {
    let b = breaker();
    let svc = service(&b);
    assert_eq!(call_to_end(&svc, "/no_status").await, None);
    assert_eq!((b.health().calls, b.health().failed_calls), (1, 1));
}

#[tokio::test]
async fn a_stream_dropped_before_its_end_is_a_cancelled_probe() {
    let b = breaker();
    let svc = service(&b);
    b.transition_to_half_open();
    assert_eq!(b.health().probes_left, Some(1));
    // The probe's stream is read in part, then the client goes away.
    let mut body = call(&svc, "/hangs").await.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert_eq!(b.health().probes_left, Some(0));
    drop(body);
    // Nothing recorded, and the permit is back for the next probe.
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.health().probes_left, Some(1));
    call_to_end(&svc, "/ok").await;
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn with_http_only_the_trailers_are_not_seen() {
    // The contrast: `http()` classifies the head, where a mid-stream failure looks like a
    // success.
    let b = breaker();
    let svc = CircuitBreakerLayer::new(b.clone()).http().layer(service_fn(
        |req: Request<()>| async move { Ok::<_, Infallible>(answer(req.uri().path())) },
    ));
    for _ in 0..4 {
        let r = svc
            .clone()
            .oneshot(grpc_request("/fails_mid_stream"))
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
    }
    assert_eq!((b.health().calls, b.health().failed_calls), (4, 0));
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn refusals_follow_the_chosen_strategy() {
    use omega_circuit_breaker::{BoxError, CircuitOpen, Refusal};
    let b = breaker();
    b.force_open();
    // KeepError: the refusal is the service's error, boxed.
    let keep = CircuitBreakerLayer::new(b.clone())
        .grpc()
        .on_rejection(omega_circuit_breaker::KeepError)
        .layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(answer(req.uri().path()))
        }));
    let err: BoxError = keep.oneshot(grpc_request("/ok")).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    // A closure answers with a response of its own.
    let custom = CircuitBreakerLayer::new(b.clone())
        .grpc()
        .on_rejection(|_: &Request<()>, refusal: &dyn Refusal| {
            let mut r = Response::new(GrpcBody::default());
            *r.status_mut() = StatusCode::from_u16(refusal.status()).unwrap();
            r
        })
        .layer(service_fn(|req: Request<()>| async move {
            Ok::<_, Infallible>(answer(req.uri().path()))
        }));
    let r = custom.oneshot(grpc_request("/ok")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.health().rejected_calls, 2);
}

#[tokio::test]
async fn only_bodies_that_watch_nothing_unwrap() {
    let b = breaker();
    let svc = service(&b);
    // Recorded at the head: nothing to watch, the inner body comes out.
    let decided = call(&svc, "/trailers_only").await.into_body();
    assert!(decided.into_unwatched().is_ok());
    // A status still to come in the trailers: the wrapper stays, and still records.
    let watching = call(&svc, "/fails_mid_stream").await.into_body();
    let Err(watching) = watching.into_unwatched() else {
        panic!("a body whose status is in its trailers keeps its watch");
    };
    assert_eq!(b.health().calls, 1);
    watching.collect().await.unwrap();
    assert_eq!((b.health().calls, b.health().failed_calls), (2, 2));
}
