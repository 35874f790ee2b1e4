//! The configuration section: the file shapes users write, every mistake reported at its
//! field path, and the objects built from it.
#![cfg(feature = "serde")]

use omega_core::config::{Issues, KeyConfig, from_json};
use omega_shard_router::config::{NodeConfig, PoolConfig, parse_base_url};
use omega_shard_router::{Algorithm, Node, Topology};

fn problems(pool: &PoolConfig) -> Vec<(String, String)> {
    let mut issues = Issues::new();
    pool.validate(&mut issues.at("upstreams.api"));
    match issues.into_result() {
        Ok(()) => Vec::new(),
        Err(e) => e.issues().to_vec(),
    }
}

#[test]
fn files_read_as_users_write_them() {
    let pool: PoolConfig = from_json(
        r#"{
            "nodes": [
                { "id": "a", "url": "http://127.0.0.1:9001" },
                { "id": "b", "url": "http://127.0.0.1:9002", "weight": 3 }
            ]
        }"#,
    )
    .unwrap();
    assert_eq!(
        pool.nodes[0],
        NodeConfig {
            id: "a".into(),
            url: "http://127.0.0.1:9001".into(),
            weight: 1
        }
    );
    assert_eq!(pool.nodes[1].weight, 3);
    assert_eq!(pool.key, None);
    assert_eq!(pool.failover, 2);
    assert!(problems(&pool).is_empty());

    // The key shapes of the old pool section, and core's others.
    for (text, key) in [
        (
            r#"{ "header": "x-user-id" }"#,
            KeyConfig::Header("x-user-id".into()),
        ),
        (r#"{ "path_segment": 1 }"#, KeyConfig::PathSegment(1)),
        (
            r#"{ "query": "tenant" }"#,
            KeyConfig::Query("tenant".into()),
        ),
        (r#""client_ip""#, KeyConfig::ClientIp),
        (r#""path""#, KeyConfig::Path),
    ] {
        let json = format!(
            r#"{{ "nodes": [{{ "id": "a", "url": "http://h:1" }}], "key": {text}, "failover": 1 }}"#
        );
        let pool: PoolConfig = from_json(&json).unwrap();
        assert_eq!(pool.key, Some(key));
        assert_eq!(pool.failover, 1);
    }
}

#[test]
fn unknown_fields_are_refused_in_nodes_and_left_to_the_caller_beside_the_pool() {
    let err = from_json::<PoolConfig>(
        r#"{ "nodes": [{ "id": "a", "url": "http://h:1", "weigth": 2 }] }"#,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("nodes[0].weigth: unknown field `weigth`"),
        "{err}"
    );
    // A section flattened beside the pool (the gateway's breaker) is not the pool's business.
    let pool: PoolConfig = from_json(
        r#"{ "nodes": [{ "id": "a", "url": "http://h:1" }], "breaker": { "window": 20 } }"#,
    )
    .unwrap();
    assert_eq!(pool.nodes.len(), 1);
    let err = from_json::<PoolConfig>(r#"{ "nodes": [], "key": { "cookie": "x" } }"#).unwrap_err();
    assert!(
        err.to_string().starts_with("key: unknown variant `cookie`"),
        "{err}"
    );
}

/// How the gateway's file composes the pool: flattened beside a section of its own.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Upstream {
    #[serde(flatten)]
    pool: PoolConfig,
    #[serde(default)]
    breaker: Option<Breaker>,
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct Breaker {
    window: u32,
}

#[test]
fn the_pool_flattens_beside_other_sections() {
    let up: Upstream = from_json(
        r#"{
            "nodes": [{ "id": "a", "url": "http://h:1", "weight": 2 }],
            "key": { "path_segment": 1 },
            "breaker": { "window": 20 }
        }"#,
    )
    .unwrap();
    assert_eq!(up.pool.nodes[0].weight, 2);
    assert_eq!(up.pool.key, Some(KeyConfig::PathSegment(1)));
    assert_eq!(up.pool.failover, 2);
    assert_eq!(up.breaker.unwrap().window, 20);
    let up: Upstream = from_json(r#"{ "nodes": [], "key": "global", "failover": 3 }"#).unwrap();
    assert_eq!(
        (up.pool.key, up.pool.failover),
        (Some(KeyConfig::Global), 3)
    );
}

#[test]
fn every_mistake_is_reported_at_its_path() {
    let pool: PoolConfig = from_json(
        r#"{
            "nodes": [
                { "id": "", "url": "http://h:1" },
                { "id": "a", "url": "ftp://h:1" },
                { "id": "a", "url": "http://h:1/api", "weight": 0 },
                { "id": "b\u0007", "url": "not a url at all" },
                { "id": "c", "url": "http://h:1?x=1" }
            ],
            "key": { "header": "bad header" },
            "failover": 0
        }"#,
    )
    .unwrap();
    let found = problems(&pool);
    let at = |path: &str| -> Vec<&str> {
        found
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, m)| m.as_str())
            .collect()
    };
    assert_eq!(at("upstreams.api.nodes[0].id"), ["must not be empty"]);
    assert_eq!(
        at("upstreams.api.nodes[1].url"),
        ["\"ftp://h:1\": only http:// and https:// upstreams are supported"]
    );
    assert_eq!(at("upstreams.api.nodes[2].id"), ["\"a\" is used twice"]);
    assert_eq!(
        at("upstreams.api.nodes[2].url"),
        ["\"http://h:1/api\": give the base URL only, without a path"]
    );
    assert_eq!(at("upstreams.api.nodes[2].weight"), ["must be at least 1"]);
    assert!(at("upstreams.api.nodes[3].id")[0].contains("without control characters"));
    assert!(at("upstreams.api.nodes[3].url")[0].contains("is not a URL"));
    assert_eq!(
        at("upstreams.api.nodes[4].url"),
        ["\"http://h:1?x=1\": give the base URL only, without a path"]
    );
    assert_eq!(
        at("upstreams.api.key.header"),
        ["\"bad header\" is not a header name"]
    );
    assert_eq!(
        at("upstreams.api.failover"),
        ["must be at least 1 (the owner)"]
    );
    assert_eq!(found.len(), 10, "{found:#?}");

    let empty: PoolConfig = from_json(r#"{ "nodes": [] }"#).unwrap();
    assert_eq!(
        problems(&empty),
        [(
            "upstreams.api.nodes".to_owned(),
            "at least one node is needed".to_owned()
        )]
    );
}

#[test]
fn the_topology_is_the_default_table_of_the_nodes() {
    let pool: PoolConfig = from_json(
        r#"{ "nodes": [
            { "id": "b", "url": "http://10.0.0.2:80", "weight": 2 },
            { "id": "a", "url": "http://10.0.0.1:80" }
        ] }"#,
    )
    .unwrap();
    let t = pool.topology().unwrap();
    let same = Topology::new(
        Algorithm::table(),
        [
            Node::new("a", "http://10.0.0.1:80"),
            Node::new("b", "http://10.0.0.2:80").with_weight(2),
        ],
    )
    .unwrap();
    assert_eq!(t.nodes(), same.nodes());
    assert_eq!(t.slots(), same.slots());
    assert_eq!(t.epoch(), 1);
    // An unvalidated pool fails at `nodes`.
    let dup: PoolConfig =
        from_json(r#"{ "nodes": [{ "id": "a", "url": "x" }, { "id": "a", "url": "y" }] }"#)
            .unwrap();
    let err = dup.topology().unwrap_err();
    assert_eq!(err.issues()[0].0, "nodes");
}

