//! The cache engine: partitions (each an L1), L2, coalescing and invalidation, shared by clones.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use omega_core::Clock;
use omega_core::key::check_name;

use crate::error::CacheError;
use crate::flight::Flights;
use crate::partition::{Found, Partition, PartitionState};
use crate::policy::DEFAULT_PARTITION;
use crate::stats::Stats;
use crate::storage::ValueCodec;

/// How many recent invalidation delays a cache remembers.
#[cfg(feature = "redis")]
const DELAY_SAMPLES: usize = 4096;

/// A two-tier cache of values of type `V`, shared by clones: partitions in memory (L1), and
/// optionally Redis (L2, feature `redis`) shared by every instance.
///
/// Use it through [`CacheLayer`](crate::CacheLayer) in front of a Tower service, through
/// [`Cache::get_with`] around any loader, or through [`BatchCache`](crate::BatchCache) for
/// requests of many items. See the [crate docs](crate).
pub struct Cache<V> {
    pub(crate) inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

impl<V: 'static> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Cache");
        d.field("name", &self.inner.name);
        d.field(
            "partitions",
            &self.inner.parts.iter().map(|p| &p.cfg).collect::<Vec<_>>(),
        );
        #[cfg(feature = "redis")]
        d.field(
            "l2",
            &self
                .inner
                .l2
                .as_ref()
                .map(|l| l.backend.target().to_owned()),
        );
        d.finish()
    }
}

pub(crate) struct Inner<V> {
    pub(crate) name: Arc<str>,
    pub(crate) parts: Box<[PartitionState<V>]>,
    pub(crate) clock: Clock,
    pub(crate) flights: Arc<Flights<V>>,
    /// Moved by every invalidation: a load that saw its mark change does not store.
    pub(crate) epochs: Epochs,
    /// Tells this instance's invalidation messages from others'.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) id: u64,
    delays: Mutex<Vec<u64>>,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<Arc<crate::l2::L2>>,
    /// Dropped with the cache: its invalidation listener ends.
    #[cfg(feature = "redis")]
    stop: Option<tokio::sync::watch::Sender<()>>,
    /// This cache, for a listener started again on another runtime.
    #[cfg(feature = "redis")]
    me: std::sync::Weak<Inner<V>>,
}

/// Builds a [`Cache`]; see [`Cache::builder`].
pub struct CacheBuilder<V> {
    name: Arc<str>,
    partitions: Vec<Partition<V>>,
    codec: Option<Arc<dyn ValueCodec<V>>>,
    clock: Clock,
    #[cfg(feature = "redis")]
    redis: Option<omega_core::redis::RedisBackend>,
    #[cfg(feature = "redis")]
    lease: crate::l2::LeaseCfg,
}

impl<V: 'static> std::fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// A builder: name `cache`, no partition (a [`DEFAULT_PARTITION`] is added if none is
    /// given), memory only.
    pub fn builder() -> CacheBuilder<V> {
        CacheBuilder {
            name: Arc::from("cache"),
            partitions: Vec::new(),
            codec: None,
            clock: Clock::fast(),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "redis")]
            lease: crate::l2::LeaseCfg {
                ttl: Duration::from_secs(5),
                wait: Duration::from_secs(2),
                poll: Duration::from_millis(5),
            },
        }
    }
}

