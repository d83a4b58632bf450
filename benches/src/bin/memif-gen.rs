//! `memif-gen`: the generator and sink of the latency mode (see
//! `sluice_benches::latency`).
//!
//! ```text
//! memif-gen --file-prefix gen1 --core 0 \
//!     --in-devargs  net_memif0,role=client,socket=/run/x/in.sock,id=0 \
//!     --out-devargs net_memif1,role=client,socket=/run/x/out.sock,id=0 \
//!     --scenario l2 --flows 1000 --rates 0.1,1,max --warmup 1 --interval 2 --runs 3
//! ```
//!
//! A DPDK primary process of its own (`--file-prefix`, hugepages when free,
//! else `--no-huge`) with two memif client ports: it sends the scenario's
//! frames on `in`, stamped, paced at each rate, and receives them on
//! `out`. Everything runs on the EAL main thread, pinned to `--core`. It
//! prints one JSON event per line on stdout (`ready`, one `run` per
//! measured run, `done`, or `error`) and exits.

#![deny(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice_benches::latency::{
    due, parse_rate, template, GenEvent, RunStats, Stamp, BURST, DRAIN_MAX, DRAIN_QUIET,
    LINK_TIMEOUT,
};
use sluice_benches::scenario::{Kind, Scenario, FRAME_LEN};
use sluice_datapath::dpdk::eal::{Eal, EalConfig, HugepageMode};
use sluice_datapath::dpdk::ethdev::{DpdkPort, Ethdev, EthdevConfig};
use sluice_datapath::dpdk::mbuf::Mbuf;
use sluice_datapath::dpdk::mempool::Mempool;
use sluice_datapath::packet::PacketBuf;
use sluice_datapath::port::Port;
use sluice_datapath::time::cycles;

#[derive(Parser)]
#[command(
    name = "memif-gen",
    about = "Latency generator and sink over two net_memif links"
)]
struct Args {
    /// DPDK file prefix (one primary process per prefix).
    #[arg(long)]
    file_prefix: String,
    /// The CPU to run on.
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// Devargs of the sending link (role=client).
    #[arg(long)]
    in_devargs: String,
    /// Devargs of the receiving link (role=client).
    #[arg(long)]
    out_devargs: String,
    /// Scenario kind whose frames are sent (60-byte frames: l2, l3,
    /// dnat, encap; mixed and decap carry Geneve frames).
    #[arg(long, default_value = "l2")]
    scenario: String,
    /// Distinct flows.
    #[arg(long, default_value_t = 1000)]
    flows: u32,
    /// Services (dnat).
    #[arg(long, default_value_t = 10)]
    services: u32,
    /// Offered rates in Mpps, or `max` (unpaced), comma-separated.
    #[arg(long, default_value = "0.1,1,max")]
    rates: String,
    /// Seconds of warm-up per rate (not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Runs per rate.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// rx queues of the receiving link: a peer that transmits on a queue
    /// other than 0 (OVS's PMD uses tx queue 1) needs 2.
    #[arg(long, default_value_t = 1)]
    out_queues: u16,
    /// Hugepages: auto, required or never.
    #[arg(long, default_value = "auto")]
    hugepages: String,
}

/// The two links, the pool and the frames. Field order is drop order:
/// ports close before the pool goes.
struct Gen {
    burst: Vec<Mbuf>,
    got: Vec<Mbuf>,
    tx: DpdkPort,
    rx: DpdkPort,
    _ports: Vec<Ethdev>,
    pool: Mempool,
    templates: Vec<[u8; FRAME_LEN]>,
    next: usize,
    seq: u16,
    hz: u64,
    out_queues: u16,
}

impl Gen {
    /// Sends up to `n` stamped frames; counts what the link took and
    /// what it refused.
    fn send(&mut self, n: usize, stats: &mut RunStats) {
        for _ in 0..n {
            let Some(mut m) = self.pool.alloc() else {
                break;
            };
            let Some(d) = m.append(FRAME_LEN) else {
                break;
            };
            if let Some(t) = self.templates.get(self.next) {
                d.copy_from_slice(t);
            }
            self.next = (self.next + 1) % self.templates.len().max(1);
            self.burst.push(m);
        }
        let now = cycles();
        for m in &mut self.burst {
            Stamp {
                seq: self.seq,
                tsc: now as u32,
            }
            .write(m.data_mut());
            self.seq = self.seq.wrapping_add(1);
        }
        let want = self.burst.len() as u64;
        let sent = self.tx.tx_burst(0, &mut self.burst) as u64;
        stats.sent += sent;
        stats.tx_refused += want - sent;
        // Frames the ring did not take (the tail of the burst) go back to
        // the pool, and their sequence numbers to the next burst, so that
        // the frames that left are numbered without gaps.
        self.seq = self.seq.wrapping_sub((want - sent) as u16);
        self.burst.clear();
    }

    /// Receives one burst from each link; returns the frames received on
    /// `out`.
    fn poll(&mut self, stats: &mut RunStats) -> usize {
        let mut n = 0;
        for q in 0..self.out_queues {
            n += self.rx.rx_burst(q, &mut self.got, BURST);
        }
        if n > 0 {
            let now = cycles();
            for m in self.got.drain(..) {
                match Stamp::read(m.data()).filter(|_| m.len() == FRAME_LEN) {
                    Some(s) => stats.receive(s, now),
                    None => stats.stray += 1,
                }
            }
        }
        let back = self.tx.rx_burst(0, &mut self.got, BURST);
        stats.stray += back as u64;
        self.got.clear();
        n
    }

    fn cycles_of(&self, d: Duration) -> u64 {
        (d.as_secs_f64() * self.hz as f64) as u64
    }

