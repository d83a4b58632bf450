//! Latency mode: a generator and a sink in another process, connected to
//! the datapath under test by two `net_memif` links.
//!
//! ```text
//!  memif-gen (DPDK primary, CPU 0)            peer (sluiced / testpmd, PMD on CPU 1)
//!   client port "in"  ── in.sock (memif) ──►  server port, OpenFlow port 1
//!   client port "out" ◄─ out.sock (memif) ──  server port, OpenFlow port 2
//! ```
//!
//! The generator (`src/bin/memif-gen.rs`) sends the scenario's 64-byte
//! frames at a fixed offered rate (or unpaced), each carrying a [`Stamp`]
//! (a 16-bit sequence number and the low 32 bits of the TSC when it was
//! sent) in its last [`STAMP_LEN`] bytes, receives them on the other link
//! and records `TSC at receipt - stamp` in a fixed log-bucket
//! [`Histogram`]. Both ends read the same TSC (one process, one machine;
//! the report says whether the CPU has `constant_tsc`). Loss is
//! `sent - received` per run (each run ends with a drain), reordering is a
//! sequence number older than the newest one seen.
//!
//! This module holds the parts without I/O (histogram, stamp, pacing, the
//! per-run statistics and the generator's event lines, all tested here)
//! and the orchestration in the runner's process: start the peer with its
//! two memif server ports in a private directory, program it, run the
//! generator as a child with its own DPDK file prefix, read its results,
//! stop both. Nothing allocates per packet: the generator reuses its
//! bursts and the histogram is allocated once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::peer::{Cores, PeerError, Sluiced, START_TIMEOUT};
use crate::process::{Daemon, ProcessError};
use crate::runner::{PeerKind, Status, Summary};
use crate::scenario::{Kind, Scenario, FRAME_LEN, IN_PORT, OUT_PORT};

// ---------------------------------------------------------------- histogram

/// Linear sub-buckets per power of two, as a power of two: every value
/// below `2 << SUB_BITS` (128) has its own bucket, larger ones fall into
/// buckets `2^-SUB_BITS` (1.6%) of their value wide.
pub const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets covering every `u64`.
pub const BUCKETS: usize = ((65 - SUB_BITS) as usize) << SUB_BITS;

/// A fixed log-linear histogram of `u64` values (cycles): one allocation
/// at construction, none when recording.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket holding `v`.
pub fn bucket_of(v: u64) -> usize {
    if v < SUB {
        v as usize
    } else {
        let e = 63 - v.leading_zeros();
        let shift = e - SUB_BITS;
        ((u64::from(shift) << SUB_BITS) + (v >> shift)) as usize
    }
}

