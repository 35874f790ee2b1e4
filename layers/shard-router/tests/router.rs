//! The Tower service: routing, readiness of the chosen node only, failover, counters,
//! topology changes under concurrent traffic, Discover streams, bounded loads. (Keys, the
//! layer and refusals: `keys.rs`, `reject.rs`.)

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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

/// A node service answering with its node id.
fn echo(node: &Node) -> tower::util::BoxCloneSyncService<u64, String, BoxError> {
    let id = node.id().to_owned();
    tower::util::BoxCloneSyncService::new(service_fn(move |_: u64| {
        let id = id.clone();
        async move { Ok::<_, BoxError>(id) }
    }))
}

fn first(r: &(u64, u64)) -> Option<u64> {
    Some(r.0)
}

fn key(k: &u64) -> Option<u64> {
    Some(*k)
}

#[tokio::test]
async fn routes_each_key_to_its_owner_and_counts() {
    let router = ShardRouter::builder(handle(5)).key(key).build(echo);
    let t = router.topology();
    for k in 0..200u64 {
        let got = router.clone().oneshot(k).await.unwrap();
        assert_eq!(got, t.owner(&k).unwrap().id());
    }
    let counters = router.counters();
    assert_eq!(counters.len(), 5);
    assert_eq!(counters.iter().map(|c| c.requests).sum::<u64>(), 200);
    for c in &counters {
        let owned = (0..200u64)
            .filter(|k| t.owner(k).unwrap().id() == &*c.id)
            .count() as u64;
        assert_eq!(c.requests, owned, "{}", c.id);
        assert_eq!((c.failovers, c.errors, c.in_flight), (0, 0, 0));
    }
}

#[tokio::test]
async fn a_request_without_a_key_fails_with_no_key() {
    let router = ShardRouter::builder(handle(3))
        .key(|k: &u64| (*k != 0).then_some(*k))
        .build(echo);
    let err = router.oneshot(0).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ShardError>().unwrap().kind(),
        ShardErrorKind::NoKey
    );
}

#[tokio::test]
async fn an_empty_topology_fails_with_no_node() {
    let h = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let router = ShardRouter::builder(h.clone()).key(key).build(echo);
    let err = router.clone().oneshot(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ShardError>().unwrap().kind(),
        ShardErrorKind::NoNode
    );
    h.add(Node::new("late", "x")).unwrap();
    assert_eq!(router.oneshot(1).await.unwrap(), "late");
}

/// A service that is never ready.
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

/// A service whose readiness fails.
#[derive(Clone)]
struct Broken;

impl Service<u64> for Broken {
    type Response = String;
    type Error = BoxError;
    type Future = std::future::Ready<Result<String, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("connection refused".into()))
    }
    fn call(&mut self, _: u64) -> Self::Future {
        unreachable!("never ready")
    }
}

type Svc = tower::util::BoxCloneSyncService<u64, String, BoxError>;

#[tokio::test]
async fn an_unready_node_blocks_only_its_own_keys() {
    let h = handle(4);
    let router = ShardRouter::builder(h.clone())
        .key(key)
        .build(|n: &Node| -> Svc {
            if n.id() == "n0" {
                Svc::new(Stuck)
            } else {
                echo(n)
            }
        });
    let t = router.topology();
    let stuck_key = (0..).find(|k| t.owner(k).unwrap().id() == "n0").unwrap();
    // The request for n0 waits...
    let mut pending = tokio_test_spawn(router.clone().oneshot(stuck_key));
    assert!(pending.poll_once().is_pending());
    // ...while every other key is served.
    let mut served = 0;
    for k in 0..100u64 {
        if t.owner(&k).unwrap().id() != "n0" {
            assert_eq!(
                router.clone().oneshot(k).await.unwrap(),
                t.owner(&k).unwrap().id()
            );
            served += 1;
        }
    }
    assert!(served > 50);
    assert!(pending.poll_once().is_pending());
}

/// Polls a future by hand.
struct Spawned<F>(Pin<Box<F>>);

fn tokio_test_spawn<F: Future>(f: F) -> Spawned<F> {
    Spawned(Box::pin(f))
}

impl<F: Future> Spawned<F> {
    fn poll_once(&mut self) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        self.0.as_mut().poll(&mut Context::from_waker(waker))
    }
}

