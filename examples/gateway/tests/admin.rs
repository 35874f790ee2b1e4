//! The admin API as a hostile caller meets it: changes without the token, a rebound DNS name,
//! a node pointed at a metadata endpoint, an admin listener off loopback with no token.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use omega_gateway::{Gateway, GatewayConfig};
use omega_testkit::http::{RawResponse, get, request};
use support::{config, json, start, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request written byte for byte (its own `Host`), the whole response read.
async fn raw(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn nodes(admin: SocketAddr) -> usize {
    let r = get(admin, "/shards/pool", &[]).await.unwrap();
    json(&r)["nodes"].as_array().unwrap().len()
}

async fn add_node(admin: SocketAddr, bearer: Option<&str>, id: &str, url: &str) -> RawResponse {
    let body = serde_json::json!({ "id": id, "url": url }).to_string();
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    request(
        admin,
        "POST",
        "/shards/pool/nodes",
        &headers,
        body.as_bytes(),
    )
    .await
    .unwrap()
}

/// Changes need the bearer token; reads stay open; a refused change changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_the_token_are_refused() {
    let a = upstream("a", false).await;
    let b = upstream("b", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let token = gw.admin_token().to_owned();
    assert!(token.len() >= 32, "a generated token is long: {token:?}");
    let file = gw.admin_token_file().expect("a generated token has a file");
    assert_eq!(std::fs::read_to_string(file).unwrap().trim(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only its user reads the token file");
    }
    let url = format!("http://{}", b.addr);

    let none = add_node(gw.admin_addr, None, "b", &url).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"omega-gateway admin\"")
    );
    let wrong = add_node(gw.admin_addr, Some("not-the-token"), "b", &url).await;
    assert_eq!(wrong.status, 401);
    let delete = request(gw.admin_addr, "DELETE", "/shards/pool/nodes/a", &[], b"")
        .await
        .unwrap();
    assert_eq!(delete.status, 401);
    let reload = request(gw.admin_addr, "POST", "/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(reload.status, 401);
    assert_eq!(nodes(gw.admin_addr).await, 1, "nothing changed");

    // Reads need no token.
    assert_eq!(
        get(gw.admin_addr, "/breakers", &[]).await.unwrap().status,
        200
    );
    assert_eq!(
        get(gw.admin_addr, "/metrics", &[]).await.unwrap().status,
        200
    );

    let ok = add_node(gw.admin_addr, Some(&token), "b", &url).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(nodes(gw.admin_addr).await, 2);
    let file = file.to_owned();
    gw.shutdown().await;
    assert!(!file.exists(), "the token file goes with the gateway");
}

/// A page on `evil.example` whose name now resolves to 127.0.0.1 reaches the admin listener
/// with its own `Host`: 421, for reads and changes alike, token or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_dns_name_is_not_the_admin_api() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let admin = gw.admin_addr;
    let read = raw(admin, "GET /breakers HTTP/1.1\r\nHost: evil.example", "").await;
    assert!(read.starts_with("HTTP/1.1 421"), "{read}");
    let change = raw(
        admin,
        &format!(
            "POST /reload HTTP/1.1\r\nHost: evil.example:{}\r\nAuthorization: Bearer {}",
            admin.port(),
            gw.admin_token()
        ),
        "",
    )
    .await;
    assert!(change.starts_with("HTTP/1.1 421"), "{change}");
    let by_address = raw(
        admin,
        &format!("GET /breakers HTTP/1.1\r\nHost: {admin}"),
        "",
    )
    .await;
    assert!(by_address.starts_with("HTTP/1.1 200"), "{by_address}");
    let by_name = raw(admin, "GET /breakers HTTP/1.1\r\nHost: localhost", "").await;
    assert!(by_name.starts_with("HTTP/1.1 200"), "{by_name}");
    gw.shutdown().await;
}

/// New nodes must be on the hosts the file names: a holder of the token still cannot send
/// user traffic to a cloud metadata endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_nodes_must_be_on_an_allowed_host() {
    let a = upstream("a", false).await;
    let gw = start(config(&[("a", a.addr)], serde_json::json!([]))).await;
    let token = gw.admin_token().to_owned();
    let metadata = add_node(gw.admin_addr, Some(&token), "m", "http://169.254.169.254").await;
    assert_eq!(metadata.status, 403, "{metadata:?}");
    assert!(
        String::from_utf8_lossy(&metadata.body).contains("admin_api.node_hosts"),
        "{metadata:?}"
    );
    let named = add_node(
        gw.admin_addr,
        Some(&token),
        "n",
        "http://internal.example:80",
    )
    .await;
    assert_eq!(named.status, 403);
    assert_eq!(nodes(gw.admin_addr).await, 1);
    // Another port on a pool's host is allowed.
    let b = upstream("b", false).await;
    let same_host = add_node(
        gw.admin_addr,
        Some(&token),
        "b",
        &format!("http://{}", b.addr),
    )
    .await;
    assert_eq!(same_host.status, 200, "{same_host:?}");
    gw.shutdown().await;

    // `node_hosts` replaces the default list.
    let mut doc: serde_json::Value =
        serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["admin_api"] = serde_json::json!({ "token": "t0k3n", "node_hosts": ["10.9.8.7"] });
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    assert_eq!(gw.admin_token(), "t0k3n");
    assert!(gw.admin_token_file().is_none());
    let pool_host = add_node(
        gw.admin_addr,
        Some("t0k3n"),
        "b",
        &format!("http://{}", b.addr),
    )
    .await;
    assert_eq!(
        pool_host.status, 403,
        "only the listed hosts: {pool_host:?}"
    );
    gw.shutdown().await;
}

/// An admin API told to listen off loopback with no token configured does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_off_loopback_needs_a_configured_token() {
    let a = upstream("a", false).await;
    let mut doc: serde_json::Value =
        serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["admin"] = "0.0.0.0:0".into();
    let config = GatewayConfig::from_json(&doc.to_string()).unwrap();
    let e = Gateway::new(config, None, None)
        .await
        .unwrap()
        .start()
        .await
        .expect_err("no token off loopback");
    assert!(e.to_string().contains("admin_api.token"), "{e}");

    // The binary says the same and exits.
    let upstream_url = format!("http://{}", a.addr);
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_omega-gateway"))
            .args(["--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
            .args(["--upstream", &upstream_url])
            .env_remove("OMEGA_ADMIN_TOKEN")
            .output()
    });
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the gateway exits at once")
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin_api.token"), "{stderr}");
}
