//! The in-memory limiter under a clock the tests control.

use std::time::Duration;

use omega_core::Clock;
use omega_core::key::{KeyMissing, MissingKey};
use omega_core::reject::Refusal;
use omega_rate_limit::{Limit, Quota, RateLimitLayer, RateLimited, RateLimiter, Refused};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};

#[derive(Clone, Debug)]
struct Req {
    user: &'static str,
    cost: u32,
}

fn limiter(clock: &Clock, quota: Quota) -> RateLimiter<Req> {
    RateLimiter::builder()
        .limit(Limit::keyed("per_user", quota, |r: &Req| {
            Some(r.user.to_owned())
        }))
        .cost(|r: &Req| r.cost)
        .clock(clock.clone())
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over any window, the admitted cost never exceeds burst + rate × window, and every
    /// admitted request counts with its weight.
    #[test]
    fn admitted_cost_stays_within_burst_plus_rate(
        count in 1u32..50,
        burst in 1u32..20,
        steps in prop::collection::vec((0u64..200_000_000, 1u32..5), 1..300),
    ) {
        let clock = Clock::manual();
        clock.set(1_000_000_000);
        let period = Duration::from_secs(1);
        let l = limiter(&clock, Quota::new(count, period).unwrap().with_burst(burst));
        let mut admitted: Vec<(u64, u32)> = Vec::new();
        for (gap, cost) in steps {
            clock.advance(Duration::from_nanos(gap));
            let d = l.check_local(&Req { user: "u", cost });
            if d.is_allowed() {
                admitted.push((clock.now(), cost));
            } else {
                // Later (`None`: never, for a cost above the burst), not now.
                let retry = d.denied().unwrap().retry_after();
                prop_assert!(retry != Some(Duration::ZERO));
                prop_assert_eq!(retry.is_none(), cost > burst);
            }
        }
        let interval = period.as_nanos() as u64 / u64::from(count);
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let mut total = 0u64;
            for &(t, cost) in &admitted[i..] {
                total += u64::from(cost);
                let window = t - start;
                // burst cells at once, plus one per emission interval since.
                let allowed = u64::from(burst) + window / interval;
                prop_assert!(total <= allowed, "{total} admitted in {window} ns, bound {allowed}");
            }
        }
    }
}

#[test]
fn weighted_costs_add_up_and_keys_are_separate() {
    let clock = Clock::manual();
    let l = limiter(&clock, Quota::per_second(10));
    assert!(l.check_local(&Req { user: "a", cost: 4 }).is_allowed());
    assert!(l.check_local(&Req { user: "a", cost: 6 }).is_allowed());
    let d = l.check_local(&Req { user: "a", cost: 1 });
    assert_eq!(
        d.denied().unwrap().retry_after(),
        Some(Duration::from_millis(100))
    );
    assert!(
        l.check_local(&Req {
            user: "b",
            cost: 10
        })
        .is_allowed()
    );
    let d = l.check_local(&Req {
        user: "b",
        cost: 11,
    });
    assert_eq!(
        d.denied().unwrap().retry_after(),
        None,
        "more than the burst: never"
    );
    clock.advance(Duration::from_millis(300));
    let d = l.check_local(&Req { user: "a", cost: 3 });
    assert!(d.is_allowed());
    assert_eq!(d.binding().unwrap().remaining, 0);
}

#[test]
fn a_request_denied_by_one_limit_takes_nothing_from_the_others() {
    let clock = Clock::manual();
    let l = RateLimiter::<Req>::builder()
        .limit(Limit::global("global", Quota::per_second(100)))
        .limit(Limit::keyed("per_user", Quota::per_second(2), |r: &Req| {
            Some(r.user.to_owned())
        }))
        .clock(clock.clone())
        .build()
        .unwrap();
    let ada = Req {
        user: "ada",
        cost: 1,
    };
    for _ in 0..2 {
        assert!(l.check_local(&ada).is_allowed());
    }
    for _ in 0..50 {
        let d = l.check_local(&ada);
        assert_eq!(d.denied().unwrap().limit(), "per_user");
    }
    // The 50 denials took nothing from the global limit: 98 more fit.
    for i in 0..98 {
        let d = l.check_local(&Req {
            user: Box::leak(format!("u{i}").into_boxed_str()),
            cost: 1,
        });
        assert!(d.is_allowed(), "request {i}");
    }
    let d = l.check_local(&Req {
        user: "zed",
        cost: 1,
    });
    assert_eq!(d.denied().unwrap().limit(), "global");
}

