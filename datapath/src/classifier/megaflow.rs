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
//! Entries are compact (dpcls's miniflows): a subtable keeps the indices
//! of its mask's non-zero words and the mask's values there, and each
//! entry holds only those words of its masked key, packed, beside its
//! translation. A lookup gathers the packet's words under the mask into a
//! small array, hashes that, lets the hash table's control bytes (one
//! byte of the hash per slot, probed 16 at a time) pick candidates, and
//! compares the packed words of the candidate only. A subtable of at most
//! [`NARROW_WORDS`] words (nearly all: an l3 megaflow has five) stores
//! 64-byte entries, one cache line each, instead of a 192-byte key per
//! megaflow; wider masks use entries of a whole key's words.
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
use crate::flow::key::{FlowKey, KEY_WORDS};
use crate::stats::Counter;

/// Default maximum number of megaflows per PMD.
pub const MEGAFLOW_CAPACITY: usize = 65_536;

/// Most mask words a subtable with one-cache-line entries can have.
pub const NARROW_WORDS: usize = 7;

/// A megaflow: the packed masked-key words of its subtable's mask (the
/// unused tail is zero) and its translation. One cache line when narrow.
#[derive(Debug)]
#[repr(C, align(64))]
struct Entry<const N: usize> {
    xlate: Arc<Xlate>,
    w: [u64; N],
}

const _: () = assert!(std::mem::size_of::<Entry<NARROW_WORDS>>() == 64);

/// A subtable's megaflows, by width.
#[derive(Debug)]
enum Entries {
    /// At most [`NARROW_WORDS`] mask words.
    Narrow(HashTable<Entry<NARROW_WORDS>>),
    /// Any mask.
    Wide(HashTable<Entry<KEY_WORDS>>),
}

#[derive(Debug)]
struct Subtable {
    mask: FlowKey,
    /// Indices of the mask's non-zero words: hashing and comparing touch
    /// only these (OVS miniflow idea).
    words: Box<[u8]>,
    /// The mask's values at `words`.
    mask_words: Box<[u64]>,
    entries: Entries,
    hits: Cell<u64>,
}

const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
const HASH_SEED0: u64 = 0x243f_6a88_85a3_08d3;
const HASH_SEED1: u64 = 0x1319_8a2e_0370_7344;

