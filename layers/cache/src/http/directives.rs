//! `Cache-Control` (RFC 9111 §5.2) read from every field line: directives compared
//! case-insensitively, arguments in token or quoted-string form (§5.2: "recipients ought to
//! accept both forms"), quoted strings never mistaken for directives, unknown directives
//! ignored (§5.2.3); and `Pragma: no-cache` in requests without `Cache-Control` (§5.4).
//!
//! A delta-seconds argument (§1.2.2) that is not one (negative, decimal, single-quoted,
//! spaced around `=`) makes the directive *invalid*: a freshness directive that is invalid, or
//! repeated with different values, leaves the response stale (§4.2.1: "caches are encouraged
//! to consider responses that have invalid freshness information to be stale"). A value
//! beyond 2^31 seconds is taken as 2^31 (§1.2.2).

use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

/// The greatest delta-seconds a cache needs to represent (RFC 9111 §1.2.2).
pub(crate) const DELTA_MAX: u64 = 2_147_483_648;

/// A delta-seconds directive as found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Delta {
    #[default]
    Absent,
    Valid(u64),
    /// Malformed, or repeated with different values.
    Invalid,
}

impl Delta {
    fn add(&mut self, arg: Option<&str>) {
        let new = match arg.map(delta_seconds) {
            Some(Some(n)) => Delta::Valid(n),
            _ => Delta::Invalid,
        };
        *self = match (*self, new) {
            (Delta::Absent, n) => n,
            (Delta::Valid(a), Delta::Valid(b)) if a == b => Delta::Valid(a),
            _ => Delta::Invalid,
        };
    }

    pub(crate) fn is_present(self) -> bool {
        self != Delta::Absent
    }
}

/// The argument of `no-cache` and `private`: absent, or the field names it lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Fields {
    #[default]
    Absent,
    /// Without an argument: the whole response.
    All,
    /// Only these fields (lowercase).
    Named(Vec<String>),
}

impl Fields {
    fn add(&mut self, arg: Option<&str>) {
        let names: Vec<String> = arg
            .map(|a| {
                a.split(',')
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        *self = match std::mem::take(self) {
            Fields::All => Fields::All,
            _ if names.is_empty() => Fields::All,
            Fields::Absent => Fields::Named(names),
            Fields::Named(mut old) => {
                old.extend(names);
                Fields::Named(old)
            }
        };
    }

    pub(crate) fn names(&self) -> &[String] {
        match self {
            Fields::Named(n) => n,
            _ => &[],
        }
    }
}

/// The response directives a shared cache obeys (RFC 9111 §5.2.2, RFC 5861).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) max_age: Delta,
    pub(crate) s_maxage: Delta,
    pub(crate) no_store: bool,
    pub(crate) no_cache: Fields,
    pub(crate) private: Fields,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) immutable: bool,
    pub(crate) stale_while_revalidate: Delta,
    pub(crate) stale_if_error: Delta,
}

impl ResponseDirectives {
    /// The directives of every `Cache-Control` line of `headers`.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut d = ResponseDirectives::default();
        each(headers, |name, arg| match name {
            "max-age" => d.max_age.add(arg),
            "s-maxage" => d.s_maxage.add(arg),
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache.add(arg),
            "private" => d.private.add(arg),
            "public" => d.public = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "must-understand" => d.must_understand = true,
            "immutable" => d.immutable = true,
            "stale-while-revalidate" => d.stale_while_revalidate.add(arg),
            "stale-if-error" => d.stale_if_error.add(arg),
            _ => {}
        });
        d
    }

    /// A shared cache must not serve the response stale (§4.2.4): `must-revalidate`
    /// (§5.2.2.2), `proxy-revalidate` (§5.2.2.8), `s-maxage` (§5.2.2.10) or an unqualified
    /// `no-cache` (§5.2.2.4).
    pub(crate) fn forbids_stale(&self) -> bool {
        self.must_revalidate
            || self.proxy_revalidate
            || self.s_maxage.is_present()
            || self.no_cache == Fields::All
    }

    /// The response may answer requests that carried `Authorization` (§3.5).
    pub(crate) fn allows_authorized(&self) -> bool {
        self.public || self.must_revalidate || self.s_maxage.is_present()
    }
}

/// The request directives a cache may honour (RFC 9111 §5.2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub(crate) max_age: Option<u64>,
    /// `Some(None)`: any staleness.
    pub(crate) max_stale: Option<Option<u64>>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    pub(crate) only_if_cached: bool,
}

impl RequestDirectives {
    /// The directives of a request's `Cache-Control` lines; without any, `Pragma: no-cache`
    /// counts as `no-cache` (§5.4, as RFC 7234 §5.4 required).
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut d = RequestDirectives::default();
        if !headers.contains_key(CACHE_CONTROL) {
            d.no_cache = headers.get_all(PRAGMA).iter().any(|v| {
                v.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                })
            });
            return d;
        }
        each(headers, |name, arg| {
            let secs = arg.and_then(delta_seconds);
            match name {
                // A malformed max-age asks for a fresh answer: the strictest reading.
                "max-age" => d.max_age = Some(secs.unwrap_or(0).min(d.max_age.unwrap_or(u64::MAX))),
                "max-stale" if arg.is_none() => d.max_stale = Some(None),
                "max-stale" if secs.is_some() => d.max_stale = Some(secs),
                "min-fresh" => d.min_fresh = secs.or(d.min_fresh),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                _ => {}
            }
        });
        d
    }
}

