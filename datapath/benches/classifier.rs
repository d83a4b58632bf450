//! Classifier cascade benchmarks: per-packet cost of each tier.
//!
//! - `extract`: one Ethernet/IPv4/TCP frame into a `FlowKey`.
//! - `emc_hit`: hash + EMC probe that hits (every key word hashed and
//!   compared).
//! - `emc_hit_live_words`: the same with the EMC keyed on an l2 program's 4
//!   live words; `key_hash/{all_24_words,live_4_words}`: the two hashes.
//! - `megaflow_hit/{1,8,32}`: a key that hits in the *last* of N subtables
//!   (worst case: N probes; `sort_subtables` moves hot masks first).
//! - `slowpath_install`: translate through a 100-rule program and install
//!   the megaflow (what a megaflow miss costs).
//! - `pipeline_burst_emc`: a 32-packet burst through `FlowPipeline` with
//!   every packet an EMC hit, executing `mod_dl_dst` + `output`; reported
//!   per burst (divide by 32 for per packet). Buffers are recycled.
//! - `pipeline/burst32_l3_10k_flows`: the pktgen `l3/10000` shape: 10k
//!   /24 routes (`mod_dl_src`, `mod_dl_dst`, `dec_ttl`, `output`), 10k
//!   distinct flows each recurring every 10k packets (more flows than EMC
//!   slots), with OVS's EMC insertion probability (1/100) and with
//!   always-insert (`_always_insert`), and with no EMC (`_emc_off`: every
//!   packet a megaflow hit), all with the direct path off; and with the
//!   direct path (`_direct`: the table's index per packet, no cache).
//!   Each recycled frame is restored from
//!   its original (a 60-byte copy, like net_pcap's) so that it keeps
//!   matching its route.
//! - `pipeline/burst32_l3_10k_cold_upcalls`: the same program and stream
//!   with no EMC and a one-entry megaflow cache: every packet is an upcall
//!   (the slow path through a 10k-route table).
//! - `pipeline/burst32_l2_1k_flows`: a 1000-MAC `in_port,dl_dst` table and
//!   1000 flows, one per MAC, in steady state (the cascade); `_direct`:
//!   the same on the direct path.
//! - `special_compile/{10000,100000}`: compiling a table of that many /32
//!   routes into its specialised index (linear in the table).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_datapath::classifier::emc::Emc;
use sluice_datapath::classifier::megaflow::MegaflowCache;
use sluice_datapath::classifier::slowpath::{translate, Xlate};
use sluice_datapath::classifier::special;
use sluice_datapath::flow::key::{extract, Field, FlowKey};
use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use sluice_datapath::pipeline::Pipeline;

fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[46] = 0x50;
    f[47] = 0x10;
    f
}

fn bench_extract(c: &mut Criterion) {
    let f = tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80);
    c.bench_function("extract", |b| b.iter(|| extract(black_box(&f), PortNo(1))));
}

fn bench_emc(c: &mut Criterion) {
    let mut emc = Emc::new(4096, 1);
    let keys: Vec<FlowKey> = (0..1024u16)
        .map(|i| extract(&tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], i, 80), PortNo(1)))
        .collect();
    let x = Arc::new(Xlate::default());
    for k in &keys {
        emc.insert(k, k.hash(), x.clone());
    }
    let k = keys[511];
    c.bench_function("emc_hit", |b| {
        b.iter(|| {
            let k = black_box(&k);
            emc.lookup(k, k.hash()).is_some()
        })
    });
}

/// The same EMC hit with the cache keyed on the live words of an l2-style
/// program (`in_port`, `dl_dst`, `dl_type`, `recirc_id`...: words 0, 1, 2
/// and 4): the hash and the compare touch 4 words instead of 24.
fn bench_emc_live_words(c: &mut Criterion) {
    const WORDS: [u8; 4] = [0, 1, 2, 4];
    let mut emc = Emc::new(4096, 1);
    emc.set_words(&WORDS);
    let keys: Vec<FlowKey> = (0..1024u16)
        .map(|i| extract(&tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], i, 80), PortNo(1)))
        .collect();
    let x = Arc::new(Xlate::default());
    for k in &keys {
        emc.insert(k, k.hash_words(&WORDS), x.clone());
    }
    let k = keys[511];
    c.bench_function("emc_hit_live_words", |b| {
        b.iter(|| {
            let k = black_box(&k);
            emc.lookup(k, k.hash_words(&WORDS)).is_some()
        })
    });
    let mut g = c.benchmark_group("key_hash");
    g.bench_function("all_24_words", |b| b.iter(|| black_box(&k).hash()));
    g.bench_function("live_4_words", |b| {
        b.iter(|| black_box(&k).hash_words(black_box(&WORDS)))
    });
    g.finish();
}

