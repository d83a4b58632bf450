//! Byte-level Geneve encap/decap tests, with etherparse as the independent
//! oracle, and the tunnel hook inside the flow pipeline.

use std::cell::Cell;
use std::net::Ipv4Addr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use super::geneve::{entropy_port, frag_needed, GeneveTunnels, TunnelConfig, Tunnels};
use crate::drop::DropReason;
use crate::flow::key::{extract, Field, FlowKey};
use crate::flow::tables::FlowTables;
use crate::neigh::table::{NeighMap, NeighTable};
use crate::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use crate::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use crate::pipeline::hooks::{Hooks, NoConntrack, TunnelHook};
use crate::pipeline::Pipeline;

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const LOCAL_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const REMOTE_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];

fn tunnels(cfg: TunnelConfig) -> Tunnels {
    let neigh = NeighTable::new();
    let mut m = NeighMap::new();
    m.insert(REMOTE, REMOTE_MAC);
    neigh.publish(m);
    let t = Tunnels::new(cfg, 1, neigh);
    t.vteps.add("node-b", REMOTE).expect("vtep");
    t
}

fn config() -> TunnelConfig {
    TunnelConfig {
        local_ip: LOCAL,
        local_mac: LOCAL_MAC,
        ..TunnelConfig::default()
    }
}

/// A 64-byte inner Ethernet/IPv4/UDP frame built by etherparse.
fn inner_frame(payload_len: usize, df: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 0x20])
        .ipv4([10, 244, 1, 5], [10, 244, 2, 7], 64)
        .udp(4000, 5000);
    let payload = vec![0x5a; payload_len];
    let mut v = Vec::new();
    b.write(&mut v, &payload).expect("build");
    if !df {
        v[20] &= !0x40;
        v[24..26].copy_from_slice(&[0, 0]);
        let c = crate::wire::checksum::finish(crate::wire::checksum::data(&v[14..34]));
        v[24..26].copy_from_slice(&c.to_be_bytes());
    }
    v
}

fn push_key(frame: &[u8], vni: u64) -> FlowKey {
    let mut k = extract(frame, PortNo(1));
    k.set(Field::TunId, u128::from(vni));
    k.set(Field::TunDst, u128::from(u32::from(REMOTE)));
    k
}

fn push(h: &mut GeneveTunnels, pkt: &mut HeapBuf, k: &FlowKey) -> Result<(), DropReason> {
    TunnelHook::<HeapBuf>::tunnel_push(h, 0, pkt, k)
}

fn pop(h: &mut GeneveTunnels, pkt: &mut HeapBuf, k: &mut FlowKey) -> Result<(), DropReason> {
    TunnelHook::<HeapBuf>::tunnel_pop(h, 0, pkt, k).map(|_| ())
}

/// Swaps the roles: a tunnel set whose local VTEP is REMOTE and which knows
/// LOCAL, to decapsulate what `tunnels(config())` encapsulated.
fn peer() -> Tunnels {
    let t = Tunnels::new(
        TunnelConfig {
            local_ip: REMOTE,
            local_mac: REMOTE_MAC,
            ..TunnelConfig::default()
        },
        1,
        NeighTable::new(),
    );
    t.vteps.add("node-a", LOCAL).expect("vtep");
    t
}

#[test]
fn encap_is_valid_ipv4_udp_geneve_per_etherparse() {
    let t = tunnels(config());
    let mut h = t.hook(0);
    let inner = inner_frame(64 - 42, true);
    assert_eq!(inner.len(), 64);
    let mut pkt = HeapBuf::from_frame(&inner);
    let k = push_key(&inner, 0x12_3456);
    push(&mut h, &mut pkt, &k).expect("encap");
    let f = pkt.data();
    assert_eq!(f.len(), 64 + 50);
    let s = SlicedPacket::from_ethernet(f).expect("etherparse parses the outer frame");
    let eth = s
        .link
        .as_ref()
        .and_then(|l| l.to_header())
        .expect("ethernet");
    let etherparse::LinkHeader::Ethernet2(eth) = eth else {
        panic!("not Ethernet II")
    };
    assert_eq!(eth.source, LOCAL_MAC);
    assert_eq!(eth.destination, REMOTE_MAC);
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not IPv4")
    };
    let iph = ip.header().to_header();
    assert_eq!(Ipv4Addr::from(iph.source), LOCAL);
    assert_eq!(Ipv4Addr::from(iph.destination), REMOTE);
    assert_eq!(iph.time_to_live, 64);
    assert!(iph.dont_fragment);
    assert_eq!(iph.header_checksum, iph.calc_header_checksum());
    assert_eq!(usize::from(iph.total_len), 64 + 36);
    let Some(TransportSlice::Udp(udp)) = &s.transport else {
        panic!("not UDP")
    };
    assert_eq!(udp.destination_port(), 6081);
    assert_eq!(udp.source_port(), entropy_port(&k));
    assert!(udp.source_port() >= 49152);
    assert_eq!(udp.checksum(), 0, "outer UDP checksum off by default");
    let g = udp.payload();
    assert_eq!(g[0], 0, "version 0, no options");
    assert_eq!(g[1], 0);
    assert_eq!(&g[2..4], &[0x65, 0x58]);
    assert_eq!(&g[4..8], &[0x12, 0x34, 0x56, 0x00]);
    assert_eq!(&g[8..], &inner[..], "inner frame carried unchanged");
    assert_eq!(t.vteps.entries()[0].totals().0, 1);
}

#[test]
fn udp_checksum_when_configured_is_valid() {
    let t = tunnels(TunnelConfig {
        udp_checksum: true,
        ttl: 9,
        df: false,
        ..config()
    });
    let mut h = t.hook(0);
    let inner = inner_frame(100, true);
    let mut pkt = HeapBuf::from_frame(&inner);
    push(&mut h, &mut pkt, &push_key(&inner, 7)).expect("encap");
    let s = SlicedPacket::from_ethernet(pkt.data()).expect("parse");
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not IPv4")
    };
    let iph = ip.header().to_header();
    assert_eq!(iph.time_to_live, 9);
    assert!(!iph.dont_fragment);
    let Some(TransportSlice::Udp(udp)) = &s.transport else {
        panic!("not UDP")
    };
    let expect = udp
        .to_header()
        .calc_checksum_ipv4(&iph, udp.payload())
        .expect("checksum");
    assert_ne!(udp.checksum(), 0);
    assert_eq!(udp.checksum(), expect);
}

