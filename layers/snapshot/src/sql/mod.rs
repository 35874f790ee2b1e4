//! The SQL stores: PostgreSQL and SQLite through sqlx, one set of queries for both (`$1`
//! placeholders, no compile-time checked macros), migrations shipped in the crate.
//!
//! Tables (see `migrations/`): `omega_events` (primary key `(aggregate_type, aggregate_id,
//! version)`, a unique index on the command id of each batch's last event) and
//! `omega_snapshots` (primary key `(aggregate_type, aggregate_id, version)`). Migrations are
//! recorded in `omega_snapshot_migrations`, apart from sqlx's own `_sqlx_migrations`, so they
//! sit beside the application's migrations.

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PgStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use crate::error::StoreError;

/// The crate's migrations: (version, name, PostgreSQL SQL, SQLite SQL).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[(
    1,
    "events_and_snapshots",
    include_str!("../../migrations/postgres/0001_events_and_snapshots.sql"),
    include_str!("../../migrations/sqlite/0001_events_and_snapshots.sql"),
)];

const CREATE_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS omega_snapshot_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";
const APPLIED_MIGRATIONS: &str = "SELECT version FROM omega_snapshot_migrations";
const RECORD_MIGRATION: &str =
    "INSERT INTO omega_snapshot_migrations (version, name, applied_at) VALUES ($1, $2, $3)";

const FIND_COMMAND: &str = "SELECT version FROM omega_events \
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND command_id = $3";
/// The version a command ended at (if appended), and the stream's version, in one round trip.
const CHECK_APPEND: &str = "SELECT (SELECT version FROM omega_events \
       WHERE aggregate_type = $1 AND aggregate_id = $2 AND command_id = $3), \
     (SELECT COALESCE(MAX(version), 0) FROM omega_events \
       WHERE aggregate_type = $1 AND aggregate_id = $2)";
const MAX_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM omega_events \
     WHERE aggregate_type = $1 AND aggregate_id = $2";
const INSERT_EVENTS: &str = "INSERT INTO omega_events \
     (aggregate_type, aggregate_id, version, schema_version, payload, command_id, recorded_at) ";
const READ_EVENTS: &str = "SELECT version, CAST(schema_version AS BIGINT), payload, recorded_at FROM omega_events \
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND version > $3 ORDER BY version LIMIT $4";
const DELETE_EVENTS: &str =
    "DELETE FROM omega_events WHERE aggregate_type = $1 AND aggregate_id = $2";
const SAVE_SNAPSHOT: &str = "INSERT INTO omega_snapshots (aggregate_type, aggregate_id, version, data) \
     SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM omega_snapshots \
       WHERE aggregate_type = $1 AND aggregate_id = $2 AND version > $3) \
     ON CONFLICT (aggregate_type, aggregate_id, version) DO UPDATE SET data = excluded.data";
const LOAD_SNAPSHOT: &str = "SELECT data FROM omega_snapshots \
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = $3";
const LOAD_SNAPSHOT_BEFORE: &str = "SELECT version, data FROM omega_snapshots \
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND version < $3 ORDER BY version DESC LIMIT 1";
const LIST_SNAPSHOTS: &str = "SELECT version, CAST(length(data) AS BIGINT), substr(data, 1, 48) \
     FROM omega_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY version DESC";
const PRUNE_SNAPSHOT: &str = "DELETE FROM omega_snapshots \
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = $3";
const DELETE_SNAPSHOTS: &str =
    "DELETE FROM omega_snapshots WHERE aggregate_type = $1 AND aggregate_id = $2";

