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
    /// The layer stack: upstream pools, routes, Redis, trusted proxies.
    pub stack: StackConfig,
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
        let stack = StackConfig::from_value(value);
        match (issues.into_result(), stack) {
            (Ok(()), Ok(stack)) => Ok(GatewayConfig {
                listen,
                admin,
                shutdown_grace,
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
            r#""listen": "0.0.0.0:80", "admin": "127.0.0.1:1", "shutdown_grace": "3s","#,
        ))
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.shutdown_grace.0, Duration::from_secs(3));
        assert_eq!(c.stack.routes[0].prefix, "/api");
        let written = serde_json::to_string(&c).unwrap();
        assert_eq!(GatewayConfig::from_json(&written).unwrap(), c);
        let c = GatewayConfig::from_json(&doc("")).unwrap();
        assert_eq!(c.admin, DEFAULT_ADMIN.parse().unwrap());
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
