//! Per-key breakers: a registry with a maximum size and idle eviction.

use std::borrow::Borrow;
use std::fmt::{self, Display};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use omega_core::Clock;
use omega_core::task::{Lost, spawn_watched};

use crate::breaker::CircuitBreaker;
use crate::error::{CircuitOpen, ConfigError};
use crate::health::HealthSnapshot;
use crate::permit::OwnedPermit;
use crate::settings::CircuitBreakerConfig;
use crate::shards::{Shards, Slot};
use crate::state::State;

/// The default maximum number of breakers in a registry.
pub const DEFAULT_MAX_BREAKERS: usize = 10_000;

/// One breaker per key (per upstream node, per shard, ...), created on first use from the
/// registry's configuration and named after its key. Clones share the registry.
///
/// A breaker's key and name are fixed when it is created: reconfiguring it (or the registry)
/// changes thresholds, never which key it guards. The registry holds at most
/// [`max_breakers`](BreakerRegistryBuilder::max_breakers); breakers unused for the
/// [`idle_timeout`](BreakerRegistryBuilder::idle_timeout) are dropped, but only in CLOSED or
/// DISABLED: an OPEN breaker of a node that nobody calls any more stays, so that the node is
/// not tried again as if healthy. When the registry is full, a new breaker takes the place of
/// the least recently used breaker in CLOSED or DISABLED among those of its shard (a handful,
/// see below), or of another shard when its own has none; the least recently used of its
/// shard if no breaker anywhere is CLOSED or DISABLED.
///
/// The map is split into shards of about 8 breakers each (`max_breakers / 8` shards), each a
/// copy-on-write snapshot. Lookups ([`get`](Self::get),
/// [`is_call_permitted`](Self::is_call_permitted), the keyed layer) hash the key once and read
/// their shard's snapshot: no lock, no shared write, no allocation. Creating, evicting or
/// removing a breaker copies one shard (a few pointers) under a mutex: a new key costs the same
/// whether the registry holds ten breakers or a million, so a client that sends a new key per
/// request (a keyed layer reading a path segment) cannot make inserts slower for everyone.
/// Like a `HashMap`, the registry is looked up by any borrowed form of its key: a
/// `BreakerRegistry<Arc<str>>` or `<String>` by `&str`.
///
/// ```
/// use omega_circuit_breaker::{BreakerRegistry, CircuitBreakerConfig};
///
/// let nodes = BreakerRegistry::<String>::new(CircuitBreakerConfig::default()).unwrap();
/// let a = nodes.get_or_create("node-a");
/// assert_eq!(a.name(), "node-a");
/// a.force_open();
/// assert!(!nodes.is_call_permitted("node-a"));
/// assert!(nodes.is_call_permitted("node-b")); // unknown: no breaker yet
/// ```
pub struct BreakerRegistry<K> {
    inner: Arc<RegInner<K>>,
}

struct RegInner<K> {
    // Copy-on-write shards: lookups (every request of a keyed layer or a router) load their
    // shard's snapshot without a lock or a shared write; creations and evictions copy one
    // shard under `write`.
    map: Shards<K, Entry>,
    len: AtomicUsize,
    write: Mutex<()>,
    config: ArcSwap<CircuitBreakerConfig>,
    /// One clock for every breaker: making a fast clock runs CPUID, which costs tens of
    /// microseconds on a virtual machine; a clone costs nothing.
    clock: Clock,
    prefix: String,
    max: usize,
    tick: AtomicU64,
    /// How long a breaker may stay unused, when idle breakers are swept.
    idle: Option<Duration>,
    /// Set when the sweep is not running although `idle` asks for it (the registry was built
    /// outside a runtime, or the sweep ended with its runtime): the next breaker created
    /// inside a runtime starts it there.
    sweep: Lost,
    #[cfg(feature = "redis")]
    sync: Option<crate::shared::RedisSync>,
}

struct Entry {
    breaker: CircuitBreaker,
    seen: AtomicU64,
}

