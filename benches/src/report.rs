//! The results file (`results.json`), the human table and the ratios.
//!
//! A [`Report`] holds the machine it ran on, the run settings, every
//! [`Outcome`] of the comparison and of the scale curves, and the
//! control-plane timings. The table shows per scenario the median Mpps
//! (min–max) of each peer, Sluice's cycles per packet and cache-hit
//! breakdown, and the Sluice / OVS-DPDK and Sluice / testpmd-io ratios.

use std::fmt::Write as _;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::runner::{Outcome, PeerKind, Status};

/// The machine the figures come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `nproc`.
    pub nproc: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// Hugepages total/free and size, from /proc/meminfo.
    pub hugepages: String,
    /// Load average at the start (others may share the machine).
    pub loadavg_start: String,
    /// Load average at the end.
    pub loadavg_end: String,
}

impl Machine {
    /// Reads the current machine.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = Command::new("uname")
            .arg("-r")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let hugepages = meminfo
            .lines()
            .filter(|l| {
                l.starts_with("HugePages_Total")
                    || l.starts_with("HugePages_Free")
                    || l.starts_with("Hugepagesize")
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            hugepages,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

/// `/proc/loadavg`, first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A control-plane timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlTiming {
    /// What was timed.
    pub what: String,
    /// Peer.
    pub peer: PeerKind,
    /// Seconds, when measured.
    pub seconds: Option<f64>,
    /// Why not measured.
    pub note: Option<String>,
}

/// A memory figure: bytes per flow, connection or Service endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryFigure {
    /// What was measured.
    pub what: String,
    /// Peer.
    pub peer: PeerKind,
    /// Bytes per item, when measured.
    pub bytes: Option<f64>,
    /// The RSS figures it comes from.
    pub detail: Option<String>,
    /// Why not measured.
    pub note: Option<String>,
}

/// Wall-clock times of the whole comparison (`scripts/bench.sh`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WallTimes {
    /// Installing packages (0 when all were there).
    pub install_s: Option<f64>,
    /// `cargo build --release` of sluiced and pktgen.
    pub build_s: Option<f64>,
    /// `pktgen run`.
    pub run_s: f64,
    /// From the start of `scripts/bench.sh` to the end of the run.
    pub total_s: Option<f64>,
}

/// Everything one `pktgen run` produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Machine.
    pub machine: Machine,
    /// UTC start time (`date -u`).
    pub started: String,
    /// Seconds of warm-up before measuring.
    pub warmup_s: f64,
    /// Seconds per measurement.
    pub interval_s: f64,
    /// Measurements per (scenario, peer).
    pub runs: usize,
    /// Free-text conditions (machine shared, etc.).
    pub conditions: String,
    /// The side-by-side comparison.
    pub comparison: Vec<Outcome>,
    /// Scale curves: Sluice (and OVS) at growing flow counts.
    pub scale: Vec<Outcome>,
    /// Control-plane timings.
    pub control: Vec<ControlTiming>,
    /// Latency over net_memif (absent when run with `--no-latency`).
    #[serde(default)]
    pub latency: Option<crate::latency::LatencyReport>,
    /// Memory per flow, connection and Service endpoint.
    #[serde(default)]
    pub memory: Vec<MemoryFigure>,
    /// Wall-clock times.
    #[serde(default)]
    pub wall: WallTimes,
    /// What the runner did not measure and why.
    pub not_done: Vec<String>,
}

fn find<'a>(v: &'a [Outcome], label: &str, peer: PeerKind) -> Option<&'a Outcome> {
    v.iter()
        .find(|o| o.peer == peer && o.scenario.label() == label)
}

fn mpps_cell(o: Option<&Outcome>) -> String {
    match o {
        Some(o) if o.status == Status::Ok => match o.mpps {
            Some(m) => format!(
                "{:.2} ({:.2}-{:.2}){}",
                m.median,
                m.min,
                m.max,
                if o.warm == Some(false) { " cold" } else { "" }
            ),
            None => "-".into(),
        },
        Some(o) if o.status == Status::Pending => "pending".into(),
        Some(o) if o.status == Status::NotRun => "not run".into(),
        Some(_) => "failed".into(),
        None => "-".into(),
    }
}

