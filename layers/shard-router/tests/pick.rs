//! Choosing a node under load and trouble: bounded loads count a request from the moment it is
//! routed (not only once it is sent), a node that never becomes ready is left after the
//! readiness timeout, and a slow node-service factory holds up only the requests routed to the
//! new node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use omega_shard_router::{
    Algorithm, BoxError, Node, ShardError, ShardErrorKind, ShardRouter, Topology, TopologyHandle,
};
use tower::{Service, ServiceExt, service_fn};

fn handle(n: usize) -> TopologyHandle {
    TopologyHandle::new(
        Topology::new(
            Algorithm::table(),
            (0..n).map(|i| Node::new(format!("n{i}"), format!("10.0.0.{i}:80"))),
        )
        .unwrap(),
    )
}

fn key(k: &u64) -> Option<u64> {
    Some(*k)
}

type Svc = tower::util::BoxCloneSyncService<u64, String, BoxError>;

/// A node service answering with its node id once `gate` opens.
fn gated(gate: Arc<AtomicBool>) -> impl Fn(&Node) -> Svc + Send + Sync + 'static {
    move |n: &Node| -> Svc {
        let (id, g) = (n.id().to_owned(), gate.clone());
        Svc::new(service_fn(move |_: u64| {
            let (id, g) = (id.clone(), g.clone());
            async move {
                while !g.load(Ordering::Relaxed) {
                    tokio::task::yield_now().await;
                }
                Ok::<_, BoxError>(id)
            }
        }))
    }
}

fn poll_once<F: Future>(f: &mut Pin<Box<F>>) -> Poll<F::Output> {
    f.as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
}

/// 20 requests for one hot key are routed (`call`) before any of them is polled, as a server
/// does when a burst arrives: with `c = 1.25` over 4 nodes no node may hold more than
/// `ceil(1.25 × 20 / 4) = 7` of them. Counting load only when a request is sent let all 20
/// go to the owner.
#[tokio::test]
async fn bounded_loads_count_requests_from_the_moment_they_are_routed() {
    let gate = Arc::new(AtomicBool::new(false));
    let router = ShardRouter::builder(handle(4))
        .key(key)
        .bounded_load(1.25)
        .build(gated(gate.clone()));
    let hot = 77u64;
    let owner = router.owner(&hot).unwrap().id().to_owned();
    let mut futs: Vec<_> = (0..20)
        .map(|_| Box::pin(router.clone().call(hot)))
        .collect();
    for f in &mut futs {
        assert!(poll_once(f).is_pending());
    }
    let c = router.counters();
    let loads: Vec<(String, u64)> = c.iter().map(|c| (c.id.to_string(), c.in_flight)).collect();
    println!("in flight per node after 20 routed calls for one key: {loads:?} (owner {owner})");
    let max = c.iter().map(|c| c.in_flight).max().unwrap();
    assert!(max <= 7, "a node holds {max} of 20 (cap 7): {loads:?}");
    assert_eq!(c.iter().map(|c| c.in_flight).sum::<u64>(), 20);
    let at_owner = c.iter().find(|c| *c.id == *owner).unwrap().in_flight;
    assert!(at_owner >= 5, "the owner takes its share first: {loads:?}");
    gate.store(true, Ordering::Relaxed);
    for f in futs {
        f.await.unwrap();
    }
    assert!(router.counters().iter().all(|c| c.in_flight == 0));
}

/// A request routed but never sent (its future dropped before it was polled, or while its node
/// was becoming ready) gives its reservation back.
#[tokio::test]
async fn a_request_dropped_before_it_is_sent_releases_its_load() {
    let gate = Arc::new(AtomicBool::new(false));
    let router = ShardRouter::builder(handle(4))
        .key(key)
        .bounded_load(1.25)
        .build(gated(gate.clone()));
    let futs: Vec<_> = (0..12).map(|_| Box::pin(router.clone().call(77))).collect();
    drop(futs);
    let c = router.counters();
    assert!(c.iter().all(|c| c.in_flight == 0), "{c:?}");
    assert_eq!(
        c.iter().map(|c| c.requests).sum::<u64>(),
        0,
        "none was sent"
    );
    // With nothing in flight the hot key goes to its owner again.
    gate.store(true, Ordering::Relaxed);
    let owner = router.owner(&77u64).unwrap().id().to_owned();
    assert_eq!(router.clone().oneshot(77).await.unwrap(), owner);
}

/// A service that is never ready (and never wakes its task).
#[derive(Clone)]
struct Stuck;

impl Service<u64> for Stuck {
    type Response = String;
    type Error = BoxError;
    type Future = std::future::Ready<Result<String, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }
    fn call(&mut self, _: u64) -> Self::Future {
        unreachable!("never ready")
    }
}

fn stuck_owner(n: &Node) -> Svc {
    if n.id() == "n0" {
        Svc::new(Stuck)
    } else {
        let id = n.id().to_owned();
        Svc::new(service_fn(move |_: u64| {
            let id = id.clone();
            async move { Ok::<_, BoxError>(id) }
        }))
    }
}

