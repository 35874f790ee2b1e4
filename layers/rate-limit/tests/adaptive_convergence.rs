//! Convergence of the adaptive concurrency limits against a simulated downstream, under
//! tokio's paused clock.
//!
//! The downstream has a capacity of `N` concurrent calls: a call takes 10 ms while at most `N`
//! are in flight, and `10 ms × in_flight / N` past that (a server with `N` workers and a
//! queue). A load generator offers more concurrency than the limit admits (every
//! millisecond it sends requests until one is refused, up to `3 × N` outstanding). The
//! capacity halves half way. The limit is sampled every 10 ms (a window lasts at least 20 ms,
//! so no limit goes unseen). Run with `--nocapture` to see each curve (time → limit).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;
use std::time::Duration;

use omega_core::Clock;
use omega_rate_limit::adaptive::{
    AdaptiveConcurrencyLayer, AdaptiveLimiter, AdaptiveLimiterBuilder, AdaptiveRate, Aimd,
    Algorithm, ConcurrencyLimited, Gradient2, Vegas,
};
use omega_rate_limit::{Limit, Quota, RateLimiter};
use tokio::time::Instant;
use tower::{Layer, Service, service_fn};

const N: u32 = 100;
const BASE: Duration = Duration::from_millis(10);
/// When the capacity halves, and when the run ends.
const HALVE_AT: Duration = Duration::from_secs(10);
const END: Duration = Duration::from_secs(20);
const SAMPLE: Duration = Duration::from_millis(10);

/// One sample of a run.
#[derive(Clone, Copy, Debug)]
struct Point {
    t: Duration,
    limit: u32,
    inflight: u32,
    rtt: Duration,
    baseline: Duration,
}

/// Runs the simulation with a limiter built from `builder`; returns the curve.
async fn simulate(builder: AdaptiveLimiterBuilder<()>) -> Vec<Point> {
    let limiter = builder.clock(Clock::system()).build().unwrap();
    run(limiter).await
}