impl<V: Clone + Send + Sync + 'static> CacheBuilder<V> {
    /// The cache's name, in its Redis keys and metric labels (default `cache`). Caches that
    /// share a Redis keyspace need different names.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a partition.
    pub fn partition(mut self, partition: Partition<V>) -> Self {
        self.partitions.push(partition);
        self
    }

    /// The codec of partitions that set none.
    pub fn codec(mut self, codec: impl ValueCodec<V>) -> Self {
        self.codec = Some(Arc::new(codec));
        self
    }

    /// The clock freshness is read from (default [`Clock::fast`]; tests may use
    /// [`Clock::manual`] or [`Clock::system`]).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps an L2 in Redis (standalone or Cluster) through `backend`, shared by every instance
    /// that uses the same keyspace and cache name (feature `redis`).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, backend: omega_core::redis::RedisBackend) -> Self {
        self.redis = Some(backend);
        self
    }

    /// An L2 in Redis when `backend` is one, else memory only (feature `redis`).
    #[cfg(feature = "redis")]
    pub fn backend(mut self, backend: &omega_core::Backend) -> Self {
        self.redis = backend.as_redis().cloned();
        self
    }

    /// Coalescing across instances: the lease an instance takes on loading a key expires after
    /// `ttl` (default 5 s); others wait up to `wait` (default 2 s) for its result, checking every
    /// `poll` (default 5 ms), then load it themselves.
    #[cfg(feature = "redis")]
    pub fn lease(mut self, ttl: Duration, wait: Duration, poll: Duration) -> Self {
        self.lease = crate::l2::LeaseCfg { ttl, wait, poll };
        self
    }

    /// Builds the cache. With Redis it must run inside a tokio runtime (it subscribes to the
    /// invalidation channel; L2 is used once subscribed).
    pub fn build(mut self) -> Result<Cache<V>, CacheError> {
        check_name("cache name", &self.name)?;
        if self.partitions.is_empty() {
            self.partitions.push(Partition::new(DEFAULT_PARTITION));
        }
        if self.partitions.len() > usize::from(u16::MAX) {
            return Err(CacheError::config("too many partitions"));
        }
        let mut parts = Vec::with_capacity(self.partitions.len());
        for p in self.partitions {
            check_name("partition name", &p.name)?;
            if parts
                .iter()
                .any(|q: &PartitionState<V>| q.cfg.name == p.name)
            {
                return Err(CacheError::config(format!(
                    "two partitions are named {:?}",
                    p.name
                )));
            }
            let codec = p.codec.clone().or_else(|| self.codec.clone()).ok_or_else(|| {
                CacheError::config(format!(
                    "partition {:?} has no codec: set one on it or on the cache (RawBytes, Json, Binary, ...)",
                    p.name
                ))
            })?;
            parts.push(PartitionState::new(&self.name, p, codec));
        }
        #[cfg(feature = "redis")]
        let (l2, stop) = match self.redis {
            Some(backend) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(CacheError::config(
                        "a cache with Redis must be built inside a tokio runtime",
                    ));
                }
                let l2 = Arc::new(crate::l2::L2::new(
                    backend,
                    self.name.clone(),
                    parts.len(),
                    self.lease,
                ));
                let (tx, rx) = tokio::sync::watch::channel(());
                (Some((l2, rx)), Some(tx))
            }
            None => (None, None),
        };
        #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
        let inner = Arc::new_cyclic(|me| Inner {
            name: self.name,
            parts: parts.into_boxed_slice(),
            clock: self.clock,
            flights: Arc::new(Flights::new()),
            epochs: Epochs::default(),
            id: instance_id(),
            delays: Mutex::new(Vec::new()),
            #[cfg(feature = "redis")]
            l2: l2.as_ref().map(|(l, _)| l.clone()),
            #[cfg(feature = "redis")]
            stop,
            #[cfg(feature = "redis")]
            me: me.clone(),
        });
        #[cfg(feature = "redis")]
        if let Some((l2, rx)) = l2 {
            crate::bus::spawn_listener(Arc::downgrade(&inner), l2, rx, false);
        }
        Ok(Cache { inner })
    }
}

