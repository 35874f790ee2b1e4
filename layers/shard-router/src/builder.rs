//! [`ShardRouterBuilder`]: how requests are keyed, failed over and refused.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use omega_core::key::{Key, KeySource, MissingKey};
use omega_core::reject::KeepError;

use crate::handle::TopologyHandle;
use crate::node::Node;
use crate::retry::{NoRetry, RetryElsewhere};
use crate::routes::{MakeService, Shared};
use crate::service::ShardRouter;
use crate::settings::Settings;

/// Builds a [`ShardRouter`]; start with [`ShardRouter::builder`].
///
/// `K` is the key source, `P` the retry policy, `Rj` the rejection strategy
/// ([`KeepError`] until [`respond`](Self::respond) or [`on_rejection`](Self::on_rejection)).
#[derive(Clone)]
pub struct ShardRouterBuilder<K, P = NoRetry, Rj = KeepError> {
    handle: TopologyHandle,
    key: K,
    retry: P,
    reject: Rj,
    cfg: Settings,
}

impl<K, P, Rj> fmt::Debug for ShardRouterBuilder<K, P, Rj> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardRouterBuilder")
            .field("handle", &self.handle)
            .field("attempts", &self.cfg.attempts)
            .field("bounded_load", &self.cfg.bound)
            .field("missing_key", &self.cfg.missing)
            .field("readiness_timeout", &self.cfg.ready_timeout)
            .finish_non_exhaustive()
    }
}

/// The key source before [`ShardRouterBuilder::key`] is called: no request has a key.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<Req> KeySource<Req> for NoKey {
    #[inline]
    fn key<'a>(&self, _: &'a Req) -> Option<Key<'a>> {
        None
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Borrowed("a key source (none was set with `ShardRouterBuilder::key`)")
    }
}

impl ShardRouter<(), NoKey> {
    /// A builder for a router over the topology of `handle`.
    pub fn builder(handle: TopologyHandle) -> ShardRouterBuilder<NoKey> {
        ShardRouterBuilder {
            handle,
            key: NoKey,
            retry: NoRetry,
            reject: KeepError,
            cfg: Settings::default(),
        }
    }
}

impl<K, P, Rj> ShardRouterBuilder<K, P, Rj> {
    /// Where each request's key comes from: any [`KeySource`], such as a closure
    /// `Fn(&Req) -> Option<K>` (a string, bytes or an integer; integers route as their
    /// little-endian bytes) or one of core's HTTP sources (`Header`, `Query`, `PathSegment`,
    /// `Path`, `ClientIp`, ...). The router hashes the key's bytes with the topology's hash,
    /// so a request goes where [`ShardRouter::owner`] says its key goes.
    pub fn key<K2>(self, key: K2) -> ShardRouterBuilder<K2, P, Rj> {
        ShardRouterBuilder {
            handle: self.handle,
            key,
            retry: self.retry,
            reject: self.reject,
            cfg: self.cfg,
        }
    }

    /// What a request without a key means: [`MissingKey::Reject`] (the router's default) refuses
    /// it with a [`ShardError`](crate::ShardError) of kind
    /// [`NoKey`](crate::ShardErrorKind::NoKey) (400 Bad Request); [`MissingKey::Skip`] routes
    /// it without affinity, spreading such requests over the nodes by their shares (failover,
    /// availability and bounded loads apply as for keyed requests).
    pub fn missing_key(mut self, missing: MissingKey) -> Self {
        self.cfg.missing = missing;
        self
    }

    /// Consider up to `nodes` nodes of the key's preference list (default 1: the owner only).
    /// The first one that is available (see [`is_available`](Self::is_available)), has a
    /// service, and whose service becomes ready without an error within the
    /// [`readiness_timeout`](Self::readiness_timeout) gets the request; a node whose
    /// `poll_ready` fails or times out is skipped. With 1, such a request fails with
    /// [`ShardErrorKind::Unavailable`](crate::ShardErrorKind::Unavailable) (or the readiness
    /// error itself).
    pub fn failover(mut self, nodes: usize) -> Self {
        self.cfg.attempts = nodes.max(1);
        self
    }

    /// A health check per node, asked before a request is sent to it: nodes for which it
    /// answers `false` are skipped along the preference list. The gateway passes "the node's
    /// circuit is not open" here. It must be cheap: it runs on every request, for the owner
    /// first (the preference list is built only when the owner is out).
    pub fn is_available(mut self, f: impl Fn(&Node) -> bool + Send + Sync + 'static) -> Self {
        self.cfg.available = Some(Arc::new(f));
        self
    }

    /// Bounded loads: a node with `c ×` its weight's share of the requests in flight (plus
    /// one) already in flight is skipped, and the request goes to the next node of its
    /// preference list that is under its bound (`c > 1`, for example 1.25; Envoy's and
    /// HAProxy's hash balance factor). Protects against hot keys at the cost of affinity for the
    /// spilled requests.
    ///
    /// A request counts from the moment it is routed (in `call`), while it waits for its
    /// node's readiness as well as once sent, until it is answered or dropped: a burst of
    /// calls for one key spreads even before any of them is polled.
    pub fn bounded_load(mut self, c: f64) -> Self {
        self.cfg.bound = Some(c.max(1.0));
        self
    }

