//! The `sluiced` daemon: wires configuration, DPDK, ports, PMD threads,
//! pipelines and the control socket together, and tears them down in the
//! right order.
//!
//! Start-up, one function per stage: capabilities → EAL → mbuf pool and
//! ports → drop unneeded capabilities → control socket → flow tables → PMD
//! threads (with the shared conntrack, Service and overlay features) →
//! control commands → revalidator → host exception path → "ready" event.
//! The pipeline kind and the hugepage mode arrive parsed, as
//! [`PipelineKind`] and [`crate::hugepages::HugepageMode`]. Shutdown: stop
//! and join the PMDs, stop the control socket, close the ports (their mbufs
//! return to the pool), free the pool, clean up the EAL.
//!
//! Ports live in [`ports::Ports`], which also serves `port-add` and
//! `port-del` while the PMDs forward.
//!
//! With `--take-over` ([`StartOptions::take_over`]) and a sluiced running
//! on the configured control socket, start-up is a hand-over (see
//! [`handover`]): the EAL gets another file prefix, the control socket is
//! served at a temporary path, the flow table starts empty, the PMDs start
//! with no port, the old process's connections are restored while it
//! forwards; then the ports move, the program is committed, the control
//! socket moves into place and the old process exits. Every sluiced serves
//! the old side of the protocol and `restart-report`.
//!
//! Thread-safety: a [`Daemon`] is owned by the main thread; the threads it
//! starts share only the stop flag, the PMD counters, the port set and the
//! feature handles, each documented in its module.

pub mod commands;
pub mod handover;
pub mod metrics;
pub mod node;
pub mod ports;
pub mod state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::caps;
use crate::capture::Capture;
use crate::config::{Config, PipelineKind};
use crate::ctl::{CtlServer, Registry, ServerConfig};
use crate::dpdk::{self, eal, ethdev, mempool};
use crate::flow::tables::FlowTables;
use crate::packet::PortNo;
use crate::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use crate::pipeline::l2::L2Pipeline;
use crate::pmd::{self, PmdSpec, PmdThread};
use crate::port::Port;
use crate::time::clock_ns;
use ports::Ports;

use commands::{PmdView, PortView};

/// How long a hand-over's new process keeps trying to take the metrics
/// address from the old one.
const METRICS_TAKE_OVER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Frames a port counts as lost.
fn port_lost(h: &crate::dpdk::ethdev::DpdkPort) -> u64 {
    let c = crate::port::Port::stats(h);
    c.rx_dropped + c.rx_errors + c.tx_errors
}

/// A hand-over: commits the old process's node program (its generation)
/// to this one's empty one.
fn commit_taken_over(held: &Held, peer: &handover::Peer) -> Result<(), DaemonError> {
    if peer.prepared.generation == 0 {
        return Ok(());
    }
    let mut changes = sluice_api::node::diff(&Default::default(), &peer.prepared.program);
    changes.generation = peer.prepared.generation;
    changes.expected_generation = Some(0);
    held.node.commit(&changes).map_err(|e| {
        DaemonError::HandoverLate(format!("the node program does not commit here: {e}"))
    })?;
    Ok(())
}

/// The flow a new flow-table datapath starts with, as a new OVS bridge:
/// behave as a learning switch until programmed (not after a crash
/// restore that put connections back: [`state::hold_until_programmed`]).
pub const DEFAULT_FLOW: &str = "table=0,priority=0 actions=normal";

/// The EAL configuration of a daemon configuration.
pub fn eal_config(cfg: &Config) -> eal::EalConfig {
    eal::EalConfig {
        file_prefix: cfg.datapath.file_prefix.clone(),
        hugepages: cfg.datapath.hugepages,
        no_huge_memory_mb: cfg.datapath.no_huge_memory_mb,
        main_core: cfg.datapath.main_core,
        extra_args: cfg.datapath.eal_args.clone(),
    }
}

