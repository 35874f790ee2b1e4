//! The path every route, limit and node sees: the request's path in normal form.
//!
//! A route's limits must not be skipped by writing its path another way: `/x/../users` is
//! `/users`, and so is `/x/%2e%2e/users`. Dot segments are removed as RFC 3986 §5.2.4 says,
//! after decoding percent-encoded dots (`%2E`, which §6.2.2.2 calls equivalent). An encoded
//! slash or backslash (`%2F`, `%5C`) is ambiguous (one server reads a separator, another
//! does not), so it is refused rather than guessed, as is a path that climbs above the root.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// `%2F` or `%5C`: a separator or not, depending on who reads it.
    EncodedSeparator,
    /// Not an absolute path (`*`, or an empty path).
    NotAbsolute,
}

/// The normal form of `path` (without its query): borrowed when it already is one, which is
/// the case for nearly every request.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let code = bytes.get(i + 1..i + 3).unwrap_or_default();
            if code.eq_ignore_ascii_case(b"2f") || code.eq_ignore_ascii_case(b"5c") {
                return Err(PathError::EncodedSeparator);
            }
            if code.eq_ignore_ascii_case(b"2e") {
                needs_work = true;
            }
        } else if b == b'.' && (bytes[i - 1] == b'/') {
            // A segment starting with a dot: `.`, `..` or a name such as `.well-known`.
            let rest = &bytes[i..];
            let end = rest.iter().position(|&c| c == b'/').unwrap_or(rest.len());
            if matches!(&rest[..end], b"." | b"..") {
                needs_work = true;
            }
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_dots(path);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(Cow::Owned(format!("/{}", out.join("/"))))
}

/// `path` with `%2E` / `%2e` decoded to `.`.
fn decode_dots(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).unwrap_or_default();
        if code.eq_ignore_ascii_case("2e") {
            out.push('.');
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (given, normal) in [
            ("/users/7", "/users/7"),
            ("/x/../users", "/users"),
            ("/x/%2e%2E/users", "/users"),
            ("/users/./7", "/users/7"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/../../users", "/users"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a..b/c", "/a..b/c"),
            ("/a/%41", "/a/%41"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(given).unwrap(), normal, "{given}");
        }
        assert!(matches!(normalize("/users/7").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn encoded_separators_are_refused() {
        assert_eq!(normalize("/users%2F7"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/users%2f7"), Err(PathError::EncodedSeparator));
        assert_eq!(
            normalize("/a%5c..%5cusers"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }
}
