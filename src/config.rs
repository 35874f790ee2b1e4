//! Declarative configuration of a layer stack (feature `config`): upstream pools and the routes
//! in front of them, usable by any service that wants the same layers as the gateway.
//!
//! Each layer owns its own section and validates it: a pool's nodes, key and failover are the
//! shard router's [`PoolConfig`], its `breaker` the circuit breaker's [`BreakerConfig`], a
//! route's `limits` the rate limiter's [`LimitConfig`]s; durations, key sources and errors are
//! omega-core's. [`StackConfig`] only composes them: it joins routes to pools, and holds what
//! they share (Redis, the trusted proxies). [`StackConfig::from_json`] parses and validates in
//! one go: a file either gives a complete, valid configuration or an error listing every
//! mistake with the field it is in (`routes[1].limits[0].rate: must be at least 1`), so
//! nothing starts half-configured.
//!
//! ```
//! use omega_penta::config::StackConfig;
//!
//! let config = StackConfig::from_json(r#"{
//!     "upstreams": {
//!         "api": {
//!             "nodes": [{ "id": "a", "url": "http://127.0.0.1:9001" }],
//!             "key": { "header": "x-user-id" },
//!             "breaker": { "failure_rate": 50, "window": 20, "wait": "5s" }
//!         }
//!     },
//!     "routes": [{
//!         "prefix": "/api",
//!         "upstream": "api",
//!         "timeout": "10s",
//!         "limits": [
//!             { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 100, "per": "1m", "burst": 20 },
//!             { "name": "global", "key": "global", "rate": 1000, "per": "1s" }
//!         ]
//!     }]
//! }"#).unwrap();
//! assert_eq!(config.routes[0].limits.len(), 2);
//!
//! let err = StackConfig::from_json(r#"{ "upstreams": {}, "routes": [{ "prefix": "api", "upstream": "x" }] }"#)
//!     .unwrap_err();
//! assert!(err.to_string().contains("routes[0].prefix"), "{err}");
//! assert!(err.to_string().contains("routes[0].upstream"), "{err}");
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::circuit_breaker::config::BreakerConfig;
use crate::core::Backend;
pub use crate::core::config::{ConfigError, Dur, Issues, KeyConfig};
use crate::core::key::http::{ClientIp, ForwardingHeader};
use crate::rate_limit::RateLimiter;
pub use crate::rate_limit::config::LimitConfig;
pub use crate::shard_router::config::{NodeConfig, PoolConfig, parse_base_url};

/// A whole stack: upstream pools and the routes in front of them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Redis (`redis://`, `rediss://`, or `redis+cluster://host:port,host:port`) for state
    /// shared by several instances; in memory when absent.
    #[serde(default)]
    pub redis: Option<String>,
    /// Proxies whose forwarding header is believed (addresses or networks).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies write the client into: `x-forwarded-for` (the default,
    /// what nginx and cloud load balancers append), `forwarded`, or another header.
    #[serde(default)]
    pub forwarded_header: Option<String>,
    /// IPv6 clients are grouped by this prefix length in client-IP keys (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// Upstream pools by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, matched by the longest prefix.
    pub routes: Vec<RouteConfig>,
}

/// A pool of upstream nodes: the shard router's fields (`nodes`, `key`, `failover`, see
/// [`PoolConfig`]) and the circuit breaker each node gets.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The nodes (at least one).
    pub nodes: Vec<NodeConfig>,
    /// The request key that picks a node; without one, the request path.
    #[serde(default)]
    pub key: Option<KeyConfig>,
    /// How many nodes of a key's preference list may serve it while nodes are unavailable
    /// (default 2: the owner and one fallback).
    #[serde(default = "default_failover")]
    pub failover: usize,
    /// The circuit breaker each node gets.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The longest wait for a connection to a node (default 5 s, Envoy's; nginx waits 60 s).
    /// A node that cannot be reached within it fails over to the next one.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// How many requests may go again after a node broke their connection before answering.
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Active health checks of the pool's nodes (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// How the gateway speaks to the pool's nodes (default `http1`).
    #[serde(default)]
    pub protocol: Protocol,
    /// How `https://` nodes are trusted (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Nodes that announce themselves in Redis join and leave the pool (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover: Option<Discover>,
}

