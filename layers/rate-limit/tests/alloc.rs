//! An in-memory decision allocates nothing for a known key: admitted or denied, one limit or
//! several, through `admit` and `check_local`. Counted by a global allocator that counts this
//! thread's allocations.

use std::borrow::Cow;

use omega_rate_limit::{KeyExtractor, Limit, Quota, RateLimiter};
use omega_testkit::alloc::{CountingAlloc, allocations};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

struct Req {
    user: String,
}

/// A key borrowed from the request, as the built-in HTTP extractors do.
struct User;

impl KeyExtractor<Req> for User {
    fn key<'a>(&self, req: &'a Req) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(&req.user))
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
