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
//! key is left out of the index), and the megaflow mask a lookup adds is
//! the one the walk adds: every mask in the table is within the first
//! rule's (`C | prefix(longest)`), which is what the lookup consulted and
//! the union of the masks the walk examines, hit or miss. So the installed
//! megaflows, the EMC and the cache-coherence proptests are unchanged
//! (proptests below: specialised == generic, translation and mask, on
//! random tables of each shape and on near-misses, which must fall back).
//!
//! Memory: one `u32` (the rule's index) per rule in a `hashbrown` table;
//! the keys are the rules' own masked keys, compared in place.
//!
//! Building: [`compile`] is a function of one table, O(rules of that table).
//! The index lives in the table's `derived` slot (`flow::program::Table`),
//! which programs share while a table's rules do not change and which any
//! change to them empties. [`of`] fills a slot on first use (the first
//! slow-path lookup in that table); [`prepare`] fills every empty slot of a
//! program right after it is built, so only changed tables are compiled.
//!
//! Thread-safety: an index is immutable once built; a slot is filled once
//! (`OnceLock`), concurrent first users wait for the one that builds it.

use std::sync::Arc;

use hashbrown::HashTable;

use crate::flow::key::{Field, FlowKey};
use crate::flow::program::{FlowProgram, Rule, Table};

/// Tables with fewer rules (before the match-everything tail) keep the
/// generic walk, which is as fast there.
pub const MIN_RULES: usize = 4;

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

/// The rules of one mask: indices into the table's rules, hashed on their
/// masked keys.
#[derive(Debug)]
struct Group {
    mask: FlowKey,
    /// The mask's non-zero words: hashing and comparing touch only these.
    words: Box<[u8]>,
    index: HashTable<u32>,
}

/// A compiled table (see the module documentation).
#[derive(Debug)]
pub struct SpecialTable {
    shape: Shape,
    /// Longest prefix first.
    groups: Box<[Group]>,
    /// The mask every lookup adds to the megaflow: the first group's.
    mask: FlowKey,
    /// The first match-everything rule after the shaped ones.
    default: Option<u32>,
    /// The rules of the table it was built from, in order (the table's
    /// own list is chunked for cheap copy-on-write, not indexable in O(1)).
    rules: Box<[Arc<Rule>]>,
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

    /// True when a table of `n_rules` rules can be the one this index was
    /// built from (a cheap guard; the slot discipline is what guarantees
    /// it).
    pub fn fits(&self, n_rules: usize) -> bool {
        n_rules == self.rules.len()
    }

    /// The `i`th rule of the table this index was built from.
    #[inline]
    pub fn rule(&self, i: usize) -> &Arc<Rule> {
        &self.rules[i]
    }

    /// The index (in the table it was built from) of the rule the generic
    /// walk would match first for `key`, if any.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<usize> {
        let rules = &self.rules;
        for g in self.groups.iter() {
            let h = key.hash_masked_words(&g.mask, &g.words);
            if let Some(&i) = g.index.find(h, |&i| {
                key.matches_masked_words(&g.mask, rules[i as usize].spec.m.key(), &g.words)
            }) {
                return Some(i as usize);
            }
        }
        self.default.map(|d| d as usize)
    }
}

/// The prefix length of `mask` as a mask of `field`, or `None` when it is
/// not a prefix (contiguous high bits of the field).
fn prefix_len(field: Field, mask: u128) -> Option<u32> {
    let max = field.max_value();
    let host = !mask & max;
    // `host` must be 2^k - 1 (wrapping: a 128-bit field with a zero mask).
    (host & host.wrapping_add(1) == 0).then(|| field.bits() - host.count_ones())
}

/// Compiles `table` if it has one of the shapes, else `None`. Cost: linear
/// in the table's rules.
pub fn compile(table: &Table) -> Option<SpecialTable> {
    compile_rules(table.rules.iter().cloned().collect(), MIN_RULES)
}

