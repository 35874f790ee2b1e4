//! Properties of the algorithms: keys move only to or from the changed node, the table moves
//! the minimum, shares follow weights, and the table is a function of the change history.

use omega_shard_router::{Algorithm, Change, KetamaFlavor, Node, Topology};
use proptest::prelude::*;

fn nodes(weights: &[u32]) -> Vec<Node> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Node::new(format!("n{i:03}"), format!("10.1.0.{i}:80")).with_weight(w))
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Add(u32),
    Remove(usize),
    Reweight(usize, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u32..10).prop_map(Op::Add),
        any::<usize>().prop_map(Op::Remove),
        (any::<usize>(), 0u32..10).prop_map(|(i, w)| Op::Reweight(i, w)),
    ]
}

/// The change and the id it concerns.
fn change(t: &Topology, op: &Op, fresh: usize) -> (Change, String) {
    match *op {
        Op::Add(w) => {
            let id = format!("new{fresh:03}");
            (
                Change::Add(Node::new(id.as_str(), "10.2.0.1:80").with_weight(w)),
                id,
            )
        }
        Op::Remove(i) => {
            let id = t.nodes()[i % t.len()].id().to_owned();
            (Change::remove(&id), id)
        }
        Op::Reweight(i, w) => {
            let id = t.nodes()[i % t.len()].id().to_owned();
            (Change::reweight(&id, w), id)
        }
    }
}

/// The node's share of the total weight; 0 when every node is drained (weight 0), as then no
/// node owns a key.
fn weight_share(t: &Topology, id: &str) -> f64 {
    let total: u64 = t.nodes().iter().map(|n| u64::from(n.weight())).sum();
    match t.node(id) {
        Some(n) if total > 0 => f64::from(n.weight()) / total as f64,
        _ => 0.0,
    }
}

/// Draining every node leaves a table that owns nothing: the last drained node's keys all
/// leave it, and none lands on another node. (Found by the property below.)
#[test]
fn draining_every_node_moves_the_last_ones_keys_to_no_one() {
    let t = Topology::new(Algorithm::Table { bits: 14 }, nodes(&[1, 1])).unwrap();
    let one = t.with(Change::reweight("n000", 0)).unwrap();
    let none = one.with(Change::reweight("n001", 0)).unwrap();
    assert_eq!(none.owner(&7u64).map(|n| n.id().to_owned()), None);
    assert_eq!(none.shares(), vec![0.0, 0.0]);
    let moved = one.diff(&none);
    assert!(moved.is_exact());
    assert!(moved.only_involves("n001"), "{:?}", moved.flows());
    assert!(
        (moved.fraction() - 1.0).abs() < 1e-9,
        "{}",
        moved.fraction()
    );
}

