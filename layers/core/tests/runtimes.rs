//! A Redis backend outlives the tokio runtime it was created on: its connections and its
//! supervisors ran there, and another runtime that uses it afterwards gets them back (a test
//! suite sharing one backend across `#[tokio::test]`s, a program that connects on one runtime
//! and serves on another).
#![cfg(feature = "redis")]

use std::time::{Duration, Instant};

use omega_core::HealthStatus;
use omega_core::redis::{RedisBackend, RedisConfig};
use omega_testkit::{RedisCluster, RedisServer};

fn tuned(cfg: RedisConfig) -> RedisConfig {
    cfg.op_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

fn get(backend: &RedisBackend, key: &str) -> impl Future<Output = omega_core::Result<String>> {
    let cmd = redis::cmd("GET").arg(key).to_owned();
    let backend = backend.clone();
    async move { backend.query::<String>(&cmd).await }
}

/// Polls `f` every 10 ms until it returns `true`, for at most 15 s.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_server_backend_serves_the_next_runtime_and_still_reconnects() {
    let mut server = RedisServer::start();
    let first = omega_testkit::runtime();
    let backend = first
        .block_on(RedisBackend::connect(tuned(RedisConfig::url(server.url()))))
        .unwrap();
    first
        .block_on(backend.query::<()>(redis::cmd("SET").arg("k").arg("v")))
        .unwrap();
    drop(first);

    let second = omega_testkit::runtime();
    second.block_on(async {
        // The first operation on the new runtime is answered, not failed.
        assert_eq!(get(&backend, "k").await.unwrap(), "v");
        assert_eq!(backend.health().status, HealthStatus::Up);
        // The supervisor runs again: a restarted server is reconnected.
        let attempts = backend.connect_attempts();
        server.restart();
        eventually("the backend to reconnect after a restart", async || {
            let pong = backend.query::<String>(&redis::cmd("PING")).await;
            pong.is_ok_and(|v| v == "PONG")
        })
        .await;
        assert!(backend.connect_attempts() > attempts);
    });
}

#[test]
fn a_cluster_backend_serves_the_next_runtime() {
    let cluster = RedisCluster::start();
    let first = omega_testkit::runtime();
    let backend = first
        .block_on(RedisBackend::connect(tuned(RedisConfig::cluster(
            cluster.urls(),
        ))))
        .unwrap();
    let keys: Vec<String> = (0..12).map(|i| format!("key:{i}")).collect();
    first.block_on(async {
        for k in &keys {
            backend
                .query::<()>(redis::cmd("SET").arg(k).arg(k))
                .await
                .unwrap();
        }
    });
    drop(first);

    let second = omega_testkit::runtime();
    second.block_on(async {
        // Keys on every primary, each answered on the first try.
        for k in &keys {
            assert_eq!(&get(&backend, k).await.unwrap(), k);
        }
        assert!(backend.is_up());
        assert!(backend.node_health().iter().all(|h| h.is_up()));
    });
}

#[test]
fn a_subscription_follows_its_consumer_to_the_next_runtime() {
    use omega_core::redis::SubscriptionEvent;
    let server = RedisServer::start();
    let first = omega_testkit::runtime();
    let (backend, mut sub) = first.block_on(async {
        let backend = RedisBackend::connect(tuned(RedisConfig::url(server.url())))
            .await
            .unwrap();
        let mut sub = backend.subscribe("news");
        assert_eq!(sub.next().await, Some(SubscriptionEvent::Subscribed));
        (backend, sub)
    });
    drop(first);

    omega_testkit::runtime().block_on(async {
        // What was published meanwhile was missed: the consumer hears so, then is subscribed
        // again and gets what comes next.
        assert_eq!(sub.next().await, Some(SubscriptionEvent::Lost));
        assert_eq!(sub.next().await, Some(SubscriptionEvent::Subscribed));
        backend.publish("news", b"again").await.unwrap();
        assert_eq!(
            sub.next().await,
            Some(SubscriptionEvent::Message(b"again".to_vec()))
        );
    });
}

/// A caller that only looks at the backend's health before it sends anything (as the layers
/// do) moves it too: the connection is opened again in the background.
#[test]
fn asking_is_up_on_the_next_runtime_moves_the_backend() {
    let server = RedisServer::start();
    let first = omega_testkit::runtime();
    let backend = first
        .block_on(RedisBackend::connect(tuned(RedisConfig::url(server.url()))))
        .unwrap();
    drop(first);
    let attempts = backend.connect_attempts();
    omega_testkit::runtime().block_on(async {
        eventually("a connection opened on this runtime", async || {
            backend.is_up() && backend.connect_attempts() > attempts
        })
        .await;
        let pong: String = backend.query(&redis::cmd("PING")).await.unwrap();
        assert_eq!(pong, "PONG");
    });
}
