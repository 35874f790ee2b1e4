//! The repository: loads aggregates (rehydration engine), appends their events, and hands
//! snapshot writes to the background writer.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use omega_core::{Clock, Nanos};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::aggregate::{Aggregate, AggregateId, StreamId};
use crate::config::SnapshotConfig;
use omega_core::config::ConfigError;

use crate::error::Error;
use crate::event::{self, FallbackReason, SnapshotEvent};
use crate::store::{EventStore, SnapshotStore};
use crate::writer::{self, Job};

/// Loads and stores aggregates of type `A`: the engine under [`SnapshotLayer`](crate::SnapshotLayer),
/// usable on its own. Clones share the stores, the cache and the background writer.
pub struct Repository<A: Aggregate> {
    pub(crate) inner: Arc<Inner<A>>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            inner: self.inner.clone(),
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate_type", &A::TYPE)
            .field("config", &self.inner.config)
            .finish()
    }
}

pub(crate) struct Inner<A: Aggregate> {
    pub(crate) events: Arc<dyn EventStore>,
    pub(crate) snapshots: Arc<dyn SnapshotStore>,
    pub(crate) config: SnapshotConfig,
    pub(crate) clock: Clock,
    epoch_ms: u64,
    epoch: Nanos,
    pub(crate) cache: Option<moka::sync::Cache<AggregateId, Arc<Slot<A>>>>,
    writer: Mutex<Option<mpsc::Sender<Job<A>>>>,
    pub(crate) reports: broadcast::Sender<SnapshotEvent>,
}

/// A cached aggregate: a queue for the commands of one aggregate in this process (they are
/// decided one at a time), and its state once loaded.
pub(crate) type Slot<A> = tokio::sync::Mutex<Option<Hot<A>>>;

/// A loaded aggregate with what the triggers need.
pub(crate) struct Hot<A> {
    pub(crate) state: Arc<A>,
    pub(crate) version: u64,
    pub(crate) snap_version: u64,
    pub(crate) snap_at: Nanos,
    pub(crate) per_event_nanos: u64,
}

/// An aggregate as loaded from the stores, with how it was rebuilt.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub(crate) state: Arc<A>,
    pub(crate) version: u64,
    pub(crate) snapshot: Option<u64>,
    pub(crate) replayed: u64,
    pub(crate) fallbacks: Vec<(u64, FallbackReason)>,
    pub(crate) took: Duration,
}

impl<A> Loaded<A> {
    /// The state.
    pub fn state(&self) -> &Arc<A> {
        &self.state
    }

    /// The version of the last event applied (0 for an aggregate without events).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The version of the snapshot it was rebuilt from (`None`: replayed from the first event).
    pub fn snapshot_version(&self) -> Option<u64> {
        self.snapshot
    }

    /// How many events were replayed after the snapshot.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// The snapshots that were skipped, newest first, and why.
    pub fn fallbacks(&self) -> &[(u64, FallbackReason)] {
        &self.fallbacks
    }

    /// How long loading took (by the repository's clock).
    pub fn took(&self) -> Duration {
        self.took
    }
}

