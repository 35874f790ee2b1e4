//! Errors: the stores' error, the layer's typed refusals, configuration errors.

use std::fmt;
use std::time::Duration;

use omega_core::reject::{BoxError, Refusal, grpc};

use crate::aggregate::AggregateId;

/// gRPC `INTERNAL` (13).
const GRPC_INTERNAL: u16 = 13;

/// What kind of failure a [`StoreError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The stream was not at the expected version.
    Conflict,
    /// The store could not be reached; nothing was done.
    Unavailable,
    /// The operation may or may not have been applied (a timeout, a connection lost in flight).
    OutcomeUnknown,
    /// Stored data is damaged or unreadable.
    Corrupt,
    /// Any other failure of the backend (a refused statement, an I/O error, ...).
    Backend,
}

/// A failure of an [`EventStore`](crate::EventStore) or [`SnapshotStore`](crate::SnapshotStore).
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    detail: String,
    actual: Option<u64>,
    source: Option<BoxError>,
}

impl StoreError {
    /// The stream was at `actual`, not at `expected`.
    pub fn conflict(expected: u64, actual: u64) -> Self {
        StoreError {
            kind: StoreErrorKind::Conflict,
            detail: format!("expected version {expected}, the stream is at {actual}"),
            actual: Some(actual),
            source: None,
        }
    }

    /// The store could not be reached; nothing was done.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::with(StoreErrorKind::Unavailable, source)
    }

    /// The outcome of a write is unknown.
    pub fn outcome_unknown(source: impl Into<BoxError>) -> Self {
        Self::with(StoreErrorKind::OutcomeUnknown, source)
    }

    /// Stored data is damaged.
    pub fn corrupt(detail: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Corrupt,
            detail: detail.into(),
            actual: None,
            source: None,
        }
    }

    /// Any other backend failure.
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Self::with(StoreErrorKind::Backend, source)
    }

    fn with(kind: StoreErrorKind, source: impl Into<BoxError>) -> Self {
        let source = source.into();
        StoreError {
            kind,
            detail: source.to_string(),
            actual: None,
            source: Some(source),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// For a conflict, the version the stream was at.
    pub fn actual_version(&self) -> Option<u64> {
        self.actual
    }

    /// `true` for [`StoreErrorKind::Conflict`].
    pub fn is_conflict(&self) -> bool {
        self.kind == StoreErrorKind::Conflict
    }

    /// `true` for [`StoreErrorKind::OutcomeUnknown`].
    pub fn is_outcome_unknown(&self) -> bool {
        self.kind == StoreErrorKind::OutcomeUnknown
    }
}

#[cfg(feature = "redis")]
impl From<omega_core::Error> for StoreError {
    fn from(e: omega_core::Error) -> Self {
        if e.outcome_unknown() {
            StoreError::outcome_unknown(e)
        } else if e.is_unreachable() {
            StoreError::unavailable(e)
        } else {
            StoreError::backend(e)
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StoreErrorKind::Conflict => "version conflict",
            StoreErrorKind::Unavailable => "store unavailable",
            StoreErrorKind::OutcomeUnknown => "outcome unknown",
            StoreErrorKind::Corrupt => "corrupt data",
            StoreErrorKind::Backend => "store error",
        };
        write!(f, "{what}: {}", self.detail)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A command kept conflicting with concurrent writers after every retry (HTTP 409, gRPC
/// `ABORTED`). Nothing was appended; the client may send it again.
#[derive(Debug, Clone)]
pub struct ConcurrencyConflict {
    pub(crate) aggregate: AggregateId,
    pub(crate) attempts: u32,
}

impl ConcurrencyConflict {
    /// The aggregate.
    pub fn aggregate(&self) -> &AggregateId {
        &self.aggregate
    }

    /// How many times the command was decided and appended.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for ConcurrencyConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aggregate {:?}: concurrent writers conflicted on all {} attempts",
            self.aggregate.as_str(),
            self.attempts
        )
    }
}

impl std::error::Error for ConcurrencyConflict {}

impl Refusal for ConcurrencyConflict {
    fn status(&self) -> u16 {
        409
    }

    fn grpc_code(&self) -> u16 {
        grpc::ABORTED
    }
}

/// The store could not be reached, or did not answer in time (HTTP 503 with `Retry-After`,
/// gRPC `UNAVAILABLE`).
///
/// When [`StoreUnavailable::outcome_unknown`] is `true`, the command may have been applied:
/// sending it again with the same command id ([`Envelope::with_id`](crate::Envelope::with_id))
/// is safe, it is never applied twice.
#[derive(Debug)]
pub struct StoreUnavailable {
    pub(crate) aggregate: AggregateId,
    pub(crate) outcome_unknown: bool,
    pub(crate) source: StoreError,
}

impl StoreUnavailable {
    /// The aggregate.
    pub fn aggregate(&self) -> &AggregateId {
        &self.aggregate
    }

    /// `true` when an append was sent and its outcome is unknown.
    pub fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    /// The store's error.
    pub fn store_error(&self) -> &StoreError {
        &self.source
    }
}

impl fmt::Display for StoreUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "aggregate {:?}: store unavailable ({})",
            self.aggregate.as_str(),
            self.source
        )?;
        if self.outcome_unknown {
            f.write_str("; the command may have been applied, retry it with the same command id")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Refusal for StoreUnavailable {
    fn status(&self) -> u16 {
        503
    }

    fn grpc_code(&self) -> u16 {
        grpc::UNAVAILABLE
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}

/// The aggregate could not be rebuilt: an event could not be read (corrupt, an unknown newer
/// schema, or an upcaster failed), or a store answered with an error other than
/// unavailability (HTTP 500, gRPC `INTERNAL`). Snapshots never cause it: an unusable snapshot
/// falls back to an older one or to a full replay.
#[derive(Debug)]
pub struct RehydrationFailed {
    pub(crate) aggregate: AggregateId,
    pub(crate) version: Option<u64>,
    pub(crate) detail: String,
    pub(crate) source: Option<BoxError>,
}

impl RehydrationFailed {
    /// The aggregate.
    pub fn aggregate(&self) -> &AggregateId {
        &self.aggregate
    }

    /// The version of the event that could not be read, when one could not.
    pub fn version(&self) -> Option<u64> {
        self.version
    }
}

impl fmt::Display for RehydrationFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "aggregate {:?}: ", self.aggregate.as_str())?;
        if let Some(v) = self.version {
            write!(f, "event {v}: ")?;
        }
        f.write_str(&self.detail)
    }
}

