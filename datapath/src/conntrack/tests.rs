//! Conntrack through the sans-IO flow pipeline: crafted packets, a flow
//! program in `ovs-ofctl` text, etherparse as the oracle for headers and
//! checksums, a fake clock for expiry.

use std::net::Ipv4Addr;

use etherparse::{
    icmpv4::DestUnreachableHeader, IcmpEchoHeader, Icmpv4Type, IpNumber, Ipv4HeaderSlice,
    NetHeaders, PacketBuilder, PacketHeaders, TransportHeader,
};

use super::*;
use crate::flow::tables::FlowTables;
use crate::packet::{Burst, HeapBuf, Output, PortNo};
use crate::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use crate::pipeline::hooks::{Hooks, NoTunnels};
use crate::pipeline::Pipeline;

pub(crate) const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
pub(crate) const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];

/// TCP flag sets for [`tcp`].
pub(crate) mod fl {
    pub const SYN: u8 = 0x02;
    pub const SYNACK: u8 = 0x12;
    pub const ACK: u8 = 0x10;
    pub const FINACK: u8 = 0x11;
}

/// An Ethernet/IPv4/TCP frame.
#[allow(clippy::too_many_arguments)]
pub(crate) fn tcp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 8000);
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x10 != 0 {
        b = b.ack(ack);
    }
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build tcp");
    v
}

/// An Ethernet/IPv4/UDP frame (checksum set).
pub(crate) fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .expect("build udp");
    v
}

/// An Ethernet/IPv4/SCTP frame with one DATA-like chunk and a valid CRC32c.
pub(crate) fn sctp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut s = vec![0u8; 12 + 16];
    s[0..2].copy_from_slice(&sport.to_be_bytes());
    s[2..4].copy_from_slice(&dport.to_be_bytes());
    s[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    s[12] = 0;
    s[14..16].copy_from_slice(&16u16.to_be_bytes());
    crate::wire::sctp::Packet::new_checked(&mut s[..])
        .expect("sctp")
        .fill_checksum();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .write(&mut v, IpNumber::SCTP, &s)
        .expect("build sctp");
    v
}

/// An ICMP echo request (`request`) or reply.
pub(crate) fn echo(src: [u8; 4], dst: [u8; 4], id: u16, request: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B).ipv4(src, dst, 64);
    let e = IcmpEchoHeader { id, seq: 1 };
    let ty = if request {
        Icmpv4Type::EchoRequest(e)
    } else {
        Icmpv4Type::EchoReply(e)
    };
    b.icmpv4(ty).write(&mut v, b"ping").expect("build echo");
    v
}

/// An ICMP port-unreachable from `src` to `dst` quoting `about` (a frame).
pub(crate) fn icmp_error(src: [u8; 4], dst: [u8; 4], about: &[u8]) -> Vec<u8> {
    let quote = &about[14..(14 + 20 + 8).min(about.len())];
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::Port,
        ))
        .write(&mut v, quote)
        .expect("build icmp error");
    v
}

/// What a test checks of a frame; construction asserts every checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
    /// Embedded packet of an ICMP error: src, dst, sport, dport.
    pub inner: Option<(Ipv4Addr, Ipv4Addr, u16, u16)>,
}

/// Parses `f` with etherparse and asserts that every checksum is right.
pub(crate) fn seen(f: &[u8]) -> Seen {
    let h = PacketHeaders::from_ethernet_slice(f).expect("etherparse parses the frame");
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else {
        panic!("not IPv4")
    };
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let payload = h.payload.slice();
    let mut s = Seen {
        src: Ipv4Addr::from(ip.source),
        dst: Ipv4Addr::from(ip.destination),
        sport: 0,
        dport: 0,
        icmp: None,
        inner: None,
    };
    match &h.transport {
        Some(TransportHeader::Tcp(t)) => {
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(ip, payload).expect("tcp"),
                "TCP checksum"
            );
            (s.sport, s.dport) = (t.source_port, t.destination_port);
        }
        Some(TransportHeader::Udp(u)) => {
            if u.checksum != 0 {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(ip, payload).expect("udp"),
                    "UDP checksum"
                );
            }
            (s.sport, s.dport) = (u.source_port, u.destination_port);
        }
        Some(TransportHeader::Icmpv4(i)) => {
            assert_eq!(
                i.checksum,
                i.icmp_type.calc_checksum(payload),
                "ICMP checksum"
            );
            let b = i.to_bytes();
            s.icmp = Some((b[0], b[1]));
            if let Icmpv4Type::EchoRequest(e) | Icmpv4Type::EchoReply(e) = i.icmp_type {
                (s.sport, s.dport) = (e.id, e.id);
            }
            if b[0] == 3 || b[0] == 11 {
                let inner = Ipv4HeaderSlice::from_slice(payload).expect("embedded IPv4");
                let ih = inner.to_header();
                assert_eq!(
                    ih.header_checksum,
                    ih.calc_header_checksum(),
                    "embedded IPv4 header checksum"
                );
                let l4 = &payload[inner.slice().len()..];
                s.inner = Some((
                    inner.source_addr(),
                    inner.destination_addr(),
                    u16::from_be_bytes([l4[0], l4[1]]),
                    u16::from_be_bytes([l4[2], l4[3]]),
                ));
            }
        }
        _ => {
            if ip.protocol == IpNumber::SCTP {
                let p = crate::wire::sctp::Packet::new_checked(payload).expect("sctp");
                assert_eq!(p.checksum(), p.compute_checksum(), "SCTP CRC32c");
                s.sport = u16::from_be_bytes([payload[0], payload[1]]);
                s.dport = u16::from_be_bytes([payload[2], payload[3]]);
            }
        }
    }
    s
}

