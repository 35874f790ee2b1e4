//! Field-level caching: `GET /items?ids=1,2,3` answered item by item from the cache, only the
//! missing items fetched, in one batched query; the response's `Cache-Control: max-age` is the
//! least of its items' freshness.
//!
//! ```text
//! cargo run -p omega-cache --example items --features redis,codec
//! curl -i 'localhost:3000/items?ids=1,2,3'   # one query for 1, 2, 3
//! curl -i 'localhost:3000/items?ids=3,4,1'   # one query for 4 only, answered in the order asked
//! ```
//!
//! With `REDIS_URL` set, instances share the items through Redis. Items above 1000 do not
//! exist: `null`, cached as a negative answer for 5 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use omega_cache::{BatchCache, Cache, Json as JsonCodec, Partition, Rules, Verdict};
use omega_core::Backend;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
    price_cents: u64,
}

#[derive(Clone)]
struct AppState {
    items: BatchCache<Option<Item>>,
    queries: Arc<AtomicU64>,
}

/// The slow database: one query for many ids (50 ms however many).
async fn fetch_items(
    ids: Vec<u64>,
    queries: &AtomicU64,
) -> Result<Vec<(Option<Item>, Verdict)>, String> {
    let n = queries.fetch_add(1, Ordering::Relaxed) + 1;
    println!("query #{n}: SELECT ... WHERE id IN {ids:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(ids
        .into_iter()
        .map(|id| {
            if id > 1000 {
                (None, Verdict::Negative(Rules::new()))
            } else {
                // Cheap items change more often: a shorter TTL.
                let ttl = Duration::from_secs(if id % 2 == 0 { 30 } else { 300 });
                let item = Item {
                    id,
                    name: format!("item {id}"),
                    price_cents: id * 100,
                };
                (
                    Some(item),
                    Verdict::Store(Rules::new().ttl(ttl).tag(format!("item:{id}"))),
                )
            }
        })
        .collect())
}

#[derive(Deserialize)]
struct Ids {
    ids: String,
}

async fn items(State(state): State<AppState>, Query(q): Query<Ids>) -> Response {
    let ids: Result<Vec<u64>, _> = q.ids.split(',').map(|s| s.trim().parse::<u64>()).collect();
    let Ok(ids) = ids else {
        return (
            StatusCode::BAD_REQUEST,
            "ids: a comma-separated list of numbers",
        )
            .into_response();
    };
    let queries = state.queries.clone();
    let batch = state
        .items
        .get_many(&ids, |missing| async move {
            fetch_items(missing, &queries).await
        })
        .await;
    match batch {
        Ok(batch) => {
            let max_age = batch.ttl().as_secs();
            let mut res =
                Json(batch.into_items().into_iter().flatten().collect::<Vec<_>>()).into_response();
            let cc = HeaderValue::from_str(&format!("max-age={max_age}")).expect("a header value");
            res.headers_mut().insert(header::CACHE_CONTROL, cc);
            res
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e).into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = Backend::connect(std::env::var("REDIS_URL").ok().as_deref()).await?;
    let cache = Cache::<Option<Item>>::builder()
        .name("items-example")
        .codec(JsonCodec)
        .partition(
            Partition::new("items")
                .ttl(Duration::from_secs(60))
                .negative_ttl(Duration::from_secs(5)),
        )
        .backend(&backend)
        .build()?;
    let state = AppState {
        items: BatchCache::new(cache, "items")?,
        queries: Arc::default(),
    };
    let app = Router::new().route("/items", get(items)).with_state(state);
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
