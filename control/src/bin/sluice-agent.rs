//! `sluice-agent`: programs the node's `sluiced` from the node database.
//!
//! It monitors `Sluice_Node` on nestdb-server (`monitor_cond_since`),
//! compiles the rows into the program `sluiced` should hold, sends the
//! difference from what `sluiced` holds as one `node-commit`, and writes
//! back `Node_Status` and each `Logical_Port`'s `dp_port` and `up` (see
//! `sluice_control::agent`). At start it drops every capability (it needs
//! none beyond access to the two sockets) and checks both sockets: a socket
//! that refuses it for good (permission denied) ends it with exit status 1
//! and a sentence saying what to do; one that is not there yet is retried.
//!
//! Logs go to stderr; `RUST_LOG` sets the level (default `info`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use sluice_api::paths;
use sluice_control::agent::chunk::{parse_max_commit_bytes, DEFAULT_MAX_COMMIT_BYTES};
use sluice_control::agent::daemon::{run, AgentConfig};
use sluice_control::agent::startup::{
    check_schema, check_socket, drop_capabilities, unix_path, AgentError, SocketState,
};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-agent",
    version,
    about = "Program the node's sluiced from the node database (nestdb)"
)]
struct Args {
    /// The node database: unix:PATH or tcp:HOST:PORT.
    #[arg(long, env = "SLUICE_DB", default_value_t = format!("unix:{}", paths::NESTDB_SOCK), value_name = "REMOTE")]
    db: String,
    /// sluiced's control socket.
    #[arg(long, env = "SLUICE_CTL", default_value = paths::SLUICED_CTL, value_name = "PATH")]
    ctl: PathBuf,
    /// How often to read sluiced's node-status, in milliseconds (faster,
    /// 100 ms, while a pod port is not forwarding yet).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    status_interval_ms: u64,
    /// Longest wait between retries of an unreachable socket or a refused
    /// commit, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    retry_max_ms: u64,
    /// Largest node-commit to send, in bytes of JSON; a bigger change set
    /// is sent as several commits. From 1 to the largest request sluiced's
    /// control socket accepts (67108864).
    #[arg(long, default_value_t = DEFAULT_MAX_COMMIT_BYTES, value_name = "BYTES", value_parser = max_commit_bytes)]
    max_commit_bytes: usize,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 0.0.0.0:9478).
    #[arg(long, value_name = "ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
}

/// clap's parser of `--max-commit-bytes` (the error is the sentence).
fn max_commit_bytes(text: &str) -> Result<usize, String> {
    parse_max_commit_bytes(text).map_err(|e| e.to_string())
}

fn start(args: &Args) -> Result<(), AgentError> {
    // Before any thread exists, so that every thread starts without them.
    let dropped = drop_capabilities();
    if dropped.held.is_empty() {
        info!("capabilities: held none; sluice-agent needs none beyond access to its two sockets");
    } else {
        info!(
            "capabilities: dropped all {} held ({}); sluice-agent needs none beyond access to its two sockets",
            dropped.held.len(),
            dropped.held.join(",")
        );
    }
    for f in &dropped.failures {
        warn!("capabilities: could not clear {f}");
    }
    let db_path = unix_path(&args.db)?;
    let sockets = db_path
        .iter()
        .map(|p| ("nestdb-server", p.clone()))
        .chain([("sluiced control", args.ctl.clone())]);
    for (what, path) in sockets {
        match check_socket(what, &path)? {
            SocketState::Reachable => {
                info!(socket = %path.display(), "the {what} socket accepts connections")
            }
            SocketState::NotYet(why) => warn!("{why}"),
        }
    }
    check_schema(&args.db)?;
    let mut config = AgentConfig::new(args.db.clone(), args.ctl.clone());
    config.status_interval = Duration::from_millis(args.status_interval_ms.max(10));
    config.retry_max = Duration::from_millis(args.retry_max_ms.max(100));
    config.max_commit_bytes = args.max_commit_bytes;
    let _metrics = match args.metrics_address {
        Some(addr) => {
            let m = config.metrics.clone();
            Some(sluice_metrics::MetricsServer::start(addr, move || {
                m.render()
            })?)
        }
        None => None,
    };
    run(config, &AtomicBool::new(false))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match start(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("sluice-agent: {e}");
            ExitCode::from(1)
        }
    }
}
