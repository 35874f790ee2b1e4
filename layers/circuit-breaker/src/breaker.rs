//! The breaker: admission, recording, transitions.
//!
//! One atomic word holds the state, an epoch that every transition bumps, and two flags. The
//! CLOSED path is one load to admit and, when the window is clean (full of successes), one
//! load to record a success: no lock, no allocation, no clock (unless slow-call detection is
//! on). Everything else — failures, transitions, OPEN, HALF_OPEN — takes slower paths; only
//! transitions take a lock, never held across an `.await`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use omega_core::Clock;
use omega_core::Nanos;
use omega_core::clock::duration_nanos;
use pin_project_lite::pin_project;
use tokio::sync::broadcast;

use crate::classify::{Classify, ErrorsAreFailures, Outcome};
use crate::config::{CircuitBreakerConfig, SlidingWindow};
use crate::error::{CallError, CircuitOpen, ConfigError, Name};
use crate::event::{Cause, Event, EventKind};
use crate::state::{self, CLEAN, Probes, RAMP, STATE_MASK, State};
use crate::window::{Counts, Window};

const NOT_TIMED: Nanos = u64::MAX;
const NEVER: Nanos = u64::MAX;

/// A circuit breaker. Clones share one breaker: the clone is the handle for manual transitions,
/// reconfiguration, health and events.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use omega_circuit_breaker::{CallError, CircuitBreaker};
///
/// let breaker = CircuitBreaker::new("payment_gateway");
/// let result: Result<u32, CallError<std::io::Error>> =
///     breaker.call(async { Ok(42) }).await;
/// assert_eq!(result.unwrap(), 42);
/// assert!(breaker.is_call_permitted());
/// # }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) name: Arc<str>,
    short_name: Name,
    word: AtomicU64,
    probes: AtomicU64,
    slow_nanos: AtomicU64,
    open_until: AtomicU64,
    half_open_until: AtomicU64,
    ramp_from: AtomicU64,
    ramp_until: AtomicU64,
    ramp_seq: AtomicU64,
    rejected: AtomicU64,
    window: ArcSwap<Window>,
    config: ArcSwap<CircuitBreakerConfig>,
    pub(crate) clock: Clock,
    lock: Mutex<Transitions>,
    events: broadcast::Sender<Event>,
    listening: AtomicBool,
    runtime: Option<tokio::runtime::Handle>,
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::Metrics,
    #[cfg(feature = "redis")]
    pub(crate) shared: std::sync::OnceLock<crate::shared::Link>,
}

struct Transitions {
    opened_in_a_row: u32,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("state", &self.current_state())
            .finish()
    }
}

/// Builds a [`CircuitBreaker`] with a name, a configuration and optionally a clock.
#[derive(Debug)]
pub struct CircuitBreakerBuilder {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    clock: Option<Clock>,
    event_capacity: usize,
}

impl CircuitBreakerBuilder {
    /// The configuration (default: [`CircuitBreakerConfig::default`]).
    pub fn config(mut self, config: CircuitBreakerConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock (default: [`Clock::fast`]). Tests that pause tokio's clock pass
    /// [`Clock::system`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How many events a slow subscriber may lag behind before it loses some (default 256).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Builds the breaker, in CLOSED.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        self.config.validate()?;
        let (events, _) = broadcast::channel(self.event_capacity);
        let slow = self.config.slow_call_duration.map_or(0, duration_nanos);
        let window = Window::new(self.config.window);
        Ok(CircuitBreaker {
            inner: Arc::new(Inner {
                #[cfg(feature = "metrics")]
                metrics: crate::metrics::Metrics::new(&self.name),
                short_name: Name::new(&self.name),
                name: self.name,
                word: AtomicU64::new(state::pack(0, State::Closed, 0)),
                probes: AtomicU64::new(0),
                slow_nanos: AtomicU64::new(slow),
                open_until: AtomicU64::new(0),
                half_open_until: AtomicU64::new(NEVER),
                ramp_from: AtomicU64::new(0),
                ramp_until: AtomicU64::new(0),
                ramp_seq: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                window: ArcSwap::from_pointee(window),
                config: ArcSwap::from_pointee(self.config),
                clock: self.clock.unwrap_or_else(Clock::fast),
                lock: Mutex::new(Transitions { opened_in_a_row: 0 }),
                events,
                listening: AtomicBool::new(false),
                runtime: tokio::runtime::Handle::try_current().ok(),
                #[cfg(feature = "redis")]
                shared: std::sync::OnceLock::new(),
            }),
        })
    }
}

