//! `Vary` (RFC 9111 §4.1): the selecting header fields a response names, and the secondary
//! key of a request under them.
//!
//! The spec is the list of field names, lowercased, sorted, without repeats. A request's
//! secondary key holds, for each of them, the field's value normalized the ways §4.1 allows:
//! field lines combined, whitespace around list members removed, and for `Accept-Language`,
//! `Accept-Encoding` and `Accept-Charset` (case-insensitive lists whose order does not matter
//! once their weights are written) members lowercased and sorted. An absent field is not an
//! empty one: it only matches its absence.

use http::HeaderMap;
use http::header::VARY;

/// What a response's `Vary` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Vary {
    /// No selecting fields.
    None,
    /// `*`: never matches another request (§4.1).
    Star,
    /// The spec: field names, lowercased, sorted, comma-separated.
    Names(Vec<u8>),
}

/// The `Vary` of a response (every line).
pub(crate) fn of(headers: &HeaderMap) -> Vary {
    let mut names: Vec<String> = Vec::new();
    for line in headers.get_all(VARY) {
        let Ok(line) = line.to_str() else {
            // Unreadable: nothing can be sure to match it.
            return Vary::Star;
        };
        for n in line.split(',').map(|n| n.trim_matches([' ', '\t'])) {
            if n == "*" {
                return Vary::Star;
            }
            if !n.is_empty() {
                names.push(n.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        return Vary::None;
    }
    names.sort();
    names.dedup();
    Vary::Names(names.join(",").into_bytes())
}

/// Field absent (a byte no field value holds).
const ABSENT: u8 = 0x01;

/// The secondary key of a request with `headers` under `spec`.
pub(crate) fn secondary(spec: &[u8], headers: &HeaderMap) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    for name in spec.split(|b| *b == b',') {
        let name = std::str::from_utf8(name).unwrap_or("");
        let mut lines = headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            key.push(ABSENT);
        } else {
            let unordered = matches!(
                name,
                "accept-language" | "accept-encoding" | "accept-charset"
            );
            let mut members: Vec<Vec<u8>> = Vec::new();
            for line in lines {
                for m in line.as_bytes().split(|b| *b == b',') {
                    let m = m.trim_ascii();
                    if m.is_empty() {
                        continue;
                    }
                    if unordered {
                        let m: Vec<u8> = m
                            .iter()
                            .filter(|b| !b.is_ascii_whitespace())
                            .map(u8::to_ascii_lowercase)
                            .collect();
                        members.push(m);
                    } else {
                        members.push(m.to_vec());
                    }
                }
            }
            if unordered {
                members.sort();
            }
            key.extend_from_slice(&members.join(&b","[..]));
        }
        key.push(b'\n');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn vary_names_are_normalized_and_star_never_matches() {
        // RFC 9111 §4.1: a member "*" always fails to match.
        assert_eq!(
            of(&h(&[("vary", "Foo, bar"), ("vary", "FOO")])),
            Vary::Names(b"bar,foo".to_vec())
        );
        assert_eq!(of(&h(&[("vary", ", *")])), Vary::Star);
        assert_eq!(of(&h(&[("vary", "Foo"), ("vary", "*")])), Vary::Star);
        assert_eq!(of(&h(&[("vary", "")])), Vary::None);
        assert_eq!(of(&HeaderMap::new()), Vary::None);
    }

    #[test]
    fn selecting_fields_match_after_the_normalizations_rfc_9111_allows() {
        // RFC 9111 §4.1: whitespace, combined lines, and value-specific normalization.
        let spec = b"foo";
        assert_eq!(
            secondary(spec, &h(&[("foo", "1, 2")])),
            secondary(spec, &h(&[("foo", "1"), ("foo", "2")]))
        );
        assert_eq!(
            secondary(spec, &h(&[("foo", "1,2")])),
            secondary(spec, &h(&[("foo", " 1, 2 ")]))
        );
        assert_ne!(
            secondary(spec, &h(&[("foo", "1")])),
            secondary(spec, &h(&[("foo", "2")]))
        );
        let lang = b"accept-language";
        assert_eq!(
            secondary(lang, &h(&[("accept-language", "en, de")])),
            secondary(lang, &h(&[("accept-language", "De , eN")]))
        );
    }

    #[test]
    fn an_absent_field_only_matches_its_absence() {
        // RFC 9111 §4.1: a field absent from a request can only match another request if it
        // is also absent there.
        let spec = b"bar,foo";
        assert_ne!(
            secondary(spec, &h(&[("foo", "1")])),
            secondary(spec, &h(&[("foo", "1"), ("bar", "")]))
        );
        assert_eq!(
            secondary(spec, &h(&[("foo", "1"), ("other", "x")])),
            secondary(spec, &h(&[("foo", "1"), ("other", "y")]))
        );
    }
}
