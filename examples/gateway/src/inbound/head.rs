//! A request head read by the gateway itself: only the plain case (HTTP/1.1, no body or one
//! that came whole with the head, no protocol switch, within the limits); anything else is
//! hyper's to answer.

use std::mem::MaybeUninit;

use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// The most header fields parsed here (hyper's default bound); a head with more goes to hyper,
/// which answers it by the configured `max_headers`.
const FIELDS: usize = 100;

/// The fields the gateway may add to a request before it goes to a node.
const ADDED_FIELDS: usize = 6;

/// The request-head limits of `server` that apply here.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_bytes: usize,
    pub(crate) max_fields: usize,
}

/// What the bytes read so far hold.
// Returned once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Parsed {
    /// A plain request, the length of its head and body, and whether the client asked to
    /// close.
    Request(Request<Body>, usize, bool),
    /// The head is not complete yet (and within `max_bytes`).
    Partial,
    /// Anything else: a body that did not come whole with its head, an upgrade, `Expect`,
    /// another HTTP version, a head over a limit, bytes that are not HTTP/1.1 at all. hyper reads the connection from here on and
    /// answers as it always has (400, 431, 100-continue, h2c…).
    Other,
}

/// Reads the request head at the start of `buf`.
pub(super) fn parse(buf: &[u8], limits: Limits) -> Parsed {
    // Left uninitialised: httparse writes the fields it returns (no 3 KiB of zeroes per head).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_bytes => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    if len > limits.max_bytes || req.headers.len() > limits.max_fields || req.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    // What the head says of the body and the connection.
    let mut body_len = None;
    let mut close = false;
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        if [&b"transfer-encoding"[..], b"upgrade", b"expect"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Parsed::Other;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_length(field.value) {
                Some(n) if body_len.is_none_or(|b| b == n) => body_len = Some(n),
                _ => return Parsed::Other,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(field.value, b"close");
        }
    }
    // A body is taken here only when it came whole with its head (a small form or JSON
    // document); one still arriving streams through hyper.
    let body_len = match usize::try_from(body_len.unwrap_or(0)) {
        Ok(n) if n <= buf.len() - len => n,
        _ => return Parsed::Other,
    };
    // The head and the body in one allocation; the target, the field values and the body are
    // views of it.
    let whole = Bytes::copy_from_slice(&buf[..len + body_len]);
    let view = |part: &[u8]| {
        if part.is_empty() {
            return Bytes::new();
        }
        let at = part.as_ptr() as usize - buf.as_ptr() as usize;
        whole.slice(at..at + part.len())
    };
    let Ok(uri) = Uri::from_maybe_shared(view(target.as_bytes())) else {
        return Parsed::Other;
    };
    // Room for the fields the proxy adds (the forwarding fields, a request id): the map does
    // not grow, three reallocations, on the way to the node.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + ADDED_FIELDS);
    for field in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Other;
        };
        let Ok(value) = HeaderValue::from_maybe_shared(view(field.value)) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    let body = if body_len == 0 {
        Body::empty()
    } else {
        Body::from(whole.slice(len..len + body_len))
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Request(request, len + body_len, close)
}

/// A `Content-Length` value: digits only.
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a comma-separated field value names `token` (ASCII case-insensitive).
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 8192,
        max_fields: 100,
    };

    fn request(raw: &[u8]) -> (Request<Body>, usize, bool) {
        match parse(raw, LIMITS) {
            Parsed::Request(r, len, close) => (r, len, close),
            Parsed::Partial => panic!("partial: {:?}", String::from_utf8_lossy(raw)),
            Parsed::Other => panic!("other: {:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn is_other(raw: &[u8]) -> bool {
        matches!(parse(raw, LIMITS), Parsed::Other)
    }

    #[test]
    fn a_plain_get_is_read_whole() {
        let raw = b"GET /api/x?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Twice: a\r\nx-twice: b\r\nContent-Length: 0\r\n\r\nGET /next";
        let (r, len, close) = request(raw);
        assert_eq!(len, raw.len() - b"GET /next".len());
        assert!(!close);
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri(), "/api/x?q=1");
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.headers()["host"], "example.com");
        let twice: Vec<_> = r.headers().get_all("x-twice").iter().collect();
        assert_eq!(twice, ["a", "b"]);
        // The forwarding fields fit without growing the map.
        assert!(r.headers().capacity() >= r.headers().len() + ADDED_FIELDS);
    }

    #[test]
    fn a_body_that_came_whole_is_read_with_its_head() {
        let raw = b"POST /form HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabcGET";
        let (r, len, _) = request(raw);
        assert_eq!(len, raw.len() - 3);
        let body =
            futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(r.into_body()))
                .unwrap()
                .unwrap()
                .to_bytes();
        assert_eq!(body, "abc");
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"42"), Some(42));
        for bad in [
            &b""[..],
            b"+1",
            b"1 ",
            b"-1",
            b"0x10",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn close_is_a_token_of_connection() {
        assert!(request(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").2);
        assert!(!request(b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n").2);
    }

    #[test]
    fn an_unfinished_head_waits_for_more_until_it_is_too_long() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMITS),
            Parsed::Partial
        ));
        let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        long.resize(8193, b'a');
        assert!(is_other(&long));
    }

    #[test]
    fn everything_but_a_plain_request_is_left_to_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01",
        ] {
            assert!(is_other(raw), "{:?}", String::from_utf8_lossy(raw));
        }
        let fields: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(is_other(
            format!("GET / HTTP/1.1\r\n{fields}\r\n").as_bytes()
        ));
        let few = Limits {
            max_fields: 2,
            ..LIMITS
        };
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", few),
            Parsed::Other
        ));
    }
}
