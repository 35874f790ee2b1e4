//! The shared vocabulary of omega-core at work: one URL for the backend, key sources, and a
//! refusal turned into a response, on the embedded in-memory backend by default.
//!
//! ```text
//! cargo run --release --example quickstart --features full
//! cargo run --release --example quickstart --features full -- redis://127.0.0.1:6379
//! cargo run --release --example quickstart --features full -- redis+cluster://127.0.0.1:7000
//! ```
//!
//! With a Redis URL the example also runs a script on a hash-tagged pair of keys and shows
//! what a dead Redis looks like: bounded, clearly named errors.

use std::time::Duration;

use omega_penta::core::key::http::{ClientIp, Header};
use omega_penta::core::key::{KeySource, MissingKey};
use omega_penta::core::reject::{OnRejection, Refusal, Respond};
use omega_penta::core::{Backend, Keyspace, hash_slot};

#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed for maintenance")
    }
}

impl std::error::Error for Closed {}

impl Refusal for Closed {
    fn status(&self) -> u16 {
        503
    }
    fn grpc_code(&self) -> u16 {
        omega_penta::core::reject::grpc::UNAVAILABLE
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(30))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. One URL picks the backend: none for memory, redis:// or redis+cluster:// for Redis.
    let url = std::env::args().nth(1);
    let backend = Backend::connect(url.as_deref()).await?;
    let health = backend.health();
    println!("backend: {} ({:?})", health.target, health.status);

    // 2. Keys: the same sources feed every layer, borrowed from the request.
    let mut req = http::Request::get("/users/42")
        .header("x-api-key", "k-123")
        .header("x-forwarded-for", "198.51.100.7")
        .body(())?;
    req.extensions_mut()
        .insert(omega_penta::core::key::http::PeerAddr(
            "10.0.0.2:5000".parse()?,
        ));
    let api_key = Header::new("x-api-key");
    let client = ClientIp::trusting(["10.0.0.0/8"])?;
    println!(
        "api key {:?}, client {:?}; a request without the header: {:?} (what that means is a choice: {:?} or {:?})",
        api_key.key(&req).map(|k| k.to_string()),
        client.key(&req).map(|k| k.to_string()),
        Header::new("x-tenant").key(&req),
        MissingKey::Skip,
        MissingKey::Reject,
    );

    // 3. Refusals: every layer hands them to the same strategy; `Respond` answers over HTTP.
    let answer: http::Response<String> =
        <Respond as OnRejection<_, _, std::convert::Infallible>>::reject(&Respond, &req, Closed)
            .unwrap_or_else(|never| match never {});
    println!(
        "refused: {} with Retry-After {:?}",
        answer.status(),
        answer.headers().get("retry-after")
    );

    // 4. Keys that one script touches together share a hash tag, hence a cluster slot.
    let ks = Keyspace::new("quickstart")?;
    let visits = ks.tagged("user:42", &["visits"]);
    let last_seen = ks.tagged("user:42", &["last_seen"]);
    println!(
        "keys {visits} and {last_seen} share Redis Cluster slot {}",
        hash_slot(visits.as_bytes())
    );
    #[cfg(feature = "redis")]
    if let Some(redis) = backend.as_redis() {
        use omega_penta::core::redis::Script;
        let script = Script::new(
            "visit",
            "redis.call('SET', KEYS[2], ARGV[1]); return redis.call('INCR', KEYS[1])",
        );
        for _ in 0..3 {
            let call = script
                .call()
                .key(&visits)
                .key(&last_seen)
                .arg("2026-11-30T12:00:00Z");
            let n: i64 = redis.eval(&call).await?;
            println!("visit #{n}");
        }
    }
    Ok(())
}
