//! [`HealthSnapshot`]: what a breaker's state, window and deadlines say right now.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use omega_core::Nanos;

use crate::breaker::{CircuitBreaker, NEVER};
use crate::state::{Probes, RAMP, State};
use crate::window::Counts;

/// A snapshot of a breaker's health.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSnapshot {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The current state.
    pub state: State,
    /// The failure rate in percent over the window (over the probes in HALF_OPEN); `None`
    /// while fewer calls than the minimum were recorded.
    pub failure_rate: Option<f32>,
    /// The slow-call rate in percent, like `failure_rate`.
    pub slow_call_rate: Option<f32>,
    /// Calls in the window (completed probes in HALF_OPEN).
    pub calls: u64,
    /// Failed calls in the window.
    pub failed_calls: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// Calls rejected since the breaker was created.
    pub rejected_calls: u64,
    /// Probe permits left (HALF_OPEN only).
    pub probes_left: Option<u32>,
    /// Time until the next transition the breaker makes by itself: the end of the OPEN wait,
    /// of the HALF_OPEN maximum wait, or of the ramp-up after closing.
    pub next_transition_in: Option<Duration>,
}

impl CircuitBreaker {
    /// A snapshot of the breaker's health.
    pub fn health(&self) -> HealthSnapshot {
        let state = self.state();
        let inner = &*self.inner;
        let cfg = inner.config.load();
        let now = inner.clock.now();
        let (counts, probes_left, min) = if state == State::HalfOpen {
            let p = Probes::unpack(inner.probes.load(Ordering::Acquire));
            let c = Counts {
                calls: u64::from(p.done),
                failed: u64::from(p.failed),
                slow: u64::from(p.slow),
            };
            (c, Some(p.left), 1)
        } else {
            let c = inner.window.load().counts(|| now);
            (c, None, cfg.min_calls())
        };
        let rate = |n: u64| {
            (counts.calls >= min && counts.calls > 0)
                .then(|| (n as f64 * 100.0 / counts.calls as f64) as f32)
        };
        let until = |t: Nanos| (t != NEVER).then(|| Duration::from_nanos(t.saturating_sub(now)));
        let next_transition_in = match state {
            State::Open => until(inner.open_until.load(Ordering::Acquire)),
            State::HalfOpen => until(inner.half_open_until.load(Ordering::Acquire)),
            State::Closed if inner.word.load(Ordering::Acquire) & RAMP != 0 => {
                until(inner.ramp_until.load(Ordering::Acquire))
            }
            _ => None,
        };
        HealthSnapshot {
            name: inner.name.clone(),
            state,
            failure_rate: rate(counts.failed),
            slow_call_rate: if cfg.slow_call_duration.is_some() {
                rate(counts.slow)
            } else {
                None
            },
            calls: counts.calls,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            rejected_calls: inner.rejected.load(Ordering::Relaxed),
            probes_left,
            next_transition_in,
        }
    }
}
