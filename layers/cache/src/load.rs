//! Loading on a miss: coalescing in the process, L2 (one round trip: the entry, or its lease),
//! waiting for another instance's lease, the upstream call, storing; and background refreshes.

use std::future::Future;
use std::sync::Arc;

use crate::cache::{Cache, Mark};
use crate::entry::{Entry, Freshness, Wall, encode_envelope};
use crate::error::CacheError;
use crate::flight::{Followed, Join, follow};
use crate::partition::{Found, PartitionState};
use crate::policy::{Rules, Verdict};
use crate::stats::Count;

/// What an upstream call gave.
pub(crate) enum Fetched<T, V> {
    /// A value to store (`negative` for a negative answer); `out` is the caller's answer.
    Store {
        value: V,
        rules: Rules,
        negative: bool,
        out: T,
    },
    /// Not stored.
    Pass(T),
    /// A failure: a stale copy within its stale-if-error window answers instead, if any.
    Failed(T),
}

/// How a load ended.
pub(crate) enum Loaded<T, V, F> {
    /// A stored entry answers: from L2, another request's load, or a stale copy after a
    /// failure. `refresh` gives the loader back when the entry is stale and this caller must
    /// refresh it.
    Cached {
        entry: Arc<Entry<V>>,
        refresh: Option<F>,
    },
    /// This caller's own upstream answer.
    Own(T),
}

#[cfg(feature = "redis")]
enum L2Step<V> {
    Hit(Arc<Entry<V>>),
    Lease(crate::l2::Lease),
    Alone,
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// Loads `key` of partition `part` after an L1 miss; `fallback` is a copy that may only
    /// answer a failure.
    pub(crate) async fn load<T, F, Fut>(
        &self,
        part: usize,
        key: &[u8],
        fallback: Option<Arc<Entry<V>>>,
        upstream: F,
    ) -> Loaded<T, V, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched<T, V>>,
    {
        let p = &self.inner.parts[part];
        p.count(Count::Miss);
        loop {
            match self.inner.flights.join(part as u16, key) {
                Join::Follow(slot) => match follow(slot).await {
                    Followed::Stored(entry) => {
                        p.count(Count::Coalesced);
                        return Loaded::Cached {
                            entry,
                            refresh: None,
                        };
                    }
                    Followed::Nothing => {
                        let epoch = self.inner.epochs.mark(part, key);
                        return self
                            .call(part, key, epoch, fallback, None, upstream)
                            .await
                            .0;
                    }
                    Followed::Abandoned => {
                        if let Found::Fresh(entry) = p.find(key, self.inner.clock.now()) {
                            return Loaded::Cached {
                                entry,
                                refresh: None,
                            };
                        }
                    }
                },
                Join::Lead(lead) => {
                    let (loaded, shared) = self.lead(part, key, fallback, upstream).await;
                    lead.finish(shared);
                    return loaded;
                }
            }
        }
    }

