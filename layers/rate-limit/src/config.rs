//! The rate limiter's configuration section (feature `serde`): limits as configuration files
//! write them, validated here, and built into a [`RateLimiter`](crate::RateLimiter) (feature `http`).
//!
//! ```json
//! "limits": [
//!   { "name": "global",   "key": "global",                  "rate": 1000, "per": "1s" },
//!   { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 60,   "per": "1m",
//!     "burst": 10, "missing": "reject" },
//!   { "name": "per_ip",   "key": "client_ip",               "rate": 20,   "per": "1s",
//!     "lease": 5, "shadow": true }
//! ]
//! ```
//!
//! ```
//! use omega_core::config::{Issues, from_json};
//! use omega_rate_limit::config::{LimitConfig, validate_limits};
//!
//! let limits: Vec<LimitConfig> = from_json(
//!     r#"[{ "name": "g", "key": "global", "rate": 0, "per": "1s" },
//!         { "name": "g", "key": { "header": "x-user-id" }, "rate": 5, "per": "1m" }]"#,
//! )
//! .unwrap();
//! let mut issues = Issues::new();
//! validate_limits(&limits, &mut issues);
//! assert_eq!(
//!     issues.into_result().unwrap_err().to_string(),
//!     "[0].rate: must be at least 1\n[1].name: \"g\" is used twice"
//! );
//! ```

use omega_core::config::{Dur, Issues, KeyConfig};
use omega_core::key::{MissingKey, check_name};
use serde::{Deserialize, Serialize};

use crate::quota::{Quota, QuotaError};

/// One rate limit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Its name (in headers, metrics, Redis keys and the admin API): a name
    /// ([`check_name`]), unique among the limits of one limiter.
    pub name: String,
    /// What it counts by: `"global"`, `"client_ip"`, `"endpoint"`, `"path"`,
    /// `{ "header": .. }`, `{ "query": .. }` or `{ "path_segment": n }`.
    pub key: KeyConfig,
    /// Requests per `per`.
    pub rate: u32,
    /// The period of `rate`.
    pub per: Dur,
    /// The burst (default: `rate`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Count and report, never deny (default false).
    #[serde(default)]
    pub shadow: bool,
    /// With Redis: lease this many cells per round trip (feature `redis`).
    #[serde(default)]
    pub lease: Option<u32>,
    /// What a request without the key means: `"skip"` (the default: the limit does not count
    /// it) or `"reject"` (400 Bad Request).
    #[serde(default)]
    pub missing: MissingKey,
    /// What the limit does while Redis fails ([`OnBackendFailure`](crate::OnBackendFailure)):
    /// `"open"`, `"closed"`, or `{ "local": P }`, this process enforcing P% of the quota on its
    /// own (the default is `{ "local": 100 }`; with N instances, `100 / N` keeps the cluster
    /// near its limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_redis_failure: Option<OnRedisFailure>,
}

/// [`LimitConfig::on_redis_failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisFailure {
    /// Admit, as far as this limit is concerned.
    Open,
    /// Deny.
    Closed,
    /// Enforce this percentage (1 to 100) of the quota in this process.
    Local(u8),
}

impl OnRedisFailure {
    /// The limit's policy.
    pub fn policy(self) -> crate::OnBackendFailure {
        match self {
            OnRedisFailure::Open => crate::OnBackendFailure::Open,
            OnRedisFailure::Closed => crate::OnBackendFailure::Closed,
            OnRedisFailure::Local(percent) => crate::OnBackendFailure::Local {
                share: f64::from(percent) / 100.0,
            },
        }
    }
}

