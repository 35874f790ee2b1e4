//! Key namespacing and Redis Cluster hash tags.
//!
//! Every key a layer stores goes through a [`Keyspace`], so that all keys of one deployment
//! share a configurable prefix (`omega:` by default) and keys that one Lua script touches
//! together share a hash tag, which puts them in the same Redis Cluster slot.
//!
//! Key shapes:
//! - [`Keyspace::key`] gives `prefix:part:part`;
//! - [`Keyspace::tagged`] gives `prefix:{tag}:part:part`; the tag is escaped so that any text
//!   (even one holding `{` or `}`) forms exactly one hash tag, and distinct tags stay distinct.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "omega";

/// A key prefix shared by all keys of a deployment. Cloning is cheap.
///
/// ```
/// use omega_core::{Keyspace, hash_slot};
///
/// let ks = Keyspace::new("shop").unwrap();
/// assert_eq!(ks.key(&["rl", "global"]), "shop:rl:global");
/// let a = ks.tagged("user:42", &["rl", "minute"]);
/// let b = ks.tagged("user:42", &["rl", "day"]);
/// assert_eq!(a, "shop:{user:42}:rl:minute");
/// assert_eq!(hash_slot(a.as_bytes()), hash_slot(b.as_bytes()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Keyspace {
    prefix: Arc<str>,
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace {
            prefix: Arc::from(DEFAULT_PREFIX),
        }
    }
}

impl Keyspace {
    /// A keyspace with the given prefix. The prefix may be empty (keys then have no prefix);
    /// it may not contain `{` or `}` (they would change which part of a key is its hash tag),
    /// whitespace or control characters.
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if let Some(c) = prefix
            .chars()
            .find(|c| matches!(c, '{' | '}') || c.is_whitespace() || c.is_control())
        {
            return Err(Error::config(format!(
                "key prefix {prefix:?} contains {c:?}; use letters, digits and punctuation other than braces"
            )));
        }
        Ok(Keyspace {
            prefix: Arc::from(prefix),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `prefix:part:part`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut out = String::with_capacity(self.prefix.len() + parts_len(parts) + 1);
        out.push_str(&self.prefix);
        for p in parts {
            if !out.is_empty() {
                out.push(':');
            }
            out.push_str(p);
        }
        out
    }

    /// `prefix:{tag}:part:part` for a tag that may hold any bytes (a request's key): the tag
    /// is escaped as [`Keyspace::tagged`] escapes it, bytes that are not UTF-8 as `%XX`, so
    /// distinct tags stay distinct and the result equals `tagged` for UTF-8 tags.
    pub fn tagged_bytes(&self, tag: &[u8], parts: &[&str]) -> Vec<u8> {
        match std::str::from_utf8(tag) {
            Ok(text) => self.tagged(text, parts).into_bytes(),
            Err(_) => {
                // Text is escaped by `tagged`'s own rule (`%` becomes `%25`), so a raw byte's
                // `%XX` cannot collide with text.
                let mut out = String::with_capacity(self.prefix.len() + tag.len() * 3 + 8);
                out.push_str(&self.prefix);
                if !out.is_empty() {
                    out.push(':');
                }
                out.push('{');
                for chunk in tag.utf8_chunks() {
                    push_tag(&mut out, chunk.valid());
                    for b in chunk.invalid() {
                        let _ = write!(out, "%{b:02X}");
                    }
                }
                out.push('}');
                for p in parts {
                    out.push(':');
                    out.push_str(p);
                }
                out.into_bytes()
            }
        }
    }

    /// `prefix:{tag}:part:part`: every key with the same tag lands in the same Redis Cluster
    /// slot, so one script may touch them all.
    pub fn tagged(&self, tag: &str, parts: &[&str]) -> String {
        let mut out = String::with_capacity(self.prefix.len() + tag.len() + parts_len(parts) + 4);
        out.push_str(&self.prefix);
        if !out.is_empty() {
            out.push(':');
        }
        out.push('{');
        push_tag(&mut out, tag);
        out.push('}');
        for p in parts {
            out.push(':');
            out.push_str(p);
        }
        out
    }
}

fn parts_len(parts: &[&str]) -> usize {
    parts.iter().map(|p| p.len() + 1).sum()
}

/// Escapes a tag so it forms one non-empty hash tag: `%` -> `%25`, `{` -> `%7B`, `}` -> `%7D`,
/// and the empty tag becomes `%00` (which no escaped text can produce).
fn push_tag(out: &mut String, tag: &str) {
    if tag.is_empty() {
        out.push_str("%00");
        return;
    }
    for c in tag.chars() {
        match c {
            '%' | '{' | '}' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The Redis Cluster slot (0..16384) of a key: CRC16/XMODEM of its hash tag when it has a
/// non-empty one (`{...}`), else of the whole key, modulo 16384.
pub fn hash_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_redis_cluster_spec() {
        // Vectors from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{user1000}.following"), hash_slot(b"user1000"));
        assert_eq!(hash_slot(b"foo{}{bar}"), hash_slot(b"foo{}{bar}"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
    }

    #[test]
    fn tags_are_escaped_and_distinct() {
        let ks = Keyspace::new("p").unwrap();
        assert_eq!(ks.tagged("a}b", &["x"]), "p:{a%7Db}:x");
        assert_eq!(ks.tagged("", &[]), "p:{%00}");
        assert_ne!(ks.tagged("%7D", &[]), ks.tagged("}", &[]));
        let k = ks.tagged("{weird}", &["1"]);
        assert_eq!(hash_slot(k.as_bytes()), hash_slot(b"%7Bweird%7D"));
    }

    #[test]
    fn byte_tags_escape_what_is_not_text() {
        let ks = Keyspace::new("p").unwrap();
        assert_eq!(
            ks.tagged_bytes(b"a}b", &["x"]),
            ks.tagged("a}b", &["x"]).into_bytes()
        );
        assert_eq!(
            ks.tagged_bytes(&[b'a', 0xff, b'%'], &[]),
            b"p:{a%FF%25}".to_vec()
        );
        assert_ne!(ks.tagged_bytes(&[0xff], &[]), ks.tagged_bytes(b"%FF", &[]));
    }

    #[test]
    fn empty_prefix_has_no_leading_colon() {
        let ks = Keyspace::new("").unwrap();
        assert_eq!(ks.key(&["a", "b"]), "a:b");
        assert_eq!(ks.tagged("t", &["a"]), "{t}:a");
    }

    #[test]
    fn bad_prefix_is_rejected_with_a_reason() {
        let err = Keyspace::new("my{app}").unwrap_err();
        assert!(err.to_string().contains("'{'"), "{err}");
        assert!(Keyspace::new("a b").is_err());
        assert_eq!(Keyspace::default().prefix(), "omega");
    }
}
