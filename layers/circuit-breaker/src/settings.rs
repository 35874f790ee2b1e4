//! The configuration of a breaker: thresholds, window, durations. Changeable while serving
//! through [`crate::CircuitBreaker::reconfigure`].

use std::time::Duration;

use crate::error::ConfigError;

/// The largest count-based window and the largest consecutive-failure threshold.
pub const MAX_WINDOW_CALLS: u32 = 1 << 20;
/// The largest time-based window, in seconds.
pub const MAX_WINDOW_SECONDS: u32 = 3_600;

/// How a breaker in CLOSED decides that its dependency is failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The outcomes of the last `n` calls. Lock-free; the success path reads no clock and, once
    /// the window is full of successes, writes nothing.
    CountBased(u32),
    /// The outcomes of the calls of the last `n` seconds, in one-second buckets. Reads the
    /// clock and takes a short uncontended lock per call.
    TimeBased(u32),
    /// Opens after `n` failures (or slow calls, when a slow-call duration is set) in a row; a
    /// success resets the count. Rates and the minimum number of calls do not apply.
    ConsecutiveFailures(u32),
}

/// The configuration of a [`crate::CircuitBreaker`]. Defaults follow resilience4j, except that
/// slow-call detection is off unless [`slow_call_duration`](Self::slow_call_duration) is set
/// (it costs a clock reading at the start and the end of every call).
///
/// ```
/// use std::time::Duration;
/// use omega_circuit_breaker::{CircuitBreakerConfig, SlidingWindow};
///
/// let config = CircuitBreakerConfig::default()
///     .sliding_window(SlidingWindow::CountBased(20))
///     .minimum_calls(10)
///     .failure_rate_threshold(50.0)
///     .wait_duration(Duration::from_secs(5))
///     .exponential_backoff(2.0, Duration::from_secs(60))
///     .permitted_calls_in_half_open(3);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreakerConfig {
    pub(crate) failure_rate_threshold: f32,
    pub(crate) slow_call_rate_threshold: f32,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) wait_duration: Duration,
    pub(crate) backoff_multiplier: f64,
    pub(crate) max_wait_duration: Duration,
    pub(crate) jitter: f64,
    pub(crate) permitted_calls_in_half_open: u32,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) ramp_up: Option<Duration>,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: None,
            window: SlidingWindow::CountBased(100),
            minimum_calls: 100,
            wait_duration: Duration::from_secs(60),
            backoff_multiplier: 1.0,
            max_wait_duration: Duration::from_secs(60),
            jitter: 0.0,
            permitted_calls_in_half_open: 10,
            max_wait_in_half_open: None,
            ramp_up: None,
        }
    }
}

impl CircuitBreakerConfig {
    /// The default configuration (resilience4j's defaults, slow-call detection off).
    pub fn new() -> Self {
        Self::default()
    }

