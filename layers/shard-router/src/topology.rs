//! Nodes, algorithms and the immutable, versioned topology.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::hash::{ShardKey, hash_key, ketama_hash, neg_log2_fixed, node_seed, score};
use crate::ring::Ring;
use crate::table::SlotTable;

/// The most nodes a topology holds.
pub const MAX_NODES: usize = 65_535;

/// A node: an id (unique in its topology), a weight and an address.
///
/// The weight sets the node's share of the keys (a node of weight 2 gets twice the keys of a
/// node of weight 1); weight 0 keeps the node in the topology while it owns no key (draining).
/// The address is what the node's service connects to; in ketama mode it is also the string
/// the node's points are derived from (`"10.0.0.1:11211"`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Node {
    id: Arc<str>,
    weight: u32,
    address: Arc<str>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({} w={} @{})", self.id, self.weight, self.address)
    }
}

impl Node {
    /// A node of weight 1.
    pub fn new(id: impl Into<Arc<str>>, address: impl Into<Arc<str>>) -> Self {
        Node {
            id: id.into(),
            weight: 1,
            address: address.into(),
        }
    }

    /// The same node with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id, shared.
    pub fn id_arc(&self) -> &Arc<str> {
        &self.id
    }

    /// The weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The address.
    pub fn address(&self) -> &str {
        &self.address
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let bad = |s: &str| s.chars().any(char::is_control);
        if self.id.is_empty() || self.id.len() > 1024 || bad(&self.id) {
            return Err(TopologyError::new(
                TopologyErrorKind::InvalidNode,
                format!(
                    "node id {:?} must be 1 to 1024 bytes without control characters",
                    self.id
                ),
            ));
        }
        if self.address.len() > 4096 || bad(&self.address) {
            return Err(TopologyError::new(
                TopologyErrorKind::InvalidNode,
                format!(
                    "address {:?} of node {:?} must be at most 4096 bytes without control characters",
                    self.address, self.id
                ),
            ));
        }
        Ok(())
    }
}

/// How a topology maps keys to nodes. See the crate docs for the trade-offs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// The slot table (the default): `2^bits` slots (10 to 24; default 16), lookups in a few
    /// nanoseconds, exact weighted shares (within one slot), minimal movement. The table
    /// depends on the history of changes and travels with the topology.
    Table {
        /// log2 of the number of slots.
        bits: u8,
    },
    /// A ring with `vnodes × weight` points per node (at most 65,536), XXH3 points. A pure
    /// function of the node set; shares vary by about `1/sqrt(points)`. Keep weights small
    /// (1 to 100) with this algorithm.
    Ring {
        /// Points per unit of weight.
        vnodes: u32,
    },
    /// The libketama continuum: `floor(weight share × 40 × n)` MD5 digests per node of 4
    /// points each, points from `MD5("<address>-<k>")`, key hash from `MD5(key)`. Routes like
    /// libketama-based memcached clients given the same addresses and weights. As in
    /// libketama, a node's point count depends on the others' weights and the node count, so
    /// with unequal weights a change also moves some keys between other nodes.
    Ketama,
    /// Rendezvous (highest random weight) hashing: no state, ideal movement, O(n) per lookup.
    /// For small node sets.
    Rendezvous,
}

impl Default for Algorithm {
    fn default() -> Self {
        Algorithm::Table { bits: 16 }
    }
}

impl Algorithm {
    /// The default slot table (2^16 slots).
    pub const fn table() -> Self {
        Algorithm::Table { bits: 16 }
    }

    /// The ring with 160 points per node.
    pub const fn ring() -> Self {
        Algorithm::Ring { vnodes: 160 }
    }

    fn validate(self) -> Result<(), TopologyError> {
        match self {
            Algorithm::Table { bits } if !(10..=24).contains(&bits) => Err(TopologyError::new(
                TopologyErrorKind::InvalidConfig,
                format!("table bits must be 10 to 24, not {bits}"),
            )),
            Algorithm::Ring { vnodes } if vnodes == 0 || vnodes > 4096 => Err(TopologyError::new(
                TopologyErrorKind::InvalidConfig,
                format!("ring vnodes must be 1 to 4096, not {vnodes}"),
            )),
            _ => Ok(()),
        }
    }
}

