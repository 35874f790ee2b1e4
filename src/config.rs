//! Declarative configuration of a layer stack (feature `config`): what the gateway reads from
//! its JSON or YAML file, usable by any service that wants the same layers without the gateway.
//!
//! A [`StackConfig`] names upstream pools (nodes, the request key that shards them, a circuit
//! breaker per node) and routes (a path prefix, its pool, a timeout and its rate limits).
//! [`StackConfig::from_json`] parses and validates in one go: a file either gives a complete,
//! valid configuration or an error listing every mistake with the field it is in
//! (`routes[1].limits[0].rate: must be at least 1`), so nothing starts half-configured.
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
//!
//! The layers are built from it with [`LimitConfig::limit`], [`RouteConfig::rate_limiter`],
//! [`BreakerConfig::circuit_breaker`] and [`UpstreamConfig::topology`]. A new layer joins by
//! adding its own section to [`RouteConfig`] or [`UpstreamConfig`] and its own builder here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::circuit_breaker::{CircuitBreakerConfig, SlidingWindow};
use crate::core::Backend;
use crate::rate_limit::http::{ClientIp, Header};
use crate::rate_limit::{KeyExtractor, Limit, Quota, RateLimiter};
use crate::shard_router::{Algorithm, Node, Topology};

/// A whole stack: upstream pools and the routes in front of them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Where the gateway listens (default `127.0.0.1:8080`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the admin API listens (default `127.0.0.1:9090`).
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Redis (or `redis+cluster://` seeds separated by commas) for state shared by several
    /// instances; in memory when absent.
    #[serde(default)]
    pub redis: Option<String>,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` are believed (addresses or networks).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// How long in-flight requests may finish after a shutdown signal (default 10 s).
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Upstream pools by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, matched by the longest prefix.
    pub routes: Vec<RouteConfig>,
}

/// A pool of upstream nodes.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The nodes (at least one).
    pub nodes: Vec<NodeConfig>,
    /// The request key that picks a node; without one, the request path is the key.
    #[serde(default)]
    pub key: Option<KeySource>,
    /// The circuit breaker each node gets.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// How many nodes of a key's preference list may serve it when nodes are unavailable
    /// (default 2: the owner and one fallback).
    #[serde(default = "default_failover")]
    pub failover: usize,
}

/// One upstream node.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A unique id (also its breaker's name).
    pub id: String,
    /// Its base URL, `http://host:port`.
    pub url: String,
    /// Its weight in the shard map (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

/// Where a request's shard key comes from.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySource {
    /// A header's value.
    Header(String),
    /// The n-th path segment (0-based; `/users/42` has `users` at 0 and `42` at 1).
    PathSegment(usize),
    /// A query parameter.
    Query(String),
}

/// A circuit breaker's settings (resilience4j's names, shortened).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failure rate, in percent, at which the circuit opens (default 50).
    pub failure_rate: f32,
    /// Calls in the count-based sliding window (default 20).
    pub window: u32,
    /// Calls needed before the rates count (default 10).
    pub minimum_calls: u32,
    /// How long the circuit stays open before probing (default 5 s).
    pub wait: Dur,
    /// Probes in HALF_OPEN (default 3).
    pub probes: u32,
    /// A call slower than this counts as slow (default: none).
    pub slow_call_duration: Option<Dur>,
    /// Slow-call rate, in percent, at which the circuit opens (default 100).
    pub slow_call_rate: f32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 50.0,
            window: 20,
            minimum_calls: 10,
            wait: Dur(Duration::from_secs(5)),
            probes: 3,
            slow_call_duration: None,
            slow_call_rate: 100.0,
        }
    }
}

/// A route: requests whose path starts with `prefix` go to `upstream`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path prefix, starting with `/`.
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
}

/// One rate limit of a route.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Its name (in headers, metrics and the admin API).
    pub name: String,
    /// What it counts by.
    pub key: LimitKey,
    /// Requests per `per`.
    pub rate: u32,
    /// The period of `rate`.
    pub per: Dur,
    /// The burst (default: `rate`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Count and report, never deny.
    #[serde(default)]
    pub shadow: bool,
    /// With Redis: lease this many cells per round trip.
    #[serde(default)]
    pub lease: Option<u32>,
}

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LimitKey {
    /// One bucket for the route.
    Global,
    /// The client's address (forwarding headers from trusted proxies only).
    ClientIp,
    /// The method, within the route.
    Endpoint,
    /// A header's value (a user id, an API key).
    Header(String),
}

/// A duration written as `250ms`, `5s`, `1m` or `2h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?} has no unit; write e.g. 250ms, 5s, 1m or 2h"))?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{s:?} does not start with a whole number"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?}; use ms, s, m or h"
                ));
            }
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_failover() -> usize {
    2
}
fn one() -> u32 {
    1
}

