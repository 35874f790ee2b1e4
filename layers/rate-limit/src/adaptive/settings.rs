//! The algorithms' settings: which one moves a limit, and with what, each with its defaults.

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
