//! Specialised tables: a table whose rules all have one shape is looked up
//! with a hash probe per prefix length instead of the slow path's linear
//! walk over its rules.
//!
//! Shapes ([`Shape`]), decided per table by [`compile`]:
//! - **exact**: every rule has the same mask (`in_port,dl_dst` MAC tables,
//!   `tcp,nw_dst,tp_dst` VIP tables, ...): one hash table on the masked
//!   key, O(1).
//! - **prefix**: the masks are equal except on one field, where each is a
//!   prefix (`ip,dl_dst=R,nw_dst=P/len` routing tables), and the rules come
//!   longest prefix first: one hash table per prefix length, probed longest
//!   first, O(number of distinct lengths).
//!
//! Either shape may end with rules that match everything (a default route,
//! `priority=0 actions=drop`): the first of them answers every miss. Any
//! other table (mixed masks, a non-prefix mask, a shorter prefix ahead of a
//! longer one, fewer than [`MIN_RULES`] rules) keeps the generic walk.
//!
//! Exactness: the answer is the rule the generic walk finds first (rules
//! in list order; a rule shadowed by an earlier one with the same masked
//! key, which within one mask means the same match and a higher priority,
//! is kept aside, not in the hash table), and the megaflow mask a lookup
//! adds is the one the walk adds: every mask in the table is within the
//! first rule's (`C | prefix(longest)`), which is what the lookup consulted
//! and the union of the masks the walk examines, hit or miss. So the
//! installed megaflows, the EMC and the cache-coherence proptests are
//! unchanged (proptests below: specialised == generic, translation and
//! mask, on random tables of each shape and on near-misses, which must
//! fall back; an index derived from the previous one == one compiled
//! afresh, over random sequences of changes).
//!
//! Memory: each prefix length's hash table holds one `Arc<Rule>` per
//! distinct match (8 bytes and a 16-bit tag per slot, at most 7/8 of the
//! slots used: [`super::rule_index`]), split into copy-on-write shards of
//! about [`SHARD_RULES`] rules; the keys are the rules' own masked keys,
//! compared in place.
//!
//! Bulk lookup: [`SpecialTable::probe`], [`SpecialTable::prefetch_rule`],
//! [`SpecialTable::prefetch_rule_data`], [`SpecialTable::lookup_probe`],
//! each run over a whole burst before the next (the direct path), let the
//! burst's cache misses in the first group overlap; the answer is
//! [`SpecialTable::lookup`]'s.
//!
//! Users: the slow path (one lookup per table it walks) and the direct
//! path (`classifier::direct`), which looks packets up here per packet,
//! skipping the caches, when table 0 has an index.
//!
//! Building: [`compile`] is a function of one table, O(rules of that
//! table). The index lives in the table's `derived` slot
//! (`flow::program::Table`), which programs share while a table's rules do
//! not change and which any change to them empties. When the table carries
//! a delta from an earlier version whose index is built
//! (`flow::program::RuleDelta`), the new index is that one with the changed
//! rules removed and inserted ([`SpecialTable::updated`]): it shares every
//! shard the change does not touch, so a change of a few rules costs a few
//! shard copies, not a rebuild; a change the update cannot follow (a new
//! mask or prefix length, an order that needs the rules' places to decide)
//! falls back to [`compile`]. [`of`] fills a slot on first use (the first
//! slow-path lookup in that table); [`prepare`] fills every empty slot of a
//! program right after it is built, so only changed tables are indexed.
//!
//! Thread-safety: an index is immutable once built; a slot is filled once
//! (`OnceLock`), concurrent first users wait for the one that builds it.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::flow::key::{Field, FlowKey};
use crate::flow::program::{FlowProgram, Rule, RuleChange, Table};

use super::prefetch;
use super::rule_index::RuleIndex;

/// Tables with fewer rules (before the match-everything tail) keep the
/// generic walk, which is as fast there.
pub const MIN_RULES: usize = 4;

/// Rules per copy-on-write shard of a prefix length's hash table, about:
/// what one changed rule costs to copy.
pub const SHARD_RULES: usize = 512;

/// Most shards of one prefix length.
const MAX_SHARDS: usize = 256;

/// The shape of a specialised table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// All rules have one mask.
    Exact,
    /// The masks differ only in the prefix length of `field`.
    Prefix {
        /// The longest-prefix-match field.
        field: Field,
        /// Number of distinct prefix lengths (hash tables probed).
        lengths: usize,
    },
}

/// The rules of one mask, hashed on their masked keys.
#[derive(Debug, Clone)]
struct Group {
    mask: FlowKey,
    /// The mask's non-zero words: hashing and comparing touch only these.
    words: Arc<[u8]>,
    /// For each distinct match, the rule of highest priority with it; the
    /// shard is chosen by bits of the hash the hash tables do not use.
    shards: Vec<Arc<RuleIndex>>,
    /// The other rules of this mask (each hidden by one with the same
    /// match and a higher priority).
    shadowed: Arc<Vec<Arc<Rule>>>,
    /// How many rules of this mask (indexed and shadowed) have each
    /// priority.
    prios: Arc<BTreeMap<u16, u32>>,
}

impl Group {
    /// An empty group for `n` rules of `mask`.
    fn new(mask: &FlowKey, n: usize) -> Group {
        let shards = (n / SHARD_RULES).next_power_of_two().clamp(1, MAX_SHARDS);
        let per = n.div_ceil(shards);
        Group {
            mask: *mask,
            words: mask.nonzero_words().into(),
            shards: (0..shards)
                .map(|_| Arc::new(RuleIndex::with_capacity(per + per / 8)))
                .collect(),
            shadowed: Arc::default(),
            prios: Arc::default(),
        }
    }

    #[inline]
    fn hash(&self, key: &FlowKey) -> u64 {
        key.hash_masked_words(&self.mask, &self.words)
    }

