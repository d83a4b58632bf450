//! The exact-match cache (EMC): the first and cheapest classifier tier.
//!
//! Size: a fixed power-of-two number of slots (default [`EMC_ENTRIES`],
//! OVS's `EM_FLOW_HASH_ENTRIES`), allocated once, in two parallel arrays: a
//! 16-byte tag per slot (the key's hash and the cached translation; four
//! per cache line) and the full [`FlowKey`] (192 bytes), read only when the
//! tag's hash matches. Lookup: the key's hash picks two candidate slots
//! (low and high hash bits); a hit needs an equal hash and a key equal on
//! the live words (below), so
//! collisions cost a compare, never a wrong answer. The pipeline parses a
//! whole burst first and [`Emc::prefetch`]es each packet's tags, so the
//! memory of later packets loads while earlier ones are processed (OVS's
//! EMC processing does the same over its batches); a few packets ahead,
//! [`Emc::prefetch_hit`] and [`Emc::prefetch_actions`] follow a matching
//! tag to its key, translation and action list.
//!
//! Insertion is probabilistic ([`Emc::offer`]): a megaflow hit or an upcall
//! caches its key with probability 1 / `insert_inv_prob` (default
//! [`EMC_INSERT_INV_PROB`] = 100, the `[datapath] emc_insert_inv_prob` key;
//! 1 = every time, 0 = EMC off, no lookups either), OVS's
//! `other_config:emc-insert-inv-prob`. Why: when more flows cycle through
//! the cache than it has slots (10k flows each recurring every 10k
//! packets, 8192 slots), inserting on every miss evicts each entry before
//! its flow comes back, so almost nothing hits and every miss also pays a
//! 192-byte key write. Inserting rarely lets a stable random subset stay
//! cached: measured with pktgen l3/10000, always-insert hit 13% of packets,
//! 1/100 hits ~70% (OVS: 72%). The cost is a short warm-up: a flow needs
//! ~`insert_inv_prob` megaflow hits before it is cached, irrelevant for
//! long-lived flows. The decision is a per-cache xorshift32 step (a few
//! cycles, no allocation, no shared state); the seed is fixed, so a given
//! packet sequence always caches the same flows (tests rely on that).
//!
//! Live bits: a program can only ever look at some bits of the key
//! (the fields its rules match, plus the few its actions read; see
//! `FlowPipeline`'s live mask). [`Emc::set_live`] restricts the cache to
//! those: the caller hashes only them ([`FlowKey::hash_live`], over the
//! mask's non-zero words) and a hit compares only them, so two keys that
//! differ elsewhere (other fields, even ones sharing a word with a live
//! field, such as `tp_src` beside `recirc_id`) share a slot, which is
//! exact because they get the same translation. [`Emc::set_words`] is
//! the same with whole words live. A new mask flushes the cache.
//! Default: every bit.
//!
//! Eviction: insertion takes an empty candidate or the one already holding
//! this key; when both hold other flows, one is overwritten, chosen by a
//! hash bit (pseudo-random, so two hot flows sharing one slot pair do not
//! evict each other forever). Nothing ages: a new program generation
//! flushes the whole cache ([`Emc::flush`]).
//!
//! Thread-safety: owned by one PMD (`&mut self` everywhere); `Send`, not
//! shared. Its [`TierStats`] are shared read-only with the control socket.

use std::sync::Arc;

use super::slowpath::Xlate;
use super::{prefetch, TierStats};
use crate::flow::key::{FlowKey, ALL_WORDS};

/// Default number of EMC slots (OVS: 8192 too).
pub const EMC_ENTRIES: usize = 8192;

/// Default inverse insertion probability: a miss caches its key once in
/// this many times on average (OVS's `emc-insert-inv-prob` default).
pub const EMC_INSERT_INV_PROB: u32 = 100;

/// Every bit of the key live (the default).
const ALL_BITS: FlowKey = FlowKey {
    w: [u64::MAX; crate::flow::key::KEY_WORDS],
};

