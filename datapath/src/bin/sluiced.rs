//! `sluiced`: the Sluice datapath daemon.
//!
//! Start-up order: configuration → node type → cores → capabilities →
//! EAL → mbuf pool → ports → PMD threads; every failure before the PMDs
//! run is one line on stderr (`sluiced: error: ...`) and exit status 1.
//! SIGTERM and SIGINT stop the PMDs, close the ports (TAP interfaces
//! disappear), free the pool and clean up the EAL (no hugepage file or
//! runtime directory is left behind).
//!
//! `--take-over` starts a hand-over restart from the sluiced running on the
//! same control socket (see `daemon::handover`).
//!
//! The control socket (`[datapath] ctl_socket`) serves `sluicectl` and
//! `ovs-appctl -t SOCKET`; its `exit` command stops the daemon like SIGTERM.
//!
//! Machine-readable events go to stdout as one JSON object per line:
//! `{"event":"ready",...}` once forwarding, `{"event":"stopped",...}` with
//! final per-port and per-PMD counters at exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use serde_json::json;

use sluice_datapath::caps;
use sluice_datapath::config::{parse_cpu_list, Config, ConfigError, CpuListError, HostCheckError};
use sluice_datapath::daemon::{self, Daemon, DaemonError};
use sluice_datapath::dpdk::eal;

/// Why `sluiced` exits with an error: the line after `sluiced: error:`.
#[derive(Debug, thiserror::Error)]
enum SluicedError {
    /// `--log` does not parse.
    #[error("invalid --log filter '{filter}': {source}")]
    LogFilter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--cores`.
    #[error("--cores: {0}")]
    Cores(#[source] CpuListError),
    /// `--hugepages`.
    #[error("--hugepages: {0}")]
    Hugepages(String),
    /// The configuration does not fit this machine.
    #[error(transparent)]
    Host(#[from] HostCheckError),
    /// No port is configured.
    #[error("config {0}: no [port:NAME] section: sluiced needs at least one port")]
    NoPorts(String),
    /// The EAL arguments (`--check-config`).
    #[error(transparent)]
    Eal(#[from] eal::EalError),
    /// Reading the capabilities (`--check-config`).
    #[error(transparent)]
    Caps(#[from] caps::CapsError),
    /// Missing capabilities (`--check-config`).
    #[error("{0}")]
    MissingCaps(String),
    /// The signal handling thread.
    #[error("cannot {what}: {source}")]
    Signals {
        what: &'static str,
        source: std::io::Error,
    },
    /// Starting or stopping the datapath.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Sluice datapath daemon: a DPDK poll-mode packet engine that replaces
/// kernel Open vSwitch on bare-metal Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "sluiced", version, about, long_about = None)]
struct Args {
    /// Configuration file (ncp.ini style: [coe] node_type, [nsx_node_agent]
    /// ovs_bridge / ovs_uplink_port, [datapath], [port:NAME] sections).
    #[arg(short, long, default_value = "/etc/sluice/sluiced.ini")]
    config: PathBuf,
    /// Validate the configuration (and cores, capabilities) and exit.
    #[arg(long)]
    check_config: bool,
    /// PMD cores, overriding [datapath] cores (e.g. "1" or "2-3").
    #[arg(long)]
    cores: Option<String>,
    /// DPDK file prefix, overriding [datapath] file_prefix.
    #[arg(long)]
    file_prefix: Option<String>,
    /// Hugepage policy, overriding [datapath] hugepages: auto, required or never.
    #[arg(long)]
    hugepages: Option<String>,
    /// Control socket path, overriding [datapath] ctl_socket.
    #[arg(long)]
    ctl_socket: Option<String>,
    /// Take over from the sluiced serving the control socket, if one
    /// does: its connections, NAT, Service affinity and node program
    /// move here while it forwards, then its ports, then it exits (a
    /// hand-over restart; a plain start when nothing answers). A failed
    /// hand-over leaves the running one forwarding.
    #[arg(long)]
    take_over: bool,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax ("info", "debug",
    /// "dpdk=debug" shows DPDK's own log).
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,
}

fn init_logging(args: &Args) -> Result<(), SluicedError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).map_err(|source| {
        SluicedError::LogFilter {
            filter: args.log.clone(),
            source,
        }
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.with_target(true).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn load_config(args: &Args) -> Result<Config, SluicedError> {
    let mut cfg = Config::load(&args.config)?;
    if let Some(c) = &args.cores {
        cfg.datapath.cores = parse_cpu_list(c).map_err(SluicedError::Cores)?;
    }
    if let Some(p) = &args.file_prefix {
        cfg.datapath.file_prefix = p.clone();
    }
    if let Some(h) = &args.hugepages {
        cfg.datapath.hugepages = h
            .parse::<eal::HugepageMode>()
            .map_err(SluicedError::Hugepages)?;
    }
    if let Some(s) = &args.ctl_socket {
        cfg.datapath.ctl_socket = s.clone();
    }
    cfg.check_node_type()?;
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cfg.check_cores(&available)?;
    if cfg.ports.is_empty() {
        return Err(SluicedError::NoPorts(args.config.display().to_string()));
    }
    Ok(cfg)
}

fn run(args: &Args) -> Result<(), SluicedError> {
    let cfg = load_config(args)?;
    if args.check_config {
        let ecfg = daemon::eal_config(&cfg);
        let (eal_args, huge) = eal::Eal::args_for(&ecfg)?;
        let need = caps::required(&cfg, huge);
        if let Some(line) = caps::missing(&need, caps::effective()?) {
            return Err(SluicedError::MissingCaps(line));
        }
        println!(
            "{}",
            json!({"event": "config_ok", "eal_args": eal_args, "ports": cfg.ports.len(),
                   "capabilities": need.keys().map(|c| c.name()).collect::<Vec<_>>()})
        );
        return Ok(());
    }
    // Signals and the control socket's `exit` both wake the main thread.
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<&'static str>(4);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|source| SluicedError::Signals {
        what: "install signal handlers",
        source,
    })?;
    let sig_tx = wake_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let _ = sig_tx.try_send(if sig == signal_hook::consts::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                });
            }
        })
        .map_err(|source| SluicedError::Signals {
            what: "start the signal thread",
            source,
        })?;
    let daemon = Daemon::start_with(
        &cfg,
        move || {
            let _ = wake_tx.try_send("exit command");
        },
        daemon::StartOptions {
            take_over: args.take_over,
        },
    )?;
    println!("{}", daemon.ready);
    let why = wake_rx.recv().unwrap_or("shutdown");
    tracing::info!("{why} received, stopping");
    let stopped = daemon.shutdown()?;
    println!("{stopped}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_logging(&args) {
        eprintln!("sluiced: error: {e}");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluiced: error: {e}");
            ExitCode::FAILURE
        }
    }
}