pub(crate) fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("address")
}

/// A flow pipeline with conntrack over `flows`.
pub(crate) struct Rig {
    pub pipe: FlowPipeline<Hooks<ConntrackHandle, NoTunnels>>,
    pub ct: Conntrack,
}

impl Rig {
    pub fn new(flows: &str, ct: Conntrack) -> Rig {
        let tables = FlowTables::new();
        tables.add_flows(flows, 0).expect("flow program parses");
        let pipe = FlowPipeline::with_hooks(
            tables.clone(),
            FlowPipelineConfig {
                ports: (1..=3).map(PortNo).collect(),
                ..FlowPipelineConfig::default()
            },
            Hooks {
                ct: ct.handle(1),
                tunnels: NoTunnels,
            },
        );
        Rig { pipe, ct }
    }

    /// Sends one frame in on `port`; returns the output.
    pub fn send(&mut self, now: Nanos, port: u16, frame: Vec<u8>) -> Output<HeapBuf> {
        let mut out = Output::new(4);
        let mut burst = Burst::new(PortNo(port));
        burst.pkts.push(HeapBuf::from_frame(&frame));
        self.pipe.process(now, &mut burst, &mut out);
        out
    }

    /// Sends `frame` and expects exactly one packet out of `port`.
    pub fn expect(&mut self, now: Nanos, in_port: u16, frame: Vec<u8>, port: u16) -> Vec<u8> {
        let mut out = self.send(now, in_port, frame);
        let mut got = out.take(PortNo(port));
        assert_eq!(
            got.len(),
            1,
            "expected one packet on port {port}; drops: {:?}",
            out.drops.nonzero()
        );
        got.remove(0).data().to_vec()
    }

    /// Sends `frame` and expects it dropped under `reason`.
    pub fn expect_drop(&mut self, now: Nanos, in_port: u16, frame: Vec<u8>, reason: DropReason) {
        let out = self.send(now, in_port, frame);
        assert_eq!(out.drops.get(reason), 1, "drops: {:?}", out.drops.nonzero());
    }
}

/// Client on port 1, server side on port 2; DNAT 10.96.0.10:80 →
/// 10.1.0.5:8080 in zone 5; invalid dropped; new/est/rel routed.
const DNAT_FLOWS: &str = "\
table=0,priority=10,tcp,in_port=1,nw_dst=10.96.0.10 actions=ct(commit,zone=5,nat(dst=10.1.0.5:8080),table=1)
table=0,priority=5,ip,in_port=1 actions=ct(zone=5,nat,table=1)
table=0,priority=5,ip,in_port=2 actions=ct(zone=5,nat,table=1)
table=1,priority=20,ct_state=+trk+inv actions=drop
table=1,priority=10,ct_state=+trk,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est+rpl,in_port=2 actions=output:1
table=1,priority=10,ct_state=+trk+rel,in_port=2 actions=output:1
table=1,priority=1 actions=drop
";

#[test]
fn tcp_dnat_both_directions_states_and_checksums() {
    let mut r = Rig::new(DNAT_FLOWS, Conntrack::new(ConntrackConfig::default()));
    let (c, vip, ep) = ([10, 0, 0, 1], [10, 96, 0, 10], [10, 1, 0, 5]);
    let out = r.expect(0, 1, tcp(c, vip, 1000, 80, 100, 0, fl::SYN, b""), 2);
    let s = seen(&out);
    assert_eq!((s.dst, s.dport), (ip("10.1.0.5"), 8080), "DNATed");
    assert_eq!((s.src, s.sport), (ip("10.0.0.1"), 1000));
    let out = r.expect(1, 2, tcp(ep, c, 8080, 1000, 500, 101, fl::SYNACK, b""), 1);
    let s = seen(&out);
    assert_eq!((s.src, s.sport), (ip("10.96.0.10"), 80), "reply un-DNATed");
    let out = r.expect(2, 1, tcp(c, vip, 1000, 80, 101, 501, fl::ACK, b"hello"), 2);
    assert_eq!(seen(&out).dport, 8080);
    assert!(r.ct.dump(&ConnFilter::default(), 2).contains(
        "tcp,orig=(src=10.0.0.1,dst=10.96.0.10,sport=1000,dport=80),reply=(src=10.1.0.5,dst=10.0.0.1,sport=8080,dport=1000),zone=5"
    ));
    assert!(r.ct.dump(&ConnFilter::default(), 2).contains("ESTABLISHED"));
    let counts = r.ct.state_counts();
    assert_eq!((counts.total, counts.dnat, counts.snat), (1, 1, 0));
    // Out of window: far ahead of what the server allowed.
    r.expect_drop(
        3,
        1,
        tcp(c, vip, 1000, 80, 101 + 1_000_000, 501, fl::ACK, b"x"),
        DropReason::FlowDrop,
    );
    assert_eq!(r.ct.stats().invalid.load(Ordering::Relaxed), 1);
    // A mid-stream segment of an unknown connection is invalid.
    r.expect_drop(
        3,
        1,
        tcp(c, vip, 1001, 80, 5, 5, fl::ACK, b""),
        DropReason::FlowDrop,
    );
    // The endpoint reports port unreachable about the DNATed packet: the
    // error is related, and both it and the embedded packet are translated
    // back to what the client sent.
    let dnated = tcp(c, ep, 1000, 8080, 106, 501, fl::ACK, b"");
    let out = r.expect(4, 2, icmp_error(ep, c, &dnated), 1);
    let s = seen(&out);
    assert_eq!(s.icmp, Some((3, 3)));
    assert_eq!(s.src, ip("10.96.0.10"), "outer source reverse-translated");
    assert_eq!(
        s.inner,
        Some((ip("10.0.0.1"), ip("10.96.0.10"), 1000, 80)),
        "embedded packet reverse-translated"
    );
    // Close: FIN both ways, last ACK → TIME_WAIT, then a new SYN reopens.
    r.expect(5, 1, tcp(c, vip, 1000, 80, 106, 501, fl::FINACK, b""), 2);
    r.expect(5, 2, tcp(ep, c, 8080, 1000, 501, 107, fl::FINACK, b""), 1);
    r.expect(5, 1, tcp(c, vip, 1000, 80, 107, 502, fl::ACK, b""), 2);
    assert!(r.ct.dump(&ConnFilter::default(), 5).contains("TIME_WAIT"));
    r.expect(6, 1, tcp(c, vip, 1000, 80, 9000, 0, fl::SYN, b""), 2);
    assert!(r.ct.dump(&ConnFilter::default(), 6).contains("SYN_SENT"));
    assert_eq!(r.ct.len(), 1);
}

