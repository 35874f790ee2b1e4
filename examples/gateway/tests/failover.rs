//! A node that cannot be reached fails no client request that can go elsewhere: the request
//! was never sent, so it goes to the next node of its key's preference list.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use omega_testkit::http::{get, request};
use support::{config, json, start, upstream};

/// An address where nothing listens (connections are refused).
fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_fails_no_request_that_can_go_elsewhere() {
    let a = upstream("a", false).await;
    let b = upstream("b", false).await;
    let dead = dead_address();
    let gw = start(config(
        &[("a", a.addr), ("b", b.addr), ("c", dead)],
        serde_json::json!([]),
    ))
    .await;
    let mut served_by = BTreeMap::<String, u32>::new();
    let mut failed = Vec::new();
    let mut owned_by_dead = 0;
    for i in 0..120 {
        let user = format!("user-{i}");
        if gw_owner(gw.admin_addr, &user).await == "c" {
            owned_by_dead += 1;
        }
        let r = get(gw.addr, "/api/x", &[("x-user-id", user.as_str())])
            .await
            .unwrap();
        if r.status == 200 {
            *served_by
                .entry(json(&r)["node"].as_str().unwrap().to_owned())
                .or_default() += 1;
        } else {
            failed.push((user, r.status));
        }
    }
    println!("{owned_by_dead} of 120 users are owned by the dead node; served by {served_by:?}");
    assert!(
        owned_by_dead > 0,
        "the test needs keys owned by the dead node"
    );
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(!served_by.contains_key("c"));

    // A request with a body is streamed, not kept: it cannot go twice, and a dead owner
    // answers 502 (until its circuit opens and routing skips it).
    gw.shutdown().await;
    let gw = start(config(
        &[("a", a.addr), ("b", b.addr), ("c", dead)],
        serde_json::json!([]),
    ))
    .await;
    let mut user = None;
    for i in 0.. {
        let u = format!("user-{i}");
        if gw_owner(gw.admin_addr, &u).await == "c" {
            user = Some(u);
            break;
        }
    }
    let user = user.unwrap();
    let r = request(
        gw.addr,
        "POST",
        "/api/upload",
        &[("x-user-id", user.as_str())],
        b"a body",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{r:?}");
    gw.shutdown().await;
}

async fn gw_owner(admin: SocketAddr, user: &str) -> String {
    let r = get(admin, &format!("/shards/pool/owner?key={user}"), &[])
        .await
        .unwrap();
    json(&r)["owner"].as_str().unwrap().to_owned()
}
