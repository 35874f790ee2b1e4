//! What every node of a backend shares: the settings, the overall health, the connection
//! attempt counter and the metrics.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::Notify;

use super::config::RedisConfig;
use crate::error::Error;
use crate::health::{Health, HealthStatus};

/// Up or down, since when, and the last error: of one node, or of the whole backend.
pub(crate) struct HealthState {
    pub(crate) status: HealthStatus,
    pub(crate) since: SystemTime,
    pub(crate) last_error: Option<String>,
}

impl HealthState {
    pub(crate) fn down() -> Self {
        HealthState {
            status: HealthStatus::Down,
            since: SystemTime::now(),
            last_error: None,
        }
    }

    pub(crate) fn snapshot(&self, target: &str) -> Health {
        Health {
            status: self.status,
            since: self.since,
            last_error: self.last_error.clone(),
            target: target.to_owned(),
        }
    }

    /// Moves to `status`, restarting `since` when it changes.
    pub(crate) fn set(&mut self, status: HealthStatus) {
        if self.status != status {
            self.status = status;
            self.since = SystemTime::now();
        }
    }
}

/// The backend-wide part of the state. The backend is up while none of its nodes is down
/// (and, on a cluster, once its topology is known): each node that goes down adds one to
/// `down`, and takes it back when it is up again.
pub(crate) struct Context {
    pub(crate) cfg: RedisConfig,
    pub(crate) target: Arc<str>,
    up: AtomicBool,
    down: AtomicUsize,
    health: Mutex<HealthState>,
    connect_attempts: AtomicU64,
    /// The backend was dropped: its tasks end.
    closed: AtomicBool,
    /// Asks the cluster's topology task for a refresh (a node went down, a slot moved).
    pub(crate) refresh: Arc<Notify>,
    /// The backend's tasks (supervisors, the topology task) and its connections' drivers
    /// run on one runtime; they are numbered by this epoch, bumped when they move to another.
    epoch: AtomicU64,
    /// A task of the current epoch ended before its time: its runtime shut down (or it
    /// panicked). The next operation moves the backend to its own runtime.
    lost: AtomicBool,
    /// Held while the backend moves to another runtime.
    pub(crate) moving: tokio::sync::Mutex<()>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: OpMetrics,
}

impl Context {
    /// `pending` counts as a node that is down until [`Context::ready`] (a cluster whose
    /// topology is not known yet).
    pub(crate) fn new(cfg: RedisConfig, target: Arc<str>, pending: bool) -> Self {
        Context {
            #[cfg(feature = "metrics")]
            metrics: OpMetrics::new(&target),
            cfg,
            target,
            up: AtomicBool::new(false),
            down: AtomicUsize::new(usize::from(pending)),
            health: Mutex::new(HealthState::down()),
            connect_attempts: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            refresh: Arc::new(Notify::new()),
            epoch: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            moving: tokio::sync::Mutex::new(()),
        }
    }

    /// The epoch of the backend's tasks: a task of an older one ends when it wakes.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// `true` when the backend's tasks were lost with their runtime. One atomic load.
    #[inline]
    pub(crate) fn tasks_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Starts a new epoch of tasks (after they were lost): the new epoch, or `None` when
    /// the tasks were not lost (another operation moved them first).
    pub(crate) fn next_epoch(&self) -> Option<u64> {
        self.lost
            .swap(false, Ordering::AcqRel)
            .then(|| self.epoch.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// `true` while every node answers. One atomic load.
    #[inline]
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn health(&self) -> Health {
        self.lock().snapshot(&self.target)
    }

    /// The backend is being dropped: tasks that still reach this context end.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.refresh.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn connect_attempts(&self) -> u64 {
        self.connect_attempts.load(Ordering::Relaxed)
    }

    pub(crate) fn count_attempt(&self) {
        self.connect_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// The topology is known: the pending token of [`Context::new`] is taken back.
    pub(crate) fn ready(&self) {
        self.down.fetch_sub(1, Ordering::AcqRel);
        self.recompute(None);
    }

    /// A node went down (`delta` 1) or came back or left (`delta` -1); `err` says why it went
    /// down.
    pub(crate) fn node_changed(&self, delta: isize, err: Option<&Error>) {
        if delta > 0 {
            self.down.fetch_add(1, Ordering::AcqRel);
        } else if delta < 0 {
            self.down.fetch_sub(1, Ordering::AcqRel);
        }
        self.recompute(err);
    }

    /// Records `err` as the backend's last error without a change of node status.
    pub(crate) fn record(&self, err: &Error) {
        self.recompute(Some(err));
    }

    /// Sets the overall status from the count of nodes down. Reads the count under the lock,
    /// so the last of concurrent changes leaves the right status.
    fn recompute(&self, err: Option<&Error>) {
        let mut h = self.lock();
        let up = self.down.load(Ordering::Acquire) == 0;
        h.set(if up {
            HealthStatus::Up
        } else {
            HealthStatus::Down
        });
        if let Some(err) = err {
            h.last_error = Some(err.to_string());
        }
        self.up.store(up, Ordering::Release);
        #[cfg(feature = "metrics")]
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The backend's metrics, registered once per backend (feature `metrics`):
/// [`crate::metrics::BACKEND_UP`], [`crate::metrics::BACKEND_OP_SECONDS`] per kind of operation,
/// and [`crate::metrics::BACKEND_ERRORS`] (registered when an error first happens).
#[cfg(feature = "metrics")]
pub(crate) struct OpMetrics {
    pub(crate) up: metrics::Gauge,
    pub(crate) seconds: [metrics::Histogram; 3],
}

#[cfg(feature = "metrics")]
impl OpMetrics {
    fn new(target: &str) -> Self {
        let seconds = |op: &'static str| metrics::histogram!(crate::metrics::BACKEND_OP_SECONDS, "target" => target.to_owned(), "op" => op);
        OpMetrics {
            up: metrics::gauge!(crate::metrics::BACKEND_UP, "target" => target.to_owned()),
            seconds: [seconds("command"), seconds("pipeline"), seconds("script")],
        }
    }
}

/// Spawns one of the backend's tasks, of the current epoch, on the current runtime. A task
/// dropped before it returns (its runtime shut down) marks the tasks lost, so that the next
/// operation starts them again wherever it runs.
pub(crate) fn spawn_task(ctx: &Arc<Context>, task: impl Future<Output = ()> + Send + 'static) {
    let (weak, epoch) = (Arc::downgrade(ctx), ctx.epoch());
    crate::task::spawn_watched(task, move || {
        if let Some(ctx) = weak.upgrade()
            && ctx.epoch() == epoch
        {
            ctx.lost.store(true, Ordering::Release);
        }
    });
}

/// `d` ± 25%.
pub(crate) fn jitter(d: Duration) -> Duration {
    let factor = rand::rng().random_range(0.75..=1.25);
    d.mul_f64(factor)
}
