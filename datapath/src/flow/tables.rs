//! [`FlowTables`]: the control-side handle on the flow program, and how a
//! new program reaches the PMDs.
//!
//! Publication is RCU-style: writers build a complete new
//! [`FlowProgram`] from the current one (all-or-nothing, see
//! [`FlowProgram::apply`]), store it in an [`ArcSwap`] and then bump a
//! generation number. A PMD reads the generation (one acquire load of a
//! word nobody writes in steady state) between bursts; when it changed, it
//! takes the new `Arc` and revalidates its caches. Packets in flight keep
//! using the translations of the old program, which stay alive through
//! their `Arc`s, so an update never stops a PMD and never loses a packet.
//!
//! Writers serialise on a mutex (control side only; the PMD hot path never
//! touches it). Introspection (`dump_flows`; `trace`, which runs the
//! classifier's slow path, lives in `crate::pipeline::trace`) reads a
//! snapshot and returns plain `String`s for the control socket. The
//! [`TraceOracle`] contract of that trace is defined here, below the
//! stateful features that implement it. Rule timeouts are
//! enforced by [`FlowTables::expire`], which the daemon calls periodically
//! (about once a second) with its clock.
//!
//! Thread-safety: `FlowTables` is `Clone + Send + Sync`; clones share the
//! same program.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::action::CtAction;
use super::key::FlowKey;
use super::matches::Match;
use super::program::{
    BundleError, BundleSummary, FlowFilter, FlowMod, FlowProgram, FlowSpec, Group, MissAction,
};
use super::text::{self, ParseError};
use crate::time::Nanos;

/// Errors of the control-side flow operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowTablesError {
    /// A flow or group string did not parse.
    #[error("line {line}: {source}")]
    Parse {
        /// 1-based line of the input.
        line: usize,
        /// The parse error.
        source: ParseError,
    },
    /// The bundle was rejected; nothing changed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A hex frame for `trace` was not valid hex.
    #[error("invalid packet hex for trace: {0} (expected an even number of hex digits, optionally after 0x)")]
    BadHex(String),
}

#[derive(Debug)]
struct Inner {
    program: ArcSwap<FlowProgram>,
    generation: AtomicU64,
    writer: Mutex<()>,
}

/// A flow program prepared by [`FlowTables::stage`], not yet visible.
#[derive(Debug)]
pub struct StagedFlows<'a> {
    tables: &'a FlowTables,
    _writer: std::sync::MutexGuard<'a, ()>,
    next: FlowProgram,
    summary: BundleSummary,
}

impl StagedFlows<'_> {
    /// What publishing will change.
    pub fn summary(&self) -> BundleSummary {
        self.summary
    }

    /// The prepared program (not yet in force).
    pub fn program(&self) -> &FlowProgram {
        &self.next
    }

    /// Makes the prepared program the one in force (PMDs pick it up at
    /// their next burst).
    pub fn publish(self) -> BundleSummary {
        let inner = &self.tables.inner;
        let generation = self.next.generation;
        inner.program.store(Arc::new(self.next));
        inner.generation.store(generation, Ordering::Release);
        self.summary
    }
}

/// The control-side handle on the flow program (cheap to clone).
#[derive(Debug, Clone)]
pub struct FlowTables {
    inner: Arc<Inner>,
}

impl Default for FlowTables {
    fn default() -> Self {
        Self::new()
    }
}

pub(crate) fn parse_err(line: usize) -> impl Fn(ParseError) -> FlowTablesError {
    move |source| FlowTablesError::Parse { line, source }
}

impl FlowTables {
    /// Empty tables (every table misses and drops).
    pub fn new() -> Self {
        FlowTables {
            inner: Arc::new(Inner {
                program: ArcSwap::from_pointee(FlowProgram::default()),
                generation: AtomicU64::new(0),
                writer: Mutex::new(()),
            }),
        }
    }

    /// The generation of the current program; cheap, for PMDs to poll.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The current program.
    pub fn program(&self) -> Arc<FlowProgram> {
        self.inner.program.load_full()
    }

    fn update<T, E>(
        &self,
        f: impl FnOnce(&FlowProgram) -> Result<(FlowProgram, T), E>,
    ) -> Result<T, E> {
        // A poisoned writer lock only means another writer panicked after
        // publishing or before changing anything: the program is intact.
        let _w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.inner.program.load_full();
        let (next, out) = f(&cur)?;
        let generation = next.generation;
        self.inner.program.store(Arc::new(next));
        self.inner.generation.store(generation, Ordering::Release);
        Ok(out)
    }

