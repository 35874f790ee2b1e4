//! Balance and movement of each algorithm, ours and the peers', over many keys.
//!
//! ```text
//! cargo run --release -p omega-shard-router --example distribution [KEYS]
//! ```
//!
//! For each algorithm, one line:
//! `algorithm=NAME nodes=100 keys=N max_over_mean=X moved_add=Y moved_remove=Z`, where X is the
//! busiest node's key count over the mean, and Y and Z are the fractions of keys that change
//! node when a 101st node is added, and when node 37 is removed, as multiples of the ideal
//! (1/101 and 1/100). Keys are the integers 0..N (default 10 million).

use std::hash::Hash;

use omega_shard_router::{Algorithm, Change, KetamaFlavor, Node, Topology};

const NODES: usize = 100;

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("KEYS is a number"))
        .unwrap_or(10_000_000);
    for (name, alg) in [
        ("omega_table", Algorithm::table()),
        ("omega_ring", Algorithm::ring()),
        ("omega_ketama", Algorithm::Ketama(KetamaFlavor::Libketama)),
        ("omega_rendezvous", Algorithm::Rendezvous),
    ] {
        let started = std::time::Instant::now();
        let base = Topology::new(alg, (0..NODES).map(node)).unwrap();
        let build = started.elapsed();
        let started = std::time::Instant::now();
        let added = base.with(Change::Add(node(NODES))).unwrap();
        let add = started.elapsed();
        let started = std::time::Instant::now();
        let removed = base.with(Change::remove(&id(37))).unwrap();
        let remove = started.elapsed();
        // Owned shares are exact for the table and the rings (rendezvous has none to report).
        let exact = base.shares().iter().cloned().fold(0.0, f64::max) * NODES as f64;
        let exact = if matches!(alg, Algorithm::Rendezvous) {
            "n/a".to_owned()
        } else {
            format!("{exact:.4}")
        };
        eprintln!(
            "# {name}: exact max_over_mean {exact}; build {build:?}, add a node {add:?}, remove a node {remove:?}"
        );
        // Compare by index where the node sets line up: ids sort as n000..n100, so the base
        // and the added topology share indices 0..100, and the removed one shifts by one
        // after 37.
        report(name, keys, |k| {
            let a = base.owner_index(base.hash(&k)).unwrap();
            let b = added.owner_index(added.hash(&k)).unwrap();
            let c = removed.owner_index(removed.hash(&k)).unwrap();
            let c = if c >= 37 { c + 1 } else { c };
            (a, a != b, a != c)
        });
    }

    // Peers: maglev 0.2.1 with a fixed prime table of 65,537 entries (Envoy's default; the
    // crate's default size follows the node count, so every change would rebuild a table of
    // another size and move nearly every key), and hashring 0.3.6 with 160 virtual nodes per
    // node (the ketama-like setting).
    {
        use maglev::{ConsistentHasher, Maglev};
        let ids: Vec<String> = (0..NODES).map(id).collect();
        const M: usize = 65_537;
        let base = Maglev::with_capacity(ids.clone(), M);
        let mut plus = ids.clone();
        plus.push(id(NODES));
        let added = Maglev::with_capacity(plus, M);
        let minus: Vec<String> = ids.iter().filter(|n| **n != id(37)).cloned().collect();
        let removed = Maglev::with_capacity(minus, M);
        let index = |s: &String| s[1..].parse::<usize>().unwrap();
        report("maglev", keys, |k| {
            let a = base.get(&k).unwrap();
            let b = added.get(&k).unwrap();
            let c = removed.get(&k).unwrap();
            (index(a), a != b, a != c)
        });
    }
    {
        let ring = |n: &mut dyn Iterator<Item = usize>| {
            let mut r = hashring::HashRing::new();
            for i in n {
                for v in 0..160u32 {
                    r.add(VNode { node: i, v });
                }
            }
            r
        };
        let base = ring(&mut (0..NODES));
        let added = ring(&mut (0..=NODES));
        let removed = ring(&mut (0..NODES).filter(|&i| i != 37));
        report("hashring", keys, |k| {
            let a = base.get(&k).unwrap().node;
            let b = added.get(&k).unwrap().node;
            let c = removed.get(&k).unwrap().node;
            (a, a != b, a != c)
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct VNode {
    node: usize,
    v: u32,
}

fn id(i: usize) -> String {
    format!("n{i:03}")
}

fn node(i: usize) -> Node {
    Node::new(id(i), format!("10.0.{}.{}:11211", i / 256, i % 256))
}

/// `f(key)` gives (owner index in the 100-node set, moved on add, moved on remove).
fn report(name: &str, keys: u64, f: impl Fn(u64) -> (usize, bool, bool) + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let chunk = keys.div_ceil(threads);
    let (counts, add, remove) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || {
                    let mut counts = vec![0u64; NODES + 1];
                    let (mut add, mut remove) = (0u64, 0u64);
                    for k in t * chunk..((t + 1) * chunk).min(keys) {
                        let (o, a, r) = f(k);
                        counts[o] += 1;
                        add += u64::from(a);
                        remove += u64::from(r);
                    }
                    (counts, add, remove)
                })
            })
            .collect();
        let mut counts = vec![0u64; NODES + 1];
        let (mut add, mut remove) = (0u64, 0u64);
        for h in handles {
            let (c, a, r) = h.join().unwrap();
            for (x, y) in counts.iter_mut().zip(c) {
                *x += y;
            }
            add += a;
            remove += r;
        }
        (counts, add, remove)
    });
    let max = *counts.iter().max().unwrap() as f64;
    let mean = keys as f64 / NODES as f64;
    let moved_add = add as f64 / keys as f64 * (NODES + 1) as f64;
    let moved_remove = remove as f64 / keys as f64 * NODES as f64;
    println!(
        "algorithm={name} nodes={NODES} keys={keys} max_over_mean={:.4} moved_add={:.4} moved_remove={:.4}",
        max / mean,
        moved_add,
        moved_remove
    );
}
