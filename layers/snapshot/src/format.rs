//! The stored form of a snapshot: a fixed 48-byte header, then the body.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `OSNP` |
//! | 4 | header format (1) |
//! | 5 | kind: 0 full, 1 delta |
//! | 6 | state format: 1 JSON, 2 binary |
//! | 7 | compression: 0 none, 1 zstd |
//! | 8..12 | state schema version (`Aggregate::SNAPSHOT_SCHEMA`), little endian |
//! | 12..20 | version: the last event included |
//! | 20..28 | base version: the full snapshot a delta applies to (0 for a full one) |
//! | 28..36 | written at, ms since the Unix epoch |
//! | 36..40 | length of the encoded state |
//! | 40..44 | length of the body |
//! | 44..48 | CRC-32 of bytes 0..44 and of the body |
//!
//! A full body is the encoded state, zstd-compressed when it is large enough. A delta body is
//! the encoded state compressed by zstd with the base's encoded state as its dictionary (zstd's
//! "patch from" mode): it costs little more than the bytes that changed.

use std::fmt;

use crate::aggregate::Format;

pub(crate) const HEADER_LEN: usize = 48;
const MAGIC: &[u8; 4] = b"OSNP";
const HEADER_FORMAT: u8 = 1;

/// Full snapshot or delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotKind {
    /// The whole state.
    Full,
    /// The changes against a full snapshot.
    Delta,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Zstd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: SnapshotKind,
    pub(crate) format: Format,
    pub(crate) compression: Compression,
    pub(crate) schema: u32,
    pub(crate) version: u64,
    pub(crate) base_version: u64,
    pub(crate) created_at_ms: u64,
    pub(crate) raw_len: u32,
    pub(crate) body_len: u32,
}

/// Why stored snapshot bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(s: impl Into<String>) -> Invalid {
    Invalid(s.into())
}

impl Header {
    pub(crate) fn base(&self) -> Option<u64> {
        (self.kind == SnapshotKind::Delta).then_some(self.base_version)
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(HEADER_FORMAT);
        out.push(match self.kind {
            SnapshotKind::Full => 0,
            SnapshotKind::Delta => 1,
        });
        out.push(self.format.id());
        out.push(match self.compression {
            Compression::None => 0,
            Compression::Zstd => 1,
        });
        out.extend_from_slice(&self.schema.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.base_version.to_le_bytes());
        out.extend_from_slice(&self.created_at_ms.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
    }

    /// Parses the header fields without checking the checksum (for listings).
    pub(crate) fn peek(bytes: &[u8]) -> Option<Header> {
        Self::parse(bytes).ok()
    }

    fn parse(b: &[u8]) -> Result<Header, Invalid> {
        if b.len() < HEADER_LEN {
            return Err(invalid(format!(
                "{} bytes, shorter than the header",
                b.len()
            )));
        }
        if &b[0..4] != MAGIC {
            return Err(invalid("bad magic"));
        }
        if b[4] != HEADER_FORMAT {
            return Err(invalid(format!("unknown header format {}", b[4])));
        }
        let kind = match b[5] {
            0 => SnapshotKind::Full,
            1 => SnapshotKind::Delta,
            k => return Err(invalid(format!("unknown kind {k}"))),
        };
        let format =
            Format::from_id(b[6]).ok_or_else(|| invalid(format!("unknown format {}", b[6])))?;
        let compression = match b[7] {
            0 => Compression::None,
            1 => Compression::Zstd,
            c => return Err(invalid(format!("unknown compression {c}"))),
        };
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Header {
            kind,
            format,
            compression,
            schema: u32_at(8),
            version: u64_at(12),
            base_version: u64_at(20),
            created_at_ms: u64_at(28),
            raw_len: u32_at(36),
            body_len: u32_at(40),
        })
    }
}

/// Checks magic, lengths and checksum; returns the header and the body.
pub(crate) fn open(bytes: &[u8]) -> Result<(Header, &[u8]), Invalid> {
    let header = Header::parse(bytes)?;
    let body = &bytes[HEADER_LEN..];
    if body.len() != header.body_len as usize {
        return Err(invalid(format!(
            "body is {} bytes, the header says {} (torn write?)",
            body.len(),
            header.body_len
        )));
    }
    let stored = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes"));
    if stored != checksum(&bytes[..44], body) {
        return Err(invalid("checksum mismatch"));
    }
    Ok((header, body))
}

fn checksum(head: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(body);
    h.finalize()
}

