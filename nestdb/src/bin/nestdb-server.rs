//! `nestdb-server`: serves OVSDB databases over RFC 7047 JSON-RPC.
//!
//! Command line compatible with ovsdb-server's main options: database files as
//! arguments, `--remote=punix:PATH|ptcp:PORT[:IP]` (repeatable), `--unixctl=PATH`,
//! `--pidfile[=FILE]`, `--log-file[=FILE]`, plus `--schema FILE` to create missing
//! databases.  Exits cleanly (removing its sockets and pidfile) on SIGTERM, SIGINT or
//! the `exit` control command.

use clap::Parser;

// A large transaction allocates and frees millions of small objects; mimalloc
// does that several times faster than glibc malloc (nestdb/tests/big_txn.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use nestdb::server::{Config, Remote, Server, DEFAULT_REMOTE, STOP};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "nestdb-server",
    version,
    about = "OVSDB-protocol (RFC 7047) database server"
)]
struct Args {
    /// Database files to serve (created from --schema if missing).
    #[arg(default_value = "/var/lib/nestdb/conf.db")]
    databases: Vec<PathBuf>,
    /// Listen on punix:PATH or ptcp:PORT[:IP]; repeatable.
    #[arg(long = "remote", value_name = "REMOTE")]
    remotes: Vec<String>,
    /// Control socket for ovs-appctl.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/nestdb/nestdb-server.ctl"
    )]
    unixctl: PathBuf,
    /// Write the process id to FILE.
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true,
          default_missing_value = "/var/run/nestdb/nestdb-server.pid")]
    pidfile: Option<PathBuf>,
    /// Log to FILE instead of standard error.
    #[arg(long = "log-file", value_name = "FILE", num_args = 0..=1, require_equals = true,
          default_missing_value = "/var/log/nestdb/nestdb-server.log")]
    log_file: Option<PathBuf>,
    /// Schema used to create database files that do not exist.
    #[arg(long, value_name = "FILE")]
    schema: Option<PathBuf>,
    /// Largest JSON-RPC message accepted from a client, in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_message_size: usize,
    /// Output backlog, in bytes, after which a client that does not read is disconnected.
    #[arg(long, default_value_t = 64 << 20)]
    max_backlog: usize,
    /// Bytes all clients together may make the server hold (output they have
    /// not read, input not yet parsed); past it the client holding the most
    /// is disconnected.
    #[arg(long, default_value_t = 512 << 20)]
    max_memory: usize,
    /// Largest estimated memory, in bytes, one decoded message may take; it
    /// also bounds how long one message can hold up other clients.
    #[arg(long, default_value_t = 128 << 20)]
    max_message_memory: usize,
    /// Log size, in bytes, beyond which the database is compacted automatically.
    #[arg(long, default_value_t = 10 << 20)]
    compact_threshold: u64,
    /// Idle time in milliseconds before probing a TCP client with echo (0 disables).
    #[arg(long, default_value_t = 5000)]
    inactivity_probe: u64,
    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 0.0.0.0:9477).
    #[arg(long, value_name = "ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid initial value; the handler only stores
        // to an atomic, which is async-signal-safe; SA_RESTART is deliberately not set
        // so poll() returns EINTR and the loop notices the flag.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn init_logging(file: Option<&PathBuf>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match file {
        Some(p) => {
            if let Some(parent) = p.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// Turns transparent huge pages off for this process. mimalloc advises
/// its arenas `MADV_HUGEPAGE`, and where the kernel's THP `defrag` setting
/// is `madvise` (Debian's default) the first touch of each 2 MiB page may
/// compact memory synchronously: `perf -e cpu-clock -g` of the agent speed
/// probe's 120,000-row transaction on the shared 2-core machine showed
/// ~15% of the server's CPU time in direct compaction
/// (`__alloc_pages_direct_compact` under `do_huge_pmd_anonymous_page`).
/// Failure (an old kernel) changes nothing else.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; the
    // unused arguments are zero as prctl(2) asks.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let args = Args::parse();
    if let Err(e) = init_logging(args.log_file.as_ref()) {
        eprintln!("nestdb-server: {e}");
        return ExitCode::FAILURE;
    }
    let remotes = if args.remotes.is_empty() {
        vec![DEFAULT_REMOTE.to_string()]
    } else {
        args.remotes.clone()
    };
    let mut parsed = Vec::new();
    for r in &remotes {
        match Remote::parse(r) {
            Ok(r) => parsed.push(r),
            Err(e) => {
                eprintln!("nestdb-server: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let config = Config {
        databases: args.databases.clone(),
        schema: args.schema.clone(),
        remotes: parsed,
        unixctl: Some(args.unixctl.clone()),
        max_message_size: args.max_message_size,
        max_backlog: args.max_backlog,
        max_memory: args.max_memory,
        max_message_memory: args.max_message_memory,
        compact_threshold: args.compact_threshold,
        inactivity_probe: (args.inactivity_probe > 0)
            .then(|| Duration::from_millis(args.inactivity_probe)),
        metrics_address: args.metrics_address,
    };
    install_signal_handlers();
    let mut server = match Server::new(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nestdb-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(p) = &args.pidfile {
        let write = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| {
                // Written whole then renamed, so readers never see a partial pidfile.
                let mut tmp = p.as_os_str().to_owned();
                tmp.push(".tmp");
                std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
                std::fs::rename(&tmp, p)
            });
        if let Err(e) = write {
            eprintln!("nestdb-server: cannot write pidfile {}: {e}", p.display());
            server.cleanup();
            return ExitCode::FAILURE;
        }
    }
    tracing::info!(
        "nestdb-server ready: serving {}",
        server.db_names().join(", ")
    );
    let r = server.run();
    server.cleanup();
    if let Some(p) = &args.pidfile {
        let _ = std::fs::remove_file(p);
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("nestdb-server: {e}");
            ExitCode::FAILURE
        }
    }
}