/// The smallest and largest value of bucket `idx`.
pub fn bucket_range(idx: usize) -> (u64, u64) {
    let idx = idx as u64;
    if idx < SUB {
        return (idx, idx);
    }
    let shift = (idx >> SUB_BITS) - 1;
    let m = idx - (shift << SUB_BITS);
    let lo = m << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

/// Quantiles in parts per million, so that ranks are exact integers.
pub mod q {
    /// Median.
    pub const P50: u64 = 500_000;
    /// 90th percentile.
    pub const P90: u64 = 900_000;
    /// 99th percentile.
    pub const P99: u64 = 990_000;
    /// 99.9th percentile.
    pub const P999: u64 = 999_000;
    /// Maximum.
    pub const MAX: u64 = 1_000_000;
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Forgets every value (no allocation).
    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.count = 0;
        self.min = u64::MAX;
        self.max = 0;
        self.sum = 0;
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(bucket_of(v)) {
            *c += 1;
        }
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value, exact.
    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest value, exact.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// Mean, exact.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The nearest-rank quantile `ppm` (parts per million, see [`q`]): the
    /// smallest bucket such that at least `ceil(count * ppm / 1e6)` values
    /// are at or below it, reported as that bucket's largest value
    /// (clamped to the exact min and max). Exact below 128.
    pub fn quantile(&self, ppm: u64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = (u128::from(self.count) * u128::from(ppm.min(q::MAX))).div_ceil(1_000_000);
        let rank = (rank as u64).clamp(1, self.count);
        let mut seen = 0;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (_, hi) = bucket_range(idx);
                return Some(hi.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

// ---------------------------------------------------------------- stamp

/// Bytes of the stamp at the end of every generated frame.
pub const STAMP_LEN: usize = 6;
/// Where the stamp starts: the last bytes of a 60-byte frame (UDP payload
/// for the l2 frames, Ethernet padding after the TCP header for dnat,
/// which NAT leaves alone).
pub const STAMP_OFFSET: usize = FRAME_LEN - STAMP_LEN;

/// What the generator writes into a frame: which packet it is and when it
/// left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Sequence number, wrapping at 2^16 (reordering is detected within
    /// 32768 packets).
    pub seq: u16,
    /// Low 32 bits of the TSC at send time (wraps after 2^32 cycles, about
    /// 1.5 s at 3 GHz: far above any latency measured here).
    pub tsc: u32,
}

impl Stamp {
    /// Writes the stamp into `frame` at [`STAMP_OFFSET`] (big endian);
    /// `false` when the frame is too short.
    #[inline]
    pub fn write(self, frame: &mut [u8]) -> bool {
        let Some(b) = frame.get_mut(STAMP_OFFSET..STAMP_OFFSET + STAMP_LEN) else {
            return false;
        };
        b[0..2].copy_from_slice(&self.seq.to_be_bytes());
        b[2..6].copy_from_slice(&self.tsc.to_be_bytes());
        true
    }

    /// Reads the stamp of `frame`, if it is long enough.
    #[inline]
    pub fn read(frame: &[u8]) -> Option<Stamp> {
        let b = frame.get(STAMP_OFFSET..STAMP_OFFSET + STAMP_LEN)?;
        Some(Stamp {
            seq: u16::from_be_bytes([b[0], b[1]]),
            tsc: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
        })
    }

    /// Cycles between this stamp and `now` (a full TSC reading).
    #[inline]
    pub fn cycles_until(self, now: u64) -> u64 {
        u64::from((now as u32).wrapping_sub(self.tsc))
    }
}

/// Makes a scenario frame stampable: 60 bytes, and an IPv4/UDP checksum
/// of zero (none), since the stamp changes the payload. Returns `None`
/// for frames of another length (Geneve).
pub fn template(frame: &[u8]) -> Option<[u8; FRAME_LEN]> {
    let mut f: [u8; FRAME_LEN] = frame.try_into().ok()?;
    // Ethernet II, IPv4 with a 20-byte header, protocol UDP.
    if f[12..14] == [0x08, 0x00] && f[14] == 0x45 && f[23] == 17 {
        f[40] = 0;
        f[41] = 0;
    }
    Some(f)
}

// ---------------------------------------------------------------- pacing

/// Most frames sent in one burst.
pub const BURST: usize = 32;

/// How many frames to send now: at `pps` (None: unpaced, a full burst),
/// `elapsed` cycles into the phase, `attempted` so far. A backlog (the
/// generator was descheduled) is capped at one burst: missed slots are
/// skipped, not sent in a rush.
#[inline]
pub fn due(pps: Option<u64>, hz: u64, elapsed: u64, attempted: &mut u64) -> usize {
    let Some(pps) = pps else {
        return BURST;
    };
    let target = (u128::from(elapsed) * u128::from(pps) / u128::from(hz.max(1))) as u64;
    let backlog = target.saturating_sub(*attempted);
    if backlog > BURST as u64 {
        *attempted = target - BURST as u64;
        return BURST;
    }
    backlog as usize
}

// ---------------------------------------------------------------- one run

/// Counters and the histogram of one run, in the generator.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Latencies in cycles.
    pub hist: Histogram,
    /// Frames the generator's tx accepted.
    pub sent: u64,
    /// Frames the generator tried to send but its tx (the memif ring)
    /// refused: not part of the offered load that reached the peer.
    pub tx_refused: u64,
    /// Stamped frames received back.
    pub received: u64,
    /// Frames received with a sequence number older than the newest seen.
    pub reordered: u64,
    /// Frames received that carry no stamp (too short) or came back on
    /// the sending link.
    pub stray: u64,
    /// Frames of an earlier run that arrived after its drain (not
    /// counted as received in this one; recognised while the run has sent
    /// fewer than 65536 frames).
    pub late: u64,
    first: Option<u16>,
    newest: Option<u16>,
}

impl RunStats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Clears everything (no allocation); the run's first frame will
    /// carry sequence number `first`.
    pub fn reset(&mut self, first: u16) {
        self.hist.reset();
        self.sent = 0;
        self.tx_refused = 0;
        self.received = 0;
        self.reordered = 0;
        self.stray = 0;
        self.late = 0;
        self.first = Some(first);
        self.newest = None;
    }

    /// Accounts one received frame stamped `stamp`, read at TSC `now`.
    #[inline]
    pub fn receive(&mut self, stamp: Stamp, now: u64) {
        // This run's frames carry `first`, `first + 1`, ... `first + sent
        // - 1` (refused frames give their numbers back): anything else is
        // an earlier run's straggler, as long as the numbers have not
        // wrapped within the run.
        if self.first.is_some_and(|f| {
            self.sent < 1 << 16 && u64::from(stamp.seq.wrapping_sub(f)) >= self.sent
        }) {
            self.late += 1;
            return;
        }
        self.received += 1;
        self.hist.record(stamp.cycles_until(now));
        match self.newest {
            Some(n) if (stamp.seq.wrapping_sub(n) as i16) < 0 => self.reordered += 1,
            _ => self.newest = Some(stamp.seq),
        }
    }

    /// The run's figures, latencies in nanoseconds at `tsc_hz`.
    pub fn summary(&self, offered_pps: Option<u64>, seconds: f64, tsc_hz: u64) -> LatencyRun {
        let ns = |c: Option<u64>| c.map(|c| c as f64 * 1e9 / tsc_hz.max(1) as f64);
        let seconds = seconds.max(1e-9);
        LatencyRun {
            offered_pps,
            seconds,
            sent: self.sent,
            tx_refused: self.tx_refused,
            received: self.received,
            lost: self.sent.saturating_sub(self.received),
            reordered: self.reordered,
            stray: self.stray,
            late: self.late,
            sent_mpps: self.sent as f64 / seconds / 1e6,
            min_ns: ns(self.hist.min()),
            mean_ns: self.hist.mean().map(|c| c * 1e9 / tsc_hz.max(1) as f64),
            p50_ns: ns(self.hist.quantile(q::P50)),
            p90_ns: ns(self.hist.quantile(q::P90)),
            p99_ns: ns(self.hist.quantile(q::P99)),
            p999_ns: ns(self.hist.quantile(q::P999)),
            max_ns: ns(self.hist.max()),
        }
    }
}

/// The figures of one measured run (as the generator prints them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyRun {
    /// Offered packets per second (None: unpaced).
    pub offered_pps: Option<u64>,
    /// Seconds of sending (the drain after it is not counted).
    pub seconds: f64,
    /// Frames sent.
    pub sent: u64,
    /// Frames the generator's own tx refused (memif ring full).
    pub tx_refused: u64,
    /// Frames received back (including during the drain).
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Frames older than the newest already received.
    pub reordered: u64,
    /// Unstamped frames, or frames on the wrong link.
    pub stray: u64,
    /// Frames of the previous run that came back after its drain.
    #[serde(default)]
    pub late: u64,
    /// Million frames per second actually sent.
    pub sent_mpps: f64,
    /// Latency minimum, ns.
    pub min_ns: Option<f64>,
    /// Latency mean, ns.
    pub mean_ns: Option<f64>,
    /// Latency median, ns.
    pub p50_ns: Option<f64>,
    /// Latency 90th percentile, ns.
    pub p90_ns: Option<f64>,
    /// Latency 99th percentile, ns.
    pub p99_ns: Option<f64>,
    /// Latency 99.9th percentile, ns.
    pub p999_ns: Option<f64>,
    /// Latency maximum, ns.
    pub max_ns: Option<f64>,
}

impl LatencyRun {
    /// Lost frames as a percentage of those sent.
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.sent as f64
        }
    }
}

