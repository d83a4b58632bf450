//! The flow program: numbered tables of prioritised rules, groups, and the
//! all-or-nothing bundle of flow mods that produces the next program.
//!
//! A [`FlowProgram`] is immutable once built: the control side applies a
//! bundle to the current program ([`FlowProgram::apply`]), getting a new
//! program or an error naming the failing mod and leaving the current one
//! untouched, then publishes it (see `flow::tables`). Rules that a bundle
//! leaves alone are shared (`Arc<Rule>`) between consecutive programs, and a
//! rule's counters ([`RuleStats`]) are shared even by `modify`, so counts
//! survive updates.
//!
//! Invariants of a program built by `apply`: rules in a table are sorted by
//! descending priority (insertion order among equal priorities); every
//! match satisfies its prerequisites; `goto_table` only points forward;
//! every referenced group exists; no two rules in a table have the same
//! priority and match.
//!
//! Each [`Table`] carries a slot for an index derived from its rules (the
//! classifier's specialised lookup, filled on first use or by
//! `classifier::special::prepare`). Tables a bundle leaves alone share the
//! filled slot with the previous program; every change to a table's rules
//! here gives that table a fresh, empty slot, so a derived index is never
//! used with rules it was not built from. With the fresh slot the table
//! keeps a [`RuleDelta`]: the filled slot of an earlier version of the
//! table and the rule changes since (in order), so that the new index can
//! be derived from the old one at the cost of the change. A delta is kept
//! only while it is small next to the table (else the index is rebuilt
//! from the rules, which is then as cheap); a version whose slot was never
//! filled passes its delta on, so the changes of several programs compose.
//!
//! Thread-safety: a program is `Send + Sync` and read concurrently by every
//! PMD; the only mutable state is [`RuleStats`], updated with relaxed
//! atomics from any thread, and the derived-index slots, written once.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::action::{Action, GroupType};
use super::key::{Field, FlowKey};
use super::matches::{Match, MatchError};
use crate::time::Nanos;

/// Number of flow tables (0–254; 255 means "all tables" in filters).
pub const N_TABLES: usize = 255;

/// Packet/byte counters and last-hit time of a rule, updated by PMDs.
#[derive(Debug, Default)]
pub struct RuleStats {
    packets: AtomicU64,
    bytes: AtomicU64,
    last_hit: AtomicU64,
}

impl RuleStats {
    /// Counts `packets` packets of `bytes` bytes in total, seen at `now`.
    #[inline]
    pub fn hit(&self, packets: u64, bytes: u64, now: Nanos) {
        self.packets.fetch_add(packets, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_hit.fetch_max(now, Ordering::Relaxed);
    }
    /// Packets counted.
    pub fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }
    /// Bytes counted.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    /// Time of the last hit (0 if never hit).
    pub fn last_hit(&self) -> Nanos {
        self.last_hit.load(Ordering::Relaxed)
    }
}

/// What a rule is made of, before it enters a program (`add-flow` text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSpec {
    /// Table (0–254).
    pub table: u8,
    /// Priority; higher wins.
    pub priority: u16,
    /// The match.
    pub m: Match,
    /// Actions; empty means drop.
    pub actions: Vec<Action>,
    /// Opaque controller cookie.
    pub cookie: u64,
    /// Seconds without a hit before the rule expires (0 = never).
    pub idle_timeout: u16,
    /// Seconds after creation before the rule expires (0 = never).
    pub hard_timeout: u16,
}

impl Default for FlowSpec {
    fn default() -> Self {
        FlowSpec {
            table: 0,
            priority: 32768,
            m: Match::ANY,
            actions: Vec::new(),
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
        }
    }
}

/// A rule in a program.
#[derive(Debug)]
pub struct Rule {
    /// What the rule is.
    pub spec: FlowSpec,
    /// When it was added.
    pub created: Nanos,
    /// Its counters (shared across programs and modifies).
    pub stats: Arc<RuleStats>,
}

impl Rule {
    /// True when the rule's idle or hard timeout has passed at `now`.
    pub fn expired(&self, now: Nanos) -> bool {
        const NS: u64 = 1_000_000_000;
        let hard = u64::from(self.spec.hard_timeout) * NS;
        let idle = u64::from(self.spec.idle_timeout) * NS;
        let last = self.created.max(self.stats.last_hit());
        (hard != 0 && now >= self.created.saturating_add(hard))
            || (idle != 0 && now >= last.saturating_add(idle))
    }
}

/// Which rules a modify or delete selects (`del-flows` text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowFilter {
    /// Table, or `None` for every table.
    pub table: Option<u8>,
    /// Priority (strict operations only).
    pub priority: u16,
    /// Loose: rules whose match lies within this one; strict: equal.
    pub m: Match,
    /// Cookie value compared under `cookie_mask`.
    pub cookie: u64,
    /// Cookie bits that must equal (0 = any cookie).
    pub cookie_mask: u64,
}

impl FlowFilter {
    fn selects(&self, rule: &FlowSpec, strict: bool) -> bool {
        self.table.is_none_or(|t| t == rule.table)
            && (rule.cookie & self.cookie_mask) == (self.cookie & self.cookie_mask)
            && if strict {
                rule.priority == self.priority && rule.m == self.m
            } else {
                rule.m.is_within(&self.m)
            }
    }
}

/// What a table does with a packet no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissAction {
    /// Drop, counted as `table_miss` (the default).
    #[default]
    Drop,
    /// Punt to the controller.
    Controller,
    /// Continue in the next table.
    Continue,
}