impl<K> Clone for BreakerRegistry<K> {
    fn clone(&self) -> Self {
        BreakerRegistry {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for BreakerRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("len", &self.len())
            .field("max", &self.inner.max)
            .finish()
    }
}

/// Builds a [`BreakerRegistry`].
pub struct BreakerRegistryBuilder<K> {
    _key: std::marker::PhantomData<fn() -> K>,
    config: CircuitBreakerConfig,
    clock: Option<Clock>,
    prefix: String,
    max: usize,
    idle: Option<Duration>,
    #[cfg(feature = "redis")]
    sync: Option<crate::shared::RedisSync>,
}

impl<K> fmt::Debug for BreakerRegistryBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistryBuilder")
            .field("config", &self.config)
            .field("max", &self.max)
            .field("idle", &self.idle)
            .finish()
    }
}

impl<K> BreakerRegistryBuilder<K> {
    /// The configuration of new breakers.
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock of new breakers (default: one [`Clock::fast`] shared by all of them).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Breakers are named `prefix` + key (default: the key alone).
    pub fn name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The maximum number of breakers (default [`DEFAULT_MAX_BREAKERS`]).
    pub fn max_breakers(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// Drops breakers unused for about `idle` (see [`BreakerRegistry::evict_idle`]); a tokio
    /// task runs the sweep every `idle / 2`, from when the registry is built inside a runtime
    /// (or creates its first breaker inside one), and again on the runtime of the next
    /// breaker created after the runtime it ran on shut down.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Shares the OPEN state of every breaker of this registry through Redis.
    #[cfg(feature = "redis")]
    pub fn shared(mut self, sync: crate::shared::RedisSync) -> Self {
        self.sync = Some(sync);
        self
    }

    /// Builds the registry.
    pub fn build(self) -> Result<BreakerRegistry<K>, ConfigError>
    where
        K: Hash + Eq + Clone + Display + Send + Sync + 'static,
    {
        self.config.validate()?;
        let registry = BreakerRegistry {
            inner: Arc::new(RegInner {
                map: Shards::new(self.max),
                len: AtomicUsize::new(0),
                write: Mutex::new(()),
                config: ArcSwap::from_pointee(self.config),
                clock: self.clock.unwrap_or_else(Clock::fast),
                prefix: self.prefix,
                max: self.max,
                tick: AtomicU64::new(0),
                idle: self.idle,
                sweep: Lost::new(),
                #[cfg(feature = "redis")]
                sync: self.sync,
            }),
        };
        if registry.inner.idle.is_some() {
            registry.inner.sweep.set();
            registry.start_sweep();
        }
        Ok(registry)
    }
}

fn evictable(b: &CircuitBreaker) -> bool {
    matches!(b.state(), State::Closed | State::Disabled) && b.is_call_permitted()
}

impl<K> BreakerRegistry<K>
where
    K: Hash + Eq + Clone + Display + Send + Sync + 'static,
{
    /// A registry creating breakers with `config`.
    pub fn new(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }

    /// Starts a builder.
    pub fn builder() -> BreakerRegistryBuilder<K> {
        BreakerRegistryBuilder {
            _key: std::marker::PhantomData,
            config: CircuitBreakerConfig::default(),
            clock: None,
            prefix: String::new(),
            max: DEFAULT_MAX_BREAKERS,
            idle: None,
            #[cfg(feature = "redis")]
            sync: None,
        }
    }

    /// The breaker of `key`, if it exists.
    pub fn get<Q>(&self, key: &Q) -> Option<CircuitBreaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |e| {
            self.touch(e);
            e.breaker.clone()
        })
    }

    /// The breaker of `key`, created with the registry's configuration if needed.
    pub fn get_or_create<Q>(&self, key: &Q) -> CircuitBreaker
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Eq + ToOwned + ?Sized,
    {
        if let Some(b) = self.get(key) {
            return b;
        }
        let config = (**self.inner.config.load()).clone();
        self.insert_with(K::from(key.to_owned()), config)
    }

    /// The breaker of `key`, created with `config` if needed (an existing breaker keeps its
    /// configuration).
    pub fn get_or_create_with<Q>(
        &self,
        key: &Q,
        config: impl FnOnce() -> CircuitBreakerConfig,
    ) -> Result<CircuitBreaker, ConfigError>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Eq + ToOwned + ?Sized,
    {
        if let Some(b) = self.get(key) {
            return Ok(b);
        }
        let config = config();
        config.validate()?;
        Ok(self.insert_with(K::from(key.to_owned()), config))
    }

    /// A permit from the breaker of `key` (created if needed): the keyed layer's path, which
    /// clones nothing but the breaker's handle when the breaker exists.
    #[inline]
    pub(crate) fn acquire<Q>(&self, key: &Q) -> Result<OwnedPermit, CircuitOpen>
    where
        K: Borrow<Q> + From<Q::Owned>,
        Q: Hash + Eq + ToOwned + ?Sized,
    {
        if let Some(permit) = self.with_entry(key, |e| {
            self.touch(e);
            e.breaker.try_acquire_owned()
        }) {
            return permit;
        }
        self.get_or_create(key).try_acquire_owned()
    }

    /// Starts the sweep of idle breakers (every `idle / 2`) on the current runtime, if it is
    /// due to start (see `RegInner::sweep`).
    fn start_sweep(&self) {
        let Some(idle) = self.inner.idle else { return };
        if !self.inner.sweep.take() {
            return;
        }
        let weak: Weak<RegInner<K>> = Arc::downgrade(&self.inner);
        let period = (idle / 2).max(Duration::from_millis(1));
        let sweep = async move {
            let mut interval = tokio::time::interval(period);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                BreakerRegistry { inner }.evict_idle();
            }
        };
        spawn_watched(sweep, self.inner.sweep.setter());
    }

    fn insert_with(&self, key: K, config: CircuitBreakerConfig) -> CircuitBreaker {
        self.start_sweep();
        // The breaker is made before the write lock is taken: the lock covers one shard's
        // copy only. A racing insert of the same key wins; this breaker is then dropped.
        let breaker = CircuitBreaker::builder(format!("{}{}", self.inner.prefix, key))
            .config(config)
            .clock(self.inner.clock.clone())
            .build()
            .expect("validated configuration");
        let map = &self.inner.map;
        let hash = map.hash(&key);
        let shard = map.index(hash);
        {
            let _w = self.lock_writes();
            if let Some(s) = map.load(shard).find(hash, &key) {
                return s.value.breaker.clone();
            }
            if self.inner.len.load(Ordering::Acquire) >= self.inner.max {
                self.evict_one(shard);
            }
            map.insert(Slot {
                hash,
                key,
                value: Entry {
                    breaker: breaker.clone(),
                    seen: AtomicU64::new(self.inner.tick.load(Ordering::Relaxed)),
                },
            });
            self.inner.len.fetch_add(1, Ordering::AcqRel);
        }
        #[cfg(feature = "redis")]
        if let Some(sync) = &self.inner.sync {
            sync.attach(&breaker);
        }
        breaker
    }

    /// Makes room for one breaker in a full registry (under the write lock): the least
    /// recently used evictable breaker of `shard`, else of the first other shard that has one,
    /// else the least recently used of `shard` (or of the first non-empty shard).
    fn evict_one(&self, shard: usize) {
        let map = &self.inner.map;
        let n = map.len();
        let lru = |i: usize, evictable_only: bool| {
            map.load(i)
                .slots()
                .iter()
                .filter(|s| !evictable_only || evictable(&s.value.breaker))
                .min_by_key(|s| s.value.seen.load(Ordering::Relaxed))
                .map(Arc::as_ptr)
        };
        let victim = (0..n)
            .map(|d| (shard + d) % n)
            .find_map(|i| lru(i, true).map(|p| (i, p)))
            .or_else(|| {
                (0..n)
                    .map(|d| (shard + d) % n)
                    .find_map(|i| lru(i, false).map(|p| (i, p)))
            });
        if let Some((i, victim)) = victim {
            let removed = map.remove_where(i, |s| std::ptr::eq(s, victim));
            self.inner.len.fetch_sub(removed.len(), Ordering::AcqRel);
        }
    }

    /// Whether a call to `key` would be admitted now ([`CircuitBreaker::is_call_permitted`]);
    /// `true` for a key without a breaker.
    pub fn is_call_permitted<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |e| e.breaker.is_call_permitted())
            .unwrap_or(true)
    }

    /// The state of `key`'s breaker, if it exists.
    pub fn state<Q>(&self, key: &Q) -> Option<State>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |e| e.breaker.state())
    }

    /// Removes `key`'s breaker.
    pub fn remove<Q>(&self, key: &Q) -> Option<CircuitBreaker>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = &self.inner.map;
        let hash = map.hash(key);
        let _w = self.lock_writes();
        let removed =
            map.remove_where(map.index(hash), |s| s.hash == hash && s.key.borrow() == key);
        self.inner.len.fetch_sub(removed.len(), Ordering::AcqRel);
        removed.first().map(|s| s.value.breaker.clone())
    }

    /// The keys and health snapshots of every breaker.
    pub fn health(&self) -> Vec<(K, HealthSnapshot)> {
        let mut breakers: Vec<(K, CircuitBreaker)> = Vec::with_capacity(self.len());
        self.for_each(|s| breakers.push((s.key.clone(), s.value.breaker.clone())));
        breakers.into_iter().map(|(k, b)| (k, b.health())).collect()
    }

    /// Changes the configuration of new breakers and of every existing one (their windows and
    /// states are kept).
    pub fn reconfigure(&self, config: CircuitBreakerConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let mut breakers = Vec::with_capacity(self.len());
        self.for_each(|s| breakers.push(s.value.breaker.clone()));
        for b in breakers {
            b.reconfigure(config.clone())?;
        }
        self.inner.config.store(Arc::new(config));
        Ok(())
    }

    /// One sweep of idle eviction: drops the breakers (in CLOSED or DISABLED) that were not
    /// used since the sweep before the previous one, and returns how many. Runs by itself
    /// every `idle_timeout / 2` when one is configured. The write lock is taken shard by
    /// shard, so creations are not held up for the whole sweep.
    pub fn evict_idle(&self) -> usize {
        let tick = self.inner.tick.fetch_add(1, Ordering::AcqRel) + 1;
        let idle = |e: &Entry| e.seen.load(Ordering::Relaxed) + 2 <= tick && evictable(&e.breaker);
        let map = &self.inner.map;
        let mut evicted = 0;
        for i in 0..map.len() {
            if !map.load(i).slots().iter().any(|s| idle(&s.value)) {
                continue;
            }
            let _w = self.lock_writes();
            let removed = map.remove_where(i, |s| idle(&s.value)).len();
            self.inner.len.fetch_sub(removed, Ordering::AcqRel);
            evicted += removed;
        }
        evicted
    }

    /// Runs `f` on the entry of `key`, if it exists.
    #[inline]
    fn with_entry<Q, R>(&self, key: &Q, f: impl FnOnce(&Entry) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = &self.inner.map;
        let hash = map.hash(key);
        let shard = map.load(map.index(hash));
        shard.find(hash, key).map(|s| f(&s.value))
    }

    #[inline]
    fn touch(&self, e: &Entry) {
        let tick = self.inner.tick.load(Ordering::Relaxed);
        if e.seen.load(Ordering::Relaxed) != tick {
            e.seen.store(tick, Ordering::Relaxed);
        }
    }
}

impl<K> BreakerRegistry<K> {
    /// The number of breakers.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Acquire)
    }

    /// `true` when the registry holds no breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn for_each(&self, mut f: impl FnMut(&Slot<K, Entry>)) {
        let map = &self.inner.map;
        for i in 0..map.len() {
            for s in map.load(i).slots() {
                f(s);
            }
        }
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
