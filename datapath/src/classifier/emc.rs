//! The exact-match cache (EMC): the first and cheapest classifier tier.
//!
//! Size: a fixed power-of-two number of slots (default [`EMC_ENTRIES`]),
//! allocated once, in two parallel arrays: a 16-byte tag per slot (the
//! key's hash and the cached translation; four per cache line) and the full
//! [`FlowKey`] (192 bytes), read only when the tag's hash matches. Lookup:
//! the key's hash picks two candidate slots (low and high hash bits); a hit
//! needs an equal hash and an equal key, so collisions cost a compare, never
//! a wrong answer. The pipeline parses a whole burst first and
//! [`Emc::prefetch`]es each packet's slots, so the memory of later packets
//! loads while earlier ones are processed (OVS's EMC processing does the
//! same over its batches).
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
use super::TierStats;
use crate::flow::key::FlowKey;

/// Default number of EMC slots.
pub const EMC_ENTRIES: usize = 4096;

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
    /// Full keys (three cache lines each), read only when a tag matches.
    keys: Box<[FlowKey]>,
    mask: usize,
    stats: Arc<TierStats>,
}

impl Emc {
    /// A cache of `entries` slots, rounded up to a power of two (minimum 2).
    pub fn new(entries: usize) -> Self {
        let n = entries.max(2).next_power_of_two();
        Emc {
            tags: vec![Tag::default(); n].into_boxed_slice(),
            keys: vec![FlowKey::ZERO; n].into_boxed_slice(),
            mask: n - 1,
            stats: Arc::new(TierStats::default()),
        }
    }

    /// The hit/miss counters.
    pub fn stats(&self) -> Arc<TierStats> {
        self.stats.clone()
    }

    #[inline]
    fn candidates(&self, hash: u64) -> [usize; 2] {
        [hash as usize & self.mask, (hash >> 32) as usize & self.mask]
    }

    /// Starts loading what a lookup of `hash` will read (both tags and the
    /// first candidate's key), so that the lookup of a burst's later
    /// packets does not wait for memory. A hint only: no effect on results.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let [a, b] = self.candidates(hash);
        prefetch(&self.tags[a]);
        prefetch(&self.tags[b]);
        let k = &self.keys[a];
        prefetch(k);
        prefetch(&k.w[8]);
        prefetch(&k.w[16]);
    }

    /// The cached translation of `key` (whose full hash is `hash`).
    #[inline]
    pub fn lookup(&self, key: &FlowKey, hash: u64) -> Option<&Arc<Xlate>> {
        for i in self.candidates(hash) {
            let t = &self.tags[i];
            if t.hash == hash && t.xlate.is_some() && self.keys[i] == *key {
                self.stats.hit.inc();
                return t.xlate.as_ref();
            }
        }
        self.stats.miss.inc();
        None
    }

    /// Caches `xlate` for `key`.
    pub fn insert(&mut self, key: &FlowKey, hash: u64, xlate: Arc<Xlate>) {
        let [a, b] = self.candidates(hash);
        let free = |i: usize| {
            let t = &self.tags[i];
            t.xlate.is_none() || (t.hash == hash && self.keys[i] == *key)
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

/// A read prefetch of the cache line holding `*p` (no-op off x86-64).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE, which `_mm_prefetch` needs, is part of the x86-64
        // baseline; a prefetch is a hint that never faults, and `p` is a
        // valid reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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
        let mut emc = Emc::new(4);
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
}
