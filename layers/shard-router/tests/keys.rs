//! Keys from core's key sources: closures over integers and strings and the HTTP built-ins
//! route exactly where the topology's lookups say; a request without a key is refused by
//! default or, when told to skip, spread over the nodes; the layer hands the chosen node to
//! one shared client.

use std::collections::HashMap;

use omega_core::key::MissingKey;
use omega_shard_router::{
    Algorithm, BoxError, KetamaFlavor, Node, ShardError, ShardErrorKind, ShardRouter, Topology,
    TopologyHandle,
};
use tower::{ServiceExt, service_fn};

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
fn echo<Req: Send + 'static>(
    node: &Node,
) -> tower::util::BoxCloneSyncService<Req, String, BoxError> {
    let id = node.id().to_owned();
    tower::util::BoxCloneSyncService::new(service_fn(move |_: Req| {
        let id = id.clone();
        async move { Ok::<_, BoxError>(id) }
    }))
}

#[tokio::test]
async fn closures_route_where_lookups_say() {
    for algorithm in [
        Algorithm::table(),
        Algorithm::ring(),
        Algorithm::Ketama(KetamaFlavor::LibmemcachedWeighted),
        Algorithm::Ketama(KetamaFlavor::Libmemcached),
    ] {
        let h = TopologyHandle::new(
            Topology::new(
                algorithm,
                (0..7).map(|i| Node::new(format!("n{i}"), format!("10.0.0.{i}:80"))),
            )
            .unwrap(),
        );
        let t = h.load();
        let by_int = ShardRouter::builder(h.clone())
            .key(|k: &u64| Some(*k))
            .build(echo::<u64>);
        let by_text = ShardRouter::builder(h.clone())
            .key(|k: &String| Some(k.clone()))
            .build(echo::<String>);
        let by_i32 = ShardRouter::builder(h)
            .key(|k: &i32| Some(*k))
            .build(echo::<i32>);
        for k in 0..300u64 {
            let got = by_int.clone().oneshot(k).await.unwrap();
            assert_eq!(got, t.owner(&k).unwrap().id(), "{algorithm:?} {k}");
            let text = format!("user-{k}");
            let got = by_text.clone().oneshot(text.clone()).await.unwrap();
            assert_eq!(got, t.owner(text.as_str()).unwrap().id());
            let small = k as i32 - 150;
            let got = by_i32.clone().oneshot(small).await.unwrap();
            assert_eq!(got, t.owner(&small).unwrap().id());
        }
    }
}

#[tokio::test]
async fn missing_keys_are_refused_by_default_and_spread_when_skipped() {
    let key = |k: &u64| (*k != 0).then_some(*k);
    let refused = ShardRouter::builder(handle(5)).key(key).build(echo::<u64>);
    let err = refused.oneshot(0).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<ShardError>().unwrap().kind(),
        ShardErrorKind::NoKey
    );
    let spread = ShardRouter::builder(handle(5))
        .key(key)
        .missing_key(MissingKey::Skip)
        .build(echo::<u64>);
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        *seen
            .entry(spread.clone().oneshot(0).await.unwrap())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.values().all(|&n| n >= 10), "{seen:?}");
    // Keyed requests still go to their owner.
    assert_eq!(
        spread.clone().oneshot(42).await.unwrap(),
        spread.owner(&42u64).unwrap().id()
    );
    let counters = spread.counters();
    assert_eq!(counters.iter().map(|c| c.requests).sum::<u64>(), 201);
    assert!(counters.iter().all(|c| c.failovers == 0));
}

#[cfg(feature = "http")]
#[tokio::test]
async fn http_sources_route_by_their_bytes() {
    use http::Request;
    use omega_core::key::http::{Header, Path, PathSegment, Query};

    let h = handle(6);
    let t = h.load();
    let header = ShardRouter::builder(h.clone())
        .key(Header::new("x-user-id"))
        .build(echo::<Request<()>>);
    let query = ShardRouter::builder(h.clone())
        .key(Query::new("tenant"))
        .build(echo::<Request<()>>);
    let segment = ShardRouter::builder(h.clone())
        .key(PathSegment(1))
        .build(echo::<Request<()>>);
    let path = ShardRouter::builder(h).key(Path).build(echo::<Request<()>>);
    for i in 0..100 {
        let (user, tenant, id) = (format!("u-{i}"), format!("t{i}"), i.to_string());
        let uri = format!("/users/{id}/orders?tenant={tenant}");
        let req = || {
            Request::get(uri.as_str())
                .header("x-user-id", user.as_str())
                .body(())
                .unwrap()
        };
        let owner = |k: &str| t.owner(k).unwrap().id().to_owned();
        assert_eq!(header.clone().oneshot(req()).await.unwrap(), owner(&user));
        assert_eq!(query.clone().oneshot(req()).await.unwrap(), owner(&tenant));
        assert_eq!(segment.clone().oneshot(req()).await.unwrap(), owner(&id));
        let whole = format!("/users/{id}/orders");
        assert_eq!(path.clone().oneshot(req()).await.unwrap(), owner(&whole));
    }
    // A request without the header is refused, and the refusal names what is missing.
    let err = header
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap_err();
    let err = err.downcast_ref::<ShardError>().unwrap();
    assert_eq!(err.kind(), ShardErrorKind::NoKey);
    assert!(
        err.to_string().contains("header x-user-id is missing"),
        "{err}"
    );
}

#[cfg(feature = "http")]
#[tokio::test]
async fn the_layer_hands_the_chosen_node_to_one_shared_client() {
    use http::Request;
    use omega_core::key::http::Header;
    let h = handle(3);
    let layer = ShardRouter::builder(h.clone())
        .key(Header::new("x-user-id"))
        .into_layer();
    let client = service_fn(|req: Request<()>| async move {
        let node = req
            .extensions()
            .get::<Node>()
            .expect("the router set the node");
        Ok::<_, BoxError>(node.address().to_owned())
    });
    let svc = tower::ServiceBuilder::new().layer(layer).service(client);
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let req = Request::get("/")
            .header("x-user-id", user)
            .body(())
            .unwrap();
        let got = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(got, h.load().owner(user).unwrap().address());
    }
    let err = svc
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<ShardError>().unwrap().kind(),
        ShardErrorKind::NoKey
    );
}

#[cfg(feature = "http")]
#[test]
fn http_sources_give_the_key_bytes_the_topology_hashes() {
    use http::Request;
    use omega_core::key::KeySource;
    use omega_core::key::http::{Header, PathSegment, Query};

    let t = handle(5).load();
    let req = Request::get("/users/42/orders?tenant=acme&x=1")
        .header("x-user-id", "u-7")
        .body(())
        .unwrap();
    let hash = |k: &dyn KeySource<Request<()>>, req: &Request<()>| {
        k.key(req).map(|k| t.hash_bytes(k.as_bytes()))
    };
    assert_eq!(hash(&Header::new("x-user-id"), &req), Some(t.hash("u-7")));
    assert_eq!(hash(&Header::new("x-other"), &req), None);
    assert_eq!(hash(&PathSegment(1), &req), Some(t.hash("42")));
    assert_eq!(hash(&PathSegment(0), &req), Some(t.hash("users")));
    assert_eq!(hash(&PathSegment(5), &req), None);
    assert_eq!(hash(&Query::new("tenant"), &req), Some(t.hash("acme")));
    assert_eq!(hash(&Query::new("missing"), &req), None);
    let bare = Request::get("/").body(()).unwrap();
    assert_eq!(hash(&Query::new("tenant"), &bare), None);
}
