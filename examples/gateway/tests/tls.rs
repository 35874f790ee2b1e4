//! TLS at both ends, with a generated certificate: curl reaches the gateway over HTTPS (HTTP/1.1
//! and HTTP/2 through ALPN), a pool reaches an `https://` node trusting a given CA, and a
//! reload picks up a renewed certificate.

mod support;

use std::path::Path;

use omega_gateway::{Gateway, GatewayConfig};
use support::upstream;

/// A self-signed certificate for `localhost`, written as `name.pem` and `name.key`.
fn certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// Runs curl against `https://localhost:{port}{path}` trusting `ca`: its exit code, and what
/// `-w` printed after the body.
fn curl(port: u16, path: &str, ca: &Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-H", "x-user-id: ada"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn config(nodes: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "upstreams": { "pool": { "nodes": nodes, "key": { "header": "x-user-id" } } },
        "routes": [{ "prefix": "/api", "upstream": "pool", "timeout": "5s" }]
    });
    for (k, v) in extra.as_object().unwrap() {
        doc[k] = v.clone();
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_at_both_ends_with_a_renewed_certificate() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is needed for this test: apt-get install curl");
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path(), "first");
    let a = upstream("a", false).await;

    // The inner gateway terminates TLS in front of a plain node; its file is kept for reloads.
    let inner_file = dir.path().join("inner.json");
    let inner_doc = config(
        serde_json::json!([{ "id": "a", "url": format!("http://{}", a.addr) }]),
        serde_json::json!({ "tls": { "cert": cert, "key": key } }),
    );
    std::fs::write(&inner_file, inner_doc.to_string()).unwrap();
    let inner = Gateway::new(
        omega_gateway::load_config(&inner_file).unwrap(),
        Some(inner_file.clone()),
        None,
    )
    .await
    .unwrap();
    let inner_handle = inner.handle();
    let inner = inner.start().await.unwrap();
    let port = inner.addr.port();

    // curl over HTTPS, HTTP/1.1 and HTTP/2 (ALPN); the node learns the client came over TLS.
    let (code, body) = curl(port, "/api/x", &cert, &[]);
    assert_eq!(code, 0, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert!(
        echo["headers"]["forwarded"]
            .as_str()
            .unwrap()
            .contains("proto=https"),
        "{echo}"
    );
    let (code, version) = curl(
        port,
        "/api/x",
        &cert,
        &["--http2", "-o", "/dev/null", "-w", "%{http_version}"],
    );
    assert_eq!((code, version.as_str()), (0, "2"));
    // Plain HTTP to a TLS listener goes nowhere.
    let plain = omega_testkit::http::get(inner.addr, "/api/x", &[("x-user-id", "ada")]).await;
    assert!(plain.is_err() || plain.unwrap().status >= 400);

    // An outer gateway whose pool's node is `https://localhost:{port}`, trusting that CA.
    let outer_doc = config(
        serde_json::json!([{ "id": "tls", "url": format!("https://localhost:{port}") }]),
        serde_json::json!({}),
    );
    let mut outer_doc = outer_doc;
    outer_doc["upstreams"]["pool"]["tls"] = serde_json::json!({ "ca": cert });
    let outer = support::start(GatewayConfig::from_json(&outer_doc.to_string()).unwrap()).await;
    let through = omega_testkit::http::get(outer.addr, "/api/x", &[("x-user-id", "ada")])
        .await
        .unwrap();
    assert_eq!(through.status, 200, "{through:?}");
    assert_eq!(support::json(&through)["node"], "a");
    // The same over HTTP/2 (`protocol: h2`, ALPN `h2`).
    outer_doc["upstreams"]["pool"]["protocol"] = "h2".into();
    let outer_h2 = support::start(GatewayConfig::from_json(&outer_doc.to_string()).unwrap()).await;
    let through = omega_testkit::http::get(outer_h2.addr, "/api/x", &[("x-user-id", "ada")])
        .await
        .unwrap();
    assert_eq!(through.status, 200, "{through:?}");
    outer_h2.shutdown().await;

    // A renewed certificate: after a reload, new connections get it.
    let (renewed, renewed_key) = certificate(dir.path(), "second");
    std::fs::copy(&renewed, &cert).unwrap();
    std::fs::copy(&renewed_key, &key).unwrap();
    // Until the reload, connections still get the first certificate.
    let (code, _) = curl(port, "/api/x", &renewed, &["-o", "/dev/null"]);
    assert_ne!(code, 0, "the renewed certificate before a reload");
    inner_handle.reload().await.unwrap();
    let (code, _) = curl(port, "/api/x", &renewed, &["-o", "/dev/null"]);
    assert_eq!(code, 0, "the renewed certificate is served");
    outer.shutdown().await;
    inner.shutdown().await;
}

#[test]
fn unreadable_certificates_are_refused_at_their_field() {
    let doc = config(
        serde_json::json!([{ "id": "a", "url": "http://127.0.0.1:9" }]),
        serde_json::json!({ "tls": { "cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem" } }),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(Gateway::new(
            GatewayConfig::from_json(&doc.to_string()).unwrap(),
            None,
            None,
        ))
        .unwrap_err();
    assert!(e.to_string().contains("tls"), "{e}");
    assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    let mut doc = config(
        serde_json::json!([{ "id": "a", "url": "https://localhost:9" }]),
        serde_json::json!({}),
    );
    doc["upstreams"]["pool"]["tls"] = serde_json::json!({ "ca": "/nonexistent/ca.pem" });
    let e = rt
        .block_on(Gateway::new(
            GatewayConfig::from_json(&doc.to_string()).unwrap(),
            None,
            None,
        ))
        .unwrap_err();
    assert!(e.to_string().contains("upstreams.pool.tls"), "{e}");
}
