//! The remote VTEP table: which node is reachable at which underlay IPv4
//! address, with per-VTEP traffic counters.
//!
//! Control threads change the table ([`VtepTable::add`],
//! [`VtepTable::remove`]) by publishing a new immutable snapshot (RCU
//! style, through `arc-swap`) and bumping a generation number; PMD threads
//! hold a [`VtepReader`] that re-reads the snapshot only when the
//! generation changed (one relaxed atomic load per packet otherwise), so
//! the hot path takes no lock and allocates nothing.
//!
//! Counters: each [`Vtep`] has one [`VtepCounters`] slot per PMD, written
//! only by that PMD (single-writer counters, see `stats`); readers sum the
//! slots. An entry that survives a change keeps its counters.
//!
//! Thread-safety: `VtepTable` is `Clone + Send + Sync` (a shared handle);
//! a `VtepReader` is owned by one PMD.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hashbrown::HashMap;

use crate::stats::Counter;

/// Traffic of one remote VTEP seen by one PMD.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct VtepCounters {
    /// Packets encapsulated towards the VTEP.
    pub tx_packets: Counter,
    /// Bytes (outer frame) encapsulated towards the VTEP.
    pub tx_bytes: Counter,
    /// Packets decapsulated from the VTEP.
    pub rx_packets: Counter,
    /// Bytes (outer frame) decapsulated from the VTEP.
    pub rx_bytes: Counter,
}

/// One remote VTEP.
#[derive(Debug)]
pub struct Vtep {
    /// The node it belongs to (free text, e.g. the Kubernetes node name).
    pub node: String,
    /// Its underlay IPv4 address.
    pub ip: Ipv4Addr,
    /// One counter slot per PMD.
    counters: Box<[VtepCounters]>,
}

impl Vtep {
    /// The counters PMD `pmd` writes (slot 0 when out of range).
    #[inline]
    pub fn counters(&self, pmd: usize) -> &VtepCounters {
        self.counters.get(pmd).unwrap_or_else(|| &self.counters[0])
    }

    /// Totals over all PMDs: (tx packets, tx bytes, rx packets, rx bytes).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        self.counters.iter().fold((0, 0, 0, 0), |t, c| {
            (
                t.0 + c.tx_packets.get(),
                t.1 + c.tx_bytes.get(),
                t.2 + c.rx_packets.get(),
                t.3 + c.rx_bytes.get(),
            )
        })
    }
}

/// An immutable snapshot of the table, keyed by VTEP IP.
pub type VtepMap = HashMap<Ipv4Addr, Arc<Vtep>>;

/// Why a VTEP table change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VtepError {
    /// The address cannot be a unicast VTEP.
    #[error("{0} cannot be a remote VTEP: use a unicast IPv4 address")]
    NotUnicast(Ipv4Addr),
    /// Another node already uses the address.
    #[error("VTEP {ip} already belongs to node {node}: delete it first with `sluicectl del-vtep {node}`")]
    InUse {
        /// The address.
        ip: Ipv4Addr,
        /// The node that has it.
        node: String,
    },
    /// No such node.
    #[error("no remote VTEP for node {0}: `sluicectl dump-tunnels` lists the known nodes")]
    NoSuchNode(String),
}

/// The shared, runtime-programmable remote VTEP table.
/// VTEP changes prepared by [`VtepTable::stage`], not yet visible.
#[derive(Debug)]
pub struct StagedVteps<'a> {
    table: &'a VtepTable,
    _guard: std::sync::MutexGuard<'a, ()>,
    next: VtepMap,
}

impl StagedVteps<'_> {
    /// Makes the prepared map the one in force.
    pub fn publish(self) {
        let inner = &self.table.inner;
        inner.map.store(Arc::new(self.next));
        inner.generation.fetch_add(1, Ordering::Release);
    }
}

#[derive(Debug, Clone)]
pub struct VtepTable {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    map: ArcSwap<VtepMap>,
    generation: AtomicU64,
    /// Serialises writers (control threads only).
    write: Mutex<()>,
    n_pmds: usize,
}

impl VtepTable {
    /// An empty table whose entries have counter slots for `n_pmds` PMDs
    /// (at least one).
    pub fn new(n_pmds: usize) -> Self {
        VtepTable {
            inner: Arc::new(Shared {
                map: ArcSwap::from_pointee(VtepMap::new()),
                generation: AtomicU64::new(1),
                write: Mutex::new(()),
                n_pmds: n_pmds.max(1),
            }),
        }
    }

