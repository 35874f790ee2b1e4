//! One partition's limit: admission with atomics, samples gathered with atomics, and the
//! algorithm run once per window by whichever completion closes it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use omega_core::{Clock, Nanos};

use super::algorithm::{Controller, Window};
use super::metrics::PartitionMetrics;
use super::{Estimate, LimitListener};

/// What every partition of a limiter shares.
pub(crate) struct Settings {
    /// The limiter's name (a metrics label).
    pub(crate) name: Arc<str>,
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) initial: u32,
    pub(crate) min_window: Nanos,
    pub(crate) min_samples: u32,
    pub(crate) clock: Clock,
    pub(crate) listener: Option<Arc<dyn LimitListener>>,
}

/// One partition: its in-flight count, its limit, and the window being gathered.
pub(crate) struct Partition {
    /// The partition's key as text (lossy), for refusals, metrics and listeners.
    pub(crate) name: Arc<str>,
    inflight: AtomicU32,
    limit: AtomicU32,
    /// The window being gathered: requests that started before `window_start` are not
    /// sampled (they were admitted under an older limit).
    window_start: AtomicU64,
    samples: AtomicU32,
    rtt_sum: AtomicU64,
    rtt_min: AtomicU64,
    drops: AtomicU32,
    max_inflight: AtomicU32,
    /// The highest the limit may go now: `max`, or in cluster mode this instance's share of
    /// the cluster's budget.
    ceiling: AtomicU32,
    /// The highest in-flight count the windows saw since the cluster exchange last read it.
    peak: AtomicU32,
    /// The algorithm; taken with `try_lock` by the completion that closes a window, never
    /// across an await.
    state: Mutex<State>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) metrics: PartitionMetrics,
}

struct State {
    controller: Controller,
    /// The limit with its fraction (the atomic holds its integer part).
    limit: f64,
}

/// An admitted request: released when dropped, with its outcome if it has one.
pub(crate) struct Permit {
    partition: Arc<Partition>,
    start: Nanos,
    inflight: u32,
    outcome: Outcome,
}

/// How an admitted request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Cancelled before it ended: no sample.
    Cancelled,
    /// Answered: an RTT sample.
    Ok,
    /// Failed: a drop.
    Dropped,
}

impl Permit {
    /// Releases the slot now, recording `outcome`.
    #[inline]
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.partition
            .complete(self.start, self.inflight, self.outcome);
    }
}

impl Partition {
    pub(crate) fn new(
        name: Arc<str>,
        settings: Arc<Settings>,
        algorithm: super::Algorithm,
        seed: u64,
    ) -> Self {
        let initial = settings.initial;
        let now = settings.clock.now();
        let metrics = PartitionMetrics::new(&settings.name, &name);
        metrics.limit(initial);
        Partition {
            name,
            inflight: AtomicU32::new(0),
            limit: AtomicU32::new(initial),
            window_start: AtomicU64::new(now),
            samples: AtomicU32::new(0),
            rtt_sum: AtomicU64::new(0),
            rtt_min: AtomicU64::new(u64::MAX),
            drops: AtomicU32::new(0),
            max_inflight: AtomicU32::new(0),
            ceiling: AtomicU32::new(settings.max),
            peak: AtomicU32::new(0),
            state: Mutex::new(State {
                controller: Controller::new(algorithm, seed),
                limit: f64::from(initial),
            }),
            settings,
            metrics,
        }
    }

