//! The immutable, versioned topology: nodes in id order, an epoch, and the structure that
//! routes keys to them.

use std::fmt;

use crate::error::{TopologyError, TopologyErrorKind};
use crate::hash::{ShardKey, hash_key, neg_log2_fixed, node_seed, score};
use crate::node::{Algorithm, Change, MAX_NODES, Node};
use crate::ring::Ring;
use crate::table::SlotTable;

#[derive(Clone, Debug)]
pub(crate) enum Router {
    Table(SlotTable),
    Ring(Ring),
    Rendezvous,
}

/// An immutable set of nodes with an epoch and the structure that routes keys to them.
///
/// Changes ([`Topology::apply`]) give a new topology with the next epoch; the old one stays
/// valid, so routers swap topologies atomically while requests are routed. Nodes are kept in
/// id order; a node's *index* is its position in [`Topology::nodes`].
///
/// ```
/// use omega_shard_router::{Algorithm, Change, Node, Topology};
///
/// let t = Topology::new(Algorithm::table(), (0..4).map(|i| Node::new(format!("n{i}"), format!("10.0.0.{i}:80"))))?;
/// let owner = t.owner("user:42").unwrap();
/// let t2 = t.apply(&[Change::Add(Node::new("n4", "10.0.0.4:80"))])?;
/// assert_eq!(t2.epoch(), t.epoch() + 1);
/// // Keys move only to the new node.
/// let now = t2.owner("user:42").unwrap();
/// assert!(now.id() == owner.id() || now.id() == "n4");
/// // Exactly a fifth of the key space moves (the minimum), all of it to n4.
/// let moved = t.diff(&t2);
/// assert!((moved.fraction() - 0.2).abs() < 1e-4);
/// # Ok::<(), omega_shard_router::TopologyError>(())
/// ```
#[derive(Clone)]
pub struct Topology {
    epoch: u64,
    algorithm: Algorithm,
    nodes: Vec<Node>,
    seeds: Vec<u64>,
    total_weight: u64,
    /// All nodes with a weight have the same weight (rendezvous compares raw scores).
    uniform: bool,
    pub(crate) router: Router,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("epoch", &self.epoch)
            .field("algorithm", &self.algorithm)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// An empty topology (epoch 0): every lookup finds no node.
    pub fn empty(algorithm: Algorithm) -> Result<Self, TopologyError> {
        algorithm.validate()?;
        let router = match algorithm {
            Algorithm::Table { bits } => Router::Table(SlotTable::empty(bits)),
            Algorithm::Ring { .. } | Algorithm::Ketama(_) => Router::Ring(Ring::build(1, &[], &[])),
            Algorithm::Rendezvous => Router::Rendezvous,
        };
        Ok(Topology {
            epoch: 0,
            algorithm,
            nodes: Vec::new(),
            seeds: Vec::new(),
            total_weight: 0,
            uniform: true,
            router,
        })
    }

    /// A topology of `nodes` (epoch 1). The slot table is built by adding the nodes one at a
    /// time in id order, so the same node list always gives the same table.
    pub fn new(
        algorithm: Algorithm,
        nodes: impl IntoIterator<Item = Node>,
    ) -> Result<Self, TopologyError> {
        let mut nodes: Vec<Node> = nodes.into_iter().collect();
        nodes.sort_by(|a, b| a.id().cmp(b.id()));
        let adds: Vec<Change> = nodes.into_iter().map(Change::Add).collect();
        Topology::empty(algorithm)?.apply(&adds)
    }

