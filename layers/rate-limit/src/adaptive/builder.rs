//! Building an [`AdaptiveLimiter`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use omega_core::Clock;
use omega_core::clock::duration_nanos;
use omega_core::key::{KeySource, MissingKey, check_name};

use super::partition::{Partition, Settings};
use super::{
    AdaptiveLimiter, Algorithm, DEFAULT_MAX_PARTITIONS, Inner, LimitListener, OVERFLOW_PARTITION,
    Partitions,
};
use crate::error::ConfigError;

/// The default lower bound on a limit.
pub const DEFAULT_MIN: u32 = 1;
/// The default upper bound on a limit.
pub const DEFAULT_MAX: u32 = 1_000;
/// The default starting limit (Netflix's `initialLimit`), clamped into `[min, max]`.
pub const DEFAULT_INITIAL: u32 = 20;
/// The default shortest window between two updates of a limit.
pub const DEFAULT_MIN_WINDOW: Duration = Duration::from_millis(20);
/// The default fewest samples in a window.
pub const DEFAULT_MIN_SAMPLES: u32 = 10;

/// Builds an [`AdaptiveLimiter`] ([`AdaptiveLimiter::builder`]).
///
/// | setting | default |
/// |---|---|
/// | [`algorithm`](Self::algorithm) | [`Vegas`](super::Vegas) with its defaults |
/// | [`min`](Self::min) / [`max`](Self::max) | 1 / 1,000 |
/// | [`initial`](Self::initial) | 20, clamped into `[min, max]` |
/// | [`window`](Self::window) | at least 20 ms and 10 samples |
/// | [`partition_by`](Self::partition_by) | none: one limit for every request |
/// | [`on_missing_key`](Self::on_missing_key) | `Skip`: a request without a key is not limited |
/// | [`max_partitions`](Self::max_partitions) | 1,024 (later keys share one) |
/// | [`clock`](Self::clock) | [`Clock::fast`] |
/// | [`name`](Self::name) | `"adaptive"` |
pub struct AdaptiveLimiterBuilder<Req> {
    algorithm: Algorithm,
    min: u32,
    max: u32,
    initial: Option<u32>,
    min_window: Duration,
    min_samples: u32,
    key: Option<Box<dyn KeySource<Req>>>,
    missing: MissingKey,
    max_partitions: usize,
    clock: Clock,
    name: String,
    listener: Option<Arc<dyn LimitListener>>,
    #[cfg(feature = "redis")]
    cluster: Option<super::Cluster>,
}

