//! Service (DNAT) traffic through the flow pipeline with conntrack, for
//! instruction counting under callgrind: the pktgen `dnat` shape of
//! `benches/dnat.rs` (same set-up, `benches/common/dnat_work.rs`).
//!
//! `dnat_ir WORKLOAD CONNS BURSTS`, WORKLOAD one of `syn_sent` (pktgen's
//! `dnat`: client ACKs of SYN_SENT connections), `est` (ESTABLISHED) or
//! `est_table` (ESTABLISHED with the per-PMD connection cache off). The
//! frames are replayed in order (connection `k % CONNS`, as pktgen's pcap)
//! for a few warm-up passes, then `work_bursts` runs BURSTS bursts of 32:
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*work_bursts*' \
//!     target/release/examples/dnat_ir syn_sent 1000 2000
//! ```
//!
//! Instructions per packet = Ir / (32 × BURSTS).
use std::hint::black_box;

#[path = "../benches/common/dnat_work.rs"]
mod dnat_work;
use dnat_work::{connections, pipeline, pipeline_with, Pipe};
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::Pipeline;

/// Runs `n` bursts of 32 of `frames` (cycling from `*next`), each
/// buffer restored from its frame first (a 64-byte copy, like net_pcap's).
#[inline(never)]
fn run_bursts(
    p: &mut Pipe,
    burst: &mut Burst<HeapBuf>,
    out: &mut Output<HeapBuf>,
    frames: &[Vec<u8>],
    next: &mut usize,
    n: u32,
) {
    for _ in 0..n {
        for buf in burst.pkts.iter_mut() {
            buf.data_mut().copy_from_slice(&frames[*next]);
            *next += 1;
            if *next == frames.len() {
                *next = 0;
            }
        }
        p.process(10, burst, out);
        out.flush(|_, q| burst.pkts.append(q));
        black_box(&burst);
    }
}

/// The measured calls (`--toggle-collect='*work_bursts*'`).
#[inline(never)]
fn work_bursts(
    p: &mut Pipe,
    burst: &mut Burst<HeapBuf>,
    out: &mut Output<HeapBuf>,
    frames: &[Vec<u8>],
    next: &mut usize,
    n: u32,
) {
    run_bursts(p, burst, out, frames, next, n)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_default();
    let conns: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let bursts: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let ((mut p, ct), est) = match what.as_str() {
        "syn_sent" => (pipeline(), false),
        "est" => (pipeline(), true),
        "est_table" => (pipeline_with(0), true),
        other => {
            eprintln!("dnat_ir: unknown workload {other:?}; usage: dnat_ir syn_sent|est|est_table CONNS BURSTS");
            std::process::exit(2);
        }
    };
    let frames = connections(&mut p, conns, est);
    let mut burst: Burst<HeapBuf> = Burst::new(PortNo(1));
    burst
        .pkts
        .extend((0..32).map(|i| HeapBuf::from_frame(&frames[i % frames.len()])));
    let mut out: Output<HeapBuf> = Output::new(4);
    let mut next = 0usize;
    // Warm-up: every connection seen several times (the caches fill).
    let warm = (frames.len() as u32 * 10).div_ceil(32).max(64);
    run_bursts(&mut p, &mut burst, &mut out, &frames, &mut next, warm);
    work_bursts(&mut p, &mut burst, &mut out, &frames, &mut next, bursts);
    assert_eq!(out.drops.total(), 0, "{:?}", out.drops.nonzero());
    assert_eq!(ct.len(), conns as usize, "every connection still tracked");
}
