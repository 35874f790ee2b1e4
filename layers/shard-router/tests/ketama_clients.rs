//! Ketama as the memcached clients mean it: each [`KetamaFlavor`] routes keys where the real
//! client sends them.
//!
//! The expected servers come from the clients themselves, not from this crate:
//! `tests/vectors/generate.sh` compiles `ketama_libmemcached.c` against the system's
//! libmemcached (1.1.4, Debian `libmemcached-dev`) and runs `KetamaSpy.java` against the
//! system's spymemcached (2.12.3, Debian `libspymemcached-java`, OpenJDK 17), over the server
//! sets and keys of `ketama-cases.txt`, and writes `ketama-expected.txt` (509 keys for each of
//! five client settings and seven server sets, and the clients' key hashes). Rerun it after installing those packages to
//! regenerate the file.

use omega_shard_router::hash::{ketama_hash, one_at_a_time};
use omega_shard_router::{Algorithm, KetamaFlavor, Node, Topology};

const CASES: &str = include_str!("vectors/ketama-cases.txt");
const EXPECTED: &str = include_str!("vectors/ketama-expected.txt");

/// A server set: (address, weight) in the clients' list order.
type Servers = Vec<(String, u32)>;

fn cases() -> (Vec<(String, Servers)>, Vec<String>) {
    let mut configs = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for line in CASES.lines() {
        let tok: Vec<&str> = line.split_whitespace().collect();
        match tok.first() {
            Some(&"config") => {
                let servers = tok[2..]
                    .iter()
                    .map(|s| {
                        let (a, w) = s.split_once('=').unwrap();
                        (a.to_owned(), w.parse().unwrap())
                    })
                    .collect();
                configs.push((tok[1].to_owned(), servers));
            }
            Some(&"keys") => keys.extend(tok[1..].iter().map(|s| s.to_string())),
            _ => {}
        }
    }
    keys.extend((0..500).map(|i| format!("key-{i}")));
    (configs, keys)
}

/// The client named in the vectors file, as a flavour.
fn flavour(client: &str) -> KetamaFlavor {
    match client {
        "libmemcached_weighted" => KetamaFlavor::LibmemcachedWeighted,
        "libmemcached_md5" => KetamaFlavor::LibmemcachedMd5,
        "libmemcached_oaat" => KetamaFlavor::Libmemcached,
        "spymemcached" => KetamaFlavor::Spymemcached,
        "spymemcached_weighted" => KetamaFlavor::SpymemcachedWeighted,
        other => panic!("no flavour for {other}"),
    }
}

/// Node ids in reverse of the clients' list order, so that agreement cannot come from the
/// order nodes are listed in.
fn topology(f: KetamaFlavor, servers: &Servers) -> Topology {
    let n = servers.len();
    Topology::new(
        Algorithm::Ketama(f),
        servers
            .iter()
            .enumerate()
            .map(|(i, (a, w))| Node::new(format!("s{:02}", n - i), a.as_str()).with_weight(*w)),
    )
    .unwrap()
}

#[test]
fn every_flavour_routes_every_key_where_the_real_client_does() {
    let (configs, keys) = cases();
    let mut checked = 0;
    let mut wrong = Vec::new();
    let mut clients = std::collections::BTreeSet::new();
    for line in EXPECTED
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("hash "))
    {
        let tok: Vec<&str> = line.split_whitespace().collect();
        let (client, config, digits) = (tok[0], tok[1], tok[2]);
        clients.insert(client);
        let servers = &configs.iter().find(|c| c.0 == config).unwrap().1;
        assert_eq!(digits.len(), keys.len(), "{client} {config}");
        let t = topology(flavour(client), servers);
        let disagree = keys
            .iter()
            .zip(digits.chars())
            .filter(|(k, d)| {
                let want = &servers[d.to_digit(36).unwrap() as usize].0;
                t.owner(k.as_str()).unwrap().address() != want
            })
            .count();
        println!(
            "{client:>22} {config:>4}: {disagree} of {} keys disagree",
            keys.len()
        );
        checked += keys.len();
        if disagree > 0 {
            wrong.push(format!("{client} {config}: {disagree}"));
        }
    }
    assert_eq!(clients.len(), 5, "{clients:?}");
    assert_eq!(checked, 5 * 7 * 509);
    assert!(wrong.is_empty(), "disagreements: {wrong:?}");
}

