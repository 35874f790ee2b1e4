//! An in-memory decision allocates nothing for a known key: admitted or denied, one limit or
//! several, through `admit` and `check_local`, with a key borrowed from the request (a
//! `KeySource` of our own, and omega-core's `Header`), and through the service with the
//! default strategy (`KeepError`) for admitted requests. Counted by a global allocator that
//! counts this thread's allocations.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use omega_core::key::{Key, KeySource};
use omega_rate_limit::{Limit, Quota, RateLimitLayer, RateLimiter};
use omega_testkit::alloc::{CountingAlloc, allocations};
use tower::{Layer, Service, service_fn};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

struct Req {
    user: String,
}

/// A key borrowed from the request, as the built-in HTTP sources do.
struct User;

impl KeySource<Req> for User {
    fn key<'a>(&self, req: &'a Req) -> Option<Key<'a>> {
        Some(Key::from(req.user.as_str()))
    }
}

#[test]
fn known_keys_are_decided_without_allocating() {
    let limiter = RateLimiter::<Req>::builder()
        .limit(Limit::keyed("per_user", Quota::per_minute(20), User))
        .limit(Limit::global("global", Quota::per_second(1_000_000)))
        .build()
        .unwrap();
    let users: Vec<Req> = (0..100)
        .map(|i| Req {
            user: format!("user-{i}"),
        })
        .collect();
    // Every key is seen once first: inserting a new key may allocate.
    for r in &users {
        limiter.admit(r).unwrap();
    }
    let (mut admitted, mut denied) = (0u32, 0u32);
    let n = allocations(|| {
        for _ in 0..50 {
            for r in &users {
                match limiter.admit(r) {
                    Ok(()) => admitted += 1,
                    Err(d) => {
                        assert_eq!(d.limit(), "per_user");
                        denied += 1;
                    }
                }
                let decision = limiter.check_local(r);
                if decision.is_allowed() {
                    admitted += 1;
                } else {
                    denied += 1;
                }
            }
        }
    });
    assert_eq!(n, 0);
    // Both outcomes were exercised: the per-user burst is spent within the loop.
    assert!(
        admitted > 0 && denied > 0,
        "{admitted} admitted, {denied} denied"
    );
}

#[test]
fn a_single_global_limit_decides_without_allocating() {
    let limiter = RateLimiter::<()>::builder()
        .limit(Limit::global("global", Quota::per_second(100)))
        .build()
        .unwrap();
    let (mut admitted, mut denied) = (0u32, 0u32);
    let n = allocations(|| {
        for _ in 0..10_000 {
            match limiter.admit(&()) {
                Ok(()) => admitted += 1,
                Err(_) => denied += 1,
            }
        }
    });
    assert_eq!(n, 0);
    assert!(
        admitted > 0 && denied > 0,
        "{admitted} admitted, {denied} denied"
    );
}

/// Polls a future that is ready at once (the services here answer without waiting).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the future was not ready"),
    }
}

#[test]
fn admitted_requests_pass_the_service_without_allocating() {
    let limiter = RateLimiter::<Req>::builder()
        .limit(Limit::keyed("per_user", Quota::per_second(1_000_000), User))
        .build()
        .unwrap();
    let mut svc = RateLimitLayer::new(limiter).layer(service_fn(|r: Req| {
        std::future::ready(Ok::<_, Infallible>(r))
    }));
    let mut requests: Vec<Req> = (0..200)
        .map(|i| Req {
            user: format!("user-{}", i % 10),
        })
        .collect();
    // Every key is seen once first.
    for r in requests.drain(..10) {
        now(svc.call(r)).unwrap();
    }
    let n = allocations(|| {
        for r in requests.drain(..) {
            let response = now(svc.call(r)).unwrap();
            drop(response);
        }
    });
    assert_eq!(n, 0);
}

#[cfg(feature = "http")]
#[test]
fn the_header_key_source_decides_known_keys_without_allocating() {
    use omega_core::key::http::Header;
    use omega_rate_limit::Refused;

    let limiter = RateLimiter::<http::Request<()>>::builder()
        .limit(Limit::keyed(
            "per_key",
            Quota::per_minute(20),
            Header::new("x-api-key"),
        ))
        .limit(Limit::global("global", Quota::per_second(1_000_000)))
        .build()
        .unwrap();
    let requests: Vec<http::Request<()>> = (0..100)
        .map(|i| {
            http::Request::get("/")
                .header("x-api-key", format!("key-{i}"))
                .body(())
                .unwrap()
        })
        .collect();
    for r in &requests {
        limiter.admit(r).unwrap();
    }
    let (mut admitted, mut denied) = (0u32, 0u32);
    let n = allocations(|| {
        for _ in 0..50 {
            for r in &requests {
                match limiter.admit(r) {
                    Ok(()) => admitted += 1,
                    Err(Refused::Limited(d)) => {
                        assert_eq!(d.limit(), "per_key");
                        denied += 1;
                    }
                    Err(other) => panic!("{other:?}"),
                }
                if limiter.check_local(r).is_allowed() {
                    admitted += 1;
                } else {
                    denied += 1;
                }
            }
        }
    });
    assert_eq!(n, 0);
    assert!(
        admitted > 0 && denied > 0,
        "{admitted} admitted, {denied} denied"
    );

    // Through the service with the default strategy, admitted requests allocate nothing
    // either (the requests are built beforehand: a `HeaderMap` allocates).
    let limiter = RateLimiter::<http::Request<()>>::builder()
        .limit(Limit::keyed(
            "per_key",
            Quota::per_second(1_000_000),
            Header::new("x-api-key"),
        ))
        .build()
        .unwrap();
    let mut svc = RateLimitLayer::new(limiter).layer(service_fn(|_: http::Request<()>| {
        std::future::ready(Ok::<_, Infallible>(()))
    }));
    let mut requests: Vec<http::Request<()>> = (0..100)
        .map(|i| {
            http::Request::get("/")
                .header("x-api-key", format!("key-{}", i % 10))
                .body(())
                .unwrap()
        })
        .collect();
    for r in requests.drain(..10) {
        now(svc.call(r)).unwrap();
    }
    let n = allocations(|| {
        for r in requests.drain(..) {
            now(svc.call(r)).unwrap();
        }
    });
    assert_eq!(n, 0);
}
