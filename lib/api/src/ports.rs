//! Ports: state and counters (`dump-ports`), ports added and removed while
//! `sluiced` forwards (`port-add`, `port-del`), and packet capture into
//! pcap files (`capture`, `capture-stop`, `capture-status`).

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
    /// How the port was created: `config` for a `[port:NAME]` section,
    /// else the [`PortKind`] name it was added with (`pod`, `devargs`).
    #[serde(default)]
    pub kind: String,
    /// Rx queues.
    #[serde(default)]
    pub rx_queues: u16,
    /// The PMD polling each rx queue, in queue order.
    #[serde(default)]
    pub pmds: Vec<usize>,
    /// A pod port asked for with af_xdp and opened with af_packet: why
    /// af_xdp could not work there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
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
            if !p.kind.is_empty() {
                s += &format!(
                    "           kind {}, {} rx queue(s) polled by pmd {}\n",
                    p.kind,
                    p.rx_queues,
                    join_pmds(&p.pmds)
                );
            }
            if let Some(why) = &p.fallback {
                s += &format!("           fell back from af_xdp to af_packet: {why}\n");
            }
        }
        s
    }
}

fn join_pmds(pmds: &[usize]) -> String {
    if pmds.is_empty() {
        return "(none)".into();
    }
    pmds.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The DPDK driver a pod port (a veth host end) is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PodDriver {
    /// `net_af_packet`: a PACKET_MMAP socket on the interface.
    AfPacket,
    /// `net_af_xdp`: an AF_XDP socket on the interface (generic XDP on a
    /// veth).
    AfXdp,
}

impl PodDriver {
    /// The default for pod ports: af_packet. Measured with
    /// `scripts/pod-port-bench.sh` (iperf3 TCP between two pod namespaces
    /// through sluiced, release build, idle 2-core VM, 8 s, two rounds):
    /// af_xdp 4.08 / 4.12 Gbit/s, af_packet 3.28 / 3.41, TAP 2.00 / 2.06
    /// (virtio-user: no vhost_net in this kernel). af_xdp is faster by
    /// about a fifth but is not the default, because an AF_XDP socket owns
    /// its queue: during a hand-over restart (`sluiced --take-over`) the
    /// new process cannot open a pod port until the old one has closed it,
    /// and after a failed hand-over the old one cannot reopen it (both
    /// measured by `e2e_handover`: "Failed to configure xdp socket"),
    /// while several af_packet sockets share an interface. It also needs
    /// as many veth queues as PMDs and CAP_BPF/CAP_SYS_ADMIN. Asked for
    /// (`driver=af-xdp`, `DriverHint::AfXdp`), af_xdp is used where it can
    /// work and a port falls back to af_packet, logged and counted, where
    /// it cannot (too few queues, a missing capability, the open failing).
    pub const DEFAULT: PodDriver = PodDriver::AfPacket;

    /// The name on the wire and in the text form.
    pub fn as_str(self) -> &'static str {
        match self {
            PodDriver::AfPacket => "af-packet",
            PodDriver::AfXdp => "af-xdp",
        }
    }

    /// Reads [`PodDriver::as_str`]'s form.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "af-packet" | "af_packet" => Ok(PodDriver::AfPacket),
            "af-xdp" | "af_xdp" => Ok(PodDriver::AfXdp),
            _ => Err(ApiError::invalid(format!(
                "driver '{s}' is not a pod port driver: use af-packet or af-xdp"
            ))),
        }
    }
}

/// How a port added at run time reaches its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PortKind {
    /// The host end of a pod's veth pair, by Linux interface name; the
    /// interface must exist (the CNI plugin creates it).
    Pod {
        /// The Linux interface.
        iface: String,
        /// The driver (default: [`PodDriver::DEFAULT`]).
        #[serde(default)]
        driver: Option<PodDriver>,
    },
    /// Raw DPDK devargs (`net_tap_x,iface=...`, `virtio_user0,path=...`);
    /// the device name (before the first comma) must be unused.
    Devargs {
        /// The devargs.
        devargs: String,
    },
}

impl PortKind {
    /// `pod` or `devargs` (what `dump-ports` shows).
    pub fn name(&self) -> &'static str {
        match self {
            PortKind::Pod { .. } => "pod",
            PortKind::Devargs { .. } => "devargs",
        }
    }
}

