//! Nodes, their changes, and the algorithms a topology routes with.

use std::fmt;
use std::sync::Arc;

use crate::error::{TopologyError, TopologyErrorKind};
use crate::ketama::KetamaFlavor;

/// The most nodes a topology holds.
pub const MAX_NODES: usize = 65_535;

/// A node: an id (unique in its topology), a weight and an address.
///
/// The weight sets the node's share of the keys (a node of weight 2 gets twice the keys of a
/// node of weight 1); weight 0 keeps the node in the topology while it owns no key (draining).
/// The address is what the node's service connects to; in ketama mode it is also the server
/// as the memcached client is given it (`"10.0.0.1:11211"`), from which the node's points are
/// derived.
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

    /// Sets the weight (topologies change weights in place while they apply a change).
    pub(crate) fn set_weight(&mut self, weight: u32) {
        self.weight = weight;
    }

    pub(crate) fn validate(&self) -> Result<(), TopologyError> {
        if let Some(problem) = id_problem(&self.id) {
            return Err(TopologyError::new(TopologyErrorKind::InvalidNode, problem));
        }
        if let Some(problem) = address_problem(&self.address) {
            return Err(TopologyError::new(
                TopologyErrorKind::InvalidNode,
                format!("{problem} (node {:?})", self.id),
            ));
        }
        Ok(())
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// What is wrong with a node id, if anything: it must be 1 to 1024 bytes without control
/// characters.
pub(crate) fn id_problem(id: &str) -> Option<String> {
    (id.is_empty() || id.len() > 1024 || has_control(id))
        .then(|| format!("node id {id:?} must be 1 to 1024 bytes without control characters"))
}

/// What is wrong with a node address, if anything: at most 4096 bytes without control
/// characters.
pub(crate) fn address_problem(address: &str) -> Option<String> {
    (address.len() > 4096 || has_control(address)).then(|| {
        format!("address {address:?} must be at most 4096 bytes without control characters")
    })
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
    /// A ketama continuum as a memcached client builds it (MD5 points, MD5 or one-at-a-time key
    /// hash): routes keys where that client sends them, given the same server addresses and
    /// weights. The flavour names the client: libketama, libmemcached (weighted or not) or
    /// spymemcached place points differently (see [`KetamaFlavor`]). As in those clients, a
    /// node's point count may depend on the others' weights and on the node count, so with
    /// unequal weights a change also moves some keys between other nodes.
    Ketama(KetamaFlavor),
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

    pub(crate) fn validate(self) -> Result<(), TopologyError> {
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