/// A slot for an index derived from a table's rules by a higher layer
/// (written once, then read by every PMD). Cloning a [`Table`] shares it.
pub type DerivedSlot = Arc<OnceLock<Box<dyn Any + Send + Sync>>>;

/// One rule a table version gained or lost against an earlier version.
#[derive(Debug, Clone)]
pub struct RuleChange {
    /// Added (else removed).
    pub added: bool,
    /// The rule's place among the rules of its priority (insertion
    /// order; a modify or replacement keeps it): rules are ordered by
    /// descending priority, then ascending `seq`.
    pub seq: u64,
    /// The rule.
    pub rule: Arc<Rule>,
}

/// How a table's rules differ from an earlier version's whose derived
/// slot is filled (see the module documentation).
#[derive(Debug, Clone)]
pub struct RuleDelta {
    /// The earlier version's derived slot, always filled.
    pub base: DerivedSlot,
    /// The changes from the earlier version's rules to these, in the
    /// order they were made (a modify is a removal then an addition).
    pub changes: Vec<RuleChange>,
}

/// Changes a delta may hold before it is dropped: this many, or an
/// eighth of the table if more.
const DELTA_MIN: usize = 64;

/// One table: rules in priority order plus its miss behaviour.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Rules, highest priority first. Whoever changes them must give
    /// the table a fresh derived slot ([`Table::rules_changed`]; the
    /// program's own changes go through `FlowProgram::rules_mut`).
    pub rules: RuleList,
    /// Table-miss behaviour.
    pub miss: MissAction,
    /// The index derived from `rules` (see the module documentation).
    pub derived: DerivedSlot,
    /// How `rules` differ from a version with a filled slot, if known.
    delta: Option<Arc<RuleDelta>>,
}

impl Table {
    /// Forgets the derived index: call after any change to `rules` made
    /// outside this module (the index will be rebuilt from the rules).
    pub fn rules_changed(&mut self) {
        self.derived = DerivedSlot::default();
        self.delta = None;
    }

    /// How the rules differ from an earlier version whose derived slot is
    /// filled, when that is known and small.
    pub fn delta(&self) -> Option<&RuleDelta> {
        self.delta.as_deref()
    }

    /// Before a change to the rules: a fresh derived slot, unless the
    /// table already has its own unfilled one (a second change in one
    /// bundle), and the delta from the last filled slot.
    fn begin_change(&mut self) {
        if Arc::get_mut(&mut self.derived).is_some_and(|s| s.get().is_none()) {
            return;
        }
        let old = std::mem::take(&mut self.derived);
        if old.get().is_some() {
            self.delta = Some(Arc::new(RuleDelta {
                base: old,
                changes: Vec::new(),
            }));
        }
        // Else the old version's own delta (from its filled base) carries
        // on, or there is none.
    }

    /// Adds `rule` ([`RuleList`]'s add), recording the change.
    fn add(&mut self, rule: Rule) {
        let (old, new) = self.rules.add(rule);
        if let Some(old) = old {
            self.record(false, &old);
        }
        self.record(true, &new);
    }

    /// Replaces the held rule of `old` by `new`, recording the change.
    fn replace(&mut self, old: &Slot, new: Arc<Rule>) {
        if self.rules.position(old).is_some() {
            let new = self.rules.replace(old, new);
            self.record(false, old);
            self.record(true, &new);
        }
    }

    /// Removes the held slot `s`, recording the change.
    fn remove(&mut self, s: &Slot) -> bool {
        let gone = self.rules.remove(s);
        if gone {
            self.record(false, s);
        }
        gone
    }

    /// Keeps the rules `keep` accepts, recording the removals; returns how
    /// many went.
    fn retain(&mut self, keep: impl FnMut(&Rule) -> bool) -> usize {
        let gone = self.rules.retain(keep);
        for s in &gone {
            self.record(false, s);
        }
        gone.len()
    }

    /// Records a change made to the rules after [`Table::begin_change`].
    fn record(&mut self, added: bool, slot: &Slot) {
        let Some(d) = self.delta.as_mut() else {
            return;
        };
        if d.changes.len() >= DELTA_MIN.max(self.rules.len() / 8) {
            self.delta = None;
            return;
        }
        Arc::make_mut(d).changes.push(RuleChange {
            added,
            seq: slot.seq,
            rule: slot.rule.clone(),
        });
    }
}

/// Most rules in one chunk of a [`RuleList`] (a chunk twice as big is
/// split).
const CHUNK: usize = if cfg!(test) { 4 } else { 256 };
/// Shards of a [`RuleList`]'s identity index.
const INDEX_SHARDS: usize = 64;