#[test]
fn unrelated_icmp_error_is_invalid() {
    let mut r = Rig::new(DNAT_FLOWS, Conntrack::new(ConntrackConfig::default()));
    let about = tcp([10, 0, 0, 1], [10, 1, 0, 5], 1, 2, 0, 0, fl::ACK, b"");
    r.expect_drop(
        0,
        2,
        icmp_error([10, 1, 0, 5], [10, 0, 0, 1], &about),
        DropReason::FlowDrop,
    );
}

/// SNAT of 10.0.0.0/24 to 192.0.2.1 ports 40000-40009 (zone 7); replies
/// from port 2 come back through the reverse translation.
const SNAT_FLOWS: &str = "\
table=0,priority=10,ip,in_port=1 actions=ct(commit,zone=7,nat(src=192.0.2.1:40000-40009),table=1)
table=0,priority=10,ip,in_port=2 actions=ct(zone=7,nat,table=1)
table=1,priority=20,ct_state=+trk+inv actions=drop
table=1,priority=10,in_port=1 actions=output:2
table=1,priority=10,ct_state=+est+rpl,in_port=2 actions=output:1
table=1,priority=10,ct_state=+rel,in_port=2 actions=output:1
table=1,priority=1 actions=drop
";

#[test]
fn udp_snat_port_range_and_zero_checksum() {
    let mut r = Rig::new(SNAT_FLOWS, Conntrack::new(ConntrackConfig::default()));
    let (c, srv) = ([10, 0, 0, 1], [8, 8, 8, 8]);
    let out = r.expect(0, 1, udp(c, srv, 5353, 53, b"query"), 2);
    let s = seen(&out);
    assert_eq!(s.src, ip("192.0.2.1"));
    assert!((40000..=40009).contains(&s.sport), "port {}", s.sport);
    let port = s.sport;
    let counts = r.ct.state_counts();
    assert_eq!((counts.total, counts.dnat, counts.snat), (1, 0, 1));
    let out = r.expect(1, 2, udp(srv, [192, 0, 2, 1], 53, port, b"answer"), 1);
    let s = seen(&out);
    assert_eq!((s.dst, s.dport), (ip("10.0.0.1"), 5353));
    // UDP checksum 0 ("none") stays 0 through the rewrite.
    let mut f = udp(c, srv, 5353, 53, b"again");
    f[40] = 0;
    f[41] = 0;
    let out = r.expect(2, 1, f, 2);
    assert_eq!(&out[40..42], &[0, 0], "checksum 0 kept");
    seen(&out);
    // Ten ports for ten clients; the eleventh finds none.
    for i in 2..=10u8 {
        r.expect(3, 1, udp([10, 0, 0, i], srv, 5353, 53, b"q"), 2);
    }
    r.expect_drop(
        3,
        1,
        udp([10, 0, 0, 11], srv, 5353, 53, b"q"),
        DropReason::CtNatExhausted,
    );
}

#[test]
fn icmp_echo_pairs_and_orphan_reply() {
    let mut r = Rig::new(SNAT_FLOWS, Conntrack::new(ConntrackConfig::default()));
    let out = r.expect(0, 1, echo([10, 0, 0, 1], [1, 1, 1, 1], 77, true), 2);
    let s = seen(&out);
    assert_eq!(s.src, ip("192.0.2.1"));
    let id = s.sport;
    let out = r.expect(1, 2, echo([1, 1, 1, 1], [192, 0, 2, 1], id, false), 1);
    let s = seen(&out);
    assert_eq!((s.dst, s.sport), (ip("10.0.0.1"), 77), "id translated back");
    r.expect_drop(
        1,
        2,
        echo([1, 1, 1, 1], [192, 0, 2, 1], 999, false),
        DropReason::FlowDrop,
    );
}

