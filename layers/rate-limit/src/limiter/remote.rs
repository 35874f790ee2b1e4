//! Decisions on Redis (feature `redis`): leased limits pay from their leases in this process,
//! exact limits in one script call, and each limit's failure policy decides when Redis fails.
//!
//! One pass over the limits ([`RateLimiter::decide_redis`]) pays every leased limit it can from
//! its lease, in place (starting a background top-up when a lease runs low or old: see
//! [`super::renew`]), and collects the exact limits. When no exact limit applies and every
//! lease paid, the decision is made there, without waiting or allocating. Otherwise the rest
//! ([`Prepared`]) goes to Redis with one deadline (the backend's operation timeout from the
//! start): leases that must be fetched first, then the exact limits' call, each bounded by
//! what is left of it. Waiters on a lease being fetched wait until the deadline at most, and
//! share the fetch's failure rather than fetch one after another. Whatever fails, the decision
//! ends by its deadline and the failure policies decide.

use std::sync::Arc;
use std::time::Duration;

use omega_core::Nanos;
use tokio::time::Instant;

use super::RateLimiter;
use super::decision::{Decision, Tally};
use crate::lease::{Slot, Spend};
use crate::limit::{LimitState, MAX_LIMITS, OnBackendFailure};
use crate::quota::{Gcra, Step};
use crate::redis_store::{Item, LeaseGrant, RedisStore, RemoteStep, redis_key};

/// What [`RateLimiter::decide_redis`] left: a decision, or the part Redis decides.
pub(crate) enum Split<'a> {
    Decided(Decision<'a>),
    Remote(Prepared),
}

/// A request's keys and parameters, extracted so that the request need not be borrowed
/// across the await.
pub(crate) struct Prepared {
    store: Arc<RedisStore>,
    /// The decision's deadline.
    deadline: Instant,
    /// The exact limits, decided by the script.
    items: Vec<Item>,
    /// For each item, the limit it belongs to and its in-memory key (for the fallback).
    owners: Vec<(usize, Option<u64>)>,
    /// Leased limits that paid in place: given back if the decision ends denied.
    paid: Vec<PaidLease>,
    /// Leased limits that could not pay in place: they fetch (or wait for a fetch).
    leases: Vec<LeaseItem>,
    cost: u32,
    /// The policies the request is under.
    policies: u16,
}

struct PaidLease {
    owner: usize,
    local_key: Option<u64>,
    from_old: u32,
    remaining: u32,
    reset: Nanos,
    gcra: Gcra,
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
        from_old: u32,
    },
    /// Redis had no cell for it before `retry` ns from now.
    Denied { retry: u64 },
}

/// Redis failed for a leased limit, or its deadline came.
struct Failed;

