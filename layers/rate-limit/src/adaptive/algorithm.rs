//! The three algorithms, as state machines that move a limit once per window of samples.
//!
//! Each takes a [`Window`] (what the requests that completed since the last update say) and
//! returns the new limit, unbounded; the partition clamps it to `[min, max]`.

use std::time::Duration;

/// Which algorithm moves a limit, with its settings. Every setting has a documented default.
///
/// ```
/// use omega_rate_limit::adaptive::{Algorithm, Gradient2, Vegas};
///
/// let vegas = Algorithm::from(Vegas::default());
/// let gentle = Algorithm::from(Gradient2::default().tolerance(1.2));
/// assert_eq!(vegas.name(), "vegas");
/// assert_eq!(gentle.name(), "gradient2");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Algorithm {
    /// TCP Vegas' queue estimate ([`Vegas`]).
    Vegas(Vegas),
    /// Long-term against short-term RTT ([`Gradient2`]).
    Gradient2(Gradient2),
    /// Additive increase, multiplicative decrease ([`Aimd`]).
    Aimd(Aimd),
}

impl Default for Algorithm {
    /// [`Vegas`] with its defaults.
    fn default() -> Self {
        Algorithm::Vegas(Vegas::default())
    }
}

impl Algorithm {
    /// `"vegas"`, `"gradient2"` or `"aimd"` (as configuration files write them).
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Vegas(_) => "vegas",
            Algorithm::Gradient2(_) => "gradient2",
            Algorithm::Aimd(_) => "aimd",
        }
    }
}

impl From<Vegas> for Algorithm {
    fn from(v: Vegas) -> Self {
        Algorithm::Vegas(v)
    }
}

impl From<Gradient2> for Algorithm {
    fn from(g: Gradient2) -> Self {
        Algorithm::Gradient2(g)
    }
}

impl From<Aimd> for Algorithm {
    fn from(a: Aimd) -> Self {
        Algorithm::Aimd(a)
    }
}

/// Vegas, as Netflix's concurrency-limits `VegasLimit` (after TCP Vegas), with its defaults.
///
/// The queue is estimated as `limit × (1 − rtt_noload / rtt)`, where `rtt_noload` is the
/// lowest RTT seen and `rtt` the window's average. With `lg = max(1, ⌊log10(limit)⌋)`:
///
/// - queue ≤ `lg`: the limit grows by `beta × lg` (fast growth while nothing queues);
/// - queue < `alpha × lg`: it grows by `lg`;
/// - queue > `beta × lg`: it shrinks by `lg`;
/// - a window with a drop (an error from the inner service): it shrinks by `lg`;
/// - a window whose highest in-flight count was under half the limit changes nothing (the
///   limit is not what bounds the traffic, so the samples say nothing about it).
///
/// The limit then moves by `smoothing` of the way to the new value. `rtt_noload` is
/// re-measured every `probe_multiplier × limit` windows, jittered by 0.5 to 1, so that a
/// downstream that became slower for good is learnt: for one window the limit drops to 90% of
/// what the estimate says runs without a queue (`limit × rtt_noload / rtt`), so that the
/// queue drains, and that window's lowest RTT is the new `rtt_noload`. (Netflix counts
/// samples and takes the current RTT, which under load is a queued one and moves the limit
/// up a step at every probe; draining first is how its first Gradient limit and BBR probe.)
///
/// Where it differs from Netflix's defaults: `alpha` 2 and `beta` 4 (Netflix: 3 and 6). The
/// limit settles with `alpha..beta × lg` requests queued: with 3 and 6, 6 to 12 at a limit of
/// 100 to 999, up to 12% over a capacity of 100; with 2 and 4, 4 to 8.
///
/// | setting | default |
/// |---|---|
/// | `alpha` | 2 (× lg) |
/// | `beta` | 4 (× lg) |
/// | `smoothing` | 1.0 |
/// | `probe_multiplier` | 30 |
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Vegas {
    pub(crate) alpha: f64,
    pub(crate) beta: f64,
    pub(crate) smoothing: f64,
    pub(crate) probe_multiplier: u32,
}

impl Default for Vegas {
    fn default() -> Self {
        Vegas {
            alpha: 2.0,
            beta: 4.0,
            smoothing: 1.0,
            probe_multiplier: 30,
        }
    }
}

impl Vegas {
    /// The queue (× lg) under which the limit grows (default 2; Netflix's is 3).
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// The queue (× lg) over which the limit shrinks (default 4; Netflix's is 6).
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// How far the limit moves toward each new value, in `(0, 1]` (default 1.0).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// `rtt_noload` is re-measured every `probe_multiplier × limit` windows (default 30).
    pub fn probe_multiplier(mut self, probe_multiplier: u32) -> Self {
        self.probe_multiplier = probe_multiplier;
        self
    }
}