/// A snapshot of a breaker's health.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSnapshot {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The current state.
    pub state: State,
    /// The failure rate in percent over the window (over the probes in HALF_OPEN); `None`
    /// while fewer calls than the minimum were recorded.
    pub failure_rate: Option<f32>,
    /// The slow-call rate in percent, like `failure_rate`.
    pub slow_call_rate: Option<f32>,
    /// Calls in the window (completed probes in HALF_OPEN).
    pub calls: u64,
    /// Failed calls in the window.
    pub failed_calls: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// Calls rejected since the breaker was created.
    pub rejected_calls: u64,
    /// Probe permits left (HALF_OPEN only).
    pub probes_left: Option<u32>,
    /// Time until the next transition the breaker makes by itself: the end of the OPEN wait,
    /// of the HALF_OPEN maximum wait, or of the ramp-up after closing.
    pub next_transition_in: Option<Duration>,
}

// What a permit carries: the epoch it was admitted in and its kind, packed in one word (a
// byte-sized enum next to a word-sized load costs a store-forwarding stall on the hot path),
// and the start time when slow calls are measured.
const UNTRACKED: u64 = 0;
const WINDOW: u64 = 1;
const PROBE: u64 = 2;

#[derive(Clone, Copy, Debug)]
struct Ticket {
    tag: u64,
    start: Nanos,
}

impl Ticket {
    #[inline]
    fn new(epoch: u32, kind: u64, start: Nanos) -> Ticket {
        Ticket {
            tag: (u64::from(epoch) << 2) | kind,
            start,
        }
    }

    #[inline]
    fn epoch(&self) -> u32 {
        (self.tag >> 2) as u32
    }

    #[inline]
    fn kind(&self) -> u64 {
        self.tag & 3
    }
}

impl CircuitBreaker {
    /// A breaker named `name` with the default configuration.
    pub fn new(name: impl Into<Arc<str>>) -> CircuitBreaker {
        Self::builder(name)
            .build()
            .expect("the default configuration is valid")
    }

    /// A breaker named `name` with `config`.
    pub fn with_config(
        name: impl Into<Arc<str>>,
        config: CircuitBreakerConfig,
    ) -> Result<CircuitBreaker, ConfigError> {
        Self::builder(name).config(config).build()
    }

