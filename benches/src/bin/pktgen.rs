//! `pktgen`: writes scenario pcaps and runs the benchmark comparison.
//!
//! ```text
//! pktgen pcap --scenario l3 --flows 10000 --out /tmp/l3.pcap
//! pktgen run --sluiced target/release/sluiced --out-dir benches/results
//! pktgen run --quick --peers sluiced --scenarios l2:1000 --no-scale
//! pktgen run --no-latency            # skip the memif latency mode
//! pktgen run --quick --peers sluiced --scenarios l2:1000 --extra-pmd-cores 0   # 2 PMDs
//! pktgen latency --out-dir benches/results   # only the latency mode
//! pktgen plot --results benches/results/results.json
//! ```
//!
//! `run` needs root (DPDK, hugepages). It writes `results.json`,
//! `results.md` (the table) and the PNG plots into `--out-dir`, and keeps
//! its pcaps and per-peer run directories in a private work directory that
//! it removes at the end unless `--keep-work-dir`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_benches::peer::{Cores, OvsPaths};
use sluice_benches::report::{loadavg, Machine, Report, WallTimes};
use sluice_benches::runner::{PeerKind, RunConfig, Status};
use sluice_benches::scenario::{Kind, Scenario};

#[derive(Parser)]
#[command(
    name = "pktgen",
    about = "Sluice traffic scenarios and benchmark runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes one scenario's frames into a pcap file.
    Pcap {
        /// Scenario kind: l2, l3, mixed, dnat, dnat-new, encap, decap.
        #[arg(long)]
        scenario: String,
        /// Distinct flows.
        #[arg(long, default_value_t = 1)]
        flows: u32,
        /// Services (dnat, dnat-new).
        #[arg(long, default_value_t = 10)]
        services: u32,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Runs the comparison (and the scale curves) and writes the results.
    Run(Box<RunArgs>),
    /// Runs only the latency mode (memif-gen over net_memif) and puts it
    /// into the results.json and results.md in --out-dir, keeping the
    /// other figures.
    Latency(Box<RunArgs>),
    /// Redraws the plots from a results.json.
    Plot {
        /// The results file.
        #[arg(long, default_value = "benches/results/results.json")]
        results: PathBuf,
        /// Where to write the PNGs (default: beside the results).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The sluiced binary.
    #[arg(long, default_value = "target/release/sluiced")]
    sluiced: PathBuf,
    /// The dpdk-testpmd binary.
    #[arg(long, default_value = "/usr/bin/dpdk-testpmd")]
    testpmd: PathBuf,
    /// ovs-vswitchd built with DPDK.
    #[arg(
        long,
        default_value = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
    )]
    ovs_vswitchd: PathBuf,
    /// Peers, comma-separated: sluiced, ovs-dpdk, testpmd-io, testpmd-macswap.
    #[arg(
        long,
        default_value = "sluiced,ovs-dpdk,testpmd-io,testpmd-macswap",
        value_delimiter = ','
    )]
    peers: Vec<String>,
    /// Comparison scenarios as KIND[:FLOWS[:SERVICES]], comma-separated.
    #[arg(
        long,
        default_value = "l2:1000,l3:10000,mixed:10000:100,dnat:1000:10,dnat-new:200000:10,encap:10000,decap:10000",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
    /// Skip the scale curves.
    #[arg(long)]
    no_scale: bool,
    /// Seconds of warm-up after programming.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Most seconds of warm-up while upcalls are still 1% or more of the
    /// packets.
    #[arg(long, default_value_t = 15.0)]
    max_warmup: f64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Measurements per (scenario, peer).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A few seconds per point: 0.5 s warm-up, 3 x 0.5 s.
    #[arg(long)]
    quick: bool,
    /// EAL main core.
    #[arg(long, default_value_t = 0)]
    main_core: usize,
    /// Forwarding core.
    #[arg(long, default_value_t = 1)]
    pmd_core: usize,
    /// More PMD cores for sluiced, comma-separated (the other peers keep
    /// one): sluiced's traffic source gets one rx queue per PMD, each
    /// replaying every Nth frame of the scenario (whole flows), and its
    /// Mpps is the total over its PMDs. E.g. `--extra-pmd-cores 0` on a
    /// 2-core machine: the second PMD shares core 0 with the main thread.
    #[arg(long, value_delimiter = ',')]
    extra_pmd_cores: Vec<usize>,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = "benches/results")]
    out_dir: PathBuf,
    /// Private work directory (default: a new one under $TMPDIR).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (pcaps, peer logs).
    #[arg(long)]
    keep_work_dir: bool,
    /// Run testpmd macswap on every comparison scenario (default: on l2
    /// only; the I/O ceiling hardly depends on the scenario, and the whole
    /// comparison must fit in 15 minutes).
    #[arg(long)]
    all_macswap: bool,
    /// Skip the latency mode (memif-gen over net_memif).
    #[arg(long)]
    no_latency: bool,
    /// The memif-gen binary (default: beside pktgen).
    #[arg(long)]
    memif_gen: Option<PathBuf>,
    /// Latency mode: offered rates in Mpps, or `max`, comma-separated.
    #[arg(long, default_value = "0.1,1,max", value_delimiter = ',')]
    latency_rates: Vec<String>,
    /// Latency mode: scenarios as KIND[:FLOWS[:SERVICES]] (sluiced runs
    /// each, testpmd-io the first).
    #[arg(long, default_value = "l2:1000,dnat:1000:10", value_delimiter = ',')]
    latency_scenarios: Vec<String>,
    /// Free-text conditions to record (e.g. "machine shared with builds");
    /// given several times, they are joined.
    #[arg(long)]
    conditions: Vec<String>,
    /// Most seconds programming one scenario may take (OVS with 100k
    /// select groups); longer is reported as not run.
    #[arg(long, default_value_t = 30.0)]
    program_budget: f64,
    /// Seconds scripts/bench.sh spent installing packages (recorded).
    #[arg(long)]
    install_seconds: Option<f64>,
    /// Seconds scripts/bench.sh spent building (recorded).
    #[arg(long)]
    build_seconds: Option<f64>,
    /// Unix time scripts/bench.sh started (for the total wall time).
    #[arg(long)]
    started_at: Option<f64>,
}

