//! The megaflow cache: per-PMD tuple-space search over wildcarded flows.
//!
//! A megaflow is `(mask, key & mask) → translation`, learned by the slow
//! path: every packet equal under the mask gets the same actions. The cache
//! keeps one hash table (a *subtable*) per distinct mask; a lookup probes
//! each subtable with the packet's masked hash until one hits. Megaflows
//! from one program never give conflicting answers (each is exact for its
//! whole class), so the first hit is the answer and subtable order only
//! affects speed: [`MegaflowCache::sort_subtables`] (called periodically
//! from `maintain`) moves the most-hit subtables first, and halves the hit
//! counts so the order follows current traffic.
//!
//! Size: at most `capacity` megaflows in total (default
//! [`MEGAFLOW_CAPACITY`]). Eviction: when an insert finds the cache full,
//! the whole cache is flushed first (counted in `flushes_full`), which
//! keeps memory bounded with no per-entry bookkeeping. On a new program
//! generation the pipeline revalidates the cache
//! ([`MegaflowCache::revalidate`]) or, when it is large, flushes it.
//!
//! Thread-safety: owned by one PMD (`&mut self` for changes); `Send`, not
//! `Sync` (hit counts are `Cell`s). Its [`TierStats`] are shared read-only.

use std::cell::Cell;
use std::sync::Arc;

use hashbrown::HashTable;

use super::slowpath::Xlate;
use super::TierStats;
use crate::flow::key::FlowKey;
use crate::stats::Counter;

/// Default maximum number of megaflows per PMD.
pub const MEGAFLOW_CAPACITY: usize = 65_536;

#[derive(Debug)]
struct Entry {
    hash: u64,
    masked: FlowKey,
    xlate: Arc<Xlate>,
}

#[derive(Debug)]
struct Subtable {
    mask: FlowKey,
    /// Indices of the mask's non-zero words: hashing and comparing touch
    /// only these (OVS miniflow idea).
    words: Box<[u8]>,
    table: HashTable<Entry>,
    hits: Cell<u64>,
}

/// Counters specific to the megaflow tier.
#[derive(Debug, Default)]
pub struct MegaflowStats {
    /// Hit and miss counts.
    pub tier: TierStats,
    /// Megaflows installed.
    pub installed: Counter,
    /// Times the cache was flushed because it was full.
    pub flushes_full: Counter,
    /// Subtables probed in total (divide by lookups for the average).
    pub probes: Counter,
    /// Megaflows kept (with refreshed actions) by revalidation.
    pub revalidated: Counter,
    /// Megaflows removed by revalidation.
    pub evicted: Counter,
}

/// A per-PMD megaflow cache.
#[derive(Debug)]
pub struct MegaflowCache {
    subtables: Vec<Subtable>,
    len: usize,
    capacity: usize,
    stats: Arc<MegaflowStats>,
}

impl MegaflowCache {
    /// An empty cache holding at most `capacity` megaflows.
    pub fn new(capacity: usize) -> Self {
        MegaflowCache {
            subtables: Vec::new(),
            len: 0,
            capacity: capacity.max(1),
            stats: Arc::new(MegaflowStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<MegaflowStats> {
        self.stats.clone()
    }

    /// The translation of the megaflow containing `key`, if any.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<&Arc<Xlate>> {
        let mut probes = 0;
        for st in &self.subtables {
            probes += 1;
            let h = key.hash_masked_words(&st.mask, &st.words);
            if let Some(e) = st.table.find(h, |e| {
                key.matches_masked_words(&st.mask, &e.masked, &st.words)
            }) {
                st.hits.set(st.hits.get() + 1);
                self.stats.probes.add(probes);
                self.stats.tier.hit.inc();
                return Some(&e.xlate);
            }
        }
        self.stats.probes.add(probes);
        self.stats.tier.miss.inc();
        None
    }

    /// Installs the megaflow `(mask, key & mask) → xlate`.
    pub fn insert(&mut self, key: &FlowKey, mask: &FlowKey, xlate: Arc<Xlate>) {
        if self.len >= self.capacity {
            self.flush();
            self.stats.flushes_full.inc();
        }
        let idx = match self.subtables.iter().position(|s| s.mask == *mask) {
            Some(i) => i,
            None => {
                self.subtables.push(Subtable {
                    mask: *mask,
                    words: mask.nonzero_words().into_boxed_slice(),
                    table: HashTable::new(),
                    hits: Cell::new(0),
                });
                self.subtables.len() - 1
            }
        };
        let st = &mut self.subtables[idx];
        let masked = key.and(mask);
        let hash = masked.hash_masked_words(mask, &st.words);
        match st.table.find_mut(hash, |e| e.masked == masked) {
            Some(e) => e.xlate = xlate,
            None => {
                st.table.insert_unique(
                    hash,
                    Entry {
                        hash,
                        masked,
                        xlate,
                    },
                    |e| e.hash,
                );
                self.len += 1;
                self.stats.installed.inc();
            }
        }
    }

    /// Orders subtables by recent hits, most first, and halves the counts.
    pub fn sort_subtables(&mut self) {
        self.subtables
            .sort_by_key(|s| std::cmp::Reverse(s.hits.get()));
        for s in &self.subtables {
            s.hits.set(s.hits.get() / 2);
        }
    }

    /// Re-checks every megaflow against a new program: `check(masked_key,
    /// mask)` returns the megaflow's new translation if it is still valid
    /// for the whole class, or `None` to remove it. Returns how many were
    /// kept.
    pub fn revalidate(
        &mut self,
        mut check: impl FnMut(&FlowKey, &FlowKey) -> Option<Arc<Xlate>>,
    ) -> usize {
        let mut kept = 0;
        let mut evicted = 0;
        for st in self.subtables.iter_mut() {
            let mask = st.mask;
            st.table.retain(|e| match check(&e.masked, &mask) {
                Some(x) => {
                    e.xlate = x;
                    kept += 1;
                    true
                }
                None => {
                    evicted += 1;
                    false
                }
            });
        }
        self.subtables.retain(|st| !st.table.is_empty());
        self.len = kept;
        self.stats.revalidated.add(kept as u64);
        self.stats.evicted.add(evicted as u64);
        kept
    }

    /// Removes every megaflow.
    pub fn flush(&mut self) {
        self.subtables.clear();
        self.len = 0;
    }

    /// Number of megaflows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct masks (subtables).
    pub fn n_masks(&self) -> usize {
        self.subtables.len()
    }

    /// One line per megaflow, `dpctl/dump-flows` style:
    /// `recirc_id=0x0,tcp,tp_dst=80, actions:output:2`.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for st in &self.subtables {
            for e in st.table.iter() {
                let m = crate::flow::matches::Match::from_parts(&e.masked, &st.mask);
                out.push_str(&crate::flow::text::format_match(&m));
                out.push_str(", actions:");
                out.push_str(&crate::flow::text::format_dp_actions(&e.xlate.actions));
                out.push('\n');
            }
        }
        out
    }

