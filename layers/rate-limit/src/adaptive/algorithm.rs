//! The three algorithms, as state machines that move a limit once per window of samples.
//!
//! Each takes a [`Window`] (what the requests that completed since the last update say) and
//! returns the new limit, unbounded; the partition clamps it to `[min, max]`.

use super::settings::{Aimd, Algorithm, Gradient2, Vegas};

/// What the requests that completed in one window say. RTTs are in nanoseconds, of the
/// requests that completed without a drop (a failing call can be fast, and would pass for
/// a downstream without load).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Window {
    pub(crate) rtt: f64,
    pub(crate) min_rtt: f64,
    pub(crate) samples: u32,
    pub(crate) drops: u32,
    pub(crate) max_inflight: u32,
}

/// An algorithm's state between windows.
#[derive(Clone, Debug)]
pub(crate) struct Controller {
    algorithm: Algorithm,
    /// The no-load RTT (Vegas, AIMD) or the long-term RTT (Gradient2); 0 before the first
    /// sample.
    baseline: f64,
    /// The last window's average RTT.
    short: f64,
    windows: u64,
    /// Windows since `rtt_noload` was last re-measured, and the jitter of the next time.
    probe_count: u32,
    probe_jitter: f64,
    /// Probing the no-load RTT: the limit to go back to after the drained window.
    probing: Option<f64>,
    rng: u64,
}

/// A probe lowers the limit for one window to this share of what the estimate says runs
/// without a queue (`limit × rtt_noload / rtt`).
const PROBE_DRAIN: f64 = 0.9;

/// What the no-load RTT tracking says about a window.
enum Step {
    /// Move the limit as the algorithm says.
    Go,
    /// The window set the no-load RTT: keep the limit.
    Hold,
    /// Probing: this limit.
    Limit(f64),
}

/// `max(1, ⌊log10(limit)⌋)`, Netflix's `Log10RootFunction`.
fn lg(limit: f64) -> f64 {
    limit.log10().floor().max(1.0)
}

impl Controller {
    pub(crate) fn new(algorithm: Algorithm, seed: u64) -> Self {
        Controller {
            algorithm,
            baseline: 0.0,
            short: 0.0,
            windows: 0,
            probe_count: 0,
            probe_jitter: 0.0,
            probing: None,
            rng: seed | 1,
        }
    }

    /// The baseline RTT (no-load, or long-term for Gradient2) and the last short-term one, in
    /// nanoseconds.
    pub(crate) fn rtts(&self) -> (f64, f64) {
        (self.baseline, self.short)
    }

