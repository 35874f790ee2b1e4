//! Loading on a miss: coalescing in the process, L2 (one round trip: the entry, or its lease),
//! waiting for another instance's lease, the upstream call; variants (a key whose responses
//! vary is looked up again under the request's secondary key).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use omega_core::key::Key;

use crate::cache::{Cache, Mark};
use crate::entry::{Entry, Variant, variant_key};
use crate::flight::{Followed, Join, follow};
use crate::partition::Found;
use crate::policy::Rules;
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
    /// A failure: a stored copy that may answer on errors answers instead, if there is one.
    Failed(T),
}

/// An upstream call not made yet: what a load calls when it must, and what a follower of
/// another request's load needs to know whether that load's answer is one for it.
pub(crate) trait Upstream<V>: Send + Sized + 'static {
    /// The caller's answer.
    type Out: Send + 'static;

    /// The secondary key of this call's request under a variant spec (see
    /// [`Rules::vary`](crate::Rules::vary)); `None` when it matches no variant.
    fn variant(&self, spec: &[u8]) -> Option<Key<'_>>;

    /// Makes the call. `base` is the stored copy the call may revalidate (HTTP's conditional
    /// requests) and that answers a [`Fetched::Failed`] while it may.
    fn call(
        self,
        base: Option<Arc<Entry<V>>>,
    ) -> impl Future<Output = Fetched<Self::Out, V>> + Send;
}

/// Where a cached answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// L2 (promoted to L1).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    L2,
    /// Another request's load in this process.
    Coalesced,
    /// A stored copy, because the upstream failed.
    Fallback,
}

/// How a load ended.
pub(crate) enum Loaded<T, V, U> {
    /// A stored entry answers. `refresh`: the entry is stale and this caller must refresh it
    /// (with `upstream`); `upstream` is given back whenever it was not called.
    Cached {
        entry: Arc<Entry<V>>,
        #[cfg_attr(not(feature = "http"), allow(dead_code))]
        source: Source,
        refresh: bool,
        upstream: Option<U>,
    },
    /// This caller's own upstream answer.
    Own(T),
}

#[cfg(feature = "redis")]
enum L2Step<V> {
    Hit(Arc<Entry<V>>),
    /// The key's responses vary: look the request's variant up under this marker.
    Marker(Arc<crate::entry::Marker>),
    Lease(Box<[u8]>, crate::l2::Lease),
    Alone,
}

/// A follower's verdict on the entry its leader stored.
enum Match {
    Yes,
    /// Another variant: this request's.
    Other(Variant),
    No,
}

/// Whether `entry` answers `upstream`'s request, or which variant of the same marker does.
fn matches<V, U: Upstream<V>>(entry: &Entry<V>, upstream: &U) -> Match {
    let Some(v) = &entry.variant else {
        return Match::Yes;
    };
    match upstream.variant(&v.spec) {
        Some(s) if s.as_bytes() == &*v.secondary => Match::Yes,
        Some(s) => Match::Other(Variant {
            id: v.id,
            spec: v.spec.clone(),
            secondary: s.as_bytes().into(),
        }),
        None => Match::No,
    }
}

