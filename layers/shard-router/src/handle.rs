//! The shared, atomically swapped current topology.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::error::TopologyError;
use crate::node::{Change, Node};
use crate::topology::Topology;

/// The current topology, shared by routers and whoever changes it (an admin endpoint, a
/// [`Discover`](tower::discover::Discover) driver, the Redis sync).
///
/// Reading is lock-free ([`TopologyHandle::load`]); changes are serialized, computed from
/// the current topology, and published with one atomic swap, so a request is routed either
/// entirely on the old topology or entirely on the new one. Clones share the topology.
///
/// ```
/// use omega_shard_router::{Algorithm, Node, Topology, TopologyHandle};
///
/// let handle = TopologyHandle::new(Topology::new(Algorithm::table(), [
///     Node::new("a", "10.0.0.1:80"),
///     Node::new("b", "10.0.0.2:80"),
/// ])?);
/// handle.add(Node::new("c", "10.0.0.3:80"))?;
/// assert_eq!(handle.load().len(), 3);
/// assert_eq!(handle.epoch(), 2);
/// # Ok::<(), omega_shard_router::TopologyError>(())
/// ```
#[derive(Clone)]
pub struct TopologyHandle {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<Topology>,
    /// A sequence number around each swap: odd while a swap is under way, even otherwise.
    /// Routers compare it with the number they built their routes at (one atomic load per
    /// request instead of loading the topology).
    generation: AtomicU64,
    write: Mutex<()>,
}

impl std::fmt::Debug for TopologyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.load();
        f.debug_struct("TopologyHandle")
            .field("epoch", &t.epoch())
            .field("nodes", &t.len())
            .finish()
    }
}

impl TopologyHandle {
    /// A handle on `topology`.
    pub fn new(topology: Topology) -> Self {
        TopologyHandle {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(topology),
                generation: AtomicU64::new(0),
                write: Mutex::new(()),
            }),
        }
    }

    /// The current topology.
    pub fn load(&self) -> Arc<Topology> {
        self.shared.current.load_full()
    }

    /// The current topology without touching its reference count (for hot paths).
    pub fn load_guard(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.shared.current.load()
    }

    /// `true` while `topology` is the current topology (one pointer comparison).
    #[inline]
    pub fn is_current(&self, topology: &Arc<Topology>) -> bool {
        Arc::ptr_eq(&self.shared.current.load(), topology)
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.current.load().epoch()
    }

    /// Applies `changes` to the current topology and publishes the result.
    pub fn apply(&self, changes: &[Change]) -> Result<Arc<Topology>, TopologyError> {
        self.update(|t| t.apply(changes))
    }

    /// Adds a node.
    pub fn add(&self, node: Node) -> Result<Arc<Topology>, TopologyError> {
        self.apply(&[Change::Add(node)])
    }

    /// Removes a node.
    pub fn remove(&self, id: &str) -> Result<Arc<Topology>, TopologyError> {
        self.apply(&[Change::remove(id)])
    }

    /// Sets a node's weight.
    pub fn reweight(&self, id: &str, weight: u32) -> Result<Arc<Topology>, TopologyError> {
        self.apply(&[Change::reweight(id, weight)])
    }

    /// Computes the next topology from the current one and publishes it; concurrent updates
    /// are serialized, so none is lost.
    pub fn update<E>(
        &self,
        f: impl FnOnce(&Topology) -> Result<Topology, E>,
    ) -> Result<Arc<Topology>, E> {
        let _write = self
            .shared
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let next = Arc::new(f(&self.shared.current.load())?);
        self.publish(next.clone());
        Ok(next)
    }

    /// Replaces the topology (for example with one read from Redis).
    pub fn store(&self, topology: Arc<Topology>) {
        let _write = self
            .shared
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.publish(topology);
    }

    /// Replaces the topology only if `topology` has a newer epoch; returns whether it did.
    pub fn store_if_newer(&self, topology: Arc<Topology>) -> bool {
        let _write = self
            .shared
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if topology.epoch() <= self.shared.current.load().epoch() {
            return false;
        }
        self.publish(topology);
        true
    }

    /// Replaces the topology unless `topology` has an older epoch; returns whether it did.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn store_unless_older(&self, topology: Arc<Topology>) -> bool {
        let _write = self
            .shared
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if topology.epoch() < self.shared.current.load().epoch() {
            return false;
        }
        self.publish(topology);
        true
    }

    fn publish(&self, topology: Arc<Topology>) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.shared.current.store(topology);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The swap sequence number (see the field docs).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// The current topology with the (even) generation it belongs to.
    pub(crate) fn load_with_generation(&self) -> (u64, Arc<Topology>) {
        loop {
            let before = self.generation();
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let topology = self.shared.current.load_full();
            if self.generation() == before {
                return (before, topology);
            }
        }
    }
}
