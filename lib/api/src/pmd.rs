//! Poll-mode-driver threads: per-PMD statistics (OVS's
//! `dpif-netdev/pmd-stats-show`), where their cycles go by stage
//! (`pmd-perf-show`), their rx-queue assignment (`pmd-rxq-show`) and their
//! per-core cache contents (`dump-cache`).

use serde::{Deserialize, Serialize};

use crate::{method, Empty, Render};

/// Packets dropped for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCount {
    /// The reason's key (`table_miss`, `ct_limit`, ...).
    pub reason: String,
    /// What the reason means, for people.
    pub description: String,
    /// Packets dropped for it.
    pub packets: u64,
}

/// Counters of one PMD since start or the last `pmd-stats-clear`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmdStats {
    /// PMD index.
    pub index: usize,
    /// CPU it is pinned to.
    pub core: Option<usize>,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Non-empty rx bursts.
    pub rx_bursts: u64,
    /// TSC cycles spent on bursts that carried packets.
    pub busy_cycles: u64,
    /// TSC cycles spent polling empty queues.
    pub idle_cycles: u64,
    /// Whether the PMD runs the flow pipeline (the next fields mean something).
    pub flow_pipeline: bool,
    /// Exact-match cache hits.
    pub emc_hits: u64,
    /// Megaflow cache hits.
    pub megaflow_hits: u64,
    /// Megaflow cache misses.
    pub megaflow_misses: u64,
    /// Subtables probed by megaflow lookups.
    pub megaflow_probes: u64,
    /// Slow-path classifications.
    pub upcalls: u64,
    /// Recirculations (`ct(table=N)`, tunnel pop).
    pub recirculations: u64,
    /// Packets sent to the controller.
    pub packet_ins: u64,
    /// Recirculated passes (after `ct(table=N)` or tunnel pop) classified
    /// by the continuation cache: no EMC or megaflow lookup.
    #[serde(default)]
    pub continuation_hits: u64,
    /// Recirculated passes classified through the EMC and megaflow cache
    /// (continuation cache miss, or the cache is off).
    #[serde(default)]
    pub continuation_misses: u64,
    /// Packets forwarded by the direct path (looked up in specialised
    /// tables, no EMC or megaflow lookup; `classifier::direct`).
    #[serde(default)]
    pub direct_hits: u64,
    /// Whether the PMD tracks connections (the next two mean something).
    pub conntrack: bool,
    /// Connection-cache hits (no lock).
    pub ct_cache_hits: u64,
    /// Connection-cache misses (shared table).
    pub ct_cache_misses: u64,
    /// Drops by reason (only reasons with drops).
    pub drops: Vec<DropCount>,
}

impl PmdStats {
    /// Total packets dropped.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().map(|d| d.packets).sum()
    }
}

/// `pmd-stats-show` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmdStatsReply {
    /// One entry per PMD.
    pub pmds: Vec<PmdStats>,
}

