//! The direct path: packets whose walk through the program only meets
//! specialised tables ([`super::special`]) with simple actions are looked
//! up in those tables' indexes and executed per packet, without the EMC,
//! the megaflow cache or a cached translation (VPP's model: the forwarding
//! structure *is* the fast path).
//!
//! Which packets: a first pass (`recirc_id=0`) whose lookup in table 0
//! and in every table a `goto_table` leads to hits a rule of a table that
//! has a compiled index ([`special::of`]), where every action of every
//! rule met is one of: `output` (not to `CONTROLLER`), `in_port`, `local`,
//! `drop`, an empty list, `set_field`/`mod_dl_src`/`mod_dl_dst` of a whole
//! Ethernet address, `dec_ttl`, and a final `goto_table` (at most
//! [`MAX_TABLES`] tables). Everything else (a table-miss, a rule with a
//! group, `ct`, `resubmit`, `normal`, the controller, a rewrite of any
//! other field) returns [`Resolve::Generic`] before any side effect, and the
//! packet takes the generic cascade as before. Whether a program can use
//! the path at all is decided once per program ([`Plan::of`]: table 0 has
//! an index); per packet, [`resolve`] decides.
//!
//! Exactness: [`resolve`] mirrors the slow path's walk (`slowpath::Ctx`)
//! for the subset it accepts, so the datapath actions ([`Op::to_dp`]) and
//! the rules counted are the ones `slowpath::translate` gives for the same
//! key (proptest `direct_equals_slow_path` below, on random tables of each
//! shape with near-miss packets, and on two-table pipelines). [`execute`]
//! mirrors the flow pipeline's action interpreter for those actions
//! (copies for all but the last output, the drop reasons, a malformed
//! frame dropped before any rewrite). Rule counters are bumped per packet
//! (consecutive packets of one rule once, see [`Counts`]), so `dump-flows`
//! counts are those of the generic path.
//!
//! Memory: none per rule beyond the special index the slow path already
//! uses (the lookup is [`special::SpecialTable::lookup`]); per packet a
//! [`Resolved`] on the stack.
//!
//! Thread-safety: pure over a shared `&FlowProgram` (any thread); the
//! counters are the rules' own atomics.

use crate::drop::DropReason;
use crate::flow::action::{rewrite, Action, DpAction};
use crate::flow::key::{ethertype, extract_into, Field, FlowKey, Layout};
use crate::flow::program::{FlowProgram, Rule, RuleStats};
use crate::packet::{Output, PacketBuf, PortNo, BURST_SIZE};
use crate::time::Nanos;

use super::special::{self, Probe, SpecialTable};

/// Most tables one packet's direct walk may visit (then: generic).
pub const MAX_TABLES: usize = 4;

/// Most datapath operations of one direct walk (then: generic).
pub const MAX_OPS: usize = 16;

/// The mask of a whole Ethernet address.
const ETH_ADDR: u64 = 0xffff_ffff_ffff;

/// Whether a program can send packets down the direct path at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Table 0 has a compiled index.
    pub active: bool,
}

impl Plan {
    /// The plan of `prog`: active when table 0 is specialised (its index
    /// is built here if the control side has not already done it).
    pub fn of(prog: &FlowProgram) -> Plan {
        let active = prog
            .tables
            .first()
            .and_then(|t| special::of(t).filter(|s| s.fits(t.rules.len())))
            .is_some();
        Plan { active }
    }
}

/// One datapath operation of a direct walk (the compact form of the
/// [`DpAction`]s the slow path would emit for the same rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `Output(port)` (`IN_PORT` resolved at execution).
    Output(PortNo),
    /// Write `value` under `mask` into an Ethernet address or the TTL.
    Set {
        /// `DlSrc`, `DlDst` or `NwTtl`.
        field: Field,
        /// Value.
        value: u64,
        /// Bits written.
        mask: u64,
    },
    /// Stop and drop (if nothing was output).
    Drop(DropReason),
}