/// The key of `variant` of `primary` (or `primary` itself).
pub(crate) fn key_of<'a>(primary: &'a [u8], variant: Option<&Variant>) -> Cow<'a, [u8]> {
    match variant {
        Some(v) => Cow::Owned(variant_key(primary, v.id, &v.secondary)),
        None => Cow::Borrowed(primary),
    }
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// Loads the request's entry of partition `part` after an L1 miss: the key `primary`, or
    /// its `variant` when the request's marker is known. `fallback` is a stored copy that may
    /// only answer a failure or be revalidated.
    pub(crate) async fn load<U: Upstream<V>>(
        &self,
        part: usize,
        primary: &[u8],
        mut variant: Option<Variant>,
        fallback: Option<Arc<Entry<V>>>,
        upstream: U,
    ) -> Loaded<U::Out, V, U> {
        let p = &self.inner.parts[part];
        p.count(Count::Miss);
        let mut hops = 0;
        loop {
            let key = key_of(primary, variant.as_ref());
            match self.inner.flights.join(part as u16, &key) {
                Join::Follow(slot) => match follow(slot).await {
                    Followed::Stored(entry) => match matches(&entry, &upstream) {
                        Match::Yes => {
                            p.count(Count::Coalesced);
                            return Loaded::Cached {
                                entry,
                                source: Source::Coalesced,
                                refresh: false,
                                upstream: Some(upstream),
                            };
                        }
                        // The leader's request selected another variant: this one is loaded
                        // under its own key (once, however many ask for it together).
                        Match::Other(v) if hops < 2 => {
                            hops += 1;
                            variant = Some(v);
                        }
                        _ => return self.alone(part, primary, fallback, upstream).await,
                    },
                    Followed::Nothing => {
                        return self.alone(part, primary, fallback, upstream).await;
                    }
                    Followed::Abandoned => {
                        if let Found::Fresh(entry) = p.find(&key, self.inner.clock.now())
                            && matches!(matches(&entry, &upstream), Match::Yes)
                        {
                            return Loaded::Cached {
                                entry,
                                source: Source::Coalesced,
                                refresh: false,
                                upstream: Some(upstream),
                            };
                        }
                    }
                },
                Join::Lead(lead) => {
                    let (loaded, shared) =
                        self.lead(part, primary, variant, fallback, upstream).await;
                    lead.finish(shared);
                    return loaded;
                }
            }
        }
    }

    /// Calls the upstream for `primary` without joining or leading a load (the request must
    /// reach the upstream, or cannot share another's answer), and stores what it gives.
    pub(crate) async fn alone<U: Upstream<V>>(
        &self,
        part: usize,
        primary: &[u8],
        fallback: Option<Arc<Entry<V>>>,
        upstream: U,
    ) -> Loaded<U::Out, V, U> {
        let epoch = self.inner.epochs.mark(part, primary);
        self.call(part, primary, epoch, fallback, None, upstream)
            .await
            .0
    }

    async fn lead<U: Upstream<V>>(
        &self,
        part: usize,
        primary: &[u8],
        variant: Option<Variant>,
        #[allow(unused_mut)] mut fallback: Option<Arc<Entry<V>>>,
        upstream: U,
    ) -> (Loaded<U::Out, V, U>, Option<Arc<Entry<V>>>) {
        let epoch = self.inner.epochs.mark(part, primary);
        #[allow(unused_mut)]
        let mut lease = None;
        #[cfg(feature = "redis")]
        if let Some(l2) = self.inner.l2_ready() {
            let mut step = self
                .l2_lookup(l2, part, primary, variant.clone(), epoch, &mut fallback)
                .await;
            if let (L2Step::Marker(m), None) = (&step, &variant) {
                step = match upstream.variant(&m.spec) {
                    Some(s) => {
                        let v = Variant {
                            id: m.id,
                            spec: m.spec.clone(),
                            secondary: s.as_bytes().into(),
                        };
                        self.l2_lookup(l2, part, primary, Some(v), epoch, &mut fallback)
                            .await
                    }
                    None => L2Step::Alone,
                };
            }
            match step {
                L2Step::Hit(entry) => {
                    let now = self.inner.clock.now();
                    let stale = entry.freshness(now) != crate::entry::Freshness::Fresh;
                    let refresh = stale && entry.claim_refresh();
                    let shared = Some(entry.clone());
                    let loaded = Loaded::Cached {
                        entry,
                        source: Source::L2,
                        refresh,
                        upstream: Some(upstream),
                    };
                    return (loaded, shared);
                }
                L2Step::Lease(k, l) => lease = Some((k, l)),
                L2Step::Marker(_) | L2Step::Alone => {}
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = variant;
        self.call(part, primary, epoch, fallback, lease, upstream)
            .await
    }

    /// Reads L2: the entry (fresh or stale: promoted to L1), or the lease to load it, or
    /// waits (bounded) for the instance that holds the lease; or the marker found at the
    /// primary key (promoted to L1), for the caller to look its variant up.
    #[cfg(feature = "redis")]
    async fn l2_lookup(
        &self,
        l2: &Arc<crate::l2::L2>,
        part: usize,
        primary: &[u8],
        variant: Option<Variant>,
        epoch: Mark,
        fallback: &mut Option<Arc<Entry<V>>>,
    ) -> L2Step<V> {
        use crate::entry::Freshness;
        use crate::l2::{Fetch, Mode};
        let p = &self.inner.parts[part];
        let key = key_of(primary, variant.as_ref());
        let entry_key = l2.entry_key(part, &p.cfg.name, &key);
        let deadline = tokio::time::Instant::now() + l2.lease.wait;
        let mut mode = Mode::GetOrLease;
        loop {
            match l2.fetch(&entry_key, mode).await {
                Ok(Fetch::Hit(bytes)) => {
                    match self.decode_l2(part, &key, &bytes, variant.clone()) {
                        Some(Decoded::Marker(m)) if variant.is_none() => {
                            let m = Arc::new(m);
                            if self.inner.epochs.mark(part, primary) == epoch {
                                p.keep_marker(primary, &m);
                            }
                            return L2Step::Marker(m);
                        }
                        Some(Decoded::Entry(entry)) => {
                            match entry.freshness(self.inner.clock.now()) {
                                Freshness::Fresh | Freshness::Stale => {
                                    p.count(Count::L2Hit);
                                    self.promote(part, primary, &key, &entry, epoch);
                                    return L2Step::Hit(entry);
                                }
                                Freshness::Fallback | Freshness::Kept => {
                                    if fallback.is_none() {
                                        *fallback = Some(entry);
                                    }
                                }
                                Freshness::Expired => {}
                            }
                        }
                        _ => {}
                    }
                    mode = Mode::LeaseOnly;
                }
                Ok(Fetch::Acquired(lease)) => return L2Step::Lease(key.into(), lease),
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

    /// An entry or a marker from an L2 envelope; `None` when it cannot be read. `variant`:
    /// the variant the key is, when it is one.
    #[cfg(feature = "redis")]
    pub(crate) fn decode_l2(
        &self,
        part: usize,
        key: &[u8],
        bytes: &[u8],
        variant: Option<Variant>,
    ) -> Option<Decoded<V>> {
        use crate::partition::PartitionState;
        let p = &self.inner.parts[part];
        let env = crate::entry::decode_envelope(bytes)?;
        let now = self.inner.clock.now();
        if env.marker {
            return env.to_marker(now).map(Decoded::Marker);
        }
        let value = p.codec.decode(env.value).ok()?;
        let weight = PartitionState::<V>::weight(env.value.len(), key.len());
        let entry = Entry::new(value, env.wall, env.tags, weight, now)
            .with_variant(variant)
            .at(key);
        Some(Decoded::Entry(Arc::new(entry)))
    }

    /// Puts an entry read from L2 into L1 at `key`, unless an invalidation of `primary` came
    /// in meanwhile.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn promote(
        &self,
        part: usize,
        primary: &[u8],
        key: &[u8],
        entry: &Arc<Entry<V>>,
        epoch: Mark,
    ) {
        if self.inner.epochs.mark(part, primary) == epoch {
            self.inner.parts[part].keep(key, entry);
        }
    }

    /// Calls the upstream and stores what it gives; returns the caller's answer and what the
    /// followers get.
    pub(crate) async fn call<U: Upstream<V>>(
        &self,
        part: usize,
        primary: &[u8],
        epoch: Mark,
        fallback: Option<Arc<Entry<V>>>,
        lease: Option<(Box<[u8]>, Lease)>,
        upstream: U,
    ) -> (Loaded<U::Out, V, U>, Option<Arc<Entry<V>>>) {
        let p = &self.inner.parts[part];
        p.count(Count::Upstream);
        match upstream.call(fallback.clone()).await {
            Fetched::Store {
                value,
                rules,
                negative,
                out,
            } => {
                let stored = self.store(part, primary, value, rules, negative, epoch, lease);
                (Loaded::Own(out), stored)
            }
            Fetched::Pass(out) => {
                p.count(Count::Passed);
                self.release(part, lease);
                (Loaded::Own(out), None)
            }
            Fetched::Failed(out) => {
                p.count(Count::Passed);
                self.release(part, lease);
                let now = self.inner.clock.now();
                match fallback {
                    Some(entry) if entry.serves_on_error(now) => {
                        p.count(Count::StaleIfError);
                        let loaded = Loaded::Cached {
                            entry,
                            source: Source::Fallback,
                            refresh: false,
                            upstream: None,
                        };
                        (loaded, None)
                    }
                    _ => (Loaded::Own(out), None),
                }
            }
        }
    }
}

/// What an L2 value holds.
#[cfg(feature = "redis")]
pub(crate) enum Decoded<V> {
    Entry(Arc<Entry<V>>),
    Marker(crate::entry::Marker),
}

#[cfg(feature = "redis")]
pub(crate) type Lease = crate::l2::Lease;
/// No leases without Redis.
#[cfg(not(feature = "redis"))]
pub(crate) type Lease = std::convert::Infallible;
