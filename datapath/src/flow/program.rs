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
//! here gives that table a fresh, empty slot ([`Table::rules_changed`]), so
//! a derived index is never used with rules it was not built from.
//!
//! Thread-safety: a program is `Send + Sync` and read concurrently by every
//! PMD; the only mutable state is [`RuleStats`], updated with relaxed
//! atomics from any thread, and the derived-index slots, written once.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::action::{Action, GroupType};
use super::key::Field;
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

/// One table: rules in priority order plus its miss behaviour.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Rules, highest priority first. Whoever changes them must call
    /// [`Table::rules_changed`].
    pub rules: Vec<Arc<Rule>>,
    /// Table-miss behaviour.
    pub miss: MissAction,
    /// The index derived from `rules` (see the module documentation).
    pub derived: DerivedSlot,
}

impl Table {
    /// Forgets the derived index: call after any change to `rules`.
    pub fn rules_changed(&mut self) {
        self.derived = DerivedSlot::default();
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
    /// Tables 0–254.
    pub tables: Vec<Table>,
    /// Groups by id.
    pub groups: BTreeMap<u32, Arc<Group>>,
    /// Publication number, increasing; caches built from an older program
    /// are stale.
    pub generation: u64,
}

impl Default for FlowProgram {
    fn default() -> Self {
        FlowProgram {
            // One slot per table (`vec![t; n]` would share one).
            tables: (0..N_TABLES).map(|_| Table::default()).collect(),
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

/// A new rule for `spec`, after the checks an add makes.
fn new_rule(spec: &FlowSpec, now: Nanos) -> Result<Arc<Rule>, FlowModError> {
    if usize::from(spec.table) >= N_TABLES {
        return Err(FlowModError::NoSuchTable(u16::from(spec.table)));
    }
    spec.m.check_prereqs()?;
    check_actions(spec.table, &spec.actions)?;
    Ok(Arc::new(Rule {
        spec: spec.clone(),
        created: now,
        stats: Arc::new(RuleStats::default()),
    }))
}

impl FlowProgram {
    /// Iterates over every rule, table by table.
    pub fn rules(&self) -> impl Iterator<Item = &Arc<Rule>> {
        self.tables.iter().flat_map(|t| t.rules.iter())
    }

    /// Number of rules.
    pub fn n_rules(&self) -> usize {
        self.tables.iter().map(|t| t.rules.len()).sum()
    }

    /// Applies `mods` in order to a copy of this program; all or nothing.
    /// `describe` prints a mod for the error message.
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
        // Adds are collected and merged into their tables in one pass when
        // a different kind of mod comes or the bundle ends: a rule-by-rule
        // insert costs a scan for an equal (priority, match) and a shift of
        // the table, which made large bundles quadratic.
        let mut adds: Vec<Arc<Rule>> = Vec::new();
        for (i, fm) in mods.iter().enumerate() {
            if let FlowMod::Add(spec) = fm {
                adds.push(new_rule(spec, now).map_err(|e| fail(i, e))?);
                sum.added += 1;
                continue;
            }
            p.merge_adds(std::mem::take(&mut adds));
            p.apply_one(fm, now, &mut sum).map_err(|e| fail(i, e))?;
        }
        p.merge_adds(adds);
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

    /// Adds `adds` (in bundle order) to their tables with the semantics of
    /// adding them one by one: a rule with the same table, priority and
    /// match replaces the old one in place (counters reset); otherwise it
    /// goes after every rule of higher or equal priority. Cost: one hash
    /// index and one merge per table touched, O(n + k log k).
    fn merge_adds(&mut self, adds: Vec<Arc<Rule>>) {
        if adds.is_empty() {
            return;
        }
        let mut by_table: Vec<Vec<Arc<Rule>>> = vec![Vec::new(); N_TABLES];
        for r in adds {
            by_table[usize::from(r.spec.table)].push(r);
        }
        for (t, new) in by_table.into_iter().enumerate() {
            if new.is_empty() {
                continue;
            }
            self.tables[t].rules_changed();
            let rules = &mut self.tables[t].rules;
            // Where each (priority, match) already is: old rules, then the
            // new ones in order (a later add replaces an earlier one).
            let mut at: HashMap<(u16, Match), (bool, usize)> =
                HashMap::with_capacity(rules.len() + new.len());
            for (i, r) in rules.iter().enumerate() {
                at.insert((r.spec.priority, r.spec.m), (true, i));
            }
            let mut fresh: Vec<Arc<Rule>> = Vec::with_capacity(new.len());
            for r in new {
                match at.get(&(r.spec.priority, r.spec.m)) {
                    Some(&(true, i)) => rules[i] = r,
                    Some(&(false, i)) => fresh[i] = r,
                    None => {
                        at.insert((r.spec.priority, r.spec.m), (false, fresh.len()));
                        fresh.push(r);
                    }
                }
            }
            if fresh.is_empty() {
                continue;
            }
            // Highest priority first; ties keep their order (old ones first).
            fresh.sort_by_key(|r| std::cmp::Reverse(r.spec.priority));
            let old = std::mem::take(rules);
            let mut merged = Vec::with_capacity(old.len() + fresh.len());
            let mut fresh = fresh.into_iter().peekable();
            for r in old {
                while fresh
                    .peek()
                    .is_some_and(|f| f.spec.priority > r.spec.priority)
                {
                    merged.extend(fresh.next());
                }
                merged.push(r);
            }
            merged.extend(fresh);
            *rules = merged;
        }
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
                self.merge_adds(vec![rule]);
                sum.added += 1;
            }
            FlowMod::Modify {
                filter,
                strict,
                actions,
            } => {
                for t in 0..N_TABLES {
                    let mut changed = false;
                    for r in self.tables[t].rules.iter_mut() {
                        if filter.selects(&r.spec, *strict) {
                            changed = true;
                            check_actions(r.spec.table, actions)?;
                            let mut spec = r.spec.clone();
                            spec.actions = actions.clone();
                            *r = Arc::new(Rule {
                                spec,
                                created: r.created,
                                stats: r.stats.clone(),
                            });
                            sum.modified += 1;
                        }
                    }
                    if changed {
                        self.tables[t].rules_changed();
                    }
                }
            }
            FlowMod::Delete { filter, strict } => {
                for t in self.tables.iter_mut() {
                    let before = t.rules.len();
                    t.rules.retain(|r| !filter.selects(&r.spec, *strict));
                    if t.rules.len() != before {
                        t.rules_changed();
                    }
                    sum.deleted += before - t.rules.len();
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
                self.tables[usize::from(*table)].miss = *miss;
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
        for t in p.tables.iter_mut() {
            let before = t.rules.len();
            t.rules.retain(|r| !r.expired(now));
            if t.rules.len() != before {
                t.rules_changed();
            }
            n += before - t.rules.len();
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
        /// A bundle's adds, merged per table, leave the tables exactly as
        /// adding the rules one at a time does (the reference below is the
        /// straightforward scan-and-insert), deletes interleaved included.
        #[test]
        fn merged_adds_equal_one_by_one_adds(
            ops in proptest::collection::vec((0u8..3, 0u16..4, 0u16..5, 0u16..50, 0u8..8), 0..60)
        ) {
            let mut mods = Vec::new();
            // Reference tables: (priority, in_port, output) in order.
            let mut reference: Vec<Vec<(u16, u16, u16)>> = vec![Vec::new(); 3];
            for (table, prio, port, out, kind) in ops {
                if kind == 0 {
                    // Strict delete of (table, priority, in_port).
                    let mut m = Match::ANY;
                    m.set_exact(Field::InPort, u128::from(port));
                    mods.push(FlowMod::Delete {
                        filter: FlowFilter {
                            table: Some(table),
                            priority: prio,
                            m,
                            cookie: 0,
                            cookie_mask: 0,
                        },
                        strict: true,
                    });
                    reference[usize::from(table)].retain(|r| (r.0, r.1) != (prio, port));
                    continue;
                }
                mods.push(FlowMod::Add(spec(table, prio, port, vec![Action::Output(PortNo(out))])));
                let rules = &mut reference[usize::from(table)];
                if let Some(r) = rules.iter_mut().find(|r| (r.0, r.1) == (prio, port)) {
                    r.2 = out;
                } else {
                    let pos = rules.partition_point(|r| r.0 >= prio);
                    rules.insert(pos, (prio, port, out));
                }
            }
            let (p, _) = apply(&FlowProgram::default(), &mods).expect("bundle");
            for (t, want) in reference.iter().enumerate() {
                let got: Vec<(u16, u16, u16)> = p.tables[t]
                    .rules
                    .iter()
                    .map(|r| {
                        let out = match r.spec.actions.first() {
                            Some(Action::Output(o)) => o.0,
                            other => panic!("unexpected action {other:?}"),
                        };
                        (r.spec.priority, r.spec.m.get(Field::InPort).0 as u16, out)
                    })
                    .collect();
                proptest::prop_assert_eq!(&got, want, "table {}", t);
            }
        }
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
