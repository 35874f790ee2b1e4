//! PostgreSQL.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::error::StoreError;

/// Events and snapshots in PostgreSQL (feature `postgres`). Clones share the pool.
///
/// ```no_run
/// # async fn f() -> Result<(), omega_snapshot::StoreError> {
/// let store = omega_snapshot::PgStore::connect("postgres://app@localhost/app").await?;
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects (a pool of up to 16 connections) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| StoreError::unavailable(format!("connecting to PostgreSQL: {e}")))?;
        let store = PgStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// A store over an existing pool. Call [`PgStore::migrate`] once before use.
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore { pool }
    }

    async fn lock_migrations(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        // One migrating process at a time (released at commit).
        sqlx::query("SELECT pg_advisory_xact_lock(7307126849543524)")
            .execute(&mut **tx)
            .await
            .map(|_| ())
            .map_err(|e| super::map_err(e, false))
    }
}

super::sql_store!(PgStore, sqlx::Postgres, "BEGIN", true);
