//! Generated hostile input, bounded in count: the configuration parser and the header parsers
//! (forwarding headers, `Cache-Control`, `Host`, paths, rate-limit keys) never panic, and every
//! rejection is a clear error or a 4xx.

mod support;

use std::net::SocketAddr;

use omega_gateway::GatewayConfig;
use proptest::prelude::*;
use support::{json, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// JSON values shaped like configuration files: the known field names at any depth, with
/// values of any kind.
fn config_like() -> impl Strategy<Value = serde_json::Value> {
    let keys = prop::sample::select(vec![
        "listen",
        "admin",
        "upstreams",
        "routes",
        "nodes",
        "id",
        "url",
        "key",
        "header",
        "limits",
        "name",
        "rate",
        "per",
        "burst",
        "prefix",
        "upstream",
        "timeout",
        "breaker",
        "server",
        "tls",
        "cache",
        "adaptive",
        "health_check",
        "trusted_proxies",
        "redis",
        "access_log",
        "failover",
        "retry_budget",
        "protocol",
        "max_body",
        "algorithm",
    ]);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "1s",
            "0s",
            "5m",
            "http://127.0.0.1:1",
            "/api",
            "vegas",
            "h2c",
            "global"
        ])
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// How many inputs a fuzzer generates: `default` in the test suite, `OMEGA_FUZZ_CASES` when the
/// campaign (`scripts/campaign.sh`) runs it for longer.
fn cases(default: u32) -> u32 {
    std::env::var("OMEGA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2_000), ..ProptestConfig::default() })]

    #[test]
    fn the_configuration_parser_never_panics(doc in config_like(), text in "[ -~]{0,64}") {
        for input in [doc.to_string(), text] {
            if let Err(e) = GatewayConfig::from_json(&input) {
                prop_assert!(!e.to_string().trim().is_empty());
            }
        }
    }
}

/// One raw HTTP/1.1 request; the status of its answer.
async fn status_of(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(request).await.ok()?;
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        prop::sample::select(vec![
            "for=\"[2001:db8::1]:443\"",
            "for=_hidden;proto=https",
            "for=unknown, for=\"[::1",
            "203.0.113.9, 10.0.0.1",
            "max-age=-1, no-cache=\"set-cookie",
            "s-maxage=99999999999999999999",
            "a,for=203.0.113.9",
            "private=\"x, no-store",
            ";;;",
            "%2e%2e/%2F",
        ])
        .prop_map(str::to_owned),
    ]
}

#[test]
fn hostile_headers_and_paths_get_answers_not_panics() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (gw, admin) = rt.block_on(async {
        let a = upstream("a", false).await;
        let doc = serde_json::json!({
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "trusted_proxies": ["127.0.0.1/32"],
            "forwarded_header": "forwarded",
            "upstreams": { "pool": {
                "nodes": [{ "id": "a", "url": format!("http://{}", a.addr) }],
                "key": { "header": "x-user-id" }
            } },
            "routes": [
                { "prefix": "/api", "upstream": "pool", "cache": {},
                  "limits": [
                      { "name": "ip", "key": "client_ip", "rate": 1000000, "per": "1s" },
                      { "name": "user", "key": { "header": "x-user-id" }, "rate": 1000000, "per": "1s" }
                  ] }
            ]
        });
        let config = GatewayConfig::from_json(&doc.to_string()).unwrap();
        let gw = support::start(config).await;
        let admin = gw.admin_addr;
        (gw, admin)
    });
    let addr = gw.addr;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(300),
        ..ProptestConfig::default()
    });
    // Mostly requests that pass the checks at the door (a valid Host, a plain path), so that
    // the forwarding, cache and key parsers see the hostile values.
    let host = prop_oneof![
        4 => prop::sample::select(vec!["example.com", "127.0.0.1:8080", "[2001:db8::1]:443"])
            .prop_map(str::to_owned),
        1 => header_value(),
    ];
    let path = prop_oneof![
        4 => "/api/[a-z0-9._~-]{0,12}",
        1 => "(/api)?[!-~]{0,30}",
    ];
    let strategy = (
        path,
        header_value(),
        header_value(),
        header_value(),
        host,
        header_value(),
    );
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u32>::new());
    runner
        .run(
            &strategy,
            |(path, forwarded, xff, cache_control, host, user)| {
                let path = if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                };
                let mut request = format!("GET {path} HTTP/1.1\r\n").into_bytes();
                for (name, value) in [
                    ("host", &host),
                    ("forwarded", &forwarded),
                    ("x-forwarded-for", &xff),
                    ("cache-control", &cache_control),
                    ("x-user-id", &user),
                ] {
                    request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                request.extend_from_slice(b"connection: close\r\n\r\n");
                let status = rt.block_on(status_of(addr, &request));
                // hyper refuses what is not HTTP (a bad path, a value with a bare CR) before the
                // gateway sees it; whatever reaches the gateway gets an answer below 500.
                if let Some(status) = status {
                    *statuses.borrow_mut().entry(status).or_default() += 1;
                    prop_assert!(status < 500, "{status} for {request:?}");
                }
                Ok(())
            },
        )
        .unwrap();
    println!(
        "statuses of {} generated requests: {:?}",
        cases(300),
        statuses.borrow()
    );
    // Still serving after all of that.
    rt.block_on(async {
        let r = omega_testkit::http::get(addr, "/api/x", &[("x-user-id", "u")])
            .await
            .unwrap();
        assert_eq!(json(&r)["node"], "a");
        let _ = admin;
        gw.shutdown().await;
    });
}
