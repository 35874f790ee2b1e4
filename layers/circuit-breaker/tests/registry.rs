//! The registry of per-key breakers: names, a bounded size that keeps OPEN breakers, idle
//! eviction, reconfiguration, and lookups by any borrowed form of the key.

use std::sync::Arc;
use std::time::Duration;

use omega_circuit_breaker::{BreakerRegistry, CircuitBreakerConfig, Clock, SlidingWindow, State};
use tokio::time::advance;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn registry_creates_named_breakers_bounds_its_size_and_keeps_open_ones() {
    let registry = BreakerRegistry::<String>::builder()
        .config(
            CircuitBreakerConfig::default().sliding_window(SlidingWindow::ConsecutiveFailures(1)),
        )
        .clock(Clock::system())
        .name_prefix("upstream/")
        .max_breakers(3)
        .build()
        .unwrap();
    let key = |s: &str| s.to_string();
    let a = registry.get_or_create(&key("a"));
    assert_eq!(a.name(), "upstream/a");
    assert!(a.same_as(&registry.get_or_create(&key("a"))));
    a.try_acquire().unwrap().failure();
    assert!(!registry.is_call_permitted(&key("a")));
    registry.get_or_create(&key("b"));
    registry.get_or_create(&key("c"));
    registry.get_or_create(&key("d")); // full: a CLOSED breaker makes room, not the OPEN "a"
    assert_eq!(registry.len(), 3);
    assert_eq!(registry.state(&key("a")), Some(State::Open));

    // Idle eviction: unused CLOSED breakers go, the OPEN one stays.
    registry.get_or_create(&key("d"));
    assert_eq!(registry.evict_idle(), 0);
    registry.get_or_create(&key("d"));
    assert_eq!(registry.evict_idle(), 1); // "b" or "c", whichever survived, was idle
    registry.get_or_create(&key("d"));
    registry.evict_idle();
    let mut keys: Vec<String> = registry.health().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, ["a", "d"]);

    // Reconfiguring the registry reaches every breaker; names stay.
    registry
        .reconfigure(CircuitBreakerConfig::default().failure_rate_threshold(20.0))
        .unwrap();
    let d = registry.get(&key("d")).unwrap();
    assert_eq!(d.config().get_failure_rate_threshold(), 20.0);
    assert_eq!(d.name(), "upstream/d");
}

#[tokio::test(start_paused = true)]
async fn idle_breakers_are_evicted_by_the_background_sweep() {
    let registry = BreakerRegistry::<String>::builder()
        .config(
            CircuitBreakerConfig::default().sliding_window(SlidingWindow::ConsecutiveFailures(1)),
        )
        .clock(Clock::system())
        .idle_timeout(secs(10))
        .build()
        .unwrap();
    let (busy, idle, down) = ("busy".to_string(), "idle".to_string(), "down".to_string());
    registry.get_or_create(&idle);
    registry
        .get_or_create(&down)
        .try_acquire()
        .unwrap()
        .failure();
    for _ in 0..6 {
        registry.get_or_create(&busy);
        advance(secs(5)).await;
        tokio::task::yield_now().await;
    }
    assert!(registry.get(&idle).is_none(), "unused for 30 s: evicted");
    assert!(registry.get(&busy).is_some());
    assert_eq!(
        registry.state(&down),
        Some(State::Open),
        "OPEN breakers stay"
    );
}

#[test]
fn lookups_take_any_borrowed_form_of_the_key() {
    let config =
        CircuitBreakerConfig::default().sliding_window(SlidingWindow::ConsecutiveFailures(1));
    let nodes = BreakerRegistry::<Arc<str>>::new(config.clone()).unwrap();
    let id: Arc<str> = Arc::from("node-a");
    let a = nodes.get_or_create(&id);
    assert!(a.same_as(&nodes.get_or_create("node-a")));
    assert!(a.same_as(&nodes.get("node-a").unwrap()));
    a.try_acquire().unwrap().failure();
    assert!(!nodes.is_call_permitted("node-a"));
    assert!(!nodes.is_call_permitted(&id));
    assert_eq!(nodes.state("node-a"), Some(State::Open));
    assert!(nodes.remove("node-a").unwrap().same_as(&a));
    assert!(nodes.is_empty());

    let names = BreakerRegistry::<String>::new(config).unwrap();
    let b = names
        .get_or_create_with("b", || {
            CircuitBreakerConfig::default().sliding_window(SlidingWindow::CountBased(5))
        })
        .unwrap();
    assert_eq!(b.name(), "b");
    assert!(b.same_as(&names.get(&"b".to_string()).unwrap()));
}

/// A registry built on one runtime and used on the next (a test suite sharing it across
/// `#[tokio::test]`s): its sweep ended with the first runtime, and idle breakers must still go.
#[test]
fn the_sweep_follows_the_registry_to_the_next_runtime() {
    let first = omega_testkit::runtime();
    let registry = first.block_on(async {
        BreakerRegistry::<String>::builder()
            .clock(Clock::system())
            .idle_timeout(Duration::from_millis(100))
            .build()
            .unwrap()
    });
    drop(first);
    omega_testkit::runtime().block_on(async {
        for i in 0..10 {
            registry.get_or_create(&format!("k{i}"));
        }
        let started = std::time::Instant::now();
        while !registry.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{} idle breakers were never swept",
                registry.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("idle breakers swept after {:?}", started.elapsed());
    });
}
