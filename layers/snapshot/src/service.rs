//! The service: load, decide (the inner service), append with optimistic concurrency, apply.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use omega_core::reject::{KeepError, OnRejection};
use tower_service::Service;

use crate::aggregate::{Aggregate, AggregateId, CommandId, CommandRequest, StreamId};
use crate::error::{ConcurrencyConflict, Error, StoreError};
use crate::event::{self, SnapshotEvent};
use crate::future::ResponseFuture;
use crate::repository::{Inner, Repository};
use crate::store::{Appended, NewEvent};

/// How often an append whose outcome is unknown is sent again (same command id).
const UNKNOWN_RETRIES: u32 = 3;

/// What the inner service is asked: decide what `request`'s command does to `state`.
///
/// The inner service may be asked several times for one request (after a version conflict,
/// with the newer state): deciding must have no side effects beyond its answer.
pub struct Decide<A, Req> {
    request: Arc<Req>,
    state: Arc<A>,
    version: u64,
    applied: Option<u64>,
}

impl<A, Req> std::fmt::Debug for Decide<A, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decide")
            .field("version", &self.version)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate, Req: CommandRequest<Command = A::Command>> Decide<A, Req> {
    /// The request as the layer received it.
    pub fn request(&self) -> &Req {
        &self.request
    }

    /// The command.
    pub fn command(&self) -> &A::Command {
        self.request.envelope().command()
    }

    /// The aggregate's id.
    pub fn aggregate(&self) -> &AggregateId {
        self.request.envelope().aggregate()
    }

    /// The command's id.
    pub fn command_id(&self) -> &CommandId {
        self.request.envelope().command_id()
    }

    /// The aggregate's current state.
    pub fn state(&self) -> &Arc<A> {
        &self.state
    }

    /// The aggregate's current version (0: no events yet).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `Some(version)` when the command was already applied (its id was seen, ending at
    /// `version`): events returned now are ignored; answer as for the first time.
    pub fn already_applied(&self) -> Option<u64> {
        self.applied
    }
}

/// The inner service's answer: the events to append, and the reply for the caller (which
/// may carry a domain error, and then no events).
#[derive(Debug)]
pub struct Decision<A: Aggregate, R> {
    pub(crate) events: Vec<A::Event>,
    pub(crate) next: Option<Arc<A>>,
    pub(crate) reply: R,
}

impl<A: Aggregate, R> Decision<A, R> {
    /// Append `events`, then answer `reply`.
    pub fn new(events: Vec<A::Event>, reply: R) -> Self {
        Decision {
            events,
            next: None,
            reply,
        }
    }

    /// Append nothing, answer `reply` (a domain error, a query).
    pub fn reply(reply: R) -> Self {
        Decision::new(Vec::new(), reply)
    }

    /// The events.
    pub fn events(&self) -> &[A::Event] {
        &self.events
    }
}

/// The service [`SnapshotLayer`](crate::SnapshotLayer) builds around an aggregate command
/// handler `S`; see the [crate docs](crate).
pub struct Snapshot<S, A: Aggregate, R = KeepError> {
    inner: S,
    repo: Repository<A>,
    reject: R,
}

impl<S: Clone, A: Aggregate, R: Clone> Clone for Snapshot<S, A, R> {
    fn clone(&self) -> Self {
        Snapshot {
            inner: self.inner.clone(),
            repo: self.repo.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<S: std::fmt::Debug, A: Aggregate, R: std::fmt::Debug> std::fmt::Debug for Snapshot<S, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("inner", &self.inner)
            .field("repo", &self.repo)
            .field("reject", &self.reject)
            .finish()
    }
}

impl<S, A: Aggregate, R> Snapshot<S, A, R> {
    pub(crate) fn new(inner: S, repo: Repository<A>, reject: R) -> Self {
        Snapshot {
            inner,
            repo,
            reject,
        }
    }

