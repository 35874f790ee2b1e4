//! The slot table: `2^bits` slots, each naming a node; a key's slot is the top `bits` bits of
//! its hash.
//!
//! **Shares.** Each node's number of slots is its seat count in a Sainte-Laguë apportionment
//! of the slots by weight (the `M` highest of the priorities `w / (2k + 1)`, ties to the node
//! whose id sorts first). That is within about one slot of `M × w / W`, and, being a divisor
//! method, it is *monotone*: adding a node or raising one node's weight never raises another
//! node's count, and removing a node or lowering its weight never lowers another's.
//!
//! **Movement.** A change is applied as a change of one node's weight (an added node first
//! joins with weight 0, a removed node leaves after dropping to 0). Monotonicity means every
//! other node either only gives slots to the changed node or only receives slots from it, so
//! slots move only to or from the changed node and exactly `|quota change|` of them move: the
//! minimum. A node that gains takes, from each donor, the donor's slots with the highest
//! affinity `score(node, slot)`; a node that loses gives up its slots with the lowest affinity,
//! and each freed slot (in slot order) goes to the receiving node that weighted rendezvous
//! ranks first for it among those still short of their quota, which for most slots is the
//! next node of the slot's preference list.
//!
//! **History.** The table is a function of the sequence of changes, not of the final node set
//! alone (a table that is a pure function of the node set and moves slots only to or from the
//! changed node must give every slot a fixed ranking of nodes, like rendezvous hashing, and
//! then balances only statistically). A fresh table is built by adding the nodes one at a time
//! in id order, so every process that builds from the same node list gets the same table, and
//! routers that share a topology share its table: in-process through a
//! [`TopologyHandle`](crate::TopologyHandle), across processes through Redis, where the table
//! is stored with its epoch.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::hash::{hrw_beats, score};

#[derive(Clone, Debug)]
pub(crate) struct SlotTable {
    bits: u8,
    slots: Box<[u16]>,
    counts: Vec<u32>,
}

/// The next seat of a node in the apportionment: priority `w / den` with `den = 2k + 1`.
#[derive(Clone, Copy, Eq, PartialEq)]
struct Seat {
    w: u64,
    den: u64,
    idx: u32,
}

impl Ord for Seat {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = u128::from(self.w) * u128::from(other.den);
        let b = u128::from(other.w) * u128::from(self.den);
        a.cmp(&b).then_with(|| other.idx.cmp(&self.idx))
    }
}

impl PartialOrd for Seat {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The Sainte-Laguë apportionment of `m` slots over `weights` (ties to the lower index).
pub(crate) fn quotas(weights: &[u32], m: u64) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut seats = vec![0u32; weights.len()];
    if total == 0 {
        return seats;
    }
    let n = weights.len() as u64;
    // Seats surely in the top m (see the module docs of the proof in `quotas_lower_bound`).
    let mut given = 0u64;
    for (s, &w) in seats.iter_mut().zip(weights) {
        let exact = (u128::from(m) * u128::from(w) / u128::from(total)) as u64;
        let lb = exact.saturating_sub(n / 2 + 2);
        *s = lb as u32;
        given += lb;
    }
    let mut heap: BinaryHeap<Seat> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(i, &w)| Seat {
            w: u64::from(w),
            den: 2 * u64::from(seats[i]) + 1,
            idx: i as u32,
        })
        .collect();
    while given < m {
        let mut top = heap.peek_mut().expect("a positive weight exists");
        seats[top.idx as usize] += 1;
        top.den += 2;
        given += 1;
    }
    seats
}

impl SlotTable {
    pub(crate) fn empty(bits: u8) -> Self {
        SlotTable {
            bits,
            slots: vec![u16::MAX; 1usize << bits].into_boxed_slice(),
            counts: Vec::new(),
        }
    }

    pub(crate) fn bits(&self) -> u8 {
        self.bits
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn slots(&self) -> &[u16] {
        &self.slots
    }

    pub(crate) fn count(&self, idx: usize) -> u32 {
        self.counts.get(idx).copied().unwrap_or(0)
    }

    /// Restores a table from its slots (decoding a stored topology). `None` if a slot names a
    /// node out of range or the table does not match the apportionment of `weights`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_slots(bits: u8, slots: Vec<u16>, weights: &[u32]) -> Option<Self> {
        if slots.len() != 1usize << bits {
            return None;
        }
        let mut counts = vec![0u32; weights.len()];
        for &s in &slots {
            if s == u16::MAX && weights.iter().all(|&w| w == 0) {
                continue;
            }
            *counts.get_mut(usize::from(s))? += 1;
        }
        if counts != quotas(weights, slots.len() as u64) {
            return None;
        }
        Some(SlotTable {
            bits,
            slots: slots.into_boxed_slice(),
            counts,
        })
    }

    #[inline]
    pub(crate) fn lookup(&self, hash: u64) -> u16 {
        // `bits` is at least 1, so the shift is below 64.
        self.slots[self.slot_of(hash)]
    }

    /// The slot a hash falls in.
    #[inline]
    pub(crate) fn slot_of(&self, hash: u64) -> usize {
        (hash >> (64 - u32::from(self.bits))) as usize
    }

    /// Makes room for a node at index `at` (weight 0, no slots).
    pub(crate) fn insert_index(&mut self, at: usize) {
        let at16 = at as u16;
        for s in self.slots.iter_mut() {
            if *s != u16::MAX && *s >= at16 {
                *s += 1;
            }
        }
        self.counts.insert(at, 0);
    }

