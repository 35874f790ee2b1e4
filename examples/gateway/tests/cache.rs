//! The quick mode's `--cache`: the `omega-gateway` binary, started with `--listen`,
//! `--upstream` and `--cache`, in front of a real upstream (axum on a loopback socket), puts
//! RFC 9111's shared cache in front of everything.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::http::Uri;
use omega_testkit::http::get;
use support::{KillOnDrop, wait_until_up};

/// An upstream counting its requests: `/public` is fresh for a minute, `/private` is
/// `private`; the body is the request's number.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .fallback(
            |State(calls): State<Arc<AtomicUsize>>, uri: Uri| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let cc = if uri.path() == "/private" {
                    "private, max-age=60"
                } else {
                    "max-age=60"
                };
                ([("cache-control", cc)], format!("{n}"))
            },
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_with_cache_answers_repeated_requests_from_the_cache() {
    let (up, calls) = upstream().await;
    let listen = SocketAddr::from(([127, 0, 0, 1], omega_testkit::free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], omega_testkit::free_port()));
    let _gateway = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_omega-gateway"))
            .args([
                "--listen",
                &listen.to_string(),
                "--upstream",
                &format!("http://{up}"),
                "--admin",
                &admin.to_string(),
                "--cache",
            ])
            .env("OMEGA_ADMIN_TOKEN", "test-token-of-the-cache-test")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_up(listen).await;

    // A miss goes through the gateway to the upstream and is stored; the next is a hit.
    let first = get(listen, "/public", &[]).await.unwrap();
    assert_eq!((first.status, first.body.as_slice()), (200, &b"1"[..]));
    let status = first.header("cache-status").unwrap();
    assert!(
        status.starts_with("omega-gateway; fwd=uri-miss; fwd-status=200"),
        "{status}"
    );
    assert!(status.ends_with("; stored"), "{status}");
    let second = get(listen, "/public", &[]).await.unwrap();
    assert_eq!(second.body, b"1");
    assert!(
        second.header("cache-status").unwrap().contains("; hit"),
        "{second:?}"
    );
    assert!(second.header("age").is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A private response is never served to another client.
    let a = get(listen, "/private", &[]).await.unwrap();
    let b = get(listen, "/private", &[]).await.unwrap();
    assert_ne!(a.body, b.body);
    assert!(
        b.header("cache-status")
            .unwrap()
            .ends_with("detail=private")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // An unsafe request invalidates what was stored for its URI.
    let post = omega_testkit::http::request(listen, "POST", "/public", &[], b"x")
        .await
        .unwrap();
    assert_eq!(post.status, 200);
    let after = get(listen, "/public", &[]).await.unwrap();
    assert_eq!(after.body, b"5");
    assert!(!after.header("cache-status").unwrap().contains("; hit"));
}

#[test]
fn cache_needs_the_quick_mode() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omega-gateway"))
        .arg("--cache")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cache goes with --listen and --upstream")
    );
}