impl Op {
    /// The slow path's datapath action for this operation.
    pub fn to_dp(self) -> DpAction {
        match self {
            Op::Output(p) => DpAction::Output(p),
            Op::Set { field, value, mask } => DpAction::Set {
                field,
                value: u128::from(value),
                mask: u128::from(mask),
            },
            Op::Drop(r) => DpAction::Drop(r),
        }
    }
}

/// The outcome of a direct walk: the rules hit (in order) and the
/// operations to run.
#[derive(Debug)]
pub struct Resolved<'p> {
    /// Counters of the rules hit, in walk order.
    pub rules: [Option<&'p RuleStats>; MAX_TABLES],
    /// How many of `rules` are set.
    pub n_rules: usize,
    /// Operations, in order.
    pub ops: [Op; MAX_OPS],
    /// How many of `ops` are set.
    pub n_ops: usize,
}

impl<'p> Resolved<'p> {
    fn new() -> Self {
        Resolved {
            rules: [None; MAX_TABLES],
            n_rules: 0,
            ops: [Op::Drop(DropReason::FlowDrop); MAX_OPS],
            n_ops: 0,
        }
    }

    /// The operations.
    pub fn ops(&self) -> &[Op] {
        &self.ops[..self.n_ops]
    }

    /// The rules' counters.
    pub fn rules(&self) -> impl Iterator<Item = &'p RuleStats> + '_ {
        self.rules[..self.n_rules].iter().flatten().copied()
    }

    fn push(&mut self, op: Op) -> bool {
        match self.ops.get_mut(self.n_ops) {
            Some(o) => {
                *o = op;
                self.n_ops += 1;
                true
            }
            None => false,
        }
    }
}

/// What [`resolve`] decided for a packet.
#[derive(Debug)]
pub enum Resolve<'p> {
    /// The packet takes the direct path with these rules and operations
    /// (boxed: the per-packet path reuses one [`Resolved`] instead).
    Direct(Box<Resolved<'p>>),
    /// The packet takes the generic cascade (nothing was done).
    Generic,
}

/// The compiled index of table `table` of `prog`, if it has one.
#[inline]
fn index_of(prog: &FlowProgram, table: u8) -> Option<&SpecialTable> {
    let t = prog.tables.get(usize::from(table))?;
    special::of(t).filter(|s| s.fits(t.rules.len()))
}

/// Walks `key` through the specialised tables of `prog` as the slow path
/// would, accepting only the simple actions (module documentation).
#[inline]
pub fn resolve<'p>(prog: &'p FlowProgram, key: &FlowKey) -> Resolve<'p> {
    if key.get(Field::RecircId) != 0 {
        return Resolve::Generic;
    }
    match index_of(prog, 0).and_then(|s| s.lookup(key)) {
        Some(r) => resolve_from(prog, &mut key.clone(), r),
        None => Resolve::Generic,
    }
}

/// [`resolve`] given the rule `first` that table 0's index answers for
/// `k` (a first pass), applying to `k` the walk's TTL rewrites as it goes
/// and its address rewrites ahead of each `goto_table` (what the walk
/// reads; [`execute`] applies them all again, with the same values:
/// idempotent; when it returns [`Resolve::Generic`], `k` is partly
/// rewritten and the caller parses the packet again).
#[inline]
fn resolve_from<'p>(prog: &'p FlowProgram, k: &mut FlowKey, first: &'p Rule) -> Resolve<'p> {
    let mut res = Box::new(Resolved::new());
    if walk(prog, k, first, &mut res) {
        Resolve::Direct(res)
    } else {
        Resolve::Generic
    }
}