/// Maps a sqlx error; `sent`: a write may have reached the server.
fn map_err(e: sqlx::Error, sent: bool) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => StoreError::unavailable(e),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed if sent => {
            StoreError::outcome_unknown(e)
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => {
            StoreError::unavailable(e)
        }
        other => StoreError::backend(other),
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The store's operations, written once for both databases.
macro_rules! sql_store {
    ($store:ident, $db:ty, $begin:literal, $is_pg:literal) => {
        impl $store {
            /// Applies the crate's migrations that are not applied yet (idempotent; safe
            /// when several processes start at once).
            pub async fn migrate(&self) -> Result<(), $crate::error::StoreError> {
                use $crate::sql::*;
                let mut tx = self
                    .pool
                    .begin_with($begin)
                    .await
                    .map_err(|e| map_err(e, false))?;
                self.lock_migrations(&mut tx).await?;
                sqlx::raw_sql(CREATE_MIGRATIONS)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_err(e, true))?;
                let applied: Vec<i64> = sqlx::query_scalar(APPLIED_MIGRATIONS)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| map_err(e, true))?;
                for (version, name, pg, lite) in MIGRATIONS {
                    if applied.contains(version) {
                        continue;
                    }
                    let sql = if $is_pg { pg } else { lite };
                    sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(|e| {
                        $crate::error::StoreError::backend(format!(
                            "migration {version} ({name}) failed: {e}"
                        ))
                    })?;
                    sqlx::query(RECORD_MIGRATION)
                        .bind(*version)
                        .bind(*name)
                        .bind(to_i64($crate::store::unix_ms()))
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map_err(e, true))?;
                }
                tx.commit().await.map_err(|e| map_err(e, true))
            }

            /// The connection pool.
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                &self.pool
            }

            async fn try_append(
                &self,
                stream: &$crate::aggregate::StreamId,
                expected: u64,
                command: &$crate::aggregate::CommandId,
                events: &[$crate::store::NewEvent],
            ) -> Result<$crate::store::Appended, $crate::error::StoreError> {
                use $crate::sql::*;
                use $crate::store::Appended;
                let (kind, id) = (stream.kind(), stream.id().as_str());
                let mut tx = self
                    .pool
                    .begin_with($begin)
                    .await
                    .map_err(|e| map_err(e, false))?;
                let (dup, actual): (Option<i64>, i64) = sqlx::query_as(CHECK_APPEND)
                    .bind(kind)
                    .bind(id)
                    .bind(command.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| map_err(e, false))?;
                if let Some(v) = dup {
                    return Ok(Appended::Duplicate { version: v as u64 });
                }
                if actual as u64 != expected {
                    return Err($crate::error::StoreError::conflict(expected, actual as u64));
                }
                let at = to_i64($crate::store::unix_ms());
                let last = events.len() - 1;
                let mut q = sqlx::QueryBuilder::<$db>::new(INSERT_EVENTS);
                q.push_values(events.iter().enumerate(), |mut b, (i, e)| {
                    b.push_bind(kind)
                        .push_bind(id)
                        .push_bind(to_i64(expected + 1 + i as u64))
                        .push_bind(i64::from(e.schema))
                        .push_bind(&e.payload[..])
                        .push_bind((i == last).then(|| command.as_str()))
                        .push_bind(at);
                });
                match q.build().execute(&mut *tx).await {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => {
                        drop(tx);
                        return Err(self.after_violation(stream, expected, command).await);
                    }
                    Err(e) => return Err(map_err(e, true)),
                }
                tx.commit().await.map_err(|e| {
                    if is_unique_violation(&e) {
                        $crate::error::StoreError::conflict(expected, expected + 1)
                    } else {
                        map_err(e, true)
                    }
                })?;
                Ok(Appended::Appended {
                    version: expected + events.len() as u64,
                })
            }

            /// After a unique violation (a concurrent append won): duplicate or conflict.
            async fn after_violation(
                &self,
                stream: &$crate::aggregate::StreamId,
                expected: u64,
                command: &$crate::aggregate::CommandId,
            ) -> $crate::error::StoreError {
                use $crate::store::EventStore;
                match self.applied(stream, command).await {
                    // The layer sends the append again and gets `Duplicate`.
                    Ok(Some(_)) => $crate::error::StoreError::outcome_unknown(
                        "a concurrent append of the same command won",
                    ),
                    Ok(None) => {
                        let actual = self.version(stream).await.unwrap_or(expected + 1);
                        $crate::error::StoreError::conflict(expected, actual.max(expected + 1))
                    }
                    Err(e) => e,
                }
            }
        }

        impl $crate::store::EventStore for $store {
            fn append<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
                expected: u64,
                command: &'a $crate::aggregate::CommandId,
                events: &'a [$crate::store::NewEvent],
            ) -> $crate::store::BoxFuture<
                'a,
                Result<$crate::store::Appended, $crate::error::StoreError>,
            > {
                Box::pin(async move {
                    if events.is_empty() {
                        return Err($crate::error::StoreError::backend("append of no events"));
                    }
                    self.try_append(stream, expected, command, events).await
                })
            }

            fn read<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
                after: u64,
                limit: usize,
            ) -> $crate::store::BoxFuture<
                'a,
                Result<Vec<$crate::store::RecordedEvent>, $crate::error::StoreError>,
            > {
                use $crate::sql::*;
                Box::pin(async move {
                    let rows: Vec<(i64, i64, Vec<u8>, i64)> = sqlx::query_as(READ_EVENTS)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .bind(to_i64(after))
                        .bind(to_i64(limit as u64))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| map_err(e, false))?;
                    Ok(rows
                        .into_iter()
                        .map(
                            |(version, schema, payload, at)| $crate::store::RecordedEvent {
                                version: version as u64,
                                schema: schema as u32,
                                payload,
                                recorded_at_ms: at as u64,
                            },
                        )
                        .collect())
                })
            }

            fn version<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
            ) -> $crate::store::BoxFuture<'a, Result<u64, $crate::error::StoreError>> {
                use $crate::sql::*;
                Box::pin(async move {
                    let v: i64 = sqlx::query_scalar(MAX_VERSION)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .fetch_one(&self.pool)
                        .await
                        .map_err(|e| map_err(e, false))?;
                    Ok(v as u64)
                })
            }

            fn applied<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
                command: &'a $crate::aggregate::CommandId,
            ) -> $crate::store::BoxFuture<'a, Result<Option<u64>, $crate::error::StoreError>> {
                use $crate::sql::*;
                Box::pin(async move {
                    let v: Option<i64> = sqlx::query_scalar(FIND_COMMAND)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .bind(command.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| map_err(e, false))?;
                    Ok(v.map(|v| v as u64))
                })
            }

            fn delete_stream<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
            ) -> $crate::store::BoxFuture<'a, Result<(), $crate::error::StoreError>> {
                use $crate::sql::*;
                Box::pin(async move {
                    sqlx::query(DELETE_EVENTS)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .execute(&self.pool)
                        .await
                        .map_err(|e| map_err(e, true))?;
                    Ok(())
                })
            }
        }

        impl $crate::store::SnapshotStore for $store {
            fn save<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
                snapshot: &'a $crate::store::SnapshotRecord,
            ) -> $crate::store::BoxFuture<'a, Result<bool, $crate::error::StoreError>> {
                use $crate::sql::*;
                Box::pin(async move {
                    let done = sqlx::query(SAVE_SNAPSHOT)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .bind(to_i64(snapshot.version))
                        .bind(&snapshot.bytes[..])
                        .execute(&self.pool)
                        .await
                        .map_err(|e| map_err(e, true))?;
                    Ok(done.rows_affected() > 0)
                })
            }

            fn load<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
                version: u64,
            ) -> $crate::store::BoxFuture<
                'a,
                Result<Option<$crate::store::SnapshotRecord>, $crate::error::StoreError>,
            > {
                use $crate::sql::*;
                Box::pin(async move {
                    let data: Option<Vec<u8>> = sqlx::query_scalar(LOAD_SNAPSHOT)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .bind(to_i64(version))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| map_err(e, false))?;
                    Ok(data.map(|bytes| $crate::store::SnapshotRecord { version, bytes }))
                })
            }

            fn load_before<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
                before: u64,
            ) -> $crate::store::BoxFuture<
                'a,
                Result<Option<$crate::store::SnapshotRecord>, $crate::error::StoreError>,
            > {
                use $crate::sql::*;
                Box::pin(async move {
                    let row: Option<(i64, Vec<u8>)> = sqlx::query_as(LOAD_SNAPSHOT_BEFORE)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .bind(to_i64(before))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| map_err(e, false))?;
                    Ok(row.map(|(v, bytes)| $crate::store::SnapshotRecord {
                        version: v as u64,
                        bytes,
                    }))
                })
            }

            fn list<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
            ) -> $crate::store::BoxFuture<
                'a,
                Result<Vec<$crate::store::SnapshotMeta>, $crate::error::StoreError>,
            > {
                use $crate::sql::*;
                Box::pin(async move {
                    let rows: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(LIST_SNAPSHOTS)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| map_err(e, false))?;
                    Ok(rows
                        .into_iter()
                        .map(|(v, size, head)| {
                            $crate::store::SnapshotMeta::from_prefix(v as u64, size as u64, &head)
                        })
                        .collect())
                })
            }

            fn prune<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
                versions: &'a [u64],
            ) -> $crate::store::BoxFuture<'a, Result<(), $crate::error::StoreError>> {
                use $crate::sql::*;
                Box::pin(async move {
                    for v in versions {
                        sqlx::query(PRUNE_SNAPSHOT)
                            .bind(stream.kind())
                            .bind(stream.id().as_str())
                            .bind(to_i64(*v))
                            .execute(&self.pool)
                            .await
                            .map_err(|e| map_err(e, true))?;
                    }
                    Ok(())
                })
            }

            fn delete_snapshots<'a>(
                &'a self,
                stream: &'a $crate::aggregate::StreamId,
            ) -> $crate::store::BoxFuture<'a, Result<(), $crate::error::StoreError>> {
                use $crate::sql::*;
                Box::pin(async move {
                    sqlx::query(DELETE_SNAPSHOTS)
                        .bind(stream.kind())
                        .bind(stream.id().as_str())
                        .execute(&self.pool)
                        .await
                        .map_err(|e| map_err(e, true))?;
                    Ok(())
                })
            }
        }
    };
}

pub(crate) use sql_store;
