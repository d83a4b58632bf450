//! Deterministic fast-path workloads for instruction counting under
//! callgrind (`--toggle-collect='*work_*'`): Ir / iterations = cost.
use std::hint::black_box;
use std::net::Ipv4Addr;

use sluice_datapath::conntrack::nat;
use sluice_datapath::flow::action::rewrite;
use sluice_datapath::flow::key::{extract, extract_with_layout, Field};
use sluice_datapath::packet::{HeapBuf, PacketBuf, PortNo};
use sluice_datapath::pipeline::hooks::TunnelHook;

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);

fn tcp_frame() -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(1234, 80, 1, 4096)
        .write(&mut v, &[0u8; 10])
        .unwrap();
    v
}

fn udp_frame() -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 96, 0, 1], 64)
        .udp(1000, 53)
        .write(&mut v, &[0u8; 18])
        .unwrap();
    v
}

#[path = "../benches/common/tunnel_work.rs"]
mod tunnel_work;
use tunnel_work::tunnels;

#[inline(never)]
fn work_extract(n: u32, f: &[u8]) {
    for i in 0..n {
        black_box(extract(black_box(f), PortNo(i as u16)));
    }
}

#[inline(never)]
fn work_rewrite(n: u32, f: &mut [u8]) {
    for i in 0..n {
        let (k, l) = extract_with_layout(f, PortNo(0));
        rewrite(
            f,
            l,
            &k,
            Field::NwDst,
            u128::from(0x0a00_0000 | (i & 0xff)),
            0xffff_ffff,
        )
        .unwrap();
        rewrite(f, l, &k, Field::TpDst, u128::from(i as u16), 0xffff).unwrap();
        rewrite(f, l, &k, Field::NwTtl, u128::from(i as u8 | 1), 0xff).unwrap();
        black_box(&f);
    }
}

#[inline(never)]
fn work_nat(n: u32, f: &mut [u8]) {
    let a = nat::Tuple {
        src: 0x0a00_0001,
        dst: 0x0a60_0001,
        sport: 1000,
        dport: 53,
    };
    let b = nat::Tuple {
        dst: 0x0a80_0007,
        dport: 5353,
        ..a
    };
    for i in 0..n {
        let p = nat::parse(f).expect("parse");
        nat::rewrite(f, &p, if i & 1 == 0 { b } else { a }).expect("rewrite");
        black_box(&f);
    }
}

#[inline(never)]
fn work_encap(n: u32, opt: bool, csum: bool) {
    let t = tunnels(LOCAL, REMOTE, csum);
    let mut h = t.hook(0);
    let inner = udp_frame();
    let mut b = HeapBuf::from_frame(&inner);
    let mut k = extract(&inner, PortNo(1));
    k.set(Field::TunId, 0x64);
    k.set(Field::TunDst, u128::from(u32::from(REMOTE)));
    if opt {
        k.set(Field::TunGnvClass, 0x0102);
        k.set(Field::TunGnvType, 0x03);
        k.set(Field::TunMetadata0, 0xdead_beef);
    }
    for i in 0..n {
        k.set(Field::TpSrc, u128::from(i as u16));
        let before = b.len();
        TunnelHook::<HeapBuf>::tunnel_push(&mut h, 0, &mut b, &k).expect("encap");
        let added = b.len() - before;
        black_box(b.data());
        b.adj(added);
    }
}

/// The 50-byte outer header the remote node puts in front of `inner`
/// (VNI 0x64, to this node's VTEP).
fn outer_header(inner: &[u8]) -> Vec<u8> {
    let sender = tunnels(REMOTE, LOCAL, false);
    let mut h = sender.hook(0);
    let mut b = HeapBuf::from_frame(inner);
    let mut k = extract(inner, PortNo(1));
    k.set(Field::TunId, 0x64);
    k.set(Field::TunDst, u128::from(u32::from(LOCAL)));
    TunnelHook::<HeapBuf>::tunnel_push(&mut h, 0, &mut b, &k).expect("encap");
    b.data()[..50].to_vec()
}

