//! [`CircuitBreakerBuilder`]: a breaker's name, configuration and clock.

use std::sync::Arc;

use omega_core::Clock;

use crate::breaker::CircuitBreaker;
use crate::error::ConfigError;
use crate::settings::CircuitBreakerConfig;

/// Builds a [`CircuitBreaker`] with a name, a configuration and optionally a clock.
#[derive(Debug)]
pub struct CircuitBreakerBuilder {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    clock: Option<Clock>,
    event_capacity: usize,
}

impl CircuitBreakerBuilder {
    /// The configuration (default: [`CircuitBreakerConfig::default`]).
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock (default: [`Clock::fast`]). Tests that pause tokio's clock pass
    /// [`Clock::system`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How many events a slow subscriber may lag behind before it loses some (default 256).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Builds the breaker, in CLOSED.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        self.config.validate()?;
        Ok(CircuitBreaker::from_parts(
            self.name,
            self.config,
            self.clock.unwrap_or_else(Clock::fast),
            self.event_capacity,
        ))
    }
}

impl CircuitBreaker {
    /// A breaker named `name` with the default configuration.
    pub fn new(name: impl Into<Arc<str>>) -> CircuitBreaker {
        Self::builder(name)
            .build()
            .expect("the default configuration is valid")
    }

    /// A breaker named `name` with `config`.
    pub fn with_config(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
    ) -> Result<CircuitBreaker, ConfigError> {
        Self::builder(name).config(config).build()
    }

    /// Starts a builder.
    pub fn builder(name: impl Into<Arc<str>>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            name: name.into(),
            config: CircuitBreakerConfig::default(),
            clock: None,
            event_capacity: 256,
        }
    }
}