/// Why the daemon could not start or stop cleanly. Each variant's text is
/// the sentence `sluiced` prints after `sluiced: error:`.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The EAL refused its arguments or failed to initialise.
    #[error(transparent)]
    Eal(#[from] eal::EalError),
    /// The process's capabilities cannot be read or lowered.
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    /// Capabilities the configuration needs are missing (one line naming
    /// them and what each is for).
    #[error("{0}")]
    MissingCaps(String),
    /// The mbuf pool cannot be created.
    #[error(transparent)]
    Mempool(#[from] mempool::MempoolError),
    /// A port cannot be opened or started.
    #[error(transparent)]
    Port(#[from] ethdev::EthdevError),
    /// A configured port cannot be opened or started (the daemon's port
    /// set).
    #[error(transparent)]
    Ports(#[from] ports::PortError),
    /// The control socket cannot be served.
    #[error(transparent)]
    Ctl(#[from] crate::ctl::CtlError),
    /// The flow program refused its first flow.
    #[error("cannot install the default flow: {0}")]
    DefaultFlow(#[source] crate::flow::tables::FlowTablesError),
    /// No mbuf is left for a PMD's local-stack allocator.
    #[error("the mbuf pool is exhausted at start: raise [datapath] mbufs")]
    PoolExhausted,
    /// The local stack of PMD 0 cannot be built.
    #[error(transparent)]
    Stack(#[from] crate::stack::StackError),
    /// The OS refused a thread.
    #[error("cannot start {what}: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metrics endpoint cannot start.
    #[error("[datapath] metrics_address: {0}")]
    Metrics(#[from] sluice_metrics::ServerError),
    /// A control command name is taken twice.
    #[error("cannot register commands: {0}")]
    Register(#[source] crate::ctl::RegistryError),
    /// `host_port` names a port that is not usable as one.
    #[error("[datapath] host_port: the {what} port '{name}' must be a [port:{name}] section whose devargs name its kernel interface (iface=...)")]
    HostPort {
        /// "uplink" or "host".
        what: &'static str,
        /// The configured port name.
        name: String,
    },
    /// `host_port` without an uplink to take the addresses from.
    #[error("[datapath] host_port needs [nsx_node_agent] ovs_uplink_port (where the node's addresses are now)")]
    HostPortNoUplink,
    /// Moving the node's addresses failed.
    #[error(transparent)]
    HostPath(#[from] crate::hostpath::HostPathError),
    /// The EAL is gone (a stage ran after teardown).
    #[error("EAL not running")]
    NoEal,
    /// The ports are not open (a stage ran before the ports stage).
    #[error("the ports are not open")]
    NoPorts,
    /// The hand-over could not start or read the old process's state.
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    /// A hand-over step after the ports were released failed (this
    /// process exits; the old one takes its ports back).
    #[error("hand-over failed after the ports were released: {0}; the running sluiced takes its ports back")]
    HandoverLate(String),
    /// PMD threads failed while stopping.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Pmds(Vec<crate::pmd::PmdError>),
}

/// Stage: the capabilities this configuration needs, or the one line
/// that says which are missing.
fn check_capabilities(
    cfg: &Config,
    ecfg: &eal::EalConfig,
) -> Result<BTreeMap<caps::Cap, Vec<String>>, DaemonError> {
    let (_, hugepages) = eal::Eal::args_for(ecfg)?;
    let need = caps::required(cfg, hugepages);
    if let Some(line) = caps::missing(&need, caps::effective()?) {
        return Err(DaemonError::MissingCaps(line));
    }
    Ok(need)
}

/// Stage: the DPDK EAL, and how long its initialisation took (ms).
fn init_eal(ecfg: &eal::EalConfig) -> Result<(eal::Eal, f64), DaemonError> {
    let t0 = Instant::now();
    let eal = eal::Eal::init(ecfg)?;
    let eal_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        hugepages = eal.hugepages,
        "DPDK EAL initialised in {eal_ms:.1} ms ({})",
        dpdk::version()
    );
    Ok((eal, eal_ms))
}

/// Stage: keep only the capabilities the configured ports need, plus
/// CAP_NET_ADMIN and CAP_NET_RAW when we have them: pod ports (TAP,
/// af_packet on a veth) are added at run time (`port-add`) and the host
/// exception path moves addresses and routes back at stop.
fn keep_capabilities(need: &BTreeMap<caps::Cap, Vec<String>>) {
    let mut keep: Vec<caps::Cap> = need.keys().copied().collect();
    for c in [caps::Cap::NetAdmin, caps::Cap::NetRaw] {
        if !keep.contains(&c) {
            keep.push(c);
        }
    }
    if let Err(e) = caps::drop_all_except(&keep) {
        tracing::warn!("{e}");
    }
}

/// Stage: the flow program when the flow pipeline runs, holding
/// [`DEFAULT_FLOW`] (or nothing in a hand-over: a miss drops until the
/// program is committed).
fn flow_tables(cfg: &Config, default_flow: bool) -> Result<Option<FlowTables>, DaemonError> {
    let flows = (cfg.datapath.pipeline == PipelineKind::Flow).then(FlowTables::new);
    if let Some(t) = flows.as_ref().filter(|_| default_flow) {
        t.add_flow(DEFAULT_FLOW, clock_ns())
            .map_err(DaemonError::DefaultFlow)?;
    }
    Ok(flows)
}

/// A running datapath.
#[derive(Debug)]
pub struct Daemon {
    pmds: Vec<PmdThread>,
    ctl: Option<CtlServer>,
    /// The ports and the mbuf pool (set by the ports stage).
    ports: Option<Arc<Ports>>,
    eal: Option<eal::Eal>,
    stop: Arc<AtomicBool>,
    /// The flow program, when the flow pipeline runs.
    pub flows: Option<FlowTables>,
    /// Expires flows whose idle or hard timeout passed (once a second).
    revalidator: Option<std::thread::JoinHandle<()>>,
    /// The "ready" event printed on stdout.
    pub ready: Value,
    /// The host exception path (node addresses moved onto the TAP);
    /// shared with the hand-over's old side, which gives it up.
    hostpath: Arc<std::sync::Mutex<Option<crate::hostpath::HostPath>>>,
    /// The connection saver (`[datapath] state_file`): thread, file,
    /// table, Services.
    saver: Option<(
        std::thread::JoinHandle<()>,
        std::path::PathBuf,
        crate::conntrack::Conntrack,
        crate::service::Services,
    )>,
    /// Set while a hand-over has the ports: the saver skips its rounds.
    saver_paused: Arc<AtomicBool>,
    /// A hand-over committed: stop without the final save.
    handed_over: Arc<AtomicBool>,
    /// The last restart (`restart-report`).
    report: handover::ReportCell,
    /// The Prometheus endpoint (`[datapath] metrics_address`).
    metrics: Arc<std::sync::Mutex<Option<sluice_metrics::MetricsServer>>>,
}

/// The stateful and overlay features the flow pipeline's PMDs share.
struct Features {
    /// Geneve tunnels, port security, ARP responder and, on PMD 0, the
    /// local stack for the VTEP (see `stack::overlay`).
    overlay: crate::stack::overlay::Overlay,
    /// The Service table (see `service`).
    services: crate::service::Services,
    /// The connection table, consulting `services` (see `conntrack`); each
    /// PMD gets its own handle.
    conntrack: crate::conntrack::Conntrack,
}

/// How to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Take over from the sluiced serving the configured control socket,
    /// if one does (a plain start otherwise).
    pub take_over: bool,
}

/// The parts the hand-over's old side and the new side's last steps use.
struct Held {
    node: Arc<node::NodeState>,
    conntrack: crate::conntrack::Conntrack,
    services: crate::service::Services,
}

impl Daemon {
    /// Starts everything. `on_exit` is called by the control socket's
    /// `exit` command (it should wake the main thread).
    ///
    /// Stages, in order: capabilities, EAL, mbuf pool and ports, dropping
    /// unneeded capabilities, control socket, flow tables, PMD threads,
    /// control commands, revalidator, host exception path, "ready" event.
    pub fn start(
        cfg: &Config,
        on_exit: impl Fn() + Send + Sync + 'static,
    ) -> Result<Daemon, DaemonError> {
        Self::start_with(cfg, on_exit, StartOptions::default())
    }

    /// [`Daemon::start`], taking over from a running sluiced when
    /// `opts.take_over` and one serves the configured control socket.
    pub fn start_with(
        cfg: &Config,
        on_exit: impl Fn() + Send + Sync + 'static,
        opts: StartOptions,
    ) -> Result<Daemon, DaemonError> {
        let peer = if opts.take_over {
            handover::Peer::connect(std::path::Path::new(&cfg.datapath.ctl_socket))?
        } else {
            None
        };
        let mut cfg = cfg.clone();
        if let Some(p) = &peer {
            let prefix =
                handover::take_over_prefix(&cfg.datapath.file_prefix, &p.prepared.file_prefix);
            tracing::info!(
                "--take-over: the running sluiced uses DPDK file prefix '{}'; this one uses '{prefix}'",
                p.prepared.file_prefix
            );
            cfg.datapath.file_prefix = prefix;
        }
        let cfg = &cfg;
        let ecfg = eal_config(cfg);
        let need = check_capabilities(cfg, &ecfg)?;
        let (eal, eal_ms) = init_eal(&ecfg)?;
        let mut d = Daemon {
            pmds: Vec::new(),
            ctl: None,
            ports: None,
            eal: Some(eal),
            stop: Arc::new(AtomicBool::new(false)),
            flows: None,
            revalidator: None,
            ready: Value::Null,
            hostpath: Arc::new(std::sync::Mutex::new(None)),
            metrics: Arc::new(std::sync::Mutex::new(None)),
            saver: None,
            saver_paused: Arc::new(AtomicBool::new(false)),
            handed_over: Arc::new(AtomicBool::new(false)),
            report: Arc::new(std::sync::Mutex::new(sluice_api::handover::RestartReport {
                at_unix_ms: handover::unix_ms(),
                ..Default::default()
            })),
        };
        // From here on, an error drops `d`, which tears down what started
        // (and a hand-over peer's lease closes: the old process keeps or
        // takes back its ports).
        d.start_rest(cfg, need, eal_ms, Arc::new(on_exit), peer)?;
        Ok(d)
    }

    fn start_rest(
        &mut self,
        cfg: &Config,
        need: BTreeMap<caps::Cap, Vec<String>>,
        eal_ms: f64,
        on_exit: Arc<dyn Fn() + Send + Sync>,
        mut peer: Option<handover::Peer>,
    ) -> Result<(), DaemonError> {
        self.make_pool(cfg)?;
        if peer.is_none() {
            self.open_ports(cfg)?;
        }
        keep_capabilities(&need);
        // In a hand-over the control socket moves into place at the end.
        let real_ctl = std::path::PathBuf::from(&cfg.datapath.ctl_socket);
        let ctl_path = match &peer {
            Some(_) => {
                let mut p = real_ctl.as_os_str().to_owned();
                p.push(format!(".new{}", std::process::id()));
                std::path::PathBuf::from(p)
            }
            None => real_ctl.clone(),
        };
        let e = on_exit.clone();
        let registry = self.start_control(&ctl_path, move || e())?;
        let flows = flow_tables(cfg, peer.is_none())?;
        let capture = Capture::new();
        let specs = self.pmd_specs(cfg, &capture);
        let mut features = self.features(cfg, peer.is_some());
        // Saved connections go back in (a hand-over's), or are checked
        // and indexed (a crash restore's, which go back in the background
        // and on demand: `conntrack::lazy`), before any PMD forwards.
        let mut pending_affinity = Vec::new();
        if let Some(p) = peer.as_mut() {
            let path = p.state_path.clone();
            p.restore(&path, &features.conntrack)?;
        } else if let (Some(path), Some(tables)) = (&cfg.datapath.state_file, &flows) {
            let report = self.report.clone();
            let done = move |d: state::RestoreDone| {
                let mut rep = report.lock().unwrap_or_else(|e| e.into_inner());
                rep.conns_carried = d.stats.restored as u64;
                rep.conns_skipped = d.stats.skipped as u64;
                rep.restore_done_ms = Some(d.ms);
            };
            let path = std::path::Path::new(path);
            if let Some(r) = state::begin_restore(path, &features.conntrack, done) {
                if r.restored.restored > 0 {
                    state::hold_until_programmed(tables);
                }
                let mut rep = self.report.lock().unwrap_or_else(|e| e.into_inner());
                rep.kind = sluice_api::handover::RestartKind::CrashRestore;
                rep.duration_ms = r.took_ms;
                if rep.restore_done_ms.is_none() {
                    // Until the background restore's end sets them.
                    rep.conns_carried = r.restored.restored as u64;
                    rep.conns_skipped = r.restored.skipped as u64;
                }
                rep.affinity_carried = r.affinity.len() as u64;
                rep.state_bytes = r.bytes as u64;
                rep.state_ms = r.took_ms;
                rep.state_age_ms = Some(r.age_ms);
                pending_affinity = r.affinity;
            }
        }
        let mailboxes: Vec<Arc<pmd::Mailbox>> =
            specs.iter().filter_map(|s| s.mailbox.clone()).collect();
        let views = self.spawn_pmds(cfg, specs, flows.as_ref(), &mut features)?;
        let held = self.register_commands(
            cfg,
            &registry,
            views,
            mailboxes,
            capture,
            flows.as_ref(),
            features,
            peer.is_some(),
        )?;
        let c = cfg.clone();
        let old = handover::OldSide::new(handover::OldParts {
            ports: self.port_set()?.clone(),
            node: held.node.clone(),
            conntrack: held.conntrack.clone(),
            services: held.services.clone(),
            file_prefix: cfg.datapath.file_prefix.clone(),
            hostpath: self.hostpath.clone(),
            attach_hostpath: Box::new(move || {
                attach_host_path(&c).unwrap_or_else(|e| {
                    tracing::error!("cannot attach the host path again: {e}");
                    None
                })
            }),
            saver_paused: self.saver_paused.clone(),
            handed_over: self.handed_over.clone(),
            on_exit,
        });
        handover::register(&registry, old, self.report.clone()).map_err(DaemonError::Register)?;
        if let Some(t) = &flows {
            self.start_revalidator(t)?;
        }
        self.flows = flows;

        match peer {
            Some(p) => self.take_over(cfg, p, &held, &ctl_path, &real_ctl)?,
            // Last: move the node's addresses onto the exception port
            // once the PMDs forward.
            None => {
                *self.hostpath.lock().unwrap_or_else(|e| e.into_inner()) = attach_host_path(cfg)?
            }
        }
        // The saver starts last: in a hand-over it would compete with the
        // steps for the CPU (and the old process owns the file until then).
        if let (Some(path), Some(_)) = (&cfg.datapath.state_file, &self.flows) {
            let h = state::spawn_saver(state::Saver {
                path: path.into(),
                ct: held.conntrack.clone(),
                services: held.services.clone(),
                every: std::time::Duration::from_millis(cfg.datapath.state_interval_ms),
                stop: self.stop.clone(),
                paused: self.saver_paused.clone(),
                pending: pending_affinity,
            })
            .map_err(|source| DaemonError::Thread {
                what: "the state saver thread",
                source,
            })?;
            self.saver = Some((
                h,
                path.into(),
                held.conntrack.clone(),
                held.services.clone(),
            ));
        }
        self.ready = self.ready_event(cfg, eal_ms)?;
        Ok(())
    }

    /// The hand-over's last steps (see [`handover`]): the old process
    /// releases its ports, the delta of connections is restored, the ports
    /// open here, the program is committed, the affinity entries restored,
    /// the host path attached, the control socket moved into place, and
    /// the old process told to exit.
    fn take_over(
        &mut self,
        cfg: &Config,
        mut peer: handover::Peer,
        held: &Held,
        ctl_path: &std::path::Path,
        real_ctl: &std::path::Path,
    ) -> Result<(), DaemonError> {
        let late = |e: String| DaemonError::HandoverLate(e);
        let ports = self.port_set()?.clone();
        let program = peer.prepared.program.clone();
        // Ports another process can open while the old one polls its own
        // (af_packet sockets, null devices) open before the release, with
        // the whole program commit (pod ports, PMD barrier): after the
        // release this process only starts polling. An AF_XDP socket (or
        // a NIC, a TAP) cannot be opened twice: with any such port other
        // than a configured one, everything opens after the release, as
        // the configured ones that cannot be shared always do.
        let early = peer
            .prepared
            .ports
            .iter()
            .all(|p| p.kind == ports::CONFIG_KIND || handover::shareable(&p.devargs));
        let t_pre = Instant::now();
        if early {
            ports.hold_rx();
            self.open_config_ports_where(cfg, |p| handover::shareable(&p.devargs))
                .map_err(|e| late(e.to_string()))?;
            self.reopen_devargs_ports(cfg, &peer, &program)?;
            commit_taken_over(held, &peer)?;
        } else {
            tracing::info!("--take-over: a port of the running sluiced cannot be opened by two processes at once (af_xdp): the ports open and the program commits after the release");
        }
        let pre_ms = t_pre.elapsed().as_secs_f64() * 1e3;
        let t_release = Instant::now();
        let rel = peer.release()?;
        // Fault injection for the tests: this process dies with the ports
        // released (the old one must take them back).
        if std::env::var_os("SLUICED_TEST_HANDOVER_ABORT").is_some_and(|v| v == "after-release") {
            tracing::error!("SLUICED_TEST_HANDOVER_ABORT=after-release: aborting mid hand-over");
            std::process::abort();
        }
        // From here on the old process does not forward; any error makes
        // this process exit, its lease close, and the old one take back
        // its ports.
        let t_released = Instant::now();
        let delta_path = peer.delta_path.clone();
        let (carried, skipped) = (peer.report.conns_carried, peer.report.conns_skipped);
        let delta = peer
            .restore(&delta_path, &held.conntrack)
            .map_err(|e| late(e.to_string()))?;
        // The delta may hold connections already restored (created while
        // the snapshot was taken): those are skipped (their key is
        // taken), not lost.
        peer.report.conns_delta = peer.report.conns_carried - carried;
        peer.report.conns_skipped = skipped;
        let t_delta = Instant::now();
        let mut discarded = 0;
        if early {
            let (n, d) = ports.start_polling();
            discarded = d;
            tracing::debug!("--take-over: polling {n} ports");
            self.open_config_ports_where(cfg, |p| !handover::shareable(&p.devargs))
                .map_err(|e| late(e.to_string()))?;
        } else {
            self.open_config_ports(cfg)
                .map_err(|e| late(e.to_string()))?;
            self.reopen_devargs_ports(cfg, &peer, &program)?;
            commit_taken_over(held, &peer)?;
        }
        let gap = t_release.elapsed();
        // What the ports count as lost from here on (the drops of the
        // frames that arrived while the old process polled are not).
        let lost_base: u64 = ports.list().iter().map(|s| port_lost(&s.handle)).sum();
        let t_polling = Instant::now();
        let kept = held
            .services
            .restore_affinity(&delta.affinity, crate::time::clock_ns());
        peer.report.affinity_carried = kept as u64;
        *self.hostpath.lock().unwrap_or_else(|e| e.into_inner()) =
            attach_host_path(cfg).map_err(|e| late(e.to_string()))?;
        let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e3;
        tracing::info!(
            "hand-over gap {:.1} ms: release {:.1} ms (old side {:.1} ms), delta {:.1} ms, {} {:.1} ms; then affinity and host path {:.1} ms (before the release: ports and program commit {pre_ms:.1} ms; {discarded} frames the old process polled discarded)",
            gap.as_secs_f64() * 1e3,
            ms(t_release, t_released),
            rel.release_us as f64 / 1e3,
            ms(t_released, t_delta),
            if early { "start polling" } else { "ports and program commit" },
            ms(t_delta, t_polling),
            ms(t_polling, Instant::now()),
        );
        std::fs::rename(ctl_path, real_ctl).map_err(|e| {
            late(format!(
                "cannot move the control socket {} to {}: {e}",
                ctl_path.display(),
                real_ctl.display()
            ))
        })?;
        peer.report.gap_ms = gap.as_secs_f64() * 1e3;
        peer.report.frames_lost += ports
            .list()
            .iter()
            .map(|s| port_lost(&s.handle))
            .sum::<u64>()
            .saturating_sub(lost_base);
        let mut report = peer.commit()?;
        report.previous_pid = None;
        tracing::info!(
            "hand-over done in {:.1} ms: ports moved in {:.1} ms, {} connections carried over ({} from the delta), {} bytes of state, {} frames lost by the old ports; the old sluiced ({} rx frames) exits",
            report.duration_ms,
            report.gap_ms,
            report.conns_carried,
            report.conns_delta,
            report.state_bytes,
            rel.frames_lost,
            rel.rx_packets,
        );
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = report;
        Ok(())
    }

    /// A hand-over: reopens the old process's ports that are neither
    /// configured nor in the program (`port-add` with devargs).
    fn reopen_devargs_ports(
        &self,
        cfg: &Config,
        peer: &handover::Peer,
        program: &sluice_api::node::NodeProgram,
    ) -> Result<(), DaemonError> {
        let ports = self.port_set()?.clone();
        let n = cfg.datapath.cores.len().max(1);
        for p in &peer.prepared.ports {
            let configured = cfg.ports.iter().any(|c| c.name == p.name);
            if configured || program.ports.contains_key(&p.name) {
                continue;
            }
            let r = ports::ReleasedPort {
                name: p.name.clone(),
                ofport: p.ofport,
                kind: p.kind.clone(),
                devargs: p.devargs.clone(),
                pmds: (0..p.rx_queues.max(1) as usize).map(|q| q % n).collect(),
                stats: Default::default(),
            };
            ports
                .reopen(&r)
                .map_err(|e| DaemonError::HandoverLate(format!("port {}: {e}", p.name)))?;
        }
        Ok(())
    }

    /// Stage: the mbuf pool, and the (empty) port set over it.
    fn make_pool(&mut self, cfg: &Config) -> Result<(), DaemonError> {
        // Memzone names live in the process's own file prefix, and DPDK
        // caps them at 25 characters: a fixed name, not one built from a
        // prefix of any length.
        let pool = mempool::Mempool::new("sluiced_mbufs", cfg.datapath.mbufs, 256)?;
        let ports = Arc::new(Ports::new(
            pool,
            cfg.datapath.cores.iter().map(|&c| Some(c)).collect(),
        ));
        self.ports = Some(ports);
        Ok(())
    }

    /// Stage: every configured port, started, their rx queues dealt out
    /// to the PMDs round-robin.
    fn open_ports(&mut self, cfg: &Config) -> Result<(), DaemonError> {
        self.open_config_ports(cfg)
    }

    fn open_config_ports(&self, cfg: &Config) -> Result<(), DaemonError> {
        self.open_config_ports_where(cfg, |_| true)
    }

    /// The configured ports `which` selects (their rx queues dealt as if
    /// all were opened).
    fn open_config_ports_where(
        &self,
        cfg: &Config,
        which: impl Fn(&crate::config::PortConfig) -> bool,
    ) -> Result<(), DaemonError> {
        let n_pmds = cfg.datapath.cores.len().max(1);
        let ports = self.port_set()?.clone();
        let mut k = 0;
        for p in &cfg.ports {
            let pmds = (0..p.rx_queues)
                .map(|q| (k + q as usize) % n_pmds)
                .collect();
            k += p.rx_queues as usize;
            if !which(p) {
                continue;
            }
            ports.open_config(p, pmds)?;
            tracing::info!(
                port = %p.name,
                ofport = p.ofport,
                "port {} up ({})",
                p.name,
                p.devargs
            );
        }
        Ok(())
    }

    fn port_set(&self) -> Result<&Arc<Ports>, DaemonError> {
        self.ports.as_ref().ok_or(DaemonError::NoPorts)
    }

    /// Stage: the control socket at `path`, serving an (as yet empty)
    /// registry.
    fn start_control(
        &mut self,
        path: &std::path::Path,
        on_exit: impl Fn() + Send + Sync + 'static,
    ) -> Result<Registry, DaemonError> {
        let registry = Registry::new();
        crate::ctl::typed::register_builtins(&registry).map_err(DaemonError::Register)?;
        let ctl = CtlServer::start(ServerConfig::with_path(path), registry.clone(), on_exit)?;
        self.ctl = Some(ctl);
        Ok(registry)
    }

    /// One PMD spec per configured core (their rx queues are in the
    /// port table).
    fn pmd_specs(&self, cfg: &Config, capture: &Arc<Capture>) -> Vec<PmdSpec> {
        let specs: Vec<PmdSpec> = cfg
            .datapath
            .cores
            .iter()
            .enumerate()
            .map(|(i, &c)| PmdSpec {
                index: i,
                core: Some(c),
                rx: Vec::new(),
                capture: Some(capture.clone()),
                mailbox: Some(Arc::new(pmd::Mailbox::default())),
            })
            .collect();
        specs
    }

    /// The overlay, Service and conntrack features, built once and shared
    /// by the PMDs. In a hand-over (`ports_later`) the uplink is not open
    /// yet: its MAC is its kernel interface's.
    fn features(&self, cfg: &Config, ports_later: bool) -> Features {
        let list = self.ports.as_ref().map(|p| p.list()).unwrap_or_default();
        let uplink = if ports_later {
            cfg.uplink_port
                .as_ref()
                .and_then(|n| cfg.ports.iter().find(|p| &p.name == n))
                .and_then(|p| {
                    let iface = crate::hostpath::devargs_iface(&p.devargs)?;
                    let text =
                        std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
                    let mac = parse_mac(text.trim())?;
                    Some((PortNo(p.ofport), mac))
                })
        } else {
            cfg.uplink_port
                .as_ref()
                .and_then(|n| list.iter().find(|p| &p.name == n))
                .map(|p| (PortNo(p.ofport), ethdev::mac_of(p.handle.port_id())))
        };
        let overlay = crate::stack::overlay::Overlay::new(
            &cfg.datapath.overlay,
            cfg.datapath.cores.len(),
            uplink,
        );
        let services = crate::service::Services::new(cfg.datapath.stateful.services.clone());
        let conntrack = crate::conntrack::Conntrack::with_services(
            cfg.datapath.stateful.conntrack.clone(),
            services.clone(),
        );
        Features {
            overlay,
            services,
            conntrack,
        }
    }

    /// Stage: one PMD thread per spec, running the configured pipeline.
    fn spawn_pmds(
        &mut self,
        cfg: &Config,
        specs: Vec<PmdSpec>,
        flows: Option<&FlowTables>,
        features: &mut Features,
    ) -> Result<Vec<PmdView>, DaemonError> {
        let ports = self.port_set()?.clone();
        let shared = ports.shared();
        let ofports: Vec<PortNo> = shared.load().ofports.clone();
        let mut views = Vec::new();
        // One MAC table for every PMD (`pipeline::l2`).
        let macs = crate::pipeline::l2::MacTable::new(
            cfg.datapath.mac_table_size,
            cfg.datapath.mac_aging_s.saturating_mul(1_000_000_000),
        );
        for spec in specs {
            let handles = shared.clone();
            let init = || dpdk::register_thread();
            let t = match flows {
                Some(tables) => {
                    let ct = features.conntrack.handle(spec.index as u64 + 1);
                    let ct_cache = ct.cache_counters();
                    let pl = FlowPipeline::with_hooks(
                        tables.clone(),
                        FlowPipelineConfig {
                            ports: ofports.clone(),
                            mac_capacity: cfg.datapath.mac_table_size,
                            mac_aging_ns: cfg.datapath.mac_aging_s.saturating_mul(1_000_000_000),
                            mac_table: Some(macs.clone()),
                            emc_insert_inv_prob: cfg.datapath.emc_insert_inv_prob,
                            direct_path: cfg.datapath.direct_path,
                            ..Default::default()
                        },
                        crate::pipeline::hooks::Hooks {
                            ct,
                            tunnels: features.overlay.tunnel_hook(spec.index),
                        },
                    );
                    let fstats = pl.stats();
                    let seed = ports
                        .with_pool(|p| p.alloc())
                        .flatten()
                        .ok_or(DaemonError::PoolExhausted)?;
                    let pl = features.overlay.wrap(
                        spec.index,
                        pl,
                        crate::stack::overlay::SeedAlloc::new(seed),
                    )?;
                    let t = pmd::spawn_shared(spec, handles, pl, self.stop.clone(), init);
                    t.inspect(|t| {
                        views.push(PmdView {
                            pmd: t.stats.clone(),
                            flow: Some(fstats),
                            ct_cache: Some(ct_cache),
                        });
                    })
                }
                None => {
                    let pl = L2Pipeline::with_table(ofports.clone(), macs.clone());
                    pmd::spawn_shared(spec, handles, pl, self.stop.clone(), init).inspect(|t| {
                        views.push(PmdView {
                            pmd: t.stats.clone(),
                            flow: None,
                            ct_cache: None,
                        });
                    })
                }
            }
            .map_err(|source| DaemonError::Thread {
                what: "PMD thread",
                source,
            })?;
            self.pmds.push(t);
        }
        Ok(views)
    }

    /// Stage: every control command, registered next to what it shows.
    #[allow(clippy::too_many_arguments)]
    fn register_commands(
        &self,
        cfg: &Config,
        registry: &Registry,
        views: Vec<PmdView>,
        mailboxes: Vec<Arc<pmd::Mailbox>>,
        capture: Arc<Capture>,
        flows: Option<&FlowTables>,
        features: Features,
        take_over: bool,
    ) -> Result<Held, DaemonError> {
        let reg_err = DaemonError::Register;
        let metric_views = views.clone();
        commands::register_pmd(registry, views).map_err(reg_err)?;
        commands::register_cache_dump(registry, mailboxes).map_err(reg_err)?;
        let ports = self.port_set()?.clone();
        let p = ports.clone();
        commands::register_rxqs(registry, move || p.rx_queues()).map_err(reg_err)?;
        let p = ports.clone();
        commands::register_ports(registry, &cfg.bridge, move || {
            p.list()
                .into_iter()
                .map(|s| {
                    let (h, h2) = (s.handle.clone(), s.handle);
                    PortView {
                        name: s.name,
                        ofport: s.ofport,
                        driver: s.driver,
                        devargs: s.devargs,
                        kind: s.kind,
                        pmds: s.pmds,
                        fallback: s.fallback,
                        stats: Box::new(move || h.stats()),
                        link: Box::new(move || h2.link()),
                    }
                })
                .collect()
        })
        .map_err(reg_err)?;
        let p = ports.clone();
        commands::register_capture(registry, capture, move || {
            p.list().into_iter().map(|s| (s.name, s.ofport)).collect()
        })
        .map_err(reg_err)?;
        ports.set_owners(ports::PortOwners {
            flows: flows.cloned(),
            ingress: flows.map(|_| features.overlay.ingress.clone()),
        });
        let p = ports.clone();
        crate::ctl::typed::register::<sluice_api::ports::PortAdd>(registry, move |r| p.add(&r))
            .map_err(reg_err)?;
        let p = ports.clone();
        crate::ctl::typed::register::<sluice_api::ports::PortDel>(registry, move |r| {
            p.del(&r.port)
        })
        .map_err(reg_err)?;
        let Features {
            overlay,
            services,
            conntrack,
        } = features;
        // `node-commit`, `node-status`, `node-program`: the program the
        // agent drives (see `node`).
        let fixed_port = |name: Option<&String>| {
            let n = name?;
            cfg.ports
                .iter()
                .find(|p| &p.name == n)
                .map(|p| (p.name.clone(), p.ofport))
        };
        let state = Arc::new(node::NodeState::new(node::Parts {
            ports,
            flows: flows.cloned(),
            services: services.clone(),
            conntrack: conntrack.clone(),
            tunnels: overlay.tunnels.clone(),
            ingress: overlay.ingress.clone(),
            stack: overlay.stack().cloned(),
            fixed: node::FixedPorts {
                uplink: fixed_port(cfg.uplink_port.as_ref()),
                host: fixed_port(cfg.datapath.overlay.host_port.as_ref()),
            },
        }));
        node::register(registry, state.clone()).map_err(reg_err)?;
        let held = Held {
            node: state.clone(),
            conntrack: conntrack.clone(),
            services: services.clone(),
        };
        if let Some(addr) = cfg.datapath.metrics_address {
            let sources = metrics::Sources {
                pmds: metric_views,
                ports: self.port_set()?.clone(),
                node: state,
                features: flows
                    .map(|_| (conntrack.clone(), services.clone(), overlay.tunnels.clone())),
            };
            let sources = Arc::new(sources);
            let start = move || {
                let s = sources.clone();
                sluice_metrics::MetricsServer::start(addr, move || s.render())
            };
            match start() {
                Ok(server) => {
                    *self.metrics.lock().unwrap_or_else(|e| e.into_inner()) = Some(server)
                }
                // A hand-over's new process: the old one holds the
                // address until it exits; take it then.
                Err(e) if take_over => {
                    tracing::info!("--take-over: {e}; the metrics endpoint starts once the running sluiced has exited");
                    let cell = self.metrics.clone();
                    let stop = self.stop.clone();
                    std::thread::Builder::new()
                        .name("metrics-wait".into())
                        .spawn(move || {
                            let t0 = Instant::now();
                            while !stop.load(Ordering::Relaxed) {
                                std::thread::sleep(std::time::Duration::from_millis(100));
                                match start() {
                                    Ok(server) => {
                                        tracing::info!("metrics endpoint {addr} up");
                                        *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
                                        return;
                                    }
                                    Err(e) if t0.elapsed() > METRICS_TAKE_OVER_WAIT => {
                                        tracing::error!("{e}: no metrics endpoint after {METRICS_TAKE_OVER_WAIT:?}");
                                        return;
                                    }
                                    Err(_) => {}
                                }
                            }
                        })
                        .map_err(|source| DaemonError::Thread {
                            what: "the metrics endpoint's start",
                            source,
                        })?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(t) = flows {
            let oracle = Arc::new(crate::conntrack::trace::CtTracer::new(
                conntrack.clone(),
                clock_ns,
            ));
            crate::flow::commands::register_flows(registry, t.clone(), Some(oracle))
                .map_err(reg_err)?;
            overlay.register_commands(registry).map_err(reg_err)?;
            crate::conntrack::commands::register_commands(registry, conntrack.clone(), clock_ns)
                .map_err(reg_err)?;
            crate::service::commands::register_commands(registry, services, Some(conntrack))
                .map_err(reg_err)?;
        }
        Ok(held)
    }

    /// Stage: the thread that expires flows whose idle or hard timeout
    /// passed, about once a second.
    fn start_revalidator(&mut self, tables: &FlowTables) -> Result<(), DaemonError> {
        let (t, stop) = (tables.clone(), self.stop.clone());
        let h = std::thread::Builder::new()
            .name("revalidator".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(std::time::Duration::from_secs(1));
                    let n = t.expire(clock_ns());
                    if n > 0 {
                        tracing::debug!("{n} flows expired");
                    }
                }
            })
            .map_err(|source| DaemonError::Thread {
                what: "the revalidator thread",
                source,
            })?;
        self.revalidator = Some(h);
        Ok(())
    }

    /// The "ready" event printed on stdout.
    fn ready_event(&self, cfg: &Config, eal_ms: f64) -> Result<Value, DaemonError> {
        let eal = self.eal.as_ref().ok_or(DaemonError::NoEal)?;
        Ok(json!({
            "event": "ready",
            "eal_init_ms": (eal_ms * 10.0).round() / 10.0,
            "hugepages": eal.hugepages,
            "pipeline": cfg.datapath.pipeline.name(),
            "pmd_cores": cfg.datapath.cores,
            "ctl_socket": cfg.datapath.ctl_socket,
            "metrics": self.metrics.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
                .map(|m| format!("http://{}/metrics", m.addr())),
            "ports": self.ports.iter().flat_map(|p| p.list()).map(|p| json!({
                "name": p.name, "ofport": p.ofport, "devargs": p.devargs,
                "driver": p.driver, "dpdk_port_id": p.handle.port_id(),
            })).collect::<Vec<_>>(),
        }))
    }

    /// Stops forwarding and tears everything down; returns the "stopped"
    /// event with final counters.
    pub fn shutdown(mut self) -> Result<Value, DaemonError> {
        // First: give the node's addresses back to the uplink.
        let hp = self
            .hostpath
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = hp {
            if let Err(e) = h.detach() {
                tracing::error!("{e}");
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        let mut pmd_stats = Vec::new();
        for t in std::mem::take(&mut self.pmds) {
            let st = t.stats.clone();
            if let Err(e) = t.join() {
                errors.push(e);
            }
            let busy = st.busy_cycles.get();
            let rx = st.rx_packets.get();
            pmd_stats.push(json!({
                "index": st.index, "core": st.core,
                "rx_packets": rx, "tx_packets": st.tx_packets.get(),
                "busy_cycles": busy, "idle_cycles": st.idle_cycles.get(),
                "cycles_per_packet": if rx > 0 { busy as f64 / rx as f64 } else { 0.0 },
                "longest_iteration_ns": st.longest_iteration_ns.get(),
                "iteration_ns_log2": st.iteration_ns_log2.iter().map(|c| c.get()).collect::<Vec<_>>(),
                // With SLUICE_PMD_CPU_TIMING (pmd::CpuTiming).
                "cpu": {
                    "iteration_ns_log2": st.cpu.iteration_ns_log2.iter().map(|c| c.get()).collect::<Vec<_>>(),
                    "long_iteration_ns_log2": st.cpu.long_iteration_ns_log2.iter().map(|c| c.get()).collect::<Vec<_>>(),
                    "long_wall_ns": st.cpu.long_wall_ns.get(), "long_cpu_ns": st.cpu.long_cpu_ns.get(),
                    "long_parked_ns": st.cpu.long_parked_ns.get(),
                    "longest_cpu_ns": st.cpu.longest_cpu_ns.get(), "longest_parked_ns": st.cpu.longest_parked_ns.get(),
                },
                "drops": st.drops.nonzero().into_iter()
                    .map(|(r, n)| (r.key().to_string(), json!(n)))
                    .collect::<serde_json::Map<_, _>>(),
            }));
            tracing::info!("{}", st.render().trim_end());
        }
        // The PMDs are stopped: save the connections one last time, so a
        // clean restart loses none (unless a hand-over gave the state to
        // the next process, which owns the file now).
        if let Some((h, path, ct, services)) = self.saver.take() {
            h.thread().unpark();
            let _ = h.join();
            if self.handed_over.load(Ordering::Relaxed) {
                tracing::info!("handed over: the next sluiced owns {}", path.display());
            } else {
                match state::save(&path, &ct, Some(&services)) {
                    Ok((n, a, _)) => tracing::info!(
                        "saved {n} connections and {a} affinity entries to {}",
                        path.display()
                    ),
                    Err(e) => {
                        tracing::error!("cannot save connections to {}: {e}", path.display())
                    }
                }
            }
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .flat_map(|p| p.list())
            .map(|p| json!({"name": p.name, "ofport": p.ofport, "stats": p.handle.stats()}))
            .collect();
        self.teardown();
        if errors.is_empty() {
            Ok(json!({"event": "stopped", "pmds": pmd_stats, "ports": ports}))
        } else {
            Err(DaemonError::Pmds(errors))
        }
    }

    fn teardown(&mut self) {
        drop(
            self.hostpath
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if let Some(mut m) = self
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            m.stop();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.revalidator.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        if let Some((h, _, _, _)) = self.saver.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        for t in std::mem::take(&mut self.pmds) {
            let _ = t.join();
        }
        if let Some(mut c) = self.ctl.take() {
            c.stop();
        }
        // Ports close before the pool is freed (their queues hold mbufs).
        if let Some(p) = self.ports.take() {
            p.close_all();
        }
        self.eal = None;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Sets up the host exception path when `host_port` is configured: the
/// node's addresses move from the uplink's kernel interface to the host
/// port's. Called by the daemon once the PMDs forward.
///
/// # Errors
/// [`DaemonError::HostPort`], [`DaemonError::HostPortNoUplink`] when the
/// ports are not configured as needed, [`DaemonError::HostPath`] when a move
/// failed.
fn attach_host_path(
    cfg: &crate::config::Config,
) -> Result<Option<crate::hostpath::HostPath>, DaemonError> {
    use crate::hostpath::{devargs_iface, HostPath, HostPathConfig};
    let Some(host) = &cfg.datapath.overlay.host_port else {
        return Ok(None);
    };
    let port = |name: &str, what: &'static str| {
        cfg.ports
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| devargs_iface(&p.devargs).map(str::to_string))
            .ok_or_else(|| DaemonError::HostPort {
                what,
                name: name.to_string(),
            })
    };
    let uplink = cfg
        .uplink_port
        .as_deref()
        .ok_or(DaemonError::HostPortNoUplink)?;
    let hp = HostPath::attach(HostPathConfig {
        uplink_if: port(uplink, "uplink")?,
        host_if: port(host, "host")?,
    })?;
    Ok(Some(hp))
}