    /// The current limit.
    #[inline]
    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    #[inline]
    pub(crate) fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A slot, or the partition back when it is at its limit.
    #[inline]
    pub(crate) fn try_acquire(this: Arc<Self>) -> Result<Permit, Arc<Self>> {
        let limit = this.limit.load(Ordering::Relaxed);
        let mut current = this.inflight.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return Err(this);
            }
            match this.inflight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        let start = this.settings.clock.now();
        Ok(Permit {
            partition: this,
            start,
            inflight: current + 1,
            outcome: Outcome::Cancelled,
        })
    }

    /// A request admitted at `start` ended; it saw `inflight` requests in flight (itself
    /// included) when admitted.
    fn complete(&self, start: Nanos, inflight: u32, outcome: Outcome) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        if outcome == Outcome::Cancelled {
            return;
        }
        let now = self.settings.clock.now();
        let window_start = self.window_start.load(Ordering::Acquire);
        if outcome == Outcome::Dropped {
            self.drops.fetch_add(1, Ordering::Relaxed);
        } else if start >= window_start {
            let rtt = now.saturating_sub(start).max(1);
            self.rtt_sum.fetch_add(rtt, Ordering::Relaxed);
            self.rtt_min.fetch_min(rtt, Ordering::Relaxed);
            self.max_inflight.fetch_max(inflight, Ordering::Relaxed);
            self.samples.fetch_add(1, Ordering::Release);
        } else {
            return;
        }
        let s = &self.settings;
        let closes = now.saturating_sub(window_start) >= s.min_window
            && (self.samples.load(Ordering::Relaxed) >= s.min_samples
                || self.drops.load(Ordering::Relaxed) > 0);
        if closes {
            self.close_window(now);
        }
    }

    /// Runs the algorithm on the window gathered so far, if no other completion is doing so.
    #[cold]
    fn close_window(&self, now: Nanos) {
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        let window_start = self.window_start.load(Ordering::Acquire);
        if now.saturating_sub(window_start) < self.settings.min_window {
            // Another completion closed it meanwhile.
            return;
        }
        // Open the next window first: samples of requests admitted from now on go there.
        self.window_start.store(now, Ordering::Release);
        let samples = self.samples.swap(0, Ordering::Acquire);
        let window = Window {
            rtt: if samples > 0 {
                self.rtt_sum.swap(0, Ordering::Relaxed) as f64 / f64::from(samples)
            } else {
                self.rtt_sum.store(0, Ordering::Relaxed);
                0.0
            },
            min_rtt: self.rtt_min.swap(u64::MAX, Ordering::Relaxed) as f64,
            samples,
            drops: self.drops.swap(0, Ordering::Relaxed),
            max_inflight: self.max_inflight.swap(0, Ordering::Relaxed),
        };
        self.peak.fetch_max(window.max_inflight, Ordering::Relaxed);
        let s = &self.settings;
        let ceiling = self.ceiling();
        let state = &mut *state;
        let next = state
            .controller
            .update(state.limit, &window)
            .clamp(f64::from(s.min), f64::from(ceiling));
        state.limit = next;
        let limit = next as u32;
        self.limit.store(limit, Ordering::Relaxed);
        let (baseline, short) = state.controller.rtts();
        let estimate = Estimate {
            limit,
            max: ceiling,
            rtt: nanos(short),
            baseline_rtt: nanos(baseline),
        };
        self.metrics.update(&estimate);
        if let Some(listener) = &s.listener {
            listener.limit_changed(&self.name, &estimate);
        }
    }

    /// The partition's current figures.
    pub(crate) fn estimate(&self) -> Estimate {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (baseline, short) = state.controller.rtts();
        Estimate {
            limit: self.limit(),
            max: self.ceiling(),
            rtt: nanos(short),
            baseline_rtt: nanos(baseline),
        }
    }

    /// The highest the limit may go now (never below `min`).
    fn ceiling(&self) -> u32 {
        self.ceiling
            .load(Ordering::Relaxed)
            .clamp(self.settings.min, self.settings.max)
    }

    /// The highest in-flight count seen since the last call.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn take_peak(&self) -> u32 {
        self.peak.swap(0, Ordering::Relaxed)
    }

    /// Sets the highest the limit may go (a share of a cluster's budget), lowering the limit
    /// at once when it is above.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_ceiling(&self, ceiling: u32) {
        self.ceiling.store(ceiling, Ordering::Relaxed);
        let ceiling = self.ceiling();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.limit > f64::from(ceiling) {
            state.limit = f64::from(ceiling);
            self.limit.store(ceiling, Ordering::Relaxed);
            self.metrics.limit(ceiling);
        }
    }
}

fn nanos(n: f64) -> std::time::Duration {
    std::time::Duration::from_nanos(n as u64)
}
