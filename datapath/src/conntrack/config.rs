//! Configuration of connection tracking and Services: the table's
//! [`ConntrackConfig`] with its per-state [`Timeouts`], the Service table's
//! [`ServiceConfig`], and the `[datapath]` keys that set them.
//!
//! ```text
//! conntrack_max = 1048576                  ; global connection limit
//! conntrack_zone_limit = 0                 ; default per-zone limit (0: none)
//! conntrack_zone_limits = 1:50000,2:1000   ; zone:limit pairs
//! conntrack_timeouts = tcp_established=86400,udp_first=30   ; seconds
//! conntrack_tcp_loose = false              ; pick up mid-stream TCP (Linux's tcp_loose)
//! conntrack_cache_entries = 65536          ; per-PMD connection cache (0: none)
//! service_node_addresses = 192.168.1.10    ; NodePort frontends
//! service_node_port_range = 30000-32767
//! service_masquerade_ip = 169.254.169.1
//! service_cluster_cidrs = 10.244.0.0/16,10.96.0.0/12
//! service_node_zone = zone-a               ; topology.kubernetes.io/zone
//! ```
//!
//! Plain data, parsed once at start-up.

use std::net::Ipv4Addr;

use super::cache;
use crate::time::Nanos;

use serde::{Deserialize, Serialize};

pub(super) const SEC: Nanos = 1_000_000_000;

/// Per-state idle timeouts (Linux defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN_SENT (120 s).
    pub tcp_syn_sent: Nanos,
    /// TCP SYN_RECV (60 s).
    pub tcp_syn_recv: Nanos,
    /// TCP ESTABLISHED (5 days).
    pub tcp_established: Nanos,
    /// TCP FIN_WAIT (120 s).
    pub tcp_fin_wait: Nanos,
    /// TCP LAST_ACK (30 s).
    pub tcp_last_ack: Nanos,
    /// TCP TIME_WAIT (120 s).
    pub tcp_time_wait: Nanos,
    /// TCP CLOSE (10 s).
    pub tcp_close: Nanos,
    /// UDP/SCTP/other before a reply (30 s).
    pub udp_first: Nanos,
    /// UDP/SCTP/other after a reply (120 s, the kernel's "stream").
    pub udp_stream: Nanos,
    /// ICMP echo (30 s).
    pub icmp: Nanos,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120 * SEC,
            tcp_syn_recv: 60 * SEC,
            tcp_established: 432_000 * SEC,
            tcp_fin_wait: 120 * SEC,
            tcp_last_ack: 30 * SEC,
            tcp_time_wait: 120 * SEC,
            tcp_close: 10 * SEC,
            udp_first: 30 * SEC,
            udp_stream: 120 * SEC,
            icmp: 30 * SEC,
        }
    }
}

/// Sizes, limits and timeouts of the connection table.
#[derive(Debug, Clone)]
pub struct ConntrackConfig {
    /// Global connection limit.
    pub max_connections: usize,
    /// Per-zone limits (`(zone, limit)`); zones not listed use
    /// `default_zone_limit`.
    pub zone_limits: Vec<(u16, u32)>,
    /// Limit for zones not in `zone_limits` (0: only the global limit).
    pub default_zone_limit: u32,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// Entries of each PMD's connection cache (rounded up to a power of
    /// two; 0: no cache, every packet looks in the shared table).
    pub cache_entries: usize,
    /// Source ports for masquerading (Service hairpin, NodePort).
    pub masquerade_ports: (u16, u16),
    /// Pick up TCP connections whose handshake was not seen (a plain ACK
    /// with no entry), as Linux's `nf_conntrack_tcp_loose`: they start
    /// ESTABLISHED without window checks, so traffic survives a datapath
    /// restart. Off by default, like OVS (such a packet is `+inv`).
    pub tcp_loose: bool,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_connections: 1 << 20,
            zone_limits: Vec::new(),
            default_zone_limit: 0,
            timeouts: Timeouts::default(),
            shards: 256,
            cache_entries: cache::CACHE_ENTRIES,
            masquerade_ports: (32768, 60999),
            tcp_loose: false,
        }
    }
}

/// Node-wide settings of the Service table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Local node addresses: NodePort frontends, and sources that are
    /// masqueraded.
    pub node_addresses: Vec<Ipv4Addr>,
    /// Allowed node ports (inclusive).
    pub node_port_range: (u16, u16),
    /// Source address for masqueraded connections.
    pub masquerade_ip: Ipv4Addr,
    /// Pod CIDRs (`(network, prefix length)`): sources inside are internal.
    pub cluster_cidrs: Vec<(Ipv4Addr, u8)>,
    /// This node's `topology.kubernetes.io/zone`, for topology-aware
    /// routing (zone hints); `None` disables it.
    pub node_zone: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            node_addresses: Vec::new(),
            node_port_range: (30000, 32767),
            masquerade_ip: Ipv4Addr::UNSPECIFIED,
            cluster_cidrs: Vec::new(),
            node_zone: None,
        }
    }
}

