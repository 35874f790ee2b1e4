//! The event log of one stream on disk: `events.log` holds one record per appended batch,
//! `events.idx` the byte offset of the batch of each event (8 bytes per version).
//!
//! A batch record is `magic | length | CRC-32 | payload`, the payload `first version | count
//! | appended at | command id | events`. A batch is one record, so a crash never leaves part
//! of a command: a torn record fails its length or checksum, readers stop before it, and the
//! next writer truncates it away. The log is fsynced before the index, so an index entry
//! always points at a complete record; entries missing after a crash are rebuilt.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::store::{NewEvent, RecordedEvent};

const MAGIC: u32 = 0x4F45_564C; // "OEVL"
const PREFIX: usize = 12;
/// Refuse absurd lengths from a damaged prefix.
const MAX_RECORD: u32 = 1 << 30;

pub(super) struct Batch {
    pub(super) first: u64,
    pub(super) at_ms: u64,
    pub(super) command: String,
    pub(super) events: Vec<(u32, Vec<u8>)>,
}

pub(super) fn encode(first: u64, at_ms: u64, command: &str, events: &[NewEvent]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(
        32 + command.len() + events.iter().map(|e| e.payload.len() + 8).sum::<usize>(),
    );
    payload.extend_from_slice(&first.to_le_bytes());
    payload.extend_from_slice(&(events.len() as u32).to_le_bytes());
    payload.extend_from_slice(&at_ms.to_le_bytes());
    payload.extend_from_slice(&(command.len() as u16).to_le_bytes());
    payload.extend_from_slice(command.as_bytes());
    for e in events {
        payload.extend_from_slice(&e.schema.to_le_bytes());
        payload.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        payload.extend_from_slice(&e.payload);
    }
    let mut out = Vec::with_capacity(PREFIX + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Parses the record at the start of `buf`: the batch and the record's length, or `None`
/// when the bytes are not a complete, intact record.
fn decode(buf: &[u8]) -> Option<(Batch, usize)> {
    if buf.len() < PREFIX {
        return None;
    }
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
    if u32_at(buf, 0) != MAGIC {
        return None;
    }
    let len = u32_at(buf, 4);
    if len > MAX_RECORD || buf.len() < PREFIX + len as usize {
        return None;
    }
    let payload = &buf[PREFIX..PREFIX + len as usize];
    if crc32fast::hash(payload) != u32_at(buf, 8) || payload.len() < 22 {
        return None;
    }
    let first = u64_at(payload, 0);
    let count = u32_at(payload, 8) as usize;
    let at_ms = u64_at(payload, 12);
    let cmd_len = u16::from_le_bytes(payload[20..22].try_into().expect("2")) as usize;
    let mut i = 22;
    let command = String::from_utf8(payload.get(i..i + cmd_len)?.to_vec()).ok()?;
    i += cmd_len;
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let head = payload.get(i..i + 8)?;
        let schema = u32_at(head, 0);
        let n = u32_at(head, 4) as usize;
        i += 8;
        events.push((schema, payload.get(i..i + n)?.to_vec()));
        i += n;
    }
    if i != payload.len() || count == 0 {
        return None;
    }
    Some((
        Batch {
            first,
            at_ms,
            command,
            events,
        },
        PREFIX + len as usize,
    ))
}

/// What a writer knows about a stream's log, kept between appends in one process.
pub(super) struct LogState {
    dir: PathBuf,
    log: Option<File>,
    idx: Option<File>,
    /// Bytes of the log known to hold intact records.
    pub(super) scanned: u64,
    pub(super) version: u64,
    pub(super) commands: HashMap<String, u64>,
}

impl LogState {
    pub(super) fn new(dir: PathBuf) -> Self {
        LogState {
            dir,
            log: None,
            idx: None,
            scanned: 0,
            version: 0,
            commands: HashMap::new(),
        }
    }

    fn files(&mut self) -> io::Result<(&mut File, &mut File)> {
        if self.log.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let open = |name: &str| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.dir.join(name))
            };
            self.log = Some(open("events.log")?);
            self.idx = Some(open("events.idx")?);
        }
        Ok((
            self.log.as_mut().expect("opened"),
            self.idx.as_mut().expect("opened"),
        ))
    }

    /// Brings the state up to date with the files (other processes may have appended, a
    /// crash may have left a torn record or a short index). Call under the stream's lock.
    pub(super) fn refresh(&mut self) -> io::Result<()> {
        let scanned = self.scanned;
        let (log, _) = self.files()?;
        let len = log.metadata()?.len();
        if len < scanned {
            // Truncated (the stream was deleted): start over.
            self.scanned = 0;
            self.version = 0;
            self.commands.clear();
        } else if len == scanned {
            return self.fix_index();
        }
        let from = self.scanned;
        let (log, _) = self.files()?;
        let mut buf = Vec::with_capacity((len - from) as usize);
        log.seek(SeekFrom::Start(from))?;
        log.take(len - from).read_to_end(&mut buf)?;
        let mut at = 0usize;
        while let Some((batch, n)) = decode(&buf[at..]) {
            if batch.first != self.version + 1 {
                break;
            }
            self.version += batch.events.len() as u64;
            self.commands.insert(batch.command, self.version);
            at += n;
        }
        self.scanned = from + at as u64;
        if self.scanned < len {
            // A torn record from a crashed writer: nothing after it is valid.
            let keep = self.scanned;
            let (log, _) = self.files()?;
            log.set_len(keep)?;
            log.sync_data()?;
        }
        self.fix_index()
    }

    /// Makes the index hold exactly one entry per event.
    fn fix_index(&mut self) -> io::Result<()> {
        let version = self.version;
        let (log, idx) = self.files()?;
        let want = version * 8;
        let have = idx.metadata()?.len();
        if have == want {
            return Ok(());
        }
        if have > want {
            idx.set_len(want)?;
            return idx.sync_data();
        }
        // Rebuild the missing entries by scanning the log from the last indexed batch.
        let have_entries = have / 8;
        let start = if have_entries == 0 {
            0
        } else {
            let mut b = [0u8; 8];
            idx.read_exact_at(&mut b, (have_entries - 1) * 8)?;
            u64::from_le_bytes(b)
        };
        let mut buf = Vec::new();
        log.seek(SeekFrom::Start(start))?;
        log.read_to_end(&mut buf)?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        while let Some((batch, n)) = decode(&buf[at..]) {
            for i in 0..batch.events.len() as u64 {
                let v = batch.first + i;
                if v > have_entries && v <= version {
                    entries.extend_from_slice(&(start + at as u64).to_le_bytes());
                }
            }
            at += n;
        }
        idx.set_len(have_entries * 8)?;
        idx.write_all_at(&entries, have_entries * 8)?;
        idx.sync_data()
    }

    /// Appends one batch (the caller checked the version and the command id).
    pub(super) fn append(&mut self, record: &[u8], count: u64) -> io::Result<()> {
        let offset = self.scanned;
        let first = self.version + 1;
        let (log, idx) = self.files()?;
        log.write_all_at(record, offset)?;
        log.sync_data()?;
        let mut entries = Vec::with_capacity(count as usize * 8);
        for _ in 0..count {
            entries.extend_from_slice(&offset.to_le_bytes());
        }
        idx.write_all_at(&entries, (first - 1) * 8)?;
        idx.sync_data()?;
        self.scanned = offset + record.len() as u64;
        self.version += count;
        Ok(())
    }

    /// Empties the log and the index (files stay, so other processes notice the truncation).
    pub(super) fn truncate(&mut self) -> io::Result<()> {
        let (log, idx) = self.files()?;
        log.set_len(0)?;
        log.sync_data()?;
        idx.set_len(0)?;
        idx.sync_data()?;
        self.scanned = 0;
        self.version = 0;
        self.commands.clear();
        Ok(())
    }
}

