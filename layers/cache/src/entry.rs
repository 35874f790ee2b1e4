//! A stored entry: the value, when it stops being fresh, how long it may be served stale, how
//! long it is kept as the base of a revalidation, and its tags; the marker that stands at a
//! key whose responses vary ([`Marker`]); and the envelope that carries either in one L2 value.

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
    /// Do not serve it; it may only be the base of a revalidation (a conditional request).
    Kept,
    /// Do not use it.
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
    pub(crate) keep: u64,
}

impl Wall {
    /// The deadlines of an entry stored now with these durations (all counted from the end of
    /// its freshness).
    pub(crate) fn from_now(ttl: Duration, swr: Duration, sie: Duration, keep: Duration) -> Wall {
        let now = wall_ms();
        let fresh = now.saturating_add(ms(ttl));
        Wall {
            stored: now,
            fresh,
            stale: fresh.saturating_add(ms(swr)),
            fallback: fresh.saturating_add(ms(sie)),
            keep: fresh.saturating_add(ms(keep)),
        }
    }

    /// When the entry can be dropped: the latest of its deadlines.
    pub(crate) fn end(&self) -> u64 {
        self.fresh.max(self.stale).max(self.fallback).max(self.keep)
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

/// Which variant of its key an entry is: stored under the key's [`Marker`] `id`, selected by
/// `secondary` (what the policy computed from the request under `spec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    pub(crate) id: u64,
    pub(crate) spec: Arc<[u8]>,
    pub(crate) secondary: Box<[u8]>,
}

/// An entry as L1 keeps it (behind an `Arc`, so a hit clones a pointer).
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    /// The L1 key it is kept at (the front of L1 compares it on every hit).
    pub(crate) key: Box<[u8]>,
    /// When the entry was built, on this process's clock.
    pub(crate) built_at: Nanos,
    /// When it was stored (by whichever instance), on this process's clock.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    stored_at: Nanos,
    /// The deadlines on this process's clock: compared on every hit.
    fresh_until: Nanos,
    stale_until: Nanos,
    fallback_until: Nanos,
    keep_until: Nanos,
    /// The deadlines on the wall clock, as L2 keeps them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) wall: Wall,
    pub(crate) tags: Box<[Arc<str>]>,
    /// The entry's share of the partition's capacity.
    pub(crate) weight: u32,
    /// Set when the entry is one variant of its key.
    pub(crate) variant: Option<Variant>,
    /// Set by the one request that starts this entry's background refresh.
    refreshing: AtomicBool,
}

/// Maps a wall deadline onto the local clock read `now` at wall time `wall_now`.
fn local(now: Nanos, wall_now: u64, deadline: u64) -> Nanos {
    if deadline >= wall_now {
        now.saturating_add((deadline - wall_now).saturating_mul(1_000_000))
    } else {
        now.saturating_sub((wall_now - deadline).saturating_mul(1_000_000))
    }
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
        Entry {
            value,
            key: Box::default(),
            built_at: now,
            stored_at: local(now, wall_now, wall.stored).min(now),
            fresh_until: local(now, wall_now, wall.fresh),
            stale_until: local(now, wall_now, wall.stale),
            fallback_until: local(now, wall_now, wall.fallback),
            keep_until: local(now, wall_now, wall.keep),
            wall,
            tags,
            weight,
            variant: None,
            refreshing: AtomicBool::new(false),
        }
    }

    /// The same entry, kept at `key` in L1.
    pub(crate) fn at(mut self, key: &[u8]) -> Self {
        self.key = key.into();
        self
    }

    /// The same entry, as one variant of its key.
    pub(crate) fn with_variant(mut self, variant: Option<Variant>) -> Self {
        self.variant = variant;
        self
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
        } else if now < self.keep_until {
            Freshness::Kept
        } else {
            Freshness::Expired
        }
    }

    /// `true` while the entry may answer in place of a failed upstream call.
    pub(crate) fn serves_on_error(&self, now: Nanos) -> bool {
        now < self.stale_until.max(self.fallback_until)
    }

    /// How long the entry stays fresh after `now`.
    pub(crate) fn fresh_for(&self, now: Nanos) -> Duration {
        Duration::from_nanos(self.fresh_until.saturating_sub(now))
    }

    /// How far `now` is from the end of the entry's freshness: positive while fresh, negative
    /// once stale (nanoseconds).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn ttl_nanos(&self, now: Nanos) -> i128 {
        i128::from(self.fresh_until) - i128::from(now)
    }

    /// How long the entry has been stored at `now` (by whichever instance stored it).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn resident(&self, now: Nanos) -> Duration {
        Duration::from_nanos(now.saturating_sub(self.stored_at))
    }

    /// How long L1 keeps the entry after `now`.
    pub(crate) fn keep_for(&self, now: Nanos) -> Duration {
        Duration::from_nanos(self.end().saturating_sub(now))
    }

    /// The last of the local deadlines.
    pub(crate) fn end(&self) -> Nanos {
        self.fresh_until
            .max(self.stale_until)
            .max(self.fallback_until)
            .max(self.keep_until)
    }

    /// `true` for the one caller that may start this entry's refresh.
    #[inline]
    pub(crate) fn claim_refresh(&self) -> bool {
        !self.refreshing.load(Ordering::Relaxed) && !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Lets a later stale hit try again (the refresh found another instance refreshing and
    /// gave up without calling the upstream, or the caller did not refresh after all).
    pub(crate) fn release_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| &**t == tag)
    }
}