/// The keys this module understands.
pub const STATEFUL_KEYS: &[&str] = &[
    "conntrack_max",
    "conntrack_zone_limit",
    "conntrack_zone_limits",
    "conntrack_timeouts",
    "conntrack_tcp_loose",
    "conntrack_cache_entries",
    "service_node_addresses",
    "service_node_port_range",
    "service_masquerade_ip",
    "service_cluster_cidrs",
    "service_node_zone",
];

/// Conntrack and Service settings of the daemon.
#[derive(Debug, Clone, Default)]
pub struct StatefulConfig {
    /// The connection table.
    pub conntrack: ConntrackConfig,
    /// The Service table.
    pub services: ServiceConfig,
}

impl PartialEq for StatefulConfig {
    fn eq(&self, o: &Self) -> bool {
        let (a, b) = (&self.conntrack, &o.conntrack);
        a.max_connections == b.max_connections
            && a.zone_limits == b.zone_limits
            && a.default_zone_limit == b.default_zone_limit
            && a.timeouts == b.timeouts
            && a.shards == b.shards
            && a.cache_entries == b.cache_entries
            && a.masquerade_ports == b.masquerade_ports
            && a.tcp_loose == b.tcp_loose
            && self.services == o.services
    }
}

/// What is wrong with the value of a conntrack or Service key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatefulKeyError {
    /// The value does not have the expected form.
    #[error("'{value}' is not {what}")]
    NotA {
        /// The value as given.
        value: String,
        /// What it should be.
        what: &'static str,
    },
    /// A `conntrack_timeouts` name that is no timeout.
    #[error("unknown timeout '{0}' (use tcp_syn_sent, tcp_syn_recv, tcp_established, tcp_fin_wait, tcp_last_ack, tcp_time_wait, tcp_close, udp_first, udp_stream or icmp)")]
    UnknownTimeout(String),
    /// A port range whose first port exceeds its last.
    #[error("'{0}' is empty: FIRST must not exceed LAST")]
    EmptyRange(String),
    /// A zone that is not a label value.
    #[error("'{0}' is not a zone label value (up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)")]
    ZoneLabel(String),
    /// A CIDR with a prefix longer than 32.
    #[error("'{0}' has a prefix length above 32")]
    PrefixTooLong(String),
    /// A key this module does not own.
    #[error("unknown key '{0}'")]
    UnknownKey(String),
}

fn not_a(value: &str, what: &'static str) -> StatefulKeyError {
    StatefulKeyError::NotA {
        value: value.to_string(),
        what,
    }
}

fn num<T: std::str::FromStr>(v: &str, what: &'static str) -> Result<T, StatefulKeyError> {
    v.trim().parse().map_err(|_| not_a(v, what))
}

