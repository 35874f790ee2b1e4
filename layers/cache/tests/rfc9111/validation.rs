//! Validation (RFC 9111 §4.3): conditional requests for stale responses, `304`s that update
//! them, and clients' own conditional requests answered from the cache.

use super::support::*;

/// An origin for `/a`: first `200` with `fields`, then `304` with `on_304` to a request whose
/// validator matches `etag` / `last_modified`, else `200` again.
async fn revalidating(
    fields: &'static [(&'static str, &'static str)],
    on_304: &'static [(&'static str, &'static str)],
) -> Origin {
    Origin::start(move |seen, n| {
        let etag = fields.iter().find(|(k, _)| *k == "etag").map(|(_, v)| *v);
        let lm = fields
            .iter()
            .find(|(k, _)| *k == "last-modified")
            .map(|(_, v)| *v);
        let inm = seen
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok());
        let ims = seen
            .headers
            .get("if-modified-since")
            .and_then(|v| v.to_str().ok());
        if (inm.is_some() && inm == etag) || (ims.is_some() && ims == lm) {
            res(304, on_304, "")
        } else {
            res(200, fields, format!("body {n}"))
        }
    })
    .await
}

// RFC 9111 §4.3.1: a stale response with an `ETag` is validated with `If-None-Match`; §4.3.3
// and §4.3.4: the `304` makes the stored response fresh again, and it answers.
#[tokio::test]
async fn a_stale_response_is_revalidated_with_if_none_match() {
    let origin = revalidating(
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
        &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    let validated = rig.get("/a", &[]).await;
    assert_eq!(origin.last("/a").headers["if-none-match"], "\"v1\"");
    assert_eq!(
        (validated.status.as_u16(), validated.body.as_str()),
        (200, "body 1")
    );
    assert!(
        validated
            .cache_status()
            .starts_with("omega; fwd=stale; fwd-status=304; ttl=")
    );
    assert!(validated.cache_status().ends_with("; stored"));
    assert!(rig.get("/a", &[]).await.hit(), "fresh again");
    assert_eq!(origin.calls("/a"), 2);
}

// RFC 9111 §4.3.1: without an `ETag`, `Last-Modified` goes in `If-Modified-Since`.
#[tokio::test]
async fn a_stale_response_is_revalidated_with_if_modified_since() {
    const LM: &str = "Wed, 01 Jan 2020 00:00:00 GMT";
    let origin = revalidating(
        &[("cache-control", "max-age=10"), ("last-modified", LM)],
        &[("cache-control", "max-age=10"), ("last-modified", LM)],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(rig.get("/a", &[]).await.body, "body 1");
    assert_eq!(origin.last("/a").headers["if-modified-since"], LM);
}

// RFC 9111 §3.2: a `304` replaces the stored fields it carries, all but `Content-Length`, and
// the stored fields it omits are kept.
#[tokio::test]
async fn a_304_updates_the_stored_fields_except_content_length() {
    let origin = revalidating(
        &[
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("x-a", "1"),
            ("x-kept", "k"),
        ],
        &[
            ("cache-control", "max-age=3600"),
            ("etag", "\"v1\""),
            ("x-a", "2"),
            ("content-length", "99"),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    rig.get("/a", &[]).await;
    rig.advance(600);
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit(), "the 304's max-age=3600 applies");
    assert_eq!((hit.field("x-a"), hit.field("x-kept")), ("2", "k"));
    assert_eq!(hit.body, "body 1");
    assert_eq!(hit.field("content-length"), "6");
}

// RFC 9111 §4.3.3: a full response to a validation request replaces the stored one.
#[tokio::test]
async fn a_full_response_to_a_validation_replaces_the_stored_response() {
    let origin = counting(
        200,
        &[("cache-control", "max-age=10"), ("etag", "\"changes\"")],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    rig.advance(20);
    assert_eq!(rig.get("/a", &[]).await.body, "2");
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit());
    assert_eq!(hit.body, "2");
}

// RFC 9111 §4.3.4: a `304` whose strong validator matches no stored response selects none, and
// the cache "MUST NOT use the new response to update any stored responses"; §4.3.3 and §4.3.4
// leave the stored response unusable for the request, so a client that sent a plain GET gets a
// full response: the cache repeats the request without the conditional (as RFC 7232 §4.1 /
// RFC 2616 §10.3.5 spell out), stores that response, and never hands the client a `304` it did
// not ask for.
#[tokio::test]
async fn a_304_with_another_validator_is_not_used_and_the_request_repeated_unconditionally() {
    let origin = Origin::start(|seen, n| {
        if seen.headers.contains_key("if-none-match") {
            // The representation changed to "v2", yet the origin answers 304 to "v1".
            res(
                304,
                &[("cache-control", "max-age=10"), ("etag", "\"v2\"")],
                "",
            )
        } else {
            let etag = if n == 1 { "\"v1\"" } else { "\"v2\"" };
            res(
                200,
                &[("cache-control", "max-age=10"), ("etag", etag)],
                format!("body {n}"),
            )
        }
    })
    .await;
    let rig = Rig::new(&origin);
    assert_eq!(rig.get("/a", &[]).await.body, "body 1");
    rig.advance(20);
    let answer = rig.get("/a", &[]).await;
    assert_eq!(
        (
            answer.status.as_u16(),
            answer.body.as_str(),
            answer.field("etag")
        ),
        (200, "body 3", "\"v2\""),
        "the plain GET gets a full response, not the 304: {answer:?}"
    );
    assert_eq!(
        origin.calls("/a"),
        3,
        "the validation, then the unconditional request"
    );
    let last = origin.last("/a");
    assert!(
        !last.headers.contains_key("if-none-match")
            && !last.headers.contains_key("if-modified-since"),
        "the repeated request is unconditional: {:?}",
        last.headers
    );
    let hit = rig.get("/a", &[]).await;
    assert!(hit.hit(), "the full response is stored: {hit:?}");
    assert_eq!((hit.body.as_str(), hit.field("etag")), ("body 3", "\"v2\""));
}

// RFC 9111 §5.2.2.4: an unqualified `no-cache` response is stored but validated before every
// reuse.
#[tokio::test]
async fn a_no_cache_response_is_validated_before_every_reuse() {
    let origin = revalidating(
        &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
        &[("etag", "\"v1\"")],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    for i in 2..5 {
        let a = rig.get("/a", &[]).await;
        assert_eq!(a.body, "body 1");
        assert_eq!(origin.calls("/a"), i);
        assert_eq!(origin.last("/a").headers["if-none-match"], "\"v1\"");
    }
}

// RFC 9111 §4.3.2: a cache answers a client's `If-None-Match` from a stored response: `304`
// when it matches (with the `ETag`, RFC 9110 §15.4.5), the response when not.
#[tokio::test]
async fn a_client_if_none_match_is_answered_from_the_cache() {
    let origin = counting(200, &[("cache-control", "max-age=100"), ("etag", "\"v1\"")]).await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    let matched = rig.get("/a", &[("if-none-match", "\"v0\", \"v1\"")]).await;
    assert!(matched.hit());
    assert_eq!(matched.status, 304);
    assert_eq!(matched.field("etag"), "\"v1\"");
    let other = rig.get("/a", &[("if-none-match", "W/\"v2\"")]).await;
    assert_eq!((other.status.as_u16(), other.body.as_str()), (200, "1"));
    assert_eq!(origin.calls("/a"), 1);
}

// RFC 9111 §4.3.2: without `If-None-Match`, `If-Modified-Since` is evaluated against the
// stored `Last-Modified`; `If-None-Match` takes precedence when both are sent.
#[tokio::test]
async fn if_modified_since_is_answered_and_if_none_match_takes_precedence() {
    const LM: &str = "Wed, 01 Jan 2020 00:00:00 GMT";
    let origin = counting(
        200,
        &[
            ("cache-control", "max-age=100"),
            ("etag", "\"v1\""),
            ("last-modified", LM),
        ],
    )
    .await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[]).await;
    assert_eq!(
        rig.get("/a", &[("if-modified-since", LM)]).await.status,
        304
    );
    let earlier = "Tue, 31 Dec 2019 00:00:00 GMT";
    assert_eq!(
        rig.get("/a", &[("if-modified-since", earlier)])
            .await
            .status,
        200
    );
    let both = rig
        .get(
            "/a",
            &[("if-none-match", "\"v1\""), ("if-modified-since", earlier)],
        )
        .await;
    assert_eq!(both.status, 304);
}

// RFC 9111 §4.3.2: a client's validators are for the cache when it stores a response: on a
// miss the cache fetches the full response to store, and answers the validators itself.
#[tokio::test]
async fn on_a_miss_the_cache_fills_itself_and_answers_the_client_validators() {
    let origin = counting(200, &[("cache-control", "max-age=100"), ("etag", "\"v1\"")]).await;
    let rig = Rig::new(&origin);
    let first = rig.get("/a", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, 304);
    assert!(!origin.last("/a").headers.contains_key("if-none-match"));
    assert_eq!(rig.get("/a", &[]).await.body, "1");
    assert_eq!(origin.calls("/a"), 1);
}
