//! Conntrack, NAT and Service table benchmarks.
//!
//! - `nat_rewrite`: parse a UDP frame and DNAT it (address + port, IPv4
//!   and UDP checksums updated incrementally), alternating two targets.
//! - `ct_hit/conns/{1k,100k,1M}`: one packet of an existing connection
//!   through the `ct(commit,zone=1,nat)` hook with its DNAT applied (10
//!   Services installed). Packets cycle over 4096 connections spread over
//!   the table, so large tables pay their cache misses. Each iteration
//!   also copies the 60-byte frame back (the rewrite is in place).
//! - `ct_hit/services/{10,10k,100k}`: the same with 100k connections and a
//!   growing Service table: the cost must stay flat (established traffic
//!   never looks at the Service table).
//! - `ct_hit/path/{cache,table}`: the 100k case through the PMD's
//!   connection cache (the default) and with the cache disabled
//!   (`cache_entries = 0`: every packet looks in the locked shared table),
//!   in one run so their ratio is comparable on a loaded machine.
//! - `ct_hit/tcp_est/{cache,table}`: a pure ACK of an ESTABLISHED TCP
//!   connection (window tracking, no NAT), 4096 connections, same two
//!   paths.
//! - `service_new_conn/services/{10,10k,100k}`: a new connection through
//!   the Service DNAT path (frontend lookup, random endpoint, commit of
//!   both tuples); throughput is connections per second.
//! - `service_update/apply_10k_services_x_10_endpoints`: one batch into an
//!   empty table.
//! - `service_update/one_endpoint_change_with_100k_services`: replace one
//!   Service's endpoints while 100k Services are installed.
//!
//! On a loaded machine, `SLUICE_BENCH_CPU_TIME=1` runs only `ct_hit` and
//! measures the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//! instead of wall time, so time the thread spends preempted by other
//! processes is not counted (cache interference still is).
//!
//! Memory (printed before the benchmarks, measured as the growth of the
//! process's resident set size, `/proc/self/statm`): bytes per conntrack
//! entry over 1M UDP connections and bytes per Service endpoint over 10k
//! Services × 10 endpoints.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

#[path = "common/cpu_time.rs"]
mod cpu_time;
use cpu_time::CpuTime;
use criterion::measurement::{Measurement, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use etherparse::PacketBuilder;
use sluice_datapath::conntrack::nat;
use sluice_datapath::conntrack::{Conntrack, ConntrackConfig, ConntrackHandle};
use sluice_datapath::flow::action::{CtAction, NatSpec};
use sluice_datapath::flow::key::FlowKey;
use sluice_datapath::packet::{HeapBuf, PacketBuf};
use sluice_datapath::pipeline::hooks::ConntrackHook;
use sluice_datapath::service::{
    EndpointSpec, Protocol, ServiceConfig, ServiceSpec, ServiceUpdate, Services,
};

fn udp(src: u32, dst: u32, sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(
            Ipv4Addr::from(src).octets(),
            Ipv4Addr::from(dst).octets(),
            64,
        )
        .udp(sport, dport)
        .write(&mut v, b"0123456789abcdef")
        .expect("frame");
    v
}

fn vip(i: u32) -> u32 {
    u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i
}

fn client(i: u32) -> u32 {
    u32::from(Ipv4Addr::new(10, 16, 0, 0)) + i
}

fn service(i: u32, endpoints: u32, generation: u32) -> ServiceSpec {
    let endpoints = (0..endpoints)
        .map(|e| {
            EndpointSpec::ready(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 16 + e),
                5353 + (generation % 2) as u16,
            )
        })
        .collect();
    ServiceSpec::cluster_ip(
        format!("ns-{}/svc-{i}:p", i % 100),
        Protocol::Udp,
        Ipv4Addr::from(vip(i)),
        53,
        endpoints,
    )
}

fn services(n: u32, endpoints: u32) -> Services {
    let s = Services::new(ServiceConfig::default());
    s.apply(
        &ServiceUpdate {
            upsert: (0..n).map(|i| service(i, endpoints, 0)).collect(),
            ..ServiceUpdate::default()
        },
        None,
    )
    .expect("services");
    s
}

fn lb_action() -> CtAction {
    CtAction {
        commit: true,
        zone: 1,
        table: None,
        nat: Some(NatSpec {
            kind: None,
            addrs: None,
            ports: None,
        }),
        mark: None,
        label: None,
    }
}

