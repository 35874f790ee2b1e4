//! Test harness for Omega Penta (dev-only, not published).
//!
//! It gives tests real components they can break on purpose:
//!
//! - [`RedisServer`]: a throwaway `redis-server` on a free loopback port that a test can
//!   [kill](RedisServer::kill), [pause](RedisServer::pause), [resume](RedisServer::resume) and
//!   [restart](RedisServer::restart) on the same port;
//! - [`RedisCluster`]: a local 3-node Redis Cluster (no replicas);
//! - [`FaultProxy`]: a TCP proxy that adds latency, swallows bytes or resets connections;
//! - [`PgDatabase`]: a fresh PostgreSQL database, dropped again when the value is dropped, on
//!   the test process's own throwaway server (`initdb` + `postgres`, trust auth, a free port)
//!   or on the server named by `OMEGA_TEST_POSTGRES_URL`;
//! - [`http`]: a minimal HTTP/1.1 client that shows a response exactly as it was sent;
//! - [`alloc`]: a counting global allocator, to show that a hot path allocates nothing;
//! - [`runtime`]: a fresh current-thread runtime, for values that outlive one.
//!
//! Every child process is killed when its handle is dropped (also when a test panics) and, on
//! Linux, when the test process dies.
//!
//! ```no_run
//! use omega_testkit::{FaultProxy, RedisServer};
//! use std::time::Duration;
//!
//! # async fn demo() {
//! let mut redis = RedisServer::start();
//! assert_eq!(redis.cli(&["PING"]), "PONG");
//!
//! // Put a proxy in front of it and slow every chunk down by 50 ms.
//! let proxy = FaultProxy::start(redis.addr()).await;
//! proxy.set_latency(Duration::from_millis(50));
//! let url = proxy.url(); // give this to the client under test
//! # let _ = url;
//!
//! // Take the server away and bring it back on the same port.
//! redis.kill();
//! redis.restart();
//! # }
//! ```

pub mod alloc;
mod cluster;
pub mod http;
mod pg;
mod port;
mod process;
mod proxy;
mod redis;

pub use cluster::RedisCluster;
pub use pg::{POSTGRES_URL_VAR, PgDatabase, postgres_admin_url};
pub use port::free_port;
pub use process::spawn_long_lived;
pub use proxy::FaultProxy;
pub use redis::{RedisServer, require_redis_server};

/// A current-thread runtime with I/O and time enabled, for tests that use one value on
/// several runtimes in turn (each dropped before the next is made), as a test suite sharing a
/// value across `#[tokio::test]`s does.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}
