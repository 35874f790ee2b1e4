//! The rehydration engine: the newest usable snapshot, then the events after it.

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::{Aggregate, AggregateId, Old, StreamId};
use crate::error::{Error, RehydrationFailed, StoreError};
use crate::event::{FallbackReason, SnapshotEvent};
use crate::format::{self, SnapshotKind};
use crate::repository::{Inner, Loaded};
use crate::store::{NewEvent, RecordedEvent, SnapshotRecord};

/// How many snapshots loading tries before it replays every event.
const MAX_CANDIDATES: usize = 16;

impl<A: Aggregate> Inner<A> {
    /// The rehydration engine.
    pub(crate) async fn rehydrate(&self, id: &AggregateId) -> Result<Loaded<A>, Error> {
        let stream = self.stream(id);
        let started = self.clock.now();
        let mut fallbacks = Vec::new();
        let mut before = u64::MAX;
        let mut base: Option<(A, u64)> = None;
        for _ in 0..MAX_CANDIDATES {
            let record = self
                .snapshots
                .load_before(&stream, before)
                .await
                .map_err(|e| Error::from_store(id, e, false))?;
            let Some(record) = record else { break };
            match self.decode_snapshot(&stream, &record).await {
                Ok(state) => {
                    base = Some((state, record.version));
                    break;
                }
                Err(Skip::Store(e)) => return Err(Error::from_store(id, e, false)),
                Err(Skip::Reason(reason)) => {
                    self.report(SnapshotEvent::Fallback {
                        aggregate: id.clone(),
                        version: record.version,
                        reason: reason.clone(),
                    });
                    fallbacks.push((record.version, reason));
                    before = record.version;
                }
            }
        }
        let (mut state, snapshot) = match base {
            Some((state, v)) => (state, Some(v)),
            None => (A::default(), None),
        };
        let mut version = snapshot.unwrap_or(0);
        let mut replayed = 0u64;
        let page = self.config.read_batch;
        loop {
            let events = self
                .events
                .read(&stream, version, page)
                .await
                .map_err(|e| Error::from_store(id, e, false))?;
            let n = events.len();
            for recorded in events {
                if recorded.version != version + 1 {
                    return Err(self.broken(id, recorded.version, "a gap in the event versions"));
                }
                let event = self.decode_event(&recorded).map_err(|e| {
                    Error::Rehydration(RehydrationFailed {
                        aggregate: id.clone(),
                        version: Some(recorded.version),
                        detail: e.to_string(),
                        source: Some(e),
                    })
                })?;
                state.apply(&event);
                version = recorded.version;
                replayed += 1;
            }
            if n < page {
                break;
            }
        }
        let took = Duration::from_nanos(self.clock.now().saturating_sub(started));
        self.report(SnapshotEvent::Rehydrated {
            aggregate: id.clone(),
            from_snapshot: snapshot,
            replayed,
            fallbacks: fallbacks.len() as u32,
            took,
        });
        Ok(Loaded {
            state: Arc::new(state),
            version,
            snapshot,
            replayed,
            fallbacks,
            took,
        })
    }

    fn broken(&self, id: &AggregateId, version: u64, detail: &str) -> Error {
        Error::Rehydration(RehydrationFailed {
            aggregate: id.clone(),
            version: Some(version),
            detail: detail.to_owned(),
            source: None,
        })
    }

    async fn decode_snapshot(&self, stream: &StreamId, record: &SnapshotRecord) -> Result<A, Skip> {
        let (h, body) = format::open(&record.bytes).map_err(|e| Skip::corrupt(e.0))?;
        if h.version != record.version {
            return Err(Skip::corrupt(format!(
                "stored as version {}, the header says {}",
                record.version, h.version
            )));
        }
        let raw = match h.kind {
            SnapshotKind::Full => {
                format::materialize(&h, body, None).map_err(|e| Skip::corrupt(e.0))?
            }
            SnapshotKind::Delta => {
                let missing = || {
                    Skip::Reason(FallbackReason::MissingBase {
                        base: h.base_version,
                    })
                };
                let base = self
                    .snapshots
                    .load(stream, h.base_version)
                    .await
                    .map_err(Skip::Store)?
                    .ok_or_else(missing)?;
                let (bh, bbody) = format::open(&base.bytes).map_err(|_| missing())?;
                if bh.kind != SnapshotKind::Full
                    || bh.version != h.base_version
                    || bh.format != h.format
                {
                    return Err(missing());
                }
                let base_raw = format::materialize(&bh, bbody, None).map_err(|_| missing())?;
                format::materialize(&h, body, Some(&base_raw)).map_err(|e| Skip::corrupt(e.0))?
            }
        };
        let found = h.schema;
        if found == A::SNAPSHOT_SCHEMA {
            h.format
                .decode::<A>(&raw)
                .map_err(|e| Skip::Reason(FallbackReason::Undecodable(e.to_string())))
        } else if found < A::SNAPSHOT_SCHEMA {
            let old = Old {
                schema: found,
                format: h.format,
                bytes: &raw,
            };
            match A::upcast_snapshot(old) {
                None => Err(Skip::Reason(FallbackReason::OldSchema { found })),
                Some(Ok(state)) => Ok(state),
                Some(Err(e)) => Err(Skip::Reason(FallbackReason::Undecodable(format!(
                    "upcasting schema {found}: {e}"
                )))),
            }
        } else {
            Err(Skip::Reason(FallbackReason::NewerSchema { found }))
        }
    }

    pub(crate) fn decode_event(
        &self,
        recorded: &RecordedEvent,
    ) -> Result<A::Event, omega_core::reject::BoxError> {
        let format = self.config.event_format;
        if recorded.schema == A::EVENT_SCHEMA {
            Ok(format.decode(&recorded.payload)?)
        } else if recorded.schema < A::EVENT_SCHEMA {
            A::upcast_event(Old {
                schema: recorded.schema,
                format,
                bytes: &recorded.payload,
            })
        } else {
            Err(format!(
                "written by newer code: event schema {} is above {}",
                recorded.schema,
                A::EVENT_SCHEMA
            )
            .into())
        }
    }

    pub(crate) fn encode_events(
        &self,
        id: &AggregateId,
        events: &[A::Event],
    ) -> Result<Vec<NewEvent>, Error> {
        events
            .iter()
            .map(|e| {
                self.config
                    .event_format
                    .encode(e)
                    .map(|payload| NewEvent {
                        schema: A::EVENT_SCHEMA,
                        payload,
                    })
                    .map_err(|err| {
                        Error::Rehydration(RehydrationFailed {
                            aggregate: id.clone(),
                            version: None,
                            detail: format!("cannot encode an event: {err}"),
                            source: Some(Box::new(err)),
                        })
                    })
            })
            .collect()
    }
}

enum Skip {
    Reason(FallbackReason),
    Store(StoreError),
}

impl Skip {
    fn corrupt(detail: String) -> Skip {
        Skip::Reason(FallbackReason::Corrupt(detail))
    }
}