/// Node discovery for a pool, through the shard router's registry in Redis: `"discover": {
/// "redis_key": "users", "poll": "1s", "stable_polls": 2 }`. Nodes announced under
/// `redis_key` (with `omega-gateway announce` or the library's `Registry`) join once seen alive
/// in `stable_polls` reads in a row and leave when their heartbeat stops; the file's nodes stay.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Discover {
    /// The registry's name (default: the pool's name).
    pub redis_key: Option<String>,
    /// Between two reads of the registry (default 1 s).
    pub poll: Dur,
    /// Reads in a row a new node must be seen alive in before it joins (default 2).
    pub stable_polls: u32,
}

impl Default for Discover {
    fn default() -> Self {
        Discover {
            redis_key: None,
            poll: Dur(std::time::Duration::from_secs(1)),
            stable_polls: 2,
        }
    }
}

/// How a pool's `https://` nodes are trusted: `"tls": { "ca": "/etc/omega/upstream-ca.pem" }`
/// trusts the certificates in that PEM file instead of the system's roots. The server name
/// checked (and sent as SNI) is each node URL's host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTls {
    /// A PEM file of the certificates to trust.
    pub ca: Option<std::path::PathBuf>,
}

/// How the gateway speaks to a pool's nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 over pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 without TLS, with prior knowledge (gRPC servers such as tonic's speak it):
    /// requests are multiplexed over one connection per node, trailers pass through.
    H2c,
    /// HTTP/2 over TLS (`https://` nodes; ALPN `h2`).
    H2,
}

/// Active health checks: every `interval`, each node of the pool gets `GET path`; a node
/// that fails `unhealthy_threshold` checks in a row is taken out of routing until it passes
/// `healthy_threshold` in a row. With checks on, a node whose circuit is open is probed by
/// the checks, not by users' requests: when the breaker's wait is over, a passing check
/// closes the circuit and a failing one opens it for another wait.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    /// The path checked (default `/healthz`).
    pub path: String,
    /// Between two checks of a node (default 5 s).
    pub interval: Dur,
    /// The longest wait for a check's answer (default 2 s).
    pub timeout: Dur,
    /// The status a passing check answers; by default any 2xx or 3xx.
    pub expected_status: Option<u16>,
    /// Passing checks in a row that bring a node back (default 2).
    pub healthy_threshold: u32,
    /// Failing checks in a row that take a node out (default 3).
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/healthz".into(),
            interval: Dur(std::time::Duration::from_secs(5)),
            timeout: Dur(std::time::Duration::from_secs(2)),
            expected_status: None,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

impl HealthCheck {
    /// Whether a check answered with `status` passes.
    pub fn passes(&self, status: u16) -> bool {
        match self.expected_status {
            Some(expected) => status == expected,
            None => (200..400).contains(&status),
        }
    }

    fn validate(&self, issues: &mut Issues) {
        if !self.path.starts_with('/') || self.path.parse::<http::uri::PathAndQuery>().is_err() {
            issues.push(
                "path",
                format!("{:?} is not a path such as /healthz", self.path),
            );
        }
        if self.interval.0.is_zero() || self.timeout.0.is_zero() {
            issues.push("interval", "interval and timeout must be more than 0s");
        }
        if self.healthy_threshold == 0 || self.unhealthy_threshold == 0 {
            issues.push("healthy_threshold", "the thresholds must be at least 1");
        }
        if self
            .expected_status
            .is_some_and(|s| !(100..=599).contains(&s))
        {
            issues.push("expected_status", "must be an HTTP status (100 to 599)");
        }
    }
}

fn default_failover() -> usize {
    PoolConfig::DEFAULT_FAILOVER
}

fn default_connect_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

/// Retries of requests that a node received and then broke off (a reset or a close before the
/// response head), as Envoy's retry budget: only idempotent requests without a body, to the
/// next node of the key's preference list, and at most `percent` of the pool's requests over
/// the last 10 s plus `min_per_second`. Requests that never reached a node (connect errors)
/// always fail over; they are not counted.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries allowed, as a percentage of requests (0 to 1000; default 20, Envoy's).
    pub percent: f32,
    /// Retries allowed per second whatever the traffic (default 10).
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20.0,
            min_per_second: 10,
        }
    }
}

