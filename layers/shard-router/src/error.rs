//! The errors of the router ([`ShardError`], a refusal) and of topology changes
//! ([`TopologyError`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use omega_core::reject::{Refusal, grpc};

pub use omega_core::reject::BoxError;

/// Why a request could not be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShardErrorKind {
    /// The key source found no key in the request (and the router refuses such requests,
    /// [`MissingKey::Reject`](omega_core::key::MissingKey::Reject), the default).
    NoKey,
    /// The topology has no node with a positive weight.
    NoNode,
    /// The request's node left the topology before the request was sent, and the router is
    /// configured to fail such requests ([`crate::ShardRouterBuilder::reroute_removed`]).
    NodeRemoved,
    /// Every node tried (along the key's preference list) was unavailable: judged down by the
    /// availability check, failed its readiness check or did not become ready within the
    /// readiness timeout, or has no service.
    Unavailable,
}

/// A request was not routed (see [`ShardErrorKind`]); the request was not sent to any node.
///
/// A [`Refusal`]: `NoKey` answers 400 Bad Request (gRPC `INVALID_ARGUMENT`), the other kinds
/// 503 Service Unavailable (gRPC `UNAVAILABLE`). With the default strategy
/// ([`KeepError`](omega_core::reject::KeepError)) the router fails with it, boxed: downcast to
/// read it; with [`respond`](crate::ShardRouterBuilder::respond) it becomes that response.
/// With failover, the error of the last node tried is its
/// [source](std::error::Error::source).
#[derive(Clone, Debug)]
pub struct ShardError {
    kind: ShardErrorKind,
    tried: Vec<Arc<str>>,
    missing: Option<Cow<'static, str>>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl ShardError {
    pub(crate) fn new(kind: ShardErrorKind) -> Self {
        ShardError {
            kind,
            tried: Vec::new(),
            missing: None,
            source: None,
        }
    }

    /// A request without a key; `what` describes the key source.
    pub(crate) fn no_key(what: Cow<'static, str>) -> Self {
        ShardError {
            missing: Some(what),
            ..ShardError::new(ShardErrorKind::NoKey)
        }
    }

    /// Records a node tried.
    pub(crate) fn tried_node(&mut self, id: &Arc<str>) {
        if !self.tried.contains(id) {
            self.tried.push(id.clone());
        }
    }

    /// Sets the nodes tried.
    pub(crate) fn with_tried(mut self, tried: &[Arc<str>]) -> Self {
        self.tried = tried.to_vec();
        self
    }

    /// Sets the error of the last node tried.
    pub(crate) fn with_source(mut self, source: BoxError) -> Self {
        self.source = Some(Arc::from(source));
        self
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
            ShardErrorKind::NoKey => {
                f.write_str("shard router: the request has no shard key")?;
                if let Some(what) = &self.missing {
                    write!(f, " ({what} is missing)")?;
                }
                Ok(())
            }
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

impl Refusal for ShardError {
    /// 400 for a request without a key, 503 otherwise.
    fn status(&self) -> u16 {
        match self.kind {
            ShardErrorKind::NoKey => 400,
            _ => 503,
        }
    }

    /// `INVALID_ARGUMENT` for a request without a key, `UNAVAILABLE` otherwise.
    fn grpc_code(&self) -> u16 {
        match self.kind {
            ShardErrorKind::NoKey => grpc::INVALID_ARGUMENT,
            _ => grpc::UNAVAILABLE,
        }
    }
}

/// `INVALID_ARGUMENT` for a request without a key, `UNAVAILABLE` otherwise (feature `grpc`).
#[cfg(feature = "grpc")]
impl From<ShardError> for tonic::Status {
    fn from(e: ShardError) -> Self {
        match e.kind {
            ShardErrorKind::NoKey => tonic::Status::invalid_argument(e.to_string()),
            _ => tonic::Status::unavailable(e.to_string()),
        }
    }
}

/// What kind of [`TopologyError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopologyErrorKind {
    /// A node with this id already exists.
    DuplicateNode,
    /// No node has this id.
    UnknownNode,
    /// A node's id or address is invalid.
    InvalidNode,
    /// More than [`MAX_NODES`](crate::MAX_NODES) nodes.
    TooManyNodes,
    /// An algorithm parameter (or a shared topology's name) is out of range.
    InvalidConfig,
    /// A stored topology could not be decoded.
    Decode,
    /// A stored topology changed meanwhile (another router published first).
    Conflict,
}

/// A topology change or a stored topology was rejected; the topology is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError {
    kind: TopologyErrorKind,
    message: String,
}

impl TopologyError {
    pub(crate) fn new(kind: TopologyErrorKind, message: impl Into<String>) -> Self {
        TopologyError {
            kind,
            message: message.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> TopologyErrorKind {
        self.kind
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TopologyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_their_status_and_grpc_code() {
        let no_key = ShardError::no_key(Cow::Borrowed("header x-user-id"));
        assert_eq!((no_key.status(), no_key.grpc_code()), (400, 3));
        assert_eq!(
            no_key.to_string(),
            "shard router: the request has no shard key (header x-user-id is missing)"
        );
        for kind in [
            ShardErrorKind::NoNode,
            ShardErrorKind::NodeRemoved,
            ShardErrorKind::Unavailable,
        ] {
            let e = ShardError::new(kind);
            assert_eq!((e.status(), e.grpc_code()), (503, 14), "{kind:?}");
            assert_eq!(e.retry_after(), None);
        }
        let e = ShardError::new(ShardErrorKind::Unavailable)
            .with_tried(&[Arc::from("a")])
            .with_source("connection refused".into());
        assert_eq!(
            e.to_string(),
            "shard router: no available node (tried [\"a\"]; last error: connection refused)"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[cfg(feature = "http")]
    #[test]
    fn refusals_become_responses() {
        use omega_core::reject::{OnRejection, Respond};
        type Req = http::Request<()>;
        type Res = http::Response<()>;
        let req = http::Request::get("/").body(()).unwrap();
        let answer = |e: ShardError| -> Res {
            <Respond as OnRejection<Req, Res, std::convert::Infallible>>::reject(&Respond, &req, e)
                .unwrap()
        };
        let no_key = answer(ShardError::no_key(Cow::Borrowed("header x-user-id")));
        assert_eq!(no_key.status(), http::StatusCode::BAD_REQUEST);
        let down = answer(ShardError::new(ShardErrorKind::Unavailable));
        assert_eq!(down.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(down.headers().get("retry-after").is_none());
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn grpc_statuses() {
        let s: tonic::Status = ShardError::no_key(Cow::Borrowed("x")).into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        let s: tonic::Status = ShardError::new(ShardErrorKind::NoNode).into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
