//! The `RateLimit-Policy` lists of a limiter's requests (feature `http`), cached per set of
//! policies: a response copies its list without formatting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::http::header::HeaderValue;
use arc_swap::ArcSwap;

use crate::limit::LimitState;
use crate::quota::Quota;

/// The policy lists of a limiter's requests, cached per set of policies. A quota change
/// makes every cached list stale (a version number), so a list never mixes two quotas of one
/// limit for long: an entry made while a quota changed is dropped at the next look-up.
#[derive(Default)]
pub(crate) struct Policies {
    version: AtomicU64,
    lists: ArcSwap<Vec<PolicyList>>,
}

/// A cached list: the version it was made at, its set of limits, and their values.
type PolicyList = (u64, u16, Arc<[HeaderValue]>);

impl Policies {
    /// The most lists kept (sets of policies seen); others are made per response.
    const MAX_LISTS: usize = 64;

    /// The policy values of the limits in `mask`, in the limiter's order.
    pub(crate) fn list<Req>(&self, limits: &[LimitState<Req>], mask: u16) -> Arc<[HeaderValue]> {
        let version = self.version.load(Ordering::Acquire);
        if let Some((_, _, list)) = self
            .lists
            .load()
            .iter()
            .find(|(v, m, _)| *v == version && *m == mask)
        {
            return list.clone();
        }
        let list: Arc<[HeaderValue]> = limits
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .filter_map(|(_, l)| l.name.policy.header())
            .collect();
        self.lists.rcu(|lists| {
            let mut fresh: Vec<_> = lists.iter().filter(|e| e.0 == version).cloned().collect();
            if fresh.len() < Self::MAX_LISTS {
                fresh.push((version, mask, list.clone()));
            }
            fresh
        });
        list
    }

    /// Limit `l` has a new quota: its value changes and every cached list is stale.
    pub(crate) fn changed<Req>(&self, l: &LimitState<Req>, quota: Quota) {
        l.name.policy.set(&l.name, &quota);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}
