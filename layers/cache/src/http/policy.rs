//! [`HttpPolicy`]: what an RFC 9111 shared cache stores, and the few choices RFC 9111 leaves
//! to the cache (heuristics, how long stale responses are kept for revalidation, out-of-band
//! stale windows, `Set-Cookie`).

use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, DATE, HeaderName, SET_COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::date;
use super::directives::{Delta, Fields, ResponseDirectives};
use super::freshness::{self, Heuristic, Lifetime};
use super::stored::Meta;
use super::validation::{has_validator, never_stored};
use super::vary::{self, Vary};

/// What the cache does with a response that sets a cookie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum SetCookie {
    /// Not stored: the cookie reaches the client it was meant for, and nobody else (as
    /// Varnish, nginx and most CDNs do by default). RFC 9111 §7.3 allows storing it; a shared
    /// cache that did would hand one client's cookie to every other.
    #[default]
    Pass,
    /// Stored without its `Set-Cookie` fields: the client that caused the fill gets them, the
    /// others get the response without them. For responses whose cookies are not
    /// per-client (a consent banner's), when the origin cannot be changed.
    Strip,
}

/// The RFC 9111 shared-cache policy of a route: see the [module docs](crate::http).
///
/// Everything RFC 9111 decides is decided by the responses and requests themselves; the
/// settings are the cache's own choices:
///
/// | setting | default | what |
/// |---|---|---|
/// | [`name`](HttpPolicy::name) | the cache's name | the name in `Cache-Status` |
/// | [`scheme`](HttpPolicy::scheme) | `http` | the scheme of keys, for requests whose URI has none |
/// | [`tags_from`](HttpPolicy::tags_from) | none | tags for purges from a response field (`Surrogate-Key`) |
/// | [`heuristic`](HttpPolicy::heuristic) | 10%, at most 1 day | the lifetime of responses with `Last-Modified` and no explicit one (§4.2.2) |
/// | [`default_ttl`](HttpPolicy::default_ttl) | none | the lifetime of heuristically cacheable responses with neither (a heuristic too) |
/// | [`statuses`](HttpPolicy::statuses) | RFC 9110's heuristically cacheable ones | which statuses may get a heuristic lifetime |
/// | [`ttl_bounds`](HttpPolicy::ttl_bounds) | none | bounds on every lifetime (a minimum overrides the origin) |
/// | [`revalidation_window`](HttpPolicy::revalidation_window) | 1 hour | how long stale responses are kept, for conditional requests and `max-stale` |
/// | [`stale_if_error`](HttpPolicy::stale_if_error), [`stale_while_revalidate`](HttpPolicy::stale_while_revalidate) | none | stale windows for responses that neither grant nor forbid them |
/// | [`set_cookie`](HttpPolicy::set_cookie) | [`SetCookie::Pass`] | responses that set cookies |
#[derive(Clone, Debug)]
pub struct HttpPolicy {
    pub(crate) partition: Arc<str>,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) scheme: Arc<str>,
    pub(crate) tags_header: Option<HeaderName>,
    pub(crate) heuristic: Heuristic,
    pub(crate) min_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) keep: Duration,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) set_cookie: SetCookie,
}

impl HttpPolicy {
    /// The RFC 9111 shared cache over `partition`, with every default above.
    pub fn new(partition: impl Into<Arc<str>>) -> Self {
        HttpPolicy {
            partition: partition.into(),
            name: None,
            scheme: Arc::from("http"),
            tags_header: None,
            heuristic: Heuristic::default(),
            min_ttl: Duration::ZERO,
            max_ttl: Duration::MAX,
            keep: Duration::from_secs(3600),
            stale_if_error: None,
            stale_while_revalidate: None,
            set_cookie: SetCookie::Pass,
        }
    }

    /// The partition.
    pub fn partition(&self) -> &str {
        &self.partition
    }