/// A line the generator prints on stdout (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum GenEvent {
    /// Both links are up and a frame made the round trip.
    Ready {
        /// TSC ticks per second.
        tsc_hz: u64,
        /// Whether the generator runs on hugepages.
        hugepages: bool,
    },
    /// One measured run.
    Run {
        /// Its figures.
        run: LatencyRun,
    },
    /// Every rate is done; the generator exits.
    Done,
    /// The generator gives up.
    Error {
        /// Why, as a sentence.
        message: String,
    },
}

impl GenEvent {
    /// The line (no newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event\":\"error\",\"message\":\"cannot encode an event: {e}\"}}")
        })
    }

    /// Parses a line of the generator's output; `None` for other lines
    /// (DPDK's own messages).
    pub fn parse(line: &str) -> Option<GenEvent> {
        line.starts_with("{\"event\"")
            .then(|| serde_json::from_str(line).ok())
            .flatten()
    }
}

/// Parses a rate: Mpps as a number (`0.1`, `1`) or `max` (unpaced).
///
/// # Errors
/// A sentence naming the bad value.
pub fn parse_rate(s: &str) -> Result<Option<u64>, String> {
    let s = s.trim();
    if s == "max" {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 && m <= 1000.0 => Ok(Some((m * 1e6).round() as u64)),
        _ => Err(format!(
            "bad rate '{s}': expected Mpps as a positive number (0.1, 1) or 'max'"
        )),
    }
}

/// A rate as the command line and the table write it.
pub fn rate_label(pps: Option<u64>) -> String {
    match pps {
        None => "max".into(),
        Some(p) => {
            let m = p as f64 / 1e6;
            format!("{m} Mpps")
        }
    }
}

/// Whether /proc/cpuinfo lists `flag` for the CPU.
pub fn cpu_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == flag))
}

// ---------------------------------------------------------------- results

/// Latency of one (peer, scenario, rate), over the runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyOutcome {
    /// Peer.
    pub peer: PeerKind,
    /// Scenario (its frames; the flow program for sluiced).
    pub scenario: Scenario,
    /// Offered packets per second (None: unpaced).
    pub offered_pps: Option<u64>,
    /// Status.
    pub status: Status,
    /// Why it failed or was not run.
    pub reason: Option<String>,
    /// Minimum latency (the floor when nothing interfered), µs.
    #[serde(default)]
    pub min_us: Option<Summary>,
    /// Median (min-max) over the runs of each figure, in microseconds.
    pub p50_us: Option<Summary>,
    /// 90th percentile, µs.
    pub p90_us: Option<Summary>,
    /// 99th percentile, µs.
    pub p99_us: Option<Summary>,
    /// 99.9th percentile, µs.
    pub p999_us: Option<Summary>,
    /// Maximum, µs.
    pub max_us: Option<Summary>,
    /// Mpps actually sent.
    pub sent_mpps: Option<Summary>,
    /// Lost frames, % of those sent.
    pub loss_pct: Option<Summary>,
    /// Reordered frames over all runs.
    pub reordered: u64,
    /// Each run.
    pub runs: Vec<LatencyRun>,
}

impl LatencyOutcome {
    /// An outcome with no runs.
    pub fn failed(
        peer: PeerKind,
        scenario: Scenario,
        offered_pps: Option<u64>,
        status: Status,
        reason: String,
    ) -> Self {
        Self {
            peer,
            scenario,
            offered_pps,
            status,
            reason: Some(reason),
            min_us: None,
            p50_us: None,
            p90_us: None,
            p99_us: None,
            p999_us: None,
            max_us: None,
            sent_mpps: None,
            loss_pct: None,
            reordered: 0,
            runs: Vec::new(),
        }
    }

    /// An outcome summarising `runs`.
    pub fn of(
        peer: PeerKind,
        scenario: Scenario,
        offered_pps: Option<u64>,
        runs: Vec<LatencyRun>,
    ) -> Self {
        let us = |f: fn(&LatencyRun) -> Option<f64>| {
            Summary::of(runs.iter().filter_map(f).map(|ns| ns / 1e3))
        };
        let mut o = Self::failed(peer, scenario, offered_pps, Status::Ok, String::new());
        o.reason = None;
        o.min_us = us(|r| r.min_ns);
        o.p50_us = us(|r| r.p50_ns);
        o.p90_us = us(|r| r.p90_ns);
        o.p99_us = us(|r| r.p99_ns);
        o.p999_us = us(|r| r.p999_ns);
        o.max_us = us(|r| r.max_ns);
        o.sent_mpps = Summary::of(runs.iter().map(|r| r.sent_mpps));
        o.loss_pct = Summary::of(runs.iter().map(LatencyRun::loss_pct));
        o.reordered = runs.iter().map(|r| r.reordered).sum();
        if runs.iter().all(|r| r.received == 0) {
            o.status = Status::Failed;
            o.reason = Some("no frame came back during the measured runs".into());
        }
        o.runs = runs;
        o
    }
}

/// The latency part of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyReport {
    /// TSC ticks per second the generator measured with.
    pub tsc_hz: Option<u64>,
    /// /proc/cpuinfo has `constant_tsc` (the TSC rate does not follow the
    /// CPU frequency).
    pub constant_tsc: bool,
    /// /proc/cpuinfo has `nonstop_tsc` (it keeps counting in idle states).
    pub nonstop_tsc: bool,
    /// Seconds of warm-up per rate.
    pub warmup_s: f64,
    /// Seconds per run.
    pub interval_s: f64,
    /// Runs per rate.
    pub runs: usize,
    /// Every (peer, scenario, rate).
    pub outcomes: Vec<LatencyOutcome>,
    /// Peers not run, with the reason.
    pub not_run: Vec<String>,
    /// Wall-clock seconds the latency mode took (starts included).
    #[serde(default)]
    pub wall_s: f64,
    /// Load average when it ended (the machine may be shared).
    #[serde(default)]
    pub loadavg: String,
    /// Free-text conditions of a latency-only run.
    #[serde(default)]
    pub conditions: String,
}

fn cell(s: Option<Summary>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{:.1}", s.median))
}