/// What stands at a key whose responses vary (HTTP's `Vary`): the spec the policy selects a
/// variant with, and the id the key's variants are stored under. Replacing the marker (a new
/// id) makes every variant stored under the old one unreachable.
#[derive(Debug)]
pub(crate) struct Marker {
    pub(crate) id: u64,
    pub(crate) spec: Arc<[u8]>,
    /// When it was built and until when it is kept, on this process's clock.
    pub(crate) built_at: Nanos,
    pub(crate) until: Nanos,
    /// Until when it is kept, on the wall clock (Unix milliseconds).
    pub(crate) wall_end: u64,
}

impl Marker {
    /// A marker kept until `wall_end`, its local deadline read against `now`.
    pub(crate) fn new(id: u64, spec: Arc<[u8]>, wall_end: u64, now: Nanos) -> Self {
        Marker {
            id,
            spec,
            built_at: now,
            until: local(now, wall_ms(), wall_end),
            wall_end,
        }
    }

    /// `true` until the marker's deadline.
    pub(crate) fn live(&self, now: Nanos) -> bool {
        now < self.until
    }

    /// What the marker weighs in L1 (its key aside).
    pub(crate) fn weight(&self) -> u32 {
        u32::try_from(self.spec.len() + 64).unwrap_or(u32::MAX)
    }
}

/// What L1 keeps at a key: an entry, or the marker of a key whose responses vary.
pub(crate) enum Slot<V> {
    Entry(Arc<Entry<V>>),
    Vary(Arc<Marker>),
}

impl<V> Clone for Slot<V> {
    fn clone(&self) -> Self {
        match self {
            Slot::Entry(e) => Slot::Entry(e.clone()),
            Slot::Vary(m) => Slot::Vary(m.clone()),
        }
    }
}

impl<V> Slot<V> {
    /// The local time the slot was built at (its deadlines count from it).
    pub(crate) fn built_at(&self) -> Nanos {
        match self {
            Slot::Entry(e) => e.built_at,
            Slot::Vary(m) => m.built_at,
        }
    }

    /// How long L1 keeps the slot after its build time.
    pub(crate) fn keep_for(&self) -> Duration {
        let built = self.built_at();
        match self {
            Slot::Entry(e) => e.keep_for(built),
            Slot::Vary(m) => Duration::from_nanos(m.until.saturating_sub(built)),
        }
    }

    pub(crate) fn weight(&self) -> u32 {
        match self {
            Slot::Entry(e) => e.weight,
            Slot::Vary(m) => m.weight(),
        }
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        match self {
            Slot::Entry(e) => e.has_tag(tag),
            Slot::Vary(_) => false,
        }
    }
}

/// The key of a variant: the primary key, then the marker's id and the variant's secondary
/// key, each after a NUL byte (which no HTTP key holds).
pub(crate) fn variant_key(primary: &[u8], id: u64, secondary: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(primary.len() + 18 + secondary.len());
    k.extend_from_slice(primary);
    k.push(0);
    k.extend_from_slice(format!("{id:016x}").as_bytes());
    k.push(0);
    k.extend_from_slice(secondary);
    k
}

/// The envelope's format version (2: a revalidation deadline, markers).
const VERSION: u8 = 2;
const NEGATIVE: u8 = 1;
const MARKER: u8 = 2;
const HEADER: usize = 2 + 5 * 8 + 2;