    /// Prepares `mods` as one bundle without publishing it: the result
    /// holds the writer lock (no other change interleaves) until
    /// [`StagedFlows::publish`] stores it or it is dropped (nothing
    /// changes). Used by `node-commit`, which publishes every part of a
    /// commit under one PMD barrier.
    ///
    /// # Errors
    /// [`BundleError`]: the first mod that does not apply.
    pub fn stage(&self, mods: &[FlowMod], now: Nanos) -> Result<StagedFlows<'_>, BundleError> {
        let w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.inner.program.load_full();
        let (next, summary) = cur.apply(mods, now, text::format_flow_mod)?;
        Ok(StagedFlows {
            tables: self,
            _writer: w,
            next,
            summary,
        })
    }

    /// Applies `mods` as one atomic bundle at time `now`.
    pub fn apply_bundle(&self, mods: &[FlowMod], now: Nanos) -> Result<BundleSummary, BundleError> {
        self.update(|p| p.apply(mods, now, text::format_flow_mod))
    }

    /// `add-flow`: adds one rule in flow text.
    pub fn add_flow(&self, flow: &str, now: Nanos) -> Result<BundleSummary, FlowTablesError> {
        let spec = text::parse_flow(flow).map_err(parse_err(1))?;
        Ok(self.apply_bundle(&[FlowMod::Add(spec)], now)?)
    }

    /// `add-flows`: adds every rule of a multi-line text as one bundle
    /// (blank lines and `#` comments are skipped).
    pub fn add_flows(&self, flows: &str, now: Nanos) -> Result<BundleSummary, FlowTablesError> {
        let (specs, groups) = parse_lines(flows)?;
        let mut mods: Vec<FlowMod> = groups.into_iter().map(FlowMod::AddGroup).collect();
        mods.extend(specs.into_iter().map(FlowMod::Add));
        Ok(self.apply_bundle(&mods, now)?)
    }

    /// `del-flows` (loose) or `del-flows --strict` with a filter in flow text.
    pub fn del_flows(
        &self,
        filter: &str,
        strict: bool,
        now: Nanos,
    ) -> Result<BundleSummary, FlowTablesError> {
        let filter = text::parse_filter(filter).map_err(parse_err(1))?;
        Ok(self.apply_bundle(&[FlowMod::Delete { filter, strict }], now)?)
    }

    /// `mod-flows` (loose) or `mod-flows --strict`: `flow` is a match (with
    /// `table=`/`priority=`/`cookie=V/M` as for `del-flows`) followed by
    /// `actions=`; the selected rules get the new actions and keep their
    /// counters.
    pub fn mod_flows(
        &self,
        flow: &str,
        strict: bool,
        now: Nanos,
    ) -> Result<BundleSummary, FlowTablesError> {
        let (filter, actions) = text::parse_mod(flow).map_err(parse_err(1))?;
        Ok(self.apply_bundle(
            &[FlowMod::Modify {
                filter,
                strict,
                actions,
            }],
            now,
        )?)
    }

    /// `del-groups group_id=N`.
    pub fn del_group(&self, id: u32, now: Nanos) -> Result<BundleSummary, BundleError> {
        self.apply_bundle(&[FlowMod::DeleteGroup(id)], now)
    }

    /// `add-group`.
    pub fn add_group(&self, group: &str, now: Nanos) -> Result<BundleSummary, FlowTablesError> {
        let g = text::parse_group(group).map_err(parse_err(1))?;
        Ok(self.apply_bundle(&[FlowMod::AddGroup(g)], now)?)
    }

    /// Sets a table's miss behaviour.
    pub fn set_table_miss(
        &self,
        table: u8,
        miss: MissAction,
        now: Nanos,
    ) -> Result<(), BundleError> {
        self.apply_bundle(&[FlowMod::SetMiss { table, miss }], now)
            .map(|_| ())
    }

    /// `dump-flows [filter]`: one line per rule selected (loosely) by the
    /// filter, in table then priority order.
    pub fn dump_flows(&self, filter: &str, now: Nanos) -> Result<String, FlowTablesError> {
        Ok(self
            .dump_entries(filter, now)?
            .iter()
            .map(|e| e.line() + "\n")
            .collect())
    }

    /// The rules selected (loosely) by `filter` with their counters, in
    /// table then priority order.
    pub fn dump_entries(
        &self,
        filter: &str,
        now: Nanos,
    ) -> Result<Vec<sluice_api::flows::FlowEntry>, FlowTablesError> {
        let f = if filter.trim().is_empty() {
            FlowFilter::default()
        } else {
            text::parse_filter(filter).map_err(parse_err(1))?
        };
        let p = self.program();
        Ok(p.rules()
            .filter(|r| {
                let s = &r.spec;
                f.table.is_none_or(|t| t == s.table)
                    && (s.cookie & f.cookie_mask) == (f.cookie & f.cookie_mask)
                    && s.m.is_within(&f.m)
            })
            .map(|r| text::flow_entry(r, now))
            .collect())
    }

    /// The groups in `add-group` syntax.
    pub fn group_texts(&self) -> Vec<String> {
        self.program()
            .groups
            .values()
            .map(|g| text::format_group(g))
            .collect()
    }

    /// `dump-groups`.
    pub fn dump_groups(&self) -> String {
        let p = self.program();
        let mut out = String::new();
        for g in p.groups.values() {
            let _ = writeln!(out, " {}", text::format_group(g));
        }
        out
    }

    /// `replace-flows`: makes the program equal to `flows` (flow and
    /// `group_id=` lines), changing only what differs, as one bundle.
    /// Rules whose only change is their actions are modified in place and
    /// keep their counters.
    pub fn replace_flows(&self, flows: &str, now: Nanos) -> Result<BundleSummary, FlowTablesError> {
        let (specs, groups) = parse_lines(flows)?;
        self.update(|cur| {
            let mods = diff(cur, specs, groups);
            cur.apply(&mods, now, text::format_flow_mod)
                .map_err(FlowTablesError::Bundle)
        })
    }

    /// Removes rules whose idle or hard timeout has passed at `now`;
    /// returns how many. Publishes a new program only when some expired.
    pub fn expire(&self, now: Nanos) -> usize {
        if !self.program().rules().any(|r| r.expired(now)) {
            return 0;
        }
        self.update(|p| Ok::<_, std::convert::Infallible>(p.without_expired(now)))
            .unwrap_or_else(|e| match e {})
    }
}

