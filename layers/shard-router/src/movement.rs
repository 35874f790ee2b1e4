//! What a topology change moves: [`Topology::diff`] and [`Topology::preview`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::TopologyError;
use crate::node::{Algorithm, Change};
use crate::topology::{Router, Topology};

impl Topology {
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
        let name = |t: &Topology, i: Option<usize>| i.map(|i| t.nodes()[i].id_arc().clone());
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
                if key_space(self.algorithm()) == key_space(other.algorithm()) =>
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

/// Which key hash a ring's positions are in: two rings compare arc by arc only in the same one.
fn key_space(a: Algorithm) -> u8 {
    match a {
        Algorithm::Ketama(f) if f.md5_keys() => 1,
        Algorithm::Ketama(_) => 2,
        _ => 0,
    }
}

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
