//! A response written by the gateway itself, framed as hyper's HTTP/1.1 server frames it:
//! `Content-Length` when the length is known, chunked otherwise, no body for HEAD, 204 and
//! 304, a `Date` when the answer has none, `Connection: close` when the connection ends after
//! it. A body that is complete when the head is written goes out with the head in one write.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Response, StatusCode};
use http_body::Body as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::head::{has_token, parse_length};

/// How a body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// Exactly this many bytes (none for HEAD, 204 and 304).
    Length(u64),
    /// Chunked, with the trailer fields the `Trailer` header names.
    Chunked,
}

/// Writes `response` to the client; whether the connection stays open for the next request.
/// `close`: the client asked to close, or the gateway is stopping. An error (the client went
/// away, the body broke off) ends the connection: a body cut short is never framed as whole.
pub(super) async fn write(
    stream: &mut TcpStream,
    to_head: bool,
    response: Response<Body>,
    mut close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let (mut status, mut headers) = (parts.status, parts.headers);
    if status.is_informational() {
        // A service cannot answer with a 1xx (the upgrade path is hyper's): hyper's 500.
        (status, headers) = (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new());
        body = Body::empty();
    }
    let can_length = !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_body = can_length && !to_head;
    // The whole body's length, when the body knows it (asked before a part is taken).
    let hint = body.size_hint().exact();
    // The first part of the body, when it is there already: most answers are one part.
    let mut first = None;
    let mut ended = body.is_end_stream();
    if can_body && !ended {
        match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => first = Some(data),
                // Trailers only: the body has no data.
                Err(_) => ended = true,
            },
            Poll::Ready(Some(Err(e))) => return Err(io::Error::other(e)),
            Poll::Ready(None) => ended = true,
            Poll::Pending => {}
        }
        ended |= body.is_end_stream();
    }
    let known = if ended {
        Some(first.as_ref().map_or(0, |d| d.len() as u64))
    } else {
        hint
    };

    let mut framing = Framing::Length(0);
    let mut allowed_trailers = Vec::new();
    let pending = HEAD.with_borrow_mut(|out| {
        out.clear();
        status_line(out, status);
        let mut wrote_length = false;
        let mut wrote_date = false;
        let mut said_close = false;
        let mut name = None;
        for (field, value) in headers.drain() {
            if let Some(field) = field {
                name = Some(field);
            }
            let Some(name) = &name else { continue };
            match *name {
                header::CONTENT_LENGTH => {
                    if wrote_length {
                        continue;
                    }
                    if to_head || known.is_none() {
                        let Some(n) = parse_length(value.as_bytes()) else {
                            return Err(io::Error::other("invalid Content-Length in a response"));
                        };
                        framing = Framing::Length(n);
                    } else if ended && known == Some(0) {
                        // hyper's rule: an empty body says `content-length: 0` itself.
                        continue;
                    } else {
                        framing = Framing::Length(known.unwrap_or(0));
                    }
                    wrote_length = true;
                }
                header::TRANSFER_ENCODING => {
                    if !can_body || wrote_length {
                        continue;
                    }
                    framing = Framing::Chunked;
                    wrote_length = true;
                    out.extend_from_slice(b"transfer-encoding: ");
                    out.extend_from_slice(value.as_bytes());
                    if !ends_with_chunked(value.as_bytes()) {
                        out.extend_from_slice(b", chunked");
                    }
                    out.extend_from_slice(b"\r\n");
                    continue;
                }
                header::CONNECTION => {
                    let closing = has_token(value.as_bytes(), b"close");
                    said_close |= closing;
                    close |= closing;
                }
                header::DATE => wrote_date = true,
                header::TRAILER => {
                    if !can_body {
                        continue;
                    }
                    if let Ok(names) = value.to_str() {
                        allowed_trailers.extend(
                            names
                                .split(',')
                                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
                        );
                    }
                }
                _ => {}
            }
            field_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if !wrote_length {
            match known {
                None if can_body => {
                    framing = Framing::Chunked;
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
                None => {}
                Some(0) if !can_body => {}
                Some(n) if can_length => {
                    framing = Framing::Length(n);
                    let mut digits = itoa::Buffer::new();
                    field_line(out, b"content-length", digits.format(n).as_bytes());
                }
                Some(_) => {}
            }
        }
        if !can_body {
            framing = Framing::Length(0);
        }
        if close && !said_close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if !wrote_date {
            out.extend_from_slice(b"date: ");
            date(out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // The head, with the body's first part (the whole body, most often) in the same write.
        let data = first.as_deref().unwrap_or_default();
        if !can_body {
            return try_send(stream, &[out]);
        }
        match framing {
            Framing::Chunked if data.is_empty() => {
                try_send(stream, &[out, if ended { b"0\r\n\r\n" } else { b"" }])
            }
            Framing::Chunked => {
                let mut size = [0u8; 18];
                let size = chunk_size(&mut size, data.len());
                let tail: &[u8] = if ended { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                try_send(stream, &[out, size, data, tail])
            }
            Framing::Length(n) => {
                let len = data.len() as u64;
                if len > n || (ended && len < n) {
                    return Err(io::Error::other(
                        "a response body that does not match its Content-Length",
                    ));
                }
                try_send(stream, &[out, data])
            }
        }
    })?;
    if let Some(rest) = pending {
        stream.write_all(&rest).await?;
    }
    if ended || !can_body {
        return Ok(!close);
    }
    // The body streams: its first part (if any), then each part as it comes.
    let sent = first.map_or(0, |d| d.len() as u64);
    let mut left = match framing {
        Framing::Length(n) => Some(n - sent),
        Framing::Chunked => None,
    };
    loop {
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => send_data(stream, &data, &mut left).await?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers()
                        && left.is_none()
                    {
                        let mut end = b"0\r\n".to_vec();
                        for (name, value) in &trailers {
                            if allowed_trailers.contains(name) {
                                field_line(&mut end, name.as_str().as_bytes(), value.as_bytes());
                            }
                        }
                        end.extend_from_slice(b"\r\n");
                        stream.write_all(&end).await?;
                        return Ok(!close);
                    }
                }
            },
            Some(Err(e)) => return Err(io::Error::other(e)),
            None => break,
        }
    }
    match left {
        None => stream.write_all(b"0\r\n\r\n").await?,
        Some(0) => {}
        Some(_) => {
            return Err(io::Error::other(
                "a response body shorter than its Content-Length",
            ));
        }
    }
    Ok(!close)
}

/// Sends one part of a streaming body in its framing.
async fn send_data(stream: &mut TcpStream, data: &Bytes, left: &mut Option<u64>) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let pending = match left {
        Some(n) => {
            let len = data.len() as u64;
            if len > *n {
                return Err(io::Error::other(
                    "a response body longer than its Content-Length",
                ));
            }
            *n -= len;
            try_send(stream, &[data])?
        }
        None => {
            let mut size = [0u8; 18];
            let size = chunk_size(&mut size, data.len());
            try_send(stream, &[size, data, b"\r\n"])?
        }
    };
    if let Some(rest) = pending {
        stream.write_all(&rest).await?;
    }
    Ok(())
}

