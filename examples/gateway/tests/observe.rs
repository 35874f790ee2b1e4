//! What the gateway shows of each request: an `X-Request-Id` kept or generated, forwarded and
//! returned; one JSON line per request in the access log.

mod support;

use std::time::Duration;

use omega_gateway::GatewayConfig;
use omega_testkit::http::get;
use support::{config, json, start, status_for, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_an_id_and_are_logged_one_line_each() {
    let a = upstream("a", false).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.jsonl");
    let mut doc = serde_json::to_value(config(
        &[("a", a.addr)],
        serde_json::json!([{ "name": "per_user", "key": { "header": "x-user-id" }, "rate": 1, "per": "10s" }]),
    ))
    .unwrap();
    doc["access_log"] = serde_json::json!({ "path": log });
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;

    // The client's id is kept, forwarded and returned.
    let r = get(
        gw.addr,
        "/api/kept",
        &[("x-user-id", "u1"), ("x-request-id", "client-id-1")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));
    assert_eq!(json(&r)["headers"]["x-request-id"], "client-id-1");
    let kept_bytes = r.body.len();

    // Without one, a new id is made, forwarded and returned.
    let r = get(gw.addr, "/api/new", &[("x-user-id", "u2")])
        .await
        .unwrap();
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(json(&r)["headers"]["x-request-id"], id.as_str());

    // A limited request and one for no route are logged too.
    assert_eq!(status_for(gw.addr, "lim").await, 200);
    let limited = get(
        gw.addr,
        "/api/x",
        &[("x-user-id", "lim"), ("x-request-id", "limited-1")],
    )
    .await
    .unwrap();
    assert_eq!(limited.status, 429);
    let missing = get(gw.addr, "/nowhere", &[("x-request-id", "missing-1")])
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-request-id"), Some("missing-1"));

    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        if lines.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 5, "{lines:?}");
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
            .clone()
    };
    let kept = by_id("client-id-1");
    assert_eq!(kept["method"], "GET");
    assert_eq!(kept["path"], "/api/kept");
    assert_eq!(kept["route"], "/api");
    assert_eq!(kept["upstream"], "pool");
    assert_eq!(kept["node"], "a");
    assert_eq!(kept["status"], 200);
    assert_eq!(kept["outcome"], "proxied");
    assert_eq!(kept["bytes"], kept_bytes);
    assert_eq!(kept["complete"], true);
    assert_eq!(kept["client"], "127.0.0.1");
    assert!(kept["ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(by_id(&id)["path"], "/api/new");
    let limited = by_id("limited-1");
    assert_eq!(
        (&limited["status"], &limited["outcome"], &limited["node"]),
        (
            &429.into(),
            &"rate_limited".into(),
            &serde_json::Value::Null
        )
    );
    let missing = by_id("missing-1");
    assert_eq!(
        (&missing["status"], &missing["outcome"], &missing["route"]),
        (&404.into(), &"refused".into(), &serde_json::Value::Null)
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_can_be_turned_off() {
    let a = upstream("a", false).await;
    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["request_id"] = false.into();
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;
    let r = get(gw.addr, "/api/x", &[("x-user-id", "u")]).await.unwrap();
    assert_eq!(r.header("x-request-id"), None);
    assert!(json(&r)["headers"].get("x-request-id").is_none());
    gw.shutdown().await;
}