/// The identity of a rule in its table: priority and match.
fn ident_hash(priority: u16, m: &Match) -> u64 {
    use std::hash::{Hash, Hasher};
    /// FxHash's word mix: the index only needs a fixed, fast spread
    /// (collisions are resolved by comparing the rules).
    struct Fx(u64);
    impl Hasher for Fx {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for c in bytes.chunks(8) {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                self.write_u64(u64::from_le_bytes(w));
            }
        }
        fn write_u64(&mut self, i: u64) {
            self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    let mut h = Fx(0);
    priority.hash(&mut h);
    m.hash(&mut h);
    // Full avalanche, so the low bits choose shards evenly.
    let mut x = h.0;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

/// A rule in a table with its place among the rules of its priority
/// (insertion order; a replacement or modify keeps it): a table's rules
/// are sorted by descending priority, then ascending `seq`.
#[derive(Debug, Clone)]
struct Slot {
    seq: u64,
    rule: Arc<Rule>,
}

impl Slot {
    fn key(&self) -> (std::cmp::Reverse<u16>, u64) {
        (std::cmp::Reverse(self.rule.spec.priority), self.seq)
    }
}

/// A shard of the identity index: slots hashed by [`ident_hash`].
type IndexShard = hashbrown::HashTable<Slot>;

/// The rules of one table, highest priority first (insertion order among
/// equal priorities), stored so that a new version costs what it changes.
///
/// Rules sit in copy-on-write chunks of at most `2 * CHUNK`, and an
/// identity index (priority and match to the rule, in copy-on-write
/// shards) finds a rule without a scan. A clone shares every chunk and
/// shard; changing one rule copies one chunk and one shard (or none, when
/// the list already owns them alone, as within one bundle). Readers
/// iterate it like a slice (`for r in &table.rules`).
#[derive(Clone, Default)]
pub struct RuleList {
    chunks: Vec<Arc<Vec<Slot>>>,
    len: usize,
    index: Vec<Arc<IndexShard>>,
    /// How many rules use each distinct match mask (a handful per table).
    masks: Arc<hashbrown::HashMap<FlowKey, usize>>,
    next_seq: u64,
}

impl std::fmt::Debug for RuleList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The rules of a [`RuleList`] in order.
#[derive(Debug, Clone)]
pub struct RuleIter<'a> {
    chunks: std::slice::Iter<'a, Arc<Vec<Slot>>>,
    cur: std::slice::Iter<'a, Slot>,
}

impl<'a> Iterator for RuleIter<'a> {
    type Item = &'a Arc<Rule>;
    #[inline]
    fn next(&mut self) -> Option<&'a Arc<Rule>> {
        loop {
            if let Some(s) = self.cur.next() {
                return Some(&s.rule);
            }
            self.cur = self.chunks.next()?.iter();
        }
    }
}

impl<'a> IntoIterator for &'a RuleList {
    type Item = &'a Arc<Rule>;
    type IntoIter = RuleIter<'a>;
    fn into_iter(self) -> RuleIter<'a> {
        RuleIter {
            chunks: self.chunks.iter(),
            cur: [].iter(),
        }
    }
}

impl std::ops::Index<usize> for RuleList {
    type Output = Arc<Rule>;
    fn index(&self, i: usize) -> &Arc<Rule> {
        let mut i = i;
        for c in &self.chunks {
            if i < c.len() {
                return &c[i].rule;
            }
            i -= c.len();
        }
        panic!(
            "rule index {i} past the end of a table of {} rules",
            self.len
        )
    }
}

/// Where a rule sits: chunk and position in it.
type Pos = (usize, usize);