fn bench_megaflow(c: &mut Criterion) {
    let mut g = c.benchmark_group("megaflow_hit");
    let key = extract(
        &tcp_frame([10, 1, 2, 3], [10, 9, 8, 7], 4321, 80),
        PortNo(1),
    );
    for n in [1usize, 8, 32] {
        let mut mf = MegaflowCache::new(1 << 16);
        // n distinct masks: dl_type + nw_dst prefix of length 32-i (+ tp_dst
        // on odd i); 64 megaflows each, none matching `key` except in the
        // last subtable.
        for i in 0..n {
            let mut mask = FlowKey::field_mask(Field::DlType);
            let len = 32 - (i as u32 / 2);
            mask.set(Field::NwDst, u128::from(u32::MAX << (32 - len)));
            if i % 2 == 1 {
                mask.set(Field::TpDst, 0xffff);
            }
            for j in 0..64u32 {
                let mut k = key;
                if i + 1 != n || j != 0 {
                    k.set(Field::NwDst, u128::from(0x0b00_0000 + (j << 8)));
                }
                mf.insert(&k, &mask, Arc::new(Xlate::default()));
            }
        }
        assert_eq!(mf.n_masks(), n);
        assert!(mf.lookup(&key).is_some());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| mf.lookup(black_box(&key)).is_some())
        });
    }
    g.finish();
}

fn program_100() -> FlowTables {
    let t = FlowTables::new();
    let mut flows = String::new();
    for i in 0..100u32 {
        flows += &format!(
            "priority={},tcp,nw_dst=10.{}.{}.0/24,tp_dst={} actions=mod_dl_dst:02:00:00:00:00:{:02x},output:{}\n",
            1000 - i,
            i / 10,
            i % 10,
            80 + i,
            i % 256,
            i % 4 + 1
        );
    }
    flows += "priority=0 actions=NORMAL\n";
    t.add_flows(&flows, 0).expect("program");
    t
}

fn bench_slowpath(c: &mut Criterion) {
    let t = program_100();
    let prog = t.program();
    // Matches the 50th rule: 50 rules examined.
    let key = extract(&tcp_frame([10, 0, 0, 1], [10, 5, 0, 9], 1, 130), PortNo(1));
    let mut mf = MegaflowCache::new(1 << 16);
    c.bench_function("slowpath_install", |b| {
        b.iter(|| {
            let tr = translate(&prog, black_box(&key), None);
            mf.insert(&key, &tr.mask, tr.xlate);
        })
    });
}

fn bench_pipeline(c: &mut Criterion) {
    let t = program_100();
    let mut p = FlowPipeline::new(
        t,
        FlowPipelineConfig {
            ports: (1..=4).map(PortNo).collect(),
            ..FlowPipelineConfig::default()
        },
    );
    let frames: Vec<Vec<u8>> = (0..32u16)
        .map(|i| tcp_frame([10, 0, 0, 1], [10, 5, 0, 9], 1000 + i, 130))
        .collect();
    let mut out: Output<HeapBuf> = Output::new(8);
    let mut burst = Burst::new(PortNo(1));
    burst
        .pkts
        .extend(frames.iter().map(|f| HeapBuf::from_frame(f)));
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(32));
    // The forwarded buffers are recycled into the next burst, so the loop
    // measures the pipeline, not the allocator (as with an mbuf pool).
    g.bench_function("burst32_emc_hit", |b| {
        b.iter(|| {
            p.process(1, &mut burst, &mut out);
            out.flush(|_, q| burst.pkts.append(q));
            assert_eq!(burst.pkts.len(), 32);
        })
    });
    // 1024 flows cycling through the EMC (the pktgen l2/l3 shape): the
    // slots no longer fit in L1/L2, so this measures memory latency and
    // what the burst-wide prefetch hides of it.
    let many: Vec<Vec<HeapBuf>> = (0..32u16)
        .map(|b| {
            (0..32u16)
                .map(|i| {
                    let n = b * 32 + i;
                    HeapBuf::from_frame(&tcp_frame(
                        [10, 0, (n >> 8) as u8, n as u8],
                        [10, 5, 0, 9],
                        1000 + n,
                        130,
                    ))
                })
                .collect()
        })
        .collect();
    let mut bursts: Vec<Burst<HeapBuf>> = many
        .into_iter()
        .map(|pkts| {
            let mut b = Burst::new(PortNo(1));
            b.pkts = pkts;
            b
        })
        .collect();
    let mut next = 0;
    g.bench_function("burst32_emc_hit_1k_flows", |b| {
        b.iter(|| {
            let burst = &mut bursts[next];
            next = (next + 1) % 32;
            p.process(1, burst, &mut out);
            out.flush(|_, q| burst.pkts.append(q));
            assert_eq!(burst.pkts.len(), 32);
        })
    });
    g.finish();
}