/// Builds a [`Repository`].
pub struct RepositoryBuilder<A> {
    events: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    config: SnapshotConfig,
    clock: Clock,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A> std::fmt::Debug for RepositoryBuilder<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl<A: Aggregate> RepositoryBuilder<A> {
    /// The settings (default [`SnapshotConfig::default`]).
    pub fn config(mut self, config: SnapshotConfig) -> Self {
        self.config = config;
        self
    }

    /// The clock for triggers, replay cost and snapshot ages (default [`Clock::system`], which
    /// follows `tokio::time::pause`).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the settings and builds the repository.
    pub fn build(self) -> Result<Repository<A>, ConfigError> {
        self.config.validate()?;
        let cache = (self.config.cache_capacity > 0).then(|| {
            let mut b = moka::sync::Cache::builder().max_capacity(self.config.cache_capacity);
            if let Some(idle) = self.config.cache_idle {
                b = b.time_to_idle(idle);
            }
            b.build()
        });
        let (reports, _) = broadcast::channel(1024);
        let epoch = self.clock.now();
        Ok(Repository {
            inner: Arc::new(Inner {
                events: self.events,
                snapshots: self.snapshots,
                config: self.config,
                clock: self.clock,
                epoch_ms: crate::store::unix_ms(),
                epoch,
                cache,
                writer: Mutex::new(None),
                reports,
            }),
        })
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository keeping events and snapshots in `store`, with the default settings.
    pub fn new<S>(store: S) -> Self
    where
        S: EventStore + SnapshotStore + Clone,
    {
        Self::builder(store)
            .build()
            .expect("the default configuration is valid")
    }

    /// A builder for a repository keeping events and snapshots in `store`.
    pub fn builder<S>(store: S) -> RepositoryBuilder<A>
    where
        S: EventStore + SnapshotStore + Clone,
    {
        Self::with_stores(Arc::new(store.clone()), Arc::new(store))
    }

    /// A builder with separate event and snapshot stores (events in PostgreSQL, snapshots in
    /// Redis, ...).
    pub fn with_stores(
        events: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
    ) -> RepositoryBuilder<A> {
        RepositoryBuilder {
            events,
            snapshots,
            config: SnapshotConfig::default(),
            clock: Clock::system(),
            _aggregate: std::marker::PhantomData,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SnapshotConfig {
        &self.inner.config
    }

    /// The event store.
    pub fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.inner.events
    }

    /// The snapshot store.
    pub fn snapshot_store(&self) -> &Arc<dyn SnapshotStore> {
        &self.inner.snapshots
    }

    /// The stream of aggregate `id`.
    pub fn stream_id(&self, id: &AggregateId) -> StreamId {
        StreamId::new(A::TYPE, id.clone())
    }

    /// Receives what the repository reports: fallbacks, rehydrations, snapshot writes,
    /// pruning, conflicts. Slow receivers miss the oldest events (a broadcast channel of 1024).
    pub fn subscribe(&self) -> broadcast::Receiver<SnapshotEvent> {
        self.inner.reports.subscribe()
    }

    /// Loads aggregate `id` from the stores (not from the cache): the newest usable snapshot
    /// and the events after it. A damaged or old-schema snapshot falls back to the previous
    /// one, then to a full replay; each skip is reported ([`SnapshotEvent::Fallback`], metric
    /// `omega_snapshot_fallbacks_total`) and a fresh snapshot is written in the background.
    pub async fn load(&self, id: &AggregateId) -> Result<Loaded<A>, Error> {
        let loaded = self.inner.rehydrate(id).await?;
        self.inner.after_load(id, &loaded);
        Ok(loaded)
    }

    /// Loads aggregate `id`, writes a snapshot of it now (a full one) and returns its version
    /// (`None`: the aggregate has no events, or a newer snapshot exists). Waits for the write.
    pub async fn snapshot_now(&self, id: &AggregateId) -> Result<Option<u64>, Error> {
        let loaded = self.inner.rehydrate(id).await?;
        if loaded.version == 0 {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        let damaged = damaged(&loaded);
        self.inner.submit(Job::Write {
            id: id.clone(),
            state: loaded.state.clone(),
            version: loaded.version,
            damaged,
            force_full: true,
            reply: Some(tx),
        });
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::from_store(id, e, false)),
            Err(_) => Ok(None),
        }
    }

    /// Waits until every snapshot write queued so far is done.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.submit(Job::Flush(tx)) {
            let _ = rx.await;
        }
    }

    /// Deletes aggregate `id`: its snapshots first, then its events and remembered command
    /// ids, so a crash in between leaves an aggregate that still loads (by full replay) and
    /// never a snapshot without its events. Commands for it in this process wait meanwhile;
    /// commands in other processes must not race the deletion.
    ///
    /// To keep the history instead, end the aggregate with an ordinary event of your own (a
    /// tombstone such as `Closed`) whose `decide` refuses later commands.
    pub async fn delete(&self, id: &AggregateId) -> Result<(), Error> {
        let stream = self.stream_id(id);
        let slot = self.inner.slot(id);
        let mut guard = slot.lock().await;
        *guard = None;
        let (tx, rx) = oneshot::channel();
        if self.inner.submit(Job::Forget(id.clone(), tx)) {
            let _ = rx.await;
        }
        let result = async {
            self.inner.snapshots.delete_snapshots(&stream).await?;
            self.inner.events.delete_stream(&stream).await
        }
        .await;
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(id);
        }
        drop(guard);
        result.map_err(|e| Error::from_store(id, e, true))
    }

    /// Drops aggregate `id` from this process's cache (the next command loads it again).
    pub fn invalidate(&self, id: &AggregateId) {
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(id);
        }
    }
}