#[tokio::test]
async fn unavailable_nodes_are_skipped_along_the_preference_list() {
    let down: Arc<Mutex<HashSet<String>>> = Arc::default();
    let d = down.clone();
    let router = ShardRouter::builder(handle(6))
        .key(key)
        .failover(3)
        .is_available(move |n: &Node| !d.lock().unwrap().contains(n.id()))
        .build(echo);
    let k = 42u64;
    let prefs = router.preference_list(&k, 3);
    down.lock().unwrap().insert(prefs[0].id().to_owned());
    assert_eq!(router.clone().oneshot(k).await.unwrap(), prefs[1].id());
    down.lock().unwrap().insert(prefs[1].id().to_owned());
    assert_eq!(router.clone().oneshot(k).await.unwrap(), prefs[2].id());
    down.lock().unwrap().insert(prefs[2].id().to_owned());
    let err = router.clone().oneshot(k).await.unwrap_err();
    let err = err.downcast_ref::<ShardError>().unwrap();
    assert_eq!(err.kind(), ShardErrorKind::Unavailable);
    let tried: Vec<&str> = err.tried().iter().map(|s| &**s).collect();
    assert_eq!(tried, prefs.iter().map(|n| n.id()).collect::<Vec<_>>());
    let c = router.counters();
    let by = |id: &str| c.iter().find(|c| &*c.id == id).unwrap().clone();
    assert_eq!(by(prefs[1].id()).failovers, 1);
    assert_eq!(by(prefs[2].id()).failovers, 1);
    assert_eq!(by(prefs[0].id()).requests, 0);
}

#[tokio::test]
async fn without_failover_an_unavailable_owner_is_an_error() {
    let router = ShardRouter::builder(handle(3))
        .key(key)
        .is_available(|_: &Node| false)
        .build(echo);
    let err = router.oneshot(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ShardError>().unwrap().kind(),
        ShardErrorKind::Unavailable
    );
}

#[tokio::test]
async fn a_node_failing_readiness_is_skipped() {
    let h = handle(5);
    let t = h.load();
    let k = 7u64;
    let owner = t.owner(&k).unwrap().id().to_owned();
    let o = owner.clone();
    let router = ShardRouter::builder(h)
        .key(key)
        .failover(2)
        .build(move |n: &Node| -> Svc {
            if n.id() == o {
                Svc::new(Broken)
            } else {
                echo(n)
            }
        });
    let second = router.preference_list(&k, 2)[1].id().to_owned();
    assert_eq!(router.clone().oneshot(k).await.unwrap(), second);
    // With one node to try, the readiness error itself comes back.
    let one = ShardRouter::builder(handle(5))
        .key(key)
        .build(move |n: &Node| -> Svc {
            if n.id() == owner {
                Svc::new(Broken)
            } else {
                echo(n)
            }
        });
    let err = one.oneshot(k).await.unwrap_err();
    assert_eq!(err.to_string(), "connection refused");
}

#[derive(Debug)]
struct CircuitOpen;

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit open")
    }
}

impl std::error::Error for CircuitOpen {}

#[tokio::test]
async fn retryable_errors_go_to_the_next_node_and_others_do_not() {
    let h = handle(5);
    let k = 9u64;
    let t = h.load();
    let owner = t.owner(&k).unwrap().id().to_owned();
    let calls = Arc::new(AtomicU64::new(0));
    let make = {
        let (owner, calls) = (owner.clone(), calls.clone());
        move |fail_with_open: bool| {
            let (owner, calls) = (owner.clone(), calls.clone());
            move |n: &Node| -> Svc {
                let id = n.id().to_owned();
                let is_owner = id == owner;
                let calls = calls.clone();
                Svc::new(service_fn(move |_: u64| {
                    let id = id.clone();
                    calls.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if is_owner && fail_with_open {
                            Err::<String, BoxError>(Box::new(CircuitOpen))
                        } else if is_owner {
                            Err("bad request".into())
                        } else {
                            Ok(id)
                        }
                    }
                }))
            }
        }
    };
    let router = ShardRouter::builder(h.clone())
        .key(key)
        .failover(2)
        .retry_elsewhere(|e: &BoxError| e.is::<CircuitOpen>())
        .build(make(true));
    let second = router.preference_list(&k, 2)[1].id().to_owned();
    assert_eq!(router.clone().oneshot(k).await.unwrap(), second);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    let c = router.counters();
    let owner_c = c.iter().find(|c| *c.id == *owner).unwrap();
    assert_eq!((owner_c.requests, owner_c.errors), (1, 1));

    let other = ShardRouter::builder(h)
        .key(key)
        .failover(2)
        .retry_elsewhere(|e: &BoxError| e.is::<CircuitOpen>())
        .build(make(false));
    let err = other.oneshot(k).await.unwrap_err();
    assert_eq!(err.to_string(), "bad request");
}

