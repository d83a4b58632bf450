//! `sluice-bootstrap supervise -- sluiced ...`: runs sluiced so that the
//! node's addresses never stay on a host port that died with it.
//!
//! sluiced moves the node's IPv4 addresses and routes from the uplink's
//! kernel interface (node-if) onto its host exception port, a TAP that
//! exists only while sluiced runs, and moves them back at a clean stop.
//! If it is killed (SIGKILL, OOM, a crash), the TAP and the addresses on
//! it vanish and the node is unreachable until someone puts them back.
//! The supervisor is that someone:
//! 1. at start, a move still recorded from a previous run (its supervisor
//!    was killed too) is undone first;
//! 2. it records what is on node-if (the same record `sluice-bootstrap
//!    move` keeps), then starts sluiced, passing SIGTERM and SIGINT on;
//! 3. when sluiced exits, for any reason, it moves the recorded addresses
//!    and routes back to node-if (a no-op after a clean stop, which already
//!    did) and exits with sluiced's status, so kubelet restarts the
//!    container and the next sluiced moves them again.
//!
//! The node is unreachable only between sluiced's death and the move back
//! (one `ip` command per address and route).
//!
//! Hand-over restarts (a DaemonSet rolling update with surge: the new pod
//! runs `sluiced --take-over` next to the old one, both sharing the control
//! socket's hostPath directory):
//! - a supervisor whose command has `--take-over` and that finds a sluiced
//!   answering on the command's control socket (`--ctl-socket`, or
//!   `[datapath] ctl_socket` of its `--config`) neither undoes the move
//!   recorded by the running one's supervisor nor records the uplink (the
//!   addresses are on the running sluiced's host port; the record stays,
//!   and this sluiced inherits it with the port);
//! - a supervisor whose sluiced exited while another sluiced answers on its
//!   control socket (it handed over) moves nothing back and does not exit:
//!   it waits for SIGTERM (the rollout deleting its pod) and then exits 0,
//!   so that kubelet does not restart the old sluiced, whose `--take-over`
//!   would take the node back.
//!
//! A vfio-pci uplink (sluiced's configuration, `--config FILE` in the
//! command, gives a PCI address as the uplink's `devargs`): while sluiced
//! runs, the NIC has no kernel interface, so in steps 1 and 3 the NIC is
//! first given back to its kernel driver through sysfs ([`pci`]:
//! `driver_override` cleared, unbound from vfio-pci, bound to the driver
//! recorded when a supervisor saw the NIC on it, or to the kernel's own
//! match through `drivers_probe`), and the supervisor waits (at most
//! [`NETDEV_WAIT`]) for its interface before moving the addresses back.
//! kubelet's restart then starts a new supervisor; the NIC goes back to
//! vfio-pci by the node's binding (`deploy/bootstrap.sh`, driverctl)
//! before sluiced can use it again. The sysfs root is `/sys`, or
//! `$SLUICE_SYSFS_ROOT` (tests point it at a fake tree).
//!
//! Thread-safety: one thread forwards signals; the rest is sequential.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_hostnet::Interfaces;

use super::pci::{self, NicRecord, Sysfs};
use super::{lock, nodeip, BootstrapError};

/// How long the supervisor waits for the uplink's kernel interface after
/// giving a vfio-pci NIC back to its driver.
pub const NETDEV_WAIT: Duration = Duration::from_secs(30);

/// Gives a vfio-pci uplink back to its kernel driver and waits for its
/// interface (nothing when the uplink is no PCI device or is not on
/// vfio-pci).
fn give_back_nic(sysfs: &Sysfs, nic: Option<&str>, state_dir: &Path) -> Result<(), BootstrapError> {
    let Some(addr) = nic else {
        return Ok(());
    };
    let driver = NicRecord::load(state_dir, addr).map(|r| r.driver);
    if sysfs.give_back(addr, driver.as_deref())? {
        let names = sysfs.wait_netdev(addr, NETDEV_WAIT);
        if names.is_empty() {
            tracing::warn!(
                "{addr} was given back to {} but shows no network interface after {:?}: moving the addresses back anyway (bind it by hand: echo {addr} > {}/bus/pci/drivers/DRIVER/bind)",
                driver.as_deref().unwrap_or("the kernel's matching driver"),
                NETDEV_WAIT,
                sysfs.root.display()
            );
        } else {
            tracing::info!("{addr} is back on its kernel driver as {}", names.join(","));
        }
    }
    Ok(())
}

/// The control socket the supervised sluiced serves: `--ctl-socket` of
/// `command`, else `[datapath] ctl_socket` of its `--config`, else the
/// default path.
pub fn ctl_socket_from_command(command: &[String]) -> std::path::PathBuf {
    let arg = |name: &str| {
        command
            .iter()
            .position(|a| a == name)
            .and_then(|i| command.get(i + 1))
            .cloned()
            .or_else(|| {
                command
                    .iter()
                    .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string))
            })
    };
    if let Some(s) = arg("--ctl-socket") {
        return s.into();
    }
    arg("--config")
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| ctl_socket_from_ini(&t))
        .unwrap_or_else(|| sluice_api::paths::SLUICED_CTL.into())
}

/// `[datapath] ctl_socket` of a sluiced.ini text.
pub fn ctl_socket_from_ini(text: &str) -> Option<std::path::PathBuf> {
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim();
        } else if let Some((k, v)) = line.split_once('=') {
            if section == "datapath" && k.trim() == "ctl_socket" {
                return Some(v.trim().trim_matches(['\'', '"']).into());
            }
        }
    }
    None
}

