use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::keyspace::Keyspace;

/// Where a [`super::RedisBackend`] connects, and its time bounds.
///
/// ```
/// use std::time::Duration;
/// use omega_core::redis::RedisConfig;
///
/// let cfg = RedisConfig::url("redis://127.0.0.1:6379/0")
///     .op_timeout(Duration::from_millis(25))
///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2));
/// assert_eq!(cfg.get_op_timeout(), Duration::from_millis(25));
/// ```
#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub(crate) target: Target,
    pub(crate) op_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) timeouts_before_reconnect: u32,
    pub(crate) keyspace: Keyspace,
}

#[derive(Clone, Debug)]
pub(crate) enum Target {
    Url(String),
    Cluster(Vec<String>),
}

/// The default bound on one Redis operation.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(50);
/// The default bound on one connection attempt (TCP connect, handshake and a `PING`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

impl RedisConfig {
    /// A standalone server: `redis://[user[:password]@]host[:port][/db]`, or `rediss://` with
    /// the `tls` feature.
    pub fn url(url: impl Into<String>) -> Self {
        Self::with_target(Target::Url(url.into()))
    }

    /// A Redis Cluster reached through one or more seed nodes (`redis://host:port` each).
    pub fn cluster<I, S>(seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_target(Target::Cluster(seeds.into_iter().map(Into::into).collect()))
    }

    /// Parses the one URL form every part of the project accepts:
    ///
    /// - `redis://[user[:password]@]host[:port][/db]` (or `rediss://` with the `tls` feature):
    ///   one server;
    /// - `redis+cluster://[user[:password]@]host:port[,host:port...]` (or
    ///   `rediss+cluster://`): a Redis Cluster reached through these seed nodes, with the same
    ///   credentials for each.
    ///
    /// ```
    /// use omega_core::redis::RedisConfig;
    ///
    /// let one = RedisConfig::parse("redis://:secret@10.0.0.5:6379/0").unwrap();
    /// assert!(!one.is_cluster());
    /// let cluster = RedisConfig::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001").unwrap();
    /// assert_eq!(cluster.seeds(), ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]);
    /// assert!(RedisConfig::parse("http://10.0.0.5").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        let cluster = url
            .strip_prefix("redis+cluster://")
            .map(|rest| ("redis", rest))
            .or_else(|| url.strip_prefix("rediss+cluster://").map(|r| ("rediss", r)));
        let cfg = match cluster {
            None => RedisConfig::url(url),
            Some((scheme, rest)) => {
                let (authority, tail) = match rest.find(['/', '?']) {
                    Some(i) => rest.split_at(i),
                    None => (rest, ""),
                };
                let (userinfo, hosts) = match authority.rsplit_once('@') {
                    Some((u, h)) => (format!("{u}@"), h),
                    None => (String::new(), authority),
                };
                let seeds: Vec<String> = hosts
                    .split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
                    .collect();
                if seeds.is_empty() {
                    return Err(Error::new(
                        ErrorKind::BadUrl,
                        format!(
                            "{}: no seed node; write redis+cluster://host:port,host:port",
                            redact(url)
                        ),
                    ));
                }
                RedisConfig::cluster(seeds)
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `true` for a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The server URL, or the cluster's seed URLs.
    pub fn seeds(&self) -> &[String] {
        match &self.target {
            Target::Url(url) => std::slice::from_ref(url),
            Target::Cluster(seeds) => seeds,
        }
    }

    fn with_target(target: Target) -> Self {
        RedisConfig {
            target,
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            timeouts_before_reconnect: 3,
            keyspace: Keyspace::default(),
        }
    }

    /// The bound on every operation (default 50 ms), redirects on a cluster included. An
    /// operation that takes longer fails with [`ErrorKind::Timeout`]; its outcome is unknown.
    /// The same bound applies to the probe `PING` of a server marked down.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The bound on one connection attempt (default 500 ms): TCP connect, handshake and a
    /// `PING`; on a cluster also the bound on reading the topology (`CLUSTER SLOTS`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The delay between reconnect attempts: it starts at `min`, doubles after each failed
    /// attempt up to `max`, and each delay is jittered by up to ±25% so that many instances do
    /// not reconnect in step (defaults 50 ms and 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max;
        self
    }

    /// After this many timeouts in a row (default 3) a server's connection (on a cluster, each
    /// primary's, counted apart) is considered hung: it is dropped and re-established, and
    /// operations on that server fail fast with [`ErrorKind::Unavailable`] until it answers a
    /// `PING` again. The first timeout already marks the server down; a probe `PING` then
    /// marks it up again as soon as it answers.
    pub fn timeouts_before_reconnect(mut self, n: u32) -> Self {
        self.timeouts_before_reconnect = n;
        self
    }

    /// The key prefix of every key the layers store (default `omega`).
    pub fn keyspace(mut self, keyspace: Keyspace) -> Self {
        self.keyspace = keyspace;
        self
    }

    /// The configured operation timeout.
    pub fn get_op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The configured keyspace.
    pub fn get_keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(Error::config(format!("{name} must be greater than zero")))
            } else {
                Ok(())
            }
        };
        positive("op_timeout", self.op_timeout)?;
        positive("connect_timeout", self.connect_timeout)?;
        positive("reconnect backoff min", self.backoff_min)?;
        if self.backoff_max < self.backoff_min {
            return Err(Error::config(format!(
                "reconnect backoff max ({:?}) is below its min ({:?})",
                self.backoff_max, self.backoff_min
            )));
        }
        if self.timeouts_before_reconnect == 0 {
            return Err(Error::config(
                "timeouts_before_reconnect must be at least 1",
            ));
        }
        match &self.target {
            Target::Url(url) => check_url(url),
            Target::Cluster(seeds) if seeds.is_empty() => Err(Error::new(
                ErrorKind::BadUrl,
                "a Redis Cluster needs at least one seed node",
            )),
            Target::Cluster(seeds) => seeds.iter().try_for_each(|s| check_url(s)),
        }
    }
}

