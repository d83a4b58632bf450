//! Geneve encap and decap through the flow pipeline, against plain L3
//! forwarding (a flow rewriting both MACs + output), in the same run.
//!
//! Each iteration processes one burst of 32 packets of 64-byte inner
//! frames (criterion reports time per burst and packets per second;
//! divide the time by 32 for ns/packet). Inner flows cycle through 1k or
//! 100k distinct (source address, source port) pairs, so the 100k case
//! misses the 8k-entry EMC and runs on megaflow hits. Buffers are recycled
//! between bursts like mbufs: the reset writes the next flow's source
//! address/port into the inner frame (and, for encap/decap, moves the
//! outer header back with one `adj`/`prepend` and a 50-byte copy); that
//! reset is included in all three cases alike.
//!
//! Decap is single-pass: `tnl_pop` parses the inner frame into the key as
//! it strips the outer headers, and the recirculated pass classifies that
//! key without a second parse. `geneve_hooks/{push,pop}` time the hooks
//! alone (no classifier) on 32-packet bursts.
//!
//! Run: `cargo bench -p sluice-datapath --no-default-features --bench tunnel`.

use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use sluice_datapath::flow::key::{extract, Field};
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::hooks::TunnelHook;
use sluice_datapath::pipeline::Pipeline;

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const OUTER: usize = 50;

/// A 64-byte Ethernet/IPv4/UDP frame.
fn inner_frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x20]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x10]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 244, 1, 5]);
    f[30..34].copy_from_slice(&[10, 244, 2, 7]);
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    f
}

#[path = "common/tunnel_work.rs"]
mod tunnel_work;
use tunnel_work::{pipeline, tunnels};

/// Writes flow `n`'s source address and port into the inner frame at `at`.
#[inline]
fn set_flow(f: &mut [u8], at: usize, n: u32) {
    f[at + 26..at + 30].copy_from_slice(&(0x0af4_0000u32 | (n >> 8)).to_be_bytes());
    f[at + 34..at + 36].copy_from_slice(&(1024 + (n & 0xff) as u16).to_be_bytes());
}

#[derive(Clone, Copy)]
enum Case {
    L3,
    Encap,
    Decap,
}

fn run_case(c: &mut Criterion, case: Case, flows: u32) {
    let (name, program, in_port) = match case {
        Case::L3 => (
            "l3_forward",
            "priority=10,in_port=1,ip actions=mod_dl_src:02:00:00:00:00:aa,mod_dl_dst:02:00:00:00:00:bb,output:2\npriority=0 actions=drop",
            1u16,
        ),
        Case::Encap => (
            "geneve_encap",
            "priority=10,in_port=1,ip actions=set_field:0x64->tun_id,set_field:192.168.50.2->tun_dst,tnl_push,output:2\npriority=0 actions=drop",
            1,
        ),
        Case::Decap => (
            "geneve_decap",
            "priority=10,in_port=2,udp,tp_dst=6081 actions=tnl_pop\npriority=5,tun_id=0x64,ip actions=output:1\npriority=0 actions=drop",
            2,
        ),
    };
    // Build one encapsulated frame (for decap) with a sender whose local
    // VTEP is REMOTE, so that the measured side (LOCAL) accepts it.
    let inner = inner_frame();
    let outer_hdr: Vec<u8> = {
        let sender = tunnels(REMOTE, LOCAL, false);
        let mut h = sender.hook(0);
        let mut b = HeapBuf::from_frame(&inner);
        let mut k = extract(&inner, PortNo(1));
        k.set(Field::TunId, 0x64);
        k.set(Field::TunDst, u128::from(u32::from(LOCAL)));
        TunnelHook::<HeapBuf>::tunnel_push(&mut h, 0, &mut b, &k).expect("encap");
        b.data()[..OUTER].to_vec()
    };
    let t = tunnels(LOCAL, REMOTE, false);
    let mut p = pipeline(program, &t);
    let mut burst = Burst::new(PortNo(in_port));
    for _ in 0..32 {
        let mut f = inner.clone();
        if let Case::Decap = case {
            f = [outer_hdr.clone(), f].concat();
        }
        burst.pkts.push(HeapBuf::from_frame(&f));
    }
    let mut out: Output<HeapBuf> = Output::new(4);
    let mut next = 0u32;
    let inner_at = if let Case::Decap = case { OUTER } else { 0 };
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(32));
    g.bench_with_input(BenchmarkId::new("flows", flows), &flows, |b, &flows| {
        b.iter(|| {
            for pkt in burst.pkts.iter_mut() {
                set_flow(pkt.data_mut(), inner_at, next);
                next = (next + 1) % flows;
            }
            p.process(1, &mut burst, &mut out);
            out.flush(|_, q| burst.pkts.append(q));
            assert_eq!(burst.pkts.len(), 32, "drops: {:?}", out.drops.nonzero());
            for pkt in burst.pkts.iter_mut() {
                match case {
                    Case::L3 => {}
                    Case::Encap => {
                        pkt.adj(OUTER);
                    }
                    Case::Decap => {
                        if let Some(f) = pkt.prepend(OUTER) {
                            f[..OUTER].copy_from_slice(&outer_hdr);
                        }
                    }
                }
            }
        })
    });
    g.finish();
}