impl LatencyReport {
    /// The "Latency (memif)" section of results.md.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nLatency (memif): generator and sink in another process (`memif-gen`, CPU 0), two net_memif links to the peer (PMD on CPU 1); 64-byte frames; µs, median of {} runs of {} s after {} s warm-up per rate:\n",
            self.runs, self.interval_s, self.warmup_s
        );
        let _ = writeln!(
            s,
            "| peer | scenario | offered | sent Mpps | min | p50 | p90 | p99 | p99.9 | max | loss | reordered |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for o in &self.outcomes {
            if o.status != Status::Ok {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:?}: {} | | | | | | | | |",
                    o.peer.name(),
                    o.scenario.label(),
                    rate_label(o.offered_pps),
                    o.status,
                    o.reason
                        .as_deref()
                        .unwrap_or("")
                        .lines()
                        .next()
                        .unwrap_or("")
                        .replace('|', "/")
                );
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                o.peer.name(),
                o.scenario.label(),
                rate_label(o.offered_pps),
                o.sent_mpps
                    .map_or_else(|| "-".into(), |m| format!("{:.2}", m.median)),
                cell(o.min_us),
                cell(o.p50_us),
                cell(o.p90_us),
                cell(o.p99_us),
                cell(o.p999_us),
                cell(o.max_us),
                o.loss_pct
                    .map_or_else(|| "-".into(), |l| format!("{:.3}%", l.median)),
                o.reordered
            );
        }
        let _ = writeln!(
            s,
            "\nmin is the floor when neither side was descheduled; on a shared machine the higher percentiles include time either busy-polling side spent off its CPU (compare sent Mpps with the offered rate). Latency = TSC at receipt - TSC stamped in the frame at send, both read by the generator (TSC {} Hz; constant_tsc: {}, nonstop_tsc: {}); percentiles from a log-linear histogram (buckets 1.6% wide); \"max\" is unpaced, so its latency is mostly queueing in the memif rings; \"sent Mpps\" below the offered rate means the generator lost its core for a while (slots are skipped, not bunched). Loss: frames sent but not back after a drain (100 ms without a frame, at most 1 s; later ones are counted as late in the next run). testpmd-io is the floor of the memif hop. {:.0} s in all; load {} at the end. {}",
            self.tsc_hz.map_or_else(|| "unknown".into(), |h| h.to_string()),
            if self.constant_tsc { "yes" } else { "no" },
            if self.nonstop_tsc { "yes" } else { "no" },
            self.wall_s,
            self.loadavg,
            self.conditions,
        );
        for n in &self.not_run {
            let _ = writeln!(s, "- not run: {n}");
        }
        s
    }
}

// ---------------------------------------------------------------- orchestration

/// How to run the latency mode.
#[derive(Debug, Clone)]
pub struct LatencyConfig {
    /// The `memif-gen` binary.
    pub memif_gen: PathBuf,
    /// The `sluiced` binary.
    pub sluiced: PathBuf,
    /// The `dpdk-testpmd` binary.
    pub testpmd: PathBuf,
    /// Private working directory.
    pub work_dir: PathBuf,
    /// Cores: the generator and EAL main threads on `main`, the peer's
    /// forwarding core on `pmd`.
    pub cores: Cores,
    /// Offered rates in pps (None: unpaced).
    pub rates: Vec<Option<u64>>,
    /// Warm-up per rate.
    pub warmup: Duration,
    /// Length of one run.
    pub interval: Duration,
    /// Runs per rate.
    pub runs: usize,
    /// Peers: sluiced, testpmd-io, ovs-dpdk.
    pub peers: Vec<PeerKind>,
    /// Scenarios (sluiced runs each; testpmd, which ignores headers, the
    /// first).
    pub scenarios: Vec<Scenario>,
    /// DPDK file prefix of the generator.
    pub gen_prefix: String,
}

impl LatencyConfig {
    /// The `memif-gen` beside the running executable (where cargo puts
    /// both).
    pub fn default_memif_gen() -> PathBuf {
        std::env::current_exe()
            .ok()
            .map(|p| p.with_file_name("memif-gen"))
            .unwrap_or_else(|| PathBuf::from("memif-gen"))
    }

    /// Longest time one generator may take: link-up, first round trip,
    /// warm-up and runs of every rate, with margin.
    pub fn gen_timeout(&self) -> Duration {
        let per_rate = self.warmup + (self.interval + DRAIN_MAX) * self.runs as u32 + DRAIN_MAX;
        LINK_TIMEOUT + per_rate * self.rates.len() as u32 + Duration::from_secs(30)
    }
}

/// How long the generator waits for both memif links and a first round
/// trip.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest drain after a run (it ends earlier once the link is quiet).
pub const DRAIN_MAX: Duration = Duration::from_secs(1);
/// A drain ends after this long without a frame (long enough for a peer
/// that lost its core for a scheduler slice on a shared machine).
pub const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// The memif devargs of one side of link `name` (`in` or `out`): a
/// socket file in the private directory (not DPDK's default abstract
/// socket), so that a peer is ready when both files exist.
pub fn memif_devargs(index: u16, role: &str, dir: &Path, name: &str) -> String {
    format!(
        "net_memif{index},role={role},socket={},id=0,socket-abstract=no",
        dir.join(format!("{name}.sock")).display()
    )
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PeerError + '_ {
    move |source| PeerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Starts `memif-gen` for `scenario` against the memif servers in `dir`
/// and collects its runs per rate. Once it has printed `done`,
/// `stop_peer` runs (check and stop the peer) before the generator
/// disconnects: DPDK 22.11's memif server can crash when its client goes
/// away under a polling core, and that crash is not the peer's result.
///
/// # Errors
/// [`PeerError`] when it cannot start, reports an error, dies or times
/// out, or from `stop_peer`.
pub fn run_generator(
    cfg: &LatencyConfig,
    dir: &Path,
    scenario: &Scenario,
    out_queues: u16,
    stop_peer: impl FnOnce() -> Result<(), PeerError>,
) -> Result<(u64, Vec<LatencyRun>), PeerError> {
    let rates: Vec<String> = cfg
        .rates
        .iter()
        .map(|r| r.map_or_else(|| "max".to_string(), |p| format!("{}", p as f64 / 1e6)))
        .collect();
    let mut cmd = Command::new(&cfg.memif_gen);
    cmd.arg("--file-prefix")
        .arg(&cfg.gen_prefix)
        .arg("--core")
        .arg(cfg.cores.main.to_string())
        .arg("--in-devargs")
        .arg(memif_devargs(0, "client", dir, "in"))
        .arg("--out-devargs")
        .arg(memif_devargs(1, "client", dir, "out"))
        .arg("--scenario")
        .arg(scenario.kind.name())
        .arg("--flows")
        .arg(scenario.flows.to_string())
        .arg("--services")
        .arg(scenario.services.to_string())
        .arg("--rates")
        .arg(rates.join(","))
        .arg("--warmup")
        .arg(cfg.warmup.as_secs_f64().to_string())
        .arg("--interval")
        .arg(cfg.interval.as_secs_f64().to_string())
        .arg("--runs")
        .arg(cfg.runs.to_string())
        .arg("--out-queues")
        .arg(out_queues.to_string());
    let mut gen = Daemon::spawn("memif-gen", cmd)?;
    let timeout = cfg.gen_timeout();
    let start = std::time::Instant::now();
    let mut tsc_hz = 0;
    let mut runs = Vec::new();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        // An exit before `done` is an error carrying its output.
        let line = gen.wait_line("its results", left, |l| GenEvent::parse(l).is_some())?;
        match GenEvent::parse(&line.text) {
            Some(GenEvent::Ready { tsc_hz: hz, .. }) => tsc_hz = hz,
            Some(GenEvent::Run { run }) => runs.push(run),
            Some(GenEvent::Done) => break,
            Some(GenEvent::Error { message }) => {
                return Err(ProcessError::Command {
                    command: "memif-gen".into(),
                    status: "gave up".into(),
                    output: message,
                }
                .into())
            }
            None => {}
        }
    }
    stop_peer()?;
    // It exits by itself after `done`, once its EAL has cleaned up its
    // runtime directory; Drop stops it if it does not.
    let exit_by = std::time::Instant::now() + Duration::from_secs(10);
    while gen.exited().is_none() && std::time::Instant::now() < exit_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(gen);
    Ok((tsc_hz, runs))
}