impl<V: Clone + Send + Sync + 'static> Inner<V> {
    pub(crate) fn partition_names(&self) -> Vec<&str> {
        self.parts.iter().map(|p| &*p.cfg.name).collect()
    }

    /// The index of the partition named `name`: a scan of a few short names.
    #[inline]
    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.parts.iter().position(|p| *p.cfg.name == *name)
    }

    /// L2, while it can be trusted (subscribed, and Redis up).
    #[cfg(feature = "redis")]
    #[inline]
    pub(crate) fn l2_ready(&self) -> Option<&Arc<crate::l2::L2>> {
        self.l2
            .as_ref()
            .filter(|l| l.ready() || self.listen_again(l))
    }

    /// Starts the invalidation listener again on the current runtime when the one before
    /// ended with its own; L2 stays unused until it has subscribed. Always `false`.
    #[cfg(feature = "redis")]
    #[cold]
    fn listen_again(&self, l2: &Arc<crate::l2::L2>) -> bool {
        if let Some(stop) = &self.stop
            && l2.listener.take()
        {
            crate::bus::spawn_listener(self.me.clone(), l2.clone(), stop.subscribe(), true);
        }
        false
    }

    /// Drops every L1 entry (after a gap in the invalidation channel).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn drop_everything(&self) {
        self.epochs.bump_all();
        for p in self.parts.iter() {
            p.drop_all();
        }
    }

    fn drop_key(&self, part: usize, key: &[u8]) {
        self.epochs.bump_key(part, key);
        self.parts[part].drop_key(key);
    }

    fn drop_tag(&self, tag: &str) {
        self.epochs.bump_all();
        for p in self.parts.iter() {
            p.drop_tag(Arc::from(tag));
        }
    }

    fn drop_partition(&self, part: usize) {
        self.epochs.bump_all();
        self.parts[part].drop_all();
    }

    /// Applies an invalidation from another instance (or this one), sent at `sent_us`.
    #[cfg(feature = "redis")]
    pub(crate) fn apply(&self, msg: &crate::bus::Message, sent_us: u64) {
        use crate::bus::Message;
        match msg {
            Message::Key { partition, key } => {
                if let Some(i) = self.index(partition) {
                    self.drop_key(i, key);
                }
            }
            Message::Tag(tag) => self.drop_tag(tag),
            Message::Partition {
                partition,
                generation,
            } => {
                if let Some(i) = self.index(partition) {
                    if let Some(l2) = &self.l2 {
                        l2.observe(i, *generation);
                    }
                    self.drop_partition(i);
                }
            }
        }
        let delay = crate::entry::wall_us().saturating_sub(sent_us);
        let mut d = self.delays.lock().unwrap_or_else(PoisonError::into_inner);
        if d.len() >= DELAY_SAMPLES {
            d.remove(0);
        }
        d.push(delay);
    }
}

