//! A throwaway `redis-server`.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::port::free_port;
use crate::process::{die_with_parent, send_signal, spawn_long_lived, tail};

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisServer::restart`] keeps retrying while the port cannot be bound.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for a server.
const POLL: Duration = Duration::from_millis(15);
/// Lines of the server log shown when it fails to start.
const LOG_TAIL_LINES: usize = 40;

/// Panics with an install hint unless `redis-server` and `redis-cli` are on `PATH`.
///
/// [`RedisServer::start`] and [`RedisCluster::start`](crate::RedisCluster::start) call it
/// first.
pub fn require_redis_server() {
    if !on_path("redis-server") {
        panic!(
            "redis-server was not found on PATH: install it (Debian/Ubuntu: `apt-get install -y \
             redis-server`, macOS: `brew install redis`) or run scripts/test.sh, which installs it"
        );
    }
    if !on_path("redis-cli") {
        panic!(
            "redis-cli was not found on PATH: install it (Debian/Ubuntu: `apt-get install -y \
             redis-tools`, macOS: `brew install redis`) or run scripts/test.sh, which installs it"
        );
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(program);
            fs::metadata(&candidate).is_ok_and(|meta| {
                use std::os::unix::fs::PermissionsExt;
                meta.is_file() && meta.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// Sends a raw RESP `PING` and reports whether the answer is `+PONG`.
pub(crate) fn ping(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
        || stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") && reply.len() < 256 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply.starts_with(b"+PONG")
}

/// Runs `redis-cli` with `args` and returns its output, panicking if it cannot run.
pub(crate) fn run_cli(args: &[&str]) -> Output {
    let mut cmd = Command::new("redis-cli");
    cmd.args(args).stdin(Stdio::null());
    die_with_parent(&mut cmd);
    cmd.output()
        .unwrap_or_else(|err| panic!("cannot run `redis-cli {}`: {err}", args.join(" ")))
}

enum BootError {
    /// The server exited because its port was taken.
    AddrInUse(String),
    /// Anything else.
    Failed(String),
}

/// A throwaway `redis-server` on a free loopback port.
///
/// It runs with `--bind 127.0.0.1 --save "" --appendonly no` in its own temporary directory,
/// which also holds its log (`redis.log`). Dropping it kills the process (also when a test
/// panics); on Linux the process also dies with the test process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    extra: Vec<String>,
    dir: tempfile::TempDir,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    paused: AtomicBool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed, or the server does not answer within about 10 s
    /// (the message includes the tail of its log).
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with `extra` appended to the `redis-server` command line
    /// (for example `&["--maxmemory", "1mb"]`).
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port, extra)
    }

    /// Starts a server on a port from `pick`, picking again if the port is taken meanwhile.
    pub(crate) fn start_on(pick: fn() -> u16, extra: &[&str]) -> RedisServer {
        require_redis_server();
        let mut last = String::new();
        for _ in 0..5 {
            let server = Self::new(pick(), extra);
            match server.boot(START_TIMEOUT) {
                Ok(()) => return server,
                Err(BootError::AddrInUse(msg)) => last = msg,
                Err(BootError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("redis-server could not bind a free port in 5 attempts; last failure:\n{last}");
    }

    fn new(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix(&format!("omega-redis-{port}-"))
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temporary directory: {err}"));
        let log = dir.path().join("redis.log");
        RedisServer {
            port,
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
            dir,
            log,
            child: Mutex::new(None),
            paused: AtomicBool::new(false),
        }
    }

    /// The TCP port the server listens on (kept across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (holds `redis.log`, and `nodes.conf` in a cluster).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Kills the server with SIGKILL and reaps it; the port then refuses connections.
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        self.kill_locked();
    }

    /// Stops the server with SIGSTOP: it keeps its port, and connections (new and open)
    /// hang until [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP, "pause");
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Continues a [paused](Self::pause) server with SIGCONT.
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT, "resume");
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Kills the server if it runs, starts it again on the same port with the same arguments
    /// and directory, and waits until it answers `PING`. Retries for a few seconds while the
    /// port cannot be bound yet.
    ///
    /// # Panics
    ///
    /// If the server does not come back within about 10 s.
    pub fn restart(&mut self) {
        self.kill();
        let started = Instant::now();
        loop {
            let remaining = START_TIMEOUT.saturating_sub(started.elapsed());
            match self.boot(remaining.max(Duration::from_secs(1))) {
                Ok(()) => return,
                Err(BootError::AddrInUse(_)) if started.elapsed() < REBIND_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(BootError::AddrInUse(msg) | BootError::Failed(msg)) => {
                    panic!("restart failed: {msg}")
                }
            }
        }
    }

    /// Whether the server process is alive (a paused server counts as running).
    pub fn is_running(&self) -> bool {
        self.child_lock()
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// How many script calls (`EVALSHA` and `EVAL`) the server has run, from
    /// `INFO commandstats` (`CONFIG RESETSTAT` starts it again).
    pub fn script_calls(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Runs `redis-cli -h 127.0.0.1 -p <port> <args...>` and returns its trimmed stdout
    /// (for example `cli(&["SCRIPT", "FLUSH"])`, `cli(&["DEBUG", "SLEEP", "1"])`).
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot run or exits with a failure status.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut full = vec!["-h", "127.0.0.1", "-p", &port];
        full.extend_from_slice(args);
        let out = run_cli(&full);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            panic!(
                "`redis-cli {}` failed ({}):\nstdout: {}\nstderr: {}",
                full.join(" "),
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        stdout.trim().to_owned()
    }

    fn child_lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn signal(&self, signal: libc::c_int, what: &str) {
        let pid = self
            .child_lock()
            .as_mut()
            .and_then(|child| matches!(child.try_wait(), Ok(None)).then(|| child.id()));
        let Some(pid) = pid else {
            panic!(
                "cannot {what} redis-server on port {}: it is not running",
                self.port
            );
        };
        send_signal(pid, signal).unwrap_or_else(|err| {
            panic!("cannot {what} redis-server on port {}: {err}", self.port)
        });
    }

    /// Spawns the process and waits up to `timeout` for it to answer `PING`.
    fn boot(&self, timeout: Duration) -> Result<(), BootError> {
        let log_start = fs::metadata(&self.log).map(|meta| meta.len()).unwrap_or(0);
        let child = self.spawn().map_err(|err| {
            BootError::Failed(format!(
                "cannot run redis-server (port {}): {err}",
                self.port
            ))
        })?;
        *self.child_lock() = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self
                .child_lock()
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child_lock().take();
                let msg = self.failure(&format!("exited with {status}"));
                return Err(
                    if self.log_since(log_start).contains("Address already in use") {
                        BootError::AddrInUse(msg)
                    } else {
                        BootError::Failed(msg)
                    },
                );
            }
            if ping(self.addr(), Duration::from_millis(200)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let msg = self.failure(&format!(
                    "did not answer PING within {:.1} s",
                    timeout.as_secs_f64()
                ));
                self.kill_locked();
                return Err(BootError::Failed(msg));
            }
            std::thread::sleep(POLL);
        }
    }

    fn kill_locked(&self) {
        let child = self.child_lock().take();
        if let Some(mut child) = child {
            if self.paused.swap(false, Ordering::SeqCst) {
                let _ = send_signal(child.id(), libc::SIGCONT);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        spawn_long_lived(cmd)
    }

    fn log_since(&self, offset: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log)
            && file.seek(SeekFrom::Start(offset)).is_ok()
        {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "redis-server on port {} {what}\ncommand line extra args: {:?}\n--- last lines of {} ---\n{}",
            self.port,
            self.extra,
            self.log.display(),
            tail(&self.log, LOG_TAIL_LINES)
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