#[test]
fn shadow_limits_report_but_never_deny() {
    let clock = Clock::manual();
    let l = RateLimiter::<Req>::builder()
        .limit(Limit::global("strict", Quota::per_second(1)).shadow(true))
        .clock(clock)
        .build()
        .unwrap();
    let r = Req { user: "u", cost: 1 };
    assert_eq!(l.check_local(&r).shadow_denied(), 0);
    for _ in 0..5 {
        let d = l.check_local(&r);
        assert!(d.is_allowed());
        assert_eq!(d.shadow_denied(), 1);
    }
}

#[test]
fn a_quota_change_applies_to_the_next_request_and_keeps_state() {
    let clock = Clock::manual();
    let l = limiter(&clock, Quota::per_second(2));
    let r = Req { user: "u", cost: 1 };
    assert!(l.check_local(&r).is_allowed());
    assert!(l.check_local(&r).is_allowed());
    assert!(!l.check_local(&r).is_allowed());
    let bigger = Quota::per_second(4).with_burst(8);
    l.set_quota("per_user", bigger).unwrap();
    // The key keeps its TAT, one second ahead: of the new two seconds of capacity, one is
    // left, which is 4 cells at the new rate (a fresh key gets 8).
    for _ in 0..4 {
        assert!(l.check_local(&r).is_allowed());
    }
    assert!(!l.check_local(&r).is_allowed());
    for _ in 0..8 {
        assert!(
            l.check_local(&Req {
                user: "fresh",
                cost: 1
            })
            .is_allowed()
        );
    }
    assert_eq!(l.quotas()[0].1, bigger);
    assert!(l.set_quota("nope", Quota::per_second(1)).is_err());
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let e = RateLimiter::<Req>::builder().build().unwrap_err();
    assert!(e.to_string().contains("at least one limit"), "{e}");
    let e = RateLimiter::<Req>::builder()
        .limit(Limit::global("a", Quota::per_second(1)))
        .limit(Limit::global("a", Quota::per_second(2)))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("two limits are named \"a\""), "{e}");
    let e = RateLimiter::<Req>::builder()
        .limit(
            Limit::global("a", Quota::per_second(1))
                .on_backend_failure(omega_rate_limit::OnBackendFailure::Local { share: 0.0 }),
        )
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("share"), "{e}");
}

#[test]
fn a_million_distinct_keys_stay_within_the_bound() {
    let clock = Clock::manual();
    let l = RateLimiter::<u64>::builder()
        .limit(Limit::keyed("per_key", Quota::per_minute(10), |k: &u64| {
            Some(k.to_string())
        }))
        .max_keys(20_000)
        .clock(clock.clone())
        .build()
        .unwrap();
    for k in 0..1_000_000u64 {
        clock.advance(Duration::from_micros(1));
        assert!(l.check_local(&k).is_allowed());
    }
    let held = l.local_keys("per_key").unwrap();
    assert!(held <= 20_032, "{held} keys held");
}

#[tokio::test]
async fn clones_of_the_service_share_one_limit() {
    let clock = Clock::manual();
    let l = limiter(&clock, Quota::per_minute(3));
    let svc = tower::ServiceBuilder::new()
        .layer(RateLimitLayer::new(l))
        .service(service_fn(|r: Req| async move {
            Ok::<_, std::convert::Infallible>(r.user)
        }));
    let mut admitted = 0;
    for _ in 0..10 {
        let mut clone = svc.clone();
        let ready = clone.ready().await.unwrap();
        match ready.call(Req { user: "u", cost: 1 }).await {
            Ok(_) => admitted += 1,
            Err(e) => assert!(e.downcast_ref::<RateLimited>().is_some(), "{e}"),
        }
    }
    assert_eq!(admitted, 3);
}

