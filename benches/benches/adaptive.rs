//! The adaptive concurrency layer's Tower call path beside its peers, in one run.
//!
//! `adaptive_call`: one request through the layer to a no-op inner service that answers at
//! once (`poll_ready`, `call`, the response future polled to its end), below the limit, so
//! each iteration is one admission and one completed sample:
//!
//! - `omega_vegas`: `AdaptiveConcurrencyLayer` with Vegas, one partition (admission is a
//!   compare-and-swap on the in-flight count; completion records the RTT with atomics; the
//!   completion that closes a 20 ms window runs the algorithm);
//! - `omega_vegas_per_route`: the same, partitioned by a key read from the request (one of 8
//!   routes);
//! - `tower_resilience_vegas`: tower-resilience 0.13's `AdaptiveLimiterLayer` (feature
//!   `adaptive`) with its Vegas. It waits for a permit in `poll_ready` (a semaphore) where
//!   ours refuses at once, and boxes each response future;
//! - `tower_concurrency_limit`: tower's fixed `ConcurrencyLimit`, the floor (a semaphore,
//!   no measurement).

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use omega_rate_limit::adaptive::{AdaptiveConcurrencyLayer, AdaptiveLimiter, Vegas};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

const ROUTES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

/// One request through `svc`, which answers at once.
#[inline]
fn one<S, Req>(svc: &mut S, req: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    svc.ready().now_or_never().unwrap().unwrap();
    svc.call(req).now_or_never().unwrap().unwrap()
}

fn adaptive_call(c: &mut Criterion) {
    let mut g = c.benchmark_group("adaptive_call");
    let noop = service_fn(|req: usize| async move { Ok::<_, Infallible>(req) });

    let limiter = AdaptiveLimiter::<usize>::builder()
        .algorithm(Vegas::default())
        .build()
        .unwrap();
    let mut omega = AdaptiveConcurrencyLayer::new(limiter).layer(noop);
    g.bench_function("omega_vegas", |b| b.iter(|| black_box(one(&mut omega, 0))));

    let limiter = AdaptiveLimiter::<usize>::builder()
        .algorithm(Vegas::default())
        .partition_by(|r: &usize| Some(ROUTES[*r % ROUTES.len()]))
        .build()
        .unwrap();
    let mut keyed = AdaptiveConcurrencyLayer::new(limiter).layer(noop);
    let mut i = 0usize;
    g.bench_function("omega_vegas_per_route", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(one(&mut keyed, i))
        })
    });

    let vegas = tower_resilience::adaptive::Vegas::builder()
        .build()
        .unwrap();
    let mut peer = tower_resilience::adaptive::AdaptiveLimiterLayer::new(vegas).layer(noop);
    g.bench_function("tower_resilience_vegas", |b| {
        b.iter(|| black_box(one(&mut peer, 0)))
    });

    let mut floor = ConcurrencyLimitLayer::new(1_000).layer(noop);
    g.bench_function("tower_concurrency_limit", |b| {
        b.iter(|| black_box(one(&mut floor, 0)))
    });
    g.finish();
}

criterion_group!(benches, adaptive_call);
criterion_main!(benches);
