//! `sluiced`: the Sluice datapath daemon.
//!
//! Start-up order: configuration → node type → cores → capabilities →
//! EAL → mbuf pool → ports → PMD threads; every failure before the PMDs
//! run is one line on stderr (`sluiced: error: ...`) and exit status 1.
//! SIGTERM and SIGINT stop the PMDs, close the ports (TAP interfaces
//! disappear), free the pool and clean up the EAL (no hugepage file or
//! runtime directory is left behind).
//!
//! Machine-readable events go to stdout as one JSON object per line:
//! `{"event":"ready",...}` once forwarding, `{"event":"stopped",...}` with
//! final per-port and per-PMD counters at exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use serde_json::json;

use sluice_datapath::caps;
use sluice_datapath::config::{parse_cpu_list, Config};
use sluice_datapath::dpdk::{self, eal, ethdev, mempool};
use sluice_datapath::packet::PortNo;
use sluice_datapath::pipeline::l2::L2Pipeline;
use sluice_datapath::pmd::{self, PmdSpec, PmdThread};
use sluice_datapath::port::Port;

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
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax ("info", "debug",
    /// "dpdk=debug" shows DPDK's own log).
    #[arg(long, env = "SLUICE_LOG", default_value = "info")]
    log: String,
}

fn init_logging(args: &Args) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| format!("invalid --log filter '{}': {e}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.with_target(true).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn load_config(args: &Args) -> Result<Config, String> {
    let mut cfg = Config::load(&args.config).map_err(|e| e.to_string())?;
    if let Some(c) = &args.cores {
        cfg.datapath.cores = parse_cpu_list(c).map_err(|e| format!("--cores: {e}"))?;
    }
    if let Some(p) = &args.file_prefix {
        cfg.datapath.file_prefix = p.clone();
    }
    if let Some(h) = &args.hugepages {
        h.parse::<eal::HugepageMode>()
            .map_err(|e| format!("--hugepages: {e}"))?;
        cfg.datapath.hugepages = h.clone();
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
        return Err(format!(
            "config {}: no [port:NAME] section: sluiced needs at least one port",
            args.config.display()
        ));
    }
    if cfg.datapath.pipeline != "l2" {
        return Err(format!(
            "config {}: [datapath] pipeline: '{}' is not available in this build (use l2)",
            args.config.display(),
            cfg.datapath.pipeline
        ));
    }
    Ok(cfg)
}

fn eal_config(cfg: &Config) -> Result<eal::EalConfig, String> {
    Ok(eal::EalConfig {
        file_prefix: cfg.datapath.file_prefix.clone(),
        hugepages: cfg.datapath.hugepages.parse()?,
        no_huge_memory_mb: cfg.datapath.no_huge_memory_mb,
        main_core: cfg.datapath.main_core,
        extra_args: cfg.datapath.eal_args.clone(),
    })
}

/// Everything that lives while forwarding; dropped in field order is NOT
/// relied upon: `shutdown` tears down explicitly.
struct Running {
    pmds: Vec<PmdThread>,
    ports: Vec<(sluice_datapath::config::PortConfig, ethdev::Ethdev)>,
    pool: mempool::Mempool,
    eal: eal::Eal,
}

