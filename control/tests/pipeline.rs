//! The compiled program does what the layout promises, in the datapath's
//! own sans-IO pipeline (flow tables, conntrack with the Service table,
//! Geneve tunnels; no DPDK): two nodes compiled from their rows, crafted
//! frames in, etherparse checks out. Covers local L2/L3, Geneve between
//! the nodes, a ClusterIP Service to a remote endpoint with the reply
//! un-NATed, a NodePort from the underlay (masqueraded), and the host path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use nestdb_client::node::{LogicalPort, NodeConfig, ServiceType};
use sluice_api::node::NodeProgram;
use sluice_control::agent::compile::{compile, NodeRows};
use sluice_datapath::conntrack::{Conntrack, ConntrackConfig, ConntrackHandle};
use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::neigh::table::{NeighMap, NeighTable};
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use sluice_datapath::pipeline::hooks::Hooks;
use sluice_datapath::pipeline::Pipeline;
use sluice_datapath::service::Services;
use sluice_datapath::tunnel::{GeneveTunnels, TunnelConfig, Tunnels};
use sluice_testkit::rows::{self, remote_node as remote, uuid};

const A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const CLIENT_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 5];
const PEER_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 6];
const SERVER_MAC: [u8; 6] = [0x0a, 0x58, 10, 244, 2, 7];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

fn mac(m: [u8; 6]) -> String {
    sluice_api::args::fmt_mac(&m)
}

fn config(name: &str, vtep: &str, cidr: &str, node_mac: [u8; 6]) -> NodeConfig {
    NodeConfig {
        node_name: name.into(),
        uplink_port: "net_null0".into(),
        vtep_ip: vtep.parse().unwrap(),
        pod_cidrs: BTreeSet::from([cidr.to_string()]),
        node_ips: BTreeSet::from([vtep.parse().unwrap()]),
        external_ids: BTreeMap::from([("node_mac".to_string(), mac(node_mac))]),
        ..rows::node_config()
    }
}

fn pod(name: &str, m: [u8; 6], ip: &str) -> LogicalPort {
    rows::logical_port(name, &mac(m), ip)
}

/// `default/web`: NodePort, 10.96.0.10:80 and node port 30080, one
/// endpoint 10.244.2.7:8080 on node B.
fn web(r: &mut NodeRows, local: bool) {
    r.services.push((
        uuid(30),
        rows::service("web", ServiceType::NodePort, "10.96.0.10", &[31]),
    ));
    r.service_ports.push((
        uuid(31),
        rows::service_port(Some("http"), 80, Some(8080), Some(30080)),
    ));
    r.endpoints.push((
        uuid(40),
        rows::endpoint(Some(30), "10.244.2.7", &[("http", 8080)], "node-b", local),
    ));
}

fn rows_a() -> NodeRows {
    let mut r = NodeRows {
        node_config: vec![(
            uuid(1),
            config("node-a", "192.0.2.10", "10.244.1.0/24", A_MAC),
        )],
        logical_ports: vec![
            (uuid(10), pod("a-client", CLIENT_MAC, "10.244.1.5")),
            (uuid(11), pod("a-peer", PEER_MAC, "10.244.1.6")),
        ],
        remote_nodes: vec![(uuid(20), remote("node-b", "192.0.2.11", "10.244.2.0/24"))],
        ..Default::default()
    };
    web(&mut r, false);
    r.node_config[0]
        .1
        .external_ids
        .insert("underlay_gateway_mac".into(), mac(ROUTER_MAC));
    r
}

fn rows_b() -> NodeRows {
    let mut r = NodeRows {
        node_config: vec![(
            uuid(2),
            config("node-b", "192.0.2.11", "10.244.2.0/24", B_MAC),
        )],
        logical_ports: vec![(uuid(12), pod("b-server", SERVER_MAC, "10.244.2.7"))],
        remote_nodes: vec![(uuid(21), remote("node-a", "192.0.2.10", "10.244.1.0/24"))],
        ..Default::default()
    };
    web(&mut r, true);
    r
}

/// One node's datapath built from its program the way `sluiced` would.
struct NodeDp {
    pipe: FlowPipeline<Hooks<ConntrackHandle, GeneveTunnels>>,
    program: NodeProgram,
}

impl NodeDp {
    fn new(rows: &NodeRows, uplink_mac: [u8; 6], peer: (Ipv4Addr, [u8; 6])) -> NodeDp {
        let c = compile(rows);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let p = c.program;
        let tables = FlowTables::new();
        tables
            .add_flows(&p.flow_lines().join("\n"), 0)
            .expect("the program loads");
        let s = &p.settings;
        let services = Services::for_program(&p).expect("Services apply");
        let ct = Conntrack::with_services(ConntrackConfig::default(), services);
        let neigh = NeighTable::new();
        neigh.publish(NeighMap::from_iter([peer]));
        let vtep = s.vtep.unwrap();
        let tunnels = Tunnels::new(
            TunnelConfig {
                local_ip: vtep.ip,
                prefix_len: vtep.prefix_len,
                local_mac: uplink_mac,
                ..TunnelConfig::default()
            },
            1,
            neigh,
        );
        for (node, ip) in &p.vteps {
            tunnels.vteps.add(node, *ip).expect("vtep");
        }
        let pipe = FlowPipeline::with_hooks(
            tables,
            FlowPipelineConfig {
                ports: p.ports.values().map(|s| PortNo(s.ofport)).collect(),
                ..FlowPipelineConfig::default()
            },
            Hooks {
                ct: ct.handle(1),
                tunnels: tunnels.hook(0),
            },
        );
        NodeDp { pipe, program: p }
    }