/// The pktgen l3 program and frames: route `i` is `10.(1 + i / 256).(i %
/// 256).0/24`; flow `j` goes to route `j`, from a distinct source port.
fn bench_l3_10k(c: &mut Criterion) {
    const ROUTES: u32 = 10_000;
    let router = "02:00:00:00:00:fe";
    let t = FlowTables::new();
    let flows: String = (0..ROUTES)
        .map(|i| {
            format!(
                "priority=24,ip,dl_dst={router},nw_dst=10.{}.{}.0/24 actions=mod_dl_src:{router},mod_dl_dst:02:00:00:00:01:01,dec_ttl,output:2\n",
                1 + i / 256,
                i % 256
            )
        })
        .collect();
    t.add_flows(&flows, 0).expect("program");
    let frames: Vec<Vec<u8>> = (0..ROUTES)
        .map(|j| {
            let mut f = tcp_frame(
                [10, 244, 0, 1],
                [10, (1 + j / 256) as u8, (j % 256) as u8, 1],
                1024 + j as u16,
                5001,
            );
            f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe]);
            f.truncate(60);
            f
        })
        .collect();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(32));
    for (name, inv_prob, direct_path) in [
        ("burst32_l3_10k_flows", 100, false),
        ("burst32_l3_10k_flows_always_insert", 1, false),
        ("burst32_l3_10k_flows_emc_off", 0, false),
        // The direct path (`classifier::direct`, the default): no cache.
        ("burst32_l3_10k_flows_direct", 100, true),
    ] {
        let mut p = FlowPipeline::new(
            t.clone(),
            FlowPipelineConfig {
                ports: (1..=4).map(PortNo).collect(),
                emc_insert_inv_prob: inv_prob,
                direct_path,
                ..FlowPipelineConfig::default()
            },
        );
        let chunks: Vec<&[Vec<u8>]> = frames.chunks(32).collect();
        let mut bursts: Vec<Burst<HeapBuf>> = chunks
            .iter()
            .map(|fs| {
                let mut b = Burst::new(PortNo(1));
                b.pkts.extend(fs.iter().map(|f| HeapBuf::from_frame(f)));
                b
            })
            .collect();
        let mut out: Output<HeapBuf> = Output::new(8);
        let n_bursts = bursts.len();
        let mut next = 0;
        let mut step = |p: &mut FlowPipeline| {
            let burst = &mut bursts[next];
            let n = burst.pkts.len();
            p.process(1, burst, &mut out);
            out.flush(|_, q| burst.pkts.append(q));
            assert_eq!(burst.pkts.len(), n, "every packet forwarded");
            for (pkt, f) in burst.pkts.iter_mut().zip(chunks[next].iter()) {
                pkt.data_mut().copy_from_slice(f);
            }
            next = (next + 1) % n_bursts;
        };
        // Warm up: every megaflow installed, the EMC at its steady state.
        for _ in 0..100 * n_bursts {
            step(&mut p);
        }
        g.bench_function(name, |b| b.iter(|| step(&mut p)));
    }
    g.finish();
    // Cold: no EMC and a megaflow cache of one entry (each install flushes
    // it), so every packet of the stream is an upcall through the 10k-route
    // table: the cost of a slow-path translation in a routing table.
    let mut p = FlowPipeline::new(
        t.clone(),
        FlowPipelineConfig {
            ports: (1..=4).map(PortNo).collect(),
            emc_insert_inv_prob: 0,
            megaflow_capacity: 1,
            direct_path: false,
            ..FlowPipelineConfig::default()
        },
    );
    let chunks: Vec<&[Vec<u8>]> = frames.chunks(32).collect();
    let mut bursts: Vec<Burst<HeapBuf>> = chunks
        .iter()
        .map(|fs| {
            let mut b = Burst::new(PortNo(1));
            b.pkts.extend(fs.iter().map(|f| HeapBuf::from_frame(f)));
            b
        })
        .collect();
    let mut out: Output<HeapBuf> = Output::new(8);
    let n_bursts = bursts.len();
    let mut next = 0;
    let upcalls = p.stats();
    let before = upcalls.upcalls.get();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(32));
    g.sample_size(20);
    g.bench_function("burst32_l3_10k_cold_upcalls", |b| {
        b.iter(|| {
            let burst = &mut bursts[next];
            let n = burst.pkts.len();
            p.process(1, burst, &mut out);
            out.flush(|_, q| burst.pkts.append(q));
            assert_eq!(burst.pkts.len(), n, "every packet forwarded");
            for (pkt, f) in burst.pkts.iter_mut().zip(chunks[next].iter()) {
                pkt.data_mut().copy_from_slice(f);
            }
            next = (next + 1) % n_bursts;
        })
    });
    g.finish();
    let s = p.stats();
    assert!(
        s.upcalls.get() - before >= s.megaflow.tier.hit.get(),
        "the cold stream is mostly upcalls"
    );
}

