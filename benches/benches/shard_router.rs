//! The shard router beside its peers, 100 nodes, in one run.
//!
//! - `shard_lookup_u64_100`: the owner of a `u64` key (4,096 keys cycled): our slot table
//!   (`omega_table`, 2^16 slots) and ring (`omega_ring`, 160 points per node), `maglev` 0.2
//!   (table of 65,537 entries) and `hashring` 0.3 (160 virtual nodes per node).
//! - `shard_lookup_str_100`: the same with 36-byte string keys (UUID text).
//! - `shard_tower_call`: one request through `ShardRouter` to no-op node services, the future
//!   polled once to completion: plain (`omega`), and with an availability check and bounded
//!   loads (`omega_available_bounded`: the owner is checked first, so a healthy request is still
//!   one lookup).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use maglev::{ConsistentHasher, Maglev};
use omega_shard_router::{Algorithm, Node, ShardRouter, Topology, TopologyHandle};
use tower::{Service, service_fn};

const NODES: usize = 100;
const KEYS: usize = 4096;

fn ids() -> Vec<String> {
    (0..NODES).map(|i| format!("n{i:03}")).collect()
}

fn topology(alg: Algorithm) -> Topology {
    Topology::new(
        alg,
        ids()
            .into_iter()
            .enumerate()
            .map(|(i, id)| Node::new(id, format!("10.0.0.{i}:80"))),
    )
    .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct VNode {
    node: u16,
    v: u16,
}

fn hashring_160() -> hashring::HashRing<VNode> {
    let mut r = hashring::HashRing::new();
    for node in 0..NODES as u16 {
        for v in 0..160 {
            r.add(VNode { node, v });
        }
    }
    r
}

fn u64_keys() -> Vec<u64> {
    let mut x = 0x1234_5678_9abc_def0u64;
    (0..KEYS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
        .collect()
}

fn str_keys() -> Vec<String> {
    u64_keys()
        .iter()
        .map(|&k| {
            let h = format!("{k:016x}{:016x}", k.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        })
        .collect()
}

fn lookup_u64(c: &mut Criterion) {
    if let Some(n) = rows::iters() {
        rows::run(n);
        std::process::exit(0);
    }
    let keys = u64_keys();
    let mut g = c.benchmark_group("shard_lookup_u64_100");
    let table = topology(Algorithm::table());
    let mut i = 0usize;
    g.bench_function("omega_table", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(table.owner(black_box(&keys[i])))
        })
    });
    let ring = topology(Algorithm::ring());
    g.bench_function("omega_ring", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(ring.owner(black_box(&keys[i])))
        })
    });
    let maglev = Maglev::with_capacity(ids(), 65_537);
    g.bench_function("maglev", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(maglev.get(black_box(&keys[i])))
        })
    });
    let hr = hashring_160();
    g.bench_function("hashring", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(hr.get(black_box(&keys[i])))
        })
    });
    g.finish();
}

fn lookup_str(c: &mut Criterion) {
    let keys = str_keys();
    assert!(keys.iter().all(|k| k.len() == 36));
    let mut g = c.benchmark_group("shard_lookup_str_100");
    let table = topology(Algorithm::table());
    let mut i = 0usize;
    g.bench_function("omega_table", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(table.owner(black_box(keys[i].as_str())))
        })
    });
    let ring = topology(Algorithm::ring());
    g.bench_function("omega_ring", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(ring.owner(black_box(keys[i].as_str())))
        })
    });
    let hr = hashring_160();
    g.bench_function("hashring", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            black_box(hr.get(black_box(&keys[i])))
        })
    });
    g.finish();
}

