//! Stored HTTP responses: [`StoredResponse`] (status, header fields, body, and what RFC 9111
//! needs to reuse it), its bytes ([`HttpCodec`]), bodies captured while they stream, and
//! [`HttpStorage`] for caching `http::Response`s under any [`Policy`](crate::Policy).

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::response::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;
use omega_core::reject::BoxError;

use super::body::{CacheBody, Kind};
use crate::storage::{Captured, Storage, ValueCodec};

/// A stored HTTP response: status, header fields, body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) meta: Meta,
}

/// What the RFC 9111 cache keeps beside a response to reuse it without parsing it again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// `corrected_initial_age` when stored (RFC 9111 §4.2.3), in seconds.
    pub(crate) initial_age: u64,
    /// The response may not be reused without validation (unqualified `no-cache`).
    pub(crate) no_cache: bool,
    /// The response may not be served stale (§4.2.4).
    pub(crate) no_stale: bool,
    /// The response may answer requests with `Authorization` (§3.5).
    pub(crate) authorized: bool,
    /// The response will not change while fresh (RFC 8246).
    pub(crate) immutable: bool,
    /// How long past its freshness it may answer when the upstream fails (RFC 5861 §4).
    pub(crate) stale_if_error: u32,
}

impl StoredResponse {
    /// A stored response (for a [`Storage`] of your own).
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        StoredResponse {
            status,
            headers,
            body,
            meta: Meta::default(),
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The header fields.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// What reading a response's body gave.
pub(crate) enum Read<B> {
    /// The whole body, within the limit.
    Whole(Parts, Bytes),
    /// Larger than the limit, or with trailers, or failed: the response as it streams on,
    /// what was read first.
    Streaming(Response<CacheBody<B>>),
}

/// Reads `res`'s body up to `max_bytes`.
pub(crate) async fn read_body<B>(res: Response<B>, max_bytes: usize) -> Read<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = res.into_parts();
    if body.size_hint().lower() > max_bytes as u64 {
        return Read::Streaming(Response::from_parts(parts, CacheBody::inner(body)));
    }
    let mut buf = BytesMut::new();
    let pass = |parts, buf: BytesMut, pending, body| {
        let kind = Kind::Prefixed {
            prefix: (!buf.is_empty()).then(|| buf.freeze()),
            pending,
            rest: body,
        };
        Read::Streaming(Response::from_parts(parts, CacheBody { kind }))
    };
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > max_bytes {
                        return pass(parts, buf, None, body);
                    }
                }
                // Trailers are not stored: the response is passed on, trailers and all.
                Err(trailers) => return pass(parts, buf, Some(Ok(trailers)), body),
            },
            // The upstream body failed: the client sees what was read, then the error.
            Some(Err(e)) => return pass(parts, buf, Some(Err(e.into())), body),
        }
    }
    Read::Whole(parts, buf.freeze())
}

/// Stores `http::Response<B>` as it is, under any [`Policy`](crate::Policy): the body is read
/// up to the partition's maximum entry size and stored; a larger body (by its size hint, or
/// once more was read) is passed on as it streams, the part already read first, and a body
/// with trailers is passed on too. Hits answer a copy of the stored status, header fields and
/// body. (For RFC 9111's rules, use [`HttpCacheLayer`](super::HttpCacheLayer).)
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpStorage;

impl<B> Storage<Response<B>> for HttpStorage
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<B>>;
    type Value = Arc<StoredResponse>;
    type Capture =
        Pin<Box<dyn std::future::Future<Output = Captured<Self::Response, Self::Value>> + Send>>;

    fn capture(&self, res: Response<B>, max_bytes: usize) -> Self::Capture {
        Box::pin(async move {
            match read_body(res, max_bytes).await {
                Read::Whole(parts, body) => Captured::Stored(Arc::new(StoredResponse::new(
                    parts.status,
                    parts.headers,
                    body,
                ))),
                Read::Streaming(res) => Captured::Passed(res),
            }
        })
    }

    fn respond(&self, value: &Arc<StoredResponse>) -> Self::Response {
        let mut res = Response::new(CacheBody::full(value.body.clone()));
        *res.status_mut() = value.status;
        *res.headers_mut() = value.headers.clone();
        res
    }

    fn pass(res: Response<B>) -> Self::Response {
        res.map(CacheBody::inner)
    }
}

/// The bytes of a [`StoredResponse`]: a format byte, status, what RFC 9111 keeps beside it,
/// header fields, body.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpCodec;

/// The codec's format (2: with RFC 9111 metadata).
const FORMAT: u8 = 0xC2;

impl ValueCodec<Arc<StoredResponse>> for HttpCodec {
    fn name(&self) -> &'static str {
        "http"
    }

    fn encode(&self, v: &Arc<StoredResponse>) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::with_capacity(96 + v.body.len());
        out.push(FORMAT);
        out.extend_from_slice(&v.status.as_u16().to_be_bytes());
        let m = &v.meta;
        out.extend_from_slice(&m.initial_age.to_be_bytes());
        out.push(
            u8::from(m.no_cache)
                | u8::from(m.no_stale) << 1
                | u8::from(m.authorized) << 2
                | u8::from(m.immutable) << 3,
        );
        out.extend_from_slice(&m.stale_if_error.to_be_bytes());
        out.extend_from_slice(&(v.headers.len() as u32).to_be_bytes());
        for (name, value) in &v.headers {
            out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&v.body);
        Ok(out)
    }

    fn decode(&self, b: &[u8]) -> Result<Arc<StoredResponse>, BoxError> {
        let bad = || BoxError::from("not a stored HTTP response");
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], BoxError> {
            let s = b.get(at..at + n).ok_or_else(bad)?;
            at += n;
            Ok(s)
        };
        if take(1)? != [FORMAT] {
            return Err(bad());
        }
        let status = StatusCode::from_u16(u16::from_be_bytes(take(2)?.try_into()?))?;
        let initial_age = u64::from_be_bytes(take(8)?.try_into()?);
        let flags = take(1)?[0];
        let stale_if_error = u32::from_be_bytes(take(4)?.try_into()?);
        let n = u32::from_be_bytes(take(4)?.try_into()?) as usize;
        let mut headers = HeaderMap::with_capacity(n.min(256));
        for _ in 0..n {
            let len = u32::from_be_bytes(take(4)?.try_into()?) as usize;
            let name = HeaderName::from_bytes(take(len)?)?;
            let len = u32::from_be_bytes(take(4)?.try_into()?) as usize;
            let value = HeaderValue::from_bytes(take(len)?)?;
            headers.append(name, value);
        }
        Ok(Arc::new(StoredResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(&b[at..]),
            meta: Meta {
                initial_age,
                no_cache: flags & 1 != 0,
                no_stale: flags & 2 != 0,
                authorized: flags & 4 != 0,
                immutable: flags & 8 != 0,
                stale_if_error,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_responses_round_trip_through_the_codec() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut v = StoredResponse::new(StatusCode::NOT_FOUND, headers, Bytes::from("missing"));
        v.meta = Meta {
            initial_age: 30,
            no_cache: true,
            no_stale: false,
            authorized: true,
            immutable: true,
            stale_if_error: 60,
        };
        let v = Arc::new(v);
        let back = HttpCodec.decode(&HttpCodec.encode(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(HttpCodec.decode(&[0, 200, 0]).is_err());
        assert!(HttpCodec.decode(&[FORMAT, 0]).is_err());
    }
}
