//! Responses made from stored ones (RFC 9111 §4): `Age` generated (§4, §5.1), the client's
//! own conditional request answered `304` (§4.3.2), `HEAD` answered from a stored `GET`
//! (RFC 9110 §9.3.2), one byte range answered `206` (RFC 9110 §14); and `Cache-Status`
//! (RFC 9211) on every response.

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, DATE, ETAG, EXPIRES,
    HeaderValue, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, Response, StatusCode};

use super::body::CacheBody;
use super::range::ByteRange;
use super::status::CacheStatus;
use super::stored::StoredResponse;
use super::validation::not_modified;

/// What the client asked for, kept when its request goes upstream.
#[derive(Debug, Default)]
pub(crate) struct Asked {
    pub(crate) head: bool,
    /// Its `If-None-Match` and `If-Modified-Since` lines.
    pub(crate) conditions: HeaderMap,
    pub(crate) range: Option<ByteRange>,
}

/// The fields a `304` carries (RFC 9110 §15.4.5), besides `Age` and `Cache-Status`.
const NOT_MODIFIED_FIELDS: [http::header::HeaderName; 7] = [
    CACHE_CONTROL,
    CONTENT_LOCATION,
    DATE,
    ETAG,
    EXPIRES,
    LAST_MODIFIED,
    VARY,
];

/// The answer to `asked` from `stored`, aged `age` seconds, with `status` for the cache
/// `name`.
pub(crate) fn from_stored<B>(
    stored: &StoredResponse,
    age: Option<u64>,
    asked: &Asked,
    status: &CacheStatus,
    name: &str,
) -> Response<CacheBody<B>> {
    let mut res = if !asked.conditions.is_empty()
        && not_modified(&asked.conditions, stored.status, &stored.headers)
    {
        let mut res = Response::new(CacheBody::default());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        let h = res.headers_mut();
        for f in NOT_MODIFIED_FIELDS {
            for v in stored.headers.get_all(&f) {
                h.append(f.clone(), v.clone());
            }
        }
        res
    } else {
        let mut res = Response::new(CacheBody::default());
        *res.status_mut() = stored.status;
        *res.headers_mut() = stored.headers.clone();
        let body = match asked.range.filter(|_| stored.status == StatusCode::OK) {
            Some(range) => match range.within(stored.body.len() as u64) {
                Some((first, last)) => {
                    *res.status_mut() = StatusCode::PARTIAL_CONTENT;
                    let h = res.headers_mut();
                    let total = stored.body.len();
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{total}")) {
                        h.insert(CONTENT_RANGE, v);
                    }
                    h.insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                    stored.body.slice(first as usize..=last as usize)
                }
                None => stored.body.clone(),
            },
            None => stored.body.clone(),
        };
        if !asked.head {
            *res.body_mut() = CacheBody::full(body);
        } else if !res.headers().contains_key(CONTENT_LENGTH) {
            res.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        res
    };
    if let Some(age) = age {
        res.headers_mut().insert(AGE, HeaderValue::from(age));
    }
    status.write(name, res.headers_mut());
    res
}

/// Answers a client's conditional request with `304` when `res` (a full `200` the cache
/// forwarded or stored) matches its validators; else gives `res` back.
pub(crate) fn conditional<B>(res: Response<CacheBody<B>>, asked: &Asked) -> Response<CacheBody<B>> {
    if asked.conditions.is_empty() || !not_modified(&asked.conditions, res.status(), res.headers())
    {
        return res;
    }
    let (parts, _) = res.into_parts();
    let mut out = Response::new(CacheBody::full(Bytes::new()));
    *out.status_mut() = StatusCode::NOT_MODIFIED;
    let h = out.headers_mut();
    for f in NOT_MODIFIED_FIELDS
        .iter()
        .chain([&AGE, &super::status::CACHE_STATUS])
    {
        for v in parts.headers.get_all(f) {
            h.append(f.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::IF_NONE_MATCH;

    fn stored() -> StoredResponse {
        let mut h = HeaderMap::new();
        h.insert(ETAG, HeaderValue::from_static("\"v1\""));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
        h.insert("x-a", HeaderValue::from_static("1"));
        StoredResponse::new(StatusCode::OK, h, Bytes::from_static(b"0123456789A"))
    }

    fn body(res: Response<CacheBody<()>>) -> Option<Bytes> {
        match res.into_body().kind {
            super::super::body::Kind::Full(b) => b,
            _ => None,
        }
    }

    #[test]
    fn a_stored_response_carries_its_age_and_the_cache_status() {
        // RFC 9111 §4: generate Age, replacing any present; RFC 9211: Cache-Status.
        let res = from_stored::<()>(
            &stored(),
            Some(7),
            &Asked::default(),
            &CacheStatus::hit(3),
            "c",
        );
        assert_eq!(res.headers()["age"], "7");
        assert_eq!(res.headers()["cache-status"], "c; hit; ttl=3");
        assert_eq!(body(res).unwrap(), "0123456789A");
    }

    #[test]
    fn a_matching_client_validator_is_answered_304_with_the_etag() {
        // RFC 9111 §4.3.2 and RFC 9110 §15.4.5 (a 304 carries ETag).
        let mut asked = Asked::default();
        asked
            .conditions
            .insert(IF_NONE_MATCH, HeaderValue::from_static("\"v1\""));
        let res = from_stored::<()>(&stored(), Some(0), &asked, &CacheStatus::hit(3), "c");
        assert_eq!(res.status(), 304);
        assert_eq!(res.headers()["etag"], "\"v1\"");
        assert!(!res.headers().contains_key("x-a"));
    }

    #[test]
    fn head_has_the_fields_of_get_and_no_body() {
        // RFC 9110 §9.3.2: HEAD is GET without content.
        let asked = Asked {
            head: true,
            ..Asked::default()
        };
        let res = from_stored::<()>(&stored(), Some(0), &asked, &CacheStatus::hit(3), "c");
        assert_eq!(res.headers()["content-length"], "11");
        assert_eq!(body(res), None);
    }

    #[test]
    fn one_range_is_answered_206_from_the_stored_body() {
        // RFC 9110 §14.1.2, §15.3.7.
        let asked = Asked {
            range: ByteRange::parse("bytes=-1"),
            ..Asked::default()
        };
        let res = from_stored::<()>(&stored(), Some(0), &asked, &CacheStatus::hit(3), "c");
        assert_eq!(res.status(), 206);
        assert_eq!(res.headers()["content-range"], "bytes 10-10/11");
        assert_eq!(body(res).unwrap(), "A");
    }
}