/// The hooks alone, without the pipeline: one burst of 32 packets of 1k
/// flows through `tunnel_push` (then `adj` back) or `tunnel_pop` (the
/// single-pass decap: outer checks and the inner key; then the outer
/// header copied back), to split the tunnel's own cycles from the
/// classifier's.
fn bench_hooks(c: &mut Criterion) {
    let inner = inner_frame();
    let sender = tunnels(REMOTE, LOCAL, false);
    let mut sh = sender.hook(0);
    let t = tunnels(LOCAL, REMOTE, false);
    let mut h = t.hook(0);
    let mut keys: Vec<_> = (0..32u32)
        .map(|n| {
            let mut f = inner.clone();
            set_flow(&mut f, 0, n);
            let mut k = extract(&f, PortNo(1));
            k.set(Field::TunId, 0x64);
            k.set(Field::TunDst, u128::from(u32::from(REMOTE)));
            k
        })
        .collect();
    let mut g = c.benchmark_group("geneve_hooks");
    g.throughput(Throughput::Elements(32));
    let mut bufs: Vec<HeapBuf> = (0..32).map(|_| HeapBuf::from_frame(&inner)).collect();
    g.bench_function("push", |b| {
        b.iter(|| {
            for (p, k) in bufs.iter_mut().zip(&keys) {
                TunnelHook::<HeapBuf>::tunnel_push(&mut h, 0, p, k).expect("encap");
                p.adj(OUTER);
            }
        })
    });
    // Frames encapsulated towards LOCAL, to decapsulate.
    let outer_hdr: Vec<u8> = {
        let mut b = HeapBuf::from_frame(&inner);
        let mut k = keys[0];
        k.set(Field::TunDst, u128::from(u32::from(LOCAL)));
        TunnelHook::<HeapBuf>::tunnel_push(&mut sh, 0, &mut b, &k).expect("encap");
        b.data()[..OUTER].to_vec()
    };
    let mut bufs: Vec<HeapBuf> = (0..32)
        .map(|_| HeapBuf::from_frame(&[outer_hdr.clone(), inner.clone()].concat()))
        .collect();
    g.bench_function("pop", |b| {
        b.iter(|| {
            for (p, k) in bufs.iter_mut().zip(keys.iter_mut()) {
                TunnelHook::<HeapBuf>::tunnel_pop(&mut h, 0, p, k).expect("decap");
                if let Some(f) = p.prepend(OUTER) {
                    f[..OUTER].copy_from_slice(&outer_hdr);
                }
            }
        })
    });
    g.finish();
}

fn bench_tunnel(c: &mut Criterion) {
    bench_hooks(c);
    for flows in [1_000u32, 100_000] {
        for case in [Case::L3, Case::Encap, Case::Decap] {
            run_case(c, case, flows);
        }
    }
}

criterion_group!(benches, bench_tunnel);
criterion_main!(benches);