    #[inline]
    fn shard(&self, h: u64) -> usize {
        (h >> 40) as usize & (self.shards.len() - 1)
    }

    /// The indexed rule whose match `key` satisfies.
    #[inline]
    fn find(&self, key: &FlowKey) -> Option<&Arc<Rule>> {
        let h = self.hash(key);
        // Every rule here has this group's mask: its own match is the
        // compare (present words only, no mask lookups).
        self.shards[self.shard(h)].find(h, |r| r.spec.m.matches(key))
    }

    fn count(&mut self, priority: u16, add: bool) {
        let prios = Arc::make_mut(&mut self.prios);
        let n = prios.entry(priority).or_insert(0);
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                prios.remove(&priority);
            }
        }
    }

    /// Adds `rule` (of this group's mask); false when a rule with the same
    /// match and priority is indexed (the table would not allow it).
    fn insert(&mut self, rule: Arc<Rule>) -> bool {
        let (mask, words) = (self.mask, self.words.clone());
        let key = rule.spec.m.key();
        let h = self.hash(&key);
        let s = self.shard(h);
        let shard = Arc::make_mut(&mut self.shards[s]);
        let priority = rule.spec.priority;
        let hidden = match shard.find_mut(h, |r| r.spec.m.key_matches_words(&key, &mask, &words)) {
            None => {
                shard.insert_unique(h, rule, |r| r.spec.m.key().hash_masked_words(&mask, &words));
                None
            }
            Some(w) if w.spec.priority == priority => return false,
            Some(w) if w.spec.priority < priority => Some(std::mem::replace(w, rule)),
            Some(_) => Some(rule),
        };
        if let Some(r) = hidden {
            Arc::make_mut(&mut self.shadowed).push(r);
        }
        self.count(priority, true);
        true
    }

    /// Removes `rule` (the very rule, indexed or shadowed); false when it
    /// is not there.
    fn remove(&mut self, rule: &Arc<Rule>) -> bool {
        let (mask, words) = (self.mask, self.words.clone());
        let key = rule.spec.m.key();
        let h = self.hash(&key);
        let s = self.shard(h);
        let indexed = self.shards[s].find(h, |r| Arc::ptr_eq(r, rule)).is_some();
        if indexed {
            let shard = Arc::make_mut(&mut self.shards[s]);
            shard.remove(
                h,
                |r| Arc::ptr_eq(r, rule),
                |r| r.spec.m.key().hash_masked_words(&mask, &words),
            );
            // The best rule it hid, if any, takes its place.
            let same = |r: &Arc<Rule>| r.spec.m.key_matches_words(&key, &mask, &words);
            let best = self
                .shadowed
                .iter()
                .enumerate()
                .filter(|(_, r)| same(r))
                .max_by_key(|(_, r)| r.spec.priority)
                .map(|(i, _)| i);
            if let Some(i) = best {
                let r = Arc::make_mut(&mut self.shadowed).swap_remove(i);
                Arc::make_mut(&mut self.shards[s])
                    .insert_unique(h, r, |r| r.spec.m.key().hash_masked_words(&mask, &words));
            }
        } else {
            let Some(i) = self.shadowed.iter().position(|r| Arc::ptr_eq(r, rule)) else {
                return false;
            };
            Arc::make_mut(&mut self.shadowed).swap_remove(i);
        }
        self.count(rule.spec.priority, false);
        true
    }

    fn len(&self) -> usize {
        self.prios.values().map(|&n| n as usize).sum()
    }
}

/// Match-everything rules by their place in the table (descending
/// priority, then [`RuleChange::seq`]).
type Tail = BTreeMap<(Reverse<u16>, u64), Arc<Rule>>;

/// A compiled table (see the module documentation).
#[derive(Debug, Clone)]
pub struct SpecialTable {
    shape: Shape,
    /// Longest prefix first.
    groups: Vec<Group>,
    /// The mask every lookup adds to the megaflow: the first group's.
    mask: FlowKey,
    /// The non-zero words of `mask`.
    mask_words: Arc<[u8]>,
    /// The match-everything rules after the shaped ones, in table order
    /// (descending priority, then place).
    tail: Arc<Tail>,
    /// Rules in the table it was built from.
    n_rules: usize,
}

impl SpecialTable {
    /// The table's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The megaflow mask a lookup in this table consults (whatever its
    /// result).
    pub fn mask(&self) -> &FlowKey {
        &self.mask
    }

    /// The indices of the non-zero words of [`SpecialTable::mask`]: two
    /// keys equal on those words get the same [`SpecialTable::lookup`]
    /// answer (every group's mask is within it).
    pub fn mask_words(&self) -> &[u8] {
        &self.mask_words
    }

    /// True when a table of `n_rules` rules can be the one this index was
    /// built from (a cheap guard; the slot discipline is what guarantees
    /// it).
    pub fn fits(&self, n_rules: usize) -> bool {
        n_rules == self.n_rules
    }