impl std::error::Error for RehydrationFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Refusal for RehydrationFailed {
    fn status(&self) -> u16 {
        500
    }

    fn grpc_code(&self) -> u16 {
        GRPC_INTERNAL
    }
}

/// Why a [`Repository`](crate::Repository) operation failed: one of the layer's refusals.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Conflicts outlasted the retries.
    Conflict(ConcurrencyConflict),
    /// The store could not be reached.
    Unavailable(StoreUnavailable),
    /// The aggregate could not be rebuilt from its events.
    Rehydration(RehydrationFailed),
}

impl Error {
    pub(crate) fn from_store(aggregate: &AggregateId, e: StoreError, sent: bool) -> Error {
        match e.kind() {
            StoreErrorKind::Unavailable | StoreErrorKind::OutcomeUnknown => {
                Error::Unavailable(StoreUnavailable {
                    aggregate: aggregate.clone(),
                    outcome_unknown: sent && e.is_outcome_unknown(),
                    source: e,
                })
            }
            _ => Error::Rehydration(RehydrationFailed {
                aggregate: aggregate.clone(),
                version: None,
                detail: e.to_string(),
                source: Some(Box::new(e)),
            }),
        }
    }

    /// The refusal as a `&dyn Refusal` (its HTTP status, gRPC code, ...).
    pub fn as_refusal(&self) -> &dyn Refusal {
        match self {
            Error::Conflict(e) => e,
            Error::Unavailable(e) => e,
            Error::Rehydration(e) => e,
        }
    }

    /// The refusal, boxed (what services with [`KeepError`](crate::KeepError) fail with).
    pub fn into_box(self) -> BoxError {
        match self {
            Error::Conflict(e) => Box::new(e),
            Error::Unavailable(e) => Box::new(e),
            Error::Rehydration(e) => Box::new(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Conflict(e) => e.fmt(f),
            Error::Unavailable(e) => e.fmt(f),
            Error::Rehydration(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(match self {
            Error::Conflict(e) => e,
            Error::Unavailable(e) => e,
            Error::Rehydration(e) => e,
        })
    }
}

/// Finds this crate's refusal in a boxed service error, as a `&dyn Refusal` (for example to
/// answer with its HTTP status in a handler).
pub fn as_refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a dyn Refusal> {
    if let Some(e) = err.downcast_ref::<ConcurrencyConflict>() {
        return Some(e);
    }
    if let Some(e) = err.downcast_ref::<StoreUnavailable>() {
        return Some(e);
    }
    if let Some(e) = err.downcast_ref::<RehydrationFailed>() {
        return Some(e);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_statuses() {
        let id = AggregateId::new("a").unwrap();
        let c = ConcurrencyConflict {
            aggregate: id.clone(),
            attempts: 3,
        };
        assert_eq!((c.status(), c.grpc_code()), (409, grpc::ABORTED));
        let u = Error::from_store(&id, StoreError::outcome_unknown("timed out"), true);
        assert_eq!(u.as_refusal().status(), 503);
        assert!(u.to_string().contains("same command id"), "{u}");
        let r = Error::from_store(&id, StoreError::corrupt("bad"), false);
        assert_eq!(r.as_refusal().status(), 500);
        let boxed = r.into_box();
        assert!(as_refusal(&*boxed).is_some());
        assert!(boxed.is::<RehydrationFailed>());
    }

    #[test]
    fn conflict_carries_the_actual_version() {
        let e = StoreError::conflict(3, 5);
        assert!(e.is_conflict());
        assert_eq!(e.actual_version(), Some(5));
        assert_eq!(
            e.to_string(),
            "version conflict: expected version 3, the stream is at 5"
        );
    }
}
