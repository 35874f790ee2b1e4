//! Calls: admission and recording, the breaker's hot path.
//!
//! Admitting a call in CLOSED is one atomic load; recording a success into a clean window is
//! another. Everything else (failures, OPEN, HALF_OPEN, the ramp-up) takes the cold paths
//! below, still lock-free; a threshold reached asks the state machine ([`crate::breaker`]) for
//! a transition.

use std::sync::atomic::Ordering;

use omega_core::Nanos;

use crate::breaker::{CircuitBreaker, NEVER};
use crate::classify::Outcome;
use crate::error::{CircuitOpen, NO_RETRY};
use crate::event::{Cause, EventKind};
use crate::settings::SlidingWindow;
use crate::state::{self, CLEAN, Probes, RAMP, STATE_MASK, State};
use crate::window::Window;

/// A call's start time when slow calls are not measured.
const NOT_TIMED: Nanos = u64::MAX;

// What a permit carries: the epoch it was admitted in and its kind, packed in one word (a
// byte-sized enum next to a word-sized load costs a store-forwarding stall on the hot path),
// and the start time when slow calls are measured.
pub(crate) const UNTRACKED: u64 = 0;
const WINDOW: u64 = 1;
const PROBE: u64 = 2;

/// What a permit remembers of its admission.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    pub(crate) tag: u64,
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

    /// The refusal that every call would get now, if every call would be refused: OPEN before
    /// its wait is over, FORCED_OPEN, HALF_OPEN with every probe out. Counted as a rejection.
    /// `None` when a call might be admitted (CLOSED, ramping up, an OPEN wait that is over,
    /// HALF_OPEN with a permit left, ...). The layer's `poll_ready` asks it, so that a service
    /// that will refuse answers ready at once.
    #[inline]
    pub(crate) fn refusal_for_all(&self) -> Option<CircuitOpen> {
        let w = self.inner.word.load(Ordering::Acquire);
        if w & (STATE_MASK | RAMP) == 0 {
            return None;
        }
        self.refusal_for_all_slow(w)
    }

    #[cold]
    fn refusal_for_all_slow(&self, w: u64) -> Option<CircuitOpen> {
        let inner = &*self.inner;
        match State::from_bits(w) {
            State::Open => {
                let now = inner.clock.now();
                let until = inner.open_until.load(Ordering::Acquire);
                (now < until).then(|| self.reject(State::Open, until - now))
            }
            State::ForcedOpen => Some(self.reject(State::ForcedOpen, NO_RETRY)),
            State::HalfOpen => {
                let hu = inner.half_open_until.load(Ordering::Acquire);
                let p = Probes::unpack(inner.probes.load(Ordering::Acquire));
                let full = p.same_epoch(state::epoch(w)) && p.left == 0;
                (full && (hu == NEVER || inner.clock.now() < hu))
                    .then(|| self.reject(State::HalfOpen, NO_RETRY))
            }
            State::Closed | State::Disabled | State::MetricsOnly => None,
        }
    }

    // ---- admission ----

    #[inline]
    pub(crate) fn admit(&self) -> Result<Ticket, CircuitOpen> {
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
                                return Err(self.reject(State::HalfOpen, NO_RETRY));
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
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen, NO_RETRY)),
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

    // ---- recording ----

    #[inline]
    pub(crate) fn complete(&self, t: Ticket, outcome: Outcome) {
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
        // The cycle's own number of probes (it may differ from the configuration's, changed
        // since the cycle began): same epoch, so the number stored before its permits.
        let n = inner.cycle_probes.load(Ordering::Acquire);
        let opens = match cfg.window {
            SlidingWindow::ConsecutiveFailures(_) => p.failed + p.slow > 0,
            _ => cfg
                .exceeded(u64::from(n), u64::from(p.failed), u64::from(p.slow))
                .is_some(),
        };
        if opens {
            self.conclude_probes(t.epoch(), State::Open, Cause::ProbesFailed);
        } else if p.done >= n {
            self.conclude_probes(t.epoch(), State::Closed, Cause::ProbesSucceeded);
        }
    }

    /// A permit dropped without an outcome: a HALF_OPEN probe gives its permit back.
    #[inline]
    pub(crate) fn release(&self, t: Ticket) {
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
}