    /// The cache's name in `Cache-Status` (default: the [`Cache`](crate::Cache)'s name).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The scheme of the keys of requests whose URI has none (server-side requests usually
    /// carry only a path): `https` behind a TLS listener. Keys always hold the scheme and the
    /// host, so responses for one host never answer another.
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = Arc::from(scheme.to_ascii_lowercase());
        self
    }

    /// Tags each stored response with the space- or comma-separated values of this response
    /// field (`Surrogate-Key`, `Cache-Tag`), for [`Cache::invalidate_tag`](crate::Cache::invalidate_tag).
    ///
    /// # Panics
    /// When `name` is not a header name.
    pub fn tags_from(mut self, name: &str) -> Self {
        self.tags_header = Some(HeaderName::try_from(name).expect("a header name"));
        self
    }

    /// Heuristic freshness (RFC 9111 §4.2.2): `percent` of the time since `Last-Modified`, at
    /// most `max`.
    pub fn heuristic(mut self, percent: u8, max: Duration) -> Self {
        self.heuristic.percent = percent;
        self.heuristic.max = max;
        self
    }

    /// The lifetime given to heuristically cacheable responses that carry neither an explicit
    /// expiration nor `Last-Modified` (default none: they are not stored). A heuristic in RFC
    /// 9111's sense: never applied to a response with explicit freshness.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.heuristic.default = Some(ttl);
        self
    }

    /// The statuses a response without explicit freshness may be stored with (default
    /// RFC 9110's heuristically cacheable ones: 200, 203, 204, 300, 301, 308, 404, 405, 410,
    /// 414, 501). Responses with explicit freshness are stored whatever their final status.
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.heuristic.statuses = statuses.into_iter().collect();
        self
    }

    /// Bounds every freshness lifetime. A maximum only shortens what the origin allows; a
    /// minimum lengthens it, overriding the origin (an out-of-band contract, RFC 9111 §4.2.4).
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max.max(min);
        self
    }

    /// How long a stale response is kept (default 1 hour): with a validator (`ETag`,
    /// `Last-Modified`), to be revalidated by a conditional request instead of fetched whole;
    /// and to answer requests whose `max-stale` accepts it (RFC 9111 §5.2.1.2).
    pub fn revalidation_window(mut self, d: Duration) -> Self {
        self.keep = d;
        self
    }

    /// How long past its freshness a response may answer when the upstream fails, for
    /// responses that say nothing about it (RFC 5861's `stale-if-error` sets its own) and do
    /// not forbid serving stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`,
    /// `no-cache`). Default none. An out-of-band contract in RFC 9111 §4.2.4's terms.
    pub fn stale_if_error(mut self, d: Duration) -> Self {
        self.stale_if_error = Some(d);
        self
    }

    /// How long past its freshness a response is served while one request revalidates it in
    /// the background, for responses that say nothing about it (RFC 5861's
    /// `stale-while-revalidate` sets its own) and do not forbid serving stale. Default none.
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.stale_while_revalidate = Some(d);
        self
    }

    /// What to do with responses that set cookies (default [`SetCookie::Pass`]).
    pub fn set_cookie(mut self, mode: SetCookie) -> Self {
        self.set_cookie = mode;
        self
    }
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotStored {
    NoStore,
    Private,
    Authorization,
    Status,
    Partial,
    VaryStar,
    SetCookie,
    /// Stale at once, with no validator and no stale window: no use.
    Useless,
}

impl NotStored {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::Status => "status",
            NotStored::Partial => "partial",
            NotStored::VaryStar => "vary-star",
            NotStored::SetCookie => "set-cookie",
            NotStored::Useless => "no-freshness",
        }
    }
}

/// How a response is stored.
#[derive(Debug)]
pub(crate) struct Storing {
    pub(crate) ttl: Duration,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    pub(crate) keep: Duration,
    pub(crate) meta: Meta,
    /// The fields stored.
    pub(crate) headers: HeaderMap,
    pub(crate) vary: Option<crate::policy::VarySpec>,
    pub(crate) tags: Vec<Arc<str>>,
}

/// When a response was asked for and received (Unix seconds).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Times {
    pub(crate) request: i64,
    pub(crate) response: i64,
}

/// The statuses a cache implements the caching rules of (RFC 9111 §3, `must-understand`):
/// RFC 9110's final statuses, partial content and `304` aside.
fn understood(status: u16) -> bool {
    matches!(status, 200..=205 | 300..=303 | 305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505)
}