#[test]
fn entropy_port_differs_between_flows() {
    let a = inner_frame(10, true);
    let mut b = a.clone();
    b[34..36].copy_from_slice(&4001u16.to_be_bytes());
    let pa = entropy_port(&extract(&a, PortNo(1)));
    let pb = entropy_port(&extract(&b, PortNo(1)));
    assert_ne!(pa, pb);
    assert_eq!(pa, entropy_port(&extract(&a, PortNo(1))), "stable per flow");
}

#[test]
fn entropy_ports_spread_over_the_range() {
    // 10k flows differing in source address and port (as the encap bench
    // and pktgen's scenario do) into the 16384 ports: a uniform hash fills
    // about 7.5k distinct ports; a weak one (a linear mix, a lost word)
    // far fewer.
    let base = inner_frame(20, true);
    let mut seen = std::collections::HashSet::new();
    for n in 0..10_000u32 {
        let mut f = base.clone();
        f[26..30].copy_from_slice(&(0x0af4_0000u32 | (n >> 8)).to_be_bytes());
        f[34..36].copy_from_slice(&(1024 + (n & 0xff) as u16).to_be_bytes());
        let p = entropy_port(&extract(&f, PortNo(1)));
        assert!(p >= 0xc000, "port {p} outside 49152-65535");
        seen.insert(p);
    }
    assert!(seen.len() > 7000, "only {} distinct ports", seen.len());
}

#[test]
fn encap_decap_round_trip_with_option() {
    let t = tunnels(config());
    let mut h = t.hook(0);
    let p = peer();
    let mut ph = p.hook(0);
    for (class, kind, md, opt_words) in [
        (0x0102u16, 0x05u8, 0xdead_beefu64, 2u8),
        (0x0103, 0x06, 0x0102_0304_0506_0708, 3),
        (0x0104, 0x80, 0x1, 2), // critical, known to the peer below
    ] {
        let inner = inner_frame(30, true);
        let mut pkt = HeapBuf::from_frame(&inner);
        let mut k = push_key(&inner, 0xabcdef);
        k.set(Field::TunGnvClass, u128::from(class));
        k.set(Field::TunGnvType, u128::from(kind));
        k.set(Field::TunMetadata0, u128::from(md));
        push(&mut h, &mut pkt, &k).expect("encap");
        let g = &pkt.data()[42..];
        assert_eq!(g[0], opt_words, "opt len in 4-byte words");
        assert_eq!(
            g[1] & 0x40 != 0,
            kind & 0x80 != 0,
            "C bit follows the option"
        );
        assert_eq!(u16::from_be_bytes([g[8], g[9]]), class);
        assert_eq!(g[10], kind);
        let mut rk = FlowKey::default();
        let res = pop(&mut ph, &mut pkt, &mut rk);
        if kind & 0x80 != 0 {
            assert_eq!(res, Err(DropReason::GeneveUnknownCritical));
            let known = Tunnels::new(
                TunnelConfig {
                    local_ip: REMOTE,
                    known_critical: vec![(class, kind)],
                    accept_unknown_vtep: true,
                    ..TunnelConfig::default()
                },
                1,
                NeighTable::new(),
            );
            let mut kh = known.hook(0);
            pop(&mut kh, &mut pkt, &mut rk).expect("known critical option accepted");
        } else {
            res.expect("decap");
        }
        assert_eq!(pkt.data(), &inner[..]);
        assert_eq!(rk.get(Field::TunId), 0xabcdef);
        assert_eq!(rk.get(Field::TunSrc), u128::from(u32::from(LOCAL)));
        assert_eq!(rk.get(Field::TunDst), u128::from(u32::from(REMOTE)));
        assert_eq!(rk.get(Field::TunGnvClass), u128::from(class));
        assert_eq!(rk.get(Field::TunGnvType), u128::from(kind));
        assert_eq!(rk.get(Field::TunMetadata0), u128::from(md));
    }
    assert_eq!(p.vteps.entries()[0].totals().2, 2);
}

/// An outer frame built by etherparse around a hand-written Geneve header.
fn outer(geneve: &[u8], inner: &[u8], dst: Ipv4Addr) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(REMOTE_MAC, LOCAL_MAC)
        .ipv4(REMOTE.octets(), dst.octets(), 64)
        .udp(50000, 6081);
    let mut payload = geneve.to_vec();
    payload.extend_from_slice(inner);
    let mut v = Vec::new();
    b.write(&mut v, &payload).expect("build");
    v
}

#[test]
fn decap_of_etherparse_built_packet_and_padding_is_stripped() {
    let t = Tunnels::new(config(), 1, NeighTable::new());
    t.vteps.add("node-b", REMOTE).expect("vtep");
    let mut h = t.hook(0);
    let inner = inner_frame(20, true);
    let g = [
        0x01, 0x00, 0x65, 0x58, 0x00, 0x00, 0x2a, 0x00, 0x01, 0x02, 0x03, 0x00,
    ];
    // Option length 0 words: a 4-byte option with no data.
    let mut f = outer(&g, &inner, LOCAL);
    f.extend_from_slice(&[0u8; 6]); // Ethernet trailer padding
    let mut pkt = HeapBuf::from_frame(&f);
    let mut k = FlowKey::default();
    pop(&mut h, &mut pkt, &mut k).expect("decap");
    assert_eq!(pkt.data(), &inner[..]);
    assert_eq!(k.get(Field::TunId), 0x2a);
    assert_eq!(k.get(Field::TunGnvClass), 0x0102);
    assert_eq!(k.get(Field::TunGnvType), 0x03);
}

