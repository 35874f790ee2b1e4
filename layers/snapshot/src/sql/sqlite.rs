//! SQLite.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::StoreError;

/// Events and snapshots in SQLite (feature `sqlite`). Clones share the pool.
///
/// The database runs in WAL mode with `synchronous = NORMAL` (a committed append survives a
/// process crash; a power loss may lose the last transactions, never tear one). Appends take
/// the write lock at once (`BEGIN IMMEDIATE`) and wait up to 5 s for it.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file at `path` and applies the migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true);
        Self::with_options(options).await
    }

    /// Connects to a `sqlite://` URL (`sqlite::memory:` is refused: each pooled connection
    /// would see its own database) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.contains(":memory:") {
            return Err(StoreError::backend(
                "an in-memory SQLite database is per connection: use a file (a temp dir in tests)",
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::backend(format!("bad SQLite URL {url:?}: {e}")))?
            .create_if_missing(true);
        Self::with_options(options).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::unavailable(format!("opening SQLite: {e}")))?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// A store over an existing pool. Call [`SqliteStore::migrate`] once before use.
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteStore { pool }
    }

    async fn lock_migrations(
        &self,
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> Result<(), StoreError> {
        // `BEGIN IMMEDIATE` already holds the database's write lock.
        Ok(())
    }
}

super::sql_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", false);
