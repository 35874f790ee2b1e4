//! [`ClientIp`]: the client's address, believing forwarding headers only from trusted proxies.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ::http::header::{FORWARDED, HeaderName};
use ::http::{HeaderMap, Request};
use ipnet::IpNet;

use super::http::peer_addr;
use super::{Key, KeySource};
use crate::error::{Error, Result};

/// Which header the trusted proxies in front of a server write the client into.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (what nginx and cloud load balancers
    /// append). The default.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
    /// Another header holding a comma-separated list of addresses, appended by each proxy
    /// (`X-Real-IP`, `True-Client-IP`, ...).
    Other(HeaderName),
}

impl ForwardingHeader {
    /// `x-forwarded-for`, `forwarded`, or another header's name.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardingHeader::XForwardedFor),
            "forwarded" => Ok(ForwardingHeader::Forwarded),
            other => HeaderName::try_from(other)
                .map(ForwardingHeader::Other)
                .map_err(|_| Error::config(format!("{name:?} is not a header name"))),
        }
    }
}

/// The client's IP address, as a key (grouped by prefix for IPv6) and for forwarding.
///
/// The client is the peer of the connection ([`PeerAddr`](super::http::PeerAddr), or axum's
/// `ConnectInfo<SocketAddr>` with feature `axum`). When, and only when, the peer is one of the
/// trusted proxies, the one header those proxies write ([`ForwardingHeader`], by default
/// `X-Forwarded-For`) is read from the right: trusted hops are skipped, and the first
/// untrusted address is the client. A client cannot name another address for itself, because
/// only what a trusted proxy appended is believed; the other forwarding header is ignored (a
/// proxy that appends `X-Forwarded-For` passes a client's own `Forwarded` through untouched).
/// Every line of a repeated header counts, in order. A hop that is not an address (`unknown`,
/// an obfuscated name, garbage) ends the walk at the last trusted hop.
///
/// IPv6 clients are grouped by a prefix (default /64, what one host or site gets), so one
/// host cannot use 2^64 keys; IPv4-mapped IPv6 addresses count as IPv4.
///
/// A request with no peer address has no key: the server was not set up to record peers
/// ([`KeySource::describe`] says how to fix that).
///
/// ```
/// use omega_core::key::http::{ClientIp, ForwardingHeader};
/// use http::HeaderMap;
///
/// let ip = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "6.6.6.6, 198.51.100.4".parse().unwrap());
/// headers.insert("forwarded", "for=1.2.3.4".parse().unwrap()); // not what the proxy writes
/// assert_eq!(ip.client("10.0.0.1".parse().unwrap(), &headers), "198.51.100.4".parse::<std::net::IpAddr>().unwrap());
/// // From an untrusted peer, headers are ignored.
/// assert_eq!(ip.client("203.0.113.9".parse().unwrap(), &headers), "203.0.113.9".parse::<std::net::IpAddr>().unwrap());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardingHeader,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp::peer()
    }
}