#[test]
fn icmp_error_for_snat_udp_reaches_the_client() {
    let mut r = Rig::new(SNAT_FLOWS, Conntrack::new(ConntrackConfig::default()));
    let out = r.expect(0, 1, udp([10, 0, 0, 1], [8, 8, 4, 4], 6000, 53, b"q"), 2);
    let s = seen(&out);
    let err = icmp_error([8, 8, 4, 4], [192, 0, 2, 1], &out);
    let out = r.expect(1, 2, err, 1);
    let e = seen(&out);
    assert_eq!(e.dst, ip("10.0.0.1"), "outer destination un-SNATed");
    assert_eq!(
        e.inner,
        Some((ip("10.0.0.1"), ip("8.8.4.4"), 6000, 53)),
        "embedded packet (with its UDP checksum) un-SNATed; was {:?}",
        (s.src, s.sport)
    );
}

#[test]
fn sctp_dnat_recomputes_crc() {
    let flows = "\
table=0,priority=10,sctp,in_port=1 actions=ct(commit,nat(dst=10.1.0.9:3868),table=1)
table=0,priority=5,in_port=2 actions=ct(nat,table=1)
table=1,priority=10,in_port=1 actions=output:2
table=1,priority=10,ct_state=+rpl,in_port=2 actions=output:1
";
    let mut r = Rig::new(flows, Conntrack::new(ConntrackConfig::default()));
    let out = r.expect(0, 1, sctp([10, 0, 0, 1], [10, 96, 0, 1], 5000, 3868), 2);
    let s = seen(&out);
    assert_eq!((s.dst, s.dport), (ip("10.1.0.9"), 3868));
    let out = r.expect(1, 2, sctp([10, 1, 0, 9], [10, 0, 0, 1], 3868, 5000), 1);
    assert_eq!(seen(&out).src, ip("10.96.0.1"));
}

fn hook_state(h: &mut ConntrackHandle, now: Nanos, ct: &CtAction, f: Vec<u8>) -> u8 {
    let mut b = HeapBuf::from_frame(&f);
    let mut key = crate::flow::key::extract(&f, PortNo(1));
    ConntrackHook::<HeapBuf>::conntrack(h, now, ct, &mut b, &mut key).expect("tracked");
    key.get(Field::CtState) as u8
}

fn commit(zone: u16) -> CtAction {
    CtAction {
        commit: true,
        zone,
        table: None,
        nat: None,
        mark: None,
        label: None,
    }
}

#[test]
fn zones_are_separate_and_uncommitted_is_forgotten() {
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(7);
    let f = udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"");
    let peek = CtAction {
        commit: false,
        ..commit(1)
    };
    assert_eq!(
        hook_state(&mut h, 0, &peek, f.clone()),
        ct_state::TRK | ct_state::NEW
    );
    assert_eq!(ct.len(), 0, "not committed");
    hook_state(&mut h, 0, &commit(1), f.clone());
    hook_state(&mut h, 0, &commit(2), f.clone());
    assert_eq!(ct.len(), 2, "one entry per zone");
    let reply = udp([10, 0, 0, 2], [10, 0, 0, 1], 2, 1, b"");
    assert_eq!(
        hook_state(&mut h, 1, &commit(1), reply.clone()),
        ct_state::TRK | ct_state::EST | ct_state::RPL
    );
    assert_eq!(
        hook_state(&mut h, 1, &commit(2), f),
        ct_state::TRK | ct_state::NEW,
        "zone 2 saw no reply"
    );
    let only1 = ConnFilter {
        zone: Some(1),
        ip: None,
    };
    assert_eq!(ct.dump(&only1, 1).lines().count(), 1);
    assert_eq!(ct.flush(&only1), 1);
    assert_eq!(ct.len(), 1);
}

#[test]
fn commit_sets_ct_mark_and_flows_match_it() {
    let flows = "\
table=0,priority=10,udp,in_port=1 actions=ct(commit,zone=2,exec(set_field:0x2a->ct_mark),table=1)
table=0,priority=10,udp,in_port=2 actions=ct(zone=2,table=1)
table=1,priority=10,ct_state=+trk+est+rpl,ct_mark=0x2a actions=output:1
table=1,priority=10,ct_state=+trk,in_port=1 actions=output:2
";
    let mut r = Rig::new(flows, Conntrack::new(ConntrackConfig::default()));
    r.expect(0, 1, udp([10, 0, 0, 1], [10, 0, 0, 2], 7, 9, b"q"), 2);
    r.expect(0, 2, udp([10, 0, 0, 2], [10, 0, 0, 1], 9, 7, b"a"), 1);
    assert!(r.ct.dump(&ConnFilter::default(), 0).contains("mark=42"));
    // A masked write keeps the other bits.
    let key = key_after_commits([(0xf0u32, 0xffu32), (0x1, 0xf)].map(|(v, m)| CtAction {
        mark: Some((v, m)),
        ..commit(0)
    }));
    assert_eq!(key.get(Field::CtMark), 0xf1);
}

/// Commits one UDP connection with each of `writes` in turn (a fresh copy
/// of its first packet each time), then once more with a plain commit, and
/// returns the flow key that last pass leaves: what the writes stored.
fn key_after_commits(writes: impl IntoIterator<Item = CtAction>) -> FlowKey {
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(1);
    let f = udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"");
    let mut key = FlowKey::default();
    for act in writes.into_iter().chain([commit(0)]) {
        let mut b = HeapBuf::from_frame(&f);
        key = FlowKey::default();
        ConntrackHook::<HeapBuf>::conntrack(&mut h, 0, &act, &mut b, &mut key).expect("ct");
    }
    key
}

