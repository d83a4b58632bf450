//! The hash table of a specialised index's shard ([`super::special`]):
//! rules by the hash of their masked key, open addressing with linear
//! probing, one 16-bit tag per slot in an array of its own.
//!
//! Why not `hashbrown::HashTable`: a slot's address here is a function of
//! the hash alone ([`RuleIndex::prefetch_home`]), so a burst can hash
//! every packet, prefetch every packet's slots, then every packet's
//! candidate rule, before it looks any packet up: the cache misses of the
//! burst's lookups overlap instead of adding up (`rte_hash_lookup_bulk`'s
//! model; see `classifier::direct::run_burst`). hashbrown keeps where a
//! hash lands to itself.
//!
//! Layout: `tags[i]` is 0 for an empty slot, else the top 16 bits of the
//! rule's hash (at least 1); `rules[i]` the rule. A lookup reads the tag
//! array from the hash's home slot to the first empty slot and compares
//! the rule only where the tag matches (a false match is 1 in 65,535 per
//! occupied slot looked at). At most 7/8 of the slots are occupied (as in
//! hashbrown), so a probe always ends; the runs that load makes are read
//! in the tag array, 32 tags to a cache line, and a rule only where its
//! tag matches. Removal
//! shifts the following run back (no tombstones), recomputing the hashes
//! of the rules it moves with the caller's hasher.
//!
//! Memory: 10 bytes per slot, 8/7 slots per rule rounded up to a power of
//! two; hashbrown's `Arc<Rule>` table: 9 bytes per bucket, as many
//! buckets (100k /32 routes in 256 shards: 13.1 bytes per rule instead of
//! 11.8).
//!
//! Thread-safety: a plain value (shared immutably behind the index's
//! `Arc`s; copied on write).

use std::sync::Arc;

use crate::flow::program::Rule;

use super::prefetch;

/// The tag of an empty slot.
const EMPTY: u16 = 0;

/// Open-addressing table of rules (module documentation).
#[derive(Debug, Clone)]
pub(crate) struct RuleIndex {
    tags: Box<[u16]>,
    rules: Box<[Option<Arc<Rule>>]>,
    len: usize,
}

/// The tag of hash `h`.
#[inline]
fn tag(h: u64) -> u16 {
    ((h >> 48) as u16).max(1)
}

/// Slots for `n` rules: a power of two, at most 7/8 occupied.
fn slots_for(n: usize) -> usize {
    (n + n / 7 + 1).next_power_of_two().max(8)
}