    /// Sends at `pps` for `length` while receiving; returns the seconds
    /// actually spent.
    fn phase(&mut self, pps: Option<u64>, length: Duration, stats: &mut RunStats) -> f64 {
        let length = self.cycles_of(length);
        let start = cycles();
        let mut attempted = 0u64;
        loop {
            let elapsed = cycles().wrapping_sub(start);
            if elapsed >= length {
                break elapsed as f64 / self.hz as f64;
            }
            let n = due(pps, self.hz, elapsed, &mut attempted);
            if n > 0 {
                self.send(n, stats);
                attempted += n as u64;
            }
            self.poll(stats);
        }
    }

    /// Receives until the link has been quiet for [`DRAIN_QUIET`] (at most
    /// [`DRAIN_MAX`]).
    fn drain(&mut self, stats: &mut RunStats) {
        let (quiet, most) = (self.cycles_of(DRAIN_QUIET), self.cycles_of(DRAIN_MAX));
        let start = cycles();
        let mut last = start;
        loop {
            let now = cycles();
            if self.poll(stats) > 0 {
                last = now;
            }
            if now.wrapping_sub(last) > quiet || now.wrapping_sub(start) > most {
                break;
            }
        }
    }

    /// Sends a frame every millisecond until one comes back.
    fn first_round_trip(&mut self) -> Result<(), String> {
        let mut stats = RunStats::new();
        let step = self.cycles_of(Duration::from_millis(1));
        let limit = self.cycles_of(LINK_TIMEOUT);
        let start = cycles();
        let mut next = start;
        while stats.received == 0 {
            let now = cycles();
            if now.wrapping_sub(start) > limit {
                return Err(format!(
                    "no frame came back within {LINK_TIMEOUT:?} although both memif links are up ({} sent, {} refused by the link, {} stray): the peer does not forward in→out",
                    stats.sent, stats.tx_refused, stats.stray
                ));
            }
            if now >= next {
                self.send(1, &mut stats);
                next = now + step;
            }
            self.poll(&mut stats);
        }
        self.drain(&mut stats);
        Ok(())
    }
}

fn emit(e: &GenEvent) {
    println!("{}", e.line());
}

fn open(name: &str, devargs: &str, rx_queues: u16, pool: &Mempool) -> Result<Ethdev, String> {
    Ethdev::open(
        &EthdevConfig {
            name: name.into(),
            devargs: devargs.into(),
            rx_queues,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
        },
        pool,
    )
    .map_err(|e| e.to_string())
}

fn run(args: &Args, eal: &Eal) -> Result<(), String> {
    let kind = Kind::from_name(&args.scenario)
        .ok_or_else(|| format!("unknown scenario '{}'", args.scenario))?;
    let scenario = Scenario::new(kind, args.flows, args.services);
    let templates = scenario
        .frames()
        .map(|f| template(&f))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            format!(
                "{} has frames that are not {FRAME_LEN} bytes: the stamp needs 64-byte frames",
                scenario.label()
            )
        })?;
    let rates = args
        .rates
        .split(',')
        .map(parse_rate)
        .collect::<Result<Vec<_>, _>>()?;
    let pool = Mempool::new("memif_gen_pool", 16_383, 256).map_err(|e| e.to_string())?;
    let ports = vec![
        open("in", &args.in_devargs, 1, &pool)?,
        open("out", &args.out_devargs, args.out_queues.max(1), &pool)?,
    ];
    let mut g = Gen {
        tx: ports[0].handle(),
        rx: ports[1].handle(),
        _ports: ports,
        pool,
        templates,
        next: 0,
        seq: 0,
        hz: eal.tsc_hz(),
        out_queues: args.out_queues.max(1),
        burst: Vec::with_capacity(BURST),
        got: Vec::with_capacity(BURST * usize::from(args.out_queues.max(1))),
    };
    let start = std::time::Instant::now();
    while !(g.tx.link().up && g.rx.link().up) {
        if start.elapsed() > LINK_TIMEOUT {
            return Err(format!(
                "the memif links did not come up within {LINK_TIMEOUT:?} (in: {}, out: {}): is the peer's memif server listening?",
                if g.tx.link().up { "up" } else { "down" },
                if g.rx.link().up { "up" } else { "down" },
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    g.first_round_trip()?;
    emit(&GenEvent::Ready {
        tsc_hz: g.hz,
        hugepages: eal.hugepages,
    });
    let mut stats = RunStats::new();
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let interval = Duration::from_secs_f64(args.interval.max(0.001));
    for pps in rates {
        stats.reset(g.seq);
        g.phase(pps, warmup, &mut stats);
        g.drain(&mut stats);
        for _ in 0..args.runs.max(1) {
            stats.reset(g.seq);
            let seconds = g.phase(pps, interval, &mut stats);
            g.drain(&mut stats);
            emit(&GenEvent::Run {
                run: stats.summary(pps, seconds, g.hz),
            });
        }
    }
    emit(&GenEvent::Done);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let hugepages = match args.hugepages.parse::<HugepageMode>() {
        Ok(h) => h,
        Err(e) => {
            emit(&GenEvent::Error { message: e });
            return ExitCode::FAILURE;
        }
    };
    let eal = match Eal::init(&EalConfig {
        file_prefix: args.file_prefix.clone(),
        hugepages,
        no_huge_memory_mb: 256,
        main_core: args.core,
        extra_args: vec!["--no-pci".into()],
    }) {
        Ok(e) => e,
        Err(e) => {
            emit(&GenEvent::Error {
                message: e.to_string(),
            });
            return ExitCode::FAILURE;
        }
    };
    let result = run(&args, &eal);
    drop(eal);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            emit(&GenEvent::Error { message });
            ExitCode::FAILURE
        }
    }
}
