//! Events: transitions and rejections, as a tokio broadcast stream.

use std::sync::Arc;

use crate::state::State;

/// Why a breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The failure rate of the window reached the threshold.
    FailureRate,
    /// The slow-call rate of the window reached the threshold.
    SlowCallRate,
    /// The configured number of failures in a row.
    ConsecutiveFailures,
    /// The OPEN wait elapsed.
    WaitElapsed,
    /// HALF_OPEN waited longer than its maximum for its probes.
    HalfOpenTimeout,
    /// The probes of HALF_OPEN succeeded.
    ProbesSucceeded,
    /// The probes of HALF_OPEN failed.
    ProbesFailed,
    /// A manual transition through the handle.
    Manual,
    /// Another instance opened the circuit (shared state through Redis).
    Remote,
}

/// What happened to a breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The breaker moved from one state to another.
    Transition {
        /// The state before.
        from: State,
        /// The state after.
        to: State,
        /// Why.
        cause: Cause,
    },
    /// A call was rejected.
    Rejected {
        /// The state that rejected it.
        state: State,
    },
    /// The configuration was changed while serving.
    Reconfigured,
}

/// An event of one breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// What happened.
    pub kind: EventKind,
}
