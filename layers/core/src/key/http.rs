//! Key sources for HTTP requests (feature `http`).
//!
//! Every source borrows the key from the request where it holds one; [`ClientIp`] and
//! [`Endpoint`] compute theirs inline (no allocation for an address or a short template).

use std::borrow::Cow;
use std::net::SocketAddr;

use ::http::Request;
use ::http::header::HeaderName;

use super::{Key, KeySource};
use crate::error::{Error, Result};

/// The address of the connection's peer, as a request extension. Servers that know it insert
/// it (the gateway does; axum's `ConnectInfo<SocketAddr>` is read too, with feature `axum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The template of the route a request matched (`/users/{id}`), as a request extension, for
/// [`Endpoint`]. Routers that know it insert it (the gateway inserts its route prefix; axum's
/// `MatchedPath` is read too, with feature `axum`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTemplate(pub std::sync::Arc<str>);

/// A header's value (its first line), such as an API key or a user id. A request without the
/// header, or with an empty value, has no key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header(HeaderName);

impl Header {
    /// The header `name`.
    ///
    /// # Panics
    /// When `name` is not a valid header name (a programming error, as with
    /// `HeaderName::from_static`); configuration code uses [`Header::try_new`].
    pub fn new(name: &str) -> Self {
        Header::try_new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The header `name`, or an error naming it when it is not a valid header name.
    pub fn try_new(name: &str) -> Result<Self> {
        HeaderName::try_from(name)
            .map(Header)
            .map_err(|_| Error::config(format!("{name:?} is not a header name")))
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.0
    }
}

impl<B: 'static> KeySource<Request<B>> for Header {
    #[inline]
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Key<'a>> {
        let value = req.headers().get(&self.0)?.as_bytes();
        (!value.is_empty()).then_some(Key::borrowed(value))
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Owned(format!("header {}", self.0))
    }
}

/// A query parameter's value (its first occurrence, as written in the URI, without
/// percent-decoding). A parameter written without `=` has the empty key; a request without the
/// parameter has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query(String);

impl Query {
    /// The parameter `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Query(name.into())
    }
}

impl<B: 'static> KeySource<Request<B>> for Query {
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Key<'a>> {
        req.uri().query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == self.0).then(|| Key::from(v))
        })
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Owned(format!("query parameter {}", self.0))
    }
}

/// The `n`-th segment of the path (0-based, after the leading `/`): with `PathSegment(1)`,
/// `/users/42/orders` has the key `42`. Empty segments count; a path too short has no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathSegment(pub usize);

impl<B: 'static> KeySource<Request<B>> for PathSegment {
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Key<'a>> {
        let path = req.uri().path();
        let path = path.strip_prefix('/').unwrap_or(path);
        path.split('/').nth(self.0).map(Key::from)
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Owned(format!("path segment {}", self.0))
    }
}

/// The whole path, without the query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Path;

impl<B: 'static> KeySource<Request<B>> for Path {
    #[inline]
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Key<'a>> {
        Some(Key::from(req.uri().path()))
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Borrowed("the path")
    }
}

/// The endpoint: the method and the route template, such as `GET /users/{id}`; never the raw
/// path, which a client could vary without end.
///
/// The template is the [`RouteTemplate`] extension, or with feature `axum` the
/// `MatchedPath` that axum sets while routing (add the layer with `Router::layer` or
/// `route_layer`, not around the router). Requests that matched no route share one key per
/// method (`GET <unmatched>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint;

impl<B: 'static> KeySource<Request<B>> for Endpoint {
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Key<'a>> {
        let template = route_template(req).unwrap_or("<unmatched>");
        Some(Key::format(format_args!(
            "{} {template}",
            req.method().as_str()
        )))
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Borrowed("the endpoint")
    }
}

fn route_template<B>(req: &Request<B>) -> Option<&str> {
    if let Some(t) = req.extensions().get::<RouteTemplate>() {
        return Some(&t.0);
    }
    #[cfg(feature = "axum")]
    if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(m.as_str());
    }
    None
}