/// Calls `f` with each directive of each `Cache-Control` line: its name in lowercase and its
/// argument (unquoted); a directive whose name is followed by anything but `=` (a space
/// before it) is passed with an argument that no rule accepts.
fn each(headers: &HeaderMap, mut f: impl FnMut(&str, Option<&str>)) {
    for line in headers.get_all(CACHE_CONTROL) {
        let Ok(line) = std::str::from_utf8(line.as_bytes()) else {
            continue;
        };
        let mut rest = line;
        while !rest.is_empty() {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            let end = rest.find(['=', ',', ' ', '\t']).unwrap_or(rest.len());
            let name = rest[..end].to_ascii_lowercase();
            rest = &rest[end..];
            if name.is_empty() {
                // Stray characters: skip to the next directive.
                rest = rest.split_once(',').map_or("", |(_, r)| r);
                continue;
            }
            if let Some(after) = rest.strip_prefix('=') {
                let (arg, tail) = argument(after);
                f(&name, Some(&arg));
                rest = tail;
            } else {
                let spaced = rest.trim_start_matches([' ', '\t']);
                if let Some(after) = spaced.strip_prefix('=') {
                    // `max-age =5`: not the directive's syntax.
                    f(&name, Some(" "));
                    rest = argument(after).1;
                } else {
                    f(&name, None);
                    rest = spaced;
                }
            }
            // Anything up to the next comma belongs to this malformed directive.
            if let Some(i) = rest.find(',') {
                rest = &rest[i..];
            } else {
                rest = "";
            }
        }
    }
}

/// A token or quoted-string argument (unescaped), and what follows it.
fn argument(s: &str) -> (String, &str) {
    if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        out.push(n);
                    }
                }
                '"' => return (out, &q[i + 1..]),
                c => out.push(c),
            }
        }
        // An unterminated string: everything is its value.
        (out, "")
    } else {
        let end = s.find(',').unwrap_or(s.len());
        (s[..end].trim_end_matches([' ', '\t']).to_owned(), &s[end..])
    }
}

/// delta-seconds (§1.2.2): digits only; beyond 2^31, 2^31.
pub(crate) fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.bytes()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .map_or(DELTA_MAX, |n| n.min(DELTA_MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn res(lines: &[&str]) -> ResponseDirectives {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(CACHE_CONTROL, HeaderValue::from_str(l).unwrap());
        }
        ResponseDirectives::of(&h)
    }

    #[test]
    fn directives_are_case_insensitive_and_accept_quoted_arguments() {
        // RFC 9111 §5.2: tokens compared case-insensitively; token or quoted-string arguments.
        let d = res(&["MaX-AgE=3600, No-StOrE"]);
        assert_eq!(d.max_age, Delta::Valid(3600));
        assert!(d.no_store);
        assert_eq!(res(&["max-age=\"3600\""]).max_age, Delta::Valid(3600));
        assert_eq!(res(&["max-age=003600"]).max_age, Delta::Valid(3600));
    }

    #[test]
    fn a_directive_inside_a_quoted_string_is_not_a_directive() {
        // RFC 9111 §5.2: the argument of an extension is a quoted-string, not directives.
        assert_eq!(
            res(&["extension=\"max-age=3600\", max-age=1"]).max_age,
            Delta::Valid(1)
        );
        assert_eq!(
            res(&["max-age=1, extension=\"max-age=3600\""]).max_age,
            Delta::Valid(1)
        );
    }

    #[test]
    fn malformed_or_conflicting_delta_seconds_are_invalid() {
        // RFC 9111 §1.2.2 (delta-seconds is 1*DIGIT) and §4.2.1 (invalid or duplicated
        // freshness information: consider the response stale).
        for bad in [
            "max-age=-3600",
            "max-age=3600.0",
            "max-age='3600'",
            "max-age=a3600",
            "max-age=3600a",
            "max-age =3600",
            "max-age= 3600",
            "max-age",
            "max-age=1800, max-age=1",
        ] {
            assert_eq!(res(&[bad]).max_age, Delta::Invalid, "{bad}");
        }
        assert_eq!(res(&["max-age=1800", "max-age=1"]).max_age, Delta::Invalid);
        assert_eq!(res(&["max-age=60, max-age=60"]).max_age, Delta::Valid(60));
    }

    #[test]
    fn delta_seconds_beyond_2_pow_31_are_2_pow_31() {
        // RFC 9111 §1.2.2.
        assert_eq!(
            res(&["max-age=99999999999"]).max_age,
            Delta::Valid(DELTA_MAX)
        );
        assert_eq!(
            res(&["max-age=99999999999999999999999"]).max_age,
            Delta::Valid(DELTA_MAX)
        );
    }

    #[test]
    fn no_cache_and_private_carry_their_field_names() {
        // RFC 9111 §5.2.2.4 and §5.2.2.7: qualified forms list field names.
        let d = res(&["no-cache=\"Set-Cookie, X-A\"", "private=x-b"]);
        assert_eq!(d.no_cache.names(), ["set-cookie", "x-a"]);
        assert_eq!(d.private.names(), ["x-b"]);
        assert_eq!(res(&["no-cache, no-cache=\"a\""]).no_cache, Fields::All);
        assert_eq!(res(&["private"]).private, Fields::All);
    }

    #[test]
    fn unknown_directives_are_ignored() {
        // RFC 9111 §5.2.3: a cache MUST ignore unrecognized directives.
        let d = res(&["foobar, community=\"UCI\", max-age=5"]);
        assert_eq!(d.max_age, Delta::Valid(5));
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control() {
        // RFC 9111 §5.4 (and RFC 7234 §5.4).
        let mut h = HeaderMap::new();
        h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(RequestDirectives::of(&h).no_cache);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-stale"));
        let d = RequestDirectives::of(&h);
        assert!(!d.no_cache);
        assert_eq!(d.max_stale, Some(None));
    }
}