/// Each node's table share is within `slots` slots of its weight share.
fn assert_balanced(t: &Topology, slots: f64) {
    let m = t.slots().unwrap().len() as f64;
    for (n, share) in t.nodes().iter().zip(t.shares()) {
        let ideal = weight_share(t, n.id());
        assert!(
            (share - ideal).abs() * m <= slots,
            "{}: share {share} vs weight share {ideal}",
            n.id()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn table_moves_only_to_or_from_the_changed_node_and_the_minimum(
        weights in prop::collection::vec(1u32..10, 2..24),
        ops in prop::collection::vec(op(), 1..6),
    ) {
        let mut t = Topology::new(Algorithm::Table { bits: 14 }, nodes(&weights)).unwrap();
        for (k, op) in ops.iter().enumerate() {
            let (c, id) = change(&t, op, k);
            if matches!(c, Change::Remove(_)) && t.len() <= 2 {
                continue;
            }
            let before_share = weight_share(&t, &id);
            let preview = t.preview(std::slice::from_ref(&c)).unwrap();
            let next = t.with(c).unwrap();
            let moved = t.diff(&next);
            prop_assert_eq!(&preview, &moved);
            prop_assert!(moved.is_exact());
            prop_assert!(moved.only_involves(&id), "{:?}", moved.flows());
            let ideal = (weight_share(&next, &id) - before_share).abs();
            let m = f64::from(1u32 << 14);
            // Exactly the changed node's quota change: within a slot or two of the ideal
            // fraction, and within 1.05 x ideal once the ideal is 40 slots or more.
            prop_assert!((moved.fraction() - ideal).abs() * m <= 2.0, "moved {} ideal {}", moved.fraction(), ideal);
            if ideal * m >= 40.0 {
                prop_assert!(moved.fraction() <= 1.05 * ideal, "moved {} ideal {}", moved.fraction(), ideal);
            }
            assert_balanced(&next, 1.5);
            // The same holds key by key.
            for k in 0..300u64 {
                let (a, b) = (t.owner(&k).map(|n| n.id().to_owned()), next.owner(&k).map(|n| n.id().to_owned()));
                if a != b {
                    prop_assert!(a.as_deref() == Some(id.as_str()) || b.as_deref() == Some(id.as_str()), "{:?} -> {:?}", a, b);
                }
            }
            t = next;
        }
    }

    #[test]
    fn a_fresh_table_does_not_depend_on_input_order(
        weights in prop::collection::vec(0u32..10, 1..20),
        seed in any::<u64>(),
    ) {
        let mut ns = nodes(&weights);
        let a = Topology::new(Algorithm::Table { bits: 12 }, ns.clone()).unwrap();
        // Shuffle deterministically.
        let len = ns.len();
        for i in 0..len {
            let j = (seed.rotate_left(i as u32) as usize) % len;
            ns.swap(i, j);
        }
        let b = Topology::new(Algorithm::Table { bits: 12 }, ns).unwrap();
        prop_assert_eq!(a.slots(), b.slots());
    }
}

proptest! {
    // Rendezvous previews sample 65,536 hashes per topology: fewer cases keep this quick.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn rings_and_rendezvous_move_keys_only_to_or_from_the_changed_node(
        weights in prop::collection::vec(1u32..6, 2..12),
        op in op(),
        alg in prop_oneof![Just(Algorithm::Ring { vnodes: 40 }), Just(Algorithm::Rendezvous)],
    ) {
        let t = Topology::new(alg, nodes(&weights)).unwrap();
        let (c, id) = change(&t, &op, 0);
        let next = t.with(c).unwrap();
        let moved = t.diff(&next);
        prop_assert!(moved.only_involves(&id), "{:?}", moved.flows());
        // Every key that the changed node owns before or after is reported; nothing else.
        for k in 0..500u64 {
            let (a, b) = (t.owner(&k).map(|n| n.id().to_owned()), next.owner(&k).map(|n| n.id().to_owned()));
            if a != b {
                prop_assert!(a.as_deref() == Some(id.as_str()) || b.as_deref() == Some(id.as_str()), "{:?} -> {:?}", a, b);
            }
        }
    }
}

fn hundred() -> Topology {
    Topology::new(Algorithm::table(), nodes(&[1; 100])).unwrap()
}

#[test]
fn hundred_nodes_exact_shares_and_minimal_movement() {
    let t = hundred();
    let mean = 1.0 / 100.0;
    for share in t.shares() {
        assert!((share / mean - 1.0).abs() < 0.002, "{share}");
    }
    let added = t
        .with(Change::Add(Node::new("n100", "10.1.0.100:80")))
        .unwrap();
    let moved = t.diff(&added);
    assert!(moved.only_involves("n100"));
    assert!(
        moved.fraction() / (1.0 / 101.0) <= 1.001,
        "{}",
        moved.fraction()
    );
    assert!(
        moved.fraction() / (1.0 / 101.0) >= 0.998,
        "{}",
        moved.fraction()
    );
    let removed = t.with(Change::remove("n037")).unwrap();
    let moved = t.diff(&removed);
    assert!(moved.only_involves("n037"));
    assert!((moved.fraction() * 100.0 - 1.0).abs() < 0.002);
    // 99 receivers share n037's slots evenly.
    assert_eq!(moved.flows().len(), 99);
}

#[test]
fn weighted_shares_within_one_percent_at_100_nodes() {
    let weights: Vec<u32> = (0..100).map(|i| 1 + (i * 7) % 10).collect();
    let t = Topology::new(Algorithm::table(), nodes(&weights)).unwrap();
    for (n, share) in t.nodes().iter().zip(t.shares()) {
        let ideal = weight_share(&t, n.id());
        assert!(
            (share / ideal - 1.0).abs() < 0.01,
            "{}: {share} vs {ideal}",
            n.id()
        );
    }
    // Sampled over real keys too.
    let mut counts = vec![0u32; 100];
    for k in 0..400_000u64 {
        counts[t.owner_index(t.hash(&k)).unwrap()] += 1;
    }
    let total: f64 = counts.iter().map(|&c| f64::from(c)).sum();
    for (i, &c) in counts.iter().enumerate() {
        let ideal = weight_share(&t, t.nodes()[i].id());
        // Sampling noise: 400k keys, smallest share ~0.5%: 2000 keys, sd ~2.2%.
        assert!((f64::from(c) / total / ideal - 1.0).abs() < 0.12, "{i}");
    }
}

#[test]
fn zero_weight_drains_and_last_node_removal_empties() {
    let t = Topology::new(Algorithm::Table { bits: 10 }, nodes(&[1, 1])).unwrap();
    let drained = t.with(Change::reweight("n000", 0)).unwrap();
    assert_eq!(drained.owned_fraction("n000"), Some(0.0));
    assert_eq!(drained.owned_fraction("n001"), Some(1.0));
    assert_eq!(drained.owner("k").unwrap().id(), "n001");
    let empty = drained.with(Change::remove("n001")).unwrap();
    assert!(empty.owner("k").is_none());
    let back = empty
        .with(Change::Add(Node::new("z", "10.9.9.9:80")))
        .unwrap();
    assert_eq!(back.owner("k").unwrap().id(), "z");
}

#[test]
fn bad_changes_are_rejected_and_leave_the_topology_unchanged() {
    use omega_shard_router::TopologyErrorKind as K;
    let t = hundred();
    let dup = t.with(Change::Add(Node::new("n001", "x"))).unwrap_err();
    assert_eq!(dup.kind(), K::DuplicateNode);
    assert!(dup.to_string().contains("n001"), "{dup}");
    assert_eq!(
        t.with(Change::remove("nope")).unwrap_err().kind(),
        K::UnknownNode
    );
    assert_eq!(
        t.with(Change::Add(Node::new("", "x"))).unwrap_err().kind(),
        K::InvalidNode
    );
    assert_eq!(
        Topology::empty(Algorithm::Table { bits: 30 })
            .unwrap_err()
            .kind(),
        K::InvalidConfig
    );
    // A batch with one bad change applies nothing.
    assert!(
        t.apply(&[Change::remove("n001"), Change::remove("nope")])
            .is_err()
    );
    assert_eq!(t.len(), 100);
}

#[test]
fn preference_lists_are_distinct_and_start_with_the_owner() {
    for alg in [
        Algorithm::Table { bits: 12 },
        Algorithm::ring(),
        Algorithm::Ketama(KetamaFlavor::Libketama),
        Algorithm::Ketama(KetamaFlavor::LibmemcachedWeighted),
        Algorithm::Ketama(KetamaFlavor::Libmemcached),
        Algorithm::Ketama(KetamaFlavor::Spymemcached),
        Algorithm::Rendezvous,
    ] {
        let t = Topology::new(alg, nodes(&[1, 2, 3, 1, 1, 2])).unwrap();
        for k in 0..200u64 {
            let p = t.preference_list(&k, 4);
            assert_eq!(p.len(), 4);
            assert_eq!(p[0].id(), t.owner(&k).unwrap().id());
            let mut ids: Vec<&str> = p.iter().map(|n| n.id()).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 4, "{alg:?}");
        }
        // Removing the owner sends a key to the second node of its list: always on a ring
        // (the next distinct point) and with rendezvous; for most keys with the table (freed
        // slots go to their rendezvous favourite among the nodes still below their quota).
        if matches!(alg, Algorithm::Ketama(_)) {
            continue;
        }
        let mut same = 0;
        for k in 0..100u64 {
            let p = t.preference_list(&k, 2);
            let without = t.with(Change::remove(p[0].id())).unwrap();
            if without.owner(&k).unwrap().id() == p[1].id() {
                same += 1;
            } else {
                assert!(matches!(alg, Algorithm::Table { .. }), "{alg:?} key {k}");
            }
        }
        assert!(same >= 75, "{alg:?}: {same} of 100");
    }
}
