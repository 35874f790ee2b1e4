//! The configuration section: the JSON shape users' files have, every mistake at its field,
//! and limiters built from it.
#![cfg(feature = "serde")]

use std::time::Duration;

use omega_core::config::{Dur, Issues, KeyConfig, from_json};
use omega_core::key::MissingKey;
use omega_rate_limit::config::{LimitConfig, validate_limits};

fn errors(limits: &[LimitConfig]) -> String {
    let mut issues = Issues::new();
    validate_limits(limits, &mut issues);
    issues
        .into_result()
        .map_or_else(|e| e.to_string(), |()| String::new())
}

#[test]
fn files_keep_their_shape() {
    let limits: Vec<LimitConfig> = from_json(
        r#"[
            { "name": "global", "key": "global", "rate": 1000, "per": "1s" },
            { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 60, "per": "1m",
              "burst": 10, "shadow": true, "lease": 5, "missing": "reject" },
            { "name": "per_ip", "key": "client_ip", "rate": 20, "per": "1s" },
            { "name": "per_endpoint", "key": "endpoint", "rate": 5, "per": "250ms" }
        ]"#,
    )
    .unwrap();
    assert_eq!(
        limits[1],
        LimitConfig {
            name: "per_user".into(),
            key: KeyConfig::Header("x-user-id".into()),
            rate: 60,
            per: Dur(Duration::from_secs(60)),
            burst: Some(10),
            shadow: true,
            lease: Some(5),
            missing: MissingKey::Reject,
            on_redis_failure: None,
        }
    );
    // Defaults: no burst (the rate), not shadow, no lease, requests without the key skipped.
    assert_eq!(
        (
            limits[0].burst,
            limits[0].shadow,
            limits[0].lease,
            limits[0].missing
        ),
        (None, false, None, MissingKey::Skip)
    );
    assert_eq!(limits[1].quota().unwrap().burst(), 10);
    assert_eq!(
        limits[3].quota().unwrap().emission_interval(),
        Duration::from_millis(50)
    );
    assert_eq!(errors(&limits), "");
    // What serializes reads back the same.
    let text = serde_json::to_string(&limits).unwrap();
    assert_eq!(from_json::<Vec<LimitConfig>>(&text).unwrap(), limits);

    let e = from_json::<LimitConfig>(
        r#"{ "name": "g", "key": "global", "rate": 1, "per": "1s", "brust": 3 }"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `brust`"), "{e}");
    let e = from_json::<LimitConfig>(r#"{ "name": "g", "key": "global", "rate": 1, "per": "1d" }"#)
        .unwrap_err();
    assert!(e.to_string().starts_with("per: unknown unit"), "{e}");
    let e = from_json::<LimitConfig>(
        r#"{ "name": "g", "key": "global", "rate": 1, "per": "1s", "missing": "deny" }"#,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("missing: unknown variant"), "{e}");
}

#[test]
fn every_mistake_is_reported_at_its_field() {
    let limit = |json: &str| from_json::<LimitConfig>(json).unwrap();
    let limits = [
        limit(r#"{ "name": "per user", "key": "global", "rate": 0, "per": "0s" }"#),
        limit(
            r#"{ "name": "b", "key": { "header": "x user" }, "rate": 5, "per": "1s",
                 "burst": 0, "lease": 0 }"#,
        ),
        limit(r#"{ "name": "b", "key": "global", "rate": 10, "per": "1ms" }"#),
        limit(r#"{ "name": "c", "key": "global", "rate": 4000000000, "per": "1s" }"#),
    ];
    let text = errors(&limits);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("[0].name: ")
            && lines[0].contains(r#"limit name "per user": use 1 to 128 visible ASCII characters"#),
        "{text}"
    );
    assert_eq!(lines[1], "[0].rate: must be at least 1");
    assert!(lines.contains(&"[0].per: must be longer than 0"), "{text}");
    assert!(lines.contains(&"[1].burst: must be at least 1"), "{text}");
    assert!(lines.contains(&"[1].lease: must be at least 1"), "{text}");
    assert!(
        lines.contains(&r#"[1].key.header: "x user" is not a header name"#),
        "{text}"
    );
    assert!(lines.contains(&r#"[2].name: "b" is used twice"#), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[3].rate: 4000000000 per 1s is not a valid quota")),
        "{text}"
    );
    // The caller puts the list where it is in its file.
    let mut issues = Issues::new();
    limits[0].validate(&mut issues.at("routes[2].limits[0]"));
    assert!(
        issues
            .into_result()
            .unwrap_err()
            .to_string()
            .contains("routes[2].limits[0].rate: must be at least 1")
    );
}

#[cfg(feature = "http")]
mod building {
    use omega_core::Backend;
    use omega_core::key::http::{ClientIp, RouteTemplate};
    use omega_core::reject::Refusal;
    use omega_rate_limit::config::rate_limiter;
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;

    fn request(path: &str, template: &str, user: Option<&str>) -> http::Request<()> {
        let mut r = http::Request::get(path);
        if let Some(user) = user {
            r = r.header("x-user-id", user);
        }
        let mut r = r.body(()).unwrap();
        r.extensions_mut().insert(RouteTemplate(template.into()));
        r
    }

    #[test]
    fn no_limits_no_limiter_and_invalid_limits_are_refused_whole() {
        let ip = ClientIp::peer();
        let none = rate_limiter::<()>(&[], &Backend::Memory, "route:/", &ip).unwrap();
        assert!(none.is_none());
        let bad: Vec<LimitConfig> = from_json(
            r#"[{ "name": "a", "key": "global", "rate": 0, "per": "1s" },
                { "name": "b", "key": { "header": "x y" }, "rate": 1, "per": "1s" }]"#,
        )
        .unwrap();
        let e = rate_limiter::<()>(&bad, &Backend::Memory, "route:/", &ip).unwrap_err();
        assert_eq!(
            e.to_string(),
            "[0].rate: must be at least 1\n[1].key.header: \"x y\" is not a header name"
        );
        let good: Vec<LimitConfig> =
            from_json(r#"[{ "name": "a", "key": "global", "rate": 1, "per": "1s" }]"#).unwrap();
        let e = rate_limiter::<()>(&good, &Backend::Memory, "route /x", &ip).unwrap_err();
        assert!(e.to_string().contains("invalid scope"), "{e}");
    }

    #[tokio::test]
    async fn a_section_builds_the_limiter_it_describes() {
        let limits: Vec<LimitConfig> = from_json(
            r#"[
                { "name": "global", "key": "global", "rate": 100, "per": "1m" },
                { "name": "per_user", "key": { "header": "x-user-id" }, "rate": 2, "per": "1m",
                  "missing": "reject" },
                { "name": "per_endpoint", "key": "endpoint", "rate": 3, "per": "1m" },
                { "name": "shadowed", "key": "global", "rate": 1, "per": "1m", "shadow": true }
            ]"#,
        )
        .unwrap();
        let limiter =
            rate_limiter::<()>(&limits, &Backend::Memory, "route:/users", &ClientIp::peer())
                .unwrap()
                .unwrap();
        assert_eq!(limiter.quotas().len(), 4);
        let ok = |r: http::Request<()>| limiter.check_local(&r).is_allowed();
        // The endpoint is the route template: /users/1 and /users/2 share one bucket.
        assert!(ok(request("/users/1", "/users/{id}", Some("a"))));
        assert!(ok(request("/users/2", "/users/{id}", Some("a"))));
        let d = limiter.check_local(&request("/users/3", "/users/{id}", Some("a")));
        assert_eq!(d.denied().unwrap().limit(), "per_user");
        assert!(ok(request("/users/3", "/users/{id}", Some("b"))));
        let d = limiter.check_local(&request("/users/4", "/users/{id}", Some("c")));
        assert_eq!(d.denied().unwrap().limit(), "per_endpoint");
        assert!(ok(request("/teams/4", "/teams/{id}", Some("c"))));
        // The shadow limit never denies; a request without the user is refused.
        let d = limiter.check_local(&request("/teams/5", "/teams/{id}", None));
        let missing = d.key_missing().expect("refused without the user");
        assert_eq!(missing.status(), 400);
        assert!(missing.what().contains("x-user-id"), "{missing}");

        // Through the layer with `.respond()`: 400 for the missing user.
        let svc = omega_rate_limit::RateLimitLayer::new(limiter)
            .respond()
            .layer(service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(()))
            }));
        let r = svc
            .oneshot(request("/teams/6", "/teams/{id}", None))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }

    /// The scope keeps each route's buckets apart in Redis, in keys as the builder's scope
    /// names them.
    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scopes_name_the_redis_keys() {
        let server = omega_testkit::RedisServer::start();
        let backend = Backend::connect(Some(&server.url())).await.unwrap();
        let limits: Vec<LimitConfig> =
            from_json(r#"[{ "name": "global", "key": "global", "rate": 1, "per": "1m" }]"#)
                .unwrap();
        let build = |scope: &str| {
            rate_limiter::<()>(&limits, &backend, scope, &ClientIp::peer())
                .unwrap()
                .unwrap()
        };
        let (users, teams) = (build("route:/users"), build("route:/teams"));
        let get = || request("/", "/", None);
        assert!(users.check(&get()).await.is_allowed());
        assert!(!users.check(&get()).await.is_allowed());
        assert!(teams.check(&get()).await.is_allowed());
        let ttl: i64 = server
            .cli(&["PTTL", "omega:{rl:route:/users:global}"])
            .parse()
            .unwrap();
        assert!(ttl > 0, "PTTL = {ttl}");
    }
}

#[test]
fn the_redis_failure_policy_is_read_and_checked() {
    use omega_rate_limit::config::OnRedisFailure;
    let limits: Vec<LimitConfig> = serde_json::from_str(
        r#"[
            { "name": "a", "key": "global", "rate": 1, "per": "1s", "on_redis_failure": "open" },
            { "name": "b", "key": "global", "rate": 1, "per": "1s", "on_redis_failure": "closed" },
            { "name": "c", "key": "global", "rate": 1, "per": "1s", "on_redis_failure": { "local": 25 } }
        ]"#,
    )
    .unwrap();
    assert_eq!(limits[0].on_redis_failure, Some(OnRedisFailure::Open));
    assert_eq!(limits[1].on_redis_failure, Some(OnRedisFailure::Closed));
    assert_eq!(limits[2].on_redis_failure, Some(OnRedisFailure::Local(25)));
    assert_eq!(
        OnRedisFailure::Local(25).policy(),
        omega_rate_limit::OnBackendFailure::Local { share: 0.25 }
    );
    let bad: Vec<LimitConfig> = serde_json::from_str(
        r#"[{ "name": "d", "key": "global", "rate": 1, "per": "1s", "on_redis_failure": { "local": 0 } }]"#,
    )
    .unwrap();
    let mut issues = omega_core::config::Issues::new();
    omega_rate_limit::config::validate_limits(&bad, &mut issues);
    let e = issues.into_result().unwrap_err();
    assert!(e.to_string().contains("[0].on_redis_failure.local"), "{e}");
}
