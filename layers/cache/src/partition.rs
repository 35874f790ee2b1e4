//! Partitions: named parts of a cache, each with its own capacity, TTLs, size limit and codec,
//! each an L1 of its own (moka: TinyLFU admission, per-entry expiry, a byte weigher).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use omega_core::Nanos;

use crate::entry::{Entry, Freshness, Marker, Slot};
use crate::front::Front;
use crate::stats::{Count, Counters};
use crate::storage::ValueCodec;

/// The capacity of a partition unless set: 64 MiB of entries.
pub const DEFAULT_CAPACITY: u64 = 64 << 20;
/// The TTL of a partition unless set.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// The largest entry a partition stores unless set: 1 MiB (encoded).
pub const DEFAULT_MAX_ENTRY_BYTES: usize = 1 << 20;

/// What an entry weighs beyond its encoded bytes and key (the `Arc`, deadlines, moka's node).
const OVERHEAD: u64 = 160;

/// A partition's settings; see [`CacheBuilder::partition`](crate::CacheBuilder::partition).
///
/// ```
/// use std::time::Duration;
/// use omega_cache::Partition;
///
/// let users = Partition::<bytes::Bytes>::new("users")
///     .capacity(16 << 20)
///     .ttl(Duration::from_secs(30))
///     .stale_while_revalidate(Duration::from_secs(10))
///     .negative_ttl(Duration::from_secs(5));
/// assert_eq!(users.name(), "users");
/// ```
pub struct Partition<V> {
    pub(crate) name: Arc<str>,
    pub(crate) capacity: u64,
    pub(crate) ttl: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) min_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    pub(crate) max_entry_bytes: usize,
    pub(crate) count_evictions: bool,
    pub(crate) in_memory: bool,
    pub(crate) codec: Option<Arc<dyn ValueCodec<V>>>,
}

impl<V> Clone for Partition<V> {
    fn clone(&self) -> Self {
        Partition {
            name: self.name.clone(),
            capacity: self.capacity,
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            min_ttl: self.min_ttl,
            max_ttl: self.max_ttl,
            swr: self.swr,
            sie: self.sie,
            max_entry_bytes: self.max_entry_bytes,
            count_evictions: self.count_evictions,
            in_memory: self.in_memory,
            codec: self.codec.clone(),
        }
    }
}

impl<V: 'static> std::fmt::Debug for Partition<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("stale_while_revalidate", &self.swr)
            .field("stale_if_error", &self.sie)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("count_evictions", &self.count_evictions)
            .field("in_memory", &self.in_memory)
            .field("codec", &self.codec.as_ref().map(|c| c.name()))
            .finish()
    }
}

