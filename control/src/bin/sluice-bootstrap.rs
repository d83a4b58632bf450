//! `sluice-bootstrap`: prepares a node for Sluice pods (the DaemonSet's
//! init container, or by hand) and undoes it.
//!
//! `install` (the default) puts the CNI plugin, the reference plugins, the
//! conflist, `99-loopback.conf` and the AppArmor profile in place and, with
//! `--node-if` and `--host-if` when the host port exists, moves the node
//! IP onto it. `uninstall` (or `--uninstall`) moves the node IP back and
//! removes exactly what was installed. `move` and `move-back` do only the
//! node-IP part. See `sluice_control::bootstrap` for the rules.
//!
//! Exit status: 0 done, 1 failed (one sentence on stderr), 2 usage error,
//! 3 stopped on purpose by `--stop-after-step` (crash tests).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_control::bootstrap::{apparmor, install, nodeip, version, BootstrapError, Layout};
use sluice_hostnet::Interfaces;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bootstrap",
    version = version::build_version(),
    about = "Install Sluice's CNI plugin, configuration and AppArmor profile on a node, and move the node IP to the host exception port (and undo both)"
)]
struct Cli {
    /// Root of the node's file system: every default path below is under
    /// it (e.g. /host when the host is mounted there).
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// CNI plugin directory [default: ROOT/opt/cni/bin].
    #[arg(long, global = true, value_name = "DIR")]
    cni_bin_dir: Option<PathBuf>,
    /// CNI configuration directory [default: ROOT/etc/cni/net.d].
    #[arg(long, global = true, value_name = "DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// AppArmor profile directory [default: ROOT/etc/apparmor.d].
    #[arg(long, global = true, value_name = "DIR")]
    apparmor_dir: Option<PathBuf>,
    /// Where the bootstrap records what it did [default:
    /// ROOT/var/lib/sluice/bootstrap].
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Same as the `uninstall` command.
    #[arg(long, global = true)]
    uninstall: bool,
    /// The uplink's kernel interface, holding the node IP (NSX's node-if).
    #[arg(long, global = true, value_name = "IF", requires = "host_if")]
    node_if: Option<String>,
    /// The host exception port's kernel interface (the TAP of sluiced's
    /// host_port).
    #[arg(long, global = true, value_name = "IF", requires = "node_if")]
    host_if: Option<String>,
    /// The sluice-cni binary to install [default: sluice-cni beside this
    /// program].
    #[arg(long, global = true, value_name = "PATH")]
    cni_plugin: Option<PathBuf>,
    /// Where `loopback` and `host-local` are taken from when the CNI plugin
    /// directory has none [default: /usr/lib/cni (Debian's
    /// containernetworking-plugins), then /opt/cni/bin of this program's
    /// file system (the node image)].
    #[arg(long, global = true, value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// The conflist to install as 10-sluice.conflist (deploy/cni/)
    /// [default: a built-in one].
    #[arg(long, global = true, value_name = "FILE")]
    conflist: Option<PathBuf>,
    /// The AppArmor profile to install [default: deploy/apparmor/sluiced,
    /// built in].
    #[arg(long, global = true, value_name = "FILE")]
    apparmor_profile: Option<PathBuf>,
    /// Load the AppArmor profile into the kernel when AppArmor is enabled
    /// (auto), or never.
    #[arg(long, global = true, value_enum, default_value_t = apparmor::Mode::Auto)]
    apparmor: apparmor::Mode,
    /// Stop after N steps of a node-IP move (simulates a crash; tests).
    #[arg(long, global = true, hide = true, value_name = "N")]
    stop_after_step: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the files (the default) and, with --node-if/--host-if, move
    /// the node IP when the host port exists.
    Install,
    /// Move the node IP back (if moved) and remove exactly what was
    /// installed.
    Uninstall,
    /// Move the node's IPv4 addresses and routes from --node-if to
    /// --host-if (idempotent: a re-run finishes an interrupted move).
    Move,
    /// Move the recorded addresses and routes back to the uplink.
    MoveBack,
    /// Run COMMAND (sluiced) and put the node's addresses back on
    /// --node-if whenever it exits, however it exits (and at start, if a
    /// previous run left them recorded). Exits with COMMAND's status.
    Supervise {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("{0}")]
    Usage(String),
    #[error("stopped after step {0}, as asked")]
    Stopped(usize),
    /// The supervised command's exit code.
    #[error("the supervised command exited with {0}")]
    Exit(i32),
}

fn layout(cli: &Cli) -> Layout {
    let mut l = Layout::under(&cli.root);
    if let Some(d) = &cli.cni_bin_dir {
        l.cni_bin_dir = d.clone();
    }
    if let Some(d) = &cli.cni_conf_dir {
        l.cni_conf_dir = d.clone();
    }
    if let Some(d) = &cli.apparmor_dir {
        l.apparmor_dir = d.clone();
    }
    if let Some(d) = &cli.state_dir {
        l.state_dir = d.clone();
    }
    l
}