    fn update(
        &self,
        f: impl FnOnce(&mut VtepMap) -> Result<(), VtepError>,
    ) -> Result<(), VtepError> {
        let _guard = self
            .inner
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next: VtepMap = (**self.inner.map.load()).clone();
        f(&mut next)?;
        self.inner.map.store(Arc::new(next));
        self.inner.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Adds node `node` at `ip`, or moves the node to `ip` (its counters
    /// restart). Re-adding the same node at the same address is a no-op.
    ///
    /// # Errors
    /// [`VtepError`] when `ip` is not unicast or belongs to another node.
    pub fn add(&self, node: &str, ip: Ipv4Addr) -> Result<(), VtepError> {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(VtepError::NotUnicast(ip));
        }
        let n_pmds = self.inner.n_pmds;
        self.update(|m| {
            if let Some(v) = m.get(&ip) {
                if v.node == node {
                    return Ok(());
                }
                return Err(VtepError::InUse {
                    ip,
                    node: v.node.clone(),
                });
            }
            m.retain(|_, v| v.node != node);
            m.insert(
                ip,
                Arc::new(Vtep {
                    node: node.to_owned(),
                    ip,
                    counters: (0..n_pmds).map(|_| VtepCounters::default()).collect(),
                }),
            );
            Ok(())
        })
    }

    /// Prepares a node commit's VTEP changes (`removed` nodes go, `set`
    /// nodes are added or moved) without publishing them; the result
    /// holds the writer lock until [`StagedVteps::publish`] or drop.
    ///
    /// # Errors
    /// The first node whose change is refused, with why.
    pub fn stage<'a>(
        &'a self,
        removed: &[String],
        set: &std::collections::BTreeMap<String, Ipv4Addr>,
    ) -> Result<StagedVteps<'a>, (String, VtepError)> {
        let guard = self
            .inner
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next: VtepMap = (**self.inner.map.load()).clone();
        for node in removed {
            let before = next.len();
            next.retain(|_, v| &v.node != node);
            if next.len() == before {
                return Err((node.clone(), VtepError::NoSuchNode(node.clone())));
            }
        }
        // Moves first, then additions: two nodes may swap addresses.
        for node in set.keys() {
            next.retain(|_, v| &v.node != node || set.get(node) == Some(&v.ip));
        }
        for (node, &ip) in set {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err((node.clone(), VtepError::NotUnicast(ip)));
            }
            if let Some(v) = next.get(&ip) {
                if &v.node == node {
                    continue;
                }
                return Err((
                    node.clone(),
                    VtepError::InUse {
                        ip,
                        node: v.node.clone(),
                    },
                ));
            }
            next.insert(
                ip,
                Arc::new(Vtep {
                    node: node.to_owned(),
                    ip,
                    counters: (0..self.inner.n_pmds)
                        .map(|_| VtepCounters::default())
                        .collect(),
                }),
            );
        }
        Ok(StagedVteps {
            table: self,
            _guard: guard,
            next,
        })
    }

    /// Removes node `node`.
    ///
    /// # Errors
    /// [`VtepError::NoSuchNode`] when the node has no VTEP.
    pub fn remove(&self, node: &str) -> Result<(), VtepError> {
        self.update(|m| {
            let before = m.len();
            m.retain(|_, v| v.node != node);
            if m.len() == before {
                Err(VtepError::NoSuchNode(node.to_owned()))
            } else {
                Ok(())
            }
        })
    }

    /// The VTEP address of `node`.
    pub fn lookup_node(&self, node: &str) -> Option<Ipv4Addr> {
        self.inner
            .map
            .load()
            .values()
            .find(|v| v.node == node)
            .map(|v| v.ip)
    }

    /// The current snapshot, sorted by node name.
    pub fn entries(&self) -> Vec<Arc<Vtep>> {
        let mut v: Vec<_> = self.inner.map.load().values().cloned().collect();
        v.sort_by(|a, b| a.node.cmp(&b.node).then(a.ip.cmp(&b.ip)));
        v
    }

    /// A reader for one PMD.
    pub fn reader(&self) -> VtepReader {
        VtepReader {
            table: self.clone(),
            generation: self.inner.generation.load(Ordering::Acquire),
            map: self.inner.map.load_full(),
        }
    }
}

/// A PMD's view of the table: a cached snapshot refreshed when the
/// generation moves.
#[derive(Debug)]
pub struct VtepReader {
    table: VtepTable,
    generation: u64,
    map: Arc<VtepMap>,
}

impl VtepReader {
    /// The generation of the newest published table (one atomic load):
    /// anything derived from an entry (its outer header template) is stale
    /// once this moves.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.table.inner.generation.load(Ordering::Acquire)
    }

    /// Looks up the VTEP at `ip` in the newest published snapshot.
    #[inline]
    pub fn get(&mut self, ip: Ipv4Addr) -> Option<&Arc<Vtep>> {
        let g = self.table.inner.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.map = self.table.inner.map.load_full();
            self.generation = g;
        }
        self.map.get(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_move_remove_and_reader_sees_changes() {
        let t = VtepTable::new(2);
        let mut r = t.reader();
        let a = Ipv4Addr::new(192, 168, 1, 2);
        let b = Ipv4Addr::new(192, 168, 1, 3);
        assert!(r.get(a).is_none());
        t.add("node-a", a).expect("add");
        assert_eq!(r.get(a).map(|v| v.node.as_str()), Some("node-a"));
        r.get(a).expect("present").counters(1).tx_packets.inc();
        assert_eq!(t.entries()[0].totals().0, 1);
        // Same node, same address: no-op, counters kept.
        t.add("node-a", a).expect("re-add");
        assert_eq!(t.entries()[0].totals().0, 1);
        // Another node cannot take the address.
        assert!(matches!(t.add("node-b", a), Err(VtepError::InUse { .. })));
        // Moving the node.
        t.add("node-a", b).expect("move");
        assert!(r.get(a).is_none());
        assert!(r.get(b).is_some());
        assert_eq!(t.lookup_node("node-a"), Some(b));
        t.remove("node-a").expect("remove");
        assert!(r.get(b).is_none());
        assert_eq!(
            t.remove("node-a"),
            Err(VtepError::NoSuchNode("node-a".into()))
        );
        assert_eq!(
            t.add("x", Ipv4Addr::BROADCAST),
            Err(VtepError::NotUnicast(Ipv4Addr::BROADCAST))
        );
    }

    #[test]
    fn error_text_is_actionable() {
        let e = VtepError::InUse {
            ip: Ipv4Addr::new(10, 0, 0, 1),
            node: "n1".into(),
        };
        assert!(e.to_string().contains("sluicectl del-vtep n1"));
    }
}
