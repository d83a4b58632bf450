//! The pktgen `l3` shape for instruction and cache-miss counting under
//! callgrind:
//! ROUTES /24 routes (`mod_dl_src`, `mod_dl_dst`, `dec_ttl`, `output`) as
//! `benches/src/scenario.rs` writes them, one flow per route, in bursts of
//! 32 cycling through the flows.
//!
//! ```text
//! cargo build --release -p sluice-datapath --example l3_ir
//! valgrind --tool=callgrind --cache-sim=yes --D1=32768,8,64 --LL=1048576,16,64 \
//!     --toggle-collect='*as sluice_datapath::pipeline::Pipeline*process*' \
//!     target/release/examples/l3_ir direct 1000 10000
//! ```
//!
//! (`process` only, warm-up included: Ir / the `packets` it prints; the
//! LL figures then model a 1 MiB L2. `--toggle-collect='*work_*'` counts
//! the measured bursts with the rig's own frame restoring.)
//!
//! Workloads: `direct` (the direct path, the default configuration),
//! `cascade` (direct path off: EMC, megaflow). N bursts are measured after
//! a warm-up of three rounds of the flows.
use std::hint::black_box;

use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::packet::{Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use sluice_datapath::pipeline::Pipeline;

const ROUTER: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

/// Route `i`'s network (`benches/src/scenario.rs`: `route`).
fn route(i: u32) -> [u8; 4] {
    [10, (1 + i / 256) as u8, (i % 256) as u8, 0]
}

/// A 60-byte UDP frame from pod A to host 1 of route `j % routes`.
fn frame(j: u32, routes: u32) -> Vec<u8> {
    let mut d = route(j % routes);
    d[3] = 1;
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], ROUTER)
        .ipv4([10, 244, 0, 1], d, 64)
        .udp(1024 + (j % 60_000) as u16, 5001)
        .write(&mut v, &[0u8; 18])
        .expect("frame");
    v
}

struct Rig {
    p: FlowPipeline,
    bursts: Vec<Burst<HeapBuf>>,
    frames: Vec<Vec<u8>>,
    out: Output<HeapBuf>,
    next: usize,
}

impl Rig {
    fn new(routes: u32, direct_path: bool) -> Rig {
        let t = FlowTables::new();
        let flows: String = (0..routes)
            .map(|i| {
                let r = route(i);
                format!(
                    "priority=24,ip,dl_dst=02:00:00:00:00:fe,nw_dst={}.{}.{}.0/24 actions=mod_dl_src:02:00:00:00:00:fe,mod_dl_dst:02:00:00:00:01:01,dec_ttl,output:2\n",
                    r[0], r[1], r[2]
                )
            })
            .collect();
        t.add_flows(&flows, 0).expect("program");
        let p = FlowPipeline::new(
            t,
            FlowPipelineConfig {
                ports: (1..=4).map(PortNo).collect(),
                direct_path,
                ..FlowPipelineConfig::default()
            },
        );
        let frames: Vec<Vec<u8>> = (0..routes).map(|j| frame(j, routes)).collect();
        let bursts = frames
            .chunks(32)
            .map(|fs| {
                let mut b = Burst::new(PortNo(1));
                b.pkts.extend(fs.iter().map(|f| HeapBuf::from_frame(f)));
                b
            })
            .collect();
        Rig {
            p,
            bursts,
            frames,
            out: Output::new(8),
            next: 0,
        }
    }

    #[inline(always)]
    fn step(&mut self) {
        let burst = &mut self.bursts[self.next];
        let n = burst.pkts.len();
        self.p.process(1, burst, &mut self.out);
        self.out.flush(|_, q| burst.pkts.append(q));
        assert_eq!(burst.pkts.len(), n, "every packet forwarded");
        // Restore the frames (net_pcap copies each packet afresh).
        let base = self.next * 32;
        for (i, pkt) in burst.pkts.iter_mut().enumerate() {
            pkt.data_mut().copy_from_slice(&self.frames[base + i]);
        }
        self.next = (self.next + 1) % self.bursts.len();
    }
}

#[inline(never)]
fn warm(r: &mut Rig) {
    for _ in 0..3 * r.bursts.len() {
        r.step();
    }
}

#[inline(never)]
fn work_bursts(r: &mut Rig, n: u32) {
    for _ in 0..n {
        r.step();
    }
    black_box(&r.p);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_default();
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let routes: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let direct = match what.as_str() {
        "direct" => true,
        "cascade" => false,
        other => {
            eprintln!(
                "l3_ir: unknown workload {other:?}; usage: l3_ir direct|cascade [BURSTS] [ROUTES]"
            );
            std::process::exit(2);
        }
    };
    let mut r = Rig::new(routes, direct);
    warm(&mut r);
    work_bursts(&mut r, n);
    let s = r.p.stats();
    eprintln!(
        "packets {} direct {} emc {}",
        s.packets.get(),
        s.direct.get(),
        s.emc.hit.get()
    );
}