/// `port-add NAME iface=IFACE|devargs=DEVARGS [driver=D] [ofport=N] [rxq=N]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortAddRequest {
    /// The port's name (unique).
    pub name: String,
    /// The OpenFlow port number; the lowest free one when absent.
    #[serde(default)]
    pub ofport: Option<u16>,
    /// What to open.
    pub kind: PortKind,
    /// Rx queues (default 1); spread over the least-loaded PMDs.
    #[serde(default = "one")]
    pub rx_queues: u16,
}

fn one() -> u16 {
    1
}

impl PortAddRequest {
    /// Checks what needs no daemon state: a non-empty name without
    /// whitespace, a usable ofport, 1..=16 rx queues, a non-empty
    /// interface or devargs.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(ApiError::invalid(format!(
                "port name {:?} must be non-empty and contain no whitespace",
                self.name
            )));
        }
        if let Some(o) = self.ofport {
            if o == 0 || o >= 0xff00 {
                return Err(ApiError::invalid(format!(
                    "ofport {o} is not usable: pick 1..65279"
                )));
            }
        }
        if !(1..=16).contains(&self.rx_queues) {
            return Err(ApiError::invalid(format!(
                "rx queues {} out of range: pick 1..16",
                self.rx_queues
            )));
        }
        match &self.kind {
            PortKind::Pod { iface, .. } if iface.is_empty() || iface.len() > 15 => {
                Err(ApiError::invalid(format!(
                    "interface name {iface:?} is not a Linux interface name"
                )))
            }
            PortKind::Devargs { devargs } if devargs.is_empty() => {
                Err(ApiError::invalid("devargs must not be empty"))
            }
            _ => Ok(()),
        }
    }
}

impl FromArgs for PortAddRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let name = a.first().cloned().unwrap_or_default();
        let (mut iface, mut devargs, mut driver, mut ofport, mut rxq) = (None, None, None, None, 1);
        for arg in &a[1.min(a.len())..] {
            let (k, v) = arg.split_once('=').ok_or_else(|| {
                ApiError::invalid(format!(
                    "argument '{arg}' is not KEY=VALUE (iface, devargs, driver, ofport, rxq)"
                ))
            })?;
            let num = |what: &str| {
                v.parse::<u16>()
                    .map_err(|_| ApiError::invalid(format!("{what} '{v}' is not a number")))
            };
            match k {
                "iface" => iface = Some(v.to_string()),
                "devargs" => devargs = Some(v.to_string()),
                "driver" => driver = Some(PodDriver::parse(v)?),
                "ofport" => ofport = Some(num("ofport")?),
                "rxq" => rxq = num("rxq")?,
                _ => {
                    return Err(ApiError::invalid(format!(
                        "unknown argument '{k}': use iface, devargs, driver, ofport or rxq"
                    )))
                }
            }
        }
        let kind = match (iface, devargs) {
            (Some(iface), None) => PortKind::Pod { iface, driver },
            (None, Some(devargs)) if driver.is_none() => PortKind::Devargs { devargs },
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "driver= applies to iface= (pod) ports only; devargs name their driver",
                ))
            }
            _ => {
                return Err(ApiError::invalid(
                    "give exactly one of iface=IFACE (a pod veth host end) or devargs=DEVARGS",
                ))
            }
        };
        Ok(PortAddRequest {
            name,
            ofport,
            kind,
            rx_queues: rxq,
        })
    }
}

/// A port that was added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAdded {
    /// Its name.
    pub name: String,
    /// Its OpenFlow port number.
    pub ofport: u16,
    /// The DPDK driver.
    pub driver: String,
    /// The devargs it was opened with.
    pub devargs: String,
    /// The PMD polling each rx queue.
    pub pmds: Vec<usize>,
}

impl Render for PortAdded {
    fn render(&self) -> String {
        format!(
            "port {} added as ofport {} (driver {}, {}), rx polled by pmd {}\n",
            self.name,
            self.ofport,
            self.driver,
            self.devargs,
            join_pmds(&self.pmds)
        )
    }
}

/// `port-del PORT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDelRequest {
    /// Port name or OpenFlow number.
    pub port: String,
}

impl FromArgs for PortDelRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        Ok(PortDelRequest {
            port: a.first().cloned().unwrap_or_default(),
        })
    }
}

/// A port that was deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDeleted {
    /// Its name.
    pub name: String,
    /// Its OpenFlow port number (free again).
    pub ofport: u16,
    /// Rules removed with it (those matching `in_port` = the port; rules
    /// that output to it stay, as in OVS, and drop until it returns).
    pub flows_removed: u64,
    /// Its counters at deletion.
    pub stats: PortCounters,
}

