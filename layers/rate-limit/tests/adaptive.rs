//! The adaptive concurrency layer's behaviour: refusals through the shared strategy, bounds,
//! errors as drops, partitions, cancelled requests, configuration and metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use omega_core::Clock;
use omega_core::key::{KeyMissing, MissingKey};
use omega_rate_limit::adaptive::{
    AdaptiveConcurrencyLayer, AdaptiveLimiter, Aimd, ConcurrencyLimited, OVERFLOW_PARTITION, Vegas,
};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

type Call<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// A downstream that answers after `latency`, failing when the request says so.
fn downstream<Req: Send + 'static>(
    latency: Duration,
    fails: impl Fn(&Req) -> bool + Clone + Send + 'static,
) -> impl Service<Req, Response = (), Error = BoxError, Future = Call<()>> + Clone {
    service_fn(move |req: Req| -> Call<()> {
        let fail = fails(&req);
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            if fail {
                Err("downstream failed".into())
            } else {
                Ok(())
            }
        })
    })
}

/// Keeps `concurrency` requests from `next` in flight for `run` (paused clock): a refused
/// one is sent again a millisecond later.
async fn drive<S, Req>(svc: S, concurrency: usize, run: Duration, next: impl Fn(usize) -> Req)
where
    S: Service<Req, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    Req: Copy + Send + 'static,
{
    let end = tokio::time::Instant::now() + run;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let svc = svc.clone();
        let req = next(i);
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < end {
                if let Err(e) = svc.clone().oneshot(req).await
                    && e.is::<ConcurrencyLimited>()
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_request_over_the_limit_is_refused_at_once_and_a_cancelled_one_frees_its_slot() {
    let limiter = AdaptiveLimiter::<()>::builder()
        .min(2)
        .max(2)
        .build()
        .unwrap();
    let mut svc = AdaptiveConcurrencyLayer::new(limiter.clone())
        .layer(downstream(Duration::from_secs(1), |_: &()| false));
    let first = svc.call(());
    let _second = svc.call(());
    assert_eq!(limiter.inflight(""), Some(2));
    let err = svc.call(()).await.unwrap_err();
    let refused = err.downcast_ref::<ConcurrencyLimited>().unwrap();
    assert_eq!((refused.limit(), refused.partition()), (2, ""));
    assert_eq!(
        refused.to_string(),
        "over the adaptive concurrency limit of 2"
    );
    // Dropping a request's future frees its slot, without a sample.
    drop(first);
    assert_eq!(limiter.inflight(""), Some(1));
    let _third = svc.call(());
    assert_eq!(limiter.inflight(""), Some(2));
    assert_eq!(limiter.estimate("").unwrap().rtt(), Duration::ZERO);
}

#[cfg(feature = "http")]
#[tokio::test]
async fn respond_answers_503_and_grpc_resource_exhausted() {
    use http::{Request, Response};

    let limiter = AdaptiveLimiter::builder().min(1).max(1).build().unwrap();
    let inner = service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let mut svc = AdaptiveConcurrencyLayer::new(limiter)
        .respond()
        .layer(inner);
    let _held = svc.call(Request::get("/").body(()).unwrap());
    let refused = svc.call(Request::get("/").body(()).unwrap()).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("retry-after").is_none());
    let grpc = Request::post("/svc/M")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let refused = svc.call(grpc).await.unwrap();
    assert_eq!(refused.status(), 200);
    assert_eq!(refused.headers()["grpc-status"], "8");
}

#[cfg(feature = "grpc")]
#[test]
fn a_refusal_is_a_resource_exhausted_status() {
    let limiter = AdaptiveLimiter::<()>::builder()
        .min(1)
        .max(1)
        .build()
        .unwrap();
    let mut svc = AdaptiveConcurrencyLayer::new(limiter).layer(service_fn(|()| {
        std::future::pending::<Result<(), BoxError>>()
    }));
    let _held = svc.call(());
    let err = futures_util::FutureExt::now_or_never(svc.call(()))
        .unwrap()
        .unwrap_err();
    let status = tonic::Status::from(err.downcast::<ConcurrencyLimited>().map(|b| *b).unwrap());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
}

/// AIMD between 3 and 100, from 50.
fn aimd_3_to_100<Req: 'static>() -> AdaptiveLimiter<Req> {
    AdaptiveLimiter::builder()
        .algorithm(Aimd::default())
        .min(3)
        .max(100)
        .initial(50)
        .clock(Clock::system())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn errors_count_as_drops_and_the_limit_stops_at_min() {
    let limiter = aimd_3_to_100::<()>();
    let svc = AdaptiveConcurrencyLayer::new(limiter.clone())
        .layer(downstream(Duration::from_millis(5), |_: &()| true));
    drive(svc, 60, Duration::from_secs(2), |_| ()).await;
    assert_eq!(limiter.estimate("").unwrap().limit(), 3);
}

/// With `respond()` a failing downstream answers with 5xx responses, not errors (the gateway's
/// upstreams, axum handlers): those count as drops too, and the limit falls to min; 4xx
/// answers are the client's doing and do not.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn with_respond_5xx_answers_count_as_drops() {
    use http::{Request, Response, StatusCode};

    for (status, falls) in [
        (StatusCode::BAD_GATEWAY, true),
        (StatusCode::NOT_FOUND, false),
    ] {
        let limiter = aimd_3_to_100::<Request<()>>();
        let inner = service_fn(move |_req: Request<()>| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut response = Response::new(String::new());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        });
        let svc = AdaptiveConcurrencyLayer::new(limiter.clone())
            .respond()
            .layer(inner);
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        let tasks: Vec<_> = (0..60)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    while tokio::time::Instant::now() < end {
                        let r = svc.clone().oneshot(Request::new(())).await.unwrap();
                        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let limit = limiter.estimate("").unwrap().limit();
        if falls {
            assert_eq!(limit, 3, "{status} answers are drops");
        } else {
            assert!(
                limit >= 50,
                "{status} answers are not drops: the limit fell to {limit}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_limit_grows_to_max_and_no_further() {
    let limiter = AdaptiveLimiter::<()>::builder()
        .algorithm(Vegas::default())
        .max(30)
        .clock(Clock::system())
        .build()
        .unwrap();
    let highest = Arc::new(AtomicU32::new(0));
    let svc = AdaptiveConcurrencyLayer::new(limiter.clone()).layer(service_fn({
        let (limiter, highest) = (limiter.clone(), highest.clone());
        move |()| {
            highest.fetch_max(limiter.estimate("").unwrap().limit(), Ordering::Relaxed);
            async {
                // A downstream without a capacity: latency never grows.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, BoxError>(())
            }
        }
    }));
    drive(svc, 100, Duration::from_secs(2), |_| ()).await;
    assert_eq!(limiter.estimate("").unwrap().limit(), 30);
    assert_eq!(highest.load(Ordering::Relaxed), 30);
}

#[tokio::test(start_paused = true)]
async fn partitions_are_independent() {
    // Requests are (route, fails): route "a" fails, route "b" does not.
    let limiter = AdaptiveLimiter::<(&'static str, bool)>::builder()
        .algorithm(Aimd::default())
        .min(2)
        .partition_by(|r: &(&'static str, bool)| Some(r.0))
        .clock(Clock::system())
        .build()
        .unwrap();
    let svc = AdaptiveConcurrencyLayer::new(limiter.clone())
        .layer(downstream(Duration::from_millis(5), |r: &(&str, bool)| r.1));
    drive(svc.clone(), 80, Duration::from_secs(2), |i| {
        if i % 2 == 0 {
            ("a", true)
        } else {
            ("b", false)
        }
    })
    .await;
    let (a, b) = (
        limiter.estimate("a").unwrap(),
        limiter.estimate("b").unwrap(),
    );
    assert_eq!(a.limit(), 2);
    assert!(b.limit() > 20, "{b:?}");
    // "a" full does not refuse "b".
    let mut svc = svc;
    let _held = (svc.call(("a", false)), svc.call(("a", false)));
    assert!(
        svc.call(("a", false))
            .await
            .unwrap_err()
            .is::<ConcurrencyLimited>()
    );
    svc.call(("b", false)).await.unwrap();
}

#[tokio::test]
async fn a_request_without_a_key_passes_or_is_refused_as_configured() {
    let key = |r: &Option<&'static str>| *r;
    for (missing, refused) in [(MissingKey::Skip, false), (MissingKey::Reject, true)] {
        let limiter = AdaptiveLimiter::<Option<&'static str>>::builder()
            .partition_by(key)
            .on_missing_key(missing)
            .build()
            .unwrap();
        let svc = AdaptiveConcurrencyLayer::new(limiter)
            .layer(service_fn(|_| async { Ok::<_, Infallible>(()) }));
        let result = svc.oneshot(None).await;
        assert_eq!(result.is_err(), refused);
        if let Err(e) = result {
            assert!(e.is::<KeyMissing>());
        }
    }
}

#[tokio::test]
async fn keys_past_max_partitions_share_the_overflow_partition() {
    let limiter = AdaptiveLimiter::<&'static str>::builder()
        .partition_by(|r: &&'static str| Some(*r))
        .max_partitions(2)
        .build()
        .unwrap();
    let svc = AdaptiveConcurrencyLayer::new(limiter.clone())
        .layer(service_fn(|_| async { Ok::<_, Infallible>(()) }));
    for route in ["a", "b", "c", "d"] {
        svc.clone().oneshot(route).await.unwrap();
    }
    let mut names: Vec<String> = limiter
        .estimates()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", OVERFLOW_PARTITION]);
    assert!(limiter.estimate("c").is_none());
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let err = |b: omega_rate_limit::adaptive::AdaptiveLimiterBuilder<()>| {
        b.build().unwrap_err().to_string()
    };
    let b = AdaptiveLimiter::<()>::builder;
    assert_eq!(
        err(b().min(0)),
        "min must be at least 1: a limit of 0 admits nothing"
    );
    assert_eq!(err(b().min(10).max(5)), "max (5) is below min (10)");
    assert_eq!(
        err(b().max(10).initial(11)),
        "the initial limit 11 is outside [1, 10]"
    );
    assert_eq!(
        err(b().algorithm(Vegas::default().alpha(5.0).beta(4.0))),
        "vegas needs 0 < alpha < beta, not alpha 5 and beta 4"
    );
    assert_eq!(
        err(b().algorithm(Aimd::default().backoff(1.5))),
        "aimd backoff must be in (0, 1), not 1.5"
    );
    assert!(err(b().name("a b")).contains("adaptive limiter name"));
    // The default initial limit is clamped into the bounds.
    let l = b().min(50).max(60).build().unwrap();
    assert_eq!(l.estimate("").unwrap().limit(), 50);
}

#[cfg(feature = "serde")]
#[test]
fn the_configuration_section_reads_and_refuses_with_clear_errors() {
    use omega_core::config::{Issues, from_json};
    use omega_rate_limit::adaptive::config::{AdaptiveConfig, AlgorithmName};

    let section: AdaptiveConfig =
        from_json(r#"{ "algorithm": "gradient2", "min": 5, "max": 400 }"#).unwrap();
    assert_eq!(section.algorithm, AlgorithmName::Gradient2);
    let limiter = section.limiter::<()>().unwrap();
    assert_eq!(limiter.algorithm().name(), "gradient2");
    assert_eq!(limiter.estimate("").unwrap().limit(), 20);

    let unknown = from_json::<AdaptiveConfig>(r#"{ "algorithm": "bbr" }"#).unwrap_err();
    assert!(
        unknown.to_string().contains("algorithm") && unknown.to_string().contains("gradient2"),
        "{unknown}"
    );
    let extra =
        from_json::<AdaptiveConfig>(r#"{ "algorithm": "aimd", "tolerance": 2 }"#).unwrap_err();
    assert!(extra.to_string().contains("tolerance"), "{extra}");

    let bad: AdaptiveConfig =
        from_json(r#"{ "algorithm": "vegas", "min": 10, "max": 5 }"#).unwrap();
    let mut issues = Issues::new();
    bad.validate(&mut issues.at("routes[0].adaptive"));
    assert_eq!(
        issues.into_result().unwrap_err().to_string(),
        "routes[0].adaptive.max: must not be below min (10), is 5"
    );
    assert!(bad.limiter::<()>().is_err());
}

#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn gauges_report_each_partition_limit_and_rtts() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let limiter = metrics::with_local_recorder(&recorder, || {
        AdaptiveLimiter::<()>::builder()
            .name("db")
            .max(40)
            .clock(Clock::system())
            .build()
            .unwrap()
    });
    let svc = AdaptiveConcurrencyLayer::new(limiter.clone())
        .layer(downstream(Duration::from_millis(5), |_: &()| false));
    drive(svc, 60, Duration::from_secs(1), |_| ()).await;
    let entries = snapshotter.snapshot().into_vec();
    let value = |name: &str, estimate: Option<&str>| {
        entries.iter().find_map(|(key, _, _, value)| {
            let k = key.key();
            let labels: Vec<_> = k.labels().map(|l| (l.key(), l.value())).collect();
            let ok = k.name() == name
                && labels.contains(&("adaptive", "db"))
                && labels.contains(&("partition", ""))
                && estimate.is_none_or(|e| labels.contains(&("estimate", e)));
            match value {
                DebugValue::Gauge(g) if ok => Some(g.into_inner()),
                DebugValue::Counter(c) if ok => Some(*c as f64),
                _ => None,
            }
        })
    };
    let e = limiter.estimate("").unwrap();
    assert_eq!(
        value("omega_rate_limit_adaptive_limit", None),
        Some(f64::from(e.limit()))
    );
    assert_eq!(e.limit(), 40);
    let short = value("omega_rate_limit_adaptive_rtt_seconds", Some("short")).unwrap();
    let base = value("omega_rate_limit_adaptive_rtt_seconds", Some("baseline")).unwrap();
    assert!(
        (short - 0.005).abs() < 0.001 && (base - 0.005).abs() < 0.001,
        "{short} {base}"
    );
    assert!(value("omega_rate_limit_adaptive_rejected_total", None).unwrap() > 0.0);
}
