//! The datapaths under test, each started on the same two DPDK virtual
//! devices: `net_pcap` replaying the scenario forever (OpenFlow port 1) and
//! `net_null,no-rx=1` as the sink (port 2), with one forwarding core.
//!
//! - [`Sluiced`]: our daemon, programmed and measured through its control
//!   socket (`flow-bundle`, `service-update`, `pmd-stats-show` as JSON);
//! - [`Testpmd`]: `dpdk-testpmd --forward-mode=io|macswap`, the I/O
//!   ceiling, measured from its periodic port statistics;
//! - [`Ovs`]: Open vSwitch's DPDK datapath (`ovs-vswitchd-dpdk` with its
//!   own `ovsdb-server`, in a private network namespace), laid out per
//!   scenario by [`ovs_layout`] (one bridge, or `br-int` + `br-phy` with a
//!   userspace Geneve port), programmed with `ovs-ofctl` and measured with
//!   `dpif-netdev/pmd-stats-show` and `dpctl/show -s`.
//!
//! Each peer runs in a private directory (config, sockets, database, logs)
//! with its own DPDK file prefix, as children of the runner; dropping a
//! peer stops exactly the processes it started (see [`crate::process`])
//! and removes the `/var/run/dpdk/PREFIX` directory of the prefix it made
//! up. Memory is read as `VmRSS` from `/proc/PID/status`.
//! A [`Counters`] snapshot is cumulative; a measurement is the difference
//! of two snapshots over a wall-clock interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_api::conntrack::{ConnDump, ConnFilter, ConntrackStats, DumpConntrack, FlushConntrack};
use sluice_api::flows::{
    DumpFlows, DumpFlowsRequest, FlowBundle, FlowBundleRequest, FlowDump, FlowOp,
};
use sluice_api::pmd::{PmdStatsReply, PmdStatsShow};
use sluice_api::service::{ServiceUpdate, UpdateServices};
use sluice_api::stack::NeighSet;
use sluice_api::tunnel::AddVtep;
use sluice_api::{Empty, Method};
use sluice_control::{Client, ClientError};
use thiserror::Error;

use crate::process::{self, Daemon, DpdkRuntimeDir, ProcessError};
use crate::scenario::{
    FlowProgram, Kind, Setup, GENEVE_PORT, IN_PORT, LOCAL_VTEP, OUT_PORT, OVS_PATCH_PORT,
    OVS_TUNNEL_PORT, POD_A_MAC, REMOTE_VTEP, REMOTE_VTEP_MAC, ROUTER_MAC, VNI,
};

/// How long a daemon may take to start forwarding.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest `flow-bundle` request we send (sluiced takes requests of up
/// to 64 MiB; 1M flows would not fit in one, so large programs go in
/// chunks of this size, each an atomic bundle).
pub const BUNDLE_BYTES: usize = 900 * 1024;
/// How long programming may take.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Most frames the OVS peer's pcap may have.
///
/// Why: DPDK's `net_pcap` with `infinite_rx=1` copies every frame of the
/// file into an mbuf of the rx queue's mempool when the queue is set up
/// and holds them for the port's life, and OVS 3.1 gives a port that
/// pool: in its default shared-memory mode one pool per (NUMA socket, mbuf
/// size) of `MAX_NB_MBUF` = 4096 x 64 = 262,144 mbufs, a compile-time
/// constant of `lib/netdev-dpdk.c` (`dpdk_calculate_mbufs`), which the
/// port's rx and tx rings and the per-lcore caches also draw from. No
/// setting raises it: `other_config:per-port-memory=true` sizes a pool
/// from the queues instead (rx and tx descriptors, at most 4,096 per
/// queue, plus 16,384: smaller for a one-queue pcap port), and
/// `other_config:shared-mempool-config` only chooses which MTUs and
/// sockets get shared pools. 240,000 leaves the rings their share. A
/// scenario whose pcap needs more frames (dnat with 1M connections: one
/// SYN per connection) is reported as not run for OVS; splitting it over
/// several pcap ports would need each port in its own pool, that is a
/// distinct mbuf size (an MTU in another 1 KiB step), about 0.6 to 1.6 GB
/// of hugepages per port for 64-byte frames.
pub const OVS_MAX_FRAMES: usize = 240_000;

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
    /// Deliberately not run: a limit of the peer or a time bound.
    #[error("not run: {0}")]
    NotRun(String),
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
    /// CPU time the forwarding threads got, summed over them, ns (sluiced:
    /// its `pmd*` threads' `/proc/PID/task/TID/schedstat`). Packets per
    /// PMD CPU-second do not depend on how much of the cores other
    /// processes took, where Mpps does.
    #[serde(default)]
    pub pmd_cpu_ns: Option<u64>,
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
            pmd_cpu_ns: sub(self.pmd_cpu_ns, before.pmd_cpu_ns),
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
    /// Forgets every tracked connection (so that the next packet of each
    /// is a new connection again).
    ///
    /// # Errors
    /// [`PeerError::Pending`] when the peer has no conntrack, others when
    /// it cannot be asked.
    fn flush_connections(&mut self) -> Result<(), PeerError> {
        Err(PeerError::Pending(format!(
            "{} has no connection tracking to flush",
            self.name()
        )))
    }
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
    /// The forwarding (PMD) core (the only one of every peer but sluiced).
    pub pmd: usize,
    /// More PMD cores for sluiced (`pktgen run --extra-pmd-cores`; the
    /// other peers ignore them): its traffic source then has one rx queue
    /// per PMD, each replaying its share of the scenario's frames (see
    /// [`split_pcap`]). Empty: one PMD.
    pub extra_pmds: Vec<usize>,
}

impl Cores {
    /// One PMD core `pmd`, the EAL main core `main`.
    pub fn one(main: usize, pmd: usize) -> Self {
        Cores {
            main,
            pmd,
            extra_pmds: Vec::new(),
        }
    }