    /// Restores a topology from its parts (used when decoding a stored topology).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_parts(
        epoch: u64,
        algorithm: Algorithm,
        nodes: Vec<Node>,
        slots: Option<Vec<u16>>,
    ) -> Result<Self, TopologyError> {
        let decode = |m: &str| TopologyError::new(TopologyErrorKind::Decode, m.to_owned());
        algorithm.validate()?;
        if nodes.windows(2).any(|w| w[0].id() >= w[1].id()) {
            return Err(decode("nodes are not in strict id order"));
        }
        for n in &nodes {
            n.validate()?;
        }
        let mut t = Topology::empty(algorithm)?;
        t.epoch = epoch;
        t.nodes = nodes;
        t.refresh_derived();
        match (algorithm, slots) {
            (Algorithm::Table { bits }, Some(slots)) => {
                let weights: Vec<u32> = t.nodes.iter().map(|n| n.weight()).collect();
                let table = SlotTable::from_slots(bits, slots, &weights)
                    .ok_or_else(|| decode("the slot table does not match the nodes' weights"))?;
                t.router = Router::Table(table);
            }
            (Algorithm::Table { .. }, None) => return Err(decode("the slot table is missing")),
            (_, _) => t.rebuild_stateless(),
        }
        Ok(t)
    }

    fn refresh_derived(&mut self) {
        self.seeds = self.nodes.iter().map(|n| node_seed(n.id())).collect();
        self.total_weight = self.nodes.iter().map(|n| u64::from(n.weight())).sum();
        let mut positive = self.nodes.iter().map(|n| n.weight()).filter(|&w| w > 0);
        let first = positive.next();
        self.uniform = positive.all(|w| Some(w) == first);
    }

    fn rebuild_stateless(&mut self) {
        let weights: Vec<u32> = self.nodes.iter().map(|n| n.weight()).collect();
        match self.algorithm {
            Algorithm::Ring { vnodes } => {
                self.router = Router::Ring(Ring::build(vnodes, &weights, &self.seeds));
            }
            Algorithm::Ketama(flavour) => {
                let addrs: Vec<&str> = self.nodes.iter().map(|n| n.address()).collect();
                self.router = Router::Ring(Ring::build_ketama(flavour.points(&weights, &addrs)));
            }
            Algorithm::Rendezvous => self.router = Router::Rendezvous,
            Algorithm::Table { .. } => {}
        }
    }

    /// The topology after `changes`, applied in order, with the next epoch. Nothing changes if
    /// any change is invalid (a duplicate or unknown id, ...).
    pub fn apply(&self, changes: &[Change]) -> Result<Topology, TopologyError> {
        let mut next = self.clone();
        next.epoch = self.epoch + 1;
        for change in changes {
            next.apply_one(change)?;
        }
        next.rebuild_stateless();
        Ok(next)
    }

    /// The topology after one change (see [`Topology::apply`]).
    pub fn with(&self, change: Change) -> Result<Topology, TopologyError> {
        self.apply(&[change])
    }

    fn find(&self, id: &str) -> Result<usize, usize> {
        self.nodes.binary_search_by(|n| n.id().cmp(id))
    }

    fn apply_one(&mut self, change: &Change) -> Result<(), TopologyError> {
        let unknown = |id: &str| {
            TopologyError::new(
                TopologyErrorKind::UnknownNode,
                format!("no node {id:?} in the topology"),
            )
        };
        match change {
            Change::Add(node) => {
                node.validate()?;
                let at = match self.find(node.id()) {
                    Ok(_) => {
                        return Err(TopologyError::new(
                            TopologyErrorKind::DuplicateNode,
                            format!("node {:?} is already in the topology", node.id()),
                        ));
                    }
                    Err(at) => at,
                };
                if self.nodes.len() >= MAX_NODES {
                    return Err(TopologyError::new(
                        TopologyErrorKind::TooManyNodes,
                        format!("a topology holds at most {MAX_NODES} nodes"),
                    ));
                }
                let weight = node.weight();
                self.nodes.insert(at, node.clone().with_weight(0));
                if let Router::Table(t) = &mut self.router {
                    t.insert_index(at);
                }
                self.refresh_derived();
                self.set_weight(at, weight);
            }
            Change::Remove(id) => {
                let at = self.find(id).map_err(|_| unknown(id))?;
                self.set_weight(at, 0);
                self.nodes.remove(at);
                if let Router::Table(t) = &mut self.router {
                    t.remove_index(at);
                }
                self.refresh_derived();
            }
            Change::Reweight(id, w) => {
                let at = self.find(id).map_err(|_| unknown(id))?;
                self.set_weight(at, *w);
            }
        }
        Ok(())
    }

    fn set_weight(&mut self, at: usize, weight: u32) {
        self.nodes[at].set_weight(weight);
        self.refresh_derived();
        if let Router::Table(t) = &mut self.router {
            let weights: Vec<u32> = self.nodes.iter().map(|n| n.weight()).collect();
            t.rebalance(&weights, &self.seeds, at);
        }
    }

    /// The epoch: 0 for an empty topology, 1 for a new one, one more after each
    /// [`apply`](Topology::apply).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The same topology with another epoch (for example to continue a stored sequence).
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The sum of the nodes' weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `true` without nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.find(id).ok().map(|i| &self.nodes[i])
    }

    /// The index of the node with this id.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.find(id).ok()
    }

    /// The hash this topology routes `key` by: XXH3-64, or in ketama mode the memcached
    /// client's 32-bit key hash ([`KetamaFlavor::key_hash`](crate::KetamaFlavor::key_hash)) in
    /// the top 32 bits.
    #[inline]
    pub fn hash<K: ShardKey + ?Sized>(&self, key: &K) -> u64 {
        key.with_bytes(|b| self.hash_bytes(b))
    }

    /// [`Topology::hash`] of raw bytes.
    #[inline]
    pub fn hash_bytes(&self, bytes: &[u8]) -> u64 {
        match self.algorithm {
            Algorithm::Ketama(flavour) => flavour.route_hash(bytes),
            _ => hash_key(bytes),
        }
    }

    /// The index of the node owning `hash` (from [`Topology::hash`]); `None` when no node
    /// has a weight. The hot path: one table read for the slot table.
    #[inline]
    pub fn owner_index(&self, hash: u64) -> Option<usize> {
        match &self.router {
            Router::Table(t) => {
                let i = t.lookup(hash);
                (i != u16::MAX).then_some(usize::from(i))
            }
            Router::Ring(r) => r.lookup(hash).map(usize::from),
            Router::Rendezvous => self.rendezvous_best(hash, |_| true),
        }
    }

    /// The node owning `key`.
    pub fn owner<K: ShardKey + ?Sized>(&self, key: &K) -> Option<&Node> {
        self.owner_index(self.hash(key)).map(|i| &self.nodes[i])
    }

    /// Up to `k` distinct nodes for `key`, in preference order: the owner first, then where
    /// the key goes when the nodes before are skipped (failover, replicas). Nodes of weight 0
    /// are not listed.
    ///
    /// - slot table: the owner, then the other nodes in rendezvous order for the key's slot;
    /// - rings: the distinct owners of the next points clockwise;
    /// - rendezvous: nodes by decreasing score.
    pub fn preference_list<K: ShardKey + ?Sized>(&self, key: &K, k: usize) -> Vec<&Node> {
        let mut out = Vec::with_capacity(k.min(self.nodes.len()));
        self.preference_indices(self.hash(key), k, &mut out);
        out.into_iter().map(|i| &self.nodes[i]).collect()
    }

    /// [`Topology::preference_list`] as node indices, for a key hash.
    pub fn preference_indices(&self, hash: u64, k: usize, out: &mut Vec<usize>) {
        out.clear();
        let live = self.nodes.iter().filter(|n| n.weight() > 0).count();
        let k = k.min(live);
        if k == 0 {
            return;
        }
        match &self.router {
            Router::Ring(r) => {
                let Some(pos) = r.position(hash) else { return };
                for o in r.walk(pos) {
                    let o = usize::from(o);
                    if !out.contains(&o) {
                        out.push(o);
                        if out.len() == k {
                            break;
                        }
                    }
                }
            }
            Router::Table(_) | Router::Rendezvous => {
                if let Some(first) = self.owner_index(hash) {
                    out.push(first);
                }
                let point = self.rendezvous_point(hash);
                while out.len() < k {
                    let skip = &*out;
                    match self.rendezvous_best(point, |i| !skip.contains(&i)) {
                        Some(i) => out.push(i),
                        None => break,
                    }
                }
            }
        }
    }

    /// The next node for `hash` after the ones `skip` rejects: the failover choice. Same
    /// order as [`Topology::preference_list`].
    pub fn next_index(&self, hash: u64, skip: impl Fn(usize) -> bool) -> Option<usize> {
        match &self.router {
            Router::Ring(r) => {
                let pos = r.position(hash)?;
                r.walk(pos).map(usize::from).find(|&i| !skip(i))
            }
            Router::Table(_) | Router::Rendezvous => {
                if let Some(first) = self.owner_index(hash)
                    && !skip(first)
                {
                    return Some(first);
                }
                self.rendezvous_best(self.rendezvous_point(hash), |i| !skip(i))
            }
        }
    }

    /// What rendezvous scores are computed over: the key's slot for the table (so a slot's
    /// failover order is the order its slot would follow if its owner left), the key hash
    /// otherwise.
    #[inline]
    fn rendezvous_point(&self, hash: u64) -> u64 {
        match &self.router {
            Router::Table(t) => t.slot_of(hash) as u64,
            _ => hash,
        }
    }

    /// Weighted rendezvous: the node maximizing `w / -ln(u)` with `u = score(seed, hash)`,
    /// computed with a fixed-point logarithm; equal weights compare `u` directly.
    fn rendezvous_best(&self, hash: u64, allow: impl Fn(usize) -> bool) -> Option<usize> {
        if self.uniform {
            let mut best: Option<(usize, u64)> = None;
            for (i, n) in self.nodes.iter().enumerate() {
                if n.weight() == 0 || !allow(i) {
                    continue;
                }
                let u = score(self.seeds[i], hash);
                if best.is_none_or(|(_, b)| u > b) {
                    best = Some((i, u));
                }
            }
            return best.map(|b| b.0);
        }
        // (index, weight, -log2 u): w / l > bw / bl  <=>  w * bl > bw * l
        let mut best: Option<(usize, u64, u64)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.weight() == 0 || !allow(i) {
                continue;
            }
            let l = neg_log2_fixed(score(self.seeds[i], hash));
            let w = u64::from(n.weight());
            if best.is_none_or(|(_, bw, bl)| {
                u128::from(w) * u128::from(bl) > u128::from(bw) * u128::from(l)
            }) {
                best = Some((i, w, l));
            }
        }
        best.map(|b| b.0)
    }

    /// Each node's exact share of the key space (slot counts, ring arcs), or for rendezvous
    /// its weight share (which rendezvous follows in expectation), by index.
    pub fn shares(&self) -> Vec<f64> {
        match &self.router {
            Router::Table(t) => (0..self.nodes.len())
                .map(|i| f64::from(t.count(i)) / t.len() as f64)
                .collect(),
            Router::Ring(r) => {
                if r.len() == 0 {
                    vec![0.0; self.nodes.len()]
                } else {
                    r.shares(self.nodes.len())
                }
            }
            Router::Rendezvous => self
                .nodes
                .iter()
                .map(|n| {
                    if self.total_weight == 0 {
                        0.0
                    } else {
                        f64::from(n.weight()) / self.total_weight as f64
                    }
                })
                .collect(),
        }
    }

    /// The share of the key space owned by the node with this id.
    pub fn owned_fraction(&self, id: &str) -> Option<f64> {
        let i = self.index_of(id)?;
        Some(self.shares()[i])
    }

    /// The slot table's slots (node indices, `u16::MAX` for none), when this is a table
    /// topology.
    pub fn slots(&self) -> Option<&[u16]> {
        match &self.router {
            Router::Table(t) => Some(t.slots()),
            _ => None,
        }
    }
}
