//! What the limiter reports through the `metrics` crate.
#![cfg(feature = "metrics")]

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use omega_rate_limit::{Limit, Quota, RateLimiter};

type Entries = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn counter(entries: &Entries, name: &str, limit: &str) -> u64 {
    entries
        .iter()
        .find_map(|(key, _, _, value)| {
            let k = key.key();
            let matches =
                k.name() == name && k.labels().any(|l| l.key() == "limit" && l.value() == limit);
            match value {
                DebugValue::Counter(n) if matches => Some(*n),
                _ => None,
            }
        })
        .unwrap_or(0)
}

#[test]
fn allowed_denied_and_shadow_denied_are_counted_per_limit() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let limiter = metrics::with_local_recorder(&recorder, || {
        RateLimiter::<u32>::builder()
            .limit(Limit::global("global", Quota::per_minute(3)))
            .limit(
                Limit::keyed("per_user", Quota::per_minute(1), |u: &u32| {
                    Some(u.to_string())
                })
                .shadow(true),
            )
            .build()
            .unwrap()
    });
    // User 1 twice (the second is over its shadow limit), user 2 once, then the global
    // limit is spent and user 3 is denied.
    assert!(limiter.check_local(&1).is_allowed());
    assert!(limiter.check_local(&1).is_allowed());
    assert!(limiter.check_local(&2).is_allowed());
    assert!(!limiter.check_local(&3).is_allowed());

    // A snapshot drains the counters: take one and read it all.
    let entries = snapshotter.snapshot().into_vec();
    let c = |name: &str, limit: &str| counter(&entries, name, limit);
    assert_eq!(c("omega_rate_limit_allowed_total", "global"), 3);
    assert_eq!(c("omega_rate_limit_denied_total", "global"), 1);
    // The shadow limit admitted users 1 and 2 once each; user 1's second request was over it.
    assert_eq!(c("omega_rate_limit_allowed_total", "per_user"), 2);
    assert_eq!(c("omega_rate_limit_shadow_denied_total", "per_user"), 1);
    assert_eq!(c("omega_rate_limit_denied_total", "per_user"), 0);
}
