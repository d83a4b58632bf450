//! The slow path: walks the full flow program for one packet key and
//! composes the datapath actions and the megaflow mask.
//!
//! Translation follows the packet through tables, `goto_table`, `resubmit`
//! and groups, applying `set_field`s to a copy of the key so later tables
//! see the rewritten packet. It records two things the caches need:
//!
//! - the **megaflow mask**: the union of the mask of every rule it
//!   *examined* — the rule that matched and every higher-priority rule that
//!   was checked and did not match (a packet differing in those bits might
//!   have matched one of them) — plus every field a decision depended on
//!   (`nw_ttl` for `dec_ttl`, the hash fields of a `select` group, the
//!   protocol fields behind a header rewrite). Every packet equal to this
//!   packet under the mask gets the same actions, so the result is safe to
//!   cache for the whole masked class.
//! - the **datapath actions** ([`DpAction`]): a flat list with no tables or
//!   groups left, plus the counters of every rule that matched, so cache
//!   hits can count per rule.
//!
//! Depth: `goto_table` and `resubmit` nest at most [`MAX_DEPTH`] deep; past
//! that, translation stops with `Drop(ResubmitLimit)` (a loop in the
//! program costs one bounded walk, never a hang).
//!
//! Cost: linear in the rules examined, except in tables of one shape
//! (exact match, longest prefix), which are looked up through their
//! compiled index (`classifier::special`): one probe per prefix length,
//! adding the same megaflow mask as the walk. This runs once per megaflow
//! miss.
//! Thread-safety: pure over a shared `&FlowProgram`; any thread.

use std::fmt::Write as _;
use std::sync::Arc;

use super::special;
use crate::drop::DropReason;
use crate::flow::action::{header_present, Action, CtAction, DpAction, GroupType};
use crate::flow::key::{ethertype, frag, Field, FlowKey};
use crate::flow::matches::Match;
use crate::flow::program::{FlowProgram, MissAction, RuleStats, N_TABLES};
use crate::flow::text::{format_actions, format_dp_actions, format_match};
use crate::packet::PortNo;

/// Maximum `goto_table`/`resubmit` nesting.
pub const MAX_DEPTH: usize = 64;

/// Maximum table lookups in one translation (OVS `MAX_RESUBMITS`): bounds
/// programs that fan out (`resubmit(,1),resubmit(,1)` in every table),
/// whose walk would otherwise grow exponentially within the depth limit.
pub const MAX_LOOKUPS: usize = 4096;

/// The cached outcome of translating one megaflow.
#[derive(Debug, Default)]
pub struct Xlate {
    /// What to do with every packet of the megaflow (shared: the flow
    /// pipeline gives equal lists of different megaflows one copy, so
    /// thousands of flows with the same actions read one hot list).
    pub actions: Arc<[DpAction]>,
    /// Counters of the rules that matched, bumped on every cache hit.
    pub rules: Box<[Arc<RuleStats>]>,
    /// No action of `actions` recirculates (`ct(table=...)`, `tnl_pop`):
    /// a packet is done after one pass, so the pipeline may run the
    /// actions of a batch of same-flow packets from one lookup. False
    /// (the default) is always safe.
    pub single_pass: bool,
}

impl Xlate {
    /// A translation of `actions` counting `rules`.
    pub fn new(actions: Box<[DpAction]>, rules: Box<[Arc<RuleStats>]>) -> Xlate {
        let single_pass = !actions.iter().any(|a| match a {
            DpAction::Ct(ct) => ct.table.is_some(),
            DpAction::TunnelPop => true,
            _ => false,
        });
        Xlate {
            actions: actions.into(),
            rules,
            single_pass,
        }
    }
}

/// Result of a slow-path translation.
#[derive(Debug)]
pub struct Translation {
    /// Actions and rule counters.
    pub xlate: Arc<Xlate>,
    /// The megaflow mask.
    pub mask: FlowKey,
}

/// Fields hashed by a `select` group that names none (the 5-tuple).
const DEFAULT_HASH_FIELDS: [Field; 8] = [
    Field::DlType,
    Field::NwSrc,
    Field::NwDst,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::NwProto,
    Field::TpSrc,
    Field::TpDst,
];