fn assemble(mut header: Header, body: &[u8]) -> Vec<u8> {
    header.body_len = u32::try_from(body.len()).expect("snapshots are below 4 GiB");
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    header.write(&mut out);
    let crc = checksum(&out, body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// What a snapshot describes, apart from its body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub(crate) format: Format,
    pub(crate) schema: u32,
    pub(crate) version: u64,
    pub(crate) created_at_ms: u64,
}

fn header(
    meta: Meta,
    kind: SnapshotKind,
    compression: Compression,
    base: u64,
    raw: &[u8],
) -> Header {
    Header {
        kind,
        format: meta.format,
        compression,
        schema: meta.schema,
        version: meta.version,
        base_version: base,
        created_at_ms: meta.created_at_ms,
        raw_len: u32::try_from(raw.len()).expect("snapshots are below 4 GiB"),
        body_len: 0,
    }
}

/// A full snapshot of the encoded state `raw`, compressed with zstd at `level` when
/// `compress` says so and the crate has zstd.
pub(crate) fn full(meta: Meta, raw: &[u8], compress: Option<i32>) -> Vec<u8> {
    #[cfg(feature = "zstd")]
    if let Some(level) = compress
        && let Ok(body) = zstd::bulk::compress(raw, level)
        && body.len() < raw.len()
    {
        return assemble(
            header(meta, SnapshotKind::Full, Compression::Zstd, 0, raw),
            &body,
        );
    }
    #[cfg(not(feature = "zstd"))]
    let _ = compress;
    assemble(
        header(meta, SnapshotKind::Full, Compression::None, 0, raw),
        raw,
    )
}

/// A delta of `raw` against the full snapshot at `base_version` whose encoded state is `base`.
/// `None` without the `zstd` feature.
pub(crate) fn delta(
    meta: Meta,
    raw: &[u8],
    base_version: u64,
    base: &[u8],
    level: i32,
) -> Option<Vec<u8>> {
    #[cfg(feature = "zstd")]
    {
        let mut c = zstd::bulk::Compressor::with_dictionary(level, base).ok()?;
        // A content checksum: a delta applied to the wrong base fails instead of decoding
        // into a wrong state.
        c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
            .ok()?;
        let body = c.compress(raw).ok()?;
        Some(assemble(
            header(
                meta,
                SnapshotKind::Delta,
                Compression::Zstd,
                base_version,
                raw,
            ),
            &body,
        ))
    }
    #[cfg(not(feature = "zstd"))]
    {
        let _ = (meta, raw, base_version, base, level);
        None
    }
}

/// The encoded state in a checked snapshot; `base` is the encoded state of its base for a delta.
pub(crate) fn materialize(
    h: &Header,
    body: &[u8],
    base: Option<&[u8]>,
) -> Result<Vec<u8>, Invalid> {
    let raw = match (h.kind, h.compression) {
        (SnapshotKind::Full, Compression::None) => body.to_vec(),
        (SnapshotKind::Full, Compression::Zstd) => unzstd(body, h.raw_len as usize, None)?,
        (SnapshotKind::Delta, Compression::Zstd) => {
            let base = base.ok_or_else(|| invalid("delta without its base"))?;
            unzstd(body, h.raw_len as usize, Some(base))?
        }
        (SnapshotKind::Delta, Compression::None) => return Err(invalid("uncompressed delta")),
    };
    if raw.len() != h.raw_len as usize {
        return Err(invalid(format!(
            "state is {} bytes, the header says {}",
            raw.len(),
            h.raw_len
        )));
    }
    Ok(raw)
}

#[cfg(feature = "zstd")]
fn unzstd(body: &[u8], len: usize, dict: Option<&[u8]>) -> Result<Vec<u8>, Invalid> {
    let mut d = match dict {
        Some(dict) => zstd::bulk::Decompressor::with_dictionary(dict),
        None => zstd::bulk::Decompressor::new(),
    }
    .map_err(|e| invalid(format!("zstd: {e}")))?;
    d.decompress(body, len)
        .map_err(|e| invalid(format!("zstd: {e}")))
}

#[cfg(not(feature = "zstd"))]
fn unzstd(_body: &[u8], _len: usize, _dict: Option<&[u8]>) -> Result<Vec<u8>, Invalid> {
    Err(invalid(
        "zstd-compressed, and this build lacks the `zstd` feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(version: u64) -> Meta {
        Meta {
            format: Format::Binary,
            schema: 2,
            version,
            created_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn full_roundtrips_and_detects_every_flipped_byte() {
        let raw: Vec<u8> = (0..200u8).collect();
        let bytes = full(meta(7), &raw, None);
        let (h, body) = open(&bytes).unwrap();
        assert_eq!((h.version, h.schema, h.kind), (7, 2, SnapshotKind::Full));
        assert_eq!(materialize(&h, body, None).unwrap(), raw);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(open(&bad).is_err(), "flip at {i} not detected");
        }
        for len in 0..bytes.len() {
            assert!(
                open(&bytes[..len]).is_err(),
                "truncation to {len} not detected"
            );
        }
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn compressed_and_delta_roundtrip() {
        let base: Vec<u8> = (0..4000u32).flat_map(|i| (i % 97).to_le_bytes()).collect();
        let c = full(meta(10), &base, Some(3));
        let (h, body) = open(&c).unwrap();
        assert_eq!(h.compression, Compression::Zstd);
        assert!(c.len() < base.len() / 3, "{} vs {}", c.len(), base.len());
        assert_eq!(materialize(&h, body, None).unwrap(), base);

        let mut next = base.clone();
        next[100] = 0xff;
        next[9000] = 0xee;
        let d = delta(meta(12), &next, 10, &base, 3).unwrap();
        let (h, body) = open(&d).unwrap();
        assert_eq!((h.kind, h.base()), (SnapshotKind::Delta, Some(10)));
        assert!(d.len() < 120, "delta is {} bytes", d.len());
        assert_eq!(materialize(&h, body, Some(&base)).unwrap(), next);
        assert!(materialize(&h, body, Some(&next[..100])).is_err());
        assert!(materialize(&h, body, None).is_err());
    }
}