/// [`resolve_from`] into `res` (cleared first, reused across packets: no
/// copy of the operations per packet); true when the packet goes direct.
#[inline]
fn walk<'p>(
    prog: &'p FlowProgram,
    k: &mut FlowKey,
    first: &'p Rule,
    res: &mut Resolved<'p>,
) -> bool {
    res.n_ops = 0;
    res.n_rules = 0;
    let mut hit = Some(first);
    loop {
        let Some(r) = hit.take() else {
            // The table-miss behaviour is the generic path's business.
            return false;
        };
        let Some(slot) = res.rules.get_mut(res.n_rules) else {
            return false;
        };
        *slot = Some(&r.stats);
        res.n_rules += 1;
        if r.spec.actions.is_empty() {
            res.push(Op::Drop(DropReason::FlowDrop));
            return true;
        }
        let mut next = None;
        for a in &r.spec.actions {
            let ok = match a {
                Action::Output(PortNo::CONTROLLER) => false,
                Action::Output(p) => res.push(Op::Output(*p)),
                Action::Local => res.push(Op::Output(PortNo::LOCAL)),
                Action::InPort => res.push(Op::Output(k.in_port())),
                Action::Drop => {
                    if !res.push(Op::Drop(DropReason::FlowDrop)) {
                        return false;
                    }
                    return true;
                }
                Action::SetField { field, value, mask }
                    if matches!(field, Field::DlSrc | Field::DlDst) && *mask == ETH_ADDR =>
                {
                    // Ethernet addresses are always present: the slow
                    // path writes them unconditionally. Whole addresses
                    // only: a rewrite then does not depend on the bits
                    // the key had (see `run_ops`). The key takes it only
                    // if a `goto_table` follows (nothing else in a walk
                    // reads an address).
                    let (value, mask) = (*value, *mask);
                    res.push(Op::Set {
                        field: *field,
                        value,
                        mask,
                    })
                }
                Action::DecTtl => {
                    if !matches!(k.dl_type(), ethertype::IPV4 | ethertype::IPV6) {
                        // Not IP: dec_ttl does nothing.
                        continue;
                    }
                    let ttl = k.get(Field::NwTtl) as u64;
                    if ttl <= 1 {
                        if !res.push(Op::Drop(DropReason::TtlExceeded)) {
                            return false;
                        }
                        return true;
                    }
                    k.set_masked(Field::NwTtl, u128::from(ttl - 1), 0xff);
                    res.push(Op::Set {
                        field: Field::NwTtl,
                        value: ttl - 1,
                        mask: 0xff,
                    })
                }
                Action::GotoTable(t) => {
                    // The next table sees this table's address rewrites
                    // (replayed: each writes a whole address, so the
                    // replay of earlier ones is idempotent).
                    for op in res.ops() {
                        if let Op::Set { field, value, mask } = *op {
                            if matches!(field, Field::DlSrc | Field::DlDst) {
                                k.set_masked(field, u128::from(value), u128::from(mask));
                            }
                        }
                    }
                    next = Some(*t);
                    break;
                }
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        match next {
            Some(t) => hit = index_of(prog, t).and_then(|s| s.lookup(k)).map(|r| &**r),
            None => return true,
        }
    }
}

/// Per-PMD scratch space of [`run_burst`] (capacity reserved once).
#[derive(Debug, Default)]
pub struct Scratch {
    keys: Vec<(FlowKey, Layout)>,
    probes: Vec<Probe>,
}

/// The direct stage over a burst from `in_port`: parses every packet,
/// looks the whole burst up in table 0's index (a bulk lookup in passes:
/// hash and prefetch the slots, prefetch the rules, prefetch their match
/// words, actions and counters, look up; each pass's cache misses overlap
/// across the burst), then
/// resolves and executes each packet the direct path takes, in order.
/// The others stay in `pkts`, in order, untouched. Returns how many
/// packets were forwarded (or dropped by their rules) here.
pub fn run_burst<B: PacketBuf>(
    prog: &FlowProgram,
    now: Nanos,
    in_port: PortNo,
    pkts: &mut Vec<B>,
    scratch: &mut Scratch,
    out: &mut Output<B>,
) -> u64 {
    let Some(s0) = index_of(prog, 0) else {
        return 0;
    };
    // Stage one: parse, hash for table 0's index and prefetch the slots.
    let keys = &mut scratch.keys;
    let probes = &mut scratch.probes;
    // Parsed in place into the entries kept from earlier bursts
    // (`extract_into` zeroes the key itself; a runt's stale entry is never
    // read: it has no rule and goes generic).
    if keys.len() < pkts.len() {
        keys.resize(pkts.len(), (FlowKey::ZERO, Layout::default()));
    }
    probes.clear();
    for (q, pkt) in keys.iter_mut().zip(pkts.iter()) {
        let mut p = Probe::default();
        if pkt.len() >= 14 {
            q.1 = extract_into(pkt.data(), in_port, &mut q.0);
            p = s0.probe(&q.0);
        }
        probes.push(p);
    }
    // Then, each over the whole burst, the rules the slots point to, and
    // what those rules' compare and execution read (a bulk lookup: every
    // level's cache misses overlap across the burst).
    for &p in probes.iter() {
        s0.prefetch_rule(p);
    }
    for &p in probes.iter() {
        s0.prefetch_rule_data(p);
    }
    // Stage two: table 0, the whole burst. A packet equal to the last one
    // looked up on the index's mask words gets its answer without a
    // lookup (per-flow batching; exact: the lookup reads only those bits).
    let mut first: [Option<&Rule>; BURST_SIZE] = [None; BURST_SIZE];
    let (mask, words) = (s0.mask(), s0.mask_words());
    let mut last: Option<(&FlowKey, &Rule)> = None;
    for (((f, (k, _)), pkt), &p) in first
        .iter_mut()
        .zip(keys.iter())
        .zip(pkts.iter())
        .zip(probes.iter())
    {
        if pkt.len() < 14 {
            continue;
        }
        if let Some((lk, r)) = last {
            if words.iter().all(|&i| {
                (lk.w[usize::from(i)] ^ k.w[usize::from(i)]) & mask.w[usize::from(i)] == 0
            }) {
                *f = Some(r);
                continue;
            }
        }
        *f = s0.lookup_probe(k, p).map(|r| &**r);
        if let Some(r) = *f {
            last = Some((k, r));
        }
    }
    // Stage three: the rest of the walk, actions, counters.
    let mut counts = Counts::default();
    let mut res = Resolved::new();
    let mut n = 0u64;
    let mut all = std::mem::take(pkts);
    for (i, pkt) in all.drain(..).enumerate() {
        let (key, layout) = &mut keys[i];
        let rule = match first.get(i) {
            Some(r) => *r,
            // Past a burst's size (not from a PMD): one packet at a time.
            None if pkt.len() >= 14 => s0.lookup(key).map(|r| &**r),
            None => None,
        };
        if rule.is_some_and(|r| walk(prog, key, r, &mut res)) {
            counts.add(&res, pkt.len() as u64, now);
            run_ops::<B, false>(res.ops(), pkt, key, *layout, out);
            n += 1;
        } else {
            pkts.push(pkt);
        }
    }
    counts.flush(now);
    // `pkts` gets its own vector (and capacity) back.
    all.append(pkts);
    *pkts = all;
    n
}

/// Runs `ops` on `pkt` (whose headers `key` and `layout` describe), as the
/// flow pipeline's interpreter runs the equal [`DpAction`]s: every output
/// but the last action's sends a copy, a final drop (or no output) counts
/// its reason, a rewrite the frame cannot hold drops it as malformed.
#[inline]
pub fn execute<B: PacketBuf>(
    ops: &[Op],
    pkt: B,
    key: &mut FlowKey,
    layout: Layout,
    out: &mut Output<B>,
) {
    run_ops::<B, true>(ops, pkt, key, layout, out)
}

/// [`execute`]; with `UPDATE_KEY` false the key is left alone (the
/// caller does not read it afterwards; [`walk`] applied the TTL, and the
/// addresses where a later table needed them). Exact because every
/// [`Op::Set`] writes a whole field (an Ethernet address, the TTL), so
/// what is written does not depend on the key's old bits.
#[inline]
fn run_ops<B: PacketBuf, const UPDATE_KEY: bool>(
    ops: &[Op],
    mut pkt: B,
    key: &mut FlowKey,
    layout: Layout,
    out: &mut Output<B>,
) {
    let n = ops.len();
    let final_drop = matches!(ops.last(), Some(Op::Drop(_)));
    let mut sent = false;
    for (i, op) in ops.iter().enumerate() {
        let last = i + 1 == n || (final_drop && i + 2 == n);
        match *op {
            Op::Output(port) => {
                let port = if port == PortNo::IN_PORT {
                    key.in_port()
                } else {
                    port
                };
                if last {
                    out.send(port, pkt);
                    return;
                }
                match pkt.try_clone() {
                    Some(c) => {
                        out.send(port, c);
                        sent = true;
                    }
                    None => out.drops.inc(DropReason::NoBuffer),
                }
            }
            Op::Set { field, value, mask }
                if mask == ETH_ADDR && matches!(field, Field::DlSrc | Field::DlDst) =>
            {
                // A whole address: its six bytes, as `rewrite` writes
                // them (and a frame too short for them dropped as it
                // does).
                let at = if field == Field::DlDst { 0 } else { 6 };
                match pkt.data_mut().get_mut(at..at + 6) {
                    Some(d) => d.copy_from_slice(&value.to_be_bytes()[2..]),
                    None => {
                        out.drop(DropReason::Malformed, pkt);
                        return;
                    }
                }
                if UPDATE_KEY {
                    key.set_masked(field, u128::from(value), u128::from(mask));
                }
            }
            Op::Set { field, value, mask } => {
                let (value, mask) = (u128::from(value), u128::from(mask));
                if let Err(r) = rewrite(pkt.data_mut(), layout, key, field, value, mask) {
                    out.drop(r, pkt);
                    return;
                }
                if UPDATE_KEY {
                    key.set_masked(field, value, mask);
                }
            }
            Op::Drop(reason) => {
                if sent {
                    drop(pkt);
                } else {
                    out.drop(reason, pkt);
                }
                return;
            }
        }
    }
    if sent {
        drop(pkt);
    } else {
        out.drop(DropReason::FlowDrop, pkt);
    }
}

/// Rule-counter updates of a burst: consecutive packets that hit the same
/// rules are counted with one update per rule.
#[derive(Debug)]
pub struct Counts<'p> {
    run: [Option<&'p RuleStats>; MAX_TABLES],
    n_rules: usize,
    packets: u64,
    bytes: u64,
}

impl Default for Counts<'_> {
    fn default() -> Self {
        Counts {
            run: [None; MAX_TABLES],
            n_rules: 0,
            packets: 0,
            bytes: 0,
        }
    }
}

impl<'p> Counts<'p> {
    /// Counts one packet of `bytes` bytes on the rules of `r`.
    #[inline]
    pub fn add(&mut self, r: &Resolved<'p>, bytes: u64, now: u64) {
        let same = self.n_rules == r.n_rules
            && self.run[..self.n_rules]
                .iter()
                .zip(&r.rules[..r.n_rules])
                .all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => std::ptr::eq(*a, *b),
                    _ => false,
                });
        if !same {
            self.flush(now);
            self.run = r.rules;
            self.n_rules = r.n_rules;
        }
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Applies the pending update.
    #[inline]
    pub fn flush(&mut self, now: u64) {
        if self.packets != 0 {
            for s in self.run[..self.n_rules].iter().flatten() {
                s.hit(self.packets, self.bytes, now);
            }
        }
        self.packets = 0;
        self.bytes = 0;
    }
}

