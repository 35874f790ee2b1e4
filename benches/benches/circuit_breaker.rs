//! The circuit breaker beside recloser, failsafe and tower-resilience, in one run.
//!
//! - `circuit_breaker_closed`: a successful call through a CLOSED breaker, the inner call a
//!   constant (each crate through its own decorator: omega's and recloser's / failsafe's
//!   `call`, tower-resilience's service over a ready `Service`).
//! - `circuit_breaker_closed_2_threads`: the same, two threads on one shared breaker; the time
//!   is per call per thread.
//! - `circuit_breaker_open`: a call rejected by an OPEN breaker (a real OPEN with a long wait,
//!   not a forced state).
//! - `circuit_breaker_tower` and `circuit_breaker_tower_2_threads`: a successful request
//!   through each crate's Tower path over the same ready service: `poll_ready`, `call`, and
//!   the response future polled to its end. omega's `CircuitBreakerLayer`, tower-resilience's
//!   layer; recloser and failsafe have no Tower layer, so their future decorators
//!   (`AsyncRecloser::call`, `failsafe::futures::CircuitBreaker::call`) sit in the smallest
//!   service that delegates `poll_ready` and wraps the inner future. Two threads: each drives
//!   its own clone of one service (clones share the breaker); the time is per call per thread.
//!
//! Every breaker uses its defaults except where a test needs an OPEN circuit.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use omega_circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, SlidingWindow,
};
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
    type Error = Infallible;
    type Future = std::future::Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
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

/// omega's Tower path: `CircuitBreakerLayer` over the same service.
type Omega = omega_circuit_breaker::CircuitBreakerService<Cheap>;

fn omega_tower() -> Omega {
    use tower_layer::Layer;
    CircuitBreakerLayer::new(omega()).layer(Cheap)
}

/// recloser has no Tower layer: its future decorator in the smallest service around `Cheap`.
#[derive(Clone)]
struct RecloserService {
    inner: Cheap,
    breaker: recloser::AsyncRecloser,
}

impl Service<()> for RecloserService {
    type Response = u64;
    type Error = recloser::Error<Infallible>;
    type Future =
        recloser::RecloserFuture<std::future::Ready<Result<u64, Infallible>>, recloser::AnyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    fn call(&mut self, req: ()) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

fn recloser_tower() -> RecloserService {
    RecloserService {
        inner: Cheap,
        breaker: recloser::AsyncRecloser::from(Recloser::custom().build()),
    }
}

/// failsafe has no Tower layer: its future decorator in the smallest service around `Cheap`.
#[derive(Clone)]
struct FailsafeService<B> {
    inner: Cheap,
    breaker: B,
}

impl<B: failsafe::futures::CircuitBreaker> Service<()> for FailsafeService<B> {
    type Response = u64;
    type Error = failsafe::Error<Infallible>;
    type Future = failsafe::futures::ResponseFuture<
        std::future::Ready<Result<u64, Infallible>>,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: ()) -> Self::Future {
        failsafe::futures::CircuitBreaker::call(&self.breaker, self.inner.call(req))
    }
}

fn failsafe_tower() -> FailsafeService<impl failsafe::futures::CircuitBreaker + Clone + Send + Sync>
{
    FailsafeService {
        inner: Cheap,
        breaker: failsafe::Config::new().build(),
    }
}

/// One call through a tower service: poll_ready, call, and poll the response future; the rare
/// `Pending` (tower-resilience backs off 1 ms on a contended lock) is driven by the runtime.
fn tower_call<S: Service<()>>(svc: &mut S, rt: &tokio::runtime::Runtime) -> bool
where
    S::Error: std::fmt::Debug,
{
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
    if let Some(n) = rows::iters() {
        rows::run(n);
        std::process::exit(0);
    }
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

fn tower(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker_tower");
    let rt = runtime();
    let mut o = omega_tower();
    g.bench_function("omega", |bench| {
        bench.iter(|| black_box(tower_call(&mut o, &rt)))
    });
    let mut r = recloser_tower();
    g.bench_function("recloser", |bench| {
        bench.iter(|| black_box(tower_call(&mut r, &rt)))
    });
    let mut f = failsafe_tower();
    g.bench_function("failsafe", |bench| {
        bench.iter(|| black_box(tower_call(&mut f, &rt)))
    });
    let mut t = tower_resilience();
    g.bench_function("tower_resilience", |bench| {
        bench.iter(|| black_box(tower_call(&mut t, &rt)))
    });
    g.finish();
}

/// Two threads, each with its own clone of `svc` (clones share the breaker) and its own
/// runtime for the rare `Pending`; the slower thread's time.
fn tower_2_threads_on<S>(iters: u64, svc: &S) -> Duration
where
    S: Service<()> + Clone + Send + Sync,
    S::Error: std::fmt::Debug,
{
    two_threads(|| {
        let mut svc = svc.clone();
        let rt = runtime();
        timed(iters, || {
            black_box(tower_call(&mut svc, &rt));
        })
    })
}

fn tower_2_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker_tower_2_threads");
    let o = omega_tower();
    g.bench_function("omega", |bench| {
        bench.iter_custom(|iters| tower_2_threads_on(iters, &o))
    });
    let r = recloser_tower();
    g.bench_function("recloser", |bench| {
        bench.iter_custom(|iters| tower_2_threads_on(iters, &r))
    });
    let f = failsafe_tower();
    g.bench_function("failsafe", |bench| {
        bench.iter_custom(|iters| tower_2_threads_on(iters, &f))
    });
    let t = tower_resilience();
    g.bench_function("tower_resilience", |bench| {
        bench.iter_custom(|iters| tower_2_threads_on(iters, &t))
    });
    g.finish();
}

criterion_group!(
    benches,
    closed,
    closed_2_threads,
    open,
    tower,
    tower_2_threads
);
criterion_main!(benches);

/// With `OMEGA_BENCH_ITERS=n` set, the bench runs `n` calls of each `circuit_breaker_closed`
/// row in one function per row (`rows::closed_omega`, ...) and nothing else, for instruction
/// counts that do not depend on the machine's load: `OMEGA_BENCH_ITERS=100000 valgrind
/// --tool=callgrind <bench binary>`, then `callgrind_annotate --inclusive=yes` and the rows'
/// totals divided by `n`.
mod rows {
    use super::*;

    pub(super) fn iters() -> Option<u64> {
        std::env::var("OMEGA_BENCH_ITERS").ok()?.parse().ok()
    }

    pub(super) fn run(n: u64) {
        let b = omega();
        let r = Recloser::custom().build();
        let f = failsafe_default();
        closed_omega(&b, 1_000);
        closed_recloser(&r, 1_000);
        closed_failsafe(&f, 1_000);
        closed_omega(&b, n);
        closed_recloser(&r, n);
        closed_failsafe(&f, n);
    }

    #[inline(never)]
    fn closed_omega(b: &CircuitBreaker, n: u64) {
        for _ in 0..n {
            black_box(b.call_sync(|| Ok::<_, ()>(black_box(1u64))).is_ok());
        }
    }

    #[inline(never)]
    fn closed_recloser(r: &Recloser, n: u64) {
        for _ in 0..n {
            black_box(r.call(|| Ok::<_, ()>(black_box(1u64))).is_ok());
        }
    }

    #[inline(never)]
    fn closed_failsafe(f: &(impl failsafe::CircuitBreaker + Sync), n: u64) {
        for _ in 0..n {
            black_box(f.call(|| Ok::<_, ()>(black_box(1u64))).is_ok());
        }
    }
}
