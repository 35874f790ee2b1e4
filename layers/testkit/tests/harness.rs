//! Exercises the harness against real servers.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use omega_testkit::{
    FaultProxy, PgDatabase, RedisCluster, RedisServer, free_port, require_redis_server,
};
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Sends PING over a blocking socket and returns the first reply line.
fn ping_std(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.write_all(PING)?;
    read_line_std(&mut stream)
}

fn read_line_std(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

fn assert_refused(addr: SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}"),
        Ok(_) => panic!("{addr} still accepts connections"),
    }
}

async fn read_line(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

async fn ping(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    stream.write_all(PING).await?;
    tokio::time::timeout(Duration::from_secs(5), read_line(stream))
        .await
        .map_err(|_| std::io::Error::from(ErrorKind::TimedOut))?
}

#[test]
fn redis_server_is_found() {
    require_redis_server();
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let mut unique = ports.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ports.len());
    std::net::TcpListener::bind(("127.0.0.1", ports[0])).expect("port is free");
}

#[test]
fn server_starts_and_answers() {
    let server = RedisServer::start();
    assert!(server.is_running());
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(
        server.addr(),
        SocketAddr::from(([127, 0, 0, 1], server.port()))
    );
    assert_eq!(
        ping_std(server.addr(), Duration::from_secs(2)).unwrap(),
        "+PONG"
    );
    assert_eq!(server.cli(&["PING"]), "PONG");
    server.cli(&["SET", "k", "v"]);
    assert_eq!(server.cli(&["GET", "k"]), "v");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );
}

#[test]
fn extra_args_are_passed() {
    let server = RedisServer::start_with_args(&["--maxmemory", "1mb"]);
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n1048576"
    );
}

#[test]
fn kill_refuses_and_restart_answers_on_the_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    // An open client connection leaves server-side sockets behind after the kill.
    let mut client = TcpStream::connect(server.addr()).unwrap();
    client.write_all(PING).unwrap();
    assert_eq!(read_line_std(&mut client).unwrap(), "+PONG");

    server.kill();
    assert!(!server.is_running());
    assert_refused(server.addr());
    server.kill(); // idempotent

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(
        ping_std(server.addr(), Duration::from_secs(2)).unwrap(),
        "+PONG"
    );

    // Restart of a running server.
    server.cli(&["SET", "k", "v"]);
    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.cli(&["EXISTS", "k"]), "0", "nothing is persisted");
}

#[test]
fn pause_hangs_and_resume_answers() {
    let server = RedisServer::start();
    let mut client = TcpStream::connect(server.addr()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();

    server.pause();
    assert!(server.is_running());
    client.write_all(PING).unwrap();
    let err = read_line_std(&mut client).expect_err("a paused server must not answer");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );

    server.resume();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(read_line_std(&mut client).unwrap(), "+PONG");
}

#[test]
fn drop_kills_the_server() {
    let server = RedisServer::start();
    let addr = server.addr();
    drop(server);
    assert_refused(addr);

    // Also when paused.
    let server = RedisServer::start();
    let addr = server.addr();
    server.pause();
    drop(server);
    assert_refused(addr);
}

#[test]
fn drop_kills_the_server_when_a_test_panics() {
    let mut addr = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let server = RedisServer::start();
        addr = Some(server.addr());
        panic!("test failure");
    }));
    assert!(result.is_err());
    assert_refused(addr.unwrap());
}

#[test]
fn cluster_starts_and_is_ok() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.nodes().len(), 3);
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    for (node, url) in cluster.nodes().iter().zip(&urls) {
        assert_eq!(url, &node.url());
        let info = node.cli(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    // A key lands on exactly one master and is reachable with redirects.
    let first = &cluster.nodes()[0];
    let port = first.port().to_string();
    let out = std::process::Command::new("redis-cli")
        .args(["-c", "-p", &port, "SET", "{user}:1", "x"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

#[test]
fn cluster_grows_by_a_node_and_announces_another_port() {
    let mut cluster = RedisCluster::start();
    let new = cluster.add_node();
    assert_eq!(
        (new, cluster.nodes().len(), cluster.urls().len()),
        (3, 4, 4)
    );
    for node in cluster.nodes() {
        let info = node.cli(&["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_known_nodes:4"), "{info}");
    }
    // The new node owns no slot yet: CLUSTER SLOTS still names three primaries.
    let slots = cluster.nodes()[new].cli(&["CLUSTER", "SLOTS"]);
    let new_port = cluster.nodes()[new].port().to_string();
    assert!(!slots.lines().any(|l| l == new_port), "{slots}");

    // Node 1 announces a made-up port: every node's CLUSTER SLOTS names it.
    let announced = free_port();
    cluster.announce_port(1, announced);
    for node in cluster.nodes() {
        let slots = node.cli(&["CLUSTER", "SLOTS"]);
        assert!(slots.lines().any(|l| l == announced.to_string()), "{slots}");
    }
}

#[tokio::test]
async fn proxy_forwards() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    assert_eq!(
        proxy.url(),
        format!("redis://127.0.0.1:{}", proxy.addr().port())
    );
    assert_ne!(proxy.addr(), server.addr());

    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(ping(&mut client).await.unwrap(), "+PONG");
    }
    // A larger value goes through intact, in order.
    let value = "v".repeat(200_000);
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n{value}\r\n",
        value.len()
    );
    client.write_all(set.as_bytes()).await.unwrap();
    assert_eq!(read_line(&mut client).await.unwrap(), "+OK");
    assert_eq!(server.cli(&["STRLEN", "k"]), "200000");
}

#[tokio::test]
async fn proxy_latency_delays_replies() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");

    let latency = Duration::from_millis(150);
    proxy.set_latency(latency);
    let started = Instant::now();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());

    // Pipelined commands keep their order.
    client
        .write_all(b"*2\r\n$4\r\nECHO\r\n$1\r\na\r\n")
        .await
        .unwrap();
    client
        .write_all(b"*2\r\n$4\r\nECHO\r\n$1\r\nb\r\n")
        .await
        .unwrap();
    let mut replies = Vec::new();
    while !replies.ends_with(b"$1\r\nb\r\n") {
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap();
        assert_ne!(n, 0);
        replies.extend_from_slice(&buf[..n]);
    }
    assert_eq!(replies, b"$1\r\na\r\n$1\r\nb\r\n");

    proxy.pass();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");
}

