//! Each layer on a plain `tower::Service` (no HTTP): a rate limit, a circuit breaker, and a
//! shard router over three backends, stacked with `ServiceBuilder`.
//!
//! ```text
//! cargo run --example layers --features full
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use omega_penta::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen, SlidingWindow,
};
use omega_penta::rate_limit::{Limit, Quota, RateLimitLayer, RateLimited, RateLimiter};
use omega_penta::shard_router::{Algorithm, Node, ShardRouter, Topology, TopologyHandle};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};

/// A job for a tenant's storage shard.
#[derive(Clone, Debug)]
struct Job {
    tenant: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    // 1. Rate limit: 3 jobs per minute per tenant, on any request type.
    let limiter = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_tenant",
            Quota::per_minute(3),
            |j: &Job| Some(j.tenant.clone()),
        ))
        .build()?;
    let limited = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service(service_fn(|j: Job| async move {
            Ok::<_, BoxError>(format!("done for {}", j.tenant))
        }));
    for i in 1..=4 {
        match limited
            .clone()
            .oneshot(Job {
                tenant: "acme".into(),
            })
            .await
        {
            Ok(r) => println!("rate limit, job {i}: {r}"),
            Err(e) => match e.downcast_ref::<RateLimited>() {
                Some(rl) => println!(
                    "rate limit, job {i}: denied, retry after {:?}",
                    rl.retry_after()
                ),
                None => return Err(e),
            },
        }
    }

    // 2. Circuit breaker: three failures in a row open it; calls are then refused at once.
    let breaker = CircuitBreaker::with_config(
        "storage",
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(3))
            .wait_duration(Duration::from_secs(30)),
    )?;
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let guarded = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(service_fn(move |_: Job| {
            seen.fetch_add(1, Ordering::Relaxed);
            async { Err::<String, BoxError>("storage is down".into()) }
        }));
    for i in 1..=5 {
        let err = guarded
            .clone()
            .oneshot(Job {
                tenant: "acme".into(),
            })
            .await
            .unwrap_err();
        match err.downcast_ref::<CircuitOpen>() {
            Some(open) => println!(
                "breaker, call {i}: refused, next probe in {:?}",
                open.retry_after()
            ),
            None => println!("breaker, call {i}: failed ({err})"),
        }
    }
    println!(
        "breaker: {:?}, inner service called {} times",
        breaker.state(),
        calls.load(Ordering::Relaxed)
    );

    // 3. Shard router: each tenant's jobs go to the node that owns the tenant.
    let topology = TopologyHandle::new(Topology::new(
        Algorithm::table(),
        ["s1", "s2", "s3"].map(|id| Node::new(id, format!("{id}.internal:7000"))),
    )?);
    let router = ShardRouter::builder(topology.clone())
        .key(|j: &Job| Some(j.tenant.clone()))
        .build(|node: &Node| {
            let id = node.id().to_owned();
            service_fn(move |j: Job| {
                let id = id.clone();
                async move { Ok::<_, BoxError>(format!("{} stored on {id}", j.tenant)) }
            })
        });
    for tenant in ["acme", "globex", "initech"] {
        let r = router
            .clone()
            .oneshot(Job {
                tenant: tenant.into(),
            })
            .await?;
        println!("shard router: {r}");
    }
    topology.add(Node::new("s4", "s4.internal:7000"))?;
    println!(
        "shard router: after adding s4 (epoch {}), acme is on {}",
        router.epoch(),
        router
            .owner("acme")
            .map(|n| n.id().to_owned())
            .unwrap_or_default()
    );
    Ok(())
}
