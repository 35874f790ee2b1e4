//! Metrics through the `metrics` crate (feature `metrics`); without the feature every call
//! here compiles to nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `omega_rate_limit_allowed_total` | counter | `limit`: requests this limit checked and admitted |
//! | `omega_rate_limit_denied_total` | counter | `limit`: requests this limit denied |
//! | `omega_rate_limit_shadow_denied_total` | counter | `limit`: requests a shadow limit would have denied |
//! | `omega_rate_limit_redis_decision_seconds` | histogram | `target`: one decision's Redis time |
//!
//! Handles are registered when the limiter is built, so recording is one atomic operation:
//! install the recorder (for example the Prometheus exporter) before building limiters. The
//! Redis backend's own health and latency (`omega_backend_up`, `omega_backend_op_seconds`,
//! `omega_backend_errors_total`) are recorded by omega-core's backend.

#[cfg(feature = "metrics")]
mod on {
    use metrics::Counter;
    #[cfg(feature = "redis")]
    use metrics::Histogram;

    /// One limit's counters.
    pub(crate) struct LimitMetrics {
        allowed: Counter,
        denied: Counter,
        shadow_denied: Counter,
    }

    impl LimitMetrics {
        pub(crate) fn new(limit: &str) -> Self {
            let name = |what| omega_core::metrics::name("rate_limit", what);
            LimitMetrics {
                allowed: metrics::counter!(name("allowed_total"), "limit" => limit.to_owned()),
                denied: metrics::counter!(name("denied_total"), "limit" => limit.to_owned()),
                shadow_denied: metrics::counter!(
                    name("shadow_denied_total"),
                    "limit" => limit.to_owned()
                ),
            }
        }

        #[inline]
        pub(crate) fn allowed(&self) {
            self.allowed.increment(1);
        }

        #[inline]
        pub(crate) fn denied(&self) {
            self.denied.increment(1);
        }

        #[inline]
        pub(crate) fn shadow_denied(&self) {
            self.shadow_denied.increment(1);
        }
    }

    /// The Redis store's decision latency.
    #[cfg(feature = "redis")]
    pub(crate) struct StoreMetrics {
        latency: Histogram,
    }

    #[cfg(feature = "redis")]
    impl StoreMetrics {
        pub(crate) fn new(target: &str) -> Self {
            StoreMetrics {
                latency: metrics::histogram!(
                    omega_core::metrics::name("rate_limit", "redis_decision_seconds"),
                    "target" => target.to_owned()
                ),
            }
        }

        pub(crate) fn start() -> std::time::Instant {
            std::time::Instant::now()
        }

        pub(crate) fn decision(&self, started: std::time::Instant) {
            self.latency.record(started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    pub(crate) struct LimitMetrics;

    impl LimitMetrics {
        pub(crate) fn new(_limit: &str) -> Self {
            LimitMetrics
        }
        #[inline(always)]
        pub(crate) fn allowed(&self) {}
        #[inline(always)]
        pub(crate) fn denied(&self) {}
        #[inline(always)]
        pub(crate) fn shadow_denied(&self) {}
    }

    #[cfg(feature = "redis")]
    pub(crate) struct StoreMetrics;

    #[cfg(feature = "redis")]
    impl StoreMetrics {
        pub(crate) fn new(_target: &str) -> Self {
            StoreMetrics
        }
        #[inline(always)]
        pub(crate) fn start() {}
        #[inline(always)]
        pub(crate) fn decision(&self, _started: ()) {}
    }
}

pub(crate) use on::LimitMetrics;
#[cfg(feature = "redis")]
pub(crate) use on::StoreMetrics;
