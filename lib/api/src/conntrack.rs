//! Connection tracking: the table's entries (OVS's `dpctl/dump-conntrack`),
//! flushing, and the counters (`dpctl/ct-stats-show`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{args, method, ApiError, Empty, FromArgs, Render};

/// Which connections a dump or flush selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnFilter {
    /// Only this zone.
    #[serde(default)]
    pub zone: Option<u16>,
    /// Only connections with this address in either tuple.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

impl FromArgs for ConnFilter {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let (zone, ip) = args::zone_ip_filter(a)?;
        Ok(ConnFilter { zone, ip })
    }
}

/// One direction's addresses and ports (for ICMP, `sport` is the id and
/// `dport` is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnTuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (ICMP id).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// One tracked connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEntry {
    /// IP protocol number.
    pub proto: u8,
    /// The original direction.
    pub orig: ConnTuple,
    /// The reply direction (after NAT).
    pub reply: ConnTuple,
    /// Zone.
    pub zone: u16,
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`.
    pub label: u128,
    /// Seconds until it expires.
    pub timeout_s: u64,
    /// Packets in the original and reply directions.
    pub packets: [u64; 2],
    /// TCP state name, for TCP.
    pub tcp_state: Option<String>,
    /// The Service that chose its endpoint, if any.
    pub service: Option<String>,
}

/// The name of an IP protocol as conntrack dumps print it.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        p => format!("proto={p}"),
    }
}

impl ConnEntry {
    fn tuple(&self, t: &ConnTuple) -> String {
        if self.proto == 1 {
            format!("src={},dst={},id={}", t.src, t.dst, t.sport)
        } else {
            format!(
                "src={},dst={},sport={},dport={}",
                t.src, t.dst, t.sport, t.dport
            )
        }
    }

    /// The `dpctl/dump-conntrack` line, without the newline.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{},orig=({}),reply=({})",
            proto_name(self.proto),
            self.tuple(&self.orig),
            self.tuple(&self.reply)
        );
        if self.zone != 0 {
            s += &format!(",zone={}", self.zone);
        }
        if self.mark != 0 {
            s += &format!(",mark={}", self.mark);
        }
        if self.label != 0 {
            s += &format!(",labels={:#x}", self.label);
        }
        s += &format!(
            ",timeout={},packets=({},{})",
            self.timeout_s, self.packets[0], self.packets[1]
        );
        if let Some(st) = &self.tcp_state {
            s += &format!(",protoinfo=(state={st})");
        }
        if let Some(svc) = &self.service {
            s += &format!(",service={svc}");
        }
        s
    }
}

/// `dump-conntrack` reply, sorted by line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnDump {
    /// The connections.
    pub connections: Vec<ConnEntry>,
}

impl Render for ConnDump {
    fn render(&self) -> String {
        self.connections.iter().map(|c| c.line() + "\n").collect()
    }
}

/// `flush-conntrack` reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    /// Connections removed.
    pub connections: u64,
}

impl Render for Flushed {
    fn render(&self) -> String {
        format!("flushed {} connections", self.connections)
    }
}

/// One PMD's connection cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnCacheStats {
    /// Lookups answered without a lock.
    pub hits: u64,
    /// Lookups that went to the shared table.
    pub misses: u64,
    /// Slots.
    pub entries: u64,
}

/// `conntrack-stats` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatsReply {
    /// Tracked connections: the table's live counter, exact at any
    /// moment. `by_state`, `dnat` and `snat` come from a walk of the table
    /// while it changes, so under churn their sum can differ from it by
    /// the connections created or removed during the walk.
    pub connections: u64,
    /// The table's limit.
    pub limit: u64,
    /// Connections by state name, sorted by name.
    pub by_state: Vec<(String, u64)>,
    /// Connections with a destination translation.
    pub dnat: u64,
    /// Connections with a source translation.
    pub snat: u64,
    /// Connections created.
    pub created: u64,
    /// Connections expired.
    pub expired: u64,
    /// Connections evicted to make room.
    pub evictions: u64,
    /// New connections refused because the table was full.
    pub limit_hits: u64,
    /// Invalid packets.
    pub invalid: u64,
    /// Related packets (ICMP errors).
    pub related: u64,
    /// Connections rejected (no endpoint, ...).
    pub rejects: u64,
    /// Each PMD's connection cache.
    pub caches: Vec<ConnCacheStats>,
}

impl Render for ConntrackStatsReply {
    fn render(&self) -> String {
        let mut out = format!("connections: {} (limit {})\n", self.connections, self.limit);
        for (state, n) in &self.by_state {
            out += &format!("  {state}: {n}\n");
        }
        out += &format!("  dnat: {}\n  snat: {}\n", self.dnat, self.snat);
        for (name, v) in [
            ("created", self.created),
            ("expired", self.expired),
            ("evictions", self.evictions),
            ("limit hits", self.limit_hits),
            ("invalid", self.invalid),
            ("related", self.related),
            ("rejects", self.rejects),
        ] {
            out += &format!("{name}: {v}\n");
        }
        for (i, c) in self.caches.iter().enumerate() {
            let total = c.hits + c.misses;
            let pct = if total == 0 {
                0.0
            } else {
                100.0 * c.hits as f64 / total as f64
            };
            out += &format!(
                "connection cache pmd {i}: hits {} misses {} ({pct:.1}% hits, {} entries)\n",
                c.hits, c.misses, c.entries
            );
        }
        out
    }
}

method!(
    /// Tracked connections.
    DumpConntrack, "dump-conntrack", "[zone=N] [ip=A.B.C.D]", (0, 2), ConnFilter => ConnDump,
    aliases = ["dpctl/dump-conntrack"]);
method!(
    /// Removes tracked connections.
    FlushConntrack, "flush-conntrack", "[zone=N] [ip=A.B.C.D]", (0, 2), ConnFilter => Flushed,
    aliases = ["dpctl/flush-conntrack"]);
method!(
    /// Connection-tracking counters.
    ConntrackStats, "conntrack-stats", "", (0, 0), Empty => ConntrackStatsReply,
    aliases = ["dpctl/ct-stats-show"]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_matches_dpctl_shape() {
        let t = |a: [u8; 4], b: [u8; 4], sp, dp| ConnTuple {
            src: a.into(),
            dst: b.into(),
            sport: sp,
            dport: dp,
        };
        let e = ConnEntry {
            proto: 6,
            orig: t([10, 0, 0, 1], [10, 96, 0, 10], 40000, 80),
            reply: t([10, 0, 0, 5], [10, 0, 0, 1], 8080, 40000),
            zone: 3,
            mark: 0,
            label: 0,
            timeout_s: 86399,
            packets: [3, 2],
            tcp_state: Some("ESTABLISHED".into()),
            service: Some("default/web:http".into()),
        };
        assert_eq!(
            e.line(),
            "tcp,orig=(src=10.0.0.1,dst=10.96.0.10,sport=40000,dport=80),reply=(src=10.0.0.5,dst=10.0.0.1,sport=8080,dport=40000),zone=3,timeout=86399,packets=(3,2),protoinfo=(state=ESTABLISHED),service=default/web:http"
        );
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["orig"]["dst"], "10.96.0.10");
    }
}