/// Writes `parts` in order without waiting; what the socket did not take, copied (`None`
/// when it took everything).
fn try_send(stream: &TcpStream, parts: &[&[u8]]) -> io::Result<Option<Vec<u8>>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut sent = 0;
    while sent < total {
        let mut skip = sent;
        let mut slices = [IoSlice::new(&[]); 4];
        let mut count = 0;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[count] = IoSlice::new(&part[skip..]);
            skip = 0;
            count += 1;
        }
        match stream.try_write_vectored(&slices[..count]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut rest = Vec::with_capacity(total - sent);
                let mut skip = sent;
                for part in parts {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    rest.extend_from_slice(&part[skip..]);
                    skip = 0;
                }
                return Ok(Some(rest));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `{len:x}\r\n` in `buf`.
fn chunk_size(buf: &mut [u8; 18], len: usize) -> &[u8] {
    let mut cursor = io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{len:x}\r\n");
    let end = cursor.position() as usize;
    &buf[..end]
}

fn ends_with_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

thread_local! {
    /// The worker's buffer for response heads.
    static HEAD: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    /// The `Date` value of the current second, formatted once per second.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
}

/// Appends the current `Date` (IMF-fixdate).
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = second;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_size(&mut buf, 255), b"ff\r\n");
        assert_eq!(chunk_size(&mut buf, usize::MAX), b"ffffffffffffffff\r\n");
    }

    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut out = Vec::new();
        date(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(httpdate::parse_http_date(&text).is_ok(), "{text}");
    }
}