/// The hash of `n` packed words, word `j` given by `word(j)` (two lanes,
/// then a full avalanche). Lookups read the words straight from the
/// packet's key (no packed copy on the stack, whose reload as vectors
/// would stall on store forwarding); stored entries hash their packed
/// words ([`hash_packed`]): the same value.
#[inline(always)]
fn hash_with(n: usize, word: impl Fn(usize) -> u64) -> u64 {
    let (mut a, mut b) = (HASH_SEED0, HASH_SEED1);
    let mut j = 0;
    while j + 1 < n {
        a = (a.rotate_left(23) ^ word(j)).wrapping_mul(HASH_MUL);
        b = (b.rotate_left(23) ^ word(j + 1)).wrapping_mul(HASH_MUL);
        j += 2;
    }
    if j < n {
        a = (a.rotate_left(23) ^ word(j)).wrapping_mul(HASH_MUL);
    }
    let mut h = a ^ b.rotate_left(32);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// [`hash_with`] over packed words.
#[inline]
fn hash_packed(w: &[u64]) -> u64 {
    hash_with(w.len(), |j| w[j])
}

/// Word-wise equality, branch-free (no `memcmp` call).
#[inline(always)]
fn same<const N: usize>(a: &[u64; N], b: &[u64; N]) -> bool {
    a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

impl Subtable {
    fn new(mask: &FlowKey) -> Subtable {
        let words = mask.nonzero_words();
        let mask_words = words.iter().map(|&i| mask.w[usize::from(i)]).collect();
        let entries = if words.len() <= NARROW_WORDS {
            Entries::Narrow(HashTable::new())
        } else {
            Entries::Wide(HashTable::new())
        };
        Subtable {
            mask: *mask,
            words: words.into_boxed_slice(),
            mask_words,
            entries,
            hits: Cell::new(0),
        }
    }

    /// `key`'s words under the mask, packed (zero past the mask's words).
    #[inline(always)]
    fn gather<const N: usize>(&self, key: &FlowKey) -> [u64; N] {
        let mut out = [0u64; N];
        for ((o, &i), &m) in out.iter_mut().zip(&*self.words).zip(&*self.mask_words) {
            *o = key.w[usize::from(i)] & m;
        }
        out
    }

    /// The masked key a packed entry stands for.
    fn scatter(&self, w: &[u64]) -> FlowKey {
        let mut k = FlowKey::ZERO;
        for (&i, &x) in self.words.iter().zip(w) {
            k.w[usize::from(i)] = x;
        }
        k
    }

    #[inline(always)]
    fn find(&self, key: &FlowKey) -> Option<&Arc<Xlate>> {
        let (words, mask) = (&*self.words, &*self.mask_words);
        let n = words.len().min(mask.len());
        let word = |j: usize| key.w[usize::from(words[j])] & mask[j];
        let h = hash_with(n, word);
        // Word by word from the key; the entry's tail past `n` is zero
        // and not read.
        let same = |w: &[u64]| (0..n).fold(0, |d, j| d | (w[j] ^ word(j))) == 0;
        match &self.entries {
            Entries::Narrow(t) => t.find(h, |e| same(&e.w)).map(|e| &e.xlate),
            Entries::Wide(t) => t.find(h, |e| same(&e.w)).map(|e| &e.xlate),
        }
    }

    /// Inserts or replaces; true when the megaflow is new.
    fn insert(&mut self, key: &FlowKey, xlate: Arc<Xlate>) -> bool {
        fn put<const N: usize>(
            t: &mut HashTable<Entry<N>>,
            w: [u64; N],
            n: usize,
            xlate: Arc<Xlate>,
        ) -> bool {
            let h = hash_packed(&w[..n]);
            match t.find_mut(h, |e| same(&e.w, &w)) {
                Some(e) => {
                    e.xlate = xlate;
                    false
                }
                None => {
                    t.insert_unique(h, Entry { xlate, w }, |e| hash_packed(&e.w[..n]));
                    true
                }
            }
        }
        let n = self.words.len();
        match &self.entries {
            Entries::Narrow(_) => {
                let w = self.gather::<NARROW_WORDS>(key);
                let Entries::Narrow(t) = &mut self.entries else {
                    return false;
                };
                put(t, w, n, xlate)
            }
            Entries::Wide(_) => {
                let w = self.gather::<KEY_WORDS>(key);
                let Entries::Wide(t) = &mut self.entries else {
                    return false;
                };
                put(t, w, n, xlate)
            }
        }
    }

    fn len(&self) -> usize {
        match &self.entries {
            Entries::Narrow(t) => t.len(),
            Entries::Wide(t) => t.len(),
        }
    }

    /// Every megaflow as (masked key, translation).
    fn iter(&self) -> Box<dyn Iterator<Item = (FlowKey, &Arc<Xlate>)> + '_> {
        match &self.entries {
            Entries::Narrow(t) => Box::new(t.iter().map(|e| (self.scatter(&e.w), &e.xlate))),
            Entries::Wide(t) => Box::new(t.iter().map(|e| (self.scatter(&e.w), &e.xlate))),
        }
    }

    /// Keeps the megaflows for which `f(masked key)` gives a translation
    /// (which replaces theirs).
    fn retain(&mut self, mut f: impl FnMut(&FlowKey) -> Option<Arc<Xlate>>) {
        let (words, mut entries) = (
            std::mem::take(&mut self.words),
            std::mem::replace(&mut self.entries, Entries::Narrow(HashTable::new())),
        );
        let scatter = |w: &[u64]| {
            let mut k = FlowKey::ZERO;
            for (&i, &x) in words.iter().zip(w) {
                k.w[usize::from(i)] = x;
            }
            k
        };
        match &mut entries {
            Entries::Narrow(t) => t.retain(|e| match f(&scatter(&e.w)) {
                Some(x) => {
                    e.xlate = x;
                    true
                }
                None => false,
            }),
            Entries::Wide(t) => t.retain(|e| match f(&scatter(&e.w)) {
                Some(x) => {
                    e.xlate = x;
                    true
                }
                None => false,
            }),
        }
        self.words = words;
        self.entries = entries;
    }
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
            if let Some(x) = st.find(key) {
                st.hits.set(st.hits.get() + 1);
                self.stats.probes.add(probes);
                self.stats.tier.hit.inc();
                return Some(x);
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
                self.subtables.push(Subtable::new(mask));
                self.subtables.len() - 1
            }
        };
        if self.subtables[idx].insert(key, xlate) {
            self.len += 1;
            self.stats.installed.inc();
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
            st.retain(|masked| match check(masked, &mask) {
                Some(x) => {
                    kept += 1;
                    Some(x)
                }
                None => {
                    evicted += 1;
                    None
                }
            });
        }
        self.subtables.retain(|st| st.len() != 0);
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
            for (masked, xlate) in st.iter() {
                let m = crate::flow::matches::Match::from_parts(&masked, &st.mask);
                out.push_str(&crate::flow::text::format_match(&m));
                out.push_str(", actions:");
                out.push_str(&crate::flow::text::format_dp_actions(&xlate.actions));
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
                s.len(),
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
    use proptest::prelude::*;

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

    /// The reference: per mask, in insertion order, its classes (masked
    /// key and translation).
    type Model = Vec<(FlowKey, Vec<(FlowKey, Arc<Xlate>)>)>;

    /// A mask over `n` random words (narrow or wide) and keys that agree
    /// with one another often.
    fn mask_and_keys() -> impl Strategy<Value = (Vec<FlowKey>, Vec<(usize, usize)>, Vec<FlowKey>)> {
        let mask = proptest::collection::vec((0usize..KEY_WORDS, 1u64..), 1..12).prop_map(|ws| {
            let mut m = FlowKey::ZERO;
            for (i, w) in ws {
                m.w[i] = w;
            }
            m
        });
        // Keys from a small pool of word values, so classes collide.
        let key = proptest::collection::vec(0u64..4, KEY_WORDS).prop_map(|ws| {
            let mut k = FlowKey::ZERO;
            for (i, w) in ws.into_iter().enumerate() {
                k.w[i] = w.wrapping_mul(0x0101_0101_0101_0101) ^ (i as u64);
            }
            k
        });
        (
            proptest::collection::vec(mask, 1..5),
            proptest::collection::vec((0usize..5, 0usize..16), 0..40),
            proptest::collection::vec(key, 16),
        )
    }

    proptest! {
        /// The packed cache answers like a list of (mask, masked key,
        /// translation) searched mask by mask in insertion order (a
        /// re-insert of a class replaces its translation), through
        /// inserts, lookups, revalidation and dump.
        #[test]
        fn packed_cache_equals_reference((masks, ops, keys) in mask_and_keys()) {
            let mut mf = MegaflowCache::new(1 << 16);
            let mut model: Model = Vec::new();
            for (m, k) in ops {
                let mask = masks[m % masks.len()];
                let key = keys[k];
                let x = Arc::new(Xlate::default());
                mf.insert(&key, &mask, x.clone());
                let masked = key.and(&mask);
                let pos = match model.iter().position(|(mm, _)| *mm == mask) {
                    Some(p) => p,
                    None => {
                        model.push((mask, Vec::new()));
                        model.len() - 1
                    }
                };
                let class = &mut model[pos].1;
                match class.iter_mut().find(|(mk, _)| *mk == masked) {
                    Some(e) => e.1 = x,
                    None => class.push((masked, x)),
                }
            }
            let want_len: usize = model.iter().map(|(_, c)| c.len()).sum();
            prop_assert_eq!(mf.len(), want_len);
            prop_assert_eq!(mf.n_masks(), model.len());
            prop_assert_eq!(mf.dump().lines().count(), want_len);
            let reference = |model: &Model, key: &FlowKey| {
                model.iter().find_map(|(mask, c)| {
                    c.iter().find(|(mk, _)| key.and(mask) == *mk).map(|(_, x)| x.clone())
                })
            };
            for key in &keys {
                let got = mf.lookup(key).cloned();
                let want = reference(&model, key);
                prop_assert_eq!(got.is_some(), want.is_some());
                if let (Some(g), Some(w)) = (got, want) {
                    prop_assert!(Arc::ptr_eq(&g, &w));
                }
            }
            // Revalidation sees each megaflow's masked key and mask, and
            // keeps exactly those it is told to.
            let fresh = Arc::new(Xlate::default());
            let keep = |masked: &FlowKey| masked.w.iter().fold(0u64, |a, w| a ^ w) & 1 == 0;
            let mut seen = 0;
            mf.revalidate(|masked, mask| {
                seen += 1;
                assert_eq!(masked.and(mask), *masked);
                keep(masked).then(|| fresh.clone())
            });
            prop_assert_eq!(seen, want_len);
            for (_, c) in model.iter_mut() {
                c.retain(|(mk, _)| keep(mk));
                for e in c.iter_mut() {
                    e.1 = fresh.clone();
                }
            }
            model.retain(|(_, c)| !c.is_empty());
            prop_assert_eq!(mf.len(), model.iter().map(|(_, c)| c.len()).sum::<usize>());
            for key in &keys {
                prop_assert_eq!(mf.lookup(key).is_some(), reference(&model, key).is_some());
            }
        }
    }
}
