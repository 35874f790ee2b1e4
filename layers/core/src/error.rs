//! The one error type of the shared-state layer.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What went wrong, coarsely: the part of an [`Error`] that code branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A Redis URL or a cluster seed list could not be parsed, or names a scheme that is not
    /// compiled in (`rediss://` needs the `tls` feature).
    BadUrl,
    /// A configuration value is out of range (a zero timeout, a key prefix with braces, ...).
    Config,
    /// The operation did not finish within its bound. The outcome is **unknown**: a write may
    /// still be applied when the server resumes, so do not retry a non-idempotent script blindly.
    Timeout,
    /// The server refused the TCP connection (nothing listens on that port).
    Refused,
    /// The server the operation goes to is known to be down and a reconnect is under way (on a
    /// cluster: that primary, or no known primary serves the slot yet); the operation was not
    /// sent.
    Unavailable,
    /// The connection broke while the operation was in flight; like a timeout, its outcome is
    /// unknown.
    Disconnected,
    /// The server answered with an error (`WRONGTYPE`, `ERR ...`, a failing script, ...).
    Server,
    /// The server answered with something the caller did not expect, or the wire protocol broke.
    Protocol,
    /// Redis Cluster could not route the operation (`CLUSTERDOWN`, `CROSSSLOT`, no node for a
    /// slot).
    Cluster,
    /// Authentication failed.
    Auth,
    /// A value could not be encoded or decoded.
    Codec,
    /// Any other I/O failure.
    Io,
}

impl ErrorKind {
    /// A short snake-case name, as metrics label it (`timeout`, `unavailable`, ...).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadUrl => "bad_url",
            ErrorKind::Config => "config",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Refused => "refused",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Server => "server",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Cluster => "cluster",
            ErrorKind::Auth => "auth",
            ErrorKind::Codec => "codec",
            ErrorKind::Io => "io",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ErrorKind::BadUrl => "bad URL",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Refused => "connection refused",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Disconnected => "connection lost",
            ErrorKind::Server => "server error",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Cluster => "cluster error",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Codec => "codec error",
            ErrorKind::Io => "I/O error",
        }
    }
}

/// An error from a state backend, a codec or a configuration.
///
/// The message names what failed: the server (or cluster seeds), the operation and the kind,
/// for example `redis 127.0.0.1:6379: EVALSHA timed out after 50ms`. Only this crate builds
/// errors; inspect them with [`Error::kind`] and the `is_*` helpers.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    server: Option<Arc<str>>,
    op: Option<Cow<'static, str>>,
    detail: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                server: None,
                op: None,
                detail: detail.into(),
                source: None,
            }),
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.inner_mut().source = Some(Box::new(source));
        self
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn at(mut self, server: &Arc<str>) -> Self {
        self.inner_mut().server = Some(server.clone());
        self
    }

    /// Builds a timeout error; used by the layer crates when an operation they queued (for
    /// example a batched script call) did not finish within the backend's operation timeout.
    pub fn timeout(after: Duration) -> Self {
        Error::new(ErrorKind::Timeout, format!("after {after:?}"))
    }

    /// Names the operation that failed (`"script rate_limit_batch"`, ...).
    pub fn during(mut self, op: impl Into<Cow<'static, str>>) -> Self {
        self.inner_mut().op = Some(op.into());
        self
    }

    /// Builds a configuration error; used by the layer crates to report bad settings in the
    /// same shape as the backend's own errors.
    pub fn config(detail: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, detail)
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("an error is only modified while it is built")
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The server, or the cluster seeds, the error comes from, when a server was involved.
    pub fn server(&self) -> Option<&str> {
        self.inner.server.as_deref()
    }

    /// The operation that failed (`GET`, `EVALSHA`, `connect`, ...), when known.
    pub fn operation(&self) -> Option<&str> {
        self.inner.op.as_deref()
    }

    /// `true` for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// `true` when the backend could not be reached at all: refused, unavailable, or the
    /// connection broke.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Refused | ErrorKind::Unavailable | ErrorKind::Disconnected | ErrorKind::Io
        )
    }

    /// `true` when the operation may or may not have been applied (a timeout, or a connection
    /// that broke while it was in flight). Only idempotent operations may be retried after such
    /// an error.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self.kind(), ErrorKind::Timeout | ErrorKind::Disconnected)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        if let Some(server) = &i.server {
            write!(f, "redis {server}: ")?;
        }
        if let Some(op) = &i.op {
            write!(f, "{op} ")?;
        }
        f.write_str(i.kind.describe())?;
        if !i.detail.is_empty() {
            write!(f, " ({})", i.detail)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        f.debug_struct("Error")
            .field("kind", &i.kind)
            .field("server", &i.server)
            .field("op", &i.op)
            .field("detail", &i.detail)
            .field("source", &i.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_server_operation_and_kind() {
        let server: Arc<str> = Arc::from("127.0.0.1:6390");
        let e = Error::timeout(Duration::from_millis(50))
            .at(&server)
            .during("EVALSHA");
        assert_eq!(
            e.to_string(),
            "redis 127.0.0.1:6390: EVALSHA timed out (after 50ms)"
        );
        assert!(e.is_timeout());
        assert!(e.outcome_unknown());
        assert!(!e.is_unreachable());
        assert_eq!(e.server(), Some("127.0.0.1:6390"));
        assert_eq!(e.operation(), Some("EVALSHA"));
    }

    #[test]
    fn config_error_has_no_server() {
        let e = Error::config("op_timeout must be greater than zero");
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(
            e.to_string(),
            "invalid configuration (op_timeout must be greater than zero)"
        );
    }
}
