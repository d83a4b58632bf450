//! The two collections a [`crate::Datum`] is made of: [`AtomSet`], a set of
//! atoms, and [`AtomMap`], a map from atom to atom.
//!
//! Both are sorted vectors, not trees: almost every OVSDB value is a scalar
//! (a one-atom set), an empty set or map, or a handful of atoms, and a
//! column value is built once and then read, compared, copied and written
//! many times. An [`AtomSet`] keeps its first atom inline, so a scalar needs
//! no allocation of its own; an empty [`AtomMap`] allocates nothing. Lookups
//! are binary searches; inserting into the middle is linear, which only
//! matters for values of thousands of atoms built one at a time (mutations
//! build their result by merging instead).
//!
//! Invariants: elements (keys, for a map) are strictly increasing in
//! [`Atom`]'s total order, so there are no duplicates and equality, ordering
//! and iteration are the same as a `BTreeSet`'s or `BTreeMap`'s with the same
//! contents. Plain values: `Send + Sync`.

use std::cmp::Ordering;

use smallvec::SmallVec;

use crate::datum::Atom;

/// A set of atoms in increasing order (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AtomSet(SmallVec<[Atom; 1]>);

impl AtomSet {
    /// The empty set.
    pub fn new() -> Self {
        Self(SmallVec::new())
    }

    /// The set of one atom (no allocation beyond the atom's own).
    pub fn one(a: Atom) -> Self {
        let mut v = SmallVec::new();
        v.push(a);
        Self(v)
    }

    /// Number of atoms.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The atoms in increasing order.
    pub fn iter(&self) -> std::slice::Iter<'_, Atom> {
        self.0.iter()
    }

    /// The atoms in increasing order, as a slice.
    pub fn as_slice(&self) -> &[Atom] {
        &self.0
    }

    /// The smallest atom.
    pub fn first(&self) -> Option<&Atom> {
        self.0.first()
    }

    /// True when `a` is in the set.
    pub fn contains(&self, a: &Atom) -> bool {
        self.0.binary_search(a).is_ok()
    }

    /// Adds `a`; false (and the set unchanged) when it was already there.
    pub fn insert(&mut self, a: Atom) -> bool {
        // Input usually arrives in order: check the end first.
        match self.0.last().map(|l| l.cmp(&a)) {
            None | Some(Ordering::Less) => {
                self.0.push(a);
                true
            }
            Some(Ordering::Equal) => false,
            Some(Ordering::Greater) => match self.0.binary_search(&a) {
                Ok(_) => false,
                Err(i) => {
                    self.0.insert(i, a);
                    true
                }
            },
        }
    }

    /// Removes `a`; false when it was not there.
    pub fn remove(&mut self, a: &Atom) -> bool {
        match self.0.binary_search(a) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// True when every atom of `self` is in `other`.
    pub fn is_subset(&self, other: &AtomSet) -> bool {
        self.len() <= other.len() && self.iter().all(|a| other.contains(a))
    }

    /// The atoms in `self` or `other`.
    pub fn union(&self, other: &AtomSet) -> AtomSet {
        merge(self, other, true, true, true)
    }

    /// The atoms in `self` but not in `other`.
    pub fn difference(&self, other: &AtomSet) -> AtomSet {
        merge(self, other, true, false, false)
    }

    /// The atoms in exactly one of `self` and `other`.
    pub fn symmetric_difference(&self, other: &AtomSet) -> AtomSet {
        merge(self, other, true, true, false)
    }

    /// Keeps the atoms for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Atom) -> bool) {
        self.0.retain(|a| keep(a));
    }
}

/// Merges two sorted sets, keeping atoms only in `a` (`only_a`), only in `b`
/// (`only_b`) and in both (`both`).
fn merge(a: &AtomSet, b: &AtomSet, only_a: bool, only_b: bool, both: bool) -> AtomSet {
    let mut out = SmallVec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (a.0.iter().peekable(), b.0.iter().peekable());
    loop {
        match (i.peek(), j.peek()) {
            (Some(x), Some(y)) => match x.cmp(y) {
                Ordering::Less => {
                    if only_a {
                        out.push((*x).clone());
                    }
                    i.next();
                }
                Ordering::Greater => {
                    if only_b {
                        out.push((*y).clone());
                    }
                    j.next();
                }
                Ordering::Equal => {
                    if both {
                        out.push((*x).clone());
                    }
                    i.next();
                    j.next();
                }
            },
            (Some(_), None) => {
                if only_a {
                    out.extend(i.cloned());
                }
                break;
            }
            (None, Some(_)) => {
                if only_b {
                    out.extend(j.cloned());
                }
                break;
            }
            (None, None) => break,
        }
    }
    AtomSet(out)
}