#[inline(never)]
fn work_decap(n: u32) {
    let inner = udp_frame();
    let outer = outer_header(&inner);
    let t = tunnels(LOCAL, REMOTE, false);
    let mut h = t.hook(0);
    let mut b = HeapBuf::from_frame(&[outer.clone(), inner].concat());
    for _ in 0..n {
        let mut k = extract(b.data(), PortNo(2));
        TunnelHook::<HeapBuf>::tunnel_pop(&mut h, 0, &mut b, &mut k).expect("decap");
        black_box(&k);
        b.prepend(50).unwrap()[..50].copy_from_slice(&outer);
    }
}

/// One burst of 32 64-byte frames through the flow pipeline, as in
/// `benches/tunnel.rs` (1k flows): L3 forwarding, Geneve encap, decap.
#[inline(never)]
fn work_pipeline(n: u32, case: u8) {
    use sluice_datapath::packet::{Burst, Output};
    use sluice_datapath::pipeline::Pipeline;
    let (program, in_port) = match case {
        0 => ("priority=10,in_port=1,ip actions=mod_dl_src:02:00:00:00:00:aa,mod_dl_dst:02:00:00:00:00:bb,output:2\npriority=0 actions=drop", 1u16),
        1 => ("priority=10,in_port=1,ip actions=set_field:0x64->tun_id,set_field:192.168.50.2->tun_dst,tnl_push,output:2\npriority=0 actions=drop", 1),
        _ => ("priority=10,in_port=2,udp,tp_dst=6081 actions=tnl_pop\npriority=5,tun_id=0x64,ip actions=output:1\npriority=0 actions=drop", 2),
    };
    let inner = udp_frame();
    let outer_hdr = outer_header(&inner);
    let t = tunnels(LOCAL, REMOTE, false);
    let mut p = tunnel_work::pipeline(program, &t);
    let mut burst = Burst::new(PortNo(in_port));
    for _ in 0..32 {
        let f = if case == 2 {
            [outer_hdr.clone(), inner.clone()].concat()
        } else {
            inner.clone()
        };
        burst.pkts.push(HeapBuf::from_frame(&f));
    }
    let mut out: Output<HeapBuf> = Output::new(4);
    let inner_at = if case == 2 { 50 } else { 0 };
    let mut next = 0u32;
    for _ in 0..n {
        for pkt in burst.pkts.iter_mut() {
            let f = pkt.data_mut();
            f[inner_at + 26..inner_at + 30]
                .copy_from_slice(&(0x0af4_0000u32 | (next >> 8)).to_be_bytes());
            f[inner_at + 34..inner_at + 36]
                .copy_from_slice(&(1024 + (next & 0xff) as u16).to_be_bytes());
            next = (next + 1) % 1000;
        }
        p.process(1, &mut burst, &mut out);
        out.flush(|_, q| burst.pkts.append(q));
        assert_eq!(burst.pkts.len(), 32);
        for pkt in burst.pkts.iter_mut() {
            match case {
                0 => {}
                1 => {
                    pkt.adj(50);
                }
                _ => {
                    pkt.prepend(50).unwrap()[..50].copy_from_slice(&outer_hdr);
                }
            }
        }
    }
}

/// The 64-byte UDP frame of `scripts/bench.sh`'s l2 and encap scenarios
/// (pod A's MAC to `dst_mac`, `10.244.x.y:sport` to `dst`:5001).
fn bench_udp_frame(dst_mac: [u8; 6], dst: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], dst_mac)
        .ipv4([10, 244, 0, 1], dst, 64)
        .udp(1024, 5001)
        .write(&mut v, &[0u8; 18])
        .unwrap();
    v
}