    /// Starts a builder.
    pub fn builder(name: impl Into<Arc<str>>) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            name: name.into(),
            config: CircuitBreakerConfig::default(),
            clock: None,
            event_capacity: 256,
        }
    }

    /// The breaker's name, fixed at creation.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `true` when `other` is a clone of this breaker.
    pub fn same_as(&self, other: &CircuitBreaker) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<CircuitBreakerConfig> {
        self.inner.config.load_full()
    }

    /// The current state. An OPEN breaker whose wait has elapsed moves to HALF_OPEN here (and
    /// on its timer, when a tokio runtime runs), so readers never see a stale OPEN.
    pub fn state(&self) -> State {
        let w = self.inner.word.load(Ordering::Acquire);
        match State::from_bits(w) {
            State::Open | State::HalfOpen => {
                self.check_deadlines(w);
                self.current_state()
            }
            s => s,
        }
    }

    fn current_state(&self) -> State {
        State::from_bits(self.inner.word.load(Ordering::Acquire))
    }

    /// Whether a call made now would be admitted, without taking a permit: CLOSED (unless
    /// ramping up), DISABLED and METRICS_ONLY admit; HALF_OPEN admits while probe permits are
    /// left. A cheap check for routers that skip nodes whose circuit is open.
    pub fn is_call_permitted(&self) -> bool {
        let w = self.inner.word.load(Ordering::Acquire);
        if w & (STATE_MASK | RAMP) == 0 {
            return true;
        }
        self.check_deadlines(w);
        let w = self.inner.word.load(Ordering::Acquire);
        match State::from_bits(w) {
            State::Closed | State::Disabled | State::MetricsOnly => true,
            State::Open | State::ForcedOpen => false,
            State::HalfOpen => {
                let p = Probes::unpack(self.inner.probes.load(Ordering::Acquire));
                p.same_epoch(state::epoch(w)) && p.left > 0
            }
        }
    }

    /// Takes a permit for one call, or says why not. Record the outcome on the permit; a permit
    /// dropped without an outcome counts as a cancelled call (a HALF_OPEN probe gives its
    /// permit back).
    ///
    /// ```
    /// use omega_circuit_breaker::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::new("db");
    /// match breaker.try_acquire() {
    ///     Ok(permit) => permit.success(),
    ///     Err(open) => eprintln!("{open}"),
    /// }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, CircuitOpen> {
        let ticket = self.admit()?;
        Ok(Permit {
            breaker: self,
            ticket,
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), with a permit that owns a handle on the breaker
    /// (for futures that must be `'static`).
    #[inline]
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, CircuitOpen> {
        let ticket = self.admit()?;
        Ok(OwnedPermit {
            breaker: self.clone(),
            ticket,
        })
    }

    /// Runs `fut` if the circuit admits it, and records its outcome (`Err` is a failure).
    pub fn call<F, T, E>(&self, fut: F) -> Call<'_, F, ErrorsAreFailures>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_with(fut, ErrorsAreFailures)
    }

    /// Runs `fut` if the circuit admits it, and records its outcome as `classify` says.
    pub fn call_with<F, C, T, E>(&self, fut: F, classify: C) -> Call<'_, F, C>
    where
        F: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
    {
        let (permit, rejected) = match self.try_acquire() {
            Ok(p) => (Some(p), None),
            Err(open) => (None, Some(open)),
        };
        Call {
            fut,
            permit,
            rejected,
            classify,
        }
    }

    /// Runs the synchronous `f` if the circuit admits it, and records its outcome.
    #[inline]
    pub fn call_sync<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, CallError<E>> {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        let result = f();
        permit.record(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result.map_err(CallError::Inner)
    }

    /// A snapshot of the breaker's health.
    pub fn health(&self) -> HealthSnapshot {
        let state = self.state();
        let inner = &*self.inner;
        let cfg = inner.config.load();
        let now = inner.clock.now();
        let (counts, probes_left, min) = if state == State::HalfOpen {
            let p = Probes::unpack(inner.probes.load(Ordering::Acquire));
            let c = Counts {
                calls: u64::from(p.done),
                failed: u64::from(p.failed),
                slow: u64::from(p.slow),
            };
            (c, Some(p.left), 1)
        } else {
            let c = inner.window.load().counts(|| now);
            (c, None, cfg.min_calls())
        };
        let rate = |n: u64| {
            (counts.calls >= min && counts.calls > 0)
                .then(|| (n as f64 * 100.0 / counts.calls as f64) as f32)
        };
        let until = |t: Nanos| (t != NEVER).then(|| Duration::from_nanos(t.saturating_sub(now)));
        let next_transition_in = match state {
            State::Open => until(inner.open_until.load(Ordering::Acquire)),
            State::HalfOpen => until(inner.half_open_until.load(Ordering::Acquire)),
            State::Closed if inner.word.load(Ordering::Acquire) & RAMP != 0 => {
                until(inner.ramp_until.load(Ordering::Acquire))
            }
            _ => None,
        };
        HealthSnapshot {
            name: inner.name.clone(),
            state,
            failure_rate: rate(counts.failed),
            slow_call_rate: if cfg.slow_call_duration.is_some() {
                rate(counts.slow)
            } else {
                None
            },
            calls: counts.calls,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            rejected_calls: inner.rejected.load(Ordering::Relaxed),
            probes_left,
            next_transition_in,
        }
    }

    /// A stream of this breaker's events (transitions, rejections, reconfigurations). Rejection
    /// events are only produced while someone listens.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        let rx = self.inner.events.subscribe();
        self.inner.listening.store(true, Ordering::Release);
        rx
    }

    /// Changes the configuration while serving, effective on the next call. The window keeps
    /// its outcomes (the most recent ones, when it shrinks); the state, its epoch and the OPEN
    /// deadline stay. The name cannot change.
    pub fn reconfigure(&self, config: CircuitBreakerConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let inner = &*self.inner;
        let _g = self.lock();
        let old = inner.config.load_full();
        if old.window != config.window {
            let migrated = inner
                .window
                .load()
                .migrate(config.window, inner.clock.now());
            inner.window.store(Arc::new(migrated));
            inner.word.fetch_and(!CLEAN, Ordering::AcqRel);
        }
        inner.slow_nanos.store(
            config.slow_call_duration.map_or(0, duration_nanos),
            Ordering::Release,
        );
        inner.config.store(Arc::new(config));
        self.emit(EventKind::Reconfigured);
        Ok(())
    }

    /// Changes the configuration with `f` applied to the current one.
    pub fn update_config(
        &self,
        f: impl FnOnce(CircuitBreakerConfig) -> CircuitBreakerConfig,
    ) -> Result<(), ConfigError> {
        self.reconfigure(f((*self.config()).clone()))
    }

    /// Moves to CLOSED with an empty window.
    pub fn transition_to_closed(&self) {
        self.manual(State::Closed);
    }

    /// Moves to OPEN for the configured wait (with backoff).
    pub fn transition_to_open(&self) {
        self.manual(State::Open);
    }

    /// Moves to HALF_OPEN with fresh probe permits.
    pub fn transition_to_half_open(&self) {
        self.manual(State::HalfOpen);
    }

    /// Moves to DISABLED: everything passes, nothing is recorded.
    pub fn disable(&self) {
        self.manual(State::Disabled);
    }

    /// Moves to FORCED_OPEN: everything is rejected until another manual transition.
    pub fn force_open(&self) {
        self.manual(State::ForcedOpen);
    }

    /// Moves to METRICS_ONLY: everything passes and is recorded, the circuit never opens.
    pub fn metrics_only(&self) {
        self.manual(State::MetricsOnly);
    }

    /// Back to CLOSED with an empty window and no backoff history.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.opened_in_a_row = 0;
        let w = self.inner.word.load(Ordering::Acquire);
        self.transition_locked(&mut g, w, State::Closed, Cause::Manual, None);
    }

    fn manual(&self, to: State) {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        if State::from_bits(w) != to {
            self.transition_locked(&mut g, w, to, Cause::Manual, None);
        }
    }

    /// `true` while the breaker is still in the state that transition `epoch` entered.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn in_epoch(&self, epoch: u32) -> bool {
        state::epoch(self.inner.word.load(Ordering::Acquire)) == epoch
    }

    fn lock(&self) -> MutexGuard<'_, Transitions> {
        self.inner
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    // ---- admission ----

    #[inline]
    fn admit(&self) -> Result<Ticket, CircuitOpen> {
        let w = self.inner.word.load(Ordering::Acquire);
        if w & (STATE_MASK | RAMP) == 0 {
            return Ok(Ticket::new(state::epoch(w), WINDOW, self.start()));
        }
        self.admit_slow(w)
    }

    #[inline]
    fn start(&self) -> Nanos {
        if self.inner.slow_nanos.load(Ordering::Relaxed) != 0 {
            self.inner.clock.now()
        } else {
            NOT_TIMED
        }
    }

    #[cold]
    fn admit_slow(&self, mut w: u64) -> Result<Ticket, CircuitOpen> {
        let inner = &*self.inner;
        loop {
            let epoch = state::epoch(w);
            let ticket = |kind| Ticket::new(epoch, kind, self.start());
            match State::from_bits(w) {
                State::Closed => {
                    let now = inner.clock.now();
                    let until = inner.ramp_until.load(Ordering::Acquire);
                    if now >= until {
                        let _ = inner.word.compare_exchange(
                            w,
                            w & !RAMP,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        return Ok(ticket(WINDOW));
                    }
                    let from = inner.ramp_from.load(Ordering::Acquire);
                    let share = 0.1
                        + 0.9 * (now.saturating_sub(from)) as f64
                            / (until.saturating_sub(from)).max(1) as f64;
                    let n = inner.ramp_seq.fetch_add(1, Ordering::Relaxed);
                    // A low-discrepancy sequence spreads the admitted calls evenly.
                    let x = (n as f64 * 0.618_033_988_749_894_9).fract();
                    if x < share {
                        return Ok(ticket(WINDOW));
                    }
                    return Err(self.reject(State::Closed, until - now));
                }
                State::Open => {
                    let now = inner.clock.now();
                    let until = inner.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Err(self.reject(State::Open, until - now));
                    }
                    self.wait_elapsed(epoch);
                }
                State::HalfOpen => {
                    let hu = inner.half_open_until.load(Ordering::Acquire);
                    if hu != NEVER && inner.clock.now() >= hu {
                        self.half_open_timeout(epoch);
                    } else {
                        let mut cur = inner.probes.load(Ordering::Acquire);
                        loop {
                            let mut p = Probes::unpack(cur);
                            if !p.same_epoch(epoch) {
                                break; // a transition is under way: look again
                            }
                            if p.left == 0 {
                                return Err(self.reject(State::HalfOpen, crate::error::NO_RETRY));
                            }
                            p.left -= 1;
                            match inner.probes.compare_exchange_weak(
                                cur,
                                p.pack(),
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            ) {
                                Ok(_) => return Ok(ticket(PROBE)),
                                Err(actual) => cur = actual,
                            }
                        }
                    }
                }
                State::Disabled => return Ok(ticket(UNTRACKED)),
                State::MetricsOnly => return Ok(ticket(WINDOW)),
                State::ForcedOpen => {
                    return Err(self.reject(State::ForcedOpen, crate::error::NO_RETRY));
                }
            }
            w = inner.word.load(Ordering::Acquire);
        }
    }

    fn reject(&self, state: State, retry_nanos: u64) -> CircuitOpen {
        let inner = &*self.inner;
        inner.rejected.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        inner.metrics.rejected.increment(1);
        if inner.listening.load(Ordering::Relaxed) {
            self.emit(EventKind::Rejected { state });
        }
        CircuitOpen {
            breaker: inner.short_name.clone(),
            state,
            retry_nanos,
        }
    }

    fn check_deadlines(&self, w: u64) {
        let inner = &*self.inner;
        match State::from_bits(w) {
            State::Open if inner.clock.now() >= inner.open_until.load(Ordering::Acquire) => {
                self.wait_elapsed(state::epoch(w));
            }
            State::HalfOpen => {
                let hu = inner.half_open_until.load(Ordering::Acquire);
                if hu != NEVER && inner.clock.now() >= hu {
                    self.half_open_timeout(state::epoch(w));
                }
            }
            _ => {}
        }
    }

    // ---- recording ----

    #[inline]
    fn complete(&self, t: Ticket, outcome: Outcome) {
        // The CLOSED fast path: an untimed success into a clean window of the same epoch
        // changes nothing.
        if outcome == Outcome::Success && t.start == NOT_TIMED && t.kind() == WINDOW {
            let w = self.inner.word.load(Ordering::Acquire);
            if w & CLEAN != 0 && state::epoch(w) == t.epoch() {
                return;
            }
        }
        self.complete_slow(t, outcome);
    }

    #[inline(never)]
    fn complete_slow(&self, t: Ticket, outcome: Outcome) {
        match t.kind() {
            WINDOW => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let failed = outcome == Outcome::Failure;
                let slow = self.is_slow(t.start);
                let w = self.inner.word.load(Ordering::Acquire);
                if state::epoch(w) != t.epoch() || (!failed && !slow && w & CLEAN != 0) {
                    return;
                }
                self.record_window(w, failed, slow);
            }
            PROBE => self.record_probe(t, outcome),
            _ => {}
        }
    }

    #[inline]
    fn is_slow(&self, start: Nanos) -> bool {
        if start == NOT_TIMED {
            return false;
        }
        let limit = self.inner.slow_nanos.load(Ordering::Relaxed);
        limit != 0 && self.inner.clock.now().saturating_sub(start) >= limit
    }

    #[cold]
    fn record_window(&self, w: u64, failed: bool, slow: bool) {
        let inner = &*self.inner;
        let window = inner.window.load();
        let bad = failed || slow;
        #[cfg(feature = "metrics")]
        inner.metrics.outcome(failed, slow);
        let counts = match &**window {
            Window::Count(cw) => cw.record(failed, slow),
            Window::Time(tw) => tw.record(inner.clock.now(), failed, slow),
            Window::Consecutive(c) => {
                let run = c.record(bad);
                if bad {
                    inner.word.fetch_and(!CLEAN, Ordering::AcqRel);
                    if run >= c.threshold && State::from_bits(w) == State::Closed {
                        self.trip(state::epoch(w), Cause::ConsecutiveFailures);
                    }
                } else {
                    self.set_clean(w, &window);
                }
                return;
            }
        };
        if bad {
            inner.word.fetch_and(!CLEAN, Ordering::AcqRel);
        } else if window.is_clean() {
            self.set_clean(w, &window);
        }
        if (counts.failed > 0 || counts.slow > 0) && State::from_bits(w) == State::Closed {
            let cfg = inner.config.load();
            if counts.calls >= cfg.min_calls()
                && let Some(cause) = cfg.exceeded(counts.calls, counts.failed, counts.slow)
            {
                self.trip(state::epoch(w), cause);
            }
        }
    }

    /// Sets CLEAN on the word of the epoch we saw, then checks that the window is still clean
    /// (a failure recorded meanwhile clears the flag after recording, so one of the two sees
    /// the other).
    fn set_clean(&self, w: u64, window: &Window) {
        let word = &self.inner.word;
        let seen = w & !CLEAN;
        if word
            .compare_exchange(seen, seen | CLEAN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && !window.is_clean()
        {
            word.fetch_and(!CLEAN, Ordering::AcqRel);
        }
    }

    fn record_probe(&self, t: Ticket, outcome: Outcome) {
        let inner = &*self.inner;
        let failed = outcome == Outcome::Failure;
        let slow = outcome != Outcome::Ignored && self.is_slow(t.start);
        let mut cur = inner.probes.load(Ordering::Acquire);
        let p = loop {
            let mut p = Probes::unpack(cur);
            if !p.same_epoch(t.epoch()) {
                return; // a stale result: the breaker has moved on
            }
            if outcome == Outcome::Ignored {
                p.left += 1;
            } else {
                p.done += 1;
                p.failed += u32::from(failed);
                p.slow += u32::from(slow);
            }
            match inner.probes.compare_exchange_weak(
                cur,
                p.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break p,
                Err(actual) => cur = actual,
            }
        };
        if outcome == Outcome::Ignored {
            return;
        }
        #[cfg(feature = "metrics")]
        inner.metrics.outcome(failed, slow);
        let cfg = inner.config.load();
        let n = cfg.permitted_calls_in_half_open;
        let opens = match cfg.window {
            SlidingWindow::ConsecutiveFailures(_) => p.failed + p.slow > 0,
            _ => cfg
                .exceeded(u64::from(n), u64::from(p.failed), u64::from(p.slow))
                .is_some(),
        };
        let to = if opens {
            (State::Open, Cause::ProbesFailed)
        } else if p.done >= n {
            (State::Closed, Cause::ProbesSucceeded)
        } else {
            return;
        };
        let mut g = self.lock();
        let w = inner.word.load(Ordering::Acquire);
        if state::epoch(w) == t.epoch() && State::from_bits(w) == State::HalfOpen {
            self.transition_locked(&mut g, w, to.0, to.1, None);
        }
    }

    #[inline]
    fn release(&self, t: Ticket) {
        if t.kind() == PROBE {
            self.release_probe(t);
        }
    }

    fn release_probe(&self, t: Ticket) {
        let probes = &self.inner.probes;
        let mut cur = probes.load(Ordering::Acquire);
        loop {
            let mut p = Probes::unpack(cur);
            if !p.same_epoch(t.epoch()) {
                return;
            }
            p.left += 1;
            match probes.compare_exchange_weak(cur, p.pack(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    // ---- transitions ----

    fn trip(&self, epoch: u32, cause: Cause) {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        if state::epoch(w) == epoch && State::from_bits(w) == State::Closed {
            self.transition_locked(&mut g, w, State::Open, cause, None);
        }
    }

    fn wait_elapsed(&self, epoch: u32) {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        if state::epoch(w) == epoch
            && State::from_bits(w) == State::Open
            && self.inner.clock.now() >= self.inner.open_until.load(Ordering::Acquire)
        {
            self.transition_locked(&mut g, w, State::HalfOpen, Cause::WaitElapsed, None);
        }
    }

    fn half_open_timeout(&self, epoch: u32) {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        let hu = self.inner.half_open_until.load(Ordering::Acquire);
        if state::epoch(w) == epoch
            && State::from_bits(w) == State::HalfOpen
            && hu != NEVER
            && self.inner.clock.now() >= hu
        {
            self.transition_locked(&mut g, w, State::Open, Cause::HalfOpenTimeout, None);
        }
    }

    /// Opens because another instance did; `wait` is what is left of its OPEN wait. Only a
    /// CLOSED or HALF_OPEN breaker follows (manual states win).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn open_remote(&self, wait: Duration) -> bool {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        match State::from_bits(w) {
            State::Closed | State::HalfOpen if !wait.is_zero() => {
                self.transition_locked(&mut g, w, State::Open, Cause::Remote, Some(wait));
                true
            }
            _ => false,
        }
    }

    fn transition_locked(
        &self,
        g: &mut Transitions,
        w: u64,
        to: State,
        cause: Cause,
        wait: Option<Duration>,
    ) {
        let inner = &*self.inner;
        let from = State::from_bits(w);
        let epoch = state::epoch(w).wrapping_add(1);
        let cfg = inner.config.load();
        let now = inner.clock.now();
        let mut flags = 0;
        let mut timer = None;
        let mut open_wait = Duration::ZERO;
        match to {
            State::Open => {
                open_wait =
                    wait.unwrap_or_else(|| jittered(cfg.open_wait(g.opened_in_a_row), cfg.jitter));
                g.opened_in_a_row = g.opened_in_a_row.saturating_add(1);
                let until = now.saturating_add(duration_nanos(open_wait));
                inner.open_until.store(until, Ordering::Release);
                timer = Some(until);
            }
            State::HalfOpen => {
                inner.probes.store(
                    Probes {
                        epoch: epoch & 0xFF_FFFF,
                        left: cfg.permitted_calls_in_half_open,
                        done: 0,
                        failed: 0,
                        slow: 0,
                    }
                    .pack(),
                    Ordering::Release,
                );
                let until = cfg
                    .max_wait_in_half_open
                    .map_or(NEVER, |d| now.saturating_add(duration_nanos(d)));
                inner.half_open_until.store(until, Ordering::Release);
                if until != NEVER {
                    timer = Some(until);
                }
            }
            State::Closed => {
                // A fresh window: results of calls of earlier epochs still in flight land
                // in the old one, if anywhere.
                inner.window.store(Arc::new(Window::new(cfg.window)));
                if from == State::HalfOpen {
                    g.opened_in_a_row = 0;
                    if let Some(ramp) = cfg.ramp_up {
                        inner.ramp_from.store(now, Ordering::Release);
                        inner
                            .ramp_until
                            .store(now.saturating_add(duration_nanos(ramp)), Ordering::Release);
                        flags |= RAMP;
                    }
                }
            }
            State::MetricsOnly => {
                inner.window.store(Arc::new(Window::new(cfg.window)));
            }
            State::Disabled | State::ForcedOpen => {}
        }
        inner
            .word
            .store(state::pack(epoch, to, flags), Ordering::Release);
        #[cfg(feature = "metrics")]
        inner.metrics.transition(from, to);
        self.emit(EventKind::Transition { from, to, cause });
        if let Some(until) = timer {
            self.arm(epoch, until);
        }
        #[cfg(feature = "redis")]
        if let Some(link) = inner.shared.get() {
            link.on_transition(self, epoch, to, cause, open_wait);
        }
        let _ = open_wait;
    }

    /// Arms a timer that makes the time-driven transition of `epoch` (OPEN → HALF_OPEN, or the
    /// HALF_OPEN timeout) with no traffic at all. Without a tokio runtime (or with a manual
    /// clock) the transition happens on the next call or state read instead.
    fn arm(&self, epoch: u32, until: Nanos) {
        if self.inner.clock.is_manual() {
            return;
        }
        let Some(rt) = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.inner.runtime.clone())
        else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let w = inner.word.load(Ordering::Acquire);
                if state::epoch(w) != epoch {
                    return;
                }
                let now = inner.clock.now();
                if now >= until {
                    CircuitBreaker { inner }.check_deadlines(w);
                    return;
                }
                let clock = inner.clock.clone();
                drop(inner);
                let nap = Duration::from_nanos(until - now);
                tokio::time::sleep(nap).await;
                // tokio's clock and the breaker's disagree (tokio paused in a test while the
                // breaker reads the CPU clock): stop, the next call or state read moves on.
                if clock.now().saturating_sub(now) < duration_nanos(nap) / 2 {
                    return;
                }
            }
        });
    }

    fn emit(&self, kind: EventKind) {
        let inner = &*self.inner;
        if !inner.listening.load(Ordering::Acquire) {
            return;
        }
        let event = Event {
            breaker: inner.name.clone(),
            kind,
        };
        if inner.events.send(event).is_err() {
            inner.listening.store(false, Ordering::Release);
            if inner.events.receiver_count() > 0 {
                inner.listening.store(true, Ordering::Release);
            }
        }
    }
}

