//! What every layer's configuration shares: durations written as `250ms`, errors that name the
//! field they are in ([`ConfigError`], collected with [`Issues`]), and with feature `serde`
//! the serde side: key sources ([`KeyConfig`]) and parsing that reports a field's path.
//!
//! Each layer crate owns its serde section and validates it; a file that composes them (the
//! umbrella's stack configuration, the gateway's file) reports every mistake with its path
//! (`routes[0].limits[1].per: unknown unit "d" in "5d"; use ms, s, m or h`) through one
//! [`ConfigError`], collected with [`Issues`].
//!
//! ```
//! use omega_core::config::{Dur, Issues, KeyConfig, from_json};
//!
//! #[derive(Debug, serde::Deserialize)]
//! struct Section { window: Dur, key: KeyConfig }
//!
//! let s: Section = from_json(r#"{ "window": "250ms", "key": { "header": "x-user-id" } }"#).unwrap();
//! assert_eq!(s.window.0, std::time::Duration::from_millis(250));
//!
//! let err = from_json::<Section>(r#"{ "window": "5d", "key": "global" }"#).unwrap_err();
//! assert!(err.to_string().starts_with("window: unknown unit"), "{err}");
//!
//! let mut issues = Issues::new();
//! issues.at("limits[0]").push("rate", "must be at least 1");
//! assert_eq!(issues.into_result().unwrap_err().to_string(), "limits[0].rate: must be at least 1");
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[cfg(feature = "serde")]
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `250ms`, `5s`, `1m` or `2h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
        let scale = |per: u64| {
            n.checked_mul(per)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{s:?} is too long"))
        };
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => scale(60)?,
            "h" => scale(3600)?,
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

#[cfg(feature = "serde")]
impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "serde")]
impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
pub use self::keys::KeyConfig;

#[cfg(feature = "serde")]
mod keys {
    use serde::{Deserialize, Serialize};

    use super::Issues;

    /// Where a key comes from, as a configuration file writes it: `"global"`, `"client_ip"`,
    /// `"endpoint"`, `"path"`, `{ "header": "x-user-id" }`, `{ "query": "tenant" }` or
    /// `{ "path_segment": 1 }`. See [`crate::key`] for what each means.
    #[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
    #[serde(rename_all = "snake_case", deny_unknown_fields)]
    pub enum KeyConfig {
        /// One key for every request.
        Global,
        /// The client's address (forwarding headers from trusted proxies only).
        ClientIp,
        /// The method and the route template.
        Endpoint,
        /// The whole path.
        Path,
        /// A header's value.
        Header(String),
        /// A query parameter's value.
        Query(String),
        /// The n-th path segment (0-based; `/users/42` has `users` at 0 and `42` at 1).
        PathSegment(usize),
    }

    impl KeyConfig {
        /// Checks what the types cannot (a header name), reporting at `path`.
        pub fn validate(&self, path: &str, issues: &mut Issues) {
            if let KeyConfig::Header(h) = self
                && !is_header_name(h)
            {
                issues.push(
                    format!("{path}.header"),
                    format!("{h:?} is not a header name"),
                );
            }
        }

        /// The key source this configures; `client_ip` is how client addresses are found
        /// (trusted proxies, their header, the IPv6 prefix).
        #[cfg(feature = "http")]
        pub fn source(&self, client_ip: &crate::key::http::ClientIp) -> crate::key::http::AnyKey {
            use crate::key::http::{AnyKey, Endpoint, Header, Path, PathSegment, Query};
            match self {
                KeyConfig::Global => AnyKey::Global,
                KeyConfig::ClientIp => AnyKey::ClientIp(client_ip.clone()),
                KeyConfig::Endpoint => AnyKey::Endpoint(Endpoint),
                KeyConfig::Path => AnyKey::Path(Path),
                KeyConfig::Header(h) => AnyKey::Header(Header::new(h)),
                KeyConfig::Query(q) => AnyKey::Query(Query::new(q.clone())),
                KeyConfig::PathSegment(n) => AnyKey::PathSegment(PathSegment(*n)),
            }
        }
    }

    /// RFC 9110's token characters, which a header name is made of.
    fn is_header_name(name: &str) -> bool {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }
}

/// Everything wrong with a configuration, each mistake with the field it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    issues: Vec<(String, String)>,
}

impl ConfigError {
    /// One mistake at `path` (empty for the whole file).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
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

impl From<ConfigError> for crate::Error {
    fn from(e: ConfigError) -> Self {
        crate::Error::config(e.to_string())
    }
}

/// Collects the mistakes of a configuration, each at its path, so that a file is reported
/// whole rather than one mistake at a time.
#[derive(Debug, Default)]
pub struct Issues {
    prefix: String,
    found: Vec<(String, String)>,
}

impl Issues {
    /// No mistakes yet.
    pub fn new() -> Self {
        Issues::default()
    }

    /// Records a mistake at `path` (relative to the current prefix; empty for the prefix
    /// itself; an index such as `[2]` joins the prefix without a dot).
    pub fn push(&mut self, path: impl AsRef<str>, message: impl Into<String>) {
        let full = join(&self.prefix, path.as_ref());
        self.found.push((full, message.into()));
    }

    /// Records `result`'s error, if any, at `path`.
    pub fn check<E: fmt::Display>(&mut self, path: impl AsRef<str>, result: Result<(), E>) {
        if let Err(e) = result {
            self.push(path, e.to_string());
        }
    }

    /// Records every mistake of `error` under `path`.
    pub fn absorb(&mut self, path: impl AsRef<str>, error: ConfigError) {
        let path = path.as_ref();
        for (p, m) in error.issues {
            self.push(join(path, &p), m);
        }
    }

    /// The same collector, with paths under `path` (`issues.at("routes[0]").push("rate", ..)`
    /// records `routes[0].rate`).
    pub fn at(&mut self, path: impl AsRef<str>) -> At<'_> {
        let len = self.prefix.len();
        self.prefix = join(&self.prefix, path.as_ref());
        At { issues: self, len }
    }

    /// `true` when nothing is wrong so far.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// `Ok` when nothing was recorded, else every mistake.
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { issues: self.found })
        }
    }
}

/// `a.b` from `a` and `b`; `a[0]` from `a` and `[0]`.
fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// [`Issues`] under a path prefix; the prefix ends when this is dropped.
#[derive(Debug)]
pub struct At<'a> {
    issues: &'a mut Issues,
    len: usize,
}

impl std::ops::Deref for At<'_> {
    type Target = Issues;

    fn deref(&self) -> &Issues {
        self.issues
    }
}

impl std::ops::DerefMut for At<'_> {
    fn deref_mut(&mut self) -> &mut Issues {
        self.issues
    }
}

impl Drop for At<'_> {
    fn drop(&mut self) {
        self.issues.prefix.truncate(self.len);
    }
}

/// Deserializes `T` from any serde format, reporting a mistake with the path of its field
/// (and, for JSON and YAML syntax errors, the line and column).
#[cfg(feature = "serde")]
pub fn deserialize<'de, T, D>(de: D) -> Result<T, ConfigError>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
    D::Error: fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, inner.to_string())
    })
}

/// Deserializes `T` from JSON text (see [`deserialize`]).
#[cfg(feature = "serde")]
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    deserialize(&mut serde_json::Deserializer::from_str(text))
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
        assert!(
            "99999999999999999h"
                .parse::<Dur>()
                .unwrap_err()
                .contains("too long")
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn keys_read_as_files_write_them() {
        let k: KeyConfig = from_json(r#"{ "header": "x-api-key" }"#).unwrap();
        assert_eq!(k, KeyConfig::Header("x-api-key".into()));
        let k: KeyConfig = from_json(r#""client_ip""#).unwrap();
        assert_eq!(k, KeyConfig::ClientIp);
        let e = from_json::<KeyConfig>(r#"{ "cookie": "x" }"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant `cookie`"), "{e}");
        let mut issues = Issues::new();
        KeyConfig::Header("bad header".into()).validate("key", &mut issues);
        assert_eq!(
            issues.into_result().unwrap_err().to_string(),
            "key.header: \"bad header\" is not a header name"
        );
    }

    #[test]
    fn issues_nest_their_paths() {
        let mut issues = Issues::new();
        {
            let mut route = issues.at("routes[1]");
            route.push("prefix", "must start with /");
            let mut limits = route.at("limits");
            let mut limit = limits.at("[0]");
            limit.push("", "bad limit");
            limit.absorb("key", ConfigError::new("header", "no"));
        }
        issues.push("redis", "down");
        let text = issues.into_result().unwrap_err().to_string();
        assert_eq!(
            text,
            "routes[1].prefix: must start with /\nroutes[1].limits[0]: bad limit\n\
             routes[1].limits[0].key.header: no\nredis: down"
        );
    }
}
