//! Idle keep-alive connections to nodes, one list per worker thread and node, shared by the
//! gateway's two HTTP/1.1 clients ([`crate::wire`] and [`crate::pool`]).
//!
//! Each worker thread serves its connections on its own single-threaded runtime, so each
//! keeps its own lists: taking a connection is an uncontended lock and a look at the end of a
//! short list. The most recently parked connection is taken first (the fewest stay warm). A
//! connection waits at most 60 s (`IDLE`) and is dropped when a later look finds it expired;
//! at most 64 (`MAX_IDLE`) are kept per node and thread. Opening a connection is here too.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::uri::Authority;
use tokio::net::TcpStream;

/// How long a connection may wait unused before it is closed.
const IDLE: Duration = Duration::from_secs(60);

/// The most connections kept per node and worker thread.
const MAX_IDLE: usize = 64;

/// What a parked connection can do now.
pub(crate) enum Usable {
    /// Take it.
    Ready,
    /// Keep it parked: it is still finishing its last exchange.
    Busy,
    /// Drop it: the node closed it, or it broke.
    Closed,
}

struct Parked<C> {
    conn: C,
    since: Instant,
}

/// Each worker's lists, by the node's authority as written in its URL. `Authority`'s own
/// `Hash` lowercases and hashes byte by byte: with the default SipHash that was 5% of
/// a proxied request's instructions (a `take` and a `park` each).
type Lists<C> = HashMap<Box<str>, Vec<Parked<C>>, foldhash::fast::RandomState>;

/// Idle connections of type `C`, per worker thread and node.
pub(crate) struct IdleLists<C: Send> {
    lists: thread_local::ThreadLocal<Mutex<Lists<C>>>,
}

impl<C: Send> Default for IdleLists<C> {
    fn default() -> Self {
        IdleLists {
            lists: thread_local::ThreadLocal::new(),
        }
    }
}

impl<C: Send> IdleLists<C> {
    fn lists(&self) -> MutexGuard<'_, Lists<C>> {
        self.lists
            .get_or_default()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently parked connection to `authority` that `usable` says is ready;
    /// expired ones and those it says are closed are dropped on the way.
    pub(crate) fn take(
        &self,
        authority: &Authority,
        mut usable: impl FnMut(&mut C) -> Usable,
    ) -> Option<C> {
        let mut lists = self.lists();
        let list = lists.get_mut(authority.as_str())?;
        let now = Instant::now();
        // From the end down: what `swap_remove` brings into place was looked at already.
        for i in (0..list.len()).rev() {
            let state = if now.duration_since(list[i].since) < IDLE {
                usable(&mut list[i].conn)
            } else {
                Usable::Closed
            };
            match state {
                Usable::Ready => return Some(list.swap_remove(i).conn),
                Usable::Busy => {}
                Usable::Closed => drop(list.swap_remove(i)),
            }
        }
        None
    }

    /// Keeps `conn` for a later request to `authority`, unless the list is full.
    pub(crate) fn park(&self, authority: &Authority, conn: C) {
        let mut lists = self.lists();
        let list = match lists.get_mut(authority.as_str()) {
            Some(list) => list,
            None => lists.entry(authority.as_str().into()).or_default(),
        };
        if list.len() < MAX_IDLE {
            list.push(Parked {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// A new TCP connection to `authority` (port 80 when it names none) within `timeout`, with
/// `TCP_NODELAY` set: each part of a message goes out as soon as it is written.
pub(crate) async fn open(authority: &Authority, timeout: Duration) -> std::io::Result<TcpStream> {
    let port = authority.port_u16().unwrap_or(80);
    // An IPv6 literal comes in brackets.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