    fn ofport(&self, name: &str) -> u16 {
        self.program.ports[name].ofport
    }

    /// Sends `frame` in on `port`; expects exactly one frame out of `out`.
    fn expect(&mut self, port: u16, frame: &[u8], out_port: u16) -> Vec<u8> {
        let mut out = Output::new(8);
        let mut burst = Burst::new(PortNo(port));
        burst.pkts.push(HeapBuf::from_frame(frame));
        self.pipe.process(0, &mut burst, &mut out);
        let got = out.take(PortNo(out_port));
        let elsewhere: Vec<u16> = (0..8)
            .filter(|&p| p != out_port && !out.take(PortNo(p)).is_empty())
            .collect();
        assert_eq!(
            got.len(),
            1,
            "expected one frame on port {out_port}; other ports {elsewhere:?}; drops {:?}",
            out.drops.nonzero()
        );
        got[0].data().to_vec()
    }
}

/// One end of a TCP segment: Ethernet address, IPv4 address, port.
type End = ([u8; 6], [u8; 4], u16);

/// A SYN (sequence number 1000) from `src` to `dst`.
fn syn(src: End, dst: End) -> Vec<u8> {
    tcp(src, dst, 1000, None)
}

/// A SYN-ACK (sequence number 5000) acknowledging a SYN sent with
/// sequence number 1000.
fn syn_ack(src: End, dst: End) -> Vec<u8> {
    tcp(src, dst, 5000, Some(1001))
}

