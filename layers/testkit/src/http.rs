//! A minimal HTTP/1.1 client over a real socket, for tests that check exactly what a server
//! sends (status, every header line, body bytes) without a client library rewriting anything.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as it came off the wire.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header lines in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked when the response was chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
///
/// `headers` are sent as given, after `Host`; a non-empty `body` gets a `Content-Length`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP/1.1 response: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        )
    })
}

/// Sends `raw` as it is (a hand-written, possibly malformed request) and reads until the
/// server closes the connection.
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(out)
}

/// `GET path` with `headers`.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<RawResponse> {
    request(addr, "GET", path, headers, b"").await
}

/// One keep-alive HTTP/1.1 connection: requests go one after another on the same socket, the
/// way a browser or a plain client library sends them. Each response is read up to the end of
/// its body (`Content-Length` or chunked), no further.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        Ok(Connection {
            stream: TcpStream::connect(addr).await?,
            addr,
            buf: Vec::new(),
        })
    }

    /// Sends `GET path` with `headers` and reads its response.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<RawResponse> {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await?;
        loop {
            if let Some((response, used)) = parse_complete(&self.buf) {
                self.buf.drain(..used);
                return Ok(response);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a whole response: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A whole response at the start of `raw`, and how many bytes it took; `None` while more bytes
/// are needed.
fn parse_complete(raw: &[u8]) -> Option<(RawResponse, usize)> {
    parse_response(raw, false)
}

/// A whole response at the start of `raw` (bytes read off a keep-alive connection, possibly
/// with more responses behind it) and how many bytes it took; `None` while more bytes are
/// needed. An answer to HEAD (`to_head`), a 1xx, 204 or 304 has no body whatever its
/// `Content-Length` says.
pub fn parse_response(raw: &[u8], to_head: bool) -> Option<(RawResponse, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut response = parse_head(&raw[..end - 4])?;
    if to_head || response.status < 200 || response.status == 204 || response.status == 304 {
        return Some((response, end));
    }
    let length = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let (body, used) = dechunk_prefix(&raw[end..])?;
        response.body = body;
        Some((response, end + used))
    } else {
        let length = length.unwrap_or(0);
        response.body = raw.get(end..end + length)?.to_vec();
        Some((response, end + length))
    }
}

fn parse(raw: &[u8]) -> Option<RawResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let mut response = parse_head(&raw[..end])?;
    let rest = &raw[end + 4..];
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    response.body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(response)
}

/// The status line and header lines (without the blank line that ends them).
fn parse_head(head: &[u8]) -> Option<RawResponse> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: Vec::new(),
    })
}

fn dechunk(rest: &[u8]) -> Option<Vec<u8>> {
    dechunk_prefix(rest).map(|(body, _)| body)
}

/// The de-chunked body at the start of `raw` and the bytes it took (through the last chunk's
/// empty trailer line).
fn dechunk_prefix(raw: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let rest = &raw[at..];
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        at += line_end + 2;
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            let rest = &raw[at..];
            let trailer_end = rest.windows(2).position(|w| w == b"\r\n")?;
            return Some((body, at + trailer_end + 2));
        }
        body.extend_from_slice(raw.get(at..at + size)?);
        at += size + 2;
        if at > raw.len() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_plain_and_chunked_responses() {
        let r = super::parse(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nA: 1\r\nA: 2\r\n\r\nhi",
        )
        .unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("2"));
        assert_eq!(r.headers_named("a"), ["1", "2"]);
        assert_eq!(r.body, b"hi");
        let r = super::parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn complete_responses_are_cut_at_their_end() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\n\r\n";
        let (r, used) = super::parse_complete(two).unwrap();
        assert_eq!(r.body, b"hi");
        let (r, rest) = super::parse_complete(&two[used..]).unwrap();
        assert_eq!((r.status, rest), (204, two.len() - used));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        assert!(super::parse_complete(&chunked[..chunked.len() - 1]).is_none());
        assert_eq!(super::parse_complete(chunked).unwrap().1, chunked.len());
        assert!(super::parse_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi").is_none());
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n";
        let (r, used) = super::parse_response(head, true).unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0));
        let (r, rest) = super::parse_response(&head[used..], false).unwrap();
        assert_eq!((r.status, rest), (304, head.len() - used));
    }
}
