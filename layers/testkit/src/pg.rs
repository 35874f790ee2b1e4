//! A fresh PostgreSQL database per test, on a throwaway server of the test process's own.
//!
//! Unless `OMEGA_TEST_POSTGRES_URL` names a server, the first [`PgDatabase::create`] of a test
//! process starts one: `initdb` (trust auth) in a temporary directory and `postgres` on a free
//! loopback port with its Unix socket in that directory and `fsync=off`, from the highest
//! version under `/usr/lib/postgresql/<version>/bin` (Debian's layout; `pg_config --bindir`
//! elsewhere). Both refuse to run as root, so a root test process runs them as the `postgres`
//! user (the directory is handed to that user). The server dies with the test process;
//! directories of servers whose process is gone are removed by the next start.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::port::free_port;
use crate::process::{die_with_parent, spawn_long_lived, tail};

/// The variable naming an existing server to use instead of a throwaway one.
pub const POSTGRES_URL_VAR: &str = "OMEGA_TEST_POSTGRES_URL";
/// How long connecting to the admin database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a throwaway server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const DIR_PREFIX: &str = "omega-pg-";

static COUNTER: AtomicU64 = AtomicU64::new(0);
static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// The throwaway server of this test process.
#[derive(Debug)]
struct PgServer {
    admin_url: String,
    dir: PathBuf,
    child: Mutex<Child>,
}

/// Stops the throwaway server when the test process exits normally: a fast shutdown lets
/// PostgreSQL end and reap its own processes (a SIGKILL on the parent's death would leave
/// them to init), then the directory is removed.
extern "C" fn stop_server() {
    let Some(Ok(server)) = SERVER.get() else {
        return;
    };
    let mut child = server.child.lock().unwrap_or_else(|p| p.into_inner());
    if crate::process::send_signal(child.id(), libc::SIGINT).is_ok() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&server.dir);
}

/// A fresh, empty PostgreSQL database, dropped (`WITH (FORCE)`) when this value is dropped.
///
/// It lives on the server named by `OMEGA_TEST_POSTGRES_URL` (a URL whose user may `CREATE
/// DATABASE`), else on the test process's own throwaway server (see the module docs).
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
    /// If PostgreSQL is not installed (the message says `apt-get install postgresql`), the
    /// throwaway server does not start (the message has the tail of its log), or the server
    /// cannot be reached or refuses to create the database.
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

    /// URL of the server's admin database (`postgres`), where databases are created.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
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

/// The admin URL: `OMEGA_TEST_POSTGRES_URL`, else this process's throwaway server (started
/// on first use).
///
/// # Panics
///
/// When the throwaway server cannot be started; the message names the fix.
pub fn postgres_admin_url() -> String {
    admin_url()
}

fn admin_url() -> String {
    if let Some(url) = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
    {
        return url;
    }
    match SERVER.get_or_init(PgServer::start) {
        Ok(server) => server.admin_url.clone(),
        Err(msg) => panic!("{msg}"),
    }
}

/// The directory with `initdb` and `postgres`: the highest version under
/// `/usr/lib/postgresql`, else `pg_config --bindir`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && bin.join("initdb").is_file() && bin.join("postgres").is_file() {
            return Ok(bin);
        }
    }
    Err(
        "PostgreSQL's server binaries (initdb, postgres) were not found under \
         /usr/lib/postgresql/<version>/bin: install them (Debian/Ubuntu: `apt-get install -y \
         postgresql`; macOS: `brew install postgresql`), or set OMEGA_TEST_POSTGRES_URL to a \
         server where the user may CREATE DATABASE"
            .to_owned(),
    )
}

/// The uid and gid to run the server as: the `postgres` user when we are root, else none.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut f = line.split(':');
            (f.next()? == "postgres").then_some(())?;
            let _password = f.next()?;
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .map(Some)
        .ok_or_else(|| {
            "the tests run as root, and initdb/postgres refuse to: they run as the `postgres` \
             user, which does not exist here. Install PostgreSQL from packages (Debian/Ubuntu: \
             `apt-get install -y postgresql` creates the user) or `useradd --system postgres`"
                .to_owned()
        })
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot hand {} to the postgres user: {e}", path.display()))?;
    }
    Ok(())
}

/// Removes directories of earlier throwaway servers whose test process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if owner.is_some() && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl PgServer {
    fn start() -> Result<PgServer, String> {
        let bin = bin_dir()?;
        let user = server_user()?;
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?
            .keep();
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
        chown(&dir, user)?;
        let data = dir.join("data");
        let log = dir.join("postgres.log");

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"])
            .current_dir(&dir)
            .stdin(Stdio::null());
        as_user(&mut initdb, user);
        die_with_parent(&mut initdb);
        let out = initdb
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.join("initdb").display()))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let logfile = std::fs::File::create(&log)
                .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
            chown(&log, user)?;
            let logfile2 = logfile
                .try_clone()
                .map_err(|e| format!("cannot share the log file: {e}"))?;
            let mut postgres = Command::new(bin.join("postgres"));
            postgres
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&dir)
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(logfile)
                .stderr(logfile2);
            as_user(&mut postgres, user);
            let mut child = spawn_long_lived(postgres)
                .map_err(|e| format!("cannot start {}: {e}", bin.join("postgres").display()))?;
            let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("postgres exited ({status}); log:\n{}", tail(&log, 30));
                    break;
                }
                if accepts(port) && ready(&admin_url) {
                    #[allow(unsafe_code)]
                    // SAFETY: registers a plain `extern "C" fn` with no arguments; it runs
                    // at most once, at exit, and only touches a `OnceLock` and its child.
                    unsafe {
                        libc::atexit(stop_server);
                    }
                    return Ok(PgServer {
                        admin_url,
                        dir,
                        child: Mutex::new(child),
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "postgres did not accept connections within {} s; log:\n{}",
                        START_TIMEOUT.as_secs(),
                        tail(&log, 30)
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !last.contains("in use") {
                break;
            }
        }
        Err(format!(
            "cannot start the throwaway PostgreSQL server: {last}"
        ))
    }
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// `true` once the server answers a query (it accepts TCP before it finishes starting up).
fn ready(admin_url: &str) -> bool {
    let url = admin_url.to_owned();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return false;
        };
        runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(&url)).await {
                Ok(Ok(conn)) => {
                    let _ = conn.close().await;
                    true
                }
                _ => false,
            }
        })
    })
    .join()
    .unwrap_or(false)
}

fn unreachable_server(admin_url: &str, err: &str) -> ! {
    panic!(
        "cannot connect to PostgreSQL at {} ({err}): check that server, or unset \
         {POSTGRES_URL_VAR} to let the test kit start its own",
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