impl<Req> std::fmt::Debug for AdaptiveLimiterBuilder<Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimiterBuilder")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<Req: 'static> AdaptiveLimiterBuilder<Req> {
    pub(crate) fn new() -> Self {
        AdaptiveLimiterBuilder {
            algorithm: Algorithm::default(),
            min: DEFAULT_MIN,
            max: DEFAULT_MAX,
            initial: None,
            min_window: DEFAULT_MIN_WINDOW,
            min_samples: DEFAULT_MIN_SAMPLES,
            key: None,
            missing: MissingKey::Skip,
            max_partitions: DEFAULT_MAX_PARTITIONS,
            clock: Clock::fast(),
            name: "adaptive".into(),
            listener: None,
            #[cfg(feature = "redis")]
            cluster: None,
        }
    }

    /// The algorithm ([`Vegas`](super::Vegas), [`Gradient2`](super::Gradient2) or
    /// [`Aimd`](super::Aimd), with their settings).
    pub fn algorithm(mut self, algorithm: impl Into<Algorithm>) -> Self {
        self.algorithm = algorithm.into();
        self
    }

    /// The lowest limit (at least 1).
    pub fn min(mut self, min: u32) -> Self {
        self.min = min;
        self
    }

    /// The highest limit.
    pub fn max(mut self, max: u32) -> Self {
        self.max = max;
        self
    }

    /// The limit every partition starts with (default 20, clamped into `[min, max]`).
    pub fn initial(mut self, initial: u32) -> Self {
        self.initial = Some(initial);
        self
    }

    /// A window closes (and the limit moves) at the first completion at least `min_window`
    /// after it opened with at least `min_samples` samples, or with a drop. Only requests
    /// admitted after it opened are sampled, so a window is also at least one RTT long.
    pub fn window(mut self, min_window: Duration, min_samples: u32) -> Self {
        self.min_window = min_window;
        self.min_samples = min_samples;
        self
    }

    /// One limit per key of `source` (a route, a downstream, ...) instead of one for every
    /// request.
    pub fn partition_by(mut self, source: impl KeySource<Req>) -> Self {
        self.key = Some(Box::new(source));
        self
    }

    /// What a request without a key means when partitioned: not limited (`Skip`, the
    /// default) or refused with 400 (`Reject`).
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }

    /// The most partitions; keys seen after that share the partition
    /// [`OVERFLOW_PARTITION`].
    pub fn max_partitions(mut self, max: usize) -> Self {
        self.max_partitions = max;
        self
    }

    /// The clock RTTs are measured with (default [`Clock::fast`]; tests that pause tokio's
    /// clock pass [`Clock::system`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The limiter's name, the `adaptive` label of its metrics (default `"adaptive"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Tells `listener` every limit a window sets ([`AdaptiveRate`](super::AdaptiveRate)
    /// makes a rate follow it).
    pub fn on_update(mut self, listener: impl LimitListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Cluster mode (feature `redis`): the instances that use the same Redis, name and
    /// partition share `cluster`'s budget of requests in flight, each capped at its share
    /// ([`Cluster`](super::Cluster)). The limiter must be built within a tokio runtime.
    #[cfg(feature = "redis")]
    pub fn cluster(mut self, cluster: super::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The limiter, or what is wrong with the settings.
    pub fn build(self) -> Result<AdaptiveLimiter<Req>, ConfigError> {
        check_name("adaptive limiter name", &self.name).map_err(|e| ConfigError(e.to_string()))?;
        check_bounds(self.min, self.max).map_err(ConfigError)?;
        if let Some(initial) = self.initial
            && !(self.min..=self.max).contains(&initial)
        {
            return Err(ConfigError(format!(
                "the initial limit {initial} is outside [{}, {}]",
                self.min, self.max
            )));
        }
        check_algorithm(&self.algorithm).map_err(ConfigError)?;
        if self.min_samples == 0 {
            return Err(ConfigError("a window needs at least 1 sample".into()));
        }
        if self.max_partitions == 0 {
            return Err(ConfigError("max_partitions must be at least 1".into()));
        }
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.cluster {
            cluster.check()?;
        }
        let settings = Arc::new(Settings {
            name: self.name.into(),
            min: self.min,
            max: self.max,
            initial: self
                .initial
                .unwrap_or(super::builder::DEFAULT_INITIAL.clamp(self.min, self.max)),
            min_window: duration_nanos(self.min_window),
            min_samples: self.min_samples,
            clock: self.clock,
            listener: self.listener,
        });
        let algorithm = self.algorithm;
        let partition = |name: &str, seed| {
            Arc::new(Partition::new(
                name.into(),
                settings.clone(),
                algorithm,
                seed,
            ))
        };
        let partitions = match self.key {
            None => Partitions::Global(partition("", 0)),
            Some(source) => Partitions::Keyed {
                source,
                missing: self.missing,
                map: ArcSwap::from_pointee(HashMap::default()),
                insert: Mutex::new(()),
                max: self.max_partitions,
                overflow: partition(OVERFLOW_PARTITION, 0),
            },
        };
        let inner = Arc::new(Inner {
            algorithm,
            settings,
            partitions,
            #[cfg(feature = "redis")]
            cluster: self.cluster.map(super::Cluster::into_task),
        });
        #[cfg(feature = "redis")]
        super::cluster::start(&inner);
        Ok(AdaptiveLimiter { inner })
    }
}

/// `min` at least 1 and not above `max`.
pub(crate) fn check_bounds(min: u32, max: u32) -> Result<(), String> {
    if min == 0 {
        return Err("min must be at least 1: a limit of 0 admits nothing".into());
    }
    if max < min {
        return Err(format!("max ({max}) is below min ({min})"));
    }
    Ok(())
}

/// Settings an algorithm cannot work with.
fn check_algorithm(algorithm: &Algorithm) -> Result<(), String> {
    let unit = |what: &str, v: f64| {
        if v > 0.0 && v <= 1.0 {
            Ok(())
        } else {
            Err(format!("{what} must be in (0, 1], not {v}"))
        }
    };
    match algorithm {
        Algorithm::Vegas(v) => {
            unit("vegas smoothing", v.smoothing)?;
            if !(v.alpha > 0.0 && v.beta > v.alpha) {
                return Err(format!(
                    "vegas needs 0 < alpha < beta, not alpha {} and beta {}",
                    v.alpha, v.beta
                ));
            }
        }
        Algorithm::Gradient2(g) => {
            unit("gradient2 smoothing", g.smoothing)?;
            if !(g.tolerance >= 1.0 && g.tolerance.is_finite()) {
                return Err(format!(
                    "gradient2 tolerance must be at least 1, not {}",
                    g.tolerance
                ));
            }
            if g.long_window == 0
                || g.congested_slowdown
                    .partial_cmp(&1.0)
                    .is_none_or(|o| o.is_lt())
            {
                return Err("gradient2 needs long_window ≥ 1 and congested_slowdown ≥ 1".into());
            }
        }
        Algorithm::Aimd(a) => {
            if !(a.backoff > 0.0 && a.backoff < 1.0) {
                return Err(format!("aimd backoff must be in (0, 1), not {}", a.backoff));
            }
            if a.latency_tolerance
                .partial_cmp(&1.0)
                .is_none_or(|o| o.is_lt())
                || a.timeout.is_zero()
            {
                return Err("aimd needs latency_tolerance ≥ 1 and a timeout longer than 0".into());
            }
        }
    }
    Ok(())
}
