//! Four processes sharing one Redis miss the same key at the same moment: one upstream call in
//! all. The test binary runs itself four times (the ignored `child` test, told what to do
//! through environment variables); the upstream is a TCP server in the parent that counts
//! connections.
#![cfg(feature = "redis")]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use omega_cache::{Cache, CacheLayer, RawBytes, Resolver};
use omega_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

const REDIS: &str = "OMEGA_CACHE_CHILD_REDIS";
const UPSTREAM: &str = "OMEGA_CACHE_CHILD_UPSTREAM";
const START: &str = "OMEGA_CACHE_CHILD_START_MS";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_missing_together_make_one_upstream_call() {
    let server = RedisServer::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = conn.write_all(format!("answer #{n}").as_bytes()).await;
            });
        }
    });

    let start = now_ms() + 2000;
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(REDIS, server.url())
                .env(UPSTREAM, upstream.to_string())
                .env(START, start.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut answers = Vec::new();
    for out in &outputs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // (The harness writes `test child ... ` before the first answer, on its line.)
        for line in stdout
            .lines()
            .filter_map(|l| l.split_once("ANSWER ").map(|(_, a)| a))
        {
            answers.push(line.to_owned());
        }
    }
    eprintln!(
        "4 processes x 10 concurrent misses: {} upstream call(s); answers {:?}",
        accepted.load(Ordering::SeqCst),
        answers.iter().collect::<std::collections::BTreeSet<_>>()
    );
    assert_eq!(answers.len(), 40);
    assert!(answers.iter().all(|a| a == "answer #1"), "{answers:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// One process of the test above (does nothing unless started by it).
#[test]
#[ignore = "run by four_processes_missing_together_make_one_upstream_call"]
fn child() {
    let (Ok(redis), Ok(upstream), Ok(start)) = (
        std::env::var(REDIS),
        std::env::var(UPSTREAM),
        std::env::var(START),
    ) else {
        return;
    };
    let start: u64 = start.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let backend = support::backend(&redis, "procs", Duration::from_secs(1)).await;
        let cache = Cache::<Bytes>::builder()
            .codec(RawBytes)
            .redis(backend)
            .build()
            .unwrap();
        support::eventually("the subscription", || cache.is_synced()).await;
        let fetch = tower::service_fn(move |_key: String| {
            let upstream = upstream.clone();
            async move {
                let mut conn = tokio::net::TcpStream::connect(upstream).await?;
                let mut body = Vec::new();
                conn.read_to_end(&mut body).await?;
                Ok::<_, std::io::Error>(Bytes::from(body))
            }
        });
        let svc = CacheLayer::new(cache, Resolver::new(|k: &String| Some(k.clone()))).layer(fetch);
        tokio::time::sleep(Duration::from_millis(start.saturating_sub(now_ms()))).await;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.oneshot("report:2026".to_owned()).await.unwrap() })
            })
            .collect();
        for t in tasks {
            let answer = t.await.unwrap();
            println!("ANSWER {}", String::from_utf8_lossy(&answer));
        }
    });
}
