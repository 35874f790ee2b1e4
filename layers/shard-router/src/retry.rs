//! Whether a request that failed on one node goes to the next node of its preference list.

use std::fmt;

/// Whether a request that failed on one node is sent again to the next node of its
/// preference list (see [`ShardRouterBuilder::retry_elsewhere`](crate::ShardRouterBuilder::retry_elsewhere)).
///
/// `E` is the node service's own error type (before the router's rejection strategy maps it).
pub trait RetryPolicy<Req, E>: Send + Sync + 'static {
    /// A copy of the request to send elsewhere, or `None` to never retry it.
    fn clone_request(&self, req: &Req) -> Option<Req>;
    /// Whether this error means "try the next node" (for example an open circuit).
    fn retry_elsewhere(&self, error: &E) -> bool;
}

/// Never sends a request to a second node after it was sent to one.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetry;

impl<Req, E> RetryPolicy<Req, E> for NoRetry {
    #[inline]
    fn clone_request(&self, _: &Req) -> Option<Req> {
        None
    }

    fn retry_elsewhere(&self, _: &E) -> bool {
        false
    }
}

/// Sends a copy of the request to the next node when the predicate accepts the node
/// service's error.
#[derive(Clone, Copy)]
pub struct RetryElsewhere<F>(pub(crate) F);

impl<F> fmt::Debug for RetryElsewhere<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryElsewhere")
    }
}

impl<Req, E, F> RetryPolicy<Req, E> for RetryElsewhere<F>
where
    Req: Clone,
    F: Fn(&E) -> bool + Send + Sync + 'static,
{
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn retry_elsewhere(&self, error: &E) -> bool {
        (self.0)(error)
    }
}
