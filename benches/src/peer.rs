//! The datapaths under test, each started on the same two DPDK virtual
//! devices: `net_pcap` replaying the scenario forever (OpenFlow port 1) and
//! `net_null,no-rx=1` as the sink (port 2), with one forwarding core.
//!
//! - [`Sluiced`]: our daemon, programmed and measured through its control
//!   socket (`flow-bundle`, `pmd-stats-show` as JSON);
//! - [`Testpmd`]: `dpdk-testpmd --forward-mode=io|macswap`, the I/O
//!   ceiling, measured from its periodic port statistics;
//! - [`Ovs`]: Open vSwitch's DPDK datapath (`ovs-vswitchd-dpdk` with its
//!   own `ovsdb-server`), programmed with `ovs-ofctl` and measured with
//!   `dpif-netdev/pmd-stats-show`.
//!
//! Each peer runs in a private directory (config, sockets, database, logs)
//! with its own DPDK file prefix, as children of the runner; dropping a
//! peer stops exactly the processes it started (see [`crate::process`]).
//! A [`Counters`] snapshot is cumulative; a measurement is the difference
//! of two snapshots over a wall-clock interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sluice_control::ctl_client::CtlClient;
use thiserror::Error;

use crate::process::{self, Daemon, ProcessError};
use crate::scenario::{FlowProgram, IN_PORT, OUT_PORT};

/// How long a daemon may take to start forwarding.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest `flow-bundle` request we send.
pub const BUNDLE_BYTES: usize = 512 * 1024;
/// How long programming may take.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a peer could not be run or measured.
#[derive(Debug, Error)]
pub enum PeerError {
    /// A process failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A file in the private run directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The control socket refused or failed a call.
    #[error("sluiced control socket: {0}")]
    Ctl(String),
    /// The datapath does not support what the scenario needs yet.
    #[error("pending: {0}")]
    Pending(String),
    /// Most packets were dropped during warm-up: the peer cannot forward
    /// this scenario.
    #[error("dropped {dropped} of {received} packets during warm-up ({reasons})")]
    Dropping {
        /// Packets dropped in the window.
        dropped: u64,
        /// Packets received in the window.
        received: u64,
        /// Drop reasons with counts.
        reasons: String,
    },
    /// Counters could not be read.
    #[error("cannot read {peer} counters: {detail}")]
    Counters {
        /// Peer name.
        peer: String,
        /// What was wrong.
        detail: String,
    },
}

/// Cumulative counters of a forwarding core.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets received by the forwarding core.
    pub rx_packets: u64,
    /// Packets sent (None when the peer does not say).
    pub tx_packets: Option<u64>,
    /// Cycles spent on iterations that received packets.
    pub busy_cycles: Option<u64>,
    /// Cycles spent polling empty queues.
    pub idle_cycles: Option<u64>,
    /// Exact-match cache hits.
    pub emc_hits: Option<u64>,
    /// Signature-match cache hits (OVS only).
    pub smc_hits: Option<u64>,
    /// Megaflow (dpcls) hits.
    pub megaflow_hits: Option<u64>,
    /// Upcalls (slow-path classifications).
    pub upcalls: Option<u64>,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
}

fn sub(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(a?.saturating_sub(b.unwrap_or(0)))
}

impl Counters {
    /// `self - before`, saturating.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            tx_packets: sub(self.tx_packets, before.tx_packets),
            busy_cycles: sub(self.busy_cycles, before.busy_cycles),
            idle_cycles: sub(self.idle_cycles, before.idle_cycles),
            emc_hits: sub(self.emc_hits, before.emc_hits),
            smc_hits: sub(self.smc_hits, before.smc_hits),
            megaflow_hits: sub(self.megaflow_hits, before.megaflow_hits),
            upcalls: sub(self.upcalls, before.upcalls),
            drops: self
                .drops
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(before.drops.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }
}