fn damaged<A>(loaded: &Loaded<A>) -> Vec<u64> {
    loaded
        .fallbacks
        .iter()
        .filter(|(_, r)| r.is_damage())
        .map(|(v, _)| *v)
        .collect()
}

impl<A: Aggregate> Inner<A> {
    pub(crate) fn stream(&self, id: &AggregateId) -> StreamId {
        StreamId::new(A::TYPE, id.clone())
    }

    /// The cached slot of `id`, or a fresh one (not cached) when the cache is off.
    pub(crate) fn slot(&self, id: &AggregateId) -> Arc<Slot<A>> {
        match &self.cache {
            Some(cache) => cache.get_with_by_ref(id, || Arc::new(tokio::sync::Mutex::new(None))),
            None => Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// Wall-clock milliseconds, moving with the repository's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch_ms + (self.clock.now().saturating_sub(self.epoch)) / 1_000_000
    }

    pub(crate) fn report(&self, event: SnapshotEvent) {
        event::record(A::TYPE, &event);
        let _ = self.reports.send(event);
    }

    /// Queues a job for the background writer (started on first use). `false` when the queue
    /// is full or no runtime runs.
    pub(crate) fn submit(&self, job: Job<A>) -> bool {
        let mut job = job;
        for _ in 0..2 {
            let tx = {
                let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
                match &*w {
                    Some(tx) if !tx.is_closed() => tx.clone(),
                    _ => {
                        if tokio::runtime::Handle::try_current().is_err() {
                            return false;
                        }
                        let (tx, rx) = mpsc::channel(self.config.queue_capacity);
                        let shared = writer::Shared::new(
                            self.snapshots.clone(),
                            self.config.clone(),
                            self.clock.clone(),
                            self.now_ms(),
                            self.reports.clone(),
                        );
                        tokio::spawn(writer::run(rx, shared));
                        *w = Some(tx.clone());
                        tx
                    }
                }
            };
            match tx.try_send(job) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    event::count(A::TYPE, event::Counted::Skipped);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(j)) => job = j,
            }
        }
        false
    }

    /// After a load: a fresh snapshot when snapshots were skipped (healing), or when the
    /// replay cost or the event count calls for one.
    pub(crate) fn after_load(&self, id: &AggregateId, loaded: &Loaded<A>) -> Hot<A> {
        let mut hot = Hot {
            state: loaded.state.clone(),
            version: loaded.version,
            snap_version: loaded.snapshot.unwrap_or(0),
            snap_at: self.clock.now(),
            per_event_nanos: u64::try_from(loaded.took.as_nanos())
                .unwrap_or(u64::MAX)
                .checked_div(loaded.replayed)
                .unwrap_or(0),
        };
        if loaded.version > 0 && !loaded.fallbacks.is_empty() {
            // Heal: a fresh full snapshot, replacing a damaged one at the same version.
            self.queue_snapshot(id, &mut hot, damaged(loaded), true);
        } else {
            self.maybe_snapshot(id, &mut hot);
        }
        hot
    }

    /// Queues a snapshot if a trigger fires for `hot`.
    pub(crate) fn maybe_snapshot(&self, id: &AggregateId, hot: &mut Hot<A>) {
        let t = &self.config.trigger;
        let since = hot.version.saturating_sub(hot.snap_version);
        if since == 0 {
            return;
        }
        let by_count = t.every_events.is_some_and(|n| since >= n);
        let by_time = t.every.is_some_and(|p| {
            self.clock.now().saturating_sub(hot.snap_at) >= omega_core::clock::duration_nanos(p)
        });
        let by_cost = t.replay_cost.is_some_and(|c| {
            hot.per_event_nanos > 0
                && hot.per_event_nanos.saturating_mul(since) >= omega_core::clock::duration_nanos(c)
        });
        if by_count || by_time || by_cost {
            self.queue_snapshot(id, hot, Vec::new(), false);
        }
    }

    fn queue_snapshot(&self, id: &AggregateId, hot: &mut Hot<A>, damaged: Vec<u64>, full: bool) {
        let queued = self.submit(Job::Write {
            id: id.clone(),
            state: hot.state.clone(),
            version: hot.version,
            damaged,
            force_full: full,
            reply: None,
        });
        if queued {
            hot.snap_version = hot.version;
            hot.snap_at = self.clock.now();
        }
    }
}