impl HttpPolicy {
    /// Whether and how a shared cache stores a response with `status` and `headers` to a GET
    /// with `req` header fields (RFC 9111 §3, §3.1, §3.5, §4.1, §4.2).
    pub(crate) fn storing(
        &self,
        req: &HeaderMap,
        status: StatusCode,
        headers: &HeaderMap,
        times: Times,
    ) -> Result<Storing, NotStored> {
        let code = status.as_u16();
        if code == 206 {
            return Err(NotStored::Partial);
        }
        if code == 304 || code < 200 {
            return Err(NotStored::Status);
        }
        let cc = ResponseDirectives::of(headers);
        if cc.must_understand {
            if !understood(code) {
                return Err(NotStored::Status);
            }
        } else if cc.no_store {
            return Err(NotStored::NoStore);
        }
        if cc.private == Fields::All {
            return Err(NotStored::Private);
        }
        if req.contains_key(AUTHORIZATION) && !cc.allows_authorized() {
            return Err(NotStored::Authorization);
        }
        let vary = match vary::of(headers) {
            Vary::Star => return Err(NotStored::VaryStar),
            Vary::None => None,
            Vary::Names(spec) => {
                let secondary = vary::secondary(&spec, req);
                Some((Arc::from(spec), secondary.into_boxed_slice()))
            }
        };
        let cookies = headers.contains_key(SET_COOKIE) || headers.contains_key("set-cookie2");
        if cookies && self.set_cookie == SetCookie::Pass {
            return Err(NotStored::SetCookie);
        }
        let lifetime = freshness::lifetime(&cc, headers, status, times.response, &self.heuristic);
        if lifetime == Lifetime::Uncacheable {
            return Err(NotStored::Status);
        }
        let initial_age = freshness::initial_age(headers, times.request, times.response);
        let mut ttl = Duration::from_secs(lifetime.secs().saturating_sub(initial_age));
        if cc.no_cache == Fields::All {
            ttl = Duration::ZERO;
        } else {
            ttl = ttl.clamp(self.min_ttl, self.max_ttl);
        }
        let no_stale = cc.forbids_stale();
        let window = |directive: Delta, default: Option<Duration>| match directive {
            _ if no_stale => Duration::ZERO,
            Delta::Valid(s) => Duration::from_secs(s),
            Delta::Invalid => Duration::ZERO,
            Delta::Absent => default.unwrap_or_default(),
        };
        let swr = window(cc.stale_while_revalidate, self.stale_while_revalidate);
        let sie = window(cc.stale_if_error, self.stale_if_error);
        // Kept past its freshness: to be revalidated when it has a validator (§4.3.1), or to
        // answer a client's `max-stale` (§5.2.1.2) when it was fresh for a while.
        let keep = if has_validator(headers) || !ttl.is_zero() {
            self.keep
        } else {
            Duration::ZERO
        };
        if ttl.is_zero() && swr.is_zero() && sie.is_zero() && keep.is_zero() {
            return Err(NotStored::Useless);
        }
        let mut dropped: Vec<&str> = Vec::new();
        dropped.extend(cc.no_cache.names().iter().map(String::as_str));
        dropped.extend(cc.private.names().iter().map(String::as_str));
        if cookies {
            dropped.extend(["set-cookie", "set-cookie2"]);
        }
        let mut stored = HeaderMap::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            if never_stored(name, headers)
                || *name == http::header::AGE
                || dropped.contains(&name.as_str())
            {
                continue;
            }
            stored.append(name.clone(), value.clone());
        }
        if !stored.contains_key(DATE)
            && let Ok(v) = HeaderValue::from_str(&date::format(times.response))
        {
            stored.insert(DATE, v);
        }
        Ok(Storing {
            ttl,
            swr,
            sie,
            keep,
            meta: Meta {
                initial_age,
                no_cache: cc.no_cache == Fields::All,
                no_stale,
                authorized: cc.allows_authorized(),
                immutable: cc.immutable,
                stale_if_error: u32::try_from(sie.as_secs()).unwrap_or(u32::MAX),
            },
            tags: self.tags(headers),
            headers: stored,
            vary,
        })
    }

    /// The tags of a response, from the configured field.
    fn tags(&self, headers: &HeaderMap) -> Vec<Arc<str>> {
        let Some(h) = &self.tags_header else {
            return Vec::new();
        };
        headers
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([' ', ',']))
            .filter(|t| !t.is_empty())
            .map(Arc::from)
            .collect()
    }
}