/// The default IPv6 grouping: one key per /64.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl ClientIp {
    /// The peer address only; forwarding headers are ignored.
    pub fn peer() -> Self {
        ClientIp {
            trusted: Vec::new(),
            header: ForwardingHeader::XForwardedFor,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Believes the forwarding header from peers inside these networks (`"10.0.0.0/8"`,
    /// `"::1/128"`, or a bare address such as `"192.0.2.7"`).
    pub fn trusting<I, S>(proxies: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let trusted = proxies
            .into_iter()
            .map(|p| {
                let p = p.as_ref().trim();
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        Error::config(format!(
                            "trusted proxy {p:?} is neither an address nor a network such as 10.0.0.0/8"
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(ClientIp {
            trusted,
            ..ClientIp::peer()
        })
    }

    /// The header the trusted proxies write (default `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }

    /// Groups IPv6 clients by their first `bits` bits (default 64; 128 keeps whole
    /// addresses). Values above 128 mean 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// Whether the peer `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The header read from trusted proxies.
    pub fn forwarding_header(&self) -> &ForwardingHeader {
        &self.header
    }

    /// The client address of a request whose peer is `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let mut walk = |hop: Option<IpAddr>| {
            // An unparseable hop ends the walk: what lies left of it cannot be attributed to
            // a trusted proxy.
            let Some(ip) = hop else { return false };
            client = ip;
            self.is_trusted(ip)
        };
        match &self.header {
            ForwardingHeader::Forwarded => {
                let lines: Vec<&[u8]> = headers
                    .get_all(FORWARDED)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                let mut hops = Vec::new();
                for line in &lines {
                    forwarded_for(line, &mut hops);
                }
                for hop in hops.into_iter().rev() {
                    if !walk(hop) {
                        break;
                    }
                }
            }
            ForwardingHeader::XForwardedFor => list_walk(headers, "x-forwarded-for", walk),
            ForwardingHeader::Other(name) => list_walk(headers, name.as_str(), walk),
        }
        client
    }

    /// The key of `ip`: the address itself, or for IPv6 its network under the prefix.
    pub fn key_of(&self, ip: IpAddr) -> Key<'static> {
        match canonical(ip) {
            IpAddr::V6(v6) if self.ipv6_prefix < 128 => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(u32::from(128 - self.ipv6_prefix))
                    .unwrap_or(0);
                let net = Ipv6Addr::from(bits & mask);
                Key::format(format_args!("{net}/{}", self.ipv6_prefix))
            }
            IpAddr::V4(v4) => v4_key(v4),
            ip => Key::format(format_args!("{ip}")),
        }
    }
}

/// `ip` in dotted decimal, as `Display` writes it, without `fmt`'s machinery: this key is
/// made for every request a per-client limit sees.
fn v4_key(ip: Ipv4Addr) -> Key<'static> {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    Key::copy_of(&text[..len])
}

impl<B: 'static> KeySource<Request<B>> for ClientIp {
    fn key<'a>(&self, req: &'a Request<B>) -> Option<Key<'a>> {
        let peer = peer_addr(req)?;
        Some(self.key_of(self.client(peer.ip(), req.headers())))
    }

    fn describe(&self) -> Cow<'static, str> {
        Cow::Borrowed(
            "the client IP (the server records no peer address: insert `PeerAddr`, or serve axum \
             with `into_make_service_with_connect_info::<SocketAddr>()`)",
        )
    }
}