fn jittered(wait: Duration, factor: f64) -> Duration {
    if factor <= 0.0 {
        return wait;
    }
    let r: f64 = rand::random_range(-factor..=factor);
    wait.mul_f64(1.0 + r)
}

/// Permission for one call. Record its outcome with [`record`](Self::record) (or
/// [`success`](Self::success) / [`failure`](Self::failure)); dropping it unrecorded counts as
/// a cancelled call: nothing is recorded, and a HALF_OPEN probe gives its permit back.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Ticket,
}

impl Permit<'_> {
    /// Records the call's outcome. Outcomes of calls admitted before the breaker's last
    /// transition are ignored.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        let t = self.ticket;
        self.ticket.tag = UNTRACKED;
        self.breaker.complete(t, outcome);
    }

    /// Records a success.
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success)
    }

    /// Records a failure.
    pub fn failure(self) {
        self.record(Outcome::Failure)
    }
}

impl Drop for Permit<'_> {
    #[inline]
    fn drop(&mut self) {
        self.breaker.release(self.ticket);
    }
}

/// A [`Permit`] that owns a handle on its breaker.
#[derive(Debug)]
pub struct OwnedPermit {
    breaker: CircuitBreaker,
    ticket: Ticket,
}

impl OwnedPermit {
    /// Records the call's outcome (see [`Permit::record`]).
    pub fn record(mut self, outcome: Outcome) {
        let t = self.ticket;
        self.ticket.tag = UNTRACKED;
        self.breaker.complete(t, outcome);
    }

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        self.breaker.release(self.ticket);
    }
}

pin_project! {
    /// The future of [`CircuitBreaker::call`].
    pub struct Call<'a, F, C> {
        #[pin]
        fut: F,
        permit: Option<Permit<'a>>,
        rejected: Option<CircuitOpen>,
        classify: C,
    }
}

impl<F, C> std::fmt::Debug for Call<'_, F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("admitted", &self.permit.is_some())
            .finish()
    }
}

impl<F, C, T, E> Future for Call<'_, F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(open) = this.rejected.take() {
            return Poll::Ready(Err(CallError::Rejected(open)));
        }
        let result = std::task::ready!(this.fut.poll(cx));
        if let Some(permit) = this.permit.take() {
            permit.record(this.classify.classify(&result));
        }
        Poll::Ready(result.map_err(CallError::Inner))
    }
}