    /// Lines `mask → n flows, hits` for `dpif/show`-style introspection.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.subtables {
            out.push_str(&format!(
                "  subtable {}: {} megaflows, {} recent hits\n",
                crate::classifier::slowpath::format_key(&s.mask),
                s.table.len(),
                s.hits.get()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::Field;

    fn key(dst: u32, port: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwDst, u128::from(dst));
        k.set(Field::TpDst, u128::from(port));
        k
    }

    #[test]
    fn masked_hits_and_subtable_order() {
        let mut mf = MegaflowCache::new(8);
        let by_dst = FlowKey::field_mask(Field::NwDst);
        let by_port = FlowKey::field_mask(Field::TpDst);
        let a = Arc::new(Xlate::default());
        let b = Arc::new(Xlate::default());
        mf.insert(&key(1, 80), &by_dst, a.clone());
        mf.insert(&key(2, 22), &by_port, b.clone());
        assert_eq!(mf.n_masks(), 2);
        let hit = mf.lookup(&key(1, 9999)).expect("same dst, any port");
        assert!(Arc::ptr_eq(hit, &a));
        let hit = mf.lookup(&key(7, 22)).expect("any dst, port 22");
        assert!(Arc::ptr_eq(hit, &b));
        mf.lookup(&key(8, 22));
        assert!(mf.lookup(&key(3, 23)).is_none());
        mf.sort_subtables();
        assert_eq!(mf.subtables[0].mask, by_port, "most-hit subtable first");
        assert_eq!(mf.stats().tier.hit.get(), 3);
        assert_eq!(mf.stats().tier.miss.get(), 1);
        let dump = mf.dump();
        assert!(dump.contains("tp_dst=22, actions:drop\n"), "{dump}");
        assert!(mf.describe().contains("1 megaflows"));
    }

    #[test]
    fn full_cache_flushes() {
        let mut mf = MegaflowCache::new(3);
        let m = FlowKey::field_mask(Field::NwDst);
        for i in 0..4 {
            mf.insert(&key(i, 0), &m, Arc::new(Xlate::default()));
        }
        assert_eq!(mf.len(), 1);
        assert_eq!(mf.stats().flushes_full.get(), 1);
        assert!(mf.lookup(&key(3, 0)).is_some());
    }

    #[test]
    fn revalidate_keeps_updates_and_evicts() {
        let mut mf = MegaflowCache::new(8);
        let m = FlowKey::field_mask(Field::NwDst);
        for i in 0..3 {
            mf.insert(&key(i, 0), &m, Arc::new(Xlate::default()));
        }
        let fresh = Arc::new(Xlate::default());
        let kept = mf.revalidate(|masked, mask| {
            assert_eq!(*mask, m);
            (masked.get(Field::NwDst) != 1).then(|| fresh.clone())
        });
        assert_eq!((kept, mf.len()), (2, 2));
        assert!(mf.lookup(&key(1, 0)).is_none());
        assert!(Arc::ptr_eq(mf.lookup(&key(2, 0)).expect("kept"), &fresh));
        assert_eq!(mf.stats().evicted.get(), 1);
        mf.revalidate(|_, _| None);
        assert_eq!((mf.len(), mf.n_masks()), (0, 0));
    }
}
