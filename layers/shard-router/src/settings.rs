//! The router's settings, as [`ShardRouterBuilder`](crate::ShardRouterBuilder) sets them and
//! the routes and futures read them.

use std::sync::Arc;
use std::time::Duration;

use omega_core::key::MissingKey;

use crate::node::Node;

/// How long a request waits for its node's service to become ready before the router leaves
/// that node for the next one of the key's preference list (or refuses the request), unless
/// [`ShardRouterBuilder::readiness_timeout`] says otherwise: 4 s, libmemcached's connect
/// timeout (`MEMCACHED_DEFAULT_CONNECT_TIMEOUT`).
///
/// [`ShardRouterBuilder::readiness_timeout`]: crate::ShardRouterBuilder::readiness_timeout
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(4);

/// A health check per node ([`ShardRouterBuilder::is_available`]).
///
/// [`ShardRouterBuilder::is_available`]: crate::ShardRouterBuilder::is_available
pub(crate) type Available = Arc<dyn Fn(&Node) -> bool + Send + Sync>;

/// The builder's settings.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) attempts: usize,
    pub(crate) available: Option<Available>,
    pub(crate) bound: Option<f64>,
    pub(crate) reroute_removed: bool,
    pub(crate) missing: MissingKey,
    pub(crate) ready_timeout: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            attempts: 1,
            available: None,
            bound: None,
            reroute_removed: true,
            missing: MissingKey::Reject,
            ready_timeout: Some(DEFAULT_READINESS_TIMEOUT),
        }
    }
}
