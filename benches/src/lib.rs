//! `pktgen` and the benchmark runner: Sluice side by side with OVS-DPDK
//! and the DPDK I/O ceiling (`dpdk-testpmd`), in one run.
//!
//! - [`pcap`]: classic pcap files, written by us (the format is simple);
//! - [`scenario`]: the traffic kinds, their frames and their flow programs;
//! - [`peer`]: starting, programming, measuring and stopping each datapath
//!   under test (`sluiced`, `dpdk-testpmd`, OVS-DPDK), with bounded waits
//!   and kill-on-drop of exactly the processes we started;
//! - [`report`]: the JSON results, the table and the ratios;
//! - [`plot`]: PNG plots of the scale curves.
//!
//! Every figure is measured from the datapath's own counters over a fixed
//! interval and compared only within one run, because the machine may be
//! shared.

#![deny(unsafe_code)]

pub mod pcap;
pub mod scenario;

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

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