impl<Req: 'static> RateLimiter<Req> {
    /// Decides in place what needs no wait: every leased limit pays from its lease when it
    /// can; if no exact limit applies and every lease paid (lease mode's common case), the
    /// decision is made here and allocates nothing. Otherwise returns the part Redis decides.
    /// A request without the key of a limit that refuses such requests is refused here,
    /// before anything is taken.
    pub(crate) fn decide_redis(&self, store: &Arc<RedisStore>, req: &Req) -> Split<'_> {
        let limits = &self.inner.limits;
        let now = self.inner.clock.now();
        let cost = self.cost(req);
        let mut tally = Tally::new();
        let mut paid: u16 = 0;
        let mut keys = [None; MAX_LIMITS];
        let mut from_old = [0u32; MAX_LIMITS];
        let mut figures = [(0u32, 0 as Nanos); MAX_LIMITS];
        // Allocated on first push only: a leased-only limiter never allocates here.
        let (mut items, mut owners, mut leases) = (Vec::new(), Vec::new(), Vec::new());
        let ks = store.backend().keyspace();
        for (i, l) in limits.iter().enumerate() {
            // A global limit has no key; a keyed limit's key stays where its source returned
            // it (moved, it would be copied whole: see `LimitState::local_key`).
            let returned = match &l.key {
                None => None,
                Some(source) => source.key(req),
            };
            let key = match &returned {
                Some(k) => Some(k),
                None if l.key.is_none() => None,
                None => match &l.missing {
                    Some(missing) => {
                        self.give_back_paid(paid, &keys, &from_old, cost, now);
                        tally.key_missing(&l.name, missing);
                        return Split::Decided(tally.finish(false));
                    }
                    None => continue,
                },
            };
            tally.applies(i, l.shadow);
            let bytes = key.map(|k| k.as_bytes());
            let local_key = bytes.map(|b| l.local.hash(b));
            let g = l.gcra();
            let Some(l_leases) = &l.leases else {
                items.push(Item {
                    key: redis_key(ks, &l.redis_name, bytes),
                    gcra: g,
                    cost,
                    shadow: l.shadow,
                });
                owners.push((i, local_key));
                continue;
            };
            if cost > g.burst {
                // This limit never admits the request, whatever its lease holds.
                tally.deny(&l.name, &g, u64::MAX, 0, l.shadow);
                if l.shadow {
                    l.metrics.shadow_denied();
                    continue;
                }
                l.metrics.denied();
                tally.stopped_at(i);
                self.give_back_paid(paid, &keys, &from_old, cost, now);
                return Split::Decided(tally.finish(false));
            }
            match l_leases.try_pay(local_key, cost, now) {
                Some(p) => {
                    if let Some(guard) = p.top_up {
                        let (queue, clock) = (&self.inner.renewals, &self.inner.clock);
                        super::renew::top_up(
                            queue,
                            store,
                            clock,
                            guard,
                            g,
                            l_leases.lease,
                            p.running_low,
                        );
                    }
                    paid |= 1 << i;
                    (keys[i], from_old[i], figures[i]) =
                        (local_key, p.from_old, (p.remaining, p.reset));
                    tally.allow(
                        &l.name,
                        &g,
                        p.remaining,
                        Duration::from_nanos(p.reset),
                        l.shadow,
                    );
                }
                None => leases.push(LeaseItem {
                    owner: i,
                    local_key,
                    slot: l_leases.slot(local_key, now, || redis_key(ks, &l.redis_name, bytes)),
                    gcra: g,
                }),
            }
        }
        if items.is_empty() && leases.is_empty() {
            self.count_allowed(paid);
            return Split::Decided(tally.finish(false));
        }
        let paid = (0..limits.len())
            .filter(|&i| paid & (1 << i) != 0)
            .map(|i| PaidLease {
                owner: i,
                local_key: keys[i],
                from_old: from_old[i],
                remaining: figures[i].0,
                reset: figures[i].1,
                gcra: limits[i].gcra(),
            })
            .collect();
        Split::Remote(Prepared {
            store: store.clone(),
            deadline: store.deadline(),
            items,
            owners,
            paid,
            leases,
            cost,
            policies: tally.policies(),
        })
    }

    /// Gives back what the leases in `paid` paid in place.
    fn give_back_paid(
        &self,
        paid: u16,
        keys: &[Option<u64>; MAX_LIMITS],
        from_old: &[u32; MAX_LIMITS],
        cost: u32,
        now: Nanos,
    ) {
        for (i, l) in self.inner.limits.iter().enumerate() {
            if paid & (1 << i) != 0
                && let Some(leases) = &l.leases
            {
                leases.give_back(keys[i], cost, from_old[i], now);
            }
        }
    }

    /// Decides a prepared request on Redis, by its deadline.
    pub(crate) async fn check_prepared(&self, prepared: Prepared) -> Decision<'_> {
        let Prepared {
            store,
            deadline,
            items,
            owners,
            paid,
            leases,
            cost,
            policies,
        } = prepared;
        let limits = &self.inner.limits;
        let mut tally = Tally::new();
        tally.set_policies(policies);
        // Limits that admitted the request, for the `allowed` counters.
        let mut admitted: u16 = 0;
        let mut degraded = false;
        for p in &paid {
            let l = &limits[p.owner];
            admitted |= 1 << p.owner;
            tally.allow(
                &l.name,
                &p.gcra,
                p.remaining,
                Duration::from_nanos(p.reset),
                l.shadow,
            );
        }
        // What to give back if a limit denies: leases fetched, fallback buckets taken.
        let mut fetched: Vec<(usize, u32)> = Vec::new();
        let mut fallback_taken: Vec<(usize, Option<u64>, u64)> = Vec::new();

        // 1. Leased limits that fetch; a round trip only to renew a lease.
        for (i, item) in leases.iter().enumerate() {
            let l = &limits[item.owner];
            let g = &item.gcra;
            match self.spend_lease(&store, l, item, cost, deadline).await {
                Ok(LeaseStep::Paid {
                    remaining,
                    reset_after,
                    from_old,
                }) => {
                    admitted |= 1 << item.owner;
                    fetched.push((i, from_old));
                    tally.allow(&l.name, g, remaining, reset_after, l.shadow);
                }
                Ok(LeaseStep::Denied { retry }) => {
                    if l.shadow {
                        l.metrics.shadow_denied();
                    } else {
                        l.metrics.denied();
                    }
                    tally.deny(&l.name, g, retry_nanos(g, cost, retry), 0, l.shadow);
                }
                Err(Failed) => {
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

        // 2. Exact limits: one script call (one per slot on a cluster), within what is left
        // of the deadline.
        if !tally.is_refused() && !items.is_empty() {
            #[allow(clippy::let_unit_value)] // unit without the `metrics` feature
            let started = crate::metrics::StoreMetrics::start();
            // Boxed: the call's state is large, and leased decisions never need it.
            let (items, result) = Box::pin(store.take(items, Some(deadline))).await;
            store.metrics().decision(started);
            match result {
                Ok(steps) => {
                    for ((step, &(owner, _)), item) in steps.iter().zip(&owners).zip(&items) {
                        let l = &limits[owner];
                        let g = &item.gcra;
                        match *step {
                            RemoteStep::Allow {
                                remaining,
                                reset_ns,
                            } => {
                                admitted |= 1 << owner;
                                let reset = Duration::from_nanos(reset_ns);
                                tally.allow(&l.name, g, remaining, reset, l.shadow)
                            }
                            RemoteStep::Deny { retry_ns, reset_ns } => {
                                if l.shadow {
                                    l.metrics.shadow_denied();
                                } else {
                                    l.metrics.denied();
                                }
                                let retry = retry_nanos(g, cost, retry_ns);
                                tally.deny(&l.name, g, retry, reset_ns, l.shadow)
                            }
                        }
                    }
                }
                Err(_) => {
                    degraded = true;
                    let now = self.inner.clock.now();
                    for &key in &owners {
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
            for p in &paid {
                if let Some(l_leases) = &limits[p.owner].leases {
                    l_leases.give_back(p.local_key, cost, p.from_old, now);
                }
            }
            for (i, from_old) in fetched {
                leases[i].slot.give_back(cost, from_old, now);
            }
            for (owner, key, amount) in fallback_taken {
                limits[owner].local.refund(key, amount, now);
            }
        }
        tally.finish(degraded)
    }

    /// Spends `cost` from a leased limit, renewing its lease from Redis when it cannot pay,
    /// by `deadline`.
    async fn spend_lease(
        &self,
        store: &RedisStore,
        l: &LimitState<Req>,
        item: &LeaseItem,
        cost: u32,
        deadline: Instant,
    ) -> Result<LeaseStep, Failed> {
        let g = &item.gcra;
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
                    from_old,
                } => {
                    return Ok(LeaseStep::Paid {
                        remaining,
                        reset_after: Duration::from_nanos(reset_after),
                        from_old,
                    });
                }
                Spend::Denied { retry_after } => {
                    return Ok(LeaseStep::Denied { retry: retry_after });
                }
                // Until the deadline at most; a failed fetch fails its waiters too.
                Spend::Wait => item
                    .slot
                    .wait_for_fetch(deadline)
                    .await
                    .map_err(|_| Failed)?,
                Spend::Fetch(guard) => {
                    let want = lease.batch.max(cost).min(g.burst);
                    #[allow(clippy::let_unit_value)] // unit without the `metrics` feature
                    let started = crate::metrics::StoreMetrics::start();
                    let sent = self.inner.clock.now();
                    // Boxed: the call's state is large and most spends never need it.
                    let result =
                        Box::pin(store.lease(&item.slot.redis_key, g, cost, want, Some(deadline)))
                            .await;
                    store.metrics().decision(started);
                    let Ok(grant) = result else {
                        guard.failed();
                        return Err(Failed);
                    };
                    let now = self.inner.clock.now();
                    return Ok(match grant {
                        LeaseGrant::Granted {
                            cells,
                            full_after_ns,
                        } => {
                            let hold = lease.hold_nanos();
                            let (remaining, from_old) =
                                guard.granted(cells, cost, full_after_ns, sent, now, hold);
                            LeaseStep::Paid {
                                remaining,
                                reset_after: Duration::from_nanos(full_after_ns),
                                from_old,
                            }
                        }
                        LeaseGrant::Denied { retry_ns } => {
                            guard.denied(retry_ns, now);
                            LeaseStep::Denied { retry: retry_ns }
                        }
                    });
                }
            }
        }
    }

    /// Redis failed for limit `owner` (its bucket `key`): its failure policy decides. Returns
    /// `true` when the limit admitted the request; fallback cells taken (and how much) are
    /// recorded in `taken`.
    fn fallback_step<'a>(
        &'a self,
        (owner, key): (usize, Option<u64>),
        now: Nanos,
        cost: u32,
        tally: &mut Tally<'a>,
        taken: &mut Vec<(usize, Option<u64>, u64)>,
    ) -> bool {
        let l = &self.inner.limits[owner];
        let params = l.params.load();
        let denied = match l.on_failure {
            OnBackendFailure::Open => false,
            OnBackendFailure::Closed => {
                let g = &params.gcra;
                tally.deny(&l.name, g, g.interval, 0, l.shadow);
                true
            }
            OnBackendFailure::Local { .. } => {
                let g = &params.fallback;
                match l.local.step(key, g, now, cost) {
                    Step::Allow { tat } => {
                        taken.push((owner, key, g.interval.saturating_mul(u64::from(cost))));
                        tally.allow_local(&l.name, g, tat, now, l.shadow);
                        false
                    }
                    Step::Deny { retry_after: r } => {
                        let (retry, reset) = g.denial(cost, r);
                        tally.deny(&l.name, g, retry, reset, l.shadow);
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

/// The retry-after of a denial Redis made, in nanoseconds: `u64::MAX` (never) when the cost
/// is above the burst.
fn retry_nanos(g: &Gcra, cost: u32, nanos: u64) -> u64 {
    if cost > g.burst { u64::MAX } else { nanos }
}
