//! Why a node gave no answer: [`UpstreamError`] from whichever client sent the request, and
//! [`Unanswered`], what the router sees of it (whether the request may go to another node).

use std::sync::Arc;

use axum::body::Body;
use http::{Response, StatusCode};

use super::status;

/// Why a node did not answer a request, whichever client sent it.
#[derive(Debug)]
pub struct UpstreamError {
    /// No connection could be made: nothing was sent.
    connect: bool,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl UpstreamError {
    /// Whether no connection could be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        self.connect
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

impl From<hyper_util::client::legacy::Error> for UpstreamError {
    fn from(error: hyper_util::client::legacy::Error) -> Self {
        UpstreamError {
            connect: error.is_connect(),
            error: Box::new(error),
        }
    }
}

impl From<crate::wire::Error> for UpstreamError {
    fn from(error: crate::wire::Error) -> Self {
        UpstreamError {
            connect: matches!(error, crate::wire::Error::Connect(_)),
            error: Box::new(error),
        }
    }
}

impl From<crate::pool::SendError> for UpstreamError {
    fn from(error: crate::pool::SendError) -> Self {
        UpstreamError {
            connect: matches!(error, crate::pool::SendError::Connect(_)),
            error: Box::new(error),
        }
    }
}

/// Whether a request failed because its body grew past the route's limit.
pub(super) fn over_the_body_limit(e: &UpstreamError) -> bool {
    cause::<http_body_util::LengthLimitError>(e).is_some()
}

/// The first error of type `T` in `e`'s chain of sources.
pub(super) fn cause<T: std::error::Error + 'static>(e: &UpstreamError) -> Option<&T> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<T>() {
            return Some(t);
        }
        source = s.source();
    }
    None
}

/// Whether the request failed because of what the client sent: its body stream failed (an
/// upload cut off, a client gone), not the node.
pub(super) fn caused_by_the_client(e: &UpstreamError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_user()
        {
            return true;
        }
        if let Some(crate::wire::Error::Body(_)) = s.downcast_ref::<crate::wire::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A request its node did not answer: the connection could not be made (nothing was sent), or
/// the node broke it off before the response head. The router may send it to the next node of
/// the key's preference list (see `table::Failover`).
#[derive(Debug)]
pub struct Unanswered {
    pub(super) node: Arc<str>,
    pub(super) error: UpstreamError,
    /// Whether anything was sent.
    pub sent: bool,
    /// Whether the request may be sent again: it has no body, or its body is still unread.
    pub replayable: bool,
    /// Whether its method is idempotent (RFC 9110 §9.2.2).
    pub idempotent: bool,
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sent {
            write!(
                f,
                "node {} broke the connection off before answering: {}",
                self.node, self.error
            )
        } else {
            write!(f, "node {} is unreachable: {}", self.node, self.error)
        }
    }
}

impl std::error::Error for Unanswered {}

impl Unanswered {
    /// The answer when no node was left to try: 502.
    pub fn into_response(self) -> Response<Body> {
        status(StatusCode::BAD_GATEWAY, &self.to_string())
    }
}
