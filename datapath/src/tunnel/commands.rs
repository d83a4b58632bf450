//! Control-socket commands of the tunnel feature.
//!
//! `dump-tunnels` lists the local VTEP, every remote VTEP with packets and
//! bytes each way (summed over PMDs) and encap/decap drops by reason;
//! `add-vtep NODE IP` / `del-vtep NODE` program the remote VTEP table at
//! runtime; `tunnel-mtu` reports the overhead and the pod MTU the CNI
//! should configure; `tunnel/trace` shows the encap or decap steps for a
//! frame given in hex (the datapath's own code on a copy, nothing counted). Handlers run on control threads and only read
//! single-writer counters or publish new VTEP snapshots.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::ctl::registry::{Registry, RegistryError};
use crate::drop::DropReason;
use crate::tunnel::geneve::{Tunnels, OVERHEAD_IPV4};

/// The text of `dump-tunnels`.
pub fn dump_tunnels(t: &Tunnels) -> String {
    let c = t.config();
    let mut s = format!(
        "local vtep {}/{} mac {} dst_port {} ttl {} df {} udp_csum {}\n",
        c.local_ip,
        c.prefix_len,
        crate::wire::ethernet::Address(c.local_mac),
        c.dst_port,
        c.ttl,
        c.df,
        c.udp_checksum,
    );
    let stats = t.stats();
    let encap: u64 = stats.iter().map(|s| s.encap.get()).sum();
    let decap: u64 = stats.iter().map(|s| s.decap.get()).sum();
    let _ = writeln!(s, "encapsulated {encap} decapsulated {decap}");
    for v in t.vteps.entries() {
        let (txp, txb, rxp, rxb) = v.totals();
        let _ = writeln!(
            s,
            "  remote {} vtep {}: tx {} packets {} bytes, rx {} packets {} bytes",
            v.node, v.ip, txp, txb, rxp, rxb
        );
    }
    let mut any = false;
    for &r in DropReason::ALL {
        let n: u64 = stats.iter().map(|st| st.drops.get(r)).sum();
        if n > 0 {
            if !any {
                s.push_str("drops:\n");
                any = true;
            }
            let _ = writeln!(s, "  {}: {n} ({})", r.key(), r.description());
        }
    }
    s
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
pub fn trace(t: &Tunnels, args: &[String]) -> Result<String, String> {
    use crate::flow::key::{extract, Field, FlowKey};
    use crate::packet::{HeapBuf, PacketBuf, PortNo};
    use crate::pipeline::hooks::TunnelHook;
    use crate::wire::pretty::PrettyFrame;
    let mut h = t.tracer();
    let mut s = String::new();
    match args {
        [hex] => {
            let f = parse_hex(hex)?;
            let _ = writeln!(s, "input: {}", PrettyFrame(&f));
            let mut pkt = HeapBuf::from_frame(&f);
            let mut key = FlowKey::default();
            match TunnelHook::<HeapBuf>::tunnel_pop(&mut h, 0, &mut pkt, &mut key) {
                Ok(()) => {
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
        [vni, dst, hex] => {
            let vni: u32 = vni
                .trim_start_matches("0x")
                .parse::<u32>()
                .ok()
                .or_else(|| u32::from_str_radix(vni.trim_start_matches("0x"), 16).ok())
                .ok_or_else(|| format!("{vni:?} is not a VNI"))?;
            let dst: Ipv4Addr = dst
                .parse()
                .map_err(|_| format!("{dst:?} is not the remote VTEP's IPv4 address"))?;
            let f = parse_hex(hex)?;
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
        _ => {
            return Err(
                "usage: tunnel/trace HEX (decap) or tunnel/trace VNI VTEP_IP HEX (encap)".into(),
            )
        }
    }
    Ok(s)
}

/// The text of `tunnel-mtu`.
pub fn tunnel_mtu(t: &Tunnels) -> String {
    format!(
        "uplink mtu {}\ngeneve overhead {} bytes (IPv4 20 + UDP 8 + Geneve 8 + inner Ethernet 14) plus up to 12 bytes of options\npod mtu {}\n",
        t.config().uplink_mtu,
        OVERHEAD_IPV4,
        t.config().pod_mtu()
    )
}

/// Registers `dump-tunnels`, `add-vtep`, `del-vtep` and `tunnel-mtu`.
///
/// # Errors
/// [`RegistryError`] if a name is already registered.
pub fn register_commands(registry: &Registry, tunnels: &Tunnels) -> Result<(), RegistryError> {
    let t = tunnels.clone();
    registry.register(
        "dump-tunnels",
        "",
        0,
        0,
        Arc::new(move |_| Ok(dump_tunnels(&t))),
    )?;
    let t = tunnels.clone();
    registry.register(
        "add-vtep",
        "NODE IP",
        2,
        2,
        Arc::new(move |a| {
            let ip: Ipv4Addr = a[1].parse().map_err(|_| {
                format!("{:?} is not an IPv4 address: give the node's underlay address, e.g. 192.168.1.2", a[1])
            })?;
            t.vteps.add(&a[0], ip).map_err(|e| e.to_string())?;
            Ok(String::new())
        }),
    )?;
    let t = tunnels.clone();
    registry.register(
        "del-vtep",
        "NODE",
        1,
        1,
        Arc::new(move |a| {
            t.vteps.remove(&a[0]).map_err(|e| e.to_string())?;
            Ok(String::new())
        }),
    )?;
    let t = tunnels.clone();
    registry.register(
        "tunnel/trace",
        "[VNI VTEP_IP] HEX",
        1,
        3,
        Arc::new(move |a| trace(&t, a)),
    )?;
    let t = tunnels.clone();
    registry.register(
        "tunnel-mtu",
        "",
        0,
        0,
        Arc::new(move |_| Ok(tunnel_mtu(&t))),
    )?;
    Ok(())
}
