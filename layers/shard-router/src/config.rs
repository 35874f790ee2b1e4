//! The shard router's configuration section (feature `serde`): a pool of nodes, the key that
//! shards requests over them, and how far a request fails over.
//!
//! A file writes a pool as
//!
//! ```json
//! {
//!   "nodes": [
//!     { "id": "a", "url": "http://10.0.0.1:8080" },
//!     { "id": "b", "url": "http://10.0.0.2:8080", "weight": 2 }
//!   ],
//!   "key": { "header": "x-user-id" },
//!   "failover": 2
//! }
//! ```
//!
//! `key` is any of core's key sources ([`KeyConfig`]); without it the request path is the
//! key. [`PoolConfig::validate`] reports every mistake at its field path;
//! [`PoolConfig::topology`] and (with `http`) [`PoolConfig::router`] build the layer's
//! objects.
//!
//! ```
//! use omega_core::config::{Issues, from_json};
//! use omega_shard_router::config::PoolConfig;
//!
//! let pool: PoolConfig = from_json(r#"{
//!     "nodes": [{ "id": "a", "url": "http://127.0.0.1:9001" }, { "id": "b", "url": "http://127.0.0.1:9002" }],
//!     "key": { "header": "x-user-id" }
//! }"#)?;
//! let mut issues = Issues::new();
//! pool.validate(&mut issues);
//! issues.into_result()?;
//! assert_eq!(pool.failover, 2);
//! assert_eq!(pool.topology()?.len(), 2);
//!
//! let bad: PoolConfig = from_json(r#"{ "nodes": [{ "id": "a", "url": "https://x:1/api", "weight": 0 }], "failover": 0 }"#)?;
//! let mut issues = Issues::new();
//! bad.validate(&mut issues.at("upstreams.api"));
//! let text = issues.into_result().unwrap_err().to_string();
//! assert!(text.contains("upstreams.api.nodes[0].url: "), "{text}");
//! assert!(text.contains("upstreams.api.nodes[0].weight: must be at least 1"), "{text}");
//! assert!(text.contains("upstreams.api.failover: must be at least 1 (the owner)"), "{text}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use omega_core::config::{ConfigError, Issues, KeyConfig};
#[cfg(feature = "http")]
use omega_core::key::http::{AnyKey, ClientIp, Path};
use serde::{Deserialize, Serialize};

#[cfg(feature = "http")]
use crate::builder::ShardRouterBuilder;
#[cfg(feature = "http")]
use crate::handle::TopologyHandle;
use crate::node::{Algorithm, MAX_NODES, Node, address_problem, id_problem};
#[cfg(feature = "http")]
use crate::service::ShardRouter;
use crate::topology::Topology;

/// One node of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// A unique id (the gateway also names the node's circuit breaker with it).
    pub id: String,
    /// Its base URL, `http://host:port` ([`parse_base_url`]).
    pub url: String,
    /// Its weight in the shard map (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

impl NodeConfig {
    /// The topology node: this id, weight, and the URL as its address.
    pub fn node(&self) -> Node {
        Node::new(self.id.as_str(), self.url.as_str()).with_weight(self.weight)
    }
}

/// A pool of nodes sharded by a request key.
///
/// It has no `deny_unknown_fields`: a file puts other sections beside it (the gateway
/// flattens it next to a circuit breaker's section) and reports unknown fields itself.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct PoolConfig {
    /// The nodes (at least one).
    pub nodes: Vec<NodeConfig>,
    /// The request key that picks a node; without one, the request path is the key.
    #[serde(default)]
    pub key: Option<KeyConfig>,
    /// How many nodes of a key's preference list may serve it when nodes are unavailable
    /// (default 2: the owner and one fallback).
    #[serde(default = "default_failover")]
    pub failover: usize,
}

fn one() -> u32 {
    1
}

fn default_failover() -> usize {
    PoolConfig::DEFAULT_FAILOVER
}

impl PoolConfig {
    /// The failover when a file gives none: the owner and one fallback.
    pub const DEFAULT_FAILOVER: usize = 2;

    /// Records every mistake at its path relative to the pool (`nodes[1].url`, `failover`,
    /// `key.header`): no node, an empty, invalid or repeated id, a URL that is not a base
    /// `http://` URL, a weight of 0, a failover of 0, a bad key.
    pub fn validate(&self, issues: &mut Issues) {
        if self.nodes.is_empty() {
            issues.push("nodes", "at least one node is needed");
        }
        if self.nodes.len() > MAX_NODES {
            issues.push("nodes", format!("at most {MAX_NODES} nodes"));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let mut at = issues.at(format!("nodes[{i}]"));
            if node.id.is_empty() {
                at.push("id", "must not be empty");
            } else if let Some(problem) = id_problem(&node.id) {
                at.push("id", problem);
            }
            if self.nodes[..i].iter().any(|n| n.id == node.id) {
                at.push("id", format!("{:?} is used twice", node.id));
            }
            if let Err(e) = parse_base_url(&node.url) {
                at.push("url", e);
            } else if let Some(problem) = address_problem(&node.url) {
                at.push("url", problem);
            }
            if node.weight == 0 {
                at.push("weight", "must be at least 1");
            }
        }
        if self.failover == 0 {
            issues.push("failover", "must be at least 1 (the owner)");
        }
        if let Some(key) = &self.key {
            key.validate("key", issues);
        }
    }

    /// The pool's shard map: the default slot table over the nodes, each node's address its
    /// URL. Errors (for a pool [`validate`](Self::validate) did not check) are reported at
    /// `nodes`.
    pub fn topology(&self) -> Result<Topology, ConfigError> {
        Topology::new(Algorithm::table(), self.nodes.iter().map(NodeConfig::node))
            .map_err(|e| ConfigError::new("nodes", e.to_string()))
    }

    /// The key source of the pool's requests: the configured key, or the request path
    /// (core's `Path`). `client_ip` says how client addresses are found (trusted proxies)
    /// for a `client_ip` key (feature `http`).
    #[cfg(feature = "http")]
    pub fn key_source(&self, client_ip: &ClientIp) -> AnyKey {
        match &self.key {
            Some(key) => key.source(client_ip),
            None => AnyKey::Path(Path),
        }
    }

    /// A router builder for this pool over `handle` (feature `http`): keyed by
    /// [`key_source`](Self::key_source), failing over along [`failover`](Self::failover)
    /// nodes. Add the availability check and the rejection strategy, then build it with the
    /// nodes' services.
    #[cfg(feature = "http")]
    pub fn router(
        &self,
        handle: TopologyHandle,
        client_ip: &ClientIp,
    ) -> ShardRouterBuilder<AnyKey> {
        ShardRouter::builder(handle)
            .key(self.key_source(client_ip))
            .failover(self.failover)
    }
}

/// Checks an upstream base URL: `http://host:port` or `https://host:port` (the port may be
/// left out), with no path beyond `/` and no query.
pub fn parse_base_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{url:?}: only http:// and https:// upstreams are supported"
        ));
    }
    if uri.authority().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{url:?}: give the base URL only, without a path"));
    }
    Ok(uri)
}
