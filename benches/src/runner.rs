//! The benchmark runner: for each scenario and each peer, write the pcap,
//! start the peer, program it, warm up, measure `runs` fixed intervals
//! from the peer's own counters and stop it.
//!
//! A measurement is the difference of two counter snapshots over the
//! wall-clock time between them. Sluice and OVS count cycles themselves;
//! for testpmd we report the core's cycles per packet as `tsc_hz / pps`
//! (its forwarding core is busy polling all the time), with `tsc_hz`
//! taken from sluiced's cycle counters in the same run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::peer::{
    Cores, Counters, Ovs, OvsPaths, Peer, PeerError, Sluiced, Testpmd, OVS_MAX_FRAMES,
};
use crate::scenario::Scenario;

/// The datapaths the runner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// Our daemon.
    Sluiced,
    /// Open vSwitch with DPDK.
    OvsDpdk,
    /// `dpdk-testpmd --forward-mode=io`.
    TestpmdIo,
    /// `dpdk-testpmd --forward-mode=macswap`.
    TestpmdMacswap,
}

impl PeerKind {
    /// Every peer, in report order.
    pub const ALL: [PeerKind; 4] = [
        PeerKind::Sluiced,
        PeerKind::OvsDpdk,
        PeerKind::TestpmdIo,
        PeerKind::TestpmdMacswap,
    ];

    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Sluiced => "sluiced",
            PeerKind::OvsDpdk => "ovs-dpdk",
            PeerKind::TestpmdIo => "testpmd-io",
            PeerKind::TestpmdMacswap => "testpmd-macswap",
        }
    }

    /// Parses [`PeerKind::name`].
    pub fn from_name(s: &str) -> Option<PeerKind> {
        PeerKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Least time between programming and the first measurement.
    pub warmup: Duration,
    /// Most warm-up time while the caches are still filling.
    pub max_warmup: Duration,
    /// Length of one measurement.
    pub interval: Duration,
    /// Measurements per (scenario, peer).
    pub runs: usize,
    /// Private working directory (pcaps, per-peer run directories).
    pub work_dir: PathBuf,
    /// The `sluiced` binary.
    pub sluiced: PathBuf,
    /// The `dpdk-testpmd` binary.
    pub testpmd: PathBuf,
    /// Open vSwitch programs.
    pub ovs: OvsPaths,
    /// Longest time programming one scenario may take (OVS with 100k
    /// select groups); beyond it the point is reported as not run.
    pub program_budget: Duration,
    /// Cores.
    pub cores: Cores,
}

/// One measured interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Wall-clock seconds between the two snapshots.
    pub seconds: f64,
    /// Million packets per second received by the forwarding core.
    pub mpps: f64,
    /// Cycles per packet (busy + idle, i.e. the whole core) when known.
    pub cycles_per_packet: Option<f64>,
    /// Busy cycles per packet (OVS's "avg processing cycles per packet").
    pub busy_cycles_per_packet: Option<f64>,
    /// Counter differences over the interval.
    pub counters: Counters,
    /// CPU the forwarding threads got over the interval, in cores (1.0:
    /// one core all the time), when the peer says.
    #[serde(default)]
    pub pmd_cpus: Option<f64>,
    /// Million packets per second of forwarding-thread CPU time: the rate
    /// they would reach on cores of their own.
    #[serde(default)]
    pub mpps_per_pmd_cpu: Option<f64>,
}

impl Measurement {
    /// Builds a measurement from two snapshots.
    pub fn between(a: &(Counters, Instant), b: &(Counters, Instant)) -> Self {
        let seconds = b.1.saturating_duration_since(a.1).as_secs_f64().max(1e-9);
        let counters = b.0.since(&a.0);
        let rx = counters.rx_packets.max(1) as f64;
        let busy = counters.busy_cycles;
        let total = busy.zip(counters.idle_cycles).map(|(b, i)| b + i);
        Measurement {
            seconds,
            mpps: counters.rx_packets as f64 / seconds / 1e6,
            cycles_per_packet: total.map(|t| t as f64 / rx),
            busy_cycles_per_packet: busy.map(|b| b as f64 / rx),
            pmd_cpus: counters.pmd_cpu_ns.map(|ns| ns as f64 / 1e9 / seconds),
            mpps_per_pmd_cpu: counters
                .pmd_cpu_ns
                .filter(|&ns| ns > 0)
                .map(|ns| counters.rx_packets as f64 / (ns as f64 / 1e9) / 1e6),
            counters,
        }
    }

