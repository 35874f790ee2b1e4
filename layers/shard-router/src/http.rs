//! Key extractors for HTTP requests (feature `http`): a header, a path segment, or a query
//! parameter. Each hashes the key's bytes in place, without allocating.

use http::{HeaderName, Request, Response, StatusCode};

use crate::error::{BoxError, ShardError, ShardErrorKind};
use crate::service::KeyExtractor;
use crate::topology::Topology;

impl ShardError {
    /// The HTTP status for this error: 400 Bad Request for a request without a key, 503
    /// Service Unavailable otherwise.
    pub fn status_code(&self) -> StatusCode {
        match self.kind {
            ShardErrorKind::NoKey => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An empty response for an error a [`ShardRouter`](crate::ShardRouter) returned: the
/// [`ShardError::status_code`] of a routing error, 502 Bad Gateway for any other error (the
/// node's service failed). For axum, with `axum::error_handling::HandleError`:
/// `HandleError::new(router, |e: BoxError| async move { error_response::<Body>(&e) })`.
pub fn error_response<B: Default>(err: &BoxError) -> Response<B> {
    let status = err
        .downcast_ref::<ShardError>()
        .map_or(StatusCode::BAD_GATEWAY, ShardError::status_code);
    omega_core::http::rejection(status, None)
}

/// The value of a header (the first one, as bytes). Requests without it have no key.
///
/// ```
/// use omega_shard_router::http::Header;
/// let key = Header::new("x-user-id");
/// # let _ = key;
/// ```
#[derive(Clone, Debug)]
pub struct Header(HeaderName);

impl Header {
    /// The header `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name.
    pub fn new(name: &str) -> Self {
        Header(HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"))
    }

    /// The header `name`, already parsed.
    pub fn from_name(name: HeaderName) -> Self {
        Header(name)
    }
}

impl<B> KeyExtractor<Request<B>> for Header {
    fn key_hash(&self, req: &Request<B>, topology: &Topology) -> Option<u64> {
        let v = req.headers().get(&self.0)?;
        Some(topology.hash_bytes(v.as_bytes()))
    }
}

/// The `n`-th segment of the path (0-based, after the leading `/`): with `PathSegment(1)`,
/// `/users/42/orders` has the key `42`. Empty segments count; a path too short has no key.
#[derive(Clone, Copy, Debug)]
pub struct PathSegment(pub usize);

impl<B> KeyExtractor<Request<B>> for PathSegment {
    fn key_hash(&self, req: &Request<B>, topology: &Topology) -> Option<u64> {
        let path = req.uri().path();
        let path = path.strip_prefix('/').unwrap_or(path);
        let seg = path.split('/').nth(self.0)?;
        Some(topology.hash_bytes(seg.as_bytes()))
    }
}

/// The value of a query parameter (the first occurrence, as written in the URI, without
/// percent-decoding). A parameter without `=` has the empty key.
#[derive(Clone, Debug)]
pub struct QueryParam(String);

impl QueryParam {
    /// The parameter `name`.
    pub fn new(name: impl Into<String>) -> Self {
        QueryParam(name.into())
    }
}

impl<B> KeyExtractor<Request<B>> for QueryParam {
    fn key_hash(&self, req: &Request<B>, topology: &Topology) -> Option<u64> {
        let query = req.uri().query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == self.0).then(|| topology.hash_bytes(v.as_bytes()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, Node};

    fn topo() -> Topology {
        Topology::new(
            Algorithm::table(),
            (0..5).map(|i| Node::new(format!("n{i}"), "x")),
        )
        .unwrap()
    }

    #[test]
    fn extractors_hash_the_key_bytes() {
        let t = topo();
        let req = Request::get("/users/42/orders?tenant=acme&x=1")
            .header("x-user-id", "u-7")
            .body(())
            .unwrap();
        assert_eq!(
            Header::new("x-user-id").key_hash(&req, &t),
            Some(t.hash("u-7"))
        );
        assert_eq!(Header::new("x-other").key_hash(&req, &t), None);
        assert_eq!(PathSegment(1).key_hash(&req, &t), Some(t.hash("42")));
        assert_eq!(PathSegment(0).key_hash(&req, &t), Some(t.hash("users")));
        assert_eq!(PathSegment(5).key_hash(&req, &t), None);
        assert_eq!(
            QueryParam::new("tenant").key_hash(&req, &t),
            Some(t.hash("acme"))
        );
        assert_eq!(QueryParam::new("missing").key_hash(&req, &t), None);
        let bare = Request::get("/").body(()).unwrap();
        assert_eq!(QueryParam::new("tenant").key_hash(&bare, &t), None);
    }

    #[test]
    fn errors_become_responses() {
        let no_key: BoxError = Box::new(ShardError::new(ShardErrorKind::NoKey));
        assert_eq!(
            error_response::<()>(&no_key).status(),
            StatusCode::BAD_REQUEST
        );
        let down: BoxError = Box::new(ShardError::new(ShardErrorKind::Unavailable));
        assert_eq!(
            error_response::<()>(&down).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let upstream: BoxError = "connection reset".into();
        assert_eq!(
            error_response::<()>(&upstream).status(),
            StatusCode::BAD_GATEWAY
        );
    }
}
