//! The command handler built from [`Aggregate::decide`].

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::aggregate::{Aggregate, CommandRequest};
use crate::service::{Decide, Decision};

/// The inner service for users who need none of their own: decides with
/// [`Aggregate::decide`] and answers `Ok(Accepted)` or the domain error.
pub struct Decider<A>(PhantomData<fn() -> A>);

impl<A> Decider<A> {
    /// The handler.
    pub fn new() -> Self {
        Decider(PhantomData)
    }
}

impl<A> Default for Decider<A> {
    fn default() -> Self {
        Decider::new()
    }
}

impl<A> Clone for Decider<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Decider<A> {}

impl<A> std::fmt::Debug for Decider<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decider")
    }
}

/// A command the aggregate accepted: the state and version after its events.
#[derive(Debug)]
pub struct Accepted<A> {
    state: Arc<A>,
    version: u64,
    events: usize,
    duplicate: bool,
}

impl<A> Clone for Accepted<A> {
    fn clone(&self) -> Self {
        Accepted {
            state: self.state.clone(),
            version: self.version,
            events: self.events,
            duplicate: self.duplicate,
        }
    }
}

impl<A> Accepted<A> {
    /// The state after the command's events.
    pub fn state(&self) -> &Arc<A> {
        &self.state
    }

    /// The version after the command's events.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many events the command appended (0 for a duplicate).
    pub fn events(&self) -> usize {
        self.events
    }

    /// `true` when the command had been applied before (same command id): nothing was
    /// appended now; [`Accepted::version`] is where it was applied, the state is the current one.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }
}

impl<A, Req> Service<Decide<A, Req>> for Decider<A>
where
    A: Aggregate,
    Req: CommandRequest<Command = A::Command>,
{
    type Response = Decision<A, Result<Accepted<A>, A::Error>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Decide<A, Req>) -> Self::Future {
        let state = req.state();
        if let Some(at) = req.already_applied() {
            return ready(Ok(Decision::reply(Ok(Accepted {
                state: state.clone(),
                version: at,
                events: 0,
                duplicate: true,
            }))));
        }
        ready(Ok(match state.decide(req.command()) {
            Err(e) => Decision::reply(Err(e)),
            Ok(events) if events.is_empty() => Decision::reply(Ok(Accepted {
                state: state.clone(),
                version: req.version(),
                events: 0,
                duplicate: false,
            })),
            Ok(events) => {
                let mut next = A::clone(state);
                for e in &events {
                    next.apply(e);
                }
                let next = Arc::new(next);
                let n = events.len();
                Decision {
                    events,
                    next: Some(next.clone()),
                    reply: Ok(Accepted {
                        state: next,
                        version: req.version() + n as u64,
                        events: n,
                        duplicate: false,
                    }),
                }
            }
        }))
    }
}
