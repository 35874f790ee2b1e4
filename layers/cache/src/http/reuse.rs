//! Whether a stored response answers a request (RFC 9111 §4): fresh (§4.2), stale as the
//! client or the origin allows (§4.2.4, §5.2.1.2, RFC 5861), or only once revalidated (§4.3).

use std::sync::Arc;

use omega_core::Nanos;

use super::directives::RequestDirectives;
use super::status::Fwd;
use super::stored::StoredResponse;
use crate::entry::{Entry, Freshness};

/// What a stored response can do for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// It answers: fresh, or stale as the request's `max-stale` allows.
    Serve,
    /// It answers stale while one request revalidates it (`stale-while-revalidate`).
    ServeAndRefresh,
    /// It answers once revalidated (a conditional request when it has validators).
    Revalidate(Fwd),
    /// It cannot answer this request at all.
    Unusable(Fwd),
}

/// The current age of a stored response (§4.2.3): its age when stored plus its time in the
/// cache, in seconds.
pub(crate) fn age(entry: &Entry<Arc<StoredResponse>>, now: Nanos) -> u64 {
    entry
        .value
        .meta
        .initial_age
        .saturating_add(entry.resident(now).as_secs())
}

/// Seconds of freshness left (negative once stale), as `Cache-Status` writes `ttl`: rounded
/// to the nearest second, because an entry's deadlines come from the wall clock (read in
/// milliseconds when it was stored) and would otherwise show a millisecond between two readings
/// as a whole second less.
pub(crate) fn ttl(entry: &Entry<Arc<StoredResponse>>, now: Nanos) -> i64 {
    let n = entry.ttl_nanos(now);
    i64::try_from(n.saturating_add(500_000_000).div_euclid(1_000_000_000)).unwrap_or(if n < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// What `entry` can do for a request with `req` directives (and `Authorization` when
/// `authorized`) at `now`.
pub(crate) fn judge(
    entry: &Entry<Arc<StoredResponse>>,
    req: &RequestDirectives,
    authorized: bool,
    now: Nanos,
) -> Reuse {
    let meta = &entry.value.meta;
    // §3.5: a response may answer a request with Authorization only if it says so.
    if authorized && !meta.authorized {
        return Reuse::Unusable(Fwd::Request);
    }
    let state = entry.freshness(now);
    if state == Freshness::Expired {
        return Reuse::Unusable(Fwd::Stale);
    }
    let fresh = state == Freshness::Fresh;
    // RFC 8246 §2: an immutable response does not change while fresh; a client's reload
    // (no-cache, max-age=0) would only get it again.
    if fresh && meta.immutable && !meta.no_cache {
        return Reuse::Serve;
    }
    let why = if fresh { Fwd::Request } else { Fwd::Stale };
    // §5.2.2.4 and §5.2.1.4: no-cache, in the response or the request, means validate first.
    if meta.no_cache || req.no_cache {
        return Reuse::Revalidate(why);
    }
    let age = age(entry, now);
    // §5.2.1.1: the client prefers a response no older than max-age.
    if req.max_age.is_some_and(|m| age > m) {
        return Reuse::Revalidate(why);
    }
    let left = ttl(entry, now);
    if fresh {
        // §5.2.1.3: the client wants a response fresh for at least min-fresh more seconds.
        if req
            .min_fresh
            .is_some_and(|m| left < i64::try_from(m).unwrap_or(i64::MAX))
        {
            return Reuse::Revalidate(Fwd::Request);
        }
        return Reuse::Serve;
    }
    // §4.2.4: never stale when must-revalidate, proxy-revalidate or s-maxage forbid it.
    if meta.no_stale {
        return Reuse::Revalidate(Fwd::Stale);
    }
    // §5.2.1.2: max-stale, with or without a bound.
    let staleness = u64::try_from(-left).unwrap_or(0);
    if let Some(max) = req.max_stale
        && max.is_none_or(|m| staleness <= m)
    {
        return Reuse::Serve;
    }
    // RFC 5861 §3: within stale-while-revalidate, answer and revalidate in the background.
    if state == Freshness::Stale && req.min_fresh.is_none() {
        return Reuse::ServeAndRefresh;
    }
    Reuse::Revalidate(Fwd::Stale)
}

/// `true` while `stored` may answer in place of a failed upstream (RFC 5861 §4: within
/// `stale-if-error`; never when serving stale is forbidden).
pub(crate) fn serves_on_error(entry: &Entry<Arc<StoredResponse>>, now: Nanos) -> bool {
    let meta = &entry.value.meta;
    if meta.no_stale || entry.freshness(now) == Freshness::Expired {
        return false;
    }
    let left = ttl(entry, now);
    left > 0 || u64::try_from(-left).unwrap_or(u64::MAX) <= u64::from(meta.stale_if_error)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    use super::*;
    use crate::entry::Wall;

    /// An entry stored with `fresh_ms` of freshness on the wall clock, mapped onto the local
    /// clock at 0.
    fn entry(fresh_ms: u64) -> Entry<Arc<StoredResponse>> {
        let mut wall = Wall::from_now(
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        );
        wall.fresh = wall.stored + fresh_ms;
        let value = Arc::new(StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
        ));
        Entry::new(value, wall, Box::new([]), 1, 0)
    }

    #[test]
    fn ttl_does_not_lose_a_second_to_a_millisecond_between_two_clock_readings() {
        // 60 s of freshness, read back a millisecond short of it (the wall clock moved between
        // the store's reading and the entry's): `ttl=60`, as the origin's `max-age=60` says.
        assert_eq!(ttl(&entry(59_999), 0), 60);
        assert_eq!(ttl(&entry(60_000), 0), 60);
        assert_eq!(ttl(&entry(59_400), 0), 59);
        // Stale for 10 s.
        assert_eq!(ttl(&entry(0), 10_000_000_000), -10);
    }
}
