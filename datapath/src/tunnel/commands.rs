//! Control-socket commands of the tunnel feature.
//!
//! `dump-tunnels` lists the local VTEP, every remote VTEP with packets and
//! bytes each way (summed over PMDs) and encap/decap drops by reason;
//! `add-vtep NODE IP` / `del-vtep NODE` program the remote VTEP table at
//! runtime; `tunnel-mtu` reports the overhead and the pod MTU the CNI
//! should configure. Handlers run on control threads and only read
//! single-writer counters or publish new VTEP snapshots.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::ctl::registry::{Registry, RegistryError};
use crate::drop::DropReason;
use crate::tunnel::geneve::{Tunnels, OVERHEAD_IPV4};

/// The text of `dump-tunnels`.
pub fn dump_tunnels(t: &Tunnels) -> String {
    let c = &t.config;
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

/// The text of `tunnel-mtu`.
pub fn tunnel_mtu(t: &Tunnels) -> String {
    format!(
        "uplink mtu {}\ngeneve overhead {} bytes (IPv4 20 + UDP 8 + Geneve 8 + inner Ethernet 14) plus up to 12 bytes of options\npod mtu {}\n",
        t.config.uplink_mtu,
        OVERHEAD_IPV4,
        t.config.pod_mtu()
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
        "tunnel-mtu",
        "",
        0,
        0,
        Arc::new(move |_| Ok(tunnel_mtu(&t))),
    )?;
    Ok(())
}
