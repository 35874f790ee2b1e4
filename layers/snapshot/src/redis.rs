//! The Redis store, over omega-core's [`RedisBackend`] (Redis or Redis Cluster).
//!
//! Each aggregate's keys share one hash tag, `<prefix>:{<type>:<id>}:...`, so every script
//! touches one Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `events` | list | one entry per event: schema (u32), appended at (u64 ms), payload |
//! | `cmds` | hash | command id → version at the end of its batch |
//! | `snaps` | hash | version → snapshot bytes |
//! | `snapmeta` | hash | version → the snapshot's 48-byte header (for listings) |
//!
//! An append is one Lua script: it answers "duplicate" when the command id is known, a
//! conflict when the list's length is not the expected version, else pushes the batch and
//! records the command id, atomically. A timeout leaves the outcome unknown; the layer sends
//! the same append again and the command id makes it land at most once. Every operation is
//! bounded by the backend's operation timeout. Durability is Redis's own (AOF with
//! `appendfsync always` keeps every acknowledged append across a crash).

use std::sync::LazyLock;

use omega_core::redis::{RedisBackend, Script};

use crate::aggregate::{CommandId, StreamId};
use crate::error::StoreError;
use crate::store::{
    Appended, BoxFuture, EventStore, NewEvent, RecordedEvent, SnapshotMeta, SnapshotRecord,
    SnapshotStore, unix_ms,
};

static APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "snapshot_append",
        r"
local dup = redis.call('HGET', KEYS[2], ARGV[2])
if dup then return {1, tonumber(dup)} end
local n = redis.call('LLEN', KEYS[1])
if n ~= tonumber(ARGV[1]) then return {2, n} end
for i = 3, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local v = n + #ARGV - 2
redis.call('HSET', KEYS[2], ARGV[2], v)
return {0, v}
",
    )
});

static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "snapshot_save",
        r"
local v = tonumber(ARGV[1])
for _, k in ipairs(redis.call('HKEYS', KEYS[2])) do
  if tonumber(k) > v then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
",
    )
});

static LOAD_BEFORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "snapshot_load_before",
        r"
local before = ARGV[1]
local best, bestk = nil, nil
for _, k in ipairs(redis.call('HKEYS', KEYS[2])) do
  local n = tonumber(k)
  if (before == 'max' or n < tonumber(before)) and (best == nil or n > best) then
    best, bestk = n, k
  end
end
if best == nil then return false end
return {bestk, redis.call('HGET', KEYS[1], bestk)}
",
    )
});

static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "snapshot_list",
        r"
local out = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = tostring(redis.call('HSTRLEN', KEYS[1], all[i]))
end
return out
",
    )
});

static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "snapshot_prune",
        r"
for i = 1, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
",
    )
});

/// Events and snapshots in Redis or Redis Cluster. Clones share the backend.
#[derive(Clone, Debug)]
pub struct RedisStore {
    backend: RedisBackend,
}

struct Keys {
    events: String,
    cmds: String,
    snaps: String,
    meta: String,
}

impl RedisStore {
    /// A store over `backend` (its keyspace prefixes every key).
    pub fn new(backend: RedisBackend) -> Self {
        RedisStore { backend }
    }

    /// The backend.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    fn keys(&self, stream: &StreamId) -> Keys {
        let tag = format!("{}:{}", stream.kind(), stream.id());
        let ks = self.backend.keyspace();
        Keys {
            events: ks.tagged(&tag, &["events"]),
            cmds: ks.tagged(&tag, &["cmds"]),
            snaps: ks.tagged(&tag, &["snaps"]),
            meta: ks.tagged(&tag, &["snapmeta"]),
        }
    }
}

fn event_entry(e: &NewEvent, at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + e.payload.len());
    out.extend_from_slice(&e.schema.to_le_bytes());
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&e.payload);
    out
}

fn parse_entry(version: u64, mut entry: Vec<u8>) -> Result<RecordedEvent, StoreError> {
    if entry.len() < 12 {
        return Err(StoreError::corrupt(format!(
            "event {version}: a {}-byte entry",
            entry.len()
        )));
    }
    let schema = u32::from_le_bytes(entry[0..4].try_into().expect("4"));
    let at = u64::from_le_bytes(entry[4..12].try_into().expect("8"));
    entry.drain(..12);
    Ok(RecordedEvent {
        version,
        schema,
        payload: entry,
        recorded_at_ms: at,
    })
}