    /// Cycles per second of the measuring core, when the peer counts them.
    pub fn cycles_hz(&self) -> Option<f64> {
        let total = self.counters.busy_cycles? + self.counters.idle_cycles?;
        Some(total as f64 / self.seconds)
    }

    /// Packets dropped or not sent over the interval.
    pub fn drops(&self) -> u64 {
        let named: u64 = self.counters.drops.values().sum();
        match self.counters.tx_packets {
            Some(tx) => named.max(self.counters.rx_packets.saturating_sub(tx)),
            None => named,
        }
    }
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Summarises `values`; `None` when empty.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// What became of one (scenario, peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Measured.
    Ok,
    /// The datapath lacks a feature the scenario needs (yet).
    Pending,
    /// Something failed; see the reason.
    Failed,
    /// Deliberately not run (a peer's limit, a time bound); see the reason.
    NotRun,
}

/// Resident memory of a peer before programming a scenario and after
/// measuring it, with the number of tracked connections then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    /// `VmRSS` in bytes after start, before programming.
    pub rss_before: u64,
    /// `VmRSS` in bytes after the last measurement.
    pub rss_after: u64,
    /// Connections in the conntrack table after the last measurement.
    pub connections: u64,
}

impl MemorySample {
    /// RSS growth per tracked connection (`None` without connections).
    pub fn bytes_per_connection(&self) -> Option<f64> {
        (self.connections > 0).then(|| {
            self.rss_after.saturating_sub(self.rss_before) as f64 / self.connections as f64
        })
    }
}

/// Results of one (scenario, peer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Peer.
    pub peer: PeerKind,
    /// Scenario.
    pub scenario: Scenario,
    /// Frames in the pcap.
    pub frames: usize,
    /// Status.
    pub status: Status,
    /// Why it is pending or failed.
    pub reason: Option<String>,
    /// Seconds to install the flow program (and, on sluiced, the
    /// Service table).
    pub program_seconds: Option<f64>,
    /// Memory before programming and after measuring (Service kinds).
    #[serde(default)]
    pub memory: Option<MemorySample>,
    /// Wall-clock seconds the whole point took (pcap, start, programming,
    /// warm-up, runs, stop).
    #[serde(default)]
    pub wall_seconds: Option<f64>,
    /// Seconds of warm-up before the first measurement.
    pub warmup_seconds: Option<f64>,
    /// Whether the caches were warm (upcalls under 1%) when measuring.
    pub warm: Option<bool>,
    /// Mpps over the runs.
    pub mpps: Option<Summary>,
    /// Whole-core cycles per packet over the runs.
    pub cycles_per_packet: Option<Summary>,
    /// Busy cycles per packet over the runs.
    pub busy_cycles_per_packet: Option<Summary>,
    /// Each run.
    pub runs: Vec<Measurement>,
}

impl Outcome {
    fn new(peer: PeerKind, scenario: Scenario, frames: usize) -> Self {
        Self {
            peer,
            scenario,
            frames,
            status: Status::Failed,
            reason: None,
            program_seconds: None,
            memory: None,
            wall_seconds: None,
            warmup_seconds: None,
            warm: None,
            mpps: None,
            cycles_per_packet: None,
            busy_cycles_per_packet: None,
            runs: Vec::new(),
        }
    }

    /// An outcome that was not run, with its status and reason.
    pub fn skipped(peer: PeerKind, scenario: Scenario, status: Status, reason: String) -> Self {
        let mut o = Self::new(peer, scenario, scenario.frame_count());
        o.status = status;
        o.reason = Some(reason);
        o
    }

    fn record(&mut self, (runs, warmup, warm): (Vec<Measurement>, Duration, bool)) {
        self.runs = runs;
        self.warmup_seconds = Some(warmup.as_secs_f64());
        self.warm = Some(warm);
    }

    /// Fills the summaries from `runs`.
    pub fn summarise(&mut self) {
        self.mpps = Summary::of(self.runs.iter().map(|m| m.mpps));
        self.cycles_per_packet = Summary::of(self.runs.iter().filter_map(|m| m.cycles_per_packet));
        self.busy_cycles_per_packet =
            Summary::of(self.runs.iter().filter_map(|m| m.busy_cycles_per_packet));
    }