    async fn lead<T, F, Fut>(
        &self,
        part: usize,
        key: &[u8],
        #[allow(unused_mut)] mut fallback: Option<Arc<Entry<V>>>,
        upstream: F,
    ) -> (Loaded<T, V, F>, Option<Arc<Entry<V>>>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched<T, V>>,
    {
        let epoch = self.inner.epochs.mark(part, key);
        #[allow(unused_mut)]
        let mut lease = None;
        #[cfg(feature = "redis")]
        if let Some(l2) = self.inner.l2_ready() {
            match self.l2_lookup(l2, part, key, epoch, &mut fallback).await {
                L2Step::Hit(entry) => {
                    let stale = entry.freshness(self.inner.clock.now()) != Freshness::Fresh;
                    let refresh = (stale && entry.claim_refresh()).then_some(upstream);
                    let shared = Some(entry.clone());
                    return (Loaded::Cached { entry, refresh }, shared);
                }
                L2Step::Lease(l) => lease = Some(l),
                L2Step::Alone => {}
            }
        }
        self.call(part, key, epoch, fallback, lease, upstream).await
    }

    /// Reads L2: the entry (fresh or stale: promoted to L1), or the lease to load it, or
    /// waits (bounded) for the instance that holds the lease.
    #[cfg(feature = "redis")]
    async fn l2_lookup(
        &self,
        l2: &Arc<crate::l2::L2>,
        part: usize,
        key: &[u8],
        epoch: Mark,
        fallback: &mut Option<Arc<Entry<V>>>,
    ) -> L2Step<V> {
        use crate::l2::{Fetch, Mode};
        let p = &self.inner.parts[part];
        let entry_key = l2.entry_key(part, &p.cfg.name, key);
        let deadline = tokio::time::Instant::now() + l2.lease.wait;
        let mut mode = Mode::GetOrLease;
        loop {
            match l2.fetch(&entry_key, mode).await {
                Ok(Fetch::Hit(bytes)) => {
                    if let Some(entry) = self.decode_l2(part, key, &bytes) {
                        match entry.freshness(self.inner.clock.now()) {
                            Freshness::Fresh | Freshness::Stale => {
                                p.count(Count::L2Hit);
                                self.promote(part, key, &entry, epoch);
                                return L2Step::Hit(entry);
                            }
                            Freshness::Fallback => {
                                if fallback.is_none() {
                                    *fallback = Some(entry);
                                }
                            }
                            Freshness::Expired => {}
                        }
                    }
                    mode = Mode::LeaseOnly;
                }
                Ok(Fetch::Acquired(lease)) => return L2Step::Lease(lease),
                Ok(Fetch::Held) => {
                    if tokio::time::Instant::now() >= deadline {
                        return L2Step::Alone;
                    }
                    tokio::time::sleep(l2.lease.poll).await;
                    mode = Mode::GetOrLease;
                }
                Ok(Fetch::Miss) | Err(_) => return L2Step::Alone,
            }
        }
    }

    /// An entry from an L2 envelope; `None` when it cannot be read.
    #[cfg(feature = "redis")]
    pub(crate) fn decode_l2(&self, part: usize, key: &[u8], bytes: &[u8]) -> Option<Arc<Entry<V>>> {
        let p = &self.inner.parts[part];
        let env = crate::entry::decode_envelope(bytes)?;
        let value = p.codec.decode(env.value).ok()?;
        let weight = PartitionState::<V>::weight(env.value.len(), key.len());
        Some(Arc::new(Entry::new(
            value,
            env.wall,
            env.tags,
            weight,
            self.inner.clock.now(),
        )))
    }

    /// Puts an entry read from L2 into L1, unless an invalidation came in meanwhile.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn promote(&self, part: usize, key: &[u8], entry: &Arc<Entry<V>>, epoch: Mark) {
        if self.inner.epochs.mark(part, key) == epoch {
            self.inner.parts[part].keep(key, entry);
        }
    }

    /// Calls the upstream and stores what it gives; returns the caller's answer and what the
    /// followers get.
    async fn call<T, F, Fut>(
        &self,
        part: usize,
        key: &[u8],
        epoch: Mark,
        fallback: Option<Arc<Entry<V>>>,
        lease: Option<Lease>,
        upstream: F,
    ) -> (Loaded<T, V, F>, Option<Arc<Entry<V>>>)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched<T, V>>,
    {
        let p = &self.inner.parts[part];
        p.count(Count::Upstream);
        match upstream().await {
            Fetched::Store {
                value,
                rules,
                negative,
                out,
            } => {
                let stored = self.store(part, key, value, rules, negative, epoch, lease);
                (Loaded::Own(out), stored)
            }
            Fetched::Pass(out) => {
                p.count(Count::Passed);
                self.release(part, key, lease);
                (Loaded::Own(out), None)
            }
            Fetched::Failed(out) => {
                p.count(Count::Passed);
                self.release(part, key, lease);
                let now = self.inner.clock.now();
                match fallback {
                    Some(entry) if entry.freshness(now) != Freshness::Expired => {
                        p.count(Count::StaleIfError);
                        (
                            Loaded::Cached {
                                entry,
                                refresh: None,
                            },
                            None,
                        )
                    }
                    _ => (Loaded::Own(out), None),
                }
            }
        }
    }