    /// The rule the generic walk would match first for `key` in the table
    /// this index was built from, if any.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<&Arc<Rule>> {
        for g in &self.groups {
            if let Some(r) = g.find(key) {
                return Some(r);
            }
        }
        self.default()
    }

    /// Starts a lookup of `key` in a burst (the direct path's bulk
    /// lookup): hashes it for the longest prefix's group (the only group
    /// of an exact table) and prefetches its slots. Then
    /// [`SpecialTable::prefetch_rule`], [`SpecialTable::prefetch_rule_data`]
    /// and [`SpecialTable::lookup_probe`] on the returned probe, each over
    /// the whole burst before the next, so that the burst's cache misses
    /// overlap.
    #[inline]
    pub fn probe(&self, key: &FlowKey) -> Probe {
        match self.groups.first() {
            Some(g) => {
                let h = g.hash(key);
                g.shards[g.shard(h)].prefetch_home(h);
                Probe(h)
            }
            None => Probe(0),
        }
    }

    /// The rule the first group's slots point at for `p` (not checked).
    #[inline]
    fn candidate(&self, p: Probe) -> Option<&Arc<Rule>> {
        let g = self.groups.first()?;
        g.shards[g.shard(p.0)].candidate(p.0)
    }

    /// Prefetches the rule `p`'s lookup will most likely compare.
    #[inline]
    pub fn prefetch_rule(&self, p: Probe) {
        if let Some(r) = self.candidate(p) {
            let at = Arc::as_ptr(r).cast::<u8>();
            // The rule spans two or three cache lines.
            for off in [0, 64, std::mem::size_of::<Rule>() - 1] {
                prefetch(at.wrapping_add(off));
            }
        }
    }

    /// Prefetches what that rule's compare and execution read: its match
    /// words, its actions, its counters.
    #[inline]
    pub fn prefetch_rule_data(&self, p: Probe) {
        if let Some(r) = self.candidate(p) {
            prefetch(r.spec.m.words_ptr());
            let a = r.spec.actions.as_ptr().cast::<u8>();
            let n = std::mem::size_of_val(r.spec.actions.as_slice()).min(192);
            for off in (0..n).step_by(64) {
                prefetch(a.wrapping_add(off));
            }
            prefetch(Arc::as_ptr(&r.stats));
        }
    }

    /// [`SpecialTable::lookup`] of `key`, whose [`SpecialTable::probe`] is
    /// `p` (the same answer; the first group's hash is not computed again).
    #[inline]
    pub fn lookup_probe(&self, key: &FlowKey, p: Probe) -> Option<&Arc<Rule>> {
        let mut groups = self.groups.iter();
        if let Some(g) = groups.next() {
            let hit = g.shards[g.shard(p.0)].find(p.0, |r| r.spec.m.matches(key));
            if hit.is_some() {
                return hit;
            }
        }
        for g in groups {
            if let Some(r) = g.find(key) {
                return Some(r);
            }
        }
        self.default()
    }

    /// The first match-everything rule after the shaped ones.
    fn default(&self) -> Option<&Arc<Rule>> {
        self.tail.values().next()
    }

    /// This index with `changes` applied (a [`flow::program::RuleDelta`]'s,
    /// from the rules this index was built from to a table of `n_rules`
    /// rules), or `None` when the result needs a [`compile`]: a rule with
    /// a mask no group has, a group emptied, fewer than [`MIN_RULES`]
    /// shaped rules left, or groups (or the match-everything tail) whose
    /// priorities no longer separate them strictly. When it is `Some`, it
    /// equals what [`compile`] builds from the new rules.
    ///
    /// [`flow::program::RuleDelta`]: crate::flow::program::RuleDelta
    pub fn updated(&self, changes: &[RuleChange], n_rules: usize) -> Option<SpecialTable> {
        let mut s = self.clone();
        for c in changes {
            let mask = c.rule.spec.m.mask();
            if mask == FlowKey::ZERO {
                let tail = Arc::make_mut(&mut s.tail);
                let k = (Reverse(c.rule.spec.priority), c.seq);
                if c.added {
                    tail.insert(k, c.rule.clone());
                } else if !tail.remove(&k).is_some_and(|r| Arc::ptr_eq(&r, &c.rule)) {
                    return None;
                }
                continue;
            }
            let g = s.groups.iter_mut().find(|g| g.mask == mask)?;
            let ok = if c.added {
                g.insert(c.rule.clone())
            } else {
                g.remove(&c.rule)
            };
            if !ok {
                return None;
            }
        }
        s.n_rules = n_rules;
        // Every group non-empty and strictly above the next by priority,
        // the last strictly above the tail: the table order is then the
        // groups' order, longest prefix first, then the tail.
        let mut above: Option<u16> = None;
        let mut body = 0;
        for g in &s.groups {
            let (&lo, _) = g.prios.first_key_value()?;
            let (&hi, _) = g.prios.last_key_value()?;
            if above.is_some_and(|a| hi >= a) {
                return None;
            }
            above = Some(lo);
            body += g.len();
        }
        if let (Some(a), Some((k, _))) = (above, s.tail.first_key_value()) {
            if k.0 .0 >= a {
                return None;
            }
        }
        if body < MIN_RULES || body + s.tail.len() != n_rules {
            return None;
        }
        Some(s)
    }
}

/// A started lookup ([`SpecialTable::probe`]): the key's hash in the
/// index's first group.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probe(u64);

/// The prefix length of `mask` as a mask of `field`, or `None` when it is
/// not a prefix (contiguous high bits of the field).
fn prefix_len(field: Field, mask: u128) -> Option<u32> {
    let max = field.max_value();
    let host = !mask & max;
    // `host` must be 2^k - 1 (wrapping: a 128-bit field with a zero mask).
    (host & host.wrapping_add(1) == 0).then(|| field.bits() - host.count_ones())
}

/// The field in which `masks` differ, each a prefix of it (`None` for the
/// field when they are all equal); `Err` when they differ otherwise.
fn varying_field(mut masks: impl Iterator<Item = FlowKey>) -> Result<Option<Field>, ()> {
    let Some(first) = masks.next() else {
        return Ok(None);
    };
    // The bits where some mask differs from the first.
    let mut diff = FlowKey::ZERO;
    // The masks, each run of equal ones once.
    let mut all = vec![first];
    for m in masks {
        for ((d, a), b) in diff.w.iter_mut().zip(&m.w).zip(&first.w) {
            *d |= a ^ b;
        }
        if all.last() != Some(&m) {
            all.push(m);
        }
    }
    if diff == FlowKey::ZERO {
        return Ok(None);
    }
    let field = Field::ALL
        .iter()
        .copied()
        .find(|&f| diff.is_subset_of(&FlowKey::field_mask(f)))
        .ok_or(())?;
    if all
        .iter()
        .all(|m| prefix_len(field, m.get(field)).is_some())
    {
        Ok(Some(field))
    } else {
        Err(())
    }
}

