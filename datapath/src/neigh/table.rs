//! The resolved-neighbour snapshot PMDs read, and the queue through which
//! they ask for resolution.
//!
//! The [`NeighCache`](super::cache::NeighCache) (owned by one control-side
//! thread) publishes the IPv4 → MAC bindings it has resolved here; PMDs
//! read them through a [`NeighReader`] (cached snapshot, refreshed when the
//! generation moves: one relaxed atomic load per lookup). A PMD that misses
//! pushes the address onto a bounded lock-free queue ([`NeighTable::want`]);
//! the cache owner drains it and sends ARP requests. When the queue is full
//! the request is dropped (counted, [`NeighTable::want_dropped`]): the next
//! packet asks again.
//!
//! Thread-safety: `NeighTable` is a shared `Clone + Send + Sync` handle;
//! only the cache owner publishes.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use hashbrown::HashMap;

/// Resolved bindings: IPv4 → MAC.
pub type NeighMap = HashMap<Ipv4Addr, [u8; 6]>;

/// Capacity of the resolution request queue.
pub const WANT_QUEUE: usize = 1024;

/// Shared handle to the published bindings.
#[derive(Debug, Clone)]
pub struct NeighTable {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    map: ArcSwap<NeighMap>,
    generation: AtomicU64,
    wanted: ArrayQueue<Ipv4Addr>,
    want_dropped: AtomicU64,
}

impl Default for NeighTable {
    fn default() -> Self {
        Self::new()
    }
}

impl NeighTable {
    /// An empty table.
    pub fn new() -> Self {
        NeighTable {
            inner: Arc::new(Shared {
                map: ArcSwap::from_pointee(NeighMap::new()),
                generation: AtomicU64::new(1),
                wanted: ArrayQueue::new(WANT_QUEUE),
                want_dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Publishes a new set of bindings (cache owner only).
    pub fn publish(&self, map: NeighMap) {
        self.inner.map.store(Arc::new(map));
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    /// The published binding for `ip` (control side; PMDs use a reader).
    pub fn get(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.inner.map.load().get(&ip).copied()
    }

    /// Asks the cache owner to resolve `ip`. Lock-free and allocation-free;
    /// a full queue drops the request (counted; the next miss asks again).
    #[inline]
    pub fn want(&self, ip: Ipv4Addr) {
        if self.inner.wanted.push(ip).is_err() {
            self.inner.want_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Resolution requests dropped because the queue was full.
    pub fn want_dropped(&self) -> u64 {
        self.inner.want_dropped.load(Ordering::Relaxed)
    }

    /// Takes one pending resolution request (cache owner).
    pub fn take_wanted(&self) -> Option<Ipv4Addr> {
        self.inner.wanted.pop()
    }

    /// A reader for one PMD.
    pub fn reader(&self) -> NeighReader {
        NeighReader {
            table: self.clone(),
            generation: self.inner.generation.load(Ordering::Acquire),
            map: self.inner.map.load_full(),
        }
    }
}

/// A PMD's cached view of the bindings.
#[derive(Debug)]
pub struct NeighReader {
    table: NeighTable,
    generation: u64,
    map: Arc<NeighMap>,
}

impl NeighReader {
    /// The generation of the newest published bindings (one atomic load):
    /// anything derived from a binding (a tunnel's outer header template)
    /// is stale once this moves.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.table.inner.generation.load(Ordering::Acquire)
    }

    /// The MAC of `ip`, or `None` after asking for resolution.
    #[inline]
    pub fn resolve(&mut self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        let g = self.table.inner.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.map = self.table.inner.map.load_full();
            self.generation = g;
        }
        match self.map.get(&ip) {
            Some(m) => Some(*m),
            None => {
                self.table.want(ip);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miss_asks_publish_resolves() {
        let t = NeighTable::new();
        let mut r = t.reader();
        let ip = Ipv4Addr::new(10, 1, 0, 1);
        assert_eq!(r.resolve(ip), None);
        assert_eq!(t.take_wanted(), Some(ip));
        assert_eq!(t.take_wanted(), None);
        let mut m = NeighMap::new();
        m.insert(ip, [2, 0, 0, 0, 0, 1]);
        t.publish(m);
        assert_eq!(r.resolve(ip), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(t.take_wanted(), None);
    }

    #[test]
    fn want_queue_is_bounded() {
        let t = NeighTable::new();
        for i in 0..(WANT_QUEUE as u32 + 10) {
            t.want(Ipv4Addr::from(i));
        }
        let mut n = 0;
        while t.take_wanted().is_some() {
            n += 1;
        }
        assert_eq!(n, WANT_QUEUE);
        assert_eq!(t.want_dropped(), 10);
    }
}
