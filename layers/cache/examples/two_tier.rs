//! An axum service with a two-tier cache (memory, then Redis) and purges by tag.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p omega-cache --example two_tier --features redis,http
//! curl -i localhost:3000/reports/7            # slow (300 ms), then stored
//! curl -i localhost:3000/reports/7            # from memory; another instance reads it from Redis
//! curl -X POST localhost:3000/purge/tag/report:7   # every instance drops it
//! ```
//!
//! Without `REDIS_URL` the cache is in memory only. `PORT` changes the port (default 3000).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use omega_cache::{Cache, HttpCacheLayer, HttpCodec, HttpPolicy, Partition, StoredResponse};
use omega_core::Backend;

type Pages = Cache<Arc<StoredResponse>>;

/// The slow upstream: a report that takes 300 ms to compute.
async fn report(Path(id): Path<u32>) -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(300)).await;
    (
        [
            ("content-type", "text/plain".to_owned()),
            // What RFC 9111 lets a shared cache do with it: fresh for a minute, then served
            // stale for 30 s while one request revalidates, or 10 min while the upstream fails.
            (
                "cache-control",
                "public, max-age=60, stale-while-revalidate=30, stale-if-error=600".to_owned(),
            ),
            ("surrogate-key", format!("report:{id} reports")),
        ],
        format!(
            "report {id}, computed at {:?}\n",
            std::time::SystemTime::now()
        ),
    )
}

/// Drops every page tagged `tag`, here and on every instance sharing the Redis.
async fn purge_tag(State(cache): State<Pages>, Path(tag): Path<String>) -> impl IntoResponse {
    match cache.invalidate_tag(&tag).await {
        Ok(()) => (StatusCode::OK, format!("purged {tag}\n")),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("purged here; Redis failed: {e}\n"),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = Backend::connect(std::env::var("REDIS_URL").ok().as_deref()).await?;
    let cache: Pages = Cache::builder()
        .codec(HttpCodec)
        .partition(Partition::new("pages").capacity(64 << 20))
        .backend(&backend)
        .build()?;

    // RFC 9111's shared cache: what is stored and for how long is the responses' own say.
    let cached = HttpCacheLayer::new(
        cache.clone(),
        HttpPolicy::new("pages").tags_from("surrogate-key"),
    );
    let app = Router::new()
        .route("/reports/{id}", get(report))
        .layer(cached)
        .route("/purge/tag/{tag}", post(purge_tag))
        .with_state(cache);

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
