//! The gateway's file: its own settings (where it listens, its admin API, how it shuts down)
//! beside the layer stack, which [`StackConfig`] composes from each layer's section.
//!
//! The file is one JSON or YAML document: the gateway takes its own fields out and hands the
//! rest to [`StackConfig`], which refuses any field it does not know, so a typo is reported
//! wherever it is.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use omega_penta::config::{ConfigError, Dur, Issues, StackConfig};
use serde_json::Value;

/// Where the gateway listens when the file does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where the admin API listens when the file does not say.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
/// How long in-flight requests may finish after a shutdown signal, by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A gateway's whole configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// Where the proxy listens (`listen`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Where the admin API listens (`admin`, default `127.0.0.1:9090`).
    pub admin: SocketAddr,
    /// How long in-flight requests may finish after a shutdown signal (`shutdown_grace`,
    /// default 10 s).
    pub shutdown_grace: Dur,
    /// How long the gateway keeps serving after a shutdown signal while `/readyz` already
    /// answers 503, so that load balancers stop sending first (`pre_drain`, default 0 s).
    pub pre_drain: Dur,
    /// The proxy listener's limits and timeouts (`server`).
    pub server: crate::serve::ServerLimits,
    /// Who may change the gateway through its admin API (`admin_api`).
    pub admin_api: AdminApi,
    /// How breakers share their openings over Redis (`shared_breakers`).
    pub shared_breakers: SharedBreakers,
    /// Where the access log goes (`access_log`; off by default).
    pub access_log: Option<crate::access_log::AccessLogConfig>,
    /// Whether requests get an `X-Request-Id` (`request_id`, default `true`).
    pub request_id: bool,
    /// The proxy listener's certificate (`tls`; plain HTTP without).
    pub tls: Option<crate::tls::ListenerTls>,
    /// The layer stack: upstream pools, routes, Redis, trusted proxies.
    pub stack: StackConfig,
}

/// How the gateway's breakers share openings over Redis: `"shared_breakers": { "quorum": 2,
/// "instance_id": "gw-1" }`. Only read when `redis` is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedBreakers {
    /// How many instances must trip a node's breaker before its opening spreads to every
    /// gateway (`quorum`, default 2: one gateway with a local fault does not open its peers).
    /// `None` keeps the breaker crate's default.
    pub quorum: Option<u32>,
    /// This gateway's stable name in the votes (`instance_id`, default the host name). Gateways
    /// that share a host and should vote apart each set their own.
    pub instance_id: Option<String>,
}

/// Who may change the gateway through its admin API: `"admin_api": { "token": "...",
/// "token_file": "/run/omega/admin.token", "node_hosts": ["10.0.0.7"] }`.
///
/// Mutating endpoints need `Authorization: Bearer <token>`. The token is, in this order, the
/// environment variable `OMEGA_ADMIN_TOKEN`, `token`, or one generated at start and written to
/// `token_file` (default `$XDG_RUNTIME_DIR/omega-gateway-<admin port>.token`, or the temporary
/// directory), readable by the user only; a generated token needs the admin API on loopback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminApi {
    /// The bearer token (`token`); prefer `OMEGA_ADMIN_TOKEN` to keep it out of the file.
    pub token: Option<String>,
    /// Where a generated token is written (`token_file`).
    pub token_file: Option<std::path::PathBuf>,
    /// The hosts that nodes added through the admin API may point at (`node_hosts`); by
    /// default the hosts of the file's pools.
    pub node_hosts: Option<Vec<String>>,
}

impl AdminApi {
    fn from_value(value: Value, issues: &mut Issues) -> Self {
        let mut out = AdminApi::default();
        let Value::Object(mut fields) = value else {
            issues.push(
                "admin_api",
                format!("{value} is not a map such as {{ \"token_file\": \"admin.token\" }}"),
            );
            return out;
        };
        let mut text =
            |name: &str, fields: &mut serde_json::Map<String, Value>| match fields.remove(name) {
                None => None,
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                Some(other) => {
                    issues.push(
                        format!("admin_api.{name}"),
                        format!("{other} is not a non-empty string"),
                    );
                    None
                }
            };
        out.token = text("token", &mut fields);
        out.token_file = text("token_file", &mut fields).map(Into::into);
        match fields.remove("node_hosts") {
            None => {}
            Some(Value::Array(hosts)) => {
                let mut list = Vec::new();
                for (i, h) in hosts.into_iter().enumerate() {
                    match h {
                        Value::String(s) if !s.is_empty() => list.push(s.to_ascii_lowercase()),
                        other => issues.push(
                            format!("admin_api.node_hosts[{i}]"),
                            format!("{other} is not a host name or address"),
                        ),
                    }
                }
                out.node_hosts = Some(list);
            }
            Some(other) => issues.push(
                "admin_api.node_hosts",
                format!("{other} is not a list of hosts"),
            ),
        }
        for name in fields.keys() {
            issues.push(
                format!("admin_api.{name}"),
                "unknown field (expected token, token_file, node_hosts)",
            );
        }
        out
    }
}

