//! The model: aggregates, their ids, and the commands sent to them.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use omega_core::reject::BoxError;

/// An event-sourced aggregate: a state built by applying events in order, and a decision
/// function that turns a command into new events (or a domain error).
///
/// The state is what snapshots store, so it is serializable; `Default` is the state before the
/// first event. `apply` must be deterministic and infallible: the same events always give the
/// same state, which is what lets a snapshot stand in for a replay.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use omega_snapshot::Aggregate;
///
/// #[derive(Clone, Default, Serialize, Deserialize)]
/// struct Counter { value: i64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum Event { Added(i64) }
///
/// #[derive(Debug)]
/// struct Negative;
/// impl std::fmt::Display for Negative {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("would go negative") }
/// }
/// impl std::error::Error for Negative {}
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = i64;
///     type Event = Event;
///     type Error = Negative;
///
///     fn apply(&mut self, Event::Added(n): &Event) { self.value += n; }
///
///     fn decide(&self, add: &i64) -> Result<Vec<Event>, Negative> {
///         if self.value + add < 0 { return Err(Negative); }
///         Ok(vec![Event::Added(*add)])
///     }
/// }
/// ```
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate type's name (`"account"`): part of every stored key, so two aggregate
    /// types never share a stream. Letters, digits, `_`, `-` and `.` only.
    const TYPE: &'static str;

    /// The schema version of the state as snapshots store it. Raise it when the state's
    /// serialized shape changes: older snapshots are then upcast by
    /// [`Aggregate::upcast_snapshot`] or skipped (the state is rebuilt from events).
    const SNAPSHOT_SCHEMA: u32 = 1;

    /// The schema version of events as they are written. Older events are upcast by
    /// [`Aggregate::upcast_event`] when read.
    const EVENT_SCHEMA: u32 = 1;

    /// What the aggregate is asked to do.
    type Command: Send + Sync + 'static;

    /// What happened: appended to the event store, applied to the state.
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The domain's refusal of a command (insufficient funds, ...): the caller's answer, not
    /// a failure of the layer.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies one event to the state.
    fn apply(&mut self, event: &Self::Event);

    /// Decides which events a command produces in the current state.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Reads an event stored with an older schema (`old.schema() < EVENT_SCHEMA`).
    ///
    /// The default refuses: an event that cannot be read makes the aggregate fail to load
    /// (the event store is the source of truth; nothing is skipped silently).
    fn upcast_event(old: Old<'_>) -> Result<Self::Event, BoxError> {
        Err(old.unsupported("event"))
    }

    /// Reads a snapshot stored with an older state schema (`old.schema() < SNAPSHOT_SCHEMA`).
    ///
    /// The default (`None`) skips such snapshots: the state is rebuilt from an older snapshot
    /// or from the events, and a fresh snapshot is written.
    fn upcast_snapshot(old: Old<'_>) -> Option<Result<Self, BoxError>> {
        let _ = old;
        None
    }
}

/// Serialization formats for stored events and snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Format {
    /// JSON: readable, tolerant of added fields (`serde_json`).
    Json,
    /// A compact binary format (postcard): smaller and faster, not self-describing.
    Binary,
}

impl Format {
    pub(crate) fn id(self) -> u8 {
        match self {
            Format::Json => 1,
            Format::Binary => 2,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Format> {
        match id {
            1 => Some(Format::Json),
            2 => Some(Format::Binary),
            _ => None,
        }
    }

    /// The format's name (`"json"`, `"binary"`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Binary => "binary",
        }
    }

    pub(crate) fn encode<T: Serialize + ?Sized>(self, value: &T) -> omega_core::Result<Vec<u8>> {
        use omega_core::codec::Codec;
        match self {
            Format::Json => omega_core::codec::JsonCodec.encode(value),
            Format::Binary => omega_core::codec::BinaryCodec.encode(value),
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> omega_core::Result<T> {
        use omega_core::codec::Codec;
        match self {
            Format::Json => omega_core::codec::JsonCodec.decode(bytes),
            Format::Binary => omega_core::codec::BinaryCodec.decode(bytes),
        }
    }
}

/// An event or a snapshot stored with an older schema, handed to an upcaster.
#[derive(Debug, Clone, Copy)]
pub struct Old<'a> {
    pub(crate) schema: u32,
    pub(crate) format: Format,
    pub(crate) bytes: &'a [u8],
}

impl<'a> Old<'a> {
    /// The schema version it was stored with.
    pub fn schema(&self) -> u32 {
        self.schema
    }

    /// The format it was stored in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Decodes the bytes as `T` (the old type), in the format they were stored in.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, BoxError> {
        self.format.decode(self.bytes).map_err(Into::into)
    }

    /// The error an upcaster returns for a schema it does not know.
    pub fn unsupported(&self, what: &str) -> BoxError {
        format!("no upcaster for {what} schema {}", self.schema).into()
    }
}

/// The id of one aggregate (one event stream) within its type.
///
/// 1 to 200 bytes, no control characters. Clones share the string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateId(Arc<str>);

/// The longest aggregate id, in bytes.
pub const MAX_ID_LEN: usize = 200;

impl AggregateId {
    /// Checks and wraps an id.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidId> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(InvalidId::new(
                "aggregate id",
                id,
                format!("must be 1 to {MAX_ID_LEN} bytes"),
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(InvalidId::new(
                "aggregate id",
                id,
                "must not contain control characters".into(),
            ));
        }
        Ok(AggregateId(Arc::from(id)))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for AggregateId {
    type Error = InvalidId;
    fn try_from(s: &str) -> Result<Self, InvalidId> {
        AggregateId::new(s)
    }
}

