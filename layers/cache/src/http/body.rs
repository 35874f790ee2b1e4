//! [`CacheBody`]: the body of a cached HTTP service's responses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use omega_core::reject::BoxError;

/// The body of a cached service's responses: a stored body, a body passed through, or a
/// large body passed on as it streams after the part that was read.
#[derive(Debug)]
pub struct CacheBody<B> {
    pub(crate) kind: Kind<B>,
}

#[derive(Debug)]
pub(crate) enum Kind<B> {
    Full(Option<Bytes>),
    Inner(B),
    /// What was read, then a frame that stopped the capture (trailers, an error), then the
    /// rest of the body.
    Prefixed {
        prefix: Option<Bytes>,
        pending: Option<Result<Frame<Bytes>, BoxError>>,
        rest: B,
    },
}

impl<B> CacheBody<B> {
    /// A complete body.
    pub fn full(bytes: Bytes) -> Self {
        CacheBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        CacheBody {
            kind: Kind::Inner(body),
        }
    }
}

impl<B> Default for CacheBody<B> {
    fn default() -> Self {
        CacheBody::full(Bytes::new())
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Inner(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Prefixed {
                prefix,
                pending,
                rest,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                if let Some(frame) = pending.take() {
                    return Poll::Ready(Some(frame));
                }
                Pin::new(rest).poll_frame(cx).map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Inner(body) => body.is_end_stream(),
            Kind::Prefixed {
                prefix,
                pending,
                rest,
            } => prefix.is_none() && pending.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Inner(body) => body.size_hint(),
            Kind::Prefixed { prefix, rest, .. } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}
