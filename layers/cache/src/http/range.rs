//! Range requests (RFC 9110 §14) answered from a complete stored response: one byte range
//! per request. Partial responses (206) are never stored (RFC 9111 §3.3 allows a cache that
//! does not combine them to forward them); several ranges, other units and `If-Range` go to
//! the origin.

/// One byte range, as a request asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// `first-last` or `first-`.
    From(u64, Option<u64>),
    /// `-suffix`: the last bytes.
    Suffix(u64),
}

impl ByteRange {
    /// A `Range` value with one byte range; `None` for anything else.
    pub(crate) fn parse(v: &str) -> Option<ByteRange> {
        let (unit, spec) = v.trim().split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
            return None;
        }
        let (a, b) = spec.trim().split_once('-')?;
        let num = |s: &str| s.trim().parse::<u64>().ok();
        if a.trim().is_empty() {
            return num(b).map(ByteRange::Suffix);
        }
        let first = num(a)?;
        let last = if b.trim().is_empty() {
            None
        } else {
            Some(num(b)?)
        };
        match last {
            Some(l) if l < first => None,
            _ => Some(ByteRange::From(first, last)),
        }
    }

    /// The first and last offsets of this range in a body of `len` bytes; `None` when it is
    /// not satisfiable (the full response answers then).
    pub(crate) fn within(self, len: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From(first, _) if first >= len => None,
            ByteRange::From(first, last) => Some((first, last.map_or(len - 1, |l| l.min(len - 1)))),
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if len == 0 => None,
            ByteRange::Suffix(n) => Some((len.saturating_sub(n), len - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_range_is_served_from_a_complete_body() {
        // RFC 9110 §14.1.2: byte-range-spec and suffix-byte-range-spec.
        let body_len = 11;
        let r = |s| ByteRange::parse(s).and_then(|r| r.within(body_len));
        assert_eq!(r("bytes=0-1"), Some((0, 1)));
        assert_eq!(r("bytes=1-"), Some((1, 10)));
        assert_eq!(r("bytes=-1"), Some((10, 10)));
        assert_eq!(r("bytes=5-100"), Some((5, 10)));
        assert_eq!(r("bytes=11-"), None);
        assert_eq!(ByteRange::parse("bytes=0-1,3-4"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        assert_eq!(ByteRange::parse("bytes=3-2"), None);
    }
}
