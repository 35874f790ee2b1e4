//! The breaker's state machine: the state word, transitions, timers and events.
//!
//! One atomic word holds the state, an epoch that every transition bumps, and two flags. The
//! CLOSED path is one load to admit and, when the window is clean (full of successes), one
//! load to record a success: no lock, no allocation, no clock (unless slow-call detection is
//! on); that path is in [`crate::admission`]. Transitions take a lock, never held across an
//! `.await`. What a transition means beyond this process (sharing an OPEN through Redis) is
//! told to a hook the breaker owns ([`TransitionHook`], feature `redis`); this module knows
//! nothing of who listens.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use omega_core::clock::duration_nanos;
use omega_core::{Clock, Nanos};
use tokio::sync::broadcast;

use crate::error::{ConfigError, Name};
use crate::event::{Cause, Event, EventKind};
use crate::settings::CircuitBreakerConfig;
use crate::state::{self, CLEAN, Probes, State};
use crate::window::Window;

/// A deadline that never comes.
pub(crate) const NEVER: Nanos = u64::MAX;

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
    pub(crate) short_name: Name,
    pub(crate) word: AtomicU64,
    pub(crate) probes: AtomicU64,
    /// The number of probes of the HALF_OPEN cycle under way: set when the cycle starts, from
    /// the configuration of that moment (a reconfiguration applies from the next cycle).
    pub(crate) cycle_probes: AtomicU32,
    pub(crate) slow_nanos: AtomicU64,
    pub(crate) open_until: AtomicU64,
    pub(crate) half_open_until: AtomicU64,
    pub(crate) ramp_from: AtomicU64,
    pub(crate) ramp_until: AtomicU64,
    pub(crate) ramp_seq: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) window: ArcSwap<Window>,
    pub(crate) config: ArcSwap<CircuitBreakerConfig>,
    pub(crate) clock: Clock,
    lock: Mutex<Transitions>,
    /// Made by the first [`CircuitBreaker::events`]: a breaker nobody listens to (most of a
    /// registry's) holds no event buffer.
    events: OnceLock<broadcast::Sender<Event>>,
    event_capacity: usize,
    pub(crate) listening: AtomicBool,
    runtime: Option<tokio::runtime::Handle>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::Metrics,
    #[cfg(feature = "redis")]
    hook: std::sync::OnceLock<Box<dyn TransitionHook>>,
}