fn addr(v: &str) -> Result<Ipv4Addr, StatefulKeyError> {
    num(v, "an IPv4 address (a.b.c.d)")
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl StatefulConfig {
    /// Sets key `k` (one of [`STATEFUL_KEYS`]) from the text `v`.
    ///
    /// # Errors
    /// [`StatefulKeyError`]: what is wrong with the value.
    pub fn set(&mut self, k: &str, v: &str) -> Result<(), StatefulKeyError> {
        match k {
            "conntrack_max" => self.conntrack.max_connections = num(v, "a number of connections")?,
            "conntrack_zone_limit" => {
                self.conntrack.default_zone_limit = num(v, "a number of connections")?
            }
            "conntrack_zone_limits" => {
                self.conntrack.zone_limits = list(v)
                    .map(|p| {
                        let (z, l) = p.split_once(':').ok_or_else(|| not_a(p, "ZONE:LIMIT"))?;
                        Ok((num(z, "a zone (0-65535)")?, num(l, "a limit")?))
                    })
                    .collect::<Result<_, StatefulKeyError>>()?
            }
            "conntrack_tcp_loose" => {
                self.conntrack.tcp_loose = match v.trim() {
                    "true" | "yes" | "on" | "1" => true,
                    "false" | "no" | "off" | "0" => false,
                    _ => return Err(not_a(v, "true or false")),
                }
            }
            "conntrack_cache_entries" => {
                self.conntrack.cache_entries = num(v, "a number of cache entries")?
            }
            "conntrack_timeouts" => {
                for p in list(v) {
                    let (name, secs) = p.split_once('=').ok_or_else(|| not_a(p, "NAME=SECONDS"))?;
                    let ns = num::<u64>(secs, "a number of seconds")?.saturating_mul(1_000_000_000);
                    let t: &mut Timeouts = &mut self.conntrack.timeouts;
                    let slot = match name.trim() {
                        "tcp_syn_sent" => &mut t.tcp_syn_sent,
                        "tcp_syn_recv" => &mut t.tcp_syn_recv,
                        "tcp_established" => &mut t.tcp_established,
                        "tcp_fin_wait" => &mut t.tcp_fin_wait,
                        "tcp_last_ack" => &mut t.tcp_last_ack,
                        "tcp_time_wait" => &mut t.tcp_time_wait,
                        "tcp_close" => &mut t.tcp_close,
                        "udp_first" => &mut t.udp_first,
                        "udp_stream" => &mut t.udp_stream,
                        "icmp" => &mut t.icmp,
                        other => return Err(StatefulKeyError::UnknownTimeout(other.to_string())),
                    };
                    *slot = ns;
                }
            }
            "service_node_addresses" => {
                self.services.node_addresses = list(v).map(addr).collect::<Result<_, _>>()?
            }
            "service_node_port_range" => {
                let (a, b) = v
                    .split_once('-')
                    .ok_or_else(|| not_a(v, "a port range FIRST-LAST"))?;
                let (a, b) = (num(a, "a port")?, num(b, "a port")?);
                if a > b {
                    return Err(StatefulKeyError::EmptyRange(v.to_string()));
                }
                self.services.node_port_range = (a, b);
            }
            "service_masquerade_ip" => self.services.masquerade_ip = addr(v)?,
            "service_node_zone" => {
                let z = v.trim();
                let label_ok = z.len() <= 63
                    && z.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    && z.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && z.ends_with(|c: char| c.is_ascii_alphanumeric());
                if !z.is_empty() && !label_ok {
                    return Err(StatefulKeyError::ZoneLabel(z.to_string()));
                }
                self.services.node_zone = (!z.is_empty()).then(|| z.to_string());
            }
            "service_cluster_cidrs" => {
                self.services.cluster_cidrs = list(v)
                    .map(|c| {
                        let (a, l) = c
                            .split_once('/')
                            .ok_or_else(|| not_a(c, "a CIDR a.b.c.d/N"))?;
                        let l: u8 = num(l, "a prefix length (0-32)")?;
                        if l > 32 {
                            return Err(StatefulKeyError::PrefixTooLong(c.to_string()));
                        }
                        Ok((addr(a)?, l))
                    })
                    .collect::<Result<_, StatefulKeyError>>()?
            }
            other => return Err(StatefulKeyError::UnknownKey(other.to_string())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_errors_are_sentences() {
        let mut c = StatefulConfig::default();
        c.set("conntrack_max", "1000").expect("max");
        c.set("conntrack_cache_entries", "0").expect("cache");
        c.set("conntrack_zone_limits", "1:50, 2:7").expect("zones");
        c.set("conntrack_timeouts", "udp_first=5,tcp_established=60")
            .expect("timeouts");
        c.set("service_node_addresses", "192.168.1.10,10.0.0.1")
            .expect("addrs");
        c.set("service_node_port_range", "30000-30010")
            .expect("range");
        c.set("service_masquerade_ip", "169.254.169.1")
            .expect("masq");
        c.set("service_cluster_cidrs", "10.244.0.0/16")
            .expect("cidrs");
        assert_eq!(c.conntrack.max_connections, 1000);
        assert_eq!(c.conntrack.cache_entries, 0);
        assert_eq!(c.conntrack.zone_limits, vec![(1, 50), (2, 7)]);
        assert_eq!(c.conntrack.timeouts.udp_first, 5_000_000_000);
        assert_eq!(c.services.node_addresses.len(), 2);
        assert_eq!(c.services.node_port_range, (30000, 30010));
        assert!(c
            .set("conntrack_timeouts", "tcp_forever=1")
            .unwrap_err()
            .to_string()
            .contains("unknown timeout"));
        assert!(c
            .set("service_node_port_range", "9-1")
            .unwrap_err()
            .to_string()
            .contains("must not exceed"));
        assert!(c
            .set("service_cluster_cidrs", "10.0.0.0/40")
            .unwrap_err()
            .to_string()
            .contains("above 32"));
        for k in STATEFUL_KEYS {
            assert!(c.set(k, "garbage!").is_err(), "{k}");
        }
    }
}
