//! Routing a key allocates nothing: the owner by every algorithm, for integer and string
//! keys, the next node when some are skipped (failover), and the preference list into a
//! reused buffer. Counted by a global allocator that counts this thread's allocations.

use omega_shard_router::{Algorithm, Node, Topology, TopologyHandle};
use omega_testkit::alloc::{CountingAlloc, allocations};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node::new(format!("n{i}"), format!("10.0.0.{i}:80")).with_weight(1 + i as u32 % 3))
        .collect()
}

#[test]
fn lookups_allocate_nothing() {
    let keys: Vec<String> = (0..1_000).map(|i| format!("user-{i}")).collect();
    for alg in [
        Algorithm::Table { bits: 16 },
        Algorithm::Ring { vnodes: 40 },
        Algorithm::Ketama,
        Algorithm::Rendezvous,
    ] {
        let handle = TopologyHandle::new(Topology::new(alg, nodes(20)).unwrap());
        let mut list = Vec::with_capacity(3);
        let mut seen = std::collections::HashSet::new();
        // The first load on a thread registers it with arc-swap (one allocation per thread).
        drop(handle.load());
        let n = allocations(|| {
            for (i, key) in keys.iter().enumerate() {
                let t = handle.load();
                let by_int = t.owner(&(i as u64)).unwrap();
                let by_str = t.owner(key.as_str()).unwrap();
                let hash = t.hash(key.as_str());
                // Failover: skip the owner, take the next node of the key's list.
                let owner = t.owner_index(hash).unwrap();
                let next = t.next_index(hash, |j| j == owner).unwrap();
                assert_ne!(next, owner);
                t.preference_indices(hash, 3, &mut list);
                assert_eq!(list[0], owner);
                assert_eq!(t.nodes()[owner].id(), by_str.id());
                let _ = by_int;
            }
        });
        assert_eq!(n, 0, "{alg:?}");
        // The keys spread over the nodes (the lookups did real work).
        for key in &keys {
            seen.insert(handle.load().owner(key.as_str()).unwrap().id().to_owned());
        }
        assert!(seen.len() >= 15, "{alg:?}: {} nodes", seen.len());
    }
}