impl<V> Partition<V> {
    /// A partition named `name` (checked when the cache is built: 1 to 128 visible ASCII
    /// characters, no braces) with [`DEFAULT_CAPACITY`], [`DEFAULT_TTL`], no stale windows,
    /// [`DEFAULT_MAX_ENTRY_BYTES`] and the cache's codec.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Partition {
            name: name.into(),
            capacity: DEFAULT_CAPACITY,
            ttl: DEFAULT_TTL,
            negative_ttl: None,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::MAX,
            swr: Duration::ZERO,
            sie: Duration::ZERO,
            max_entry_bytes: DEFAULT_MAX_ENTRY_BYTES,
            count_evictions: false,
            in_memory: true,
            codec: None,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many bytes of entries L1 keeps (encoded value, key and a fixed overhead each).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// The TTL of responses whose rules set none.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The TTL of negative answers whose rules set none (default: the TTL).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Bounds every TTL, whatever the rules ask.
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max;
        self
    }

    /// How long past its TTL an entry is served while one background request refreshes it.
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.swr = d;
        self
    }

    /// How long past its TTL an entry may answer when the upstream fails.
    pub fn stale_if_error(mut self, d: Duration) -> Self {
        self.sie = d;
        self
    }

    /// The largest entry stored (encoded bytes); larger responses pass through uncached.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.max_entry_bytes = bytes;
        self
    }

    /// Counts the entries evicted for capacity ([`Stats::evicted`](crate::Stats::evicted), the
    /// `omega_cache_evicted_total` metric). Off by default: moka then calls an eviction
    /// listener from its periodic maintenance, which makes about one allocation per 128
    /// lookups, where the hit path otherwise allocates nothing.
    pub fn count_evictions(mut self, on: bool) -> Self {
        self.count_evictions = on;
        self
    }

    /// Whether entries are kept in memory (L1; default `true`). A partition with `false` keeps
    /// its entries in L2 only (large values that should not take the process's memory): every
    /// lookup is an L2 round trip, still coalesced.
    pub fn in_memory(mut self, on: bool) -> Self {
        self.in_memory = on;
        self
    }

    /// This partition's codec, instead of the cache's.
    pub fn codec(mut self, codec: impl ValueCodec<V>) -> Self {
        self.codec = Some(Arc::new(codec));
        self
    }

    /// The TTL for a response: `ttl` (or the default for its kind), within the bounds.
    pub(crate) fn ttl_for(&self, ttl: Option<Duration>, negative: bool) -> Duration {
        let default = if negative {
            self.negative_ttl.unwrap_or(self.ttl)
        } else {
            self.ttl
        };
        ttl.unwrap_or(default)
            .clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }
}

pub(crate) type L1<V> = moka::sync::Cache<Box<[u8]>, Slot<V>, foldhash::fast::RandomState>;

/// A partition at work: its settings, codec, L1 (moka, and the front of recently hit entries
/// read before it) and counters.
pub(crate) struct PartitionState<V> {
    pub(crate) cfg: Partition<V>,
    pub(crate) codec: Arc<dyn ValueCodec<V>>,
    pub(crate) l1: L1<V>,
    pub(crate) front: Arc<Front<V>>,
    pub(crate) counters: Arc<Counters>,
}

/// What L1 says about a key.
pub(crate) enum Found<V> {
    Fresh(Arc<Entry<V>>),
    /// Stale; `true` when this caller must start the refresh.
    Stale(Arc<Entry<V>>, bool),
    /// Usable only if the upstream fails, or as the base of a revalidation.
    Fallback(Arc<Entry<V>>),
    /// The key's responses vary: look the variant up under this marker.
    Vary(Arc<Marker>),
    Miss,
}

struct PerEntry;

impl<V> Expiry<Box<[u8]>, Slot<V>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Slot<V>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for())
    }

    fn expire_after_update(
        &self,
        _key: &Box<[u8]>,
        value: &Slot<V>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep_for())
    }
}