/// Appends a trace line; the arguments are evaluated only when tracing.
macro_rules! note {
    ($cx:expr, $($arg:tt)*) => {
        if $cx.trace.is_some() {
            $cx.write_note(format_args!($($arg)*));
        }
    };
}

struct Ctx<'a> {
    prog: &'a FlowProgram,
    key: FlowKey,
    mask: FlowKey,
    actions: Vec<DpAction>,
    rules: Vec<Arc<RuleStats>>,
    depth: usize,
    lookups: usize,
    stop: bool,
    trace: Option<&'a mut String>,
    /// Whether specialised tables are looked up through their index
    /// (always, except in the tests that compare it with the walk).
    special: bool,
}

impl Ctx<'_> {
    fn unwildcard(&mut self, field: Field) {
        self.mask.or_assign(&FlowKey::field_mask(field));
    }

    fn write_note(&mut self, args: std::fmt::Arguments<'_>) {
        let indent = self.depth.saturating_sub(1) * 4;
        if let Some(t) = self.trace.as_deref_mut() {
            let _ = writeln!(t, "{:indent$}{args}", "");
        }
    }

    fn finish_with(&mut self, reason: DropReason) {
        self.actions.push(DpAction::Drop(reason));
        self.stop = true;
    }

    /// Looks the key up in `table` and runs the matching rule's actions.
    /// A miss in a table reached by `resubmit` does nothing (the caller's
    /// remaining actions continue, as in OVS); elsewhere it follows the
    /// table's miss behaviour.
    fn table(&mut self, table: u8, resubmit: bool) {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            note!(self,
                ">>>> more than {MAX_LOOKUPS} table lookups: dropping (resubmit fan-out in the flow program?) <<<<"
            );
            self.finish_with(DropReason::ResubmitLimit);
            return;
        }
        if self.depth >= MAX_DEPTH {
            note!(self,
                ">>>> resubmit depth {MAX_DEPTH} exceeded: dropping (loop in the flow program?) <<<<"
            );
            self.finish_with(DropReason::ResubmitLimit);
            return;
        }
        let prog = self.prog;
        let Some(t) = prog.tables.get(usize::from(table)) else {
            return;
        };
        let mut hit = None;
        match special::of(t).filter(|s| self.special && s.fits(t.rules.len())) {
            // One probe per prefix length; the same mask as the walk.
            Some(s) => {
                self.mask.or_assign(s.mask());
                hit = s.lookup(&self.key);
            }
            None => {
                for r in &t.rules {
                    r.spec.m.or_mask_into(&mut self.mask);
                    if r.spec.m.matches(&self.key) {
                        hit = Some(r);
                        break;
                    }
                }
            }
        }
        self.depth += 1;
        match hit {
            Some(r) => {
                note!(
                    self,
                    "{table}. {}{}priority {}, cookie {:#x}",
                    format_match(&r.spec.m),
                    if r.spec.m == Match::ANY { "" } else { ", " },
                    r.spec.priority,
                    r.spec.cookie
                );
                self.rules.push(r.stats.clone());
                if r.spec.actions.is_empty() {
                    note!(self, "    drop");
                    self.finish_with(DropReason::FlowDrop);
                } else {
                    self.actions_of(&r.spec.actions, table);
                }
            }
            None if resubmit => {
                note!(self, "{table}. No match. (resubmit: continuing)");
            }
            None => {
                note!(self, "{table}. No match. (table-miss: {:?})", t.miss);
                match t.miss {
                    MissAction::Drop => self.finish_with(DropReason::TableMiss),
                    MissAction::Controller => {
                        self.actions.push(DpAction::Controller { max_len: 0 });
                        self.stop = true;
                    }
                    MissAction::Continue if usize::from(table) + 1 < N_TABLES => {
                        self.table(table + 1, false)
                    }
                    MissAction::Continue => self.finish_with(DropReason::TableMiss),
                }
            }
        }
        self.depth -= 1;
    }

    fn actions_of(&mut self, actions: &[Action], table: u8) {
        for a in actions {
            if self.stop {
                return;
            }
            note!(self, "    {}", format_actions(std::slice::from_ref(a)));
            match a {
                // output:CONTROLLER goes through the packet-in rate limit.
                Action::Output(PortNo::CONTROLLER) => {
                    self.actions.push(DpAction::Controller { max_len: 0 })
                }
                Action::Output(p) => self.actions.push(DpAction::Output(*p)),
                Action::Local => self.actions.push(DpAction::Output(PortNo::LOCAL)),
                Action::InPort => {
                    self.unwildcard(Field::InPort);
                    let p = self.key.in_port();
                    self.actions.push(DpAction::Output(p));
                }
                Action::Drop => self.finish_with(DropReason::FlowDrop),
                Action::Controller { max_len } => self
                    .actions
                    .push(DpAction::Controller { max_len: *max_len }),
                Action::Normal => self.actions.push(DpAction::Normal),
                Action::GotoTable(t) => {
                    self.table(*t, false);
                    return;
                }
                Action::Resubmit { port, table: t } => {
                    let saved = self.key.get(Field::InPort);
                    if let Some(p) = port {
                        self.key.set(Field::InPort, u128::from(p.0));
                    }
                    self.table(t.unwrap_or(table), true);
                    self.key.set(Field::InPort, saved);
                }
                Action::SetField { field, value, mask } => {
                    self.set_field(*field, u128::from(*value), u128::from(*mask))
                }
                Action::DecTtl => {
                    self.unwildcard(Field::DlType);
                    let ty = self.key.dl_type();
                    if ty != ethertype::IPV4 && ty != ethertype::IPV6 {
                        note!(self, "    (not IP: dec_ttl does nothing)");
                        continue;
                    }
                    self.unwildcard(Field::NwTtl);
                    let ttl = self.key.get(Field::NwTtl);
                    if ttl <= 1 {
                        note!(self, "    >>>> TTL {ttl} expires: dropping <<<<");
                        self.finish_with(DropReason::TtlExceeded);
                    } else {
                        self.set_field(Field::NwTtl, ttl - 1, 0xff);
                    }
                }
                Action::Group(id) => self.group(*id, table),
                Action::Ct(ct) => {
                    self.actions.push(DpAction::Ct(CtAction::clone(ct)));
                    if ct.table.is_some() {
                        note!(self, "    (recirculates after conntrack)");
                        self.stop = true;
                    }
                }
                Action::TunnelPush => self.actions.push(DpAction::TunnelPush),
                Action::TunnelPop => {
                    self.actions.push(DpAction::TunnelPop);
                    note!(self, "    (recirculates after decapsulation)");
                    self.stop = true;
                }
            }
        }
    }

    fn set_field(&mut self, field: Field, value: u128, mask: u128) {
        // Whether the header exists, and how its checksum is fixed, depends
        // on the protocol fields: they become part of the megaflow.
        match field {
            Field::NwSrc | Field::NwDst | Field::NwTtl => {
                self.unwildcard(Field::DlType);
                self.unwildcard(Field::NwProto);
            }
            Field::TpSrc | Field::TpDst => {
                self.unwildcard(Field::DlType);
                self.unwildcard(Field::NwProto);
                self.mask.set_masked(
                    Field::IpFrag,
                    u128::from(frag::LATER),
                    u128::from(frag::LATER),
                );
            }
            _ => {}
        }
        if !header_present(&self.key, field) {
            note!(self, "    (packet has no {field}: skipped)");
            return;
        }
        self.key.set_masked(field, value, mask);
        self.actions.push(DpAction::Set { field, value, mask });
    }

    fn group(&mut self, id: u32, table: u8) {
        // Buckets cannot name groups (the bundle rejects it), but a
        // programmatic program might: bound the nesting like resubmit.
        if self.depth >= MAX_DEPTH {
            self.finish_with(DropReason::ResubmitLimit);
            return;
        }
        self.depth += 1;
        self.group_inner(id, table);
        self.depth -= 1;
    }

    fn group_inner(&mut self, id: u32, table: u8) {
        let prog = self.prog;
        let Some(g) = prog.groups.get(&id) else {
            self.finish_with(DropReason::FlowDrop);
            return;
        };
        match g.kind {
            GroupType::Select => {
                let fields: &[Field] = if g.fields.is_empty() {
                    &DEFAULT_HASH_FIELDS
                } else {
                    &g.fields
                };
                let mut fmask = FlowKey::ZERO;
                for &f in fields {
                    fmask.or_assign(&FlowKey::field_mask(f));
                }
                self.mask.or_assign(&fmask);
                let total: u64 = g.buckets.iter().map(|b| u64::from(b.weight)).sum();
                if total == 0 {
                    note!(self, "    group {id}: no live bucket");
                    self.finish_with(DropReason::FlowDrop);
                    return;
                }
                let mut pick = self.key.hash_masked(&fmask) % total;
                for (i, b) in g.buckets.iter().enumerate() {
                    if pick < u64::from(b.weight) {
                        note!(self, "    group {id}: bucket {i}");
                        self.actions_of(&b.actions, table);
                        return;
                    }
                    pick -= u64::from(b.weight);
                }
            }
            GroupType::All => {
                for (i, b) in g.buckets.iter().enumerate() {
                    note!(self, "    group {id}: bucket {i} (copy)");
                    let saved_key = self.key;
                    let outer = std::mem::take(&mut self.actions);
                    self.actions_of(&b.actions, table);
                    let inner = std::mem::replace(&mut self.actions, outer);
                    self.key = saved_key;
                    self.stop = false;
                    self.actions.push(DpAction::Clone(inner.into_boxed_slice()));
                }
            }
        }
    }
}