impl FromIterator<Atom> for AtomSet {
    /// Collects atoms in any order; duplicates collapse.
    fn from_iter<I: IntoIterator<Item = Atom>>(iter: I) -> Self {
        let mut v: SmallVec<[Atom; 1]> = iter.into_iter().collect();
        if !v.windows(2).all(|w| w[0] < w[1]) {
            v.sort();
            v.dedup();
        }
        Self(v)
    }
}

impl<const N: usize> From<[Atom; N]> for AtomSet {
    fn from(atoms: [Atom; N]) -> Self {
        atoms.into_iter().collect()
    }
}

impl IntoIterator for AtomSet {
    type Item = Atom;
    type IntoIter = smallvec::IntoIter<[Atom; 1]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a AtomSet {
    type Item = &'a Atom;
    type IntoIter = std::slice::Iter<'a, Atom>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A map from atom to atom in increasing key order (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AtomMap(Vec<(Atom, Atom)>);

impl AtomMap {
    /// The empty map (no allocation).
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty map.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, k: &Atom) -> Result<usize, usize> {
        self.0.binary_search_by(|(x, _)| x.cmp(k))
    }

    /// The pairs in increasing key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Atom, &Atom)> + ExactSizeIterator {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The keys in increasing order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Atom> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    /// The values, in the order of their keys.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Atom> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }

    /// The pair with the smallest key.
    pub fn first_key_value(&self) -> Option<(&Atom, &Atom)> {
        self.0.first().map(|(k, v)| (k, v))
    }

    /// The value of key `k`.
    pub fn get(&self, k: &Atom) -> Option<&Atom> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    /// True when key `k` is present.
    pub fn contains_key(&self, k: &Atom) -> bool {
        self.find(k).is_ok()
    }

    /// Sets key `k` to `v`, returning the value it replaced.
    pub fn insert(&mut self, k: Atom, v: Atom) -> Option<Atom> {
        if self.0.last().is_none_or(|(l, _)| *l < k) {
            self.0.push((k, v));
            return None;
        }
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    /// Sets key `k` to `v` unless `k` is present; true when it inserted.
    pub fn insert_if_absent(&mut self, k: Atom, v: Atom) -> bool {
        match self.find(&k) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, (k, v));
                true
            }
        }
    }

    /// Removes key `k`, returning its value.
    pub fn remove(&mut self, k: &Atom) -> Option<Atom> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    /// Keeps the pairs for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Atom, &Atom) -> bool) {
        self.0.retain(|(k, v)| keep(k, v));
    }
}

impl FromIterator<(Atom, Atom)> for AtomMap {
    /// Collects pairs in any order; of pairs with the same key, the last wins
    /// (as collecting into a `BTreeMap` does).
    fn from_iter<I: IntoIterator<Item = (Atom, Atom)>>(iter: I) -> Self {
        let mut v: Vec<(Atom, Atom)> = iter.into_iter().collect();
        if !v.windows(2).all(|w| w[0].0 < w[1].0) {
            // Stable: equal keys keep their input order, then the last one stays.
            v.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out: Vec<(Atom, Atom)> = Vec::with_capacity(v.len());
            for (k, val) in v {
                match out.last_mut() {
                    Some(last) if last.0 == k => last.1 = val,
                    _ => out.push((k, val)),
                }
            }
            v = out;
        }
        Self(v)
    }
}