/// Everything wrong with a configuration, each mistake with the field it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    issues: Vec<(String, String)>,
}

impl ConfigError {
    /// One mistake at `path` (for checks made outside this module, such as by the gateway).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::one(path, message)
    }

    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            issues: vec![(path.into(), message.into())],
        }
    }

    /// Each mistake: the field's path (`routes[0].limits[1].rate`) and what is wrong.
    pub fn issues(&self) -> &[(String, String)] {
        &self.issues
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (path, message)) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if path.is_empty() {
                write!(f, "{message}")?;
            } else {
                write!(f, "{path}: {message}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl StackConfig {
    /// Parses and validates a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        // serde_json's messages end with "at line L column C".
        Self::parse(&mut serde_json::Deserializer::from_str(text))
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
        // YAML is read into a JSON value first: serde's YAML formats write enums with tags
        // (`!header x-user-id`), and a configuration should have one shape whatever its syntax.
        let value: serde_json::Value =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::one("", e.to_string()))?;
        Self::parse(value)
    }

    fn parse<'de, D>(de: D) -> Result<Self, ConfigError>
    where
        D: Deserializer<'de>,
        D::Error: fmt::Display,
    {
        let config: StackConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let path = if path == "." { String::new() } else { path };
            ConfigError::one(path, inner.to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types cannot: references, ranges, URLs, duplicates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        let mut issue = |path: String, message: String| issues.push((path, message));
        if let Err(e) = ClientIp::trusting(&self.trusted_proxies) {
            issue("trusted_proxies".into(), e.to_string());
        }
        if self.routes.is_empty() {
            issue("routes".into(), "at least one route is needed".into());
        }
        if self.redis.is_some() && !cfg!(feature = "redis") {
            issue(
                "redis".into(),
                "shared state needs the `redis` feature".into(),
            );
        }
        for (name, up) in &self.upstreams {
            let at = format!("upstreams.{name}");
            if up.nodes.is_empty() {
                issue(format!("{at}.nodes"), "at least one node is needed".into());
            }
            for (i, node) in up.nodes.iter().enumerate() {
                let at = format!("{at}.nodes[{i}]");
                if node.id.is_empty() {
                    issue(format!("{at}.id"), "must not be empty".into());
                }
                if up.nodes[..i].iter().any(|n| n.id == node.id) {
                    issue(format!("{at}.id"), format!("{:?} is used twice", node.id));
                }
                if let Err(e) = parse_base_url(&node.url) {
                    issue(format!("{at}.url"), e);
                }
                if node.weight == 0 {
                    issue(format!("{at}.weight"), "must be at least 1".into());
                }
            }
            if up.failover == 0 {
                issue(
                    format!("{at}.failover"),
                    "must be at least 1 (the owner)".into(),
                );
            }
            if let Err(e) = up.breaker.circuit_breaker() {
                issue(format!("{at}.breaker"), e);
            }
            if let Some(KeySource::Header(h)) = &up.key
                && http::HeaderName::try_from(h.as_str()).is_err()
            {
                issue(
                    format!("{at}.key.header"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !route.prefix.starts_with('/') {
                issue(
                    format!("{at}.prefix"),
                    format!("{:?} must start with /", route.prefix),
                );
            } else if route.prefix.contains(['{', '}'])
                || !route.prefix.bytes().all(|b| b.is_ascii_graphic())
            {
                // As a request path has it (percent-encoded); it also scopes the route's
                // rate-limit keys in Redis.
                issue(
                    format!("{at}.prefix"),
                    format!(
                        "{:?}: write the path as sent, percent-encoded (visible ASCII, no \
                         spaces or braces)",
                        route.prefix
                    ),
                );
            }
            if self.routes[..i].iter().any(|r| r.prefix == route.prefix) {
                issue(
                    format!("{at}.prefix"),
                    format!("{:?} is routed twice", route.prefix),
                );
            }
            if !self.upstreams.contains_key(&route.upstream) {
                let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                issue(
                    format!("{at}.upstream"),
                    format!(
                        "no upstream is named {:?} (known: {known:?})",
                        route.upstream
                    ),
                );
            }
            if route.timeout.0.is_zero() {
                issue(format!("{at}.timeout"), "must be longer than 0".into());
            }
            for (j, limit) in route.limits.iter().enumerate() {
                let at = format!("{at}.limits[{j}]");
                if route.limits[..j].iter().any(|l| l.name == limit.name) {
                    issue(
                        format!("{at}.name"),
                        format!("{:?} is used twice", limit.name),
                    );
                }
                if limit.name.is_empty()
                    || limit.name.contains(['{', '}'])
                    || !limit.name.bytes().all(|b| b.is_ascii_graphic())
                {
                    issue(
                        format!("{at}.name"),
                        "use visible ASCII characters, without spaces or braces".into(),
                    );
                }
                if limit.rate == 0 {
                    issue(format!("{at}.rate"), "must be at least 1".into());
                }
                if limit.per.0.is_zero() {
                    issue(format!("{at}.per"), "must be longer than 0".into());
                }
                if limit.burst == Some(0) {
                    issue(format!("{at}.burst"), "must be at least 1".into());
                }
                if limit.lease == Some(0) {
                    issue(format!("{at}.lease"), "must be at least 1".into());
                }
                if limit.lease.is_some() && !cfg!(feature = "redis") {
                    issue(
                        format!("{at}.lease"),
                        "leases are taken from Redis: build with the `redis` feature".into(),
                    );
                }
                if let LimitKey::Header(h) = &limit.key
                    && http::HeaderName::try_from(h.as_str()).is_err()
                {
                    issue(
                        format!("{at}.key.header"),
                        format!("{h:?} is not a header name"),
                    );
                }
                if limit.rate > 0 && !limit.per.0.is_zero() && limit.quota().is_err() {
                    issue(
                        format!("{at}.rate"),
                        format!("{} per {} is not a valid quota", limit.rate, limit.per),
                    );
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { issues })
        }
    }

    /// The trusted proxies as a client-IP key extractor.
    pub fn client_ip(&self) -> ClientIp {
        ClientIp::trusting(&self.trusted_proxies).unwrap_or_default()
    }
}

/// Checks an upstream base URL: `http://host:port` with no path beyond `/`.
pub fn parse_base_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// upstreams are supported"));
    }
    if uri.authority().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{url:?}: give the base URL only, without a path"));
    }
    Ok(uri)
}

/// Keys a route's limit by the request method, borrowed from the request (no allocation).
#[derive(Clone, Copy, Debug)]
struct Method;

impl<B: 'static> KeyExtractor<http::Request<B>> for Method {
    fn key<'a>(&self, req: &'a http::Request<B>) -> Option<std::borrow::Cow<'a, str>> {
        Some(std::borrow::Cow::Borrowed(req.method().as_str()))
    }
}

