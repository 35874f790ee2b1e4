//! The filesystem store: one directory per aggregate.
//!
//! ```text
//! <root>/<type>/<escaped id>/events.log      batches of events (see `log.rs`)
//!                            events.idx      byte offset of each event's batch
//!                            lock            flock(2) between processes
//!                            snapshots/<version, 20 digits>.snap
//! ```
//!
//! Snapshots are written to a temporary file in the same directory, fsynced, renamed over
//! their final name and the directory fsynced: a crash (even SIGKILL mid-write) leaves the
//! old set of snapshots or the new one, never a torn `.snap`; leftover temporary files are
//! ignored and removed by the next save. Appends and saves take the stream's lock (a mutex in
//! the process, `flock` across processes); reads take none. File work runs on tokio's
//! blocking pool.

mod log;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use self::log::LogState;
use crate::aggregate::{CommandId, StreamId};
use crate::error::StoreError;
use crate::store::{
    Appended, BoxFuture, EventStore, NewEvent, RecordedEvent, SnapshotMeta, SnapshotRecord,
    SnapshotStore, unix_ms,
};

/// Events and snapshots in a directory. Clones share the per-stream state.
#[derive(Clone)]
pub struct FsStore {
    shared: Arc<Shared>,
}

struct Shared {
    root: PathBuf,
    streams: Mutex<HashMap<StreamId, Arc<Mutex<LogState>>>>,
}

impl std::fmt::Debug for FsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStore")
            .field("root", &self.shared.root)
            .finish()
    }
}

fn io_error(e: io::Error) -> StoreError {
    StoreError::backend(e)
}

