//! One key vocabulary for every layer: where a request's key comes from.
//!
//! A rate limit counts requests per key, the shard router sends each key to its node, a
//! breaker registry keeps a breaker per key, the cache stores an entry per key. They all take
//! the same [`KeySource`]: a closure `Fn(&Req) -> Option<K>`, or one of the built-ins, which
//! borrow the key from the request where it holds one and compute it where it must (a client
//! address grouped by prefix) without allocating:
//!
//! | source | key |
//! |---|---|
//! | [`Global`] | one key for every request |
//! | [`Header`](http::Header) | a header's value |
//! | [`Query`](http::Query) | a query parameter's value |
//! | [`PathSegment`](http::PathSegment) | the n-th segment of the path |
//! | [`Path`](http::Path) | the whole path |
//! | [`ClientIp`](http::ClientIp) | the client's address (trusted proxies, IPv6 prefixes) |
//! | [`Endpoint`](http::Endpoint) | the method and the route template |
//!
//! The HTTP sources are behind the `http` feature; [`Endpoint`](http::Endpoint) reads axum's
//! `MatchedPath` with the `axum` feature. Each layer adapts the key to its use (a hash for
//! routing, bytes in a Redis key). What a request without a key means is each use's explicit
//! choice ([`MissingKey`]).
//!
//! Names of limits, scopes and partitions follow one rule ([`check_name`]).
//!
//! ```
//! use omega_core::key::{Global, Key, KeySource};
//!
//! struct Job { tenant: String, shard: u64 }
//!
//! let by_tenant = |job: &Job| Some(job.tenant.clone());
//! let by_shard = |job: &Job| Some(job.shard);
//! let job = Job { tenant: "acme".into(), shard: 7 };
//! assert_eq!(by_tenant.key(&job).unwrap().as_str(), Some("acme"));
//! assert_eq!(by_shard.key(&job).unwrap().as_bytes(), &7u64.to_le_bytes());
//! assert_eq!(Global.key(&job), Some(Key::from("")));
//! ```

#[cfg(feature = "http")]
mod client_ip;
#[cfg(feature = "http")]
pub mod http;
mod value;

use std::borrow::Cow;
use std::sync::Arc;

pub use value::Key;

use crate::error::Error;

/// Where a request's key comes from.
///
/// Implemented for closures `Fn(&Req) -> Option<K>` where `K` converts into a [`Key`] (a
/// `String`, a `&'static str`, bytes, or an integer, taken as its little-endian bytes), and by
/// the built-in sources of this module. `None` means the request has no key; what that means
/// is the choice of the layer's user ([`MissingKey`]).
pub trait KeySource<Req>: Send + Sync + 'static {
    /// The key of `req`, borrowed from it where possible.
    fn key<'a>(&self, req: &'a Req) -> Option<Key<'a>>;

    /// What the key is, for messages: `"header x-api-key"`, `"the client IP"`.
    fn describe(&self) -> Cow<'static, str> {
        Cow::Borrowed("the request's key")
    }
}

impl<Req, F, K> KeySource<Req> for F
where
    F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    K: Into<Key<'static>>,
{
    #[inline]
    fn key<'a>(&self, req: &'a Req) -> Option<Key<'a>> {
        self(req).map(Into::into)
    }
}

impl<Req: 'static> KeySource<Req> for Box<dyn KeySource<Req>> {
    #[inline]
    fn key<'a>(&self, req: &'a Req) -> Option<Key<'a>> {
        (**self).key(req)
    }

    fn describe(&self) -> Cow<'static, str> {
        (**self).describe()
    }
}

impl<Req: 'static> KeySource<Req> for Arc<dyn KeySource<Req>> {
    #[inline]
    fn key<'a>(&self, req: &'a Req) -> Option<Key<'a>> {
        (**self).key(req)
    }

    fn describe(&self) -> Cow<'static, str> {
        (**self).describe()
    }
}

/// One key for every request: a single bucket, a single breaker, a single node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Global;

impl<Req> KeySource<Req> for Global {
    #[inline]
    fn key<'a>(&self, _req: &'a Req) -> Option<Key<'a>> {
        Some(Key::from(""))
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Borrowed("the global key")
    }
}

/// What a request without a key means to a layer. The choice is the user's; each layer
/// documents its default. Configuration files write it `"skip"` or `"reject"` (feature
/// `serde`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum MissingKey {
    /// The request passes this part of the layer untouched (a keyed rate limit does not count
    /// it). Pair a keyed limit with a global one so such requests are still bounded.
    #[default]
    Skip,
    /// The request is refused with [`KeyMissing`] (400 Bad Request, gRPC `INVALID_ARGUMENT`).
    Reject,
}

/// A request was refused because it has no key and the layer was told to refuse such requests
/// ([`MissingKey::Reject`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMissing {
    what: Arc<str>,
}

impl KeyMissing {
    /// A refusal for a request that lacks `what` (a [`KeySource::describe`]).
    pub fn new(what: impl Into<Arc<str>>) -> Self {
        KeyMissing { what: what.into() }
    }

    /// What the request lacks.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl std::fmt::Display for KeyMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request has no key: {} is missing", self.what)
    }
}

impl std::error::Error for KeyMissing {}

impl crate::reject::Refusal for KeyMissing {
    fn status(&self) -> u16 {
        400
    }

    fn grpc_code(&self) -> u16 {
        crate::reject::grpc::INVALID_ARGUMENT
    }
}

/// The longest name [`check_name`] accepts.
pub const MAX_NAME_LEN: usize = 128;

/// The one rule for the names of limits, scopes, partitions and the like: 1 to
/// [`MAX_NAME_LEN`] visible ASCII characters, without `{` or `}`, so that a name reads the same
/// in a Redis key (where braces would change its hash tag), a header field and a metric label.
/// `what` names the thing in the error (`"limit name"`).
///
/// ```
/// use omega_core::key::check_name;
///
/// assert!(check_name("limit name", "per_user").is_ok());
/// let err = check_name("limit name", "per user").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "limit name \"per user\": use 1 to 128 visible ASCII characters, without spaces or braces"
/// );
/// ```
pub fn check_name(what: &str, name: &str) -> std::result::Result<(), InvalidName> {
    let plain = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.contains(['{', '}'])
        && name.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        Ok(())
    } else {
        Err(InvalidName(format!(
            "{what} {name:?}: use 1 to {MAX_NAME_LEN} visible ASCII characters, without spaces or braces"
        )))
    }
}

/// A name that breaks the rule of [`check_name`]; the message names the thing and the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidName(String);

impl std::fmt::Display for InvalidName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidName {}

impl From<InvalidName> for Error {
    fn from(e: InvalidName) -> Self {
        Error::config(e.0)
    }
}