fn kind(name: &str) -> Result<Kind, String> {
    Kind::from_name(name).ok_or_else(|| {
        format!(
            "unknown scenario '{name}' (expected one of: {})",
            Kind::ALL.map(Kind::name).join(", ")
        )
    })
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    let mut it = s.split(':');
    let k = kind(it.next().unwrap_or(""))?;
    let num = |x: Option<&str>, default: u32| -> Result<u32, String> {
        x.map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                format!("bad number '{v}' in scenario '{s}' (expected KIND[:FLOWS[:SERVICES]])")
            })
        })
    };
    let flows = num(it.next(), 1)?;
    let services = num(it.next(), 10)?;
    Ok(Scenario::new(k, flows, services))
}

/// The scale curves: l3 over flow counts; dnat over client connections
/// (10 Services) and over Services (1k connections), for sluiced and
/// OVS-DPDK (issue 4: cost flat as Services grow, compared in one run).
fn scale_points(peers: &[PeerKind]) -> Vec<(PeerKind, Scenario)> {
    let mut v = Vec::new();
    for &p in peers {
        if !matches!(p, PeerKind::Sluiced | PeerKind::OvsDpdk) {
            continue;
        }
        // OVS's shared mbuf pool cannot preload 1M frames (the runner
        // reports it as not run), and each OVS point re-installs 10k
        // routes with ovs-ofctl, so it gets fewer l3 points.
        let flows: &[u32] = if p == PeerKind::OvsDpdk {
            &[1, 10_000, 100_000]
        } else {
            &[1, 10_000, 100_000, 1_000_000]
        };
        for &f in flows {
            v.push((p, Scenario::new(Kind::L3, f, 0)));
        }
        for c in [1, 1_000, 100_000, 1_000_000] {
            v.push((p, Scenario::new(Kind::Dnat, c, 10)));
        }
        for s in [10_000, 100_000] {
            v.push((p, Scenario::new(Kind::Dnat, 1_000, s)));
        }
    }
    v
}

/// The latency mode's settings: 0.5 s warm-up and 3 x 1.5 s per rate
/// (0.3 s and 3 x 0.5 s with --quick); about 100 s for sluiced (l2,
/// dnat), testpmd-io (l2) and OVS-DPDK (l2, dnat) at three rates.
fn latency_config(
    args: &RunArgs,
    peers: &[PeerKind],
    work_dir: &std::path::Path,
) -> Result<sluice_benches::latency::LatencyConfig, String> {
    let (warmup, interval) = if args.quick { (0.3, 0.5) } else { (0.5, 1.5) };
    Ok(sluice_benches::latency::LatencyConfig {
        memif_gen: args
            .memif_gen
            .clone()
            .unwrap_or_else(sluice_benches::latency::LatencyConfig::default_memif_gen),
        sluiced: args.sluiced.clone(),
        testpmd: args.testpmd.clone(),
        work_dir: work_dir.to_path_buf(),
        cores: Cores::one(args.main_core, args.pmd_core),
        rates: args
            .latency_rates
            .iter()
            .map(|r| sluice_benches::latency::parse_rate(r))
            .collect::<Result<_, _>>()?,
        warmup: Duration::from_secs_f64(warmup),
        interval: Duration::from_secs_f64(interval),
        runs: 3,
        peers: peers
            .iter()
            .copied()
            .filter(|p| {
                matches!(
                    p,
                    PeerKind::Sluiced | PeerKind::TestpmdIo | PeerKind::OvsDpdk
                )
            })
            .collect(),
        scenarios: args
            .latency_scenarios
            .iter()
            .map(|s| parse_scenario(s))
            .collect::<Result<_, _>>()?,
        gen_prefix: format!("sluice-bench-memif-gen-{}", std::process::id()),
    })
}