impl RetryBudget {
    fn validate(&self, issues: &mut Issues) {
        if !(0.0..=1000.0).contains(&self.percent) {
            issues.push("percent", "must be between 0 and 1000");
        }
    }
}

impl UpstreamConfig {
    /// The shard router's section of this pool.
    pub fn pool(&self) -> PoolConfig {
        PoolConfig {
            nodes: self.nodes.clone(),
            key: self.key.clone(),
            failover: self.failover,
        }
    }
}

/// A route: requests whose path starts with `prefix` go to `upstream`, through the route's
/// rate limits.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path prefix, starting with `/`, written as sent (percent-encoded).
    pub prefix: String,
    /// The upstream pool's name.
    pub upstream: String,
    /// The longest wait for the upstream's response head (default 30 s).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Remove the prefix before forwarding (default false).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Rate limits; every one must admit a request.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
    /// The largest request body, in bytes (default: unlimited; bodies stream). A larger
    /// declared `Content-Length` gets 413 before anything is sent; a body that grows past it
    /// while streaming is cut and answered 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
    /// RFC 9111's shared cache in front of the route's upstream (`cache: {}` for the plain
    /// shared cache; feature `cache`). Rate limits apply before it: a cached answer still
    /// counts against the client's limits.
    #[cfg(feature = "cache")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::config::RouteCache>,
    /// An adaptive concurrency limit in front of the route's pool (`{ "algorithm": "vegas",
    /// "min": 1, "max": 200 }`): requests in flight beyond what the pool's latency shows it
    /// can take get 503 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<crate::rate_limit::adaptive::config::AdaptiveConfig>,
}

fn default_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

