//! The adaptive limiter's configuration section (feature `serde`): a route's
//! `adaptive: { algorithm, min, max }`, validated with every mistake at its field.
//!
//! ```json
//! "adaptive": { "algorithm": "gradient2", "min": 5, "max": 400 }
//! ```
//!
//! Every algorithm takes its documented defaults ([`Vegas`], [`Gradient2`], [`Aimd`]);
//! `min` defaults to 1, `max` to 1,000 and `initial` to 20 (clamped into `[min, max]`).
//!
//! ```
//! use omega_core::config::{Issues, from_json};
//! use omega_rate_limit::adaptive::config::AdaptiveConfig;
//!
//! let section: AdaptiveConfig =
//!     from_json(r#"{ "algorithm": "aimd", "min": 0, "max": 10, "initial": 50 }"#).unwrap();
//! let mut issues = Issues::new();
//! section.validate(&mut issues);
//! assert_eq!(
//!     issues.into_result().unwrap_err().to_string(),
//!     "min: must be at least 1: a limit of 0 admits nothing\n\
//!      initial: 50 is outside [min, max] = [0, 10]"
//! );
//!
//! let section: AdaptiveConfig = from_json(r#"{ "algorithm": "vegas", "max": 200 }"#).unwrap();
//! let limiter = section.limiter::<()>().unwrap();
//! assert_eq!(limiter.algorithm().name(), "vegas");
//! ```

use omega_core::config::{ConfigError, Issues};
use serde::{Deserialize, Serialize};

use super::builder::{DEFAULT_MAX, DEFAULT_MIN};
use super::{AdaptiveLimiter, AdaptiveLimiterBuilder, Aimd, Algorithm, Gradient2, Vegas};

/// An adaptive concurrency limit as configuration files write it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveConfig {
    /// `"vegas"`, `"gradient2"` or `"aimd"`, with its defaults.
    pub algorithm: AlgorithmName,
    /// The lowest limit (default 1; at least 1).
    #[serde(default = "default_min")]
    pub min: u32,
    /// The highest limit (default 1,000; not below `min`).
    #[serde(default = "default_max")]
    pub max: u32,
    /// The starting limit (default 20, clamped into `[min, max]`; when given, within them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<u32>,
}

fn default_min() -> u32 {
    DEFAULT_MIN
}

fn default_max() -> u32 {
    DEFAULT_MAX
}

/// An algorithm's name in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    /// [`Vegas`].
    Vegas,
    /// [`Gradient2`].
    Gradient2,
    /// [`Aimd`].
    Aimd,
}

impl AlgorithmName {
    /// The algorithm, with its documented defaults.
    pub fn algorithm(self) -> Algorithm {
        match self {
            AlgorithmName::Vegas => Vegas::default().into(),
            AlgorithmName::Gradient2 => Gradient2::default().into(),
            AlgorithmName::Aimd => Aimd::default().into(),
        }
    }
}

impl AdaptiveConfig {
    /// Reports every mistake at its field (`min`, `max`, `initial`), relative to the caller's
    /// path.
    pub fn validate(&self, issues: &mut Issues) {
        if self.min == 0 {
            issues.push("min", "must be at least 1: a limit of 0 admits nothing");
        }
        if self.max < self.min {
            issues.push(
                "max",
                format!("must not be below min ({}), is {}", self.min, self.max),
            );
        }
        if let Some(initial) = self.initial
            && !(self.min..=self.max).contains(&initial)
        {
            issues.push(
                "initial",
                format!(
                    "{initial} is outside [min, max] = [{}, {}]",
                    self.min, self.max
                ),
            );
        }
    }

    /// A builder with this section's settings, for the caller to add a partition key, a
    /// clock or a listener; an error naming every mistake when the section is invalid.
    pub fn builder<Req: 'static>(&self) -> Result<AdaptiveLimiterBuilder<Req>, ConfigError> {
        let mut issues = Issues::new();
        self.validate(&mut issues);
        issues.into_result()?;
        let builder = AdaptiveLimiter::builder()
            .algorithm(self.algorithm.algorithm())
            .min(self.min)
            .max(self.max);
        Ok(match self.initial {
            Some(initial) => builder.initial(initial),
            None => builder,
        })
    }

    /// The limiter, one limit for every request.
    pub fn limiter<Req: 'static>(&self) -> Result<AdaptiveLimiter<Req>, ConfigError> {
        self.builder()?
            .build()
            .map_err(|e| ConfigError::new("", e.to_string()))
    }
}
