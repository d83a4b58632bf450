//! Moving the node's IPv4 addresses and routes from the uplink (`node-if`)
//! to the host exception port and back, so that a re-run or a crash at
//! any point leaves the node reachable and a re-run finishes the job.
//!
//! The steps and their order are `sluice-hostnet`'s (also used by
//! `sluiced`). What this module adds is the record `node-ip.json` in the
//! state directory, written atomically before the first step: the two
//! interfaces and the plan (addresses, routes, MAC). A move merges the
//! record with what is still on the uplink, so a move interrupted after
//! some addresses left the uplink is finished with the full plan; a move
//! back puts exactly the recorded plan on the uplink (even when the host
//! port, and the addresses with it, is gone) and then deletes the record.
//!
//! Thread-safety: none; one bootstrap at a time.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_hostnet::{move_steps, Direction, Interfaces, Plan, Step};

use super::install::{ensure_dir, write_atomic};
use super::BootstrapError;

const RECORD: &str = "node-ip.json";

/// What was (or is being) moved, kept until the move back is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    /// The two interfaces.
    pub interfaces: Interfaces,
    /// What is moved.
    pub plan: Plan,
    /// Directories created to hold the record, outermost first.
    #[serde(default)]
    pub created_dirs: Vec<PathBuf>,
}

impl MoveRecord {
    /// The record's path in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(RECORD)
    }

    /// Reads the record, if there is one.
    ///
    /// # Errors
    /// [`BootstrapError::Record`] when it cannot be read or parsed.
    pub fn load(state_dir: &Path) -> Result<Option<MoveRecord>, BootstrapError> {
        let path = Self::path(state_dir);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| BootstrapError::Record {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BootstrapError::Record {
                path,
                reason: e.to_string(),
            }),
        }
    }

    fn save(&self, state_dir: &Path) -> Result<(), BootstrapError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| BootstrapError::Record {
            path: Self::path(state_dir),
            reason: e.to_string(),
        })?;
        write_atomic(&Self::path(state_dir), &text, 0o644)
    }
}

/// How a move ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step ran (or there was nothing to do).
    Done,
    /// Stopped on request after this many steps (crash simulation).
    Stopped(usize),
}

fn run_steps(
    ifs: &Interfaces,
    steps: &[Step],
    stop_after: Option<usize>,
) -> Result<Outcome, BootstrapError> {
    for (i, step) in steps.iter().enumerate() {
        if stop_after == Some(i) {
            tracing::warn!("stopping after step {i} of {} as asked", steps.len());
            return Ok(Outcome::Stopped(i));
        }
        tracing::info!("step {}/{}: {step}", i + 1, steps.len());
        ifs.run(step)?;
    }
    Ok(Outcome::Done)
}

/// Moves the uplink's IPv4 addresses, routes and MAC onto the host port
/// (see the module documentation). `stop_after` stops after that many
/// steps, the record written (0: before the first step): it simulates a
/// crash in tests.
///
/// # Errors
/// [`BootstrapError::Interface`] when an interface is missing or another
/// move is recorded, [`BootstrapError::HostNet`] when a step failed.
pub fn move_to_host(
    ifs: &Interfaces,
    state_dir: &Path,
    stop_after: Option<usize>,
) -> Result<Outcome, BootstrapError> {
    let record = MoveRecord::load(state_dir)?;
    if let Some(r) = &record {
        if r.interfaces != *ifs {
            return Err(BootstrapError::Interface(format!(
                "{} records a move from {} to {}, not from {} to {}: run `sluice-bootstrap move-back` first",
                MoveRecord::path(state_dir).display(),
                r.interfaces.uplink_if,
                r.interfaces.host_if,
                ifs.uplink_if,
                ifs.host_if
            )));
        }
    }
    for (dev, what) in [(&ifs.uplink_if, "uplink"), (&ifs.host_if, "host port")] {
        if !ifs.exists(dev) {
            return Err(BootstrapError::Interface(format!(
                "the {what} interface {dev} does not exist{}",
                if what == "host port" {
                    " (sluiced creates it for host_port: move the node IP once sluiced runs)"
                } else {
                    ""
                }
            )));
        }
    }
    let on_uplink = ifs.read_plan(&ifs.uplink_if)?;
    let (mut record, resumed) = match record {
        Some(r) => (r, true),
        None => (
            MoveRecord {
                interfaces: ifs.clone(),
                plan: Plan::default(),
                created_dirs: Vec::new(),
            },
            false,
        ),
    };
    record.plan.merge(on_uplink);
    if record.plan.is_empty() {
        tracing::info!(
            "{} has no IPv4 address or route to move: nothing to do",
            ifs.uplink_if
        );
        return Ok(Outcome::Done);
    }
    let created = ensure_dir(state_dir)?;
    record.created_dirs.extend(created);
    record.save(state_dir)?;
    tracing::info!(
        "{} {} address(es) and {} route(s) from {} to {} (recorded in {})",
        if resumed {
            "finishing the move of"
        } else {
            "moving"
        },
        record.plan.addrs.len(),
        record.plan.routes.len(),
        ifs.uplink_if,
        ifs.host_if,
        MoveRecord::path(state_dir).display()
    );
    let steps = move_steps(
        &record.plan,
        Some(&ifs.uplink_if),
        &ifs.host_if,
        Direction::OntoHostPort,
    );
    let out = run_steps(ifs, &steps, stop_after)?;
    if out == Outcome::Done {
        tracing::info!(
            "the node's addresses and routes are on {}; `sluice-bootstrap move-back` (or --uninstall) puts them back on {}",
            ifs.host_if,
            ifs.uplink_if
        );
    }
    Ok(out)
}

