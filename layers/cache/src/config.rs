//! The cache's configuration section (feature `serde`): the cache and its partitions
//! ([`CacheConfig`]), and what a route asks of it ([`RouteCache`]), each validated with the
//! path of every mistake.
//!
//! ```
//! use omega_cache::config::{CacheConfig, RouteCache};
//! use omega_core::config::{Issues, from_json};
//!
//! let cache: CacheConfig = from_json(r#"{
//!     "partitions": [
//!         { "name": "pages", "capacity": 67108864, "ttl": "30s", "stale_while_revalidate": "10s" },
//!         { "name": "api", "ttl": "5s", "negative_ttl": "1s" }
//!     ]
//! }"#).unwrap();
//! let route: RouteCache = from_json(r#"{ "partition": "pages", "max_ttl": "5m", "tags_header": "surrogate-key", "stale_if_error": "1m" }"#).unwrap();
//! let mut issues = Issues::new();
//! cache.validate(&mut issues);
//! route.validate_against(&cache, &mut issues);
//! assert!(issues.is_empty());
//!
//! let bad: RouteCache = from_json(r#"{ "partition": "nope", "statuses": [99], "min_ttl": "2m", "max_ttl": "1m" }"#).unwrap();
//! let mut issues = Issues::new();
//! bad.validate_against(&cache, &mut issues);
//! assert_eq!(issues.into_result().unwrap_err().to_string(),
//!     "statuses[0]: 99 is not an HTTP status (100 to 599)\n\
//!      max_ttl: must not be below min_ttl (2m)\n\
//!      partition: no partition is named \"nope\" (configured: pages, api)");
//! ```

use omega_core::config::{Dur, Issues};
use omega_core::key::check_name;
use serde::{Deserialize, Serialize};

use crate::partition::{DEFAULT_CAPACITY, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_TTL, Partition};
use crate::policy::DEFAULT_PARTITION;

/// The cache: its name (in Redis keys and metric labels), its partitions and the lease of
/// cross-instance coalescing. Whether L2 is used is the choice of whoever builds it (the
/// gateway uses its Redis when it has one).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The cache's name (default `cache`).
    #[serde(default = "default_name")]
    pub name: String,
    /// The partitions (default: one named `default`).
    #[serde(default)]
    pub partitions: Vec<PartitionConfig>,
    /// How long a loading instance's lease lasts (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<Dur>,
    /// How long other instances wait for its result before loading themselves (default `2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_wait: Option<Dur>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            name: default_name(),
            partitions: Vec::new(),
            lease_ttl: None,
            lease_wait: None,
        }
    }
}

fn default_name() -> String {
    "cache".to_owned()
}

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Its name.
    pub name: String,
    /// Bytes of entries kept in memory (default 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// The TTL of responses that say nothing (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Dur>,
    /// The TTL of negative answers (default: `ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_ttl: Option<Dur>,
    /// The least TTL (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<Dur>,
    /// The greatest TTL (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Dur>,
    /// Served stale this long past the TTL while one request refreshes (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<Dur>,
    /// Served this long past the TTL when the upstream fails (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<Dur>,
    /// The largest entry stored, in bytes (default 1 MiB); larger responses stream through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entry_bytes: Option<u64>,
    /// Count evictions (default `false`; see [`Partition::count_evictions`]).
    #[serde(default)]
    pub count_evictions: bool,
    /// Keep entries in memory (default `true`; `false`: L2 only, see
    /// [`Partition::in_memory`]).
    #[serde(default = "yes")]
    pub in_memory: bool,
}

impl PartitionConfig {
    /// A partition named `name` with every default.
    pub fn new(name: impl Into<String>) -> Self {
        PartitionConfig {
            name: name.into(),
            capacity: None,
            ttl: None,
            negative_ttl: None,
            min_ttl: None,
            max_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            max_entry_bytes: None,
            count_evictions: false,
            in_memory: true,
        }
    }