fn read(path: &PathBuf, what: &'static str) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| {
        BootstrapError::Io {
            what,
            path: path.clone(),
            source,
        }
        .into()
    })
}

fn sources(cli: &Cli) -> Result<install::Sources, CliError> {
    let cni_plugin = match &cli.cni_plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("sluice-cni")))
            .ok_or_else(|| {
                CliError::Usage(
                    "cannot tell where this program is: pass the sluice-cni binary with --cni-plugin"
                        .into(),
                )
            })?,
    };
    let (conflist, conflist_origin) = match &cli.conflist {
        Some(p) => (read(p, "read the conflist")?, p.display().to_string()),
        None => (install::DEFAULT_CONFLIST.to_string(), "(built in)".into()),
    };
    let apparmor_profile = match &cli.apparmor_profile {
        Some(p) => read(p, "read the AppArmor profile")?,
        None => install::APPARMOR_PROFILE.to_string(),
    };
    Ok(install::Sources {
        cni_plugin,
        plugins_dirs: match &cli.plugins_dir {
            Some(d) => vec![d.clone()],
            None => vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        },
        conflist,
        conflist_origin,
        apparmor_profile,
        build_version: version::build_version().to_string(),
        apparmor: cli.apparmor,
    })
}

fn interfaces(cli: &Cli) -> Option<Interfaces> {
    Some(Interfaces {
        uplink_if: cli.node_if.clone()?,
        host_if: cli.host_if.clone()?,
    })
}

fn stopped(o: nodeip::Outcome) -> Result<(), CliError> {
    match o {
        nodeip::Outcome::Done => Ok(()),
        nodeip::Outcome::Stopped(n) => Err(CliError::Stopped(n)),
    }
}

fn run(cli: &Cli) -> Result<(), CliError> {
    let l = layout(cli);
    if let Some(Command::Supervise { command }) = &cli.command {
        let ifs = interfaces(cli).ok_or_else(|| {
            CliError::Usage("supervise needs --node-if IF and --host-if IF".into())
        })?;
        let code = sluice_control::bootstrap::supervise::supervise(&ifs, &l.state_dir, command)?;
        return Err(CliError::Exit(code));
    }
    let _lock = sluice_control::bootstrap::lock(&l.state_dir)?;
    let command = match (&cli.command, cli.uninstall) {
        (None, true) | (Some(Command::Uninstall), _) => Command::Uninstall,
        (Some(_), true) => {
            return Err(CliError::Usage(
                "--uninstall goes with no command (or use the `uninstall` command)".into(),
            ))
        }
        (None, false) | (Some(Command::Install), false) => Command::Install,
        (Some(Command::Move), false) => Command::Move,
        (Some(Command::MoveBack), false) => Command::MoveBack,
        (Some(Command::Supervise { .. }), false) => {
            return Err(CliError::Usage("supervise runs alone".into()))
        }
    };
    match command {
        Command::Install => {
            install::install(&l, &sources(cli)?)?;
            if let Some(ifs) = interfaces(cli) {
                if ifs.exists(&ifs.host_if) {
                    stopped(nodeip::move_to_host(
                        &ifs,
                        &l.state_dir,
                        cli.stop_after_step,
                    )?)?;
                } else {
                    tracing::info!(
                        "the host port {} does not exist yet: the node IP stays on {}; sluiced moves it when it creates the port, or run `sluice-bootstrap move` then",
                        ifs.host_if,
                        ifs.uplink_if
                    );
                }
            }
        }
        Command::Uninstall => {
            let (out, dirs) = nodeip::move_back(&l.state_dir, cli.stop_after_step)?;
            stopped(out)?;
            install::uninstall(&l, &dirs)?;
        }
        Command::Move => {
            let ifs = interfaces(cli).ok_or_else(|| {
                CliError::Usage("move needs --node-if IF and --host-if IF".into())
            })?;
            stopped(nodeip::move_to_host(
                &ifs,
                &l.state_dir,
                cli.stop_after_step,
            )?)?;
        }
        Command::MoveBack => {
            let (out, dirs) = nodeip::move_back(&l.state_dir, cli.stop_after_step)?;
            stopped(out)?;
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
        // Handled before the lock is taken.
        Command::Supervise { .. } => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colours only on a terminal: kubelet keeps init containers' logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Stopped(n)) => {
            eprintln!("sluice-bootstrap: stopped after step {n}, as asked; run it again to finish");
            ExitCode::from(3)
        }
        Err(CliError::Exit(code)) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(CliError::Usage(m)) => {
            eprintln!("sluice-bootstrap: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sluice-bootstrap: {e}");
            ExitCode::from(1)
        }
    }
}
