//! The node's own presence in the datapath: the neighbour (ARP) cache of
//! the underlay (`dump-neighbours`, OVS's `tnl/neigh/*`), the local stack's
//! address and counters, and pod port security (MAC/IP bindings).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{args, method, ApiError, Empty, FromArgs, Render};

/// One neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// Address.
    pub ip: Ipv4Addr,
    /// Its MAC (zero while incomplete).
    pub mac: [u8; 6],
    /// Its state (`REACHABLE`, `STALE`, `INCOMPLETE`, `PERMANENT`, ...).
    pub state: String,
    /// Packets waiting for it to resolve.
    pub queued: u64,
}

impl Neighbour {
    /// The `ip neigh`-style line, without the newline.
    pub fn line(&self) -> String {
        format!(
            "{} lladdr {} {} queued {}",
            self.ip,
            args::fmt_mac(&self.mac),
            self.state,
            self.queued
        )
    }
}

/// `dump-neighbours` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeighbourDump {
    /// The entries.
    pub neighbours: Vec<Neighbour>,
}

impl Render for NeighbourDump {
    fn render(&self) -> String {
        self.neighbours.iter().map(|n| n.line() + "\n").collect()
    }
}

/// `neigh/set IP MAC`: a permanent neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighSetRequest {
    /// Address.
    pub ip: Ipv4Addr,
    /// MAC address.
    pub mac: [u8; 6],
}

impl FromArgs for NeighSetRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let get = |i: usize| a.get(i).map(String::as_str).unwrap_or("");
        Ok(NeighSetRequest {
            ip: args::ipv4(get(0), "the neighbour's address")?,
            mac: args::mac(get(1))?,
        })
    }
}

impl Render for NeighSetRequest {
    fn render(&self) -> String {
        format!(
            "{} lladdr {} PERMANENT\n",
            self.ip,
            args::fmt_mac(&self.mac)
        )
    }
}

/// `neigh/del IP`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighDelRequest {
    /// Address.
    pub ip: Ipv4Addr,
}

impl FromArgs for NeighDelRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        Ok(NeighDelRequest {
            ip: args::ipv4(
                a.first().map(String::as_str).unwrap_or(""),
                "the neighbour's address",
            )?,
        })
    }
}

/// `local-stack/show` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalStackReply {
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
    /// MAC address.
    pub mac: [u8; 6],
    /// Uplink port number.
    pub uplink: u16,
    /// Frames delivered to the stack.
    pub rx: u64,
    /// Frames the stack sent.
    pub tx: u64,
    /// ARP replies learned.
    pub arp_replies: u64,
    /// Entries in the neighbour cache.
    #[serde(default)]
    pub neigh_entries: u64,
    /// Unresolved neighbour entries evicted because the cache was full.
    #[serde(default)]
    pub neigh_evicted: u64,
    /// Addresses not resolved because the cache was full of resolved ones.
    #[serde(default)]
    pub neigh_refused: u64,
    /// Resolution requests from the PMDs dropped because their queue was full.
    #[serde(default)]
    pub neigh_want_dropped: u64,
}

impl Render for LocalStackReply {
    fn render(&self) -> String {
        format!(
            "address {}/{} mac {} uplink {}\nrx {} tx {} arp replies learned {}\nneighbours {} (cache full: {} unresolved evicted, {} refused; {} requests dropped, queue full)\n",
            self.ip,
            self.prefix_len,
            args::fmt_mac(&self.mac),
            self.uplink,
            self.rx,
            self.tx,
            self.arp_replies,
            self.neigh_entries,
            self.neigh_evicted,
            self.neigh_refused,
            self.neigh_want_dropped
        )
    }
}

/// A pod port's binding: the only MAC and addresses it may send from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSecurity {
    /// OpenFlow port number.
    pub port: u16,
    /// MAC address.
    pub mac: [u8; 6],
    /// Addresses.
    pub ips: Vec<Ipv4Addr>,
}

impl FromArgs for PortSecurity {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let get = |i: usize| a.get(i).map(String::as_str).unwrap_or("");
        let ips = get(2)
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| ApiError::invalid(format!("{s:?} is not an IPv4 address")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PortSecurity {
            port: args::ofport(get(0))?,
            mac: args::mac(get(1))?,
            ips,
        })
    }
}

/// `del-port-security PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRef {
    /// OpenFlow port number.
    pub port: u16,
}

impl FromArgs for PortRef {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        Ok(PortRef {
            port: args::ofport(a.first().map(String::as_str).unwrap_or(""))?,
        })
    }
}

method!(
    /// The underlay neighbour cache.
    DumpNeighbours, "dump-neighbours", "", (0, 0), Empty => NeighbourDump,
    aliases = ["tnl/neigh/show"]);
method!(
    /// Forgets every neighbour.
    FlushNeighbours, "flush-neighbours", "", (0, 0), Empty => Empty,
    aliases = ["tnl/neigh/flush"]);
method!(
    /// Adds a permanent neighbour.
    NeighSet, "neigh/set", "IP MAC", (2, 2), NeighSetRequest => NeighSetRequest,
    aliases = ["tnl/neigh/set"]);
method!(
    /// Removes a neighbour.
    NeighDel, "neigh/del", "IP", (1, 1), NeighDelRequest => Empty);
method!(
    /// The local stack's address and counters.
    LocalStackShow, "local-stack/show", "", (0, 0), Empty => LocalStackReply);
/// One port's binding and port-security drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSecurityState {
    /// OpenFlow port number.
    pub port: u16,
    /// Its binding (None: unbound).
    pub binding: Option<PortSecurity>,
    /// Frames dropped for a foreign source MAC.
    pub mac_drops: u64,
    /// Packets dropped for a foreign source IP.
    pub ip_drops: u64,
    /// ARP dropped for a foreign claim.
    pub arp_drops: u64,
}

/// `dump-port-security` reply, by port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSecurityDump {
    /// The ports.
    pub ports: Vec<PortSecurityState>,
}

impl Render for PortSecurityDump {
    fn render(&self) -> String {
        let mut s = String::new();
        for p in &self.ports {
            let bound = match &p.binding {
                None => "unbound".to_owned(),
                Some(b) => format!(
                    "mac {} ips {}",
                    args::fmt_mac(&b.mac),
                    b.ips
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            s += &format!(
                "port {}: {bound}; drops mac {} ip {} arp {}\n",
                p.port, p.mac_drops, p.ip_drops, p.arp_drops
            );
        }
        s
    }
}

method!(
    /// Pod port bindings.
    DumpPortSecurity, "dump-port-security", "", (0, 0), Empty => PortSecurityDump);
method!(
    /// Binds a pod port to its MAC and addresses.
    SetPortSecurity, "set-port-security", "PORT MAC IP[,IP...]", (3, 3), PortSecurity => Empty);
method!(
    /// Removes a pod port's binding.
    DelPortSecurity, "del-port-security", "PORT", (1, 1), PortRef => Empty);
