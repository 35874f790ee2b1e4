//! Rings of points: the weighted ring with virtual nodes, and the ketama continuums (placed by
//! [`crate::ketama`]).
//!
//! A key belongs to the node of the first point at or after its hash, wrapping around. Lookup
//! uses a bucket index over the top bits of the hash, so it costs one or two probes instead of
//! a binary search.

use crate::hash::score;

#[derive(Clone, Debug)]
pub(crate) struct Ring {
    points: Box<[u64]>,
    owners: Box<[u16]>,
    /// `index[t]` = the first position whose point is `>= t << shift`; one extra entry at the
    /// end holds `points.len()`.
    index: Box<[u32]>,
    shift: u32,
}

/// How many points each node gets in the xxh3 ring: `vnodes × weight`, at most
/// [`MAX_POINTS_PER_NODE`]. A node's points depend on its own id and weight only, so a change
/// never moves keys between two other nodes.
pub(crate) fn ring_points(vnodes: u32, weights: &[u32]) -> Vec<u32> {
    weights
        .iter()
        .map(|&w| (u64::from(vnodes) * u64::from(w)).min(MAX_POINTS_PER_NODE) as u32)
        .collect()
}

/// The most points one node gets on the xxh3 ring.
pub(crate) const MAX_POINTS_PER_NODE: u64 = 1 << 16;

impl Ring {
    /// The xxh3 ring: node `i` gets points `score(seed_i, j)` for `j < points_i`.
    pub(crate) fn build(vnodes: u32, weights: &[u32], seeds: &[u64]) -> Self {
        let counts = ring_points(vnodes, weights);
        let mut pts: Vec<(u64, u16)> = Vec::with_capacity(counts.iter().map(|&c| c as usize).sum());
        for (i, (&c, &seed)) in counts.iter().zip(seeds).enumerate() {
            for j in 0..c {
                pts.push((score(seed, u64::from(j)), i as u16));
            }
        }
        Self::from_points(pts)
    }

    /// A ketama continuum: 32-bit points kept in the top 32 bits of the `u64` positions.
    pub(crate) fn build_ketama(points: Vec<(u32, u16)>) -> Self {
        Self::from_points(
            points
                .into_iter()
                .map(|(p, i)| (u64::from(p) << 32, i))
                .collect(),
        )
    }

    fn from_points(mut pts: Vec<(u64, u16)>) -> Self {
        // Equal points: the node that sorts first owns the point.
        pts.sort_unstable();
        let bits = (usize::BITS - pts.len().max(1).leading_zeros()).clamp(1, 20);
        let shift = 64 - bits;
        let buckets = 1usize << bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut pos = 0usize;
        for t in 0..buckets as u64 {
            let start = t << shift;
            while pos < pts.len() && pts[pos].0 < start {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(pts.len() as u32);
        Ring {
            points: pts.iter().map(|p| p.0).collect(),
            owners: pts.iter().map(|p| p.1).collect(),
            index: index.into_boxed_slice(),
            shift,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// The position of the first point at or after `hash` (wrapping), or `None` for an empty
    /// ring.
    #[inline]
    pub(crate) fn position(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let t = (hash >> self.shift) as usize;
        let mut pos = self.index[t] as usize;
        let end = self.index[t + 1] as usize;
        while pos < end && self.points[pos] < hash {
            pos += 1;
        }
        Some(if pos == self.points.len() { 0 } else { pos })
    }

    #[inline]
    pub(crate) fn lookup(&self, hash: u64) -> Option<u16> {
        self.position(hash).map(|p| self.owners[p])
    }

    /// Owners clockwise from `pos`.
    pub(crate) fn walk(&self, pos: usize) -> impl Iterator<Item = u16> + '_ {
        let n = self.points.len();
        (0..n).map(move |k| self.owners[(pos + k) % n])
    }

    /// The points with their owners, in ring order.
    pub(crate) fn points(&self) -> impl Iterator<Item = (u64, u16)> + '_ {
        self.points.iter().copied().zip(self.owners.iter().copied())
    }

    /// Each node's share of the hash space (arc lengths), by index.
    pub(crate) fn shares(&self, nodes: usize) -> Vec<f64> {
        let mut arcs = vec![0u128; nodes];
        let n = self.points.len();
        for k in 0..n {
            let prev = if k == 0 {
                self.points[n - 1]
            } else {
                self.points[k - 1]
            };
            let len = if n == 1 {
                1u128 << 64
            } else {
                u128::from(self.points[k].wrapping_sub(prev))
            };
            arcs[usize::from(self.owners[k])] += len;
        }
        arcs.iter()
            .map(|&a| a as f64 / 18_446_744_073_709_551_616.0)
            .collect()
    }
}