fn peers_of(names: &[String]) -> Result<Vec<PeerKind>, String> {
    names
        .iter()
        .map(|p| {
            PeerKind::from_name(p).ok_or_else(|| {
                format!(
                    "unknown peer '{p}' (expected: {})",
                    PeerKind::ALL.map(PeerKind::name).join(", ")
                )
            })
        })
        .collect()
}

/// The work directory: `--work-dir`, else one per process in the temp
/// directory.
fn work_dir_of(args: &RunArgs) -> PathBuf {
    args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id()))
    })
}

/// Writes `report` into `results.json` and its table into `results.md`
/// in `out_dir`; returns both paths and the table.
fn write_results(report: &Report, out_dir: &Path) -> Result<(PathBuf, PathBuf, String), String> {
    let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, json + "\n")
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let table = report.table();
    let md_path = out_dir.join("results.md");
    std::fs::write(&md_path, &table)
        .map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;
    Ok((json_path, md_path, table))
}

/// Says where the results went (`what`: what they are, may be empty) and
/// removes the work directory unless `--keep-work-dir`.
fn finish(args: &RunArgs, work_dir: &Path, what: &str, json: &Path, md: &Path) {
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what} ")
    };
    eprintln!(
        "pktgen: wrote {what}{} and {}",
        json.display(),
        md.display()
    );
    if !args.keep_work_dir {
        let _ = std::fs::remove_dir_all(work_dir);
    }
}

/// `pktgen latency`: only the latency mode, put into the results.json in
/// `--out-dir` (the other figures are kept) and rendered into results.md.
fn latency_only(args: RunArgs) -> Result<(), String> {
    let peers = peers_of(&args.peers)?;
    let work_dir = work_dir_of(&args);
    let cfg = latency_config(&args, &peers, &work_dir)?;
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
    let json_path = args.out_dir.join("results.json");
    let mut report = match std::fs::read_to_string(&json_path) {
        Ok(t) => serde_json::from_str::<Report>(&t)
            .map_err(|e| format!("{} is not a results file: {e}", json_path.display()))?,
        Err(_) => Report {
            machine: Machine::detect(),
            started: sluice_benches::utc_now(),
            conditions: args.conditions.join("; "),
            ..Report::default()
        },
    };
    let mut latency = sluice_benches::latency::run_all(&cfg);
    if !args.conditions.is_empty() {
        latency.conditions = args.conditions.join("; ");
    }
    latency.loadavg = loadavg();
    report.latency = Some(latency);
    report
        .not_done
        .retain(|n| !n.starts_with("latency percentiles"));
    let (json_path, md_path, _) = write_results(&report, &args.out_dir)?;
    if let Some(l) = &report.latency {
        println!("{}", l.table());
    }
    finish(
        &args,
        &work_dir,
        "the latency results into",
        &json_path,
        &md_path,
    );
    Ok(())
}

