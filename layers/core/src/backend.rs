//! The backend handle: in-memory or Redis, chosen at run time.

use crate::error::Result;
use crate::health::{Health, HealthStatus};
use crate::keyspace::Keyspace;
#[cfg(feature = "redis")]
use crate::redis::{RedisBackend, RedisConfig};

/// Where the layers keep shared state: in this process, or in Redis for many processes.
///
/// Each layer keeps its own in-memory state (the rate limiter's lock-free buckets, the
/// breaker's atomics, the cache's moka map); with [`Backend::Redis`] it shares that state
/// through the one Redis handle, with every operation bounded by its timeout.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> omega_core::Result<()> {
/// use omega_core::Backend;
///
/// let backend = Backend::connect(None).await?; // in memory; Some("redis://...") for Redis
/// assert!(backend.is_memory());
/// assert!(backend.health().is_up());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Backend {
    /// State in this process only.
    #[default]
    Memory,
    /// State in Redis or Redis Cluster, shared by every process that uses the same keyspace.
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
}

impl Backend {
    /// In-memory state.
    pub fn memory() -> Self {
        Backend::Memory
    }

    /// Connects to Redis (see [`RedisBackend::connect`]).
    #[cfg(feature = "redis")]
    pub async fn redis(cfg: RedisConfig) -> Result<Self> {
        Ok(Backend::Redis(RedisBackend::connect(cfg).await?))
    }

    /// In memory for `None`; for a URL (`redis://`, `rediss://` or `redis+cluster://`, parsed
    /// by [`RedisConfig::parse`]), Redis with the default settings, connected now.
    ///
    /// Without the `redis` feature a URL is refused with a message naming the feature.
    pub async fn connect(url: Option<&str>) -> Result<Self> {
        match url {
            None => Ok(Backend::Memory),
            #[cfg(feature = "redis")]
            Some(url) => Backend::redis(RedisConfig::parse(url)?).await,
            #[cfg(not(feature = "redis"))]
            Some(url) => Err(crate::Error::config(format!(
                "{url}: state in Redis needs the `redis` feature"
            ))),
        }
    }

    /// `true` for the in-memory backend.
    pub fn is_memory(&self) -> bool {
        matches!(self, Backend::Memory)
    }

    /// The Redis handle, when the state is in Redis.
    #[cfg(feature = "redis")]
    pub fn as_redis(&self) -> Option<&RedisBackend> {
        match self {
            Backend::Memory => None,
            Backend::Redis(r) => Some(r),
        }
    }

    /// The key prefix. The in-memory backend uses the default one; keys never leave the
    /// process.
    pub fn keyspace(&self) -> &Keyspace {
        match self {
            Backend::Memory => {
                static DEFAULT: std::sync::OnceLock<Keyspace> = std::sync::OnceLock::new();
                DEFAULT.get_or_init(Keyspace::default)
            }
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.keyspace(),
        }
    }

    /// The backend's health. The in-memory backend is always up.
    pub fn health(&self) -> Health {
        match self {
            Backend::Memory => Health {
                status: HealthStatus::Up,
                since: std::time::UNIX_EPOCH,
                last_error: None,
                target: "memory".to_owned(),
            },
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.health(),
        }
    }
}