/// The pktgen l2 shape on a MAC table: 1000 rules `in_port=1,dl_dst=MAC_i
/// actions=output:2` and 1000 flows, flow `j` to MAC `j` (from its own
/// source port), with the default EMC insertion probability.
fn bench_l2_1k(c: &mut Criterion) {
    const MACS: u32 = 1000;
    let mac = |i: u32| [2, 0, 0, 1, (i >> 8) as u8, i as u8];
    let t = FlowTables::new();
    let flows: String = (0..MACS)
        .map(|i| {
            let m = mac(i);
            format!(
                "priority=100,in_port=1,dl_dst={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} actions=output:2\n",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )
        })
        .collect();
    t.add_flows(&flows, 0).expect("program");
    let frames: Vec<Vec<u8>> = (0..MACS)
        .map(|j| {
            let mut f = tcp_frame([10, 244, 0, 1], [10, 244, 0, 2], 1024 + j as u16, 5001);
            f[0..6].copy_from_slice(&mac(j));
            f.truncate(60);
            f
        })
        .collect();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(32));
    for (name, direct_path) in [
        ("burst32_l2_1k_flows", false),
        ("burst32_l2_1k_flows_direct", true),
    ] {
        let mut p = FlowPipeline::new(
            t.clone(),
            FlowPipelineConfig {
                ports: (1..=4).map(PortNo).collect(),
                direct_path,
                ..FlowPipelineConfig::default()
            },
        );
        let mut bursts: Vec<Burst<HeapBuf>> = frames
            .chunks(32)
            .map(|fs| {
                let mut b = Burst::new(PortNo(1));
                b.pkts.extend(fs.iter().map(|f| HeapBuf::from_frame(f)));
                b
            })
            .collect();
        let mut out: Output<HeapBuf> = Output::new(8);
        let n_bursts = bursts.len();
        let mut next = 0;
        let mut step = |p: &mut FlowPipeline| {
            let burst = &mut bursts[next];
            let n = burst.pkts.len();
            p.process(1, burst, &mut out);
            out.flush(|_, q| burst.pkts.append(q));
            assert_eq!(burst.pkts.len(), n, "every packet forwarded");
            next = (next + 1) % n_bursts;
        };
        for _ in 0..100 * n_bursts {
            step(&mut p);
        }
        g.bench_function(name, |b| b.iter(|| step(&mut p)));
    }
    g.finish();
}

/// Programming cost: 100k rules added as ten bundles of 10k (how a
/// controller pushes a large program), distinct priorities in ascending
/// order (the worst case for sorted insertion).
fn bench_program(c: &mut Criterion) {
    let chunks: Vec<String> = (0..10u32)
        .map(|c| {
            (0..10_000u32)
                .map(|i| {
                    let n = c * 10_000 + i;
                    format!(
                        "priority={},ip,nw_dst=10.{}.{}.{}/32 actions=output:{}\n",
                        n % 60_000,
                        n >> 16,
                        (n >> 8) & 255,
                        n & 255,
                        n % 4 + 1
                    )
                })
                .collect()
        })
        .collect();
    let mut g = c.benchmark_group("flow_program");
    g.sample_size(10);
    g.bench_function("add_100k_rules_in_10_bundles", |b| {
        b.iter(|| {
            let t = FlowTables::new();
            for chunk in &chunks {
                t.add_flows(chunk, 0).expect("bundle");
            }
            assert_eq!(t.program().n_rules(), 100_000);
        })
    });
    g.finish();
}

/// Compiling one table into its specialised index
/// (`classifier::special::compile`): 10k /24 routes (the l3 program) and
/// 100k /32 host routes, to show the cost is linear in the table.
fn bench_special_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("special_compile");
    g.sample_size(10);
    for n in [10_000u32, 100_000] {
        let t = FlowTables::new();
        let flows: String = (0..n)
            .map(|i| {
                format!(
                    "priority=32,ip,nw_dst=10.{}.{}.{} actions=output:2\n",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect();
        t.add_flows(&flows, 0).expect("program");
        let prog = t.program();
        assert!(special::compile(&prog.tables[0]).is_some());
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| special::compile(black_box(&prog.tables[0])).is_some())
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_program,
    bench_extract,
    bench_emc,
    bench_emc_live_words,
    bench_megaflow,
    bench_slowpath,
    bench_pipeline,
    bench_l3_10k,
    bench_l2_1k,
    bench_special_compile
);
criterion_main!(benches);
