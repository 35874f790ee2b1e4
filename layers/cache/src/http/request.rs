//! What the cache does with a request: look it up (GET and HEAD), write it through (unsafe
//! methods, RFC 9111 §4), or pass it by; its key (scheme, host and target: RFC 9111 §2, no
//! response for one host ever answers another); the URIs an unsafe request invalidates (§4.4).

use http::header::{
    AUTHORIZATION, CONTENT_LOCATION, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, LOCATION, RANGE, UPGRADE,
};
use http::{HeaderMap, Method, Request, Uri};

use super::directives::RequestDirectives;
use super::policy::HttpPolicy;
use super::range::ByteRange;
use super::status::Fwd;

/// A request's origin and target, as its key spells them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    scheme: String,
    /// Host (lowercase) and port (when not the scheme's default).
    authority: String,
    /// Path and query.
    path: String,
}

impl Target {
    /// The target of `req`: the URI's scheme and authority when it has them (absolute form,
    /// HTTP/2), else `scheme` and the `Host` field.
    pub(crate) fn of<B>(req: &Request<B>, scheme: &str) -> Target {
        let uri = req.uri();
        let scheme = uri.scheme_str().unwrap_or(scheme).to_ascii_lowercase();
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Target {
            authority: normalize_authority(&scheme, authority),
            scheme,
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        }
    }

    /// The cache key: `scheme://authority/path?query`.
    pub(crate) fn key(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.path)
    }

    /// The target a `Location` or `Content-Location` value names, resolved against this one
    /// (RFC 3986 §5.2); `None` when it is not a URI reference.
    pub(crate) fn resolve(&self, reference: &str) -> Option<Target> {
        let r = reference.trim();
        if r.is_empty() {
            return Some(self.clone());
        }
        if let Some(rest) = r.strip_prefix("//") {
            return self.resolve(&format!("{}://{rest}", self.scheme));
        }
        if r.contains("://") {
            let uri: Uri = r.parse().ok()?;
            let scheme = uri.scheme_str()?.to_ascii_lowercase();
            let authority = normalize_authority(&scheme, uri.authority()?.as_str());
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            return Some(Target {
                scheme,
                authority,
                path: if path.is_empty() { "/" } else { path }.to_owned(),
            });
        }
        let path = if r.starts_with('/') {
            r.to_owned()
        } else if let Some(query) = r.strip_prefix('?') {
            let base = self.path.split('?').next().unwrap_or("/");
            format!("{base}?{query}")
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{r}")
        };
        Some(Target {
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            path,
        })
    }

    /// `true` when `other` has the same origin (scheme, host, port; RFC 9110 §4.3.1).
    pub(crate) fn same_origin(&self, other: &Target) -> bool {
        self.scheme == other.scheme && self.authority == other.authority
    }
}

