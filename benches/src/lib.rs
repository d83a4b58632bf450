//! `pktgen` and the benchmark runner: Sluice side by side with OVS-DPDK
//! and the DPDK I/O ceiling (`dpdk-testpmd`), in one run.
//!
//! - [`pcap`]: classic pcap files, written by us (the format is simple);
//! - [`scenario`]: the traffic kinds, their frames and their flow programs;
//! - [`peer`]: starting, programming, measuring and stopping each datapath
//!   under test (`sluiced`, `dpdk-testpmd`, OVS-DPDK), with bounded waits
//!   and kill-on-drop of exactly the processes we started;
//! - [`report`]: the JSON results, the table and the ratios;
//! - [`plot`]: PNG plots of the scale curves;
//! - [`latency`]: the latency mode, a generator and sink in another
//!   process (`memif-gen`) connected to the peer over `net_memif`.
//!
//! Every figure is measured from the datapath's own counters over a fixed
//! interval and compared only within one run, because the machine may be
//! shared.

#![deny(unsafe_code)]

pub mod latency;
pub mod pcap;
pub mod peer;
pub mod plot;
pub mod process;
pub mod report;
pub mod runner;
pub mod scenario;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

use peer::{Ovs, PeerError, Sluiced};
use report::{ControlTiming, MemoryFigure, Report};
use runner::{PeerKind, RunConfig, Status, Summary};
use scenario::{FlowProgram, Kind, Scenario};