impl TryFrom<String> for AggregateId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        AggregateId::new(s)
    }
}

impl fmt::Display for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AggregateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The id of one command: an append that carries it is applied at most once per aggregate,
/// however often it is retried (after a timeout, a lost connection, or by the client).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CommandId(Arc<str>);

/// The longest command id, in bytes.
pub const MAX_COMMAND_ID_LEN: usize = 128;

impl CommandId {
    /// A new random id (128 bits, as 32 hex digits).
    pub fn random() -> Self {
        let n: u128 = rand::random();
        CommandId(Arc::from(format!("{n:032x}")))
    }

    /// Checks and wraps an id chosen by the client (an `Idempotency-Key`, ...): 1 to 128
    /// bytes of visible ASCII.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidId> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_COMMAND_ID_LEN {
            return Err(InvalidId::new(
                "command id",
                id,
                format!("must be 1 to {MAX_COMMAND_ID_LEN} bytes"),
            ));
        }
        if !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidId::new(
                "command id",
                id,
                "must be visible ASCII".into(),
            ));
        }
        Ok(CommandId(Arc::from(id)))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The stream of one aggregate: its type and its id. Stores key everything by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamId {
    kind: &'static str,
    id: AggregateId,
}

impl StreamId {
    /// The stream of aggregate `id` of type `kind` ([`Aggregate::TYPE`]).
    pub fn new(kind: &'static str, id: AggregateId) -> Self {
        StreamId { kind, id }
    }

    /// The aggregate type.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The aggregate id.
    pub fn id(&self) -> &AggregateId {
        &self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// A command addressed to one aggregate, with its [`CommandId`]: the request that a
/// [`Snapshot`](crate::Snapshot) service takes.
#[derive(Debug, Clone)]
pub struct Envelope<C> {
    aggregate: AggregateId,
    id: CommandId,
    supplied: bool,
    command: C,
}

impl<C> Envelope<C> {
    /// `command` for `aggregate`, with a fresh random command id (retries of the append
    /// inside the layer still apply it at most once).
    pub fn new(aggregate: AggregateId, command: C) -> Self {
        Envelope {
            aggregate,
            id: CommandId::random(),
            supplied: false,
            command,
        }
    }

    /// `command` for `aggregate` with the client's command id: when the client sends the same
    /// command again (same id), the layer sees that it was applied and does not apply it again.
    /// This costs one store lookup per command; [`Envelope::new`] skips it.
    pub fn with_id(aggregate: AggregateId, id: CommandId, command: C) -> Self {
        Envelope {
            aggregate,
            id,
            supplied: true,
            command,
        }
    }

    /// The target aggregate.
    pub fn aggregate(&self) -> &AggregateId {
        &self.aggregate
    }

    /// The command id.
    pub fn command_id(&self) -> &CommandId {
        &self.id
    }

    /// `true` when the command id came from the client ([`Envelope::with_id`]).
    pub fn is_id_supplied(&self) -> bool {
        self.supplied
    }

    /// The command.
    pub fn command(&self) -> &C {
        &self.command
    }

    /// The command, consuming the envelope.
    pub fn into_command(self) -> C {
        self.command
    }
}

/// A request that carries a command for an aggregate: what a [`Snapshot`](crate::Snapshot)
/// service accepts. Implemented by [`Envelope`] and, with feature `http`, by
/// `http::Request<Envelope<C>>` (an HTTP request whose body was decoded into the command, so
/// that refusals can become HTTP responses with `.respond()`).
pub trait CommandRequest: Send + Sync + 'static {
    /// The command type.
    type Command;

    /// The envelope.
    fn envelope(&self) -> &Envelope<Self::Command>;
}

impl<C: Send + Sync + 'static> CommandRequest for Envelope<C> {
    type Command = C;

    fn envelope(&self) -> &Envelope<C> {
        self
    }
}

#[cfg(feature = "http")]
impl<C: Send + Sync + 'static> CommandRequest for ::http::Request<Envelope<C>> {
    type Command = C;

    fn envelope(&self) -> &Envelope<C> {
        self.body()
    }
}

/// An id that was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidId {
    what: &'static str,
    id: String,
    reason: String,
}

impl InvalidId {
    pub(crate) fn new(what: &'static str, id: &str, reason: String) -> Self {
        let mut shown: String = id.chars().take(40).collect();
        if shown.len() < id.len() {
            shown.push('…');
        }
        InvalidId {
            what,
            id: shown,
            reason,
        }
    }

    /// What was refused: `"aggregate id"` or `"command id"`.
    pub fn what(&self) -> &'static str {
        self.what
    }
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.id, self.reason)
    }
}

impl std::error::Error for InvalidId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(AggregateId::new("acct-1").is_ok());
        let e = AggregateId::new("").unwrap_err();
        assert!(e.to_string().contains("aggregate id"), "{e}");
        assert!(AggregateId::new("a\nb").is_err());
        assert!(AggregateId::new("x".repeat(201)).is_err());
        assert!(CommandId::new("key with space").is_err());
        assert!(CommandId::new("k-1").is_ok());
        assert_ne!(CommandId::random(), CommandId::random());
        assert_eq!(CommandId::random().as_str().len(), 32);
    }

    #[test]
    fn envelopes_know_who_chose_the_id() {
        let id = AggregateId::new("a").unwrap();
        assert!(!Envelope::new(id.clone(), ()).is_id_supplied());
        let e = Envelope::with_id(id, CommandId::new("k").unwrap(), 5);
        assert!(e.is_id_supplied());
        assert_eq!(e.command_id().as_str(), "k");
        assert_eq!(e.into_command(), 5);
    }
}