/// What a `ct` action decides for a traced packet.
#[derive(Debug, Clone, Copy)]
pub enum CtTrace {
    /// Processing goes on with this key (`ct_*` fields set, NAT applied).
    Continue(FlowKey),
    /// The packet ends here (dropped or answered), as explained.
    Stop,
}

/// The stateful features `trace` consults, without changing their state
/// (implemented by the conntrack for `ct` and Service decisions).
pub trait TraceOracle: Send + Sync {
    /// Explains into `out` what `ct` would do to a packet with `key`, and
    /// returns the key the following actions and tables see.
    fn conntrack(&self, ct: &CtAction, key: &FlowKey, out: &mut String) -> CtTrace;
}

fn parse_lines(flows: &str) -> Result<(Vec<FlowSpec>, Vec<Group>), FlowTablesError> {
    let mut specs = Vec::new();
    let mut groups = Vec::new();
    for (i, line) in flows.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with("group_id=") {
            groups.push(text::parse_group(l).map_err(parse_err(i + 1))?);
        } else {
            specs.push(text::parse_flow(l).map_err(parse_err(i + 1))?);
        }
    }
    Ok((specs, groups))
}

/// The bundle that turns `cur` into exactly `specs` + `groups`.
fn diff(cur: &FlowProgram, specs: Vec<FlowSpec>, groups: Vec<Group>) -> Vec<FlowMod> {
    let mut mods = Vec::new();
    let want_groups: HashMap<u32, Group> = groups.into_iter().map(|g| (g.id, g)).collect();
    for g in want_groups.values() {
        if cur.groups.get(&g.id).map(|c| **c != *g).unwrap_or(true) {
            mods.push(FlowMod::AddGroup(g.clone()));
        }
    }
    let mut want: HashMap<(u8, u16, Match), FlowSpec> = HashMap::new();
    for s in specs {
        want.insert((s.table, s.priority, s.m.clone()), s);
    }
    for r in cur.rules() {
        let s = &r.spec;
        let strict = FlowFilter {
            table: Some(s.table),
            priority: s.priority,
            m: s.m.clone(),
            cookie: 0,
            cookie_mask: 0,
        };
        match want.remove(&(s.table, s.priority, s.m.clone())) {
            None => mods.push(FlowMod::Delete {
                filter: strict,
                strict: true,
            }),
            Some(w) if w == *s => {}
            Some(w) => {
                let mut same_but_actions = w.clone();
                same_but_actions.actions = s.actions.clone();
                if same_but_actions == *s {
                    mods.push(FlowMod::Modify {
                        filter: strict,
                        strict: true,
                        actions: w.actions,
                    });
                } else {
                    mods.push(FlowMod::Add(w));
                }
            }
        }
    }
    let mut added: Vec<FlowSpec> = want.into_values().collect();
    added.sort_by_key(|s| (s.table, std::cmp::Reverse(s.priority)));
    mods.extend(added.into_iter().map(FlowMod::Add));
    for id in cur.groups.keys() {
        if !want_groups.contains_key(id) {
            mods.push(FlowMod::DeleteGroup(*id));
        }
    }
    mods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bumps_generation_and_dump_filters() {
        let t = FlowTables::new();
        assert_eq!(t.generation(), 0);
        t.add_flows(
            "table=0,priority=10,ip,nw_dst=10.0.0.0/8 actions=output:1\n# comment\ntable=1,priority=5,arp actions=NORMAL\n",
            1_000_000_000,
        )
        .expect("add");
        assert_eq!(t.generation(), 1);
        let all = t.dump_flows("", 3_500_000_000).expect("dump");
        assert_eq!(all.lines().count(), 2);
        assert!(all.starts_with(" cookie=0x0, duration=2.500s, table=0, n_packets=0, n_bytes=0, idle_age=2, priority=10,ip,nw_dst=10.0.0.0/8 actions=output:1\n"), "{all}");
        let one = t.dump_flows("table=1", 0).expect("dump");
        assert!(one.contains("arp actions=NORMAL"), "{one}");
        assert_eq!(one.lines().count(), 1);
        let e = t
            .add_flow("ip,nw_dst=10.0.0.300 actions=drop", 0)
            .expect_err("bad");
        assert_eq!(e.to_string(), "line 1: nw_dst=10.0.0.300: invalid IPv4 address (expected a.b.c.d, a.b.c.d/N or a.b.c.d/w.x.y.z) at column 4");
        assert_eq!(t.generation(), 1, "a failed add publishes nothing");
    }

    #[test]
    fn replace_flows_diffs_and_keeps_counters() {
        let t = FlowTables::new();
        t.add_flows(
            "priority=1,ip actions=output:1\npriority=2,arp actions=output:2\npriority=3,tcp actions=output:3",
            0,
        )
        .expect("add");
        let p = t.program();
        let ip_rule = p
            .rules()
            .find(|r| r.spec.priority == 1)
            .expect("rule")
            .clone();
        ip_rule.stats.hit(4, 400, 1);
        let sum = t
            .replace_flows(
                "priority=1,ip actions=output:9\npriority=3,tcp actions=output:3\npriority=4,udp actions=drop\n",
                5,
            )
            .expect("replace");
        assert_eq!(
            sum,
            BundleSummary {
                added: 1,
                modified: 1,
                deleted: 1,
                groups: 0
            }
        );
        let p = t.program();
        let r = p.rules().find(|r| r.spec.priority == 1).expect("rule");
        assert_eq!(r.stats.packets(), 4, "modify keeps counters");
        assert_eq!(t.replace_flows("priority=1,ip actions=output:9\npriority=3,tcp actions=output:3\npriority=4,udp actions=drop\n", 6).expect("noop"), BundleSummary::default());
        let e = t
            .replace_flows(
                "priority=1,ip actions=output:9\nip,nw_dst=1.2.3 actions=drop",
                7,
            )
            .expect_err("parse");
        assert!(matches!(e, FlowTablesError::Parse { line: 2, .. }), "{e}");
    }

    #[test]
    fn expire_publishes_only_when_needed() {
        let t = FlowTables::new();
        t.add_flow("hard_timeout=2,priority=1 actions=drop", 0)
            .expect("add");
        let g = t.generation();
        assert_eq!(t.expire(1_999_999_999), 0);
        assert_eq!(t.generation(), g);
        assert_eq!(t.expire(2_000_000_000), 1);
        assert_eq!(t.program().n_rules(), 0);
        assert_eq!(t.generation(), g + 1);
    }

    #[test]
    fn handle_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<FlowTables>();
    }

    #[test]
    fn mod_flows_loose_and_strict() {
        let t = FlowTables::new();
        t.add_flows(
            "priority=1,ip actions=output:1\npriority=2,tcp actions=output:2",
            0,
        )
        .expect("add");
        let sum = t.mod_flows("ip actions=output:7", false, 0).expect("loose");
        assert_eq!(sum.modified, 2, "tcp lies within ip");
        let sum = t
            .mod_flows("priority=2,tcp actions=output:8", true, 0)
            .expect("strict");
        assert_eq!(sum.modified, 1);
        let dump = t.dump_flows("", 0).expect("dump");
        assert!(dump.contains("priority=2,tcp actions=output:8"), "{dump}");
        assert!(dump.contains("priority=1,ip actions=output:7"), "{dump}");
        let e = t.mod_flows("ip", false, 0).expect_err("needs actions");
        assert!(e.to_string().contains("missing `actions=`"), "{e}");
        let e = t.del_group(4, 0).expect_err("no group");
        assert!(e.to_string().contains("group 4 does not exist"), "{e}");
    }
}
