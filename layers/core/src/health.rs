//! Backend health as the layers and the admin API report it.

use std::time::SystemTime;

/// Whether a backend currently answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthStatus {
    /// The last operation (or reconnect probe) succeeded; for a whole Redis Cluster, every
    /// primary is up.
    Up,
    /// The backend failed (for a cluster: at least one primary did); operations fail fast or
    /// time out until it is back.
    Down,
}

/// A snapshot of a backend's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Up or down.
    pub status: HealthStatus,
    /// When the backend entered this status.
    pub since: SystemTime,
    /// The most recent error, kept after recovery so operators can see what happened.
    pub last_error: Option<String>,
    /// What the backend talks to: `memory`, a Redis address, or the cluster seeds; for one
    /// server of `RedisBackend::node_health` (feature `redis`), its `host:port`.
    pub target: String,
}

impl Health {
    /// `true` when up.
    pub fn is_up(&self) -> bool {
        self.status == HealthStatus::Up
    }
}
