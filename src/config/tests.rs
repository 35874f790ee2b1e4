use super::*;

#[cfg(feature = "yaml")]
#[test]
fn yaml_errors_name_the_field_and_syntax_errors_the_line() {
    let err = StackConfig::from_yaml(
        "upstreams:\n  api:\n    nodes: [{ id: a, url: 'http://h:1' }]\n    key: { cookie: x }\nroutes: []\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("upstreams.api.key: unknown variant `cookie`"),
        "{err}"
    );
    let err = StackConfig::from_yaml("routes: [\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
    let err = StackConfig::from_yaml("").unwrap_err().to_string();
    assert!(err.contains("invalid type: null"), "{err}");
}

fn base() -> serde_json::Value {
    serde_json::json!({
        "upstreams": { "api": { "nodes": [{ "id": "a", "url": "http://127.0.0.1:9001" }] } },
        "routes": [{ "prefix": "/api", "upstream": "api",
                     "limits": [{ "name": "g", "key": "global", "rate": 10, "per": "1s" }] }]
    })
}

fn error_of(v: serde_json::Value) -> String {
    StackConfig::from_json(&v.to_string())
        .unwrap_err()
        .to_string()
}

#[test]
fn each_mistake_names_its_field() {
    assert!(StackConfig::from_json(&base().to_string()).is_ok());

    let mut v = base();
    v["routes"][0]["prefix"] = "/café".into();
    let e = error_of(v);
    assert!(
        e.starts_with("routes[0].prefix: \"/café\": write the path as sent"),
        "{e}"
    );

    let mut v = base();
    v["routes"][0]["limits"][0]["rate"] = 0.into();
    assert_eq!(error_of(v), "routes[0].limits[0].rate: must be at least 1");

    let mut v = base();
    v["routes"][0]["limits"][0]["per"] = "1 second".into();
    let e = error_of(v);
    assert!(e.starts_with("routes[0].limits[0].per: "), "{e}");
    assert!(e.contains("unknown unit"), "{e}");

    let mut v = base();
    v["upstreams"]["api"]["nodes"][0]["url"] = "ftp://x:1".into();
    assert!(error_of(v).starts_with("upstreams.api.nodes[0].url: "));

    let mut v = base();
    v["upstreams"]["api"]["nodes"][0]["weigth"] = 2.into();
    let e = error_of(v);
    assert!(
        e.starts_with("upstreams.api.nodes[0].weigth: unknown field `weigth`"),
        "{e}"
    );
    assert!(e.contains("line 1 column"), "{e}");

    let mut v = base();
    v["upstreams"]["api"]["nodez"] = serde_json::json!([]);
    assert!(error_of(v).starts_with("upstreams.api.nodez: unknown field `nodez`"));

    let mut v = base();
    v["routes"][0]["limits"][0]["key"] = serde_json::json!({ "cookie": "x" });
    assert!(error_of(v).starts_with("routes[0].limits[0].key: "));

    let mut v = base();
    v["upstreams"]["api"]["breaker"] = serde_json::json!({ "failure_rate": 150 });
    assert!(error_of(v).starts_with("upstreams.api.breaker"));

    let mut v = base();
    v["forwarded_header"] = "bad header".into();
    v["ipv6_prefix"] = 200.into();
    let e = error_of(v);
    assert!(e.contains("forwarded_header: "), "{e}");
    assert!(e.contains("ipv6_prefix: must be between 0 and 128"), "{e}");

    let mut v = base();
    v["redis"] = "http://127.0.0.1:6379".into();
    assert!(error_of(v).starts_with("redis: "));

    let e = StackConfig::from_json("{ \"routes\": [ }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[cfg(not(feature = "redis"))]
#[test]
fn leases_and_redis_need_the_redis_feature() {
    let mut v = base();
    v["redis"] = "redis://127.0.0.1:6379".into();
    v["routes"][0]["limits"][0]["lease"] = 10.into();
    let e = error_of(v);
    assert!(
        e.contains("redis: shared state needs the `redis` feature"),
        "{e}"
    );
    assert!(
        e.contains("routes[0].limits[0].lease: leases are taken from Redis"),
        "{e}"
    );
}