    /// How long a request waits for its node's service to become ready (`poll_ready`) before
    /// the node counts as unavailable: the request goes to the next node of the key's
    /// preference list (within [`failover`](Self::failover)), each with its own wait, or is
    /// refused with [`ShardErrorKind::Unavailable`](crate::ShardErrorKind::Unavailable). Default
    /// [`DEFAULT_READINESS_TIMEOUT`](crate::DEFAULT_READINESS_TIMEOUT) (4 s, libmemcached's
    /// connect timeout); `None` waits for ever. The clock is tokio's (the router's futures
    /// must run on a tokio runtime with time enabled for the timeout to apply); the timer is
    /// set only when a node is not ready at once.
    pub fn readiness_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.cfg.ready_timeout = timeout;
        self
    }

    /// What happens to a request routed to a node that leaves the topology before the request
    /// is sent (while the node's service was becoming ready): routed again on the new
    /// topology (`true`, the default) or failed with
    /// [`ShardErrorKind::NodeRemoved`](crate::ShardErrorKind::NodeRemoved).
    pub fn reroute_removed(mut self, reroute: bool) -> Self {
        self.cfg.reroute_removed = reroute;
        self
    }

    /// Sends a request again to the next node of its preference list (within
    /// [`failover`](Self::failover)) when its node answered with an error that `pred`
    /// accepts. `pred` sees the node service's own error type, before the rejection strategy
    /// maps it: for services failing with `BoxError`, `|e: &BoxError| e.is::<CircuitOpen>()`.
    /// Needs `Req: Clone`: the router keeps a copy of each request while there is a next
    /// node to try.
    pub fn retry_elsewhere<F>(self, pred: F) -> ShardRouterBuilder<K, RetryElsewhere<F>, Rj> {
        ShardRouterBuilder {
            handle: self.handle,
            key: self.key,
            retry: RetryElsewhere(pred),
            reject: self.reject,
            cfg: self.cfg,
        }
    }

    /// Sends requests again to the next node of their preference list as `policy` says: it
    /// makes the copy to keep ([`RetryPolicy::clone_request`], `None` for a request that must
    /// not go twice, such as one whose body cannot be replayed) and judges each node error.
    /// For requests that are not `Clone` (an HTTP request with a streaming body).
    ///
    /// [`RetryPolicy::clone_request`]: crate::RetryPolicy::clone_request
    pub fn retry<P2>(self, policy: P2) -> ShardRouterBuilder<K, P2, Rj> {
        ShardRouterBuilder {
            handle: self.handle,
            key: self.key,
            retry: policy,
            reject: self.reject,
            cfg: self.cfg,
        }
    }

    /// Answers refusals with HTTP responses (feature `http`): a request without a key gets
    /// 400 Bad Request, one that no node can take 503 Service Unavailable (trailers-only
    /// gRPC `INVALID_ARGUMENT` / `UNAVAILABLE` for gRPC calls). The node services' errors pass
    /// through unchanged, so node services that never fail (`Infallible`) make a router that
    /// never fails, which axum serves as is.
    #[cfg(feature = "http")]
    pub fn respond(self) -> ShardRouterBuilder<K, P, omega_core::reject::Respond> {
        self.on_rejection(omega_core::reject::Respond)
    }

    /// How refusals are answered: any [`OnRejection`](omega_core::reject::OnRejection)
    /// strategy, for example a closure `Fn(&Req, &dyn Refusal) -> Response`. The default,
    /// [`KeepError`], fails with the [`ShardError`](crate::ShardError), boxed, and boxes the
    /// node services' errors.
    pub fn on_rejection<Rj2>(self, strategy: Rj2) -> ShardRouterBuilder<K, P, Rj2> {
        ShardRouterBuilder {
            handle: self.handle,
            key: self.key,
            retry: self.retry,
            reject: strategy,
            cfg: self.cfg,
        }
    }

    /// The router, with each node's service made by `make` for the first request routed to
    /// the node after it appears in the topology (and dropped when it leaves). `make` runs
    /// outside the router's locks, once per node: a slow `make` holds up only the requests
    /// routed to that node, not the others.
    pub fn build<S>(
        self,
        make: impl Fn(&Node) -> S + Send + Sync + 'static,
    ) -> ShardRouter<S, K, P, Rj>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.finish(Some(Box::new(make)))
    }

    /// The router without a service factory: services are given with
    /// [`ShardRouter::insert_service`] or by a [`Discover`](tower::discover::Discover) stream
    /// ([`ShardRouter::discover`]).
    pub fn build_without_services<S>(self) -> ShardRouter<S, K, P, Rj>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.finish(None)
    }

    fn finish<S>(self, make: Option<MakeService<S>>) -> ShardRouter<S, K, P, Rj>
    where
        S: Clone + Send + Sync + 'static,
    {
        ShardRouter::from_shared(Arc::new(Shared::new(
            self.handle,
            self.key,
            self.retry,
            self.reject,
            self.cfg,
            make,
        )))
    }
}