/// Seed of the insertion decision's xorshift32 (any non-zero value).
const RNG_SEED: u32 = 0x9e37_79b9;

/// The part of a slot a lookup reads first: 16 bytes, four to a cache
/// line, so the two candidates of a key usually cost one line.
#[derive(Debug, Default, Clone)]
struct Tag {
    hash: u64,
    xlate: Option<Arc<Xlate>>,
}

/// A per-PMD exact-match cache.
#[derive(Debug)]
pub struct Emc {
    /// Hashes and translations, indexed like `keys`.
    tags: Box<[Tag]>,
    /// Full keys (three cache lines each), read only when a tag matches,
    /// and then only at `words`, under `live`.
    keys: Box<[FlowKey]>,
    /// The bits hashed by the caller and compared on a hit.
    live: FlowKey,
    /// The non-zero word indices of `live`.
    words: Vec<u8>,
    /// Which of a key's three cache lines hold a word of `words`.
    lines: [bool; 3],
    /// `words` is every word: compare whole keys (unrolled, no index list).
    all_words: bool,
    mask: usize,
    /// 0: disabled; 1: always insert; N: insert when the next random
    /// number is at most `u32::MAX / N`.
    insert_inv_prob: u32,
    insert_threshold: u32,
    /// xorshift32 state (never zero).
    rng: u32,
    stats: Arc<TierStats>,
}

impl Emc {
    /// A cache of `entries` slots, rounded up to a power of two (minimum
    /// 2), that [`Emc::offer`] fills with probability 1 / `insert_inv_prob`
    /// (0: the cache is disabled; lookups miss without probing).
    pub fn new(entries: usize, insert_inv_prob: u32) -> Self {
        let n = if insert_inv_prob == 0 {
            2
        } else {
            entries.max(2).next_power_of_two()
        };
        Emc {
            tags: vec![Tag::default(); n].into_boxed_slice(),
            keys: vec![FlowKey::ZERO; n].into_boxed_slice(),
            live: ALL_BITS,
            words: ALL_WORDS.to_vec(),
            lines: [true; 3],
            all_words: true,
            mask: n - 1,
            insert_inv_prob,
            insert_threshold: u32::MAX / insert_inv_prob.max(1),
            rng: RNG_SEED,
            stats: Arc::new(TierStats::default()),
        }
    }