/// A node whose service never becomes ready is left after the readiness timeout (default,
/// documented: 4 s, libmemcached's connect timeout) for the next node of the key's preference
/// list. Runs on tokio's paused clock, so the wait is virtual; without a timeout the request
/// would still be waiting when the 60 s guard fires.
#[tokio::test(start_paused = true)]
async fn a_node_that_never_becomes_ready_is_left_after_the_default_readiness_timeout() {
    let router = ShardRouter::builder(handle(4))
        .key(key)
        .failover(2)
        .build(stuck_owner);
    let t = router.topology();
    let k = (0..).find(|k| t.owner(k).unwrap().id() == "n0").unwrap();
    let second = router.preference_list(&k, 2)[1].id().to_owned();
    let started = tokio::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), router.clone().oneshot(k)).await;
    let waited = started.elapsed();
    println!("request for a never-ready owner answered after {waited:?} (virtual)");
    let out = out.expect("still waiting for the stuck node after 60 s");
    assert_eq!(out.unwrap(), second);
    assert!(waited >= Duration::from_secs(4), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let c = router.counters();
    let by = |id: &str| c.iter().find(|c| &*c.id == id).unwrap().clone();
    assert_eq!((by("n0").requests, by("n0").in_flight), (0, 0));
    assert_eq!(by(&second).failovers, 1);
}

/// The readiness timeout is the router's setting: a shorter one fails over sooner, and `None`
/// waits for the node as long as it takes.
#[tokio::test(start_paused = true)]
async fn the_readiness_timeout_is_configurable() {
    let short = ShardRouter::builder(handle(4))
        .key(key)
        .failover(2)
        .readiness_timeout(Some(Duration::from_millis(50)))
        .build(stuck_owner);
    let t = short.topology();
    let k = (0..).find(|k| t.owner(k).unwrap().id() == "n0").unwrap();
    let started = tokio::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), short.clone().oneshot(k)).await;
    let waited = started.elapsed();
    println!("with a 50 ms readiness timeout: answered after {waited:?} (virtual)");
    assert_ne!(out.expect("answered").unwrap(), "n0");
    assert_eq!(waited, Duration::from_millis(50));

    let patient = ShardRouter::builder(handle(4))
        .key(key)
        .failover(2)
        .readiness_timeout(None)
        .build(stuck_owner);
    let out = tokio::time::timeout(Duration::from_secs(60), patient.oneshot(k)).await;
    assert!(
        out.is_err(),
        "without a timeout the request waits for its node"
    );
}

/// A slow `make` (2 s for the new node's service) holds up only the requests routed to the new
/// node: requests for the other nodes, sent from another thread while `make` runs, are answered
/// at once. Building services under the router's lock on the request path made every request
/// wait for it (about 2 s).
#[test]
fn a_slow_service_factory_holds_up_only_the_new_nodes_requests() {
    let h = handle(3);
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let router = ShardRouter::builder(h.clone())
        .key(key)
        .build(move |n: &Node| {
            if n.id() == "slow" {
                s.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(2));
            }
            let id = n.id().to_owned();
            service_fn(move |_: u64| std::future::ready(Ok::<_, BoxError>(id.clone())))
        });
    // Every node's service is made before the change.
    for k in 0..30u64 {
        let _ = send(&router, k);
    }
    h.add(Node::new("slow", "10.0.0.9:80")).unwrap();
    let t = h.load();
    let to_slow = (0..).find(|k| t.owner(k).unwrap().id() == "slow").unwrap();
    let others: Vec<u64> = (0..200)
        .filter(|k| t.owner(k).unwrap().id() != "slow")
        .collect();
    let r = router.clone();
    let slow_request = std::thread::spawn(move || {
        let at = Instant::now();
        let answer = send(&r, to_slow);
        (answer, at.elapsed())
    });
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let mut worst = Duration::ZERO;
    for &k in &others {
        let at = Instant::now();
        assert_eq!(send(&router, k), t.owner(&k).unwrap().id());
        worst = worst.max(at.elapsed());
    }
    let (answer, slow) = slow_request.join().unwrap();
    println!(
        "while make(slow) ran: worst of {} requests to other nodes {worst:?}; the request to the \
         new node {slow:?}",
        others.len()
    );
    assert_eq!(answer, "slow");
    assert!(
        worst < Duration::from_secs(1),
        "requests to other nodes waited {worst:?} for make(slow)"
    );
}

/// Sends one request through the router and polls it to completion on this thread (the node
/// services answer at once).
fn send<R>(router: &R, k: u64) -> String
where
    R: Service<u64, Response = String, Error = BoxError> + Clone,
{
    let mut r = router.clone();
    let mut fut = Box::pin(r.call(k));
    match poll_once(&mut fut) {
        Poll::Ready(out) => out.unwrap(),
        Poll::Pending => panic!("node services answer at once"),
    }
}

/// With no node left to try, the readiness timeout refuses the request as unavailable.
#[tokio::test(start_paused = true)]
async fn without_failover_a_never_ready_owner_is_refused_after_the_timeout() {
    let router = ShardRouter::builder(handle(4)).key(key).build(stuck_owner);
    let t = router.topology();
    let k = (0..).find(|k| t.owner(k).unwrap().id() == "n0").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), router.oneshot(k))
        .await
        .expect("still waiting for the stuck node after 60 s");
    let err = out.unwrap_err();
    let err = err.downcast_ref::<ShardError>().unwrap();
    assert_eq!(err.kind(), ShardErrorKind::Unavailable);
    assert_eq!(&*err.tried()[0], "n0");
}