/// Topology changes while many tasks send requests: every request is answered, and no
/// request issued after a removal was published reaches the removed node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_changes_under_concurrent_traffic_lose_nothing() {
    let h = handle(8);
    // (node id, epoch seen when the request was issued), logged by node services.
    let log: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let l = log.clone();
    let router = ShardRouter::builder(h.clone())
        .key(first as fn(&(u64, u64)) -> Option<u64>)
        .build(move |n: &Node| {
            let id = n.id().to_owned();
            let log = l.clone();
            let flip = Arc::new(AtomicBool::new(false));
            tower::util::BoxCloneSyncService::new(Yielding {
                flip,
                inner: service_fn(move |(_, epoch): (u64, u64)| {
                    log.lock().unwrap().push((id.clone(), epoch));
                    let id = id.clone();
                    async move { Ok::<_, BoxError>(id) }
                }),
            })
        });
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (router, h, stop, answered) =
            (router.clone(), h.clone(), stop.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut k = t * 1_000_003;
            while !stop.load(Ordering::Relaxed) {
                k = k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let epoch = h.epoch();
                send(&router, (k, epoch)).await.unwrap();
                sent += 1;
                answered.fetch_add(1, Ordering::Relaxed);
            }
            sent
        }));
    }
    // Removal epochs: a node removed at epoch e must not see requests issued at epoch >= e.
    let mut removed_at: Vec<(String, u64)> = Vec::new();
    for round in 0..20u64 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let t = h
            .add(Node::new(format!("x{round}"), "10.9.0.1:80"))
            .unwrap();
        let _ = t;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let victim = h.load().nodes()[(round as usize * 3) % h.load().len()]
            .id()
            .to_owned();
        let t = h.remove(&victim).unwrap();
        removed_at.push((victim, t.epoch()));
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    assert_eq!(answered.load(Ordering::Relaxed), sent);
    let log = log.lock().unwrap();
    assert_eq!(
        log.len() as u64,
        sent,
        "every request reached exactly one node"
    );
    for (id, e) in removed_at.iter() {
        // A node may be re-added later under the same id only if its name repeats; ours don't.
        let late = log.iter().filter(|(n, seen)| n == id && seen >= e).count();
        assert_eq!(
            late, 0,
            "{late} requests issued at or after epoch {e} reached removed node {id}"
        );
    }
    assert!(sent > 100, "traffic ran: {sent}");
}

/// The router's future boxed outside the async block: rustc's `Send` analysis of async blocks
/// cannot prove `BoxError: Into<BoxError>` for erased lifetimes (rust-lang/rust#64552).
fn send<R>(
    router: &R,
    req: (u64, u64),
) -> Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>
where
    R: Service<(u64, u64), Response = String, Error = BoxError> + Clone + Send + 'static,
    R::Future: Send,
{
    Box::pin(router.clone().oneshot(req))
}

/// Becomes ready only on every second poll, so requests often wait for readiness while the
/// topology changes.
#[derive(Clone)]
struct Yielding<S> {
    flip: Arc<AtomicBool>,
    inner: S,
}

impl<S: Service<(u64, u64)>> Service<(u64, u64)> for Yielding<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.flip.fetch_xor(true, Ordering::Relaxed) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: (u64, u64)) -> S::Future {
        self.inner.call(req)
    }
}

#[tokio::test]
async fn a_request_whose_node_leaves_while_waiting_is_rerouted_or_failed() {
    let gate = Arc::new(AtomicBool::new(false));
    for reroute in [true, false] {
        let h = handle(4);
        let k = 5u64;
        let owner = h.load().owner(&k).unwrap().id().to_owned();
        let g = gate.clone();
        g.store(false, Ordering::Relaxed);
        let router = ShardRouter::builder(h.clone())
            .key(key)
            .reroute_removed(reroute)
            .build(move |n: &Node| -> Svc {
                Svc::new(Gated {
                    open: g.clone(),
                    inner: echo(n),
                })
            });
        let mut fut = tokio_test_spawn(router.clone().oneshot(k));
        assert!(fut.poll_once().is_pending());
        h.remove(&owner).unwrap();
        gate.store(true, Ordering::Relaxed);
        let out = fut.0.await;
        if reroute {
            assert_eq!(out.unwrap(), h.load().owner(&k).unwrap().id());
        } else {
            let err = out.unwrap_err();
            let err = err.downcast_ref::<ShardError>().unwrap();
            assert_eq!(err.kind(), ShardErrorKind::NodeRemoved);
            assert_eq!(&*err.tried()[0], owner);
        }
        assert_eq!(
            router.counters().iter().map(|c| c.requests).sum::<u64>(),
            u64::from(reroute)
        );
    }
}