/// One line for `ofproto/trace`: whether (and through which tables) the
/// datapath forwards packets like `key` on the direct path.
pub fn explain(prog: &FlowProgram, key: &FlowKey) -> String {
    if !Plan::of(prog).active {
        return "Direct path: no (table 0 is not specialised; EMC -> megaflow -> slow path)\n"
            .to_string();
    }
    match resolve(prog, key) {
        Resolve::Direct(r) => format!(
            "Direct path: yes ({} specialised table lookup(s), no EMC/megaflow cache)\n",
            r.n_rules
        ),
        Resolve::Generic => {
            "Direct path: no (a table-miss or an action it does not run; EMC -> megaflow -> slow path)\n"
                .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::slowpath::translate;
    use crate::flow::key::extract;
    use crate::flow::tables::FlowTables;
    use crate::packet::HeapBuf;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn tables(flows: &str) -> FlowTables {
        let t = FlowTables::new();
        t.add_flows(flows, 0).expect("flows parse");
        special::prepare(&t.program());
        t
    }

    /// The direct walk, when it takes the packet, equals the slow path's
    /// translation: the same datapath actions and the same rules counted.
    fn check(prog: &FlowProgram, key: &FlowKey) -> bool {
        let t = translate(prog, key, None);
        match resolve(prog, key) {
            Resolve::Direct(r) => {
                let ops: Vec<DpAction> = r.ops().iter().map(|o| o.to_dp()).collect();
                assert_eq!(&ops[..], &t.xlate.actions[..], "actions");
                let want: Vec<*const RuleStats> = t.xlate.rules.iter().map(Arc::as_ptr).collect();
                let got: Vec<*const RuleStats> = r.rules().map(|s| s as *const RuleStats).collect();
                assert_eq!(got, want, "rules");
                true
            }
            Resolve::Generic => false,
        }
    }

    fn udp(dst_mac: [u8; 6], dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut f = crate::flow::key::testpkt::tcp4([10, 244, 0, 1], dst, 1024, 5001, ttl);
        f[0..6].copy_from_slice(&dst_mac);
        f
    }

    const ROUTER: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

    #[test]
    fn l3_routes_take_the_direct_path_and_count() {
        let flows: String = (0..64u32)
            .map(|i| format!("priority=24,ip,dl_dst=02:00:00:00:00:fe,nw_dst=10.1.{i}.0/24 actions=mod_dl_src:02:00:00:00:00:fe,mod_dl_dst:02:00:00:00:01:01,dec_ttl,output:2\n"))
            .collect();
        let t = tables(&flows);
        let p = t.program();
        assert!(Plan::of(&p).active);
        let hit = extract(&udp(ROUTER, [10, 1, 5, 9], 64), PortNo(1));
        assert!(check(&p, &hit), "a routed packet goes direct");
        // TTL 1: the walk drops it (TtlExceeded), like the slow path.
        let expired = extract(&udp(ROUTER, [10, 1, 5, 9], 1), PortNo(1));
        assert!(check(&p, &expired));
        // No route, another MAC: table-miss, generic.
        let miss = extract(&udp(ROUTER, [10, 2, 5, 9], 64), PortNo(1));
        assert!(!check(&p, &miss));
        let other_mac = extract(&udp([2, 0, 0, 0, 0, 1], [10, 1, 5, 9], 64), PortNo(1));
        assert!(!check(&p, &other_mac));
        // ofproto/trace names the tier.
        let tr = t
            .trace("in_port=1,ip,dl_dst=02:00:00:00:00:fe,nw_dst=10.1.5.9,nw_ttl=64")
            .expect("trace");
        assert!(
            tr.contains("Direct path: yes (1 specialised table lookup(s)"),
            "{tr}"
        );
        let tr = t
            .trace("in_port=1,ip,dl_dst=02:00:00:00:00:fe,nw_dst=10.2.5.9,nw_ttl=64")
            .expect("trace");
        assert!(tr.contains("Direct path: no (a table-miss"), "{tr}");

        // A burst: three routed frames, one expired, one without a route
        // and a runt between them. The routed ones are rewritten and sent,
        // the expired one dropped, the other two left in order.
        let mut out: Output<HeapBuf> = Output::new(4);
        let frame = udp(ROUTER, [10, 1, 5, 9], 64);
        let no_route = udp(ROUTER, [10, 2, 5, 9], 64);
        let burst = [
            frame.clone(),
            no_route.clone(),
            frame.clone(),
            udp(ROUTER, [10, 1, 5, 9], 1),
            vec![0u8; 10],
            frame.clone(),
        ];
        let mut pkts: Vec<HeapBuf> = burst.iter().map(|f| HeapBuf::from_frame(f)).collect();
        let mut scratch = Scratch::default();
        let n = run_burst(&p, 7, PortNo(1), &mut pkts, &mut scratch, &mut out);
        assert_eq!(n, 4);
        let left: Vec<Vec<u8>> = pkts.iter().map(|b| b.data().to_vec()).collect();
        assert_eq!(left, vec![no_route, vec![0u8; 10]]);
        assert_eq!(out.drops.get(DropReason::TtlExceeded), 1);
        let mut sent = Vec::new();
        out.flush(|port, q| {
            assert_eq!(port, PortNo(2));
            sent.extend(q.drain(..).map(|b| b.data().to_vec()));
        });
        assert_eq!(sent.len(), 3);
        assert_eq!(&sent[0][0..12], &[2, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(sent[0][22], 63, "ttl decremented");
        let dump = t.dump_flows("", 7).expect("dump");
        let want = format!("n_packets=4, n_bytes={}", 4 * frame.len());
        assert!(dump.contains(&want), "{dump}");
        assert_eq!(dump.matches("n_packets=0").count(), 63, "{dump}");
    }

    #[test]
    fn unsupported_actions_and_small_tables_take_the_generic_path() {
        // Three rules: not specialised, no plan.
        let t = tables("priority=1,ip,nw_dst=10.0.0.1 actions=output:2\npriority=1,ip,nw_dst=10.0.0.2 actions=output:2\npriority=1,ip,nw_dst=10.0.0.3 actions=output:2\n");
        assert!(!Plan::of(&t.program()).active);
        // Specialised, but the rule rewrites nw_dst (not supported) or
        // sends to the controller.
        let t = tables("priority=1,ip,nw_dst=10.0.0.1 actions=mod_nw_dst:10.0.0.9,output:2\npriority=1,ip,nw_dst=10.0.0.2 actions=controller\npriority=1,ip,nw_dst=10.0.0.3 actions=output:2\npriority=1,ip,nw_dst=10.0.0.4 actions=normal\npriority=1,ip,nw_dst=10.0.0.5 actions=set_field:02:00:00:00:00:00/ff:00:00:00:00:00->eth_dst,output:2\n");
        let p = t.program();
        assert!(Plan::of(&p).active);
        // (10.0.0.5: a part of an address, not supported either.)
        for (d, direct) in [(1, false), (2, false), (3, true), (4, false), (5, false)] {
            let k = extract(&udp(ROUTER, [10, 0, 0, d], 64), PortNo(1));
            assert_eq!(check(&p, &k), direct, "10.0.0.{d}");
        }
    }

    /// Flow text of a random table of one shape (`exact` on dl_dst, or a
    /// prefix of nw_dst with lengths in order), with simple actions, an
    /// optional default route, optionally a goto to a specialised table 1.
    fn shaped_program() -> impl Strategy<Value = String> {
        let rule = (
            0u8..4,
            0u32..8,
            prop::sample::select(vec![8u8, 16, 24, 32]),
            0u8..6,
        );
        (
            any::<bool>(),
            prop::collection::vec(rule, 4..24),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(prefix, rules, default, goto)| {
                let act = |a: u8| match a {
                    0 => "output:2".to_string(),
                    1 => "mod_dl_src:02:00:00:00:00:fe,mod_dl_dst:02:00:00:00:01:01,dec_ttl,output:3".into(),
                    2 => "dec_ttl,output:2,output:3".into(),
                    3 => "drop".into(),
                    4 if goto => "mod_dl_dst:02:00:00:00:00:09,goto_table:1".into(),
                    4 => "in_port".into(),
                    _ => "output:controller".into(),
                };
                let mut s = String::new();
                if prefix {
                    // Longest prefix first: priority = length.
                    let mut rules = rules;
                    rules.sort_by_key(|r| std::cmp::Reverse(r.2));
                    for (m, v, len, a) in rules {
                        s += &format!(
                            "priority={len},ip,dl_dst=02:00:00:00:00:0{m},nw_dst=10.{v}.{v}.{v}/{len} actions={}\n",
                            act(a)
                        );
                    }
                } else {
                    for (m, v, _, a) in rules {
                        s += &format!(
                            "priority={},ip,dl_dst=02:00:00:00:00:0{m},nw_dst=10.0.0.{v} actions={}\n",
                            100 + u16::from(a), act(a)
                        );
                    }
                }
                if default {
                    s += "priority=0 actions=output:4\n";
                }
                if goto {
                    // Keyed on the address table 0 rewrote too: the walk
                    // must look table 1 up with the rewritten one.
                    for v in 0..6 {
                        for m in [9, 0, 1, 2, 3, 4] {
                            s += &format!("table=1,priority=5,ip,dl_dst=02:00:00:00:00:0{m},nw_dst=10.{v}.0.0/16 actions=output:{}\n", 5 + v + 10 * m);
                        }
                    }
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

        /// Direct path == slow path (actions, rules counted) for every
        /// packet it takes, on random shaped tables and near-miss packets
        /// (MAC, address, TTL around the rules'); and it takes some.
        #[test]
        fn direct_equals_slow_path(
            flows in shaped_program(),
            pkts in prop::collection::vec((0u8..5, 0u8..9, 0u8..9, 0u8..3), 1..40),
        ) {
            let t = tables(&flows);
            let p = t.program();
            let active = Plan::of(&p).active;
            let mut direct = 0;
            for (m, a, b, ttl) in pkts {
                let k = extract(&udp([2, 0, 0, 0, 0, m], [10, a, b, a], ttl), PortNo(1));
                if check(&p, &k) {
                    prop_assert!(active);
                    direct += 1;
                }
            }
            let _ = direct;
        }

        /// A whole burst through [`run_burst`] (with its per-flow reuse of
        /// table 0's answer for repeated packets): exactly the packets
        /// [`resolve`] takes are forwarded, the others are left in order,
        /// and every rule counts what the slow path's translations name.
        #[test]
        fn burst_equals_per_packet_slow_path(
            flows in shaped_program(),
            pkts in prop::collection::vec((0u8..5, 0u8..9, 0u8..9, 0u8..3, 1usize..4), 1..12),
        ) {
            let t = tables(&flows);
            let p = t.program();
            let mut frames = Vec::new();
            for (m, a, b, ttl, repeat) in pkts {
                for _ in 0..repeat {
                    frames.push(udp([2, 0, 0, 0, 0, m], [10, a, b, a], ttl));
                }
            }
            frames.truncate(BURST_SIZE);
            let mut want_left = Vec::new();
            let mut want_counts: std::collections::HashMap<*const RuleStats, u64> =
                Default::default();
            for f in &frames {
                let k = extract(f, PortNo(1));
                match resolve(&p, &k) {
                    Resolve::Direct(_) => {
                        for r in translate(&p, &k, None).xlate.rules.iter() {
                            *want_counts.entry(Arc::as_ptr(r)).or_default() += 1;
                        }
                    }
                    Resolve::Generic => want_left.push(f.clone()),
                }
            }
            let mut bufs: Vec<HeapBuf> = frames.iter().map(|f| HeapBuf::from_frame(f)).collect();
            let mut out: Output<HeapBuf> = Output::new(8);
            let n = run_burst(&p, 1, PortNo(1), &mut bufs, &mut Scratch::default(), &mut out);
            prop_assert_eq!(n as usize, frames.len() - want_left.len());
            let left: Vec<Vec<u8>> = bufs.iter().map(|b| b.data().to_vec()).collect();
            prop_assert_eq!(left, want_left);
            for tb in &p.tables {
                for r in &tb.rules {
                    let want = want_counts.get(&Arc::as_ptr(&r.stats)).copied().unwrap_or(0);
                    prop_assert_eq!(r.stats.packets(), want);
                }
            }
        }
    }
}