#[test]
fn commit_sets_ct_label_and_flows_match_it() {
    // The label is 128 bits wide: a flow matches its high bits, and the
    // mark written in the same exec() is independent of it.
    let flows = "\
table=0,priority=10,udp,in_port=1 actions=ct(commit,zone=2,exec(set_field:0x7->ct_mark,set_field:0xabcd0000000000000000000000000001->ct_label),table=1)
table=0,priority=10,udp,in_port=2 actions=ct(zone=2,table=1)
table=1,priority=10,ct_state=+trk+est+rpl,ct_label=0xabcd0000000000000000000000000000/0xffff0000000000000000000000000000 actions=output:1
table=1,priority=10,ct_state=+trk,in_port=1 actions=output:2
";
    let mut r = Rig::new(flows, Conntrack::new(ConntrackConfig::default()));
    r.expect(0, 1, udp([10, 0, 0, 1], [10, 0, 0, 2], 7, 9, b"q"), 2);
    r.expect(0, 2, udp([10, 0, 0, 2], [10, 0, 0, 1], 9, 7, b"a"), 1);
    let dump = r.ct.dump(&ConnFilter::default(), 0);
    assert!(dump.contains("mark=7"), "{dump}");
    assert!(
        dump.contains("labels=0xabcd0000000000000000000000000001"),
        "{dump}"
    );
    // Masked writes keep the other bits; the key carries all 128 bits.
    let writes = [(1u128 << 127, 1u128 << 127), (0x5, 0xf)].map(|(v, m)| CtAction {
        label: Some((v, m)),
        ..commit(0)
    });
    let key = key_after_commits(writes);
    assert_eq!(key.get(Field::CtLabel), 1u128 << 127 | 0x5);
    assert_eq!(
        key.get(Field::CtMark),
        0,
        "label writes leave the mark alone"
    );
}

#[test]
fn expiry_follows_the_fake_clock() {
    let t = Timeouts::default();
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(1);
    let q = udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"");
    let a = udp([10, 0, 0, 2], [10, 0, 0, 1], 2, 1, b"");
    hook_state(&mut h, 0, &commit(0), q.clone());
    assert_eq!(ct.sweep(t.udp_first - 1), 0, "still alive");
    assert_eq!(ct.sweep(t.udp_first), 2, "both keys expire");
    assert_eq!(ct.len(), 0);
    // A replied UDP flow lives for udp_stream after its last packet.
    hook_state(&mut h, 0, &commit(0), q.clone());
    hook_state(&mut h, 10, &commit(0), a);
    assert_eq!(ct.sweep(10 + t.udp_first), 0);
    assert_eq!(
        hook_state(&mut h, 10 + t.udp_stream - 1, &commit(0), q.clone()),
        ct_state::TRK | ct_state::EST
    );
    // An expired entry is not used even before a sweep.
    let late = 10 + 2 * t.udp_stream + 1;
    assert_eq!(
        hook_state(
            &mut h,
            late,
            &CtAction {
                commit: false,
                ..commit(0)
            },
            q
        ),
        ct_state::TRK | ct_state::NEW
    );
    assert_eq!(ct.len(), 0);
    assert!(ct.stats().expired.load(Ordering::Relaxed) >= 2);
}

#[test]
fn zone_limit_evicts_unreplied_then_drops() {
    let ct = Conntrack::new(ConntrackConfig {
        zone_limits: vec![(3, 2)],
        shards: 1,
        ..ConntrackConfig::default()
    });
    let mut h = ct.handle(1);
    let q = |i: u8| udp([10, 0, 0, i], [10, 0, 0, 99], 1, 2, b"");
    let a = |i: u8| udp([10, 0, 0, 99], [10, 0, 0, i], 2, 1, b"");
    hook_state(&mut h, 0, &commit(3), q(1));
    hook_state(&mut h, 0, &commit(3), q(2));
    // Full: the third evicts an unreplied entry.
    hook_state(&mut h, 0, &commit(3), q(3));
    assert_eq!(ct.stats().evictions.load(Ordering::Relaxed), 1);
    assert_eq!(ct.len(), 2);
    // Make both remaining connections established.
    for i in 1..=3 {
        let mut b = HeapBuf::from_frame(&a(i));
        let mut key = FlowKey::default();
        let peek = CtAction {
            commit: false,
            ..commit(3)
        };
        ConntrackHook::<HeapBuf>::conntrack(&mut h, 1, &peek, &mut b, &mut key).expect("tracked");
    }
    let established = ct.state_counts();
    assert_eq!(established.by_state, vec![("REPLIED".to_string(), 2)]);
    let mut b = HeapBuf::from_frame(&q(4));
    let mut key = FlowKey::default();
    assert_eq!(
        ConntrackHook::<HeapBuf>::conntrack(&mut h, 2, &commit(3), &mut b, &mut key),
        Err(DropReason::CtLimit)
    );
    assert_eq!(ct.stats().limit_hits.load(Ordering::Relaxed), 1);
    // Other zones are not limited by zone 3.
    hook_state(&mut h, 2, &commit(4), q(4));
    assert_eq!(ct.len(), 3);
}

