//! The IETF `RateLimit-Policy` and `RateLimit` header fields (feature `http`).
//!
//! A service whose rejection strategy sends header fields ([`Respond`], through
//! [`RateLimitLayer::respond`]) adds them to every response, admitted or not
//! (draft-ietf-httpapi-ratelimit-headers-09):
//!
//! ```text
//! RateLimit-Policy: "global";q=1000;w=1
//! RateLimit-Policy: "per_user";q=10;w=60
//! RateLimit: "per_user";r=7;t=18
//! ```
//!
//! - `RateLimit-Policy` lists every policy the request is under, one field line each, in the
//!   limiter's order: every enforcing limit the request has a key for (a keyed limit that
//!   skips the request, and a shadow limit, are not its policies). The list is the same from
//!   response to response, admitted or denied. A policy is the limit's quota as the draft
//!   means it: `q` units over a window of `w` whole seconds, exactly the quota's rate. A
//!   quota of `count` per a whole number of seconds is sent as it is (`120` per minute:
//!   `q=120;w=60`); another period is scaled to the shortest whole-second window with a
//!   whole quota (5 per 250 ms: `q=20;w=1`; 1 per 300 ms: `q=10;w=3`). The burst is not a
//!   policy parameter: `r` shows it.
//! - `RateLimit` names the binding limit (the one with the fewest cells left, or the one that
//!   denied): `r` the cells left and `t` the seconds until its bucket is full again (both
//!   whole, `t` rounded up). A denied request gets `r=0` and `t` its `Retry-After`; a request
//!   that can never be admitted (its cost is above the burst) gets no `Retry-After`, and
//!   `r`/`t` the bucket's real state.
//!
//! Every integer has at most 15 digits (RFC 8941's `sf-integer`): larger values are capped.
//! Policy values are made when a quota is set, and a request's list is cached per set of
//! policies, so a response copies them without formatting.
//!
//! [`Respond`]: omega_core::reject::Respond
//! [`RateLimitLayer::respond`]: crate::RateLimitLayer::respond

use std::sync::Arc;
use std::time::Duration;

use ::http::HeaderMap;
use ::http::header::{Entry, HeaderName, HeaderValue};
use omega_core::clock::duration_nanos;
use omega_core::http::seconds_rounded_up;

use crate::quota::Quota;

/// The `RateLimit-Policy` field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` field.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The largest RFC 8941 integer.
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;
/// The longest window a policy is scaled to before it is rounded instead (a year).
const MAX_WINDOW_SECS: u128 = 365 * 24 * 3600;

/// A quota as the draft's policy: `(q, w)`, `q` units per `w` whole seconds, exactly the
/// quota's rate when a window of at most a year makes it whole; otherwise the period rounded
/// up to whole seconds and the quota over it rounded down (never more than the limit admits).
pub(crate) fn policy_window(quota: &Quota) -> (u64, u64) {
    const SEC: u128 = 1_000_000_000;
    let period = u128::from(duration_nanos(quota.period())).max(1);
    let count = u128::from(quota.count());
    let (q, w) = if period % SEC == 0 {
        (count, period / SEC)
    } else {
        // q = count × w × 1e9 / period is whole for every multiple w of this window.
        let w = period / gcd(period, count * SEC);
        if w <= MAX_WINDOW_SECS {
            (count * w * SEC / period, w)
        } else {
            let w = period.div_ceil(SEC);
            (count * w * SEC / period, w)
        }
    };
    let cap = u128::from(SF_INTEGER_MAX);
    (q.min(cap) as u64, w.clamp(1, cap) as u64)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The `RateLimit-Policy` item of limit `name` under `quota`: `"name";q=..;w=..`. `None` for a
/// name no header value can carry.
pub(crate) fn policy_value(name: &str, quota: &Quota) -> Option<HeaderValue> {
    let (q, w) = policy_window(quota);
    field(name, (";q=", q), (";w=", w))
}

/// The `RateLimit` item of limit `name`: `"name";r=..;t=..`, `t` in whole seconds rounded up.
pub(crate) fn state(name: &str, remaining: u32, reset: Duration) -> Option<HeaderValue> {
    let t = seconds_rounded_up(reset).min(SF_INTEGER_MAX);
    field(name, (";r=", u64::from(remaining)), (";t=", t))
}

/// The `RateLimit-Policy` and `RateLimit` values of one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fields {
    policies: Arc<[HeaderValue]>,
    state: Option<HeaderValue>,
}

impl Fields {
    pub(crate) fn new(policies: Arc<[HeaderValue]>, state: Option<HeaderValue>) -> Self {
        Fields { policies, state }
    }