    /// Stores a value in L1 and (in the background) in L2. `None` when it is not stored: too
    /// large, not encodable, a zero TTL, or an invalidation came in during the load.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store(
        &self,
        part: usize,
        key: &[u8],
        value: V,
        rules: Rules,
        negative: bool,
        epoch: Mark,
        lease: Option<Lease>,
    ) -> Option<Arc<Entry<V>>> {
        let p = &self.inner.parts[part];
        let ttl = p.cfg.ttl_for(rules.ttl, negative);
        let swr = rules.stale_while_revalidate.unwrap_or(p.cfg.swr);
        let sie = rules.stale_if_error.unwrap_or(p.cfg.sie);
        let encoded = match p.codec.encode(&value) {
            Ok(b) if b.len() <= p.cfg.max_entry_bytes && !ttl.is_zero() => b,
            _ => {
                p.count(Count::Passed);
                self.release(part, key, lease);
                return None;
            }
        };
        if self.inner.epochs.mark(part, key) != epoch {
            p.count(Count::Passed);
            self.release(part, key, lease);
            return None;
        }
        let wall = Wall::from_now(ttl, swr, sie);
        let weight = PartitionState::<V>::weight(encoded.len(), key.len());
        let tags = rules.tags.into_boxed_slice();
        let entry = Arc::new(Entry::new(
            value,
            wall,
            tags,
            weight,
            self.inner.clock.now(),
        ));
        p.keep(key, &entry);
        p.count(Count::Stored);
        #[cfg(feature = "redis")]
        let lease = match self.inner.l2_ready().cloned() {
            Some(l2) => Some((l2, lease)),
            None => {
                self.release(part, key, lease);
                None
            }
        };
        #[cfg(feature = "redis")]
        if let Some((l2, lease)) = lease {
            let entry_key = l2.entry_key(part, &p.cfg.name, key);
            let envelope = encode_envelope(&wall, negative, &entry.tags, &encoded);
            let px = wall.end().saturating_sub(wall.stored);
            let tags = entry.tags.clone();
            tokio::spawn(async move {
                let _ = l2.store(entry_key, envelope, px, &tags, lease).await;
            });
        }
        #[cfg(not(feature = "redis"))]
        let _ = (encode_envelope, lease);
        Some(entry)
    }

    /// Gives a lease back (in the background).
    fn release(&self, part: usize, key: &[u8], lease: Option<Lease>) {
        #[cfg(feature = "redis")]
        if let (Some(lease), Some(l2)) = (lease, self.inner.l2.clone()) {
            let entry_key = l2.entry_key(part, &self.inner.parts[part].cfg.name, key);
            tokio::spawn(async move {
                let _ = l2.release(&entry_key, lease).await;
            });
        }
        #[cfg(not(feature = "redis"))]
        let _ = (part, key, lease);
    }

    /// Refreshes a stale entry in the background: the one refresh of its stale window. Another
    /// instance's fresher copy in L2 is taken instead when there is one; an instance that
    /// holds the lease is waited for (bounded), and then nothing is called.
    pub(crate) async fn refresh<T, F, Fut>(
        &self,
        part: usize,
        key: Box<[u8]>,
        stale: Arc<Entry<V>>,
        upstream: F,
    ) where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched<T, V>>,
    {
        let p = &self.inner.parts[part];
        #[cfg(not(feature = "redis"))]
        let _ = &stale;
        p.count(Count::Refresh);
        let epoch = self.inner.epochs.mark(part, &key);
        #[allow(unused_mut)]
        let mut lease = None;
        #[cfg(feature = "redis")]
        if let Some(l2) = self.inner.l2_ready().cloned() {
            use crate::l2::{Fetch, Mode};
            let entry_key = l2.entry_key(part, &p.cfg.name, &key);
            let deadline = tokio::time::Instant::now() + l2.lease.wait;
            let mut mode = Mode::Get;
            loop {
                match l2.fetch(&entry_key, mode).await {
                    Ok(Fetch::Hit(bytes)) => {
                        if let Some(e) = self.decode_l2(part, &key, &bytes)
                            && e.wall.fresh > stale.wall.fresh
                            && e.freshness(self.inner.clock.now()) == Freshness::Fresh
                        {
                            self.promote(part, &key, &e, epoch);
                            return;
                        }
                        mode = Mode::LeaseOnly;
                    }
                    Ok(Fetch::Miss) => mode = Mode::LeaseOnly,
                    Ok(Fetch::Acquired(l)) => {
                        // The lease may have been given back by an instance that just stored a
                        // fresher copy: look once more before calling the upstream.
                        if let Ok(Fetch::Hit(bytes)) = l2.fetch(&entry_key, Mode::Get).await
                            && let Some(e) = self.decode_l2(part, &key, &bytes)
                            && e.wall.fresh > stale.wall.fresh
                        {
                            self.promote(part, &key, &e, epoch);
                            self.release(part, &key, Some(l));
                            return;
                        }
                        lease = Some(l);
                        break;
                    }
                    Ok(Fetch::Held) => {
                        if tokio::time::Instant::now() >= deadline {
                            stale.release_refresh();
                            return;
                        }
                        tokio::time::sleep(l2.lease.poll).await;
                        mode = Mode::Get;
                    }
                    Err(_) => break,
                }
            }
        }
        p.count(Count::Upstream);
        match upstream().await {
            Fetched::Store {
                value,
                rules,
                negative,
                ..
            } => {
                self.store(part, &key, value, rules, negative, epoch, lease);
            }
            Fetched::Pass(_) | Fetched::Failed(_) => {
                p.count(Count::Passed);
                self.release(part, &key, lease);
            }
        }
    }

    /// The value of `key` in `partition`: from L1, else L2, else `load` (one load per key at
    /// a time in this process, and with Redis, one per key across instances). `load` gives the
    /// value and its [`Verdict`]; an error is returned as is (a copy within its stale-if-error
    /// window answers instead, if there is one).
    ///
    /// # Panics
    /// When no partition is named `partition` (a programming error: check names with
    /// [`Cache::has_partition`] when they come from outside).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use omega_cache::{Cache, RawBytes, Rules, Verdict};
    ///
    /// let cache = Cache::<String>::builder().codec(RawBytes).build()?;
    /// let load = || async { Ok::<_, std::io::Error>(("slow answer".to_owned(), Verdict::Store(Rules::new()))) };
    /// let v = cache.get_with("default", b"q1", load).await?;
    /// assert_eq!(v, "slow answer");
    /// assert_eq!(cache.get("default", b"q1").as_deref(), Some("slow answer"));
    /// # Ok(()) }
    /// ```
    pub async fn get_with<E, F, Fut>(&self, partition: &str, key: &[u8], load: F) -> Result<V, E>
    where
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(V, Verdict), E>> + Send + 'static,
    {
        let part = self
            .part(partition)
            .expect("get_with: no partition has that name");
        let loader = move || async move { fetched(load().await) };
        let fallback = match self.inner.parts[part].find(key, self.inner.clock.now()) {
            Found::Fresh(e) => {
                self.inner.parts[part].count(Count::Hit);
                return Ok(e.value.clone());
            }
            Found::Stale(e, claimed) => {
                self.inner.parts[part].count(Count::Stale);
                if claimed {
                    let cache = self.clone();
                    let (key, stale) = (Box::from(key), e.clone());
                    tokio::spawn(async move { cache.refresh(part, key, stale, loader).await });
                }
                return Ok(e.value.clone());
            }
            Found::Fallback(e) => Some(e),
            Found::Miss => None,
        };
        match self.load(part, key, fallback, loader).await {
            Loaded::Cached { entry, refresh } => {
                if let Some(loader) = refresh {
                    let cache = self.clone();
                    let (key, stale) = (Box::from(key), entry.clone());
                    tokio::spawn(async move { cache.refresh(part, key, stale, loader).await });
                }
                Ok(entry.value.clone())
            }
            Loaded::Own(out) => out,
        }
    }

    /// Stores `value` under `key` as a fresh load would (L1, and L2 with Redis).
    pub fn insert(
        &self,
        partition: &str,
        key: &[u8],
        value: V,
        verdict: Verdict,
    ) -> Result<(), CacheError> {
        let part = self.part(partition)?;
        let epoch = self.inner.epochs.mark(part, key);
        let (rules, negative) = match verdict {
            Verdict::Store(r) => (r, false),
            Verdict::Negative(r) => (r, true),
            Verdict::Pass | Verdict::Failure => return Ok(()),
        };
        let p = &self.inner.parts[part];
        if let Err(e) = p.codec.encode(&value) {
            return Err(CacheError::codec(e));
        }
        self.store(part, key, value, rules, negative, epoch, None);
        Ok(())
    }
}

/// A loader's result as an upstream answer.
fn fetched<V: Clone, E>(r: Result<(V, Verdict), E>) -> Fetched<Result<V, E>, V> {
    match r {
        Ok((v, Verdict::Store(rules))) => Fetched::Store {
            value: v.clone(),
            rules,
            negative: false,
            out: Ok(v),
        },
        Ok((v, Verdict::Negative(rules))) => Fetched::Store {
            value: v.clone(),
            rules,
            negative: true,
            out: Ok(v),
        },
        Ok((v, Verdict::Pass)) => Fetched::Pass(Ok(v)),
        Ok((v, Verdict::Failure)) => Fetched::Failed(Ok(v)),
        Err(e) => Fetched::Failed(Err(e)),
    }
}

#[cfg(feature = "redis")]
pub(crate) type Lease = crate::l2::Lease;
/// No leases without Redis.
#[cfg(not(feature = "redis"))]
pub(crate) type Lease = std::convert::Infallible;