impl LimitConfig {
    /// The limit's quota.
    pub fn quota(&self) -> Result<Quota, String> {
        let q = Quota::new(self.rate, self.per.0).map_err(|e| e.to_string())?;
        Ok(match self.burst {
            Some(b) => q.with_burst(b),
            None => q,
        })
    }

    /// The limit, for the requests of one route. An `endpoint` limit keys by method: with
    /// the route's limiter (one per route, scoped by route in Redis) that is one bucket per
    /// method and route.
    pub fn limit<B: 'static>(&self, client_ip: &ClientIp) -> Limit<http::Request<B>> {
        let quota = self.quota().expect("validated");
        let name = self.name.clone();
        let limit = match &self.key {
            LimitKey::Global => Limit::global(name, quota),
            LimitKey::ClientIp => Limit::keyed(name, quota, client_ip.clone()),
            LimitKey::Header(h) => Limit::keyed(name, quota, Header::new(h)),
            LimitKey::Endpoint => Limit::keyed(name, quota, Method),
        };
        let limit = limit.shadow(self.shadow);
        // Without the `redis` feature, `validate` refuses a lease.
        #[cfg(feature = "redis")]
        let limit = match self.lease {
            Some(batch) => limit.lease(crate::rate_limit::Lease::new(batch)),
            None => limit,
        };
        limit
    }
}

impl RouteConfig {
    /// The route's rate limiter over `backend`, or `None` when it has no limits.
    pub fn rate_limiter<B: 'static>(
        &self,
        backend: &Backend,
        client_ip: &ClientIp,
    ) -> Result<Option<RateLimiter<http::Request<B>>>, ConfigError> {
        if self.limits.is_empty() {
            return Ok(None);
        }
        // Each route keeps its own buckets, in Redis as in memory.
        let mut builder = RateLimiter::builder()
            .backend(backend.clone())
            .scope(format!("route:{}", self.prefix));
        for l in &self.limits {
            builder = builder.limit(l.limit(client_ip));
        }
        builder
            .build()
            .map(Some)
            .map_err(|e| ConfigError::one(format!("routes[{}].limits", self.prefix), e.to_string()))
    }
}

