//! The backend handle: in-memory or Redis, chosen at run time.

use std::time::Duration;

use crate::error::Result;
use crate::health::{Health, HealthStatus};
use crate::keys::Keyspace;
use crate::memory::MemoryBackend;
#[cfg(feature = "redis")]
use crate::redis::{RedisBackend, RedisConfig, Script};

/// Where the layers keep shared state: in this process, or in Redis for many processes.
///
/// Layers match on it to pick their own store (for example the rate limiter's lock-free
/// in-memory buckets or its Lua script); the plain key-value operations below work the same on
/// both, with Redis errors bounded by the operation timeout.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> omega_core::Result<()> {
/// use std::time::Duration;
/// use omega_core::Backend;
///
/// let backend = Backend::memory();
/// backend.set("greeting", b"hello", Some(Duration::from_secs(60))).await?;
/// assert_eq!(backend.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
/// assert_eq!(backend.incr_by("visits", 1, None).await?, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Backend {
    /// State in this process only.
    Memory(MemoryBackend),
    /// State in Redis or Redis Cluster, shared by every process that uses the same keyspace.
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
}

impl Default for Backend {
    fn default() -> Self {
        Backend::memory()
    }
}

#[cfg(feature = "redis")]
const INCR_WITH_TTL: &str = r#"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
"#;

#[cfg(feature = "redis")]
fn incr_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new("incr_with_ttl", INCR_WITH_TTL))
}

impl Backend {
    /// A fresh in-memory backend.
    pub fn memory() -> Self {
        Backend::Memory(MemoryBackend::new())
    }

    /// Connects to Redis (see [`RedisBackend::connect`]).
    #[cfg(feature = "redis")]
    pub async fn redis(cfg: RedisConfig) -> Result<Self> {
        Ok(Backend::Redis(RedisBackend::connect(cfg).await?))
    }

    /// `true` for the in-memory backend.
    pub fn is_memory(&self) -> bool {
        matches!(self, Backend::Memory(_))
    }

    /// The key prefix. The in-memory backend uses the default one; keys never leave the
    /// process.
    pub fn keyspace(&self) -> &Keyspace {
        match self {
            Backend::Memory(_) => {
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
            Backend::Memory(_) => Health {
                status: HealthStatus::Up,
                since: std::time::UNIX_EPOCH,
                last_error: None,
                target: "memory".to_owned(),
            },
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.health(),
        }
    }

    /// The value at `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Backend::Memory(m) => Ok(m.get(key)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => r.query(redis::cmd("GET").arg(key)).await,
        }
    }

    /// Stores `value` at `key`, expiring after `ttl` when given.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<()> {
        match self {
            Backend::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value);
                if let Some(ttl) = ttl {
                    cmd.arg("PX").arg(ttl_millis(ttl));
                }
                r.query(&cmd).await
            }
        }
    }

    /// Stores `value` only if `key` is absent; returns whether it was stored.
    pub async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        match self {
            Backend::Memory(m) => Ok(m.set_nx(key, value, ttl)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(key).arg(value).arg("NX");
                if let Some(ttl) = ttl {
                    cmd.arg("PX").arg(ttl_millis(ttl));
                }
                let stored: Option<String> = r.query(&cmd).await?;
                Ok(stored.is_some())
            }
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn del(&self, key: &str) -> Result<bool> {
        match self {
            Backend::Memory(m) => Ok(m.del(key)),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                let n: i64 = r.query(redis::cmd("DEL").arg(key)).await?;
                Ok(n > 0)
            }
        }
    }

    /// Adds `delta` to the integer at `key` and returns the result, atomically. A key created
    /// by this call expires after `ttl` when given.
    pub async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        match self {
            Backend::Memory(m) => m
                .incr_by(key, delta, ttl)
                .map_err(|e| crate::Error::new(crate::ErrorKind::Server, e).during("INCRBY")),
            #[cfg(feature = "redis")]
            Backend::Redis(r) => {
                let call = incr_script()
                    .call()
                    .key(key)
                    .arg(delta)
                    .arg(ttl.map_or(0, ttl_millis));
                r.eval(&call).await
            }
        }
    }
}

#[cfg(feature = "redis")]
fn ttl_millis(ttl: Duration) -> u64 {
    // Redis rejects PX 0; a TTL under a millisecond rounds up.
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
