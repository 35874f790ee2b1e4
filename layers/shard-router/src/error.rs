//! The errors the router returns.

use std::fmt;
use std::sync::Arc;

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request could not be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShardErrorKind {
    /// The key extractor found no key in the request.
    NoKey,
    /// The topology has no node with a positive weight.
    NoNode,
    /// The request's node left the topology before the request was sent, and the router is
    /// configured to fail such requests ([`crate::ShardRouterBuilder::reroute_removed`]).
    NodeRemoved,
    /// Every node tried (along the key's preference list) was unavailable: judged down by the
    /// availability check, failed its readiness check, or has no service.
    Unavailable,
}

/// A request was not routed (see [`ShardErrorKind`]); the request was not sent to any node.
///
/// Services built by [`crate::ShardRouter`] return it boxed in a [`BoxError`]; downcast to
/// read it. With failover, the error of the last node tried is its [source](std::error::Error::source).
#[derive(Clone, Debug)]
pub struct ShardError {
    pub(crate) kind: ShardErrorKind,
    pub(crate) tried: Vec<Arc<str>>,
    pub(crate) source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl ShardError {
    pub(crate) fn new(kind: ShardErrorKind) -> Self {
        ShardError {
            kind,
            tried: Vec::new(),
            source: None,
        }
    }

    /// The kind.
    pub fn kind(&self) -> ShardErrorKind {
        self.kind
    }

    /// The nodes tried, in order (the removed node for [`ShardErrorKind::NodeRemoved`]).
    pub fn tried(&self) -> &[Arc<str>] {
        &self.tried
    }
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ShardErrorKind::NoKey => f.write_str("shard router: the request has no shard key"),
            ShardErrorKind::NoNode => f.write_str("shard router: the topology has no node"),
            ShardErrorKind::NodeRemoved => write!(
                f,
                "shard router: node {:?} left the topology before the request was sent",
                self.tried.first().map(|s| &**s).unwrap_or("?")
            ),
            ShardErrorKind::Unavailable => {
                write!(f, "shard router: no available node (tried {:?}", self.tried)?;
                if let Some(s) = &self.source {
                    write!(f, "; last error: {s}")?;
                }
                f.write_str(")")
            }
        }
    }
}

impl std::error::Error for ShardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