impl Render for PmdStatsReply {
    fn render(&self) -> String {
        let mut s = String::new();
        for p in &self.pmds {
            let total = (p.busy_cycles + p.idle_cycles).max(1) as f64;
            s += &pmd_heading(p.index, p.core);
            s += &format!("  packets received: {}\n", p.rx_packets);
            s += &format!("  packets sent: {}\n", p.tx_packets);
            s += &format!("  packet recirculations: {}\n", p.recirculations);
            s += &format!(
                "  avg. packets per rx burst: {:.2}\n",
                p.rx_packets as f64 / p.rx_bursts.max(1) as f64
            );
            if p.flow_pipeline {
                s += &format!("  direct hits: {}\n", p.direct_hits);
                s += &format!("  emc hits: {}\n", p.emc_hits);
                s += &format!("  megaflow hits: {}\n", p.megaflow_hits);
                s += &format!(
                    "  avg. subtable lookups per megaflow lookup: {:.2}\n",
                    p.megaflow_probes as f64 / (p.megaflow_hits + p.megaflow_misses).max(1) as f64
                );
                s += &format!("  miss with success upcall: {}\n", p.upcalls);
                let (hits, misses) = (p.continuation_hits, p.continuation_misses);
                s += &format!(
                    "  continuation hits: {hits} ({:.2}% of recirculated passes)\n",
                    100.0 * hits as f64 / (hits + misses).max(1) as f64
                );
                s += &format!("  continuation misses: {misses}\n");
                s += &format!("  packet-ins: {}\n", p.packet_ins);
            }
            if p.conntrack {
                let (hits, misses) = (p.ct_cache_hits, p.ct_cache_misses);
                s += &format!(
                    "  conntrack cache hits: {hits} ({:.2}% of lookups, no lock)\n",
                    100.0 * hits as f64 / (hits + misses).max(1) as f64
                );
                s += &format!("  conntrack cache misses: {misses}\n");
            }
            s += &format!(
                "  idle cycles: {} ({:.2}%)\n",
                p.idle_cycles,
                100.0 * p.idle_cycles as f64 / total
            );
            s += &format!(
                "  processing cycles: {} ({:.2}%)\n",
                p.busy_cycles,
                100.0 * p.busy_cycles as f64 / total
            );
            let (busy, idle, rx) = (p.busy_cycles, p.idle_cycles, p.rx_packets);
            if rx > 0 {
                s += &format!(
                    "  avg cycles per packet: {:.2} ({busy}/{rx})\n",
                    (busy + idle) as f64 / rx as f64
                );
                s += &format!(
                    "  avg processing cycles per packet: {:.2} ({busy}/{rx})\n",
                    busy as f64 / rx as f64
                );
            }
            s += &format!("  dropped: {}\n", p.dropped());
            for d in &p.drops {
                s += &format!("    {}: {} ({})\n", d.reason, d.packets, d.description);
            }
        }
        s
    }
}

/// One rx queue a PMD polls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxQueue {
    /// Port name.
    pub port: String,
    /// OpenFlow port number.
    pub ofport: u16,
    /// Queue id on the port.
    pub queue: u16,
    /// How the port was created (`config`, `pod`, `devargs`).
    #[serde(default)]
    pub kind: String,
}

/// The rx queues of one PMD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmdRxqs {
    /// PMD index.
    pub index: usize,
    /// CPU it is pinned to.
    pub core: Option<usize>,
    /// Its queues.
    pub queues: Vec<RxQueue>,
}

/// The line that opens one PMD's part of a reply, as OVS writes it:
/// `pmd thread index N core_id C:` (no core id when it is not pinned).
fn pmd_heading(index: usize, core: Option<usize>) -> String {
    match core {
        Some(c) => format!("pmd thread index {index} core_id {c}:\n"),
        None => format!("pmd thread index {index}:\n"),
    }
}

/// `pmd-rxq-show` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmdRxqReply {
    /// One entry per PMD.
    pub pmds: Vec<PmdRxqs>,
}

impl Render for PmdRxqReply {
    fn render(&self) -> String {
        let mut s = String::new();
        for p in &self.pmds {
            s += &pmd_heading(p.index, p.core);
            for q in &p.queues {
                s += &format!(
                    "  port: {:<16} queue-id: {:>2} (ofport {}{})\n",
                    q.port,
                    q.queue,
                    q.ofport,
                    if q.kind.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", q.kind)
                    }
                );
            }
        }
        s
    }
}

/// `dump-cache` reply: each PMD's description of its caches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDump {
    /// One text per PMD, in PMD order.
    pub pmds: Vec<String>,
}

impl Render for CacheDump {
    fn render(&self) -> String {
        let mut s = String::new();
        for (i, t) in self.pmds.iter().enumerate() {
            s += &pmd_heading(i, None);
            s += t;
        }
        s
    }
}