impl Render for PortDeleted {
    fn render(&self) -> String {
        format!(
            "port {} (ofport {}) deleted; {} in_port rule(s) removed; final rx pkts={}, tx pkts={}\n",
            self.name, self.ofport, self.flows_removed, self.stats.rx_packets, self.stats.tx_packets
        )
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
    /// Adds a port while forwarding.
    PortAdd, "port-add", "NAME iface=IFACE|devargs=DEVARGS [driver=af-packet|af-xdp] [ofport=N] [rxq=N]", (2, 5), PortAddRequest => PortAdded);
method!(
    /// Deletes a port while forwarding.
    PortDel, "port-del", "PORT", (1, 1), PortDelRequest => PortDeleted);
method!(
    /// Starts capturing a port into a pcap file.
    Capture, "capture", "PORT FILE [COUNT]", (2, 3), CaptureRequest => CaptureStarted);
method!(
    /// Stops the capture.
    CaptureStop, "capture-stop", "", (0, 0), Empty => CaptureStopped);
method!(
    /// The capture's progress.
    CaptureStatus, "capture-status", "", (0, 0), Empty => CaptureProgress);

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn port_add_text_form() {
        let r = PortAddRequest::from_args(&args(&["p1", "iface=veth1", "rxq=2"])).unwrap();
        assert_eq!(
            r,
            PortAddRequest {
                name: "p1".into(),
                ofport: None,
                kind: PortKind::Pod {
                    iface: "veth1".into(),
                    driver: None
                },
                rx_queues: 2,
            }
        );
        let r = PortAddRequest::from_args(&args(&["t", "devargs=net_tap_t,iface=t0", "ofport=9"]))
            .unwrap();
        assert_eq!(r.ofport, Some(9));
        assert_eq!(
            r.kind,
            PortKind::Devargs {
                devargs: "net_tap_t,iface=t0".into()
            }
        );
        let e = PortAddRequest::from_args(&args(&["p", "bogus=1"])).unwrap_err();
        assert!(e.message.contains("unknown argument"), "{e}");
        let e = PortAddRequest::from_args(&args(&["p", "ofport=1"])).unwrap_err();
        assert!(e.message.contains("exactly one"), "{e}");
        let e = PortAddRequest::from_args(&args(&["p", "iface=x", "driver=tap"])).unwrap_err();
        assert!(e.message.contains("af-packet"), "{e}");
    }

    #[test]
    fn port_add_json_form_and_checks() {
        let r: PortAddRequest = serde_json::from_value(serde_json::json!({
            "name": "pod-a",
            "kind": {"type": "pod", "iface": "vethA", "driver": "af-xdp"}
        }))
        .unwrap();
        assert_eq!(r.rx_queues, 1);
        assert_eq!(
            r.kind,
            PortKind::Pod {
                iface: "vethA".into(),
                driver: Some(PodDriver::AfXdp)
            }
        );
        r.check().unwrap();
        let mut bad = r.clone();
        bad.ofport = Some(0);
        assert_eq!(
            bad.check().unwrap_err().code,
            crate::ErrorCode::InvalidArgument
        );
        let mut bad = r.clone();
        bad.rx_queues = 0;
        assert!(bad.check().is_err());
        let mut bad = r;
        bad.name = "a b".into();
        assert!(bad.check().is_err());
    }

    #[test]
    fn dump_ports_shows_kind_queues_and_pmds() {
        let d = PortDump {
            bridge: "br".into(),
            ports: vec![PortInfo {
                name: "p".into(),
                ofport: 3,
                kind: "pod".into(),
                rx_queues: 2,
                pmds: vec![0, 1],
                ..Default::default()
            }],
        };
        assert!(
            d.render()
                .contains("kind pod, 2 rx queue(s) polled by pmd 0,1"),
            "{}",
            d.render()
        );
        assert!(!d.render().contains("fell back"), "{}", d.render());
        let mut fb = d.clone();
        fb.ports[0].fallback = Some("the veth has 1 queue, the port needs 2".into());
        assert!(
            fb.render().contains(
                "fell back from af_xdp to af_packet: the veth has 1 queue, the port needs 2"
            ),
            "{}",
            fb.render()
        );
        let wire: PortDump = serde_json::from_str(&serde_json::to_string(&fb).unwrap()).unwrap();
        assert_eq!(wire, fb);
        assert!(!serde_json::to_string(&d).unwrap().contains("fallback"));
    }
}
