//! Cluster mode (feature `redis`): instances share one budget for a downstream.

use std::sync::{Arc, Weak};
use std::time::Duration;

use omega_core::Backend;
use omega_core::redis::{RedisBackend, Script};
use omega_core::task::{Lost, spawn_watched};

use super::Inner;
use super::partition::Partition;
use crate::error::ConfigError;

/// The default time between two exchanges with Redis.
pub const DEFAULT_CLUSTER_PERIOD: Duration = Duration::from_secs(1);

/// Records this instance's demand, drops instances whose entry expired, and returns every
/// live instance's demand, this one's first. Times are the server's.
const EXCHANGE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + ttl))
redis.call('PEXPIRE', KEYS[1], ttl * 2)
local out = { tonumber(ARGV[2]) }
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    local demand, expires = string.match(all[i + 1], '^(%d+):(%d+)$')
    if demand == nil or tonumber(expires) < now then
      redis.call('HDEL', KEYS[1], all[i])
    else
      out[#out + 1] = tonumber(demand)
    end
  end
end
return out
"#;

/// Cluster mode: the instances that use the same Redis (and keyspace), limiter name and
/// partition share `budget` requests in flight
/// ([`AdaptiveLimiterBuilder::cluster`](super::AdaptiveLimiterBuilder::cluster)).
///
/// Every `period` each instance tells Redis, per partition, how many requests it wants in
/// flight (its demand: twice the highest in-flight count of the last period, plus one, so
/// that an instance held at its share asks for more, and one that starts from nothing gets
/// its share in a few periods, as TCP's slow start), and reads every live
/// instance's demand back in the same script call. The budget is then split max-min fair
/// (water-filling): an instance that wants less than an equal share gets what it wants, and
/// the rest is split among the others. Each instance's share caps its adaptive limit (the
/// algorithm learns below it), never below `min`. An instance that stops telling is dropped
/// after three periods.
///
/// The exchange is off the request path (a background task); while Redis cannot be reached,
/// each instance keeps the share it had. Until its first exchange an instance may go up to
/// `max`; each instance keeps at least `min`, so `n` instances hold `n × min` even when that
/// is over the budget.
///
/// The exchange runs on a task of the tokio runtime the limiter is built in, and again on the
/// runtime of the next request after that runtime shut down (a limiter shared across
/// `#[tokio::test]`s); it ends when the limiter is dropped.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use omega_core::Backend;
/// use omega_rate_limit::adaptive::{AdaptiveLimiter, Cluster};
///
/// // Every instance: at most 200 requests in flight to the orders database, together.
/// let redis = Backend::connect(Some("redis://127.0.0.1:6379")).await?;
/// let limiter = AdaptiveLimiter::<()>::builder()
///     .name("orders-db")
///     .cluster(Cluster::new(&redis, 200)?)
///     .build()?;
/// # let _ = limiter;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Cluster {
    backend: RedisBackend,
    budget: u32,
    period: Duration,
}

impl Cluster {
    /// `budget` requests in flight for the whole cluster, over `backend` (Redis; the
    /// in-memory backend has no other instances to share with, and is refused).
    pub fn new(backend: &Backend, budget: u32) -> Result<Self, ConfigError> {
        let Some(redis) = backend.as_redis() else {
            return Err(ConfigError(
                "cluster mode shares a budget through Redis: the backend is in memory".into(),
            ));
        };
        if budget == 0 {
            return Err(ConfigError("a cluster budget must be at least 1".into()));
        }
        Ok(Cluster {
            backend: redis.clone(),
            budget,
            period: DEFAULT_CLUSTER_PERIOD,
        })
    }

