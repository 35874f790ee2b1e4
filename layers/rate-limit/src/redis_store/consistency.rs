//! Redis decides as memory does: random quotas, bursts, costs and time steps run through the
//! real scripts (batched, per slot as on a cluster, and leases) and through the in-memory
//! GCRA, at the same times (passed to the scripts, microseconds since the epoch as `TIME`
//! gives them); every decision must be identical, figures included.

use std::sync::atomic::Ordering;
use std::time::Duration;

use omega_core::Backend;
use omega_core::redis::RedisConfig;
use omega_testkit::RedisServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::{Item, LeaseGrant, RedisStore, RemoteStep};
use crate::quota::{Gcra, Quota, Step};

/// One limit of a case: count per period (ms), burst.
#[derive(Clone, Debug)]
struct L {
    count: u32,
    period_ms: u64,
    burst: u32,
}

fn limits() -> impl Strategy<Value = Vec<L>> {
    prop::collection::vec(
        (1u32..=1_000, 1u64..=20_000, 1u32..=40).prop_map(|(count, period_ms, burst)| L {
            count,
            period_ms,
            burst,
        }),
        1..=3,
    )
}

/// Time steps (µs) and costs.
fn steps() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..1_000, 0u64..2_000_000, 0u64..30_000_000],
            prop_oneof![Just(1u32), 0u32..=45],
        ),
        1..=40,
    )
}

fn gcra(l: &L) -> Option<Gcra> {
    Some(
        Quota::new(l.count, Duration::from_millis(l.period_ms))
            .ok()?
            .try_with_burst(l.burst)
            .ok()?
            .gcra(),
    )
}

/// The in-memory decision for `cost` at `now` over every limit: all admit or none.
fn memory(g: &[Gcra], tats: &mut [u64], now: u64, cost: u32) -> Result<u32, u64> {
    let mut steps = Vec::new();
    for (g, &tat) in g.iter().zip(tats.iter()) {
        steps.push(g.step(tat, now, cost));
    }
    let mut remaining = u32::MAX;
    let mut retry = None::<u64>;
    for (i, s) in steps.iter().enumerate() {
        match *s {
            Step::Allow { tat } => remaining = remaining.min(g[i].remaining(tat, now)),
            Step::Deny { retry_after, .. } => retry = Some(retry.unwrap_or(0).max(retry_after)),
        }
    }
    if let Some(r) = retry {
        return Err(r);
    }
    for (i, s) in steps.iter().enumerate() {
        if let Step::Allow { tat } = *s {
            tats[i] = tat;
        }
    }
    Ok(remaining)
}

fn verdict(steps: &[RemoteStep]) -> Result<u32, u64> {
    let mut remaining = u32::MAX;
    let mut retry = None::<u64>;
    for s in steps {
        match *s {
            RemoteStep::Allow { remaining: r, .. } => remaining = remaining.min(r),
            RemoteStep::Deny { retry_ns, .. } => retry = Some(retry.unwrap_or(0).max(retry_ns)),
        }
    }
    retry.map_or(Ok(remaining), Err)
}

