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
///     err.downcast_ref::<RateLimited>().and_then(|rl| rl.retry_after())
/// }
/// ```
///
/// As a [`Refusal`] it is answered with `429 Too Many Requests` (gRPC `RESOURCE_EXHAUSTED`),
/// `Retry-After` when the request can be admitted later (none when its cost is above the
/// burst, so that it never will be), and the IETF `RateLimit-Policy` / `RateLimit` fields
/// ([`crate::headers`]).
#[derive(Clone, Debug, Eq)]
pub struct RateLimited {
    pub(crate) limit: Arc<str>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) quota_burst: u32,
    /// The limit's window: the time a drained bucket takes to fill (`burst` intervals).
    pub(crate) window: Duration,
    /// What the `RateLimit` field reports: cells left, and seconds until the retry-after (or,
    /// for a request that can never be admitted, until the bucket is full).
    #[cfg(feature = "http")]
    pub(crate) remaining: u32,
    #[cfg(feature = "http")]
    pub(crate) reset: Duration,
    /// The denying limit's `RateLimit-Policy` value.
    #[cfg(feature = "http")]
    pub(crate) policy: Option<::http::HeaderValue>,
    /// The header fields of the whole request (every policy it is under), when the service's
    /// strategy sends them; without them, the denying limit's alone.
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

    /// How long until the same request would be admitted; `None` when its cost is larger
    /// than the limit's burst, so it never will be (as governor's `InsufficientCapacity`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The burst of the limit that denied the request.
    pub fn burst(&self) -> u32 {
        self.quota_burst
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_after {
            None => write!(
                f,
                "rate limited by {:?}: the request costs more than its burst of {}",
                self.limit, self.quota_burst
            ),
            Some(retry) => write!(f, "rate limited by {:?}; retry after {retry:?}", self.limit),
        }
    }
}

impl std::error::Error for RateLimited {}

/// 429 / `RESOURCE_EXHAUSTED`; `Retry-After` unless the request can never be admitted; the
/// `RateLimit-Policy` field (every policy of the request when the service computed them, else
/// the denying limit's) and the `RateLimit` field of the denying limit (`r=0`, `t` = the
/// retry-after; for a cost above the burst, the cells left and the seconds until the bucket
/// is full).
impl Refusal for RateLimited {
    fn status(&self) -> u16 {
        429
    }

    fn grpc_code(&self) -> u16 {
        grpc::RESOURCE_EXHAUSTED
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    #[cfg(feature = "http")]
    fn write_headers(&self, headers: &mut ::http::HeaderMap) {
        match &self.fields {
            Some(fields) => fields.clone().apply(headers),
            None => {
                if let Some(policy) = &self.policy {
                    headers.append(crate::headers::RATELIMIT_POLICY, policy.clone());
                }
                if let Some(state) = crate::headers::state(&self.limit, self.remaining, self.reset)
                {
                    headers.append(crate::headers::RATELIMIT, state);
                }
            }
        }
    }
}

/// `RESOURCE_EXHAUSTED`, with the retry-after in seconds (rounded up) in the `retry-after`
/// metadata entry when the request can be admitted later.
#[cfg(feature = "grpc")]
impl From<RateLimited> for tonic::Status {
    fn from(denied: RateLimited) -> Self {
        let mut status = tonic::Status::resource_exhausted(denied.to_string());
        if let Some(retry) = denied.retry_after {
            let secs = omega_core::http::seconds_rounded_up(retry);
            status
                .metadata_mut()
                .insert("retry-after", tonic::metadata::MetadataValue::from(secs));
        }
        status
    }
}

/// A limit keyed by the client's IP address (omega-core's `ClientIp`) saw a request without a
/// peer address: the server does not record peer addresses, so the limit cannot tell clients
/// apart. The fault is the server's, not the client's: as a [`Refusal`] it is answered with
/// `500 Internal Server Error` (gRPC `INTERNAL`), and its message says how to fix the server
/// (the choice tower_governor makes for a key it cannot extract). Made by the limiter only
/// (feature `http`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddrMissing {
    limit: Arc<str>,
}

impl PeerAddrMissing {
    pub(crate) fn new(limit: Arc<str>) -> Self {
        PeerAddrMissing { limit }
    }

    /// The limit keyed by the client IP.
    pub fn limit(&self) -> &str {
        &self.limit
    }
}

impl fmt::Display for PeerAddrMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit {:?} is keyed by the client IP, but the request has no peer address: \
             the server does not record them. Insert `omega_core::key::http::PeerAddr` into \
             each request's extensions, or serve axum with \
             `into_make_service_with_connect_info::<SocketAddr>()`",
            self.limit
        )
    }
}

impl std::error::Error for PeerAddrMissing {}

/// 500 / `INTERNAL`: the server is misconfigured.
impl Refusal for PeerAddrMissing {
    fn status(&self) -> u16 {
        500
    }

    fn grpc_code(&self) -> u16 {
        // gRPC `INTERNAL`.
        13
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