impl LimitConfig {
    /// Reports every mistake at its field (`name`, `rate`, `per`, `burst`, `lease`,
    /// `key.header`), relative to the caller's path.
    pub fn validate(&self, issues: &mut Issues) {
        issues.check("name", check_name("limit name", &self.name));
        if self.rate == 0 {
            issues.push("rate", "must be at least 1");
        }
        if self.per.0.is_zero() {
            issues.push("per", "must be longer than 0");
        }
        if self.burst == Some(0) {
            issues.push("burst", "must be at least 1");
        }
        if self.lease == Some(0) {
            issues.push("lease", "must be at least 1");
        }
        if let Some(OnRedisFailure::Local(p)) = self.on_redis_failure
            && !(1..=100).contains(&p)
        {
            issues.push(
                "on_redis_failure.local",
                "must be a percentage from 1 to 100",
            );
        }
        if self.lease.is_some() && !cfg!(feature = "redis") {
            issues.push(
                "lease",
                "leases are taken from Redis: build with the `redis` feature",
            );
        }
        self.key.validate("key", issues);
        if self.rate > 0
            && !self.per.0.is_zero()
            && self.burst != Some(0)
            && let Err(e) = self.quota()
        {
            issues.push(
                "rate",
                format!("{} per {} is not a valid quota: {e}", self.rate, self.per),
            );
        }
    }

    /// The limit's quota: `rate` per `per`, with `burst` when given.
    pub fn quota(&self) -> Result<Quota, QuotaError> {
        let q = Quota::new(self.rate, self.per.0)?;
        match self.burst {
            Some(b) => q.try_with_burst(b),
            None => Ok(q),
        }
    }
}

/// Validates a list of limits: each at `[i]`, and a name used twice at `[j].name`.
pub fn validate_limits(limits: &[LimitConfig], issues: &mut Issues) {
    for (i, limit) in limits.iter().enumerate() {
        let mut at = issues.at(format!("[{i}]"));
        limit.validate(&mut at);
        if limits[..i].iter().any(|l| l.name == limit.name) {
            at.push("name", format!("{:?} is used twice", limit.name));
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_builders::rate_limiter;

#[cfg(feature = "http")]
mod http_builders {
    use omega_core::Backend;
    use omega_core::config::{ConfigError, Issues};
    use omega_core::key::http::ClientIp;

    use super::{LimitConfig, validate_limits};
    use crate::limit::Limit;
    use crate::limiter::RateLimiter;

    impl LimitConfig {
        /// The limit, for HTTP requests. `client_ip` says how client addresses are found (the
        /// trusted proxies, their header); an `endpoint` key reads the route template from the
        /// `RouteTemplate` request extension (or axum's `MatchedPath`, feature `axum`).
        ///
        /// # Panics
        /// When the section is invalid ([`LimitConfig::validate`] reports why);
        /// [`rate_limiter`] validates before it builds.
        pub fn limit<B: 'static>(&self, client_ip: &ClientIp) -> Limit<http::Request<B>> {
            let quota = self
                .quota()
                .unwrap_or_else(|e| panic!("limit {:?}: {e}", self.name));
            let limit = match self.key {
                omega_core::config::KeyConfig::Global => Limit::global(self.name.clone(), quota),
                ref key => Limit::keyed(self.name.clone(), quota, key.source(client_ip)),
            };
            let mut limit = limit.shadow(self.shadow).on_missing_key(self.missing);
            if let Some(failure) = self.on_redis_failure {
                limit = limit.on_backend_failure(failure.policy());
            }
            // Without the `redis` feature, `validate` refuses a lease.
            #[cfg(feature = "redis")]
            let limit = match self.lease {
                Some(batch) => limit.lease(crate::lease::Lease::new(batch)),
                None => limit,
            };
            limit
        }
    }

    /// A limiter over `backend` checking every limit of `limits`, or `None` when there are
    /// none. `scope` keeps its buckets apart from other limiters' in Redis
    /// ([`RateLimiterBuilder::scope`](crate::RateLimiterBuilder::scope); the gateway gives each
    /// route its own, `route:<prefix>`). The limits are validated first: every mistake is
    /// reported, at `[i].field`.
    pub fn rate_limiter<B: 'static>(
        limits: &[LimitConfig],
        backend: &Backend,
        scope: &str,
        client_ip: &ClientIp,
    ) -> Result<Option<RateLimiter<http::Request<B>>>, ConfigError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let mut issues = Issues::new();
        validate_limits(limits, &mut issues);
        issues.into_result()?;
        let mut builder = RateLimiter::builder().backend(backend.clone()).scope(scope);
        for l in limits {
            builder = builder.limit(l.limit(client_ip));
        }
        builder
            .build()
            .map(Some)
            .map_err(|e| ConfigError::new("", e.to_string()))
    }
}