impl RuleList {
    /// Number of rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the table has no rule.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rules in order.
    pub fn iter(&self) -> RuleIter<'_> {
        self.into_iter()
    }

    /// The first rule, if any.
    pub fn first(&self) -> Option<&Arc<Rule>> {
        self.chunks.first().and_then(|c| c.first()).map(|s| &s.rule)
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The position of the first rule whose sort key is not below `key`.
    fn lower_bound(&self, key: (std::cmp::Reverse<u16>, u64)) -> Pos {
        let c = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|s| s.key() < key));
        match self.chunks.get(c) {
            Some(chunk) => (c, chunk.partition_point(|s| s.key() < key)),
            None => (c, 0),
        }
    }

    /// The rules in order with their places among the rules of their
    /// priority (see [`RuleChange::seq`]).
    pub fn iter_seq(&self) -> impl Iterator<Item = (u64, &Arc<Rule>)> {
        self.slots().map(|s| (s.seq, &s.rule))
    }

    /// The distinct match masks of the rules (a handful per table).
    pub fn masks(&self) -> impl Iterator<Item = &FlowKey> {
        self.masks.keys()
    }

    fn shard_mut(&mut self, h: u64) -> &mut IndexShard {
        if self.index.is_empty() {
            self.index = (0..INDEX_SHARDS).map(|_| Arc::default()).collect();
        }
        Arc::make_mut(&mut self.index[(h as usize) % INDEX_SHARDS])
    }

    fn find_slot(&self, priority: u16, m: &Match) -> Option<&Slot> {
        let h = ident_hash(priority, m);
        self.index.get((h as usize) % INDEX_SHARDS)?.find(h, |s| {
            s.rule.spec.priority == priority && s.rule.spec.m == *m
        })
    }

    /// The rule with this priority and match, if any (one hash lookup).
    pub fn find(&self, priority: u16, m: &Match) -> Option<&Arc<Rule>> {
        self.find_slot(priority, m).map(|s| &s.rule)
    }

    /// The union of every rule's match mask (a union over the distinct
    /// masks, not over the rules).
    pub fn mask_union(&self) -> FlowKey {
        let mut m = FlowKey::ZERO;
        for k in self.masks.keys() {
            m.or_assign(k);
        }
        m
    }

    fn index_remove(&mut self, s: &Slot) {
        let masks = Arc::make_mut(&mut self.masks);
        let mask = s.rule.spec.m.mask();
        if let Some(n) = masks.get_mut(&mask) {
            *n -= 1;
            if *n == 0 {
                masks.remove(&mask);
            }
        }
        let h = ident_hash(s.rule.spec.priority, &s.rule.spec.m);
        if let Ok(e) = self.shard_mut(h).find_entry(h, |x| x.seq == s.seq) {
            e.remove();
        }
    }

    fn index_insert(&mut self, s: &Slot) {
        *Arc::make_mut(&mut self.masks)
            .entry(s.rule.spec.m.mask())
            .or_insert(0) += 1;
        let h = ident_hash(s.rule.spec.priority, &s.rule.spec.m);
        self.shard_mut(h).insert_unique(h, s.clone(), |x| {
            ident_hash(x.rule.spec.priority, &x.rule.spec.m)
        });
    }

    /// Where the held slot `s` sits.
    fn position(&self, s: &Slot) -> Option<Pos> {
        let (c, i) = self.lower_bound(s.key());
        let found = self.chunks.get(c)?.get(i)?;
        (found.key() == s.key()).then_some((c, i))
    }

    /// Adds `rule`: it replaces the rule with the same priority and match
    /// in place (taking its place, with the new rule's counters), or goes
    /// after every rule of higher or equal priority. Returns the replaced
    /// slot, if any, and the new one.
    fn add(&mut self, rule: Rule) -> (Option<Slot>, Slot) {
        let rule = Arc::new(rule);
        if let Some(old) = self.find_slot(rule.spec.priority, &rule.spec.m).cloned() {
            let new = self.replace(&old, rule);
            return (Some(old), new);
        }
        let slot = Slot {
            seq: self.next_seq,
            rule,
        };
        self.next_seq += 1;
        self.index_insert(&slot);
        let (c, i) = self.lower_bound(slot.key());
        let last = self.chunks.len().wrapping_sub(1);
        if c >= self.chunks.len() && self.chunks.last().is_none_or(|l| l.len() >= CHUNK) {
            // After the last rule, which ends a full chunk: a new chunk
            // (chunks filled by appends hold exactly CHUNK rules).
            self.chunks.push(Arc::new(vec![slot.clone()]));
        } else if c >= self.chunks.len() {
            // After the last rule: at the end of the last chunk.
            Arc::make_mut(&mut self.chunks[last]).push(slot.clone());
        } else {
            let chunk = Arc::make_mut(&mut self.chunks[c]);
            // Room for one (a chunk just copied is exactly full).
            chunk.reserve_exact(1);
            chunk.insert(i, slot.clone());
            if chunk.len() >= 2 * CHUNK {
                let tail = chunk.split_off(CHUNK);
                chunk.shrink_to_fit();
                self.chunks.insert(c + 1, Arc::new(tail));
            }
        }
        self.len += 1;
        (None, slot)
    }

    /// Replaces the held rule of slot `old` by `new` (same priority, match
    /// and place); returns the new slot.
    fn replace(&mut self, old: &Slot, new: Arc<Rule>) -> Slot {
        let slot = Slot {
            seq: old.seq,
            rule: new,
        };
        if let Some((c, i)) = self.position(old) {
            self.index_remove(old);
            self.index_insert(&slot);
            Arc::make_mut(&mut self.chunks[c])[i] = slot.clone();
        }
        slot
    }

    /// Removes the held slot `s`.
    fn remove(&mut self, s: &Slot) -> bool {
        let Some((c, i)) = self.position(s) else {
            return false;
        };
        self.index_remove(s);
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        chunk.remove(i);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        self.len -= 1;
        true
    }

    /// Keeps the rules `keep` accepts; returns the slots that went. Cost:
    /// a scan (and a copy of the chunks that lose rules).
    fn retain(&mut self, mut keep: impl FnMut(&Rule) -> bool) -> Vec<Slot> {
        let gone: Vec<Slot> = self.slots().filter(|s| !keep(&s.rule)).cloned().collect();
        if gone.len() * 4 > self.len {
            // Most of the table: rebuild it.
            let gone_seqs: std::collections::HashSet<u64> = gone.iter().map(|s| s.seq).collect();
            let kept: Vec<Slot> = self
                .slots()
                .filter(|s| !gone_seqs.contains(&s.seq))
                .cloned()
                .collect();
            let next_seq = self.next_seq;
            *self = RuleList::default();
            self.next_seq = next_seq;
            for ch in kept.chunks(CHUNK) {
                for s in ch {
                    self.index_insert(s);
                }
                self.chunks.push(Arc::new(ch.to_vec()));
            }
            self.len = kept.len();
        } else {
            for s in &gone {
                self.remove(s);
            }
        }
        gone
    }

    /// The slots `pick` selects, in order (a loose modify's).
    fn selected(&self, mut pick: impl FnMut(&Rule) -> bool) -> Vec<Slot> {
        self.slots().filter(|s| pick(&s.rule)).cloned().collect()
    }

    /// Checks the chunks' order and the index against the rules (tests).
    #[cfg(test)]
    fn check(&self) {
        let v: Vec<&Slot> = self.slots().collect();
        assert_eq!(v.len(), self.len);
        assert!(self
            .chunks
            .iter()
            .all(|c| !c.is_empty() && c.len() < 2 * CHUNK));
        assert!(v.windows(2).all(|w| w[0].key() < w[1].key()));
        let indexed: usize = self.index.iter().map(|s| s.len()).sum();
        assert_eq!(indexed, self.len);
        let mut union = FlowKey::ZERO;
        for s in &v {
            s.rule.spec.m.or_mask_into(&mut union);
            let found = self
                .find_slot(s.rule.spec.priority, &s.rule.spec.m)
                .expect("indexed");
            assert!(Arc::ptr_eq(&found.rule, &s.rule) && found.seq == s.seq);
        }
        assert_eq!(self.mask_union(), union);
        assert_eq!(self.masks.values().sum::<usize>(), self.len);
    }
}

/// One bucket of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Relative weight for `select` groups (0 = never chosen).
    pub weight: u16,
    /// The bucket's actions.
    pub actions: Vec<Action>,
}

/// A group (`add-group` text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group id.
    pub id: u32,
    /// `all` or `select`.
    pub kind: GroupType,
    /// Fields hashed to choose a `select` bucket (empty: the 5-tuple).
    pub fields: Vec<Field>,
    /// Buckets.
    pub buckets: Vec<Bucket>,
}

