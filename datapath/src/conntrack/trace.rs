//! `trace` for the stateful path: what a `ct(...)` action decides for a
//! traced packet, explained line by line, without committing anything.
//!
//! [`CtTracer`] implements [`TraceOracle`] for [`FlowTables::trace_with`]:
//! it looks the packet's tuple up with [`Conntrack::peek`] (an existing
//! connection: its direction, state, marks and the NAT it applies) or, for a
//! new connection, explains the commit: an explicit `nat(src=|dst=)`, or the
//! Service decision of a bare `nat` through [`super::lb::LoadBalancer::preview`] (which
//! records no client affinity). The key it returns carries `ct_state`,
//! `ct_zone`, `ct_mark`, `ct_label` and the translated addresses and ports,
//! so the trace resumes in `ct(table=N)`'s table exactly as the datapath
//! would.
//!
//! Where the datapath chooses at random (an endpoint among several, a
//! source port from a range), the trace shows one possible choice and says
//! so. TCP window checks are not evaluated (a flow key has no sequence
//! numbers); ICMP errors are related through their embedded packet, which a
//! flow key does not carry, so the trace stops there and says why.
//!
//! Thread-safety: `CtTracer` is `Send + Sync`; it reads the shared tables.
//!
//! [`FlowTables::trace_with`]: crate::flow::tables::FlowTables::trace_with

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::lb::{LbDecision, LbQuery};
use super::nat::Tuple;
use super::tcp::{flags, Segment, TcpConn};
use super::{ConnKey, Conntrack, CtMarks};
use crate::flow::action::{CtAction, NatKind, NatSpec};
use crate::flow::key::{ct_state, ethertype, frag, ipproto, Field, FlowKey};
use crate::flow::tables::{CtTrace, TraceOracle};
use crate::time::Nanos;

/// The `trace` oracle over a connection table and its Service table.
pub struct CtTracer {
    ct: Conntrack,
    clock: fn() -> Nanos,
}

impl CtTracer {
    /// A tracer reading `ct` at the time `clock` gives.
    pub fn new(ct: Conntrack, clock: fn() -> Nanos) -> CtTracer {
        CtTracer { ct, clock }
    }
}

fn endpoint(ip: u32, port: u16) -> String {
    format!("{}:{port}", Ipv4Addr::from(ip))
}

fn tuple_text(t: &Tuple) -> String {
    format!(
        "{} -> {}",
        endpoint(t.src, t.sport),
        endpoint(t.dst, t.dport)
    )
}

/// Writes the `ct_*` fields and the translated tuple into `key`.
fn finish(key: &FlowKey, ct: &CtAction, st: u8, marks: CtMarks, to: Option<Tuple>) -> FlowKey {
    let mut k = *key;
    if let Some(t) = to {
        k.set(Field::NwSrc, u128::from(t.src));
        k.set(Field::NwDst, u128::from(t.dst));
        if matches!(k.nw_proto(), ipproto::TCP | ipproto::UDP | ipproto::SCTP) {
            k.set(Field::TpSrc, u128::from(t.sport));
            k.set(Field::TpDst, u128::from(t.dport));
        }
    }
    k.set(Field::CtState, u128::from(st));
    k.set(Field::CtZone, u128::from(ct.zone));
    k.set(Field::CtMark, u128::from(marks.mark));
    k.set(Field::CtLabel, marks.label);
    k
}