    /// Appends the fields to `headers`: one `RateLimit-Policy` line per policy (the name
    /// looked up once for all of them).
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        let mut policies = self.policies.iter().cloned();
        if let Some(first) = policies.next() {
            let mut lines = match headers.entry(RATELIMIT_POLICY) {
                Entry::Occupied(mut lines) => {
                    lines.append(first);
                    lines
                }
                Entry::Vacant(none) => none.insert_entry(first),
            };
            policies.for_each(|policy| lines.append(policy));
        }
        if let Some(state) = self.state {
            headers.append(RATELIMIT, state);
        }
    }
}

/// `"name";a=1;b=2`: a structured-field string item (RFC 8941; `"` and `\` escaped) with
/// two integer parameters, formatted on the stack and copied once into the header value.
fn field(name: &str, a: (&str, u64), b: (&str, u64)) -> Option<HeaderValue> {
    let mut buf = StackBuf::new();
    buf.push(b"\"");
    // The name in runs between the bytes to escape (most names have none).
    let mut rest = name.as_bytes();
    while let Some(i) = rest.iter().position(|&c| c == b'"' || c == b'\\') {
        buf.push(&rest[..i]);
        buf.push(&[b'\\', rest[i]]);
        rest = &rest[i + 1..];
    }
    buf.push(rest);
    buf.push(b"\"");
    for (key, value) in [a, b] {
        buf.push(key.as_bytes());
        buf.push_u64(value);
    }
    match buf.overflow {
        None => HeaderValue::from_bytes(&buf.bytes[..buf.len]).ok(),
        Some(long) => HeaderValue::try_from(long).ok(),
    }
}

/// A small formatting buffer that spills to a `Vec` only for very long limit names.
struct StackBuf {
    bytes: [u8; 128],
    len: usize,
    overflow: Option<Vec<u8>>,
}

impl StackBuf {
    fn new() -> Self {
        StackBuf {
            bytes: [0; 128],
            len: 0,
            overflow: None,
        }
    }

    #[inline]
    fn push(&mut self, data: &[u8]) {
        if let Some(v) = &mut self.overflow {
            v.extend_from_slice(data);
        } else if self.len + data.len() <= self.bytes.len() {
            self.bytes[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
        } else {
            let mut v = self.bytes[..self.len].to_vec();
            v.extend_from_slice(data);
            self.overflow = Some(v);
        }
    }

    fn push_u64(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_draft() {
        let q = Quota::per_minute(10);
        assert_eq!(
            policy_value("per \"user\"", &q).unwrap(),
            r#""per \"user\"";q=10;w=60"#
        );
        assert_eq!(
            state("per \"user\"", 7, Duration::from_millis(17_001)).unwrap(),
            r#""per \"user\"";r=7;t=18"#
        );
        // Escapes at either end and side by side.
        assert_eq!(
            state("\"a\\\"\\", 1, Duration::ZERO).unwrap(),
            r#""\"a\\\"\\";r=1;t=0"#
        );
        let long = "x".repeat(200);
        assert_eq!(
            policy_value(&long, &Quota::per_second(1)).unwrap(),
            format!("\"{long}\";q=1;w=1").as_str()
        );
        assert_eq!(
            state("g", 0, Duration::MAX).unwrap(),
            r#""g";r=0;t=999999999999999"#
        );
    }

    #[test]
    fn fields_are_appended_after_lines_already_there_in_order() {
        let q = Quota::per_minute(10);
        let policies: Arc<[HeaderValue]> = Arc::from(vec![
            policy_value("a", &q).unwrap(),
            policy_value("b", &q).unwrap(),
        ]);
        let state = state("a", 3, Duration::from_secs(6));
        for earlier in [None, Some("\"inner\";q=1;w=1")] {
            let mut headers = HeaderMap::new();
            if let Some(v) = earlier {
                headers.insert(RATELIMIT_POLICY, HeaderValue::from_static(v));
            }
            Fields::new(policies.clone(), state.clone()).apply(&mut headers);
            let lines: Vec<_> = headers.get_all(RATELIMIT_POLICY).iter().collect();
            let mut want: Vec<&HeaderValue> = Vec::new();
            let inner = earlier.map(HeaderValue::from_static);
            want.extend(inner.as_ref());
            want.extend(policies.iter());
            assert_eq!(lines, want);
            assert_eq!(headers.get(RATELIMIT), state.as_ref());
        }
    }

    #[test]
    fn policies_are_the_quota_over_whole_seconds() {
        let ms = Duration::from_millis;
        for (count, period, want) in [
            (100, Duration::from_secs(1), (100, 1)),
            (3, Duration::from_secs(60), (3, 60)),
            (5, ms(250), (20, 1)),
            (1, ms(300), (10, 3)),
            (3, ms(1_500), (2, 1)),
            (7, ms(7), (1_000, 1)),
            (1, Duration::from_nanos(1_000_000_007), (1, 2)),
        ] {
            let q = Quota::new(count, period).unwrap();
            assert_eq!(policy_window(&q), want, "{q:?}");
        }
    }
}
