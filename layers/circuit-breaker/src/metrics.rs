//! Metrics through the `metrics` crate (feature `metrics`). Handles are registered once per
//! breaker, so recording is an atomic add; the CLOSED success path records nothing (the
//! window's counts are in the health snapshot).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `omega_circuit_breaker_state` | gauge: 0 CLOSED, 1 OPEN, 2 HALF_OPEN, 3 DISABLED, 4 FORCED_OPEN, 5 METRICS_ONLY | `breaker` |
//! | `omega_circuit_breaker_transitions_total` | counter | `breaker`, `from`, `to` |
//! | `omega_circuit_breaker_rejected_total` | counter | `breaker` |
//! | `omega_circuit_breaker_failed_calls_total` | counter | `breaker` |
//! | `omega_circuit_breaker_slow_calls_total` | counter | `breaker` |

use metrics::{Counter, Gauge, counter, gauge};
use omega_core::metrics::name;

use crate::state::State;

pub(crate) struct Metrics {
    breaker: String,
    state: Gauge,
    pub(crate) rejected: Counter,
    failed: Counter,
    slow: Counter,
}

impl Metrics {
    pub(crate) fn new(breaker: &str) -> Metrics {
        let label = breaker.to_owned();
        let state = gauge!(name("circuit_breaker", "state"), "breaker" => label.clone());
        state.set(0.0);
        Metrics {
            state,
            rejected: counter!(name("circuit_breaker", "rejected_total"), "breaker" => label.clone()),
            failed: counter!(name("circuit_breaker", "failed_calls_total"), "breaker" => label.clone()),
            slow: counter!(name("circuit_breaker", "slow_calls_total"), "breaker" => label.clone()),
            breaker: label,
        }
    }

    pub(crate) fn outcome(&self, failed: bool, slow: bool) {
        if failed {
            self.failed.increment(1);
        }
        if slow {
            self.slow.increment(1);
        }
    }

    pub(crate) fn transition(&self, from: State, to: State) {
        self.state.set(to.bits() as f64);
        counter!(
            name("circuit_breaker", "transitions_total"),
            "breaker" => self.breaker.clone(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
    }
}
