//! The Geneve overlay: the local VTEP, the remote VTEP table
//! (`add-vtep`, `del-vtep`, `dump-tunnels`), the pod MTU and the
//! encap/decap trace.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::pmd::DropCount;
use crate::{args, method, ApiError, Empty, FromArgs, Render, Text};

/// One remote VTEP with its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteVtep {
    /// Node name.
    pub node: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Packets sent to it.
    pub tx_packets: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Packets received from it.
    pub rx_packets: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
}

/// `dump-tunnels` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelDump {
    /// Local VTEP address.
    pub local_ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Its MAC address.
    pub local_mac: String,
    /// Geneve UDP port.
    pub dst_port: u16,
    /// Outer TTL.
    pub ttl: u8,
    /// Outer DF bit.
    pub df: bool,
    /// Outer UDP checksum computed.
    pub udp_checksum: bool,
    /// Packets encapsulated.
    pub encapsulated: u64,
    /// Packets decapsulated.
    pub decapsulated: u64,
    /// Remote VTEPs.
    pub remotes: Vec<RemoteVtep>,
    /// Encap/decap drops by reason.
    pub drops: Vec<DropCount>,
}

impl Render for TunnelDump {
    fn render(&self) -> String {
        let mut s = format!(
            "local vtep {}/{} mac {} dst_port {} ttl {} df {} udp_csum {}\n",
            self.local_ip,
            self.prefix_len,
            self.local_mac,
            self.dst_port,
            self.ttl,
            self.df,
            self.udp_checksum
        );
        s += &format!(
            "encapsulated {} decapsulated {}\n",
            self.encapsulated, self.decapsulated
        );
        for v in &self.remotes {
            s += &format!(
                "  remote {} vtep {}: tx {} packets {} bytes, rx {} packets {} bytes\n",
                v.node, v.ip, v.tx_packets, v.tx_bytes, v.rx_packets, v.rx_bytes
            );
        }
        if !self.drops.is_empty() {
            s += "drops:\n";
            for d in &self.drops {
                s += &format!("  {}: {} ({})\n", d.reason, d.packets, d.description);
            }
        }
        s
    }
}

/// `add-vtep NODE IP`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddVtepRequest {
    /// Node name.
    pub node: String,
    /// The node's underlay address.
    pub ip: Ipv4Addr,
}

impl FromArgs for AddVtepRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let ip_text = a.get(1).map(String::as_str).unwrap_or("");
        let ip = ip_text.parse().map_err(|_| {
            ApiError::invalid(format!(
                "{ip_text:?} is not an IPv4 address: give the node's underlay address, e.g. 192.168.1.2"
            ))
        })?;
        Ok(AddVtepRequest {
            node: a.first().cloned().unwrap_or_default(),
            ip,
        })
    }
}

/// `del-vtep NODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelVtepRequest {
    /// Node name.
    pub node: String,
}

impl FromArgs for DelVtepRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        Ok(DelVtepRequest {
            node: a.first().cloned().unwrap_or_default(),
        })
    }
}

/// `set-vtep IP/PREFIXLEN`: moves the local VTEP address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVtepRequest {
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
}

impl FromArgs for SetVtepRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let (ip, prefix_len) = args::cidr(a.first().map(String::as_str).unwrap_or(""))?;
        Ok(SetVtepRequest { ip, prefix_len })
    }
}

/// `tunnel/trace`: decap of a frame, or encap of an inner frame to a VTEP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelTraceRequest {
    /// For encap: the VNI and the remote VTEP; absent for decap.
    #[serde(default)]
    pub encap: Option<(u32, Ipv4Addr)>,
    /// The frame in hex.
    pub hex: String,
}

impl FromArgs for TunnelTraceRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        match a {
            [hex] => Ok(TunnelTraceRequest {
                encap: None,
                hex: hex.clone(),
            }),
            [vni, dst, hex] => {
                let v = vni.trim_start_matches("0x");
                let vni: u32 = v
                    .parse::<u32>()
                    .ok()
                    .or_else(|| u32::from_str_radix(v, 16).ok())
                    .ok_or_else(|| ApiError::invalid(format!("{vni:?} is not a VNI")))?;
                let dst: Ipv4Addr = dst.parse().map_err(|_| {
                    ApiError::invalid(format!("{dst:?} is not the remote VTEP's IPv4 address"))
                })?;
                Ok(TunnelTraceRequest {
                    encap: Some((vni, dst)),
                    hex: hex.clone(),
                })
            }
            _ => Err(ApiError::invalid(
                "usage: tunnel/trace HEX (decap) or tunnel/trace VNI VTEP_IP HEX (encap)",
            )),
        }
    }
}

/// `tunnel-mtu` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelMtuReply {
    /// The uplink's MTU.
    pub uplink_mtu: u16,
    /// Geneve overhead without options.
    pub overhead: u16,
    /// The MTU pods should use.
    pub pod_mtu: u16,
}

impl Render for TunnelMtuReply {
    fn render(&self) -> String {
        format!(
            "uplink mtu {}\ngeneve overhead {} bytes (IPv4 20 + UDP 8 + Geneve 8 + inner Ethernet 14) plus up to 12 bytes of options\npod mtu {}\n",
            self.uplink_mtu, self.overhead, self.pod_mtu
        )
    }
}

method!(
    /// The local and remote VTEPs with their traffic.
    DumpTunnels, "dump-tunnels", "", (0, 0), Empty => TunnelDump);
method!(
    /// Adds or moves a remote VTEP.
    AddVtep, "add-vtep", "NODE IP", (2, 2), AddVtepRequest => Empty);
method!(
    /// Removes a remote VTEP.
    DelVtep, "del-vtep", "NODE", (1, 1), DelVtepRequest => Empty);
method!(
    /// Moves the local VTEP address (announced by gratuitous ARP).
    SetVtep, "set-vtep", "IP/PREFIXLEN", (1, 1), SetVtepRequest => Empty);
method!(
    /// Shows the encap or decap steps for a frame.
    TunnelTrace, "tunnel/trace", "[VNI VTEP_IP] HEX", (1, 3), TunnelTraceRequest => Text);
method!(
    /// The Geneve overhead and the pod MTU.
    TunnelMtu, "tunnel-mtu", "", (0, 0), Empty => TunnelMtuReply);
