//! The states of a breaker, and how one atomic word holds the state, its epoch and two flags.

use std::fmt;

/// The state of a circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls pass and their outcomes fill the sliding window.
    Closed,
    /// Calls are rejected with [`crate::CircuitOpen`] until the wait duration elapses.
    Open,
    /// A fixed number of probe calls pass; their outcomes decide between CLOSED and OPEN.
    HalfOpen,
    /// Every call passes and nothing is recorded (set by hand).
    Disabled,
    /// Every call is rejected until the breaker is moved out of it by hand.
    ForcedOpen,
    /// Every call passes; outcomes are recorded (health, metrics) but never open the circuit.
    MetricsOnly,
}

impl State {
    pub(crate) const fn bits(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::Disabled => 3,
            State::ForcedOpen => 4,
            State::MetricsOnly => 5,
        }
    }

    pub(crate) const fn from_bits(bits: u64) -> State {
        match bits & STATE_MASK {
            0 => State::Closed,
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::Disabled,
            4 => State::ForcedOpen,
            _ => State::MetricsOnly,
        }
    }

    /// The state's name in upper snake case, as resilience4j and the metrics write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
            State::Disabled => "DISABLED",
            State::ForcedOpen => "FORCED_OPEN",
            State::MetricsOnly => "METRICS_ONLY",
        }
    }

    /// `true` when calls are admitted without restriction (CLOSED, DISABLED, METRICS_ONLY).
    pub const fn admits_all(self) -> bool {
        matches!(self, State::Closed | State::Disabled | State::MetricsOnly)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// The state word: bits 0-2 the state, bit 3 CLEAN (the window holds no failure and no slow
// call, and a success would not change it: the CLOSED success path then writes nothing),
// bit 4 RAMP (CLOSED, but still ramping admitted traffic up), bits 32-63 the epoch, bumped by
// every transition (results of calls admitted in an earlier epoch are ignored).
pub(crate) const STATE_MASK: u64 = 0b111;
pub(crate) const CLEAN: u64 = 1 << 3;
pub(crate) const RAMP: u64 = 1 << 4;
const EPOCH_SHIFT: u32 = 32;

#[inline]
pub(crate) const fn epoch(word: u64) -> u32 {
    (word >> EPOCH_SHIFT) as u32
}

#[inline]
pub(crate) const fn pack(epoch: u32, state: State, flags: u64) -> u64 {
    ((epoch as u64) << EPOCH_SHIFT) | state.bits() | flags
}

// The HALF_OPEN word: bits 40-63 the low 24 bits of the epoch, then four 10-bit fields:
// permits left (30-39), completed probes (20-29), failed (10-19), slow (0-9).
pub(crate) const MAX_PROBES: u32 = 1023;
const F: u32 = 10;
const FIELD: u64 = (1 << F) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probes {
    pub(crate) epoch: u32,
    pub(crate) left: u32,
    pub(crate) done: u32,
    pub(crate) failed: u32,
    pub(crate) slow: u32,
}

impl Probes {
    pub(crate) fn pack(self) -> u64 {
        ((u64::from(self.epoch) & 0xFF_FFFF) << 40)
            | (u64::from(self.left) << (3 * F))
            | (u64::from(self.done) << (2 * F))
            | (u64::from(self.failed) << F)
            | u64::from(self.slow)
    }

    pub(crate) fn unpack(w: u64) -> Probes {
        Probes {
            epoch: (w >> 40) as u32,
            left: ((w >> (3 * F)) & FIELD) as u32,
            done: ((w >> (2 * F)) & FIELD) as u32,
            failed: ((w >> F) & FIELD) as u32,
            slow: (w & FIELD) as u32,
        }
    }

    pub(crate) fn same_epoch(&self, epoch: u32) -> bool {
        self.epoch == epoch & 0xFF_FFFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::Disabled,
            State::ForcedOpen,
            State::MetricsOnly,
        ] {
            let w = pack(u32::MAX - 3, s, CLEAN);
            assert_eq!(State::from_bits(w), s);
            assert_eq!(epoch(w), u32::MAX - 3);
            assert_ne!(w & CLEAN, 0);
            assert_eq!(w & RAMP, 0);
        }
        let p = Probes {
            epoch: 0x1234_5678,
            left: 1023,
            done: 5,
            failed: 4,
            slow: 1023,
        };
        let q = Probes::unpack(p.pack());
        assert!(q.same_epoch(0x1234_5678));
        assert_eq!((q.left, q.done, q.failed, q.slow), (1023, 5, 4, 1023));
    }
}
