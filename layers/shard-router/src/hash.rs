//! The fixed hash functions every router uses, so that routing is the same on every platform.
//!
//! - **Keys** (table, ring and rendezvous routers): XXH3-64 with seed 0 over the key's bytes
//!   ([`hash_key`]). Integers are hashed as their 8 little-endian bytes.
//! - **Keys, ketama mode**: the first four bytes of the key's MD5 digest read as a little-endian
//!   `u32`, as libketama, libmemcached (with MD5) and spymemcached do ([`ketama_hash`]); for
//!   libmemcached's default hash, Jenkins' one-at-a-time ([`one_at_a_time`]).
//! - **Nodes**: XXH3-64 with seed [`NODE_SEED`] over the node id's UTF-8 bytes ([`node_seed`]).
//! - **Scores** (slot affinities, rendezvous, ring points): [`mix64`], the SplitMix64
//!   finalizer, over a node's seed combined with a slot number, a key hash or a point number.
//!
//! None of them depends on the platform, the process or a random seed; committed test
//! vectors (`tests/vectors.rs`) pin them.

use md5::{Digest, Md5};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The seed of [`node_seed`]: the ASCII bytes `"omegashd"` read as a big-endian `u64`.
pub const NODE_SEED: u64 = 0x6f6d_6567_6173_6864;

/// A key to look up ([`Topology::owner`](crate::Topology::owner),
/// [`Topology::preference_list`](crate::Topology::preference_list)): anything that can show
/// its bytes.
///
/// Implemented for strings, byte slices, the unsigned and signed integers (hashed as their
/// little-endian bytes, so `7u64` and `&7u64.to_le_bytes()[..]` route alike) and core's
/// [`Key`](omega_core::key::Key). Requests are routed by a
/// [`KeySource`](omega_core::key::KeySource), whose keys hash exactly as these do: a closure
/// returning `Some(7u64)` routes its request where `owner(&7u64)` says.
pub trait ShardKey {
    /// Calls `f` with the key's bytes.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
}

impl<T: ShardKey + ?Sized> ShardKey for &T {
    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        (**self).with_bytes(f)
    }
}

impl ShardKey for str {
    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_bytes())
    }
}

impl ShardKey for String {
    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_bytes())
    }
}

impl ShardKey for [u8] {
    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}

impl ShardKey for Vec<u8> {
    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}

impl<const N: usize> ShardKey for [u8; N] {
    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}

/// A key from a key source ([`omega_core::key::KeySource`]): its bytes, as the router hashes
/// them.
impl ShardKey for omega_core::key::Key<'_> {
    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.as_bytes())
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl ShardKey for $t {
            #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
                f(&self.to_le_bytes())
            }
        }
    )*};
}
int_keys!(u16, u32, u64, u128, i16, i32, i64, i128);

/// XXH3-64 (seed 0) of a key's bytes: the key hash of the table, ring and rendezvous routers.
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// The libketama key hash: the first four bytes of MD5(key) as a little-endian `u32`.
pub fn ketama_hash(bytes: &[u8]) -> u32 {
    let d = Md5::digest(bytes);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// libmemcached's default hash (`MEMCACHED_HASH_DEFAULT`, libhashkit's
/// `hashkit_one_at_a_time`): Jenkins' one-at-a-time over the bytes read as C `char`, which is
/// signed on x86-64 (so bytes of 0x80 and above add as negative numbers, sign-extended), as the
/// x86-64 build of libmemcached computes it.
pub fn one_at_a_time(bytes: &[u8]) -> u32 {
    let mut value: u32 = 0;
    for &b in bytes {
        value = value.wrapping_add(b as i8 as i32 as u32);
        value = value.wrapping_add(value << 10);
        value ^= value >> 6;
    }
    value = value.wrapping_add(value << 3);
    value ^= value >> 11;
    value.wrapping_add(value << 15)
}

/// The MD5 digest (used for ketama points).
pub(crate) fn md5(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes).into()
}

/// A node's seed: XXH3-64 of its id with seed [`NODE_SEED`].
#[inline]
pub fn node_seed(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), NODE_SEED)
}

/// The SplitMix64 finalizer: a fixed bijection on `u64` with good avalanche.
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The golden-ratio increment of SplitMix64, used to spread consecutive numbers.
pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The affinity of a node (by seed) for a slot, a key hash or a point number.
#[inline]
pub(crate) fn score(seed: u64, x: u64) -> u64 {
    mix64(seed ^ x.wrapping_mul(GOLDEN))
}

/// Weighted rendezvous: `true` when a node of weight `wa` with score `ua` beats one of weight
/// `wb` with score `ub`, i.e. `wa / -ln(ua) > wb / -ln(ub)` (with `-log2` in fixed point; the
/// base does not change the order). Equal weights compare the scores directly.
#[inline]
pub(crate) fn hrw_beats(wa: u32, ua: u64, wb: u32, ub: u64) -> bool {
    if wa == wb {
        return ua > ub;
    }
    let (la, lb) = (neg_log2_fixed(ua), neg_log2_fixed(ub));
    u128::from(wa) * u128::from(lb) > u128::from(wb) * u128::from(la)
}

/// `-log2(u / 2^64)` in fixed point with 24 fractional bits, by integer arithmetic only (the
/// same result on every platform, unlike `f64::ln`). `u = 0` counts as `u = 1`.
pub(crate) fn neg_log2_fixed(u: u64) -> u64 {
    const FRAC: u32 = 24;
    let u = u.max(1);
    let lz = u.leading_zeros();
    let int = 63 - lz; // floor(log2 u)
    // Mantissa in Q1.63, in [1, 2).
    let mut m = u128::from(u << lz);
    let mut frac: u64 = 0;
    for _ in 0..FRAC {
        m = (m * m) >> 63;
        frac <<= 1;
        if m >= 1u128 << 64 {
            frac |= 1;
            m >>= 1;
        }
    }
    let log2 = (u64::from(int) << FRAC) | frac; // log2(u) in Q.24
    (64u64 << FRAC) - log2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_log2_is_monotone_and_exact_on_powers_of_two() {
        assert_eq!(neg_log2_fixed(1u64 << 63), 1 << 24);
        assert_eq!(neg_log2_fixed(1u64 << 62), 2 << 24);
        assert_eq!(neg_log2_fixed(1), 64 << 24);
        let mut prev = u64::MAX;
        for i in 1..1000u64 {
            let v = neg_log2_fixed(i.wrapping_mul(0x0123_4567_89ab_cdef) >> 1 | 1 << 62);
            assert!(v <= 2 << 24, "{v}");
            let w = neg_log2_fixed(i << 50);
            assert!(w <= prev);
            prev = w;
        }
        // 3/4 of the range: -log2(0.75) = 0.415037...
        let v = neg_log2_fixed(3u64 << 62) as f64 / f64::from(1u32 << 24);
        assert!((v - 0.415_037_499).abs() < 1e-6, "{v}");
    }
}
