//! The per-PMD connection cache: the first conntrack tier, in front of
//! the shared sharded table.
//!
//! Size: a fixed power-of-two number of entries
//! ([`super::ConntrackConfig::cache_entries`], default
//! [`CACHE_ENTRIES`]; 0 disables the cache), allocated once when the
//! [`super::ConntrackHandle`] is created, in sets of [`WAYS`] entries that
//! fill one 64-byte cache line. An entry holds a 32-bit hash tag, the
//! direction its key names and an `Arc` of the shared connection (whose
//! immutable keys confirm a tag match, so a collision costs a compare,
//! never a wrong answer). 16 bytes per entry: 1 MiB per PMD at the
//! default size.
//!
//! Lookup: the key's hash picks one set; the four tags are compared and a
//! matching entry's key checked. A hit borrows the `Arc` (no refcount
//! traffic, no lock). Fill (after a miss found the key in the shared
//! table): the entry already holding this key, else an empty one; a full
//! set gives up its next entry in a per-handle round-robin on one offer in
//! [`EVICT_EVERY`] only, so a PMD cycling through more connections than
//! the cache holds keeps hitting on a stable part of them instead of
//! replacing (and missing on) every entry. (A fill does not look
//! for an entry whose connection died: that read one cold connection per
//! way, and the fills of a table larger than the cache spent most of their
//! time there. A dead connection's entry is dropped when it is looked up or
//! overwritten.)
//!
//! Bulk lookup: the pipeline asks for a burst's sets ahead of the packets
//! (`prefetch_set`), then, nearer, for the connections their tags point to
//! (`prefetch_conn`), so the misses of several packets overlap.
//!
//! Invalidation: none is pushed to the cache. The table kills a
//! connection (flush, expiry, eviction, reopen) by setting its dead flag;
//! a hit on a dead or expired connection is treated as a miss and the
//! entry dropped (`ConnCache::forget`). An entry may therefore keep a
//! killed connection's memory alive until it is overwritten or looked up
//! again: at most `cache_entries` connections per PMD, and dropping that
//! last `Arc` (a free, on the PMD) happens on a miss, never on a hit.
//!
//! Thread-safety: owned by one PMD (`&mut self` to fill); `Send`, not
//! shared. The connections it points to are shared and safe to read and
//! update concurrently (atomics, see the module doc of `conntrack`).

use std::sync::Arc;

use super::{Conn, ConnKey, Slot};
use crate::classifier::prefetch;
use crate::stats::Counter;

/// Default number of cache entries per PMD.
pub const CACHE_ENTRIES: usize = 1 << 16;

/// Entries per set (one cache line).
pub const WAYS: usize = 4;

/// A full set gives an entry up to one offer in this many (see
/// [`ConnCache::offer`]).
pub const EVICT_EVERY: u32 = 8;

#[derive(Debug, Default)]
struct Entry {
    conn: Option<Arc<Conn>>,
    tag: u32,
    dir: u8,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Set([Entry; WAYS]);

/// The counters of one cache, written by its PMD only and read by
/// `conntrack-stats` (single-writer [`Counter`]s, no atomic RMW).
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Packets whose live connection was found in the cache.
    pub hits: Counter,
    /// Packets that went to the shared table.
    pub misses: Counter,
}

/// Hit and miss counts of one cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Packets whose live connection was found in the cache.
    pub hits: u64,
    /// Packets that went to the shared table (not cached, or cached but
    /// dead or expired).
    pub misses: u64,
}

/// A per-PMD set-associative cache of connections.
pub(super) struct ConnCache {
    sets: Box<[Set]>,
    mask: usize,
    victim: usize,
    /// Offers that found their set full (see [`ConnCache::offer`]).
    offers: u32,
    stats: Arc<CacheCounters>,
}

impl std::fmt::Debug for ConnCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCache")
            .field("entries", &(self.sets.len() * WAYS))
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Set index and tag from the table hash (a second mix, so that the set
/// does not follow the shard).
#[inline]
fn place(hash: u64) -> (usize, u32) {
    let mut h = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h as usize, (h >> 32) as u32)
}

impl ConnCache {
    /// A cache of `entries` entries rounded up to a power of two (and to
    /// at least one set); 0 gives a cache that never hits.
    pub(super) fn new(entries: usize) -> ConnCache {
        let sets = if entries == 0 {
            0
        } else {
            (entries.next_power_of_two() / WAYS).max(1)
        };
        ConnCache {
            sets: (0..sets).map(|_| Set::default()).collect(),
            mask: sets.saturating_sub(1),
            victim: 0,
            offers: 0,
            stats: Arc::new(CacheCounters::default()),
        }
    }