/// Compiles `table` if it has one of the shapes, else `None`. Cost: linear
/// in the table's rules, except for tables whose distinct masks already
/// rule a shape out (a look at the masks alone).
pub fn compile(table: &Table) -> Option<SpecialTable> {
    let nonzero = table
        .rules
        .masks()
        .filter(|m| **m != FlowKey::ZERO)
        .copied();
    varying_field(nonzero).ok()?;
    let rules: Vec<(u64, &Arc<Rule>)> = table.rules.iter_seq().collect();
    compile_rules(&rules, MIN_RULES)
}

/// [`compile`] over `rules` (with their places, in table order) with a
/// minimum of `min_rules` shaped rules.
fn compile_rules(rules: &[(u64, &Arc<Rule>)], min_rules: usize) -> Option<SpecialTable> {
    let mut end = rules.len();
    while end > 0 && rules[end - 1].1.spec.m.is_any() {
        end -= 1;
    }
    let body = &rules[..end];
    if body.is_empty() || body.len() < min_rules {
        return None;
    }
    let first = body[0].1.spec.m.mask();
    let shape = match varying_field(body.iter().map(|r| r.1.spec.m.mask())).ok()? {
        None => Shape::Exact,
        Some(field) => {
            // Each prefix no longer than the one before.
            let mut last = u32::MAX;
            let mut lengths = 0;
            for (_, r) in body {
                let len = prefix_len(field, r.spec.m.mask().get(field))?;
                if len > last {
                    return None;
                }
                if len < last {
                    lengths += 1;
                }
                last = len;
            }
            Shape::Prefix { field, lengths }
        }
    };
    let mut groups: Vec<Group> = Vec::new();
    for (i, (_, r)) in body.iter().enumerate() {
        let mask = r.spec.m.mask();
        if groups.last().is_none_or(|g| g.mask != mask) {
            // Sized for the whole run of this mask: no rehash, which would
            // re-read every rule's key.
            let run = body[i..]
                .iter()
                .take_while(|r| r.1.spec.m.mask_is(&mask))
                .count();
            groups.push(Group::new(&mask, run));
        }
        // Rules come in table order: a rule whose match is indexed already
        // has a lower priority and is shadowed by it.
        if !groups.last_mut()?.insert((*r).clone()) {
            return None;
        }
    }
    let tail = rules[end..]
        .iter()
        .map(|(seq, r)| ((Reverse(r.spec.priority), *seq), (*r).clone()))
        .collect();
    Some(SpecialTable {
        shape,
        groups,
        mask: first,
        mask_words: first.nonzero_words().into(),
        tail: Arc::new(tail),
        n_rules: rules.len(),
    })
}

/// The index of `table`: derived from its delta's base when it has one
/// that [`SpecialTable::updated`] can follow, else compiled.
fn build(table: &Table) -> Option<SpecialTable> {
    if let Some(d) = table.delta() {
        let base = d
            .base
            .get()
            .and_then(|b| b.downcast_ref::<Option<SpecialTable>>());
        if let Some(Some(base)) = base {
            if let Some(s) = base.updated(&d.changes, table.rules.len()) {
                return Some(s);
            }
        }
    }
    compile(table)
}

/// The compiled form of `table`, building it on first use; `None` when
/// the table keeps the generic walk.
#[inline]
pub fn of(table: &Table) -> Option<&SpecialTable> {
    table
        .derived
        .get_or_init(|| Box::new(build(table)))
        .downcast_ref::<Option<SpecialTable>>()?
        .as_ref()
}

/// Builds the index of every table of `prog` whose slot is empty (the
/// tables whose rules changed since the program it was built from;
/// unchanged tables share their filled slot). Returns how many slots were
/// filled (tables that share one, like the empty ones, count once). Call
/// it on the control side after building a program, so that no PMD pays
/// for a build.
pub fn prepare(prog: &FlowProgram) -> usize {
    let mut n = 0;
    for t in &prog.tables {
        if t.derived.get().is_none() {
            n += 1;
            let _ = of(t);
        }
    }
    n
}

