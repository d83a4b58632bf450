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
use cpu_time::{thread_cpu_ns, CpuTime};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use etherparse::PacketBuilder;
use sluice_datapath::conntrack::{ConnFilter, Conntrack, ConntrackConfig, ConntrackHandle};
use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use sluice_datapath::pipeline::hooks::{Hooks, NoTunnels};
use sluice_datapath::pipeline::Pipeline;
use sluice_datapath::service::{
    EndpointSpec, Protocol, ServiceConfig, ServiceSpec, ServiceUpdate, Services, TrafficPolicy,
};

type Pipe = FlowPipeline<Hooks<ConntrackHandle, NoTunnels>>;

const SERVICES: u32 = 10;
const CLIENT_ISN: u32 = 1_000;
const SERVER_ISN: u32 = 50_000;
const FLOWS: &str = "table=0,priority=100,tcp actions=ct(zone=1,commit,table=1,nat)\ntable=1,priority=0 actions=output:2";

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

/// Client `i`: an address and a source port, so that 100k clients are
/// distinct 5-tuples.
fn client(i: u32) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + i / 60_000),
        (1024 + i % 60_000) as u16,
    )
}

fn tcp(
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

fn services() -> Services {
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

fn pipeline() -> (Pipe, Conntrack) {
    pipeline_with(ConntrackConfig::default().cache_entries)
}

/// The pipeline with a per-PMD connection cache of `cache_entries`
/// entries (0: every packet reads the shared table).
fn pipeline_with(cache_entries: usize) -> (Pipe, Conntrack) {
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
fn send(p: &mut Pipe, now: u64, in_port: u16, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
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
fn connections(p: &mut Pipe, conns: u32, established: bool) -> Vec<Vec<u8>> {
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