#[test]
fn admit_gives_the_same_verdicts_as_check_local() {
    let build = |clock: Clock| {
        RateLimiter::<u32>::builder()
            .limit(Limit::keyed(
                "per_key",
                Quota::per_second(10).with_burst(3),
                |k: &u32| Some(k.to_string()),
            ))
            .clock(clock)
            .build()
            .unwrap()
    };
    let (clock_a, clock_b) = (Clock::manual(), Clock::manual());
    let (a, b) = (build(clock_a.clone()), build(clock_b.clone()));
    for step in 0u32..400 {
        let key = step % 3;
        let by_admit = a.admit(&key);
        let by_check = b.check_local(&key);
        assert_eq!(by_admit.is_ok(), by_check.is_allowed(), "step {step}");
        match by_admit {
            Ok(()) => {}
            Err(Refused::Limited(d)) => assert_eq!(Some(d.to_error()), by_check.denied()),
            Err(other) => panic!("{other:?}"),
        }
        let dt = std::time::Duration::from_millis(u64::from(step * 7919 % 97));
        clock_a.advance(dt);
        clock_b.advance(dt);
    }
}

#[test]
fn a_keyed_limit_skips_requests_without_its_key_unless_told_to_refuse_them() {
    let clock = Clock::manual();
    let tenant = |r: &Req| (!r.user.is_empty()).then(|| r.user.to_owned());
    let skip = RateLimiter::<Req>::builder()
        .limit(Limit::keyed("per_user", Quota::per_minute(1), tenant))
        .clock(clock.clone())
        .build()
        .unwrap();
    let anonymous = Req { user: "", cost: 1 };
    for _ in 0..5 {
        assert!(skip.admit(&anonymous).is_ok(), "skipped by default");
        let d = skip.check_local(&anonymous);
        assert!(d.is_allowed() && d.binding().is_none());
    }

    let reject = RateLimiter::<Req>::builder()
        .limit(Limit::global("global", Quota::per_minute(3)))
        .limit(
            Limit::keyed("per_user", Quota::per_minute(1), tenant)
                .on_missing_key(MissingKey::Reject),
        )
        .clock(clock)
        .build()
        .unwrap();
    let refused = reject.admit(&anonymous).unwrap_err();
    assert_eq!(refused.limit(), "per_user");
    assert_eq!(refused.retry_after(), None);
    let Refused::KeyMissing { refusal, .. } = refused else {
        panic!("{refused:?}")
    };
    assert!(refusal.what().contains("per_user"), "{refusal}");
    assert_eq!((refusal.status(), refusal.grpc_code()), (400, 3));
    let d = reject.check_local(&anonymous);
    assert!(!d.is_allowed() && d.denied().is_none());
    assert_eq!(d.key_missing().as_ref(), Some(refusal));
    // The refusals took nothing from the global limit: its 3 cells are there.
    for user in ["a", "b", "c"] {
        assert!(reject.admit(&Req { user, cost: 1 }).is_ok(), "{user}");
    }
    assert_eq!(
        reject
            .admit(&Req { user: "d", cost: 1 })
            .unwrap_err()
            .limit(),
        "global"
    );
}