pub(crate) struct Transitions {
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

impl CircuitBreaker {
    /// A breaker in CLOSED, from a validated configuration.
    pub(crate) fn from_parts(
        name: Arc<str>,
        config: CircuitBreakerConfig,
        clock: Clock,
        event_capacity: usize,
    ) -> CircuitBreaker {
        let slow = config.slow_call_duration.map_or(0, duration_nanos);
        let window = Window::new(config.window);
        CircuitBreaker {
            inner: Arc::new(Inner {
                #[cfg(feature = "metrics")]
                metrics: crate::metrics::Metrics::new(&name),
                short_name: Name::new(&name),
                name,
                word: AtomicU64::new(state::pack(0, State::Closed, 0)),
                probes: AtomicU64::new(0),
                cycle_probes: AtomicU32::new(config.permitted_calls_in_half_open),
                slow_nanos: AtomicU64::new(slow),
                open_until: AtomicU64::new(0),
                half_open_until: AtomicU64::new(NEVER),
                ramp_from: AtomicU64::new(0),
                ramp_until: AtomicU64::new(0),
                ramp_seq: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                window: ArcSwap::from_pointee(window),
                config: ArcSwap::from_pointee(config),
                clock,
                lock: Mutex::new(Transitions { opened_in_a_row: 0 }),
                events: OnceLock::new(),
                event_capacity,
                listening: AtomicBool::new(false),
                runtime: tokio::runtime::Handle::try_current().ok(),
                #[cfg(feature = "redis")]
                hook: std::sync::OnceLock::new(),
            }),
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

    pub(crate) fn current_state(&self) -> State {
        State::from_bits(self.inner.word.load(Ordering::Acquire))
    }

    /// A stream of this breaker's events (transitions, rejections, reconfigurations). Rejection
    /// events are only produced while someone listens.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        let capacity = self.inner.event_capacity;
        let rx = self
            .inner
            .events
            .get_or_init(|| broadcast::channel(capacity).0)
            .subscribe();
        self.inner.listening.store(true, Ordering::Release);
        rx
    }

    /// Changes the configuration while serving, effective on the next call. The window keeps
    /// its outcomes (the most recent ones, when it shrinks); the state, its epoch and the OPEN
    /// deadline stay. The name cannot change.
    ///
    /// A HALF_OPEN cycle under way keeps the number of probes it started with: it admits that
    /// many and decides after that many results (with the new thresholds); a new
    /// [`permitted_calls_in_half_open`](CircuitBreakerConfig::permitted_calls_in_half_open)
    /// applies from the next HALF_OPEN, as in resilience4j, whose HALF_OPEN state takes the
    /// number when it begins. (Changing it mid-cycle would either wait for results that no
    /// permit can produce, or decide while admitted probes are still out.)
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

    /// Moves to CLOSED with an empty window. With shared state (feature `redis`), a manual
    /// close is an operator's override: it also clears the breaker's shared OPEN state and
    /// votes, so instances that start later do not open from them.
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

    /// Back to CLOSED with an empty window and no backoff history. With shared state (feature
    /// `redis`) it also clears the breaker's shared OPEN state and votes, even when the breaker
    /// was already CLOSED.
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Transitions> {
        self.inner
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the time-driven transition that is due for the word `w`, if any.
    pub(crate) fn check_deadlines(&self, w: u64) {
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

    // ---- transitions ----

    /// CLOSED → OPEN for `cause`, if the breaker is still in the CLOSED of `epoch`.
    pub(crate) fn trip(&self, epoch: u32, cause: Cause) {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        if state::epoch(w) == epoch && State::from_bits(w) == State::Closed {
            self.transition_locked(&mut g, w, State::Open, cause, None);
        }
    }

    /// HALF_OPEN → `to` for `cause`, if the breaker is still in the HALF_OPEN of `epoch`.
    pub(crate) fn conclude_probes(&self, epoch: u32, to: State, cause: Cause) {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        if state::epoch(w) == epoch && State::from_bits(w) == State::HalfOpen {
            self.transition_locked(&mut g, w, to, cause, None);
        }
    }

    pub(crate) fn wait_elapsed(&self, epoch: u32) {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        if state::epoch(w) == epoch
            && State::from_bits(w) == State::Open
            && self.inner.clock.now() >= self.inner.open_until.load(Ordering::Acquire)
        {
            self.transition_locked(&mut g, w, State::HalfOpen, Cause::WaitElapsed, None);
        }
    }

    pub(crate) fn half_open_timeout(&self, epoch: u32) {
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

    fn transition_locked(
        &self,
        g: &mut Transitions,
        w: u64,
        to: State,
        cause: Cause,
        remote: Option<Remote<'_>>,
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
                open_wait = match remote {
                    // Another instance's opening: what is left of its wait, jittered as this
                    // breaker's own waits are (so followers do not all probe at once). It is
                    // not this breaker's opening: its backoff level stays.
                    Some(r) => jittered(r.wait, cfg.jitter),
                    None => {
                        let wait = jittered(cfg.open_wait(g.opened_in_a_row), cfg.jitter);
                        g.opened_in_a_row = g.opened_in_a_row.saturating_add(1);
                        wait
                    }
                };
                let until = now.saturating_add(duration_nanos(open_wait));
                inner.open_until.store(until, Ordering::Release);
                timer = Some(until);
            }
            State::HalfOpen => {
                // The cycle's number of probes, before its permits (a probe that sees the
                // permits of this cycle sees its number).
                inner
                    .cycle_probes
                    .store(cfg.permitted_calls_in_half_open, Ordering::Release);
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
                        flags |= state::RAMP;
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
        if let Some(hook) = inner.hook.get() {
            hook.on_transition(
                self,
                &Transition {
                    epoch,
                    to,
                    cause,
                    open_wait,
                    token: remote.map(|r| r.token),
                },
            );
        }
        let _ = (open_wait, remote);
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

    pub(crate) fn emit(&self, kind: EventKind) {
        let inner = &*self.inner;
        if !inner.listening.load(Ordering::Acquire) {
            return;
        }
        let Some(events) = inner.events.get() else {
            return;
        };
        let event = Event {
            breaker: inner.name.clone(),
            kind,
        };
        if events.send(event).is_err() {
            inner.listening.store(false, Ordering::Release);
            if events.receiver_count() > 0 {
                inner.listening.store(true, Ordering::Release);
            }
        }
    }
}

/// An opening learnt from another instance (feature `redis`): what is left of its wait, and
/// the token that names it in Redis.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Remote<'a> {
    pub(crate) wait: Duration,
    pub(crate) token: &'a str,
}

fn jittered(wait: Duration, factor: f64) -> Duration {
    if factor <= 0.0 {
        return wait;
    }
    let r: f64 = rand::random_range(-factor..=factor);
    wait.mul_f64(1.0 + r)
}

// ---- the transition hook (feature `redis`) ----

/// A transition the breaker just made, as its [`TransitionHook`] sees it.
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transition<'a> {
    /// The epoch the transition entered: the breaker is still in that state while
    /// [`CircuitBreaker::in_epoch`] says so.
    pub(crate) epoch: u32,
    pub(crate) to: State,
    pub(crate) cause: Cause,
    /// The OPEN wait, for a transition to OPEN (zero otherwise).
    pub(crate) open_wait: Duration,
    /// The token of the shared opening followed, for a transition to OPEN caused by another
    /// instance ([`Cause::Remote`]).
    pub(crate) token: Option<&'a str>,
}

/// Told of every transition of the breaker it is set on, under the breaker's transition lock
/// (so it must not block: it spawns what it has to do). With [`CircuitBreaker::open_remote`]
/// it may open the breaker for others.
#[cfg(feature = "redis")]
pub(crate) trait TransitionHook: Send + Sync + 'static {
    fn on_transition(&self, breaker: &CircuitBreaker, transition: &Transition<'_>);
}

/// A handle on a breaker that does not keep it alive.
#[cfg(feature = "redis")]
#[derive(Clone)]
pub(crate) struct WeakBreaker(std::sync::Weak<Inner>);

#[cfg(feature = "redis")]
impl WeakBreaker {
    pub(crate) fn upgrade(&self) -> Option<CircuitBreaker> {
        self.0.upgrade().map(|inner| CircuitBreaker { inner })
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

#[cfg(feature = "redis")]
impl CircuitBreaker {
    /// Sets the breaker's hook; `false` if it already has one (a breaker has one at most).
    pub(crate) fn set_hook(&self, hook: Box<dyn TransitionHook>) -> bool {
        self.inner.hook.set(hook).is_ok()
    }

    pub(crate) fn downgrade(&self) -> WeakBreaker {
        WeakBreaker(Arc::downgrade(&self.inner))
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// `true` while the breaker is still in the state that transition `epoch` entered.
    pub(crate) fn in_epoch(&self, epoch: u32) -> bool {
        state::epoch(self.inner.word.load(Ordering::Acquire)) == epoch
    }

    /// Opens because another instance did; `wait` is what is left of its OPEN wait (jittered
    /// here like the breaker's own waits), `token` names that opening in Redis. Only a CLOSED
    /// or HALF_OPEN breaker follows (manual states win). `true` if it opened.
    pub(crate) fn open_remote(&self, wait: Duration, token: &str) -> bool {
        let mut g = self.lock();
        let w = self.inner.word.load(Ordering::Acquire);
        match State::from_bits(w) {
            State::Closed | State::HalfOpen if !wait.is_zero() => {
                let remote = Remote { wait, token };
                self.transition_locked(&mut g, w, State::Open, Cause::Remote, Some(remote));
                true
            }
            _ => false,
        }
    }
}