fn start(cfg: &Config, stop: &Arc<AtomicBool>) -> Result<Running, String> {
    let ecfg = eal_config(cfg)?;
    let (_, hugepages) = eal::Eal::args_for(&ecfg).map_err(|e| e.to_string())?;
    let need = caps::required(cfg, hugepages);
    if let Some(line) = caps::missing(&need, caps::effective()?) {
        return Err(line);
    }
    let t0 = Instant::now();
    let eal = eal::Eal::init(&ecfg).map_err(|e| e.to_string())?;
    let eal_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        hugepages = eal.hugepages,
        "DPDK EAL initialised in {eal_ms:.1} ms ({})",
        dpdk::version()
    );
    let n_pmds = cfg.datapath.cores.len();
    let pool = mempool::Mempool::new(
        &format!("{}_mbufs", cfg.datapath.file_prefix),
        cfg.datapath.mbufs,
        256,
    )
    .map_err(|e| e.to_string())?;
    let mut ports = Vec::new();
    for p in &cfg.ports {
        let dev = ethdev::Ethdev::open(
            &ethdev::EthdevConfig {
                name: p.name.clone(),
                devargs: p.devargs.clone(),
                rx_queues: p.rx_queues,
                tx_queues: n_pmds as u16,
                rx_desc: 1024,
                tx_desc: 1024,
            },
            &pool,
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(
            port = %p.name,
            ofport = p.ofport,
            driver = %dev.driver(),
            "port {} up ({})",
            p.name,
            p.devargs
        );
        ports.push((p.clone(), dev));
    }
    // Keep only the capabilities the configuration needs.
    let keep: Vec<caps::Cap> = need.keys().copied().collect();
    if let Err(e) = caps::drop_all_except(&keep) {
        tracing::warn!("{e}");
    }

    // Round-robin rx queues over PMDs.
    let mut specs: Vec<PmdSpec> = cfg
        .datapath
        .cores
        .iter()
        .enumerate()
        .map(|(i, &c)| PmdSpec {
            index: i,
            core: Some(c),
            rx: Vec::new(),
        })
        .collect();
    let mut k = 0;
    for (p, _) in &ports {
        for q in 0..p.rx_queues {
            specs[k % n_pmds].rx.push((PortNo(p.ofport), q));
            k += 1;
        }
    }
    let max_ofport = ports.iter().map(|(p, _)| p.ofport).max().unwrap_or(0) as usize;
    let ofports: Vec<PortNo> = ports.iter().map(|(p, _)| PortNo(p.ofport)).collect();
    let mut pmds = Vec::new();
    for spec in specs {
        let mut handles: Vec<Option<ethdev::DpdkPort>> = vec![None; max_ofport + 1];
        for (p, dev) in &ports {
            handles[p.ofport as usize] = Some(dev.handle());
        }
        let pipeline = L2Pipeline::new(
            ofports.clone(),
            cfg.datapath.mac_table_size,
            cfg.datapath.mac_aging_s.saturating_mul(1_000_000_000),
        );
        let t = pmd::spawn(spec, handles, pipeline, stop.clone(), || {
            dpdk::register_thread()
        })
        .map_err(|e| format!("cannot start PMD thread: {e}"))?;
        pmds.push(t);
    }
    let ready = json!({
        "event": "ready",
        "eal_init_ms": (eal_ms * 10.0).round() / 10.0,
        "hugepages": eal.hugepages,
        "pmd_cores": cfg.datapath.cores,
        "ports": ports.iter().map(|(p, d)| json!({
            "name": p.name, "ofport": p.ofport, "devargs": p.devargs,
            "driver": d.driver(), "dpdk_port_id": d.port_id(),
        })).collect::<Vec<_>>(),
    });
    println!("{ready}");
    Ok(Running {
        pmds,
        ports,
        pool,
        eal,
    })
}

fn shutdown(run: Running) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut pmd_stats = Vec::new();
    for t in run.pmds {
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
            "drops": st.drops.nonzero().into_iter()
                .map(|(r, n)| (r.key().to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
        }));
        tracing::info!("{}", st.render().trim_end());
    }
    let port_stats: Vec<_> = run
        .ports
        .iter()
        .map(|(p, d)| {
            let s = d.handle().stats();
            json!({"name": p.name, "ofport": p.ofport, "stats": s})
        })
        .collect();
    println!(
        "{}",
        json!({"event": "stopped", "pmds": pmd_stats, "ports": port_stats})
    );
    drop(run.ports);
    drop(run.pool);
    drop(run.eal);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn run(args: &Args) -> Result<(), String> {
    let cfg = load_config(args)?;
    if args.check_config {
        let ecfg = eal_config(&cfg)?;
        let (eal_args, huge) = eal::Eal::args_for(&ecfg).map_err(|e| e.to_string())?;
        let need = caps::required(&cfg, huge);
        if let Some(line) = caps::missing(&need, caps::effective()?) {
            return Err(line);
        }
        println!(
            "{}",
            json!({"event": "config_ok", "eal_args": eal_args, "ports": cfg.ports.len(),
                   "capabilities": need.keys().map(|c| c.name()).collect::<Vec<_>>()})
        );
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Register signal handling before starting threads so that an early
    // SIGTERM still stops cleanly.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let running = start(&cfg, &stop)?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig} received, stopping");
    }
    stop.store(true, Ordering::Relaxed);
    shutdown(running)
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
