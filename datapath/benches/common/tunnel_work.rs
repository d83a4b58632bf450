//! The tunnel set-up shared by `benches/tunnel.rs` (criterion) and
//! `examples/fastpath_ir.rs` (instruction counts), included by both with
//! `#[path]`: a node at `local` with one remote VTEP `remote` whose MAC is
//! known, and the flow pipeline (ports 1 and 2, no conntrack) that uses
//! its tunnels.

use std::net::Ipv4Addr;

use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::neigh::table::{NeighMap, NeighTable};
use sluice_datapath::packet::PortNo;
use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use sluice_datapath::pipeline::hooks::{Hooks, NoConntrack};
use sluice_datapath::tunnel::{GeneveTunnels, TunnelConfig, Tunnels};

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

/// The flow pipeline the tunnel measurements run.
pub type Pl = FlowPipeline<Hooks<NoConntrack, GeneveTunnels>>;

/// A pipeline of `flows` over ports 1 and 2, no conntrack, tunnels `t`
/// (its PMD 0 hook).
pub fn pipeline(flows: &str, t: &Tunnels) -> Pl {
    let tables = FlowTables::new();
    tables.add_flows(flows, 0).expect("flows");
    FlowPipeline::with_hooks(
        tables,
        FlowPipelineConfig {
            ports: vec![PortNo(1), PortNo(2)],
            ..FlowPipelineConfig::default()
        },
        Hooks {
            ct: NoConntrack,
            tunnels: t.hook(0),
        },
    )
}