    /// The partition this configures (codec: the cache's).
    pub fn partition<V>(&self) -> Partition<V> {
        let mut p = Partition::new(self.name.as_str())
            .capacity(self.capacity.unwrap_or(DEFAULT_CAPACITY))
            .ttl(self.ttl.map_or(DEFAULT_TTL, |d| d.0))
            .max_entry_bytes(self.max_entry_bytes.map_or(DEFAULT_MAX_ENTRY_BYTES, |b| {
                usize::try_from(b).unwrap_or(usize::MAX)
            }))
            .count_evictions(self.count_evictions)
            .in_memory(self.in_memory);
        if let Some(d) = self.negative_ttl {
            p = p.negative_ttl(d.0);
        }
        if self.min_ttl.is_some() || self.max_ttl.is_some() {
            p = p.ttl_bounds(
                self.min_ttl.map_or(std::time::Duration::ZERO, |d| d.0),
                self.max_ttl.map_or(std::time::Duration::MAX, |d| d.0),
            );
        }
        if let Some(d) = self.stale_while_revalidate {
            p = p.stale_while_revalidate(d.0);
        }
        if let Some(d) = self.stale_if_error {
            p = p.stale_if_error(d.0);
        }
        p
    }

    /// Checks what the types cannot, reporting under `issues`' current path.
    pub fn validate(&self, issues: &mut Issues) {
        issues.check("name", check_name("partition name", &self.name));
        if self.capacity == Some(0) {
            issues.push("capacity", "must be at least 1 byte");
        }
        if self.max_entry_bytes == Some(0) {
            issues.push("max_entry_bytes", "must be at least 1 byte");
        }
        if let (Some(max), Some(cap)) = (self.max_entry_bytes, self.capacity)
            && max > cap
        {
            issues.push(
                "max_entry_bytes",
                format!("must not exceed capacity ({cap})"),
            );
        }
        if self.ttl.is_some_and(|d| d.0.is_zero()) {
            issues.push("ttl", "must be longer than 0s");
        }
        bounds(self.min_ttl, self.max_ttl, issues);
    }
}

fn bounds(min: Option<Dur>, max: Option<Dur>, issues: &mut Issues) {
    if let (Some(min), Some(max)) = (min, max)
        && max.0 < min.0
    {
        issues.push("max_ttl", format!("must not be below min_ttl ({min})"));
    }
}

impl CacheConfig {
    /// Checks every partition and the names, reporting each mistake at its path
    /// (`partitions[1].max_ttl`).
    pub fn validate(&self, issues: &mut Issues) {
        issues.check("name", check_name("cache name", &self.name));
        for (i, p) in self.partitions.iter().enumerate() {
            let mut at = issues.at(format!("partitions[{i}]"));
            p.validate(&mut at);
            if self.partitions[..i].iter().any(|q| q.name == p.name) {
                at.push(
                    "name",
                    format!("{:?} is used by an earlier partition", p.name),
                );
            }
        }
        if let (Some(ttl), Some(wait)) = (self.lease_ttl, self.lease_wait)
            && wait.0 > ttl.0
        {
            issues.push("lease_wait", format!("must not exceed lease_ttl ({ttl})"));
        }
    }

    /// The names of the partitions a cache built from this has.
    pub fn partition_names(&self) -> Vec<&str> {
        if self.partitions.is_empty() {
            vec![DEFAULT_PARTITION]
        } else {
            self.partitions.iter().map(|p| p.name.as_str()).collect()
        }
    }

    /// A builder for HTTP responses (codec [`HttpCodec`](crate::HttpCodec); feature `http`)
    /// with this name and these partitions; add Redis when there is one, then build.
    #[cfg(feature = "http")]
    pub fn http_builder(&self) -> crate::CacheBuilder<std::sync::Arc<crate::http::StoredResponse>> {
        self.builder().codec(crate::http::HttpCodec)
    }

    /// A builder with this name and these partitions; add a codec, and Redis when there is
    /// one, then build.
    pub fn builder<V: Clone + Send + Sync + 'static>(&self) -> crate::CacheBuilder<V> {
        let mut b = crate::Cache::builder().name(self.name.as_str());
        for p in &self.partitions {
            b = b.partition(p.partition());
        }
        #[cfg(feature = "redis")]
        {
            let ttl = self
                .lease_ttl
                .map_or(std::time::Duration::from_secs(5), |d| d.0);
            let wait = self
                .lease_wait
                .map_or(std::time::Duration::from_secs(2), |d| d.0);
            b = b.lease(ttl, wait, std::time::Duration::from_millis(5));
        }
        b
    }
}