/// Lowercase host, without the scheme's default port.
fn normalize_authority(scheme: &str, authority: &str) -> String {
    let a = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_ascii_lowercase();
    let default = match scheme {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    match default {
        Some(port) if a.ends_with(port) => a[..a.len() - port.len()].to_owned(),
        _ => a,
    }
}

/// What the cache does with a request.
#[derive(Debug)]
pub(crate) enum Plan {
    /// An unsafe method (or one of unknown safety): written through; a non-error response
    /// invalidates its target (§4.4).
    Unsafe(Target),
    /// Passed by, never stored, for this reason.
    Pass(Fwd),
    /// Looked up.
    Lookup(Lookup),
}

/// A request the cache looks up.
#[derive(Debug)]
pub(crate) struct Lookup {
    pub(crate) key: String,
    pub(crate) head: bool,
    pub(crate) directives: RequestDirectives,
    pub(crate) authorized: bool,
    pub(crate) range: Option<ByteRange>,
}

impl Lookup {
    /// `true` when the request must reach the origin (or can accept no answer shared with
    /// others): it is not coalesced.
    pub(crate) fn alone(&self) -> bool {
        let d = &self.directives;
        d.no_cache || d.max_age.is_some() || d.min_fresh.is_some()
    }
}

/// What to do with `req`.
pub(crate) fn plan<B>(policy: &HttpPolicy, req: &Request<B>) -> Plan {
    let method = req.method();
    let head = *method == Method::HEAD;
    if *method != Method::GET && !head {
        let safe = matches!(*method, Method::OPTIONS | Method::TRACE | Method::CONNECT);
        return if safe {
            Plan::Pass(Fwd::Method)
        } else {
            Plan::Unsafe(Target::of(req, &policy.scheme))
        };
    }
    let h = req.headers();
    if h.contains_key(UPGRADE) {
        return Plan::Pass(Fwd::Bypass);
    }
    let directives = RequestDirectives::of(h);
    // `no-store`: nothing of this exchange may be stored (§5.2.1.5); and preconditions that
    // only the origin evaluates (§4.3.2: If-Match, If-Unmodified-Since; If-Range with Range).
    if directives.no_store
        || [IF_MATCH, IF_UNMODIFIED_SINCE, IF_RANGE]
            .iter()
            .any(|f| h.contains_key(f))
    {
        return Plan::Pass(Fwd::Request);
    }
    let range = match h.get(RANGE) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(ByteRange::parse) {
            Some(r) => Some(r),
            // Several ranges, other units: the origin answers.
            None => return Plan::Pass(Fwd::Partial),
        },
    };
    Plan::Lookup(Lookup {
        key: Target::of(req, &policy.scheme).key(),
        head,
        authorized: h.contains_key(AUTHORIZATION),
        directives,
        range,
    })
}

/// The keys an unsafe request to `target` invalidates once answered with `res_headers`: its
/// own, and those of `Location` and `Content-Location` on the same origin (§4.4).
pub(crate) fn invalidated(target: &Target, res_headers: &HeaderMap) -> Vec<String> {
    let mut keys = vec![target.key()];
    for field in [LOCATION, CONTENT_LOCATION] {
        for v in res_headers.get_all(field) {
            if let Some(t) = v.to_str().ok().and_then(|v| target.resolve(v))
                && target.same_origin(&t)
            {
                let k = t.key();
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    keys
}

/// A copy of a request's own validators (`If-None-Match`, `If-Modified-Since`).
pub(crate) fn conditions(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for f in [IF_NONE_MATCH, IF_MODIFIED_SINCE] {
        for v in headers.get_all(&f) {
            out.append(f.clone(), v.clone());
        }
    }
    out
}

/// Removes a client's own validators from a request the cache forwards to fill itself (it
/// answers them from what it stores, §4.3.2); they are kept to evaluate.
pub(crate) fn take_conditions(headers: &mut HeaderMap) -> HeaderMap {
    let mut taken = HeaderMap::new();
    for f in [IF_NONE_MATCH, IF_MODIFIED_SINCE] {
        for v in headers.get_all(&f) {
            taken.append(f.clone(), v.clone());
        }
        headers.remove(&f);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str, host: Option<&str>) -> Target {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        Target::of(&b.body(()).unwrap(), "http")
    }

    #[test]
    fn keys_hold_the_scheme_and_the_normalized_host() {
        // RFC 9111 §2: the cache key is at least the method and the target URI.
        assert_eq!(target("/a?b=1", Some("Shop:80")).key(), "http://shop/a?b=1");
        assert_eq!(target("https://Shop:443/a", None).key(), "https://shop/a");
        assert_ne!(
            target("/a", Some("one")).key(),
            target("/a", Some("two")).key()
        );
    }

    #[test]
    fn locations_resolve_against_the_request_and_only_the_same_origin_counts() {
        // RFC 9111 §4.4: Location and Content-Location, not across origins.
        let t = target("/test/1?x", Some("h"));
        let mut res = HeaderMap::new();
        res.insert(LOCATION, "/test/1/location_target".parse().unwrap());
        res.insert(CONTENT_LOCATION, "sibling".parse().unwrap());
        res.append(LOCATION, "http://other/x".parse().unwrap());
        assert_eq!(
            invalidated(&t, &res),
            [
                "http://h/test/1?x",
                "http://h/test/1/location_target",
                "http://h/test/sibling"
            ]
        );
    }
}
