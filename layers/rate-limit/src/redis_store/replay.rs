//! A script call sent twice (as redis-rs's cluster client re-sends a request whose
//! connection dropped) runs once: the second run answers the first run's reply.

use std::time::Duration;

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_testkit::RedisServer;

use omega_core::redis::{RedisBackend, Script, ScriptCall};

use super::{Item, RedisStore, multi_call};
use crate::quota::{Gcra, Quota};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_call_sent_twice_takes_once_and_answers_alike() {
    let server = RedisServer::start();
    let backend = Backend::redis(RedisConfig::url(server.url()).op_timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    let redis = backend.as_redis().unwrap().clone();
    let store = RedisStore::new(redis.clone());
    let item = Item {
        key: b"omega:{rl:twice}".to_vec(),
        gcra: Quota::per_minute(10).gcra(),
        cost: 3,
        shadow: false,
    };
    for refund in [false, true] {
        let call = multi_call(&store.script, &store.ids, &[&item], refund, 0, &redis);
        let first: Vec<i64> = redis.eval(&call).await.unwrap();
        let second: Vec<i64> = redis.eval(&call).await.unwrap();
        assert_eq!(
            first, second,
            "refund {refund}: the second run answers the first's reply"
        );
        if !refund {
            assert_eq!(first[..3], [1, 1, 7], "3 of 10 cells taken, once");
        }
    }
    // Taken once (3 cells), given back once: a fresh take of 10 is admitted.
    let full = Item { cost: 10, ..item };
    let (admitted, _) = store.run_refs(&[&full], false, None).await.unwrap();
    assert!(admitted, "the refund gave back exactly what the take took");
}

/// A batched call sent twice takes once; the second run fails (a mark is kept, not the
/// large reply), so its decisions would fall back to their failure policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_call_sent_twice_takes_once() {
    let server = RedisServer::start();
    let backend = Backend::redis(RedisConfig::url(server.url()).op_timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    let redis = backend.as_redis().unwrap().clone();
    let g = Quota::per_minute(10).gcra();
    let call = scripts_call_for_tests(&redis, &g, 4);
    let first: Vec<i64> = redis.eval(&call).await.unwrap();
    assert_eq!(first[..3], [1, 1, 6], "4 of 10 cells taken");
    let second = redis.eval::<Vec<i64>>(&call).await.unwrap_err();
    assert!(second.to_string().contains("ran already"), "{second}");
    // Taken once: 6 cells are left.
    let store = RedisStore::new(redis);
    let six = Item {
        key: b"omega:{rl:batched}".to_vec(),
        gcra: g,
        cost: 6,
        shadow: false,
    };
    let (_, steps) = store.take(vec![six], None).await;
    assert!(matches!(
        steps.unwrap()[0],
        super::RemoteStep::Allow { remaining: 0, .. }
    ));
}

/// A `GCRA_BATCH` call of one decision of `cost` on `omega:{rl:batched}`, with a fixed id.
fn scripts_call_for_tests(backend: &RedisBackend, g: &Gcra, cost: u32) -> ScriptCall {
    let mut blob = Vec::new();
    blob.extend_from_slice(&1u16.to_le_bytes());
    blob.extend_from_slice(&cost.to_le_bytes());
    blob.extend_from_slice(&1u16.to_le_bytes());
    blob.extend_from_slice(&1u16.to_le_bytes());
    Script::new("rate_limit_batch", super::scripts::GCRA_BATCH)
        .call()
        .arg(0)
        .arg(super::id_lifetime(backend.op_timeout()))
        .arg(1)
        .arg(g.interval)
        .arg(g.capacity)
        .arg("0")
        .arg(&blob[..])
        .key(&b"omega:{rl:batched}"[..])
        .key(&b"omega:{rl:batched}:d:fixed-id"[..])
}