fn median(o: Option<&Outcome>) -> Option<f64> {
    o.filter(|o| o.status == Status::Ok)
        .and_then(|o| o.mpps)
        .map(|m| m.median)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn cache_cell(o: Option<&Outcome>) -> String {
    let Some(o) = o.filter(|o| o.status == Status::Ok) else {
        return "-".into();
    };
    let sum = |f: fn(&crate::peer::Counters) -> Option<u64>| -> u64 {
        o.runs.iter().filter_map(|m| f(&m.counters)).sum()
    };
    let rx: u64 = o.runs.iter().map(|m| m.counters.rx_packets).sum();
    if rx == 0 {
        return "-".into();
    }
    let pct = |n: u64| 100.0 * n as f64 / rx as f64;
    let mut s = format!(
        "{:.0}/{:.0}",
        pct(sum(|c| c.emc_hits)),
        pct(sum(|c| c.megaflow_hits))
    );
    let smc = sum(|c| c.smc_hits);
    if smc > 0 {
        let _ = write!(s, "/smc {:.0}", pct(smc));
    }
    let up = sum(|c| c.upcalls);
    let _ = write!(s, "/{:.2}", pct(up));
    s
}

fn drops_cell(o: Option<&Outcome>) -> String {
    match o.filter(|o| o.status == Status::Ok) {
        Some(o) => {
            let d: u64 = o.runs.iter().map(|m| m.drops()).sum();
            let rx: u64 = o.runs.iter().map(|m| m.counters.rx_packets).sum();
            if d == 0 {
                "0".into()
            } else {
                format!("{:.2}%", 100.0 * d as f64 / rx.max(1) as f64)
            }
        }
        None => "-".into(),
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Pending => "pending",
        Status::Failed => "failed",
        Status::NotRun => "not run",
    }
}

fn secs(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 60.0 => format!("{}m{:02.0}s", (x / 60.0).floor(), x % 60.0),
        Some(x) => format!("{x:.1} s"),
        None => "-".into(),
    }
}

fn cpp_cell(o: Option<&Outcome>) -> String {
    o.filter(|o| o.status == Status::Ok)
        .and_then(|o| o.cycles_per_packet)
        .map(|c| format!("{:.0}", c.median))
        .unwrap_or_else(|| "-".into())
}

