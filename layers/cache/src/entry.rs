//! A stored entry: the value, when it stops being fresh, how long it may be served stale, and
//! its tags; and the envelope that carries all of it in one L2 value.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use omega_core::Nanos;

/// How an entry may be used at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Serve it.
    Fresh,
    /// Serve it, and refresh it in the background (stale-while-revalidate).
    Stale,
    /// Serve it only if the upstream fails (stale-if-error).
    Fallback,
    /// Do not serve it.
    Expired,
}

/// The deadlines of an entry, on the wall clock (Unix milliseconds), as every instance reads
/// them from L2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Wall {
    pub(crate) stored: u64,
    pub(crate) fresh: u64,
    pub(crate) stale: u64,
    pub(crate) fallback: u64,
}

impl Wall {
    /// The deadlines of an entry stored now with these durations.
    pub(crate) fn from_now(ttl: Duration, swr: Duration, sie: Duration) -> Wall {
        let now = wall_ms();
        let fresh = now.saturating_add(ms(ttl));
        Wall {
            stored: now,
            fresh,
            stale: fresh.saturating_add(ms(swr)),
            fallback: fresh.saturating_add(ms(sie)),
        }
    }

    /// When the entry can be dropped: the later of its stale and fallback deadlines.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn end(&self) -> u64 {
        self.stale.max(self.fallback)
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An entry as L1 keeps it (behind an `Arc`, so a hit clones a pointer).
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    /// When the entry was built, on this process's clock.
    pub(crate) built_at: Nanos,
    /// The deadlines on this process's clock: compared on every hit.
    fresh_until: Nanos,
    stale_until: Nanos,
    fallback_until: Nanos,
    /// The deadlines on the wall clock, as L2 keeps them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) wall: Wall,
    pub(crate) tags: Box<[Arc<str>]>,
    /// The entry's share of the partition's capacity.
    pub(crate) weight: u32,
    /// Set by the one request that starts this entry's background refresh.
    refreshing: AtomicBool,
}

impl<V> Entry<V> {
    /// An entry whose wall deadlines are mapped onto the local clock read `now`.
    pub(crate) fn new(
        value: V,
        wall: Wall,
        tags: Box<[Arc<str>]>,
        weight: u32,
        now: Nanos,
    ) -> Self {
        let wall_now = wall_ms();
        let local = |deadline: u64| {
            now.saturating_add(deadline.saturating_sub(wall_now).saturating_mul(1_000_000))
        };
        Entry {
            value,
            built_at: now,
            fresh_until: local(wall.fresh),
            stale_until: local(wall.stale),
            fallback_until: local(wall.fallback),
            wall,
            tags,
            weight,
            refreshing: AtomicBool::new(false),
        }
    }

    /// How the entry may be used at `now` (this process's clock).
    #[inline]
    pub(crate) fn freshness(&self, now: Nanos) -> Freshness {
        if now < self.fresh_until {
            Freshness::Fresh
        } else if now < self.stale_until {
            Freshness::Stale
        } else if now < self.fallback_until {
            Freshness::Fallback
        } else {
            Freshness::Expired
        }
    }

    /// How long the entry stays fresh after `now`.
    pub(crate) fn fresh_for(&self, now: Nanos) -> Duration {
        Duration::from_nanos(self.fresh_until.saturating_sub(now))
    }

    /// How long L1 keeps the entry after `now`.
    pub(crate) fn keep_for(&self, now: Nanos) -> Duration {
        Duration::from_nanos(
            self.stale_until
                .max(self.fallback_until)
                .saturating_sub(now),
        )
    }

    /// `true` for the one caller that may start this entry's refresh.
    #[inline]
    pub(crate) fn claim_refresh(&self) -> bool {
        !self.refreshing.load(Ordering::Relaxed) && !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Lets a later stale hit try again (the refresh found another instance refreshing and
    /// gave up without calling the upstream).
    pub(crate) fn release_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| &**t == tag)
    }
}