#[test]
fn base_urls() {
    let uri = parse_base_url("http://127.0.0.1:9001").unwrap();
    assert_eq!(uri.port_u16(), Some(9001));
    assert!(parse_base_url("http://h:1/").is_ok());
    assert!(parse_base_url("http://h").is_ok());
    assert!(parse_base_url("https://h:1").is_ok());
    for bad in [
        "ftp://h:1",
        "h:1",
        "/path",
        "http://h:1/x",
        "http://h:1/?q",
        "",
    ] {
        assert!(parse_base_url(bad).is_err(), "{bad:?}");
    }
}

#[cfg(feature = "http")]
#[tokio::test]
async fn the_pool_builds_its_router() {
    use http::{Request, Response};
    use omega_core::key::http::{AnyKey, ClientIp, Header, Path};
    use omega_shard_router::TopologyHandle;
    use tower::{ServiceExt, service_fn};

    let pool: PoolConfig = from_json(
        r#"{ "nodes": [{ "id": "a", "url": "http://h:1" }, { "id": "b", "url": "http://h:2" }] }"#,
    )
    .unwrap();
    let client_ip = ClientIp::peer();
    assert_eq!(pool.key_source(&client_ip), AnyKey::Path(Path));
    let keyed = PoolConfig {
        key: Some(KeyConfig::Header("x-user-id".into())),
        ..pool.clone()
    };
    assert_eq!(
        keyed.key_source(&client_ip),
        AnyKey::Header(Header::new("x-user-id"))
    );

    let handle = TopologyHandle::new(pool.topology().unwrap());
    let router = pool
        .router(handle.clone(), &client_ip)
        .respond()
        .build(|node: &Node| {
            let url = node.address().to_owned();
            service_fn(move |_: Request<()>| {
                let url = url.clone();
                async move { Ok::<_, std::convert::Infallible>(Response::new(url)) }
            })
        });
    for path in ["/a", "/b/c", "/users/42"] {
        let req = Request::get(path).body(()).unwrap();
        let got = router.clone().oneshot(req).await.unwrap().into_body();
        assert_eq!(got, handle.load().owner(path).unwrap().address());
    }
}
