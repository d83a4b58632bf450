//! The Service (DNAT) set-up shared by `benches/dnat.rs` (criterion) and
//! `examples/dnat_ir.rs` (instruction counts), included by both with
//! `#[path]`: the pktgen `dnat` program (`ct(zone=1,commit,table=1,nat)`
//! with a bare `nat` for every TCP packet, then `output:2` from table 1)
//! over 10 ClusterIP Services of 10 endpoints each, and the frames of N
//! client connections.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use sluice_datapath::conntrack::{Conntrack, ConntrackConfig, ConntrackHandle};
use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use sluice_datapath::pipeline::hooks::{Hooks, NoTunnels};
use sluice_datapath::pipeline::Pipeline;
use sluice_datapath::service::{
    EndpointSpec, Protocol, ServiceConfig, ServiceSpec, ServiceUpdate, Services, TrafficPolicy,
};

pub type Pipe = FlowPipeline<Hooks<ConntrackHandle, NoTunnels>>;

pub const SERVICES: u32 = 10;
pub const CLIENT_ISN: u32 = 1_000;
pub const SERVER_ISN: u32 = 50_000;
pub const FLOWS: &str = "table=0,priority=100,tcp actions=ct(zone=1,commit,table=1,nat)\ntable=1,priority=0 actions=output:2";

pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

/// Client `i`: an address and a source port, so that 100k clients are
/// distinct 5-tuples.
pub fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + i / 60_000),
        (1024 + i % 60_000) as u16,
    )
}

pub fn tcp(
    s: Ipv4Addr,
    d: Ipv4Addr,
    sp: u16,
    dp: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 0, 1])
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(sp, dp, seq, 65_000);
    let b = if syn { b.syn() } else { b };
    let b = match ack {
        Some(a) => b.ack(a),
        None => b,
    };
    let mut f = Vec::with_capacity(64);
    b.write(&mut f, &[]).expect("frame");
    f.resize(64, 0);
    f
}

pub fn services() -> Services {
    let s = Services::new(ServiceConfig::default());
    let upsert = (0..SERVICES)
        .map(|i| ServiceSpec {
            name: format!("default/svc-{i}:http"),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ips: vec![vip(i)],
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            session_affinity_seconds: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            endpoints: (0..10)
                .map(|e| EndpointSpec {
                    ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 16 + e),
                    port: 8080,
                    ready: true,
                    serving: None,
                    terminating: false,
                    node_local: false,
                    zone: None,
                    for_zones: Vec::new(),
                })
                .collect(),
            topology_aware: false,
        })
        .collect();
    s.apply(
        &ServiceUpdate {
            upsert,
            ..ServiceUpdate::default()
        },
        None,
    )
    .expect("services");
    s
}

pub fn pipeline() -> (Pipe, Conntrack) {
    pipeline_with(ConntrackConfig::default().cache_entries)
}

/// The pipeline with a per-PMD connection cache of `cache_entries`
/// entries (0: every packet reads the shared table).
pub fn pipeline_with(cache_entries: usize) -> (Pipe, Conntrack) {
    let ct = Conntrack::with_services(
        ConntrackConfig {
            max_connections: usize::MAX,
            cache_entries,
            ..ConntrackConfig::default()
        },
        services(),
    );
    let tables = FlowTables::new();
    tables.add_flows(FLOWS, 0).expect("flows");
    let p = FlowPipeline::with_hooks(
        tables,
        FlowPipelineConfig {
            ports: (1..=2).map(PortNo).collect(),
            ..FlowPipelineConfig::default()
        },
        Hooks {
            ct: ct.handle(1),
            tunnels: NoTunnels,
        },
    );
    (p, ct)
}

/// Runs `frames` through `p` in bursts of 32; returns what left on port 2.
pub fn send(p: &mut Pipe, now: u64, in_port: u16, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut sent = Vec::new();
    for chunk in frames.chunks(32) {
        let mut burst = Burst::new(PortNo(in_port));
        burst
            .pkts
            .extend(chunk.iter().map(|f| HeapBuf::from_frame(f)));
        let mut out = Output::new(4);
        p.process(now, &mut burst, &mut out);
        for port in [1, 2] {
            sent.extend(out.take(PortNo(port)).iter().map(|b| b.data().to_vec()));
        }
        assert_eq!(out.drops.total(), 0, "{:?}", out.drops.nonzero());
    }
    sent
}

/// `conns` Service connections (SYN sent; with `established`, answered by
/// their endpoint and ACKed); returns the client's next ACK of each.
pub fn connections(p: &mut Pipe, conns: u32, established: bool) -> Vec<Vec<u8>> {
    let ack = |i: u32| {
        let (c, sp) = client(i);
        tcp(
            c,
            vip(i % SERVICES),
            sp,
            80,
            CLIENT_ISN + 1,
            Some(SERVER_ISN + 1),
            false,
        )
    };
    let syns: Vec<Vec<u8>> = (0..conns)
        .map(|i| {
            let (c, sp) = client(i);
            tcp(c, vip(i % SERVICES), sp, 80, CLIENT_ISN, None, true)
        })
        .collect();
    let dnated = send(p, 1, 1, &syns);
    assert_eq!(dnated.len(), conns as usize, "every SYN DNATed and sent");
    if established {
        // The endpoint answers each SYN it got.
        let synacks: Vec<Vec<u8>> = dnated
            .iter()
            .map(|f| {
                let (src, dst) = (&f[26..30], &f[30..34]);
                let sp = u16::from_be_bytes([f[34], f[35]]);
                let dp = u16::from_be_bytes([f[36], f[37]]);
                let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                tcp(
                    ip(dst),
                    ip(src),
                    dp,
                    sp,
                    SERVER_ISN,
                    Some(CLIENT_ISN + 1),
                    true,
                )
            })
            .collect();
        assert_eq!(send(p, 2, 2, &synacks).len(), conns as usize);
        let acks: Vec<Vec<u8>> = (0..conns).map(ack).collect();
        assert_eq!(send(p, 3, 1, &acks).len(), conns as usize);
    }
    (0..conns).map(ack).collect()
}