impl Report {
    /// The comparison as a Markdown table, followed by the pending and
    /// failed reasons.
    pub fn table(&self) -> String {
        let mut labels: Vec<String> = Vec::new();
        for o in &self.comparison {
            let l = o.scenario.label();
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| scenario | sluiced Mpps | cyc/pkt | EMC/megaflow/upcall % | drops | OVS-DPDK Mpps | OVS cyc/pkt | OVS EMC/megaflow/upcall % | OVS drops | testpmd io Mpps | testpmd macswap Mpps | Sluice/OVS | Sluice/testpmd-io |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for l in &labels {
            let sl = find(&self.comparison, l, PeerKind::Sluiced);
            let ovs = find(&self.comparison, l, PeerKind::OvsDpdk);
            let io = find(&self.comparison, l, PeerKind::TestpmdIo);
            let ms = find(&self.comparison, l, PeerKind::TestpmdMacswap);
            let _ = writeln!(
                s,
                "| {l} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                mpps_cell(sl),
                cpp_cell(sl),
                cache_cell(sl),
                drops_cell(sl),
                mpps_cell(ovs),
                cpp_cell(ovs),
                cache_cell(ovs),
                drops_cell(ovs),
                mpps_cell(io),
                mpps_cell(ms),
                ratio(median(sl), median(ovs)),
                ratio(median(sl), median(io)),
            );
        }
        if !self.scale.is_empty() {
            let _ = writeln!(
                s,
                "\nScale (median Mpps, cycles/packet, EMC/megaflow/upcall %):\n"
            );
            let _ = writeln!(
                s,
                "| peer | scenario | Mpps | cyc/pkt | EMC/megaflow/upcall % | drops | programming s | connections |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
            for o in &self.scale {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    o.peer.name(),
                    o.scenario.label(),
                    mpps_cell(Some(o)),
                    cpp_cell(Some(o)),
                    cache_cell(Some(o)),
                    drops_cell(Some(o)),
                    o.program_seconds
                        .map(|x| format!("{x:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    o.memory
                        .map(|m| m.connections.to_string())
                        .unwrap_or_else(|| "-".into()),
                );
            }
        }
        if let Some(l) = &self.latency {
            s.push_str(&l.table());
        }
        if !self.control.is_empty() {
            let _ = writeln!(s, "\nControl plane:\n");
            for c in &self.control {
                let _ = writeln!(
                    s,
                    "- {} ({}): {}",
                    c.what,
                    c.peer.name(),
                    c.seconds
                        .map(|x| format!("{x:.3} s"))
                        .or_else(|| c.note.clone())
                        .unwrap_or_default()
                );
            }
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                s,
                "\nMemory (VmRSS of /proc/PID/status, delta over the items; DPDK hugepages not included):\n"
            );
            let _ = writeln!(s, "| peer | figure | bytes | from |");
            let _ = writeln!(s, "|---|---|---|---|");
            for m in &self.memory {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    m.peer.name(),
                    m.what,
                    m.bytes
                        .map(|b| format!("{b:.0}"))
                        .unwrap_or_else(|| "-".into()),
                    m.detail
                        .clone()
                        .or_else(|| m.note.clone())
                        .unwrap_or_default()
                        .replace('\n', " ")
                );
            }
        }
        let notes: Vec<String> = self
            .comparison
            .iter()
            .chain(&self.scale)
            .filter(|o| o.status != Status::Ok)
            .map(|o| {
                format!(
                    "- {} on {}: {}: {}",
                    o.scenario.label(),
                    o.peer.name(),
                    status_name(o.status),
                    o.reason
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                )
            })
            .chain(self.not_done.iter().map(|n| format!("- not done: {n}")))
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(s, "\nPending, failed, not run and not done:\n");
            for n in notes {
                let _ = writeln!(s, "{n}");
            }
        }
        let w = &self.wall;
        let _ = writeln!(
            s,
            "\nWall time: {} total (install {}, release build {}, run {}).",
            secs(w.total_s),
            secs(w.install_s),
            secs(w.build_s),
            secs(Some(w.run_s)),
        );
        let _ = writeln!(
            s,
            "\nMpps: median (min-max) of the runs, from the datapath's own counters; \"cold\": upcalls were still 1% or more of packets when the warm-up limit ran out. Cache columns: % of packets received (OVS counts recirculated passes too). cyc/pkt for testpmd: TSC rate / pps. Every figure includes net_pcap's copy of each packet into a fresh mbuf (about 25-45 cycles per packet). Services: sluiced sends every TCP packet through `ct(zone=1,commit,table=1,nat)` with a bare `nat` (new connections pick their endpoint from the Service table, programmed with `service-update`); OVS-DPDK runs the OVN pattern (one `selection_method=dp_hash` select group per Service, `ct(commit,nat(dst=...))` per bucket). dnat-new: every counted packet is a new connection: each run flushes the peer's conntrack and measures a window that ends within one pass of the pcap. dnat pcaps: each connection's SYN then up to 7 ACKs, at most 240k frames (100k connections: SYN + 1 ACK; 1M: the SYN only, replayed). Sluice's Service table is loaded before its flows, and every tracked connection is checked to be DNATed after the run. mixed: per 20 frames 5 Service (dnat) frames, 4 l2, 4 l3, 3 encap, 2 decap, 1 ARP, 1 ICMP echo, in one program with both the Services and the overlay (OVS: br-int patched to br-phy). OVS encap/decap: userspace Geneve port on br-int, VTEP address on br-phy's internal port (OVS runs in a private network namespace), checked with ofproto/trace and dpctl/dump-flows (tnl_push/tnl_pop); OVS drops: packets received on pcap0 minus sent on null0 (dpctl/show -s).\n\nMachine: {} x {} ({}), kernel {}, {}; load {} at start, {} at end. At least {} s warm-up, {} x {} s per figure. {}",
            self.machine.nproc,
            self.machine.cpu_model,
            self.started,
            self.machine.kernel,
            self.machine.hugepages,
            self.machine.loadavg_start,
            self.machine.loadavg_end,
            self.warmup_s,
            self.runs,
            self.interval_s,
            self.conditions
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Counters;
    use crate::runner::{Measurement, Summary};
    use crate::scenario::{Kind, Scenario};

    fn outcome(peer: PeerKind, mpps: f64) -> Outcome {
        let m = Measurement {
            seconds: 1.0,
            mpps,
            cycles_per_packet: Some(100.0),
            busy_cycles_per_packet: Some(90.0),
            counters: Counters {
                rx_packets: 1000,
                tx_packets: Some(1000),
                emc_hits: Some(900),
                megaflow_hits: Some(100),
                upcalls: Some(0),
                ..Counters::default()
            },
            pmd_cpus: None,
            mpps_per_pmd_cpu: None,
        };
        Outcome {
            peer,
            scenario: Scenario::new(Kind::L2, 1, 0),
            frames: 1,
            status: Status::Ok,
            reason: None,
            program_seconds: None,
            memory: None,
            wall_seconds: None,
            warmup_seconds: None,
            warm: None,
            mpps: Summary::of([mpps]),
            cycles_per_packet: Summary::of([100.0]),
            busy_cycles_per_packet: None,
            runs: vec![m],
        }
    }

    #[test]
    fn table_has_ratios_and_pending_reasons() {
        let mut pending = outcome(PeerKind::Sluiced, 0.0);
        pending.scenario = Scenario::new(Kind::Dnat, 1, 10);
        pending.status = Status::Pending;
        pending.reason = Some("no conntrack yet".into());
        let r = Report {
            comparison: vec![
                outcome(PeerKind::Sluiced, 6.0),
                outcome(PeerKind::OvsDpdk, 4.0),
                outcome(PeerKind::TestpmdIo, 12.0),
                pending,
            ],
            ..Report::default()
        };
        let t = r.table();
        assert!(
            t.contains("| l2/1f | 6.00 (6.00-6.00) | 100 | 90/10/0.00 | 0 | 4.00"),
            "{t}"
        );
        assert!(t.contains("| 1.50 | 0.50 |"), "{t}");
        assert!(
            t.contains("| 4.00 (4.00-4.00) | 100 | 90/10/0.00 | 0 | 12.00"),
            "{t}"
        );
        assert!(
            t.contains("dnat/1f/10svc on sluiced: pending: no conntrack yet"),
            "{t}"
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.comparison.len(), 4);
    }
}