impl FsStore {
    /// A store in `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(&root)
            .map_err(|e| StoreError::backend(format!("cannot create {}: {e}", root.display())))?;
        Ok(FsStore {
            shared: Arc::new(Shared {
                root,
                streams: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The directory of one stream.
    pub fn stream_dir(&self, stream: &StreamId) -> PathBuf {
        self.shared
            .root
            .join(escape(stream.kind()))
            .join(escape(stream.id().as_str()))
    }

    fn state(&self, stream: &StreamId) -> Arc<Mutex<LogState>> {
        let mut streams = self
            .shared
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        streams
            .entry(stream.clone())
            .or_insert_with(|| Arc::new(Mutex::new(LogState::new(self.stream_dir(stream)))))
            .clone()
    }

    /// Runs `f` on the blocking pool with the stream's log state and its cross-process lock.
    fn locked<T: Send + 'static>(
        &self,
        stream: &StreamId,
        f: impl FnOnce(&mut LogState, &Path) -> io::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let state = self.state(stream);
        let dir = self.stream_dir(stream);
        blocking(move || {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            fs::create_dir_all(&dir)?;
            let _flock = Flock::exclusive(&dir.join("lock"))?;
            state.refresh()?;
            f(&mut state, &dir)
        })
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> BoxFuture<'static, Result<T, StoreError>> {
    Box::pin(async move {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r.map_err(io_error),
            Err(e) => Err(StoreError::backend(format!("filesystem task failed: {e}"))),
        }
    })
}

/// An exclusive `flock(2)` on a lock file, released on drop.
struct Flock(File);

impl Flock {
    fn exclusive(path: &Path) -> io::Result<Flock> {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        loop {
            #[allow(unsafe_code)]
            // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Flock(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        #[allow(unsafe_code)]
        // SAFETY: as above; unlocking a descriptor we hold (closing it would unlock too).
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// A file name for any id: `[A-Za-z0-9_-]` and non-leading `.` kept, other bytes as `%XX`;
/// long names shortened with a hash.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 200 {
        let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            fnv = (fnv ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        let head: String = out.chars().take(120).collect();
        out = format!("{head}~{fnv:016x}{:08x}", crc32fast::hash(s.as_bytes()));
    }
    out
}

fn snapshot_dir(dir: &Path) -> PathBuf {
    dir.join("snapshots")
}

fn snapshot_name(version: u64) -> String {
    format!("{version:020}.snap")
}

/// The versions of the complete snapshots in `dir` (temporary files are not listed).
fn snapshot_versions(dir: &Path) -> io::Result<Vec<u64>> {
    let entries = match fs::read_dir(snapshot_dir(dir)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut versions = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(v) = name
            .strip_suffix(".snap")
            .and_then(|n| n.parse::<u64>().ok())
        {
            versions.push(v);
        }
    }
    versions.sort_unstable_by(|a, b| b.cmp(a));
    Ok(versions)
}

fn read_snapshot(dir: &Path, version: u64) -> io::Result<Option<SnapshotRecord>> {
    match fs::read(snapshot_dir(dir).join(snapshot_name(version))) {
        Ok(bytes) => Ok(Some(SnapshotRecord { version, bytes })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// temp file + fsync + rename + directory fsync.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{name}-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes temporary files left by writers that died (called under the stream's lock).
fn remove_leftovers(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

impl EventStore for FsStore {
    fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: u64,
        command: &'a CommandId,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Appended, StoreError>> {
        if events.is_empty() {
            return Box::pin(std::future::ready(Err(StoreError::backend(
                "append of no events",
            ))));
        }
        let command = command.as_str().to_owned();
        let events = events.to_vec();
        let op = self.locked(stream, move |state, _| {
            if let Some(&version) = state.commands.get(&command) {
                return Ok(Ok(Appended::Duplicate { version }));
            }
            if state.version != expected {
                return Ok(Err(StoreError::conflict(expected, state.version)));
            }
            let record = log::encode(expected + 1, unix_ms(), &command, &events);
            state.append(&record, events.len() as u64)?;
            state.commands.insert(command, state.version);
            Ok(Ok(Appended::Appended {
                version: state.version,
            }))
        });
        Box::pin(async move { op.await? })
    }

    fn read<'a>(
        &'a self,
        stream: &'a StreamId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        let dir = self.stream_dir(stream);
        blocking(move || log::read(&dir, after, limit))
    }

    fn version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.locked(stream, |state, _| Ok(state.version))
    }

    fn applied<'a>(
        &'a self,
        stream: &'a StreamId,
        command: &'a CommandId,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        let command = command.as_str().to_owned();
        self.locked(stream, move |state, _| {
            Ok(state.commands.get(&command).copied())
        })
    }

    fn delete_stream<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        self.locked(stream, |state, _| state.truncate())
    }
}

impl SnapshotStore for FsStore {
    fn save<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: &'a SnapshotRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let snapshot = snapshot.clone();
        self.locked(stream, move |_, dir| {
            let snaps = snapshot_dir(dir);
            remove_leftovers(&snaps);
            if snapshot_versions(dir)?
                .first()
                .is_some_and(|&newest| newest > snapshot.version)
            {
                return Ok(false);
            }
            write_atomically(&snaps, &snapshot_name(snapshot.version), &snapshot.bytes)?;
            Ok(true)
        })
    }

    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        let dir = self.stream_dir(stream);
        blocking(move || read_snapshot(&dir, version))
    }

    fn load_before<'a>(
        &'a self,
        stream: &'a StreamId,
        before: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        let dir = self.stream_dir(stream);
        blocking(move || {
            // A snapshot pruned between listing and reading: take the next one.
            for v in snapshot_versions(&dir)?.into_iter().filter(|v| *v < before) {
                if let Some(r) = read_snapshot(&dir, v)? {
                    return Ok(Some(r));
                }
            }
            Ok(None)
        })
    }

    fn list<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Vec<SnapshotMeta>, StoreError>> {
        let dir = self.stream_dir(stream);
        blocking(move || {
            let mut out = Vec::new();
            for v in snapshot_versions(&dir)? {
                let path = snapshot_dir(&dir).join(snapshot_name(v));
                let Ok(mut f) = File::open(&path) else {
                    continue;
                };
                let size = f.metadata()?.len();
                let mut head = vec![0u8; SnapshotMeta::HEADER_LEN];
                let n = f.read(&mut head)?;
                out.push(SnapshotMeta::from_prefix(v, size, &head[..n]));
            }
            Ok(out)
        })
    }

    fn prune<'a>(
        &'a self,
        stream: &'a StreamId,
        versions: &'a [u64],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let versions = versions.to_vec();
        self.locked(stream, move |_, dir| {
            let snaps = snapshot_dir(dir);
            for v in versions {
                match fs::remove_file(snaps.join(snapshot_name(v))) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            if snaps.exists() {
                sync_dir(&snaps)?;
            }
            Ok(())
        })
    }

    fn delete_snapshots<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.locked(stream, |_, dir| {
            match fs::remove_dir_all(snapshot_dir(dir)) {
                Ok(()) => sync_dir(dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn names_are_safe_and_distinct() {
        assert_eq!(escape("acct-1"), "acct-1");
        assert_eq!(escape("a/b"), "a%2Fb");
        assert_eq!(escape(".."), "%2E.");
        assert_ne!(escape("a%2Fb"), escape("a/b"));
        let long = escape(&"é".repeat(100));
        assert!(long.len() <= 200 + 30, "{}", long.len());
        assert_ne!(long, escape(&format!("{}x", "é".repeat(100))));
    }
}
