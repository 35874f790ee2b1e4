//! The ketama continuums of the memcached clients ([`KetamaFlavor`]): where each client puts a
//! server's points, and how it hashes a key.
//!
//! Every flavour is checked against the real clients: `tests/ketama_clients.rs` compares the
//! owners of 509 keys over five server sets with the choices of libmemcached 1.1.4 (C) and
//! spymemcached 2.12.3 (Java), recorded by `tests/vectors/generate.sh`.

use crate::hash::{ketama_hash, md5, one_at_a_time};

/// Which memcached client's ketama continuum an [`Algorithm::Ketama`](crate::Algorithm::Ketama)
/// topology reproduces. "Ketama" names a family: the clients agree on MD5 points and a ring
/// walked clockwise, but not on how many points a server gets nor on the string its points
/// are hashed from, so two clients configured with the same servers send most keys to
/// different servers. Pick the flavour of the client that shares the cache with this router.
///
/// Common to every flavour:
///
/// - a node's [address](crate::Node::address) is the server as the client is given it,
///   `host:port` (`[v6]:port` for IPv6; without a port, 11211);
/// - a node of weight 0 (draining) is left out, as if it were not in the client's server list
///   (point counts then follow the other nodes);
/// - a key goes to the first point at or after its hash, wrapping around;
/// - when two servers' points coincide (about one continuum in ten thousand has such a pair),
///   the node whose id sorts first owns the point; the clients break that tie by their
///   server-list order.
///
/// | flavour | the client | points per server | point strings | key hash |
/// |---|---|---|---|---|
/// | [`Libketama`](Self::Libketama) | last.fm's libketama (and its ports) | `4 × floorf(share × 40 × n)` | `address-k` | MD5 |
/// | [`LibmemcachedWeighted`](Self::LibmemcachedWeighted) | libmemcached `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED` (PHP `Memcached::OPT_LIBKETAMA_COMPATIBLE`, pylibmc `ketama_weighted`) | `4 × floor(share × 160 / 4 × n)` | `host-k` on port 11211, `host:port-k` otherwise | MD5 |
/// | [`LibmemcachedMd5`](Self::LibmemcachedMd5) | libmemcached `MEMCACHED_BEHAVIOR_KETAMA` with `MEMCACHED_HASH_MD5` | 100, one hash each; weighted as above once a server has weight > 1 | as above | MD5 |
/// | [`Libmemcached`](Self::Libmemcached) | libmemcached `MEMCACHED_BEHAVIOR_KETAMA` with its default hash (pylibmc `ketama`) | as above | as above | one-at-a-time (points: one-at-a-time, or MD5 when weighted) |
/// | [`Spymemcached`](Self::Spymemcached) | spymemcached `KetamaNodeLocator` with `KETAMA_HASH` (`KetamaConnectionFactory`), no weights | 160 (40 digests × 4); weights ignored | `address-k` | MD5 |
/// | [`SpymemcachedWeighted`](Self::SpymemcachedWeighted) | spymemcached `KetamaNodeLocator` with a weights map (`SPYMEMCACHED` node keys) | `4 × floor(share × 160 / 4 × n)` | `address-k` | MD5 |
///
/// `share` is the node's weight over the total weight, computed in single precision as the
/// clients do; `n` the number of nodes. libmemcached switches an unweighted continuum to the
/// weighted one when a server of weight > 1 is added to it (after the distribution is set), and
/// the two `Libmemcached*` flavours do the same: give every node weight 1 for the unweighted
/// continuum. spymemcached names a server by its socket address as Java prints it, without the
/// leading `/`: for an IP literal that is `10.0.0.1:11211`; for a host name Java prints
/// `name/10.0.0.1:11211`, so give that as the address for the spymemcached flavours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KetamaFlavor {
    /// last.fm's libketama, the original (the continuum this crate's ketama mode always had).
    Libketama,
    /// libmemcached with `MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`.
    LibmemcachedWeighted,
    /// libmemcached with `MEMCACHED_BEHAVIOR_KETAMA` and `MEMCACHED_BEHAVIOR_HASH` =
    /// `MEMCACHED_HASH_MD5`.
    LibmemcachedMd5,
    /// libmemcached with `MEMCACHED_BEHAVIOR_KETAMA` and its default hash (Jenkins'
    /// one-at-a-time over the key's bytes as C `char`s).
    Libmemcached,
    /// spymemcached's `KetamaNodeLocator` with `DefaultHashAlgorithm.KETAMA_HASH` and no
    /// weights (what `KetamaConnectionFactory` builds by default).
    Spymemcached,
    /// spymemcached's `KetamaNodeLocator` with `KETAMA_HASH`, the `SPYMEMCACHED` node-key format
    /// and a weights map holding every node's weight.
    SpymemcachedWeighted,
}