/// What a route asks of the cache: the RFC 9111 shared cache over a partition, and the few
/// choices RFC 9111 leaves to a cache. Every field has a default: `{}` (or
/// [`RouteCache::rfc9111`]) is the plain RFC 9111 shared cache, nothing overridden.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    /// Whether the route is cached (default `true`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The partition (default `default`).
    #[serde(default = "default_partition")]
    pub partition: String,
    /// The cache's name in `Cache-Status` (default: the cache's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The scheme of keys of requests whose URI has none: `http` (default) or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The lifetime of heuristically cacheable responses that have neither explicit freshness
    /// nor `Last-Modified` (default none: not stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Dur>,
    /// The least freshness lifetime (overrides the origin; default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<Dur>,
    /// The greatest freshness lifetime (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Dur>,
    /// The statuses stored without explicit freshness (default RFC 9110's heuristically
    /// cacheable ones: 200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statuses: Option<Vec<u16>>,
    /// The share of the time since `Last-Modified` given as heuristic freshness (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heuristic_percent: Option<u8>,
    /// The longest heuristic freshness (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heuristic_max: Option<Dur>,
    /// How long stale responses are kept, for conditional requests and clients' `max-stale`
    /// (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revalidation_window: Option<Dur>,
    /// Stale-if-error for responses that neither grant nor forbid it (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<Dur>,
    /// Stale-while-revalidate for responses that neither grant nor forbid it (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<Dur>,
    /// Store responses that set cookies without their `Set-Cookie` fields (default `false`:
    /// such responses are not stored).
    #[serde(default)]
    pub strip_set_cookie: bool,
    /// The response header whose values tag the entry (`surrogate-key`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags_header: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_partition() -> String {
    DEFAULT_PARTITION.to_owned()
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            enabled: true,
            partition: default_partition(),
            name: None,
            scheme: None,
            ttl: None,
            min_ttl: None,
            max_ttl: None,
            statuses: None,
            heuristic_percent: None,
            heuristic_max: None,
            revalidation_window: None,
            stale_if_error: None,
            stale_while_revalidate: None,
            strip_set_cookie: false,
            tags_header: None,
        }
    }
}

impl RouteCache {
    /// The RFC 9111 shared cache over the default partition, nothing overridden: what a
    /// gateway puts in front of everything in its quick mode.
    pub fn rfc9111() -> Self {
        RouteCache::default()
    }

