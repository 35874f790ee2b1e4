//! Routing a key allocates nothing: the owner by every algorithm, for integer and string
//! keys, the next node when some are skipped (failover), and the preference list into a
//! reused buffer; and a request through the router (default `KeepError` strategy, a header
//! key) to a node service that does not allocate itself. Counted by a global allocator that
//! counts this thread's allocations.

use omega_shard_router::{Algorithm, KetamaFlavor, Node, Topology, TopologyHandle};
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
        Algorithm::Ketama(KetamaFlavor::Libketama),
        Algorithm::Ketama(KetamaFlavor::Libmemcached),
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

#[cfg(feature = "http")]
#[test]
fn routing_a_request_allocates_nothing() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use http::Request;
    use omega_core::key::http::Header;
    use omega_shard_router::ShardRouter;
    use tower::{Service, service_fn};

    let handle = TopologyHandle::new(Topology::new(Algorithm::table(), nodes(20)).unwrap());
    let mut router = ShardRouter::builder(handle.clone())
        .key(Header::new("x-user-id"))
        .build(|node: &Node| {
            let index = node.weight() as usize;
            service_fn(move |req: Request<()>| {
                std::future::ready(Ok::<_, std::convert::Infallible>((index, req)))
            })
        });
    let requests: Vec<Request<()>> = (0..1_000)
        .map(|i| {
            Request::get("/")
                .header("x-user-id", format!("user-{i}"))
                .body(())
                .unwrap()
        })
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut send = |router: &mut ShardRouter<_, Header>, req: Request<()>| {
        let mut fut = std::pin::pin!(router.call(req));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(out)) => out,
            other => panic!(
                "a ready node answers at once: {:?}",
                other.map(|r| r.is_ok())
            ),
        }
    };
    // Warm up: the first call builds the routes and registers the thread with arc-swap.
    let warm = Request::get("/")
        .header("x-user-id", "warm")
        .body(())
        .unwrap();
    drop(send(&mut router, warm));
    let mut answered = Vec::with_capacity(requests.len());
    let n = allocations(|| {
        for req in requests {
            answered.push(send(&mut router, req));
        }
    });
    assert_eq!(n, 0);
    assert_eq!(answered.len(), 1_000);
    let served: u64 = router.counters().iter().map(|c| c.requests).sum();
    assert_eq!(served, 1_001);
}

/// A healthy request allocates nothing when an availability check (and bounded loads) are set:
/// the owner is checked first, and the key's preference list is only built when the owner
/// cannot take the request.
#[test]
fn a_healthy_request_with_availability_and_bounded_loads_allocates_nothing() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use omega_shard_router::ShardRouter;
    use tower::{Service, service_fn};

    for bounded in [false, true] {
        let handle = TopologyHandle::new(Topology::new(Algorithm::table(), nodes(20)).unwrap());
        let builder = ShardRouter::builder(handle.clone())
            .key(|k: &u64| Some(*k))
            .failover(3)
            .is_available(|n: &Node| !n.id().is_empty());
        let builder = if bounded {
            builder.bounded_load(1.25)
        } else {
            builder
        };
        let mut router = builder.build(|node: &Node| {
            let w = node.weight();
            service_fn(move |k: u64| std::future::ready(Ok::<_, std::convert::Infallible>((w, k))))
        });
        let mut cx = Context::from_waker(Waker::noop());
        let mut send = |router: &mut ShardRouter<_, _>, k: u64| {
            let mut fut = std::pin::pin!(router.call(k));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(out)) => out,
                _ => panic!("a ready node answers at once"),
            }
        };
        let _ = send(&mut router, 0);
        let mut answered = Vec::with_capacity(1_000);
        let n = allocations(|| {
            for k in 1..=1_000u64 {
                answered.push(send(&mut router, k));
            }
        });
        println!("bounded={bounded}: {n} allocations for 1,000 healthy requests");
        assert_eq!(n, 0, "bounded={bounded}");
        let c = router.counters();
        assert_eq!(c.iter().map(|c| c.requests).sum::<u64>(), 1_001);
        assert_eq!(c.iter().map(|c| c.failovers).sum::<u64>(), 0);
    }
}
