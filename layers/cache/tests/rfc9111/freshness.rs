//! Freshness (RFC 9111 §4.2): lifetimes from `Cache-Control`, `Expires` and `Date`, or a
//! heuristic; ages from `Age` and `Date`; `Age` generated on reuse.

use super::support::*;

// RFC 9111 §5.2.2.1 and §4.2: a response with `max-age` is fresh while its age is below it.
#[tokio::test]
async fn max_age_response_is_fresh_until_its_age_exceeds_it() {
    let origin = counting(200, &[("cache-control", "max-age=60")]).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(30);
    assert!(rig.get("/a", &[]).await.hit());
    rig.advance(31);
    let stale = rig.get("/a", &[]).await;
    assert_eq!(stale.body, "2");
    assert!(stale.cache_status().contains("fwd=stale"));
}

// RFC 9111 §5.2.2.10 and §4.2.1: for a shared cache, `s-maxage` overrides `max-age` (and
// `Expires`), shorter or longer.
#[tokio::test]
async fn s_maxage_overrides_max_age_for_a_shared_cache() {
    let origin = Origin::start(|seen, n| {
        let cc = if seen.path == "/short" {
            "max-age=3600, s-maxage=10"
        } else {
            "max-age=1, s-maxage=3600"
        };
        res(
            200,
            &[("cache-control", cc), ("expires", "0")],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/short", &[]).await;
    rig.get("/long", &[]).await;
    rig.advance(20);
    assert!(!rig.get("/short", &[]).await.hit());
    assert!(rig.get("/long", &[]).await.hit());
}

// RFC 9111 §4.2.1 and §5.3: without `max-age`, the lifetime is `Expires` minus `Date`.
#[tokio::test]
async fn expires_minus_date_is_the_lifetime_without_max_age() {
    let origin = Origin::start(|_, n| {
        res(
            200,
            &[("date", date(0).as_str()), ("expires", date(60).as_str())],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(30);
    assert!(rig.get("/a", &[]).await.hit());
    rig.advance(40);
    assert!(!rig.get("/a", &[]).await.hit());
}

// RFC 9111 §5.3: a response with `max-age` MUST have its `Expires` ignored.
#[tokio::test]
async fn max_age_overrides_expires() {
    let origin = Origin::start(|_, n| {
        res(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("expires", date(-7200).as_str()),
                ("date", date(0).as_str()),
            ],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    assert!(rig.get("/a", &[]).await.hit());
}

// RFC 9111 §5.3: an invalid `Expires`, "0" above all, is a time in the past.
#[tokio::test]
async fn invalid_expires_is_already_expired() {
    for expires in ["0", "Thu, 18 Aug 2050 02:01:18 UTC", "tomorrow"] {
        let origin = Origin::start(move |_, n| {
            res(
                200,
                &[("expires", expires), ("date", date(0).as_str())],
                format!("{n}"),
            )
        })
        .await;
        let rig = Rig::new(&origin);
        rig.get("/a", &[]).await;
        assert!(!rig.get("/a", &[]).await.hit(), "{expires}");
    }
}

// RFC 9111 §4.2.1 and §1.2.2: freshness information that is invalid (not delta-seconds) or
// repeated with different values leaves the response stale; both argument forms are read.
#[tokio::test]
async fn malformed_or_conflicting_max_age_leaves_the_response_stale() {
    let cases = [
        ("max-age=-3600", false),
        ("max-age=3600a", false),
        ("max-age='3600'", false),
        ("max-age=3600, max-age=1", false),
        ("max-age=\"3600\"", true),
        ("max-age=003600", true),
        ("extension=\"max-age=1\", max-age=3600", true),
    ];
    for (cc, reused) in cases {
        let origin =
            Origin::start(move |_, n| res(200, &[("cache-control", cc)], format!("{n}"))).await;
        let rig = Rig::new(&origin);
        rig.get("/a", &[]).await;
        assert_eq!(rig.get("/a", &[]).await.hit(), reused, "{cc}");
    }
}

// RFC 9111 §1.2.2: a delta-seconds value too large to represent is taken as 2^31.
#[tokio::test]
async fn delta_seconds_beyond_2_pow_31_are_2_pow_31() {
    let origin = counting(200, &[("cache-control", "max-age=99999999999")]).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit());
    let ttl: i64 = hit
        .cache_status()
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2_147_483_000..=2_147_483_648).contains(&ttl), "{ttl}");
}

// RFC 9111 §4.2.2: without explicit expiration, a heuristic lifetime: here 10% of the time
// since `Last-Modified`.
#[tokio::test]
async fn heuristic_freshness_is_a_tenth_of_the_time_since_last_modified() {
    let origin = Origin::start(|_, n| {
        res(
            200,
            &[
                ("date", date(0).as_str()),
                ("last-modified", date(-10_000).as_str()),
            ],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(900);
    assert!(rig.get("/a", &[]).await.hit());
    rig.advance(200);
    assert!(!rig.get("/a", &[]).await.hit());
}

// RFC 9111 §4.2.2: a cache MUST NOT use a heuristic when an explicit expiration is present.
#[tokio::test]
async fn heuristics_are_never_used_with_explicit_expiration() {
    let origin = Origin::start(|_, n| {
        res(
            200,
            &[
                ("cache-control", "max-age=0"),
                ("last-modified", date(-1_000_000).as_str()),
            ],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    assert!(!rig.get("/a", &[]).await.hit());
}

// RFC 9111 §4.2.3: the age a response arrives with (`Age`, and `Date` against the clock)
// counts against its freshness.
#[tokio::test]
async fn the_age_a_response_arrives_with_counts_against_its_freshness() {
    let origin = Origin::start(|seen, n| {
        let fields: Vec<(&str, String)> = match seen.path.as_str() {
            "/age" => vec![
                ("cache-control", "max-age=3600".into()),
                ("age", "7200".into()),
            ],
            "/date" => vec![
                ("cache-control", "max-age=3600".into()),
                ("date", date(-7200)),
            ],
            _ => vec![
                ("cache-control", "max-age=3600".into()),
                ("age", "1800".into()),
            ],
        };
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        res(200, &fields, format!("{n}"))
    })
    .await;
    let rig = Rig::new(&origin);
    for path in ["/age", "/date"] {
        rig.get(path, &[]).await;
        assert!(!rig.get(path, &[]).await.hit(), "{path}");
    }
    rig.get("/young", &[]).await;
    assert!(rig.get("/young", &[]).await.hit());
}

// RFC 9111 §4 and §5.1: reusing a stored response, a cache MUST generate `Age` with its
// current age (§4.2.3), and leaves `Date` as it was.
#[tokio::test]
async fn age_is_generated_from_the_current_age_and_date_is_kept() {
    let origin = Origin::start(|_, n| {
        res(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("age", "30"),
                ("date", date(0).as_str()),
            ],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    let first = rig.get("/a", &[]).await;
    rig.advance(10);
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit());
    let age: u64 = hit.field("age").parse().unwrap();
    assert!((40..=42).contains(&age), "{age}");
    assert_eq!(hit.field("date"), first.field("date"));
}

// RFC 9111 §5.1: a cache uses the first `Age` line and its first member; a value that is not
// a non-negative integer is ignored.
#[tokio::test]
async fn age_values_are_read_from_the_first_line_and_invalid_ones_ignored() {
    let origin = Origin::start(|seen, n| {
        let age = match seen.path.as_str() {
            "/abc" => "abc",
            "/negative" => "-7200",
            "/fresh-first" => "0, 7200",
            _ => "7200, 0",
        };
        res(
            200,
            &[("cache-control", "max-age=3600"), ("age", age)],
            format!("{n}"),
        )
    })
    .await;
    let rig = Rig::new(&origin);
    for (path, reused) in [
        ("/abc", true),
        ("/negative", true),
        ("/fresh-first", true),
        ("/old-first", false),
    ] {
        rig.get(path, &[]).await;
        assert_eq!(rig.get(path, &[]).await.hit(), reused, "{path}");
    }
}

// RFC 9111 §3 and §4.2.2: `public` makes a response storable whatever its status, and lets
// it get a heuristic lifetime without explicit expiration; without `public`, a status that is
// not heuristically cacheable gets none.
#[tokio::test]
async fn public_allows_a_heuristic_lifetime_for_any_final_status() {
    let origin = Origin::start(|seen, n| {
        let lm = date(-100_000);
        let mut fields = vec![("last-modified", lm.as_str())];
        if seen.path == "/public" {
            fields.push(("cache-control", "public"));
        }
        res(201, &fields, format!("{n}"))
    })
    .await;
    let rig = Rig::new(&origin);
    rig.get("/public", &[]).await;
    assert!(rig.get("/public", &[]).await.hit());
    rig.get("/plain", &[]).await;
    assert!(!rig.get("/plain", &[]).await.hit());
}
