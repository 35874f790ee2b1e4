//! Validation (RFC 9111 §4.3): the fields a stored response keeps (§3.1) and how a `304`
//! updates them (§3.2, §4.3.4); the conditional request a cache sends for a stale response
//! (§4.3.1); a client's own conditional request answered from a stored response (§4.3.2,
//! RFC 9110 §13.1.2 and §13.1.3).

use http::header::{
    AGE, CONNECTION, CONTENT_LENGTH, CONTENT_RANGE, DATE, ETAG, HeaderName, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::date;
use super::stored::StoredResponse;

/// Fields that are never stored (§3.1): hop-by-hop fields (RFC 9110 §7.6.1) and those
/// specific to a client's proxy configuration.
const NEVER_STORED: [&str; 3] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authentication-info",
];

/// `true` for a field a cache does not store: hop-by-hop, proxy-specific, named in
/// `Connection` (§3.1).
pub(crate) fn never_stored(name: &HeaderName, headers: &HeaderMap) -> bool {
    [
        CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || NEVER_STORED.contains(&name.as_str())
        || headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
            })
        })
}

/// The opaque part of an entity-tag (`W/` and quotes aside), leniently: unquoted tags too.
fn opaque(tag: &[u8]) -> &[u8] {
    let t = tag.trim_ascii();
    let t = if t.len() >= 2 && (t[0] == b'W' || t[0] == b'w') && t[1] == b'/' {
        &t[2..]
    } else {
        t
    };
    if t.len() >= 2 && t[0] == b'"' && t[t.len() - 1] == b'"' {
        &t[1..t.len() - 1]
    } else {
        t
    }
}

/// Weak comparison (RFC 9110 §8.8.3.2): the opaque tags are equal.
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    opaque(a) == opaque(b) || a.trim_ascii() == b.trim_ascii()
}

/// The members of an `If-None-Match` line: entity-tags (a comma inside quotes belongs to its
/// tag), or `*`.
fn members(line: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && (line[i] == b',' || line[i].is_ascii_whitespace()) {
            i += 1;
        }
        let start = i;
        let mut quoted = false;
        while i < line.len() {
            match line[i] {
                b'"' => quoted = !quoted,
                b',' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        if i > start {
            out.push(line[start..i].trim_ascii());
        }
    }
    out
}

/// Whether a request's `If-None-Match` matches the stored `ETag` (weak comparison, as
/// RFC 9110 §13.1.2 asks for `If-None-Match`); `None` without `If-None-Match`.
fn none_match(req: &HeaderMap, etag: Option<&HeaderValue>) -> Option<bool> {
    let mut lines = req.get_all(IF_NONE_MATCH).iter().peekable();
    lines.peek()?;
    let mut matched = false;
    for line in lines {
        for m in members(line.as_bytes()) {
            if m == b"*" || etag.is_some_and(|e| weak_eq(m, e.as_bytes())) {
                matched = true;
            }
        }
    }
    Some(matched)
}

/// `true` when a client's conditional GET or HEAD is answered `304` by the stored response:
/// `If-None-Match` matches its `ETag`, or, without `If-None-Match`, it was not modified since
/// `If-Modified-Since` (its `Last-Modified`, else its `Date`). `If-None-Match` takes
/// precedence (§4.3.2); an invalid `If-Modified-Since` is ignored.
pub(crate) fn not_modified(req: &HeaderMap, status: StatusCode, headers: &HeaderMap) -> bool {
    if !status.is_success() {
        return false;
    }
    if let Some(matched) = none_match(req, headers.get(ETAG)) {
        return matched;
    }
    let Some(since) = req
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse)
    else {
        return false;
    };
    let modified = [LAST_MODIFIED, DATE]
        .iter()
        .find_map(|f| headers.get(f))
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse);
    modified.is_some_and(|m| m <= since)
}

/// `true` when a response with `headers` has a validator to revalidate it with.
pub(crate) fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED)
}