impl RuleIndex {
    /// An empty table for `n` rules (it grows past that).
    pub fn with_capacity(n: usize) -> RuleIndex {
        let slots = slots_for(n);
        RuleIndex {
            tags: vec![EMPTY; slots].into_boxed_slice(),
            rules: vec![None; slots].into_boxed_slice(),
            len: 0,
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.tags.len() - 1
    }

    /// Number of rules.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot of the rule with hash `h` for which `eq` holds.
    #[inline]
    fn find_slot(&self, h: u64, mut eq: impl FnMut(&Arc<Rule>) -> bool) -> Option<usize> {
        let (t, m) = (tag(h), self.mask());
        let mut i = h as usize & m;
        // Ends: at least one slot is empty (at most 7/8 occupied).
        loop {
            let s = *self.tags.get(i)?;
            if s == EMPTY {
                return None;
            }
            if s == t && self.rules.get(i)?.as_ref().is_some_and(&mut eq) {
                return Some(i);
            }
            i = (i + 1) & m;
        }
    }

    /// The rule with hash `h` for which `eq` holds.
    #[inline]
    pub fn find(&self, h: u64, eq: impl FnMut(&Arc<Rule>) -> bool) -> Option<&Arc<Rule>> {
        let i = self.find_slot(h, eq)?;
        self.rules.get(i)?.as_ref()
    }

    /// [`RuleIndex::find`], mutable.
    pub fn find_mut(
        &mut self,
        h: u64,
        eq: impl FnMut(&Arc<Rule>) -> bool,
    ) -> Option<&mut Arc<Rule>> {
        let i = self.find_slot(h, eq)?;
        self.rules.get_mut(i)?.as_mut()
    }

    /// Prefetches the tag and the rule pointer of `h`'s home slot.
    #[inline]
    pub fn prefetch_home(&self, h: u64) {
        let i = h as usize & self.mask();
        if let (Some(t), Some(r)) = (self.tags.get(i), self.rules.get(i)) {
            prefetch(t);
            prefetch(r);
        }
    }

    /// The first rule from `h`'s home slot whose tag is `h`'s: the rule
    /// a lookup of `h` will most likely compare (for prefetching; it is
    /// not checked against any key).
    #[inline]
    pub fn candidate(&self, h: u64) -> Option<&Arc<Rule>> {
        let (t, m) = (tag(h), self.mask());
        let mut i = h as usize & m;
        loop {
            let s = *self.tags.get(i)?;
            if s == EMPTY {
                return None;
            }
            if s == t {
                return self.rules.get(i)?.as_ref();
            }
            i = (i + 1) & m;
        }
    }

    /// Adds `rule` with hash `h` (the caller knows no equal rule is
    /// there); `hasher` gives the hash of any rule (to grow).
    pub fn insert_unique(&mut self, h: u64, rule: Arc<Rule>, hasher: impl Fn(&Arc<Rule>) -> u64) {
        if (self.len + 1) * 8 > self.tags.len() * 7 {
            self.grow(&hasher);
        }
        self.place(h, rule);
    }

    /// Puts `rule` in the first empty slot from `h`'s home (there is one).
    fn place(&mut self, h: u64, rule: Arc<Rule>) {
        let m = self.mask();
        let mut i = h as usize & m;
        while self.tags[i] != EMPTY {
            i = (i + 1) & m;
        }
        self.tags[i] = tag(h);
        self.rules[i] = Some(rule);
        self.len += 1;
    }

    /// Doubles the slots, re-placing every rule.
    #[cold]
    fn grow(&mut self, hasher: &impl Fn(&Arc<Rule>) -> u64) {
        let slots = slots_for(self.len + 1).max(2 * self.tags.len());
        let old = std::mem::replace(&mut self.rules, vec![None; slots].into_boxed_slice());
        self.tags = vec![EMPTY; slots].into_boxed_slice();
        self.len = 0;
        for r in old.into_vec().into_iter().flatten() {
            let h = hasher(&r);
            self.place(h, r);
        }
    }

    /// Removes and returns the rule with hash `h` for which `eq` holds;
    /// `hasher` gives the hash of any rule (the rules after it move back).
    pub fn remove(
        &mut self,
        h: u64,
        eq: impl FnMut(&Arc<Rule>) -> bool,
        hasher: impl Fn(&Arc<Rule>) -> u64,
    ) -> Option<Arc<Rule>> {
        let mut hole = self.find_slot(h, eq)?;
        let m = self.mask();
        let out = self.rules[hole].take();
        self.tags[hole] = EMPTY;
        self.len -= 1;
        // Backward shift: a later rule of the run moves into the hole when
        // its home is not cyclically within (hole, j].
        let mut j = (hole + 1) & m;
        while self.tags[j] != EMPTY {
            let home = self.rules[j].as_ref().map_or(j, |r| hasher(r) as usize & m);
            if (j.wrapping_sub(home) & m) >= (j.wrapping_sub(hole) & m) {
                self.tags[hole] = self.tags[j];
                self.rules[hole] = self.rules[j].take();
                self.tags[j] = EMPTY;
                hole = j;
            }
            j = (j + 1) & m;
        }
        out
    }

    /// Every rule, in slot order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.rules.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::program::FlowSpec;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn rule(cookie: u64) -> Arc<Rule> {
        Arc::new(Rule {
            spec: FlowSpec {
                cookie,
                ..FlowSpec::default()
            },
            created: 0,
            stats: Arc::default(),
        })
    }

    /// A hash with few distinct home slots and tags, so runs collide,
    /// wrap around and share tags.
    fn hash(cookie: u64) -> u64 {
        (cookie % 13) | ((cookie % 3) << 48)
    }

    proptest! {
        /// Inserts and removes, against a map: every lookup (present and
        /// absent keys) answers the map's rule, `len` and `iter` agree,
        /// after growth and backward shifts.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec((any::<bool>(), 0u64..40), 1..200)) {
            let mut t = RuleIndex::with_capacity(2);
            let mut model: HashMap<u64, Arc<Rule>> = HashMap::new();
            let hasher = |r: &Arc<Rule>| hash(r.spec.cookie);
            for (add, c) in ops {
                if add {
                    if let std::collections::hash_map::Entry::Vacant(e) = model.entry(c) {
                        let r = rule(c);
                        e.insert(r.clone());
                        t.insert_unique(hash(c), r, hasher);
                    }
                } else {
                    let got = t.remove(hash(c), |r| r.spec.cookie == c, hasher);
                    let want = model.remove(&c);
                    prop_assert_eq!(got.map(|r| Arc::as_ptr(&r)), want.map(|r| Arc::as_ptr(&r)));
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert_eq!(t.iter().count(), model.len());
                for k in 0u64..40 {
                    let got = t.find(hash(k), |r| r.spec.cookie == k).map(Arc::as_ptr);
                    prop_assert_eq!(got, model.get(&k).map(Arc::as_ptr), "key {}", k);
                }
            }
        }
    }
}