#[test]
fn decap_validation_drops_with_reasons() {
    let t = Tunnels::new(config(), 1, NeighTable::new());
    t.vteps.add("node-b", REMOTE).expect("vtep");
    let mut h = t.hook(0);
    let inner = inner_frame(20, true);
    let plain = [0x00, 0x00, 0x65, 0x58, 0, 0, 1, 0];
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        // Unknown critical option.
        (
            outer(
                &[0x01, 0x40, 0x65, 0x58, 0, 0, 1, 0, 0x01, 0x09, 0x81, 0x00],
                &inner,
                LOCAL,
            ),
            DropReason::GeneveUnknownCritical,
        ),
        // Version 1.
        (
            outer(&[0x40, 0x00, 0x65, 0x58, 0, 0, 1, 0], &inner, LOCAL),
            DropReason::GeneveMalformed,
        ),
        // Options area longer than the packet.
        (
            outer(&[0x3f, 0x00, 0x65, 0x58, 0, 0, 1, 0], &inner[..4], LOCAL),
            DropReason::GeneveMalformed,
        ),
        // OAM.
        (
            outer(&[0x00, 0x80, 0x65, 0x58, 0, 0, 1, 0], &inner, LOCAL),
            DropReason::GeneveOam,
        ),
        // IPv4 payload instead of Ethernet.
        (
            outer(&[0x00, 0x00, 0x08, 0x00, 0, 0, 1, 0], &inner, LOCAL),
            DropReason::GeneveNotEthernet,
        ),
        // Not for this VTEP.
        (
            outer(&plain, &inner, Ipv4Addr::new(192, 168, 50, 9)),
            DropReason::TunnelNotLocal,
        ),
        // Inner frame shorter than Ethernet.
        (
            outer(&plain, &inner[..10], LOCAL),
            DropReason::GeneveMalformed,
        ),
        // Truncated outer.
        (inner[..30].to_vec(), DropReason::GeneveMalformed),
    ];
    for (i, (f, reason)) in cases.iter().enumerate() {
        let mut pkt = HeapBuf::from_frame(f);
        let mut k = FlowKey::default();
        assert_eq!(pop(&mut h, &mut pkt, &mut k), Err(*reason), "case {i}");
        assert_eq!(
            pkt.data(),
            &f[..],
            "case {i}: a dropped packet is unchanged"
        );
    }
    // Bad IPv4 header checksum.
    let mut f = outer(&plain, &inner, LOCAL);
    f[24] ^= 0xff;
    let mut pkt = HeapBuf::from_frame(&f);
    assert_eq!(
        pop(&mut h, &mut pkt, &mut FlowKey::default()),
        Err(DropReason::GeneveMalformed)
    );
    // Unknown source VTEP.
    t.vteps.remove("node-b").expect("remove");
    let mut pkt = HeapBuf::from_frame(&outer(&plain, &inner, LOCAL));
    assert_eq!(
        pop(&mut h, &mut pkt, &mut FlowKey::default()),
        Err(DropReason::TunnelUnknownVtep)
    );
    let drops = &t.stats()[0].drops;
    assert_eq!(drops.get(DropReason::GeneveUnknownCritical), 1);
    assert_eq!(drops.get(DropReason::GeneveMalformed), 5);
}

#[test]
fn decap_never_panics_on_arbitrary_bytes() {
    use proptest::prelude::*;
    let t = Tunnels::new(
        TunnelConfig {
            accept_unknown_vtep: true,
            ..config()
        },
        1,
        NeighTable::new(),
    );
    let base = outer(
        &[0x00, 0x00, 0x65, 0x58, 0, 0, 1, 0],
        &inner_frame(20, true),
        LOCAL,
    );
    proptest!(ProptestConfig::with_cases(500), |(cut in 0usize..120, flips in proptest::collection::vec((0usize..100, any::<u8>()), 0..6))| {
        let mut f = base.clone();
        for (i, b) in flips {
            if let Some(x) = f.get_mut(i) { *x = b; }
        }
        f.truncate(cut.max(1));
        let mut pkt = HeapBuf::from_frame(&f);
        let mut h = t.hook(0);
        let _ = pop(&mut h, &mut pkt, &mut FlowKey::default());
    });
}

#[test]
fn mtu_too_big_is_dropped_and_df_distinguished() {
    let t = tunnels(TunnelConfig {
        uplink_mtu: 1500,
        ..config()
    });
    let mut h = t.hook(0);
    assert_eq!(t.config().pod_mtu(), 1500 - 50 - 12);
    // Inner IP packet of 1450 bytes fits exactly (1450 + 50 = 1500 on the wire IP MTU).
    let fits = inner_frame(1450 - 28, true);
    let mut pkt = HeapBuf::from_frame(&fits);
    push(&mut h, &mut pkt, &push_key(&fits, 1)).expect("fits");
    let ip_total = u16::from_be_bytes([pkt.data()[16], pkt.data()[17]]);
    assert_eq!(ip_total, 1500);
    let big_df = inner_frame(1451 - 28, true);
    let mut pkt = HeapBuf::from_frame(&big_df);
    assert_eq!(
        push(&mut h, &mut pkt, &push_key(&big_df, 1)),
        Err(DropReason::TunnelTooBigDf)
    );
    let q = t.icmp_queue();
    let r = q.pop().expect("an ICMP answer is queued");
    assert_eq!(r.port, PortNo(1));
    assert!(q.pop().is_none());
    let s = SlicedPacket::from_ethernet(&r.frame[..r.len]).expect("parse queued icmp");
    let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
        panic!("not ICMP")
    };
    assert!(matches!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 }
        )
    ));
    let big = inner_frame(1451 - 28, false);
    let mut pkt = HeapBuf::from_frame(&big);
    assert_eq!(
        push(&mut h, &mut pkt, &push_key(&big, 1)),
        Err(DropReason::TunnelTooBig)
    );
    // The ICMP answer for the DF case, checked by etherparse.
    let mut buf = [0u8; 128];
    let n = frag_needed(&big_df, t.config().pod_mtu(), LOCAL, &mut buf).expect("icmp");
    let s = SlicedPacket::from_ethernet(&buf[..n]).expect("parse icmp");
    let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
        panic!("not ICMP")
    };
    match icmp.icmp_type() {
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
        ) => assert_eq!(next_hop_mtu, 1438),
        other => panic!("unexpected ICMP {other:?}"),
    }
    assert_eq!(
        icmp.checksum(),
        icmp.icmp_type().calc_checksum(icmp.payload())
    );
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not IPv4")
    };
    assert_eq!(
        Ipv4Addr::from(ip.header().destination()),
        Ipv4Addr::new(10, 244, 1, 5)
    );
}