/// One line per specialised table of `prog`: `table N: SHAPE, R rules`.
pub fn describe(prog: &FlowProgram) -> String {
    let mut out = String::new();
    for (i, t) in prog.tables.iter().enumerate() {
        if let Some(s) = of(t) {
            let shape = match s.shape {
                Shape::Exact => "exact".to_string(),
                Shape::Prefix { field, lengths } => {
                    format!("longest prefix of {field} ({lengths} lengths)")
                }
            };
            out.push_str(&format!("table {i}: {shape}, {} rules\n", s.n_rules));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::slowpath::{translate, translate_generic, Translation};
    use crate::flow::action::Action;
    use crate::flow::key::{extract, testpkt::tcp4};
    use crate::flow::program::{FlowFilter, FlowMod};
    use crate::flow::text::parse_flow;
    use crate::packet::PortNo;
    use proptest::prelude::*;

    fn program(flows: &[String]) -> FlowProgram {
        let mods: Vec<FlowMod> = flows
            .iter()
            .map(|f| FlowMod::Add(parse_flow(f).unwrap_or_else(|e| panic!("{f}: {e}"))))
            .collect();
        FlowProgram::default()
            .apply(&mods, 0, |_| String::new())
            .expect("bundle")
            .0
    }

    fn same(a: &Translation, b: &Translation) -> bool {
        a.mask == b.mask
            && a.xlate.actions == b.xlate.actions
            && a.xlate.rules.len() == b.xlate.rules.len()
            && a.xlate
                .rules
                .iter()
                .zip(b.xlate.rules.iter())
                .all(|(x, y)| Arc::ptr_eq(x, y))
    }

    fn ip(a: u32) -> String {
        std::net::Ipv4Addr::from(a).to_string()
    }

    #[test]
    fn shapes_are_recognised() {
        let routes: Vec<String> = [24u32, 24, 16, 8]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "priority={l},ip,nw_dst=10.{i}.0.0/{l} actions=output:{}",
                    i + 1
                )
            })
            .chain(["priority=0 actions=drop".to_string()])
            .collect();
        let p = program(&routes);
        let s = of(&p.tables[0]).expect("prefix table");
        assert_eq!(
            s.shape(),
            Shape::Prefix {
                field: Field::NwDst,
                lengths: 3
            }
        );
        assert!(Arc::ptr_eq(
            s.default().expect("default"),
            &p.tables[0].rules[4]
        ));
        assert_eq!(s.mask().get(Field::NwDst), 0xffff_ff00);
        let k = extract(&tcp4([1, 1, 1, 1], [10, 2, 7, 7], 1, 2, 64), PortNo(1));
        assert!(Arc::ptr_eq(
            s.lookup(&k).expect("hit"),
            &p.tables[0].rules[2]
        ));
        let k = extract(&tcp4([1, 1, 1, 1], [11, 2, 7, 7], 1, 2, 64), PortNo(1));
        assert!(
            Arc::ptr_eq(s.lookup(&k).expect("default"), &p.tables[0].rules[4]),
            "default"
        );
        assert!(describe(&p).contains("table 0: longest prefix of nw_dst (3 lengths), 5 rules"));

        let macs: Vec<String> = (0..6)
            .map(|i| format!("in_port=1,dl_dst=02:00:00:00:00:{i:02x} actions=output:2"))
            .collect();
        let p = program(&macs);
        assert_eq!(of(&p.tables[0]).map(|s| s.shape()), Some(Shape::Exact));

        // A /16 ahead of a /24 (by priority): not longest-prefix order.
        let mut bad = routes.clone();
        bad[2] = "priority=30,ip,nw_dst=10.2.0.0/16 actions=output:3".into();
        assert!(of(&program(&bad).tables[0]).is_none());
        // Too few rules.
        assert!(of(&program(&macs[..3]).tables[0]).is_none());
    }

    #[test]
    fn slots_follow_rule_changes() {
        let t = crate::flow::tables::FlowTables::new();
        let macs: String = (0..6)
            .map(|i| format!("table=3,in_port=1,dl_dst=02:00:00:00:00:{i:02x} actions=output:2\n"))
            .collect();
        t.add_flows(&macs, 0).expect("flows");
        let p1 = t.program();
        // Table 3, and the one empty table the other 254 share (one slot).
        assert_eq!(prepare(&p1), 2, "every distinct table compiled once");
        assert_eq!(prepare(&p1), 0);
        t.add_flows("table=5,priority=1,ip actions=drop", 0)
            .expect("flow");
        let p2 = t.program();
        assert_eq!(prepare(&p2), 1, "only the changed table");
        assert!(Arc::ptr_eq(&p1.tables[3].derived, &p2.tables[3].derived));
        t.del_flows("table=3,dl_dst=02:00:00:00:00:01", false, 0)
            .expect("delete");
        let p3 = t.program();
        assert_eq!(p3.tables[3].rules.len(), 5);
        assert!(
            p3.tables[3].derived.get().is_none(),
            "a delete empties the slot"
        );
        let k = extract(&tcp4([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 64), PortNo(1));
        let mut k5 = k;
        k5.set(Field::DlDst, 0x0200_0000_0005);
        k5.set(Field::RecircId, 4);
        assert!(same(
            &translate(&p3, &k5, None),
            &translate_generic(&p3, &k5)
        ));
    }

    /// The pktgen `l3/10000` scenario (its program and frames, rebuilt
    /// here) through a flow pipeline: the first pass is one upcall per
    /// flow, through the specialised routing table; the megaflows share one
    /// mask (`nw_dst/24`, not anything that makes each packet unique), so
    /// the second pass has no upcall at all.
    #[test]
    fn pktgen_l3_repeats_without_upcalls() {
        use crate::packet::{Burst, HeapBuf, Output};
        use crate::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
        use crate::pipeline::Pipeline;
        const ROUTES: u32 = 10_000;
        let route = |i: u32| [10, (1 + i / 256) as u8, (i % 256) as u8, 0];
        let flows: String = (0..ROUTES)
            .map(|i| {
                format!(
                    "priority=24,ip,dl_dst=02:00:00:00:00:fe,nw_dst={}/24 actions=mod_dl_src:02:00:00:00:00:fe,mod_dl_dst:02:00:00:00:01:01,dec_ttl,output:2\n",
                    std::net::Ipv4Addr::from(route(i))
                )
            })
            .collect();
        let t = crate::flow::tables::FlowTables::new();
        t.add_flows(&flows, 0).expect("routes");
        assert_eq!(
            prepare(&t.program()),
            2,
            "table 0 and the shared empty table"
        );
        // One prefix length: the same mask everywhere.
        assert_eq!(
            of(&t.program().tables[0]).map(|s| s.shape()),
            Some(Shape::Exact)
        );
        let frames: Vec<Vec<u8>> = (0..ROUTES)
            .map(|j| {
                let mut dst = route(j);
                dst[3] = 1;
                let mut f =
                    crate::flow::key::testpkt::udp4([10, 244, 0, 1], dst, 1024 + j as u16, 5001);
                f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe]);
                f[6..12].copy_from_slice(&[2, 0, 0, 0, 1, 1]);
                f
            })
            .collect();
        let config = FlowPipelineConfig {
            ports: (1..=4).map(PortNo).collect(),
            ..FlowPipelineConfig::default()
        };
        // The direct path (the default): every packet, from the first,
        // is looked up in the index; no cache is touched.
        let mut p = FlowPipeline::new(t.clone(), config.clone());
        let mut out: Output<HeapBuf> = Output::new(8);
        // One burst in from port 1; how many frames left on port 2 (the
        // only port a route sends to).
        let route = |p: &mut FlowPipeline, out: &mut Output<HeapBuf>, chunk: &[Vec<u8>]| {
            let mut b = Burst::new(PortNo(1));
            b.pkts.extend(chunk.iter().map(|f| HeapBuf::from_frame(f)));
            p.process(1, &mut b, out);
            let mut sent = 0;
            out.flush(|port, q| {
                assert_eq!(port, PortNo(2));
                sent += q.len();
                q.clear();
            });
            sent
        };
        let stats = p.stats();
        let sent: usize = frames.chunks(32).map(|c| route(&mut p, &mut out, c)).sum();
        assert_eq!(sent, frames.len());
        assert_eq!(
            (stats.direct.get(), stats.upcalls.get(), p.megaflow_count()),
            (u64::from(ROUTES), 0, 0)
        );
        // The cascade.
        let mut p = FlowPipeline::new(
            t,
            FlowPipelineConfig {
                direct_path: false,
                ..config
            },
        );
        let stats = p.stats();
        for pass in 0..3 {
            for chunk in frames.chunks(32) {
                let sent = route(&mut p, &mut out, chunk);
                assert_eq!(sent, chunk.len(), "pass {pass}: every packet routed");
            }
            assert_eq!(stats.upcalls.get(), u64::from(ROUTES), "pass {pass}");
        }
        assert_eq!(
            (p.megaflow_count(), p.megaflow_masks()),
            (ROUTES as usize, 1)
        );
        assert_eq!(
            stats.megaflow.tier.hit.get() + stats.emc.hit.get(),
            2 * u64::from(ROUTES),
            "every later packet is a cache hit"
        );
    }

    /// A random table of one shape, as flow text: `(flows, interesting
    /// values of the varying field)`.
    #[derive(Debug, Clone)]
    enum Kind {
        /// `in_port,dl_dst` MAC table.
        Mac,
        /// `ip,dl_dst=R,nw_dst=P/len` routes, priority = length.
        Lpm,
        /// `proto,nw_dst=VIP,tp_dst=port` Services.
        Vip,
    }

    fn flows_of(
        kind: &Kind,
        entries: &[(u32, u8, u16, u16)],
        default: bool,
        spoil: Option<usize>,
    ) -> Vec<String> {
        let mut out: Vec<String> = entries
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, port, prio))| {
                // Two more fields (one would be a legal prefix shape when
                // the rule comes first).
                let extra = if spoil == Some(i) { ",tp_src=7,nw_src=10.0.0.1" } else { "" };
                match kind {
                    Kind::Mac => format!(
                        "priority={prio},in_port={},dl_dst=02:00:00:00:{:02x}:{:02x}{} actions=output:{}",
                        port % 3,
                        addr >> 8 & 3,
                        addr & 7,
                        if spoil == Some(i) { ",dl_type=0x0800,dl_src=02:00:00:00:00:01" } else { "" },
                        i + 1
                    ),
                    Kind::Lpm => {
                        let len = u32::from(len % 33);
                        // Above every length: ahead of a longer prefix.
                        let prio = if spoil == Some(i) { 33 + u32::from(prio % 3) } else { len };
                        let net = if len == 0 { 0 } else { addr & (u32::MAX << (32 - len)) };
                        format!(
                            "priority={prio},ip,dl_dst=02:00:00:00:00:{:02x},nw_dst={}/{len} actions=dec_ttl,output:{}",
                            port % 2,
                            ip(net),
                            i + 1
                        )
                    }
                    Kind::Vip => format!(
                        "priority={prio},{},nw_dst={},tp_dst={}{extra} actions=mod_nw_dst:10.9.9.{},output:{}",
                        if port % 2 == 0 { "tcp" } else { "udp" },
                        ip(0x0a60_0000 | (addr & 7)),
                        80 + port % 3,
                        i % 250,
                        i + 1
                    ),
                }
            })
            .collect();
        if default {
            out.push("priority=0 actions=output:99".to_string());
        }
        out
    }

    /// A packet near the table's values (so that most probes can hit).
    fn packet(addr: u32, port: u16, mac: u8, in_port: u16, tcp: bool) -> FlowKey {
        let dst = addr;
        let mut f = if tcp {
            tcp4([10, 0, 0, 1], dst.to_be_bytes(), 1000, 80 + port % 3, 64)
        } else {
            crate::flow::key::testpkt::udp4([10, 0, 0, 1], dst.to_be_bytes(), 1000, 80 + port % 3)
        };
        // The MAC table's addresses, or the router MACs of the routes.
        let dl_dst = if mac & 0x80 == 0 {
            [2, 0, 0, 0, (addr >> 8 & 3) as u8, mac & 7]
        } else {
            [2, 0, 0, 0, 0, mac & 1]
        };
        f[0..6].copy_from_slice(&dl_dst);
        extract(&f, PortNo(in_port % 3))
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Mac), Just(Kind::Lpm), Just(Kind::Vip)]
    }

    /// Addresses clustered so that prefixes overlap.
    fn addr() -> impl Strategy<Value = u32> {
        prop_oneof![
            (0u32..0x400).prop_map(|a| 0x0a00_0000 | a),
            (0u32..8).prop_map(|a| 0x0a60_0000 | a),
            any::<u32>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// On tables of each shape (entries sorted the way a controller
        /// writes them: longest prefix first), the specialised slow path
        /// gives the generic walk's translation, mask included, and the
        /// table is specialised.
        #[test]
        fn specialised_equals_generic(
            kind in kind(),
            mut entries in proptest::collection::vec((addr(), any::<u8>(), any::<u16>(), 1u16..4), 1..40),
            default in any::<bool>(),
            pkts in proptest::collection::vec((addr(), any::<u16>(), any::<u8>(), any::<u16>(), any::<bool>()), 1..40),
        ) {
            if matches!(kind, Kind::Lpm) {
                entries.sort_by_key(|e| std::cmp::Reverse(e.1 % 33));
            } else {
                entries.iter_mut().for_each(|e| e.3 = 1);
            }
            let flows = flows_of(&kind, &entries, default, None);
            let prog = program(&flows);
            let t = &prog.tables[0];
            let body = t.rules.len() - usize::from(default);
            let s = compile_rules(&t.rules.iter_seq().collect::<Vec<_>>(), 1);
            prop_assert!(s.is_some(), "{:?} not specialised: {:?}", kind, flows);
            prop_assert_eq!(of(t).is_some(), body >= MIN_RULES);
            let s = s.expect("checked");
            for (a, port, mac, in_port, tcp) in pkts {
                let k = packet(a, port, mac, in_port, tcp);
                let generic = translate_generic(&prog, &k);
                let spec = translate(&prog, &k, None);
                prop_assert!(same(&spec, &generic), "{:?}\n{:?}\nvs\n{:?}", k, spec, generic);
                // The index alone, on every table size.
                let want = t.rules.iter().find(|r| r.spec.m.matches(&k));
                let agree = match (s.lookup(&k), want) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                prop_assert!(agree, "index and walk disagree on {:?}", k);
                // The bulk lookup's answer is the lookup's.
                let p = s.probe(&k);
                s.prefetch_rule(p);
                s.prefetch_rule_data(p);
                let bulk = s.lookup_probe(&k, p).map(Arc::as_ptr);
                prop_assert_eq!(bulk, s.lookup(&k).map(Arc::as_ptr));
            }
        }

        /// Tables that are almost one shape (one rule with an extra field,
        /// a prefix out of order, mixed kinds) are not specialised and the
        /// slow path still equals the generic walk.
        #[test]
        fn near_shapes_fall_back(
            kind in kind(),
            mut entries in proptest::collection::vec((addr(), any::<u8>(), any::<u16>(), 1u16..4), 4..30),
            spoil in any::<proptest::sample::Index>(),
            default in any::<bool>(),
            mix in any::<bool>(),
            pkts in proptest::collection::vec((addr(), any::<u16>(), any::<u8>(), any::<u16>(), any::<bool>()), 1..30),
        ) {
            if matches!(kind, Kind::Lpm) {
                // Distinct lengths, longest first: the spoilt rule's higher
                // priority moves it ahead of a longer prefix.
                entries.sort_by_key(|e| std::cmp::Reverse(e.1 % 33));
                entries.dedup_by_key(|e| e.1 % 33);
                prop_assume!(entries.len() >= 2);
            } else {
                entries.iter_mut().for_each(|e| e.3 = 1);
            }
            let spoil = if matches!(kind, Kind::Lpm) {
                // Any rule but the first can jump ahead of a longer one.
                1 + spoil.index(entries.len() - 1)
            } else {
                spoil.index(entries.len())
            };
            let mut flows = flows_of(&kind, &entries, default, Some(spoil));
            if mix {
                let other = match kind { Kind::Mac => Kind::Vip, _ => Kind::Mac };
                flows = flows_of(&kind, &entries, default, None);
                flows.extend(flows_of(&other, &entries[..1], false, None)
                    .into_iter()
                    .map(|f| f.replacen("priority=", "priority=1", 1)));
            }
            let prog = program(&flows);
            let t = &prog.tables[0];
            prop_assert!(compile_rules(&t.rules.iter_seq().collect::<Vec<_>>(), 1).is_none(), "specialised: {:?}", flows);
            prop_assert!(of(t).is_none());
            for (a, port, mac, in_port, tcp) in pkts {
                let k = packet(a, port, mac, in_port, tcp);
                prop_assert!(same(&translate(&prog, &k, None), &translate_generic(&prog, &k)));
            }
        }

        /// Random sequences of bundles (adds, strict and loose deletes,
        /// modifies, a match-everything rule added and removed, a rule of
        /// another shape added and removed) on a table of each shape: the
        /// index each new program gets from the previous one's (or from
        /// an older one's, when programs in between were never indexed)
        /// equals a fresh compile of its rules, and the slow path through
        /// it equals the generic walk.
        #[test]
        fn derived_index_equals_a_fresh_compile(
            kind in kind(),
            mut entries in proptest::collection::vec((addr(), any::<u8>(), any::<u16>(), 1u16..4), 4..24),
            default in any::<bool>(),
            bundles in proptest::collection::vec(
                (proptest::collection::vec((0u8..10, addr(), any::<u8>(), any::<u16>(), 1u16..4, any::<proptest::sample::Index>()), 1..4), proptest::bool::weighted(0.8)),
                1..12),
            pkts in proptest::collection::vec((addr(), any::<u16>(), any::<u8>(), any::<u16>(), any::<bool>()), 1..16),
        ) {
            if matches!(kind, Kind::Lpm) {
                entries.sort_by_key(|e| std::cmp::Reverse(e.1 % 33));
            }
            let mut prog = program(&flows_of(&kind, &entries, default, None));
            prepare(&prog);
            for (ops, index_it) in bundles {
                let mut mods = Vec::new();
                for (op, a, len, port, prio, pick) in ops {
                    let rules: Vec<Arc<Rule>> = prog.tables[0].rules.iter().cloned().collect();
                    let strict = |r: &Rule| FlowFilter {
                        table: Some(0),
                        priority: r.spec.priority,
                        m: r.spec.m.clone(),
                        ..FlowFilter::default()
                    };
                    let parse = |f: &str| FlowMod::Add(parse_flow(f).unwrap_or_else(|e| panic!("{f}: {e}")));
                    match op {
                        0..=3 => {
                            let f = flows_of(&kind, &[(a, len, port, prio)], false, None);
                            mods.push(parse(&f[0]));
                        }
                        4 | 5 if !rules.is_empty() => {
                            let r = &rules[pick.index(rules.len())];
                            mods.push(FlowMod::Delete { filter: strict(r), strict: true });
                        }
                        6 if !rules.is_empty() => {
                            let r = &rules[pick.index(rules.len())];
                            mods.push(FlowMod::Modify {
                                filter: strict(r),
                                strict: true,
                                actions: vec![Action::Output(PortNo(port % 50 + 1))],
                            });
                        }
                        7 if !rules.is_empty() => {
                            // Loose: every rule within this one's match.
                            let r = &rules[pick.index(rules.len())];
                            mods.push(FlowMod::Delete { filter: strict(r), strict: false });
                        }
                        8 => mods.push(parse(if prio == 1 {
                            "priority=0 actions=output:99"
                        } else {
                            "priority=0 actions=drop"
                        })),
                        _ => {
                            // Another shape, added, or removed when present.
                            let f = "priority=2,udp,tp_src=7 actions=drop";
                            if rules.iter().any(|r| r.spec.m.mask().get(Field::TpSrc) != 0) {
                                let m = parse_flow(f).expect("flow").m;
                                mods.push(FlowMod::Delete {
                                    filter: FlowFilter { table: Some(0), priority: 2, m, ..FlowFilter::default() },
                                    strict: true,
                                });
                            } else {
                                mods.push(parse(f));
                            }
                        }
                    }
                }
                prog = prog.apply(&mods, 0, |_| String::new()).expect("bundle").0;
                if !index_it {
                    continue;
                }
                let t = &prog.tables[0];
                if let Some(d) = t.delta() {
                    if let Some(Some(base)) = d.base.get().and_then(|b| b.downcast_ref::<Option<SpecialTable>>()) {
                        if let Some(u) = base.updated(&d.changes, t.rules.len()) {
                            let fresh = compile(t);
                            prop_assert!(fresh.is_some(), "updated but compile refuses");
                            prop_assert_eq!(picture(&u), picture(&fresh.expect("checked")));
                        }
                    }
                }
                let got = of(t).map(picture);
                prop_assert_eq!(got, compile(t).as_ref().map(picture));
                for &(a, port, mac, in_port, tcp) in &pkts {
                    let k = packet(a, port, mac, in_port, tcp);
                    prop_assert!(same(&translate(&prog, &k, None), &translate_generic(&prog, &k)));
                }
                // And a packet for each rule.
                for r in t.rules.iter() {
                    let k = r.spec.m.key();
                    prop_assert!(same(&translate(&prog, &k, None), &translate_generic(&prog, &k)));
                }
            }
        }
    }

    /// What an index holds, independent of how it was built: per group
    /// its mask, indexed rules, shadowed rules and priority counts; the
    /// tail; the shape, mask and size.
    type Picture = (
        Shape,
        FlowKey,
        Vec<(FlowKey, Vec<usize>, Vec<usize>, Vec<(u16, u32)>)>,
        Vec<usize>,
        usize,
    );

    fn picture(s: &SpecialTable) -> Picture {
        let ptr = |r: &Arc<Rule>| Arc::as_ptr(r) as usize;
        let groups = s
            .groups
            .iter()
            .map(|g| {
                let mut indexed: Vec<usize> =
                    g.shards.iter().flat_map(|h| h.iter().map(ptr)).collect();
                indexed.sort_unstable();
                let mut shadowed: Vec<usize> = g.shadowed.iter().map(ptr).collect();
                shadowed.sort_unstable();
                let prios = g.prios.iter().map(|(&p, &n)| (p, n)).collect();
                (g.mask, indexed, shadowed, prios)
            })
            .collect();
        (
            s.shape,
            s.mask,
            groups,
            s.tail.values().map(ptr).collect(),
            s.n_rules,
        )
    }

    /// A one-rule change to a 5,000-rule exact table derives its index
    /// from the previous one: every shard but the changed one is shared,
    /// and the result equals a fresh compile.
    #[test]
    fn a_change_copies_one_shard() {
        let vip = |i: u32| {
            format!(
                "priority=100,ip,nw_src={} actions=ct(zone=1,table=11,nat)",
                ip(0x0a00_0000 + i)
            )
        };
        let mut flows: Vec<String> = (0..5000).map(vip).collect();
        flows.push("priority=0 actions=goto_table:11".into());
        let p1 = program(&flows);
        assert_eq!(prepare(&p1), 2);
        let old = parse_flow(&vip(17)).expect("flow");
        let (p2, _) = p1
            .apply(
                &[
                    FlowMod::Delete {
                        filter: FlowFilter {
                            table: Some(0),
                            priority: 100,
                            m: old.m,
                            ..FlowFilter::default()
                        },
                        strict: true,
                    },
                    FlowMod::Add(parse_flow(&vip(9000)).expect("flow")),
                ],
                0,
                |_| String::new(),
            )
            .expect("bundle");
        let t = &p2.tables[0];
        assert_eq!(t.delta().map(|d| d.changes.len()), Some(2));
        let base = of(&p1.tables[0]).expect("specialised");
        let new = of(t).expect("specialised");
        let (a, b) = (&base.groups[0].shards, &new.groups[0].shards);
        assert_eq!(a.len(), 16, "5000 rules in shards of about {SHARD_RULES}");
        let copied = a.iter().zip(b).filter(|(x, y)| !Arc::ptr_eq(x, y)).count();
        assert!((1..=2).contains(&copied), "{copied} shards copied");
        assert_eq!(picture(new), picture(&compile(t).expect("compiles")));
        let mut k = parse_flow(&vip(9000)).expect("flow").m.key();
        assert!(Arc::ptr_eq(
            new.lookup(&k).expect("hit"),
            t.rules
                .find(100, &parse_flow(&vip(9000)).expect("flow").m)
                .expect("rule")
        ));
        k.set(Field::NwSrc, 0x0a00_0011);
        assert_eq!(
            new.lookup(&k).map(|r| r.spec.priority),
            Some(0),
            "the removed rule is gone"
        );
    }
}