/// Records what is on the uplink now (addresses, routes, MAC), without
/// moving anything: `sluiced` moves them itself (its `host_port`), and the
/// record lets [`move_back`] put them back if it dies with them on its
/// host port (`sluice-bootstrap supervise`). Returns false when the uplink
/// holds nothing to record.
///
/// # Errors
/// [`BootstrapError::Interface`] when the uplink is missing or another
/// move is recorded; I/O errors writing the record.
pub fn record_uplink(ifs: &Interfaces, state_dir: &Path) -> Result<bool, BootstrapError> {
    if let Some(r) = MoveRecord::load(state_dir)? {
        return Err(BootstrapError::Interface(format!(
            "{} already records a move from {} to {}: run `sluice-bootstrap move-back` first",
            MoveRecord::path(state_dir).display(),
            r.interfaces.uplink_if,
            r.interfaces.host_if
        )));
    }
    if !ifs.exists(&ifs.uplink_if) {
        return Err(BootstrapError::Interface(format!(
            "the uplink interface {} does not exist",
            ifs.uplink_if
        )));
    }
    let plan = ifs.read_plan(&ifs.uplink_if)?;
    if plan.is_empty() {
        return Ok(false);
    }
    let created = ensure_dir(state_dir)?;
    MoveRecord {
        interfaces: ifs.clone(),
        plan,
        created_dirs: created,
    }
    .save(state_dir)?;
    Ok(true)
}

/// Puts the recorded addresses and routes back on the uplink and deletes
/// the record; returns the directories the record had created (for the
/// caller to remove when empty). Nothing recorded: nothing to do.
///
/// # Errors
/// [`BootstrapError::Interface`] when the uplink is missing,
/// [`BootstrapError::HostNet`] when a step failed (the record stays, a
/// re-run continues).
pub fn move_back(
    state_dir: &Path,
    stop_after: Option<usize>,
) -> Result<(Outcome, Vec<PathBuf>), BootstrapError> {
    let Some(record) = MoveRecord::load(state_dir)? else {
        tracing::info!(
            "no node-IP move recorded in {}: nothing to move back (`ip -4 addr` shows where the addresses are)",
            MoveRecord::path(state_dir).display()
        );
        return Ok((Outcome::Done, Vec::new()));
    };
    let ifs = &record.interfaces;
    if !ifs.exists(&ifs.uplink_if) {
        return Err(BootstrapError::Interface(format!(
            "the uplink interface {} does not exist: cannot put the node's addresses back (the record stays in {})",
            ifs.uplink_if,
            MoveRecord::path(state_dir).display()
        )));
    }
    let from = if ifs.exists(&ifs.host_if) {
        Some(ifs.host_if.as_str())
    } else {
        tracing::warn!(
            "the host port {} is gone, and the addresses it held with it: restoring the recorded ones on {}",
            ifs.host_if,
            ifs.uplink_if
        );
        None
    };
    tracing::info!(
        "moving {} address(es) and {} route(s) back to {}",
        record.plan.addrs.len(),
        record.plan.routes.len(),
        ifs.uplink_if
    );
    let steps = move_steps(&record.plan, from, &ifs.uplink_if, Direction::BackToUplink);
    let out = run_steps(ifs, &steps, stop_after)?;
    if out == Outcome::Done {
        let path = MoveRecord::path(state_dir);
        fs::remove_file(&path).map_err(BootstrapError::io("remove", &path))?;
        tracing::info!(
            "the node's addresses and routes are back on {}",
            ifs.uplink_if
        );
    }
    Ok((out, record.created_dirs))
}
