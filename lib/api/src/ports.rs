//! Ports: state and counters (`dump-ports`), and packet capture into pcap
//! files (`capture`, `capture-stop`, `capture-status`).

use serde::{Deserialize, Serialize};

use crate::{method, ApiError, Empty, FromArgs, Render};

/// Link state as the device reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// Carrier up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Device counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets dropped on receive (no buffer, queue full).
    pub rx_dropped: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

/// One port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Port name.
    pub name: String,
    /// OpenFlow port number.
    pub ofport: u16,
    /// DPDK driver.
    pub driver: String,
    /// Device arguments it was opened with.
    pub devargs: String,
    /// Link state.
    pub link: LinkState,
    /// Counters.
    pub stats: PortCounters,
}

/// `dump-ports`: all ports, or one by name or number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpPortsRequest {
    /// A port name or OpenFlow number; all ports when absent.
    #[serde(default)]
    pub port: Option<String>,
}

impl FromArgs for DumpPortsRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        Ok(DumpPortsRequest {
            port: a.first().cloned(),
        })
    }
}

/// `dump-ports` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDump {
    /// The bridge name.
    pub bridge: String,
    /// The ports selected.
    pub ports: Vec<PortInfo>,
}

impl Render for PortDump {
    fn render(&self) -> String {
        let mut s = format!("{}: {} ports\n", self.bridge, self.ports.len());
        for p in &self.ports {
            let (l, st) = (&p.link, &p.stats);
            s += &format!(
                "  port {:>2} ({}): {} {}, driver {} ({})\n           rx pkts={}, bytes={}, drop={}, errs={}\n           tx pkts={}, bytes={}, errs={}\n",
                p.ofport,
                p.name,
                if l.up { "link up" } else { "link down" },
                if l.speed_mbps > 0 { format!("{} Mbps", l.speed_mbps) } else { "speed unknown".into() },
                p.driver,
                p.devargs,
                st.rx_packets, st.rx_bytes, st.rx_dropped, st.rx_errors,
                st.tx_packets, st.tx_bytes, st.tx_errors,
            );
        }
        s
    }
}

/// `capture PORT FILE [COUNT]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Port name or number.
    pub port: String,
    /// The pcap file sluiced writes (absolute: sluiced's working directory
    /// is not the caller's).
    pub file: String,
    /// Stop after this many packets (None: until `capture-stop`).
    #[serde(default)]
    pub count: Option<u64>,
}

impl FromArgs for CaptureRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let count = match a.get(2) {
            None => None,
            Some(n) => Some(n.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                ApiError::invalid(format!("COUNT '{n}' is not a positive number"))
            })?),
        };
        Ok(CaptureRequest {
            port: a.first().cloned().unwrap_or_default(),
            file: a.get(1).cloned().unwrap_or_default(),
            count,
        })
    }
}

impl CaptureRequest {
    /// Checks the count (a structured request can say 0).
    pub fn check(&self) -> Result<(), ApiError> {
        if self.count == Some(0) {
            return Err(ApiError::invalid("COUNT '0' is not a positive number"));
        }
        Ok(())
    }
}

/// A capture that started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStarted {
    /// The port as asked.
    pub port: String,
    /// The file.
    pub file: String,
    /// The packet limit.
    pub count: Option<u64>,
}

impl Render for CaptureStarted {
    fn render(&self) -> String {
        format!(
            "capturing port {} (rx and tx) into {}{}; stop with capture-stop\n",
            self.port,
            self.file,
            self.count
                .map(|n| format!(", at most {n} packets"))
                .unwrap_or_default()
        )
    }
}

/// Progress of the capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureProgress {
    /// Port captured (None: no capture running).
    pub port: Option<u16>,
    /// Output file.
    pub file: Option<String>,
    /// Frames written to the file.
    pub written: u64,
    /// Frames not captured because the writer was behind.
    pub missed: u64,
    /// Frames still wanted (u64::MAX: unlimited).
    pub remaining: u64,
}

impl Render for CaptureProgress {
    fn render(&self) -> String {
        // The historical text of capture-status is its JSON.
        serde_json::to_string(self).unwrap_or_default() + "\n"
    }
}

/// What a stopped capture wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStopped {
    /// Frames written.
    pub written: u64,
    /// The file.
    pub file: Option<String>,
    /// Frames not captured (writer behind).
    pub missed: u64,
}

impl Render for CaptureStopped {
    fn render(&self) -> String {
        format!(
            "{} packets written to {}, {} not captured (writer behind)\n",
            self.written,
            self.file.clone().unwrap_or_default(),
            self.missed
        )
    }
}

/// Parses a port given as name or number against `(name, ofport)` pairs.
pub fn find_port<'a, I: IntoIterator<Item = (&'a str, u16)>>(
    ports: I,
    wanted: &str,
) -> Result<u16, ApiError> {
    ports
        .into_iter()
        .find(|(n, o)| *n == wanted || o.to_string() == wanted)
        .map(|(_, o)| o)
        .ok_or_else(|| ApiError::not_found(format!("no port named or numbered '{wanted}'")))
}

method!(
    /// Port state and counters.
    DumpPorts, "dump-ports", "[PORT]", (0, 1), DumpPortsRequest => PortDump);
method!(
    /// Starts capturing a port into a pcap file.
    Capture, "capture", "PORT FILE [COUNT]", (2, 3), CaptureRequest => CaptureStarted);
method!(
    /// Stops the capture.
    CaptureStop, "capture-stop", "", (0, 0), Empty => CaptureStopped);
method!(
    /// The capture's progress.
    CaptureStatus, "capture-status", "", (0, 0), Empty => CaptureProgress);