#[test]
fn encap_failures_are_counted() {
    let t = tunnels(config());
    let mut h = t.hook(0);
    let inner = inner_frame(20, true);
    // VNI over 24 bits.
    let mut pkt = HeapBuf::from_frame(&inner);
    assert_eq!(
        push(&mut h, &mut pkt, &push_key(&inner, 1 << 24)),
        Err(DropReason::TunnelBadVni)
    );
    // Unknown VTEP.
    let mut k = push_key(&inner, 1);
    k.set(
        Field::TunDst,
        u128::from(u32::from(Ipv4Addr::new(192, 168, 50, 3))),
    );
    assert_eq!(
        push(&mut h, &mut pkt, &k),
        Err(DropReason::TunnelUnknownVtep)
    );
    // Off-subnet VTEP without a gateway.
    t.vteps
        .add("far", Ipv4Addr::new(172, 16, 0, 1))
        .expect("vtep");
    k.set(
        Field::TunDst,
        u128::from(u32::from(Ipv4Addr::new(172, 16, 0, 1))),
    );
    assert_eq!(push(&mut h, &mut pkt, &k), Err(DropReason::TunnelNoRoute));
    // Unresolved next hop: asks the neighbour cache.
    t.vteps
        .add("near", Ipv4Addr::new(192, 168, 50, 7))
        .expect("vtep");
    k.set(
        Field::TunDst,
        u128::from(u32::from(Ipv4Addr::new(192, 168, 50, 7))),
    );
    assert_eq!(push(&mut h, &mut pkt, &k), Err(DropReason::NeighUnresolved));
    assert_eq!(t.neigh.take_wanted(), Some(Ipv4Addr::new(192, 168, 50, 7)));
    assert_eq!(
        pkt.data(),
        &inner[..],
        "failed encap leaves the frame unchanged"
    );
    let text = sluice_api::Render::render(&super::commands::dump_tunnels(&t));
    assert!(text.contains("tunnel_bad_vni: 1"), "{text}");
    assert!(text.contains("remote node-b vtep 192.168.50.2"), "{text}");
}

#[test]
fn pipeline_pushes_and_pops_through_flows() {
    // Node A: pod on port 1, uplink port 2. Traffic from the pod is
    // encapsulated towards node B; Geneve from the uplink is decapsulated
    // and the inner frame delivered to the pod by matching tun_id.
    let flows = "\
table=0,priority=100,in_port=1,actions=set_field:0x64->tun_id,set_field:192.168.50.2->tun_dst,set_field:0x102->tun_gnv_class,set_field:0x7->tun_gnv_type,set_field:0x11223344->tun_metadata0,tnl_push,output:2
table=0,priority=100,in_port=2,udp,tp_dst=6081,actions=tnl_pop
table=0,priority=90,tun_id=0x64,tun_gnv_class=0x102,tun_metadata0=0x11223344,actions=output:1
table=0,priority=0,actions=drop";
    let t = FlowTables::new();
    t.add_flows(flows, 0).expect("flows");
    let a = tunnels(config());
    let mut pa = FlowPipeline::with_hooks(
        t.clone(),
        FlowPipelineConfig::default(),
        Hooks {
            ct: NoConntrack,
            tunnels: a.hook(0),
        },
    );
    let inner = inner_frame(22, true);
    let mut out = Output::new(4);
    let mut burst = Burst::new(PortNo(1));
    burst.pkts.push(HeapBuf::from_frame(&inner));
    pa.process(0, &mut burst, &mut out);
    let sent = out.take(PortNo(2));
    assert_eq!(sent.len(), 1, "drops: {:?}", out.drops.nonzero());
    let wire = sent[0].data().to_vec();
    assert_eq!(wire.len(), inner.len() + 50 + 8);

    // Node B decapsulates with the same program (its local VTEP is REMOTE).
    let b = peer();
    let mut pb = FlowPipeline::with_hooks(
        t,
        FlowPipelineConfig::default(),
        Hooks {
            ct: NoConntrack,
            tunnels: b.hook(0),
        },
    );
    let mut out = Output::new(4);
    let mut burst = Burst::new(PortNo(2));
    burst.pkts.push(HeapBuf::from_frame(&wire));
    pb.process(0, &mut burst, &mut out);
    let got = out.take(PortNo(1));
    assert_eq!(got.len(), 1, "drops: {:?}", out.drops.nonzero());
    assert_eq!(got[0].data(), &inner[..]);
}

/// `tunnel/trace` with its text arguments.
fn trace_args(t: &Tunnels, args: &[String]) -> Result<String, sluice_api::ApiError> {
    use sluice_api::FromArgs as _;
    super::commands::trace(t, &sluice_api::tunnel::TunnelTraceRequest::from_args(args)?)
}

#[test]
fn trace_shows_decap_and_encap_steps_without_counting() {
    let t = tunnels(config());
    let p = peer();
    let inner = inner_frame(20, true);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let enc =
        trace_args(&t, &["100".into(), REMOTE.to_string(), hex(&inner)]).expect("encap trace");
    assert!(enc.contains("tnl_push: +50 bytes"), "{enc}");
    // A frame node-b would receive from node-a.
    let mut h = t.hook(0);
    let mut pkt = HeapBuf::from_frame(&inner);
    push(&mut h, &mut pkt, &push_key(&inner, 0x64)).expect("encap");
    let dec = trace_args(&p, &[hex(pkt.data())]).expect("decap trace");
    assert!(
        dec.contains("tnl_pop: tun_id=0x64 tun_src=192.168.50.1"),
        "{dec}"
    );
    assert!(dec.contains("inner (62 bytes)"), "{dec}");
    let bad = trace_args(&p, &[hex(&inner)]).expect("trace");
    assert!(bad.contains("tnl_pop: drop"), "{bad}");
    assert_eq!(
        p.vteps.entries()[0].totals(),
        (0, 0, 0, 0),
        "tracing counts nothing"
    );
    assert!(trace_args(&p, &["zz".into()]).is_err());
}

#[test]
fn local_vtep_change_is_picked_up_by_running_hooks() {
    let t = Tunnels::new(config(), 1, NeighTable::new());
    t.vteps.add("node-b", REMOTE).expect("vtep");
    let mut h = t.hook(0);
    let inner = inner_frame(20, true);
    let plain = [0x00, 0x00, 0x65, 0x58, 0, 0, 1, 0];
    let new_ip = Ipv4Addr::new(192, 168, 50, 9);
    let mut pkt = HeapBuf::from_frame(&outer(&plain, &inner, new_ip));
    assert_eq!(
        pop(&mut h, &mut pkt, &mut FlowKey::default()),
        Err(DropReason::TunnelNotLocal)
    );
    t.set_local(new_ip, 24);
    pop(&mut h, &mut pkt, &mut FlowKey::default()).expect("decap at the new address");
    assert_eq!(t.config().local_ip, new_ip);
}