/// One change to a topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds a node (its id must be new).
    Add(Node),
    /// Removes the node with this id.
    Remove(Arc<str>),
    /// Sets the weight of the node with this id.
    Reweight(Arc<str>, u32),
}

impl Change {
    /// [`Change::Remove`].
    pub fn remove(id: &str) -> Self {
        Change::Remove(Arc::from(id))
    }

    /// [`Change::Reweight`].
    pub fn reweight(id: &str, weight: u32) -> Self {
        Change::Reweight(Arc::from(id), weight)
    }
}

/// What kind of [`TopologyError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TopologyErrorKind {
    /// A node with this id already exists.
    DuplicateNode,
    /// No node has this id.
    UnknownNode,
    /// A node's id or address is invalid.
    InvalidNode,
    /// More than [`MAX_NODES`] nodes.
    TooManyNodes,
    /// An algorithm parameter is out of range.
    InvalidConfig,
    /// A stored topology could not be decoded.
    Decode,
    /// A stored topology changed meanwhile (another router published first).
    Conflict,
}

/// A topology change or a stored topology was rejected; the topology is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError {
    kind: TopologyErrorKind,
    message: String,
}

impl TopologyError {
    pub(crate) fn new(kind: TopologyErrorKind, message: impl Into<String>) -> Self {
        TopologyError {
            kind,
            message: message.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> TopologyErrorKind {
        self.kind
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TopologyError {}

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
            Algorithm::Ring { .. } | Algorithm::Ketama => Router::Ring(Ring::build(1, &[], &[])),
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
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
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
        if nodes.windows(2).any(|w| w[0].id >= w[1].id) {
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
                let weights: Vec<u32> = t.nodes.iter().map(|n| n.weight).collect();
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
        self.seeds = self.nodes.iter().map(|n| node_seed(&n.id)).collect();
        self.total_weight = self.nodes.iter().map(|n| u64::from(n.weight)).sum();
        let mut positive = self.nodes.iter().map(|n| n.weight).filter(|&w| w > 0);
        let first = positive.next();
        self.uniform = positive.all(|w| Some(w) == first);
    }

    fn rebuild_stateless(&mut self) {
        let weights: Vec<u32> = self.nodes.iter().map(|n| n.weight).collect();
        match self.algorithm {
            Algorithm::Ring { vnodes } => {
                self.router = Router::Ring(Ring::build(vnodes, &weights, &self.seeds));
            }
            Algorithm::Ketama => {
                let addrs: Vec<&str> = self.nodes.iter().map(|n| &*n.address).collect();
                self.router = Router::Ring(Ring::build_ketama(&weights, &addrs));
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
        self.nodes.binary_search_by(|n| (*n.id).cmp(id))
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
                let at = match self.find(&node.id) {
                    Ok(_) => {
                        return Err(TopologyError::new(
                            TopologyErrorKind::DuplicateNode,
                            format!("node {:?} is already in the topology", node.id),
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
                let weight = node.weight;
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
        self.nodes[at].weight = weight;
        self.refresh_derived();
        if let Router::Table(t) = &mut self.router {
            let weights: Vec<u32> = self.nodes.iter().map(|n| n.weight).collect();
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

    /// The hash this topology routes `key` by: XXH3-64, or the ketama MD5 hash in the top 32
    /// bits in ketama mode.
    #[inline]
    pub fn hash<K: ShardKey + ?Sized>(&self, key: &K) -> u64 {
        key.with_bytes(|b| self.hash_bytes(b))
    }

    /// [`Topology::hash`] of raw bytes.
    #[inline]
    pub fn hash_bytes(&self, bytes: &[u8]) -> u64 {
        match self.algorithm {
            Algorithm::Ketama => u64::from(ketama_hash(bytes)) << 32,
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
        let live = self.nodes.iter().filter(|n| n.weight > 0).count();
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
                if n.weight == 0 || !allow(i) {
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
            if n.weight == 0 || !allow(i) {
                continue;
            }
            let l = neg_log2_fixed(score(self.seeds[i], hash));
            let w = u64::from(n.weight);
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
                        f64::from(n.weight) / self.total_weight as f64
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

    /// What changes would do, without doing them: see [`Topology::diff`].
    pub fn preview(&self, changes: &[Change]) -> Result<Movement, TopologyError> {
        Ok(self.diff(&self.apply(changes)?))
    }

    /// Which share of the key space maps to a different node in `other`, and from where to
    /// where. Exact for two slot tables of the same size (slot by slot) and for two rings (arc
    /// by arc); otherwise (rendezvous, different algorithms) estimated over 65,536 evenly
    /// spread sample hashes ([`Movement::is_exact`] says which).
    pub fn diff(&self, other: &Topology) -> Movement {
        let mut flows: BTreeMap<(NodeRef, NodeRef), f64> = BTreeMap::new();
        let name = |t: &Topology, i: Option<usize>| i.map(|i| t.nodes[i].id.clone());
        let mut add = |from: Option<Arc<str>>, to: Option<Arc<str>>, f: f64| {
            if from != to && f > 0.0 {
                *flows.entry((from, to)).or_insert(0.0) += f;
            }
        };
        let exact = match (&self.router, &other.router) {
            (Router::Table(a), Router::Table(b)) if a.bits() == b.bits() => {
                let unit = 1.0 / a.len() as f64;
                for (&x, &y) in a.slots().iter().zip(b.slots()) {
                    let ix = (x != u16::MAX).then_some(usize::from(x));
                    let iy = (y != u16::MAX).then_some(usize::from(y));
                    let (fx, fy) = (name(self, ix), name(other, iy));
                    add(fx, fy, unit);
                }
                true
            }
            (Router::Ring(a), Router::Ring(b))
                if (self.algorithm == Algorithm::Ketama)
                    == (other.algorithm == Algorithm::Ketama) =>
            {
                let mut bounds: Vec<u64> = a
                    .points()
                    .map(|p| p.0)
                    .chain(b.points().map(|p| p.0))
                    .collect();
                bounds.sort_unstable();
                bounds.dedup();
                let full = 18_446_744_073_709_551_616.0;
                if bounds.is_empty() {
                    true
                } else {
                    for k in 0..bounds.len() {
                        let end = bounds[k];
                        let len = if bounds.len() == 1 {
                            full
                        } else {
                            let prev = bounds[(k + bounds.len() - 1) % bounds.len()];
                            end.wrapping_sub(prev) as f64
                        };
                        let fx = name(self, a.lookup(end).map(usize::from));
                        let fy = name(other, b.lookup(end).map(usize::from));
                        add(fx, fy, len / full);
                    }
                    true
                }
            }
            _ => {
                const SAMPLES: u64 = 1 << 16;
                for s in 0..SAMPLES {
                    let h = crate::hash::mix64(s);
                    let fx = name(self, self.owner_index(h));
                    let fy = name(other, other.owner_index(h));
                    add(fx, fy, 1.0 / SAMPLES as f64);
                }
                false
            }
        };
        let flows: Vec<Flow> = flows
            .into_iter()
            .map(|((from, to), fraction)| Flow { from, to, fraction })
            .collect();
        Movement { flows, exact }
    }
}

type NodeRef = Option<Arc<str>>;

/// Keys moving from one node to another (see [`Topology::diff`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Flow {
    /// The node that owned the keys (`None`: no node did).
    pub from: Option<Arc<str>>,
    /// The node that owns them after the change (`None`: no node does).
    pub to: Option<Arc<str>>,
    /// The share of the whole key space.
    pub fraction: f64,
}

/// The keys a topology change moves: a preview before the change, a report after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Movement {
    flows: Vec<Flow>,
    exact: bool,
}

impl Movement {
    /// The share of the key space that changes node.
    pub fn fraction(&self) -> f64 {
        self.flows.iter().map(|f| f.fraction).sum()
    }

    /// Every (from, to) pair with its share, sorted by node ids.
    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    /// `true` when computed exactly over the whole hash space rather than sampled.
    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// `true` when every moved key moved to or from the node `id` (no key moved between two
    /// other nodes).
    pub fn only_involves(&self, id: &str) -> bool {
        self.flows
            .iter()
            .all(|f| f.from.as_deref() == Some(id) || f.to.as_deref() == Some(id))
    }
}
