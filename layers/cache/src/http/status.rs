//! `Cache-Status` (RFC 9211): how the cache handled each response, appended to the list the
//! response may already carry (the caches nearer the origin first, §2).

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

/// The `Cache-Status` field name.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request was forwarded (RFC 9211 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// The cache was configured not to handle it.
    Bypass,
    /// Its method must reach the origin.
    Method,
    /// Nothing stored for its URI.
    UriMiss,
    /// Something stored for its URI, but no variant matched its selecting fields.
    VaryMiss,
    /// A stored response could answer, but the request's directives did not let it.
    Request,
    /// The stored response was stale.
    Stale,
    /// The request is for part of a response.
    Partial,
}

impl Fwd {
    fn token(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
            Fwd::Partial => "partial",
        }
    }
}

/// One member of `Cache-Status`.
#[derive(Clone, Debug, Default)]
pub(crate) struct CacheStatus {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<Fwd>,
    pub(crate) fwd_status: Option<u16>,
    /// Seconds of freshness left (negative once stale).
    pub(crate) ttl: Option<i64>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
    pub(crate) detail: Option<&'static str>,
}

impl CacheStatus {
    /// Served from the cache.
    pub(crate) fn hit(ttl: i64) -> Self {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    /// Forwarded, for `why`.
    pub(crate) fn fwd(why: Fwd) -> Self {
        CacheStatus {
            fwd: Some(why),
            ..CacheStatus::default()
        }
    }

    pub(crate) fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The member, for the cache named `name`.
    pub(crate) fn member(&self, name: &str) -> String {
        let mut s = if is_token(name) {
            name.to_owned()
        } else {
            let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\"")
        };
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(f) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(f.token());
        }
        if let Some(code) = self.fwd_status {
            s.push_str(&format!("; fwd-status={code}"));
        }
        if let Some(ttl) = self.ttl {
            s.push_str(&format!("; ttl={ttl}"));
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        s
    }

    /// Appends the member to `headers` (after the members of the caches nearer the origin).
    pub(crate) fn write(&self, name: &str, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.member(name)) {
            headers.append(CACHE_STATUS, v);
        }
    }
}

/// An sf-token (RFC 8941 §3.3.4): ALPHA or `*`, then tchar, `:` or `/`.
fn is_token(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'*')
        && b.all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_follow_rfc_9211s_syntax() {
        // RFC 9211 §2: cache name, then hit / fwd / fwd-status / ttl / stored / collapsed.
        assert_eq!(CacheStatus::hit(57).member("omega"), "omega; hit; ttl=57");
        let mut s = CacheStatus::fwd(Fwd::Stale);
        s.fwd_status = Some(304);
        s.ttl = Some(60);
        s.stored = true;
        assert_eq!(
            s.member("omega"),
            "omega; fwd=stale; fwd-status=304; ttl=60; stored"
        );
        let mut c = CacheStatus::fwd(Fwd::UriMiss);
        c.collapsed = true;
        assert_eq!(
            c.detail("x").member("my cache"),
            "\"my cache\"; fwd=uri-miss; collapsed; detail=x"
        );
    }
}
