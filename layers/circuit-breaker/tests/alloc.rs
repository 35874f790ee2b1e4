//! The CLOSED path allocates nothing: acquiring a permit, recording successes and failures,
//! the synchronous decorator, the Tower service with one breaker, and the keyed service whose
//! key is borrowed from the request and whose breaker exists; nor does a rejection by an open
//! circuit. Through the service with `KeepError`, a rejection costs exactly the box of its
//! error, as tower's middleware do. Counted by a global allocator that counts this thread's
//! allocations.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use std::sync::Arc;

use omega_circuit_breaker::{
    BreakerRegistry, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen,
    SlidingWindow,
};
use omega_core::key::{Key, KeySource};
use omega_testkit::alloc::{CountingAlloc, allocations};
use tower::{Layer, Service};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn breaker(window: SlidingWindow) -> CircuitBreaker {
    let config = CircuitBreakerConfig::new()
        .sliding_window(window)
        .minimum_calls(10)
        .failure_rate_threshold(90.0);
    CircuitBreaker::with_config("alloc", config).unwrap()
}

#[test]
fn closed_path_allocates_nothing() {
    for window in [SlidingWindow::CountBased(100), SlidingWindow::TimeBased(10)] {
        let b = breaker(window);
        // Warm up: the window is filled once, as in a running service.
        for _ in 0..200 {
            b.try_acquire().unwrap().success();
        }
        let n = allocations(|| {
            for i in 0..10_000u32 {
                let permit = b.try_acquire().unwrap();
                // One failure in twenty stays below the threshold.
                if i % 20 == 0 {
                    permit.failure();
                } else {
                    permit.success();
                }
                let _ = b.call_sync(|| Ok::<_, ()>(i));
            }
        });
        assert_eq!(n, 0, "{window:?}");
        assert!(b.is_call_permitted());
    }
}

#[test]
fn the_tower_service_allocates_nothing_per_call() {
    let b = breaker(SlidingWindow::CountBased(100));
    let inner = tower::service_fn(|x: u64| std::future::ready(Ok::<_, std::io::Error>(x + 1)));
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = |x: u64| {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = std::pin::pin!(svc.call(x));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => unreachable!("the inner future is ready"),
        }
    };
    for x in 0..200 {
        call(x);
    }
    let n = allocations(|| {
        for x in 0..10_000 {
            assert_eq!(call(x), x + 1);
        }
    });
    assert_eq!(n, 0);
    assert_eq!(b.health().calls, 100);
}

#[test]
fn a_rejection_allocates_nothing() {
    let b = breaker(SlidingWindow::CountBased(100));
    b.force_open();
    let _ = b.try_acquire().unwrap_err();
    let n = allocations(|| {
        for _ in 0..10_000 {
            // Forced open: no probe is scheduled, so there is no time to wait for.
            assert_eq!(b.try_acquire().unwrap_err().retry_after(), None);
        }
    });
    assert_eq!(n, 0);
}

/// The tenant of a request, borrowed from it.
struct Tenant;

impl KeySource<(String, u64)> for Tenant {
    fn key<'a>(&self, req: &'a (String, u64)) -> Option<Key<'a>> {
        Some(Key::from(req.0.as_str()))
    }
}

#[test]
fn the_keyed_service_allocates_nothing_for_a_breaker_that_exists() {
    let config = CircuitBreakerConfig::new().minimum_calls(10);
    let registry = BreakerRegistry::<Arc<str>>::new(config).unwrap();
    let inner = tower::service_fn(|(_, x): (String, u64)| {
        std::future::ready(Ok::<_, std::io::Error>(x + 1))
    });
    let mut svc = CircuitBreakerLayer::keyed(registry.clone(), Tenant).layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let requests: Vec<(String, u64)> = (0..10_000)
        .map(|x| (format!("tenant-{}", x % 4), x))
        .collect();
    let mut call = |req: (String, u64)| {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = std::pin::pin!(svc.call(req));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => unreachable!("the inner future is ready"),
        }
    };
    for x in 0..400 {
        call((format!("tenant-{}", x % 4), x));
    }
    assert_eq!(registry.len(), 4);
    let n = allocations(|| {
        for req in requests {
            let x = req.1;
            // Dropping the request's own `String` frees, and allocates nothing.
            assert_eq!(call(req), x + 1);
        }
    });
    assert_eq!(n, 0);
    assert_eq!(registry.get("tenant-1").unwrap().health().calls, 100);
}

#[test]
fn a_rejection_through_the_service_costs_only_its_boxed_error() {
    let b = breaker(SlidingWindow::CountBased(100));
    b.force_open();
    let inner = tower::service_fn(|x: u64| std::future::ready(Ok::<_, std::io::Error>(x)));
    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = |x: u64| {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = std::pin::pin!(svc.call(x));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => r.unwrap_err(),
            Poll::Pending => unreachable!("a rejection is ready"),
        }
    };
    assert!(call(0).is::<CircuitOpen>());
    let n = allocations(|| {
        for x in 0..10_000 {
            let err = call(x);
            assert!(err.is::<CircuitOpen>());
        }
    });
    assert_eq!(n, 10_000, "one box per rejection, for the BoxError");
}
