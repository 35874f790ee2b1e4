//! Routing on a cluster adds no allocation to an operation: a `GET` or a script call through
//! the cluster backend allocates no more than through a standalone one (redis-rs's own
//! allocations, the same in both, are what is left).
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::keys_on;
use omega_core::redis::{RedisBackend, RedisConfig, Script};
use omega_testkit::alloc::{CountingAlloc, allocations};
use omega_testkit::{RedisCluster, RedisServer};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const OPS: u64 = 200;

/// Allocations per operation, on this thread (the runtime is current-thread, so the
/// connection's own task is counted too).
fn per_op(rt: &tokio::runtime::Runtime, backend: &RedisBackend, key: &str) -> (f64, f64) {
    let get = redis::cmd("GET").arg(key).to_owned();
    let script = Script::new("get", "return redis.call('GET', KEYS[1])");
    let call = script.call().key(key);
    let run_get = || {
        rt.block_on(async {
            for _ in 0..OPS {
                backend.query::<Option<String>>(&get).await.unwrap();
            }
        })
    };
    let run_eval = || {
        rt.block_on(async {
            for _ in 0..OPS {
                backend.eval::<Option<String>>(&call).await.unwrap();
            }
        })
    };
    // Warm up: connections, script cache, buffers.
    run_get();
    run_eval();
    let gets = allocations(run_get) as f64 / OPS as f64;
    let evals = allocations(run_eval) as f64 / OPS as f64;
    (gets, evals)
}

#[test]
fn a_cluster_operation_allocates_no_more_than_a_standalone_one() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let cluster = RedisCluster::start();
    let key = keys_on(&cluster, 1, 1).remove(0);
    let tune = |cfg: RedisConfig| cfg.op_timeout(Duration::from_secs(2));
    let single = rt
        .block_on(RedisBackend::connect(tune(RedisConfig::url(server.url()))))
        .unwrap();
    let clustered = rt
        .block_on(RedisBackend::connect(tune(RedisConfig::cluster(
            cluster.urls(),
        ))))
        .unwrap();
    let (single_get, single_eval) = per_op(&rt, &single, &key);
    let (cluster_get, cluster_eval) = per_op(&rt, &clustered, &key);
    println!(
        "allocations per operation: GET {single_get:.2} standalone, {cluster_get:.2} cluster; \
         script {single_eval:.2} standalone, {cluster_eval:.2} cluster"
    );
    assert!(
        cluster_get <= single_get + 0.5,
        "{cluster_get} > {single_get}"
    );
    assert!(
        cluster_eval <= single_eval + 0.5,
        "{cluster_eval} > {single_eval}"
    );
}
