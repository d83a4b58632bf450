//! Service (DNAT) traffic through the whole flow pipeline with conntrack:
//! the per-packet cost `scripts/bench.sh`'s `dnat` and `dnat-new`
//! scenarios measure, without DPDK.
//!
//! The program is the pktgen scenario's (`ct(zone=1,commit,table=1,nat)`
//! with a bare `nat` for every TCP packet, then `output` from table 1), over
//! 10 ClusterIP Services of 10 endpoints each. Packets come in bursts of 32
//! recycled buffers, each restored from its original frame (a 64-byte copy,
//! like net_pcap's), and every result is per packet (`Throughput` of 32
//! elements per burst).
//!
//! - `dnat/syn_sent/{1,1k,100k}`: the pktgen `dnat` shape: N connections
//!   opened by their SYN, then client-direction ACKs only (no reply is
//!   ever seen, so the connections stay SYN_SENT and packets are `+new`).
//! - `dnat/est/{1,1k,100k}`: the same after a SYN-ACK from the chosen
//!   endpoint and the client's ACK: ESTABLISHED connections (`+est`), the
//!   steady state of real Service traffic.
//! - `dnat/est_table/{1k,100k}`: ESTABLISHED connections with the per-PMD
//!   connection cache off: every packet is a cache miss that finds its
//!   connection in the shared table (the path a PMD takes for connections
//!   its cache does not hold).
//! - `dnat_new/syn`: every packet a SYN of a new connection (Service
//!   lookup, endpoint choice, commit of both tuples).
//! - `dnat_new/syn_after_flush`: the same with the table flushed (untimed)
//!   every 100k connections, as pktgen's `dnat-new` does between windows:
//!   the shards regrow and the flushed allocations are reused.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), as
//! in the conntrack benches' `SLUICE_BENCH_CPU_TIME` mode: on a loaded
//! machine, time spent preempted is not counted (cache interference
//! still is). Compare variants within one run or with criterion's
//! `--save-baseline`/`--baseline`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

#[path = "common/cpu_time.rs"]
mod cpu_time;
#[path = "common/dnat_work.rs"]
mod dnat_work;
use cpu_time::{thread_cpu_ns, CpuTime};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use dnat_work::{
    client, connections, pipeline, pipeline_with, tcp, vip, Pipe, CLIENT_ISN, SERVICES,
};
use sluice_datapath::conntrack::ConnFilter;
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::Pipeline;

/// Benchmarks one burst of 32 of `frames` (cycling) per iteration.
fn run_bursts(
    c: &mut BenchmarkGroup<'_, CpuTime>,
    id: BenchmarkId,
    p: &mut Pipe,
    frames: &[Vec<u8>],
) {
    let mut burst: Burst<HeapBuf> = Burst::new(PortNo(1));
    burst
        .pkts
        .extend((0..32).map(|i| HeapBuf::from_frame(&frames[i % frames.len()])));
    let mut out: Output<HeapBuf> = Output::new(4);
    let mut next = 0usize;
    c.bench_function(id, |b| {
        b.iter(|| {
            for buf in burst.pkts.iter_mut() {
                buf.data_mut().copy_from_slice(&frames[next]);
                next += 1;
                if next == frames.len() {
                    next = 0;
                }
            }
            p.process(10, &mut burst, &mut out);
            out.flush(|_, q| burst.pkts.append(q));
            black_box(&burst);
        })
    });
    assert_eq!(out.drops.total(), 0, "{:?}", out.drops.nonzero());
}

fn established(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("dnat");
    g.throughput(Throughput::Elements(32));
    for est in [false, true] {
        for (label, conns) in [("1", 1u32), ("1k", 1_000), ("100k", 100_000)] {
            let (mut p, _ct) = pipeline();
            let frames = connections(&mut p, conns, est);
            let id = BenchmarkId::new(if est { "est" } else { "syn_sent" }, label);
            run_bursts(&mut g, id, &mut p, &frames);
        }
    }
    // The miss path alone: no per-PMD connection cache, so every packet
    // finds its connection in the shared table.
    for (label, conns) in [("1k", 1_000u32), ("100k", 100_000)] {
        let (mut p, _ct) = pipeline_with(0);
        let frames = connections(&mut p, conns, true);
        run_bursts(
            &mut g,
            BenchmarkId::new("est_table", label),
            &mut p,
            &frames,
        );
    }
    g.finish();
}

fn new_conns(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("dnat_new");
    g.throughput(Throughput::Elements(32));
    g.bench_function("syn", |b| b.iter_custom(|iters| syns(iters, None)));
    // pktgen's dnat-new: the table is flushed (untimed) every 100k new
    // connections, so the timed creations include the shards regrowing
    // and the reuse of the flushed connections' allocations.
    g.bench_function("syn_after_flush", |b| {
        b.iter_custom(|iters| syns(iters, Some(100_000)))
    });
    g.finish();
}

/// Sends `iters` bursts of 32 SYNs of new connections; with
/// `flush_every`, flushes the table (untimed) each time that many more
/// connections were made. Returns the timed CPU nanoseconds.
fn syns(iters: u64, flush_every: Option<u32>) -> u64 {
    let (mut p, ct) = pipeline();
    let mut burst: Burst<HeapBuf> = Burst::new(PortNo(1));
    let syn = tcp(client(0).0, vip(0), 1, 80, CLIENT_ISN, None, true);
    burst
        .pkts
        .extend((0..32).map(|_| HeapBuf::from_frame(&syn)));
    let mut out: Output<HeapBuf> = Output::new(4);
    let mut n = 0u32;
    let mut since_flush = 0u32;
    let mut total = 0;
    for _ in 0..iters {
        for buf in burst.pkts.iter_mut() {
            let (c, sp) = (
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + n / 60_000),
                (1024 + n % 60_000) as u16,
            );
            buf.data_mut().copy_from_slice(&tcp(
                c,
                vip(n % SERVICES),
                sp,
                80,
                CLIENT_ISN,
                None,
                true,
            ));
            n = n.wrapping_add(1);
        }
        let start = thread_cpu_ns();
        p.process(10, &mut burst, &mut out);
        total += thread_cpu_ns() - start;
        out.flush(|_, q| burst.pkts.append(q));
        since_flush += 32;
        if flush_every.is_some_and(|f| since_flush >= f) {
            ct.flush(&ConnFilter::default());
            since_flush = 0;
        }
    }
    assert_eq!(out.drops.total(), 0, "{:?}", out.drops.nonzero());
    total
}

fn main() {
    let mut c = Criterion::default()
        .with_measurement(CpuTime(WallTime))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    established(&mut c);
    new_conns(&mut c);
    c.final_summary();
}