/// Walks a comma-separated list header from the right, every line in order.
fn list_walk(headers: &HeaderMap, name: &str, mut walk: impl FnMut(Option<IpAddr>) -> bool) {
    let lines: Vec<&str> = headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("garbage"))
        .collect();
    for hop in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        if !walk(parse_node(hop.trim())) {
            break;
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so `::ffff:10.0.0.1` and `10.0.0.1` are one client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Appends the `for=` node of every element of one `Forwarded` line (RFC 7239 §4) to `hops`:
/// elements split at commas and pairs at semicolons outside quoted strings; values are tokens
/// or quoted strings with backslash escapes. An element without `for=`, or whose node is not
/// an address (`unknown`, an obfuscated `_name`), is pushed as `None`.
fn forwarded_for(line: &[u8], hops: &mut Vec<Option<IpAddr>>) {
    let mut element_for: Option<Option<IpAddr>> = None;
    let mut pair = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let finish_pair = |pair: &mut Vec<u8>, element_for: &mut Option<Option<IpAddr>>| {
        if let Some(eq) = pair.iter().position(|&b| b == b'=') {
            let (name, value) = (&pair[..eq], &pair[eq + 1..]);
            if name.trim_ascii().eq_ignore_ascii_case(b"for") && element_for.is_none() {
                let node = std::str::from_utf8(value.trim_ascii()).ok();
                *element_for = Some(node.and_then(parse_node));
            }
        }
        pair.clear();
    };
    for &b in line {
        if quoted {
            match (escaped, b) {
                (true, _) => {
                    pair.push(b);
                    escaped = false;
                }
                (false, b'\\') => escaped = true,
                (false, b'"') => quoted = false,
                (false, _) => pair.push(b),
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b';' => finish_pair(&mut pair, &mut element_for),
            b',' => {
                finish_pair(&mut pair, &mut element_for);
                hops.push(element_for.take().flatten());
            }
            _ => pair.push(b),
        }
    }
    finish_pair(&mut pair, &mut element_for);
    if !line.trim_ascii().is_empty() {
        hops.push(element_for.take().flatten());
    }
}

/// An address from a forwarding hop: `192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:4711`,
/// `[2001:db8::1]`, `2001:db8::1` (unquoted, as X-Forwarded-For writes it).
fn parse_node(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (inner, _port) = rest.split_once(']')?;
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| canonical(v6.into()));
    }
    let (host, port) = hop.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    #[test]
    fn ipv4_keys_are_the_addresses_as_display_writes_them() {
        for octet in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 9, 255),
                Ipv4Addr::new(10, octet, 100, 1),
                Ipv4Addr::new(192, 168, octet, octet),
            ] {
                assert_eq!(v4_key(ip).as_bytes(), ip.to_string().as_bytes());
            }
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_name_another_client() {
        let c = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(c.client(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        assert_eq!(ClientIp::peer().client(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_hops_are_skipped_from_the_right_across_lines() {
        let c = ClientIp::trusting(["10.0.0.0/8", "192.0.2.7"]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.4, 10.1.1.1")]);
        assert_eq!(c.client(ip("192.0.2.7"), &h), ip("198.51.100.4"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.5, 10.3.3.3"),
        ]);
        assert_eq!(c.client(ip("10.0.0.2"), &h), ip("198.51.100.5"));
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(c.client(ip("10.0.0.2"), &h), ip("10.9.9.9"));
        let h = headers(&[("x-forwarded-for", "198.51.100.4, garbage, 10.1.1.1")]);
        assert_eq!(c.client(ip("10.0.0.2"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn only_the_named_header_is_believed() {
        // nginx appends X-Forwarded-For and passes the client's own Forwarded through.
        let xff = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
        let h = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "198.51.100.4"),
        ]);
        assert_eq!(xff.client(ip("10.0.0.1"), &h), ip("198.51.100.4"));
        let fwd = xff.clone().header(ForwardingHeader::Forwarded);
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=198.51.100.9"),
        ]);
        assert_eq!(fwd.client(ip("10.0.0.1"), &h), ip("198.51.100.9"));
        let real = xff.header(ForwardingHeader::parse("X-Real-IP").unwrap());
        let h = headers(&[
            ("x-real-ip", "198.51.100.3"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        assert_eq!(real.client(ip("10.0.0.1"), &h), ip("198.51.100.3"));
    }

    #[test]
    fn forwarded_follows_rfc_7239() {
        let c = ClientIp::trusting(["10.0.0.0/8"])
            .unwrap()
            .header(ForwardingHeader::Forwarded);
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.2.2.2:80"#,
        )]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("2001:db8:cafe::17"));
        // A quoted value may hold commas and semicolons.
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6;host="a,for=10.1.1.1;x", for=198.51.100.2"#,
        )]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("198.51.100.2"));
        let h = headers(&[(
            "forwarded",
            r#"for=198.51.100.1;host="evil\",for=10.1.1.1", for=10.4.4.4"#,
        )]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("198.51.100.1"));
        // Obfuscated and unknown nodes end the walk; so does an element without for=.
        let h = headers(&[("forwarded", "for=_hidden, for=10.2.2.2")]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("10.2.2.2"));
        let h = headers(&[("forwarded", "for=unknown"), ("forwarded", "for=10.2.2.2")]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("10.2.2.2"));
        let h = headers(&[("forwarded", "proto=https, for=10.2.2.2")]);
        assert_eq!(c.client(ip("10.0.0.3"), &h), ip("10.2.2.2"));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let c = ClientIp::peer();
        assert_eq!(
            c.key_of(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            c.key_of(ip("2001:db8:1:2:bbbb::9")),
            c.key_of(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_eq!(
            c.clone()
                .ipv6_prefix(128)
                .key_of(ip("2001:db8::1"))
                .to_string(),
            "2001:db8::1"
        );
        assert_eq!(
            c.clone()
                .ipv6_prefix(0)
                .key_of(ip("2001:db8::1"))
                .to_string(),
            "::/0"
        );
        assert_eq!(
            c.key_of(ip("::ffff:198.51.100.4")).to_string(),
            "198.51.100.4"
        );
    }

    #[test]
    fn keys_come_from_the_peer_address_extension() {
        let c = ClientIp::trusting(["127.0.0.1"]).unwrap();
        let mut req = Request::get("/")
            .header("x-forwarded-for", "198.51.100.4")
            .body(())
            .unwrap();
        assert_eq!(c.key(&req), None, "no peer recorded");
        req.extensions_mut().insert(super::super::http::PeerAddr(
            "127.0.0.1:5000".parse().unwrap(),
        ));
        assert_eq!(c.key(&req).unwrap().to_string(), "198.51.100.4");
        assert!(KeySource::<Request<()>>::describe(&c).contains("PeerAddr"));
    }

    #[test]
    fn bad_proxy_lists_and_headers_are_rejected_with_the_culprit() {
        let err = ClientIp::trusting(["10.0.0.0/8", "ten.zero"]).unwrap_err();
        assert!(err.to_string().contains("ten.zero"), "{err}");
        assert!(ForwardingHeader::parse("bad header").is_err());
    }
}