/// A change to the program; a bundle is a `Vec` of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowMod {
    /// Add a rule, replacing one with the same table, priority and match.
    Add(FlowSpec),
    /// Replace the actions of the selected rules, keeping their counters,
    /// cookies and timeouts.
    Modify {
        /// Which rules.
        filter: FlowFilter,
        /// Strict (same priority and match) or loose selection.
        strict: bool,
        /// New actions.
        actions: Vec<Action>,
    },
    /// Delete the selected rules.
    Delete {
        /// Which rules.
        filter: FlowFilter,
        /// Strict (same priority and match) or loose selection.
        strict: bool,
    },
    /// Add or replace a group.
    AddGroup(Group),
    /// Delete a group (rules still referring to it make the bundle fail).
    DeleteGroup(u32),
    /// Set a table's miss behaviour.
    SetMiss {
        /// Table.
        table: u8,
        /// Behaviour.
        miss: MissAction,
    },
}

/// Why one flow mod was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowModError {
    /// Table 255 (or larger) in an add.
    #[error("table {0} does not exist (tables are 0-254)")]
    NoSuchTable(u16),
    /// The match misses a prerequisite.
    #[error(transparent)]
    Match(#[from] MatchError),
    /// `goto_table` not pointing forward.
    #[error("goto_table:{to} in table {from} must point to a later table")]
    GotoBackward {
        /// Rule's table.
        from: u8,
        /// Target.
        to: u8,
    },
    /// A group that does not exist.
    #[error("group {0} does not exist (add it in the same or an earlier bundle)")]
    NoSuchGroup(u32),
    /// `drop` with other actions.
    #[error("`drop` must be the only action")]
    DropNotAlone,
    /// A set_field to a read-only field.
    #[error("field {0} cannot be written by set_field or load")]
    ReadOnlyField(Field),
    /// goto_table or group inside a group bucket.
    #[error("group {0}: goto_table and group are not allowed in buckets (use resubmit)")]
    BucketAction(u32),
    /// Deleting a group a rule still uses.
    #[error("group {0} is still used by a flow; delete those flows in the same bundle")]
    GroupInUse(u32),
}

/// The first failing mod of a bundle; nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow mod #{index} ({summary}) was rejected and no change was applied: {error}")]
pub struct BundleError {
    /// Zero-based position of the failing mod in the bundle.
    pub index: usize,
    /// The mod, printed.
    pub summary: String,
    /// What is wrong with it.
    pub error: FlowModError,
}

/// What a successful bundle changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BundleSummary {
    /// Rules added (including replacements).
    pub added: usize,
    /// Rules modified.
    pub modified: usize,
    /// Rules deleted.
    pub deleted: usize,
    /// Groups added, replaced or deleted.
    pub groups: usize,
}

/// An immutable flow program.
#[derive(Debug, Clone)]
pub struct FlowProgram {
    /// Tables 0–254, each shared between programs until a bundle changes
    /// it.
    pub tables: Vec<Arc<Table>>,
    /// Groups by id.
    pub groups: BTreeMap<u32, Arc<Group>>,
    /// Publication number, increasing; caches built from an older program
    /// are stale.
    pub generation: u64,
}

impl Default for FlowProgram {
    fn default() -> Self {
        FlowProgram {
            // One empty table shared by all until a bundle changes one.
            tables: {
                let empty = Arc::new(Table::default());
                (0..N_TABLES).map(|_| empty.clone()).collect()
            },
            groups: BTreeMap::new(),
            generation: 0,
        }
    }
}

fn check_actions(table: u8, actions: &[Action]) -> Result<(), FlowModError> {
    for a in actions {
        match *a {
            Action::Drop if actions.len() > 1 => return Err(FlowModError::DropNotAlone),
            Action::GotoTable(to) if to <= table => {
                return Err(FlowModError::GotoBackward { from: table, to })
            }
            Action::GotoTable(to) if usize::from(to) >= N_TABLES => {
                return Err(FlowModError::NoSuchTable(u16::from(to)))
            }
            Action::Resubmit { table: Some(t), .. } if usize::from(t) >= N_TABLES => {
                return Err(FlowModError::NoSuchTable(u16::from(t)))
            }
            Action::SetField { field, .. } if !field.writable() => {
                return Err(FlowModError::ReadOnlyField(field))
            }
            _ => {}
        }
    }
    Ok(())
}

fn groups_used(actions: &[Action]) -> impl Iterator<Item = u32> + '_ {
    actions.iter().filter_map(|a| match a {
        Action::Group(g) => Some(*g),
        _ => None,
    })
}

/// A new rule for `spec`, after the checks an add makes (its place is
/// given when it enters a table).
fn new_rule(spec: &FlowSpec, now: Nanos) -> Result<Rule, FlowModError> {
    if usize::from(spec.table) >= N_TABLES {
        return Err(FlowModError::NoSuchTable(u16::from(spec.table)));
    }
    spec.m.check_prereqs()?;
    check_actions(spec.table, &spec.actions)?;
    Ok(Rule {
        spec: spec.clone(),
        created: now,
        stats: Arc::new(RuleStats::default()),
    })
}