/// The flavours with their stored codes (see `redis::encode`), in code order.
pub(crate) const FLAVOURS: [KetamaFlavor; 6] = [
    KetamaFlavor::Libketama,
    KetamaFlavor::LibmemcachedWeighted,
    KetamaFlavor::LibmemcachedMd5,
    KetamaFlavor::Libmemcached,
    KetamaFlavor::Spymemcached,
    KetamaFlavor::SpymemcachedWeighted,
];

/// libmemcached's `MEMCACHED_DEFAULT_PORT`: the port its point strings leave out.
const MEMCACHED_DEFAULT_PORT: u16 = 11211;

impl KetamaFlavor {
    /// The code stored for this flavour.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn code(self) -> u32 {
        FLAVOURS.iter().position(|&f| f == self).expect("listed") as u32
    }

    /// The flavour stored as `code`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_code(code: u32) -> Option<Self> {
        FLAVOURS.get(code as usize).copied()
    }

    /// The client's 32-bit key hash.
    #[inline]
    pub fn key_hash(self, key: &[u8]) -> u32 {
        match self {
            KetamaFlavor::Libmemcached => one_at_a_time(key),
            _ => ketama_hash(key),
        }
    }

    /// [`key_hash`](Self::key_hash) in the top 32 bits, as the topology routes by it. Out of
    /// line, so that [`Topology::hash_bytes`](crate::Topology::hash_bytes) stays small enough
    /// to inline into lookups with XXH3, where a key of known length (an integer) hashes in a
    /// few instructions.
    #[inline(never)]
    pub(crate) fn route_hash(self, key: &[u8]) -> u64 {
        u64::from(self.key_hash(key)) << 32
    }

    /// `true` when keys hash with MD5 (all but [`Libmemcached`](Self::Libmemcached)).
    pub(crate) fn md5_keys(self) -> bool {
        self != KetamaFlavor::Libmemcached
    }

    /// The points of each node (`weights[i]`, `addresses[i]`), as `(point, node index)`.
    pub(crate) fn points(self, weights: &[u32], addresses: &[&str]) -> Vec<(u32, u16)> {
        let live = weights.iter().filter(|&&w| w > 0).count();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let weighted = match self {
            KetamaFlavor::Libketama
            | KetamaFlavor::LibmemcachedWeighted
            | KetamaFlavor::SpymemcachedWeighted => true,
            KetamaFlavor::LibmemcachedMd5 | KetamaFlavor::Libmemcached => {
                weights.iter().any(|&w| w > 1)
            }
            KetamaFlavor::Spymemcached => false,
        };
        let mut pts = Vec::new();
        for (i, (&w, addr)) in weights.iter().zip(addresses).enumerate() {
            if w == 0 {
                continue;
            }
            let name = match self {
                KetamaFlavor::LibmemcachedWeighted
                | KetamaFlavor::LibmemcachedMd5
                | KetamaFlavor::Libmemcached => libmemcached_name(addr),
                _ => (*addr).to_owned(),
            };
            let idx = i as u16;
            if !weighted {
                if matches!(self, KetamaFlavor::Spymemcached) {
                    // 160 repetitions, 4 points per digest.
                    md5_points(&name, 40, idx, &mut pts);
                } else {
                    // libmemcached's MEMCACHED_POINTS_PER_SERVER, one hash per point.
                    for k in 0..100u32 {
                        let s = format!("{name}-{k}");
                        let p = match self {
                            KetamaFlavor::Libmemcached => one_at_a_time(s.as_bytes()),
                            _ => ketama_hash(s.as_bytes()),
                        };
                        pts.push((p, idx));
                    }
                }
                continue;
            }
            let digests = match self {
                KetamaFlavor::Libketama => libketama_digests(w, total, live),
                _ => libmemcached_digests(w, total, live),
            };
            md5_points(&name, digests, idx, &mut pts);
        }
        pts
    }
}