#[test]
fn key_hashes_are_the_clients() {
    let mut n = 0;
    for line in EXPECTED.lines().filter(|l| l.starts_with("hash ")) {
        let tok: Vec<&str> = line.split_whitespace().collect();
        let (function, key, want) = (tok[1], tok[2], tok[3].parse::<u64>().unwrap());
        let got = match function {
            "md5" | "ketama_hash" => ketama_hash(key.as_bytes()),
            // Includes keys with bytes >= 0x80, which libmemcached adds as signed chars.
            "one_at_a_time" => one_at_a_time(key.as_bytes()),
            other => panic!("unknown hash {other}"),
        };
        assert_eq!(u64::from(got), want, "{function} {key:?}");
        n += 1;
    }
    assert_eq!(n, 27);
    // The flavour's key hash is what a topology routes by (in the top 32 bits).
    for (f, h) in [
        (KetamaFlavor::LibmemcachedWeighted, ketama_hash(b"foo")),
        (KetamaFlavor::Libmemcached, one_at_a_time(b"foo")),
    ] {
        assert_eq!(f.key_hash(b"foo"), h);
        let t = Topology::new(Algorithm::Ketama(f), [Node::new("a", "10.0.0.1:11211")]).unwrap();
        assert_eq!(t.hash("foo"), u64::from(h) << 32);
    }
}

/// Digest counts: libketama computes `share × 40 × n` through a double, libmemcached and
/// spymemcached `share × 160 / 4 × n` in float. Server sets `d5` and `u25` (25 equal servers:
/// 39 digests each, not 40) are where that shows; the clients' vectors above hold there too.
#[test]
fn libketama_and_the_weighted_clients_count_digests_differently() {
    let (configs, keys) = cases();
    for config in ["d5", "u25"] {
        let servers = &configs.iter().find(|c| c.0 == config).unwrap().1;
        let lk = topology(KetamaFlavor::Libketama, servers);
        let spy = topology(KetamaFlavor::SpymemcachedWeighted, servers);
        let differ = keys
            .iter()
            .filter(|k| lk.owner(k.as_str()).unwrap().id() != spy.owner(k.as_str()).unwrap().id())
            .count();
        println!("{config}: libketama and weighted spymemcached disagree on {differ} keys");
        assert!(differ > 0, "{config}");
    }
}

/// The flavours differ from each other on the same servers: naming the client matters.
#[test]
fn the_flavours_are_different_continuums() {
    let (configs, keys) = cases();
    let servers = &configs.iter().find(|c| c.0 == "w8").unwrap().1;
    let all = [
        KetamaFlavor::Libketama,
        KetamaFlavor::LibmemcachedWeighted,
        KetamaFlavor::Libmemcached,
        KetamaFlavor::Spymemcached,
    ];
    for (i, &a) in all.iter().enumerate() {
        for &b in &all[i + 1..] {
            let (ta, tb) = (topology(a, servers), topology(b, servers));
            let differ = keys
                .iter()
                .filter(|k| {
                    ta.owner(k.as_str()).unwrap().id() != tb.owner(k.as_str()).unwrap().id()
                })
                .count();
            assert!(differ > keys.len() / 4, "{a:?} vs {b:?}: {differ}");
        }
    }
}

/// A draining node (weight 0) is as if it were not in the client's list.
#[test]
fn a_drained_node_is_left_out_as_the_client_would_leave_it_out() {
    let (configs, keys) = cases();
    let servers = &configs.iter().find(|c| c.0 == "p5").unwrap().1;
    for f in [
        KetamaFlavor::Libketama,
        KetamaFlavor::LibmemcachedWeighted,
        KetamaFlavor::Spymemcached,
    ] {
        let mut drained = servers.clone();
        drained[2].1 = 0;
        let without: Servers = servers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, s)| s.clone())
            .collect();
        let (a, b) = (topology(f, &drained), topology(f, &without));
        for k in &keys {
            assert_eq!(
                a.owner(k.as_str()).unwrap().address(),
                b.owner(k.as_str()).unwrap().address(),
                "{f:?} {k}"
            );
        }
    }
}