    /// True unless the cache was built with `insert_inv_prob` 0.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.insert_inv_prob != 0
    }

    /// The configured inverse insertion probability.
    pub fn insert_inv_prob(&self) -> u32 {
        self.insert_inv_prob
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.tags.len()
    }

    /// The hit/miss counters.
    pub fn stats(&self) -> Arc<TierStats> {
        self.stats.clone()
    }

    /// Restricts hits to keys equal on `words` (sorted word indices; the
    /// caller hashes with [`FlowKey::hash_words`] over the same words) and
    /// flushes the cache when they change. Allocates only then.
    pub fn set_words(&mut self, words: &[u8]) {
        let mut live = FlowKey::ZERO;
        for &w in words {
            if let Some(x) = live.w.get_mut(usize::from(w)) {
                *x = u64::MAX;
            }
        }
        self.set_live(&live);
    }

    /// Restricts hits to keys equal on the bits of `live` (the caller
    /// hashes with [`FlowKey::hash_live`] over `live` and its non-zero
    /// words) and flushes the cache when it changes. Allocates only then.
    pub fn set_live(&mut self, live: &FlowKey) {
        if self.live == *live {
            return;
        }
        self.flush();
        self.live = *live;
        self.words = live.nonzero_words();
        self.all_words = *live == ALL_BITS;
        self.lines = [false; 3];
        for &w in &self.words {
            // Eight 64-bit words per cache line.
            if let Some(l) = self.lines.get_mut(usize::from(w) / 8) {
                *l = true;
            }
        }
    }

    /// The word indices hits compare.
    pub fn words(&self) -> &[u8] {
        &self.words
    }

    /// True when the key in slot `i` equals `key` on the live bits.
    #[inline(always)]
    fn same_key(&self, i: usize, key: &FlowKey) -> bool {
        if self.all_words {
            self.keys[i] == *key
        } else {
            self.keys[i].eq_live(key, &self.live, &self.words)
        }
    }

    #[inline]
    fn candidates(&self, hash: u64) -> [usize; 2] {
        [hash as usize & self.mask, (hash >> 32) as usize & self.mask]
    }

    /// Starts loading the two candidate tags of `hash`, so that the
    /// lookup of a burst's later packets does not wait for memory (the
    /// keys follow in [`Emc::prefetch_hit`], only for a tag that matches:
    /// when most packets miss, loading keys would only pollute the cache).
    /// A hint only: no effect on results.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if !self.enabled() {
            return;
        }
        let [a, b] = self.candidates(hash);
        prefetch(&self.tags[a]);
        prefetch(&self.tags[b]);
    }

    /// Second prefetch stage, a little before the lookup of `hash` (once
    /// [`Emc::prefetch`]'s tag lines have arrived): for a candidate whose
    /// tag has this hash, starts loading its key and the translation the
    /// tag points to. A hint only.
    #[inline]
    pub fn prefetch_hit(&self, hash: u64) {
        if !self.enabled() {
            return;
        }
        for (i, x) in self.tagged(hash) {
            prefetch(Arc::as_ptr(x));
            let k = &self.keys[i];
            for (line, &live) in self.lines.iter().enumerate() {
                if live {
                    prefetch(&k.w[line * 8]);
                }
            }
        }
    }

    /// The candidate slots of `hash` whose tag has that hash, with their
    /// translations (what a lookup will compare and return).
    #[inline]
    fn tagged(&self, hash: u64) -> impl Iterator<Item = (usize, &Arc<Xlate>)> {
        self.candidates(hash).into_iter().filter_map(move |i| {
            let t = &self.tags[i];
            t.xlate.as_ref().filter(|_| t.hash == hash).map(|x| (i, x))
        })
    }

    /// Third prefetch stage, after [`Emc::prefetch_hit`]: the action list
    /// and rule-counter list of the translation a hit on `hash` will
    /// return (separate allocations: with thousands of flows each is a
    /// cache miss that would otherwise stall the packet). A hint only.
    #[inline]
    pub fn prefetch_actions(&self, hash: u64) {
        if !self.enabled() {
            return;
        }
        for (_, x) in self.tagged(hash) {
            prefetch(x.actions.as_ptr());
            prefetch(x.rules.as_ptr());
        }
    }

    /// The cached translation of `key` (whose full hash is `hash`).
    /// A disabled cache answers `None` without probing or counting.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, hash: u64) -> Option<&Arc<Xlate>> {
        if !self.enabled() {
            return None;
        }
        for i in self.candidates(hash) {
            let t = &self.tags[i];
            if t.hash == hash && t.xlate.is_some() && self.same_key(i, key) {
                self.stats.hit.inc();
                return t.xlate.as_ref();
            }
        }
        self.stats.miss.inc();
        None
    }

    /// Caches `xlate` for `key` with probability 1 / `insert_inv_prob`
    /// (the miss path calls this; see the module doc for why not always).
    /// Returns true when it was inserted. Clones the `Arc` only then.
    #[inline]
    pub fn offer(&mut self, key: &FlowKey, hash: u64, xlate: &Arc<Xlate>) -> bool {
        let insert = match self.insert_inv_prob {
            0 => false,
            1 => true,
            _ => {
                // xorshift32 (Marsaglia): full period over non-zero states.
                let mut x = self.rng;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                self.rng = x;
                x <= self.insert_threshold
            }
        };
        if insert {
            self.insert(key, hash, xlate.clone());
        }
        insert
    }

    /// Caches `xlate` for `key` unconditionally (tests and benchmarks; the
    /// pipeline calls [`Emc::offer`]).
    pub fn insert(&mut self, key: &FlowKey, hash: u64, xlate: Arc<Xlate>) {
        let [a, b] = self.candidates(hash);
        let free = |i: usize| {
            let t = &self.tags[i];
            t.xlate.is_none() || (t.hash == hash && self.same_key(i, key))
        };
        let i = if free(a) {
            a
        } else if free(b) {
            b
        } else if hash & (1 << 31) != 0 {
            a
        } else {
            b
        };
        self.tags[i] = Tag {
            hash,
            xlate: Some(xlate),
        };
        self.keys[i] = *key;
    }

    /// Empties the cache.
    pub fn flush(&mut self) {
        for t in self.tags.iter_mut() {
            t.xlate = None;
        }
    }

    /// Number of occupied slots (introspection; O(size)).
    pub fn len(&self) -> usize {
        self.tags.iter().filter(|t| t.xlate.is_some()).count()
    }

    /// True when no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::Field;

    fn key(n: u32) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set(Field::NwDst, u128::from(n));
        k
    }

    #[test]
    fn hit_miss_evict_flush() {
        let mut emc = Emc::new(4, 1);
        let x = Arc::new(Xlate::default());
        let k1 = key(1);
        assert!(emc.lookup(&k1, k1.hash()).is_none());
        emc.insert(&k1, k1.hash(), x.clone());
        assert!(emc.lookup(&k1, k1.hash()).is_some());
        // A key with the same hash but different contents never hits.
        assert!(emc.lookup(&key(2), k1.hash()).is_none());
        for n in 2..100 {
            let k = key(n);
            emc.insert(&k, k.hash(), x.clone());
        }
        assert!(emc.len() <= 4, "fixed size");
        let k = key(99);
        assert!(
            emc.lookup(&k, k.hash()).is_some(),
            "latest insert is present"
        );
        emc.flush();
        assert!(emc.is_empty());
        assert_eq!(emc.stats().hit.get(), 2);
        assert_eq!(emc.stats().miss.get(), 2);
    }

    #[test]
    fn live_words_share_slots_and_a_new_word_set_flushes() {
        const WORDS: [u8; 2] = [0, 3];
        let mut emc = Emc::new(64, 1);
        emc.set_words(&WORDS);
        let x = Arc::new(Xlate::default());
        let k1 = key(1);
        emc.insert(&k1, k1.hash_words(&WORDS), x);
        // A key differing only in a dead word (tp_dst, word 4) hits.
        let mut k2 = k1;
        k2.set(Field::TpDst, 80);
        assert_eq!(k1.hash_words(&WORDS), k2.hash_words(&WORDS));
        assert!(emc.lookup(&k2, k2.hash_words(&WORDS)).is_some());
        // One differing in a live word (nw_dst, word 3) misses, even when
        // presented with the first key's hash.
        let k3 = key(2);
        assert!(emc.lookup(&k3, k1.hash_words(&WORDS)).is_none());
        // The same set keeps the entries; a different set flushes.
        emc.set_words(&WORDS);
        assert_eq!(emc.len(), 1);
        emc.set_words(&[0, 3, 4]);
        assert!(emc.is_empty());
        assert_eq!(emc.words(), &[0, 3, 4]);
        assert!(emc.lookup(&k2, k2.hash_words(&[0, 3, 4])).is_none());
    }

    #[test]
    fn live_bits_share_slots_within_a_word() {
        let mut live = FlowKey::field_mask(Field::RecircId);
        live.or_assign(&FlowKey::field_mask(Field::NwDst));
        let mut emc = Emc::new(64, 1);
        emc.set_live(&live);
        let words = live.nonzero_words();
        assert_eq!(emc.words(), &words[..]);
        let x = Arc::new(Xlate::default());
        let k1 = key(1);
        emc.insert(&k1, k1.hash_live(&live, &words), x);
        // tp_src shares word 4 with recirc_id but is not live: a hit.
        let mut k2 = k1;
        k2.set(Field::TpSrc, 1234);
        assert_eq!(k1.hash_live(&live, &words), k2.hash_live(&live, &words));
        assert_eq!(
            k2.hash_live(&live, &words),
            k2.and(&live).hash_words(&words)
        );
        assert!(emc.lookup(&k2, k2.hash_live(&live, &words)).is_some());
        // recirc_id, in the same word, is live: a miss, even with k1's hash.
        let mut k3 = k1;
        k3.set(Field::RecircId, 2);
        assert!(emc.lookup(&k3, k1.hash_live(&live, &words)).is_none());
        // The same mask keeps the entries; another flushes.
        emc.set_live(&live);
        assert_eq!(emc.len(), 1);
        live.or_assign(&FlowKey::field_mask(Field::TpSrc));
        emc.set_live(&live);
        assert!(emc.is_empty());
    }

    #[test]
    fn offer_with_inv_prob_1_always_inserts() {
        let mut emc = Emc::new(1024, 1);
        let x = Arc::new(Xlate::default());
        for n in 0..100 {
            let k = key(n);
            assert!(emc.offer(&k, k.hash(), &x));
            assert!(emc.lookup(&k, k.hash()).is_some(), "cached at once");
        }
    }

    #[test]
    fn inv_prob_0_disables_the_cache() {
        let mut emc = Emc::new(1024, 0);
        assert!(!emc.enabled());
        let x = Arc::new(Xlate::default());
        for n in 0..1000 {
            let k = key(n);
            assert!(!emc.offer(&k, k.hash(), &x));
            assert!(emc.lookup(&k, k.hash()).is_none());
        }
        assert!(emc.is_empty());
        assert_eq!(Arc::strong_count(&x), 1, "never cloned");
        assert_eq!(emc.stats().miss.get(), 0, "no lookups counted");
        assert_eq!(emc.capacity(), 2, "no memory for a disabled cache");
    }

    #[test]
    fn inv_prob_100_inserts_about_one_in_100() {
        // The seed is fixed, so this count is deterministic; the bounds
        // only say it is near 1% (10_000 / 100 = 100 expected).
        let mut emc = Emc::new(1 << 16, 100);
        let x = Arc::new(Xlate::default());
        let inserted = (0..10_000)
            .filter(|&n| {
                let k = key(n);
                emc.offer(&k, k.hash(), &x)
            })
            .count();
        assert!((70..=130).contains(&inserted), "{inserted} of 10000");
        assert_eq!(emc.len(), inserted, "each offer that says so inserted");
        assert_eq!(Arc::strong_count(&x), 1 + inserted, "cloned only then");
    }

    #[test]
    fn a_cyclic_pattern_larger_than_the_cache_keeps_hitting() {
        // 3 × capacity flows in a cycle: always-insert evicts every entry
        // before its flow comes back; 1-in-100 keeps a stable subset.
        let hits = |inv_prob| {
            let mut emc = Emc::new(1024, inv_prob);
            let x = Arc::new(Xlate::default());
            let keys: Vec<FlowKey> = (0..3072).map(key).collect();
            let mut hits = 0;
            for round in 0..300 {
                for k in &keys {
                    let h = k.hash();
                    if emc.lookup(k, h).is_some() {
                        hits += usize::from(round >= 200);
                    } else {
                        emc.offer(k, h, &x);
                    }
                }
            }
            hits as f64 / (100.0 * 3072.0)
        };
        let (always, sometimes) = (hits(1), hits(100));
        assert!(always < 0.10, "always-insert thrashes: {always}");
        assert!(sometimes > 0.20, "1/100 keeps a subset: {sometimes}");
    }
}