/// The per-VTEP template follows the neighbour MAC, the local VTEP and the
/// VTEP table: every change is visible on the next packet.
#[test]
fn templates_follow_neighbour_config_and_vtep_changes() {
    let t = tunnels(config());
    let mut h = t.hook(0);
    let inner = inner_frame(20, true);
    let k = push_key(&inner, 7);
    let encap = |h: &mut GeneveTunnels| {
        let mut pkt = HeapBuf::from_frame(&inner);
        push(h, &mut pkt, &k).map(|()| pkt.data().to_vec())
    };
    let first = encap(&mut h).expect("encap");
    assert_eq!(&first[0..6], &REMOTE_MAC);
    assert_eq!(
        encap(&mut h).expect("cached"),
        first,
        "same packet, same bytes"
    );
    // The next hop's MAC changes.
    let moved = [0x02, 0xcc, 0, 0, 0, 9];
    let mut m = NeighMap::new();
    m.insert(REMOTE, moved);
    t.neigh.publish(m);
    let f = encap(&mut h).expect("encap");
    assert_eq!(&f[0..6], &moved);
    // The next hop is forgotten: the packet waits for resolution again.
    t.neigh.publish(NeighMap::new());
    assert_eq!(encap(&mut h), Err(DropReason::NeighUnresolved));
    let mut m = NeighMap::new();
    m.insert(REMOTE, REMOTE_MAC);
    t.neigh.publish(m);
    // The local VTEP moves.
    let new_ip = Ipv4Addr::new(192, 168, 50, 9);
    t.set_local(new_ip, 24);
    let f = encap(&mut h).expect("encap");
    let p = SlicedPacket::from_ethernet(&f).expect("parse");
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4");
    };
    assert_eq!(ip.header().source_addr(), new_ip);
    assert_eq!(
        ip.header().to_header().header_checksum,
        ip.header().to_header().calc_header_checksum()
    );
    // The VTEP goes away.
    t.vteps.remove("node-b").expect("remove");
    assert_eq!(encap(&mut h), Err(DropReason::TunnelUnknownVtep));
}

