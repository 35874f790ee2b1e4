//! Storing what a load gave: in L1 at once, in L2 in the background; a variant under its key's
//! marker; leases given back.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::{Cache, Mark};
use crate::entry::{Entry, Marker, Variant, Wall, encode_envelope, variant_key};
use crate::error::CacheError;
use crate::load::Lease;
use crate::partition::PartitionState;
use crate::policy::{Rules, Verdict};
use crate::stats::Count;

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// Stores a value in L1 and (in the background) in L2, at `primary` or, for a variant
    /// ([`Rules::vary`]), at its key under `primary`'s marker. `None` when it is not stored:
    /// too large, not encodable, kept for no time at all, or an invalidation came in during
    /// the load. `lease` (the key it was taken on, and the lease) is given back either way.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn store(
        &self,
        part: usize,
        primary: &[u8],
        value: V,
        rules: Rules,
        negative: bool,
        epoch: Mark,
        lease: Option<(Box<[u8]>, Lease)>,
    ) -> Option<Arc<Entry<V>>> {
        let p = &self.inner.parts[part];
        let ttl = p.cfg.ttl_for(rules.ttl, negative);
        let swr = rules.stale_while_revalidate.unwrap_or(p.cfg.swr);
        let sie = rules.stale_if_error.unwrap_or(p.cfg.sie);
        let kept = ttl.max(swr).max(sie).max(rules.keep);
        let encoded = match p.codec.encode(&value) {
            Ok(b) if b.len() <= p.cfg.max_entry_bytes && !kept.is_zero() => b,
            _ => {
                p.count(Count::Passed);
                self.release(part, lease);
                return None;
            }
        };
        if self.inner.epochs.mark(part, primary) != epoch {
            p.count(Count::Passed);
            self.release(part, lease);
            return None;
        }
        let now = self.inner.clock.now();
        let wall = Wall::from_now(ttl, swr, sie, rules.keep);
        let (variant, marker) = match rules.vary {
            None => (None, None),
            Some((spec, secondary)) => {
                // The key's marker: the one in place if it has the same spec (its other
                // variants stay reachable), else a new one (they do not).
                let current = p.marker(primary, now).filter(|m| m.spec == spec);
                let id = current.as_ref().map_or_else(new_marker_id, |m| m.id);
                let end = current.map_or(0, |m| m.wall_end).max(wall.end());
                let marker = Arc::new(Marker::new(id, spec.clone(), end, now));
                let variant = Variant {
                    id,
                    spec,
                    secondary,
                };
                (Some(variant), Some(marker))
            }
        };
        let key: Box<[u8]> = match &variant {
            Some(v) => variant_key(primary, v.id, &v.secondary).into(),
            None => primary.into(),
        };
        let weight = PartitionState::<V>::weight(encoded.len(), key.len());
        let tags = rules.tags.into_boxed_slice();
        let entry = Arc::new(
            Entry::new(value, wall, tags, weight, now)
                .with_variant(variant)
                .at(&key),
        );
        p.keep(&key, &entry);
        if let Some(m) = &marker {
            p.keep_marker(primary, m);
        }
        p.count(Count::Stored);
        #[cfg(feature = "redis")]
        match self.inner.l2_ready().cloned() {
            Some(l2) => {
                let entry_key = l2.entry_key(part, &p.cfg.name, &key);
                let envelope = encode_envelope(&wall, negative, &entry.tags, &encoded);
                let px = wall.end().saturating_sub(wall.stored);
                let tags = entry.tags.clone();
                let lease = lease.map(|(k, l)| (l2.entry_key(part, &p.cfg.name, &k), l));
                let marker = marker.map(|m| {
                    let px = m.wall_end.saturating_sub(wall.stored);
                    let k = l2.entry_key(part, &p.cfg.name, primary);
                    (k, crate::entry::encode_marker(&m), px)
                });
                tokio::spawn(async move {
                    let _ = l2
                        .store(entry_key, envelope, px, &tags, lease, marker)
                        .await;
                });
            }
            None => self.release(part, lease),
        }
        #[cfg(not(feature = "redis"))]
        let _ = (encode_envelope, lease, marker);
        Some(entry)
    }

    /// Gives a lease back (in the background).
    pub(crate) fn release(&self, part: usize, lease: Option<(Box<[u8]>, Lease)>) {
        #[cfg(feature = "redis")]
        if let (Some((key, lease)), Some(l2)) = (lease, self.inner.l2.clone()) {
            let entry_key = l2.entry_key(part, &self.inner.parts[part].cfg.name, &key);
            tokio::spawn(async move {
                let _ = l2.release(&entry_key, lease).await;
            });
        }
        #[cfg(not(feature = "redis"))]
        let _ = (part, lease);
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

/// A fresh id for a marker: unique in this process, and unlikely to meet another instance's.
fn new_marker_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    foldhash::fast::RandomState::default().hash_one((n, std::time::SystemTime::now()))
}
