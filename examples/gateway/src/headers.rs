//! The header work of forwarding: hop-by-hop fields removed, forwarding fields (RFC 7239 and
//! the `X-Forwarded-*` trio) written, `Host` checked, split cookies joined, gRPC deadlines
//! read.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Statics, not consts: a const array is built and dropped again at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A gRPC call's `grpc-timeout` (1 to 8 digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Joins `cookie` fields an HTTP/2 client split (RFC 9113 §8.2.3) into the one field
/// HTTP/1.1 allows (RFC 6265 §5.4).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// The position of `name` in `HOP_BY_HOP`: a comparison of lengths, then of bytes.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// The position of `name` in `FORWARDING`.
fn forwarding_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "x-forwarded-for" => 0,
        "x-forwarded-host" => 1,
        "x-forwarded-proto" => 2,
        "forwarded" => 3,
        _ => return None,
    })
}

/// Which of a list's names `headers` holds, as bits by their `index` in it: one pass over
/// the map's names, no hashing.
fn present(headers: &HeaderMap, index: fn(&HeaderName) -> Option<usize>) -> u32 {
    let mut bits = 0;
    for key in headers.keys() {
        if let Some(i) = index(key) {
            bits |= 1 << i;
        }
    }
    bits
}

/// Removes those of `names` whose bit is in `bits`. A removal hashes and probes even for a
/// name that is not there; most messages carry none of a list, or one.
fn remove_bits(headers: &mut HeaderMap, names: &[HeaderName], bits: u32) {
    for (i, name) in names.iter().enumerate() {
        if bits & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes the forwarding headers (`FORWARDING`), all their values.
pub(crate) fn remove_forwarding(headers: &mut HeaderMap) {
    let bits = present(headers, forwarding_index);
    remove_bits(headers, &FORWARDING, bits);
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none, most responses `Connection` alone.
    let bits = present(headers, hop_by_hop_index);
    if bits == 0 {
        return;
    }
    // `Connection: keep-alive` (or `close`, `upgrade`) names nothing beyond the fixed list:
    // no name is made and nothing is collected for it.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            ![
                "close",
                "keep-alive",
                "upgrade",
                "te",
                "transfer-encoding",
                "trailer",
            ]
            .iter()
            .any(|fixed| name.eq_ignore_ascii_case(fixed))
        })
        .filter_map(|name| HeaderName::try_from(name).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    remove_bits(headers, &HOP_BY_HOP, bits);
}

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The headers that describe earlier hops: kept from trusted proxies only.
static FORWARDING: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    header::FORWARDED,
];

/// Whether `host` is a `Host` a request may carry (RFC 9110 §7.2: `uri-host [":" port]`),
/// restricted to what DNS names and IP literals use, so that it can go into `Forwarded:
/// host="…"` and `X-Forwarded-Host` unchanged: `a,for=203.0.113.9` is refused, not forwarded
/// as a forged hop.
pub fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

/// Appends the client to `X-Forwarded-For` and `Forwarded` (RFC 7239): to the chains an
/// earlier hop sent when `extend` (a trusted proxy's), else as the fields' only entries (an
/// untrusted client's fields were removed; nothing is looked up).
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    proto: &str,
    host: Option<&HeaderValue>,
    extend: bool,
) {
    use std::fmt::Write as _;
    // Both values are written into one buffer and split off it: one allocation per request
    // for both fields, however long the chains they extend.
    fn prior<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
    }
    let ip = peer.ip();
    let host = host
        .filter(|h| valid_host(h.as_bytes()))
        .and_then(|h| h.to_str().ok());
    let (prior_xff, prior_forwarded) = if extend {
        (
            prior(headers, &X_FORWARDED_FOR),
            prior(headers, &header::FORWARDED),
        )
    } else {
        (None, None)
    };
    let mut buf = bytes::BytesMut::with_capacity(
        prior_xff.map_or(0, str::len)
            + prior_forwarded.map_or(0, str::len)
            + host.map_or(0, str::len)
            + 128,
    );
    if let Some(prior) = prior_xff {
        buf.extend_from_slice(prior.as_bytes());
        buf.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => push_v4(&mut buf, v4),
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
    let xff = buf.split().freeze();
    if let Some(prior) = prior_forwarded {
        buf.extend_from_slice(prior.as_bytes());
        buf.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => {
            buf.extend_from_slice(b"for=");
            push_v4(&mut buf, v4);
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(buf, "for=\"[{v6}]\"");
        }
    }
    buf.extend_from_slice(b";proto=");
    buf.extend_from_slice(proto.as_bytes());
    if let Some(host) = host {
        buf.extend_from_slice(b";host=\"");
        buf.extend_from_slice(host.as_bytes());
        buf.extend_from_slice(b"\"");
    }
    let forwarded = buf.freeze();
    if let Ok(v) = HeaderValue::from_maybe_shared(xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

/// Appends `ip` in dotted decimal, without `fmt`'s machinery (two addresses per request).
fn push_v4(buf: &mut bytes::BytesMut, ip: std::net::Ipv4Addr) {
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b".");
        }
        buf.extend_from_slice(digits.format(octet).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_spec_writes_them() {
        let t = |v: &'static str| grpc_timeout(&HeaderValue::from_static(v));
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive , X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn each_hop_by_hop_header_goes_without_a_connection_header_too() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
            remove_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}");
            assert!(h.contains_key("x-kept"));
        }
        let mut none = HeaderMap::new();
        none.insert(header::HOST, HeaderValue::from_static("example.com"));
        none.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut none);
        assert_eq!(none.len(), 2);
    }

    #[test]
    fn the_forwarding_headers_that_are_there_go_all_their_values_with_them() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.2"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=198.51.100.1"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_forwarding(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        remove_forwarding(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn the_quick_lookups_name_the_lists_in_order() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for (i, name) in FORWARDING.iter().enumerate() {
            assert_eq!(forwarding_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::HOST), None);
        assert_eq!(forwarding_index(&header::HOST), None);
    }

    #[test]
    fn hosts_that_could_forge_a_hop_are_not_valid() {
        for ok in [
            "example.com",
            "example.com:8080",
            "10.0.0.1:80",
            "[2001:db8::1]:443",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["a,for=203.0.113.9", "a\"b", "a;proto=https", "a b", ""] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn forwarding_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        let host = HeaderValue::from_static("example.com");
        add_forwarded(
            &mut h,
            "[2001:db8::1]:4000".parse().unwrap(),
            "http",
            Some(&host),
            true,
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 2001:db8::1");
        assert_eq!(
            h[header::FORWARDED],
            "for=\"[2001:db8::1]\";proto=http;host=\"example.com\""
        );

        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=192.0.2.60"));
        add_forwarded(
            &mut h,
            "10.0.255.9:4000".parse().unwrap(),
            "https",
            None,
            true,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.255.9");
        assert_eq!(
            h[header::FORWARDED],
            "for=192.0.2.60, for=10.0.255.9;proto=https"
        );
    }
}
