//! The exact-match cache (EMC): the first and cheapest classifier tier.
//!
//! Size: a fixed power-of-two array of slots (default [`EMC_ENTRIES`]),
//! allocated once; a slot holds the full [`FlowKey`], its hash and the
//! cached translation. Lookup: the key's hash picks two candidate slots
//! (low and high hash bits); a hit needs an equal hash and an equal key, so
//! collisions cost a compare, never a wrong answer.
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

#[derive(Debug, Default, Clone)]
struct Slot {
    hash: u64,
    key: FlowKey,
    xlate: Option<Arc<Xlate>>,
}

/// A per-PMD exact-match cache.
#[derive(Debug)]
pub struct Emc {
    slots: Box<[Slot]>,
    mask: usize,
    stats: Arc<TierStats>,
}

impl Emc {
    /// A cache of `entries` slots, rounded up to a power of two (minimum 2).
    pub fn new(entries: usize) -> Self {
        let n = entries.max(2).next_power_of_two();
        Emc {
            slots: vec![Slot::default(); n].into_boxed_slice(),
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

    /// The cached translation of `key` (whose full hash is `hash`).
    #[inline]
    pub fn lookup(&self, key: &FlowKey, hash: u64) -> Option<&Arc<Xlate>> {
        for i in self.candidates(hash) {
            let s = &self.slots[i];
            if s.hash == hash && s.xlate.is_some() && s.key == *key {
                self.stats.hit.inc();
                return s.xlate.as_ref();
            }
        }
        self.stats.miss.inc();
        None
    }

    /// Caches `xlate` for `key`.
    pub fn insert(&mut self, key: &FlowKey, hash: u64, xlate: Arc<Xlate>) {
        let [a, b] = self.candidates(hash);
        let free = |s: &Slot| s.xlate.is_none() || (s.hash == hash && s.key == *key);
        let i = if free(&self.slots[a]) {
            a
        } else if free(&self.slots[b]) {
            b
        } else if hash & (1 << 31) != 0 {
            a
        } else {
            b
        };
        self.slots[i] = Slot {
            hash,
            key: *key,
            xlate: Some(xlate),
        };
    }

    /// Empties the cache.
    pub fn flush(&mut self) {
        for s in self.slots.iter_mut() {
            s.xlate = None;
        }
    }

    /// Number of occupied slots (introspection; O(size)).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.xlate.is_some()).count()
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
