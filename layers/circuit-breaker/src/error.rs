//! The errors of the breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use omega_core::reject::{Refusal, grpc};

use crate::state::State;

/// A call was rejected because the circuit is open (or in HALF_OPEN with every probe taken,
/// FORCED_OPEN, or ramping up after closing).
///
/// It is a [`Refusal`]: 503 Service Unavailable, gRPC `UNAVAILABLE`, and `Retry-After` the time
/// to the next probe when it is known. Services built by [`crate::CircuitBreakerLayer`] return
/// it boxed in a `BoxError` by default ([`omega_core::reject::KeepError`]); downcast to read it:
///
/// ```
/// use omega_circuit_breaker::CircuitOpen;
///
/// fn is_open(err: &(dyn std::error::Error + 'static)) -> bool {
///     err.downcast_ref::<CircuitOpen>().is_some()
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    pub(crate) breaker: Name,
    pub(crate) state: State,
    /// Nanoseconds until the next probe; `NO_RETRY` when unknown. Kept raw: a rejection makes
    /// no `Duration` unless asked.
    pub(crate) retry_nanos: u64,
}

/// `CircuitOpen::retry_nanos` when the time to the next probe is not known.
pub(crate) const NO_RETRY: u64 = u64::MAX;

impl CircuitOpen {
    /// The name of the breaker that rejected the call.
    pub fn breaker(&self) -> &str {
        self.breaker.as_str()
    }

    /// The state the breaker was in.
    pub fn state(&self) -> State {
        self.state
    }

    /// The time until the breaker lets the next probe through, when known (OPEN). `None` in
    /// FORCED_OPEN, or in HALF_OPEN while every probe is out.
    pub fn retry_after(&self) -> Option<Duration> {
        (self.retry_nanos != NO_RETRY).then(|| Duration::from_nanos(self.retry_nanos))
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit {:?} is {}", self.breaker.as_str(), self.state)?;
        if let Some(after) = self.retry_after() {
            write!(f, "; next probe in {after:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitOpen {}

impl Refusal for CircuitOpen {
    fn status(&self) -> u16 {
        503
    }

    fn grpc_code(&self) -> u16 {
        grpc::UNAVAILABLE
    }

    fn retry_after(&self) -> Option<Duration> {
        CircuitOpen::retry_after(self)
    }
}

/// A breaker's name as a rejection carries it: short names are copied inline (an aligned
/// 32-byte block), so a rejection touches no reference count; long ones share the breaker's
/// allocation.
#[derive(Clone)]
pub(crate) enum Name {
    Inline(InlineName),
    Shared(Arc<str>),
}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
pub(crate) struct InlineName {
    bytes: [u8; INLINE],
    len: u8,
}

const INLINE: usize = 31;

impl Name {
    pub(crate) fn new(name: &Arc<str>) -> Name {
        let src = name.as_bytes();
        if src.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..src.len()].copy_from_slice(src);
            Name::Inline(InlineName {
                bytes,
                len: src.len() as u8,
            })
        } else {
            Name::Shared(name.clone())
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Name::Inline(n) => {
                std::str::from_utf8(&n.bytes[..usize::from(n.len)]).unwrap_or_default()
            }
            Name::Shared(s) => s,
        }
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The error of [`crate::CircuitBreaker::call`]: the breaker rejected the call, or the call
/// itself failed.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError<E> {
    /// The circuit did not admit the call; the future was not polled.
    Rejected(CircuitOpen),
    /// The call ran and returned this error.
    Inner(E),
}

impl<E> CallError<E> {
    /// The inner error, if the call ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CallError::Inner(e) => Some(e),
            CallError::Rejected(_) => None,
        }
    }

    /// `true` when the breaker rejected the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, CallError::Rejected(_))
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected(open) => open.fmt(f),
            CallError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Rejected(open) => Some(open),
            CallError::Inner(e) => Some(e),
        }
    }
}

/// A configuration was refused; the message names the bad value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        ConfigError(msg.into())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(feature = "grpc")]
impl From<CircuitOpen> for tonic::Status {
    fn from(open: CircuitOpen) -> Self {
        tonic::Status::unavailable(open.to_string())
    }
}
