//! Refusals through core's rejection strategy: kept as boxed errors by default, answered as
//! responses with `respond()` (node services' errors passing through unchanged), or by a
//! closure; the retry policy sees the node service's own error type.

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};

use omega_shard_router::{
    Algorithm, BoxError, Node, Refusal, ShardError, ShardErrorKind, ShardRouter, Topology,
    TopologyHandle,
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

/// A node service's own error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeError {
    Open,
    Bad,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for NodeError {}

#[tokio::test]
async fn by_default_refusals_and_node_errors_are_boxed() {
    let router = ShardRouter::builder(handle(3))
        .key(|k: &u64| (*k != 0).then_some(*k))
        .build(|_: &Node| service_fn(|_: u64| async { Err::<u64, _>(NodeError::Bad) }));
    let err: BoxError = router.clone().oneshot(0).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ShardError>().unwrap().kind(),
        ShardErrorKind::NoKey
    );
    let err = router.oneshot(5).await.unwrap_err();
    assert_eq!(*err.downcast_ref::<NodeError>().unwrap(), NodeError::Bad);
}

#[tokio::test]
async fn the_retry_policy_sees_the_node_services_own_error() {
    let h = handle(5);
    let k = 11u64;
    let owner = h.load().owner(&k).unwrap().id().to_owned();
    let make = |fail: NodeError| {
        let owner = owner.clone();
        move |n: &Node| {
            let (id, is_owner) = (n.id().to_owned(), n.id() == owner);
            service_fn(move |_: u64| {
                let id = id.clone();
                async move { if is_owner { Err(fail) } else { Ok(id) } }
            })
        }
    };
    let router = ShardRouter::builder(h.clone())
        .key(|k: &u64| Some(*k))
        .failover(2)
        .retry_elsewhere(|e: &NodeError| *e == NodeError::Open)
        .build(make(NodeError::Open));
    let second = router.preference_list(&k, 2)[1].id().to_owned();
    assert_eq!(router.oneshot(k).await.unwrap(), second);
    let other = ShardRouter::builder(h)
        .key(|k: &u64| Some(*k))
        .failover(2)
        .retry_elsewhere(|e: &NodeError| *e == NodeError::Open)
        .build(make(NodeError::Bad));
    let err = other.oneshot(k).await.unwrap_err();
    assert_eq!(*err.downcast_ref::<NodeError>().unwrap(), NodeError::Bad);
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

#[tokio::test]
async fn when_every_node_fails_readiness_the_last_error_is_the_source() {
    let router = ShardRouter::builder(handle(3))
        .key(|k: &u64| Some(*k))
        .failover(3)
        .build(|_: &Node| Broken);
    let err = router.oneshot(1).await.unwrap_err();
    let err = err.downcast_ref::<ShardError>().unwrap();
    assert_eq!(err.kind(), ShardErrorKind::Unavailable);
    assert_eq!(err.tried().len(), 3);
    let source = std::error::Error::source(err).unwrap();
    assert_eq!(source.to_string(), "connection refused");
}

#[tokio::test]
async fn a_closure_answers_refusals_and_passes_node_errors_through() {
    let answer = |req: &u64, refusal: &dyn Refusal| format!("refused {req}: {}", refusal.status());
    let router = ShardRouter::builder(handle(3))
        .key(|k: &u64| (*k != 0).then_some(*k))
        .on_rejection(answer)
        .build(|n: &Node| {
            let id = n.id().to_owned();
            service_fn(move |k: u64| {
                let id = id.clone();
                async move { if k == 13 { Err(NodeError::Bad) } else { Ok(id) } }
            })
        });
    assert_eq!(router.clone().oneshot(0).await.unwrap(), "refused 0: 400");
    // The node service's error type is the router's.
    let err: NodeError = router.clone().oneshot(13).await.unwrap_err();
    assert_eq!(err, NodeError::Bad);
    let empty = TopologyHandle::new(Topology::empty(Algorithm::table()).unwrap());
    let router = ShardRouter::builder(empty)
        .key(|k: &u64| Some(*k))
        .on_rejection(answer)
        .build(|_: &Node| service_fn(|_: u64| async { Ok::<_, Infallible>(String::new()) }));
    assert_eq!(router.oneshot(4).await.unwrap(), "refused 4: 503");
}

/// Awaiting `call` in a spawned task: the future's type names the router's error directly, so
/// the task is `Send` with node services failing with `BoxError` (rust-lang/rust#64552).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_future_is_awaited_in_spawned_tasks() {
    let mut router = ShardRouter::builder(handle(3))
        .key(|k: &u64| Some(*k))
        .build(|n: &Node| {
            let id = n.id().to_owned();
            tower::util::BoxCloneSyncService::new(service_fn(move |_: u64| {
                let id = id.clone();
                async move { Ok::<_, BoxError>(id) }
            }))
        });
    let owner = router.owner(&9u64).unwrap().id().to_owned();
    let fut = router.call(9);
    let got = tokio::spawn(async move {
        let got = fut.await;
        tokio::task::yield_now().await;
        got.map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert_eq!(got.unwrap(), owner);
}

#[cfg(feature = "http")]
mod http_responses {
    use super::*;
    use http::{Request, Response, StatusCode};
    use omega_core::key::http::Header;

    fn reply(
        n: &Node,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + use<> {
        let id = n.id().to_owned();
        service_fn(move |_: Request<()>| {
            let id = id.clone();
            async move { Ok::<_, Infallible>(Response::new(id)) }
        })
    }

    fn get(user: Option<&str>) -> Request<()> {
        let mut req = Request::get("/profile");
        if let Some(user) = user {
            req = req.header("x-user-id", user);
        }
        req.body(()).unwrap()
    }

    #[tokio::test]
    async fn respond_answers_refusals_and_infallible_nodes_make_an_infallible_router() {
        let h = handle(3);
        let router = ShardRouter::builder(h.clone())
            .key(Header::new("x-user-id"))
            .respond()
            .build(reply);
        // The router's error type is the node services' one.
        let answer: Result<Response<String>, Infallible> =
            router.clone().oneshot(get(Some("u1"))).await;
        let answer = answer.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.into_body(), h.load().owner("u1").unwrap().id());

        let no_key = router.clone().oneshot(get(None)).await.unwrap();
        assert_eq!(no_key.status(), StatusCode::BAD_REQUEST);
        let grpc = Request::post("/pkg.Svc/Get")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let grpc = router.clone().oneshot(grpc).await.unwrap();
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "3");

        let down = ShardRouter::builder(h)
            .key(Header::new("x-user-id"))
            .is_available(|_: &Node| false)
            .respond()
            .build(reply);
        let unavailable = down.oneshot(get(Some("u1"))).await.unwrap();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn respond_passes_node_errors_through_unchanged() {
        let router = ShardRouter::builder(handle(2))
            .key(Header::new("x-user-id"))
            .respond()
            .build(|_: &Node| {
                service_fn(|_: Request<()>| async { Err::<Response<String>, _>(NodeError::Open) })
            });
        let err: NodeError = router.oneshot(get(Some("u"))).await.unwrap_err();
        assert_eq!(err, NodeError::Open);
    }

    #[tokio::test]
    async fn the_layer_responds_too() {
        let h = handle(3);
        let layer = ShardRouter::builder(h.clone())
            .key(Header::new("x-user-id"))
            .into_layer()
            .respond();
        let client = service_fn(|req: Request<()>| async move {
            let node = req
                .extensions()
                .get::<Node>()
                .expect("the router set the node");
            Ok::<_, Infallible>(Response::new(node.address().to_owned()))
        });
        let svc = tower::ServiceBuilder::new().layer(layer).service(client);
        let ok = svc.clone().oneshot(get(Some("u7"))).await.unwrap();
        assert_eq!(ok.into_body(), h.load().owner("u7").unwrap().address());
        let refused = svc.oneshot(get(None)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
}