fn private_dir(cfg: &LatencyConfig, peer: PeerKind, sc: &Scenario) -> Result<PathBuf, PeerError> {
    let dir = cfg.work_dir.join("latency").join(format!(
        "{}-{}",
        peer.name(),
        sc.label().replace('/', "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

/// Starts `sluiced` with the two memif server ports in `dir` and programs
/// `scenario`.
///
/// # Errors
/// [`PeerError`] if it does not start or refuses the program.
pub fn start_sluiced(
    cfg: &LatencyConfig,
    dir: &Path,
    scenario: &Scenario,
) -> Result<Sluiced, PeerError> {
    let ports = format!(
        "[port:in]\ndevargs = {}\nofport = {IN_PORT}\n\n[port:out]\ndevargs = {}\nofport = {OUT_PORT}\n",
        memif_devargs(0, "server", dir, "in"),
        memif_devargs(1, "server", dir, "out"),
    );
    let mut s = Sluiced::start_with_ports(
        &cfg.sluiced,
        dir,
        &ports,
        "out",
        16_384,
        &cfg.cores,
        &scenario.sluice_config(),
    )?;
    for call in scenario.sluice_setup() {
        s.setup(&call)?;
    }
    // Sluice's Service flows use a bare `nat`: without the Service table
    // its conntrack would commit the connections untranslated, so the
    // Services go in before the flows.
    let batches = scenario.service_update();
    let p = s.service_update(&batches, None)?;
    if p.done < p.total {
        return Err(PeerError::NotRun(format!(
            "{} of {} service-update batches applied",
            p.done, p.total
        )));
    }
    s.program(&scenario.sluice_program())?;
    Ok(s)
}

/// Starts `dpdk-testpmd --forward-mode=io` between two memif server ports
/// in `dir` and waits for both sockets.
///
/// # Errors
/// [`PeerError`] if it does not start in [`START_TIMEOUT`].
pub fn start_testpmd(cfg: &LatencyConfig, dir: &Path) -> Result<Daemon, PeerError> {
    let prefix = testpmd_prefix();
    let mut cmd = Command::new(&cfg.testpmd);
    cmd.arg("-l")
        .arg(format!("{},{}", cfg.cores.main, cfg.cores.pmd))
        .args([
            "--no-pci",
            "--huge-unlink",
            "--file-prefix",
            &prefix,
            "--vdev",
        ])
        .arg(memif_devargs(0, "server", dir, "in"))
        .arg("--vdev")
        .arg(memif_devargs(1, "server", dir, "out"))
        .args([
            "--",
            "--forward-mode=io",
            "--nb-cores=1",
            "--auto-start",
            "--stats-period=10",
        ]);
    let mut d = Daemon::spawn("testpmd-io", cmd)?;
    let (a, b) = (dir.join("in.sock"), dir.join("out.sock"));
    d.wait_until("its two memif sockets", START_TIMEOUT, || {
        a.exists() && b.exists()
    })?;
    Ok(d)
}

/// Removes the DPDK runtime directory of `prefix` (a stopped peer of ours
/// that did not clean up after SIGTERM).
fn remove_runtime_dir(prefix: &str) {
    let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(prefix));
}

fn testpmd_prefix() -> String {
    format!("sluice-bench-lat-testpmd-{}", std::process::id())
}

fn ovs_prefix() -> String {
    format!("sluice-bench-lat-ovs-{}", std::process::id())
}

/// Measures one peer on one scenario at every rate.
fn measure(
    cfg: &LatencyConfig,
    peer: PeerKind,
    sc: &Scenario,
) -> Result<(u64, Vec<LatencyRun>), PeerError> {
    let dir = private_dir(cfg, peer, sc)?;
    match peer {
        PeerKind::Sluiced => {
            let mut s = start_sluiced(cfg, &dir, sc)?;
            run_generator(cfg, &dir, sc, 1, move || {
                // Frames that did not come back because sluiced died are
                // its exit, not loss.
                crate::peer::Peer::alive(&mut s)?;
                drop(s);
                Ok(())
            })
        }
        PeerKind::TestpmdIo => {
            let t = start_testpmd(cfg, &dir);
            let r = t.and_then(|t| {
                run_generator(cfg, &dir, sc, 1, move || {
                    drop(t);
                    Ok(())
                })
            });
            remove_runtime_dir(&testpmd_prefix());
            r
        }
        PeerKind::OvsDpdk => {
            let program = sc.ovs_program().ok_or_else(|| {
                PeerError::Pending(format!(
                    "the runner has no OVS configuration for {} yet",
                    sc.kind.name()
                ))
            })?;
            let r = OvsMemif::start(cfg, &dir).and_then(|o| {
                o.program(&program)?;
                // OVS's PMD transmits on tx queue 1 (queue 0 is the main
                // thread's): the generator's receiving link needs two
                // queues.
                run_generator(cfg, &dir, sc, 2, move || {
                    drop(o);
                    Ok(())
                })
            });
            remove_runtime_dir(&ovs_prefix());
            r
        }
        other => Err(PeerError::Pending(format!(
            "the latency mode has no {} configuration",
            other.name()
        ))),
    }
}

/// OVS-DPDK with its bridge on the two memif server ports: a private
/// `ovsdb-server` and `ovs-vswitchd` in the run directory, with their own
/// DPDK file prefix.
#[derive(Debug)]
pub struct OvsMemif {
    // Field order is drop order: vswitchd stops before its database.
    vswitchd: Daemon,
    _ovsdb: Daemon,
    dir: PathBuf,
}

const OVS_BRIDGE: &str = "br-lat";

impl OvsMemif {
    fn env(cmd: &mut Command, dir: &Path) {
        crate::peer::ovs_env(cmd, dir);
    }

    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        Self::env(&mut c, &self.dir);
        if program == "ovs-vsctl" {
            c.arg(format!("--db=unix:{}/db.sock", self.dir.display()))
                .arg("--timeout=60");
        }
        c
    }

    /// Starts the daemons in `dir`, adds the bridge with ports `in` (1) and
    /// `out` (2) and waits until `ovs-ofctl show` lists both.
    ///
    /// # Errors
    /// [`PeerError`] if a step fails or times out.
    pub fn start(cfg: &LatencyConfig, dir: &Path) -> Result<Self, PeerError> {
        let paths = crate::peer::OvsPaths::default();
        let (ovsdb, sock) = crate::peer::start_ovsdb(
            &paths,
            dir,
            &cfg.cores,
            &format!("--no-pci --huge-unlink --file-prefix={}", ovs_prefix()),
        )?;
        let mut c = Command::new(&paths.vswitchd);
        Self::env(&mut c, dir);
        c.args(crate::peer::vswitchd_args(dir, &sock));
        let vswitchd = Daemon::spawn("ovs-vswitchd", c)?;
        let mut ovs = Self {
            vswitchd,
            _ovsdb: ovsdb,
            dir: dir.to_path_buf(),
        };
        let port = |name: &str, index: u16, ofport: u16| {
            [
                "--".to_string(),
                "add-port".into(),
                OVS_BRIDGE.into(),
                name.into(),
                "--".into(),
                "set".into(),
                "Interface".into(),
                name.into(),
                "type=dpdk".into(),
                format!(
                    "options:dpdk-devargs={}",
                    memif_devargs(index, "server", dir, name)
                ),
                format!("ofport_request={ofport}"),
            ]
        };
        let mut c = ovs.tool("ovs-vsctl");
        c.args([
            "--", "add-br", OVS_BRIDGE, "--", "set", "bridge", OVS_BRIDGE,
        ])
        .arg("datapath_type=netdev")
        .args(port("in", 0, IN_PORT))
        .args(port("out", 1, OUT_PORT));
        crate::process::run(c, Duration::from_secs(90))?;
        let (a, b) = (dir.join("in.sock"), dir.join("out.sock"));
        let probe = |o: &OvsMemif| {
            let mut c = o.tool("ovs-ofctl");
            c.args(["show", OVS_BRIDGE]);
            crate::process::run(c, Duration::from_secs(10))
                .map(|s| {
                    s.contains(&format!(" {IN_PORT}(in)"))
                        && s.contains(&format!(" {OUT_PORT}(out)"))
                })
                .unwrap_or(false)
                && a.exists()
                && b.exists()
        };
        let start = std::time::Instant::now();
        while !probe(&ovs) {
            if let Some(status) = ovs.vswitchd.exited() {
                return Err(ProcessError::Exited {
                    name: "ovs-vswitchd".into(),
                    status: status.to_string(),
                    tail: ovs.vswitchd.tail(),
                }
                .into());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(ovs
                    .vswitchd
                    .timeout_error(
                        "`ovs-ofctl show` to list both memif ports and their sockets",
                        START_TIMEOUT,
                    )
                    .into());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(ovs)
    }

    /// Installs `program` with `ovs-ofctl -O OpenFlow15 add-groups/add-flows`.
    ///
    /// # Errors
    /// [`PeerError`] if ovs-ofctl fails.
    pub fn program(&self, program: &crate::scenario::FlowProgram) -> Result<(), PeerError> {
        for (what, lines) in [
            ("add-groups", &program.groups),
            ("add-flows", &program.flows),
        ] {
            if lines.is_empty() {
                continue;
            }
            let file = self.dir.join(format!("{what}.txt"));
            let mut text = lines.join("\n");
            text.push('\n');
            std::fs::write(&file, text).map_err(io(&file))?;
            let mut c = self.tool("ovs-ofctl");
            c.args(["-O", "OpenFlow15", what, OVS_BRIDGE]).arg(&file);
            crate::process::run(c, crate::peer::PROGRAM_TIMEOUT)?;
        }
        Ok(())
    }
}

/// Runs the latency mode: every peer on its scenarios at every rate.
/// Never fails: problems become outcomes with a reason.
pub fn run_all(cfg: &LatencyConfig) -> LatencyReport {
    let started = std::time::Instant::now();
    let mut report = LatencyReport {
        constant_tsc: cpu_flag("constant_tsc"),
        nonstop_tsc: cpu_flag("nonstop_tsc"),
        warmup_s: cfg.warmup.as_secs_f64(),
        interval_s: cfg.interval.as_secs_f64(),
        runs: cfg.runs,
        ..LatencyReport::default()
    };
    for &peer in &cfg.peers {
        let scenarios: &[Scenario] = match peer {
            PeerKind::Sluiced => &cfg.scenarios,
            PeerKind::TestpmdIo => cfg.scenarios.get(..1).unwrap_or(&[]),
            PeerKind::OvsDpdk => &cfg.scenarios,
            PeerKind::TestpmdMacswap => continue,
        };
        for sc in scenarios {
            if matches!(sc.kind, Kind::Decap | Kind::Mixed | Kind::DnatNew) {
                report.not_run.push(format!(
                    "{} on {}: its frames are not all 60-byte frames the stamp fits (decap, mixed: Geneve) or every frame is a new connection (dnat-new)",
                    sc.label(),
                    peer.name()
                ));
                continue;
            }
            eprintln!(
                "pktgen: latency: {} on {} (memif) ...",
                sc.label(),
                peer.name()
            );
            match measure(cfg, peer, sc) {
                Ok((hz, runs)) => {
                    report.tsc_hz = report.tsc_hz.or(Some(hz)).filter(|h| *h > 0);
                    for &rate in &cfg.rates {
                        let mine: Vec<LatencyRun> = runs
                            .iter()
                            .filter(|r| r.offered_pps == rate)
                            .cloned()
                            .collect();
                        report
                            .outcomes
                            .push(LatencyOutcome::of(peer, *sc, rate, mine));
                    }
                }
                Err(e) => {
                    let status = if matches!(e, PeerError::Pending(_)) {
                        Status::Pending
                    } else {
                        Status::Failed
                    };
                    eprintln!("pktgen: latency: {} on {}: {e}", sc.label(), peer.name());
                    for &rate in &cfg.rates {
                        report.outcomes.push(LatencyOutcome::failed(
                            peer,
                            *sc,
                            rate,
                            status,
                            e.to_string(),
                        ));
                    }
                }
            }
        }
    }
    report.wall_s = started.elapsed().as_secs_f64();
    eprintln!("pktgen: latency: done in {:.0} s", report.wall_s);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_u64_and_are_contiguous() {
        assert_eq!(BUCKETS, 3776);
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(127), 127);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_range(BUCKETS - 1).1, u64::MAX);
        let mut next = 0u64;
        for idx in 0..BUCKETS {
            let (lo, hi) = bucket_range(idx);
            assert_eq!(
                lo,
                next,
                "bucket {idx} starts where {} ended",
                idx.max(1) - 1
            );
            assert!(hi >= lo);
            assert_eq!(bucket_of(lo), idx);
            assert_eq!(bucket_of(hi), idx);
            // Width at most 1/64 of the bucket's values.
            assert!((hi - lo) <= lo / 64, "bucket {idx}: {lo}..{hi}");
            next = hi.wrapping_add(1);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
    }

    #[test]
    fn percentiles_are_exact_below_128() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(q::P50), None);
        for v in (1..=100).rev() {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(q::P50), Some(50));
        assert_eq!(h.quantile(q::P90), Some(90));
        assert_eq!(h.quantile(q::P99), Some(99));
        assert_eq!(h.quantile(q::P999), Some(100));
        assert_eq!(h.quantile(q::MAX), Some(100));
        assert_eq!(h.quantile(0), Some(1));
        assert_eq!(h.min(), Some(1));
        assert_eq!(h.mean(), Some(50.5));
        // Ten values: p90 is the 9th, not the 10th (no float rounding).
        h.reset();
        for v in 1..=10 {
            h.record(v * 10);
        }
        assert_eq!(h.quantile(q::P90), Some(90));
        assert_eq!(h.quantile(q::P50), Some(50));
        assert_eq!(h.quantile(q::P999), Some(100));
    }

    #[test]
    fn percentiles_of_large_values_are_bucket_tops() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v);
        }
        // 500 lies in [500, 503] (width 4 between 256 and 511).
        assert_eq!(bucket_range(bucket_of(500)), (500, 503));
        assert_eq!(h.quantile(q::P50), Some(503));
        // 900 in [896, 903], 990 in [984, 991], 999 in [992, 999].
        assert_eq!(h.quantile(q::P90), Some(903));
        assert_eq!(h.quantile(q::P99), Some(991));
        assert_eq!(h.quantile(q::P999), Some(999));
        // The top is clamped to the exact maximum, not the bucket's end.
        assert_eq!(h.quantile(q::MAX), Some(1000));
        // One outlier among a million: p99.9 stays low, max sees it.
        h.reset();
        for _ in 0..999_999 {
            h.record(2_000);
        }
        h.record(5_000_000);
        assert_eq!(h.quantile(q::P999), Some(2_015));
        assert_eq!(h.quantile(q::MAX), Some(5_000_000));
        assert_eq!(h.min(), Some(2_000));
    }

    #[test]
    fn stamps_round_trip_and_wrap() {
        let mut f = [0xaau8; FRAME_LEN];
        let s = Stamp {
            seq: 0xbeef,
            tsc: 0x0102_0304,
        };
        assert!(s.write(&mut f));
        assert_eq!(&f[54..60], &[0xbe, 0xef, 1, 2, 3, 4]);
        assert_eq!(
            &f[..54],
            &[0xaa; 54][..],
            "nothing before the stamp changes"
        );
        assert_eq!(Stamp::read(&f), Some(s));
        assert_eq!(Stamp::read(&f[..59]), None);
        assert!(!s.write(&mut [0u8; 10]));
        // 100 cycles later, across a 32-bit wrap of the TSC.
        let sent = Stamp {
            seq: 0,
            tsc: u32::MAX - 39,
        };
        assert_eq!(sent.cycles_until((7u64 << 32) + 60), 100);
        assert_eq!(
            Stamp { seq: 0, tsc: 5 }.cycles_until((3u64 << 32) + 1005),
            1000
        );
    }

    #[test]
    fn udp_templates_lose_their_checksum_and_tcp_keeps_its_own() {
        let l2 = Scenario::new(Kind::L2, 2, 0).frame(1);
        let t = template(&l2).unwrap();
        assert_eq!(&t[40..42], &[0, 0]);
        assert_eq!(&t[..40], &l2[..40]);
        let dnat = Scenario::new(Kind::Dnat, 10, 2).frame(12);
        let t = template(&dnat).unwrap();
        assert_eq!(&t[..], &dnat[..], "TCP frames are unchanged");
        // The stamp lies in the padding after the TCP header.
        let ip_len = u16::from_be_bytes([t[16], t[17]]) as usize;
        assert!(14 + ip_len <= STAMP_OFFSET);
        assert!(template(&Scenario::new(Kind::Decap, 1, 0).frame(0)).is_none());
    }

    #[test]
    fn pacing_sends_on_schedule_and_skips_a_backlog() {
        let hz = 1_000_000_000; // 1 cycle = 1 ns
        let mut attempted = 0;
        // 1 Mpps: one frame per 1000 cycles.
        assert_eq!(due(Some(1_000_000), hz, 999, &mut attempted), 0);
        assert_eq!(due(Some(1_000_000), hz, 1_000, &mut attempted), 1);
        attempted += 1;
        assert_eq!(due(Some(1_000_000), hz, 1_500, &mut attempted), 0);
        assert_eq!(due(Some(1_000_000), hz, 5_000, &mut attempted), 4);
        attempted += 4;
        // 1 ms descheduled: 1000 slots due, one burst sent, the rest skipped.
        assert_eq!(due(Some(1_000_000), hz, 1_005_000, &mut attempted), BURST);
        assert_eq!(attempted, 1_005 - BURST as u64);
        attempted += BURST as u64;
        assert_eq!(due(Some(1_000_000), hz, 1_005_000, &mut attempted), 0);
        assert_eq!(due(None, hz, 0, &mut attempted), BURST);
    }

    #[test]
    fn run_stats_count_loss_and_reordering() {
        let mut r = RunStats::new();
        r.reset(65_534);
        r.sent = 6;
        let at = |seq, tsc| Stamp { seq, tsc };
        r.receive(at(65_533, 100), 5_000); // the previous run's: late
        r.receive(at(65_534, 100), 110);
        r.receive(at(65_535, 100), 120);
        r.receive(at(1, 100), 130); // 0 is late: wrapped, still newer
        r.receive(at(0, 100), 140); // older than 1: reordered
        r.receive(at(2, 100), 150);
        assert_eq!(r.received, 5);
        assert_eq!(r.reordered, 1);
        assert_eq!(r.late, 1);
        let s = r.summary(Some(100_000), 2.0, 1_000_000_000);
        assert_eq!(s.lost, 1);
        assert!((s.loss_pct() - 100.0 / 6.0).abs() < 1e-9);
        assert_eq!(s.p50_ns, Some(30.0));
        assert_eq!(s.p90_ns, Some(50.0));
        assert_eq!(s.max_ns, Some(50.0));
        assert_eq!(s.min_ns, Some(10.0));
        assert_eq!(s.mean_ns, Some(30.0));
        assert!((s.sent_mpps - 3e-6).abs() < 1e-12);
        r.reset(3);
        assert_eq!((r.received, r.sent, r.late, r.hist.count()), (0, 0, 0, 0));
        // 40000 frames in order: none late, none reordered.
        for i in 0..40_000u32 {
            r.sent += 1;
            r.receive(at(3u16.wrapping_add(i as u16), 100), 110);
        }
        assert_eq!((r.received, r.late, r.reordered), (40_000, 0, 0));
    }

    #[test]
    fn events_and_rates_parse() {
        let e = GenEvent::Ready {
            tsc_hz: 2_000_000_000,
            hugepages: true,
        };
        let line = e.line();
        assert!(line.starts_with("{\"event\":\"ready\""), "{line}");
        assert_eq!(GenEvent::parse(&line), Some(e));
        assert_eq!(GenEvent::parse("EAL: Detected 2 lcore(s)"), None);
        assert_eq!(
            GenEvent::parse("{\"event\":\"done\"}"),
            Some(GenEvent::Done)
        );
        assert_eq!(parse_rate("0.1"), Ok(Some(100_000)));
        assert_eq!(parse_rate("1"), Ok(Some(1_000_000)));
        assert_eq!(parse_rate("max"), Ok(None));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
        assert_eq!(rate_label(Some(100_000)), "0.1 Mpps");
        assert_eq!(rate_label(None), "max");
    }

    #[test]
    fn outcome_summary_and_table() {
        let run = |p50: f64| LatencyRun {
            offered_pps: Some(100_000),
            seconds: 1.0,
            sent: 100_000,
            tx_refused: 0,
            received: 99_990,
            lost: 10,
            reordered: 0,
            stray: 0,
            late: 0,
            sent_mpps: 0.1,
            min_ns: Some(1_000.0),
            mean_ns: Some(p50),
            p50_ns: Some(p50),
            p90_ns: Some(p50 * 2.0),
            p99_ns: Some(p50 * 3.0),
            p999_ns: Some(p50 * 4.0),
            max_ns: Some(p50 * 10.0),
        };
        let sc = Scenario::new(Kind::L2, 1000, 0);
        let o = LatencyOutcome::of(
            PeerKind::Sluiced,
            sc,
            Some(100_000),
            vec![run(3_000.0), run(2_000.0), run(4_000.0)],
        );
        assert_eq!(o.status, Status::Ok);
        assert_eq!(o.p50_us.unwrap().median, 3.0);
        assert_eq!(o.p50_us.unwrap().min, 2.0);
        assert!((o.loss_pct.unwrap().median - 0.01).abs() < 1e-9);
        let rep = LatencyReport {
            tsc_hz: Some(2_000_000_000),
            constant_tsc: true,
            runs: 3,
            outcomes: vec![
                o,
                LatencyOutcome::failed(
                    PeerKind::TestpmdIo,
                    sc,
                    None,
                    Status::Failed,
                    "boom".into(),
                ),
            ],
            not_run: vec!["ovs-dpdk: because".into()],
            ..LatencyReport::default()
        };
        let t = rep.table();
        assert!(t.contains("| sluiced | l2/1000f | 0.1 Mpps | 0.10 | 1.0 | 3.0 | 6.0 | 9.0 | 12.0 | 30.0 | 0.010% | 0 |"), "{t}");
        assert!(
            t.contains("| testpmd-io | l2/1000f | max | Failed: boom |"),
            "{t}"
        );
        assert!(t.contains("constant_tsc: yes"));
        assert!(t.contains("not run: ovs-dpdk"));
        let empty = LatencyOutcome::of(PeerKind::Sluiced, sc, None, vec![]);
        assert_eq!(empty.status, Status::Failed);
    }
}