async fn run(limiter: AdaptiveLimiter<()>) -> Vec<Point> {
    let capacity = Arc::new(AtomicU32::new(N));
    let busy = Arc::new(AtomicU32::new(0));
    let outstanding = Arc::new(AtomicU32::new(0));
    let downstream = {
        let (capacity, busy) = (capacity.clone(), busy.clone());
        service_fn(move |()| {
            let in_flight = busy.fetch_add(1, Ordering::SeqCst) + 1;
            let cap = capacity.load(Ordering::SeqCst);
            let latency = BASE.mul_f64((f64::from(in_flight) / f64::from(cap)).max(1.0));
            let busy = busy.clone();
            async move {
                tokio::time::sleep(latency).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(())
            }
        })
    };
    let mut svc = AdaptiveConcurrencyLayer::new(limiter.clone()).layer(downstream);
    let start = Instant::now();
    let mut curve = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        tick.tick().await;
        let t = start.elapsed();
        if t >= END {
            break;
        }
        if t >= HALVE_AT {
            capacity.store(N / 2, Ordering::SeqCst);
        }
        if t >= next_sample {
            let e = limiter.estimate("").unwrap();
            curve.push(Point {
                t,
                limit: e.limit(),
                inflight: limiter.inflight("").unwrap(),
                rtt: e.rtt(),
                baseline: e.baseline_rtt(),
            });
            next_sample += SAMPLE;
        }
        // Offer requests until one is refused.
        while outstanding.load(Ordering::SeqCst) < 3 * N {
            let mut call = Box::pin(svc.call(()));
            let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            match first {
                Poll::Ready(Err(e)) => {
                    assert!(e.is::<ConcurrencyLimited>(), "{e}");
                    break;
                }
                Poll::Ready(Ok(())) => unreachable!("the downstream takes at least 10 ms"),
                Poll::Pending => {
                    outstanding.fetch_add(1, Ordering::SeqCst);
                    let outstanding = outstanding.clone();
                    tokio::spawn(async move {
                        call.await.unwrap();
                        outstanding.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        }
    }
    curve
}

/// What a curve must show: within `converge` of the capacity by 5 s (after the start and
/// after the halving), and within `stay` of it from then on.
#[derive(Clone, Copy, Debug)]
struct Bands {
    converge: f64,
    stay: f64,
}

/// What one phase of a curve (a capacity) shows: when the limit first got within 25% and
/// within 10% of the capacity, and the band it stayed in after getting within the converging
/// band (min and max limit, relative to the capacity).
#[derive(Debug)]
struct Phase {
    within_25: Option<Duration>,
    within_10: Option<Duration>,
    band: (f64, f64),
}

/// Both phases: capacity `N`, then `N / 2` after the halving.
#[derive(Debug)]
struct Summary {
    before: Phase,
    after: Phase,
}

fn check(curve: &[Point], bands: Bands) -> Result<Summary, String> {
    let phase = |from: Duration, to: Duration, cap: u32| -> Result<Phase, String> {
        let points: Vec<&Point> = curve.iter().filter(|p| p.t >= from && p.t < to).collect();
        let rel = |p: &Point| f64::from(p.limit) / f64::from(cap) - 1.0;
        let within = |band: f64| {
            points
                .iter()
                .find(|p| rel(p).abs() <= band + 1e-9)
                .map(|p| p.t - from)
        };
        let first = points
            .iter()
            .position(|p| rel(p).abs() <= bands.converge + 1e-9)
            .ok_or_else(|| format!("never within {:.0}% of {cap}", bands.converge * 100.0))?;
        let took = points[first].t - from;
        if took > Duration::from_secs(5) {
            return Err(format!(
                "took {took:?} to get within {:.0}% of {cap}",
                bands.converge * 100.0
            ));
        }
        let mut band = (f64::MAX, f64::MIN);
        for p in &points[first..] {
            let r = rel(p);
            band = (band.0.min(r), band.1.max(r));
            if r.abs() > bands.stay + 1e-9 {
                return Err(format!(
                    "left ±{:.0}% of {cap} at {:?}: limit {}",
                    bands.stay * 100.0,
                    p.t,
                    p.limit
                ));
            }
        }
        Ok(Phase {
            within_25: within(0.25),
            within_10: within(0.10),
            band,
        })
    };
    Ok(Summary {
        before: phase(Duration::ZERO, HALVE_AT, N)?,
        after: phase(HALVE_AT, END, N / 2)?,
    })
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn print(name: &str, curve: &[Point], result: &Result<Summary, String>) {
    println!(
        "\n{name}: capacity {N}, halved to {} at {HALVE_AT:?}",
        N / 2
    );
    println!(
        "{:>6} {:>6} {:>9} {:>8} {:>9}",
        "t (s)", "limit", "in flight", "rtt ms", "base ms"
    );
    // ADAPTIVE_CURVE_STEP=1 prints every 10 ms sample.
    let step = std::env::var("ADAPTIVE_CURVE_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    for p in curve.iter().step_by(step) {
        println!(
            "{:>6.1} {:>6} {:>9} {:>8.2} {:>9.2}",
            p.t.as_secs_f64(),
            p.limit,
            p.inflight,
            p.rtt.as_secs_f64() * 1e3,
            p.baseline.as_secs_f64() * 1e3
        );
    }
    match result {
        Ok(s) => {
            for (cap, phase, what) in [
                (N, &s.before, "from the start"),
                (N / 2, &s.after, "after the halving"),
            ] {
                println!(
                    "{name}: capacity {cap}, {what}: within 25% after {}, within 10% after {}, \
                     then {:+.0}%..{:+.0}%",
                    secs(phase.within_25),
                    secs(phase.within_10),
                    phase.band.0 * 100.0,
                    phase.band.1 * 100.0
                );
            }
        }
        Err(e) => println!("{name}: {e}"),
    }
}

async fn converges(name: &str, algorithm: Algorithm, bands: Bands) {
    let curve = simulate(AdaptiveLimiter::builder().algorithm(algorithm)).await;
    let result = check(&curve, bands);
    print(name, &curve, &result);
    result.unwrap();
}

const TIGHT: Bands = Bands {
    converge: 0.10,
    stay: 0.20,
};

#[tokio::test(start_paused = true)]
async fn vegas_converges_and_follows_a_halving() {
    converges("vegas", Vegas::default().into(), TIGHT).await;
}

#[tokio::test(start_paused = true)]
async fn gradient2_converges_and_follows_a_halving() {
    converges("gradient2", Gradient2::default().into(), TIGHT).await;
}

#[tokio::test(start_paused = true)]
async fn aimd_converges_and_follows_a_halving() {
    let bands = Bands {
        converge: 0.25,
        stay: 0.25,
    };
    converges("aimd", Aimd::default().into(), bands).await;
}

/// The check catches a limiter that does not adapt: a limit fixed at the maximum never gets
/// near the capacity, and one fixed at the capacity does not follow the halving.
#[tokio::test(start_paused = true)]
async fn a_fixed_limit_fails_the_check() {
    for fixed in [1_000, N] {
        let curve = simulate(AdaptiveLimiter::builder().min(fixed).max(fixed)).await;
        let result = check(&curve, TIGHT);
        print(&format!("fixed at {fixed}"), &curve, &result);
        assert!(result.is_err(), "a limit fixed at {fixed} passed");
    }
}

/// Netflix's tolerance of 1.5 lets the short-term RTT reach 1.5 × the long-term one before
/// the limit shrinks: on this downstream it settles far above the capacity, which is why the
/// default here is 1.05.
#[tokio::test(start_paused = true)]
async fn gradient2_with_netflix_tolerance_settles_above_capacity() {
    let curve =
        simulate(AdaptiveLimiter::builder().algorithm(Gradient2::default().tolerance(1.5))).await;
    let result = check(&curve, TIGHT);
    print("gradient2, tolerance 1.5", &curve, &result);
    let settled: Vec<u32> = curve
        .iter()
        .filter(|p| p.t >= Duration::from_secs(5) && p.t < HALVE_AT)
        .map(|p| p.limit)
        .collect();
    let mean = settled.iter().sum::<u32>() as f64 / settled.len() as f64;
    assert!(result.is_err() && mean > 1.3 * f64::from(N), "mean {mean}");
}

/// A GCRA limit whose rate follows the adaptive limit: `limit` per RTT, which is what the
/// downstream serves (`N` per 10 ms), before and after the halving.
#[tokio::test(start_paused = true)]
async fn a_rate_follows_the_downstream() {
    let rate = RateLimiter::<()>::builder()
        .limit(Limit::global("downstream", Quota::per_second(1)))
        .build()
        .unwrap();
    let limiter = AdaptiveLimiter::<()>::builder()
        .on_update(AdaptiveRate::new(rate.clone(), "downstream").unwrap())
        .clock(Clock::system())
        .build()
        .unwrap();
    let follow = tokio::spawn({
        let rate = rate.clone();
        async move {
            let start = Instant::now();
            let mut seen = Vec::new();
            for at in [
                HALVE_AT - Duration::from_secs(1),
                END - Duration::from_secs(1),
            ] {
                tokio::time::sleep_until(start + at).await;
                let (_, q) = rate.quotas()[0].clone();
                println!("at {at:?}: {q:?}");
                seen.push(q);
            }
            seen
        }
    });
    let _ = run(limiter).await;
    let quotas = follow.await.unwrap();
    let per_second = |q: &Quota| 1.0 / q.emission_interval().as_secs_f64();
    let (before, after) = (per_second(&quotas[0]), per_second(&quotas[1]));
    println!(
        "rate before the halving {before:.0}/s, after {after:.0}/s (capacity {}/s, then {}/s)",
        N * 100,
        N * 50
    );
    let served = f64::from(N) / BASE.as_secs_f64();
    assert!((before / served - 1.0).abs() < 0.2, "{before}");
    assert!((after / (served / 2.0) - 1.0).abs() < 0.2, "{after}");
}