#[test]
fn untrackable_packets_are_invalid_not_panics() {
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(1);
    let full = tcp([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, 0, 0, fl::SYN, b"data");
    for n in 0..full.len() {
        let mut b = HeapBuf::from_frame(&full[..n]);
        let mut key = FlowKey::default();
        ConntrackHook::<HeapBuf>::conntrack(&mut h, 0, &commit(0), &mut b, &mut key)
            .expect("never an error for junk");
        assert_eq!(key.get(Field::CtState) as u8, ct_state::TRK | ct_state::INV);
    }
    let mut frag = udp([1, 1, 1, 1], [2, 2, 2, 2], 1, 2, b"");
    frag[20] = 0x20; // more fragments
    assert_eq!(
        hook_state(&mut h, 0, &commit(0), frag),
        ct_state::TRK | ct_state::INV
    );
    assert_eq!(ct.len(), 0);
}

#[test]
fn window_scaling_from_syn_options_widens_the_window() {
    use etherparse::TcpOptionElement;
    let syn = |src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, seq: u32, ack: Option<u32>| {
        let mut b = PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4(src, dst, 64)
            .tcp(sp, dp, seq, 100)
            .syn();
        if let Some(a) = ack {
            b = b.ack(a);
        }
        let b = b
            .options(&[TcpOptionElement::WindowScale(8)])
            .expect("options");
        let mut v = Vec::new();
        b.write(&mut v, b"").expect("syn");
        v
    };
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(1);
    let (c, s) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    hook_state(&mut h, 0, &commit(0), syn(c, s, 1, 2, 1000, None));
    hook_state(&mut h, 0, &commit(0), syn(s, c, 2, 1, 5000, Some(1001)));
    // Both SYNs carried scale 8; the SYN windows themselves are unscaled
    // (100 bytes). The server's first ACK advertises 100 << 8 = 25600
    // bytes: 20000 bytes of data fit only because of the scale factor.
    let mut ack = tcp(c, s, 1, 2, 1001, 5001, fl::ACK, b"");
    ack[48..50].copy_from_slice(&100u16.to_be_bytes());
    let st = hook_state(&mut h, 0, &commit(0), ack);
    assert_eq!(st, ct_state::TRK | ct_state::EST);
    let mut sack = tcp(s, c, 2, 1, 5001, 1001, fl::ACK, b"");
    sack[48..50].copy_from_slice(&100u16.to_be_bytes());
    let st = hook_state(&mut h, 0, &commit(0), sack);
    assert_eq!(st, ct_state::TRK | ct_state::EST | ct_state::RPL);
    let big = vec![0u8; 1400];
    let mut seq = 1001u32;
    while seq < 1001 + 20_000 {
        let st = hook_state(
            &mut h,
            0,
            &commit(0),
            tcp(c, s, 1, 2, seq, 5001, fl::ACK, &big),
        );
        assert_eq!(
            st,
            ct_state::TRK | ct_state::EST,
            "in the scaled window at {seq}"
        );
        seq += 1400;
    }
    // Beyond 25600 bytes past the server's ack: invalid.
    let st = hook_state(
        &mut h,
        0,
        &commit(0),
        tcp(c, s, 1, 2, 1001 + 26_000, 5001, fl::ACK, &big),
    );
    assert_eq!(st, ct_state::TRK | ct_state::INV);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: u8, a: [u8; 4], b: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        match kind {
            0 => tcp(a, b, sp, dp, 7, 9, fl::ACK, b"payload!"),
            1 => udp(a, b, sp, dp, b"odd"),
            2 => {
                let mut f = udp(a, b, sp, dp, b"nocsum");
                f[40] = 0;
                f[41] = 0;
                f
            }
            3 => echo(a, b, sp, true),
            _ => sctp(a, b, sp, dp),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any rewrite of any tuple leaves every checksum valid, and the
        /// rewrite of the packet inside an ICMP error too.
        #[test]
        fn rewrites_keep_checksums_valid(
            kind in 0u8..5,
            a in any::<[u8; 4]>(), b in any::<[u8; 4]>(),
            sp in 1u16.., dp in 1u16..,
            ta in any::<[u8; 4]>(), tb in any::<[u8; 4]>(),
            tsp in 1u16.., tdp in 1u16..,
        ) {
            let mut f = frame(kind, a, b, sp, dp);
            let p = nat::parse(&f).expect("parse");
            let mut to = Tuple {
                src: u32::from_be_bytes(ta),
                dst: u32::from_be_bytes(tb),
                sport: tsp,
                dport: tdp,
            };
            if kind == 3 {
                to.dport = to.sport;
            }
            nat::rewrite(&mut f, &p, to).expect("rewrite");
            let s = seen(&f);
            prop_assert_eq!((s.src, s.dst), (Ipv4Addr::from(ta), Ipv4Addr::from(tb)));
            prop_assert_eq!(s.sport, to.sport);
            if kind == 2 {
                prop_assert_eq!(&f[40..42], &[0u8, 0][..]);
            }
            if kind != 4 {
                // The same packet quoted in an ICMP error, rewritten back.
                let mut e = icmp_error(b, a, &f);
                let outer = nat::parse(&e).expect("outer");
                let inner = nat::parse_embedded(&e, &outer).expect("inner");
                let back = p.tuple;
                nat::rewrite_icmp_error(&mut e, &outer, &inner, back).expect("rewrite error");
                let s = seen(&e);
                let (src, dst, isp, idp) = s.inner.expect("inner");
                prop_assert_eq!((src, dst), (Ipv4Addr::from(a), Ipv4Addr::from(b)));
                if kind != 3 {
                    prop_assert_eq!((isp, idp), (sp, dp));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..120),
            nat in any::<bool>(),
        ) {
            let ct = Conntrack::new(ConntrackConfig { shards: 4, ..ConntrackConfig::default() });
            let mut h = ct.handle(3);
            let mut f = tcp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 0, 0, fl::SYN, b"");
            f.truncate(14);
            f.extend_from_slice(&bytes);
            let act = CtAction {
                commit: true,
                zone: 0,
                table: None,
                nat: nat.then(|| NatSpec {
                    kind: Some(NatKind::Src),
                    addrs: Some((Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(1, 2, 3, 4))),
                    ports: Some((1000, 1001)),
                }),
                mark: Some((7, 0xff)),
                label: Some((1 << 100, 1 << 100)),
            };
            for now in 0..2 {
                let mut b = HeapBuf::from_frame(&f);
                let mut key = FlowKey::default();
                let _ = ConntrackHook::<HeapBuf>::conntrack(&mut h, now, &act, &mut b, &mut key);
            }
        }
    }
}

#[test]
fn control_commands() {
    use crate::ctl::registry::Registry;
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(1);
    hook_state(
        &mut h,
        0,
        &commit(9),
        udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b""),
    );
    let reg = Registry::new();
    commands::register_commands(&reg, ct.clone(), || 0).expect("register");
    let call = |cmd: &str, args: &[&str]| call(&reg, cmd, args);
    let d = call("dump-conntrack", &["zone=9"]).expect("dump");
    assert!(
        d.starts_with("udp,orig=(src=10.0.0.1,dst=10.0.0.2,sport=1,dport=2)"),
        "{d}"
    );
    assert_eq!(call("dump-conntrack", &["zone=8"]).expect("dump"), "");
    assert!(call("dump-conntrack", &["ip=10.0.0.2"])
        .expect("dump")
        .contains("zone=9"));
    let e = call("dump-conntrack", &["zone=x"]).expect_err("bad zone");
    assert!(e.contains("use zone=N"), "{e}");
    // The second packet of the connection fills the PMD's cache (the
    // first one does not), the third is served by it.
    for _ in 0..2 {
        hook_state(
            &mut h,
            1,
            &commit(9),
            udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b""),
        );
    }
    let s = call("conntrack-stats", &[]).expect("stats");
    assert!(
        s.contains("UNREPLIED: 1")
            && s.contains("dnat: 0\n  snat: 0\n")
            && s.contains("created: 1"),
        "{s}"
    );
    assert!(
        s.contains("connection cache pmd 0: hits 1 misses 2 (33.3% hits"),
        "{s}"
    );
    assert_eq!(
        call("flush-conntrack", &[]).expect("flush"),
        "flushed 1 connections\n"
    );
    assert!(ct.is_empty());
}

