//! Errors: [`CacheError`] for building a cache and for purges, [`NotCached`] for a request that
//! may only be answered from the cache.

use std::fmt;
use std::sync::Arc;

use omega_core::reject::{BoxError, Refusal, grpc};

/// What kind of failure a [`CacheError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheErrorKind {
    /// The cache's settings are wrong (a bad partition name, no codec, ...).
    Config,
    /// No partition has that name.
    UnknownPartition,
    /// L2 (Redis) failed: the local part of a purge was done, the shared part may not be.
    Backend,
    /// A value could not be encoded.
    Codec,
}

/// A failure to build a cache, or to purge through L2.
#[derive(Clone)]
pub struct CacheError {
    kind: CacheErrorKind,
    message: Arc<str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl CacheError {
    pub(crate) fn new(kind: CacheErrorKind, message: impl Into<Arc<str>>) -> Self {
        CacheError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn config(message: impl Into<Arc<str>>) -> Self {
        CacheError::new(CacheErrorKind::Config, message)
    }

    pub(crate) fn unknown_partition(name: &str) -> Self {
        CacheError::new(
            CacheErrorKind::UnknownPartition,
            format!("no partition is named {name:?}"),
        )
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn backend(what: &str, e: omega_core::Error) -> Self {
        CacheError {
            kind: CacheErrorKind::Backend,
            message: format!("{what}: {e}").into(),
            source: Some(Arc::new(e)),
        }
    }

    pub(crate) fn codec(e: BoxError) -> Self {
        CacheError {
            kind: CacheErrorKind::Codec,
            message: format!("cannot encode the value: {e}").into(),
            source: Some(Arc::from(e)),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> CacheErrorKind {
        self.kind
    }

    /// What failed, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<omega_core::Error> for CacheError {
    fn from(e: omega_core::Error) -> Self {
        CacheError::config(e.to_string())
    }
}

impl From<omega_core::key::InvalidName> for CacheError {
    fn from(e: omega_core::key::InvalidName) -> Self {
        CacheError::config(e.to_string())
    }
}

/// A request that may only be answered from the cache ([`Lookup::only_if_cached`]) missed:
/// 504 Gateway Timeout, as RFC 9111 answers `only-if-cached`; gRPC `UNAVAILABLE`.
///
/// [`Lookup::only_if_cached`]: crate::Lookup::only_if_cached
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotCached {
    partition: Arc<str>,
}

impl NotCached {
    pub(crate) fn new(partition: &str) -> Self {
        NotCached {
            partition: Arc::from(partition),
        }
    }

    /// The partition that was searched.
    pub fn partition(&self) -> &str {
        &self.partition
    }
}

impl fmt::Display for NotCached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not in the cache (partition {:?}) and only a cached answer was asked for",
            self.partition
        )
    }
}

impl std::error::Error for NotCached {}

impl Refusal for NotCached {
    fn status(&self) -> u16 {
        504
    }

    fn grpc_code(&self) -> u16 {
        grpc::UNAVAILABLE
    }
}