/// Writes an entry's envelope: version, flags, the five wall deadlines, the tags, then the
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
    for t in [
        wall.stored,
        wall.fresh,
        wall.stale,
        wall.fallback,
        wall.keep,
    ] {
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

/// Writes a marker's envelope: its deadlines (stored, then its end), its id and spec.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn encode_marker(marker: &Marker) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 8 + marker.spec.len());
    out.push(VERSION);
    out.push(MARKER);
    let now = wall_ms();
    for t in [now, now, now, now, marker.wall_end] {
        out.extend_from_slice(&t.to_be_bytes());
    }
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&marker.id.to_be_bytes());
    out.extend_from_slice(&marker.spec);
    out
}

/// An envelope read back from L2.
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Envelope<'a> {
    pub(crate) wall: Wall,
    /// Stored for tools that read L2; L1 does not need it.
    #[allow(dead_code)]
    pub(crate) negative: bool,
    /// A marker's envelope: `value` is its id and spec.
    pub(crate) marker: bool,
    pub(crate) tags: Box<[Arc<str>]>,
    pub(crate) value: &'a [u8],
}

impl Envelope<'_> {
    /// The marker this envelope holds, read against the local clock `now`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn to_marker(&self, now: Nanos) -> Option<Marker> {
        if !self.marker || self.value.len() < 8 {
            return None;
        }
        let id = u64::from_be_bytes(self.value[..8].try_into().ok()?);
        Some(Marker::new(
            id,
            Arc::from(&self.value[8..]),
            self.wall.keep,
            now,
        ))
    }
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
        keep: u64_at(34),
    };
    let n = usize::from(u16::from_be_bytes([bytes[42], bytes[43]]));
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
        marker: bytes[1] & MARKER != 0,
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
            Duration::from_secs(600),
        );
        let tags: Vec<Arc<str>> = vec![Arc::from("user:7"), Arc::from("team")];
        let bytes = encode_envelope(&wall, true, &tags, b"payload");
        let env = decode_envelope(&bytes).unwrap();
        assert_eq!(env.wall, wall);
        assert!(env.negative && !env.marker);
        assert_eq!(&*env.tags, &tags[..]);
        assert_eq!(env.value, b"payload");
        assert!(decode_envelope(&bytes[..10]).is_none());
        assert!(decode_envelope(b"\x07garbage-garbage-garbage-garbage-garbage-garbage").is_none());

        let m = Marker::new(42, Arc::from(&b"accept-language"[..]), wall_ms() + 5_000, 0);
        let bytes = encode_marker(&m);
        let env = decode_envelope(&bytes).unwrap();
        let back = env.to_marker(0).unwrap();
        assert_eq!((back.id, &*back.spec), (42, &b"accept-language"[..]));
        assert!(back.live(1) && !back.live(10_000_000_000));
    }

    #[test]
    fn freshness_follows_the_deadlines() {
        let wall = Wall::from_now(
            Duration::from_millis(100),
            Duration::from_millis(100),
            Duration::from_millis(300),
            Duration::from_millis(500),
        );
        let e = Entry::new((), wall, Box::new([]), 1, 1_000);
        assert_eq!(e.freshness(1_000), Freshness::Fresh);
        assert_eq!(e.freshness(1_000 + 150_000_000), Freshness::Stale);
        assert_eq!(e.freshness(1_000 + 250_000_000), Freshness::Fallback);
        assert!(e.serves_on_error(1_000 + 250_000_000));
        assert_eq!(e.freshness(1_000 + 450_000_000), Freshness::Kept);
        assert!(!e.serves_on_error(1_000 + 450_000_000));
        assert_eq!(e.freshness(1_000 + 650_000_000), Freshness::Expired);
        assert!(e.ttl_nanos(1_000 + 150_000_000) < 0);
        assert!(e.claim_refresh());
        assert!(!e.claim_refresh());
        e.release_refresh();
        assert!(e.claim_refresh());
    }

    #[test]
    fn variant_keys_keep_the_primary_key_as_their_prefix() {
        let k = variant_key(b"http://a/x", 255, b"en");
        assert!(k.starts_with(b"http://a/x\0"));
        assert!(k.ends_with(b"\0en"));
        assert_ne!(k, variant_key(b"http://a/x", 256, b"en"));
    }
}
