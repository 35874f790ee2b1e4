//! The shared-state core at work, on the embedded in-memory backend by default.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart --features redis -- redis://127.0.0.1:6379
//! ```
//!
//! With a Redis URL (and the `redis` feature) the same steps run against Redis, and the
//! example shows what a dead Redis looks like: bounded, clearly named errors.

use std::time::Duration;

use omega_penta::core::{Backend, Keyspace, hash_slot};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = backend_from_args().await?;
    let health = backend.health();
    println!("backend: {} ({:?})", health.target, health.status);

    let ks = Keyspace::new("quickstart")?;
    let visits = ks.tagged("user:42", &["visits"]);
    let last_seen = ks.tagged("user:42", &["last_seen"]);
    println!(
        "keys {visits} and {last_seen} share Redis Cluster slot {}",
        hash_slot(visits.as_bytes())
    );

    for _ in 0..3 {
        let n = backend
            .incr_by(&visits, 1, Some(Duration::from_secs(60)))
            .await?;
        println!("visit #{n}");
    }
    backend
        .set(
            &last_seen,
            b"2026-11-27T12:00:00Z",
            Some(Duration::from_secs(60)),
        )
        .await?;
    let seen = backend.get(&last_seen).await?.unwrap_or_default();
    println!("last seen: {}", String::from_utf8_lossy(&seen));
    let fresh = backend
        .set_nx(&ks.key(&["lock"]), b"me", Some(Duration::from_secs(5)))
        .await?;
    println!("took the lock: {fresh}");
    Ok(())
}

#[cfg(feature = "redis")]
async fn backend_from_args() -> Result<Backend, Box<dyn std::error::Error>> {
    use omega_penta::core::redis::RedisConfig;
    match std::env::args().nth(1) {
        Some(url) => Ok(Backend::redis(RedisConfig::url(url)).await?),
        None => Ok(Backend::memory()),
    }
}

#[cfg(not(feature = "redis"))]
async fn backend_from_args() -> Result<Backend, Box<dyn std::error::Error>> {
    if let Some(url) = std::env::args().nth(1) {
        return Err(format!("{url}: Redis needs `--features redis`").into());
    }
    Ok(Backend::memory())
}