/// A quorum is a whole number of instances, 1 or more.
fn quorum(n: &serde_json::Number) -> Option<u32> {
    n.as_u64()
        .and_then(|q| u32::try_from(q).ok())
        .filter(|&q| q >= 1)
}

impl SharedBreakers {
    fn from_value(value: Value, issues: &mut Issues) -> Self {
        let mut out = SharedBreakers::default();
        let Value::Object(mut fields) = value else {
            issues.push(
                "shared_breakers",
                format!("{value} is not a map such as {{ \"quorum\": 2 }}"),
            );
            return out;
        };
        match fields.remove("quorum") {
            None => {}
            Some(Value::Number(n)) if quorum(&n).is_some() => out.quorum = quorum(&n),
            Some(other) => issues.push(
                "shared_breakers.quorum",
                format!("{other} is not a number of instances (1 or more)"),
            ),
        }
        match fields.remove("instance_id") {
            None => {}
            Some(Value::String(s)) if !s.is_empty() => out.instance_id = Some(s),
            Some(other) => issues.push(
                "shared_breakers.instance_id",
                format!("{other} is not a non-empty name"),
            ),
        }
        for name in fields.keys() {
            issues.push(
                format!("shared_breakers.{name}"),
                "unknown field (expected quorum, instance_id)",
            );
        }
        out
    }
}

impl GatewayConfig {
    /// Parses and validates a JSON configuration.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let value: Value = omega_penta::core::config::from_json(text)?;
        Self::from_value(value)
    }

    /// Parses and validates a YAML configuration (the same fields and shapes as JSON).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_value(omega_penta::config::yaml_value(text)?)
    }

    /// Reads a file: YAML when its name ends in `.yaml` or `.yml`, JSON otherwise.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let yaml = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if yaml {
            Self::from_yaml(text)
        } else {
            Self::from_json(text)
        }
    }

    /// Takes the gateway's own fields out of `value`, and builds the stack from the rest.
    pub fn from_value(mut value: Value) -> Result<Self, ConfigError> {
        let mut issues = Issues::new();
        let Some(fields) = value.as_object_mut() else {
            return Err(ConfigError::new(
                "",
                "the configuration must be a map of fields (upstreams, routes, ...)",
            ));
        };
        let mut address = |name: &str, default: &str| {
            let text = match fields.remove(name) {
                None => return default.parse().expect("a valid default"),
                Some(Value::String(s)) => s,
                Some(other) => {
                    issues.push(name, format!("{other} is not an address such as {default}"));
                    return default.parse().expect("a valid default");
                }
            };
            text.parse().unwrap_or_else(|_| {
                issues.push(
                    name,
                    format!("{text:?} is not an address such as {default}"),
                );
                default.parse().expect("a valid default")
            })
        };
        let listen = address("listen", DEFAULT_LISTEN);
        let admin = address("admin", DEFAULT_ADMIN);
        let shutdown_grace = match fields.remove("shutdown_grace") {
            None => Dur(DEFAULT_GRACE),
            Some(Value::String(s)) => s.parse().unwrap_or_else(|e: String| {
                issues.push("shutdown_grace", e);
                Dur(DEFAULT_GRACE)
            }),
            Some(other) => {
                issues.push(
                    "shutdown_grace",
                    format!("{other} is not a duration such as 10s"),
                );
                Dur(DEFAULT_GRACE)
            }
        };
        let pre_drain = match fields.remove("pre_drain") {
            None => Dur(Duration::ZERO),
            Some(Value::String(s)) => s.parse().unwrap_or_else(|e: String| {
                issues.push("pre_drain", e);
                Dur(Duration::ZERO)
            }),
            Some(other) => {
                issues.push("pre_drain", format!("{other} is not a duration such as 5s"));
                Dur(Duration::ZERO)
            }
        };
        let server = match fields.remove("server") {
            None => crate::serve::ServerLimits::default(),
            Some(v) => match serde_json::from_value::<crate::serve::ServerLimits>(v) {
                Ok(limits) => {
                    if let Err(e) = limits.check() {
                        issues.push("server", e);
                    }
                    limits
                }
                Err(e) => {
                    issues.push("server", e.to_string());
                    crate::serve::ServerLimits::default()
                }
            },
        };
        let admin_api = match fields.remove("admin_api") {
            None => AdminApi::default(),
            Some(v) => AdminApi::from_value(v, &mut issues),
        };
        let shared_breakers = match fields.remove("shared_breakers") {
            None => SharedBreakers::default(),
            Some(v) => SharedBreakers::from_value(v, &mut issues),
        };
        let access_log = match fields.remove("access_log") {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<crate::access_log::AccessLogConfig>(v) {
                Ok(log) if log.path.as_os_str().is_empty() => {
                    issues.push(
                        "access_log.path",
                        "must name a file, or - for standard output",
                    );
                    None
                }
                Ok(log) => Some(log),
                Err(e) => {
                    issues.push("access_log", e.to_string());
                    None
                }
            },
        };
        let request_id = match fields.remove("request_id") {
            None => true,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                issues.push("request_id", format!("{other} is not true or false"));
                true
            }
        };
        let tls = match fields.remove("tls") {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<crate::tls::ListenerTls>(v) {
                Ok(t) => Some(t),
                Err(e) => {
                    issues.push(
                        "tls",
                        format!("{e} (expected {{ \"cert\": FILE, \"key\": FILE }})"),
                    );
                    None
                }
            },
        };
        let stack = StackConfig::from_value(value);
        match (issues.into_result(), stack) {
            (Ok(()), Ok(stack)) => Ok(GatewayConfig {
                listen,
                admin,
                shutdown_grace,
                pre_drain,
                server,
                admin_api,
                shared_breakers,
                access_log,
                request_id,
                tls,
                stack,
            }),
            (Ok(()), Err(e)) | (Err(e), Ok(_)) => Err(e),
            (Err(mine), Err(theirs)) => {
                let mut all = Issues::new();
                all.absorb("", mine);
                all.absorb("", theirs);
                Err(all.into_result().expect_err("both had mistakes"))
            }
        }
    }
}