impl TraceOracle for CtTracer {
    fn conntrack(&self, ct: &CtAction, key: &FlowKey, out: &mut String) -> CtTrace {
        let now = (self.clock)();
        let inv = |out: &mut String, why: &str| {
            let _ = writeln!(out, "    {why}: +inv");
            CtTrace::Continue(finish(
                key,
                ct,
                ct_state::TRK | ct_state::INV,
                CtMarks::ZERO,
                None,
            ))
        };
        if key.dl_type() != ethertype::IPV4 {
            return inv(out, "not IPv4 (IPv6 is not tracked)");
        }
        if key.get(Field::IpFrag) as u8 & frag::ANY != 0 {
            return inv(out, "an IP fragment (fragments are not reassembled)");
        }
        let proto = key.nw_proto();
        let icmp_type = key.get(Field::IcmpType) as u8;
        if proto == ipproto::ICMP && matches!(icmp_type, 3 | 4 | 5 | 11 | 12) {
            let _ = writeln!(
                out,
                "    an ICMP error: +rel when its embedded packet belongs to a connection, which a \
                 flow key does not carry; trace the frame as hex to follow it in the datapath, or \
                 see dump-conntrack\n    trace stops here"
            );
            return CtTrace::Stop;
        }
        let tuple = Tuple {
            src: key.get(Field::NwSrc) as u32,
            dst: key.get(Field::NwDst) as u32,
            sport: key.get(Field::TpSrc) as u16,
            dport: key.get(Field::TpDst) as u16,
        };
        let ck = ConnKey {
            zone: ct.zone,
            proto,
            tuple,
        };
        if let Some(c) = self.ct.peek(now, &ck) {
            let _ = writeln!(
                out,
                "    zone {}: existing connection, {} direction\n    {}",
                ct.zone,
                if c.dir == 0 { "original" } else { "reply" },
                c.line
            );
            if proto == ipproto::TCP {
                let _ = writeln!(out, "    (TCP window checks are not evaluated by trace)");
            }
            let to = (c.nat != 0 && ct.nat.is_some()).then_some(c.target);
            if let Some(t) = &to {
                let _ = writeln!(out, "    nat: {} => {}", tuple_text(&tuple), tuple_text(t));
            }
            let marks = match (ct.commit, ct.mark, ct.label) {
                (true, m, l) => CtMarks {
                    mark: m.map_or(c.marks.mark, |(v, m)| (c.marks.mark & !m) | (v & m)),
                    label: l.map_or(c.marks.label, |(v, m)| (c.marks.label & !m) | (v & m)),
                },
                _ => c.marks,
            };
            return CtTrace::Continue(finish(key, ct, c.state, marks, to));
        }
        let _ = writeln!(
            out,
            "    zone {}: no connection for {} {}",
            ct.zone,
            super::proto_name(proto),
            tuple_text(&tuple)
        );
        let tcp_flags = key.get(Field::TcpFlags) as u8;
        if proto == ipproto::TCP && tcp_flags & flags::SYN == 0 {
            let seg = Segment {
                flags: tcp_flags,
                ..Segment::default()
            };
            if !(self.ct.config().tcp_loose && TcpConn::can_pick_up(&seg)) {
                return inv(
                    out,
                    "TCP without SYN and no connection (mid-stream pickup is off or the flags are \
                     not a plain ACK; trace with tcp_flags=+syn for a connection setup)",
                );
            }
            let _ = writeln!(
                out,
                "    picked up mid-stream (conntrack_tcp_loose): ESTABLISHED, no window checks"
            );
        }
        if proto == ipproto::ICMP && icmp_type == 0 {
            return inv(out, "an echo reply without a request");
        }
        let new = ct_state::TRK | ct_state::NEW;
        if !ct.commit {
            let _ = writeln!(out, "    new connection, not committed (no commit)");
            return CtTrace::Continue(finish(key, ct, new, CtMarks::ZERO, None));
        }
        let marks = CtMarks {
            mark: ct.mark.map_or(0, |(v, m)| v & m),
            label: ct.label.map_or(0, |(v, m)| v & m),
        };
        let commit = |out: &mut String, nat: u8, to: Option<Tuple>| {
            if let Some(t) = &to {
                let _ = writeln!(out, "    nat: {} => {}", tuple_text(&tuple), tuple_text(t));
            }
            let _ = writeln!(
                out,
                "    new connection, committed by the datapath (trace commits nothing)"
            );
            CtTrace::Continue(finish(key, ct, new | nat, marks, to))
        };
        match &ct.nat {
            None => commit(out, 0, None),
            Some(NatSpec {
                kind: Some(kind),
                addrs,
                ports,
            }) => {
                // The datapath's own choice (a hash of the source).
                let (ip, port) = super::nat_pick(&tuple, *kind, *addrs, *ports);
                let mut to = tuple;
                let nat = match kind {
                    NatKind::Dst => {
                        to.dst = ip.unwrap_or(to.dst);
                        to.dport = port.unwrap_or(to.dport);
                        ct_state::DNAT
                    }
                    NatKind::Src => {
                        to.src = ip.unwrap_or(to.src);
                        if let Some((a, b)) = ports {
                            let _ = writeln!(
                                out,
                                "    source port allocated from {a}-{b} (trace shows the first)"
                            );
                            to.sport = *a;
                        }
                        ct_state::SNAT
                    }
                };
                commit(out, nat, Some(to))
            }
            Some(NatSpec { kind: None, .. }) => {
                let Some(services) = self.ct.services() else {
                    let _ = writeln!(out, "    bare nat and no Service table: untranslated");
                    return commit(out, 0, None);
                };
                if !matches!(proto, ipproto::TCP | ipproto::UDP | ipproto::SCTP) {
                    return commit(out, 0, None);
                }
                let q = LbQuery {
                    proto,
                    src: tuple.src,
                    dst: tuple.dst,
                    dport: tuple.dport,
                };
                for l in services.trace(q).lines() {
                    let _ = writeln!(out, "    lb: {l}");
                }
                // One possible pick: the datapath draws at random.
                let rand = (u64::from(tuple.src) << 32 | u64::from(tuple.sport))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15);
                match services.choose(now, q, rand, false) {
                    LbDecision::NotService => commit(out, 0, None),
                    LbDecision::Reject => {
                        let _ = writeln!(
                            out,
                            "    >>>> no usable endpoint: answered with ICMP port unreachable \
                             (ct_state=rel|rpl|trk on the answer) <<<<"
                        );
                        CtTrace::Stop
                    }
                    LbDecision::Drop(reason) => {
                        let _ = writeln!(
                            out,
                            "    >>>> dropped: {} ({}) <<<<",
                            reason.key(),
                            reason.description()
                        );
                        CtTrace::Stop
                    }
                    LbDecision::Forward(t) => {
                        let _ = writeln!(
                            out,
                            "    lb: service {} -> endpoint {} (a random choice; this is one of them)",
                            t.lb.service,
                            endpoint(t.ip, t.port)
                        );
                        let mut to = Tuple {
                            dst: t.ip,
                            dport: t.port,
                            ..tuple
                        };
                        let mut nat = ct_state::DNAT;
                        if let Some(m) = t.masquerade {
                            let (a, b) = self.ct.config().masquerade_ports;
                            let _ = writeln!(
                                out,
                                "    masquerade: source {} port from {a}-{b} (trace shows the first)",
                                Ipv4Addr::from(m)
                            );
                            to.src = m;
                            to.sport = a;
                            nat |= ct_state::SNAT;
                        }
                        commit(out, nat, Some(to))
                    }
                }
            }
        }
    }
}
