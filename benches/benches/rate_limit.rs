//! The in-memory rate limiter beside governor, in one run.
//!
//! - `rate_limit_direct`: one global bucket, a check that admits (the quota is effectively
//!   unlimited, so every iteration takes the admit path).
//! - `rate_limit_keyed_1k`: 1,000 keys cycled, admit path.
//! - `rate_limit_deny`: one bucket that is always empty (the read-only deny path).

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{Quota as GQuota, RateLimiter as GLimiter};
use omega_rate_limit::{Limit, Quota, RateLimiter};

const KEYS: u64 = 1_000;

fn direct(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_direct");
    let omega = RateLimiter::<()>::builder()
        .limit(Limit::global("global", Quota::per_second(1_000_000_000)))
        .build()
        .unwrap();
    g.bench_function("omega", |b| {
        b.iter(|| black_box(omega.check_local(black_box(&())).is_allowed()))
    });
    let gov = GLimiter::direct(GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
    g.bench_function("governor", |b| b.iter(|| black_box(gov.check().is_ok())));
    g.finish();
}

fn deny(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_deny");
    let omega = RateLimiter::<()>::builder()
        .limit(Limit::global("global", Quota::per_hour(1)))
        .build()
        .unwrap();
    let _ = omega.check_local(&());
    g.bench_function("omega", |b| {
        b.iter(|| black_box(omega.check_local(black_box(&())).is_allowed()))
    });
    let gov = GLimiter::direct(GQuota::per_hour(NonZeroU32::new(1).unwrap()));
    let _ = gov.check();
    g.bench_function("governor", |b| b.iter(|| black_box(gov.check().is_ok())));
    g.finish();
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit_keyed_1k");
    let keys: Vec<String> = (0..KEYS).map(|k| format!("user-{k}")).collect();
    let omega = RateLimiter::<String>::builder()
        .limit(Limit::keyed(
            "per_user",
            Quota::per_second(1_000_000_000),
            KeyRef,
        ))
        .build()
        .unwrap();
    let mut i = 0usize;
    g.bench_function("omega", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(omega.check_local(&keys[i]).is_allowed())
        })
    });
    let gov = GLimiter::keyed(GQuota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
    let mut i = 0usize;
    g.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(gov.check_key(&keys[i]).is_ok())
        })
    });
    g.finish();
}

/// Borrows the request itself as its key (no allocation), as the built-in extractors do.
struct KeyRef;

impl omega_rate_limit::KeyExtractor<String> for KeyRef {
    fn key<'a>(&self, req: &'a String) -> Option<std::borrow::Cow<'a, str>> {
        Some(std::borrow::Cow::Borrowed(req.as_str()))
    }
}

criterion_group!(benches, direct, deny, keyed);
criterion_main!(benches);
