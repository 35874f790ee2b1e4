//! The embedded demo, as a new user meets it: the `omega-gateway` binary with no configuration
//! (here on free ports, `--listen` and `--admin`) puts all five layers in front of its demo
//! services: shard routing with per-node breakers, rate limits, a cached slow route, and
//! event-sourced accounts with snapshots on SQLite.

mod support;

use std::net::SocketAddr;
use std::time::Instant;

use omega_testkit::http::{get, request};
use support::{KillOnDrop, json, wait_until_up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_demo_shows_every_layer() {
    let listen = SocketAddr::from(([127, 0, 0, 1], omega_testkit::free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], omega_testkit::free_port()));
    let _gateway = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_omega-gateway"))
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .env("OMEGA_ADMIN_TOKEN", "test-token-of-the-demo-test")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until_up(listen).await;
    wait_until_up(admin).await;

    // Shard routing: one user, one node.
    let user = [("x-user-id", "ada")];
    let first = json(&get(listen, "/hello", &user).await.unwrap());
    let again = json(&get(listen, "/hello", &user).await.unwrap());
    assert_eq!(first["node"], again["node"]);

    // The cached route: the first request waits for the slow node, the second is a hit.
    let started = Instant::now();
    let miss = get(listen, "/slow/report", &user).await.unwrap();
    let miss_took = started.elapsed();
    let started = Instant::now();
    let hit = get(listen, "/slow/report", &user).await.unwrap();
    let hit_took = started.elapsed();
    println!("/slow/report: miss {miss_took:?}, hit {hit_took:?}");
    assert_eq!((miss.status, hit.status), (200, 200));
    assert!(
        miss_took >= std::time::Duration::from_millis(300),
        "{miss_took:?}"
    );
    let status = hit.header("cache-status").unwrap();
    assert!(status.contains("; hit"), "{status}");
    assert_eq!(
        json(&miss)["generated_at_ms"],
        json(&hit)["generated_at_ms"]
    );

    // Accounts: commands through SnapshotLayer, a refusal as 422, the state read back.
    let post = |path: &'static str, body: &'static str| async move {
        request(
            listen,
            "POST",
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap()
    };
    assert_eq!(post("/accounts/ada/open", "").await.status, 200);
    let deposit = post("/accounts/ada/deposit", r#"{"amount": 100}"#).await;
    assert_eq!(deposit.status, 200, "{deposit:?}");
    assert_eq!(json(&deposit)["balance"], 100);
    let refused = post("/accounts/ada/withdraw", r#"{"amount": 500}"#).await;
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(
        json(&refused)["error"]
            .as_str()
            .unwrap()
            .contains("insufficient funds")
    );
    assert_eq!(
        post("/accounts/ada/withdraw", r#"{"amount": 30}"#)
            .await
            .status,
        200
    );
    let shown = json(&get(listen, "/accounts/ada", &[]).await.unwrap());
    assert_eq!(shown["balance"], 70);
    assert_eq!(shown["version"], 3);
    assert_eq!(post("/accounts/ada/open", "").await.status, 422);

    // The admin API lists the demo's pools and limits.
    let shards = json(&get(admin, "/shards/accounts", &[]).await.unwrap());
    assert!(shards.to_string().contains("accounts"), "{shards}");
    let limits = get(admin, "/limits", &[]).await.unwrap();
    assert_eq!(limits.status, 200);
}
