//! The request as the gateway's own HTTP/1.1 client writes it: the head into the connection's
//! reused buffer, then the body (when it has a known length) frame by frame, watching the
//! connection all along: a node may answer before it has read the whole body (a 413 for an
//! upload it will not take), and that answer goes to the client instead of a broken write.

use axum::body::Body;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use http::header;
use http::request;
use http::uri::Authority;
use http_body_util::BodyExt;

use super::{Conn, Error};

/// Writes `head` into `out` as an HTTP/1.1 request head, for a body of `length` bytes
/// (`None`: no body).
pub(super) fn encode(
    out: &mut Vec<u8>,
    head: &request::Parts,
    authority: &Authority,
    length: Option<u64>,
) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    match head.uri.path_and_query().map(|pq| pq.as_str()) {
        Some(pq) if !pq.is_empty() => out.extend_from_slice(pq.as_bytes()),
        _ => out.push(b'/'),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !head.headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut framed = false;
    for (name, value) in &head.headers {
        // The body goes by its length. The client's `Expect: 100-continue` was answered by
        // the gateway itself when it began to read the body: the node gets the body at once.
        if name == header::TRANSFER_ENCODING || name == header::EXPECT {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            if length.is_none() || framed {
                continue;
            }
            framed = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let (Some(n), false) = (length, framed) {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Sends the head in `conn.out`, then `body`, on `conn`: the head goes out with the body's
/// first part (one write, one segment for a small request). `true` when all of it went,
/// `false` when the node began to answer (or closed the connection) first — what it sent is
/// then in `conn`'s buffer, and the connection cannot carry another request.
pub(super) async fn write_with_body(conn: &mut Conn, mut body: Body) -> Result<bool, Error> {
    let head = std::mem::take(&mut conn.out);
    let whole = send(conn, &head, &mut body).await;
    // The head's buffer is the connection's, for its next request.
    conn.out = head;
    whole
}

async fn send(conn: &mut Conn, head: &[u8], body: &mut Body) -> Result<bool, Error> {
    let mut head_sent = 0;
    loop {
        let frame = tokio::select! {
            biased;
            ready = conn.stream.readable(), if head_sent == head.len() => {
                ready.map_err(Error::Io)?;
                if answered(conn)? {
                    return Ok(false);
                }
                continue;
            }
            frame = body.frame() => frame,
        };
        let (mut data, ended): (Bytes, bool) = match frame {
            None => (Bytes::new(), true),
            Some(Err(e)) => return Err(Error::Body(e.into())),
            // A message framed by its length has no place for trailers.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => (data, false),
                Err(_) => continue,
            },
        };
        while head_sent < head.len() || !data.is_empty() {
            tokio::select! {
                biased;
                ready = conn.stream.readable() => {
                    ready.map_err(Error::Io)?;
                    if answered(conn)? {
                        return Ok(false);
                    }
                }
                ready = conn.stream.writable() => {
                    ready.map_err(Error::Io)?;
                    let written = if head_sent < head.len() {
                        let parts = [IoSlice::new(&head[head_sent..]), IoSlice::new(&data)];
                        conn.stream.try_write_vectored(&parts)
                    } else {
                        conn.stream.try_write(&data)
                    };
                    match written {
                        Ok(n) => {
                            let of_head = n.min(head.len() - head_sent);
                            head_sent += of_head;
                            data.advance(n - of_head);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(Error::Io(e)),
                    }
                }
            }
        }
        if ended {
            return Ok(true);
        }
    }
}

/// Whether the node said something (or closed the connection) while the body was going out;
/// what it said is kept in the buffer. `false` when the readiness was stale.
fn answered(conn: &mut Conn) -> Result<bool, Error> {
    match conn.stream.try_read(conn.buf.spare()) {
        Ok(0) => Ok(true),
        Ok(n) => {
            conn.buf.end += n;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(Error::Io(e)),
    }
}
