//! The errors the rate limiter returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use omega_core::reject::{Refusal, grpc};

/// A request was denied by a limit.
///
/// With the default rejection strategy ([`KeepError`](omega_core::reject::KeepError)) the
/// services built by [`crate::RateLimitLayer`] fail with it, boxed in a `BoxError`; downcast to
/// read it:
///
/// ```
/// # use omega_rate_limit::RateLimited;
/// fn retry_after(err: &(dyn std::error::Error + 'static)) -> Option<std::time::Duration> {
///     err.downcast_ref::<RateLimited>().map(|rl| rl.retry_after())
/// }
/// ```
///
/// As a [`Refusal`] it is answered with `429 Too Many Requests` (gRPC `RESOURCE_EXHAUSTED`),
/// `Retry-After` when the request can be admitted later, and the IETF `RateLimit-Policy` /
/// `RateLimit` fields of the limit that denied it ([`crate::headers`]).
#[derive(Clone, Debug, Eq)]
pub struct RateLimited {
    pub(crate) limit: Arc<str>,
    pub(crate) retry_after: Duration,
    pub(crate) quota_burst: u32,
    /// The limit's window: the time a drained bucket takes to fill (`burst` intervals).
    pub(crate) window: Duration,
    /// The header fields, when the service's strategy sends them (computed with the limit's
    /// cached policy value); computed on demand otherwise.
    #[cfg(feature = "http")]
    pub(crate) fields: Option<crate::headers::Fields>,
}

impl PartialEq for RateLimited {
    fn eq(&self, other: &Self) -> bool {
        self.limit == other.limit
            && self.retry_after == other.retry_after
            && self.quota_burst == other.quota_burst
            && self.window == other.window
    }
}

impl RateLimited {
    /// The name of the limit that denied the request (the one that frees up last, when several
    /// did).
    pub fn limit(&self) -> &str {
        &self.limit
    }

    /// How long until the same request would be admitted. [`Duration::MAX`] when its cost is
    /// larger than the limit's burst, so it never will be.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The burst of the limit that denied the request.
    pub fn burst(&self) -> u32 {
        self.quota_burst
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.retry_after == Duration::MAX {
            write!(
                f,
                "rate limited by {:?}: the request costs more than its burst of {}",
                self.limit, self.quota_burst
            )
        } else {
            write!(
                f,
                "rate limited by {:?}; retry after {:?}",
                self.limit, self.retry_after
            )
        }
    }
}

impl std::error::Error for RateLimited {}

/// 429 / `RESOURCE_EXHAUSTED`; `Retry-After` unless the request can never be admitted; the
/// `RateLimit-Policy` and `RateLimit` fields of the denying limit (`r=0`, `t` = the
/// retry-after).
impl Refusal for RateLimited {
    fn status(&self) -> u16 {
        429
    }

    fn grpc_code(&self) -> u16 {
        grpc::RESOURCE_EXHAUSTED
    }

    fn retry_after(&self) -> Option<Duration> {
        (self.retry_after != Duration::MAX).then_some(self.retry_after)
    }

    #[cfg(feature = "http")]
    fn write_headers(&self, headers: &mut ::http::HeaderMap) {
        let fields = match &self.fields {
            Some(fields) => Some(fields.clone()),
            None => crate::headers::Fields::new(
                None,
                &self.limit,
                self.quota_burst,
                self.window,
                0,
                self.retry_after,
            ),
        };
        if let Some(fields) = fields {
            fields.apply(headers);
        }
    }
}

/// `RESOURCE_EXHAUSTED`, with the retry-after in seconds (rounded up) in the `retry-after`
/// metadata entry when the request can be admitted later.
#[cfg(feature = "grpc")]
impl From<RateLimited> for tonic::Status {
    fn from(denied: RateLimited) -> Self {
        let mut status = tonic::Status::resource_exhausted(denied.to_string());
        if denied.retry_after != Duration::MAX {
            let secs = omega_core::http::seconds_rounded_up(denied.retry_after);
            status
                .metadata_mut()
                .insert("retry-after", tonic::metadata::MetadataValue::from(secs));
        }
        status
    }
}

/// A limiter could not be built or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}
