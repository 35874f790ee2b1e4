//! Freshness (RFC 9111 §4.2): a response's age when it arrives (§4.2.3) and its freshness
//! lifetime (§4.2.1), explicit or heuristic (§4.2.2).

use std::time::Duration;

use http::header::{AGE, DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, StatusCode};

use super::date;
use super::directives::{DELTA_MAX, Delta, ResponseDirectives};

/// The statuses RFC 9110 §15.1 defines as heuristically cacheable (206 aside: partial
/// content is not stored).
pub const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Seconds since the Unix epoch, on the wall clock.
pub(crate) fn now_secs() -> i64 {
    (crate::entry::wall_ms() / 1000) as i64
}

/// The `Date` of a response, if it has a valid one.
pub(crate) fn date_value(headers: &HeaderMap) -> Option<i64> {
    headers
        .get(DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse)
}

/// `age_value` (§4.2.3): the first `Age` line (§5.1: "use the first field line"), its first
/// list member, parameters aside; 0 when that is not a non-negative integer (the value is
/// ignored).
pub(crate) fn age_value(headers: &HeaderMap) -> u64 {
    let Some(v) = headers.get(AGE).and_then(|v| v.to_str().ok()) else {
        return 0;
    };
    let first = v.split(',').next().unwrap_or("");
    let first = first
        .split(';')
        .next()
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    super::directives::delta_seconds(first).unwrap_or(0)
}

/// `corrected_initial_age` (§4.2.3) of a response asked for at `request_time` and received at
/// `response_time` (Unix seconds): the larger of its apparent age and its corrected `Age`.
pub(crate) fn initial_age(headers: &HeaderMap, request_time: i64, response_time: i64) -> u64 {
    let apparent = date_value(headers).map_or(0, |d| (response_time - d).max(0) as u64);
    let delay = (response_time - request_time).max(0) as u64;
    let corrected = age_value(headers).saturating_add(delay);
    apparent.max(corrected).min(DELTA_MAX)
}

/// How a cache makes up a lifetime for responses that carry none (§4.2.2).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Heuristic {
    /// The share of the time since `Last-Modified` (10%: the RFC's "typical setting").
    pub(crate) percent: u8,
    /// The longest heuristic lifetime.
    pub(crate) max: Duration,
    /// The lifetime of responses without `Last-Modified` (none by default).
    pub(crate) default: Option<Duration>,
    /// The statuses that may get one.
    pub(crate) statuses: Vec<u16>,
}

impl Default for Heuristic {
    fn default() -> Self {
        Heuristic {
            percent: 10,
            max: Duration::from_secs(86_400),
            default: None,
            statuses: HEURISTIC_STATUSES.to_vec(),
        }
    }
}

/// A response's freshness lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// From `s-maxage`, `max-age` or `Expires` (0 when invalid: stale).
    Explicit(u64),
    /// Made up by the cache (§4.2.2).
    Heuristic(u64),
    /// Not cacheable by default and without explicit freshness: not stored.
    Uncacheable,
}

impl Lifetime {
    pub(crate) fn secs(self) -> u64 {
        match self {
            Lifetime::Explicit(s) | Lifetime::Heuristic(s) => s,
            Lifetime::Uncacheable => 0,
        }
    }
}