fn tower_call(c: &mut Criterion) {
    let keys = u64_keys();
    let handle = TopologyHandle::new(topology(Algorithm::table()));
    let mut router = ShardRouter::builder(handle)
        .key(|k: &u64| Some(*k))
        .build(|_: &Node| {
            service_fn(|k: u64| std::future::ready(Ok::<_, std::convert::Infallible>(k)))
        });
    let mut guarded = ShardRouter::builder(TopologyHandle::new(topology(Algorithm::table())))
        .key(|k: &u64| Some(*k))
        .failover(3)
        .is_available(|n: &Node| !n.id().is_empty())
        .bounded_load(1.25)
        .build(|_: &Node| {
            service_fn(|k: u64| std::future::ready(Ok::<_, std::convert::Infallible>(k)))
        });
    let mut g = c.benchmark_group("shard_tower_call");
    let mut i = 0usize;
    g.bench_function("omega", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            let out = router.call(black_box(keys[i])).now_or_never();
            black_box(out.expect("no-op services are ready").unwrap())
        })
    });
    g.bench_function("omega_available_bounded", |b| {
        b.iter(|| {
            i = (i + 1) & (KEYS - 1);
            let out = guarded.call(black_box(keys[i])).now_or_never();
            black_box(out.expect("no-op services are ready").unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, lookup_u64, lookup_str, tower_call);
criterion_main!(benches);

/// With `OMEGA_BENCH_ITERS=n` set, the bench runs `n` lookups of each row of
/// `shard_lookup_u64_100` and `shard_lookup_str_100`, and `n` calls of `shard_tower_call`'s
/// `omega`, in one function per row (`rows::u64_table`, ...) and nothing else, for
/// instruction counts that do not depend on the machine's load: `OMEGA_BENCH_ITERS=100000
/// valgrind --tool=callgrind <bench binary>`, then `callgrind_annotate --inclusive=yes` and
/// the rows' totals divided by `n`.
mod rows {
    use super::*;

    pub(super) fn iters() -> Option<u64> {
        std::env::var("OMEGA_BENCH_ITERS").ok()?.parse().ok()
    }

    pub(super) fn run(n: u64) {
        let keys = u64_keys();
        let strs = str_keys();
        let table = topology(Algorithm::table());
        let ring = topology(Algorithm::ring());
        let maglev = Maglev::with_capacity(ids(), 65_537);
        u64_table(&table, &keys, n);
        u64_ring(&ring, &keys, n);
        u64_maglev(&maglev, &keys, n);
        str_table(&table, &strs, n);
        str_ring(&ring, &strs, n);
        let handle = TopologyHandle::new(topology(Algorithm::table()));
        let mut router = ShardRouter::builder(handle)
            .key(|k: &u64| Some(*k))
            .build(|_: &Node| {
                service_fn(|k: u64| std::future::ready(Ok::<_, std::convert::Infallible>(k)))
            });
        tower_omega(&mut router, &keys, 1_000);
        tower_omega(&mut router, &keys, n);
    }

    #[inline(never)]
    fn u64_table(t: &Topology, keys: &[u64], n: u64) {
        black_box(0); // a body of its own (identical rows would be merged)
        for j in 0..n as usize {
            black_box(t.owner(black_box(&keys[j & (KEYS - 1)])));
        }
    }

    #[inline(never)]
    fn u64_ring(t: &Topology, keys: &[u64], n: u64) {
        black_box(1); // a body of its own (identical rows would be merged)
        for j in 0..n as usize {
            black_box(t.owner(black_box(&keys[j & (KEYS - 1)])));
        }
    }

    #[inline(never)]
    fn u64_maglev(m: &Maglev<String>, keys: &[u64], n: u64) {
        black_box(2); // a body of its own (identical rows would be merged)
        for j in 0..n as usize {
            black_box(m.get(black_box(&keys[j & (KEYS - 1)])));
        }
    }

    #[inline(never)]
    fn str_table(t: &Topology, keys: &[String], n: u64) {
        black_box(3); // a body of its own (identical rows would be merged)
        for j in 0..n as usize {
            black_box(t.owner(black_box(keys[j & (KEYS - 1)].as_str())));
        }
    }

    #[inline(never)]
    fn str_ring(t: &Topology, keys: &[String], n: u64) {
        black_box(4); // a body of its own (identical rows would be merged)
        for j in 0..n as usize {
            black_box(t.owner(black_box(keys[j & (KEYS - 1)].as_str())));
        }
    }

    #[inline(never)]
    fn tower_omega<S>(router: &mut S, keys: &[u64], n: u64)
    where
        S: Service<u64>,
        S::Error: std::fmt::Debug,
    {
        for j in 0..n as usize {
            let out = router.call(black_box(keys[j & (KEYS - 1)])).now_or_never();
            black_box(out.expect("no-op services are ready").unwrap());
        }
    }
}
