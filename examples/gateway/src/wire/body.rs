//! A node's response body as the gateway's own HTTP/1.1 client reads it: whole when it came
//! with its head, else streamed from the connection by `Content-Length`, chunked coding (with
//! trailers) or the connection's end; the connection goes back to its idle list when the
//! message ended cleanly on it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http_body::{Frame, SizeHint};

use super::{Conn, Error, Framing, Head, Idle, MAX_HEAD, MAX_HEADERS};

/// The response with its body: whole, or streaming from `conn`.
pub(super) fn with_body(
    conn: Conn,
    response: Response<Bytes>,
    head: Head,
    idle: &Arc<Idle>,
    authority: &Authority,
) -> Response<NodeBody> {
    response.map(|whole| {
        if head.framing == Framing::None {
            if head.reusable && conn.buf.is_empty() {
                idle.lists.park(authority, conn);
            }
            return NodeBody {
                state: State::Whole(whole),
            };
        }
        let decode = match head.framing {
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::Chunked(Chunk::Size),
            _ => Decode::Close,
        };
        NodeBody {
            state: State::Streaming(Box::new(Streaming {
                conn,
                decode,
                reusable: head.reusable,
                idle: idle.clone(),
                authority: authority.clone(),
            })),
        }
    })
}

/// A node's response body read by the gateway's own HTTP/1.1 client.
pub struct NodeBody {
    state: State,
}

enum State {
    /// All of it (possibly nothing), not yet handed on.
    Whole(Bytes),
    Streaming(Box<Streaming>),
    Done,
}

struct Streaming {
    conn: Conn,
    decode: Decode,
    reusable: bool,
    idle: Arc<Idle>,
    authority: Authority,
}

#[derive(Debug, Clone, Copy)]
enum Decode {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the node closes the connection.
    Close,
}

/// What one step of the chunked decoding came to.
enum Step {
    Frame(Frame<Bytes>),
    /// The state moved on: go on with what is buffered.
    Next,
    /// More bytes are needed.
    More,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// A chunk-size line.
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

impl std::fmt::Debug for NodeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Whole(_) => "whole",
            State::Streaming(_) => "streaming",
            State::Done => "done",
        };
        f.debug_struct("NodeBody").field("state", &state).finish()
    }
}

impl NodeBody {
    /// Whether the body may have to wait for the node (a timeout is worth arming).
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming(_))
    }
}

impl http_body::Body for NodeBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => Poll::Ready(None),
            State::Whole(bytes) if bytes.is_empty() => Poll::Ready(None),
            State::Whole(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            State::Streaming(mut s) => {
                let polled = s.poll_next(cx);
                match &polled {
                    // More to come: keep reading.
                    Poll::Pending | Poll::Ready(Some(Ok(_))) if !s.finished() => {
                        self.state = State::Streaming(s);
                    }
                    // The end (or an error, after which the connection is dropped).
                    _ => (*s).release(),
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Done => true,
            State::Whole(bytes) => bytes.is_empty(),
            State::Streaming(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Done => SizeHint::with_exact(0),
            State::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            State::Streaming(s) => match s.decode {
                Decode::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
        }
    }
}

impl Streaming {
    fn finished(&self) -> bool {
        matches!(self.decode, Decode::Length(0))
    }

    /// Gives the connection back when the message ended cleanly on it.
    fn release(self) {
        let done = matches!(self.decode, Decode::Length(0));
        if done && self.reusable && self.conn.buf.is_empty() {
            self.idle.lists.park(&self.authority, self.conn);
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            match self.decode {
                Decode::Length(0) => return Poll::Ready(None),
                Decode::Length(n) => {
                    if !self.conn.buf.is_empty() {
                        let take = (self.conn.buf.len() as u64).min(n) as usize;
                        self.decode = Decode::Length(n - take as u64);
                        let data = self.conn.buf.take(take);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decode::Close => {
                    if !self.conn.buf.is_empty() {
                        let data = self.conn.buf.take(self.conn.buf.len());
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decode::Chunked(chunk) => match self.chunked(chunk)? {
                    Step::Frame(frame) => return Poll::Ready(Some(Ok(frame))),
                    Step::Next => continue,
                    Step::More => {}
                },
            }
            // The buffer holds nothing usable: read from the node.
            match std::task::ready!(self.conn.poll_fill(cx)) {
                Ok(0) if matches!(self.decode, Decode::Close) => {
                    self.decode = Decode::Length(0);
                    self.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) | Err(_) => return Poll::Ready(Some(Err(Error::BodyCut))),
                Ok(_) => {}
            }
        }
    }

    /// One step of the chunked decoding over what is buffered. The end of the message sets
    /// `Length(0)`.
    fn chunked(&mut self, chunk: Chunk) -> Result<Step, Error> {
        let buf = &mut self.conn.buf;
        match chunk {
            Chunk::Size => {
                let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                    return if buf.len() > MAX_HEAD {
                        Err(Error::Invalid("chunk-size line too long"))
                    } else {
                        Ok(Step::More)
                    };
                };
                let line = &buf[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let digits = line
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.len() <= 16)
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .ok_or(Error::Invalid("chunk size"))?;
                buf.advance(end + 1);
                self.decode = Decode::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(Step::Next)
            }
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = (buf.len() as u64).min(n) as usize;
                let data = buf.take(take);
                let left = n - take as u64;
                self.decode = Decode::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Step::Frame(Frame::data(data)))
            }
            Chunk::DataEnd => {
                let skip = match &buf[..] {
                    [b'\r', b'\n', ..] => 2,
                    [b'\n', ..] => 1,
                    [] | [b'\r'] => return Ok(Step::More),
                    _ => return Err(Error::Invalid("no CRLF after a chunk")),
                };
                buf.advance(skip);
                self.decode = Decode::Chunked(Chunk::Size);
                Ok(Step::Next)
            }
            Chunk::Trailers => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete(done)) => done,
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err(Error::Invalid("trailer section too large"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(Error::Invalid("trailer section")),
                };
                let mut trailers = HeaderMap::new();
                for f in fields {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) {
                        trailers.append(name, value);
                    }
                }
                buf.advance(len);
                self.decode = Decode::Length(0);
                Ok(if trailers.is_empty() {
                    Step::Next
                } else {
                    Step::Frame(Frame::trailers(trailers))
                })
            }
        }
    }
}