/// The peer address of a request: [`PeerAddr`], or axum's `ConnectInfo<SocketAddr>` (feature
/// `axum`).
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    if let Some(PeerAddr(addr)) = req.extensions().get::<PeerAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*addr);
    }
    None
}

pub use super::client_ip::{ClientIp, DEFAULT_IPV6_PREFIX, ForwardingHeader};

/// Any of the built-in HTTP key sources, chosen at run time (from a configuration file,
/// [`crate::config::KeyConfig`]) without boxing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnyKey {
    /// [`Global`](super::Global).
    Global,
    /// [`ClientIp`].
    ClientIp(ClientIp),
    /// [`Endpoint`].
    Endpoint(Endpoint),
    /// [`Path`].
    Path(Path),
    /// [`Header`].
    Header(Header),
    /// [`Query`].
    Query(Query),
    /// [`PathSegment`].
    PathSegment(PathSegment),
}

impl<B: 'static> KeySource<Request<B>> for AnyKey {
    #[inline]
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Key<'a>> {
        match self {
            AnyKey::Global => super::Global.key(req),
            AnyKey::ClientIp(k) => k.key(req),
            AnyKey::Endpoint(k) => k.key(req),
            AnyKey::Path(k) => k.key(req),
            AnyKey::Header(k) => k.key(req),
            AnyKey::Query(k) => k.key(req),
            AnyKey::PathSegment(k) => k.key(req),
        }
    }

    fn describe(&self) -> Cow<'static, str> {
        match self {
            AnyKey::Global => KeySource::<Request<B>>::describe(&super::Global),
            AnyKey::ClientIp(k) => KeySource::<Request<B>>::describe(k),
            AnyKey::Endpoint(k) => KeySource::<Request<B>>::describe(k),
            AnyKey::Path(k) => KeySource::<Request<B>>::describe(k),
            AnyKey::Header(k) => KeySource::<Request<B>>::describe(k),
            AnyKey::Query(k) => KeySource::<Request<B>>::describe(k),
            AnyKey::PathSegment(k) => KeySource::<Request<B>>::describe(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_borrow_from_the_request() {
        let mut req = Request::get("/users/42/orders?tenant=acme&flag")
            .header("x-user-id", "u-7")
            .header("x-empty", "")
            .body(())
            .unwrap();
        assert_eq!(Header::new("x-user-id").key(&req), Some(Key::from("u-7")));
        assert_eq!(Header::new("x-empty").key(&req), None);
        assert_eq!(Header::new("x-other").key(&req), None);
        assert_eq!(Query::new("tenant").key(&req), Some(Key::from("acme")));
        assert_eq!(Query::new("flag").key(&req), Some(Key::from("")));
        assert_eq!(Query::new("missing").key(&req), None);
        assert_eq!(PathSegment(1).key(&req), Some(Key::from("42")));
        assert_eq!(PathSegment(5).key(&req), None);
        assert_eq!(Path.key(&req), Some(Key::from("/users/42/orders")));
        assert_eq!(Endpoint.key(&req), Some(Key::from("GET <unmatched>")));
        req.extensions_mut()
            .insert(RouteTemplate("/users/{id}/orders".into()));
        assert_eq!(
            Endpoint.key(&req),
            Some(Key::from("GET /users/{id}/orders"))
        );
        assert!(Header::try_new("bad header").is_err());
        let any = AnyKey::Header(Header::new("x-user-id"));
        assert_eq!(any.key(&req), Some(Key::from("u-7")));
        assert_eq!(KeySource::<Request<()>>::describe(&any), "header x-user-id");
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info_is_a_peer_address() {
        let mut req = Request::get("/").body(()).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo::<SocketAddr>(
                "192.0.2.1:4000".parse().unwrap(),
            ));
        assert_eq!(peer_addr(&req), Some("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(ClientIp::peer().key(&req), Some(Key::from("192.0.2.1")));
    }
}
