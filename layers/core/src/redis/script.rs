use std::sync::Arc;

use redis::ToRedisArgs;

/// A Lua script that runs by its SHA1 and is reloaded transparently.
///
/// The script is sent with `EVALSHA`; when the server does not know it (first use, after
/// `SCRIPT FLUSH`, a restart or a failover) the server answers `NOSCRIPT`, which means the
/// script did not run, and the same call is sent once with `EVAL`, which runs it and caches it
/// again. Both attempts share one operation timeout. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Script {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    source: String,
    sha: String,
}

impl Script {
    /// A script with a short `name` used in error messages.
    pub fn new(name: &'static str, source: &str) -> Self {
        let sha = redis::Script::new(source).get_hash().to_owned();
        Script {
            inner: Arc::new(Inner {
                name,
                source: source.to_owned(),
                sha,
            }),
        }
    }

    /// The script's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// The SHA1 of the source, as Redis computes it.
    pub fn sha(&self) -> &str {
        &self.inner.sha
    }

    /// The Lua source.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Starts a call: add keys and arguments, then run it with
    /// [`super::RedisBackend::eval`].
    pub fn call(&self) -> ScriptCall {
        ScriptCall {
            script: self.clone(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// The keys and arguments of one script call.
///
/// On Redis Cluster every key of one call must hash to the same slot: build them with
/// [`crate::Keyspace::tagged`] and one tag.
#[derive(Clone, Debug)]
pub struct ScriptCall {
    script: Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    /// Adds a key (`KEYS[n]`).
    pub fn key(mut self, key: impl ToRedisArgs) -> Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The script.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The first key, which decides the node on a cluster.
    pub(crate) fn first_key(&self) -> Option<&[u8]> {
        self.keys.first().map(Vec::as_slice)
    }

    pub(crate) fn command(&self, with_source: bool) -> redis::Cmd {
        let mut cmd = if with_source {
            let mut c = redis::cmd("EVAL");
            c.arg(self.script.source());
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(self.script.sha());
            c
        };
        cmd.arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }
}
