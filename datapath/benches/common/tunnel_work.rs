//! The tunnel set-up shared by `benches/tunnel.rs` (criterion) and
//! `examples/fastpath_ir.rs` (instruction counts), included by both with
//! `#[path]`: a node at `local` with one remote VTEP `remote` whose MAC is
//! known.

use std::net::Ipv4Addr;

use sluice_datapath::neigh::table::{NeighMap, NeighTable};
use sluice_datapath::tunnel::{TunnelConfig, Tunnels};

/// The node's tunnels; `csum` computes outer UDP checksums.
pub fn tunnels(local: Ipv4Addr, remote: Ipv4Addr, csum: bool) -> Tunnels {
    let neigh = NeighTable::new();
    let mut m = NeighMap::new();
    m.insert(remote, [2, 0xbb, 0, 0, 0, 2]);
    neigh.publish(m);
    let t = Tunnels::new(
        TunnelConfig {
            local_ip: local,
            udp_checksum: csum,
            ..TunnelConfig::default()
        },
        1,
        neigh,
    );
    t.vteps.add("peer", remote).expect("vtep");
    t
}