/// The envelope's format version.
const VERSION: u8 = 1;
const NEGATIVE: u8 = 1;
const HEADER: usize = 2 + 4 * 8 + 2;

/// Writes an entry's envelope: version, flags, the four wall deadlines, the tags, then the
/// encoded value. One L2 value holds everything a hit needs.
pub(crate) fn encode_envelope(
    wall: &Wall,
    negative: bool,
    tags: &[Arc<str>],
    value: &[u8],
) -> Vec<u8> {
    let tag_bytes: usize = tags.iter().map(|t| 2 + t.len()).sum();
    let mut out = Vec::with_capacity(HEADER + tag_bytes + value.len());
    out.push(VERSION);
    out.push(if negative { NEGATIVE } else { 0 });
    for t in [wall.stored, wall.fresh, wall.stale, wall.fallback] {
        out.extend_from_slice(&t.to_be_bytes());
    }
    let n = tags.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for t in &tags[..n] {
        let len = t.len().min(usize::from(u16::MAX));
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&t.as_bytes()[..len]);
    }
    out.extend_from_slice(value);
    out
}

/// An envelope read back from L2.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Envelope<'a> {
    pub(crate) wall: Wall,
    /// Stored for tools that read L2 (and HTTP's `Cache-Status` later); L1 does not need it.
    #[allow(dead_code)]
    pub(crate) negative: bool,
    pub(crate) tags: Box<[Arc<str>]>,
    pub(crate) value: &'a [u8],
}

/// Reads an envelope; `None` when the bytes are not one (another version, truncated).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn decode_envelope(bytes: &[u8]) -> Option<Envelope<'_>> {
    if bytes.len() < HEADER || bytes[0] != VERSION {
        return None;
    }
    let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let wall = Wall {
        stored: u64_at(2),
        fresh: u64_at(10),
        stale: u64_at(18),
        fallback: u64_at(26),
    };
    let n = usize::from(u16::from_be_bytes([bytes[34], bytes[35]]));
    let mut at = HEADER;
    let mut tags = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::from(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let tag = std::str::from_utf8(bytes.get(at + 2..at + 2 + len)?).ok()?;
        tags.push(Arc::from(tag));
        at += 2 + len;
    }
    Some(Envelope {
        wall,
        negative: bytes[1] & NEGATIVE != 0,
        tags: tags.into_boxed_slice(),
        value: &bytes[at..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let wall = Wall::from_now(
            Duration::from_secs(10),
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        let tags: Vec<Arc<str>> = vec![Arc::from("user:7"), Arc::from("team")];
        let bytes = encode_envelope(&wall, true, &tags, b"payload");
        let env = decode_envelope(&bytes).unwrap();
        assert_eq!(env.wall, wall);
        assert!(env.negative);
        assert_eq!(&*env.tags, &tags[..]);
        assert_eq!(env.value, b"payload");
        assert!(decode_envelope(&bytes[..10]).is_none());
        assert!(decode_envelope(b"\x07garbage-garbage-garbage-garbage-garbage").is_none());
    }

    #[test]
    fn freshness_follows_the_deadlines() {
        let wall = Wall::from_now(
            Duration::from_millis(100),
            Duration::from_millis(100),
            Duration::from_millis(300),
        );
        let e = Entry::new((), wall, Box::new([]), 1, 1_000);
        assert_eq!(e.freshness(1_000), Freshness::Fresh);
        assert_eq!(e.freshness(1_000 + 150_000_000), Freshness::Stale);
        assert_eq!(e.freshness(1_000 + 250_000_000), Freshness::Fallback);
        assert_eq!(e.freshness(1_000 + 450_000_000), Freshness::Expired);
        assert!(e.claim_refresh());
        assert!(!e.claim_refresh());
        e.release_refresh();
        assert!(e.claim_refresh());
    }
}
