//! Field-level caching of requests for many items: [`BatchCache`].
//!
//! A request for many items (`GET /items?ids=1,2,3`, a GraphQL list, a federated entity
//! fetch) is split into one key per item. Items found in L1, then in L2 (one `MGET` on a
//! standalone server; on a cluster, one `GET` per item, sent together), answer at once; only
//! the missing items go upstream, in one batched call; the answer is merged back in the order
//! of the request. Its TTL is the least of its parts' (what is left of each cached item's
//! freshness, and each loaded item's TTL), as Apollo computes a response's max-age from its
//! fields.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use omega_core::key::Key;

use crate::cache::Cache;
#[cfg(feature = "redis")]
use crate::entry::Freshness;
use crate::error::CacheError;
#[cfg(feature = "redis")]
use crate::load::Decoded;
use crate::partition::Found;
use crate::policy::Verdict;
use crate::stats::Count;

/// What identifies one item: integers (their little-endian bytes, as everywhere in omega),
/// strings and bytes.
pub trait ItemKey: Clone + Send + 'static {
    /// The item's key.
    fn item_key(&self) -> Key<'_>;
}

macro_rules! int_items {
    ($($t:ty),*) => {$(
        impl ItemKey for $t {
            fn item_key(&self) -> Key<'_> {
                Key::from(*self)
            }
        }
    )*};
}
int_items!(u16, u32, u64, u128, i16, i32, i64, i128);

impl ItemKey for String {
    fn item_key(&self) -> Key<'_> {
        Key::from(self.as_str())
    }
}

impl ItemKey for Arc<str> {
    fn item_key(&self) -> Key<'_> {
        Key::from(&**self)
    }
}

impl ItemKey for Vec<u8> {
    fn item_key(&self) -> Key<'_> {
        Key::from(self.as_slice())
    }
}

impl ItemKey for bytes::Bytes {
    fn item_key(&self) -> Key<'_> {
        Key::from(&self[..])
    }
}

/// The answer to a batch: one value per requested item, in the request's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<V> {
    items: Vec<Option<V>>,
    ttl: Duration,
    cached: usize,
    loaded: usize,
}

impl<V> Batch<V> {
    /// The items, in the order asked; `None` where the loader gave nothing.
    pub fn items(&self) -> &[Option<V>] {
        &self.items
    }

    /// The items, consuming the batch.
    pub fn into_items(self) -> Vec<Option<V>> {
        self.items
    }

    /// How long the whole answer stays fresh: the least of its parts' (zero when a part was
    /// not cacheable).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How many items came from the cache (L1 or L2).
    pub fn cached(&self) -> usize {
        self.cached
    }

    /// How many items the loader was asked for.
    pub fn loaded(&self) -> usize {
        self.loaded
    }
}

/// A cache of items, answering requests for many of them.
///
/// A request for many items (`GET /items?ids=1,2,3`, a GraphQL list, a federated entity
/// fetch) is split into one key per item. Items found in L1, then in L2 (one `MGET` on a
/// standalone server; on a cluster, one `GET` per item, sent together), answer at once; only
/// the missing items go upstream, in one batched call; the answer is merged back in the order
/// of the request. Its TTL is the least of its parts' (what is left of each cached item's
/// freshness, and each loaded item's TTL), as Apollo computes a response's max-age from its
/// fields. Stale items answer (their part of the TTL is zero) and are reloaded by the next
/// miss; batches are not coalesced with each other.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use omega_cache::{BatchCache, Cache, Partition, RawBytes, Rules, Verdict};
///
/// let cache = Cache::<String>::builder()
///     .codec(RawBytes)
///     .partition(Partition::new("items").ttl(Duration::from_secs(60)))
///     .build()?;
/// let items = BatchCache::new(cache, "items")?;
/// let load = |ids: Vec<u64>| async move {
///     Ok::<_, std::io::Error>(ids.iter().map(|id| (format!("item {id}"), Verdict::Store(Rules::new()))).collect())
/// };
/// items.get_many(&[1u64, 2], load).await?;
/// let batch = items.get_many(&[2u64, 3, 1], load).await?;
/// assert_eq!(batch.items()[0].as_deref(), Some("item 2"));
/// assert_eq!((batch.cached(), batch.loaded()), (2, 1)); // only item 3 was loaded
/// # Ok(()) }
/// ```
pub struct BatchCache<V> {
    cache: Cache<V>,
    part: usize,
}

impl<V> Clone for BatchCache<V> {
    fn clone(&self) -> Self {
        BatchCache {
            cache: self.cache.clone(),
            part: self.part,
        }
    }
}

