//! `Vary` (RFC 9111 §4.1): a stored response answers only requests whose selecting fields
//! match those of the request that caused it to be stored.

use super::support::*;

/// An origin whose responses vary on `vary` and whose body names the request's
/// `Accept-Language` and the request's number.
async fn varying(vary: &'static str) -> Origin {
    Origin::start(move |seen, n| {
        let lang = seen
            .headers
            .get("accept-language")
            .map_or("-", |v| v.to_str().unwrap());
        res(
            200,
            &[("cache-control", "max-age=3600"), ("vary", vary)],
            format!("{lang} {n}"),
        )
    })
    .await
}

// RFC 9111 §4.1: a stored response with `Vary` is reused only for requests whose selecting
// fields match; several responses (secondary keys) are stored for one URI.
#[tokio::test]
async fn vary_selects_the_stored_response_by_the_named_request_fields() {
    let origin = varying("Accept-Language").await;
    let rig = Rig::new(&origin);
    assert_eq!(
        rig.get("/a", &[("accept-language", "en")]).await.body,
        "en 1"
    );
    let fr = rig.get("/a", &[("accept-language", "fr")]).await;
    assert_eq!(fr.body, "fr 2");
    assert!(fr.cache_status().contains("fwd=vary-miss"), "{fr:?}");
    for (lang, body) in [("en", "en 1"), ("fr", "fr 2")] {
        let hit = rig.get("/a", &[("accept-language", lang)]).await;
        assert!(hit.hit(), "{lang}");
        assert_eq!(hit.body, body);
    }
    assert_eq!(origin.calls("/a"), 2);
}

// RFC 9111 §4.1: a selecting field absent from the original request matches only a request
// where it is absent too.
#[tokio::test]
async fn an_absent_selecting_field_matches_only_its_absence() {
    let origin = varying("accept-language").await;
    let rig = Rig::new(&origin);
    assert_eq!(rig.get("/a", &[]).await.body, "- 1");
    assert_eq!(rig.get("/a", &[("accept-language", "")]).await.body, " 2");
    assert!(rig.get("/a", &[]).await.hit());
    assert_eq!(
        rig.get("/a", &[("accept-language", "en")]).await.body,
        "en 3"
    );
}

// RFC 9111 §4.1: selecting fields may be normalized (whitespace in lists, field lines
// combined); the field names in `Vary` are case-insensitive, and every listed field counts.
#[tokio::test]
async fn selecting_fields_are_compared_normalized() {
    let origin = varying("ACCEPT-LANGUAGE, X-Device").await;
    let rig = Rig::new(&origin);
    rig.get(
        "/a",
        &[("accept-language", "en, fr"), ("x-device", "phone")],
    )
    .await;
    assert!(
        rig.get("/a", &[("accept-language", "en,fr"), ("x-device", "phone")])
            .await
            .hit()
    );
    assert!(
        rig.get(
            "/a",
            &[
                ("accept-language", "en"),
                ("accept-language", "fr"),
                ("x-device", "phone")
            ]
        )
        .await
        .hit()
    );
    assert!(
        !rig.get("/a", &[("accept-language", "en, fr"), ("x-device", "desk")])
            .await
            .hit()
    );
}

// RFC 9111 §4.1: `Vary: *` always fails to match: such a response is never reused (and not
// stored: it could not be).
#[tokio::test]
async fn vary_star_never_matches() {
    let origin = varying("*").await;
    let rig = Rig::new(&origin);
    rig.get("/a", &[("accept-language", "en")]).await;
    let again = rig.get("/a", &[("accept-language", "en")]).await;
    assert_eq!(again.body, "en 2");
    assert!(!again.hit());
    assert!(again.cache_status().ends_with("detail=vary-star"));
    let mixed = varying("accept-language, *").await;
    let rig = Rig::new(&mixed);
    rig.get("/a", &[]).await;
    assert!(!rig.get("/a", &[]).await.hit());
}
