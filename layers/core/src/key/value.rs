//! [`Key`]: a request's key, borrowed or computed, without an allocation for short keys.

use std::fmt;
use std::hash::{Hash, Hasher};

/// How many bytes a computed key holds without allocating: an IPv6 address with a prefix
/// length (`ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128` is 43), or a method with a short
/// route template.
const INLINE: usize = 54;

/// A request's key: bytes borrowed from the request, or computed.
///
/// Keys compare, hash and print by their bytes (printed as UTF-8, lossily); layers use
/// [`Key::as_bytes`] (a routing hash, a bucket) or [`Key::as_str`] (a Redis key, a label).
/// Computed keys up to a few dozen bytes live inline, so a client address or an integer makes
/// no allocation.
///
/// ```
/// use omega_core::key::Key;
///
/// let header = "user-7";
/// let k = Key::from(header); // borrowed
/// assert_eq!(k.as_str(), Some("user-7"));
/// let n = Key::from(42u64); // an integer key: its little-endian bytes
/// assert_eq!(n.as_bytes(), &42u64.to_le_bytes());
/// let ip = Key::format(format_args!("{}/{}", "2001:db8::", 64));
/// assert_eq!(ip.to_string(), "2001:db8::/64");
/// ```
#[derive(Clone)]
pub struct Key<'a>(Repr<'a>);

#[derive(Clone)]
enum Repr<'a> {
    Borrowed(&'a [u8]),
    Inline { len: u8, bytes: [u8; INLINE] },
    Owned(Vec<u8>),
}

impl<'a> Key<'a> {
    /// A key borrowed from `bytes`.
    #[inline]
    pub const fn borrowed(bytes: &'a [u8]) -> Self {
        Key(Repr::Borrowed(bytes))
    }

    /// The key's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Borrowed(b) => b,
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Owned(b) => b,
        }
    }

    /// The key as text, when its bytes are UTF-8.
    #[inline]
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    /// The key, independent of the request it came from.
    pub fn into_owned(self) -> Key<'static> {
        match self.0 {
            Repr::Borrowed(b) => Key::copy_of(b),
            Repr::Inline { len, bytes } => Key(Repr::Inline { len, bytes }),
            Repr::Owned(b) => Key(Repr::Owned(b)),
        }
    }
}

impl Key<'static> {
    /// A computed key holding a copy of `bytes` (inline when short).
    #[inline]
    pub fn copy_of(bytes: &[u8]) -> Self {
        if bytes.len() <= INLINE {
            let mut inline = [0; INLINE];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key(Repr::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            })
        } else {
            Key(Repr::Owned(bytes.to_vec()))
        }
    }

    /// A computed key written with `format_args!` (inline when short).
    pub fn format(args: fmt::Arguments<'_>) -> Self {
        let mut buf = InlineWriter {
            len: 0,
            bytes: [0; INLINE],
            spill: None,
        };
        let _ = fmt::write(&mut buf, args);
        match buf.spill {
            Some(s) => Key(Repr::Owned(s.into_bytes())),
            None => Key(Repr::Inline {
                len: buf.len as u8,
                bytes: buf.bytes,
            }),
        }
    }
}

struct InlineWriter {
    len: usize,
    bytes: [u8; INLINE],
    spill: Option<String>,
}

impl fmt::Write for InlineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(spill) = &mut self.spill {
            spill.push_str(s);
        } else if self.len + s.len() <= INLINE {
            self.bytes[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut spill = String::with_capacity(self.len + s.len() + 16);
            // Only whole `str`s were copied in, so the prefix is UTF-8.
            spill.push_str(std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default());
            spill.push_str(s);
            self.spill = Some(spill);
        }
        Ok(())
    }
}

impl<'a> From<&'a str> for Key<'a> {
    #[inline]
    fn from(s: &'a str) -> Self {
        Key::borrowed(s.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for Key<'a> {
    #[inline]
    fn from(b: &'a [u8]) -> Self {
        Key::borrowed(b)
    }
}

/// Takes the string's buffer as it is (no copy, no reallocation).
impl From<String> for Key<'static> {
    fn from(s: String) -> Self {
        Key(Repr::Owned(s.into_bytes()))
    }
}

/// Takes the buffer as it is (no copy, no reallocation).
impl From<Vec<u8>> for Key<'static> {
    fn from(b: Vec<u8>) -> Self {
        Key(Repr::Owned(b))
    }
}

impl From<std::sync::Arc<str>> for Key<'static> {
    fn from(s: std::sync::Arc<str>) -> Self {
        Key::copy_of(s.as_bytes())
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        /// An integer key: its little-endian bytes (as the shard router has always hashed
        /// integer keys).
        impl From<$t> for Key<'static> {
            #[inline]
            fn from(n: $t) -> Self {
                Key::copy_of(&n.to_le_bytes())
            }
        }
    )*};
}
int_keys!(u16, u32, u64, u128, i16, i32, i64, i128);

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key<'_> {}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => f.write_str(s),
            None => f.write_str(&String::from_utf8_lossy(self.as_bytes())),
        }
    }
}

impl fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "Key({s:?})"),
            None => write!(f, "Key({:?})", self.as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_computed_keys_are_inline_and_long_ones_spill() {
        let k = Key::format(format_args!("{} {}", "GET", "/users/{id}"));
        assert!(matches!(k.0, Repr::Inline { .. }));
        assert_eq!(k.as_str(), Some("GET /users/{id}"));
        let long = "x".repeat(200);
        let k = Key::format(format_args!("{}-{}", "prefix", long));
        assert!(matches!(k.0, Repr::Owned(_)));
        assert_eq!(k.as_str().unwrap().len(), 207);
        let k = Key::format(format_args!("{}{}", "a".repeat(INLINE - 1), "bc"));
        assert_eq!(k.as_bytes().len(), INLINE + 1);
    }

    #[test]
    fn keys_compare_by_bytes_whatever_their_representation() {
        let owned = Key::from(String::from("abc"));
        let borrowed = Key::from("abc");
        let inline = Key::copy_of(b"abc");
        assert_eq!(owned, borrowed);
        assert_eq!(borrowed, inline);
        assert_eq!(borrowed.clone().into_owned(), inline);
        assert_eq!(Key::borrowed(&[0xff, 0]).to_string(), "\u{fffd}\u{0}");
    }
}