    /// The repository.
    pub fn repository(&self) -> &Repository<A> {
        &self.repo
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, A, R, Req, Res> Service<Req> for Snapshot<S, A, R>
where
    A: Aggregate,
    Req: CommandRequest<Command = A::Command>,
    S: Service<Decide<A, Req>, Response = Decision<A, Res>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    Res: Send + 'static,
    R: OnRejection<Req, Res, S::Error>,
    R::Error: Send + 'static,
{
    type Response = Res;
    type Error = R::Error;
    type Future = ResponseFuture<Res, R::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(R::map_err)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The instance that was made ready serves this call; the clone serves the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let repo = self.repo.inner.clone();
        let reject = self.reject.clone();
        ResponseFuture::new(Box::pin(async move {
            let req = Arc::new(req);
            match execute(&repo, inner, req.clone()).await {
                Ok(res) => Ok(res),
                Err(Failed::Inner(e)) => Err(R::map_err(e)),
                Err(Failed::Refused(err)) => match err {
                    Error::Conflict(e) => reject.reject(&req, e),
                    Error::Unavailable(e) => reject.reject(&req, e),
                    Error::Rehydration(e) => reject.reject(&req, e),
                },
            }
        }))
    }
}

enum Failed<E> {
    Inner(E),
    Refused(Error),
}

impl<E> From<Error> for Failed<E> {
    fn from(e: Error) -> Self {
        Failed::Refused(e)
    }
}

async fn execute<S, A, Req, Res>(
    repo: &Inner<A>,
    mut inner: S,
    req: Arc<Req>,
) -> Result<Res, Failed<S::Error>>
where
    A: Aggregate,
    Req: CommandRequest<Command = A::Command>,
    S: Service<Decide<A, Req>, Response = Decision<A, Res>>,
{
    let env = req.envelope();
    let id = env.aggregate().clone();
    let stream = repo.stream(&id);
    let slot = repo.slot(&id);
    // Commands for one aggregate take turns in this process: they would only conflict.
    let mut guard = slot.lock().await;
    let mut ready = true;

    if env.is_id_supplied() {
        let applied = repo
            .events
            .applied(&stream, env.command_id())
            .await
            .map_err(|e| Error::from_store(&id, e, false))?;
        if let Some(at) = applied {
            event::count(A::TYPE, event::Counted::Duplicate);
            if guard.is_none() {
                let loaded = repo.rehydrate(&id).await?;
                *guard = Some(repo.after_load(&id, &loaded));
            }
            let hot = guard.as_ref().expect("loaded above");
            let decide = Decide {
                request: req.clone(),
                state: hot.state.clone(),
                version: hot.version,
                applied: Some(at),
            };
            let decision = inner.call(decide).await.map_err(Failed::Inner)?;
            return Ok(decision.reply);
        }
    }

    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if guard.is_none() {
            let loaded = repo.rehydrate(&id).await?;
            *guard = Some(repo.after_load(&id, &loaded));
        }
        let hot = guard.as_mut().expect("loaded above");
        if !ready {
            poll_fn(|cx| inner.poll_ready(cx))
                .await
                .map_err(Failed::Inner)?;
        }
        ready = false;
        let decide = Decide {
            request: req.clone(),
            state: hot.state.clone(),
            version: hot.version,
            applied: None,
        };
        let decision = inner.call(decide).await.map_err(Failed::Inner)?;
        if decision.events.is_empty() {
            return Ok(decision.reply);
        }
        let new = repo.encode_events(&id, &decision.events)?;
        match append(repo, &stream, hot.version, env.command_id(), &new).await {
            Ok(Appended::Appended { version }) if version == hot.version + new.len() as u64 => {
                match decision.next {
                    Some(next) => hot.state = next,
                    None => {
                        let state = Arc::make_mut(&mut hot.state);
                        for e in &decision.events {
                            state.apply(e);
                        }
                    }
                }
                hot.version = version;
                repo.maybe_snapshot(&id, hot);
                return Ok(decision.reply);
            }
            Ok(Appended::Appended { .. }) => {
                // A store that numbers differently: trust the store, load again next time.
                *guard = None;
                return Ok(decision.reply);
            }
            Ok(Appended::Duplicate { .. }) => {
                // An earlier attempt whose outcome was unknown landed after all (or another
                // process applied the same command id): nothing appended twice.
                event::count(A::TYPE, event::Counted::Duplicate);
                *guard = None;
                return Ok(decision.reply);
            }
            Err(e) if e.is_conflict() => {
                *guard = None;
                repo.report(SnapshotEvent::Conflict {
                    aggregate: id.clone(),
                    attempt,
                });
                if attempt > repo.config.max_retries {
                    return Err(Failed::Refused(Error::Conflict(ConcurrencyConflict {
                        aggregate: id,
                        attempts: attempt,
                    })));
                }
                tokio::time::sleep(backoff(repo.config.retry_backoff, attempt)).await;
            }
            Err(e) => {
                *guard = None;
                return Err(Failed::Refused(Error::from_store(&id, e, true)));
            }
        }
    }
}

/// Appends, sending the same append again (same command id, so it cannot apply twice) while
/// its outcome is unknown.
async fn append<A: Aggregate>(
    repo: &Inner<A>,
    stream: &StreamId,
    expected: u64,
    command: &CommandId,
    events: &[NewEvent],
) -> Result<Appended, StoreError> {
    let mut unknown: Option<StoreError> = None;
    for attempt in 0..=UNKNOWN_RETRIES {
        if attempt > 0 {
            tokio::time::sleep(backoff(
                repo.config.retry_backoff.max(Duration::from_millis(5)),
                attempt,
            ))
            .await;
        }
        match repo.events.append(stream, expected, command, events).await {
            Err(e) if e.is_outcome_unknown() => unknown = Some(e),
            // Unreachable now, but an earlier attempt may have landed.
            Err(e) if unknown.is_some() && e.kind() == crate::StoreErrorKind::Unavailable => {
                return Err(StoreError::outcome_unknown(e));
            }
            other => return other,
        }
    }
    Err(unknown.expect("the loop ends on an unknown outcome"))
}

/// A jittered pause that doubles per attempt (up to 64 times the base).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.min(6);
    let jitter: f64 = 0.5 + rand::random::<f64>();
    base.mul_f64(f64::from(factor) * jitter)
}