impl EventStore for RedisStore {
    fn append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: u64,
        command: &'a CommandId,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Appended, StoreError>> {
        Box::pin(async move {
            if events.is_empty() {
                return Err(StoreError::backend("append of no events"));
            }
            let k = self.keys(stream);
            let at = unix_ms();
            let mut call = APPEND
                .call()
                .key(&k.events)
                .key(&k.cmds)
                .arg(expected)
                .arg(command.as_str());
            for e in events {
                call = call.arg(event_entry(e, at));
            }
            let (code, n): (i64, u64) = self.backend.eval(&call).await?;
            match code {
                0 => Ok(Appended::Appended { version: n }),
                1 => Ok(Appended::Duplicate { version: n }),
                _ => Err(StoreError::conflict(expected, n)),
            }
        })
    }

    fn read<'a>(
        &'a self,
        stream: &'a StreamId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>, StoreError>> {
        Box::pin(async move {
            let k = self.keys(stream);
            let mut cmd = redis::cmd("LRANGE");
            cmd.arg(&k.events)
                .arg(after)
                .arg(after.saturating_add(limit.max(1) as u64) - 1);
            let entries: Vec<Vec<u8>> = self.backend.query(&cmd).await?;
            entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| parse_entry(after + 1 + i as u64, e))
                .collect()
        })
    }

    fn version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("LLEN");
            cmd.arg(self.keys(stream).events);
            Ok(self.backend.query(&cmd).await?)
        })
    }

    fn applied<'a>(
        &'a self,
        stream: &'a StreamId,
        command: &'a CommandId,
    ) -> BoxFuture<'a, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(self.keys(stream).cmds).arg(command.as_str());
            Ok(self.backend.query(&cmd).await?)
        })
    }

    fn delete_stream<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.keys(stream);
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&k.events).arg(&k.cmds);
            self.backend.query::<()>(&cmd).await?;
            Ok(())
        })
    }
}

impl SnapshotStore for RedisStore {
    fn save<'a>(
        &'a self,
        stream: &'a StreamId,
        snapshot: &'a SnapshotRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let k = self.keys(stream);
            let head = &snapshot.bytes[..snapshot.bytes.len().min(SnapshotMeta::HEADER_LEN)];
            let call = SAVE
                .call()
                .key(&k.snaps)
                .key(&k.meta)
                .arg(snapshot.version)
                .arg(&snapshot.bytes[..])
                .arg(head);
            let saved: i64 = self.backend.eval(&call).await?;
            Ok(saved == 1)
        })
    }

    fn load<'a>(
        &'a self,
        stream: &'a StreamId,
        version: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(self.keys(stream).snaps).arg(version);
            let bytes: Option<Vec<u8>> = self.backend.query(&cmd).await?;
            Ok(bytes.map(|bytes| SnapshotRecord { version, bytes }))
        })
    }

    fn load_before<'a>(
        &'a self,
        stream: &'a StreamId,
        before: u64,
    ) -> BoxFuture<'a, Result<Option<SnapshotRecord>, StoreError>> {
        Box::pin(async move {
            let k = self.keys(stream);
            let before = if before == u64::MAX {
                "max".to_owned()
            } else {
                before.to_string()
            };
            let call = LOAD_BEFORE.call().key(&k.snaps).key(&k.meta).arg(before);
            let found: Option<(String, Option<Vec<u8>>)> = self.backend.eval(&call).await?;
            match found {
                None => Ok(None),
                Some((v, bytes)) => {
                    let version = v
                        .parse()
                        .map_err(|_| StoreError::corrupt(format!("snapshot version {v:?}")))?;
                    Ok(Some(SnapshotRecord {
                        version,
                        bytes: bytes.unwrap_or_default(),
                    }))
                }
            }
        })
    }

    fn list<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Vec<SnapshotMeta>, StoreError>> {
        Box::pin(async move {
            let k = self.keys(stream);
            let call = LIST.call().key(&k.snaps).key(&k.meta);
            let flat: Vec<Vec<u8>> = self.backend.eval(&call).await?;
            let mut out = Vec::with_capacity(flat.len() / 3);
            for chunk in flat.chunks(3) {
                let [v, head, size] = chunk else {
                    return Err(StoreError::corrupt("a snapshot listing of odd length"));
                };
                let parse = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
                let v = parse(v).ok_or_else(|| StoreError::corrupt("a snapshot version"))?;
                out.push(SnapshotMeta::from_prefix(v, parse(size).unwrap_or(0), head));
            }
            out.sort_by_key(|m| std::cmp::Reverse(m.version));
            Ok(out)
        })
    }

    fn prune<'a>(
        &'a self,
        stream: &'a StreamId,
        versions: &'a [u64],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if versions.is_empty() {
                return Ok(());
            }
            let k = self.keys(stream);
            let mut call = PRUNE.call().key(&k.snaps).key(&k.meta);
            for v in versions {
                call = call.arg(*v);
            }
            self.backend.eval::<i64>(&call).await?;
            Ok(())
        })
    }

    fn delete_snapshots<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = self.keys(stream);
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&k.snaps).arg(&k.meta);
            self.backend.query::<()>(&cmd).await?;
            Ok(())
        })
    }
}
