//! Decisions on Redis (feature `redis`): leased limits spend locally, exact limits in one
//! script call, and each limit's failure policy decides when Redis fails.

use std::sync::Arc;
use std::time::Duration;

use omega_core::Nanos;

use super::RateLimiter;
use super::decision::{Decision, Tally, retry_after};
use crate::lease::{FetchGuard, Lease, Slot, Spend};
use crate::limit::{KeyOf, LimitState, MAX_LIMITS, OnBackendFailure};
use crate::quota::{Gcra, Step};
use crate::redis_store::{Item, LeaseGrant, RedisStore, RemoteStep, from_micros, redis_key};

/// A request's keys and parameters, extracted so that the request need not be borrowed
/// across the await.
pub(crate) struct Prepared {
    store: Arc<RedisStore>,
    /// The limits decided by the script.
    items: Vec<Item>,
    /// For each item, the limit it belongs to and its in-memory key (for the fallback).
    owners: Vec<(usize, Option<u64>)>,
    /// The leased limits, decided in this process.
    leases: Vec<LeaseItem>,
    cost: u32,
}

struct LeaseItem {
    owner: usize,
    local_key: Option<u64>,
    slot: Arc<Slot>,
    gcra: Gcra,
}

/// What a leased limit said.
enum LeaseStep {
    Paid {
        remaining: u32,
        reset_after: Duration,
    },
    Denied {
        retry_after: Duration,
    },
}