#[derive(Clone)]
struct Gated<S> {
    open: Arc<AtomicBool>,
    inner: S,
}

impl<S: Service<u64>> Service<u64> for Gated<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.open.load(Ordering::Relaxed) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: u64) -> S::Future {
        self.inner.call(req)
    }
}

#[tokio::test]
async fn discover_streams_add_and_remove_nodes_with_their_services() {
    use tower::discover::Change;
    let h = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let router = ShardRouter::builder(h.clone())
        .key(key)
        .build_without_services::<Svc>();
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<String, Svc>, Infallible>>();
    let stream = futures_stream(rx);
    let r = router.clone();
    let driver = tokio::spawn(async move { r.discover(stream).await });
    for id in ["a", "b", "c"] {
        tx.send(Ok(Change::Insert(id.to_owned(), echo(&Node::new(id, id)))))
            .unwrap();
    }
    wait_until(|| h.load().len() == 3).await;
    for k in 0..50u64 {
        assert_eq!(
            router.clone().oneshot(k).await.unwrap(),
            h.load().owner(&k).unwrap().id()
        );
    }
    tx.send(Ok(Change::Remove("b".to_owned()))).unwrap();
    wait_until(|| h.load().len() == 2).await;
    for k in 0..50u64 {
        assert_ne!(router.clone().oneshot(k).await.unwrap(), "b");
    }
    drop(tx);
    driver.await.unwrap().unwrap();
}

fn futures_stream<T>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures_core::Stream<Item = T> {
    struct S<T>(tokio::sync::mpsc::UnboundedReceiver<T>);
    impl<T> futures_core::Stream for S<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    let _ = &mut rx;
    S(rx)
}

async fn wait_until(f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test]
async fn bounded_loads_spill_a_hot_key_to_the_next_nodes() {
    let gate = Arc::new(AtomicBool::new(false));
    let g = gate.clone();
    let router = ShardRouter::builder(handle(4))
        .key(key)
        .bounded_load(1.25)
        .build(move |n: &Node| -> Svc {
            let id = n.id().to_owned();
            let g = g.clone();
            Svc::new(service_fn(move |_: u64| {
                let (id, g) = (id.clone(), g.clone());
                async move {
                    while !g.load(Ordering::Relaxed) {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, BoxError>(id)
                }
            }))
        });
    let hot = 77u64;
    let owner = router.owner(&hot).unwrap().id().to_owned();
    let mut futs = Vec::new();
    for _ in 0..20 {
        let mut f = tokio_test_spawn(router.clone().oneshot(hot));
        assert!(f.poll_once().is_pending());
        futs.push(f);
    }
    let c = router.counters();
    let max = c.iter().map(|c| c.in_flight).max().unwrap();
    // Cap: ceil(1.25 * (in flight + 1) / 4) = 7 with 20 in flight.
    assert!(max <= 7, "{c:?}");
    let at_owner = c.iter().find(|c| *c.id == *owner).unwrap().in_flight;
    assert!(at_owner >= 5, "the owner takes its share first: {c:?}");
    assert_eq!(c.iter().map(|c| c.in_flight).sum::<u64>(), 20);
    gate.store(true, Ordering::Relaxed);
    // Half complete, half are dropped mid-call: both release their in-flight counts.
    for (j, f) in futs.into_iter().enumerate() {
        if j % 2 == 0 {
            f.0.await.unwrap();
        } else {
            drop(f);
        }
    }
    assert!(router.counters().iter().all(|c| c.in_flight == 0));
    // With nothing in flight, the hot key goes to its owner again.
    assert_eq!(router.clone().oneshot(hot).await.unwrap(), owner);
    let c = router.counters();
    assert_eq!(c.iter().map(|c| c.requests).sum::<u64>(), 21);
}
