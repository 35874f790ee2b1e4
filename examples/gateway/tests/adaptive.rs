//! A route's adaptive concurrency limit: requests in flight beyond it get 503 at once, and
//! the admin API shows the limit it learnt.

mod support;

use std::time::{Duration, Instant};

use omega_gateway::GatewayConfig;
use omega_testkit::http::get;
use support::{config, json, start, upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_adaptive_limit_get_503_at_once() {
    let a = upstream("a", false).await;
    let mut doc = serde_json::to_value(config(&[("a", a.addr)], serde_json::json!([]))).unwrap();
    doc["routes"][0]["adaptive"] =
        serde_json::json!({ "algorithm": "aimd", "min": 1, "max": 2, "initial": 2 });
    let gw = start(GatewayConfig::from_json(&doc.to_string()).unwrap()).await;

    // Six requests at once to an endpoint that takes 800 ms: two are admitted.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                let started = Instant::now();
                let user = format!("u{i}");
                let r = get(addr, "/api/slow", &[("x-user-id", user.as_str())])
                    .await
                    .unwrap();
                (r.status, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in calls {
        outcomes.push(c.await.unwrap());
    }
    println!("six concurrent slow requests with an adaptive limit of 2: {outcomes:?}");
    let admitted = outcomes.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(admitted + refused.len(), 6, "{outcomes:?}");
    assert!((1..=2).contains(&admitted), "{outcomes:?}");
    assert!(
        refused
            .iter()
            .all(|(_, took)| *took < Duration::from_millis(700)),
        "a refusal waited: {outcomes:?}"
    );

    let limits = json(&get(gw.admin_addr, "/limits", &[]).await.unwrap());
    let adaptive = limits["/api"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "adaptive")
        .unwrap_or_else(|| panic!("no adaptive limit in {limits}"))
        .clone();
    assert_eq!(adaptive["algorithm"], "aimd");
    let limit = adaptive["limit"].as_u64().unwrap();
    assert!((1..=2).contains(&limit), "{adaptive}");
    gw.shutdown().await;
}

#[test]
fn a_bad_adaptive_section_is_reported_at_its_path() {
    let mut doc = serde_json::to_value(config(
        &[("a", "127.0.0.1:9".parse().unwrap())],
        serde_json::json!([]),
    ))
    .unwrap();
    doc["routes"][0]["adaptive"] = serde_json::json!({ "algorithm": "vegas", "min": 5, "max": 2 });
    let e = GatewayConfig::from_json(&doc.to_string()).unwrap_err();
    assert!(e.to_string().contains("routes[0].adaptive.max"), "{e}");
}