/// A datapath under test.
pub trait Peer {
    /// Name in reports (`sluiced`, `ovs-dpdk`, `testpmd-io`, ...).
    fn name(&self) -> &str;
    /// Reads the cumulative counters; `at` is when they were valid.
    ///
    /// # Errors
    /// [`PeerError::Counters`] or [`PeerError::Ctl`].
    fn counters(&mut self) -> Result<(Counters, Instant), PeerError>;
    /// Checks the peer is still running.
    ///
    /// # Errors
    /// [`PeerError::Process`] if it exited.
    fn alive(&mut self) -> Result<(), PeerError>;
}

fn write(path: &Path, text: &str) -> Result<(), PeerError> {
    std::fs::write(path, text).map_err(|source| PeerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn alive(d: &mut Daemon) -> Result<(), PeerError> {
    match d.exited() {
        Some(status) => Err(ProcessError::Exited {
            name: d.name().to_string(),
            status: status.to_string(),
            tail: d.tail(),
        }
        .into()),
        None => Ok(()),
    }
}

/// Devargs of the traffic source.
pub fn pcap_devargs(pcap: &Path) -> String {
    format!("net_pcap0,rx_pcap={},infinite_rx=1", pcap.display())
}

/// Devargs of the sink.
pub const NULL_DEVARGS: &str = "net_null0,no-rx=1";

/// mbufs needed to preload `frames` frames plus ring and cache headroom.
pub fn mbufs_for(frames: usize) -> usize {
    frames + frames / 16 + 16_384
}

/// Where the peers run.
#[derive(Debug, Clone)]
pub struct Cores {
    /// EAL main / control core.
    pub main: usize,
    /// The one forwarding (PMD) core.
    pub pmd: usize,
}

// ---------------------------------------------------------------- sluiced

/// How far a bounded programming got.
#[derive(Debug, Clone, Copy)]
pub struct Programmed {
    /// Time spent.
    pub elapsed: Duration,
    /// Operations (groups and flows) installed.
    pub done: usize,
    /// Operations in the program.
    pub total: usize,
}

/// `sluiced` with one PMD core.
#[derive(Debug)]
pub struct Sluiced {
    daemon: Daemon,
    ctl: CtlClient,
    /// The control socket.
    pub socket: PathBuf,
}

impl Sluiced {
    /// Writes a config into `dir`, starts `binary`, waits for its `ready`
    /// event and connects to its control socket.
    ///
    /// # Errors
    /// [`PeerError`] if it does not start in [`START_TIMEOUT`].
    pub fn start(
        binary: &Path,
        dir: &Path,
        pcap: &Path,
        frames: usize,
        cores: &Cores,
        extra_config: &str,
    ) -> Result<Self, PeerError> {
        let ports = format!(
            "[port:pcap]\ndevargs = {pcap}\nofport = {IN_PORT}\n\n\
             [port:null]\ndevargs = {NULL_DEVARGS}\nofport = {OUT_PORT}\n",
            pcap = pcap_devargs(pcap),
        );
        Self::start_with_ports(
            binary,
            dir,
            &ports,
            "null",
            mbufs_for(frames),
            cores,
            extra_config,
        )
    }

    /// As [`Sluiced::start`] with other ports: `ports` is the config's
    /// `[port:NAME]` sections, `uplink` one of their names.
    ///
    /// # Errors
    /// As [`Sluiced::start`].
    pub fn start_with_ports(
        binary: &Path,
        dir: &Path,
        ports: &str,
        uplink: &str,
        mbufs: usize,
        cores: &Cores,
        extra_config: &str,
    ) -> Result<Self, PeerError> {
        let socket = dir.join("sluiced.ctl");
        let config = dir.join("sluiced.ini");
        let prefix = format!("sluice-bench-{}", std::process::id());
        let text = format!(
            "[coe]\nnode_type = BAREMETAL\n\n[nsx_node_agent]\novs_bridge = br-bench\novs_uplink_port = {uplink}\n\n\
             [datapath]\ncores = {pmd}\nmain_core = {main}\nfile_prefix = {prefix}\n\
             hugepages = auto\nmbufs = {mbufs}\npipeline = flow\nctl_socket = {socket}\n{extra_config}\n{ports}",
            pmd = cores.pmd,
            main = cores.main,
            socket = socket.display(),
        );
        write(&config, &text)?;
        let mut cmd = Command::new(binary);
        cmd.arg("--config").arg(&config);
        let mut daemon = Daemon::spawn("sluiced", cmd)?;
        daemon.wait_line("{\"event\":\"ready\"", START_TIMEOUT, |l| {
            l.contains("\"event\":\"ready\"")
        })?;
        let mut ctl = CtlClient::connect(&socket).map_err(|e| PeerError::Ctl(e.to_string()))?;
        ctl.set_timeout(Some(PROGRAM_TIMEOUT))
            .map_err(|e| PeerError::Ctl(e.to_string()))?;
        Ok(Self {
            daemon,
            ctl,
            socket,
        })
    }

    /// Installs `program` with `flow-bundle` calls of at most
    /// [`BUNDLE_BYTES`] each (the control socket accepts messages up to
    /// 1 MiB), groups before flows; returns how long the calls took.
    ///
    /// # Errors
    /// [`PeerError::Pending`] if sluiced rejects the program (a feature the
    /// scenario needs does not exist yet), [`PeerError::Ctl`] otherwise.
    pub fn program(&mut self, program: &FlowProgram) -> Result<Duration, PeerError> {
        self.program_bounded(program, None).map(|p| p.elapsed)
    }

    /// As [`Sluiced::program`], but stops sending bundles once `budget`
    /// has passed; says how far it got.
    ///
    /// # Errors
    /// As [`Sluiced::program`].
    pub fn program_bounded(
        &mut self,
        program: &FlowProgram,
        budget: Option<Duration>,
    ) -> Result<Programmed, PeerError> {
        let mut bundles: Vec<Vec<Value>> = vec![Vec::new()];
        let mut size = 0;
        for f in program.groups.iter().chain(&program.flows) {
            if size + f.len() + 32 > BUNDLE_BYTES && size > 0 {
                bundles.push(Vec::new());
                size = 0;
            }
            size += f.len() + 32;
            if let Some(b) = bundles.last_mut() {
                b.push(json!({"op": "add", "flow": f}));
            }
        }
        let total = program.groups.len() + program.flows.len();
        let mut done = 0;
        let start = Instant::now();
        for ops in bundles.into_iter().filter(|b| !b.is_empty()) {
            if budget.is_some_and(|b| start.elapsed() >= b) {
                break;
            }
            let n = ops.len();
            match self.ctl.call_method("flow-bundle", Value::Array(ops)) {
                Ok(_) => done += n,
                Err(e @ sluice_control::ctl_client::ClientError::Server { .. }) => {
                    return Err(PeerError::Pending(format!(
                        "sluiced rejected the flow program: {e}"
                    )))
                }
                Err(e) => return Err(PeerError::Ctl(e.to_string())),
            }
        }
        Ok(Programmed {
            elapsed: start.elapsed(),
            done,
            total,
        })
    }

    /// Runs text command `command` with `args`.
    ///
    /// # Errors
    /// [`PeerError::Pending`] if sluiced refuses it (the feature is
    /// missing), [`PeerError::Ctl`] if it cannot be asked.
    pub fn command(&mut self, command: &str, args: &[String]) -> Result<String, PeerError> {
        match self.ctl.call(command, args) {
            Ok(s) => Ok(s),
            Err(e @ sluice_control::ctl_client::ClientError::Server { .. }) => {
                Err(PeerError::Pending(format!(
                    "sluiced refused `{command} {}`: {e}",
                    args.join(" ")
                )))
            }
            Err(e) => Err(PeerError::Ctl(e.to_string())),
        }
    }

    /// Runs a control-socket method with JSON params and times it.
    ///
    /// # Errors
    /// [`PeerError::Ctl`].
    pub fn timed_call(&mut self, method: &str, params: Value) -> Result<Duration, PeerError> {
        let start = Instant::now();
        self.ctl
            .call_method(method, params)
            .map_err(|e| PeerError::Ctl(e.to_string()))?;
        Ok(start.elapsed())
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

/// Parses the JSON of sluiced's structured `pmd-stats-show` (summed over
/// PMDs).
pub fn parse_sluiced_stats(v: &Value) -> Result<Counters, String> {
    let pmds = v
        .as_array()
        .ok_or_else(|| format!("expected an array of PMDs, got {v}"))?;
    let mut c = Counters {
        tx_packets: Some(0),
        busy_cycles: Some(0),
        idle_cycles: Some(0),
        emc_hits: Some(0),
        megaflow_hits: Some(0),
        upcalls: Some(0),
        ..Counters::default()
    };
    let get = |p: &Value, k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
    for p in pmds {
        c.rx_packets += get(p, "rx_packets");
        let add = |slot: &mut Option<u64>, k: &str| *slot = Some(slot.unwrap_or(0) + get(p, k));
        add(&mut c.tx_packets, "tx_packets");
        add(&mut c.busy_cycles, "busy_cycles");
        add(&mut c.idle_cycles, "idle_cycles");
        add(&mut c.emc_hits, "emc_hits");
        add(&mut c.megaflow_hits, "megaflow_hits");
        add(&mut c.upcalls, "upcalls");
        if let Some(d) = p.get("drops").and_then(Value::as_object) {
            for (k, n) in d {
                *c.drops.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    Ok(c)
}

impl Peer for Sluiced {
    fn name(&self) -> &str {
        "sluiced"
    }

    fn counters(&mut self) -> Result<(Counters, Instant), PeerError> {
        let v = self
            .ctl
            .call_json::<&str>("pmd-stats-show", &[])
            .map_err(|e| PeerError::Ctl(e.to_string()))?;
        let at = Instant::now();
        let c = parse_sluiced_stats(&v).map_err(|detail| PeerError::Counters {
            peer: "sluiced".into(),
            detail,
        })?;
        Ok((c, at))
    }

    fn alive(&mut self) -> Result<(), PeerError> {
        alive(&mut self.daemon)
    }
}

// ---------------------------------------------------------------- testpmd

/// `dpdk-testpmd` forwarding pcap → null in io or macswap mode.
#[derive(Debug)]
pub struct Testpmd {
    daemon: Daemon,
    name: String,
    /// Latest (time, cumulative RX-packets of port 0, TX-packets of port 1).
    latest: Option<(Instant, u64, u64)>,
    in_port0: bool,
    in_port1: bool,
    pending_rx: Option<u64>,
}

impl Testpmd {
    /// Starts testpmd with `--forward-mode=mode` and waits for its first
    /// statistics.
    ///
    /// # Errors
    /// [`PeerError`] if it does not start in [`START_TIMEOUT`].
    pub fn start(
        binary: &Path,
        mode: &str,
        pcap: &Path,
        frames: usize,
        cores: &Cores,
    ) -> Result<Self, PeerError> {
        let prefix = format!("sluice-bench-testpmd-{}", std::process::id());
        // testpmd buffers stdout on a pipe; stdbuf makes it line-buffered so
        // that each statistics block is timed when it is printed.
        let mut cmd = Command::new("stdbuf");
        cmd.arg("-oL")
            .arg(binary)
            .arg("-l")
            .arg(format!("{},{}", cores.main, cores.pmd))
            .args(["--no-pci", "--file-prefix", &prefix, "--vdev"])
            .arg(pcap_devargs(pcap))
            .args(["--vdev", NULL_DEVARGS, "--"])
            .arg(format!("--forward-mode={mode}"))
            .arg(format!("--total-num-mbufs={}", mbufs_for(frames)))
            .args(["--nb-cores=1", "--auto-start", "--stats-period=1"]);
        let daemon = Daemon::spawn(&format!("testpmd-{mode}"), cmd)?;
        let mut t = Self {
            daemon,
            name: format!("testpmd-{mode}"),
            latest: None,
            in_port0: false,
            in_port1: false,
            pending_rx: None,
        };
        let start = Instant::now();
        while t.latest.is_none() {
            if start.elapsed() > START_TIMEOUT {
                return Err(t
                    .daemon
                    .timeout_error("its first port statistics", START_TIMEOUT)
                    .into());
            }
            t.poll_wait(Duration::from_millis(200))?;
        }
        Ok(t)
    }

    fn feed(&mut self, at: Instant, text: &str) {
        if text.contains("NIC statistics for port 0") {
            (self.in_port0, self.in_port1) = (true, false);
        } else if text.contains("NIC statistics for port 1") {
            (self.in_port0, self.in_port1) = (false, true);
        } else if let Some(n) = stat(text, "RX-packets:") {
            if self.in_port0 {
                self.pending_rx = Some(n);
            }
        } else if let Some(n) = stat(text, "TX-packets:") {
            if self.in_port1 {
                if let Some(rx) = self.pending_rx.take() {
                    self.latest = Some((at, rx, n));
                }
                self.in_port1 = false;
            }
        }
    }

    fn poll_wait(&mut self, wait: Duration) -> Result<(), PeerError> {
        std::thread::sleep(wait);
        for l in self.daemon.drain() {
            self.feed(l.at, &l.text);
        }
        alive(&mut self.daemon)
    }
}

/// The number after `key` in a testpmd statistics line.
fn stat(line: &str, key: &str) -> Option<u64> {
    let rest = line.split(key).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

impl Peer for Testpmd {
    fn name(&self) -> &str {
        &self.name
    }

    fn counters(&mut self) -> Result<(Counters, Instant), PeerError> {
        // Wait for a fresh statistics block (printed every second).
        let before = self.latest.map(|l| l.0);
        let start = Instant::now();
        while self.latest.map(|l| l.0) == before {
            if start.elapsed() > Duration::from_secs(5) {
                return Err(PeerError::Counters {
                    peer: self.name.clone(),
                    detail: "no statistics printed for 5 s".into(),
                });
            }
            self.poll_wait(Duration::from_millis(20))?;
        }
        let (at, rx, tx) = self.latest.unwrap_or((Instant::now(), 0, 0));
        Ok((
            Counters {
                rx_packets: rx,
                tx_packets: Some(tx),
                ..Counters::default()
            },
            at,
        ))
    }

    fn alive(&mut self) -> Result<(), PeerError> {
        alive(&mut self.daemon)
    }
}

// ---------------------------------------------------------------- OVS

/// Paths of the Open vSwitch programs.
#[derive(Debug, Clone)]
pub struct OvsPaths {
    /// `ovs-vswitchd` built with DPDK.
    pub vswitchd: PathBuf,
    /// `ovsdb-server`.
    pub ovsdb_server: PathBuf,
    /// The vswitch schema.
    pub schema: PathBuf,
}

impl Default for OvsPaths {
    fn default() -> Self {
        Self {
            vswitchd: "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk".into(),
            ovsdb_server: "/usr/sbin/ovsdb-server".into(),
            schema: "/usr/share/openvswitch/vswitch.ovsschema".into(),
        }
    }
}

/// OVS-DPDK: a private `ovsdb-server` and `ovs-vswitchd` with one bridge.
#[derive(Debug)]
pub struct Ovs {
    // Field order is drop order: vswitchd stops before its database.
    vswitchd: Daemon,
    _ovsdb: Daemon,
    dir: PathBuf,
}

const BRIDGE: &str = "br-bench";

impl Ovs {
    fn env(cmd: &mut Command, dir: &Path) {
        for v in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            cmd.env(v, dir);
        }
    }

    fn tool(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        Self::env(&mut c, &self.dir);
        if program == "ovs-vsctl" {
            c.arg(format!("--db=unix:{}/db.sock", self.dir.display()))
                .arg("--timeout=60");
        }
        if program == "ovs-appctl" {
            c.arg("-t").arg(self.dir.join("ovs-vswitchd.ctl"));
        }
        c
    }

    fn vsctl(&self, args: &[&str]) -> Result<String, PeerError> {
        let mut c = self.tool("ovs-vsctl");
        c.args(args);
        Ok(process::run(c, Duration::from_secs(90))?)
    }

    /// Starts ovsdb-server and ovs-vswitchd in `dir`, adds the bridge with
    /// the pcap and null ports, and waits until `ovs-ofctl show` answers
    /// and both ports have their OpenFlow numbers.
    ///
    /// # Errors
    /// [`PeerError`] if a step fails or times out.
    pub fn start(
        paths: &OvsPaths,
        dir: &Path,
        pcap: &Path,
        cores: &Cores,
    ) -> Result<Self, PeerError> {
        let db = dir.join("conf.db");
        let _ = std::fs::remove_file(&db);
        let mut c = Command::new("ovsdb-tool");
        c.arg("create").arg(&db).arg(&paths.schema);
        process::run(c, Duration::from_secs(30))?;
        let sock = dir.join("db.sock");
        let mut c = Command::new(&paths.ovsdb_server);
        Self::env(&mut c, dir);
        c.arg(&db)
            .arg(format!("--remote=punix:{}", sock.display()))
            .arg(format!(
                "--unixctl={}",
                dir.join("ovsdb-server.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("ovsdb-server.log").display()
            ))
            .args(["--no-chdir", "-vconsole:off"]);
        let mut ovsdb = Daemon::spawn("ovsdb-server", c)?;
        ovsdb.wait_until("its database socket", Duration::from_secs(20), || {
            sock.exists()
        })?;
        let mut c = Command::new("ovs-vsctl");
        Self::env(&mut c, dir);
        c.arg(format!("--db=unix:{}", sock.display()))
            .args([
                "--no-wait",
                "--timeout=30",
                "--",
                "init",
                "--",
                "set",
                "Open_vSwitch",
                ".",
            ])
            .arg("other_config:dpdk-init=true")
            .arg(format!(
                "other_config:dpdk-lcore-mask={:#x}",
                1u64 << cores.main
            ))
            .arg(format!(
                "other_config:pmd-cpu-mask={:#x}",
                1u64 << cores.pmd
            ))
            .arg("other_config:dpdk-extra=--no-pci");
        process::run(c, Duration::from_secs(40))?;
        let mut c = Command::new(&paths.vswitchd);
        Self::env(&mut c, dir);
        c.arg(format!("unix:{}", sock.display()))
            .arg(format!(
                "--unixctl={}",
                dir.join("ovs-vswitchd.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("ovs-vswitchd.log").display()
            ))
            .args(["--no-chdir", "-vconsole:err"]);
        let vswitchd = Daemon::spawn("ovs-vswitchd", c)?;
        let mut ovs = Self {
            vswitchd,
            _ovsdb: ovsdb,
            dir: dir.to_path_buf(),
        };
        let pcap_args = format!("options:dpdk-devargs={}", pcap_devargs(pcap));
        let null_args = format!("options:dpdk-devargs={NULL_DEVARGS}");
        let in_port = format!("ofport_request={IN_PORT}");
        let out_port = format!("ofport_request={OUT_PORT}");
        ovs.vsctl(&[
            "--",
            "add-br",
            BRIDGE,
            "--",
            "set",
            "bridge",
            BRIDGE,
            "datapath_type=netdev",
            "--",
            "add-port",
            BRIDGE,
            "pcap0",
            "--",
            "set",
            "Interface",
            "pcap0",
            "type=dpdk",
            &pcap_args,
            &in_port,
            "--",
            "add-port",
            BRIDGE,
            "null0",
            "--",
            "set",
            "Interface",
            "null0",
            "type=dpdk",
            &null_args,
            &out_port,
        ])?;
        let probe = |o: &Ovs| {
            let mut c = o.tool("ovs-ofctl");
            c.args(["show", BRIDGE]);
            process::run(c, Duration::from_secs(10))
                .map(|s| {
                    s.contains(&format!(" {IN_PORT}(pcap0)"))
                        && s.contains(&format!(" {OUT_PORT}(null0)"))
                })
                .unwrap_or(false)
        };
        let start = Instant::now();
        while !probe(&ovs) {
            alive(&mut ovs.vswitchd)?;
            if start.elapsed() > START_TIMEOUT {
                let err = ovs
                    .vsctl(&["get", "Interface", "pcap0", "error"])
                    .unwrap_or_default();
                return Err(ovs
                    .vswitchd
                    .timeout_error(
                        &format!(
                            "`ovs-ofctl show` to list both DPDK ports (pcap0 error: {})",
                            err.trim()
                        ),
                        START_TIMEOUT,
                    )
                    .into());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(ovs)
    }

    /// Installs `program` with `ovs-ofctl -O OpenFlow15 add-groups/add-flows`;
    /// returns how long it took.
    ///
    /// # Errors
    /// [`PeerError`] if ovs-ofctl fails.
    pub fn program(&mut self, program: &FlowProgram) -> Result<Duration, PeerError> {
        let start = Instant::now();
        for (what, lines) in [
            ("add-groups", &program.groups),
            ("add-flows", &program.flows),
        ] {
            if lines.is_empty() {
                continue;
            }
            let file = self.dir.join(format!("{what}.txt"));
            let mut text = String::new();
            for l in lines {
                let _ = writeln!(text, "{l}");
            }
            write(&file, &text)?;
            let mut c = self.tool("ovs-ofctl");
            c.args(["-O", "OpenFlow15", what, BRIDGE]).arg(&file);
            process::run(c, PROGRAM_TIMEOUT)?;
        }
        Ok(start.elapsed())
    }

    /// The vswitchd pid.
    pub fn pid(&self) -> u32 {
        self.vswitchd.pid()
    }
}

/// Parses `dpif-netdev/pmd-stats-show` text (summed over all threads).
pub fn parse_ovs_stats(text: &str) -> Counters {
    let mut c = Counters {
        busy_cycles: Some(0),
        idle_cycles: Some(0),
        emc_hits: Some(0),
        smc_hits: Some(0),
        megaflow_hits: Some(0),
        upcalls: Some(0),
        ..Counters::default()
    };
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(n) = v
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<u64>().ok())
        else {
            continue;
        };
        let slot = match k {
            "packets received" => {
                c.rx_packets += n;
                continue;
            }
            "processing cycles" => &mut c.busy_cycles,
            "idle cycles" => &mut c.idle_cycles,
            "emc hits" => &mut c.emc_hits,
            "smc hits" => &mut c.smc_hits,
            "megaflow hits" => &mut c.megaflow_hits,
            "miss with success upcall" => &mut c.upcalls,
            "miss with failed upcall" => {
                // Counted as upcalls too: the caches are not warm while
                // upcalls fail (OVS's dynamic flow limit still growing).
                *c.drops.entry("failed_upcall".into()).or_default() += n;
                &mut c.upcalls
            }
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0) + n);
    }
    c
}

/// The `tx pkts=N` of `ovs-ofctl dump-ports BRIDGE PORT`.
pub fn parse_dump_ports_tx(text: &str) -> Option<u64> {
    let rest = text.split("tx pkts=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Peer for Ovs {
    fn name(&self) -> &str {
        "ovs-dpdk"
    }

    fn counters(&mut self) -> Result<(Counters, Instant), PeerError> {
        let mut c = self.tool("ovs-appctl");
        c.arg("dpif-netdev/pmd-stats-show");
        let text = process::run(c, Duration::from_secs(10))?;
        let at = Instant::now();
        let mut counters = parse_ovs_stats(&text);
        // Packets the sink port accepted, live from the datapath (the
        // database's statistics column lags by up to 5 s).
        let mut c = self.tool("ovs-ofctl");
        c.args(["dump-ports", BRIDGE, &OUT_PORT.to_string()]);
        counters.tx_packets = process::run(c, Duration::from_secs(10))
            .ok()
            .and_then(|s| parse_dump_ports_tx(&s));
        Ok((counters, at))
    }

    fn alive(&mut self) -> Result<(), PeerError> {
        alive(&mut self.vswitchd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovs_stats_text_is_summed_over_threads() {
        let text = "main thread:\n  packets received: 0\n  emc hits: 0\n\
            pmd thread numa_id 0 core_id 1:\n  packets received: 1000\n  packet recirculations: 0\n\
            \x20 emc hits: 700\n  smc hits: 0\n  megaflow hits: 290\n  miss with success upcall: 10\n\
            \x20 miss with failed upcall: 0\n  idle cycles: 5000 (5.00%)\n  processing cycles: 95000 (95.00%)\n\
            \x20 avg cycles per packet: 100.00 (100000/1000)\n";
        let c = parse_ovs_stats(text);
        assert_eq!(c.rx_packets, 1000);
        assert_eq!(c.emc_hits, Some(700));
        assert_eq!(c.megaflow_hits, Some(290));
        assert_eq!(c.upcalls, Some(10));
        assert_eq!(c.busy_cycles, Some(95_000));
        assert_eq!(c.idle_cycles, Some(5_000));
    }

    #[test]
    fn sluiced_stats_json_and_difference() {
        let v = json!([{"index":0,"core":1,"rx_packets":100,"tx_packets":90,"rx_bursts":4,
            "busy_cycles":1000,"idle_cycles":10,"emc_hits":80,"megaflow_hits":15,
            "megaflow_misses":5,"upcalls":5,"recirculations":0,"packet_ins":0,
            "drops":{"no_match":10}}]);
        let a = parse_sluiced_stats(&v).unwrap();
        assert_eq!(a.tx_packets, Some(90));
        assert_eq!(a.drops["no_match"], 10);
        let mut b = a.clone();
        b.rx_packets += 50;
        b.drops.insert("no_match".into(), 12);
        let d = b.since(&a);
        assert_eq!(d.rx_packets, 50);
        assert_eq!(d.emc_hits, Some(0));
        assert_eq!(d.drops["no_match"], 2);
        assert!(parse_sluiced_stats(&json!("text")).is_err());
    }

    #[test]
    fn ovs_dump_ports_tx() {
        let t = "OFPST_PORT reply (xid=0x2): 1 ports\n  port  2: rx pkts=0, bytes=0, drop=0, errs=0, frame=0, over=0, crc=0\n           tx pkts=12345, bytes=740700, drop=0, errs=0, coll=0\n";
        assert_eq!(parse_dump_ports_tx(t), Some(12345));
        assert_eq!(parse_dump_ports_tx("nothing"), None);
    }

    #[test]
    fn testpmd_blocks_are_parsed() {
        assert_eq!(
            stat("  RX-packets: 1234  RX-missed: 0", "RX-packets:"),
            Some(1234)
        );
        assert_eq!(stat("  TX-packets: 7 TX-errors: 0", "RX-packets:"), None);
    }

    #[test]
    fn mbufs_cover_the_preloaded_frames() {
        assert!(mbufs_for(1) >= 16_384);
        assert!(mbufs_for(1 << 20) > 1 << 20);
    }
}