    /// Drops the node at index `at`, which must own no slot.
    pub(crate) fn remove_index(&mut self, at: usize) {
        debug_assert_eq!(self.counts[at], 0);
        let at16 = at as u16;
        for s in self.slots.iter_mut() {
            if *s != u16::MAX && *s > at16 {
                *s -= 1;
            }
        }
        self.counts.remove(at);
    }

    /// Moves the minimum number of slots so that node counts follow `weights`, where only
    /// node `x`'s weight differs from the weights the table was balanced for.
    pub(crate) fn rebalance(&mut self, weights: &[u32], seeds: &[u64], x: usize) {
        let m = self.slots.len() as u64;
        let target = quotas(weights, m);
        let have = self.counts[x];
        let want = target[x];
        match want.cmp(&have) {
            Ordering::Equal => {}
            Ordering::Greater => self.grow(x, seeds[x], &target),
            Ordering::Less => self.shrink(x, &target, weights, seeds),
        }
        debug_assert_eq!(self.counts, target);
    }

    fn grow(&mut self, x: usize, seed: u64, target: &[u32]) {
        let x16 = x as u16;
        let n = self.counts.len();
        if self.slots.iter().all(|&s| s == u16::MAX) {
            // The first node with a weight takes every slot.
            self.slots.fill(x16);
            self.counts[x] = self.slots.len() as u32;
            return;
        }
        let mut by_donor: Vec<Vec<(u64, u32)>> = vec![Vec::new(); n];
        let donors: Vec<bool> = (0..n)
            .map(|i| i != x && self.counts[i] > target[i])
            .collect();
        for (slot, &owner) in self.slots.iter().enumerate() {
            let o = usize::from(owner);
            if owner != u16::MAX && donors[o] {
                by_donor[o].push((score(seed, slot as u64), slot as u32));
            }
        }
        for (i, mut cands) in by_donor.into_iter().enumerate() {
            if !donors[i] {
                continue;
            }
            let give = (self.counts[i] - target[i]) as usize;
            // Highest affinity first; (score, slot) pairs are distinct.
            let nth = give - 1;
            cands.select_nth_unstable_by(nth, |a, b| b.cmp(a));
            for &(_, slot) in &cands[..give] {
                self.slots[slot as usize] = x16;
            }
            self.counts[i] -= give as u32;
            self.counts[x] += give as u32;
        }
    }

    fn shrink(&mut self, x: usize, target: &[u32], weights: &[u32], seeds: &[u64]) {
        if target.iter().all(|&t| t == 0) {
            self.slots.fill(u16::MAX);
            self.counts.fill(0);
            return;
        }
        let x16 = x as u16;
        let seed = seeds[x];
        let release = (self.counts[x] - target[x]) as usize;
        let mut mine: Vec<(u64, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, o)| **o == x16)
            .map(|(slot, _)| (score(seed, slot as u64), slot as u32))
            .collect();
        if release < mine.len() {
            // Lowest affinity first.
            mine.select_nth_unstable(release - 1);
            mine.truncate(release);
        }
        let mut freed: Vec<u32> = mine.into_iter().map(|(_, s)| s).collect();
        freed.sort_unstable();
        let mut need: Vec<(usize, u32)> = (0..self.counts.len())
            .filter(|&i| i != x && target[i] > self.counts[i])
            .map(|i| (i, target[i] - self.counts[i]))
            .collect();
        for slot in freed {
            // The receiver that weighted rendezvous prefers for this slot, among those still
            // short: the same order as the failover order of the slot's keys.
            let mut best: Option<(u32, u64, usize)> = None;
            for (k, &(i, left)) in need.iter().enumerate() {
                if left == 0 {
                    continue;
                }
                let s = score(seeds[i], u64::from(slot));
                if best.is_none_or(|(bw, bs, _)| hrw_beats(weights[i], s, bw, bs)) {
                    best = Some((weights[i], s, k));
                }
            }
            let (_, _, k) = best.expect("freed slots equal the receivers' shortfall");
            let i = need[k].0;
            need[k].1 -= 1;
            self.slots[slot as usize] = i as u16;
            self.counts[i] += 1;
            self.counts[x] -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_sum_to_m_and_follow_weights() {
        let q = quotas(&[1, 1, 1], 10);
        assert_eq!(q, vec![4, 3, 3]);
        let q = quotas(&[3, 1], 8);
        assert_eq!(q, vec![6, 2]);
        let q = quotas(&[0, 5], 16);
        assert_eq!(q, vec![0, 16]);
        let w: Vec<u32> = (1..=100).collect();
        let q = quotas(&w, 1 << 16);
        assert_eq!(q.iter().map(|&x| u64::from(x)).sum::<u64>(), 1 << 16);
        let total: u64 = w.iter().map(|&x| u64::from(x)).sum();
        for (i, &s) in q.iter().enumerate() {
            let exact = (1u64 << 16) as f64 * f64::from(w[i]) / total as f64;
            assert!((f64::from(s) - exact).abs() <= 1.0, "{i}: {s} vs {exact}");
        }
    }

    #[test]
    fn quotas_are_monotone_when_a_node_is_added() {
        let mut w: Vec<u32> = vec![3, 7, 1, 1, 9, 4];
        let before = quotas(&w, 1000);
        w.push(5);
        let after = quotas(&w, 1000);
        for i in 0..6 {
            assert!(after[i] <= before[i]);
        }
    }
}