impl FlowProgram {
    /// Iterates over every rule, table by table.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.tables.iter().flat_map(|t| t.rules.iter())
    }

    /// The union of every rule's match mask, from each table's count of
    /// its distinct masks: its cost does not grow with the rules.
    pub fn rule_mask_union(&self) -> FlowKey {
        let mut m = FlowKey::ZERO;
        for t in &self.tables {
            if !t.rules.is_empty() {
                m.or_assign(&t.rules.mask_union());
            }
        }
        m
    }

    /// Number of rules.
    pub fn n_rules(&self) -> usize {
        self.tables.iter().map(|t| t.rules.len()).sum()
    }

    /// Applies `mods` in order to a copy of this program; all or nothing.
    /// `describe` prints a mod for the error message.
    ///
    /// Cost grows with the bundle, not with the program: the copy shares
    /// every table the bundle leaves alone, an add or a strict modify or
    /// delete finds its rule through the table's identity index and
    /// copies one chunk of it; loose modifies and deletes scan the tables
    /// they name, and deleting a group scans for its users.
    pub fn apply(
        &self,
        mods: &[FlowMod],
        now: Nanos,
        describe: impl Fn(&FlowMod) -> String,
    ) -> Result<(FlowProgram, BundleSummary), BundleError> {
        let mut p = self.clone();
        p.generation = self.generation + 1;
        let mut sum = BundleSummary::default();
        let fail = |index: usize, error: FlowModError| BundleError {
            index,
            summary: describe(&mods[index]),
            error,
        };
        for (i, fm) in mods.iter().enumerate() {
            p.apply_one(fm, now, &mut sum).map_err(|e| fail(i, e))?;
        }
        // Group references are checked once the whole bundle is applied, so
        // a bundle may add a group and its users in any order.
        for (i, fm) in mods.iter().enumerate() {
            let used: Vec<u32> = match fm {
                FlowMod::Add(s) => groups_used(&s.actions).collect(),
                FlowMod::Modify { actions, .. } => groups_used(actions).collect(),
                FlowMod::AddGroup(g) => g
                    .buckets
                    .iter()
                    .flat_map(|b| groups_used(&b.actions))
                    .collect(),
                FlowMod::DeleteGroup(id) => {
                    if p.rules()
                        .any(|r| groups_used(&r.spec.actions).any(|g| g == *id))
                    {
                        return Err(fail(i, FlowModError::GroupInUse(*id)));
                    }
                    Vec::new()
                }
                _ => Vec::new(),
            };
            if let Some(g) = used.into_iter().find(|g| !p.groups.contains_key(g)) {
                return Err(fail(i, FlowModError::NoSuchGroup(g)));
            }
        }
        Ok((p, sum))
    }

    /// The tables a filter names.
    fn tables_of(filter: &FlowFilter) -> std::ops::Range<usize> {
        match filter.table {
            Some(t) => usize::from(t)..(usize::from(t) + 1).min(N_TABLES),
            None => 0..N_TABLES,
        }
    }

    /// Table `t`, to change its rules: the table copied if another
    /// program shares it, with a fresh derived slot (an index built from
    /// the old rules is never used with the new ones) and the delta from
    /// the last filled one ([`Table::begin_change`]).
    fn rules_mut(&mut self, t: usize) -> &mut Table {
        let table = Arc::make_mut(&mut self.tables[t]);
        table.begin_change();
        table
    }

    /// The rules `filter` selects, table by table (strict: through the
    /// identity index).
    fn select(&self, filter: &FlowFilter, strict: bool) -> Vec<(usize, Slot)> {
        let mut out = Vec::new();
        for t in Self::tables_of(filter) {
            let rules = &self.tables[t].rules;
            if strict {
                if let Some(s) = rules.find_slot(filter.priority, &filter.m) {
                    if filter.selects(&s.rule.spec, true) {
                        out.push((t, s.clone()));
                    }
                }
            } else if !rules.is_empty() {
                out.extend(
                    rules
                        .selected(|r| filter.selects(&r.spec, false))
                        .into_iter()
                        .map(|r| (t, r)),
                );
            }
        }
        out
    }

    fn apply_one(
        &mut self,
        fm: &FlowMod,
        now: Nanos,
        sum: &mut BundleSummary,
    ) -> Result<(), FlowModError> {
        match fm {
            FlowMod::Add(spec) => {
                let rule = new_rule(spec, now)?;
                self.rules_mut(usize::from(spec.table)).add(rule);
                sum.added += 1;
            }
            FlowMod::Modify {
                filter,
                strict,
                actions,
            } => {
                for (t, slot) in self.select(filter, *strict) {
                    let r = &slot.rule;
                    check_actions(r.spec.table, actions)?;
                    let mut spec = r.spec.clone();
                    spec.actions = actions.clone();
                    let new = Arc::new(Rule {
                        spec,
                        created: r.created,
                        stats: r.stats.clone(),
                    });
                    self.rules_mut(t).replace(&slot, new);
                    sum.modified += 1;
                }
            }
            FlowMod::Delete { filter, strict } => {
                if *strict {
                    for (t, r) in self.select(filter, true) {
                        if self.rules_mut(t).remove(&r) {
                            sum.deleted += 1;
                        }
                    }
                } else {
                    for t in Self::tables_of(filter) {
                        if self.tables[t]
                            .rules
                            .iter()
                            .any(|r| filter.selects(&r.spec, false))
                        {
                            sum.deleted += self
                                .rules_mut(t)
                                .retain(|r| !filter.selects(&r.spec, false));
                        }
                    }
                }
            }
            FlowMod::AddGroup(g) => {
                for b in &g.buckets {
                    if b.actions
                        .iter()
                        .any(|a| matches!(a, Action::GotoTable(_) | Action::Group(_)))
                    {
                        return Err(FlowModError::BucketAction(g.id));
                    }
                    check_actions(0, &b.actions)?;
                }
                self.groups.insert(g.id, Arc::new(g.clone()));
                sum.groups += 1;
            }
            FlowMod::DeleteGroup(id) => {
                if self.groups.remove(id).is_none() {
                    return Err(FlowModError::NoSuchGroup(*id));
                }
                sum.groups += 1;
            }
            FlowMod::SetMiss { table, miss } => {
                if usize::from(*table) >= N_TABLES {
                    return Err(FlowModError::NoSuchTable(u16::from(*table)));
                }
                Arc::make_mut(&mut self.tables[usize::from(*table)]).miss = *miss;
            }
        }
        Ok(())
    }

    /// A copy without the rules that have expired at `now`, and how many
    /// were removed.
    pub fn without_expired(&self, now: Nanos) -> (FlowProgram, usize) {
        let mut p = self.clone();
        p.generation = self.generation + 1;
        let mut n = 0;
        for t in 0..N_TABLES {
            if p.tables[t].rules.iter().any(|r| r.expired(now)) {
                n += p.rules_mut(t).retain(|r| !r.expired(now));
            }
        }
        (p, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PortNo;

    fn spec(table: u8, priority: u16, port: u16, actions: Vec<Action>) -> FlowSpec {
        let mut m = Match::ANY;
        m.set_exact(Field::InPort, u128::from(port));
        FlowSpec {
            table,
            priority,
            m,
            actions,
            ..FlowSpec::default()
        }
    }

    fn apply(
        p: &FlowProgram,
        mods: &[FlowMod],
    ) -> Result<(FlowProgram, BundleSummary), BundleError> {
        p.apply(mods, 5, |m| format!("{m:?}").chars().take(20).collect())
    }

    proptest::proptest! {
        /// Bundles applied one after the other to the indexed, chunked
        /// tables leave them exactly as the straightforward model does
        /// (a vector per table: scan for an equal priority and match,
        /// insert after every rule of higher or equal priority; deletes
        /// and modifies scan), whether the operations come as one bundle
        /// or several; counters survive modifies; every table's chunks
        /// and identity index agree with its rules (chunks hold
        /// [`CHUNK`] = 4 rules in tests, so they split and empty often).
        #[test]
        fn incremental_tables_equal_the_model(
            ops in proptest::collection::vec((0u8..3, 0u16..4, 0u16..12, 0u16..50, 0u8..10), 0..120),
            cuts in proptest::collection::vec(0usize..120, 0..6),
        ) {
            let mut mods = Vec::new();
            // Reference tables: (priority, in_port, output) in order.
            let mut reference: Vec<Vec<(u16, u16, u16)>> = vec![Vec::new(); 3];
            let filter = |table: u8, prio: u16, port: u16| {
                let mut m = Match::ANY;
                m.set_exact(Field::InPort, u128::from(port));
                FlowFilter { table: Some(table), priority: prio, m, cookie: 0, cookie_mask: 0 }
            };
            for (table, prio, port, out, kind) in ops {
                let rules = &mut reference[usize::from(table)];
                match kind {
                    0 => {
                        mods.push(FlowMod::Delete { filter: filter(table, prio, port), strict: true });
                        rules.retain(|r| (r.0, r.1) != (prio, port));
                    }
                    1 => {
                        mods.push(FlowMod::Delete { filter: filter(table, prio, port), strict: false });
                        rules.retain(|r| r.1 != port);
                    }
                    2 | 3 => {
                        let strict = kind == 2;
                        mods.push(FlowMod::Modify {
                            filter: filter(table, prio, port),
                            strict,
                            actions: vec![Action::Output(PortNo(out))],
                        });
                        for r in rules.iter_mut() {
                            if r.1 == port && (!strict || r.0 == prio) {
                                r.2 = out;
                            }
                        }
                    }
                    _ => {
                        mods.push(FlowMod::Add(spec(table, prio, port, vec![Action::Output(PortNo(out))])));
                        if let Some(r) = rules.iter_mut().find(|r| (r.0, r.1) == (prio, port)) {
                            r.2 = out;
                        } else {
                            let pos = rules.partition_point(|r| r.0 >= prio);
                            rules.insert(pos, (prio, port, out));
                        }
                    }
                }
            }
            let rows = |p: &FlowProgram, t: usize| -> Vec<(u16, u16, u16)> {
                p.tables[t]
                    .rules
                    .iter()
                    .map(|r| {
                        let out = match r.spec.actions.first() {
                            Some(Action::Output(o)) => o.0,
                            other => panic!("unexpected action {other:?}"),
                        };
                        (r.spec.priority, r.spec.m.get(Field::InPort).0 as u16, out)
                    })
                    .collect()
            };
            let (whole, _) = apply(&FlowProgram::default(), &mods).expect("bundle");
            // The same mods as several bundles; a rule hit between them.
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(mods.len())).collect();
            cuts.sort_unstable();
            cuts.push(mods.len());
            let mut p = FlowProgram::default();
            let mut from = 0;
            for c in cuts {
                p = apply(&p, &mods[from..c]).expect("bundle").0;
                from = c;
                if let Some(r) = p.tables[0].rules.first() {
                    r.stats.hit(1, 1, 1);
                }
            }
            for (t, want) in reference.iter().enumerate() {
                proptest::prop_assert_eq!(&rows(&whole, t), want, "table {} (one bundle)", t);
                proptest::prop_assert_eq!(&rows(&p, t), want, "table {} (bundles)", t);
                whole.tables[t].rules.check();
                p.tables[t].rules.check();
            }
        }
    }

    #[test]
    fn a_bundle_copies_only_what_it_changes() {
        let out = |n| vec![Action::Output(PortNo(n))];
        let mods: Vec<FlowMod> = (0..100)
            .map(|i| FlowMod::Add(spec(1, 10, i, out(1))))
            .chain([FlowMod::Add(spec(2, 5, 1, out(1)))])
            .collect();
        let (a, _) = apply(&FlowProgram::default(), &mods).expect("bundle");
        let (b, _) = apply(&a, &[FlowMod::Add(spec(1, 10, 7, out(2)))]).expect("bundle");
        assert!(
            Arc::ptr_eq(&a.tables[2], &b.tables[2]),
            "an untouched table is shared"
        );
        assert!(!Arc::ptr_eq(&a.tables[1], &b.tables[1]));
        let shared = a.tables[1]
            .rules
            .chunks
            .iter()
            .zip(&b.tables[1].rules.chunks)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(
            shared,
            a.tables[1].rules.chunks.len() - 1,
            "one chunk copied"
        );
        assert_eq!(b.tables[1].rules[7].spec.actions, out(2));
        assert_eq!(
            a.tables[1].rules[7].spec.actions,
            out(1),
            "the old program is untouched"
        );
        b.tables[1].rules.check();
    }

    #[test]
    fn rules_sorted_and_replaced() {
        let out = |n| vec![Action::Output(PortNo(n))];
        let (p, s) = apply(
            &FlowProgram::default(),
            &[
                FlowMod::Add(spec(0, 10, 1, out(1))),
                FlowMod::Add(spec(0, 30, 2, out(2))),
                FlowMod::Add(spec(0, 20, 3, out(3))),
                FlowMod::Add(spec(0, 10, 1, out(9))),
            ],
        )
        .expect("bundle");
        assert_eq!(s.added, 4);
        let prios: Vec<u16> = p.tables[0].rules.iter().map(|r| r.spec.priority).collect();
        assert_eq!(prios, vec![30, 20, 10]);
        assert_eq!(p.tables[0].rules[2].spec.actions, out(9));
        assert_eq!(p.generation, 1);
    }

    #[test]
    fn bundle_is_all_or_nothing() {
        let (p, _) = apply(
            &FlowProgram::default(),
            &[FlowMod::Add(spec(1, 1, 1, vec![]))],
        )
        .expect("ok");
        let err = apply(
            &p,
            &[
                FlowMod::Add(spec(1, 2, 2, vec![])),
                FlowMod::Add(spec(1, 3, 3, vec![Action::GotoTable(1)])),
            ],
        )
        .expect_err("goto backward");
        assert_eq!(err.index, 1);
        assert_eq!(err.error, FlowModError::GotoBackward { from: 1, to: 1 });
        assert!(err.to_string().contains("no change was applied"));
        assert_eq!(p.n_rules(), 1, "the original program is untouched");
        let err =
            apply(&p, &[FlowMod::Add(spec(0, 1, 1, vec![Action::Group(7)]))]).expect_err("group");
        assert_eq!(err.error, FlowModError::NoSuchGroup(7));
        let looping = Group {
            id: 3,
            kind: GroupType::All,
            fields: vec![],
            buckets: vec![Bucket {
                weight: 1,
                actions: vec![Action::Group(3)],
            }],
        };
        let err = apply(&p, &[FlowMod::AddGroup(looping)]).expect_err("group in bucket");
        assert_eq!(err.error, FlowModError::BucketAction(3));
    }

    #[test]
    fn modify_keeps_counters_delete_loose_and_strict() {
        let (p, _) = apply(
            &FlowProgram::default(),
            &[
                FlowMod::Add(spec(0, 5, 1, vec![])),
                FlowMod::Add(spec(0, 6, 2, vec![])),
            ],
        )
        .expect("ok");
        p.tables[0].rules[1].stats.hit(3, 300, 7);
        let filter = FlowFilter {
            table: Some(0),
            priority: 5,
            m: spec(0, 5, 1, vec![]).m,
            ..FlowFilter::default()
        };
        let (p2, s) = apply(
            &p,
            &[FlowMod::Modify {
                filter: filter.clone(),
                strict: true,
                actions: vec![Action::Normal],
            }],
        )
        .expect("modify");
        assert_eq!(s.modified, 1);
        let r = &p2.tables[0].rules[1];
        assert_eq!(r.spec.actions, vec![Action::Normal]);
        assert_eq!(r.stats.packets(), 3);
        let (p3, s) = apply(
            &p2,
            &[FlowMod::Delete {
                filter: FlowFilter::default(),
                strict: false,
            }],
        )
        .expect("delete all");
        assert_eq!(s.deleted, 2);
        assert_eq!(p3.n_rules(), 0);
    }

    #[test]
    fn timeouts_on_fake_clock() {
        const S: u64 = 1_000_000_000;
        let mut idle = spec(0, 1, 1, vec![]);
        idle.idle_timeout = 10;
        let mut hard = spec(0, 2, 2, vec![]);
        hard.hard_timeout = 5;
        let (p, _) = FlowProgram::default()
            .apply(&[FlowMod::Add(idle), FlowMod::Add(hard)], S, |_| {
                String::new()
            })
            .expect("ok");
        p.tables[0].rules[1].stats.hit(1, 60, 8 * S);
        assert_eq!(p.without_expired(5 * S).1, 0);
        let (p2, n) = p.without_expired(6 * S);
        assert_eq!(n, 1, "hard timeout after 5s");
        assert_eq!(p2.tables[0].rules[0].spec.priority, 1);
        assert_eq!(
            p2.without_expired(17 * S).1,
            0,
            "idle counts from the last hit"
        );
        assert_eq!(p2.without_expired(18 * S).1, 1);
    }
}