/// Checks the scheme before redis-rs parses the rest, so the message can say what to do.
pub(crate) fn check_url(url: &str) -> Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis") | Some("redis+unix") | Some("unix") => Ok(()),
        Some("rediss") if cfg!(feature = "tls") => Ok(()),
        Some("rediss") => Err(Error::new(
            ErrorKind::BadUrl,
            format!(
                "{} uses TLS, which needs the `tls` feature (omega-penta or omega-core)",
                redact(url)
            ),
        )),
        Some(other) => Err(Error::new(
            ErrorKind::BadUrl,
            format!(
                "{}: unknown scheme {other:?}; expected redis://, rediss:// or redis+cluster://",
                redact(url)
            ),
        )),
        None => Err(Error::new(
            ErrorKind::BadUrl,
            format!(
                "{}: not a URL; expected redis://[user:password@]host:port[/db]",
                redact(url)
            ),
        )),
    }
}

/// The URL with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_with_clear_messages() {
        assert!(check_url("redis://u:p@127.0.0.1:6379/2").is_ok());
        let e = check_url("http://u:secret@host:1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadUrl);
        assert!(e.to_string().contains("unknown scheme \"http\""), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = check_url("localhost:6379").unwrap_err();
        assert!(e.to_string().contains("not a URL"), "{e}");
        if !cfg!(feature = "tls") {
            let e = check_url("rediss://h:1").unwrap_err();
            assert!(e.to_string().contains("`tls` feature"), "{e}");
        }
    }

    #[test]
    fn one_url_names_a_server_or_a_cluster() {
        let c = RedisConfig::parse("redis+cluster://u:pw@h1:7000, h2:7001/").unwrap();
        assert!(c.is_cluster());
        assert_eq!(
            c.seeds(),
            ["redis://u:pw@h1:7000/", "redis://u:pw@h2:7001/"]
        );
        let c = RedisConfig::parse("redis://h:6379/2").unwrap();
        assert_eq!(c.seeds(), ["redis://h:6379/2"]);
        let e = RedisConfig::parse("redis+cluster://").unwrap_err();
        assert!(e.to_string().contains("no seed node"), "{e}");
        let e = RedisConfig::parse("redis+cluster://:secret@").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = RedisConfig::parse("memcached://h").unwrap_err();
        assert!(e.to_string().contains("redis+cluster://"), "{e}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://u@h"), "redis://u@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn bad_settings_are_rejected() {
        let e = RedisConfig::url("redis://h")
            .op_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("op_timeout"), "{e}");
        let e = RedisConfig::cluster(Vec::<String>::new())
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("seed"), "{e}");
        let e = RedisConfig::url("redis://h")
            .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("below its min"), "{e}");
    }
}