impl StackConfig {
    /// Parses and validates a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        // serde_json's messages end with "at line L column C".
        let config: StackConfig = crate::core::config::from_json(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a configuration already read into a JSON value (the gateway reads
    /// its own settings out of the file first).
    pub fn from_value(value: serde_json::Value) -> Result<Self, ConfigError> {
        let config: StackConfig = crate::core::config::deserialize(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a YAML configuration (feature `yaml`): the same fields, the same
    /// shapes (`key: { header: x-user-id }`, as in JSON) and the same errors, each with its
    /// field; a YAML syntax error gives its line and column.
    ///
    /// ```
    /// use omega_penta::config::StackConfig;
    ///
    /// let config = StackConfig::from_yaml("
    /// upstreams:
    ///   api:
    ///     nodes: [{ id: a, url: http://127.0.0.1:9001 }]
    ///     key: { header: x-user-id }
    /// routes:
    ///   - prefix: /api
    ///     upstream: api
    ///     limits:
    ///       - { name: global, key: global, rate: 1000, per: 1s }
    /// ").unwrap();
    /// assert_eq!(config.routes[0].limits[0].rate, 1000);
    ///
    /// let err = StackConfig::from_yaml("upstreams: {}\nroutes:\n  - prefix: /api\n    upstream: api\n    timeout: 5d\n")
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("routes[0].timeout: unknown unit"), "{err}");
    ///
    /// let err = StackConfig::from_yaml("routes:\n  - prefix: /api\n   upstream: api\n").unwrap_err();
    /// assert!(err.to_string().contains("line 3"), "{err}");
    /// ```
    #[cfg(feature = "yaml")]
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_value(yaml_value(text)?)
    }

    /// Checks what the types cannot: references, ranges, URLs, duplicates; each section
    /// checks its own fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Issues::new();
        if let Err(e) = self.client_ip_checked() {
            issues.absorb("", e);
        }
        if self.routes.is_empty() {
            issues.push("routes", "at least one route is needed");
        }
        if let Some(url) = &self.redis {
            check_redis(url, &mut issues);
        }
        for (name, up) in &self.upstreams {
            let mut at = issues.at(format!("upstreams.{name}"));
            up.pool().validate(&mut at);
            up.breaker.validate(&mut at.at("breaker"));
            up.retry_budget.validate(&mut at.at("retry_budget"));
            if let Some(check) = &up.health_check {
                check.validate(&mut at.at("health_check"));
            }
            if let Some(discover) = &up.discover
                && (discover.poll.0.is_zero() || discover.stable_polls == 0)
            {
                at.push(
                    "discover",
                    "poll must be more than 0s and stable_polls at least 1",
                );
            }
            if up.connect_timeout.0.is_zero() {
                at.push("connect_timeout", "must be more than 0s");
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let mut at = issues.at(format!("routes[{i}]"));
            route.validate(&mut at);
            if self.routes[..i].iter().any(|r| r.prefix == route.prefix) {
                at.push("prefix", format!("{:?} is routed twice", route.prefix));
            }
            if !self.upstreams.contains_key(&route.upstream) {
                let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                at.push(
                    "upstream",
                    format!(
                        "no upstream is named {:?} (known: {known:?})",
                        route.upstream
                    ),
                );
            }
        }
        issues.into_result()
    }

    /// How client addresses are found: the trusted proxies, the header they write, the IPv6
    /// grouping.
    pub fn client_ip(&self) -> ClientIp {
        self.client_ip_checked().unwrap_or_default()
    }

    fn client_ip_checked(&self) -> Result<ClientIp, ConfigError> {
        let mut issues = Issues::new();
        let mut ip = match ClientIp::trusting(&self.trusted_proxies) {
            Ok(ip) => ip,
            Err(e) => {
                issues.push("trusted_proxies", e.to_string());
                ClientIp::peer()
            }
        };
        if let Some(h) = &self.forwarded_header {
            match ForwardingHeader::parse(h) {
                Ok(h) => ip = ip.header(h),
                Err(e) => issues.push("forwarded_header", e.to_string()),
            }
        }
        if let Some(bits) = self.ipv6_prefix {
            if bits > 128 {
                issues.push("ipv6_prefix", "must be between 0 and 128");
            }
            ip = ip.ipv6_prefix(bits);
        }
        issues.into_result().map(|()| ip)
    }
}

/// Checks a Redis URL the way the backend will parse it, and that shared state is compiled in.
fn check_redis(url: &str, issues: &mut Issues) {
    #[cfg(feature = "redis")]
    if let Err(e) = crate::core::redis::RedisConfig::parse(url) {
        issues.push("redis", e.to_string());
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = url;
        issues.push("redis", "shared state needs the `redis` feature");
    }
}

impl RouteConfig {
    /// Checks the route's own fields and its limits, at paths relative to the route.
    pub fn validate(&self, issues: &mut Issues) {
        if !self.prefix.starts_with('/') {
            issues.push("prefix", format!("{:?} must start with /", self.prefix));
        } else if self.prefix.contains(['{', '}'])
            || !self.prefix.bytes().all(|b| b.is_ascii_graphic())
        {
            // As a request path has it (percent-encoded); it also scopes the route's rate-limit
            // keys in Redis.
            issues.push(
                "prefix",
                format!(
                    "{:?}: write the path as sent, percent-encoded (visible ASCII, no spaces or braces)",
                    self.prefix
                ),
            );
        }
        if self.timeout.0.is_zero() {
            issues.push("timeout", "must be longer than 0");
        }
        crate::rate_limit::config::validate_limits(&self.limits, &mut issues.at("limits"));
        if let Some(adaptive) = &self.adaptive {
            adaptive.validate(&mut issues.at("adaptive"));
        }
    }

    /// The route's rate limiter over `backend`, or `None` when it has no limits. Each route
    /// keeps its own buckets, in Redis (scoped `route:{prefix}`) as in memory.
    pub fn rate_limiter<B: 'static>(
        &self,
        backend: &Backend,
        client_ip: &ClientIp,
    ) -> Result<Option<RateLimiter<http::Request<B>>>, ConfigError> {
        crate::rate_limit::config::rate_limiter(
            &self.limits,
            backend,
            &format!("route:{}", self.prefix),
            client_ip,
        )
    }
}

/// A YAML document as a JSON value: serde's YAML formats write enums with tags
/// (`!header x-user-id`), and a configuration should have one shape whatever its syntax.
#[cfg(feature = "yaml")]
pub fn yaml_value(text: &str) -> Result<serde_json::Value, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::new("", e.to_string()))
}

#[cfg(test)]
mod tests;
