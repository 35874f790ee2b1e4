//! An L1 hit through the Tower layer allocates nothing: the key is borrowed or inline, the
//! front table is read without a reference count (and one hit in 8 through moka's synchronous
//! lookup clones an `Arc`), the answer clones `Bytes`, the future is ready at once.
//! Counted by a global allocator that counts this thread's allocations.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use omega_cache::{Cache, CacheLayer, RawBytes, Resolver};
use omega_testkit::alloc::{CountingAlloc, allocations};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn an_l1_hit_through_the_layer_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = Cache::<Bytes>::builder().codec(RawBytes).build().unwrap();
    let inner = tower::service_fn(|id: u64| async move {
        Ok::<_, std::io::Error>(Bytes::from(format!("row {id}")))
    });
    let mut svc = CacheLayer::new(cache.clone(), Resolver::new(|id: &u64| Some(*id))).layer(inner);
    rt.block_on(async {
        for id in 0..64 {
            svc.ready().await.unwrap().call(id).await.unwrap();
        }
    });
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = |id: u64| {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = std::pin::pin!(svc.call(id));
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => unreachable!("a hit is ready at once"),
        }
    };
    for i in 0..10_000 {
        call(i % 64);
    }
    let n = allocations(|| {
        for i in 0..100_000u64 {
            let answer = call(i % 64);
            assert!(answer.starts_with(b"row "));
        }
    });
    eprintln!("100,000 L1 hits through the layer: {n} allocations");
    assert_eq!(n, 0);
    assert_eq!(cache.stats().hits, 110_000);
}