fn track(h: &mut ConntrackHandle, ct: &CtAction, buf: &mut HeapBuf) {
    let mut key = FlowKey::default();
    ConntrackHook::<HeapBuf>::conntrack(h, 0, ct, buf, &mut key).expect("tracked");
    black_box(key);
}

/// A table with `conns` connections to `n_svc` Services; returns the
/// frames of 4096 of them.
fn populated(conns: u32, n_svc: u32, cache_entries: usize) -> (ConntrackHandle, Vec<Vec<u8>>) {
    let ct = Conntrack::with_services(
        ConntrackConfig {
            max_connections: 1 << 21,
            cache_entries,
            ..ConntrackConfig::default()
        },
        services(n_svc, 10),
    );
    let mut h = ct.handle(1);
    let act = lb_action();
    let mut frames = Vec::new();
    let stride = (conns / 4096).max(1);
    for i in 0..conns {
        let f = udp(client(i), vip(i % n_svc), 1000, 53);
        let mut b = HeapBuf::from_frame(&f);
        track(&mut h, &act, &mut b);
        if i % stride == 0 && frames.len() < 4096 {
            frames.push(f);
        }
    }
    assert_eq!(ct.len(), conns as usize);
    (h, frames)
}

fn hit<M: Measurement>(c: &mut Criterion<M>) {
    let mut g = c.benchmark_group("ct_hit");
    g.throughput(Throughput::Elements(1));
    let act = lb_action();
    let cache = ConntrackConfig::default().cache_entries;
    let run = |g: &mut criterion::BenchmarkGroup<M>, id: BenchmarkId, conns, n_svc, entries| {
        let (mut h, frames) = populated(conns, n_svc, entries);
        let mut buf = HeapBuf::from_frame(&frames[0]);
        let mut i = 0;
        g.bench_function(id, |b| {
            b.iter(|| {
                let f = &frames[i % frames.len()];
                i += 1;
                buf.data_mut().copy_from_slice(f);
                track(&mut h, &act, &mut buf);
            })
        });
    };
    for (label, conns) in [("1k", 1_000), ("100k", 100_000), ("1M", 1_000_000)] {
        run(&mut g, BenchmarkId::new("conns", label), conns, 10, cache);
    }
    for (label, n) in [("10", 10), ("10k", 10_000), ("100k", 100_000)] {
        run(
            &mut g,
            BenchmarkId::new("services", label),
            100_000,
            n,
            cache,
        );
    }
    for (label, entries) in [("cache", cache), ("table", 0)] {
        run(
            &mut g,
            BenchmarkId::new("path", label),
            100_000,
            10,
            entries,
        );
    }
    for (label, entries) in [("cache", cache), ("table", 0)] {
        let (mut h, frames) = tcp_established(4096, entries);
        let mut buf = HeapBuf::from_frame(&frames[0]);
        let act = CtAction {
            nat: None,
            zone: 2,
            ..lb_action()
        };
        let mut i = 0;
        g.bench_function(BenchmarkId::new("tcp_est", label), |b| {
            b.iter(|| {
                let f = &frames[i % frames.len()];
                i += 1;
                buf.data_mut().copy_from_slice(f);
                track(&mut h, &act, &mut buf);
            })
        });
    }
    g.finish();
}

