//! Metric names shared by every layer, so dashboards see one consistent scheme.
//!
//! Names are `omega_<layer>_<what>`, with labels for the instance of the layer (`limit`,
//! `breaker`, `route`, ...). Layers record through the `metrics` crate under these names.

/// The prefix of every metric name.
pub const PREFIX: &str = "omega";

/// Backend health: 1 when up, 0 when down; label `target`.
pub const BACKEND_UP: &str = "omega_backend_up";
/// Latency of one Redis operation in seconds; labels `target`, `op`.
pub const BACKEND_OP_SECONDS: &str = "omega_backend_op_seconds";
/// Redis operations that failed; labels `target`, `op`, `kind` (`timeout`, `unavailable`, ...).
pub const BACKEND_ERRORS: &str = "omega_backend_errors_total";

/// `omega_<layer>_<what>`, for names a layer defines itself.
pub fn name(layer: &str, what: &str) -> String {
    format!("{PREFIX}_{layer}_{what}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_follow_the_scheme() {
        assert_eq!(
            super::name("rate_limit", "allowed_total"),
            "omega_rate_limit_allowed_total"
        );
        assert!(super::BACKEND_UP.starts_with(super::PREFIX));
    }
}
