//! Health probes that mean something, for the DaemonSet's probes and for
//! operators (`sluicectl probe ...`):
//! - [`Probe::Sluiced`]: the control socket answers (liveness);
//! - [`Probe::Forwarding`]: sluiced holds a committed program (generation
//!   at least 1) and every port is polled and up (readiness);
//! - [`Probe::Agent`]: the agent has applied the node database to this
//!   very sluiced: `Node_Status` names sluiced's instance and generation,
//!   and no commit is being refused;
//! - [`Probe::Nestdb`]: nestdb-server answers and serves `Sluice_Node`.
//!
//! Each returns one line saying what it found, or why the component is not
//! healthy. Thread-safety: plain blocking calls.

use std::path::Path;
use std::time::Duration;

use nestdb_client::node::{NodeStatus as DbStatus, TableRow};
use nestdb_client::{OpResult, Transaction};
use sluice_api::node::{NodeStatus, QueryNodeStatus};
use sluice_api::{Client, Empty};

/// What to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// sluiced's control socket answers.
    Sluiced,
    /// sluiced forwards with a committed program, every port polled and up.
    Forwarding,
    /// The agent applied the database to the running sluiced.
    Agent,
    /// nestdb-server answers and serves Sluice_Node.
    Nestdb,
}

fn status(ctl: &Path, timeout: Duration) -> Result<NodeStatus, String> {
    let mut c = Client::connect(ctl).map_err(|e| format!("sluiced: {e}"))?;
    c.set_timeout(Some(timeout))
        .map_err(|e| format!("sluiced: {e}"))?;
    c.call::<QueryNodeStatus>(&Empty {})
        .map_err(|e| format!("sluiced: {e}"))
}

fn db_status(db: &str, timeout: Duration) -> Result<Option<DbStatus>, String> {
    let c = nestdb_client::Client::connect_with_timeout(db, timeout)
        .map_err(|e| format!("nestdb-server at {db}: {e}"))?;
    let out = c
        .transact(&Transaction::new("Sluice_Node").select(DbStatus::TABLE, vec![]))
        .map_err(|e| format!("nestdb-server at {db}: {e}"))?;
    match out.results.first() {
        Some(OpResult::Select(rows)) => rows
            .first()
            .map(DbStatus::from_row)
            .transpose()
            .map_err(|e| format!("Node_Status: {e}")),
        _ => Err("nestdb-server gave no select result".into()),
    }
}

/// Runs `p`; Ok with what it found, Err with why it is not healthy.
///
/// # Errors
/// A sentence: the component is not healthy, or cannot be asked.
pub fn run(p: Probe, ctl: &Path, db: &str, timeout: Duration) -> Result<String, String> {
    match p {
        Probe::Sluiced => {
            let st = status(ctl, timeout)?;
            Ok(format!(
                "sluiced {} answers (generation {})",
                st.instance_id, st.generation
            ))
        }
        Probe::Forwarding => {
            let st = status(ctl, timeout)?;
            if st.generation == 0 {
                return Err("sluiced holds no committed program yet (generation 0)".into());
            }
            let down: Vec<&String> = st
                .ports
                .iter()
                .filter(|(_, p)| !(p.up && p.forwarding))
                .map(|(n, _)| n)
                .collect();
            if !down.is_empty() {
                return Err(format!("ports not up and polled: {down:?}"));
            }
            Ok(format!(
                "sluiced forwards generation {} on {} ports",
                st.generation,
                st.ports.len()
            ))
        }
        Probe::Agent => {
            let st = status(ctl, timeout)?;
            let Some(row) = db_status(db, timeout)? else {
                return Err("the agent has written no Node_Status yet".into());
            };
            if row.instance_id != st.instance_id || row.generation != st.generation {
                return Err(format!(
                    "the agent last applied generation {} to instance {}, sluiced holds generation {} (instance {})",
                    row.generation, row.instance_id, st.generation, st.instance_id
                ));
            }
            if let Some(e) = row.commit_error {
                return Err(format!("sluiced refuses the agent's commit: {e}"));
            }
            Ok(format!(
                "the agent applied generation {} ({} row errors)",
                row.generation,
                row.row_errors.len()
            ))
        }
        Probe::Nestdb => {
            let c = nestdb_client::Client::connect_with_timeout(db, timeout)
                .map_err(|e| format!("nestdb-server at {db}: {e}"))?;
            let dbs = c
                .list_dbs()
                .map_err(|e| format!("nestdb-server at {db}: {e}"))?;
            if dbs.iter().any(|d| d == "Sluice_Node") {
                Ok(format!("nestdb-server serves {}", dbs.join(", ")))
            } else {
                Err(format!("nestdb-server serves {dbs:?}, not Sluice_Node"))
            }
        }
    }
}