fn tcp_frame(
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(
            Ipv4Addr::from(src).octets(),
            Ipv4Addr::from(dst).octets(),
            64,
        )
        .tcp(sport, dport, seq, 8000);
    if syn {
        b = b.syn();
    }
    if let Some(a) = ack {
        b = b.ack(a);
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("frame");
    v
}

/// `conns` ESTABLISHED TCP connections (zone 2, no NAT); returns a pure
/// ACK of each (in window however often it is repeated).
fn tcp_established(conns: u32, cache_entries: usize) -> (ConntrackHandle, Vec<Vec<u8>>) {
    let ct = Conntrack::new(ConntrackConfig {
        cache_entries,
        ..ConntrackConfig::default()
    });
    let mut h = ct.handle(1);
    let act = CtAction {
        nat: None,
        zone: 2,
        ..lb_action()
    };
    let server = u32::from(Ipv4Addr::new(10, 1, 0, 5));
    let mut frames = Vec::new();
    for i in 0..conns {
        let c = client(i);
        for f in [
            tcp_frame(c, server, 40000, 80, 100, None, true),
            tcp_frame(server, c, 80, 40000, 500, Some(101), true),
            tcp_frame(c, server, 40000, 80, 101, Some(501), false),
        ] {
            track(&mut h, &act, &mut HeapBuf::from_frame(&f));
        }
        frames.push(tcp_frame(c, server, 40000, 80, 101, Some(501), false));
    }
    (h, frames)
}

fn nat_rewrite(c: &mut Criterion) {
    let mut f = udp(client(1), vip(1), 1000, 53);
    let a = nat::Tuple {
        src: client(1),
        dst: vip(1),
        sport: 1000,
        dport: 53,
    };
    let b = nat::Tuple {
        dst: u32::from(Ipv4Addr::new(10, 128, 0, 7)),
        dport: 5353,
        ..a
    };
    let mut flip = false;
    c.bench_function("nat_rewrite", |bch| {
        bch.iter(|| {
            let p = nat::parse(&f).expect("parse");
            flip = !flip;
            nat::rewrite(&mut f, &p, if flip { b } else { a }).expect("rewrite");
            black_box(&f);
        })
    });
}

fn new_conn(c: &mut Criterion) {
    let mut g = c.benchmark_group("service_new_conn");
    g.throughput(Throughput::Elements(1));
    let act = lb_action();
    for (label, n) in [("10", 10u32), ("10k", 10_000), ("100k", 100_000)] {
        let svcs = services(n, 10);
        let mut buf = HeapBuf::from_frame(&udp(client(0), vip(0), 1, 53));
        g.bench_function(BenchmarkId::new("services", label), |b| {
            b.iter_custom(|iters| {
                let ct = Conntrack::with_services(
                    ConntrackConfig {
                        max_connections: usize::MAX,
                        ..ConntrackConfig::default()
                    },
                    svcs.clone(),
                );
                let mut h = ct.handle(1);
                let frames: Vec<Vec<u8>> = (0..iters.min(1 << 16) as u32)
                    .map(|i| udp(client(i), vip(i % n), 1000, 53))
                    .collect();
                let start = Instant::now();
                for i in 0..iters {
                    let f = &frames[(i as usize) % frames.len()];
                    buf.data_mut().copy_from_slice(f);
                    // A distinct source port per round over the frames.
                    let sport = (1000 + i / frames.len() as u64) as u16;
                    buf.data_mut()[34..36].copy_from_slice(&sport.to_be_bytes());
                    track(&mut h, &act, &mut buf);
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn updates(c: &mut Criterion) {
    let mut g = c.benchmark_group("service_update");
    g.sample_size(10);
    let batch = ServiceUpdate {
        upsert: (0..10_000).map(|i| service(i, 10, 0)).collect(),
        ..ServiceUpdate::default()
    };
    g.bench_function("apply_10k_services_x_10_endpoints", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = Services::new(ServiceConfig::default());
                let start = Instant::now();
                s.apply(&batch, None).expect("apply");
                total += start.elapsed();
                black_box(s);
            }
            total
        })
    });
    let s = services(100_000, 10);
    let mut gen = 0;
    g.sample_size(50);
    g.bench_function("one_endpoint_change_with_100k_services", |b| {
        b.iter(|| {
            gen += 1;
            let u = ServiceUpdate {
                upsert: vec![service(42, 10, gen)],
                ..ServiceUpdate::default()
            };
            s.apply(&u, None).expect("apply");
        })
    });
    g.finish();
}

/// Resident set size in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn memory_report() {
    let before = rss();
    let s = services(10_000, 10);
    let after = rss();
    println!(
        "memory: {:.0} bytes per Service endpoint (RSS growth over 10k Services x 10 endpoints, incl. frontends and names)",
        (after.saturating_sub(before)) as f64 / 100_000.0
    );
    drop(s);
    let before = rss();
    let (h, _) = populated(1_000_000, 10, ConntrackConfig::default().cache_entries);
    let after = rss();
    println!(
        "memory: {:.0} bytes per conntrack entry (RSS growth over 1M UDP connections, both tuples indexed)",
        (after.saturating_sub(before)) as f64 / 1e6
    );
    drop(h);
}

criterion::criterion_group!(benches, nat_rewrite, hit, new_conn, updates);

fn main() {
    memory_report();
    if std::env::var_os("SLUICE_BENCH_CPU_TIME").is_some() {
        let mut c = Criterion::default()
            .with_measurement(CpuTime(WallTime))
            .configure_from_args();
        hit(&mut c);
        c.final_summary();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