/// Writes the frames of `scenario` into a pcap file at `path`; returns the
/// number of frames.
///
/// # Errors
/// [`pcap::PcapError`] if the file cannot be created or written.
pub fn write_pcap(scenario: &scenario::Scenario, path: &Path) -> Result<u64, pcap::PcapError> {
    let mut w = pcap::PcapWriter::new(BufWriter::new(File::create(path)?))?;
    for f in scenario.frames() {
        w.write_frame(&f)?;
    }
    let n = w.frames();
    w.finish()?;
    Ok(n)
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (from `date -u`).
pub fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn timing(what: &str, peer: PeerKind, r: Result<Duration, PeerError>) -> ControlTiming {
    let (seconds, note) = match r {
        Ok(d) => (Some(d.as_secs_f64()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    ControlTiming {
        what: what.to_string(),
        peer,
        seconds,
        note,
    }
}

/// Longest time growing the Service table to 100k Services may take.
pub const CONTROL_BUDGET: Duration = Duration::from_secs(90);
/// Flows installed to measure the memory a flow takes.
pub const MEMORY_FLOWS: u32 = 100_000;
/// Services in the small and the large control-plane table.
pub const CONTROL_SERVICES: (u32, u32) = (10_000, 100_000);

fn per(delta_bytes: i64, n: u64) -> Option<f64> {
    (n > 0).then(|| delta_bytes as f64 / n as f64)
}

fn rss_delta(before: u64, after: u64) -> i64 {
    i64::try_from(after).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX)
}

fn memory_figure(
    what: &str,
    peer: PeerKind,
    before: u64,
    after: u64,
    n: u64,
    unit: &str,
) -> MemoryFigure {
    let delta = rss_delta(before, after);
    MemoryFigure {
        what: what.to_string(),
        peer,
        bytes: per(delta, n),
        detail: Some(format!(
            "VmRSS {:.1} -> {:.1} MiB ({:+.1} MiB) over {n} {unit}",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            delta as f64 / 1048576.0
        )),
        note: None,
    }
}

fn failed_memory(what: &str, peer: PeerKind, e: &PeerError) -> MemoryFigure {
    MemoryFigure {
        what: what.to_string(),
        peer,
        bytes: None,
        detail: None,
        note: Some(e.to_string()),
    }
}

/// Control-plane and memory figures of `sluiced` on an idle datapath:
/// bytes per flow ([`MEMORY_FLOWS`] /32 routes), then the Service table:
/// 10k Services x 10 endpoints applied with one `service-update`, one
/// endpoint change,
/// growth to 100k Services (within [`CONTROL_BUDGET`]; bytes per endpoint
/// from it) and one endpoint change with 100k installed.
pub fn control_plane(cfg: &RunConfig) -> (Vec<ControlTiming>, Vec<MemoryFigure>) {
    let (mut out, mut mem) = (Vec::new(), Vec::new());
    let sl = PeerKind::Sluiced;
    let idle = Scenario::new(Kind::L2, 1, 0);
    let started = runner::pcap_for(&idle, &cfg.work_dir.join("pcap")).and_then(|(pcap, frames)| {
        let dir = runner::run_dir(cfg, "control-plane")?;
        Sluiced::start(&cfg.sluiced, &dir, &pcap, frames, &cfg.cores, "")
    });
    let mut s = match started {
        Ok(s) => s,
        Err(e) => {
            out.push(timing(
                "start sluiced for control-plane timings",
                sl,
                Err(e),
            ));
            return (out, mem);
        }
    };
    eprintln!(
        "pktgen: control plane (sluiced): {MEMORY_FLOWS} flows, then 10k and 100k Services ..."
    );
    let flows_what = format!("bytes per flow ({MEMORY_FLOWS} /32 routes)");
    match s.rss().and_then(|before| {
        let prog = FlowProgram {
            groups: Vec::new(),
            flows: scenario::host_route_flows(MEMORY_FLOWS),
        };
        let took = s.program(&prog)?;
        Ok((before, s.rss()?, took))
    }) {
        Ok((before, after, took)) => {
            mem.push(memory_figure(
                &flows_what,
                sl,
                before,
                after,
                MEMORY_FLOWS.into(),
                "flows",
            ));
            out.push(timing(
                &format!("install {MEMORY_FLOWS} flows (flow-bundles of <= 900 KiB)"),
                sl,
                Ok(took),
            ));
        }
        Err(e) => mem.push(failed_memory(&flows_what, sl, &e)),
    }
    let (small, large) = CONTROL_SERVICES;
    let before = match s.rss() {
        Ok(b) => b,
        Err(e) => {
            mem.push(failed_memory("bytes per Service endpoint", sl, &e));
            return (out, mem);
        }
    };
    let first = scenario::service_batches(0..small, scenario::SERVICE_BATCH_BYTES);
    let what = format!(
        "apply 10k Services x 10 endpoints with service-update ({} atomic update(s))",
        first.len()
    );
    match s.service_update(&first, None) {
        Ok(p) => out.push(timing(&what, sl, Ok(p.elapsed))),
        Err(e) => {
            out.push(timing(&what, sl, Err(e)));
            return (out, mem);
        }
    }
    let change = |s: &mut Sluiced| {
        s.timed_service_update(&scenario::upsert(vec![scenario::service_spec(0, true)]))
    };
    out.push(timing(
        "change one endpoint with 10k Services installed (one service-update)",
        sl,
        change(&mut s),
    ));
    let rest = scenario::service_batches(small..large, scenario::SERVICE_BATCH_BYTES);
    let what = format!(
        "grow to 100k Services x 10 endpoints ({} more update(s))",
        rest.len()
    );
    match s.service_update(&rest, Some(CONTROL_BUDGET)) {
        Ok(p) if p.done == p.total => {
            out.push(timing(&what, sl, Ok(p.elapsed)));
            match s.rss() {
                Ok(after) => mem.push(memory_figure(
                    "bytes per Service endpoint (100k Services x 10 endpoints)",
                    sl,
                    before,
                    after,
                    u64::from(large) * u64::from(scenario::ENDPOINTS_PER_SERVICE),
                    "endpoints",
                )),
                Err(e) => mem.push(failed_memory("bytes per Service endpoint", sl, &e)),
            }
            out.push(timing(
                "change one endpoint with 100k Services installed (one service-update)",
                sl,
                change(&mut s),
            ));
        }
        Ok(p) => out.push(ControlTiming {
            what,
            peer: sl,
            seconds: None,
            note: Some(format!(
                "not finished: {} of {} batches applied after {:.0} s",
                p.done,
                p.total,
                p.elapsed.as_secs_f64()
            )),
        }),
        Err(e) => out.push(timing(&what, sl, Err(e))),
    }
    (out, mem)
}

/// Bytes per flow on ovs-vswitchd: VmRSS before and after `ovs-ofctl
/// add-flows` of [`MEMORY_FLOWS`] /32 routes on an idle bridge (the same
/// measurement as sluiced's), with the install time.
pub fn ovs_flow_memory(cfg: &RunConfig) -> (Option<ControlTiming>, MemoryFigure) {
    let what = format!("bytes per flow ({MEMORY_FLOWS} /32 routes)");
    let op = PeerKind::OvsDpdk;
    eprintln!("pktgen: memory (ovs-dpdk): {MEMORY_FLOWS} flows ...");
    let r = (|| {
        let (pcap, _) =
            runner::pcap_for(&Scenario::new(Kind::L2, 1, 0), &cfg.work_dir.join("pcap"))?;
        let dir = runner::run_dir(cfg, "ovs-memory")?;
        let mut o = Ovs::start(&cfg.ovs, &dir, &pcap, &cfg.cores, Kind::L2)?;
        let before = o.rss()?;
        let prog = FlowProgram {
            groups: Vec::new(),
            flows: scenario::host_route_flows(MEMORY_FLOWS),
        };
        let took = o.program(&prog, cfg.program_budget)?;
        Ok::<_, PeerError>((before, o.rss()?, took))
    })();
    match r {
        Ok((before, after, took)) => (
            Some(timing(
                &format!("install {MEMORY_FLOWS} flows (ovs-ofctl --bundle add-flows)"),
                op,
                Ok(took),
            )),
            memory_figure(&what, op, before, after, MEMORY_FLOWS.into(), "flows"),
        ),
        Err(e) => (None, failed_memory(&what, op, &e)),
    }
}

/// Bytes per connection of each peer, from its `dnat` (established
/// connections) scenario with the most tracked connections (RSS after measuring minus RSS before
/// programming, over the connections then tracked; caches included).
pub fn connection_memory(report: &Report) -> Vec<MemoryFigure> {
    let mut v = Vec::new();
    for peer in [PeerKind::Sluiced, PeerKind::OvsDpdk] {
        let best = report
            .comparison
            .iter()
            .chain(&report.scale)
            .filter(|o| o.peer == peer && o.status == Status::Ok && o.scenario.kind == Kind::Dnat)
            .filter_map(|o| o.memory.map(|m| (o, m)))
            .max_by_key(|(_, m)| m.connections);
        if let Some((o, m)) = best {
            let mut f = memory_figure(
                &format!(
                    "bytes per connection ({}, caches included)",
                    o.scenario.label()
                ),
                peer,
                m.rss_before,
                m.rss_after,
                m.connections,
                "tracked connections",
            );
            f.bytes = m.bytes_per_connection();
            v.push(f);
        }
    }
    v
}

/// Completes a report: estimates testpmd's cycles per packet from the
/// TSC rate sluiced measured, and lists what the runner does not measure.
pub fn finish(report: &mut Report) {
    let hz = Summary::of(
        report
            .comparison
            .iter()
            .chain(&report.scale)
            .filter(|o| o.peer == PeerKind::Sluiced && o.status == Status::Ok)
            .flat_map(|o| o.runs.iter().filter_map(runner::Measurement::cycles_hz)),
    );
    if let Some(hz) = hz {
        for o in report.comparison.iter_mut() {
            if matches!(o.peer, PeerKind::TestpmdIo | PeerKind::TestpmdMacswap) {
                o.estimate_cycles(hz.median);
            }
        }
    }
    // OVS's control-plane figures come from its Service scale points
    // (one OpenFlow bundle of groups, one of flows, while forwarding).
    let ovs: Vec<ControlTiming> = report
        .scale
        .iter()
        .filter(|o| o.peer == PeerKind::OvsDpdk && o.scenario.kind == Kind::Dnat)
        .filter(|o| o.scenario.services >= 10_000)
        .map(|o| ControlTiming {
            what: format!(
                "program {} Services x 10 endpoints ({0} select groups + {0} flows, ovs-ofctl --bundle)",
                o.scenario.services
            ),
            peer: PeerKind::OvsDpdk,
            seconds: o.program_seconds.filter(|_| o.status == Status::Ok),
            note: o.reason.clone(),
        })
        .collect();
    report.control.extend(ovs);
    report.memory.extend(connection_memory(report));
    if report.latency.is_none() {
        report
            .not_done
            .push("latency percentiles (run without --no-latency)".to_string());
    }
}