#[cfg(feature = "redis")]
impl<V: Clone + Send + Sync + 'static> crate::bus::Listener for Inner<V> {
    fn instance(&self) -> u64 {
        self.id
    }

    fn partition_names(&self) -> Vec<&str> {
        Inner::partition_names(self)
    }

    fn drop_everything(&self) {
        Inner::drop_everything(self);
    }

    fn apply(&self, msg: &crate::bus::Message, sent_us: u64) {
        Inner::apply(self, msg, sent_us);
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The partitions' names.
    pub fn partitions(&self) -> Vec<&str> {
        self.inner.partition_names()
    }

    /// `true` if a partition is named `name`.
    pub fn has_partition(&self, name: &str) -> bool {
        self.inner.index(name).is_some()
    }

    /// A fresh value from L1, if there is one (no L2 lookup, no refresh).
    pub fn get(&self, partition: &str, key: &[u8]) -> Option<V> {
        let part = self.inner.index(partition)?;
        match self.inner.parts[part].find(key, self.inner.clock.now()) {
            Found::Fresh(e) => Some(e.value.clone()),
            Found::Stale(e, claimed) => {
                if claimed {
                    e.release_refresh();
                }
                Some(e.value.clone())
            }
            _ => None,
        }
    }

    /// Drops `key` from `partition`: from L1 here, from L2, and from every other instance's
    /// L1 (feature `redis`). The local copy is dropped even when Redis fails; the error says
    /// the shared part may not be done.
    pub async fn invalidate(&self, partition: &str, key: &[u8]) -> Result<(), CacheError> {
        let part = self.part(partition)?;
        // Loads under way must not store what they read before the purge.
        self.inner.epochs.bump_key(part, key);
        #[cfg(feature = "redis")]
        let shared = match &self.inner.l2 {
            Some(l2) => {
                let entry_key = l2.entry_key(part, partition, key);
                let msg = crate::bus::Message::Key {
                    partition: partition.to_owned(),
                    key: key.to_vec(),
                };
                let r = async {
                    l2.delete(&entry_key).await?;
                    l2.publish(&msg.encode(self.inner.id)).await
                }
                .await;
                r.map_err(|e| CacheError::backend("invalidating a key", e))
            }
            None => Ok(()),
        };
        self.inner.drop_key(part, key);
        #[cfg(feature = "redis")]
        shared?;
        Ok(())
    }

    /// Drops every entry tagged `tag`, in every partition, on every instance.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), CacheError> {
        self.inner.epochs.bump_all();
        #[cfg(feature = "redis")]
        let shared = match &self.inner.l2 {
            Some(l2) => {
                let msg = crate::bus::Message::Tag(tag.to_owned());
                let r = async {
                    l2.purge_tag(tag).await?;
                    l2.publish(&msg.encode(self.inner.id)).await
                }
                .await;
                r.map_err(|e| CacheError::backend("invalidating a tag", e))
            }
            None => Ok(()),
        };
        self.inner.drop_tag(tag);
        #[cfg(feature = "redis")]
        shared?;
        Ok(())
    }

    /// Drops every entry of `partition`, on every instance: its L2 generation moves on, so its
    /// old L2 entries are never read again (they expire by themselves).
    pub async fn flush_partition(&self, partition: &str) -> Result<(), CacheError> {
        let part = self.part(partition)?;
        self.inner.epochs.bump_all();
        #[cfg(feature = "redis")]
        let shared = match &self.inner.l2 {
            Some(l2) => {
                let r = async {
                    let generation = l2.bump(part, partition).await?;
                    let msg = crate::bus::Message::Partition {
                        partition: partition.to_owned(),
                        generation,
                    };
                    l2.publish(&msg.encode(self.inner.id)).await
                }
                .await;
                r.map_err(|e| CacheError::backend("flushing a partition", e))
            }
            None => Ok(()),
        };
        self.inner.drop_partition(part);
        #[cfg(feature = "redis")]
        shared?;
        Ok(())
    }

    /// The sum of every partition's counters.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for p in self.inner.parts.iter() {
            s.add(&p.counters.snapshot());
        }
        s
    }

    /// One partition's counters.
    pub fn partition_stats(&self, partition: &str) -> Option<Stats> {
        let part = self.inner.index(partition)?;
        Some(self.inner.parts[part].counters.snapshot())
    }

    /// How many entries L1 holds (after running moka's pending maintenance).
    pub fn entry_count(&self) -> u64 {
        self.inner
            .parts
            .iter()
            .map(|p| {
                p.l1.run_pending_tasks();
                p.l1.entry_count()
            })
            .sum()
    }

    /// How many bytes of entries L1 holds (after running moka's pending maintenance).
    pub fn weighted_size(&self) -> u64 {
        self.inner
            .parts
            .iter()
            .map(|p| {
                p.l1.run_pending_tasks();
                p.l1.weighted_size()
            })
            .sum()
    }

    /// `true` when L2 is in use: Redis answers and the invalidation channel is subscribed
    /// (always `false` for a memory-only cache).
    pub fn is_synced(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.inner.l2 {
            return l2.is_synced() && l2.backend.is_up();
        }
        false
    }

    /// How long recent invalidations from the channel took to arrive (sent to applied, on the
    /// wall clock; up to the last 4096).
    pub fn invalidation_delays(&self) -> Vec<Duration> {
        let d = self
            .inner
            .delays
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        d.iter().map(|us| Duration::from_micros(*us)).collect()
    }

    pub(crate) fn part(&self, partition: &str) -> Result<usize, CacheError> {
        self.inner
            .index(partition)
            .ok_or_else(|| CacheError::unknown_partition(partition))
    }
}

/// How many stripes key invalidations are spread over.
const STRIPES: usize = 64;

/// Invalidation counters: one for purges that touch unknown keys (tags, partitions, gaps),
/// and striped ones for single keys, so a key purge cancels only the loads of its stripe.
pub(crate) struct Epochs {
    all: AtomicU64,
    stripes: [AtomicU64; STRIPES],
    hasher: foldhash::fast::FixedState,
}

impl Default for Epochs {
    fn default() -> Self {
        Epochs {
            all: AtomicU64::new(0),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            hasher: foldhash::fast::FixedState::default(),
        }
    }
}

/// What a load saw of the invalidation counters when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark(u64, u64);

impl Epochs {
    fn stripe(&self, part: usize, key: &[u8]) -> &AtomicU64 {
        let h = self.hasher.hash_one((part, key));
        &self.stripes[(h as usize) % STRIPES]
    }

    /// The counters that concern `key` of partition `part`.
    pub(crate) fn mark(&self, part: usize, key: &[u8]) -> Mark {
        Mark(
            self.all.load(Ordering::Acquire),
            self.stripe(part, key).load(Ordering::Acquire),
        )
    }

    pub(crate) fn bump_key(&self, part: usize, key: &[u8]) {
        self.stripe(part, key).fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
}

/// A random id for this cache instance.
fn instance_id() -> u64 {
    let s = foldhash::fast::RandomState::default();
    s.hash_one((std::process::id(), std::time::SystemTime::now()))
}