/// Gradient2, after Netflix's concurrency-limits `Gradient2Limit`, with two published fixes
/// and a tighter default tolerance.
///
/// The short-term RTT is the window's average; the long-term RTT an exponential average of
/// them over `long_window` windows (a plain average for the first 10). With
/// `gradient = clamp(tolerance × long / short, 0.5, 1.0)`, the new limit is
/// `limit × gradient + queue`, where `queue = √limit` is added only when `gradient` is 1
/// (nothing queues), and the limit moves by `smoothing` of the way to it. A window with a
/// drop takes the gradient 0.5. When the long-term RTT is over twice the short one (load went
/// away), it is cut by 5% per window.
///
/// Where it differs from Netflix's defaults, and why:
///
/// - `tolerance` 1.05 (Netflix: 1.5). The limit settles where the short-term RTT is
///   `tolerance` times the long-term one; on a saturated downstream, whose latency grows in
///   proportion to the requests over its capacity, 1.5 settles at 1.5 × its capacity or more
///   (measured in this crate's tests), 1.05 within 10% of it.
/// - The queue is added only when nothing queues (Netflix pull request 134): otherwise, under
///   a modest overload, it makes the limit grow without end (issue 137).
/// - The long-term RTT learns `congested_slowdown` (10) times slower from windows whose
///   gradient is under 1, so that a sustained overload does not become the new normal
///   (the drift of issue 137), while a downstream that became slower for good is still learnt.
/// - `queue = √limit`, as Netflix's first Gradient limit; its Gradient2 defaults to 4.
///
/// | setting | default |
/// |---|---|
/// | `tolerance` | 1.05 |
/// | `smoothing` | 0.2 |
/// | `long_window` | 600 windows |
/// | `congested_slowdown` | 10 |
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gradient2 {
    pub(crate) tolerance: f64,
    pub(crate) smoothing: f64,
    pub(crate) long_window: u32,
    pub(crate) congested_slowdown: f64,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2 {
            tolerance: 1.05,
            smoothing: 0.2,
            long_window: 600,
            congested_slowdown: 10.0,
        }
    }
}

impl Gradient2 {
    /// How much the short-term RTT may exceed the long-term one before the limit shrinks
    /// (default 1.05; Netflix's is 1.5).
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// How far the limit moves toward each new value, in `(0, 1]` (default 0.2).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// The span of the long-term RTT's exponential average, in windows (default 600).
    pub fn long_window(mut self, windows: u32) -> Self {
        self.long_window = windows;
        self
    }

    /// How many times slower the long-term RTT learns from congested windows (default 10;
    /// 1 is Netflix's behaviour).
    pub fn congested_slowdown(mut self, slowdown: f64) -> Self {
        self.congested_slowdown = slowdown;
        self
    }
}

/// AIMD: additive increase, multiplicative decrease, as Netflix's `AIMDLimit` with a latency
/// threshold besides its timeout.
///
/// A window with a drop (an error from the inner service), an average RTT over `timeout`, or
/// an average RTT over `latency_tolerance` times the lowest RTT seen multiplies the limit by
/// `backoff`; any other window in which the in-flight count reached half the limit adds
/// `increase`. The lowest RTT is re-measured as [`Vegas`]' `rtt_noload` is, every
/// `probe_multiplier × limit` windows, through one drained window.
///
/// | setting | default |
/// |---|---|
/// | `backoff` | 0.9 |
/// | `increase` | 1 per window |
/// | `latency_tolerance` | 1.2 |
/// | `timeout` | 5 s |
/// | `probe_multiplier` | 30 |
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aimd {
    pub(crate) backoff: f64,
    pub(crate) increase: f64,
    pub(crate) latency_tolerance: f64,
    pub(crate) timeout: Duration,
    pub(crate) probe_multiplier: u32,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            backoff: 0.9,
            increase: 1.0,
            latency_tolerance: 1.2,
            timeout: Duration::from_secs(5),
            probe_multiplier: 30,
        }
    }
}

impl Aimd {
    /// The factor a congested window multiplies the limit by, in `(0, 1)` (default 0.9).
    pub fn backoff(mut self, backoff: f64) -> Self {
        self.backoff = backoff;
        self
    }

    /// What a window without congestion adds (default 1).
    pub fn increase(mut self, increase: u32) -> Self {
        self.increase = f64::from(increase);
        self
    }

    /// The RTT, relative to the lowest seen, over which a window counts as congested
    /// (default 1.2).
    pub fn latency_tolerance(mut self, tolerance: f64) -> Self {
        self.latency_tolerance = tolerance;
        self
    }

    /// The RTT over which a window counts as congested whatever the lowest (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The lowest RTT is re-measured every `probe_multiplier × limit` windows (default 30).
    pub fn probe_multiplier(mut self, probe_multiplier: u32) -> Self {
        self.probe_multiplier = probe_multiplier;
        self
    }
}

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
}