/// The bits of a key that translations through `prog` look at, as far as
/// the rules tell: the match mask of every rule of every table, the
/// recirculation id, and the fields actions commonly decide on (`in_port`,
/// `dl_type`, `nw_proto`, `nw_ttl`). Any other bit a translation's mask
/// holds (a select group's hash fields, a partial `set_field`) is found
/// when that translation happens: a cache keyed on this mask's words must
/// widen it by every [`Translation::mask`] it caches (the flow pipeline
/// does). Linear in the number of rules; runs once per program.
pub fn live_mask(prog: &FlowProgram) -> FlowKey {
    let mut m = FlowKey::ZERO;
    for f in [
        Field::RecircId,
        Field::InPort,
        Field::DlType,
        Field::NwProto,
        Field::NwTtl,
    ] {
        m.or_assign(&FlowKey::field_mask(f));
    }
    // Kept per table by mask, so a PMD's reload does not read every rule.
    m.or_assign(&prog.rule_mask_union());
    m
}

/// Translates `key` through `prog`. When `trace` is given, a human-readable
/// account of every table, rule and action is appended to it.
pub fn translate(prog: &FlowProgram, key: &FlowKey, trace: Option<&mut String>) -> Translation {
    translate_with(prog, key, trace, true)
}

/// [`translate`] walking every table rule by rule (the reference the
/// specialised lookups are tested against).
#[cfg(test)]
pub(crate) fn translate_generic(prog: &FlowProgram, key: &FlowKey) -> Translation {
    translate_with(prog, key, None, false)
}