    /// sluiced's PMD cores, as its `--cores` option takes them.
    pub fn sluiced_pmds(&self) -> String {
        std::iter::once(self.pmd)
            .chain(self.extra_pmds.iter().copied())
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Splits `pcap` into `n` files beside it, frame `j` going to part
/// `j % n` (the scenarios number their flows and connections so that this
/// gives each part whole flows, as RSS would spread them over queues), and
/// returns their paths; reuses parts already written.
///
/// # Errors
/// [`PeerError::Io`] if the pcap cannot be read or a part written.
pub fn split_pcap(pcap: &Path, n: usize) -> Result<Vec<PathBuf>, PeerError> {
    let io = |path: &Path, e: &dyn std::fmt::Display| PeerError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| pcap.with_extension(format!("rxq{i}of{n}.pcap")))
        .collect();
    if paths.iter().all(|p| p.exists()) {
        return Ok(paths);
    }
    let file = std::fs::File::open(pcap).map_err(|e| io(pcap, &e))?;
    let frames = crate::pcap::read_all(std::io::BufReader::new(file)).map_err(|e| io(pcap, &e))?;
    for (i, path) in paths.iter().enumerate() {
        let f = std::fs::File::create(path).map_err(|e| io(path, &e))?;
        let mut w =
            crate::pcap::PcapWriter::new(std::io::BufWriter::new(f)).map_err(|e| io(path, &e))?;
        for frame in frames.iter().skip(i).step_by(n) {
            w.write_frame(frame).map_err(|e| io(path, &e))?;
        }
        w.finish().map_err(|e| io(path, &e))?;
    }
    Ok(paths)
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

/// `sluiced` with one PMD core, or more ([`Cores::extra_pmds`]).
#[derive(Debug)]
pub struct Sluiced {
    daemon: Daemon,
    // After the daemon: removed once it has stopped.
    _runtime: Option<DpdkRuntimeDir>,
    ctl: Client,
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
        let pmds = 1 + cores.extra_pmds.len();
        let (devargs, rx_queues) = if pmds == 1 {
            (pcap_devargs(pcap), 1)
        } else {
            // One rx queue per PMD, each replaying its part of the frames.
            let parts = split_pcap(pcap, pmds)?;
            let mut d = "net_pcap0".to_string();
            for p in &parts {
                let _ = write!(d, ",rx_pcap={}", p.display());
            }
            d.push_str(",infinite_rx=1");
            (d, pmds)
        };
        let ports = format!(
            "[port:pcap]\ndevargs = {devargs}\nofport = {IN_PORT}\nrx_queues = {rx_queues}\n\n\
             [port:null]\ndevargs = {NULL_DEVARGS}\nofport = {OUT_PORT}\n",
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
        // Unique per start, so that two in one process (tests) never share
        // a DPDK runtime directory.
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("sluice-bench-{}-{n}", std::process::id());
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
        if !cores.extra_pmds.is_empty() {
            // On the command line the PMD cores may include the main
            // core (a 2-core machine has no third one); the config's
            // `cores` may not.
            cmd.arg("--cores").arg(cores.sluiced_pmds());
        }
        let mut daemon = Daemon::spawn("sluiced", cmd)?;
        daemon.wait_line("{\"event\":\"ready\"", START_TIMEOUT, |l| {
            l.contains("\"event\":\"ready\"")
        })?;
        let mut ctl = Client::connect(&socket).map_err(|e| PeerError::Ctl(e.to_string()))?;
        ctl.set_timeout(Some(PROGRAM_TIMEOUT))
            .map_err(|e| PeerError::Ctl(e.to_string()))?;
        Ok(Self {
            daemon,
            _runtime: DpdkRuntimeDir::new(&prefix),
            ctl,
            socket,
        })
    }

    /// Sends `batches` (`service-update` objects) one after the other,
    /// stopping once `budget` has passed; says how far it got (`done` and
    /// `total` count batches).
    ///
    /// # Errors
    /// [`PeerError::Pending`] if sluiced refuses a batch,
    /// [`PeerError::Ctl`] if it cannot be asked.
    pub fn service_update(
        &mut self,
        batches: &[ServiceUpdate],
        budget: Option<Duration>,
    ) -> Result<Programmed, PeerError> {
        let start = Instant::now();
        let mut done = 0;
        for b in batches {
            if budget.is_some_and(|b| start.elapsed() >= b) {
                break;
            }
            self.call::<UpdateServices>(b, "refused a service-update batch")?;
            done += 1;
        }
        Ok(Programmed {
            elapsed: start.elapsed(),
            done,
            total: batches.len(),
        })
    }

    /// One call of `M`: sluiced's refusal (a server error) is reported as
    /// pending with `what`, a transport failure as a control error.
    fn call<M: Method>(&mut self, request: &M::Request, what: &str) -> Result<M::Reply, PeerError> {
        match self.ctl.call::<M>(request) {
            Ok(reply) => Ok(reply),
            Err(e @ ClientError::Api(_)) => Err(PeerError::Pending(format!("sluiced {what}: {e}"))),
            Err(e) => Err(PeerError::Ctl(e.to_string())),
        }
    }

    /// Makes one of the scenario's set-up calls.
    ///
    /// # Errors
    /// As [`Sluiced::service_update`].
    pub fn setup(&mut self, call: &Setup) -> Result<(), PeerError> {
        match call {
            Setup::Vtep(r) => self.call::<AddVtep>(r, "refused add-vtep").map(drop),
            Setup::Neighbour(r) => self.call::<NeighSet>(r, "refused neigh/set").map(drop),
        }
    }

    /// The flow program with its counters.
    ///
    /// # Errors
    /// [`PeerError::Ctl`] or [`PeerError::Pending`].
    pub fn dump_flows(&mut self) -> Result<FlowDump, PeerError> {
        self.call::<DumpFlows>(&DumpFlowsRequest::default(), "refused dump-flows")
    }

    /// The tracked connections.
    ///
    /// # Errors
    /// [`PeerError::Ctl`] or [`PeerError::Pending`].
    pub fn dump_conntrack(&mut self) -> Result<ConnDump, PeerError> {
        self.call::<DumpConntrack>(&ConnFilter::default(), "refused dump-conntrack")
    }

    /// Applies one `service-update` and times it.
    ///
    /// # Errors
    /// [`PeerError::Ctl`] or [`PeerError::Pending`].
    pub fn timed_service_update(&mut self, update: &ServiceUpdate) -> Result<Duration, PeerError> {
        let start = Instant::now();
        self.call::<UpdateServices>(update, "refused a service-update")?;
        Ok(start.elapsed())
    }

    /// Resident memory of the daemon in bytes.
    ///
    /// # Errors
    /// [`PeerError::Counters`] if `/proc` cannot be read.
    pub fn rss(&self) -> Result<u64, PeerError> {
        process::rss_bytes(self.daemon.pid()).map_err(|detail| PeerError::Counters {
            peer: "sluiced".into(),
            detail,
        })
    }

    /// Tracked connections (`conntrack-stats`).
    ///
    /// # Errors
    /// [`PeerError::Ctl`] or [`PeerError::Counters`].
    pub fn connections(&mut self) -> Result<u64, PeerError> {
        self.conntrack_counts().map(|(total, _)| total)
    }

    /// Tracked connections and how many of them are DNATed
    /// (`conntrack-stats`).
    ///
    /// # Errors
    /// [`PeerError::Ctl`] or [`PeerError::Pending`].
    pub fn conntrack_counts(&mut self) -> Result<(u64, u64), PeerError> {
        let st = self.call::<ConntrackStats>(&Empty {}, "refused conntrack-stats")?;
        Ok((st.connections, st.dnat))
    }

    /// Installs `program` with `flow-bundle` calls of at most
    /// [`BUNDLE_BYTES`] each, groups before flows; returns how long the
    /// calls took.
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
        let mut bundles: Vec<Vec<FlowOp>> = vec![Vec::new()];
        let mut size = 0;
        for f in program.groups.iter().chain(&program.flows) {
            if size + f.len() + 32 > BUNDLE_BYTES && size > 0 {
                bundles.push(Vec::new());
                size = 0;
            }
            size += f.len() + 32;
            if let Some(b) = bundles.last_mut() {
                b.push(FlowOp::Add { flow: f.clone() });
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
            self.call::<FlowBundle>(&FlowBundleRequest { ops }, "rejected the flow program")?;
            done += n;
        }
        Ok(Programmed {
            elapsed: start.elapsed(),
            done,
            total,
        })
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

/// Sums sluiced's `pmd-stats-show` over its PMDs.
pub fn sluiced_counters(stats: &PmdStatsReply) -> Counters {
    let mut c = Counters {
        tx_packets: Some(0),
        busy_cycles: Some(0),
        idle_cycles: Some(0),
        emc_hits: Some(0),
        megaflow_hits: Some(0),
        upcalls: Some(0),
        ..Counters::default()
    };
    let add = |slot: &mut Option<u64>, n: u64| *slot = Some(slot.unwrap_or(0) + n);
    for p in &stats.pmds {
        c.rx_packets += p.rx_packets;
        add(&mut c.tx_packets, p.tx_packets);
        add(&mut c.busy_cycles, p.busy_cycles);
        add(&mut c.idle_cycles, p.idle_cycles);
        add(&mut c.emc_hits, p.emc_hits);
        add(&mut c.megaflow_hits, p.megaflow_hits);
        add(&mut c.upcalls, p.upcalls);
        for d in &p.drops {
            *c.drops.entry(d.reason.clone()).or_default() += d.packets;
        }
    }
    c
}

impl Peer for Sluiced {
    fn name(&self) -> &str {
        "sluiced"
    }

    fn counters(&mut self) -> Result<(Counters, Instant), PeerError> {
        let stats = self.call::<PmdStatsShow>(&Empty {}, "refused pmd-stats-show")?;
        let at = Instant::now();
        let mut c = sluiced_counters(&stats);
        c.pmd_cpu_ns = process::threads_cpu_ns(self.daemon.pid(), "pmd").ok();
        Ok((c, at))
    }

    fn alive(&mut self) -> Result<(), PeerError> {
        alive(&mut self.daemon)
    }

    fn flush_connections(&mut self) -> Result<(), PeerError> {
        self.call::<FlushConntrack>(&ConnFilter::default(), "refused flush-conntrack")
            .map(drop)
    }
}

// ---------------------------------------------------------------- testpmd

/// `dpdk-testpmd` forwarding pcap → null in io or macswap mode.
#[derive(Debug)]
pub struct Testpmd {
    daemon: Daemon,
    // After the daemon: testpmd leaves /var/run/dpdk/PREFIX behind.
    _runtime: Option<DpdkRuntimeDir>,
    name: String,
    /// Latest (time, cumulative RX-packets of port 0, TX-packets of port 1).
    latest: Option<(Instant, u64, u64)>,
    in_port0: bool,
    in_port1: bool,
    pending_rx: Option<u64>,
    /// When the block last returned by `counters` was printed.
    returned: Option<Instant>,
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
            // --in-memory: no hugepage files or shared config, so it can
            // be SIGKILLed (SIGTERM takes it about 3 s).
            .args([
                "--no-pci",
                "--in-memory",
                "--file-prefix",
                &prefix,
                "--vdev",
            ])
            .arg(pcap_devargs(pcap))
            .args(["--vdev", NULL_DEVARGS, "--"])
            .arg(format!("--forward-mode={mode}"))
            .arg(format!("--total-num-mbufs={}", mbufs_for(frames)))
            .args(["--nb-cores=1", "--auto-start", "--stats-period=1"]);
        let daemon = Daemon::spawn(&format!("testpmd-{mode}"), cmd)?;
        let mut t = Self {
            daemon,
            _runtime: DpdkRuntimeDir::new(&prefix),
            name: format!("testpmd-{mode}"),
            latest: None,
            in_port0: false,
            in_port1: false,
            pending_rx: None,
            returned: None,
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

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.daemon.kill();
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
        // The newest statistics block (printed every second, timed when
        // printed), waiting only if it was returned already.
        self.poll_wait(Duration::ZERO)?;
        let before = self.returned;
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
        self.returned = Some(at);
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

/// Points every OVS tool and daemon at `dir` (run, database, log and
/// configuration directories), so a peer never touches the system's OVS.
pub fn ovs_env(cmd: &mut Command, dir: &Path) {
    for v in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
        cmd.env(v, dir);
    }
}

/// Creates a fresh database in `dir`, starts `ovsdb-server` on
/// `dir/db.sock` and initialises `Open_vSwitch` for DPDK: `dpdk-init`, the
/// EAL main core and the one PMD core of `cores`, and `dpdk_extra` EAL
/// arguments. Returns the server (stopped on drop) and its socket.
///
/// # Errors
/// [`PeerError`] if a step fails or times out.
pub fn start_ovsdb(
    paths: &OvsPaths,
    dir: &Path,
    cores: &Cores,
    dpdk_extra: &str,
) -> Result<(Daemon, PathBuf), PeerError> {
    let db = dir.join("conf.db");
    let _ = std::fs::remove_file(&db);
    let mut c = Command::new("ovsdb-tool");
    c.arg("create").arg(&db).arg(&paths.schema);
    process::run(c, Duration::from_secs(30))?;
    let sock = dir.join("db.sock");
    let mut c = Command::new(&paths.ovsdb_server);
    ovs_env(&mut c, dir);
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
    ovs_env(&mut c, dir);
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
        .arg(format!("other_config:dpdk-extra={dpdk_extra}"));
    process::run(c, Duration::from_secs(40))?;
    Ok((ovsdb, sock))
}

/// The arguments of an `ovs-vswitchd` working in `dir` on the database at
/// `sock`.
pub fn vswitchd_args(dir: &Path, sock: &Path) -> Vec<String> {
    vec![
        format!("unix:{}", sock.display()),
        format!("--unixctl={}", dir.join("ovs-vswitchd.ctl").display()),
        format!("--log-file={}", dir.join("ovs-vswitchd.log").display()),
        "--no-chdir".into(),
        "-vconsole:err".into(),
    ]
}

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

/// An OVS bridge port of the peer: a DPDK port with its devargs, or the
/// userspace Geneve tunnel port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsPort {
    /// Bridge it is on.
    pub bridge: &'static str,
    /// Port (and interface) name.
    pub name: &'static str,
    /// OpenFlow port number requested.
    pub ofport: u16,
    /// `Interface` columns (`type=...`, `options:...`).
    pub interface: Vec<String>,
}

/// How the OVS peer is laid out for one scenario kind: its bridges and
/// ports, the commands that complete a userspace tunnel, the flows per
/// bridge, where packets leave, and what `ofproto/trace` must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsLayout {
    /// Bridges (all `datapath_type=netdev`) with extra `Bridge` columns.
    pub bridges: Vec<(&'static str, Vec<String>)>,
    /// Ports.
    pub ports: Vec<OvsPort>,
    /// Commands in vswitchd's network namespace (`ip ...`), then
    /// `ovs-appctl` commands, after the ports exist.
    pub netns_commands: Vec<Vec<String>>,
    /// `ovs-appctl` commands.
    pub appctl_commands: Vec<Vec<String>>,
    /// Extra flows per bridge (the scenario's program goes to
    /// [`OvsLayout::program_bridge`]).
    pub extra_flows: Vec<(&'static str, String)>,
    /// The bridge that gets the scenario's program.
    pub program_bridge: &'static str,
    /// `ofproto/trace BRIDGE FLOW` must contain the string (and the
    /// datapath flows must use it once traffic ran).
    pub trace: Vec<(&'static str, String, &'static str)>,
}

/// Bridge of the plain (non-tunnel) OVS layout.
pub const OVS_BRIDGE: &str = "br-bench";

fn dpdk_port(bridge: &'static str, name: &'static str, ofport: u16, devargs: &str) -> OvsPort {
    OvsPort {
        bridge,
        name,
        ofport,
        interface: vec![
            "type=dpdk".into(),
            format!("options:dpdk-devargs={devargs}"),
        ],
    }
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The OVS layout of scenario `kind` with `pcap` as the traffic source.
///
/// Plain kinds: one bridge, pcap port 1 → null port 2. `encap`: pod frames
/// enter `br-int` on the pcap port and go out its Geneve port (remote
/// VTEP [`REMOTE_VTEP`], key [`VNI`]); OVS's native tunnelling routes them
/// through `br-phy`, which holds the local VTEP address on its internal
/// port, and pushes the headers with the neighbour pinned by
/// `tnl/neigh/set`; `br-phy` sends what its internal port emits to the
/// null port. `decap`: Geneve frames enter `br-phy` on the pcap port
/// (addressed to `br-phy`'s MAC, [`ROUTER_MAC`], and the local VTEP), go
/// to its internal port, where OVS pops the tunnel and hands the inner
/// frame to `br-int`'s Geneve port, then out `br-int`'s null port.
pub fn ovs_layout(kind: Kind, pcap: &Path) -> OvsLayout {
    let pcap_args = pcap_devargs(pcap);
    if !kind.uses_overlay() {
        return OvsLayout {
            bridges: vec![(OVS_BRIDGE, Vec::new())],
            ports: vec![
                dpdk_port(OVS_BRIDGE, "pcap0", IN_PORT, &pcap_args),
                dpdk_port(OVS_BRIDGE, "null0", OUT_PORT, NULL_DEVARGS),
            ],
            netns_commands: Vec::new(),
            appctl_commands: Vec::new(),
            extra_flows: Vec::new(),
            program_bridge: OVS_BRIDGE,
            trace: Vec::new(),
        };
    }
    let (int, phy) = ("br-int", "br-phy");
    let geneve = OvsPort {
        bridge: int,
        name: "gnv0",
        ofport: OVS_TUNNEL_PORT,
        interface: vec![
            "type=geneve".into(),
            format!("options:remote_ip={REMOTE_VTEP}"),
            format!("options:key={VNI}"),
        ],
    };
    let vtep_net = Ipv4Addr::from(u32::from(LOCAL_VTEP) & 0xffff_ff00);
    let netns_commands = vec![
        // No IPv6 chatter from the internal port into the measurement.
        vec![
            "sysctl".into(),
            "-qw".into(),
            format!("net.ipv6.conf.{phy}.disable_ipv6=1"),
        ],
        vec![
            "ip".into(),
            "addr".into(),
            "add".into(),
            format!("{LOCAL_VTEP}/24"),
            "dev".into(),
            phy.into(),
        ],
        vec![
            "ip".into(),
            "link".into(),
            "set".into(),
            phy.into(),
            "up".into(),
        ],
    ];
    let appctl_commands = vec![
        vec!["ovs/route/add".into(), format!("{vtep_net}/24"), phy.into()],
        vec![
            "tnl/neigh/set".into(),
            phy.into(),
            REMOTE_VTEP.to_string(),
            fmt_mac(REMOTE_VTEP_MAC),
        ],
    ];
    let bridges = vec![
        (int, Vec::new()),
        (
            phy,
            vec![format!("other-config:hwaddr={}", fmt_mac(ROUTER_MAC))],
        ),
    ];
    // What a pod's frame to the remote pod and a Geneve frame from the
    // remote VTEP entering on the pcap port must show.
    let push_trace = (
        int,
        format!(
            "in_port={IN_PORT},udp,dl_src={},dl_dst={},nw_src=10.244.0.1,nw_dst=10.246.0.2,nw_ttl=64,udp_src=1024,udp_dst=5001",
            fmt_mac(POD_A_MAC),
            fmt_mac(ROUTER_MAC)
        ),
        "tnl_push(",
    );
    let pop_trace = |bridge| {
        (
            bridge,
            format!(
                "in_port={IN_PORT},udp,dl_src={},dl_dst={},nw_src={REMOTE_VTEP},nw_dst={LOCAL_VTEP},nw_ttl=64,udp_src=1024,udp_dst={GENEVE_PORT}",
                fmt_mac(REMOTE_VTEP_MAC),
                fmt_mac(ROUTER_MAC)
            ),
            "tnl_pop(",
        )
    };
    if kind == Kind::Mixed {
        // Everything enters `br-int` on the pcap port and leaves on its
        // null port; `br-phy` is reached over a patch port pair: Geneve
        // frames for the local VTEP go to `br-phy`'s internal port (where
        // OVS pops them), and what OVS pushes towards the remote VTEP
        // comes back over the patch to the null port.
        let patch = |bridge, name, ofport, peer: &str| OvsPort {
            bridge,
            name,
            ofport,
            interface: vec!["type=patch".into(), format!("options:peer={peer}")],
        };
        return OvsLayout {
            bridges,
            ports: vec![
                dpdk_port(int, "pcap0", IN_PORT, &pcap_args),
                dpdk_port(int, "null0", OUT_PORT, NULL_DEVARGS),
                geneve,
                patch(int, "patch-phy", OVS_PATCH_PORT, "patch-int"),
                patch(phy, "patch-int", 1, "patch-phy"),
            ],
            netns_commands,
            appctl_commands,
            extra_flows: vec![
                (
                    int,
                    format!(
                        "priority=1000,in_port={IN_PORT},udp,nw_dst={LOCAL_VTEP},tp_dst={GENEVE_PORT} actions=output:{OVS_PATCH_PORT}"
                    ),
                ),
                (
                    int,
                    format!("priority=1000,in_port={OVS_PATCH_PORT} actions=output:{OUT_PORT}"),
                ),
                (phy, "priority=100,in_port=1 actions=LOCAL".to_string()),
                (phy, "priority=100,in_port=LOCAL actions=output:1".to_string()),
            ],
            program_bridge: int,
            trace: vec![push_trace, pop_trace(int)],
        };
    }
    // encap: pods on br-int, the pushed frames leave br-phy; decap: the
    // Geneve frames enter br-phy and go to its internal port to be popped.
    let (pcap_on, null_on, extra, trace) = if kind == Kind::Encap {
        (
            int,
            phy,
            format!("priority=100,in_port=LOCAL actions=output:{OUT_PORT}"),
            push_trace,
        )
    } else {
        (
            phy,
            int,
            format!("priority=100,in_port={IN_PORT} actions=LOCAL"),
            pop_trace(phy),
        )
    };
    OvsLayout {
        bridges,
        ports: vec![
            dpdk_port(pcap_on, "pcap0", IN_PORT, &pcap_args),
            geneve,
            dpdk_port(null_on, "null0", OUT_PORT, NULL_DEVARGS),
        ],
        netns_commands,
        appctl_commands,
        extra_flows: vec![(phy, extra)],
        program_bridge: int,
        trace: vec![trace],
    }
}

impl OvsLayout {
    /// The one `ovs-vsctl` command line (after `--db`) that adds the
    /// bridges and ports.
    pub fn vsctl_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        for (b, extra) in &self.bridges {
            a.extend(
                [
                    "--",
                    "add-br",
                    b,
                    "--",
                    "set",
                    "bridge",
                    b,
                    "datapath_type=netdev",
                ]
                .map(String::from),
            );
            a.extend(extra.iter().cloned());
        }
        for p in &self.ports {
            a.extend(
                [
                    "--",
                    "add-port",
                    p.bridge,
                    p.name,
                    "--",
                    "set",
                    "Interface",
                    p.name,
                ]
                .map(String::from),
            );
            a.extend(p.interface.iter().cloned());
            a.push(format!("ofport_request={}", p.ofport));
        }
        a
    }
}

/// OVS-DPDK: a private `ovsdb-server` and `ovs-vswitchd` (in a private
/// network namespace, so that its bridges' internal ports and the VTEP
/// address never touch the host's network) with the bridges of an
/// [`OvsLayout`].
#[derive(Debug)]
pub struct Ovs {
    // Field order is drop order: vswitchd stops before its database.
    vswitchd: Daemon,
    _ovsdb: Daemon,
    dir: PathBuf,
    layout: OvsLayout,
}

impl Ovs {
    fn env(cmd: &mut Command, dir: &Path) {
        ovs_env(cmd, dir);
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

    fn vsctl(&self, args: &[String]) -> Result<String, PeerError> {
        let mut c = self.tool("ovs-vsctl");
        c.args(args);
        Ok(process::run(c, Duration::from_secs(90))?)
    }

    /// Runs `ovs-appctl ARGS` on the private vswitchd.
    ///
    /// # Errors
    /// [`PeerError::Process`] if it fails.
    pub fn appctl(&self, args: &[&str]) -> Result<String, PeerError> {
        let mut c = self.tool("ovs-appctl");
        c.args(args);
        Ok(process::run(c, Duration::from_secs(30))?)
    }

    /// Starts ovsdb-server and ovs-vswitchd in `dir` with the layout of
    /// `kind`, completes the tunnel set-up, and waits until `ovs-ofctl
    /// show` lists every port with its OpenFlow number.
    ///
    /// # Errors
    /// [`PeerError`] if a step fails or times out.
    pub fn start(
        paths: &OvsPaths,
        dir: &Path,
        pcap: &Path,
        cores: &Cores,
        kind: Kind,
    ) -> Result<Self, PeerError> {
        let layout = ovs_layout(kind, pcap);
        let (ovsdb, sock) = start_ovsdb(paths, dir, cores, "--no-pci")?;
        // `unshare --net` execs vswitchd in a new network namespace (same
        // pid, so the Daemon still owns exactly it).
        let mut c = Command::new("unshare");
        Self::env(&mut c, dir);
        c.arg("--net")
            .arg("--")
            .arg(&paths.vswitchd)
            .args(vswitchd_args(dir, &sock));
        let vswitchd = Daemon::spawn("ovs-vswitchd", c)?;
        let mut ovs = Self {
            vswitchd,
            _ovsdb: ovsdb,
            dir: dir.to_path_buf(),
            layout,
        };
        ovs.vsctl(&ovs.layout.vsctl_args())?;
        let probe = |o: &Ovs| {
            o.layout.bridges.iter().all(|(b, _)| {
                let mut c = o.tool("ovs-ofctl");
                c.args(["show", b]);
                process::run(c, Duration::from_secs(10))
                    .map(|s| {
                        o.layout
                            .ports
                            .iter()
                            .filter(|p| p.bridge == *b)
                            .all(|p| s.contains(&format!(" {}({})", p.ofport, p.name)))
                    })
                    .unwrap_or(false)
            })
        };
        let start = Instant::now();
        while !probe(&ovs) {
            alive(&mut ovs.vswitchd)?;
            if start.elapsed() > START_TIMEOUT {
                let err = ovs
                    .vsctl(&["get", "Interface", "pcap0", "error"].map(String::from))
                    .unwrap_or_default();
                return Err(ovs
                    .vswitchd
                    .timeout_error(
                        &format!(
                            "`ovs-ofctl show` to list every port (pcap0 error: {})",
                            err.trim()
                        ),
                        START_TIMEOUT,
                    )
                    .into());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let netns = format!("--net=/proc/{}/ns/net", ovs.vswitchd.pid());
        for cmd in &ovs.layout.netns_commands {
            let mut c = Command::new("nsenter");
            c.arg(&netns).arg("--").args(cmd);
            process::run(c, Duration::from_secs(10))?;
        }
        for cmd in &ovs.layout.appctl_commands {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            if let Err(e) = ovs.appctl(&args) {
                // The kernel route of the VTEP address may already be in
                // OVS's table; what matters is that the lookup finds it.
                let ok = cmd.first().is_some_and(|c| c == "ovs/route/add")
                    && ovs
                        .appctl(&["ovs/route/lookup", &REMOTE_VTEP.to_string()])
                        .is_ok_and(|s| s.contains("br-phy"));
                if !ok {
                    return Err(e);
                }
            }
        }
        Ok(ovs)
    }

    /// Installs `program` on the layout's program bridge (and the layout's
    /// extra flows) with `ovs-ofctl -O OpenFlow15 --bundle
    /// add-groups/add-flows`,
    /// each call bounded by `budget`; returns how long it took, then checks
    /// with `ofproto/trace` that a tunnel scenario's packets really take
    /// the tunnel.
    ///
    /// # Errors
    /// [`PeerError`] if ovs-ofctl fails or takes longer than `budget`, or
    /// the trace does not show the tunnel action.
    pub fn program(
        &mut self,
        program: &FlowProgram,
        budget: Duration,
    ) -> Result<Duration, PeerError> {
        let start = Instant::now();
        let mut per_bridge: Vec<(&str, Vec<String>, Vec<String>)> = vec![(
            self.layout.program_bridge,
            program.groups.clone(),
            program.flows.clone(),
        )];
        for (b, f) in &self.layout.extra_flows {
            match per_bridge.iter_mut().find(|(x, _, _)| x == b) {
                Some(e) => e.2.push(f.clone()),
                None => per_bridge.push((b, Vec::new(), vec![f.clone()])),
            }
        }
        for (bridge, groups, flows) in &per_bridge {
            for (what, lines) in [("add-groups", groups), ("add-flows", flows)] {
                if lines.is_empty() {
                    continue;
                }
                let file = self.dir.join(format!("{bridge}-{what}.txt"));
                let mut text = String::new();
                for l in lines {
                    let _ = writeln!(text, "{l}");
                }
                write(&file, &text)?;
                // One OpenFlow bundle (atomic, like sluiced's flow-bundle):
                // 10k groups take 0.6 s instead of 14 s one by one.
                let mut c = self.tool("ovs-ofctl");
                c.args(["-O", "OpenFlow15", "--bundle", what, bridge])
                    .arg(&file);
                let left = budget.saturating_sub(start.elapsed());
                if let Err(e) = process::run(c, left.max(Duration::from_secs(1))) {
                    if start.elapsed() < budget {
                        return Err(e.into());
                    }
                    let t = start.elapsed().as_secs_f64();
                    let installed = self.count_installed(bridge, what);
                    return Err(PeerError::NotRun(match installed {
                        Some(n) if n > 0 => format!(
                            "`ovs-ofctl {what}` had installed {n} of {} in {t:.0} s (about {:.0}/s, so all would take about {:.0} s); bounded at {:.0} s",
                            lines.len(),
                            n as f64 / t,
                            lines.len() as f64 * t / n as f64,
                            budget.as_secs_f64()
                        ),
                        _ => format!(
                            "`ovs-ofctl {what}` of {} lines did not finish within {:.0} s",
                            lines.len(),
                            budget.as_secs_f64()
                        ),
                    }));
                }
            }
        }
        let elapsed = start.elapsed();
        for (bridge, flow, expect) in self.layout.trace.clone() {
            let t = self.appctl(&["ofproto/trace", bridge, &flow])?;
            if !t.contains(expect) || t.contains("Datapath actions: drop") {
                return Err(PeerError::Counters {
                    peer: "ovs-dpdk".into(),
                    detail: format!(
                        "`ofproto/trace {bridge} {flow}` does not show {expect}:\n{}",
                        t.lines().rev().take(6).collect::<Vec<_>>().join("\n")
                    ),
                });
            }
        }
        Ok(elapsed)
    }

    /// How many groups (`add-groups`) or flows (`add-flows`) `bridge` has.
    fn count_installed(&self, bridge: &str, what: &str) -> Option<usize> {
        let mut c = self.tool("ovs-ofctl");
        let (cmd, key) = if what == "add-groups" {
            ("dump-groups", "group_id=")
        } else {
            ("dump-flows", "actions=")
        };
        c.args(["-O", "OpenFlow15", cmd, bridge]);
        let text = process::run(c, Duration::from_secs(60)).ok()?;
        Some(text.lines().filter(|l| l.contains(key)).count())
    }

    /// Checks that the datapath flows installed while forwarding use the
    /// tunnel actions (`tnl_push(`, `tnl_pop(`) a tunnel layout expects.
    ///
    /// # Errors
    /// [`PeerError::Counters`] if one of them is used by none.
    pub fn check_datapath_tunnel(&self) -> Result<(), PeerError> {
        if self.layout.trace.is_empty() {
            return Ok(());
        }
        let flows = self.appctl(&["dpctl/dump-flows"])?;
        for (_, _, expect) in &self.layout.trace {
            if !flows.contains(expect) {
                return Err(PeerError::Counters {
                    peer: "ovs-dpdk".into(),
                    detail: format!(
                        "no datapath flow uses {expect} after forwarding; dpctl/dump-flows:\n{}",
                        flows.lines().take(6).collect::<Vec<_>>().join("\n")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Resident memory of ovs-vswitchd in bytes.
    ///
    /// # Errors
    /// [`PeerError::Counters`] if `/proc` cannot be read.
    pub fn rss(&self) -> Result<u64, PeerError> {
        process::rss_bytes(self.vswitchd.pid()).map_err(|detail| PeerError::Counters {
            peer: "ovs-dpdk".into(),
            detail,
        })
    }

    /// Connections in OVS's userspace conntrack (`dpctl/ct-get-nconns`).
    ///
    /// # Errors
    /// [`PeerError`] if it cannot be asked or answers no number.
    pub fn connections(&self) -> Result<u64, PeerError> {
        let t = self.appctl(&["dpctl/ct-get-nconns"])?;
        t.trim().parse().map_err(|_| PeerError::Counters {
            peer: "ovs-dpdk".into(),
            detail: format!("dpctl/ct-get-nconns answered {t:?}"),
        })
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

/// Per datapath port name: (RX packets, TX packets) from `ovs-appctl
/// dpctl/show -s`.
pub fn parse_dpctl_show(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut port: Option<String> = None;
    let num = |l: &str, key: &str| -> Option<u64> {
        l.split(key).nth(1)?.split_whitespace().next()?.parse().ok()
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("port ") {
            port = rest
                .split_once(": ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .map(str::to_string);
        } else if let Some(p) = &port {
            if l.starts_with("RX packets:") {
                if let Some(n) = num(l, "RX packets:") {
                    out.entry(p.clone()).or_insert((0, 0)).0 = n;
                }
            } else if l.starts_with("TX packets:") {
                if let Some(n) = num(l, "TX packets:") {
                    out.entry(p.clone()).or_insert((0, 0)).1 = n;
                }
            }
        }
    }
    out
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
        // Packets the source port received and the sink port sent, from
        // one `dpctl/show -s` (one snapshot, so their difference is exact;
        // the database's statistics column lags by up to 5 s): what was
        // received and not sent was dropped.
        let text = self.appctl(&["dpctl/show", "-s"])?;
        let ports = parse_dpctl_show(&text);
        let (Some(input), Some(sink)) = (ports.get("pcap0"), ports.get("null0")) else {
            return Err(PeerError::Counters {
                peer: "ovs-dpdk".into(),
                detail: format!("no pcap0 and null0 ports in dpctl/show -s:\n{text}"),
            });
        };
        let not_sent = input.0.saturating_sub(sink.1);
        counters.tx_packets = Some(counters.rx_packets.saturating_sub(not_sent));
        Ok((counters, at))
    }

    fn alive(&mut self) -> Result<(), PeerError> {
        alive(&mut self.vswitchd)
    }

    fn flush_connections(&mut self) -> Result<(), PeerError> {
        self.appctl(&["dpctl/flush-conntrack"]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two PMDs: the scenario's frames are split over two pcaps, every
    /// frame in exactly one, in order, and no dnat connection or l2 flow
    /// (source address and port) in both, as RSS would spread them.
    #[test]
    fn split_pcap_gives_each_queue_whole_flows() {
        let dir = std::env::temp_dir().join(format!("sluice-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for scenario in [
            crate::scenario::Scenario::new(crate::scenario::Kind::Dnat, 1000, 10),
            crate::scenario::Scenario::new(crate::scenario::Kind::L2, 1000, 10),
        ] {
            let pcap = dir.join(format!("{}.pcap", scenario.kind.name()));
            crate::write_pcap(&scenario, &pcap).expect("pcap");
            let all: Vec<Vec<u8>> = scenario.frames().collect();
            let parts = split_pcap(&pcap, 2).expect("split");
            let read = |p: &Path| {
                crate::pcap::read_all(std::fs::File::open(p).expect("part")).expect("read")
            };
            let (a, b) = (read(&parts[0]), read(&parts[1]));
            assert_eq!(a.len() + b.len(), all.len());
            assert_eq!(a[1], all[2]);
            assert_eq!(b[0], all[1]);
            // Source address and port (IPv4 at 14, TCP/UDP at 34).
            let flow = |f: &Vec<u8>| (f[26..30].to_vec(), f[34..36].to_vec());
            let fa: std::collections::HashSet<_> = a.iter().map(flow).collect();
            assert!(
                b.iter().all(|f| !fa.contains(&flow(f))),
                "{}: a flow in both parts",
                scenario.kind.name()
            );
            assert!(fa.len() > 1);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sluiced_pmd_cores_list_the_extra_ones() {
        assert_eq!(Cores::one(0, 1).sluiced_pmds(), "1");
        let c = Cores {
            main: 0,
            pmd: 1,
            extra_pmds: vec![0],
        };
        assert_eq!(c.sluiced_pmds(), "1,0");
    }

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
    fn sluiced_stats_sum_and_difference() {
        let pmd = |rx, emc, drops: u64| sluice_api::pmd::PmdStats {
            rx_packets: rx,
            tx_packets: rx - drops,
            emc_hits: emc,
            drops: vec![sluice_api::pmd::DropCount {
                reason: "table_miss".into(),
                description: String::new(),
                packets: drops,
            }],
            ..Default::default()
        };
        let a = sluiced_counters(&PmdStatsReply {
            pmds: vec![pmd(100, 80, 10), pmd(50, 40, 2)],
        });
        assert_eq!(a.rx_packets, 150);
        assert_eq!(a.tx_packets, Some(138));
        assert_eq!(a.emc_hits, Some(120));
        assert_eq!(a.drops["table_miss"], 12);
        let mut b = a.clone();
        b.rx_packets += 50;
        b.drops.insert("table_miss".into(), 14);
        let d = b.since(&a);
        assert_eq!(d.rx_packets, 50);
        assert_eq!(d.emc_hits, Some(0));
        assert_eq!(d.drops["table_miss"], 2);
    }

    #[test]
    fn ovs_dpctl_show_ports() {
        let t = "netdev@ovs-netdev:\n  lookups: hit:8905282 missed:4 lost:18944\n  flows: 3\n\
            \x20 port 0: ovs-netdev (tap)\n    RX packets:0 errors:0 dropped:0 overruns:0 frame:0\n\
            \x20   TX packets:0 errors:0 dropped:0 aborted:0 carrier:0\n\
            \x20 port 1: pcap0 (dpdk: configured_rx_queues=1, mtu=1500)\n\
            \x20   RX packets:8924352 errors:0 dropped:0 overruns:? frame:?\n\
            \x20   TX packets:0 errors:0 dropped:0 aborted:? carrier:?\n    collisions:?\n\
            \x20   RX bytes:535461120 (510.7 MiB)  TX bytes:0\n\
            \x20 port 4: null0 (dpdk: configured_rx_queues=1)\n\
            \x20   RX packets:0 errors:0 dropped:0 overruns:? frame:?\n\
            \x20   TX packets:8770793 errors:0 dropped:0 aborted:? carrier:?\n";
        let p = parse_dpctl_show(t);
        assert_eq!(p["pcap0"], (8_924_352, 0));
        assert_eq!(p["null0"], (0, 8_770_793));
        assert_eq!(p["ovs-netdev"], (0, 0));
        assert!(parse_dpctl_show("nothing").is_empty());
    }

    #[test]
    fn ovs_plain_layout_is_one_bridge() {
        let l = ovs_layout(Kind::L3, Path::new("/w/l3.pcap"));
        assert_eq!(l.bridges, vec![(OVS_BRIDGE, Vec::new())]);
        assert!(l.netns_commands.is_empty() && l.appctl_commands.is_empty());
        let a = l.vsctl_args().join(" ");
        assert_eq!(
            a,
            "-- add-br br-bench -- set bridge br-bench datapath_type=netdev \
             -- add-port br-bench pcap0 -- set Interface pcap0 type=dpdk \
             options:dpdk-devargs=net_pcap0,rx_pcap=/w/l3.pcap,infinite_rx=1 ofport_request=1 \
             -- add-port br-bench null0 -- set Interface null0 type=dpdk \
             options:dpdk-devargs=net_null0,no-rx=1 ofport_request=2"
        );
    }

    #[test]
    fn ovs_geneve_layouts() {
        let enc = ovs_layout(Kind::Encap, Path::new("/w/e.pcap"));
        let a = enc.vsctl_args().join(" ");
        assert!(
            a.contains("-- add-br br-int -- set bridge br-int datapath_type=netdev"),
            "{a}"
        );
        assert!(
            a.contains("-- add-br br-phy -- set bridge br-phy datapath_type=netdev other-config:hwaddr=02:00:00:00:00:fe"),
            "{a}"
        );
        assert!(
            a.contains("-- add-port br-int gnv0 -- set Interface gnv0 type=geneve options:remote_ip=172.16.0.2 options:key=5001 ofport_request=3"),
            "{a}"
        );
        assert!(a.contains("-- add-port br-int pcap0 "), "{a}");
        assert!(a.contains("-- add-port br-phy null0 "), "{a}");
        let ns: Vec<String> = enc.netns_commands.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            ns,
            [
                "sysctl -qw net.ipv6.conf.br-phy.disable_ipv6=1",
                "ip addr add 172.16.0.1/24 dev br-phy",
                "ip link set br-phy up"
            ]
        );
        let app: Vec<String> = enc.appctl_commands.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            app,
            [
                "ovs/route/add 172.16.0.0/24 br-phy",
                "tnl/neigh/set br-phy 172.16.0.2 02:00:00:00:02:02"
            ]
        );
        assert_eq!(enc.program_bridge, "br-int");
        assert_eq!(
            enc.extra_flows,
            vec![(
                "br-phy",
                "priority=100,in_port=LOCAL actions=output:2".to_string()
            )]
        );
        assert_eq!(
            enc.trace.iter().map(|t| (t.0, t.2)).collect::<Vec<_>>(),
            [("br-int", "tnl_push(")]
        );

        let dec = ovs_layout(Kind::Decap, Path::new("/w/d.pcap"));
        let a = dec.vsctl_args().join(" ");
        assert!(a.contains("-- add-port br-phy pcap0 "), "{a}");
        assert!(a.contains("-- add-port br-int null0 "), "{a}");
        assert_eq!(
            dec.extra_flows,
            vec![("br-phy", "priority=100,in_port=1 actions=LOCAL".to_string())]
        );
        let [(bridge, flow, expect)] = dec.trace.clone().try_into().unwrap();
        assert_eq!((bridge, expect), ("br-phy", "tnl_pop("));
        assert!(
            flow.contains("dl_dst=02:00:00:00:00:fe,nw_src=172.16.0.2,nw_dst=172.16.0.1"),
            "{flow}"
        );
        assert!(flow.contains("udp_dst=6081"), "{flow}");
    }

    #[test]
    fn ovs_mixed_layout_patches_br_int_to_br_phy() {
        let m = ovs_layout(Kind::Mixed, Path::new("/w/m.pcap"));
        let a = m.vsctl_args().join(" ");
        for want in [
            "-- add-port br-int pcap0 ",
            "-- add-port br-int null0 ",
            "-- add-port br-int gnv0 -- set Interface gnv0 type=geneve",
            "-- add-port br-int patch-phy -- set Interface patch-phy type=patch options:peer=patch-int ofport_request=4",
            "-- add-port br-phy patch-int -- set Interface patch-int type=patch options:peer=patch-phy ofport_request=1",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
        assert_eq!(m.program_bridge, "br-int");
        assert!(m.extra_flows.contains(&(
            "br-int",
            "priority=1000,in_port=1,udp,nw_dst=172.16.0.1,tp_dst=6081 actions=output:4"
                .to_string()
        )));
        assert!(m.extra_flows.contains(&(
            "br-phy",
            "priority=100,in_port=LOCAL actions=output:1".to_string()
        )));
        let traces: Vec<(&str, &str)> = m.trace.iter().map(|t| (t.0, t.2)).collect();
        assert_eq!(traces, [("br-int", "tnl_push("), ("br-int", "tnl_pop(")]);
        assert_eq!(m.appctl_commands.len(), 2);
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
