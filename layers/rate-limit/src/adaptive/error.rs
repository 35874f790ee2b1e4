//! The refusal of a request over its partition's limit.

use std::fmt;
use std::sync::Arc;

use omega_core::reject::{Refusal, grpc};

/// A request was refused because its partition had as many requests in flight as its
/// adaptive limit allows.
///
/// With the default rejection strategy ([`KeepError`](omega_core::reject::KeepError)) the
/// service fails with it, boxed; as a [`Refusal`] it is answered with `503 Service
/// Unavailable` (gRPC `RESOURCE_EXHAUSTED`), without `Retry-After`: a slot frees as soon as a
/// request in flight ends.
///
/// ```
/// # use omega_rate_limit::adaptive::ConcurrencyLimited;
/// fn over_limit(err: &(dyn std::error::Error + 'static)) -> Option<u32> {
///     err.downcast_ref::<ConcurrencyLimited>().map(|c| c.limit())
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConcurrencyLimited {
    partition: Arc<str>,
    limit: u32,
}

impl ConcurrencyLimited {
    pub(crate) fn new(partition: Arc<str>, limit: u32) -> Self {
        ConcurrencyLimited { partition, limit }
    }

    /// The partition's key as text (`""` without partitions).
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The partition's limit when the request was refused.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

impl fmt::Display for ConcurrencyLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partition.is_empty() {
            write!(f, "over the adaptive concurrency limit of {}", self.limit)
        } else {
            write!(
                f,
                "over the adaptive concurrency limit of {} for {:?}",
                self.limit, self.partition
            )
        }
    }
}

impl std::error::Error for ConcurrencyLimited {}

/// 503 / `RESOURCE_EXHAUSTED`.
impl Refusal for ConcurrencyLimited {
    fn status(&self) -> u16 {
        503
    }

    fn grpc_code(&self) -> u16 {
        grpc::RESOURCE_EXHAUSTED
    }
}

/// `RESOURCE_EXHAUSTED`.
#[cfg(feature = "grpc")]
impl From<ConcurrencyLimited> for tonic::Status {
    fn from(refused: ConcurrencyLimited) -> Self {
        tonic::Status::resource_exhausted(refused.to_string())
    }
}