/// The freshness lifetime of a response for a shared cache (§4.2.1): the first of
/// `s-maxage`, `max-age`, `Expires` minus `Date` (or the time it was received); else a
/// heuristic, for heuristically cacheable statuses and `public` responses only (§4.2.2, §3).
pub(crate) fn lifetime(
    cc: &ResponseDirectives,
    headers: &HeaderMap,
    status: StatusCode,
    response_time: i64,
    heuristic: &Heuristic,
) -> Lifetime {
    for delta in [cc.s_maxage, cc.max_age] {
        match delta {
            Delta::Valid(s) => return Lifetime::Explicit(s),
            Delta::Invalid => return Lifetime::Explicit(0),
            Delta::Absent => {}
        }
    }
    let mut expires = headers.get_all(EXPIRES).iter();
    if let Some(first) = expires.next() {
        // Two different `Expires` lines: the response is stale (§4.2.1). An invalid date,
        // "0" above all, is a time in the past (§5.3).
        if expires.any(|other| other != first) {
            return Lifetime::Explicit(0);
        }
        let Some(at) = first.to_str().ok().and_then(date::parse) else {
            return Lifetime::Explicit(0);
        };
        let base = date_value(headers).unwrap_or(response_time);
        return Lifetime::Explicit((at - base).max(0) as u64);
    }
    if !cc.public && !heuristic.statuses.contains(&status.as_u16()) {
        return Lifetime::Uncacheable;
    }
    let last_modified = headers
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(date::parse);
    let secs = match last_modified {
        Some(lm) => {
            let base = date_value(headers).unwrap_or(response_time);
            let since = (base - lm).max(0) as u64;
            (since * u64::from(heuristic.percent) / 100).min(heuristic.max.as_secs())
        }
        None => heuristic.default.map_or(0, |d| d.as_secs()),
    };
    Lifetime::Heuristic(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const NOW: i64 = 1_700_000_000;

    fn life(pairs: &[(&'static str, String)], status: u16) -> Lifetime {
        let h = headers(pairs);
        let cc = ResponseDirectives::of(&h);
        lifetime(
            &cc,
            &h,
            StatusCode::from_u16(status).unwrap(),
            NOW,
            &Heuristic::default(),
        )
    }

    #[test]
    fn s_maxage_then_max_age_then_expires_minus_date() {
        // RFC 9111 §4.2.1: the first match of s-maxage (shared caches), max-age, Expires - Date.
        let d = date::format(NOW);
        let e = date::format(NOW + 100);
        assert_eq!(
            life(&[("cache-control", "max-age=50, s-maxage=5".into())], 200),
            Lifetime::Explicit(5)
        );
        assert_eq!(
            life(
                &[
                    ("cache-control", "max-age=50".into()),
                    ("expires", e.clone())
                ],
                200
            ),
            Lifetime::Explicit(50)
        );
        assert_eq!(
            life(&[("expires", e.clone()), ("date", d)], 200),
            Lifetime::Explicit(100)
        );
        // Without Date, Expires counts from the time the response was received.
        assert_eq!(life(&[("expires", e)], 599), Lifetime::Explicit(100));
    }

    #[test]
    fn an_invalid_expires_is_in_the_past() {
        // RFC 9111 §5.3: invalid dates, especially "0", are already expired.
        assert_eq!(life(&[("expires", "0".into())], 200), Lifetime::Explicit(0));
        let e1 = date::format(NOW + 100);
        let e2 = date::format(NOW + 200);
        assert_eq!(
            life(&[("expires", e1), ("expires", e2)], 200),
            Lifetime::Explicit(0)
        );
    }

    #[test]
    fn heuristic_freshness_is_a_tenth_of_the_last_modified_age_bounded() {
        // RFC 9111 §4.2.2: a fraction (typically 10%) of the time since Last-Modified, only
        // without explicit expiration, for heuristically cacheable statuses or `public`.
        let d = date::format(NOW);
        let lm = date::format(NOW - 10_000);
        assert_eq!(
            life(&[("date", d.clone()), ("last-modified", lm.clone())], 200),
            Lifetime::Heuristic(1_000)
        );
        let old = date::format(NOW - 100 * 86_400);
        assert_eq!(
            life(&[("date", d.clone()), ("last-modified", old)], 404),
            Lifetime::Heuristic(86_400)
        );
        assert_eq!(
            life(&[("date", d.clone()), ("last-modified", lm.clone())], 201),
            Lifetime::Uncacheable
        );
        assert_eq!(
            life(
                &[
                    ("date", d),
                    ("last-modified", lm),
                    ("cache-control", "public".into())
                ],
                599
            ),
            Lifetime::Heuristic(1_000)
        );
    }

    #[test]
    fn age_is_the_first_line_s_first_member_and_invalid_ages_are_ignored() {
        // RFC 9111 §5.1: use the first field line; §4.2.3: corrected_initial_age.
        assert_eq!(age_value(&headers(&[("age", "0, 7200".into())])), 0);
        assert_eq!(age_value(&headers(&[("age", "7200, 0".into())])), 7200);
        assert_eq!(
            age_value(&headers(&[("age", "7200".into()), ("age", "0".into())])),
            7200
        );
        for bad in ["abc", "-7200", "7200.0"] {
            assert_eq!(age_value(&headers(&[("age", bad.into())])), 0, "{bad}");
        }
        assert_eq!(
            age_value(&headers(&[("age", "99999999999".into())])),
            DELTA_MAX
        );
        let h = headers(&[("date", date::format(NOW - 30)), ("age", "10".into())]);
        assert_eq!(initial_age(&h, NOW - 2, NOW), 30);
        let h = headers(&[("date", date::format(NOW)), ("age", "100".into())]);
        assert_eq!(initial_age(&h, NOW - 2, NOW), 102);
    }
}
