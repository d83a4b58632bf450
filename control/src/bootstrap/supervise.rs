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
    {
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
