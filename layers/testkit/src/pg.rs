//! A fresh PostgreSQL database per test.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Used when neither `OMEGA_TEST_POSTGRES_URL` nor `DATABASE_URL` is set.
const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How long connecting to the admin database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty PostgreSQL database, created on the server named by
/// `OMEGA_TEST_POSTGRES_URL` (else `DATABASE_URL`, else
/// `postgres://postgres@127.0.0.1:5432/postgres`) and dropped (`WITH (FORCE)`) when this
/// value is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl PgDatabase {
    /// Creates a database named `omega_test_<pid>_<counter>_<random>`.
    ///
    /// # Panics
    ///
    /// If the server cannot be reached (the message names the URL and the fix) or refuses
    /// to create the database.
    pub async fn create() -> PgDatabase {
        let admin_url = admin_url();
        let name = format!(
            "omega_test_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::hash::RandomState::new().build_hasher().finish() as u32
        );
        let url = with_database(&admin_url, &name);

        let mut admin =
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(&admin_url)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) => unreachable_server(&admin_url, &err.to_string()),
                Err(_) => unreachable_server(
                    &admin_url,
                    &format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                ),
            };
        if let Err(err) = sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
        {
            panic!(
                "cannot create PostgreSQL database {name} via {}: {err}",
                redact(&admin_url)
            );
        }
        let _ = admin.close().await;
        PgDatabase {
            name,
            url,
            admin_url,
        }
    }

    /// URL of the new database (the admin URL with the database name replaced).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Name of the new database.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // A thread with its own runtime works inside or outside a Tokio runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async {
                let mut admin =
                    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(&admin_url))
                        .await
                        .map_err(|_| "connect timed out".to_owned())?
                        .map_err(|err| err.to_string())?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|err| err.to_string())?;
                let _ = admin.close().await;
                Ok(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!(
                "omega-testkit: cannot drop PostgreSQL database {}: {err}",
                self.name
            ),
            Err(_) => eprintln!(
                "omega-testkit: dropping PostgreSQL database {} panicked",
                self.name
            ),
        }
    }
}

fn admin_url() -> String {
    ["OMEGA_TEST_POSTGRES_URL", "DATABASE_URL"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|url| !url.trim().is_empty()))
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

fn unreachable_server(admin_url: &str, err: &str) -> ! {
    panic!(
        "cannot connect to PostgreSQL at {} ({err}): start PostgreSQL or set \
         OMEGA_TEST_POSTGRES_URL to the URL of a server where this user may CREATE DATABASE",
        redact(admin_url)
    )
}

/// `url` with its path (the database) replaced by `/name`; the query string is kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &rest[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, with_database};

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres:///db?host=/run/postgresql", "x"),
            "postgres:///x?host=/run/postgresql"
        );
    }

    #[test]
    fn hides_the_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