method!(
    /// Per-PMD statistics.
    PmdStatsShow, "pmd-stats-show", "", (0, 0), Empty => PmdStatsReply,
    aliases = ["dpif-netdev/pmd-stats-show"]);
method!(
    /// Resets the per-PMD statistics (to a baseline; the PMDs' counters are untouched).
    PmdStatsClear, "pmd-stats-clear", "", (0, 0), Empty => Empty,
    aliases = ["dpif-netdev/pmd-stats-clear"]);
/// Cycles one PMD spent in one stage of its busy iterations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerfStage {
    /// The stage (`rx`, `parse`, `classify: emc`, `conntrack`, `tx`...).
    pub name: String,
    /// TSC cycles since start.
    pub cycles: u64,
    /// True when the figure is the PMD's exact total for the stage split
    /// in the proportions of sampled bursts (see `sampled_bursts`).
    pub estimated: bool,
}

/// Where one PMD's busy cycles went, by stage, since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmdPerf {
    /// PMD index.
    pub index: usize,
    /// CPU it is pinned to.
    pub core: Option<usize>,
    /// Packets received.
    pub rx_packets: u64,
    /// Non-empty rx bursts.
    pub rx_bursts: u64,
    /// TSC cycles of iterations that received packets; the stages add up
    /// to it (up to the counters read while the PMD runs).
    pub busy_cycles: u64,
    /// Bursts whose classification and actions were split by stage (one
    /// in N); 0 when the figures marked `estimated` are absent.
    pub sampled_bursts: u64,
    /// The stages, in pipeline order.
    pub stages: Vec<PerfStage>,
}

/// `pmd-perf-show` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmdPerfReply {
    /// One entry per PMD.
    pub pmds: Vec<PmdPerf>,
}

impl Render for PmdPerfReply {
    fn render(&self) -> String {
        let mut s = String::new();
        for p in &self.pmds {
            s += &pmd_heading(p.index, p.core);
            let rx = p.rx_packets.max(1) as f64;
            let busy = p.busy_cycles.max(1) as f64;
            s += &format!(
                "  packets received: {} in {} bursts ({:.1} packets/burst)\n",
                p.rx_packets,
                p.rx_bursts,
                p.rx_packets as f64 / p.rx_bursts.max(1) as f64
            );
            s += &format!(
                "  busy cycles: {} ({:.1} cycles/packet)\n",
                p.busy_cycles,
                p.busy_cycles as f64 / rx
            );
            s += &format!(
                "  {:<40} {:>14} {:>8} {:>7}\n",
                "stage", "cycles", "cyc/pkt", "%busy"
            );
            for st in &p.stages {
                s += &format!(
                    "  {:<40} {:>14} {:>8.1} {:>6.1}%{}\n",
                    st.name,
                    st.cycles,
                    st.cycles as f64 / rx,
                    100.0 * st.cycles as f64 / busy,
                    if st.estimated { " *" } else { "" }
                );
            }
            if p.stages.iter().any(|st| st.estimated) {
                s += &format!(
                    "  * exact total of classification and actions, split in the proportions of {} sampled bursts\n",
                    p.sampled_bursts
                );
            }
        }
        s
    }
}

method!(
    /// Per-PMD cycles by stage (rx, parse, classifier tiers, actions,
    /// conntrack, encap/decap, tx), OVS's `dpif-netdev/pmd-perf-show`.
    PmdPerfShow, "pmd-perf-show", "", (0, 0), Empty => PmdPerfReply,
    aliases = ["dpif-netdev/pmd-perf-show"]);
method!(
    /// Which PMD polls which rx queue.
    PmdRxqShow, "pmd-rxq-show", "", (0, 0), Empty => PmdRxqReply,
    aliases = ["dpif-netdev/pmd-rxq-show"]);
method!(
    /// Exact-match and megaflow cache contents of every PMD.
    DumpCache, "dump-cache", "", (0, 0), Empty => CacheDump);
