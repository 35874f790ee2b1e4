//! The circuit breaker's section of a configuration file (feature `serde`).
//!
//! ```
//! use omega_circuit_breaker::config::BreakerConfig;
//! use omega_core::config::{Issues, from_json};
//!
//! let section: BreakerConfig = from_json(r#"{ "failure_rate": 50, "window": 20, "wait": "5s" }"#)?;
//! let mut issues = Issues::new();
//! section.validate(&mut issues);
//! assert!(issues.is_empty());
//! let config = section.circuit_breaker()?; // a CircuitBreakerConfig
//! assert_eq!(config.get_wait_duration(), std::time::Duration::from_secs(5));
//!
//! let bad: BreakerConfig = from_json(r#"{ "failure_rate": 150, "probes": 0 }"#)?;
//! let mut issues = Issues::new();
//! bad.validate(&mut *issues.at("upstreams.api.breaker"));
//! assert_eq!(
//!     issues.into_result().unwrap_err().to_string(),
//!     "upstreams.api.breaker.failure_rate: must be a percentage in (0, 100], got 150\n\
//!      upstreams.api.breaker.probes: must be 1 to 1023, got 0"
//! );
//! # Ok::<(), omega_core::config::ConfigError>(())
//! ```

use std::fmt::Display;
use std::hash::Hash;
use std::time::Duration;

use omega_core::config::{ConfigError, Dur, Issues};
use serde::{Deserialize, Serialize};

use crate::breaker::CircuitBreaker;
use crate::registry::{BreakerRegistry, BreakerRegistryBuilder};
use crate::settings::{CircuitBreakerConfig, SlidingWindow, check};

/// A circuit breaker's settings, as a configuration file writes them (resilience4j's names,
/// shortened); every field has a default, and unknown fields are refused.
///
/// ```json
/// { "failure_rate": 50, "window": 20, "minimum_calls": 10, "wait": "5s", "probes": 3,
///   "slow_call_duration": "2s", "slow_call_rate": 100 }
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failure rate, in percent, at which the circuit opens (default 50).
    pub failure_rate: f32,
    /// Calls in the count-based sliding window (default 20).
    pub window: u32,
    /// Calls needed before the rates count (default 10).
    pub minimum_calls: u32,
    /// How long the circuit stays open before probing (default 5 s).
    pub wait: Dur,
    /// Probes in HALF_OPEN (default 3).
    pub probes: u32,
    /// A call slower than this counts as slow (default: none, slow calls are not measured).
    pub slow_call_duration: Option<Dur>,
    /// Slow-call rate, in percent, at which the circuit opens (default 100).
    pub slow_call_rate: f32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 50.0,
            window: 20,
            minimum_calls: 10,
            wait: Dur(Duration::from_secs(5)),
            probes: 3,
            slow_call_duration: None,
            slow_call_rate: 100.0,
        }
    }
}

impl BreakerConfig {
    /// Reports every mistake at its field's path, relative to the section (the caller
    /// prefixes it with [`Issues::at`]).
    pub fn validate(&self, issues: &mut Issues) {
        issues.check("failure_rate", check::percent(self.failure_rate));
        issues.check("window", check::window_calls(self.window));
        issues.check("minimum_calls", check::at_least_one(self.minimum_calls));
        issues.check("wait", check::above_zero(self.wait.0));
        issues.check("probes", check::probes(self.probes));
        if let Some(d) = self.slow_call_duration {
            issues.check("slow_call_duration", check::above_zero(d.0));
        }
        issues.check("slow_call_rate", check::percent(self.slow_call_rate));
    }

    /// The breaker configuration: a count-based window of `window` calls, everything else
    /// as resilience4j defaults it. Fails with every mistake of [`validate`](Self::validate).
    pub fn circuit_breaker(&self) -> Result<CircuitBreakerConfig, ConfigError> {
        let mut issues = Issues::new();
        self.validate(&mut issues);
        issues.into_result()?;
        let mut c = CircuitBreakerConfig::default()
            .failure_rate_threshold(self.failure_rate)
            .sliding_window(SlidingWindow::CountBased(self.window))
            .minimum_calls(self.minimum_calls)
            .wait_duration(self.wait.0)
            .permitted_calls_in_half_open(self.probes)
            .slow_call_rate_threshold(self.slow_call_rate);
        if let Some(d) = self.slow_call_duration {
            c = c.slow_call_duration(d.0);
        }
        Ok(c)
    }

    /// A breaker named `name` with this configuration.
    pub fn breaker(&self, name: &str) -> Result<CircuitBreaker, ConfigError> {
        let config = self.circuit_breaker()?;
        CircuitBreaker::with_config(name, config).map_err(|e| ConfigError::new("", e.to_string()))
    }

    /// A registry builder whose breakers have this configuration (add the name prefix, the
    /// maximum size, idle eviction and sharing, then build).
    pub fn registry<K>(&self) -> Result<BreakerRegistryBuilder<K>, ConfigError>
    where
        K: Hash + Eq + Clone + Display + Send + Sync + 'static,
    {
        Ok(BreakerRegistry::builder().config(self.circuit_breaker()?))
    }
}

#[cfg(test)]
mod tests {
    use omega_core::config::from_json;

    use super::*;

    #[test]
    fn the_documented_shape_reads_and_defaults_fill_in() {
        let c: BreakerConfig = from_json(r#"{ "failure_rate": 25, "wait": "250ms" }"#).unwrap();
        assert_eq!(c.failure_rate, 25.0);
        assert_eq!(c.wait.0, Duration::from_millis(250));
        assert_eq!(c.window, 20);
        assert_eq!(c.probes, 3);
        let e = from_json::<BreakerConfig>(r#"{ "failure_rat": 25 }"#).unwrap_err();
        assert!(
            e.to_string().starts_with("failure_rat: unknown field"),
            "{e}"
        );
        let c: BreakerConfig = from_json("{}").unwrap();
        assert_eq!(c, BreakerConfig::default());
        let back: BreakerConfig = from_json(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_mistake_is_reported_at_its_field() {
        let c = BreakerConfig {
            failure_rate: 0.0,
            window: 0,
            minimum_calls: 0,
            wait: Dur(Duration::ZERO),
            probes: 5000,
            slow_call_duration: Some(Dur(Duration::ZERO)),
            slow_call_rate: 101.0,
        };
        let mut issues = Issues::new();
        c.validate(&mut issues);
        let e = issues.into_result().unwrap_err();
        let fields: Vec<&str> = e.issues().iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            fields,
            [
                "failure_rate",
                "window",
                "minimum_calls",
                "wait",
                "probes",
                "slow_call_duration",
                "slow_call_rate"
            ]
        );
        assert_eq!(c.circuit_breaker().unwrap_err().issues().len(), 7);
    }

    #[test]
    fn the_section_builds_the_breaker_it_describes() {
        let c = BreakerConfig {
            slow_call_duration: Some(Dur(Duration::from_secs(2))),
            ..BreakerConfig::default()
        };
        let config = c.circuit_breaker().unwrap();
        assert_eq!(config.get_sliding_window(), SlidingWindow::CountBased(20));
        assert_eq!(config.get_permitted_calls_in_half_open(), 3);
        assert_eq!(config.get_failure_rate_threshold(), 50.0);
        assert_eq!(c.breaker("api/a").unwrap().name(), "api/a");
        let registry = c.registry::<String>().unwrap().build().unwrap();
        assert_eq!(
            registry.get_or_create("x").config().get_wait_duration(),
            Duration::from_secs(5)
        );
    }
}
