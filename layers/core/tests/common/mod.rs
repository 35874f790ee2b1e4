//! Helpers shared by the Redis tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use omega_core::hash_slot;
use omega_testkit::RedisCluster;

/// Polls `f` every 10 ms until it returns `Some`, for at most 15 s.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The slot ranges node `index` owns, from its own `CLUSTER NODES` line.
pub(crate) fn slots_of(cluster: &RedisCluster, index: usize) -> Vec<(u16, u16)> {
    let nodes = cluster.nodes()[index].cli(&["CLUSTER", "NODES"]);
    let me = nodes
        .lines()
        .find(|l| l.contains("myself"))
        .expect("CLUSTER NODES has a `myself` line");
    me.split_whitespace()
        .skip(8)
        .filter(|r| !r.starts_with('['))
        .map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (r.parse().unwrap(), r.parse().unwrap()),
        })
        .collect()
}

/// `n` keys (`k:<i>`) whose slots node `index` owns.
pub(crate) fn keys_on(cluster: &RedisCluster, index: usize, n: usize) -> Vec<String> {
    let ranges = slots_of(cluster, index);
    (0..)
        .map(|i| format!("k:{i}"))
        .filter(|k| {
            let slot = hash_slot(k.as_bytes());
            ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
        })
        .take(n)
        .collect()
}

/// Measured latencies.
#[derive(Default)]
pub(crate) struct Latencies(Vec<Duration>);

impl Latencies {
    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    /// `p50 .. p99 .. max`.
    pub(crate) fn summary(&self) -> String {
        format!(
            "p50 {:?}, p99 {:?}, max {:?}",
            self.quantile(0.5),
            self.quantile(0.99),
            self.max()
        )
    }
}