    /// A jitter in `[0.5, 1)`.
    fn jitter(&mut self) -> f64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        0.5 + (x >> 11) as f64 / (1u64 << 53) as f64 * 0.5
    }

    /// The no-load RTT of Vegas and AIMD: the lowest seen, re-measured now and then by
    /// lowering the limit for one window under what runs without a queue (so that the queue
    /// drains) and taking that window's lowest RTT.
    fn track_noload(&mut self, limit: f64, w: &Window, probe_multiplier: u32) -> Step {
        if w.samples == 0 {
            return Step::Go;
        }
        self.short = w.rtt;
        if let Some(restore) = self.probing.take() {
            self.baseline = w.min_rtt;
            return Step::Limit(restore);
        }
        if self.probe_jitter == 0.0 {
            self.probe_jitter = self.jitter();
        }
        self.probe_count = self.probe_count.saturating_add(1);
        let due = self.probe_jitter * f64::from(probe_multiplier) * limit;
        if f64::from(self.probe_count) >= due && self.baseline > 0.0 {
            self.probe_count = 0;
            self.probe_jitter = self.jitter();
            self.probing = Some(limit);
            let unqueued = limit * (self.baseline / w.rtt).min(1.0);
            return Step::Limit((unqueued * PROBE_DRAIN).max(1.0));
        }
        if self.baseline == 0.0 || w.min_rtt < self.baseline {
            self.baseline = w.min_rtt;
            return Step::Hold;
        }
        Step::Go
    }

    /// The next limit after `w`, unbounded.
    pub(crate) fn update(&mut self, limit: f64, w: &Window) -> f64 {
        self.windows += 1;
        match self.algorithm {
            Algorithm::Vegas(v) => self.vegas(&v, limit, w),
            Algorithm::Gradient2(g) => self.gradient2(&g, limit, w),
            Algorithm::Aimd(a) => self.aimd(&a, limit, w),
        }
    }

    fn vegas(&mut self, v: &Vegas, limit: f64, w: &Window) -> f64 {
        match self.track_noload(limit, w, v.probe_multiplier) {
            Step::Go => {}
            Step::Hold => return limit,
            Step::Limit(l) => return l,
        }
        let lg = lg(limit);
        let target = if w.drops > 0 {
            limit - lg
        } else if w.samples == 0 || f64::from(w.max_inflight) * 2.0 < limit {
            return limit;
        } else {
            let queue = (limit * (1.0 - self.baseline / w.rtt)).ceil();
            if queue <= lg {
                limit + v.beta * lg
            } else if queue < v.alpha * lg {
                limit + lg
            } else if queue > v.beta * lg {
                limit - lg
            } else {
                return limit;
            }
        };
        (1.0 - v.smoothing) * limit + v.smoothing * target.max(1.0)
    }

    fn gradient2(&mut self, g: &Gradient2, limit: f64, w: &Window) -> f64 {
        if w.samples > 0 {
            let short = w.rtt;
            self.short = short;
            if self.baseline == 0.0 {
                self.baseline = short;
            }
            let congested = g.tolerance * self.baseline / short < 1.0;
            let learnt = self.windows.min(u64::MAX - 1) as f64;
            let mut factor = if learnt < 10.0 {
                1.0 / learnt
            } else {
                2.0 / (f64::from(g.long_window) + 1.0)
            };
            if congested {
                factor /= g.congested_slowdown;
            }
            self.baseline += (short - self.baseline) * factor;
            if self.baseline / short > 2.0 {
                self.baseline *= 0.95;
            }
        }
        let gradient = if w.drops > 0 {
            0.5
        } else if w.samples == 0 || f64::from(w.max_inflight) * 2.0 < limit {
            return limit;
        } else {
            (g.tolerance * self.baseline / w.rtt).clamp(0.5, 1.0)
        };
        let queue = if gradient >= 1.0 { limit.sqrt() } else { 0.0 };
        let target = limit * gradient + queue;
        (1.0 - g.smoothing) * limit + g.smoothing * target
    }

    fn aimd(&mut self, a: &Aimd, limit: f64, w: &Window) -> f64 {
        if let Step::Limit(l) = self.track_noload(limit, w, a.probe_multiplier) {
            return l;
        }
        let timeout = a.timeout.as_nanos() as f64;
        let slow =
            w.samples > 0 && (w.rtt > timeout || w.rtt > a.latency_tolerance * self.baseline);
        if w.drops > 0 || slow {
            limit * a.backoff
        } else if w.samples > 0 && f64::from(w.max_inflight) * 2.0 >= limit {
            limit + a.increase
        } else {
            limit
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: f64 = 1e6;

    fn window(rtt_ms: f64, inflight: u32) -> Window {
        Window {
            rtt: rtt_ms * MS,
            min_rtt: rtt_ms * MS,
            samples: 10,
            drops: 0,
            max_inflight: inflight,
        }
    }

    fn dropped(inflight: u32) -> Window {
        Window {
            drops: 1,
            ..window(10.0, inflight)
        }
    }

    #[test]
    fn log10_is_netflix_integer_root() {
        assert_eq!(lg(1.0), 1.0);
        assert_eq!(lg(9.0), 1.0);
        assert_eq!(lg(99.0), 1.0);
        assert_eq!(lg(100.0), 2.0);
        assert_eq!(lg(1500.0), 3.0);
    }

    #[test]
    fn vegas_grows_fast_without_queue_then_by_log_and_shrinks_over_beta() {
        let mut c = Controller::new(Vegas::default().alpha(3.0).beta(6.0).into(), 1);
        // The first window sets rtt_noload only.
        assert_eq!(c.update(100.0, &window(10.0, 100)), 100.0);
        // No queue: + beta × lg = 12.
        assert_eq!(c.update(100.0, &window(10.0, 100)), 112.0);
        // queue = ceil(100 × (1 − 10/10.5)) = 5 < alpha (6): + lg.
        assert_eq!(c.update(100.0, &window(10.5, 100)), 102.0);
        // queue = 100 × (1 − 10/11) = 9.1 -> 10, between alpha and beta: unchanged.
        assert_eq!(c.update(100.0, &window(11.0, 100)), 100.0);
        // queue = 100 × (1 − 10/20) = 50 > beta (12): − lg.
        assert_eq!(c.update(100.0, &window(20.0, 100)), 98.0);
        // A drop: − lg.
        assert_eq!(c.update(100.0, &dropped(100)), 98.0);
        // App-limited (in flight under half the limit): unchanged.
        assert_eq!(c.update(100.0, &window(20.0, 40)), 100.0);
        assert_eq!(c.rtts().0, 10.0 * MS);
        // The defaults: alpha 2 and beta 4 (× lg).
        let mut c = Controller::new(Vegas::default().into(), 1);
        c.update(100.0, &window(10.0, 100));
        // queue = 100 × (1 − 10/10.5) -> 5, between 4 and 8: unchanged.
        assert_eq!(c.update(100.0, &window(10.5, 100)), 100.0);
        // queue = 100 × (1 − 10/11) -> 10 > 8: − lg.
        assert_eq!(c.update(100.0, &window(11.0, 100)), 98.0);
    }

    #[test]
    fn vegas_probes_rtt_noload_through_a_drained_window() {
        let mut c = Controller::new(Vegas::default().probe_multiplier(1).into(), 7);
        c.update(20.0, &window(10.0, 20));
        // Within `probe_multiplier × limit` (= 20 × jitter) windows the limit drops for one
        // window, whose lowest RTT becomes rtt_noload; then the limit comes back.
        let mut seen = Vec::new();
        for _ in 0..25 {
            seen.push(c.update(20.0, &window(30.0, 20)));
            if c.rtts().0 == 30.0 * MS {
                break;
            }
        }
        assert_eq!(c.rtts().0, 30.0 * MS, "{seen:?}");
        // The probe: 20 × (10 ms / 30 ms) × 0.9 = 6.
        assert_eq!(&seen[seen.len() - 2..], &[6.0, 20.0], "{seen:?}");
    }

    #[test]
    fn gradient2_grows_by_the_queue_only_without_congestion() {
        let mut c = Controller::new(Gradient2::default().into(), 1);
        // Steady RTT: gradient 1, the limit grows by smoothing × √limit = 0.2 × 10.
        let l = c.update(100.0, &window(10.0, 100));
        assert!((l - 102.0).abs() < 1e-9, "{l}");
        // Twice the long-term RTT: gradient 1.05 × 10/20 = 0.525, no queue.
        let l = c.update(100.0, &window(20.0, 100));
        let expected = 0.8 * 100.0 + 0.2 * 100.0 * (1.05 * c.rtts().0 / (20.0 * MS));
        assert!((l - expected).abs() < 1e-6, "{l} vs {expected}");
        assert!(l < 100.0);
        // A drop: gradient 0.5.
        let l = c.update(100.0, &dropped(100));
        assert!((l - 90.0).abs() < 1e-9, "{l}");
        // App-limited: unchanged.
        assert_eq!(c.update(100.0, &window(10.0, 10)), 100.0);
    }

    #[test]
    fn gradient2_long_rtt_learns_slowly_from_congested_windows() {
        let mut fast = Controller::new(Gradient2::default().congested_slowdown(1.0).into(), 1);
        let mut slow = Controller::new(Gradient2::default().into(), 1);
        for c in [&mut fast, &mut slow] {
            for _ in 0..20 {
                c.update(100.0, &window(10.0, 100));
            }
            for _ in 0..100 {
                c.update(100.0, &window(15.0, 100));
            }
        }
        let (f, s) = (fast.rtts().0 / MS, slow.rtts().0 / MS);
        assert!(f > 10.7 && s < 10.2, "fast {f}, slow {s}");
    }

    #[test]
    fn aimd_adds_and_multiplies() {
        let mut c = Controller::new(Aimd::default().into(), 1);
        assert_eq!(c.update(50.0, &window(10.0, 50)), 51.0);
        assert_eq!(c.update(50.0, &window(11.0, 50)), 51.0);
        // Over 1.2 × the lowest RTT.
        assert_eq!(c.update(50.0, &window(13.0, 50)), 45.0);
        assert_eq!(c.update(50.0, &dropped(50)), 45.0);
        // Over the timeout, whatever the baseline.
        let mut c = Controller::new(Aimd::default().timeout(Duration::from_millis(5)).into(), 1);
        assert_eq!(c.update(50.0, &window(10.0, 50)), 45.0);
        // App-limited: unchanged.
        let mut c = Controller::new(Aimd::default().into(), 1);
        assert_eq!(c.update(50.0, &window(10.0, 10)), 50.0);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn windows() -> impl Strategy<Value = Vec<Window>> {
            let w = (1.0f64..100.0, 0u32..50, 0u32..3, 0u32..400).prop_map(
                |(rtt_ms, samples, drops, inflight)| Window {
                    rtt: rtt_ms * MS,
                    min_rtt: rtt_ms * MS * 0.9,
                    samples,
                    drops,
                    max_inflight: inflight,
                },
            );
            proptest::collection::vec(w, 1..200)
        }

        fn algorithms() -> [Algorithm; 3] {
            // Probes off: a probe's way back up after a drained window would be an increase.
            [
                Vegas::default().probe_multiplier(u32::MAX).into(),
                Gradient2::default().into(),
                Aimd::default().probe_multiplier(u32::MAX).into(),
            ]
        }

        proptest! {
            /// Whatever the samples, every algorithm gives a finite limit of at least 1 (before
            /// the bounds) and never raises the limit after a window with a drop.
            #[test]
            fn limits_stay_finite_and_a_drop_never_raises_them(ws in windows(), start in 1.0f64..500.0) {
                for algorithm in algorithms() {
                    let mut c = Controller::new(algorithm, 3);
                    let mut limit = start;
                    for w in &ws {
                        let next = c.update(limit, w);
                        prop_assert!(next.is_finite() && next >= 0.5, "{algorithm:?}: {next}");
                        if w.drops > 0 {
                            prop_assert!(next <= limit, "{algorithm:?} raised {limit} to {next} on a drop");
                        }
                        limit = next.clamp(1.0, 1_000.0);
                    }
                }
            }
        }
    }
}
