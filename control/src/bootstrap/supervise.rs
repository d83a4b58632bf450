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
//! Thread-safety: one thread forwards signals; the rest is sequential.

use std::path::Path;
use std::process::Command;

use sluice_hostnet::Interfaces;

use super::{lock, nodeip, BootstrapError};

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
    {
        let _l = lock(state_dir)?;
        if nodeip::MoveRecord::load(state_dir)?.is_some() {
            tracing::warn!(
                "a node-IP move is still recorded (the last sluiced and its supervisor were killed): moving the addresses back to {} first",
                ifs.uplink_if
            );
            nodeip::move_back(state_dir, None)?;
        }
        if nodeip::record_uplink(ifs, state_dir)? {
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
    let (_, dirs) = nodeip::move_back(state_dir, None)?;
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    Ok(code)
}
