//! The IETF `RateLimit-Policy` and `RateLimit` header fields (feature `http`).
//!
//! A service whose rejection strategy sends header fields ([`Respond`], through
//! [`RateLimitLayer::respond`]) adds them to every response, admitted or not, for the most
//! constrained limit that applied (draft-ietf-httpapi-ratelimit-headers):
//!
//! ```text
//! RateLimit-Policy: "per_user";q=10;w=60
//! RateLimit: "per_user";r=7;t=18
//! ```
//!
//! `q` is the limit's burst, `w` the seconds a drained bucket takes to fill, `r` the requests
//! left and `t` the seconds until the bucket is full again (both rounded up). A denied request
//! reports the limit that denied it, with `r=0` and `t` its `Retry-After`. The policy value of
//! each limit is made once and reused until the limit's quota changes.
//!
//! [`Respond`]: omega_core::reject::Respond
//! [`RateLimitLayer::respond`]: crate::RateLimitLayer::respond

use std::sync::Arc;
use std::time::Duration;

use ::http::HeaderMap;
use ::http::header::{HeaderName, HeaderValue};
use arc_swap::ArcSwap;
use omega_core::http::seconds_rounded_up;

/// The `RateLimit-Policy` field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` field.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The last `RateLimit-Policy` value sent for a limit, with the burst and window (s) it was
/// made for: it changes only with the quota.
#[derive(Debug, Default)]
pub(crate) struct PolicyCache(ArcSwap<Option<(u32, u64, HeaderValue)>>);

/// The `RateLimit-Policy` and `RateLimit` values of one limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fields {
    policy: HeaderValue,
    state: HeaderValue,
}

impl Fields {
    /// The fields of limit `name` (burst, window) with `remaining` cells left and its bucket
    /// full again after `reset_after`; the policy value comes from `cache` when it holds the
    /// same burst and window. `None` only for a name no header value can carry.
    pub(crate) fn new(
        cache: Option<&PolicyCache>,
        name: &str,
        burst: u32,
        window: Duration,
        remaining: u32,
        reset_after: Duration,
    ) -> Option<Fields> {
        let window = seconds_rounded_up(window).max(1);
        let make = || field(name, (";q=", u64::from(burst)), (";w=", window));
        let policy = match cache {
            Some(PolicyCache(cache)) => match &**cache.load() {
                Some((b, w, value)) if *b == burst && *w == window => value.clone(),
                _ => {
                    let value = make()?;
                    cache.store(Arc::new(Some((burst, window, value.clone()))));
                    value
                }
            },
            None => make()?,
        };
        let state = field(
            name,
            (";r=", u64::from(remaining)),
            (";t=", seconds_rounded_up(reset_after)),
        )?;
        Some(Fields { policy, state })
    }

    /// Appends both fields to `headers`.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        headers.append(RATELIMIT_POLICY, self.policy);
        headers.append(RATELIMIT, self.state);
    }
}

/// `"name";a=1;b=2`: a structured-field string item (RFC 8941; `"` and `\` escaped) with
/// two integer parameters, formatted on the stack and copied once into the header value.
fn field(name: &str, a: (&str, u64), b: (&str, u64)) -> Option<HeaderValue> {
    let mut buf = StackBuf::new();
    buf.push(b"\"");
    for &c in name.as_bytes() {
        if c == b'"' || c == b'\\' {
            buf.push(b"\\");
        }
        buf.push(&[c]);
    }
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
        let f = Fields::new(
            None,
            "per \"user\"",
            10,
            Duration::from_millis(59_500),
            7,
            Duration::from_millis(17_001),
        )
        .unwrap();
        assert_eq!(f.policy, r#""per \"user\"";q=10;w=60"#);
        assert_eq!(f.state, r#""per \"user\"";r=7;t=18"#);
        let long = "x".repeat(200);
        let f = Fields::new(None, &long, 1, Duration::from_secs(1), 0, Duration::ZERO).unwrap();
        assert_eq!(f.policy, format!("\"{long}\";q=1;w=1").as_str());
    }

    #[test]
    fn a_limit_s_policy_value_is_cached_until_its_quota_changes() {
        let cache = PolicyCache::default();
        let policy = |burst, window| {
            Fields::new(Some(&cache), "g", burst, window, 0, Duration::ZERO)
                .unwrap()
                .policy
        };
        let first = policy(1, Duration::from_secs(1));
        assert_eq!(first, r#""g";q=1;w=1"#);
        assert_eq!(
            cache.0.load().as_ref().as_ref().map(|c| c.2.clone()),
            Some(first.clone())
        );
        assert_eq!(policy(1, Duration::from_secs(1)), first);
        assert_eq!(policy(5, Duration::from_secs(60)), r#""g";q=5;w=60"#);
    }
}