/// Runs a control command through the registry as the socket would.
pub(crate) fn call(
    reg: &crate::ctl::registry::Registry,
    cmd: &str,
    args: &[&str],
) -> Result<String, String> {
    let ctx = crate::ctl::registry::DispatchContext { on_exit: &|| {} };
    reg.dispatch(cmd, &serde_json::json!(args), &ctx)
        .map(|v| v.as_str().unwrap_or_default().to_string())
}

#[test]
fn pmds_share_the_table_and_commit_races_leave_one_entry() {
    let ct = Conntrack::new(ConntrackConfig {
        shards: 8,
        ..ConntrackConfig::default()
    });
    let dnat = CtAction {
        nat: Some(NatSpec {
            kind: Some(NatKind::Dst),
            addrs: Some((Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 1, 0, 5))),
            ports: Some((8080, 8080)),
        }),
        ..commit(4)
    };
    const N: u16 = 2000;
    let q = |i: u16| {
        udp(
            [10, 0, (i >> 8) as u8, i as u8],
            [10, 96, 0, 1],
            1000,
            53,
            b"q",
        )
    };
    // Two PMDs commit the same connections at the same time.
    std::thread::scope(|s| {
        for seed in [1, 2] {
            let (ct, dnat) = (ct.clone(), dnat.clone());
            s.spawn(move || {
                let mut h = ct.handle(seed);
                for i in 0..N {
                    let mut b = HeapBuf::from_frame(&q(i));
                    let mut key = FlowKey::default();
                    ConntrackHook::<HeapBuf>::conntrack(&mut h, 0, &dnat, &mut b, &mut key)
                        .expect("tracked");
                    assert_eq!(
                        key.get(Field::CtState) as u8,
                        ct_state::TRK | ct_state::NEW | ct_state::DNAT
                    );
                    assert_eq!(seen(b.data()).dst, ip("10.1.0.5"));
                }
            });
        }
    });
    assert_eq!(ct.len(), usize::from(N), "one entry per connection");
    // Replies arrive on the other PMD and are translated back.
    let mut h = ct.handle(3);
    for i in 0..N {
        let r = udp(
            [10, 1, 0, 5],
            [10, 0, (i >> 8) as u8, i as u8],
            8080,
            1000,
            b"a",
        );
        let mut b = HeapBuf::from_frame(&r);
        let mut key = FlowKey::default();
        ConntrackHook::<HeapBuf>::conntrack(&mut h, 1, &dnat, &mut b, &mut key).expect("reply");
        assert_eq!(
            key.get(Field::CtState) as u8,
            ct_state::TRK | ct_state::EST | ct_state::RPL | ct_state::DNAT
        );
        let s = seen(b.data());
        assert_eq!((s.src, s.sport), (ip("10.96.0.1"), 53));
    }
}

