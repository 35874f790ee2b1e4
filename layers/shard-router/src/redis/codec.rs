//! The stored form of a topology: a compact binary encoding with a magic number, checked
//! whole when decoded.

use crate::error::{TopologyError, TopologyErrorKind};
use crate::ketama::KetamaFlavor;
use crate::node::{Algorithm, MAX_NODES, Node};
use crate::topology::Topology;

const MAGIC: &[u8; 4] = b"OSR1";

/// Encodes a topology: `OSR1`, epoch (u64), algorithm (u8 tag, u32 parameter: table bits, ring
/// vnodes, ketama flavour code (0 = libketama)), node count
/// (u32), each node as id (u16 length + bytes), weight (u32), address (u16 length + bytes),
/// then for a slot table each slot's node index (u16); all little-endian.
pub fn encode(t: &Topology) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + t.len() * 32 + t.slots().map_or(0, |s| s.len() * 2));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&t.epoch().to_le_bytes());
    let (tag, param) = match t.algorithm() {
        Algorithm::Table { bits } => (0u8, u32::from(bits)),
        Algorithm::Ring { vnodes } => (1, vnodes),
        Algorithm::Ketama(flavour) => (2, flavour.code()),
        Algorithm::Rendezvous => (3, 0),
    };
    out.push(tag);
    out.extend_from_slice(&param.to_le_bytes());
    out.extend_from_slice(&(t.len() as u32).to_le_bytes());
    for n in t.nodes() {
        out.extend_from_slice(&(n.id().len() as u16).to_le_bytes());
        out.extend_from_slice(n.id().as_bytes());
        out.extend_from_slice(&n.weight().to_le_bytes());
        out.extend_from_slice(&(n.address().len() as u16).to_le_bytes());
        out.extend_from_slice(n.address().as_bytes());
    }
    if let Some(slots) = t.slots() {
        for s in slots {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

/// Decodes [`encode`]'s format, checking everything (a table must match its nodes' weights).
pub fn decode(mut b: &[u8]) -> Result<Topology, TopologyError> {
    let bad =
        |m: &str| TopologyError::new(TopologyErrorKind::Decode, format!("stored topology: {m}"));
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head)
    }
    let short = || bad("truncated");
    if take(&mut b, 4).ok_or_else(short)? != MAGIC {
        return Err(bad("not an omega shard topology (bad magic)"));
    }
    let u64_at =
        |b: &mut &[u8]| take(b, 8).map(|x| u64::from_le_bytes(x.try_into().expect("8 bytes")));
    let u32_at =
        |b: &mut &[u8]| take(b, 4).map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes")));
    let u16_at =
        |b: &mut &[u8]| take(b, 2).map(|x| u16::from_le_bytes(x.try_into().expect("2 bytes")));
    let epoch = u64_at(&mut b).ok_or_else(short)?;
    let tag = take(&mut b, 1).ok_or_else(short)?[0];
    let param = u32_at(&mut b).ok_or_else(short)?;
    let algorithm = match tag {
        0 => Algorithm::Table {
            bits: u8::try_from(param).map_err(|_| bad("table bits"))?,
        },
        1 => Algorithm::Ring { vnodes: param },
        2 => Algorithm::Ketama(
            KetamaFlavor::from_code(param).ok_or_else(|| bad("unknown ketama flavour"))?,
        ),
        3 => Algorithm::Rendezvous,
        _ => return Err(bad("unknown algorithm")),
    };
    let count = u32_at(&mut b).ok_or_else(short)? as usize;
    if count > MAX_NODES {
        return Err(bad("too many nodes"));
    }
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(u16_at(&mut b).ok_or_else(short)?);
        let id = std::str::from_utf8(take(&mut b, len).ok_or_else(short)?)
            .map_err(|_| bad("id not UTF-8"))?;
        let weight = u32_at(&mut b).ok_or_else(short)?;
        let len = usize::from(u16_at(&mut b).ok_or_else(short)?);
        let addr = std::str::from_utf8(take(&mut b, len).ok_or_else(short)?)
            .map_err(|_| bad("address not UTF-8"))?;
        nodes.push(Node::new(id, addr).with_weight(weight));
    }
    let slots = match algorithm {
        Algorithm::Table { bits } => {
            let m = 1usize
                .checked_shl(u32::from(bits))
                .filter(|_| bits <= 24)
                .ok_or_else(|| bad("table bits"))?;
            let raw = take(&mut b, m * 2).ok_or_else(short)?;
            Some(
                raw.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            )
        }
        _ => None,
    };
    if !b.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Topology::from_parts(epoch, algorithm, nodes, slots)
}
