//! Committed test vectors: the hash functions and each algorithm's routing, so that a change
//! of hash, placement or table algorithm (which would re-route keys across a fleet) fails here.
//! The libketama vectors were computed independently of this crate (Python's `hashlib.md5`
//! following libketama's placement rules); the other ketama flavours are checked against the
//! real memcached clients in `ketama_clients.rs`.

use omega_shard_router::hash::{hash_key, ketama_hash, mix64, node_seed};
use omega_shard_router::{Algorithm, KetamaFlavor, Node, Topology};

fn ten(algorithm: Algorithm) -> Topology {
    Topology::new(
        algorithm,
        (0..10).map(|i| {
            Node::new(format!("node-{i}"), format!("10.0.0.{i}:7000")).with_weight(1 + i % 3)
        }),
    )
    .unwrap()
}

const KEYS: [&str; 8] = [
    "",
    "a",
    "user:1",
    "user:2",
    "user:42",
    "session:abcdef",
    "tenant/acme",
    "x",
];

fn owners(t: &Topology) -> Vec<&str> {
    KEYS.iter().map(|k| t.owner(*k).unwrap().id()).collect()
}

fn prefs<'a>(t: &'a Topology, key: &str) -> Vec<&'a str> {
    t.preference_list(key, 4).iter().map(|n| n.id()).collect()
}

#[test]
fn key_hash_is_xxh3_64_seed_0() {
    // XXH3-64 reference values ("" and "a" are in the xxHash test suite).
    let expected: [u64; 8] = [
        0x2d06_8005_38d3_94c2,
        0xe6c6_32b6_1e96_4e1f,
        0x3b57_7afd_7fed_9501,
        0x69a0_366b_760b_5c02,
        0x9fc1_e605_fa71_74aa,
        0x39e1_60c9_97cf_943d,
        0x06b3_bbae_7985_e7a8,
        0xeaf0_6c64_80b2_cd11,
    ];
    for (k, e) in KEYS.iter().zip(expected) {
        assert_eq!(hash_key(k.as_bytes()), e, "{k:?}");
    }
    // Integers hash as their little-endian bytes.
    assert_eq!(hash_key(&7u64.to_le_bytes()), 0x8167_1e58_d6b5_96af);
    let t = ten(Algorithm::table());
    assert_eq!(t.hash(&7u64), 0x8167_1e58_d6b5_96af);
}

#[test]
fn node_seed_and_mixer() {
    assert_eq!(node_seed("node-0"), 0xfeb8_c5f0_f770_082f);
    // SplitMix64: the first output for state 0 is mix64(0x9e3779b97f4a7c15).
    assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
}

#[test]
fn table_vectors() {
    let t = ten(Algorithm::table());
    assert_eq!(
        owners(&t),
        [
            "node-3", "node-8", "node-5", "node-6", "node-1", "node-0", "node-1", "node-9"
        ]
    );
    let s = t.slots().unwrap();
    assert_eq!(&s[..8], &[4, 2, 5, 8, 8, 4, 6, 5]);
    assert_eq!(&s[65528..], &[1, 2, 5, 1, 5, 4, 0, 3]);
    assert_eq!(
        prefs(&t, "user:42"),
        ["node-1", "node-8", "node-4", "node-3"]
    );
}

#[test]
fn ring_vectors() {
    let t = ten(Algorithm::ring());
    assert_eq!(
        owners(&t),
        [
            "node-2", "node-3", "node-2", "node-5", "node-4", "node-2", "node-5", "node-8"
        ]
    );
    assert_eq!(
        prefs(&t, "user:42"),
        ["node-4", "node-1", "node-6", "node-8"]
    );
}

#[test]
fn rendezvous_vectors() {
    let t = ten(Algorithm::Rendezvous);
    assert_eq!(
        owners(&t),
        [
            "node-9", "node-7", "node-7", "node-4", "node-7", "node-8", "node-2", "node-3"
        ]
    );
    assert_eq!(
        prefs(&t, "user:42"),
        ["node-7", "node-2", "node-5", "node-1"]
    );
}

fn ketama_servers() -> Topology {
    let servers = [
        ("10.0.1.1:11211", 600),
        ("10.0.1.2:11211", 300),
        ("10.0.1.3:11211", 200),
        ("10.0.1.4:11211", 350),
        ("10.0.1.5:11211", 1000),
        ("10.0.1.6:11211", 800),
        ("10.0.1.7:11211", 950),
        ("10.0.1.8:11211", 100),
    ];
    Topology::new(
        Algorithm::Ketama(KetamaFlavor::Libketama),
        servers
            .iter()
            .map(|(a, w)| Node::new(*a, *a).with_weight(*w)),
    )
    .unwrap()
}

#[test]
fn ketama_matches_libketama_placement() {
    // Computed with hashlib.md5: digests per server floorf(pct * 40 * n) = [44, 22, 14, 26,
    // 74, 59, 70, 7], 1264 points; the smallest points and their servers; key hashes and
    // owners.
    let t = ketama_servers();
    assert_eq!(ketama_hash(b"foo"), 3_675_831_724);
    assert_eq!(ketama_hash(b""), 3_649_838_548);
    let cases = [
        ("foo", 3_675_831_724u32, "10.0.1.7:11211"),
        ("bar", 421_377_335, "10.0.1.6:11211"),
        ("user:1", 282_964_413, "10.0.1.7:11211"),
        ("user:2", 3_264_788_475, "10.0.1.1:11211"),
        ("session:abcdef", 1_996_928_728, "10.0.1.2:11211"),
        ("memcached", 1_357_326_829, "10.0.1.2:11211"),
        ("", 3_649_838_548, "10.0.1.4:11211"),
        ("zzz", 1_807_264_755, "10.0.1.8:11211"),
    ];
    for (key, hash, owner) in cases {
        assert_eq!(ketama_hash(key.as_bytes()), hash, "{key:?}");
        assert_eq!(t.owner(key).unwrap().address(), owner, "{key:?}");
    }
    // The first points of the continuum: a hash at or below a point goes to its server.
    let first = [
        (762_113u32, "10.0.1.5:11211"),
        (2_322_555, "10.0.1.5:11211"),
        (3_967_256, "10.0.1.6:11211"),
        (4_398_564, "10.0.1.4:11211"),
    ];
    for (point, server) in first {
        let at = t.owner_index(u64::from(point) << 32).unwrap();
        assert_eq!(t.nodes()[at].address(), server, "point {point}");
    }
    // Past the last point (4293620028) the ring wraps to the first point's server.
    let wrap = t.owner_index(u64::from(4_293_620_029u32) << 32).unwrap();
    assert_eq!(t.nodes()[wrap].address(), "10.0.1.5:11211");
    let last = t.owner_index(u64::from(4_290_842_419u32) << 32).unwrap();
    assert_eq!(t.nodes()[last].address(), "10.0.1.7:11211");
    // The share of each server follows its digest count roughly, and sums to one.
    let total: f64 = t.shares().iter().sum();
    assert!((total - 1.0).abs() < 1e-9);
}