impl<Req: 'static> RateLimiter<Req> {
    /// Decides without Redis and without waiting when every limit is leased and every lease
    /// involved can pay; `None` otherwise (nothing is taken then). This is the common case of
    /// lease mode, and it allocates nothing.
    pub(crate) fn check_leased_locally(
        &self,
        store: &Arc<RedisStore>,
        req: &Req,
    ) -> Option<Decision<'_>> {
        let limits = &self.inner.limits;
        if !limits.iter().all(|l| l.leases.is_some()) {
            return None;
        }
        let now = self.inner.clock.now();
        let cost = self.cost(req);
        let mut tally = Tally::new();
        let mut paid: u16 = 0;
        let mut keys = [None; MAX_LIMITS];
        for (i, l) in limits.iter().enumerate() {
            let key = match l.local_key(req) {
                KeyOf::Bucket(key) => key,
                KeyOf::Skip => continue,
                KeyOf::Missing(refusal) => {
                    self.give_back_leases(paid, &keys, cost, now);
                    tally.key_missing(&l.name, refusal);
                    return Some(tally.finish(false));
                }
            };
            let leases = l.leases.as_ref()?;
            let g = l.hot.load();
            if cost > g.burst {
                // Never admitted: the full path reports it.
                self.give_back_leases(paid, &keys, cost, now);
                return None;
            }
            match leases.try_pay(key, cost, now) {
                Some((remaining, reset, top_up)) => {
                    if let Some(guard) = top_up {
                        self.top_up(store, guard, g, leases.lease);
                    }
                    paid |= 1 << i;
                    keys[i] = key;
                    tally.allow(
                        &l.name,
                        &g,
                        remaining,
                        Duration::from_nanos(reset),
                        l.shadow,
                    );
                }
                None => {
                    self.give_back_leases(paid, &keys, cost, now);
                    return None;
                }
            }
        }
        self.count_allowed(paid);
        Some(tally.finish(false))
    }

    /// Tops a lease up in the background (dropping the guard, without a runtime, lets the
    /// next caller fetch instead).
    fn top_up(&self, store: &Arc<RedisStore>, guard: FetchGuard, g: Gcra, lease: Lease) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, clock) = (store.clone(), self.inner.clock.clone());
        runtime.spawn(async move {
            let want = lease.batch.min(g.burst).max(1);
            let result = store.lease(guard.redis_key(), &g, 1, want).await;
            let now = clock.now();
            match result {
                Ok(LeaseGrant::Granted {
                    cells,
                    full_after_us,
                }) => guard.topped_up(
                    cells,
                    full_after_us.saturating_mul(1_000),
                    now,
                    omega_core::clock::duration_nanos(lease.max_hold),
                ),
                Ok(LeaseGrant::Denied { retry_us }) => {
                    guard.denied(retry_us.saturating_mul(1_000), now)
                }
                Err(_) => drop(guard),
            }
        });
    }

    fn give_back_leases(&self, paid: u16, keys: &[Option<u64>; MAX_LIMITS], cost: u32, now: Nanos) {
        for (i, l) in self.inner.limits.iter().enumerate() {
            if paid & (1 << i) != 0
                && let Some(leases) = &l.leases
            {
                leases.give_back(keys[i], cost, now);
            }
        }
    }

    /// Extracts keys and parameters, so the request need not be borrowed across the await.
    /// A request without the key of a limit that refuses such requests is refused here, before
    /// anything is taken.
    pub(crate) fn prepare_remote(
        &self,
        store: &Arc<RedisStore>,
        req: &Req,
    ) -> Result<Prepared, Decision<'_>> {
        let ks = store.backend().keyspace();
        let cost = self.cost(req);
        // Allocated on first push only: a leased-only limiter fills one vector.
        let mut items = Vec::new();
        let mut owners = Vec::new();
        let mut leases = Vec::new();
        for (i, l) in self.inner.limits.iter().enumerate() {
            let key = match &l.key {
                None => None,
                Some(source) => match source.key(req) {
                    Some(k) => Some(k),
                    None => match &l.reject_missing {
                        Some(refusal) => {
                            let mut tally = Tally::new();
                            tally.key_missing(&l.name, refusal);
                            return Err(tally.finish(false));
                        }
                        None => continue,
                    },
                },
            };
            let bytes = key.as_ref().map(|k| k.as_bytes());
            let local_key = bytes.map(|k| l.local.hash(k));
            let full_key = || redis_key(ks, &l.redis_name, bytes);
            if let Some(l_leases) = &l.leases {
                // The key is built only the first time this process sees it.
                leases.push(LeaseItem {
                    owner: i,
                    local_key,
                    slot: l_leases.slot(local_key, full_key),
                    gcra: l.hot.load(),
                });
                continue;
            }
            items.push(Item {
                key: full_key(),
                gcra: l.hot.load(),
                cost,
                shadow: l.shadow,
            });
            owners.push((i, local_key));
        }
        Ok(Prepared {
            store: store.clone(),
            items,
            owners,
            leases,
            cost,
        })
    }

    /// Decides a prepared request on Redis.
    pub(crate) async fn check_prepared(&self, prepared: Prepared) -> Decision<'_> {
        let store = prepared.store.clone();
        self.check_remote(&store, prepared).await
    }

    async fn check_remote(&self, store: &RedisStore, prepared: Prepared) -> Decision<'_> {
        let cost = prepared.cost;
        let mut tally = Tally::new();
        // Limits that admitted the request, for the `allowed` counters.
        let mut admitted: u16 = 0;
        let mut degraded = false;
        // What to give back if a later limit denies: leases paid, fallback buckets taken.
        let mut paid: u16 = 0; // indices into `prepared.leases`
        let mut fallback_taken: Vec<(usize, Option<u64>)> = Vec::new();

        // 1. Leased limits: decided here; a round trip only to renew a lease.
        for (i, item) in prepared.leases.iter().enumerate() {
            let l = &self.inner.limits[item.owner];
            let g = &item.gcra;
            match self.spend_lease(store, l, item, cost).await {
                Ok(LeaseStep::Paid {
                    remaining,
                    reset_after,
                }) => {
                    admitted |= 1 << item.owner;
                    paid |= 1 << i;
                    tally.allow(&l.name, g, remaining, reset_after, l.shadow);
                }
                Ok(LeaseStep::Denied { retry_after }) => {
                    if l.shadow {
                        l.metrics.shadow_denied();
                    } else {
                        l.metrics.denied();
                    }
                    tally.deny(&l.name, g, retry_after, l.shadow);
                }
                Err(_) => {
                    degraded = true;
                    let now = self.inner.clock.now();
                    let key = (item.owner, item.local_key);
                    if self.fallback_step(key, now, cost, &mut tally, &mut fallback_taken) {
                        admitted |= 1 << item.owner;
                    }
                }
            }
            if tally.is_refused() {
                break;
            }
        }

        // 2. Exact limits: one script call (one per slot on a cluster).
        if !tally.is_refused() && !prepared.items.is_empty() {
            #[allow(clippy::let_unit_value)] // unit without the `metrics` feature
            let started = crate::metrics::StoreMetrics::start();
            // Boxed: the call's state is large, and leased decisions never need it.
            let (items, result) = Box::pin(store.take(prepared.items)).await;
            store.metrics().decision(started);
            match result {
                Ok(steps) => {
                    for ((step, &(owner, _)), item) in
                        steps.iter().zip(&prepared.owners).zip(&items)
                    {
                        let l = &self.inner.limits[owner];
                        let g = &item.gcra;
                        match *step {
                            RemoteStep::Allow {
                                remaining,
                                reset_us,
                            } => {
                                admitted |= 1 << owner;
                                tally.allow(&l.name, g, remaining, from_micros(reset_us), l.shadow)
                            }
                            RemoteStep::Deny { retry_us, .. } => {
                                if l.shadow {
                                    l.metrics.shadow_denied();
                                } else {
                                    l.metrics.denied();
                                }
                                let retry = retry_after(g, cost, retry_us * 1_000);
                                tally.deny(&l.name, g, retry, l.shadow)
                            }
                        }
                    }
                }
                Err(_) => {
                    degraded = true;
                    let now = self.inner.clock.now();
                    for &key in &prepared.owners {
                        if self.fallback_step(key, now, cost, &mut tally, &mut fallback_taken) {
                            admitted |= 1 << key.0;
                        }
                    }
                }
            }
        }

        if !tally.is_refused() {
            self.count_allowed(admitted);
        } else {
            let now = self.inner.clock.now();
            for (i, item) in prepared.leases.iter().enumerate() {
                if paid & (1 << i) != 0 {
                    item.slot.give_back(cost, now);
                }
            }
            for (owner, key) in fallback_taken {
                let l = &self.inner.limits[owner];
                l.local.refund(key, &l.params.load().fallback, now, cost);
            }
        }
        tally.finish(degraded)
    }

    /// Spends `cost` from a leased limit, renewing its lease from Redis when it cannot pay.
    async fn spend_lease(
        &self,
        store: &RedisStore,
        l: &LimitState<Req>,
        item: &LeaseItem,
        cost: u32,
    ) -> omega_core::Result<LeaseStep> {
        let g = &item.gcra;
        if cost > g.burst {
            return Ok(LeaseStep::Denied {
                retry_after: Duration::MAX,
            });
        }
        let lease = l
            .leases
            .as_ref()
            .expect("a lease item belongs to a leased limit")
            .lease;
        loop {
            let now = self.inner.clock.now();
            match item.slot.spend(cost, now) {
                Spend::Paid {
                    remaining,
                    reset_after,
                } => {
                    return Ok(LeaseStep::Paid {
                        remaining,
                        reset_after: Duration::from_nanos(reset_after),
                    });
                }
                Spend::Denied { retry_after } => {
                    return Ok(LeaseStep::Denied {
                        retry_after: Duration::from_nanos(retry_after),
                    });
                }
                Spend::Wait => item.slot.wait_for_fetch().await,
                Spend::Fetch(guard) => {
                    let want = lease.batch.max(cost).min(g.burst);
                    #[allow(clippy::let_unit_value)] // unit without the `metrics` feature
                    let started = crate::metrics::StoreMetrics::start();
                    // Boxed: the call's state is large and most spends never need it.
                    let result = Box::pin(store.lease(&item.slot.redis_key, g, cost, want)).await;
                    store.metrics().decision(started);
                    // On error the guard drops here and the next caller may fetch.
                    let grant = result?;
                    let now = self.inner.clock.now();
                    return Ok(match grant {
                        LeaseGrant::Granted {
                            cells,
                            full_after_us,
                        } => LeaseStep::Paid {
                            remaining: guard.granted(
                                cells,
                                cost,
                                full_after_us.saturating_mul(1_000),
                                now,
                                omega_core::clock::duration_nanos(lease.max_hold),
                            ),
                            reset_after: Duration::from_micros(full_after_us),
                        },
                        LeaseGrant::Denied { retry_us } => {
                            let retry = retry_us.saturating_mul(1_000);
                            guard.denied(retry, now);
                            LeaseStep::Denied {
                                retry_after: Duration::from_nanos(retry),
                            }
                        }
                    });
                }
            }
        }
    }

    /// Redis failed for limit `owner` (its bucket `key`): its failure policy decides. Returns
    /// `true` when the limit admitted the request; fallback cells taken are recorded in
    /// `taken`.
    fn fallback_step<'a>(
        &'a self,
        (owner, key): (usize, Option<u64>),
        now: Nanos,
        cost: u32,
        tally: &mut Tally<'a>,
        taken: &mut Vec<(usize, Option<u64>)>,
    ) -> bool {
        let l = &self.inner.limits[owner];
        let params = l.params.load();
        let denied = match l.on_failure {
            OnBackendFailure::Open => false,
            OnBackendFailure::Closed => {
                let retry = Duration::from_nanos(params.gcra.interval);
                tally.deny(&l.name, &params.gcra, retry, l.shadow);
                true
            }
            OnBackendFailure::Local { .. } => {
                let g = &params.fallback;
                match l.local.step(key, g, now, cost) {
                    Step::Allow { tat } => {
                        taken.push((owner, key));
                        tally.allow_local(&l.name, g, tat, now, l.shadow);
                        false
                    }
                    Step::Deny { retry_after: r } => {
                        tally.deny(&l.name, g, retry_after(g, cost, r), l.shadow);
                        true
                    }
                }
            }
        };
        if denied {
            if l.shadow {
                l.metrics.shadow_denied();
            } else {
                l.metrics.denied();
            }
        }
        !denied
    }
}