impl<V: Clone + Send + Sync + 'static> std::fmt::Debug for BatchCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchCache")
            .field("cache", &self.cache)
            .field("partition", &self.cache.inner.parts[self.part].cfg.name)
            .finish()
    }
}

impl<V: Clone + Send + Sync + 'static> BatchCache<V> {
    /// Items of `partition` in `cache`.
    pub fn new(cache: Cache<V>, partition: &str) -> Result<Self, CacheError> {
        let part = cache.part(partition)?;
        Ok(BatchCache { cache, part })
    }

    /// The cache.
    pub fn cache(&self) -> &Cache<V> {
        &self.cache
    }

    /// The items `ids`: cached ones from L1 or L2, the others from one call of `load`, which
    /// gets the missing ids (in the request's order, each once) and answers one value and
    /// verdict per id, in the same order. Items it does not answer (a shorter list) are
    /// `None`. An error of `load` is returned as is.
    pub async fn get_many<K, E, F, Fut>(&self, ids: &[K], load: F) -> Result<Batch<V>, E>
    where
        K: ItemKey,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<Vec<(V, Verdict)>, E>>,
    {
        let inner = &self.cache.inner;
        let p = &inner.parts[self.part];
        let now = inner.clock.now();
        let mut items: Vec<Option<V>> = vec![None; ids.len()];
        let mut ttl = Duration::MAX;
        let mut missing: Vec<usize> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let key = id.item_key();
            match p.find(key.as_bytes(), now) {
                Found::Fresh(e) => {
                    p.count(Count::Hit);
                    ttl = ttl.min(e.fresh_for(now));
                    items[i] = Some(e.value.clone());
                }
                Found::Stale(e, claimed) => {
                    // A batch has no single request to refresh with: the stale item answers
                    // (its part of the TTL is zero) and the next miss reloads it.
                    if claimed {
                        e.release_refresh();
                    }
                    p.count(Count::Stale);
                    ttl = Duration::ZERO;
                    items[i] = Some(e.value.clone());
                }
                _ => missing.push(i),
            }
        }
        // What each missing item's load saw of the invalidations when it started.
        let marks: Vec<_> = ids
            .iter()
            .map(|id| inner.epochs.mark(self.part, id.item_key().as_bytes()))
            .collect();
        #[cfg(feature = "redis")]
        if !missing.is_empty()
            && let Some(l2) = inner.l2_ready()
        {
            let keys: Vec<String> = missing
                .iter()
                .map(|&i| l2.entry_key(self.part, &p.cfg.name, ids[i].item_key().as_bytes()))
                .collect();
            if let Ok(found) = l2.get_many(&keys).await {
                let mut still = Vec::with_capacity(missing.len());
                for (&i, bytes) in missing.iter().zip(found) {
                    let key = ids[i].item_key();
                    let entry = bytes
                        .and_then(|b| self.cache.decode_l2(self.part, key.as_bytes(), &b, None));
                    match entry {
                        Some(Decoded::Entry(e))
                            if e.freshness(inner.clock.now()) == Freshness::Fresh =>
                        {
                            p.count(Count::L2Hit);
                            ttl = ttl.min(e.fresh_for(inner.clock.now()));
                            let k = key.as_bytes();
                            self.cache.promote(self.part, k, k, &e, marks[i]);
                            items[i] = Some(e.value.clone());
                        }
                        _ => still.push(i),
                    }
                }
                missing = still;
            }
        }
        let cached = ids.len() - missing.len();
        let loaded = missing.len();
        if !missing.is_empty() {
            for _ in &missing {
                p.count(Count::Miss);
            }
            p.count(Count::Upstream);
            let answers = load(missing.iter().map(|&i| ids[i].clone()).collect()).await?;
            let mut answers = answers.into_iter();
            for &i in &missing {
                let Some((value, verdict)) = answers.next() else {
                    ttl = Duration::ZERO;
                    continue;
                };
                let key = ids[i].item_key();
                let (rules, negative) = match verdict {
                    Verdict::Store(r) => (r, false),
                    Verdict::Negative(r) => (r, true),
                    Verdict::Pass | Verdict::Failure => {
                        p.count(Count::Passed);
                        ttl = Duration::ZERO;
                        items[i] = Some(value);
                        continue;
                    }
                };
                match self.cache.store(
                    self.part,
                    key.as_bytes(),
                    value.clone(),
                    rules,
                    negative,
                    marks[i],
                    None,
                ) {
                    Some(e) => ttl = ttl.min(e.fresh_for(inner.clock.now())),
                    None => ttl = Duration::ZERO,
                }
                items[i] = Some(value);
            }
        }
        if ttl == Duration::MAX {
            ttl = Duration::ZERO;
        }
        Ok(Batch {
            items,
            ttl,
            cached,
            loaded,
        })
    }
}