#[test]
fn global_limit_evicts_then_drops() {
    let ct = Conntrack::new(ConntrackConfig {
        max_connections: 3,
        shards: 1,
        ..ConntrackConfig::default()
    });
    let mut h = ct.handle(1);
    let q = |i: u8| udp([10, 0, 0, i], [10, 0, 0, 99], 1, 2, b"");
    let a = |i: u8| udp([10, 0, 0, 99], [10, 0, 0, i], 2, 1, b"");
    let peek = CtAction {
        commit: false,
        ..commit(0)
    };
    hook_state(&mut h, 0, &commit(0), q(1));
    hook_state(&mut h, 0, &commit(0), q(2));
    hook_state(&mut h, 0, &commit(0), q(3));
    hook_state(&mut h, 0, &peek, a(3));
    // Full: an unreplied entry makes room.
    hook_state(&mut h, 0, &commit(0), q(4));
    assert_eq!(ct.len(), 3);
    assert_eq!(ct.stats().evictions.load(Ordering::Relaxed), 1);
    for i in [1, 2, 4] {
        hook_state(&mut h, 0, &peek, a(i));
    }
    assert_eq!(ct.state_counts().by_state, vec![("REPLIED".to_string(), 3)]);
    let mut b = HeapBuf::from_frame(&q(5));
    let mut key = FlowKey::default();
    assert_eq!(
        ConntrackHook::<HeapBuf>::conntrack(&mut h, 0, &commit(0), &mut b, &mut key),
        Err(DropReason::CtLimit)
    );
    assert_eq!(ct.stats().limit_hits.load(Ordering::Relaxed), 1);
}

#[test]
fn key_after_nat_equals_a_fresh_parse() {
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(1);
    let act = CtAction {
        nat: Some(NatSpec {
            kind: Some(NatKind::Src),
            addrs: Some((Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 1))),
            ports: Some((5000, 5999)),
        }),
        ..commit(0)
    };
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    for f in [
        tcp(a, b, 1, 2, 0, 0, fl::SYN, b""),
        udp(a, b, 1, 2, b"x"),
        sctp(a, b, 1, 2),
        echo(a, b, 9, true),
    ] {
        for _ in 0..2 {
            let mut buf = HeapBuf::from_frame(&f);
            let mut key = crate::flow::key::extract(&f, PortNo(1));
            ConntrackHook::<HeapBuf>::conntrack(&mut h, 0, &act, &mut buf, &mut key).expect("ct");
            let fresh = crate::flow::key::extract(buf.data(), PortNo(1));
            for field in [Field::NwSrc, Field::NwDst, Field::TpSrc, Field::TpDst] {
                assert_eq!(
                    key.get(field),
                    fresh.get(field),
                    "{field} of {:?}",
                    seen(buf.data())
                );
            }
            assert_eq!(key.get(Field::NwSrc), 0xc000_0201);
        }
    }
}

#[test]
fn trace_predicts_the_datapaths_explicit_dnat_choice() {
    // `trace` and the datapath pick the address and port of a range the
    // same way, so the trace shows what the packet really gets.
    let flows = "\
table=0,priority=10,tcp actions=ct(commit,nat(dst=10.9.0.1-10.9.0.50:8000-8099),table=1)
table=1,priority=10,ip actions=output:2
";
    let tables = FlowTables::new();
    tables.add_flows(flows, 0).expect("flows");
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut r = Rig::new(flows, ct.clone());
    let oracle = super::trace::CtTracer::new(ct, || 0);
    for sport in [1000u16, 2345, 40000, 65000] {
        let t = tables
            .trace_with(
                &format!(
                    "in_port=1,tcp,tcp_flags=+syn,nw_src=10.0.0.7,nw_dst=10.0.0.99,tp_src={sport},tp_dst=80"
                ),
                Some(&oracle),
            )
            .expect("trace");
        let out = r.expect(
            0,
            1,
            tcp([10, 0, 0, 7], [10, 0, 0, 99], sport, 80, 1, 0, fl::SYN, b""),
            2,
        );
        let got = seen(&out);
        let want = format!("=> 10.0.0.7:{sport} -> {}:{}", got.dst, got.dport);
        assert!(t.contains(&want), "missing {want:?} in\n{t}");
    }
}

/// Issue 18, defect 3: a packet whose source equals its destination used to
/// be dropped as `ct_limit` (table full) with an empty table, so any pod
/// could raise table-full alerts.
#[test]
fn self_addressed_packets_have_their_own_drop_reason() {
    let ct = Conntrack::new(ConntrackConfig::default());
    let mut h = ct.handle(1);
    let me = [10, 0, 0, 7];
    for f in [
        tcp(me, me, 4000, 4000, 1, 0, fl::SYN, b""),
        udp(me, me, 53, 53, b"x"),
    ] {
        let mut b = HeapBuf::from_frame(&f);
        let mut key = crate::flow::key::extract(&f, PortNo(1));
        assert_eq!(
            ConntrackHook::<HeapBuf>::conntrack(&mut h, 0, &commit(0), &mut b, &mut key),
            Err(DropReason::CtSelfAddressed)
        );
    }
    assert_eq!(ct.stats().limit_hits.load(Ordering::Relaxed), 0);
    assert_eq!(ct.len(), 0);
    // Same address, different ports: an ordinary connection.
    hook_state(
        &mut h,
        0,
        &commit(0),
        tcp(me, me, 4000, 80, 1, 0, fl::SYN, b""),
    );
    assert_eq!(ct.len(), 1);
}