    /// Checks what the types cannot, reporting under `issues`' current path.
    pub fn validate(&self, issues: &mut Issues) {
        issues.check("partition", check_name("partition name", &self.partition));
        if let Some(name) = &self.name
            && (name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b)))
        {
            issues.push("name", format!("{name:?}: use visible ASCII characters"));
        }
        if let Some(scheme) = &self.scheme
            && !scheme.eq_ignore_ascii_case("http")
            && !scheme.eq_ignore_ascii_case("https")
        {
            issues.push("scheme", format!("{scheme:?} is not http or https"));
        }
        for (i, s) in self.statuses.iter().flatten().enumerate() {
            if !(100..=599).contains(s) {
                issues.push(
                    format!("statuses[{i}]"),
                    format!("{s} is not an HTTP status (100 to 599)"),
                );
            }
        }
        if self.heuristic_percent.is_some_and(|p| p > 100) {
            issues.push("heuristic_percent", "must be at most 100");
        }
        if let Some(h) = &self.tags_header
            && (h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)))
        {
            issues.push("tags_header", format!("{h:?} is not a header name"));
        }
        if self.ttl.is_some_and(|d| d.0.is_zero()) {
            issues.push("ttl", "must be longer than 0s");
        }
        bounds(self.min_ttl, self.max_ttl, issues);
    }

    /// [`RouteCache::validate`], and the partition must be one of `cache`'s.
    pub fn validate_against(&self, cache: &CacheConfig, issues: &mut Issues) {
        self.validate(issues);
        let names = cache.partition_names();
        if !names.contains(&self.partition.as_str()) {
            issues.push(
                "partition",
                format!(
                    "no partition is named {:?} (configured: {})",
                    self.partition,
                    names.join(", ")
                ),
            );
        }
    }

    /// The RFC 9111 policy of this route (feature `http`).
    #[cfg(feature = "http")]
    pub fn policy(&self) -> crate::http::HttpPolicy {
        let mut p = crate::http::HttpPolicy::new(self.partition.as_str());
        if let Some(n) = &self.name {
            p = p.name(n.as_str());
        }
        if let Some(s) = &self.scheme {
            p = p.scheme(s);
        }
        if let Some(ttl) = self.ttl {
            p = p.default_ttl(ttl.0);
        }
        if self.min_ttl.is_some() || self.max_ttl.is_some() {
            p = p.ttl_bounds(
                self.min_ttl.map_or(std::time::Duration::ZERO, |d| d.0),
                self.max_ttl.map_or(std::time::Duration::MAX, |d| d.0),
            );
        }
        if let Some(s) = &self.statuses {
            p = p.statuses(s.iter().copied());
        }
        if self.heuristic_percent.is_some() || self.heuristic_max.is_some() {
            p = p.heuristic(
                self.heuristic_percent.unwrap_or(10),
                self.heuristic_max
                    .map_or(std::time::Duration::from_secs(86_400), |d| d.0),
            );
        }
        if let Some(d) = self.revalidation_window {
            p = p.revalidation_window(d.0);
        }
        if let Some(d) = self.stale_if_error {
            p = p.stale_if_error(d.0);
        }
        if let Some(d) = self.stale_while_revalidate {
            p = p.stale_while_revalidate(d.0);
        }
        if self.strip_set_cookie {
            p = p.set_cookie(crate::http::SetCookie::Strip);
        }
        if let Some(h) = &self.tags_header {
            p = p.tags_from(h);
        }
        p
    }

    /// The route's cache layer over `cache` (feature `http`): `HttpCacheLayer::new(cache,
    /// self.policy())`.
    #[cfg(feature = "http")]
    pub fn layer(
        &self,
        cache: &crate::Cache<std::sync::Arc<crate::http::StoredResponse>>,
    ) -> crate::http::HttpCacheLayer {
        crate::http::HttpCacheLayer::new(cache.clone(), self.policy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use omega_core::config::from_json;

    #[test]
    fn every_mistake_is_reported_at_its_path() {
        let cfg: CacheConfig = from_json(
            r#"{ "name": "c", "partitions": [
                { "name": "a b", "capacity": 0 },
                { "name": "p", "capacity": 10, "max_entry_bytes": 20, "min_ttl": "1m", "max_ttl": "1s", "ttl": "0s" },
                { "name": "p" }
            ], "lease_ttl": "1s", "lease_wait": "2s" }"#,
        )
        .unwrap();
        let mut issues = Issues::new();
        cfg.validate(&mut issues);
        let text = issues.into_result().unwrap_err().to_string();
        assert_eq!(
            text,
            "partitions[0].name: partition name \"a b\": use 1 to 128 visible ASCII characters, without spaces or braces\n\
             partitions[0].capacity: must be at least 1 byte\n\
             partitions[1].max_entry_bytes: must not exceed capacity (10)\n\
             partitions[1].ttl: must be longer than 0s\n\
             partitions[1].max_ttl: must not be below min_ttl (1m)\n\
             partitions[2].name: \"p\" is used by an earlier partition\n\
             lease_wait: must not exceed lease_ttl (1s)"
        );
        let e = from_json::<CacheConfig>(r#"{ "partitions": [{ "name": "x", "ttl": "5d" }] }"#)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("partitions[0].ttl: unknown unit"),
            "{e}"
        );
        let e = from_json::<RouteCache>(r#"{ "partiton": "x" }"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `partiton`"), "{e}");
    }

    #[test]
    fn a_configured_partition_builds_with_its_settings() {
        let cfg: PartitionConfig = from_json(
            r#"{ "name": "p", "capacity": 1000, "ttl": "30s", "negative_ttl": "5s", "min_ttl": "1s", "max_ttl": "1m", "stale_if_error": "1h" }"#,
        )
        .unwrap();
        let p: Partition<bytes::Bytes> = cfg.partition();
        assert_eq!(p.capacity, 1000);
        assert_eq!(p.ttl_for(None, true), std::time::Duration::from_secs(5));
        assert_eq!(
            p.ttl_for(Some(std::time::Duration::from_secs(3600)), false),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(p.sie, std::time::Duration::from_secs(3600));
        let route = RouteCache::default();
        let mut issues = Issues::new();
        route.validate_against(&CacheConfig::default(), &mut issues);
        assert!(issues.is_empty());
    }
}