/// `frag_needed` as it was before it used `wire` views, the oracle.
fn frag_needed_offsets(inner: &[u8], mtu: u16, from: Ipv4Addr, out: &mut [u8]) -> Option<usize> {
    if inner.len() < 14 + 20 || inner[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &inner[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let quote = (ihl + 8).min(ip.len());
    let icmp_len = 8 + quote;
    let total = 14 + 20 + icmp_len;
    let f = out.get_mut(..total)?;
    f[0..6].copy_from_slice(&inner[6..12]);
    f[6..12].copy_from_slice(&inner[0..6]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let h = &mut f[14..14 + 20];
    h.fill(0);
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + icmp_len) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = 1;
    h[12..16].copy_from_slice(&from.octets());
    h[16..20].copy_from_slice(&ip[12..16]);
    let c = crate::wire::checksum::finish(crate::wire::checksum::data(h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let m = &mut f[14 + 20..];
    m[0] = 3;
    m[1] = 4;
    m[2..6].fill(0);
    m[6..8].copy_from_slice(&mtu.to_be_bytes());
    m[8..].copy_from_slice(&ip[..quote]);
    let c = crate::wire::checksum::finish(crate::wire::checksum::data(m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

proptest::proptest! {
    /// The view-based ICMP fragmentation-needed builder writes the same
    /// bytes as the offset-based one, for any frame.
    #[test]
    fn frag_needed_matches_the_offset_code(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ipv4 in proptest::prelude::any::<bool>(),
        mtu in proptest::prelude::any::<u16>(),
        garbage in proptest::prelude::any::<u8>(),
    ) {
        let mut f = bytes;
        if ipv4 && f.len() >= 15 {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f[14] = 0x40 | (f[14] & 0x0f);
        }
        let (mut a, mut b) = ([garbage; 128], [garbage; 128]);
        let ra = frag_needed(&f, mtu, LOCAL, &mut a);
        let rb = frag_needed_offsets(&f, mtu, LOCAL, &mut b);
        proptest::prop_assert_eq!(ra, rb);
        if let Some(n) = ra {
            proptest::prop_assert_eq!(&a[..n], &b[..n]);
        }
    }
}

/// The decap of the former two-pass datapath, kept verbatim as the oracle
/// of the single-pass one: validate the outer headers and write the tunnel
/// fields into the outer key, strip, then (what the pipeline did on
/// recirculation) parse the inner frame again and copy the tunnel fields
/// and `metadata` over. Returns the result and the inner layout.
fn two_pass_decap(
    cfg: &TunnelConfig,
    known_vtep: impl Fn(Ipv4Addr) -> bool,
    pkt: &mut HeapBuf,
    key: &mut FlowKey,
) -> Result<crate::flow::key::Layout, DropReason> {
    use crate::flow::key::extract_into;
    use crate::wire::{
        checksum, geneve, EtherType, EthernetFrame, IpProtocol, Ipv4Packet, UdpPacket,
    };
    const ETH_LEN: usize = 14;
    const IP_LEN: usize = 20;
    const UDP_LEN: usize = 8;
    // First pass: the former `GeneveTunnels::decap`.
    let d = pkt.data();
    let frame_len = d.len();
    if frame_len < ETH_LEN + IP_LEN
        || EthernetFrame::new_unchecked(d).ethertype() != EtherType::Ipv4
    {
        return Err(DropReason::GeneveMalformed);
    }
    let ip = Ipv4Packet::new_unchecked(&d[ETH_LEN..]);
    let ihl = usize::from(ip.header_len());
    let ip_total = usize::from(ip.total_len());
    if ip.version() != 4
        || ihl < IP_LEN
        || ip_total < ihl + UDP_LEN + geneve::HEADER_LEN
        || ip_total > frame_len - ETH_LEN
        || ip.next_header() != IpProtocol::Udp
        || ip.is_fragment()
        || checksum::data(&d[ETH_LEN..ETH_LEN + ihl]) != 0xffff
    {
        return Err(DropReason::GeneveMalformed);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if dst != cfg.local_ip {
        return Err(DropReason::TunnelNotLocal);
    }
    let udp = &d[ETH_LEN + ihl..ETH_LEN + ip_total];
    let udp_hdr = UdpPacket::new_unchecked(udp);
    let udp_len = usize::from(udp_hdr.len());
    if udp_hdr.dst_port() != cfg.dst_port
        || udp_len < UDP_LEN + geneve::HEADER_LEN
        || udp_len > udp.len()
    {
        return Err(DropReason::GeneveMalformed);
    }
    let Ok(gnv) = geneve::Packet::new_checked(&udp[UDP_LEN..udp_len]) else {
        return Err(DropReason::GeneveMalformed);
    };
    if gnv.oam() {
        return Err(DropReason::GeneveOam);
    }
    if gnv.protocol() != EtherType::TransparentEthernet {
        return Err(DropReason::GeneveNotEthernet);
    }
    let mut slot: Option<(u16, u8, u64)> = None;
    for opt in gnv.options() {
        let Ok(opt) = opt else {
            return Err(DropReason::GeneveMalformed);
        };
        let known = cfg.known_critical.contains(&(opt.class, opt.kind));
        if opt.is_critical() && !known {
            return Err(DropReason::GeneveUnknownCritical);
        }
        if slot.is_none() {
            let n = opt.data.len().min(8);
            let md = opt.data[..n]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            slot = Some((opt.class, opt.kind, md));
        }
    }
    let vni = gnv.vni();
    let outer_len = ETH_LEN + ihl + UDP_LEN + gnv.header_len();
    let inner_end = ETH_LEN + ihl + udp_len;
    if inner_end - outer_len < ETH_LEN {
        return Err(DropReason::GeneveMalformed);
    }
    if !known_vtep(src) && !cfg.accept_unknown_vtep {
        return Err(DropReason::TunnelUnknownVtep);
    }
    key.set(Field::TunId, u128::from(vni));
    key.set(Field::TunSrc, u128::from(u32::from(src)));
    key.set(Field::TunDst, u128::from(u32::from(dst)));
    let (class, kind, md) = slot.unwrap_or((0, 0, 0));
    key.set(Field::TunGnvClass, u128::from(class));
    key.set(Field::TunGnvType, u128::from(kind));
    key.set(Field::TunMetadata0, u128::from(md));
    pkt.trim(frame_len - inner_end);
    pkt.adj(outer_len);
    // Second pass: the pipeline's re-parse on recirculation.
    let meta = *key;
    let layout = extract_into(pkt.data(), meta.in_port(), key);
    for f in [
        Field::TunId,
        Field::TunSrc,
        Field::TunDst,
        Field::TunGnvClass,
        Field::TunGnvType,
        Field::TunMetadata0,
        Field::Metadata,
    ] {
        key.set(f, meta.get(f));
    }
    Ok(layout)
}

/// Inner frames of every shape the key extractor knows (and a few it
/// does not), to wrap in Geneve.
fn arbitrary_inner() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let l4 = prop_oneof![
        Just(6u8),
        Just(17),
        Just(132),
        Just(1),
        Just(58),
        any::<u8>()
    ];
    (
        0u8..6,
        l4,
        any::<[u8; 12]>(),
        any::<u16>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(|(shape, proto, macs, tci, frag, tail)| {
            let mut f = macs.to_vec();
            let mut ty: u16 = match shape {
                0 | 1 => 0x0800,
                2 => 0x86dd,
                3 => 0x0806,
                4 => 0x8100,
                _ => tci,
            };
            if ty == 0x8100 {
                f.extend_from_slice(&ty.to_be_bytes());
                f.extend_from_slice(&tci.to_be_bytes());
                ty = 0x0800;
            }
            f.extend_from_slice(&ty.to_be_bytes());
            match ty {
                0x0800 => {
                    let mut ip = [0u8; 20];
                    ip[0] = if shape == 1 { 0x46 } else { 0x45 };
                    ip[6] = if frag { 0x20 } else { 0x40 };
                    ip[8] = 64;
                    ip[9] = proto;
                    ip[12..20].copy_from_slice(&macs[4..12]);
                    f.extend_from_slice(&ip);
                }
                0x86dd => {
                    let mut ip = [0u8; 40];
                    ip[0] = 0x60;
                    ip[6] = proto;
                    ip[8..20].copy_from_slice(&macs);
                    f.extend_from_slice(&ip);
                }
                _ => {}
            }
            f.extend_from_slice(&tail);
            f
        })
}

/// An outer Geneve frame around `inner` with `opts` as its options area,
/// then `flips` applied, cut to `cut` bytes and `pad` bytes of trailer.
fn mangled_outer(
    inner: &[u8],
    opts: &[u8],
    vni: u32,
    flips: &[(usize, u8)],
    cut: Option<usize>,
    pad: usize,
) -> Vec<u8> {
    let mut g = vec![(opts.len() / 4) as u8 & 0x3f, 0, 0x65, 0x58];
    g.extend_from_slice(&(vni << 8).to_be_bytes());
    g.extend_from_slice(opts);
    let mut f = outer(&g, inner, LOCAL);
    for &(i, b) in flips {
        let n = f.len() + 1;
        if let Some(x) = f.get_mut(i % n) {
            *x = b;
        }
    }
    if let Some(c) = cut {
        f.truncate(c);
    }
    f.extend(std::iter::repeat_n(0u8, pad));
    f
}

#[test]
fn single_pass_decap_equals_two_pass_on_arbitrary_frames() {
    use proptest::prelude::*;
    let options = prop_oneof![
        Just(Vec::new()),
        // One option: class, type (critical or not), 0..3 data words.
        (any::<u16>(), any::<u8>(), 0u8..3, any::<[u8; 12]>()).prop_map(|(c, t, n, d)| {
            let mut o = c.to_be_bytes().to_vec();
            o.push(t);
            o.push(n);
            o.extend_from_slice(&d[..4 * usize::from(n)]);
            o
        }),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|mut v| {
            v.truncate(v.len() / 4 * 4);
            v
        }),
    ];
    let cases = (
        arbitrary_inner(),
        options,
        0u32..(1 << 24),
        proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
        proptest::option::of(0usize..160),
        0usize..8,
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (any::<u16>(), any::<u64>(), any::<u64>()),
    );
    // How many cases decapsulated, and with an inner L4 header: the
    // generator must reach both verdicts, or the equality is vacuous.
    let (oks, l4s, errs) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    proptest!(ProptestConfig::with_cases(2000), |(
        inner in cases.0, opts in cases.1, vni in cases.2, flips in cases.3,
        cut in cases.4, pad in cases.5, (unknown_ok, known_vtep, known_crit) in cases.6,
        (in_port, metadata, junk) in cases.7,
    )| {
        let f = mangled_outer(&inner, &opts, vni, &flips, cut, pad);
        let mut cfg = TunnelConfig { accept_unknown_vtep: unknown_ok, ..config() };
        if known_crit && opts.len() >= 4 {
            cfg.known_critical.push((u16::from_be_bytes([opts[0], opts[1]]), opts[2]));
        }
        let t = Tunnels::new(cfg.clone(), 1, NeighTable::new());
        if known_vtep {
            t.vteps.add("node-b", REMOTE).expect("vtep");
        }
        // An outer key as the pipeline has it: ingress port, metadata, and
        // fields the inner key must not inherit.
        let mut k0 = extract(&f, PortNo(in_port));
        k0.set(Field::Metadata, u128::from(metadata));
        k0.set(Field::CtMark, u128::from(junk as u32));
        k0.set(Field::RecircId, 1);
        let (mut want_pkt, mut want_key) = (HeapBuf::from_frame(&f), k0);
        let want = two_pass_decap(&cfg, |ip| known_vtep && ip == REMOTE, &mut want_pkt, &mut want_key);
        let mut h = t.hook(0);
        let (mut got_pkt, mut got_key) = (HeapBuf::from_frame(&f), k0);
        let got = TunnelHook::<HeapBuf>::tunnel_pop(&mut h, 0, &mut got_pkt, &mut got_key);
        prop_assert_eq!(got, want);
        prop_assert_eq!(got_pkt.data(), want_pkt.data());
        if let Ok(l) = got {
            oks.set(oks.get() + 1);
            l4s.set(l4s.get() + u32::from(l.l4 != 0));
            prop_assert_eq!(got_key, want_key);
            prop_assert_eq!(t.stats()[0].decap.get(), 1);
        } else {
            errs.set(errs.get() + 1);
            // A drop leaves the key alone (the old code wrote nothing
            // before its last check either) and is counted once.
            prop_assert_eq!(got_key, k0);
            prop_assert_eq!(t.stats()[0].drops.get(got.unwrap_err()), 1);
            prop_assert_eq!(t.stats()[0].decap.get(), 0);
        }
    });
    assert!(
        oks.get() >= 200 && l4s.get() >= 50 && errs.get() >= 200,
        "generator coverage: {} decapsulated ({} with L4), {} dropped",
        oks.get(),
        l4s.get(),
        errs.get()
    );
}

#[test]
fn single_pass_decap_equals_two_pass_on_random_bytes() {
    use proptest::prelude::*;
    proptest!(ProptestConfig::with_cases(1000), |(
        f in proptest::collection::vec(any::<u8>(), 0..200),
        in_port in any::<u16>(),
    )| {
        let cfg = TunnelConfig { accept_unknown_vtep: true, ..config() };
        let t = Tunnels::new(cfg.clone(), 1, NeighTable::new());
        let k0 = extract(&f, PortNo(in_port));
        let (mut want_pkt, mut want_key) = (HeapBuf::from_frame(&f), k0);
        let want = two_pass_decap(&cfg, |_| false, &mut want_pkt, &mut want_key);
        let mut h = t.hook(0);
        let (mut got_pkt, mut got_key) = (HeapBuf::from_frame(&f), k0);
        let got = TunnelHook::<HeapBuf>::tunnel_pop(&mut h, 0, &mut got_pkt, &mut got_key);
        prop_assert_eq!(got, want);
        prop_assert_eq!(got_pkt.data(), want_pkt.data());
        prop_assert_eq!(got_key, if got.is_ok() { want_key } else { k0 });
    });
}

#[test]
fn decap_vtep_memo_follows_table_changes_and_sources() {
    let t = Tunnels::new(config(), 1, NeighTable::new());
    t.vteps.add("node-b", REMOTE).expect("vtep");
    let mut h = t.hook(0);
    let plain = [0x00, 0x00, 0x65, 0x58, 0, 0, 1, 0];
    let inner = inner_frame(20, true);
    let from_remote = outer(&plain, &inner, LOCAL);
    // The same frame from another source (header checksum redone).
    let mut from_other = from_remote.clone();
    from_other[26..30].copy_from_slice(&[192, 168, 50, 3]);
    from_other[24..26].copy_from_slice(&[0, 0]);
    let c = crate::wire::checksum::finish(crate::wire::checksum::data(&from_other[14..34]));
    from_other[24..26].copy_from_slice(&c.to_be_bytes());
    let pop_frame = |h: &mut GeneveTunnels, f: &[u8]| {
        let mut pkt = HeapBuf::from_frame(f);
        pop(h, &mut pkt, &mut FlowKey::default())
    };
    pop_frame(&mut h, &from_remote).expect("known VTEP");
    assert_eq!(
        pop_frame(&mut h, &from_other),
        Err(DropReason::TunnelUnknownVtep),
        "a different source is looked up, not taken from the memo"
    );
    pop_frame(&mut h, &from_remote).expect("back to the known VTEP");
    t.vteps.remove("node-b").expect("remove");
    assert_eq!(
        pop_frame(&mut h, &from_remote),
        Err(DropReason::TunnelUnknownVtep),
        "a removed VTEP is not remembered"
    );
    t.vteps
        .add("node-c", Ipv4Addr::new(192, 168, 50, 3))
        .expect("vtep");
    pop_frame(&mut h, &from_other).expect("an added VTEP is seen at once");
    assert_eq!(t.vteps.entries()[0].totals().2, 1, "counted on node-c");
}

/// One frame of [`bursts_of_tunnel_traffic_equal_one_packet_bursts`]: a
/// pod frame on port 1 (to encapsulate) or a Geneve frame on port 2 (to
/// decapsulate), from a small set so that bursts hold runs of one flow.
fn tunnel_traffic_frame() -> impl proptest::strategy::Strategy<Value = (u16, Vec<u8>)> {
    use proptest::prelude::*;
    (
        any::<bool>(),
        0u8..3,
        0u8..3,
        0u8..2,
        0u16..3,
        prop_oneof![Just(22usize), Just(1470)],
        0u8..8,
    )
        .prop_map(|(decap, src, dst, vni, sport, payload, mangle)| {
            let b =
                PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0x10 + src], [2, 0, 0, 0, 0, 0x20 + dst])
                    .ipv4([10, 244, 1, 5 + src], [10, 244, 2, 7 + dst], 64)
                    .udp(4000 + sport, 5000);
            let mut inner = Vec::new();
            b.write(&mut inner, &vec![0x5a; payload]).expect("build");
            if !decap {
                return (1, inner);
            }
            let g = [0, 0, 0x65, 0x58, 0, 0, 0x64 + vni, 0];
            let b = PacketBuilder::ethernet2(REMOTE_MAC, LOCAL_MAC)
                .ipv4(REMOTE.octets(), LOCAL.octets(), 64)
                .udp(50000 + sport, 6081);
            let mut payload = g.to_vec();
            payload.extend_from_slice(&inner);
            let mut f = Vec::new();
            b.write(&mut f, &payload).expect("build");
            // Now and then a frame the decap must drop: a bad outer
            // header checksum, or a Geneve version 1.
            match mangle {
                0 => f[24] ^= 0x10,
                1 => f[42] |= 0x40,
                _ => {}
            }
            (2, f)
        })
}

/// Per-flow batching with tunnels (`FlowPipeline::process`): Geneve frames
/// of one outer flow share their leader's `tnl_pop` (no outer lookup) and
/// each inner frame is looked up on its own key; pod frames of one flow
/// take the encap fast path (`set tun_*, tnl_push, output`) without the
/// action interpreter. Bursts of such traffic send, port by port, the
/// same bytes as the same frames one per burst, with the same drops, rule
/// and tunnel counters; every encapsulated frame that is sent is valid
/// per etherparse (outer IPv4 header checksum, lengths) and carries its
/// inner frame unchanged.
#[test]
fn bursts_of_tunnel_traffic_equal_one_packet_bursts() {
    use proptest::prelude::*;
    let flows = "\
table=0,priority=100,in_port=1,ip,nw_src=10.244.1.5,actions=set_field:0x64->tun_id,set_field:192.168.50.2->tun_dst,tnl_push,output:2
table=0,priority=100,in_port=1,ip,nw_src=10.244.1.6,actions=set_field:0x65->tun_id,set_field:192.168.50.2->tun_dst,set_field:0x102->tun_gnv_class,set_field:0x7->tun_gnv_type,set_field:0x11223344->tun_metadata0,tnl_push,output:2
table=0,priority=100,in_port=1,ip,nw_src=10.244.1.7,actions=set_field:0x64->tun_id,set_field:192.168.50.9->tun_dst,tnl_push,output:2
table=0,priority=100,in_port=2,udp,tp_dst=6081,actions=tnl_pop
table=0,priority=90,tun_id=0x64,dl_dst=02:00:00:00:00:20,actions=output:1
table=0,priority=90,tun_id=0x65,ip,actions=output:3
table=0,priority=0,actions=drop";
    let (encaps, decaps) = (Cell::new(0u32), Cell::new(0u32));
    proptest!(ProptestConfig::with_cases(300), |(
        pkts in proptest::collection::vec((tunnel_traffic_frame(), 1usize..6), 1..12),
    )| {
        let frames: Vec<(u16, Vec<u8>)> = pkts
            .iter()
            .flat_map(|(p, n)| std::iter::repeat_n(p.clone(), *n))
            .collect();
        let pipeline = |t: &Tunnels| {
            let tables = FlowTables::new();
            tables.add_flows(flows, 0).expect("flows");
            let p = FlowPipeline::with_hooks(
                tables.clone(),
                FlowPipelineConfig {
                    ports: (1..=3).map(PortNo).collect(),
                    ..FlowPipelineConfig::default()
                },
                Hooks { ct: NoConntrack, tunnels: t.hook(0) },
            );
            (tables, p)
        };
        let (ta, tb) = (tunnels(config()), tunnels(config()));
        let ((fa, mut a), (fb, mut b)) = (pipeline(&ta), pipeline(&tb));
        let (sent_a, sent_b, oa, ob) =
            crate::pipeline::bursts_and_one_frame_bursts(&mut a, &mut b, &frames, 4);
        prop_assert_eq!(&sent_a, &sent_b);
        prop_assert_eq!(oa.drops.nonzero(), ob.drops.nonzero());
        let dump = |t: &FlowTables| t.dump_flows("", 9).expect("dump");
        prop_assert_eq!(dump(&fa), dump(&fb));
        let (sa, sb) = (&ta.stats()[0], &tb.stats()[0]);
        prop_assert_eq!(sa.encap.get(), sb.encap.get());
        prop_assert_eq!(sa.decap.get(), sb.decap.get());
        encaps.set(encaps.get() + sa.encap.get() as u32);
        decaps.set(decaps.get() + sa.decap.get() as u32);
        for f in &sent_a[2] {
            let s = SlicedPacket::from_ethernet(f).expect("etherparse parses the encapsulated frame");
            let Some(NetSlice::Ipv4(ip)) = &s.net else { panic!("not IPv4") };
            let iph = ip.header().to_header();
            prop_assert_eq!(iph.header_checksum, iph.calc_header_checksum());
            prop_assert_eq!(usize::from(iph.total_len), f.len() - 14);
            let Some(TransportSlice::Udp(udp)) = &s.transport else { panic!("not UDP") };
            prop_assert_eq!(usize::from(udp.length()), f.len() - 34);
            let g = udp.payload();
            let inner = &g[8 + 4 * usize::from(g[0] & 0x3f)..];
            prop_assert!(frames.iter().any(|(p, fr)| *p == 1 && fr[..] == inner[..]), "inner frame changed");
        }
    });
    assert!(
        encaps.get() >= 200 && decaps.get() >= 200,
        "generator coverage: {} encapsulated, {} decapsulated",
        encaps.get(),
        decaps.get()
    );
}