#[tokio::test]
async fn proxy_blackhole_swallows_and_pass_restores() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");

    proxy.blackhole();
    client.write_all(PING).await.unwrap();
    let read = tokio::time::timeout(Duration::from_millis(300), read_line(&mut client)).await;
    assert!(read.is_err(), "blackholed read returned {read:?}");

    // New connections are accepted but get nothing.
    let mut fresh = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    fresh.write_all(PING).await.unwrap();
    let read = tokio::time::timeout(Duration::from_millis(300), read_line(&mut fresh)).await;
    assert!(read.is_err(), "blackholed read returned {read:?}");

    proxy.pass();
    // The blackholed PINGs were discarded: exactly one reply per PING from now on.
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");
    assert_eq!(ping(&mut fresh).await.unwrap(), "+PONG");
    client
        .write_all(b"*2\r\n$4\r\nECHO\r\n$1\r\nz\r\n")
        .await
        .unwrap();
    assert_eq!(read_line(&mut client).await.unwrap(), "$1\r\nz");
}

#[tokio::test]
async fn proxy_reset_fails_open_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");

    proxy.reset_connections();
    let result = ping(&mut client).await;
    let err = result.expect_err("a reset connection must fail");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    // New connections work normally.
    let mut fresh = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut fresh).await.unwrap(), "+PONG");
}

#[tokio::test]
async fn proxy_drops_the_next_reply_after_the_request_ran() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");

    proxy.drop_next_reply();
    assert_eq!(proxy.pending_reply_drops(), 1);
    client
        .write_all(b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n")
        .await
        .unwrap();
    let err = read_line(&mut client)
        .await
        .expect_err("the reply must be lost with the connection");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
        ),
        "{err}"
    );
    // The server ran the request; the cut was used up and new connections work.
    assert_eq!(server.cli(&["GET", "n"]), "1");
    assert_eq!(proxy.pending_reply_drops(), 0);
    let mut fresh = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut fresh).await.unwrap(), "+PONG");
    // `pass` disarms cuts not used yet.
    proxy.drop_next_reply();
    proxy.pass();
    assert_eq!(ping(&mut fresh).await.unwrap(), "+PONG");
}

#[tokio::test]
async fn proxy_refuse_resets_new_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut open = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut open).await.unwrap(), "+PONG");

    proxy.refuse(true);
    let mut refused = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(ping(&mut refused).await.is_err());
    assert_eq!(
        ping(&mut open).await.unwrap(),
        "+PONG",
        "open connections are kept"
    );

    proxy.refuse(false);
    let mut fresh = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut fresh).await.unwrap(), "+PONG");
}

#[tokio::test]
async fn proxy_to_a_dead_upstream_resets_clients() {
    let mut server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    server.kill();
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(ping(&mut client).await.is_err());

    server.restart();
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");
}

#[tokio::test]
async fn proxy_drop_stops_everything() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let addr = proxy.addr();
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(ping(&mut client).await.unwrap(), "+PONG");

    drop(proxy);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("the connection must be closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn pg_database_is_created_and_dropped() {
    let db = PgDatabase::create().await;
    let name = db.name().to_owned();
    assert!(name.starts_with("omega_test_"), "{name}");
    assert_eq!(db.admin_url(), omega_testkit::postgres_admin_url());
    assert!(db.url().ends_with(&format!("/{name}")), "{}", db.url());

    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(current, name);

    // Another database gets another name.
    let other = PgDatabase::create().await;
    assert_ne!(other.name(), name);

    // Dropped even with a connection still open (WITH (FORCE)), from inside a runtime.
    drop(db);
    drop(other);
    let admin_url = omega_testkit::postgres_admin_url();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(count, 0, "database {name} still exists");
}

#[test]
fn pg_database_drops_outside_a_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(PgDatabase::create());
    let name = db.name().to_owned();
    let admin_url = db.admin_url().to_owned();
    drop(runtime);
    drop(db);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let count: i64 = runtime.block_on(async {
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap()
    });
    assert_eq!(count, 0);
}

#[test]
#[should_panic(expected = "Bad directive or wrong number of arguments")]
fn start_failure_shows_the_log_tail() {
    let _server = RedisServer::start_with_args(&["--no-such-option", "x"]);
}