impl<V: Clone + Send + Sync + 'static> PartitionState<V> {
    pub(crate) fn new(cache: &str, cfg: Partition<V>, codec: Arc<dyn ValueCodec<V>>) -> Self {
        let counters = Arc::new(Counters::new(cache, &cfg.name));
        let front = Arc::new(Front::new(cfg.capacity));
        let mut builder = moka::sync::Cache::builder()
            .name(&format!("{cache}/{}", cfg.name))
            .max_capacity(cfg.capacity)
            .weigher(|_k, s: &Slot<V>| s.weight())
            .expire_after(PerEntry)
            .support_invalidation_closures();
        if cfg.count_evictions {
            // moka calls the listener only where it is set (see `count_evictions`): it also
            // takes what moka evicts or expires out of the front at once.
            let (evictions, front) = (counters.clone(), front.clone());
            builder = builder.eviction_listener(move |k, v, cause| {
                if let Slot::Entry(e) = &v {
                    front.clear_entry(&k, e);
                }
                if cause == RemovalCause::Size {
                    evictions.count(Count::Evicted);
                }
            });
        }
        let l1 = builder.build_with_hasher(foldhash::fast::RandomState::default());
        PartitionState {
            cfg,
            codec,
            l1,
            front,
            counters,
        }
    }

    /// Looks `key` up at `now`: the front of L1, then moka (no allocation, no lock).
    #[inline]
    pub(crate) fn find(&self, key: &[u8], now: Nanos) -> Found<V> {
        let slot = self.front.slot(key);
        if let Some(e) = self.front.hit(slot, key, now, |e| Found::Fresh(e.clone())) {
            return e;
        }
        self.find_in_moka(key, slot, now)
    }

    /// Looks `key` (in front slot `slot`) up in moka at `now`; a fresh entry goes in the front.
    #[inline]
    pub(crate) fn find_in_moka(&self, key: &[u8], slot: usize, now: Nanos) -> Found<V> {
        let ticket = self.front.ticket(slot);
        let found = self.get(key);
        if !matches!(&found, Some(Slot::Entry(e)) if e.freshness(now) == Freshness::Fresh) {
            // Evicted, replaced by a marker, or past its freshness: the front lets it go too.
            self.front.forget(slot, key);
        }
        match found {
            None => Found::Miss,
            Some(Slot::Entry(e)) => match e.freshness(now) {
                Freshness::Fresh => {
                    self.front.fill(ticket, &e, now);
                    Found::Fresh(e)
                }
                Freshness::Stale => {
                    let claimed = e.claim_refresh();
                    Found::Stale(e, claimed)
                }
                Freshness::Fallback | Freshness::Kept => Found::Fallback(e),
                Freshness::Expired => Found::Miss,
            },
            Some(Slot::Vary(m)) if m.live(now) => Found::Vary(m),
            Some(Slot::Vary(_)) => Found::Miss,
        }
    }

    /// What L1 holds at `key`, whatever its state.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<Slot<V>> {
        if !self.cfg.in_memory {
            return None;
        }
        self.l1.get(key)
    }

    /// The live marker at `key`, if one stands there.
    pub(crate) fn marker(&self, key: &[u8], now: Nanos) -> Option<Arc<Marker>> {
        match self.get(key) {
            Some(Slot::Vary(m)) if m.live(now) => Some(m),
            _ => None,
        }
    }

    /// An entry's weight: its encoded bytes, its key and a fixed overhead.
    pub(crate) fn weight(encoded: usize, key: usize) -> u32 {
        u32::try_from(encoded as u64 + key as u64 + OVERHEAD).unwrap_or(u32::MAX)
    }

    /// Keeps `entry` in L1 (unless the partition is L2-only); the front drops what it held
    /// at `key`.
    pub(crate) fn keep(&self, key: &[u8], entry: &Arc<Entry<V>>) {
        if self.cfg.in_memory {
            self.l1.insert(key.into(), Slot::Entry(entry.clone()));
            self.front.clear_key(key);
        }
    }

    /// Keeps `marker` in L1 (unless the partition is L2-only); the front drops what it held
    /// at `key`.
    pub(crate) fn keep_marker(&self, key: &[u8], marker: &Arc<Marker>) {
        if self.cfg.in_memory {
            self.l1.insert(key.into(), Slot::Vary(marker.clone()));
            self.front.clear_key(key);
        }
    }

    /// Drops `key` from L1, moka then the front.
    pub(crate) fn drop_key(&self, key: &[u8]) {
        self.l1.invalidate(key);
        self.front.clear_key(key);
    }

    /// Drops every entry tagged `tag` from L1, moka then the front (all of it: it cannot tell
    /// which of its entries a purge that is under way in moka concerns).
    pub(crate) fn drop_tag(&self, tag: Arc<str>) {
        // Registered only with `support_invalidation_closures`, which every L1 has.
        let _ = self.l1.invalidate_entries_if(move |_, e| e.has_tag(&tag));
        self.front.clear_all();
    }

    /// Drops every entry from L1, moka then the front.
    pub(crate) fn drop_all(&self) {
        self.l1.invalidate_all();
        self.front.clear_all();
    }

    pub(crate) fn count(&self, what: Count) {
        self.counters.count(what);
    }
}
