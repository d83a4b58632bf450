//! Read-only views of the connection table: `dump-conntrack` lines,
//! `lb-trace`'s [`Conntrack::describe`], `trace`'s [`Conntrack::peek`],
//! `conntrack-stats`' [`StateCounts`] and the live endpoint packets that
//! `dump-services` adds, with the [`ConnFilter`] of dump and flush.
//!
//! Invariants: nothing here changes a connection or a counter; expired
//! connections not yet swept are left out.
//!
//! Thread-safety: runs on the control thread; each view locks one shard at
//! a time, so a dump is per-shard consistent, not a global snapshot.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::config::SEC;
use super::entry::{Conn, ConnKey, CtMarks};
use super::lock;
use super::nat::Tuple;
use super::table::{key_hash, ConnFilter, Conntrack};
use sluice_api::conntrack::{ConnDump, ConnEntry, ConnTuple};

use crate::flow::key::{ct_state, ipproto};
use crate::time::Nanos;

/// A read-only view of a connection, for `trace` ([`Conntrack::peek`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnPeek {
    /// 0: the key is the original direction's; 1: the reply's.
    pub dir: u8,
    /// The `ct_state` bits the packet would get.
    pub state: u8,
    /// `ct_mark` and `ct_label`.
    pub marks: CtMarks,
    /// `ct_state::SNAT`/`DNAT` bits of the entry.
    pub nat: u8,
    /// The tuple a `ct(nat)` rewrites this direction's packets to.
    pub target: Tuple,
    /// The `dump-conntrack` line.
    pub line: String,
}

/// Counts by state for `conntrack-stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// `(state name, connections)`, sorted by name.
    pub by_state: Vec<(String, u64)>,
    /// Connections in total.
    pub total: u64,
    /// Connections with a destination translation (Services, `nat(dst)`).
    pub dnat: u64,
    /// Connections with a source translation.
    pub snat: u64,
}

impl Conntrack {
    /// Packets of live Service connections per `(service, endpoint
    /// address, endpoint port)` (for `dump-services`).
    pub fn live_endpoint_packets(
        &self,
    ) -> std::collections::HashMap<(Arc<str>, Ipv4Addr, u16), u64> {
        let mut m = std::collections::HashMap::new();
        self.for_each(|c| {
            if let Some(lb) = &c.lb {
                let [p0, p1] = c.packets();
                *m.entry((lb.service.clone(), lb.endpoint.0, lb.endpoint.1))
                    .or_default() += p0 + p1;
            }
        });
        m
    }

    /// The `dump-conntrack` line of the live connection `key` belongs to,
    /// with the direction it names (`lb-trace`).
    pub fn describe(&self, key: &ConnKey, now: Nanos) -> Option<String> {
        let shard = lock(self.shard_of(key_hash(key)));
        let slot = shard.get(key)?;
        let c = &slot.conn;
        c.live(now).then(|| {
            format!(
                "{} ({} direction)",
                format_conn(c, now),
                if slot.dir == 0 { "original" } else { "reply" }
            )
        })
    }

    /// What the next packet with `key` would find, without changing any
    /// state (`trace`): direction, `ct_state` bits, marks, the tuple a
    /// NATing `ct` rewrites it to, and the `dump-conntrack` line. TCP
    /// window checks are not evaluated (a key has no sequence numbers).
    pub fn peek(&self, now: Nanos, key: &ConnKey) -> Option<ConnPeek> {
        let shard = lock(self.shard_of(key_hash(key)));
        let slot = shard.get(key)?;
        let c = &slot.conn;
        if !c.live(now) {
            return None;
        }
        let dir = usize::from(slot.dir);
        let mut st = ct_state::TRK | c.nat;
        st |= if c.replied() || dir == 1 {
            ct_state::EST
        } else {
            ct_state::NEW
        };
        if dir == 1 {
            st |= ct_state::RPL;
        }
        Some(ConnPeek {
            dir: slot.dir,
            state: st,
            marks: c.marks(),
            nat: c.nat,
            target: c.keys[1 - dir].tuple.reverse(),
            line: format_conn(c, now),
        })
    }

    /// Connections by state.
    pub fn state_counts(&self) -> StateCounts {
        let mut m: std::collections::BTreeMap<&'static str, u64> = Default::default();
        let (mut total, mut dnat, mut snat) = (0, 0, 0);
        self.for_each(|c| {
            *m.entry(c.state_name()).or_default() += 1;
            total += 1;
            dnat += u64::from(c.nat & ct_state::DNAT != 0);
            snat += u64::from(c.nat & ct_state::SNAT != 0);
        });
        StateCounts {
            by_state: m.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            total,
            dnat,
            snat,
        }
    }

    /// `dump-conntrack` lines (OVS `dpctl/dump-conntrack` style), sorted.
    pub fn dump(&self, filter: &ConnFilter, now: Nanos) -> String {
        sluice_api::Render::render(&self.view(filter, now))
    }

    /// The live connections selected by `filter`, sorted by their dump
    /// line, as the control API shows them.
    pub fn view(&self, filter: &ConnFilter, now: Nanos) -> ConnDump {
        let mut connections = Vec::new();
        self.for_each(|c| {
            if filter.matches(c) && c.expires() > now {
                connections.push(entry(c, now));
            }
        });
        connections.sort_by_cached_key(ConnEntry::line);
        ConnDump { connections }
    }
}

pub(super) fn proto_name(p: u8) -> String {
    match p {
        ipproto::TCP => "tcp".into(),
        ipproto::UDP => "udp".into(),
        ipproto::SCTP => "sctp".into(),
        ipproto::ICMP => "icmp".into(),
        p => format!("proto={p}"),
    }
}

fn tuple(k: &ConnKey) -> ConnTuple {
    ConnTuple {
        src: Ipv4Addr::from(k.tuple.src),
        dst: Ipv4Addr::from(k.tuple.dst),
        sport: k.tuple.sport,
        dport: k.tuple.dport,
    }
}

/// One connection as the control API shows it.
pub fn entry(c: &Conn, now: Nanos) -> ConnEntry {
    let marks = c.marks();
    ConnEntry {
        proto: c.keys[0].proto,
        orig: tuple(&c.keys[0]),
        reply: tuple(&c.keys[1]),
        zone: c.keys[0].zone,
        mark: marks.mark,
        label: marks.label,
        timeout_s: c.expires().saturating_sub(now) / SEC,
        packets: c.packets(),
        tcp_state: c.tcp_state().map(|s| s.name().to_string()),
        service: c.lb.as_ref().map(|lb| lb.service.to_string()),
    }
}

/// The `dump-conntrack` line of `c`.
pub(super) fn format_conn(c: &Conn, now: Nanos) -> String {
    entry(c, now).line()
}
