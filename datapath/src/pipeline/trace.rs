//! `ofproto/trace`: follows one packet through the flow program as the flow
//! pipeline would, explaining every table, rule and action, the megaflow it
//! would install and the final datapath actions.
//!
//! The trace runs the classifier's slow path ([`translate`]) in tracing mode
//! over a snapshot of a [`FlowTables`] program and, given a
//! [`TraceOracle`] (the conntrack's, defined with the tables so that the
//! stateful features need not depend on the pipeline), replays each `ct`
//! action and resumes in `ct(table=N)`'s table with the state the oracle
//! reports, at most [`MAX_RECIRC`] times, as the datapath recirculates.
//! Nothing is committed and no counter moves. After the first pass it
//! says whether the datapath forwards the packet on the direct path
//! (`classifier::direct`) or through the cache cascade.
//!
//! Thread-safety: pure over a program snapshot; callable from any thread
//! (the control thread in `sluiced`).

use std::fmt::Write as _;

use crate::classifier::slowpath::{format_key, translate};
use crate::flow::action::DpAction;
use crate::flow::key::{extract, Field, FlowKey};
use crate::flow::tables::{parse_err, CtTrace, FlowTables, FlowTablesError, TraceOracle};
use crate::flow::text;
use crate::packet::PortNo;
use crate::pipeline::flow::MAX_RECIRC;

impl FlowTables {
    /// `ofproto/trace`: follows a packet through the program and explains
    /// every table, rule and action, the megaflow it would install and the
    /// final datapath actions. `packet` is flow text
    /// (`in_port=1,tcp,nw_dst=10.0.0.1,tp_dst=80`) or a hex frame, optionally
    /// preceded by `in_port=N `.
    pub fn trace(&self, packet: &str) -> Result<String, FlowTablesError> {
        self.trace_with(packet, None)
    }

    /// [`FlowTables::trace`] that also asks `oracle` what each `ct` action
    /// decides (connection found or new, the Service endpoint, NAT, the
    /// `ct_state` the next table sees) and, for `ct(table=N)`, resumes the
    /// trace in table N with that state, as the datapath recirculates.
    /// Nothing is committed and no counter moves.
    pub fn trace_with(
        &self,
        packet: &str,
        oracle: Option<&dyn TraceOracle>,
    ) -> Result<String, FlowTablesError> {
        let mut key = trace_key(packet)?;
        let p = self.program();
        let mut out = format!(
            "Flow: {}\n\nbridge(\"sluice\")\n----------------\n",
            format_key(&key)
        );
        for pass in 0..=MAX_TRACE_RECIRC {
            let tr = translate(&p, &key, Some(&mut out));
            if pass == 0 {
                // Which tier the datapath forwards this packet on.
                out.push_str(&crate::classifier::direct::explain(&p, &key));
            }
            let Some(oracle) = oracle else {
                break;
            };
            // Replay the datapath actions on the key, as the PMD would.
            let mut resume = None;
            for a in tr.xlate.actions.iter() {
                match a {
                    DpAction::Set { field, value, mask } => key.set_masked(*field, *value, *mask),
                    DpAction::Ct(ct) => {
                        let _ = writeln!(out, "\nConntrack: {}", text::format_ct(ct));
                        match oracle.conntrack(ct, &key, &mut out) {
                            CtTrace::Continue(k) => key = k,
                            CtTrace::Stop => return Ok(out),
                        }
                        let _ = writeln!(
                            out,
                            "    => ct_state={},ct_zone={},ct_mark={:#x},ct_label={:#x}",
                            text::format_ct_state(key.get(Field::CtState) as u8),
                            key.get(Field::CtZone),
                            key.get(Field::CtMark),
                            key.get(Field::CtLabel)
                        );
                        resume = ct.table;
                    }
                    _ => {}
                }
            }
            let Some(t) = resume else {
                break;
            };
            if pass == MAX_TRACE_RECIRC {
                let _ = writeln!(out, "\n>>>> recirculation limit: dropped <<<<");
                break;
            }
            key.set(Field::RecircId, u128::from(t) + 1);
            let _ = write!(
                out,
                "\nResuming from table {t} (recirc_id={:#x})\n\nFlow: {}\n\nbridge(\"sluice\")\n----------------\n",
                u128::from(t) + 1,
                format_key(&key)
            );
        }
        Ok(out)
    }
}

/// How many times `trace` follows `ct(table=N)` (the datapath's limit).
const MAX_TRACE_RECIRC: usize = MAX_RECIRC;

fn trace_key(packet: &str) -> Result<FlowKey, FlowTablesError> {
    let packet = packet.trim();
    let (port, rest) = match packet.split_once(char::is_whitespace) {
        Some((p, rest)) if p.starts_with("in_port=") && !rest.contains('=') => {
            (Some(p), rest.trim())
        }
        _ => (None, packet),
    };
    let hex: String = rest
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let looks_hex =
        !rest.contains('=') && !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !looks_hex {
        return text::parse_packet(packet).map_err(parse_err(1));
    }
    if !hex.len().is_multiple_of(2) {
        return Err(FlowTablesError::BadHex(format!("{} digits", hex.len())));
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| FlowTablesError::BadHex(e.to_string()))?;
    let in_port = match port {
        Some(p) => {
            let m = text::parse_packet(p).map_err(parse_err(1))?;
            PortNo(m.get(Field::InPort) as u16)
        }
        None => PortNo(0),
    };
    Ok(extract(&bytes, in_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::testpkt::tcp4;

    #[test]
    fn trace_from_text_and_hex() {
        let t = FlowTables::new();
        t.add_flows("priority=10,tcp,tp_dst=80 actions=mod_tp_dst:8080,goto_table:1\ntable=1,priority=0 actions=output:2", 0)
            .expect("add");
        let out = t
            .trace("in_port=1,tcp,nw_dst=10.0.0.1,tp_dst=80")
            .expect("trace");
        assert!(
            out.contains("0. tcp,tp_dst=80, priority 10, cookie 0x0"),
            "{out}"
        );
        assert!(out.contains("1. priority 0, cookie 0x0"), "{out}");
        assert!(
            out.contains("Megaflow: tcp,recirc_id=0x0,ip_frag=not_later,tp_dst=80\n"),
            "{out}"
        );
        assert!(
            out.contains("Datapath actions: set(tp_dst=8080),output:2"),
            "{out}"
        );
        let frame = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 5, 80, 64);
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        let out = t.trace(&format!("in_port=3 0x{hex}")).expect("trace hex");
        assert!(out.contains("in_port=3"), "{out}");
        assert!(
            out.contains("Datapath actions: set(tp_dst=8080),output:2"),
            "{out}"
        );
        assert!(matches!(t.trace("0xabc"), Err(FlowTablesError::BadHex(_))));
    }
}
