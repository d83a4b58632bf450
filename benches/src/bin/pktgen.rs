//! `pktgen`: writes scenario pcaps and runs the benchmark comparison.
//!
//! ```text
//! pktgen pcap --scenario l3 --flows 10000 --out /tmp/l3.pcap
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
}

fn kind(name: &str) -> Result<Kind, String> {
    Kind::from_name(name).ok_or_else(|| {
        format!(
            "unknown scenario '{name}' (expected one of: {})",
            Kind::ALL.map(Kind::name).join(", ")
        )
    })
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Pcap {
            scenario,
            flows,
            services,
            out,
        } => {
            let sc = Scenario::new(kind(&scenario)?, flows, services);
            let n = sluice_benches::write_pcap(&sc, &out)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            println!("{}: {n} frames written to {}", sc.label(), out.display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pktgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}
