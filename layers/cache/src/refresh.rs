//! Background refreshes of stale entries, and [`Cache::get_with`]: the cache around any
//! async loader.

use std::future::Future;
use std::sync::Arc;

use omega_core::key::Key;

use crate::cache::Cache;
use crate::entry::Entry;
use crate::load::{Fetched, Loaded, Upstream};
use crate::partition::Found;
use crate::policy::Verdict;
use crate::stats::Count;

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// Refreshes a stale entry of `primary` in the background: the one refresh of its stale
    /// window (the upstream gets the entry as the base it may revalidate). Another instance's
    /// fresher copy in L2 is taken instead when there is one; an instance that holds the lease
    /// is waited for (bounded), and then nothing is called.
    pub(crate) async fn refresh<U: Upstream<V>>(
        &self,
        part: usize,
        primary: Box<[u8]>,
        stale: Arc<Entry<V>>,
        upstream: U,
    ) {
        let p = &self.inner.parts[part];
        p.count(Count::Refresh);
        let epoch = self.inner.epochs.mark(part, &primary);
        #[allow(unused_mut)]
        let mut lease = None;
        #[cfg(feature = "redis")]
        if let Some(l2) = self.inner.l2_ready().cloned() {
            use crate::entry::Freshness;
            use crate::l2::{Fetch, Mode};
            use crate::load::{Decoded, key_of};
            let key = key_of(&primary, stale.variant.as_ref()).into_owned();
            let entry_key = l2.entry_key(part, &p.cfg.name, &key);
            let fresher = |bytes: &[u8], now| match self.decode_l2(
                part,
                &key,
                bytes,
                stale.variant.clone(),
            ) {
                Some(Decoded::Entry(e))
                    if e.wall.fresh > stale.wall.fresh && e.freshness(now) == Freshness::Fresh =>
                {
                    Some(e)
                }
                _ => None,
            };
            let deadline = tokio::time::Instant::now() + l2.lease.wait;
            let mut mode = Mode::Get;
            loop {
                match l2.fetch(&entry_key, mode).await {
                    Ok(Fetch::Hit(bytes)) => {
                        if let Some(e) = fresher(&bytes, self.inner.clock.now()) {
                            self.promote(part, &primary, &key, &e, epoch);
                            return;
                        }
                        mode = Mode::LeaseOnly;
                    }
                    Ok(Fetch::Miss) => mode = Mode::LeaseOnly,
                    Ok(Fetch::Acquired(l)) => {
                        // The lease may have been given back by an instance that just stored a
                        // fresher copy: look once more before calling the upstream.
                        if let Ok(Fetch::Hit(bytes)) = l2.fetch(&entry_key, Mode::Get).await
                            && let Some(e) = fresher(&bytes, self.inner.clock.now())
                        {
                            self.promote(part, &primary, &key, &e, epoch);
                            self.release(part, Some((key.into(), l)));
                            return;
                        }
                        lease = Some((key.into(), l));
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
        match upstream.call(Some(stale)).await {
            Fetched::Store {
                value,
                rules,
                negative,
                ..
            } => {
                self.store(part, &primary, value, rules, negative, epoch, lease);
            }
            Fetched::Pass(_) | Fetched::Failed(_) => {
                p.count(Count::Passed);
                self.release(part, lease);
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
        let loader = Loader(load);
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
            Found::Miss | Found::Vary(_) => None,
        };
        match self.load(part, key, None, fallback, loader).await {
            Loaded::Cached {
                entry,
                refresh,
                upstream,
                ..
            } => {
                if let (true, Some(loader)) = (refresh, upstream) {
                    let cache = self.clone();
                    let (key, stale) = (Box::from(key), entry.clone());
                    tokio::spawn(async move { cache.refresh(part, key, stale, loader).await });
                }
                Ok(entry.value.clone())
            }
            Loaded::Own(out) => out,
        }
    }
}

/// An async loader as an upstream call (no variants).
struct Loader<F>(F);

impl<V, E, F, Fut> Upstream<V> for Loader<F>
where
    V: Clone + Send + Sync + 'static,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(V, Verdict), E>> + Send + 'static,
{
    type Out = Result<V, E>;

    fn variant(&self, _spec: &[u8]) -> Option<Key<'_>> {
        None
    }

    fn call(
        self,
        _base: Option<Arc<Entry<V>>>,
    ) -> impl Future<Output = Fetched<Result<V, E>, V>> + Send {
        let load = self.0;
        async move { fetched(load().await) }
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
