//! The connection an operation runs on, and how redis-rs errors map onto ours.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use super::config::redact;
use crate::error::{Error, ErrorKind};

/// One node's multiplexed connection, as an operation sees it.
///
/// `Asking` sends `ASKING` right before each command, in the same write so that no other
/// request on the shared socket comes between them: the one-shot permission a node answering
/// `ASK` asks for (a slot being migrated to it).
#[derive(Clone)]
pub(crate) enum Conn {
    Plain(MultiplexedConnection),
    Asking(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Asking(c) => Box::pin(async move {
                let mut asking = redis::pipe();
                asking.cmd("ASKING").add_command(cmd.clone());
                let mut values = c.req_packed_commands(&asking, 1, 1).await?;
                values.pop().ok_or_else(|| no_reply("ASKING"))
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Asking(c) => Box::pin(async move {
                if pipeline.is_transaction() {
                    // A transaction is checked for redirects at EXEC: ASKING would be queued.
                    return Err(RedisError::from((
                        redis::ErrorKind::Client,
                        "a MULTI/EXEC pipeline on a slot being migrated cannot follow ASK; \
                         try again once the migration is over",
                    )));
                }
                let mut asking = redis::pipe();
                for cmd in pipeline.cmd_iter() {
                    asking.cmd("ASKING").add_command(cmd.clone());
                }
                let values = c
                    .req_packed_commands(&asking, 0, 2 * pipeline.len())
                    .await?;
                Ok(values
                    .into_iter()
                    .skip(1)
                    .step_by(2)
                    .skip(offset)
                    .take(count)
                    .collect())
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Plain(c) | Conn::Asking(c) => c.get_db(),
        }
    }
}

fn no_reply(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "no reply after", what.to_owned()))
}

/// Where a `MOVED` or `ASK` reply sends an operation.
#[derive(Debug)]
pub(crate) struct Redirect {
    pub(crate) ask: bool,
    pub(crate) slot: u16,
    pub(crate) addr: String,
}

/// The redirect in `e`, when every reply that would have run is a redirect, so that nothing
/// ran: `replies` is 1 for a command or a script, the number of commands for a pipeline, and
/// 0 for a `MULTI`/`EXEC` pipeline (any redirect aborts the whole transaction).
pub(crate) fn redirect_of(e: &RedisError, replies: usize) -> Option<Redirect> {
    let parse = |kind: Option<ServerErrorKind>, detail: Option<&str>| {
        let ask = match kind? {
            ServerErrorKind::Ask => true,
            ServerErrorKind::Moved => false,
            _ => return None,
        };
        let mut parts = detail?.split_ascii_whitespace();
        let slot = parts.next()?.parse().ok()?;
        let addr = parts.next()?.to_owned();
        Some(Redirect { ask, slot, addr })
    };
    match e.kind() {
        redis::ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) if replies == 1 => {
            let (addr, slot) = e.redirect_node()?;
            let ask = e.kind() == redis::ErrorKind::Server(ServerErrorKind::Ask);
            Some(Redirect {
                ask,
                slot,
                addr: addr.to_owned(),
            })
        }
        redis::ErrorKind::Server(_) if replies != 1 => {
            let errors = e.clone().into_server_errors()?;
            let mut redirects = errors.iter().map(|(_, se)| parse(se.kind(), se.details()));
            if replies == 0 {
                // EXECABORT: nothing ran; follow the first redirect.
                return redirects.flatten().next();
            }
            if errors.len() != replies {
                return None;
            }
            let first = redirects.next()??;
            redirects
                .all(|r| r.is_some_and(|r| r.addr == first.addr && r.ask == first.ask))
                .then_some(first)
        }
        _ => None,
    }
}

/// `true` when the connection that answered `e` must be replaced.
pub(crate) fn is_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

pub(crate) fn bad_url(url: &str, e: RedisError) -> Error {
    Error::new(ErrorKind::BadUrl, format!("{}: {e}", redact(url)))
}

/// Maps a redis-rs error onto our kinds: timeout vs refused vs protocol vs server.
pub(crate) fn map_error(e: RedisError) -> Error {
    use redis::ErrorKind as K;
    let kind = if e.is_connection_refusal() {
        ErrorKind::Refused
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connection_dropped() {
        ErrorKind::Disconnected
    } else {
        match e.kind() {
            K::Io => ErrorKind::Io,
            K::AuthenticationFailed => ErrorKind::Auth,
            K::Parse | K::UnexpectedReturnType | K::RESP3NotSupported => ErrorKind::Protocol,
            K::InvalidClientConfig => ErrorKind::BadUrl,
            K::ClusterConnectionNotFound => ErrorKind::Cluster,
            K::Server(
                ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::MasterDown,
            ) => ErrorKind::Cluster,
            K::Server(ServerErrorKind::NoPerm) => ErrorKind::Auth,
            _ => ErrorKind::Server,
        }
    };
    Error::new(kind, e.to_string()).with_source(e)
}