/// Writes the file's shape back: the gateway's fields beside the stack's.
impl serde::Serialize for GatewayConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(&self.stack).map_err(serde::ser::Error::custom)?;
        if let Some(fields) = value.as_object_mut() {
            fields.insert("listen".into(), self.listen.to_string().into());
            fields.insert("admin".into(), self.admin.to_string().into());
            fields.insert(
                "shutdown_grace".into(),
                self.shutdown_grace.to_string().into(),
            );
            if !self.pre_drain.0.is_zero() {
                fields.insert("pre_drain".into(), self.pre_drain.to_string().into());
            }
            if self.server != crate::serve::ServerLimits::default() {
                let server =
                    serde_json::to_value(&self.server).map_err(serde::ser::Error::custom)?;
                fields.insert("server".into(), server);
            }
            let mut shared = serde_json::Map::new();
            if let Some(q) = self.shared_breakers.quorum {
                shared.insert("quorum".into(), q.into());
            }
            if let Some(id) = &self.shared_breakers.instance_id {
                shared.insert("instance_id".into(), id.clone().into());
            }
            if !shared.is_empty() {
                fields.insert("shared_breakers".into(), shared.into());
            }
            let mut admin = serde_json::Map::new();
            if let Some(t) = &self.admin_api.token {
                admin.insert("token".into(), t.clone().into());
            }
            if let Some(f) = &self.admin_api.token_file {
                admin.insert("token_file".into(), f.display().to_string().into());
            }
            if let Some(h) = &self.admin_api.node_hosts {
                admin.insert("node_hosts".into(), h.clone().into());
            }
            if !admin.is_empty() {
                fields.insert("admin_api".into(), admin.into());
            }
            if let Some(log) = &self.access_log {
                let log = serde_json::to_value(log).map_err(serde::ser::Error::custom)?;
                fields.insert("access_log".into(), log);
            }
            if !self.request_id {
                fields.insert("request_id".into(), false.into());
            }
            if let Some(tls) = &self.tls {
                let tls = serde_json::to_value(tls).map_err(serde::ser::Error::custom)?;
                fields.insert("tls".into(), tls);
            }
        }
        value.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(extra: &str) -> String {
        format!(
            r#"{{ {extra} "upstreams": {{ "api": {{ "nodes": [{{ "id": "a", "url": "http://127.0.0.1:9001" }}] }} }},
                 "routes": [{{ "prefix": "/api", "upstream": "api" }}] }}"#
        )
    }

    #[test]
    fn the_gateway_takes_its_own_fields_and_the_stack_the_rest() {
        let c = GatewayConfig::from_json(&doc(
            r#""listen": "0.0.0.0:80", "admin": "127.0.0.1:1", "shutdown_grace": "3s", "pre_drain": "2s","#,
        ))
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.shutdown_grace.0, Duration::from_secs(3));
        assert_eq!(c.pre_drain.0, Duration::from_secs(2));
        assert_eq!(c.stack.routes[0].prefix, "/api");
        let written = serde_json::to_string(&c).unwrap();
        assert_eq!(GatewayConfig::from_json(&written).unwrap(), c);
        let c = GatewayConfig::from_json(&doc("")).unwrap();
        assert_eq!(c.admin, DEFAULT_ADMIN.parse().unwrap());
        assert_eq!(c.shared_breakers, SharedBreakers::default());
        assert!(c.request_id);
        assert_eq!(c.access_log, None);
    }

    #[test]
    fn the_access_log_and_request_ids_are_the_gateways_fields() {
        let c = GatewayConfig::from_json(&doc(
            r#""access_log": { "path": "/var/log/omega.jsonl" }, "request_id": false,"#,
        ))
        .unwrap();
        assert_eq!(
            c.access_log.as_ref().unwrap().path,
            std::path::Path::new("/var/log/omega.jsonl")
        );
        assert!(!c.request_id);
        let written = serde_json::to_string(&c).unwrap();
        assert_eq!(GatewayConfig::from_json(&written).unwrap(), c);
        for (bad, at) in [
            (r#""access_log": { "file": "x" },"#, "access_log"),
            (r#""access_log": { "path": "" },"#, "access_log.path"),
            (r#""request_id": "yes","#, "request_id"),
        ] {
            let e = GatewayConfig::from_json(&doc(bad)).unwrap_err();
            assert!(e.to_string().contains(at), "{bad}: {e}");
        }
    }

    #[test]
    fn the_admin_api_section_takes_a_token_a_file_and_node_hosts() {
        let c = GatewayConfig::from_json(&doc(
            r#""admin_api": { "token": "s3cret", "token_file": "/run/a.token", "node_hosts": ["10.0.0.7", "API.internal"] },"#,
        ))
        .unwrap();
        assert_eq!(c.admin_api.token.as_deref(), Some("s3cret"));
        assert_eq!(
            c.admin_api.node_hosts,
            Some(vec!["10.0.0.7".into(), "api.internal".into()])
        );
        let written = serde_json::to_string(&c).unwrap();
        assert_eq!(GatewayConfig::from_json(&written).unwrap(), c);
        let e = GatewayConfig::from_json(&doc(
            r#""admin_api": { "token": "", "node_hosts": [7], "tokn": "x" },"#,
        ))
        .unwrap_err()
        .to_string();
        for part in [
            "admin_api.token",
            "admin_api.node_hosts[0]",
            "admin_api.tokn",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
    }

    #[test]
    fn shared_breakers_take_a_quorum_and_an_instance_id() {
        let c = GatewayConfig::from_json(&doc(
            r#""shared_breakers": { "quorum": 1, "instance_id": "gw-1" },"#,
        ))
        .unwrap();
        assert_eq!(c.shared_breakers.quorum, Some(1));
        assert_eq!(c.shared_breakers.instance_id.as_deref(), Some("gw-1"));
        let written = serde_json::to_string(&c).unwrap();
        assert_eq!(GatewayConfig::from_json(&written).unwrap(), c);
        let e = GatewayConfig::from_json(&doc(
            r#""shared_breakers": { "quorum": 0, "instance_id": "", "quorom": 2 },"#,
        ))
        .unwrap_err()
        .to_string();
        for part in [
            "shared_breakers.quorum",
            "shared_breakers.instance_id",
            "shared_breakers.quorom",
        ] {
            assert!(e.contains(part), "{part} in {e}");
        }
    }

    /// The README documents the gateway's file in JSON and in YAML.
    fn readme_block(fence: &str) -> &'static str {
        let readme = include_str!("../../../README.md");
        let start = readme.find(fence).expect("README has the block") + fence.len();
        let end = start + readme[start..].find("```").unwrap();
        &readme[start..end]
    }

    #[test]
    fn the_readme_configuration_is_valid_in_json_and_yaml_alike() {
        let json = GatewayConfig::from_json(readme_block("```json\n")).unwrap();
        assert_eq!(json.stack.routes[0].limits.len(), 4);
        assert_eq!(json.listen, "0.0.0.0:8080".parse().unwrap());
        let yaml = GatewayConfig::from_yaml(readme_block("```yaml\n")).unwrap();
        assert_eq!(json, yaml);
    }

    #[test]
    fn mistakes_in_both_parts_are_reported_together() {
        let e = GatewayConfig::from_json(&doc(r#""listen": "everywhere", "lisen": 1,"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listen: \"everywhere\" is not an address"),
            "{e}"
        );
        assert!(e.contains("lisen"), "{e}");
    }
}
