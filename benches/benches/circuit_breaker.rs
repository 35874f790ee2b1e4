//! The circuit breaker beside recloser, failsafe and tower-resilience, in one run.
//!
//! - `circuit_breaker_closed`: a successful call through a CLOSED breaker, the inner call a
//!   constant (each crate through its own decorator: omega's and recloser's / failsafe's
//!   `call`, tower-resilience's service over a ready `Service`).
//! - `circuit_breaker_closed_2_threads`: the same, two threads on one shared breaker; the time
//!   is per call per thread.
//! - `circuit_breaker_open`: a call rejected by an OPEN breaker (a real OPEN with a long wait,
//!   not a forced state).
//!
//! Every breaker uses its defaults except where a test needs an OPEN circuit.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use omega_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, SlidingWindow};
use recloser::Recloser;
use tower_service::Service;

const HOUR: Duration = Duration::from_secs(3600);

fn omega() -> CircuitBreaker {
    CircuitBreaker::new("bench")
}

fn failsafe_default() -> impl failsafe::CircuitBreaker + Sync {
    failsafe::Config::new().build()
}

/// The cheapest inner service: always ready, answers at once.
#[derive(Clone, Copy)]
struct Cheap;

impl Service<()> for Cheap {
    type Response = u64;
    type Error = ();
    type Future = std::future::Ready<Result<u64, ()>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        std::future::ready(Ok(black_box(1)))
    }
}

type Resilience = tower_resilience::circuitbreaker::CircuitBreaker<
    Cheap,
    tower_resilience::circuitbreaker::DefaultClassifier,
>;

fn tower_resilience() -> Resilience {
    use tower_layer::Layer;
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .layer(Cheap)
}

/// One call through a tower service: poll_ready, call, and poll the response future; the rare
/// `Pending` (tower-resilience backs off 1 ms on a contended lock) is driven by the runtime.
fn tower_call(svc: &mut Resilience, rt: &tokio::runtime::Runtime) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let _enter = rt.enter();
    if svc.poll_ready(&mut cx).is_pending() {
        rt.block_on(std::future::poll_fn(|cx| svc.poll_ready(cx)))
            .unwrap();
    }
    let mut fut = pin!(svc.call(()));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.is_ok(),
        Poll::Pending => rt.block_on(fut).is_ok(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn closed(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker_closed");
    let b = omega();
    g.bench_function("omega", |bench| {
        bench.iter(|| black_box(b.call_sync(|| Ok::<_, ()>(black_box(1u64))).is_ok()))
    });
    let r = Recloser::custom().build();
    g.bench_function("recloser", |bench| {
        bench.iter(|| black_box(r.call(|| Ok::<_, ()>(black_box(1u64))).is_ok()))
    });
    let f = failsafe_default();
    g.bench_function("failsafe", |bench| {
        bench.iter(|| black_box(f.call(|| Ok::<_, ()>(black_box(1u64))).is_ok()))
    });
    let rt = runtime();
    let mut t = tower_resilience();
    g.bench_function("tower_resilience", |bench| {
        bench.iter(|| black_box(tower_call(&mut t, &rt)))
    });
    g.finish();
}

/// Runs `per_thread` on two threads started together; the slower thread's time.
fn two_threads(per_thread: impl Fn() -> Duration + Sync) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    per_thread()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

fn closed_2_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker_closed_2_threads");
    let b = omega();
    g.bench_function("omega", |bench| {
        bench.iter_custom(|iters| {
            two_threads(|| {
                timed(iters, || {
                    black_box(b.call_sync(|| Ok::<_, ()>(black_box(1u64))).is_ok());
                })
            })
        })
    });
    let r = Recloser::custom().build();
    g.bench_function("recloser", |bench| {
        bench.iter_custom(|iters| {
            two_threads(|| {
                timed(iters, || {
                    black_box(r.call(|| Ok::<_, ()>(black_box(1u64))).is_ok());
                })
            })
        })
    });
    let f = failsafe_default();
    g.bench_function("failsafe", |bench| {
        bench.iter_custom(|iters| {
            two_threads(|| {
                timed(iters, || {
                    black_box(f.call(|| Ok::<_, ()>(black_box(1u64))).is_ok());
                })
            })
        })
    });
    let t = tower_resilience();
    g.bench_function("tower_resilience", |bench| {
        bench.iter_custom(|iters| {
            two_threads(|| {
                // Clones share the breaker; each thread has its own runtime for backoffs.
                let mut svc = t.clone();
                let rt = runtime();
                timed(iters, || {
                    black_box(tower_call(&mut svc, &rt));
                })
            })
        })
    });
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker_open");
    let b = CircuitBreaker::with_config(
        "bench",
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(1))
            .wait_duration(HOUR),
    )
    .unwrap();
    let _ = b.call_sync(|| Err::<(), _>(()));
    assert!(!b.is_call_permitted());
    g.bench_function("omega", |bench| {
        bench.iter(|| black_box(b.call_sync(|| Ok::<_, ()>(black_box(1u64))).is_err()))
    });
    let r = Recloser::custom().closed_len(1).open_wait(HOUR).build();
    for _ in 0..3 {
        let _ = r.call(|| Err::<(), _>(()));
    }
    assert!(matches!(
        r.call(|| Ok::<_, ()>(())),
        Err(recloser::Error::Rejected)
    ));
    g.bench_function("recloser", |bench| {
        bench.iter(|| black_box(r.call(|| Ok::<_, ()>(black_box(1u64))).is_err()))
    });
    let f = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            1,
            failsafe::backoff::constant(HOUR),
        ))
        .build();
    let _ = f.call(|| Err::<(), _>(()));
    assert!(matches!(
        f.call(|| Ok::<_, ()>(())),
        Err(failsafe::Error::Rejected)
    ));
    g.bench_function("failsafe", |bench| {
        bench.iter(|| black_box(f.call(|| Ok::<_, ()>(black_box(1u64))).is_err()))
    });
    g.finish();
}

criterion_group!(benches, closed, closed_2_threads, open);
criterion_main!(benches);