fn run(args: RunArgs) -> Result<(), String> {
    let peers = peers_of(&args.peers)?;
    let scenarios = args
        .scenarios
        .iter()
        .map(|s| parse_scenario(s))
        .collect::<Result<Vec<_>, _>>()?;
    if peers.contains(&PeerKind::Sluiced) && !args.sluiced.exists() {
        return Err(format!(
            "{} does not exist: build it with `cargo build --release -p sluice-datapath --bin sluiced` or pass --sluiced",
            args.sluiced.display()
        ));
    }
    let (warmup, interval, runs) = if args.quick {
        (0.5, 0.5, 3)
    } else {
        (args.warmup, args.interval, args.runs.max(1))
    };
    let work_dir = work_dir_of(&args);
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.out_dir.display()))?;
    let cfg = RunConfig {
        warmup: Duration::from_secs_f64(warmup),
        max_warmup: Duration::from_secs_f64(args.max_warmup.max(warmup)),
        interval: Duration::from_secs_f64(interval),
        runs,
        work_dir: work_dir.clone(),
        sluiced: args.sluiced.clone(),
        testpmd: args.testpmd.clone(),
        ovs: OvsPaths {
            vswitchd: args.ovs_vswitchd.clone(),
            ..OvsPaths::default()
        },
        cores: Cores {
            main: args.main_core,
            pmd: args.pmd_core,
            extra_pmds: args.extra_pmd_cores.clone(),
        },
        program_budget: Duration::from_secs_f64(args.program_budget.max(1.0)),
    };
    let latency = if args.no_latency {
        None
    } else {
        Some(latency_config(&args, &peers, &work_dir)?)
    };
    let run_start = std::time::Instant::now();
    let mut report = Report {
        machine: Machine::detect(),
        started: sluice_benches::utc_now(),
        warmup_s: warmup,
        interval_s: interval,
        runs,
        conditions: args.conditions.join("; "),
        ..Report::default()
    };
    let mut macswap_trimmed = false;
    for sc in &scenarios {
        for &p in &peers {
            if p == PeerKind::TestpmdMacswap && sc.kind != Kind::L2 && !args.all_macswap {
                macswap_trimmed = true;
                continue;
            }
            report
                .comparison
                .push(sluice_benches::runner::run_one(p, sc, &cfg));
        }
    }
    if macswap_trimmed {
        report.not_done.push(
            "testpmd macswap on l2 only (the I/O ceiling hardly depends on the scenario; trimmed to keep the whole comparison under 15 minutes; --all-macswap runs it on every scenario)"
                .to_string(),
        );
    }
    if let Some(l) = &latency {
        let mut r = sluice_benches::latency::run_all(l);
        r.loadavg = loadavg();
        report.latency = Some(r);
    }
    if !args.no_scale {
        for (p, sc) in scale_points(&peers) {
            // Once a curve is pending (a missing feature), its larger
            // points would be too: skip them rather than program them.
            // A point the comparison already measured is not run twice.
            let same = report
                .comparison
                .iter()
                .find(|o| o.peer == p && o.scenario == sc)
                .cloned();
            // Once a curve is pending (a missing feature), its larger
            // points would be too: skip them rather than program them.
            let pending = report
                .scale
                .iter()
                .find(|o| o.peer == p && o.scenario.kind == sc.kind && o.status == Status::Pending);
            let outcome = match (same, pending) {
                (Some(o), _) => o,
                (None, Some(first)) => sluice_benches::runner::Outcome::skipped(
                    p,
                    sc,
                    Status::Pending,
                    format!(
                        "as {}: {}",
                        first.scenario.label(),
                        first.reason.as_deref().unwrap_or("")
                    ),
                ),
                (None, None) => sluice_benches::runner::run_one(p, &sc, &cfg),
            };
            report.scale.push(outcome);
        }
    }
    if peers.contains(&PeerKind::Sluiced) && !args.no_scale {
        let (control, memory) = sluice_benches::control_plane(&cfg);
        report.control = control;
        report.memory = memory;
    }
    if peers.contains(&PeerKind::OvsDpdk) && !args.no_scale {
        let (timing, memory) = sluice_benches::ovs_flow_memory(&cfg);
        report.control.extend(timing);
        report.memory.push(memory);
    }
    sluice_benches::finish(&mut report);
    report.wall = WallTimes {
        install_s: args.install_seconds,
        build_s: args.build_seconds,
        run_s: run_start.elapsed().as_secs_f64(),
        total_s: args.started_at.and_then(|t0| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs_f64();
            Some(now - t0)
        }),
    };
    report.machine.loadavg_end = loadavg();
    let (json_path, md_path, table) = write_results(&report, &args.out_dir)?;
    for msg in sluice_benches::plot::draw_all(&report, &args.out_dir) {
        eprintln!("pktgen: {msg}");
    }
    println!("{table}");
    finish(&args, &work_dir, "", &json_path, &md_path);
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Pcap {
            scenario,
            flows,
            services,
            out,
        } => kind(&scenario).and_then(|k| {
            let sc = Scenario::new(k, flows, services);
            let n = sluice_benches::write_pcap(&sc, &out)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            println!("{}: {n} frames written to {}", sc.label(), out.display());
            Ok(())
        }),
        Command::Run(args) => run(*args),
        Command::Latency(args) => latency_only(*args),
        Command::Plot { results, out_dir } => std::fs::read_to_string(&results)
            .map_err(|e| format!("cannot read {}: {e}", results.display()))
            .and_then(|t| {
                serde_json::from_str::<Report>(&t)
                    .map_err(|e| format!("{} is not a results file: {e}", results.display()))
            })
            .map(|r| {
                let dir = out_dir.unwrap_or_else(|| {
                    results
                        .parent()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from("."))
                });
                for msg in sluice_benches::plot::draw_all(&r, &dir) {
                    eprintln!("pktgen: {msg}");
                }
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}