/// Reads up to `limit` events after `after` from the stream in `dir`, without locks: records
/// are immutable once written and a torn or half-written tail ends the read.
pub(super) fn read(dir: &Path, after: u64, limit: usize) -> io::Result<Vec<RecordedEvent>> {
    let mut log = match File::open(dir.join("events.log")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let start = match File::open(dir.join("events.idx")) {
        Ok(idx) => {
            let entries = idx.metadata()?.len() / 8;
            let entry = (after + 1).min(entries);
            if entry == 0 {
                0
            } else {
                let mut b = [0u8; 8];
                idx.read_exact_at(&mut b, (entry - 1) * 8)?;
                u64::from_le_bytes(b)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    log.seek(SeekFrom::Start(start))?;
    log.read_to_end(&mut buf)?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut expect: Option<u64> = None;
    while let Some((batch, n)) = decode(&buf[at..]) {
        if expect.is_some_and(|v| v != batch.first) {
            break;
        }
        expect = Some(batch.first + batch.events.len() as u64);
        for (i, (schema, payload)) in batch.events.into_iter().enumerate() {
            let version = batch.first + i as u64;
            if version > after {
                out.push(RecordedEvent {
                    version,
                    schema,
                    payload,
                    recorded_at_ms: batch.at_ms,
                });
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        at += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_torn_ones_are_refused() {
        let events = vec![
            NewEvent {
                schema: 1,
                payload: b"a".to_vec(),
            },
            NewEvent {
                schema: 2,
                payload: b"bcd".to_vec(),
            },
        ];
        let rec = encode(5, 99, "cmd", &events);
        let (b, n) = decode(&rec).unwrap();
        assert_eq!(
            (b.first, b.at_ms, b.command.as_str(), n),
            (5, 99, "cmd", rec.len())
        );
        assert_eq!(b.events[1], (2, b"bcd".to_vec()));
        for len in 0..rec.len() {
            assert!(decode(&rec[..len]).is_none(), "torn at {len}");
        }
        let mut bad = rec.clone();
        bad[20] ^= 1;
        assert!(decode(&bad).is_none());
    }
}