#[test]
fn redis_scripts_decide_as_the_in_memory_gcra_does() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        let b = Backend::redis(RedisConfig::url(server.url()).op_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        RedisStore::new(b.as_redis().unwrap().clone())
    });
    let mut runner = TestRunner::new(Config {
        cases: 192,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU64::new(0);
    let start = 1_700_000_000_000_000u64..1_900_000_000_000_000;
    let result = runner.run(&(limits(), steps(), start), |(limits, steps, start_us)| {
        let case = case.fetch_add(1, Ordering::Relaxed);
        let Some(g) = limits.iter().map(gcra).collect::<Option<Vec<_>>>() else {
            return Ok(());
        };
        let keys: Vec<Vec<u8>> = (0..g.len())
            .map(|i| format!("c{case}:{i}").into_bytes())
            .collect();
        let mut now_us = start_us;
        let (mut batched, mut per_slot) = (vec![0u64; g.len()], vec![0u64; g.len()]);
        for (n, &(gap, cost)) in steps.iter().enumerate() {
            now_us += gap;
            store.test_now_us.store(now_us, Ordering::Relaxed);
            let now = now_us * 1_000;
            let items = |prefix: &str| -> Vec<Item> {
                (0..g.len())
                    .map(|i| Item {
                        key: [prefix.as_bytes(), &keys[i]].concat(),
                        gcra: g[i],
                        cost,
                        shadow: false,
                    })
                    .collect()
            };
            // Batched, as on a standalone server: the binding limit's figures.
            let want = memory(&g, &mut batched, now, cost);
            let (_, got) = rt.block_on(store.take(items("b:"), None));
            let got = verdict(&got.unwrap());
            prop_assert_eq!(
                got,
                want,
                "batched, step {}: {:?} cost {} at {}",
                n,
                limits,
                cost,
                now_us
            );
            // One call per slot, as on a cluster: every limit's figures.
            let want = memory(&g, &mut per_slot, now, cost);
            let items = items("s:");
            let refs: Vec<&Item> = items.iter().collect();
            let (_, got) = rt.block_on(store.run_refs(&refs, false, None)).unwrap();
            let got = verdict(&got);
            prop_assert_eq!(
                got,
                want,
                "per slot, step {}: {:?} cost {} at {}",
                n,
                limits,
                cost,
                now_us
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Leases: a grant of up to `want` cells when at least `min` are free.
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let start = 1_700_000_000_000_000u64..1_900_000_000_000_000;
    let result = runner.run(&(limits(), steps(), start), |(limits, steps, start_us)| {
        let case = case.fetch_add(1, Ordering::Relaxed);
        let Some(g) = gcra(&limits[0]) else {
            return Ok(());
        };
        let key = format!("l{case}").into_bytes();
        let (mut tat, mut now_us) = (0u64, start_us);
        for (n, &(gap, cost)) in steps.iter().enumerate() {
            now_us += gap;
            store.test_now_us.store(now_us, Ordering::Relaxed);
            let now = now_us * 1_000;
            let (min, want) = (cost.max(1), cost.max(1) * 2);
            let base = tat.max(now);
            let free = (g.capacity.saturating_sub(base - now)) / g.interval;
            let expected = if free < u64::from(min) {
                LeaseGrant::Denied {
                    retry_ns: base + u64::from(min) * g.interval - now - g.capacity,
                }
            } else {
                let cells = free.min(u64::from(want)) as u32;
                tat = base + u64::from(cells) * g.interval;
                LeaseGrant::Granted {
                    cells,
                    full_after_ns: tat - now,
                }
            };
            let got = rt.block_on(store.lease(&key, &g, min, want, None)).unwrap();
            prop_assert_eq!(
                got,
                expected,
                "lease, step {}: {:?} min {} at {}",
                n,
                limits,
                min,
                now_us
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A TAT stored by an earlier version (microseconds as a float) is read as such, rounded up
/// to the nanosecond; the new value is written exactly (`<µs>.<ns>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tats_written_by_earlier_versions_are_read() {
    let server = RedisServer::start();
    let b = Backend::redis(RedisConfig::url(server.url()).op_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    let redis = b.as_redis().unwrap().clone();
    let store = RedisStore::new(redis.clone());
    let now_us = 1_800_000_000_000_000u64;
    store.test_now_us.store(now_us, Ordering::Relaxed);
    let key = b"omega:{rl:legacy}".to_vec();
    // 2.5 cells of 1 per second ahead, as an earlier version wrote them.
    let legacy = omega_core::redis::cmd("SET")
        .arg(&key[..])
        .arg("1800000002500000.25")
        .clone();
    let _: () = redis.query(&legacy).await.unwrap();
    let item = Item {
        key: key.clone(),
        gcra: Quota::per_second(1).with_burst(5).gcra(),
        cost: 1,
        shadow: false,
    };
    let (admitted, steps) = store.run_refs(&[&item], false, None).await.unwrap();
    assert!(admitted);
    assert_eq!(
        steps,
        [RemoteStep::Allow {
            remaining: 1,
            reset_ns: 3_500_000_250
        }]
    );
    let stored: String = redis
        .query(omega_core::redis::cmd("GET").arg(&key[..]))
        .await
        .unwrap();
    assert_eq!(stored, "1800000003500000.250");
}
