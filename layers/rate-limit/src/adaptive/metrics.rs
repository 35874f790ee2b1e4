//! Gauges per partition (feature `metrics`); without the feature every call here compiles to
//! nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `omega_rate_limit_adaptive_limit` | gauge | `adaptive`, `partition`: the current limit |
//! | `omega_rate_limit_adaptive_rtt_seconds` | gauge | `adaptive`, `partition`, `estimate`: `short` (the last window's average) or `baseline` (no-load or long-term RTT) |
//! | `omega_rate_limit_adaptive_rejected_total` | counter | `adaptive`, `partition`: requests refused over the limit |
//!
//! A partition registers its handles when it is made (on its key's first request), so
//! recording is one atomic operation; gauges move once per window.

#[cfg(feature = "metrics")]
mod on {
    use metrics::{Counter, Gauge};

    use crate::adaptive::Estimate;

    pub(crate) struct PartitionMetrics {
        limit: Gauge,
        rtt: Gauge,
        baseline: Gauge,
        rejected: Counter,
    }

    impl PartitionMetrics {
        pub(crate) fn new(adaptive: &str, partition: &str) -> Self {
            let name = |what| omega_core::metrics::name("rate_limit", what);
            let labels = [
                ("adaptive", adaptive.to_owned()),
                ("partition", partition.to_owned()),
            ];
            let rtt = |estimate: &'static str| {
                let mut l = labels.to_vec();
                l.push(("estimate", estimate.to_owned()));
                metrics::gauge!(name("adaptive_rtt_seconds"), &l)
            };
            PartitionMetrics {
                limit: metrics::gauge!(name("adaptive_limit"), &labels),
                rtt: rtt("short"),
                baseline: rtt("baseline"),
                rejected: metrics::counter!(name("adaptive_rejected_total"), &labels),
            }
        }

        pub(crate) fn limit(&self, limit: u32) {
            self.limit.set(f64::from(limit));
        }

        pub(crate) fn update(&self, estimate: &Estimate) {
            self.limit(estimate.limit());
            self.rtt.set(estimate.rtt().as_secs_f64());
            self.baseline.set(estimate.baseline_rtt().as_secs_f64());
        }

        #[inline]
        pub(crate) fn rejected(&self) {
            self.rejected.increment(1);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use crate::adaptive::Estimate;

    pub(crate) struct PartitionMetrics;

    impl PartitionMetrics {
        pub(crate) fn new(_adaptive: &str, _partition: &str) -> Self {
            PartitionMetrics
        }
        #[inline(always)]
        pub(crate) fn limit(&self, _limit: u32) {}
        #[inline(always)]
        pub(crate) fn update(&self, _estimate: &Estimate) {}
        #[inline(always)]
        pub(crate) fn rejected(&self) {}
    }
}

pub(crate) use on::PartitionMetrics;