    /// For peers that do not count cycles: cycles per packet of a core
    /// running at `hz` (the forwarding core never idles).
    pub fn estimate_cycles(&mut self, hz: f64) {
        if self.cycles_per_packet.is_none() && hz > 0.0 {
            for m in &mut self.runs {
                if m.mpps > 0.0 {
                    m.cycles_per_packet = Some(hz / (m.mpps * 1e6));
                }
            }
            self.summarise();
        }
    }
}

/// Warms up, then takes `runs` measurements of `interval`.
///
/// Warm-up is at least `cfg.warmup`, then, when `until_warm`, lasts until
/// the caches are warm: a 1 s window in which upcalls are under 1% of the
/// packets received (peers without a classifier are warm at once), for at
/// most `cfg.max_warmup`. When `drops_abort`, a warm-up window in which most
/// packets are dropped ends the measurement with [`PeerError::Dropping`].
/// Returns the measurements, the warm-up time and whether it was warm.
///
/// # Errors
/// [`PeerError`] if the peer dies or its counters cannot be read.
pub fn measure(
    peer: &mut dyn Peer,
    cfg: &RunConfig,
    until_warm: bool,
    drops_abort: bool,
) -> Result<(Vec<Measurement>, Duration, bool), PeerError> {
    let start = Instant::now();
    std::thread::sleep(cfg.warmup);
    peer.alive()?;
    let mut prev = peer.counters()?;
    let warm = loop {
        // Peers without a classifier (no upcall counter) are warm at once.
        if !until_warm || prev.0.upcalls.is_none() {
            break true;
        }
        if start.elapsed() >= cfg.max_warmup {
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
        peer.alive()?;
        let now = peer.counters()?;
        let d = now.0.since(&prev.0);
        let window = Measurement::between(&prev, &now);
        prev = now;
        if drops_abort && d.rx_packets > 0 && window.drops() * 2 > d.rx_packets {
            return Err(PeerError::Dropping {
                dropped: window.drops(),
                received: d.rx_packets,
                reasons: d
                    .drops
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        match d.upcalls {
            Some(u) if d.rx_packets == 0 || u * 100 >= d.rx_packets => continue,
            _ => break true,
        }
    };
    let warmup = start.elapsed();
    let mut out = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        std::thread::sleep(cfg.interval);
        peer.alive()?;
        let now = peer.counters()?;
        out.push(Measurement::between(&prev, &now));
        prev = now;
    }
    Ok((out, warmup, warm))
}

/// Most windows tried per run of [`measure_new`] before it gives up.
const NEW_TRIES: usize = 4;
/// Shortest window of [`measure_new`].
const NEW_MIN_WINDOW: Duration = Duration::from_millis(20);

/// Measures connection setup (`dnat-new`) where every packet counted
/// really is a new connection. A replayed pcap of `frames` SYNs would
/// otherwise be new only on its first pass: from the second on, each SYN
/// meets the connection its earlier copy made. So each run flushes the
/// peer's conntrack and measures a window that ends before `frames`
/// packets have passed since the flush (every 5-tuple of the pcap occurs
/// once per `frames` packets, wherever the replay stands). The window
/// is sized from the rate seen so far; a run whose packets since the
/// flush exceed `frames` is discarded and retried with a shorter window
/// (at most [`NEW_TRIES`] times).
///
/// # Errors
/// [`PeerError`] from the peer, or [`PeerError::Counters`] when no window
/// short enough could be measured.
pub fn measure_new(
    peer: &mut dyn Peer,
    cfg: &RunConfig,
    frames: usize,
) -> Result<(Vec<Measurement>, Duration, bool), PeerError> {
    let start = Instant::now();
    let first = peer.counters()?;
    std::thread::sleep(cfg.warmup);
    peer.alive()?;
    let warm = peer.counters()?;
    let warmup = start.elapsed();
    let mut mpps = Measurement::between(&first, &warm).mpps.max(0.01);
    let frames = frames as u64;
    let mut out = Vec::with_capacity(cfg.runs);
    for _ in 0..cfg.runs {
        let mut tries = 0;
        let m = loop {
            tries += 1;
            let before = peer.counters()?;
            peer.flush_connections()?;
            let flushed = peer.counters()?;
            let used = flushed.0.rx_packets.saturating_sub(before.0.rx_packets);
            let left = frames.saturating_sub(used) as f64;
            // Half of what is left at the rate seen so far.
            let window = Duration::from_secs_f64(0.5 * left / (mpps * 1e6))
                .min(cfg.interval)
                .max(NEW_MIN_WINDOW);
            std::thread::sleep(window);
            peer.alive()?;
            let after = peer.counters()?;
            let m = Measurement::between(&flushed, &after);
            mpps = mpps.max(m.mpps);
            if after.0.rx_packets.saturating_sub(before.0.rx_packets) <= frames {
                break m;
            }
            if tries == NEW_TRIES {
                return Err(PeerError::Counters {
                    peer: peer.name().into(),
                    detail: format!(
                        "no window ended within one pass of the {frames}-frame pcap after a conntrack flush ({:.2} Mpps over the last {:.0} ms)",
                        m.mpps,
                        m.seconds * 1e3
                    ),
                });
            }
        };
        out.push(m);
    }
    Ok((out, warmup, true))
}

/// Writes (or reuses) the pcap of `scenario` under `dir`.
///
/// # Errors
/// [`PeerError::Io`] if it cannot be written.
pub fn pcap_for(scenario: &Scenario, dir: &Path) -> Result<(PathBuf, usize), PeerError> {
    let name = scenario.label().replace('/', "-");
    let path = dir.join(format!("{name}.pcap"));
    let frames = scenario.frame_count();
    if !path.exists() {
        std::fs::create_dir_all(dir).map_err(|source| PeerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        crate::write_pcap(scenario, &path).map_err(|e| PeerError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok((path, frames))
}

/// A fresh private directory `run/NAME` in the work directory (emptied
/// if a previous run left one).
///
/// # Errors
/// [`PeerError::Io`] if it cannot be made.
pub(crate) fn run_dir(cfg: &RunConfig, name: &str) -> Result<PathBuf, PeerError> {
    let dir = cfg.work_dir.join("run").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|source| PeerError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn try_run(
    peer: PeerKind,
    scenario: &Scenario,
    cfg: &RunConfig,
    outcome: &mut Outcome,
) -> Result<(), PeerError> {
    let (pcap, frames) = pcap_for(scenario, &cfg.work_dir.join("pcap"))?;
    let dir = run_dir(cfg, peer.name())?;
    // Connection setup is measured while connections are being set up,
    // not after the caches have learned them all.
    let new_connections = scenario.kind == crate::scenario::Kind::DnatNew;
    let until_warm = !new_connections;
    let services = scenario.kind.uses_services();
    match peer {
        PeerKind::Sluiced => {
            let mut s = Sluiced::start(
                &cfg.sluiced,
                &dir,
                &pcap,
                frames,
                &cfg.cores,
                &scenario.sluice_config(),
            )?;
            let rss_before = s.rss()?;
            for call in scenario.sluice_setup() {
                s.setup(&call)?;
            }
            // The Service table first: the pcap is already replaying, and
            // a connection that `ct(commit,nat)` sees before its Service
            // exists is committed untranslated and stays so.
            let mut took = Duration::ZERO;
            let batches = scenario.service_update();
            if !batches.is_empty() {
                let p = s.service_update(&batches, Some(cfg.program_budget))?;
                took += p.elapsed;
                if p.done < p.total {
                    return Err(PeerError::NotRun(format!(
                        "{} of {} service-update batches applied in {:.0} s",
                        p.done,
                        p.total,
                        p.elapsed.as_secs_f64()
                    )));
                }
            }
            took += s.program(&scenario.sluice_program())?;
            outcome.program_seconds = Some(took.as_secs_f64());
            outcome.record(if new_connections {
                measure_new(&mut s, cfg, frames)?
            } else {
                measure(&mut s, cfg, until_warm, true)?
            });
            if services {
                // Every connection of a Service scenario goes to a VIP: one
                // left untranslated means the figure measured less work.
                let (conns, dnat) = s.conntrack_counts()?;
                if dnat < conns {
                    return Err(PeerError::Counters {
                        peer: peer.name().into(),
                        detail: format!(
                            "only {dnat} of the {conns} tracked connections are DNATed"
                        ),
                    });
                }
            }
            if services {
                outcome.memory = Some(MemorySample {
                    rss_before,
                    rss_after: s.rss()?,
                    connections: s.connections()?,
                });
            }
        }
        PeerKind::OvsDpdk => {
            let program = scenario.ovs_program().ok_or_else(|| {
                PeerError::Pending(format!(
                    "the runner has no OVS configuration for {}",
                    scenario.kind.name()
                ))
            })?;
            if frames > OVS_MAX_FRAMES {
                return Err(PeerError::NotRun(format!(
                    "the pcap has {frames} frames; net_pcap (infinite_rx) preloads every frame into an mbuf of the port's pool, and OVS 3.1's shared pool is MAX_NB_MBUF = 262,144 mbufs, a compile-time constant of lib/netdev-dpdk.c (per-port-memory only makes it smaller), shared with the port's rings: at most {OVS_MAX_FRAMES} frames fit"
                )));
            }
            let mut o = Ovs::start(&cfg.ovs, &dir, &pcap, &cfg.cores, scenario.kind)?;
            let rss_before = o.rss()?;
            outcome.program_seconds = Some(o.program(&program, cfg.program_budget)?.as_secs_f64());
            outcome.record(if new_connections {
                measure_new(&mut o, cfg, frames)?
            } else {
                measure(&mut o, cfg, until_warm, false)?
            });
            o.check_datapath_tunnel()?;
            if services {
                outcome.memory = Some(MemorySample {
                    rss_before,
                    rss_after: o.rss()?,
                    connections: o.connections()?,
                });
            }
        }
        PeerKind::TestpmdIo | PeerKind::TestpmdMacswap => {
            let mode = if peer == PeerKind::TestpmdIo {
                "io"
            } else {
                "macswap"
            };
            let mut t = Testpmd::start(&cfg.testpmd, mode, &pcap, frames, &cfg.cores)?;
            outcome.record(measure(&mut t, cfg, until_warm, false)?);
        }
    }
    Ok(())
}

/// Runs one (scenario, peer); never fails: problems become the outcome's
/// status and reason.
pub fn run_one(peer: PeerKind, scenario: &Scenario, cfg: &RunConfig) -> Outcome {
    let mut outcome = Outcome::new(peer, *scenario, scenario.frame_count());
    eprintln!("pktgen: {} on {} ...", scenario.label(), peer.name());
    let started = Instant::now();
    let result = try_run(peer, scenario, cfg, &mut outcome);
    outcome.wall_seconds = Some(started.elapsed().as_secs_f64());
    match result {
        Ok(()) => {
            outcome.status = Status::Ok;
            outcome.summarise();
            // A datapath that forwards nothing of a scenario lacks what it
            // needs: report it as pending rather than as a rate.
            let rx: u64 = outcome.runs.iter().map(|m| m.counters.rx_packets).sum();
            let dropped: u64 = outcome.runs.iter().map(Measurement::drops).sum();
            if peer == PeerKind::Sluiced && rx > 0 && dropped * 2 > rx {
                outcome.status = Status::Pending;
                let reasons: Vec<String> = outcome
                    .runs
                    .last()
                    .map(|m| {
                        m.counters
                            .drops
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect()
                    })
                    .unwrap_or_default();
                outcome.reason = Some(format!(
                    "sluiced dropped {dropped} of {rx} packets ({})",
                    reasons.join(", ")
                ));
            }
        }
        Err(PeerError::Pending(r)) => {
            outcome.status = Status::Pending;
            outcome.reason = Some(r);
        }
        Err(PeerError::NotRun(r)) => {
            outcome.status = Status::NotRun;
            outcome.reason = Some(r);
        }
        Err(e @ PeerError::Dropping { .. }) => {
            // Sluice drops what it cannot do yet under a named reason
            // (such as ct_unsupported): the scenario waits for that feature.
            outcome.status = Status::Pending;
            outcome.reason = Some(format!("sluiced {e}"));
        }
        Err(e) => {
            outcome.status = Status::Failed;
            outcome.reason = Some(e.to_string());
        }
    }
    match (&outcome.status, &outcome.mpps) {
        (Status::Ok, Some(m)) => eprintln!(
            "pktgen:   {:.3} Mpps (min {:.3}, max {:.3}) [{:.1} s]",
            m.median,
            m.min,
            m.max,
            outcome.wall_seconds.unwrap_or(0.0)
        ),
        _ => eprintln!(
            "pktgen:   {:?}: {}",
            outcome.status,
            outcome.reason.as_deref().unwrap_or("")
        ),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_min_max() {
        let s = Summary::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Summary::of([]).is_none());
        assert!(Summary::of([f64::NAN]).is_none());
    }

    #[test]
    fn measurement_rates() {
        let t0 = Instant::now();
        let a = (Counters::default(), t0);
        let b = (
            Counters {
                rx_packets: 2_000_000,
                tx_packets: Some(1_999_000),
                busy_cycles: Some(150_000_000),
                idle_cycles: Some(50_000_000),
                ..Counters::default()
            },
            t0 + Duration::from_secs(2),
        );
        let m = Measurement::between(&a, &b);
        assert!((m.mpps - 1.0).abs() < 1e-9);
        assert_eq!(m.cycles_per_packet, Some(100.0));
        assert_eq!(m.busy_cycles_per_packet, Some(75.0));
        assert_eq!(m.drops(), 1000);
        assert_eq!(m.cycles_hz(), Some(100_000_000.0));
    }

    /// A peer whose receive counter grows by `step` at every reading
    /// (whatever the time), so what `measure_new` decides depends only on
    /// the calls it makes.
    struct Replaying {
        rx: u64,
        step: u64,
        flushes: usize,
    }

    impl Peer for Replaying {
        fn name(&self) -> &str {
            "replaying"
        }
        fn counters(&mut self) -> Result<(Counters, Instant), PeerError> {
            self.rx += self.step;
            Ok((
                Counters {
                    rx_packets: self.rx,
                    ..Counters::default()
                },
                Instant::now(),
            ))
        }
        fn alive(&mut self) -> Result<(), PeerError> {
            Ok(())
        }
        fn flush_connections(&mut self) -> Result<(), PeerError> {
            self.flushes += 1;
            Ok(())
        }
    }

    fn quick_cfg() -> RunConfig {
        RunConfig {
            warmup: Duration::ZERO,
            max_warmup: Duration::ZERO,
            interval: Duration::from_millis(20),
            runs: 3,
            work_dir: PathBuf::new(),
            sluiced: PathBuf::new(),
            testpmd: PathBuf::new(),
            ovs: crate::peer::OvsPaths::default(),
            cores: crate::peer::Cores::one(0, 1),
            program_budget: Duration::ZERO,
        }
    }

    #[test]
    fn new_connection_windows_stay_within_one_pass_after_a_flush() {
        // Three readings per window (before, after the flush, at its end):
        // 2 x 100 packets from before the flush to the end fit a
        // 1000-frame pcap, so each run is taken at its first try, measured
        // from the flush.
        let mut p = Replaying {
            rx: 0,
            step: 100,
            flushes: 0,
        };
        let (runs, _, warm) = measure_new(&mut p, &quick_cfg(), 1000).expect("measured");
        assert!(warm);
        assert_eq!(runs.len(), 3);
        assert_eq!(p.flushes, 3);
        assert!(runs.iter().all(|m| m.counters.rx_packets == 100));

        // 2 x 100 packets never fit a 150-frame pcap: every window would
        // count repeats, so it gives up after NEW_TRIES flushes.
        let mut p = Replaying {
            rx: 0,
            step: 100,
            flushes: 0,
        };
        let e = measure_new(&mut p, &quick_cfg(), 150).expect_err("repeats");
        assert_eq!(p.flushes, NEW_TRIES);
        assert!(e.to_string().contains("150-frame pcap"), "{e}");

        // A peer without conntrack cannot be measured this way.
        struct NoCt(u64);
        impl Peer for NoCt {
            fn name(&self) -> &str {
                "no-ct"
            }
            fn counters(&mut self) -> Result<(Counters, Instant), PeerError> {
                self.0 += 1;
                Ok((Counters::default(), Instant::now()))
            }
            fn alive(&mut self) -> Result<(), PeerError> {
                Ok(())
            }
        }
        let e = measure_new(&mut NoCt(0), &quick_cfg(), 1000).expect_err("no conntrack");
        assert!(matches!(e, PeerError::Pending(_)), "{e}");
    }

    #[test]
    fn peer_names_round_trip() {
        for p in PeerKind::ALL {
            assert_eq!(PeerKind::from_name(p.name()), Some(p));
        }
    }
}