    /// Number of entries.
    pub(super) fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    pub(super) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.stats.hits.get(),
            misses: self.stats.misses.get(),
        }
    }

    /// The shared counters, for `conntrack-stats`.
    pub(super) fn counters(&self) -> Arc<CacheCounters> {
        self.stats.clone()
    }

    /// The connection `key` (table hash `hash`) names and its direction.
    #[inline]
    pub(super) fn lookup(&self, key: &ConnKey, hash: u64) -> Option<(&Arc<Conn>, usize)> {
        let (i, tag) = place(hash);
        let set = self.sets.get(i & self.mask)?;
        for e in &set.0 {
            if e.tag != tag {
                continue;
            }
            if let Some(c) = &e.conn {
                let dir = usize::from(e.dir);
                if c.keys[dir] == *key {
                    return Some((c, dir));
                }
            }
        }
        None
    }

    /// Starts loading the set of table hash `hash` (the first stage of a
    /// bulk lookup over a burst; a hint, never a fault).
    #[inline]
    pub(super) fn prefetch_set(&self, hash: u64) {
        let (i, _) = place(hash);
        if let Some(set) = self.sets.get(i & self.mask) {
            prefetch(set);
        }
    }

    /// Starts loading the connection a tag of hash `hash` points to (the
    /// second stage, once the set is in cache): the lines the hit path
    /// reads and writes. False when no tag of the set matches (the packet
    /// will look in the shared table).
    #[inline]
    pub(super) fn prefetch_conn(&self, hash: u64) -> bool {
        let (i, tag) = place(hash);
        let Some(set) = self.sets.get(i & self.mask) else {
            return false;
        };
        let mut any = false;
        for e in &set.0 {
            if e.tag == tag {
                if let Some(c) = &e.conn {
                    any = true;
                    let p = Arc::as_ptr(c).cast::<u8>();
                    for line in (0..std::mem::size_of::<Conn>()).step_by(64) {
                        prefetch(p.wrapping_add(line));
                    }
                }
            }
        }
        any
    }

    /// Counts a packet served by the cache (`true`) or not.
    #[inline]
    pub(super) fn count(&mut self, hit: bool) {
        if hit {
            self.stats.hits.inc();
        } else {
            self.stats.misses.inc();
        }
    }

    /// Drops the entry of `key`, if any (its connection is gone).
    pub(super) fn forget(&mut self, key: &ConnKey, hash: u64) {
        let (i, tag) = place(hash);
        if let Some(set) = self.sets.get_mut(i & self.mask) {
            for e in &mut set.0 {
                if e.tag == tag
                    && e.conn
                        .as_ref()
                        .is_some_and(|c| c.keys[usize::from(e.dir)] == *key)
                {
                    e.conn = None;
                }
            }
        }
    }

    /// Caches direction `dir` of a connection for `key` (`conn` makes
    /// the counted reference, called only when the entry is written).
    ///
    /// Fill policy: the entry already holding `key`, else an empty way;
    /// a set whose ways are all taken gives one up (the next of the set in
    /// a per-handle round-robin) only on one offer in [`EVICT_EVERY`].
    /// A cache smaller than the connections a PMD cycles through then
    /// keeps a stable part of them (most of its capacity keeps hitting)
    /// instead of replacing an entry on every miss and hitting on none:
    /// under a cyclic pattern (pktgen replaying 100k connections through
    /// 64Ki entries) round-robin or LRU replacement evicts each entry just
    /// before its connection comes back, and every replacement costs two
    /// reference-count writes on cold connections. A new hot connection
    /// in a full set waits a few misses (at most [`EVICT_EVERY`] offers of
    /// that handle) to be cached.
    pub(super) fn offer(
        &mut self,
        key: &ConnKey,
        hash: u64,
        dir: u8,
        conn: impl FnOnce() -> Arc<Conn>,
    ) {
        let (i, tag) = place(hash);
        let Some(set) = self.sets.get_mut(i & self.mask) else {
            return;
        };
        let same = |e: &Entry| {
            e.tag == tag
                && e.conn
                    .as_ref()
                    .is_some_and(|c| c.keys[usize::from(e.dir)] == *key)
        };
        let way = match set
            .0
            .iter()
            .position(same)
            .or_else(|| set.0.iter().position(|e| e.conn.is_none()))
        {
            Some(way) => way,
            None => {
                self.offers = self.offers.wrapping_add(1);
                if !self.offers.is_multiple_of(EVICT_EVERY) {
                    return;
                }
                self.victim = self.victim.wrapping_add(1);
                self.victim % WAYS
            }
        };
        set.0[way] = Entry {
            conn: Some(conn()),
            tag,
            dir,
        };
    }

    /// Caches `slot` for `key` (see [`ConnCache::offer`]).
    pub(super) fn insert(&mut self, key: &ConnKey, hash: u64, slot: Slot) {
        let dir = slot.dir;
        self.offer(key, hash, dir, || slot.conn);
    }
}