/// `digests` MD5 digests of `"<name>-<k>"`, four points each (bytes `4h..4h+4` read
/// little-endian), as every ketama client places them.
fn md5_points(name: &str, digests: u32, idx: u16, pts: &mut Vec<(u32, u16)>) {
    for k in 0..digests {
        let digest = md5(format!("{name}-{k}").as_bytes());
        for h in 0..4 {
            let b = &digest[h * 4..h * 4 + 4];
            pts.push((u32::from_le_bytes([b[0], b[1], b[2], b[3]]), idx));
        }
    }
}

/// libketama: `floorf(pct * 40.0 * (float)n)` with `pct = (float)weight / (float)total`; the
/// product is computed in double and converted to float for `floorf`.
fn libketama_digests(w: u32, total: u64, n: usize) -> u32 {
    let pct = w as f32 / total as f32;
    ((f64::from(pct) * 40.0 * f64::from(n as f32)) as f32).floor() as u32
}

/// libmemcached (and spymemcached's weighted locator): points per server
/// `floor((float)(pct * 160 / 4 * (float)n + 0.0000000001)) * 4`, the products in float, the
/// sum in double; returned as digests (points / 4).
fn libmemcached_digests(w: u32, total: u64, n: usize) -> u32 {
    let pct = w as f32 / total as f32;
    let x = pct * 160.0f32 / 4.0f32 * (n as f32);
    ((f64::from(x) + 0.000_000_000_1) as f32).floor() as u32
}

/// libmemcached's name of a server in its point strings: the host alone on the default port,
/// `host:port` on another.
fn libmemcached_name(address: &str) -> String {
    let (host, port) = split_host_port(address);
    match port {
        Some(p) if p != MEMCACHED_DEFAULT_PORT => format!("{host}:{p}"),
        _ => host.to_owned(),
    }
}

/// `host:port`, `[v6]:port`, `host` or `v6` into host and port.
fn split_host_port(address: &str) -> (&str, Option<u16>) {
    if let Some(rest) = address.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match address.rsplit_once(':') {
        // One colon: host and port; more: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (address, None),
        },
        _ => (address, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libmemcached_names_servers_as_it_prints_them() {
        assert_eq!(libmemcached_name("10.0.0.1:11211"), "10.0.0.1");
        assert_eq!(libmemcached_name("10.0.0.1:11212"), "10.0.0.1:11212");
        assert_eq!(libmemcached_name("cache-a"), "cache-a");
        assert_eq!(libmemcached_name("[::1]:11211"), "::1");
        assert_eq!(libmemcached_name("[::1]:11300"), "::1:11300");
        assert_eq!(libmemcached_name("::1"), "::1");
    }

    #[test]
    fn codes_round_trip() {
        for f in FLAVOURS {
            assert_eq!(KetamaFlavor::from_code(f.code()), Some(f));
        }
        assert_eq!(KetamaFlavor::from_code(6), None);
        assert_eq!(
            KetamaFlavor::Libketama.code(),
            0,
            "stored topologies before flavours"
        );
    }
}