#[tokio::test]
async fn the_service_fails_with_key_missing_or_answers_with_the_strategy() {
    let limiter = || {
        RateLimiter::<Req>::builder()
            .limit(
                Limit::keyed("per_user", Quota::per_minute(1), |r: &Req| {
                    (!r.user.is_empty()).then(|| r.user.to_owned())
                })
                .on_missing_key(MissingKey::Reject),
            )
            .build()
            .unwrap()
    };
    let inner =
        service_fn(|r: Req| async move { Ok::<_, std::convert::Infallible>(r.user.to_owned()) });
    // The default keeps refusals as (boxed) errors.
    let svc = RateLimitLayer::new(limiter()).layer(inner);
    let err = svc
        .clone()
        .oneshot(Req { user: "", cost: 1 })
        .await
        .unwrap_err();
    assert!(err.is::<KeyMissing>(), "{err}");
    assert_eq!(
        svc.clone()
            .oneshot(Req { user: "u", cost: 1 })
            .await
            .unwrap(),
        "u"
    );
    let err = svc.oneshot(Req { user: "u", cost: 1 }).await.unwrap_err();
    let denied = err.downcast_ref::<RateLimited>().expect("rate limited");
    assert_eq!(denied.limit(), "per_user");

    // A closure answers in the service's own response type; inner errors pass through.
    let answer = |req: &Req, refusal: &dyn Refusal| {
        format!("{} refused with {}", req.user, refusal.status())
    };
    let svc = RateLimitLayer::new(limiter())
        .on_rejection(answer)
        .layer(inner);
    let r: Result<String, std::convert::Infallible> =
        svc.clone().oneshot(Req { user: "", cost: 1 }).await;
    assert_eq!(r.unwrap(), " refused with 400");
    assert_eq!(
        svc.clone()
            .oneshot(Req { user: "v", cost: 1 })
            .await
            .unwrap(),
        "v"
    );
    assert_eq!(
        svc.oneshot(Req { user: "v", cost: 1 }).await.unwrap(),
        "v refused with 429"
    );
}

#[tokio::test]
async fn inner_errors_are_boxed_by_default() {
    #[derive(Clone)]
    struct Broken;
    impl tower::Service<Req> for Broken {
        type Response = ();
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<(), std::io::Error>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Err(std::io::Error::other("not ready")))
        }
        fn call(&mut self, _: Req) -> Self::Future {
            std::future::ready(Err(std::io::Error::other("failed")))
        }
    }
    let limiter = RateLimiter::<Req>::builder()
        .limit(Limit::global("global", Quota::per_minute(10)))
        .build()
        .unwrap();
    let mut svc = RateLimitLayer::new(limiter).layer(Broken);
    let err = svc.ready().await.err().expect("poll_ready fails");
    assert!(err.is::<std::io::Error>(), "{err}");
    let err = svc.call(Req { user: "u", cost: 1 }).await.unwrap_err();
    assert_eq!(err.to_string(), "failed");
}

#[test]
fn keys_are_bytes_not_text() {
    let clock = Clock::manual();
    let by_bytes = RateLimiter::<Vec<u8>>::builder()
        .limit(Limit::keyed(
            "per_key",
            Quota::per_minute(1),
            |k: &Vec<u8>| Some(k.clone()),
        ))
        .clock(clock.clone())
        .build()
        .unwrap();
    // Two keys that are not UTF-8 and would read the same if decoded lossily.
    let (a, b) = (vec![0xff, 0x00], vec![0xfe, 0x00]);
    assert!(by_bytes.admit(&a).is_ok());
    assert!(by_bytes.admit(&b).is_ok());
    assert!(by_bytes.admit(&a).is_err());
    // Integer keys count by their value.
    let by_number = RateLimiter::<u64>::builder()
        .limit(Limit::keyed(
            "per_shard",
            Quota::per_minute(1),
            |n: &u64| Some(*n),
        ))
        .clock(clock)
        .build()
        .unwrap();
    assert!(by_number.admit(&7).is_ok());
    assert!(by_number.admit(&8).is_ok());
    assert!(by_number.admit(&7).is_err());
}

#[test]
fn names_and_scopes_follow_the_one_name_rule() {
    for bad in ["", "per user", "a{b}", &"x".repeat(200)] {
        let e = RateLimiter::<Req>::builder()
            .limit(Limit::global(bad, Quota::per_second(1)))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("limit name"), "{bad:?}: {e}");
    }
    let e = RateLimiter::<Req>::builder()
        .limit(Limit::global("ok", Quota::per_second(1)))
        .scope("route /x")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("invalid scope"), "{e}");
}
