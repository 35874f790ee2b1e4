//! Metrics through the `metrics` crate, read back with a small in-test recorder.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use omega_circuit_breaker::{CircuitBreaker, CircuitBreakerConfig, Clock, SlidingWindow};

#[derive(Default)]
struct Store {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Store {
    fn handle(&self, key: &Key) -> Arc<AtomicU64> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        self.values.lock().unwrap().entry(id).or_default().clone()
    }

    fn get(&self, id: &str) -> u64 {
        self.values
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |v| v.load(Ordering::SeqCst))
    }
}

impl Recorder for Store {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[test]
fn transitions_rejections_and_failures_are_counted() {
    let store = Store::default();
    metrics::with_local_recorder(&store, || {
        let clock = Clock::manual();
        let b = CircuitBreaker::builder("pay")
            .config(
                CircuitBreakerConfig::default()
                    .sliding_window(SlidingWindow::ConsecutiveFailures(2))
                    .slow_call_duration(Duration::from_millis(10))
                    .wait_duration(Duration::from_secs(1)),
            )
            .clock(clock.clone())
            .build()
            .unwrap();
        let slow = b.try_acquire().unwrap();
        clock.advance(Duration::from_millis(20));
        slow.success(); // slow: counts toward the run
        b.try_acquire().unwrap().failure();
        assert!(b.try_acquire().is_err());
        assert!(b.try_acquire().is_err());
        let gauge = f64::from_bits(store.get("omega_circuit_breaker_state{breaker=pay}"));
        assert_eq!(gauge, 1.0, "OPEN");
        clock.advance(Duration::from_secs(1));
        let _ = b.state();
        let gauge = f64::from_bits(store.get("omega_circuit_breaker_state{breaker=pay}"));
        assert_eq!(gauge, 2.0, "HALF_OPEN");
    });
    assert_eq!(
        store.get("omega_circuit_breaker_rejected_total{breaker=pay}"),
        2
    );
    assert_eq!(
        store.get("omega_circuit_breaker_failed_calls_total{breaker=pay}"),
        1
    );
    assert_eq!(
        store.get("omega_circuit_breaker_slow_calls_total{breaker=pay}"),
        1
    );
    assert_eq!(
        store.get("omega_circuit_breaker_transitions_total{breaker=pay,from=CLOSED,to=OPEN}"),
        1
    );
    assert_eq!(
        store.get("omega_circuit_breaker_transitions_total{breaker=pay,from=OPEN,to=HALF_OPEN}"),
        1
    );
}