    /// The failure rate, in percent (0, 100], at or above which the circuit opens. Default 50.
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.failure_rate_threshold = percent;
        self
    }

    /// The slow-call rate, in percent (0, 100], at or above which the circuit opens. Default
    /// 100. Only used with a [`slow_call_duration`](Self::slow_call_duration).
    pub fn slow_call_rate_threshold(mut self, percent: f32) -> Self {
        self.slow_call_rate_threshold = percent;
        self
    }

    /// Calls that take at least this long count as slow. Off by default: with it set, every
    /// call reads the clock when it starts and when it ends.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = Some(duration);
        self
    }

    /// The sliding window. Default: the last 100 calls.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// Calls the window must hold before rates are evaluated. Default 100. For a count-based
    /// window, a value above the window size means the window size.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// How long the circuit stays OPEN before it lets probes through. Default 60 s.
    pub fn wait_duration(mut self, wait: Duration) -> Self {
        self.wait_duration = wait;
        if self.backoff_multiplier <= 1.0 || self.max_wait_duration < wait {
            self.max_wait_duration = wait;
        }
        self
    }

    /// Repeated openings (without a CLOSED in between) wait `multiplier` times longer than
    /// the previous one, up to `max`. Only the breaker's own openings count: one learnt from
    /// another instance (feature `redis`) waits what that instance's wait has left, and does
    /// not raise this breaker's level.
    pub fn exponential_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.backoff_multiplier = multiplier;
        self.max_wait_duration = max;
        self
    }

    /// Randomizes each OPEN wait by up to ± `factor` of it (0 ≤ factor < 1), so that many
    /// instances do not probe together. Default 0. An opening learnt from another instance
    /// (feature `redis`) is jittered the same way: what is left of that instance's wait, ±
    /// `factor`.
    pub fn jitter(mut self, factor: f64) -> Self {
        self.jitter = factor;
        self
    }

    /// The number of probe calls admitted in HALF_OPEN (1 to 1023). Default 10. Changed while
    /// serving ([`crate::CircuitBreaker::reconfigure`]), it applies from the next HALF_OPEN:
    /// the cycle under way admits and waits for the number it started with.
    pub fn permitted_calls_in_half_open(mut self, calls: u32) -> Self {
        self.permitted_calls_in_half_open = calls;
        self
    }

    /// How long HALF_OPEN may wait for its probes before opening again. Default: forever.
    pub fn max_wait_in_half_open(mut self, wait: Duration) -> Self {
        self.max_wait_in_half_open = Some(wait);
        self
    }

    /// After closing, admit traffic gradually: the admitted share grows linearly from 10 % to
    /// 100 % over `duration`. Calls left out are rejected with [`crate::CircuitOpen`].
    pub fn ramp_up(mut self, duration: Duration) -> Self {
        self.ramp_up = Some(duration);
        self
    }

    /// The failure-rate threshold in percent.
    pub fn get_failure_rate_threshold(&self) -> f32 {
        self.failure_rate_threshold
    }

    /// The sliding window.
    pub fn get_sliding_window(&self) -> SlidingWindow {
        self.window
    }

    /// The base OPEN wait.
    pub fn get_wait_duration(&self) -> Duration {
        self.wait_duration
    }

    /// The number of probes in HALF_OPEN.
    pub fn get_permitted_calls_in_half_open(&self) -> u32 {
        self.permitted_calls_in_half_open
    }

    /// Checks every value; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let named = |name: &str, r: Result<(), String>| {
            r.map_err(|e| ConfigError::new(format!("{name} {e}")))
        };
        named(
            "failure_rate_threshold",
            check::percent(self.failure_rate_threshold),
        )?;
        named(
            "slow_call_rate_threshold",
            check::percent(self.slow_call_rate_threshold),
        )?;
        if let Some(d) = self.slow_call_duration {
            named("slow_call_duration", check::above_zero(d))?;
        }
        match self.window {
            SlidingWindow::CountBased(n) | SlidingWindow::ConsecutiveFailures(n) => {
                named("the sliding window", check::window_calls(n))?;
            }
            SlidingWindow::TimeBased(s) => named("a time-based window", check::window_seconds(s))?,
        }
        named("minimum_calls", check::at_least_one(self.minimum_calls))?;
        named("wait_duration", check::above_zero(self.wait_duration))?;
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return Err(ConfigError::new(format!(
                "the backoff multiplier must be at least 1, got {}",
                self.backoff_multiplier
            )));
        }
        if self.max_wait_duration < self.wait_duration {
            return Err(ConfigError::new(
                "the maximum OPEN wait is shorter than the wait duration",
            ));
        }
        if !(self.jitter.is_finite() && (0.0..1.0).contains(&self.jitter)) {
            return Err(ConfigError::new(format!(
                "jitter must be in [0, 1), got {}",
                self.jitter
            )));
        }
        named(
            "permitted_calls_in_half_open",
            check::probes(self.permitted_calls_in_half_open),
        )?;
        if let Some(d) = self.max_wait_in_half_open {
            named("max_wait_in_half_open", check::above_zero(d))?;
        }
        if let Some(d) = self.ramp_up {
            named("ramp_up", check::above_zero(d))?;
        }
        Ok(())
    }

    /// The OPEN wait after `opened_before` consecutive earlier openings, before jitter.
    pub(crate) fn open_wait(&self, opened_before: u32) -> Duration {
        if self.backoff_multiplier <= 1.0 || opened_before == 0 {
            return self.wait_duration;
        }
        let factor = self
            .backoff_multiplier
            .powi(i32::try_from(opened_before).unwrap_or(i32::MAX));
        let secs = self.wait_duration.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_wait_duration.as_secs_f64() {
            self.max_wait_duration
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The effective minimum number of calls.
    pub(crate) fn min_calls(&self) -> u64 {
        match self.window {
            SlidingWindow::CountBased(n) => u64::from(self.minimum_calls.min(n)),
            _ => u64::from(self.minimum_calls),
        }
    }

    /// Whether `failed` / `slow` out of `calls` reach a threshold (rates in percent).
    pub(crate) fn exceeded(
        &self,
        calls: u64,
        failed: u64,
        slow: u64,
    ) -> Option<crate::event::Cause> {
        if calls == 0 {
            return None;
        }
        let rate = |n: u64| n as f64 * 100.0 / calls as f64;
        if failed > 0 && rate(failed) >= f64::from(self.failure_rate_threshold) {
            return Some(crate::event::Cause::FailureRate);
        }
        if self.slow_call_duration.is_some()
            && slow > 0
            && rate(slow) >= f64::from(self.slow_call_rate_threshold)
        {
            return Some(crate::event::Cause::SlowCallRate);
        }
        None
    }
}

/// The rules of single values, shared by [`CircuitBreakerConfig::validate`] and the
/// configuration section's field-by-field validation. Each message reads after the value's
/// name.
pub(crate) mod check {
    use std::time::Duration;

    use super::{MAX_WINDOW_CALLS, MAX_WINDOW_SECONDS};
    use crate::state::MAX_PROBES;

    pub(crate) fn percent(v: f32) -> Result<(), String> {
        if v.is_finite() && v > 0.0 && v <= 100.0 {
            Ok(())
        } else {
            Err(format!("must be a percentage in (0, 100], got {v}"))
        }
    }

    pub(crate) fn above_zero(d: Duration) -> Result<(), String> {
        if d.is_zero() {
            Err("must be above zero".to_owned())
        } else {
            Ok(())
        }
    }

    pub(crate) fn at_least_one(n: u32) -> Result<(), String> {
        if n == 0 {
            Err("must be at least 1".to_owned())
        } else {
            Ok(())
        }
    }

    pub(crate) fn window_calls(n: u32) -> Result<(), String> {
        if n == 0 || n > MAX_WINDOW_CALLS {
            Err(format!("must hold 1 to {MAX_WINDOW_CALLS} calls, got {n}"))
        } else {
            Ok(())
        }
    }

    pub(crate) fn window_seconds(s: u32) -> Result<(), String> {
        if s == 0 || s > MAX_WINDOW_SECONDS {
            Err(format!(
                "must span 1 to {MAX_WINDOW_SECONDS} seconds, got {s}"
            ))
        } else {
            Ok(())
        }
    }

    pub(crate) fn probes(n: u32) -> Result<(), String> {
        if n == 0 || n > MAX_PROBES {
            Err(format!("must be 1 to {MAX_PROBES}, got {n}"))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let bad = [
            CircuitBreakerConfig::default().failure_rate_threshold(0.0),
            CircuitBreakerConfig::default().failure_rate_threshold(101.0),
            CircuitBreakerConfig::default().sliding_window(SlidingWindow::CountBased(0)),
            CircuitBreakerConfig::default().sliding_window(SlidingWindow::TimeBased(0)),
            CircuitBreakerConfig::default().minimum_calls(0),
            CircuitBreakerConfig::default().wait_duration(Duration::ZERO),
            CircuitBreakerConfig::default().jitter(1.0),
            CircuitBreakerConfig::default().permitted_calls_in_half_open(0),
            CircuitBreakerConfig::default().permitted_calls_in_half_open(5000),
            CircuitBreakerConfig::default().exponential_backoff(0.5, Duration::from_secs(90)),
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(CircuitBreakerConfig::default().validate().is_ok());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = CircuitBreakerConfig::default()
            .wait_duration(Duration::from_secs(1))
            .exponential_backoff(2.0, Duration::from_secs(5));
        let waits: Vec<u64> = (0..5).map(|n| c.open_wait(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }
}
