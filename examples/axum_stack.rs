//! The layers stacked with `ServiceBuilder` on an axum router: every response carries the
//! IETF `RateLimit` fields, a denied request gets a 429, and an open circuit a 503, with no
//! `HandleErrorLayer` needed.
//!
//! ```text
//! cargo run --example axum_stack --features full
//! curl -i -H 'x-api-key: k1' localhost:3000/hello
//! curl -i localhost:3000/fail     # 500 three times, then 503 with Retry-After
//! ```
//!
//! The breaker here guards the whole app (one dependency); once open, every route answers
//! 503 until a probe succeeds. The gateway keeps one breaker per upstream node instead.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use omega_penta::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, SlidingWindow,
};
use omega_penta::core::key::http::{ClientIp, Header};
use omega_penta::rate_limit::RateLimitLayer;
use omega_penta::rate_limit::{Limit, Quota, RateLimiter};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limiter = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_key",
            Quota::per_minute(30).with_burst(5),
            Header::new("x-api-key"),
        ))
        .limit(Limit::keyed(
            "per_ip",
            Quota::per_second(10),
            ClientIp::peer(),
        ))
        .build()?;
    let breaker = CircuitBreaker::with_config(
        "app",
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::ConsecutiveFailures(3))
            .wait_duration(Duration::from_secs(10)),
    )?;
    let app = Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom\n") }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(RateLimitLayer::new(limiter).respond())
                // `http()`: 5xx responses count as failures; an open circuit answers 503.
                .layer(CircuitBreakerLayer::new(breaker).http()),
        );
    let addr: SocketAddr = "127.0.0.1:3000".parse()?;
    println!("listening on http://{addr}");
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
