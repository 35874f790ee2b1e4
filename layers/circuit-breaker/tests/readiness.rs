//! Readiness and when a permit is taken.
//!
//! - A layer that will refuse answers ready at once and refuses in `call`: an OPEN (or
//!   FORCED_OPEN) breaker does not wait for the inner service's readiness (tower's
//!   `LoadShed` decides the same way, in `poll_ready`).
//! - A guarded future ([`CircuitBreaker::call`]) takes its permit when it is first polled,
//!   not when it is built.
//! - `Service::call` decides admission when it is called, because that is when the inner
//!   service's `call` runs (and may start the work): a response future made while CLOSED runs
//!   even if the breaker opens before it is polled, and its result, from an earlier state, is
//!   ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use omega_circuit_breaker::{
    BoxError, CallError, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen,
    Clock, SlidingWindow, State,
};
use tower::{Layer, Service, ServiceExt};

/// An inner service that is ready only when its semaphore has permits, and counts its calls.
#[derive(Clone)]
struct Gate {
    open: Arc<tokio::sync::Semaphore>,
    polled: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

impl Gate {
    fn closed() -> Gate {
        Gate {
            open: Arc::new(tokio::sync::Semaphore::new(0)),
            polled: Arc::default(),
            calls: Arc::default(),
        }
    }
}

impl Service<u32> for Gate {
    type Response = u32;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polled.fetch_add(1, Ordering::SeqCst);
        if self.open.available_permits() > 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Answers `x`, or fails for 0.
    fn call(&mut self, x: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if x == 0 { Err("down".into()) } else { Ok(x) })
    }
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder("ready")
        .config(
            CircuitBreakerConfig::default()
                .sliding_window(SlidingWindow::ConsecutiveFailures(1))
                .wait_duration(Duration::from_secs(30))
                .permitted_calls_in_half_open(1),
        )
        .clock(Clock::system())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_answers_ready_at_once_and_refuses_in_call() {
    let b = breaker();
    let gate = Gate::closed();
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(gate.clone());
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // CLOSED: readiness is the inner service's.
    assert!(svc.poll_ready(&mut cx).is_pending());

    // OPEN: ready at once, whatever the inner service says, and refused in `call`.
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), State::Open);
    let started = tokio::time::Instant::now();
    let ready = tokio::time::timeout(Duration::from_secs(10), svc.ready()).await;
    eprintln!(
        "an OPEN breaker over a service that is never ready: ready after {:?} (tokio time)",
        started.elapsed()
    );
    assert!(ready.is_ok(), "poll_ready waited for the inner service");
    let err = svc.call(1).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert_eq!(open.state(), State::Open);
    assert!(open.retry_after().unwrap() <= Duration::from_secs(30));
    assert_eq!(gate.calls.load(Ordering::SeqCst), 0);
    assert_eq!(b.health().rejected_calls, 1, "one refusal, counted once");

    // FORCED_OPEN too.
    b.force_open();
    let polled = gate.polled.load(Ordering::SeqCst);
    assert!(svc.poll_ready(&mut cx).is_ready());
    assert_eq!(
        gate.polled.load(Ordering::SeqCst),
        polled,
        "inner not polled"
    );
    let err = svc.call(2).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().state(),
        State::ForcedOpen
    );

    // Once the circuit admits again, readiness is the inner service's again.
    b.transition_to_half_open();
    assert!(svc.poll_ready(&mut cx).is_pending());
    gate.open.add_permits(1);
    assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_refusal_decided_in_poll_ready_is_not_carried_by_a_clone() {
    let b = breaker();
    let gate = Gate::closed();
    gate.open.add_permits(1);
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(gate.clone());
    b.force_open();
    svc.ready().await.unwrap();
    // A clone made now has not been polled: it asks the breaker (and the inner service) anew.
    let mut clone = svc.clone();
    b.transition_to_closed();
    assert_eq!(clone.ready().await.unwrap().call(5).await.unwrap(), 5);
    // The original was told "ready" while FORCED_OPEN: its call is the refusal decided then.
    let err = svc.call(6).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_guarded_future_takes_its_permit_when_first_polled() {
    let b = breaker();
    // Built while CLOSED, polled after the circuit opened: refused, the future never runs.
    let ran = Arc::new(AtomicU32::new(0));
    let r = ran.clone();
    let call = b.call(async move {
        r.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>(1)
    });
    b.force_open();
    let result = call.await;
    eprintln!("a call built while CLOSED and polled while FORCED_OPEN: {result:?}");
    assert!(
        matches!(result, Err(CallError::Rejected(_))),
        "admitted on a stale decision: {result:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);

    // HALF_OPEN with one permit: futures built in advance take nothing until they run.
    b.transition_to_half_open();
    let calls: Vec<_> = (0..3).map(|_| b.call(async { Ok::<_, ()>(()) })).collect();
    let left = b.health().probes_left;
    eprintln!("3 calls built in HALF_OPEN, none polled: {left:?} probe permits left");
    assert_eq!(left, Some(1));
    drop(calls);
    let mut later = Box::pin(b.call(async { Ok::<_, ()>(7) }));
    assert_eq!(b.health().probes_left, Some(1));
    assert_eq!(later.as_mut().await, Ok(7));
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_service_decides_admission_in_call_and_a_later_result_is_ignored() {
    let b = breaker();
    let gate = Gate::closed();
    gate.open.add_permits(1);
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(gate.clone());
    svc.ready().await.unwrap();
    // Admitted in CLOSED: the inner service's `call` ran here.
    let fut = svc.call(0);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);
    b.force_open();
    b.transition_to_closed();
    // The result (a failure) belongs to an earlier state: it does not open the new CLOSED.
    assert!(fut.await.is_err());
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.health().failed_calls, 0);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_grpc_layer_answers_ready_at_once_when_open() {
    use http::{Request, Response};

    #[derive(Clone)]
    struct Never;
    impl Service<Request<String>> for Never {
        type Response = Response<String>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<String>, BoxError>>;
        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Pending
        }
        fn call(&mut self, _req: Request<String>) -> Self::Future {
            unreachable!("never ready, never called")
        }
    }

    let b = breaker();
    let mut svc = CircuitBreakerLayer::new(b.clone()).grpc().layer(Never);
    b.force_open();
    let ready = tokio::time::timeout(Duration::from_secs(10), svc.ready()).await;
    assert!(ready.is_ok(), "poll_ready waited for the inner service");
    let req = Request::builder()
        .header("content-type", "application/grpc")
        .body(String::new())
        .unwrap();
    let resp = svc.call(req).await.unwrap();
    assert_eq!(resp.headers()["grpc-status"], "14");
}