/// The pktgen scenarios the EMC-hit path is judged by, one burst of 32
/// frames at a time through the flow pipeline: `l2` (1000 flows differing
/// in source address and port, one `in_port,dl_dst` rule, output) and
/// `encap` (10,000 such flows to one overlay pod, the bench's Geneve
/// encap rule), behind the ingress checks as in sluiced. Per packet:
/// Ir / (32 n).
#[inline(never)]
fn work_bench(n: u32, encap: bool) {
    use sluice_datapath::packet::{Burst, Output};
    use sluice_datapath::pipeline::Pipeline;
    let (program, frame, flows) = if encap {
        (
            "priority=100,ip,nw_dst=10.246.0.0/16 actions=set_field:5001->tun_id,set_field:192.168.50.2->tun_dst,tnl_push,output:2",
            bench_udp_frame([2, 0, 0, 0, 0, 0xfe], [10, 246, 0, 2]),
            10_000u32,
        )
    } else {
        (
            "priority=100,in_port=1,dl_dst=02:00:00:00:00:02 actions=output:2",
            bench_udp_frame([2, 0, 0, 0, 0, 2], [10, 244, 255, 2]),
            1000,
        )
    };
    let t = tunnels(LOCAL, REMOTE, false);
    // Wrapped as sluiced wraps it (port security and ARP responder,
    // nothing configured, as in the bench).
    let mut p = sluice_datapath::neigh::ingress::Ingress::new(
        tunnel_work::pipeline(program, &t),
        sluice_datapath::neigh::ingress::IngressControl::default(),
    );
    let mut burst = Burst::new(PortNo(1));
    for _ in 0..32 {
        burst.pkts.push(HeapBuf::from_frame(&frame));
    }
    let mut out: Output<HeapBuf> = Output::new(4);
    let mut next = 0u32;
    for _ in 0..n {
        for pkt in burst.pkts.iter_mut() {
            let f = pkt.data_mut();
            f[26..30].copy_from_slice(&(0x0af4_0000u32 | (next >> 8)).to_be_bytes());
            f[34..36].copy_from_slice(&(1024 + (next & 0xff) as u16).to_be_bytes());
            next = (next + 1) % flows;
        }
        p.process(1, &mut burst, &mut out);
        out.flush(|_, q| burst.pkts.append(q));
        assert_eq!(burst.pkts.len(), 32);
        if encap {
            for pkt in burst.pkts.iter_mut() {
                pkt.adj(50);
            }
        }
    }
}

/// The parse functions of `benches/wire.rs` (one definition, shared).
#[path = "../benches/common/wire_work.rs"]
mod wire_bench;

#[inline(never)]
fn work_wire(n: u32, what: u8) {
    use sluice_datapath::wire::ChecksumMode;
    let f = wire_bench::eth_ipv4_tcp_frame();
    let g = wire_bench::geneve_payload();
    for _ in 0..n {
        match what {
            0 => drop(black_box(wire_bench::parse_eth_ipv4_tcp(
                black_box(&f),
                ChecksumMode::Trust,
            ))),
            1 => drop(black_box(wire_bench::parse_eth_ipv4_tcp(
                black_box(&f),
                ChecksumMode::Verify,
            ))),
            _ => drop(black_box(wire_bench::parse_geneve(black_box(&g)))),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_default();
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    match what.as_str() {
        "extract" => work_extract(n, &tcp_frame()),
        "rewrite" => work_rewrite(n, &mut tcp_frame()),
        "nat" => work_nat(n, &mut udp_frame()),
        "encap" => work_encap(n, false, false),
        "encap_opt" => work_encap(n, true, false),
        "encap_csum" => work_encap(n, false, true),
        "decap" => work_decap(n),
        "wire_parse" => work_wire(n, 0),
        "wire_parse_verify_l4" => work_wire(n, 1),
        "wire_geneve_parse" => work_wire(n, 2),
        "pl_l3" => work_pipeline(n, 0),
        "pl_encap" => work_pipeline(n, 1),
        "pl_decap" => work_pipeline(n, 2),
        "bench_l2" => work_bench(n, false),
        "bench_encap" => work_bench(n, true),
        other => {
            eprintln!(
                "fastpath_ir: unknown workload {other:?}; usage: fastpath_ir WORKLOAD [N] with WORKLOAD one of extract, rewrite, nat, encap, encap_opt, encap_csum, decap, wire_parse, wire_parse_verify_l4, wire_geneve_parse, pl_l3, pl_encap, pl_decap, bench_l2, bench_encap"
            );
            std::process::exit(2);
        }
    }
}