/// Whether a process listens on the control socket `path` (a socket file
/// left by a dead sluiced refuses the connection).
fn sluiced_answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_term() -> Result<(), BootstrapError> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| BootstrapError::Interface(format!("cannot catch signals: {e}")))?;
    let _ = signals.forever().next();
    Ok(())
}

/// Runs `command` under supervision; returns the exit code to exit with
/// (the child's, or 128 + its signal).
///
/// # Errors
/// [`BootstrapError`] when the recovery, the record or the spawn failed.
pub fn supervise(
    ifs: &Interfaces,
    state_dir: &Path,
    command: &[String],
) -> Result<i32, BootstrapError> {
    let Some((prog, args)) = command.split_first() else {
        return Err(BootstrapError::Interface(
            "supervise needs the command to run after --".into(),
        ));
    };
    let sysfs = Sysfs::from_env();
    let nic = pci::uplink_pci_from_command(command);
    let ctl = ctl_socket_from_command(command);
    let taking_over = command.iter().any(|a| a == "--take-over") && sluiced_answers(&ctl);
    if taking_over {
        tracing::info!(
            "a sluiced answers on {}: {prog} takes over from it; its supervisor's record of {}'s addresses stays in force",
            ctl.display(),
            ifs.uplink_if
        );
    } else {
        let _l = lock(state_dir)?;
        if let Some(addr) = &nic {
            match sysfs.driver(addr) {
                Some(d) if d != pci::VFIO_PCI => {
                    NicRecord {
                        pci: addr.clone(),
                        driver: d,
                    }
                    .save(state_dir)?;
                }
                _ => {}
            }
        }
        if nodeip::MoveRecord::load(state_dir)?.is_some() {
            give_back_nic(&sysfs, nic.as_deref(), state_dir)?;
            tracing::warn!(
                "a node-IP move is still recorded (the last sluiced and its supervisor were killed): moving the addresses back to {} first",
                ifs.uplink_if
            );
            nodeip::move_back(state_dir, None)?;
        }
        if nic.as_deref().and_then(|a| sysfs.driver(a)).as_deref() == Some(pci::VFIO_PCI)
            && !ifs.exists(&ifs.uplink_if)
        {
            tracing::warn!(
                "the uplink {} is bound to vfio-pci and {} does not exist: no address to record (they were moved before the NIC was bound)",
                nic.as_deref().unwrap_or_default(),
                ifs.uplink_if
            );
        } else if nodeip::record_uplink(ifs, state_dir)? {
            tracing::info!(
                "recorded {}'s addresses and routes: they come back there whenever {prog} exits",
                ifs.uplink_if
            );
        } else {
            tracing::warn!(
                "{} holds no IPv4 address or route: nothing to protect",
                ifs.uplink_if
            );
        }
    }
    let mut child = Command::new(prog)
        .args(args)
        .spawn()
        .map_err(|e| BootstrapError::Interface(format!("cannot start {prog}: {e}")))?;
    let pid = child.id() as libc::pid_t;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| BootstrapError::Interface(format!("cannot catch signals: {e}")))?;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            // SAFETY: kill(2) on the child's pid with a valid signal
            // number; no memory is passed.
            unsafe { libc::kill(pid, sig) };
        }
    });
    let status = child
        .wait()
        .map_err(|e| BootstrapError::Interface(format!("waiting for {prog}: {e}")))?;
    handle.close();
    let _ = forwarder.join();
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
    };
    if code == 0 && sluiced_answers(&ctl) {
        tracing::info!(
            "{prog} handed over to the sluiced now answering on {}: the node's addresses stay with it; waiting for SIGTERM",
            ctl.display()
        );
        wait_for_term()?;
        return Ok(0);
    }
    tracing::info!(
        "{prog} exited ({status}): the node's addresses go back to {}",
        ifs.uplink_if
    );
    let _l = lock(state_dir)?;
    give_back_nic(&sysfs, nic.as_deref(), state_dir)?;
    let (_, dirs) = nodeip::move_back(state_dir, None)?;
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_socket_comes_from_the_flag_the_config_or_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ini = dir.path().join("sluiced.ini");
        std::fs::write(
            &ini,
            "[coe]\nnode_type = BAREMETAL\n[datapath]\ncores = 1\nctl_socket = '/run/x/s.ctl'\n[port:p]\nctl_socket = /nope\n",
        )
        .expect("ini");
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cfg = ini.display().to_string();
        assert_eq!(
            ctl_socket_from_command(&cmd(&["sluiced", "--config", &cfg, "--take-over"])),
            Path::new("/run/x/s.ctl")
        );
        assert_eq!(
            ctl_socket_from_command(&cmd(&["sluiced", "--config", &cfg, "--ctl-socket=/a.ctl"])),
            Path::new("/a.ctl")
        );
        assert_eq!(
            ctl_socket_from_command(&cmd(&["sluiced"])),
            Path::new(sluice_api::paths::SLUICED_CTL)
        );
        // A socket file nobody listens on is no running sluiced.
        let sock = dir.path().join("dead.ctl");
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
        assert!(!sluiced_answers(&sock));
        let live = dir.path().join("live.ctl");
        let _l = std::os::unix::net::UnixListener::bind(&live).expect("bind");
        assert!(sluiced_answers(&live));
    }
}
