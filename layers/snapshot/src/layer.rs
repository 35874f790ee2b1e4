//! The Tower layer.

use omega_core::reject::KeepError;
#[cfg(feature = "http")]
use omega_core::reject::Respond;
use tower_layer::Layer;

use crate::aggregate::Aggregate;
use crate::decider::Decider;
use crate::repository::Repository;
use crate::service::Snapshot;

/// Wraps an aggregate command handler: loads the aggregate (cache, else the newest valid
/// snapshot and the events after it), asks the inner service to decide, appends the events
/// with optimistic concurrency (deciding again on a conflict), and writes snapshots in the
/// background. Every service it makes shares the repository, its cache and its writer.
///
/// `R` is the [`OnRejection`](crate::OnRejection) strategy: [`KeepError`] (the default)
/// fails with the typed refusal, boxed; `.respond()` (feature `http`) answers HTTP requests
/// with 409 / 503 / 500 responses; `.on_rejection(strategy)` takes any strategy.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// # use serde::{Deserialize, Serialize};
/// # use omega_snapshot::Aggregate;
/// # #[derive(Clone, Default, Serialize, Deserialize)] struct Counter { value: i64 }
/// # #[derive(Debug)] struct Never;
/// # impl std::fmt::Display for Never { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("never") } }
/// # impl std::error::Error for Never {}
/// # impl Aggregate for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = i64; type Event = i64; type Error = Never;
/// #     fn apply(&mut self, e: &i64) { self.value += e; }
/// #     fn decide(&self, c: &i64) -> Result<Vec<i64>, Never> { Ok(vec![*c]) }
/// # }
/// use omega_snapshot::{AggregateId, Decider, Envelope, MemoryStore, Repository, SnapshotLayer};
/// use tower::{Layer, ServiceExt};
///
/// let repo = Repository::<Counter>::new(MemoryStore::new());
/// let svc = SnapshotLayer::new(repo).layer(Decider::new());
/// let id = AggregateId::new("c-1").unwrap();
/// let accepted = svc.oneshot(Envelope::new(id, 5)).await.unwrap().unwrap();
/// assert_eq!((accepted.version(), accepted.state().value), (1, 5));
/// # }
/// ```
pub struct SnapshotLayer<A: Aggregate, R = KeepError> {
    repo: Repository<A>,
    reject: R,
}

impl<A: Aggregate, R: Clone> Clone for SnapshotLayer<A, R> {
    fn clone(&self) -> Self {
        SnapshotLayer {
            repo: self.repo.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<A: Aggregate, R: std::fmt::Debug> std::fmt::Debug for SnapshotLayer<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotLayer")
            .field("repo", &self.repo)
            .field("reject", &self.reject)
            .finish()
    }
}

impl<A: Aggregate> SnapshotLayer<A> {
    /// A layer over `repo`, refusals kept as errors.
    pub fn new(repo: Repository<A>) -> Self {
        SnapshotLayer {
            repo,
            reject: KeepError,
        }
    }
}

impl<A: Aggregate, R> SnapshotLayer<A, R> {
    /// Answers refusals with `strategy` (any [`OnRejection`](crate::OnRejection)).
    pub fn on_rejection<R2>(self, strategy: R2) -> SnapshotLayer<A, R2> {
        SnapshotLayer {
            repo: self.repo,
            reject: strategy,
        }
    }

    /// Answers refusals of HTTP requests (`http::Request<Envelope<C>>`) with responses: 409
    /// for a conflict that outlasted its retries, 503 with `Retry-After` when the store is
    /// unavailable, 500 when the aggregate cannot be rebuilt; gRPC calls get `ABORTED`,
    /// `UNAVAILABLE`, `INTERNAL` (feature `http`).
    #[cfg(feature = "http")]
    pub fn respond(self) -> SnapshotLayer<A, Respond> {
        self.on_rejection(Respond)
    }

    /// The repository.
    pub fn repository(&self) -> &Repository<A> {
        &self.repo
    }

    /// The service deciding with [`Aggregate::decide`]: `self.layer(Decider::new())`.
    pub fn decider(&self) -> Snapshot<Decider<A>, A, R>
    where
        R: Clone,
    {
        self.layer(Decider::new())
    }
}

impl<S, A: Aggregate, R: Clone> Layer<S> for SnapshotLayer<A, R> {
    type Service = Snapshot<S, A, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Snapshot::new(inner, self.repo.clone(), self.reject.clone())
    }
}
