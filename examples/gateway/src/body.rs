//! Bodies as the proxy streams them: cut when they stall, and handed to exactly one node.
//!
//! - [`IdleTimeout`] ends a body with [`BodyIdle`] when no part of it arrives within the
//!   `server.body_timeout` (nginx's `client_body_timeout` and `proxy_read_timeout`, 60 s): a
//!   client trickling an upload, or a node that stops in the middle of its answer, holds a
//!   connection no longer than that. A body whose parts are ready costs no timer: one is
//!   armed only when a read has to wait.
//! - [`BodySlot`] keeps a request body where a second attempt can find it: the body goes to
//!   whichever attempt reads it first, so a request whose connection to a node could not be
//!   made (nothing was read) can go to the next node with its body, and a body that was read
//!   once is never sent twice.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// What a stalled body ends with.
#[derive(Debug, Clone, Copy)]
pub struct BodyIdle {
    /// Whose body stalled.
    pub from: Side,
    /// The wait that passed.
    pub timeout: Duration,
}

/// Whose body a [`BodyIdle`] cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's request body.
    Client,
    /// A node's response body.
    Node,
}

impl fmt::Display for BodyIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.from {
            Side::Client => "the request body",
            Side::Node => "the node's response body",
        };
        write!(f, "no part of {whose} came within {:?}", self.timeout)
    }
}

impl std::error::Error for BodyIdle {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A body that fails with [`BodyIdle`] when a read waits longer than its timeout.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        idle: BodyIdle,
        // Made on the first read that waits, re-armed on each later one.
        timer: Option<Pin<Box<Sleep>>>,
        armed: bool,
    }
}

impl<B> IdleTimeout<B> {
    /// `inner`, cut after `timeout` without a part.
    pub fn new(inner: B, from: Side, timeout: Duration) -> Self {
        IdleTimeout {
            inner,
            idle: BodyIdle { from, timeout },
            timer: None,
            armed: false,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.idle.timeout;
        let timer = match this.timer {
            Some(timer) => {
                if !*this.armed {
                    timer.as_mut().reset(Instant::now() + timeout);
                }
                timer
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        *this.armed = true;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                // Rare: the counter is looked up only when a body is cut.
                let side = match this.idle.from {
                    Side::Client => "client",
                    Side::Node => "node",
                };
                metrics::counter!("omega_gateway_body_timeouts_total", "side" => side).increment(1);
                Poll::Ready(Some(Err(Box::new(*this.idle))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body kept for whichever attempt reads it first (a request extension).
#[derive(Clone)]
pub struct BodySlot {
    body: Arc<Mutex<Option<Body>>>,
    hint: SizeHint,
}

impl fmt::Debug for BodySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySlot")
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl BodySlot {
    /// Puts `body` in a slot: the returned slot goes in the request's extensions, the
    /// returned body in its place.
    pub fn keep(body: Body) -> (BodySlot, Body) {
        let slot = BodySlot {
            hint: http_body::Body::size_hint(&body),
            body: Arc::new(Mutex::new(Some(body))),
        };
        let reader = slot.reader();
        (slot, reader)
    }

    /// A body that reads the slot's body, if no other reader took it first.
    pub fn reader(&self) -> Body {
        Body::new(SlotReader {
            slot: Some(self.body.clone()),
            body: None,
            hint: self.hint,
        })
    }

    /// Whether the body is still in the slot (no attempt has read from it).
    pub fn unread(&self) -> bool {
        self.body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

/// The body an attempt sends: it takes the slot's body on its first read.
struct SlotReader {
    slot: Option<Arc<Mutex<Option<Body>>>>,
    body: Option<Body>,
    hint: SizeHint,
}

/// A second attempt's read of a body the first one already took.
#[derive(Debug)]
struct AlreadyRead;

impl fmt::Display for AlreadyRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body was already sent to another node")
    }
}

impl std::error::Error for AlreadyRead {}

impl http_body::Body for SlotReader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(slot) = self.slot.take() {
            let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            match taken {
                Some(body) => self.body = Some(body),
                None => return Poll::Ready(Some(Err(Box::new(AlreadyRead)))),
            }
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self.slot.is_none() || self.hint.exact() == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_slot_body_goes_to_the_first_reader_only() {
        let (slot, first) = BodySlot::keep(Body::from("payload"));
        let second = slot.reader();
        assert_eq!(first.size_hint().exact(), Some(7));
        assert_eq!(second.size_hint().exact(), Some(7));
        assert!(slot.unread());
        let got = first.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"payload");
        assert!(!slot.unread());
        assert!(second.collect().await.is_err(), "read twice");
    }

    #[tokio::test]
    async fn an_unread_first_attempt_leaves_the_body_to_the_next() {
        let (slot, first) = BodySlot::keep(Body::from("payload"));
        drop(first);
        let got = slot.reader().collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"payload");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_and_a_flowing_one_is_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream_of(rx);
        let mut body = std::pin::pin!(IdleTimeout::new(
            http_body_util::StreamBody::new(stream),
            Side::Client,
            Duration::from_secs(1)
        ));
        // Parts 900 ms apart keep it going...
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .unwrap();
            }
            // ...then nothing, with the sender still open.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"x"));
        }
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyIdle>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        feeder.abort();
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