/// Makes `req` a validation request for `stored` (§4.3.1): its `ETag` in `If-None-Match`,
/// its `Last-Modified` in `If-Modified-Since`, as they were received.
pub(crate) fn make_conditional(req: &mut HeaderMap, stored: &StoredResponse) {
    if let Some(etag) = stored.headers.get(ETAG) {
        req.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.headers.get(LAST_MODIFIED) {
        req.insert(IF_MODIFIED_SINCE, lm.clone());
    }
}

/// `true` when a `304` names another representation than `stored` (a different entity-tag):
/// it cannot update it (§4.3.4).
pub(crate) fn conflicts(res: &HeaderMap, stored: &StoredResponse) -> bool {
    match (res.get(ETAG), stored.headers.get(ETAG)) {
        (Some(new), Some(old)) => !weak_eq(new.as_bytes(), old.as_bytes()),
        _ => false,
    }
}

/// The stored fields updated with those of a `304` or `200`-to-`HEAD` response (§3.2): each
/// received field replaces the stored lines of its name, except the fields never stored, the
/// fields of the stored content (`Content-Length`, `Content-Range`) and `Age` (recomputed).
/// A response without `Date` is dated `received_at` (RFC 9110 §6.6.1).
pub(crate) fn freshen(stored: &HeaderMap, res: &HeaderMap, received_at: i64) -> HeaderMap {
    let mut out = stored.clone();
    for name in res.keys() {
        if never_stored(name, res) || [CONTENT_LENGTH, CONTENT_RANGE, AGE].contains(name) {
            continue;
        }
        out.remove(name);
        for v in res.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    if !res.contains_key(DATE)
        && let Ok(v) = HeaderValue::from_str(&date::format(received_at))
    {
        out.insert(DATE, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stored(pairs: &[(&'static str, &'static str)]) -> StoredResponse {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        StoredResponse::new(StatusCode::OK, h, Bytes::new())
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        stored(pairs).headers
    }

    fn nm(req: &HeaderMap, s: &StoredResponse) -> bool {
        not_modified(req, s.status, &s.headers)
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison_and_takes_precedence() {
        // RFC 9110 §13.1.2 (weak comparison) and RFC 9111 §4.3.2 (precedence over IMS).
        let s = stored(&[
            ("etag", "\"abcdef\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(nm(&req(&[("if-none-match", "\"abcdef\"")]), &s));
        assert!(nm(&req(&[("if-none-match", "W/\"abcdef\"")]), &s));
        assert!(nm(
            &req(&[("if-none-match", "\"1\", \"abcdef\", \"5,6\"")]),
            &s
        ));
        assert!(nm(&req(&[("if-none-match", "*")]), &s));
        assert!(!nm(
            &req(&[
                ("if-none-match", "\"other\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            &s
        ));
    }

    #[test]
    fn if_modified_since_compares_last_modified_or_date() {
        // RFC 9111 §4.3.2: without Last-Modified, the stored Date.
        let s = stored(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let at = |d: &'static str| req(&[("if-modified-since", d)]);
        assert!(nm(&at("Sun, 06 Nov 1994 08:49:37 GMT"), &s));
        assert!(nm(&at("Mon, 07 Nov 1994 08:49:37 GMT"), &s));
        assert!(!nm(&at("Sat, 05 Nov 1994 08:49:37 GMT"), &s));
        assert!(!nm(&at("yesterday"), &s));
        let dated = stored(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(nm(&at("Sun, 06 Nov 1994 08:49:37 GMT"), &dated));
    }

    #[test]
    fn a_304_replaces_stored_fields_but_not_content_length() {
        // RFC 9111 §3.2: add each field of the new response, replacing present values,
        // except Content-Length and the fields excepted from storage.
        let s = stored(&[
            ("cache-control", "max-age=1"),
            ("content-length", "36"),
            ("x-kept", "a"),
            ("x-multi", "1"),
            ("x-multi", "2"),
        ]);
        let res = req(&[
            ("cache-control", "max-age=3600"),
            ("content-length", "10"),
            ("x-multi", "3"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let h = freshen(&s.headers, &res, 0);
        assert_eq!(h["cache-control"], "max-age=3600");
        assert_eq!(h["content-length"], "36");
        assert_eq!(h["x-kept"], "a");
        assert_eq!(h.get_all("x-multi").iter().count(), 1);
        assert!(!h.contains_key("x-hop") && !h.contains_key("connection"));
        let undated = freshen(&s.headers, &HeaderMap::new(), 784_111_777);
        assert_eq!(undated["date"], "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn connection_listed_and_proxy_fields_are_never_stored() {
        // RFC 9111 §3.1.
        let h = req(&[("connection", "a, B")]);
        for n in [
            "a",
            "b",
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "te",
        ] {
            assert!(never_stored(&HeaderName::from_static(n), &h), "{n}");
        }
        assert!(!never_stored(&HeaderName::from_static("c"), &h));
    }
}