fn translate_with(
    prog: &FlowProgram,
    key: &FlowKey,
    trace: Option<&mut String>,
    special: bool,
) -> Translation {
    let start = key.get(Field::RecircId) as usize;
    let mut cx = Ctx {
        prog,
        key: *key,
        mask: FlowKey::ZERO,
        actions: Vec::new(),
        rules: Vec::new(),
        depth: 0,
        lookups: 0,
        stop: false,
        trace,
        special,
    };
    // The recirculation id always takes part in the lookup: a recirculated
    // packet must never hit an ingress megaflow.
    cx.unwildcard(Field::RecircId);
    let table = if start == 0 { 0 } else { (start - 1) as u8 };
    cx.table(table, false);
    let mask = cx.mask;
    let actions = cx.actions;
    if let Some(t) = cx.trace {
        let _ = writeln!(t, "\nFinal flow: {}", format_key(&cx.key));
        let _ = writeln!(
            t,
            "Megaflow: {}",
            format_match(&Match::from_parts(key, &mask))
        );
        let _ = writeln!(t, "Datapath actions: {}", format_dp_actions(&actions));
    }
    Translation {
        xlate: Arc::new(Xlate::new(
            actions.into_boxed_slice(),
            cx.rules.into_boxed_slice(),
        )),
        mask,
    }
}