/// [`compile`] over `rules` with a minimum of `min_rules` shaped rules.
fn compile_rules(rules: Vec<Arc<Rule>>, min_rules: usize) -> Option<SpecialTable> {
    if rules.len() > u32::MAX as usize {
        return None;
    }
    let mut end = rules.len();
    while end > 0 && *rules[end - 1].spec.m.mask() == FlowKey::ZERO {
        end -= 1;
    }
    let body = &rules[..end];
    if body.is_empty() || body.len() < min_rules {
        return None;
    }
    let first = *body[0].spec.m.mask();
    // The bits where some mask differs from the first.
    let mut diff = FlowKey::ZERO;
    for r in body {
        let m = r.spec.m.mask();
        for ((d, a), b) in diff.w.iter_mut().zip(&m.w).zip(&first.w) {
            *d |= a ^ b;
        }
    }
    let shape = if diff == FlowKey::ZERO {
        Shape::Exact
    } else {
        // One field must hold every differing bit, each mask a prefix of
        // it, no longer than the one before.
        let field = Field::ALL
            .iter()
            .copied()
            .find(|&f| diff.is_subset_of(&FlowKey::field_mask(f)))?;
        let mut last = u32::MAX;
        let mut lengths = 0;
        for r in body {
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
    };
    let mut groups: Vec<Group> = Vec::new();
    for (i, r) in body.iter().enumerate() {
        let mask = r.spec.m.mask();
        if groups.last().is_none_or(|g| g.mask != *mask) {
            // Sized for the whole run of this mask: no rehash, which would
            // re-read every rule's key.
            let run = body[i..]
                .iter()
                .take_while(|r| r.spec.m.mask() == mask)
                .count();
            groups.push(Group {
                mask: *mask,
                words: mask.nonzero_words().into_boxed_slice(),
                index: HashTable::with_capacity(run),
            });
        }
        let g = groups.last_mut()?;
        let key = r.spec.m.key();
        let h = key.hash_masked_words(&g.mask, &g.words);
        let (gm, gw) = (&g.mask, &g.words);
        // An earlier rule with the same masked key shadows this one.
        if g.index
            .find(h, |&j| {
                key.matches_masked_words(gm, rules[j as usize].spec.m.key(), gw)
            })
            .is_none()
        {
            g.index.insert_unique(h, i as u32, |&j| {
                rules[j as usize].spec.m.key().hash_masked_words(gm, gw)
            });
        }
    }
    Some(SpecialTable {
        shape,
        groups: groups.into_boxed_slice(),
        mask: first,
        default: (end < rules.len()).then_some(end as u32),
        rules: rules.into_boxed_slice(),
    })
}

/// The compiled form of `table`, compiling it on first use; `None` when
/// the table keeps the generic walk.
#[inline]
pub fn of(table: &Table) -> Option<&SpecialTable> {
    table
        .derived
        .get_or_init(|| Box::new(compile(table)))
        .downcast_ref::<Option<SpecialTable>>()?
        .as_ref()
}

/// Compiles every table of `prog` whose slot is empty (the tables whose
/// rules changed since the program it was built from; unchanged tables
/// share their filled slot). Returns how many slots were compiled (tables
/// that share one, like the empty ones, count once). Call
/// it on the control side after building a program and before publishing
/// it, so that no PMD pays for a compile.
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
            out.push_str(&format!("table {i}: {shape}, {} rules\n", s.rules.len()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::slowpath::{translate, translate_generic, Translation};
    use crate::flow::key::{extract, testpkt::tcp4};
    use crate::flow::program::FlowMod;
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
        assert_eq!(s.default, Some(4));
        assert_eq!(s.mask().get(Field::NwDst), 0xffff_ff00);
        let k = extract(&tcp4([1, 1, 1, 1], [10, 2, 7, 7], 1, 2, 64), PortNo(1));
        assert_eq!(s.lookup(&k), Some(2));
        let k = extract(&tcp4([1, 1, 1, 1], [11, 2, 7, 7], 1, 2, 64), PortNo(1));
        assert_eq!(s.lookup(&k), Some(4), "default");
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
        let mut p = FlowPipeline::new(
            t,
            FlowPipelineConfig {
                ports: (1..=4).map(PortNo).collect(),
                ..FlowPipelineConfig::default()
            },
        );
        let mut out: Output<HeapBuf> = Output::new(8);
        let stats = p.stats();
        for pass in 0..3 {
            for chunk in frames.chunks(32) {
                let mut b = Burst::new(PortNo(1));
                b.pkts.extend(chunk.iter().map(|f| HeapBuf::from_frame(f)));
                p.process(1, &mut b, &mut out);
                let mut sent = 0;
                out.flush(|port, q| {
                    assert_eq!(port, PortNo(2));
                    sent += q.len();
                    q.clear();
                });
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
            let s = compile_rules(t.rules.iter().cloned().collect(), 1);
            prop_assert!(s.is_some(), "{:?} not specialised: {:?}", kind, flows);
            prop_assert_eq!(of(t).is_some(), body >= MIN_RULES);
            let s = s.expect("checked");
            for (a, port, mac, in_port, tcp) in pkts {
                let k = packet(a, port, mac, in_port, tcp);
                let generic = translate_generic(&prog, &k);
                let spec = translate(&prog, &k, None);
                prop_assert!(same(&spec, &generic), "{:?}\n{:?}\nvs\n{:?}", k, spec, generic);
                // The index alone, on every table size.
                let want = t.rules.iter().position(|r| r.spec.m.matches(&k));
                prop_assert_eq!(s.lookup(&k), want);
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
            prop_assert!(compile_rules(t.rules.iter().cloned().collect(), 1).is_none(), "specialised: {:?}", flows);
            prop_assert!(of(t).is_none());
            for (a, port, mac, in_port, tcp) in pkts {
                let k = packet(a, port, mac, in_port, tcp);
                prop_assert!(same(&translate(&prog, &k, None), &translate_generic(&prog, &k)));
            }
        }
    }
}