    /// The time between two exchanges (default 1 s); an instance is dropped after three.
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// The budget.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.period.is_zero() {
            return Err(ConfigError("a cluster period must be longer than 0".into()));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError(
                "cluster mode runs its exchange on a tokio runtime: build the limiter in one"
                    .into(),
            ));
        }
        Ok(())
    }

    /// What the limiter keeps to run (and run again) its exchange.
    pub(super) fn into_task(self) -> ClusterTask {
        ClusterTask {
            cluster: Arc::new(self),
            script: Script::new("adaptive_cluster_exchange", EXCHANGE),
            instance: instance_id().into(),
            lost: Lost::new(),
        }
    }

    /// One partition's exchange: tells its demand, sets its share.
    async fn exchange(&self, script: &Script, instance: &str, name: &str, p: &Partition) {
        let s = &p.settings;
        let peak = p.take_peak();
        let demand = peak.saturating_mul(2).saturating_add(1).clamp(s.min, s.max);
        let key = self
            .backend
            .keyspace()
            .tagged(&format!("adaptive:{name}:{}", p.name), &["instances"]);
        let ttl = (self.period.as_millis() as u64).saturating_mul(3).max(1);
        let call = script.call().key(key).arg(instance).arg(demand).arg(ttl);
        // Redis unreachable: the share stays what it was.
        if let Ok(demands) = self.backend.eval::<Vec<u64>>(&call).await
            && let Some((&mine, others)) = demands.split_first()
        {
            p.set_ceiling(share(self.budget, mine, others).max(s.min));
        }
    }
}

/// A limiter's exchange: its settings, this instance's id (kept when the task starts again),
/// and whether its task ended with its runtime.
pub(super) struct ClusterTask {
    cluster: Arc<Cluster>,
    script: Script,
    instance: Arc<str>,
    lost: Lost,
}

impl ClusterTask {
    /// Starts the exchange again on the current runtime if it ended with its own (a limiter
    /// used after the runtime it was built on shut down). One atomic load while it runs.
    #[inline]
    pub(super) fn keep<Req: 'static>(&self, inner: &Arc<Inner<Req>>) {
        if self.lost.take() {
            start(inner);
        }
    }
}

/// Starts the exchange of `inner`'s partitions, every period, on the current runtime.
pub(super) fn start<Req: 'static>(inner: &Arc<Inner<Req>>) {
    let Some(task) = &inner.cluster else { return };
    let (cluster, script, instance) = (
        task.cluster.clone(),
        task.script.clone(),
        task.instance.clone(),
    );
    let weak: Weak<Inner<Req>> = Arc::downgrade(inner);
    let exchanges = async move {
        let mut tick = tokio::time::interval(cluster.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let partitions = inner.partitions();
            let name = inner.settings.name.clone();
            drop(inner);
            for p in partitions {
                cluster.exchange(&script, &instance, &name, &p).await;
            }
        }
    };
    spawn_watched(exchanges, task.lost.setter());
}

/// Max-min fair share of `budget` for the instance that wants `mine`, beside `others`.
fn share(budget: u32, mine: u64, others: &[u64]) -> u32 {
    let mut all: Vec<u64> = others.to_vec();
    all.push(mine);
    all.sort_unstable();
    let mut left = u64::from(budget);
    let mut n = all.len() as u64;
    for d in all {
        let fair = left / n;
        if d > fair {
            // Every instance from here on (this one included) wants more than an equal share
            // of what is left: each gets that share.
            return u32::try_from(fair).unwrap_or(u32::MAX);
        }
        if d == mine {
            return u32::try_from(d).unwrap_or(u32::MAX);
        }
        left -= d;
        n -= 1;
    }
    0
}

/// A random id for this instance's entries.
fn instance_id() -> String {
    use std::hash::BuildHasher;
    let seed = foldhash::fast::RandomState::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:016x}", seed.hash_one((std::process::id(), now)))
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn the_budget_is_split_max_min_fair() {
        // Two busy instances: half each.
        assert_eq!(share(100, 200, &[200]), 50);
        // An idle one keeps what it wants; the busy one gets the rest.
        assert_eq!(share(100, 1, &[200]), 1);
        assert_eq!(share(100, 200, &[1]), 99);
        // Three: one wants 10, the two others split 90.
        assert_eq!(share(100, 10, &[80, 90]), 10);
        assert_eq!(share(100, 80, &[10, 90]), 45);
        // Alone: what it wants, up to the budget.
        assert_eq!(share(100, 30, &[]), 30);
        assert_eq!(share(100, 300, &[]), 100);
    }
}
