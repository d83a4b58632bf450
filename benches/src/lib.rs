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

use serde_json::json;

use peer::{PeerError, Sluiced};
use report::{ControlTiming, Report};
use runner::{PeerKind, RunConfig, Status, Summary};
use scenario::{Kind, Scenario};

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

fn timing(what: &str, r: Result<Duration, PeerError>) -> ControlTiming {
    let (seconds, note) = match r {
        Ok(d) => (Some(d.as_secs_f64()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    ControlTiming {
        what: what.to_string(),
        peer: PeerKind::Sluiced,
        seconds,
        note,
    }
}

/// Longest time the 100k-Service programming may take.
pub const CONTROL_BUDGET: Duration = Duration::from_secs(90);

/// Control-plane figures on `sluiced`: installing 10k Services x 10
/// endpoints (10k select groups + 10k flows in `flow-bundle`s), changing
/// one endpoint (re-adding one group), then installing 100k (within
/// [`CONTROL_BUDGET`]) and changing one endpoint again.
pub fn control_plane(cfg: &RunConfig) -> Vec<ControlTiming> {
    let mut out = Vec::new();
    let idle = Scenario::new(Kind::L2, 1, 0);
    let started = runner::pcap_for(&idle, &cfg.work_dir.join("pcap")).and_then(|(pcap, frames)| {
        let dir = cfg.work_dir.join("run").join("control-plane");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| PeerError::Io {
            path: dir.clone(),
            source,
        })?;
        Sluiced::start(&cfg.sluiced, &dir, &pcap, frames, &cfg.cores, "")
    });
    let mut s = match started {
        Ok(s) => s,
        Err(e) => {
            out.push(timing("start sluiced for control-plane timings", Err(e)));
            return out;
        }
    };
    eprintln!("pktgen: control plane: programming 10k Services x 10 endpoints ...");
    let ten_k = Scenario::new(Kind::Dnat, 1, 10_000).sluice_program();
    out.push(timing(
        "program 10k Services x 10 endpoints (10k select groups + 10k flows, one flow-bundle)",
        s.program(&ten_k),
    ));
    if out.last().is_some_and(|t| t.seconds.is_some()) {
        // One endpoint change: Service 0's group with endpoint 9 replaced.
        let change = |p: &scenario::FlowProgram| {
            p.groups[0].replace(
                &format!("{}:8080", scenario::endpoint(0, 9)),
                "10.255.255.254:8080",
            )
        };
        out.push(timing(
            "change one endpoint with 10k Services installed (re-add one group)",
            s.timed_call(
                "flow-bundle",
                json!([{"op": "add", "flow": change(&ten_k)}]),
            ),
        ));
        eprintln!(
            "pktgen: control plane: programming 100k Services (at most {CONTROL_BUDGET:?}) ..."
        );
        let hundred_k = Scenario::new(Kind::Dnat, 1, 100_000).sluice_program();
        match s.program_bounded(&hundred_k, Some(CONTROL_BUDGET)) {
            Ok(p) if p.done == p.total => {
                out.push(timing(
                    "program 100k Services x 10 endpoints (10k already present)",
                    Ok(p.elapsed),
                ));
                out.push(timing(
                    "change one endpoint with 100k Services installed (re-add one group)",
                    s.timed_call(
                        "flow-bundle",
                        json!([{"op": "add", "flow": change(&hundred_k)}]),
                    ),
                ));
            }
            Ok(p) => out.push(ControlTiming {
                what: "program 100k Services x 10 endpoints (10k already present)".into(),
                peer: PeerKind::Sluiced,
                seconds: None,
                note: Some(format!(
                    "not finished: {} of {} groups and flows installed after {:.0} s (bundles of 512 KiB)",
                    p.done,
                    p.total,
                    p.elapsed.as_secs_f64()
                )),
            }),
            Err(e) => out.push(timing("program 100k Services x 10 endpoints", Err(e))),
        }
    }
    out
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
    if report.latency.is_none() {
        report
            .not_done
            .push("latency percentiles (run without --no-latency)".to_string());
    }
    report.not_done.extend([
        "memory per flow and per connection".to_string(),
        "OVS-DPDK encap/decap (userspace Geneve port + br-phy + tnl/neigh)".to_string(),
    ]);
}
