//! Control-socket commands of the tunnel feature.
//!
//! `dump-tunnels` lists the local VTEP, every remote VTEP with packets and
//! bytes each way (summed over PMDs) and encap/decap drops by reason;
//! `add-vtep NODE IP` / `del-vtep NODE` program the remote VTEP table at
//! runtime; `tunnel-mtu` reports the overhead and the pod MTU the CNI
//! should configure; `tunnel/trace` shows the encap or decap steps for a
//! frame given in hex (the datapath's own code on a copy, nothing counted). Handlers run on control threads and only read
//! single-writer counters or publish new VTEP snapshots.

use sluice_api::tunnel::{
    AddVtep, DelVtep, DumpTunnels, RemoteVtep, TunnelDump, TunnelMtu, TunnelMtuReply, TunnelTrace,
    TunnelTraceRequest,
};
use sluice_api::{ApiError, Empty, Text};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::drop::DropReason;
use crate::tunnel::geneve::{Tunnels, OVERHEAD_IPV4};

/// The `dump-tunnels` view: the local VTEP, every remote VTEP with packets
/// and bytes each way (summed over PMDs), encap/decap drops by reason.
pub fn dump_tunnels(t: &Tunnels) -> TunnelDump {
    let c = t.config();
    let stats = t.stats();
    TunnelDump {
        local_ip: c.local_ip,
        prefix_len: c.prefix_len,
        local_mac: crate::wire::ethernet::Address(c.local_mac).to_string(),
        dst_port: c.dst_port,
        ttl: c.ttl,
        df: c.df,
        udp_checksum: c.udp_checksum,
        encapsulated: stats.iter().map(|s| s.encap.get()).sum(),
        decapsulated: stats.iter().map(|s| s.decap.get()).sum(),
        remotes: t
            .vteps
            .entries()
            .iter()
            .map(|v| {
                let (tx_packets, tx_bytes, rx_packets, rx_bytes) = v.totals();
                RemoteVtep {
                    node: v.node.to_string(),
                    ip: v.ip,
                    tx_packets,
                    tx_bytes,
                    rx_packets,
                    rx_bytes,
                }
            })
            .collect(),
        drops: DropReason::ALL
            .iter()
            .map(|&r| (r, stats.iter().map(|st| st.drops.get(r)).sum::<u64>()))
            .filter(|&(_, n)| n > 0)
            .map(|(r, packets)| r.count(packets))
            .collect(),
    }
}

/// Parses hex bytes (whitespace and a leading `0x` allowed).
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let hex: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err("give the frame as an even number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| format!("{:?} is not a hex byte", &hex[i..i + 2]))
        })
        .collect()
}

/// The text of `tunnel/trace`: the decapsulation steps for a Geneve frame
/// (or the drop reason), or, with `VNI DST`, the encapsulation steps for an
/// inner frame. Runs the datapath's own code on a copy; counts nothing.
pub fn trace(t: &Tunnels, req: &TunnelTraceRequest) -> Result<String, ApiError> {
    use crate::flow::key::{extract, Field, FlowKey};
    use crate::packet::{HeapBuf, PacketBuf, PortNo};
    use crate::pipeline::hooks::TunnelHook;
    use crate::wire::pretty::PrettyFrame;
    let mut h = t.tracer();
    let mut s = String::new();
    let f = parse_hex(&req.hex).map_err(ApiError::invalid)?;
    match req.encap {
        None => {
            let _ = writeln!(s, "input: {}", PrettyFrame(&f));
            let mut pkt = HeapBuf::from_frame(&f);
            let mut key = FlowKey::default();
            match TunnelHook::<HeapBuf>::tunnel_pop(&mut h, 0, &mut pkt, &mut key) {
                Ok(_) => {
                    let _ = writeln!(
                        s,
                        "tnl_pop: tun_id={:#x} tun_src={} tun_dst={} tun_gnv_class={:#x} tun_gnv_type={:#x} tun_metadata0={:#x}",
                        key.get(Field::TunId),
                        Ipv4Addr::from(key.get(Field::TunSrc) as u32),
                        Ipv4Addr::from(key.get(Field::TunDst) as u32),
                        key.get(Field::TunGnvClass),
                        key.get(Field::TunGnvType),
                        key.get(Field::TunMetadata0),
                    );
                    let _ = writeln!(
                        s,
                        "inner ({} bytes): {}",
                        pkt.len(),
                        PrettyFrame(pkt.data())
                    );
                    let _ = writeln!(s, "recirculate with the tunnel metadata above");
                }
                Err(r) => {
                    let _ = writeln!(s, "tnl_pop: drop {} ({})", r.key(), r.description());
                }
            }
        }
        Some((vni, dst)) => {
            let _ = writeln!(s, "input: {}", PrettyFrame(&f));
            let mut pkt = HeapBuf::from_frame(&f);
            let mut key = extract(&f, PortNo(0));
            key.set(Field::TunId, u128::from(vni));
            key.set(Field::TunDst, u128::from(u32::from(dst)));
            match TunnelHook::<HeapBuf>::tunnel_push(&mut h, 0, &mut pkt, &key) {
                Ok(()) => {
                    let _ = writeln!(
                        s,
                        "tnl_push: +{} bytes of outer headers",
                        pkt.len() - f.len()
                    );
                    let _ = writeln!(s, "output: {}", PrettyFrame(pkt.data()));
                }
                Err(r) => {
                    let _ = writeln!(s, "tnl_push: drop {} ({})", r.key(), r.description());
                }
            }
        }
    }
    Ok(s)
}

/// The text of `tunnel-mtu`.
pub fn tunnel_mtu(t: &Tunnels) -> TunnelMtuReply {
    TunnelMtuReply {
        uplink_mtu: t.config().uplink_mtu,
        overhead: OVERHEAD_IPV4,
        pod_mtu: t.config().pod_mtu(),
    }
}

/// Registers `dump-tunnels`, `add-vtep`, `del-vtep`, `tunnel/trace` and
/// `tunnel-mtu`.
///
/// # Errors
/// [`RegistryError`] if a name is already registered.
pub fn register_commands(registry: &Registry, tunnels: &Tunnels) -> Result<(), RegistryError> {
    let t = tunnels.clone();
    register::<DumpTunnels>(registry, move |_| Ok(dump_tunnels(&t)))?;
    let t = tunnels.clone();
    register::<AddVtep>(registry, move |r| {
        t.vteps
            .add(&r.node, r.ip)
            .map(|_| Empty {})
            .map_err(|e| ApiError::invalid(e.to_string()))
    })?;
    let t = tunnels.clone();
    register::<DelVtep>(registry, move |r| {
        t.vteps
            .remove(&r.node)
            .map(|_| Empty {})
            .map_err(|e| ApiError::not_found(e.to_string()))
    })?;
    let t = tunnels.clone();
    register::<TunnelTrace>(registry, move |r| {
        Ok(Text {
            text: trace(&t, &r)?,
        })
    })?;
    let t = tunnels.clone();
    register::<TunnelMtu>(registry, move |_| Ok(tunnel_mtu(&t)))
}