/// Prints a packet key as flow text: every non-zero field, plus in_port
/// and dl_type.
pub fn format_key(key: &FlowKey) -> String {
    let mut m = Match::ANY;
    for &f in Field::ALL {
        let v = key.get(f);
        if v != 0 || f == Field::InPort || f == Field::DlType {
            m.set_exact(f, v);
        }
    }
    format_match(&m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::{extract, testpkt::tcp4};
    use crate::flow::program::FlowMod;
    use crate::flow::text::{parse_flow, parse_group};

    pub(crate) fn program(flows: &[&str], groups: &[&str]) -> FlowProgram {
        let mut mods: Vec<FlowMod> = groups
            .iter()
            .map(|g| FlowMod::AddGroup(parse_group(g).expect("group")))
            .collect();
        mods.extend(
            flows
                .iter()
                .map(|f| FlowMod::Add(parse_flow(f).expect("flow"))),
        );
        FlowProgram::default()
            .apply(&mods, 0, |_| String::new())
            .expect("bundle")
            .0
    }

    fn pkt(dst: [u8; 4], dport: u16, ttl: u8) -> FlowKey {
        extract(&tcp4([10, 0, 0, 1], dst, 1000, dport, ttl), PortNo(1))
    }

    #[test]
    fn priorities_and_examined_masks() {
        let p = program(
            &[
                "priority=200,tcp,tp_dst=22 actions=drop",
                "priority=100,ip,nw_dst=10.0.0.0/24 actions=output:2",
                "priority=0 actions=output:3",
            ],
            &[],
        );
        let t = translate(&p, &pkt([10, 0, 0, 5], 80, 64), None);
        assert_eq!(&*t.xlate.actions, &[DpAction::Output(PortNo(2))]);
        // The ssh rule was examined and missed: its tp_dst is in the mask.
        assert_eq!(t.mask.get(Field::TpDst), 0xffff);
        assert_eq!(t.mask.get(Field::NwDst), 0xffff_ff00);
        assert_eq!(t.mask.get(Field::NwSrc), 0, "no rule looked at nw_src");
        let t = translate(&p, &pkt([10, 0, 0, 5], 22, 64), None);
        assert_eq!(&*t.xlate.actions, &[DpAction::Drop(DropReason::FlowDrop)]);
        assert_eq!(t.mask.get(Field::NwDst), 0, "lower rules were not examined");
        let t = translate(&p, &pkt([10, 0, 1, 5], 80, 64), None);
        assert_eq!(&*t.xlate.actions, &[DpAction::Output(PortNo(3))]);
    }

    #[test]
    fn goto_resubmit_and_loop_limit() {
        let p = program(
            &[
                "table=0,priority=1 actions=set_field:0x7->reg0,goto_table:1",
                "table=1,priority=2,reg0=0x7 actions=resubmit(,2),output:4",
                "table=2,priority=1 actions=mod_nw_dst:10.9.9.9",
            ],
            &[],
        );
        let t = translate(&p, &pkt([1, 2, 3, 4], 1, 9), None);
        assert_eq!(t.xlate.rules.len(), 3);
        assert_eq!(
            &*t.xlate.actions,
            &[
                DpAction::Set {
                    field: Field::Reg0,
                    value: 7,
                    mask: 0xffff_ffff
                },
                DpAction::Set {
                    field: Field::NwDst,
                    value: 0x0a09_0909,
                    mask: 0xffff_ffff
                },
                DpAction::Output(PortNo(4)),
            ]
        );
        let looped = program(
            &[
                "table=3,priority=1 actions=resubmit(,3)",
                "actions=goto_table:3",
            ],
            &[],
        );
        let mut trace = String::new();
        let t = translate(&looped, &pkt([1, 2, 3, 4], 1, 9), Some(&mut trace));
        assert_eq!(
            t.xlate.actions.last(),
            Some(&DpAction::Drop(DropReason::ResubmitLimit))
        );
        assert!(trace.contains("resubmit depth 64 exceeded"));
    }

    #[test]
    fn dec_ttl_unwildcards_ttl_and_expires() {
        let p = program(&["ip actions=dec_ttl,output:1"], &[]);
        let t = translate(&p, &pkt([1, 1, 1, 1], 1, 2), None);
        assert_eq!(t.mask.get(Field::NwTtl), 0xff);
        assert_eq!(
            t.xlate.actions[0],
            DpAction::Set {
                field: Field::NwTtl,
                value: 1,
                mask: 0xff
            }
        );
        let t = translate(&p, &pkt([1, 1, 1, 1], 1, 1), None);
        assert_eq!(
            &*t.xlate.actions,
            &[DpAction::Drop(DropReason::TtlExceeded)]
        );
    }

    #[test]
    fn table_miss_and_trace() {
        let p = program(&["priority=5,udp actions=output:1"], &[]);
        let mut trace = String::new();
        let t = translate(&p, &pkt([1, 1, 1, 1], 1, 1), Some(&mut trace));
        assert_eq!(&*t.xlate.actions, &[DpAction::Drop(DropReason::TableMiss)]);
        assert!(trace.contains("0. No match."), "{trace}");
        assert!(trace.contains("\nMegaflow: tcp,recirc_id=0x0\n"), "{trace}");
        assert!(
            trace.contains("Datapath actions: drop(table_miss)"),
            "{trace}"
        );
    }

    #[test]
    fn group_select_spreads_and_all_copies() {
        let p = program(
            &["ip actions=group:1"],
            &["group_id=1,type=select,fields(nw_src,tp_src),bucket=output:1,bucket=output:2,bucket=weight:200,actions=output:3"],
        );
        let mut counts = [0u32; 4];
        for i in 0..4000u32 {
            let f = tcp4(i.to_be_bytes(), [9, 9, 9, 9], (i * 7) as u16, 80, 64);
            let t = translate(&p, &extract(&f, PortNo(0)), None);
            assert_eq!(t.mask.get(Field::NwSrc), 0xffff_ffff);
            assert_eq!(
                t.mask.get(Field::NwDst),
                0,
                "nw_dst is not a selection field"
            );
            match &*t.xlate.actions {
                [DpAction::Output(PortNo(n))] => counts[usize::from(*n)] += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Weights 100:100:200 over 4000 flows: expect 1000/1000/2000, allow 15%.
        for (port, expect) in [(1, 1000u32), (2, 1000), (3, 2000)] {
            let got = counts[port];
            assert!(
                got.abs_diff(expect) < expect * 15 / 100,
                "bucket {port}: {got} of 4000"
            );
        }
        let p = program(
            &["ip actions=group:2,output:9"],
            &["group_id=2,type=all,bucket=mod_tp_dst:99,output:1,bucket=output:2"],
        );
        let t = translate(&p, &pkt([1, 1, 1, 1], 1, 1), None);
        assert_eq!(t.xlate.actions.len(), 3);
        assert!(matches!(&t.xlate.actions[0], DpAction::Clone(a) if a.len() == 2));
        assert_eq!(t.xlate.actions[2], DpAction::Output(PortNo(9)));
    }

    #[test]
    fn self_referencing_group_is_bounded() {
        use crate::flow::program::{Bucket, Group};
        // Built directly, bypassing the bundle check that forbids this.
        let mut p = program(
            &["actions=group:9"],
            &["group_id=9,type=all,bucket=output:1"],
        );
        p.groups.insert(
            9,
            Arc::new(Group {
                id: 9,
                kind: GroupType::Select,
                fields: vec![],
                buckets: vec![Bucket {
                    weight: 1,
                    actions: vec![Action::Group(9)],
                }],
            }),
        );
        let t = translate(&p, &pkt([1, 1, 1, 1], 1, 1), None);
        assert_eq!(
            t.xlate.actions.last(),
            Some(&DpAction::Drop(DropReason::ResubmitLimit))
        );
    }

    #[test]
    fn resubmit_fan_out_is_bounded() {
        // 2^40 paths within the depth limit: must stop after MAX_LOOKUPS.
        let flows: Vec<String> = (0..40)
            .map(|t| {
                format!(
                    "table={t},priority=1 actions=resubmit(,{}),resubmit(,{})",
                    t + 1,
                    t + 1
                )
            })
            .collect();
        let refs: Vec<&str> = flows.iter().map(String::as_str).collect();
        let p = program(&refs, &[]);
        let t = translate(&p, &pkt([1, 1, 1, 1], 1, 1), None);
        assert_eq!(
            t.xlate.actions.last(),
            Some(&DpAction::Drop(DropReason::ResubmitLimit))
        );
        assert!(t.xlate.rules.len() <= MAX_LOOKUPS);
    }
}