fn tcp(src: End, dst: End, seq: u32, ack: Option<u32>) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(src.0, dst.0)
        .ipv4(src.1, dst.1, 64)
        .tcp(src.2, dst.2, seq, 64000)
        .syn();
    if let Some(n) = ack {
        b = b.ack(n);
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

/// (dl_src, dl_dst, ip src, ip dst, ttl, sport, dport) of a frame, after
/// Geneve decapsulation when `inner`.
fn seen(frame: &[u8]) -> ([u8; 6], [u8; 6], Ipv4Addr, Ipv4Addr, u8, u16, u16) {
    let p = SlicedPacket::from_ethernet(frame).expect("ethernet");
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    let (sp, dp) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    (
        frame[6..12].try_into().unwrap(),
        frame[0..6].try_into().unwrap(),
        h.source_addr(),
        h.destination_addr(),
        h.ttl(),
        sp,
        dp,
    )
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn nodes() -> (NodeDp, NodeDp) {
    (
        NodeDp::new(&rows_a(), A_MAC, (ip("192.0.2.11"), B_MAC)),
        NodeDp::new(&rows_b(), B_MAC, (ip("192.0.2.10"), A_MAC)),
    )
}

#[test]
fn local_pods_are_routed_and_arp_is_delivered() {
    let (mut a, _) = nodes();
    let (client, peer) = (a.ofport("a-client"), a.ofport("a-peer"));
    let out = a.expect(
        client,
        &syn(
            (CLIENT_MAC, [10, 244, 1, 5], 4000),
            (A_MAC, [10, 244, 1, 6], 80),
        ),
        peer,
    );
    let s = seen(&out);
    assert_eq!(
        (s.0, s.1),
        (A_MAC, PEER_MAC),
        "MACs rewritten by the gateway"
    );
    assert_eq!((s.2, s.3, s.4), (ip("10.244.1.5"), ip("10.244.1.6"), 63));
    // ARP for the peer goes to the peer as is.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[10, 244, 1, 5]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 244, 1, 6]);
    assert_eq!(a.expect(client, &arp, peer), arp);
}

#[test]
fn remote_pods_are_reached_over_geneve() {
    let (mut a, mut b) = nodes();
    let wire = a.expect(
        a.ofport("a-client"),
        &syn(
            (CLIENT_MAC, [10, 244, 1, 5], 4000),
            (A_MAC, [10, 244, 2, 7], 8080),
        ),
        1,
    );
    let outer = seen(&wire);
    assert_eq!((outer.0, outer.1), (A_MAC, B_MAC));
    assert_eq!(
        (outer.2, outer.3, outer.6),
        (ip("192.0.2.10"), ip("192.0.2.11"), 6081)
    );
    let out = b.expect(1, &wire, b.ofport("b-server"));
    let s = seen(&out);
    assert_eq!(
        (s.1, s.2, s.3),
        (SERVER_MAC, ip("10.244.1.5"), ip("10.244.2.7"))
    );
}

#[test]
fn cluster_ip_reaches_the_remote_endpoint_and_the_reply_comes_back_from_the_vip() {
    let (mut a, mut b) = nodes();
    let client = a.ofport("a-client");
    let wire = a.expect(
        client,
        &syn(
            (CLIENT_MAC, [10, 244, 1, 5], 4000),
            (A_MAC, [10, 96, 0, 10], 80),
        ),
        1,
    );
    let out = b.expect(1, &wire, b.ofport("b-server"));
    let s = seen(&out);
    assert_eq!(
        (s.2, s.3, s.5, s.6),
        (ip("10.244.1.5"), ip("10.244.2.7"), 4000, 8080),
        "DNATed on node A, client address kept"
    );
    // The SYN-ACK goes back over Geneve and node A un-NATs it.
    let wire = b.expect(
        b.ofport("b-server"),
        &syn_ack(
            (SERVER_MAC, [10, 244, 2, 7], 8080),
            (B_MAC, [10, 244, 1, 5], 4000),
        ),
        1,
    );
    let out = a.expect(1, &wire, client);
    let s = seen(&out);
    assert_eq!(
        (s.1, s.2, s.3, s.5, s.6),
        (CLIENT_MAC, ip("10.96.0.10"), ip("10.244.1.5"), 80, 4000),
        "the reply comes from the ClusterIP"
    );
}

#[test]
fn node_port_from_the_underlay_is_masqueraded_to_the_remote_endpoint() {
    let (mut a, mut b) = nodes();
    let wire = a.expect(
        1,
        &syn(
            (ROUTER_MAC, [198, 51, 100, 9], 5555),
            (A_MAC, [192, 0, 2, 10], 30080),
        ),
        1,
    );
    let out = b.expect(1, &wire, b.ofport("b-server"));
    let s = seen(&out);
    assert_eq!(s.3, ip("10.244.2.7"));
    assert_eq!(s.6, 8080);
    assert_eq!(
        s.2,
        ip("10.244.1.1"),
        "masqueraded to node A's gateway address"
    );
    // The reply goes to the masquerade address, i.e. back to node A over
    // Geneve, is un-NATed there and leaves by the uplink towards the
    // underlay gateway, from the node port.
    let wire = b.expect(
        b.ofport("b-server"),
        &syn_ack(
            (SERVER_MAC, [10, 244, 2, 7], 8080),
            (B_MAC, [10, 244, 1, 1], s.5),
        ),
        1,
    );
    let out = a.expect(1, &wire, 1);
    let r = seen(&out);
    assert_eq!((r.0, r.1), (A_MAC, ROUTER_MAC));
    assert_eq!(
        (r.2, r.3, r.5, r.6),
        (ip("192.0.2.10"), ip("198.51.100.9"), 30080, 5555)
    );
}

#[test]
fn the_node_own_traffic_goes_through_the_host_port() {
    let (mut a, _) = nodes();
    // SSH to the node from the underlay.
    let f = syn(
        (ROUTER_MAC, [198, 51, 100, 9], 5555),
        (A_MAC, [192, 0, 2, 10], 22),
    );
    assert_eq!(a.expect(1, &f, 2), f);
    // The host's own traffic out.
    let f = syn_ack(
        (A_MAC, [192, 0, 2, 10], 22),
        (ROUTER_MAC, [198, 51, 100, 9], 5555),
    );
    assert_eq!(a.expect(2, &f, 1), f);
    // A pod's traffic to the world goes to the host (which routes it).
    let f = syn(
        (CLIENT_MAC, [10, 244, 1, 5], 4000),
        (A_MAC, [198, 51, 100, 9], 443),
    );
    assert_eq!(
        seen(&a.expect(a.ofport("a-client"), &f, 2)).3,
        ip("198.51.100.9")
    );
    // The host reaches a pod.
    let f = syn((A_MAC, [192, 0, 2, 10], 4000), (A_MAC, [10, 244, 1, 6], 80));
    assert_eq!(seen(&a.expect(2, &f, a.ofport("a-peer"))).1, PEER_MAC);
}

#[test]
fn a_pod_reaching_itself_through_its_service_is_masqueraded() {
    let (_, mut b) = nodes();
    let me = b.ofport("b-server");
    let out = b.expect(
        me,
        &syn(
            (SERVER_MAC, [10, 244, 2, 7], 4000),
            (B_MAC, [10, 96, 0, 10], 80),
        ),
        me,
    );
    let s = seen(&out);
    assert_eq!((s.2, s.3, s.6), (ip("10.244.2.1"), ip("10.244.2.7"), 8080));
    let back = b.expect(
        me,
        &syn_ack(
            (SERVER_MAC, [10, 244, 2, 7], 8080),
            (B_MAC, [10, 244, 2, 1], s.5),
        ),
        me,
    );
    let r = seen(&back);
    assert_eq!(
        (r.2, r.3, r.5, r.6),
        (ip("10.96.0.10"), ip("10.244.2.7"), 80, 4000)
    );
}