impl BreakerConfig {
    /// The breaker configuration.
    pub fn circuit_breaker(&self) -> Result<CircuitBreakerConfig, String> {
        let mut c = CircuitBreakerConfig::default()
            .failure_rate_threshold(self.failure_rate)
            .sliding_window(SlidingWindow::CountBased(self.window))
            .minimum_calls(self.minimum_calls)
            .wait_duration(self.wait.0)
            .permitted_calls_in_half_open(self.probes)
            .slow_call_rate_threshold(self.slow_call_rate);
        if let Some(d) = self.slow_call_duration {
            c = c.slow_call_duration(d.0);
        }
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

impl UpstreamConfig {
    /// The pool's shard map (the default slot table).
    pub fn topology(&self) -> Result<Topology, ConfigError> {
        Topology::new(
            Algorithm::table(),
            self.nodes
                .iter()
                .map(|n| Node::new(n.id.as_str(), n.url.as_str()).with_weight(n.weight)),
        )
        .map_err(|e| ConfigError::one("upstreams.nodes", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("2h".parse::<Dur>().unwrap().to_string(), "2h");
        assert!("5".parse::<Dur>().unwrap_err().contains("no unit"));
        assert!("5d".parse::<Dur>().unwrap_err().contains("unknown unit"));
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn leases_and_redis_need_the_redis_feature() {
        let mut v = base();
        v["redis"] = "redis://127.0.0.1:6379".into();
        v["routes"][0]["limits"][0]["lease"] = 10.into();
        let e = error_of(v);
        assert!(
            e.contains("redis: shared state needs the `redis` feature"),
            "{e}"
        );
        assert!(
            e.contains("routes[0].limits[0].lease: leases are taken from Redis"),
            "{e}"
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_readme_configuration_is_valid() {
        let readme = include_str!("../README.md");
        let start = readme.find("```json\n").expect("README has a JSON config") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let config = StackConfig::from_json(&readme[start..end]).unwrap();
        assert_eq!(config.routes[0].limits.len(), 4);
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn the_readme_yaml_configuration_equals_the_json_one() {
        let readme = include_str!("../README.md");
        let block = |fence: &str| {
            let start = readme.find(fence).expect("README has the block") + fence.len();
            let end = start + readme[start..].find("```").unwrap();
            &readme[start..end]
        };
        let json = StackConfig::from_json(block("```json\n")).unwrap();
        let yaml = StackConfig::from_yaml(block("```yaml\n")).unwrap();
        assert_eq!(json, yaml);
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn yaml_errors_name_the_field_and_syntax_errors_the_line() {
        let err = StackConfig::from_yaml(
            "upstreams:\n  api:\n    nodes: [{ id: a, url: 'http://h:1' }]\n    key: { cookie: x }\nroutes: []\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("upstreams.api.key: unknown variant `cookie`"),
            "{err}"
        );
        let err = StackConfig::from_yaml("routes: [\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = StackConfig::from_yaml("").unwrap_err().to_string();
        assert!(err.contains("invalid type: null"), "{err}");
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "upstreams": { "api": { "nodes": [{ "id": "a", "url": "http://127.0.0.1:9001" }] } },
            "routes": [{ "prefix": "/api", "upstream": "api",
                         "limits": [{ "name": "g", "key": "global", "rate": 10, "per": "1s" }] }]
        })
    }

    fn error_of(v: serde_json::Value) -> String {
        StackConfig::from_json(&v.to_string())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn each_mistake_names_its_field() {
        assert!(StackConfig::from_json(&base().to_string()).is_ok());

        let mut v = base();
        v["routes"][0]["prefix"] = "/café".into();
        let e = error_of(v);
        assert!(
            e.starts_with("routes[0].prefix: \"/café\": write the path as sent"),
            "{e}"
        );

        let mut v = base();
        v["routes"][0]["limits"][0]["rate"] = 0.into();
        assert_eq!(error_of(v), "routes[0].limits[0].rate: must be at least 1");

        let mut v = base();
        v["routes"][0]["limits"][0]["per"] = "1 second".into();
        let e = error_of(v);
        assert!(e.starts_with("routes[0].limits[0].per: "), "{e}");
        assert!(e.contains("unknown unit"), "{e}");

        let mut v = base();
        v["upstreams"]["api"]["nodes"][0]["url"] = "https://x:1".into();
        assert!(error_of(v).starts_with("upstreams.api.nodes[0].url: "));

        let mut v = base();
        v["upstreams"]["api"]["nodes"][0]["weigth"] = 2.into();
        let e = error_of(v);
        assert!(
            e.starts_with("upstreams.api.nodes[0].weigth: unknown field `weigth`"),
            "{e}"
        );
        assert!(e.contains("line 1 column"), "{e}");

        let mut v = base();
        v["routes"][0]["limits"][0]["key"] = serde_json::json!({ "cookie": "x" });
        assert!(error_of(v).starts_with("routes[0].limits[0].key: "));

        let mut v = base();
        v["upstreams"]["api"]["breaker"] = serde_json::json!({ "failure_rate": 150 });
        assert!(error_of(v).starts_with("upstreams.api.breaker: "));

        let e = StackConfig::from_json("{ \"routes\": [ }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