impl<const N: usize> From<[(Atom, Atom); N]> for AtomMap {
    fn from(pairs: [(Atom, Atom); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl IntoIterator for AtomMap {
    type Item = (Atom, Atom);
    type IntoIter = std::vec::IntoIter<(Atom, Atom)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a AtomMap {
    type Item = (&'a Atom, &'a Atom);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Atom, Atom)>,
        fn(&'a (Atom, Atom)) -> (&'a Atom, &'a Atom),
    >;
    fn into_iter(self) -> Self::IntoIter {
        fn pair(p: &(Atom, Atom)) -> (&Atom, &Atom) {
            (&p.0, &p.1)
        }
        self.0
            .iter()
            .map(pair as fn(&'a (Atom, Atom)) -> (&'a Atom, &'a Atom))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn arb_atom() -> impl Strategy<Value = Atom> {
        prop_oneof![
            (-4i64..4).prop_map(Atom::Integer),
            "[a-d]{0,2}".prop_map(Atom::String),
            any::<bool>().prop_map(Atom::Boolean),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0xa70),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Every operation gives what the same operation on a `BTreeSet` gives.
        #[test]
        fn set_is_a_btree_set(a in proptest::collection::vec(arb_atom(), 0..8),
                              b in proptest::collection::vec(arb_atom(), 0..8),
                              probe in arb_atom()) {
            let (sa, sb): (AtomSet, AtomSet) = (a.iter().cloned().collect(), b.iter().cloned().collect());
            let (ta, tb): (BTreeSet<Atom>, BTreeSet<Atom>) = (a.iter().cloned().collect(), b.iter().cloned().collect());
            let v = |s: &AtomSet| s.iter().cloned().collect::<Vec<_>>();
            let w = |t: &BTreeSet<Atom>| t.iter().cloned().collect::<Vec<_>>();
            prop_assert_eq!(v(&sa), w(&ta));
            prop_assert_eq!(v(&sa.union(&sb)), ta.union(&tb).cloned().collect::<Vec<_>>());
            prop_assert_eq!(v(&sa.difference(&sb)), ta.difference(&tb).cloned().collect::<Vec<_>>());
            prop_assert_eq!(v(&sa.symmetric_difference(&sb)), ta.symmetric_difference(&tb).cloned().collect::<Vec<_>>());
            prop_assert_eq!(sa.is_subset(&sb), ta.is_subset(&tb));
            prop_assert_eq!(sa.contains(&probe), ta.contains(&probe));
            prop_assert_eq!(sa.cmp(&sb), ta.cmp(&tb));
            let (mut s2, mut t2) = (sa.clone(), ta.clone());
            prop_assert_eq!(s2.insert(probe.clone()), t2.insert(probe.clone()));
            prop_assert_eq!(v(&s2), w(&t2));
            prop_assert_eq!(s2.remove(&probe), t2.remove(&probe));
            prop_assert_eq!(v(&s2), w(&t2));
            let mut s3 = AtomSet::new();
            let mut t3 = BTreeSet::new();
            for x in &a {
                prop_assert_eq!(s3.insert(x.clone()), t3.insert(x.clone()));
            }
            prop_assert_eq!(v(&s3), w(&t3));
        }

        /// Every operation gives what the same operation on a `BTreeMap` gives.
        #[test]
        fn map_is_a_btree_map(a in proptest::collection::vec((arb_atom(), arb_atom()), 0..8),
                              b in proptest::collection::vec((arb_atom(), arb_atom()), 0..8),
                              probe in arb_atom(), val in arb_atom()) {
            let (ma, mb): (AtomMap, AtomMap) = (a.iter().cloned().collect(), b.iter().cloned().collect());
            let (ta, tb): (BTreeMap<Atom, Atom>, BTreeMap<Atom, Atom>) = (a.iter().cloned().collect(), b.iter().cloned().collect());
            let v = |m: &AtomMap| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
            let w = |t: &BTreeMap<Atom, Atom>| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>();
            prop_assert_eq!(v(&ma), w(&ta));
            prop_assert_eq!(ma.cmp(&mb), ta.cmp(&tb));
            prop_assert_eq!(ma.get(&probe), ta.get(&probe));
            let (mut m2, mut t2) = (ma.clone(), ta.clone());
            prop_assert_eq!(m2.insert(probe.clone(), val.clone()), t2.insert(probe.clone(), val.clone()));
            prop_assert_eq!(v(&m2), w(&t2));
            prop_assert_eq!(m2.remove(&probe), t2.remove(&probe));
            prop_assert_eq!(v(&m2), w(&t2));
            let mut m3 = AtomMap::new();
            let mut t3 = BTreeMap::new();
            for (k, x) in &a {
                prop_assert_eq!(m3.insert(k.clone(), x.clone()), t3.insert(k.clone(), x.clone()));
                let absent = !t3.contains_key(&probe);
                prop_assert_eq!(m3.insert_if_absent(probe.clone(), x.clone()), absent);
                t3.entry(probe.clone()).or_insert_with(|| x.clone());
            }
            prop_assert_eq!(v(&m3), w(&t3));
        }
    }
}
