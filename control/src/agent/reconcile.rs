//! The reconciler: `sluice-agent`'s decisions, without its I/O. It holds
//! what `sluiced` holds ([`Held`]: instance id, generation, ports), keeps
//! the compiled program up to date with an [`IncrementalCompiler`], plans
//! the `node-commit` that moves `sluiced` to it, and computes the status
//! rows to write back into nestdb ([`Reconciler::status_writes`]).
//!
//! Two ways to plan:
//! - [`Reconciler::plan`] from a whole [`Snapshot`]: compiles every row
//!   from scratch (counted by [`Reconciler::full_compiles`]); the agent
//!   does it once, at its start;
//! - [`Reconciler::plan_changes`] from the monitor's row changes since the
//!   last plan: the compiler recomputes only what the changed rows touch,
//!   and while `sluiced` holds what the last commit left (the usual case)
//!   the commit is exactly the changes the compiler returns, O(change), not
//!   a diff of whole programs.
//!
//! When `sluiced`'s program is not known to be the compiler's (first
//! contact, a `sluiced` restart, a generation someone else made, a refused
//! or unconfirmed commit), the daemon reads it (`node-program`,
//! [`Reconciler::set_held`]) and the next plan sends
//! `sluice_api::node::diff(read, compiled)`, without recompiling.
//!
//! Invariants:
//! - A commit is planned only against a known [`Held`] state, with
//!   `generation = held + 1` and `expected_generation = Some(held)`; an
//!   empty difference plans nothing.
//! - "In sync" (no program read and pending): `sluiced` holds exactly the
//!   compiler's program as it was at the last [`Reconciler::committed`],
//!   so the compiler's changes since are the whole difference. Any plan
//!   whose outcome was not reported (neither committed nor refused) ends
//!   that: the program is read again ([`Reconciler::is_stale`]).
//! - Row errors are reported once: [`Plan::new_errors`] lists only errors
//!   not in the previous plan, [`Plan::resolved`] those that went away.
//! - Status writes depend only on the snapshot, the held state and
//!   `sluiced`'s `node-status`, never on the agent's own earlier writes, and
//!   `Node_Status.txn_id` changes only with a commit: writing them back
//!   cannot make the next round write again (no loop on its own writes).
//!
//! The I/O shell is [`crate::agent::daemon`]. Thread-safety: a plain value,
//! owned by the agent's one loop.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nestdb_client::node::{LogicalPort, NodeConfig, NodeStatus as StatusRow, NodeType};
use nestdb_client::{ChangeKind, Replica, RowChange, TableRow, Uuid};
use sluice_api::node::{
    self as api, NodeChanges, NodeCommitReply, NodeProgram, PortKind, PortSpec,
};

use crate::agent::compile::{Limits, NodeRows, RowError};
use crate::agent::incremental::{IncrementalCompiler, RowUpdate};

/// What `sluiced` holds, as last read or committed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// `sluiced`'s instance id (new at every start).
    pub instance_id: String,
    /// The generation in force.
    pub generation: u64,
    /// The ports in force.
    pub ports: BTreeMap<String, PortSpec>,
    /// The node name of the settings in force.
    pub node_name: String,
}

/// The database state one round works from. The incremental path needs
/// only `rows.logical_ports`, `status` and `txn_id` (the other tables come
/// as row changes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The desired-state rows that converted.
    pub rows: NodeRows,
    /// Rows that did not convert (bad column values).
    pub conversion_errors: Vec<RowError>,
    /// The `Node_Status` rows (the agent keeps at most one).
    pub status: Vec<(Uuid, StatusRow)>,
    /// The transaction id the rows reflect (`monitor_cond_since`).
    pub txn_id: Option<Uuid>,
}

impl Snapshot {
    /// The node tables of `replica`, which reflect transaction `txn_id`.
    pub fn from_replica(replica: &Replica, txn_id: Option<Uuid>) -> Snapshot {
        let (rows, conversion_errors) = NodeRows::from_replica(replica);
        Snapshot {
            rows,
            conversion_errors,
            status: status_rows(replica),
            txn_id,
        }
    }

    /// Only `Logical_Port` and `Node_Status` of `replica` (what status
    /// writes need: O(pods), not O(Services)).
    pub fn ports_of_replica(replica: &Replica, txn_id: Option<Uuid>) -> Snapshot {
        Snapshot {
            rows: NodeRows {
                logical_ports: replica
                    .typed::<LogicalPort>()
                    .filter_map(|(u, r)| r.ok().map(|r| (u, r)))
                    .collect(),
                ..NodeRows::default()
            },
            conversion_errors: Vec::new(),
            status: status_rows(replica),
            txn_id,
        }
    }
}

fn status_rows(replica: &Replica) -> Vec<(Uuid, StatusRow)> {
    replica
        .typed::<StatusRow>()
        .filter_map(|(u, r)| r.ok().map(|r| (u, r)))
        .collect()
}

/// What one round decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The commit to send, if anything changed.
    pub commit: Option<NodeChanges>,
    /// Row errors not reported before (log them).
    pub new_errors: Vec<RowError>,
    /// Row errors reported before that are gone (log them).
    pub resolved: Vec<RowError>,
    /// `Node_Config` settings the agent ignores, not reported before.
    pub new_ignored: Vec<String>,
}

/// One write into nestdb.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusWrite {
    /// Insert (no `uuid`) or replace the `Node_Status` row.
    NodeStatus {
        /// The row to update; `None`: insert.
        uuid: Option<Uuid>,
        /// Its new contents.
        row: StatusRow,
    },
    /// Update a `Logical_Port`'s `dp_port` and/or `up` (only what changed).
    LogicalPort {
        /// The row.
        uuid: Uuid,
        /// The port name, for logs.
        name: String,
        /// New `dp_port`, when it changes.
        dp_port: Option<Option<u32>>,
        /// New `up`, when it changes.
        up: Option<bool>,
    },
}

/// The agent's decisions. See the module documentation.
#[derive(Debug, Default)]
pub struct Reconciler {
    held: Option<Held>,
    /// `sluiced`'s whole program as read, while the next commit must be a
    /// diff against it (until a commit succeeds or a plan finds it equal).
    held_program: Option<NodeProgram>,
    /// `sluiced`'s program is not known: read it before planning.
    need_read: bool,
    /// A commit was planned and its outcome not reported yet.
    uncommitted: bool,
    /// The desired program (refused ports left out); `None` before the
    /// first [`Self::plan`].
    inc: Option<IncrementalCompiler>,
    /// From-scratch compiles done.
    full_compiles: u64,
    /// Row-change batches applied incrementally.
    incremental_updates: u64,
    /// The compiler's error epoch the error set was last computed at.
    errors_at: Option<u64>,
    /// The row errors of the last plan.
    errors: BTreeSet<RowError>,
    /// Ignored settings already reported.
    ignored: BTreeSet<String>,
    /// The txn id the held program was compiled from, when known.
    applied_txn: Option<Uuid>,
    /// The txn id of the last plan's rows.
    planned_txn: Option<Uuid>,
    /// Why the last commit was refused, until one succeeds.
    commit_error: Option<String>,
    /// Pod ports `sluiced` refused, left out of the program until their
    /// row changes or `sluiced` restarts: name to (the row as refused,
    /// sluiced's sentence).
    refused_ports: BTreeMap<String, (LogicalPort, String)>,
    /// The `Logical_Port` rows of the last plan, by name.
    last_ports: BTreeMap<String, (Uuid, LogicalPort)>,
}

impl Reconciler {
    /// A reconciler that knows nothing of `sluiced` yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What `sluiced` holds, if known.
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// True once [`Self::plan`] loaded the rows (then
    /// [`Self::plan_changes`] keeps them up to date).
    pub fn loaded(&self) -> bool {
        self.inc.is_some()
    }

    /// True while `sluiced`'s program must be read before the next commit.
    pub fn needs_read(&self) -> bool {
        self.need_read
    }

    /// How many times every row was compiled from scratch.
    pub fn full_compiles(&self) -> u64 {
        self.full_compiles
    }

    /// How many row-change batches were compiled incrementally.
    pub fn incremental_updates(&self) -> u64 {
        self.incremental_updates
    }

    /// The compiler (after the first [`Self::plan`]).
    pub fn compiler(&self) -> Option<&IncrementalCompiler> {
        self.inc.as_ref()
    }

    /// Forget what `sluiced` holds (it must be read again before the next
    /// plan).
    pub fn forget_held(&mut self) {
        self.held = None;
        self.held_program = None;
        self.uncommitted = false;
    }

    /// True when `status` shows a `sluiced` other than the one held (it
    /// restarted) or a generation other than the held one (someone else
    /// committed), or when the held program is not known since a commit
    /// failed: the held state must be read again.
    pub fn is_stale(&self, status: &api::NodeStatus) -> bool {
        self.need_read
            || self.held.as_ref().is_none_or(|h| {
                h.instance_id != status.instance_id || h.generation != status.generation
            })
    }

    /// Records what `sluiced` holds, read from `node-status` and
    /// `node-program`. `existing` is the `Node_Status` row in nestdb, whose
    /// `txn_id` still describes the program when instance and generation
    /// match (an agent restart changes nothing).
    pub fn set_held(
        &mut self,
        status: &api::NodeStatus,
        mut program: NodeProgram,
        existing: Option<&StatusRow>,
    ) {
        program.canonicalize();
        let same = self.held.as_ref().is_some_and(|h| {
            h.instance_id == status.instance_id && h.generation == status.generation
        });
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.instance_id != status.instance_id)
            && !self.refused_ports.is_empty()
        {
            // A new sluiced may accept what the old one refused: the
            // ports go back into the program.
            let back: Vec<RowUpdate> = std::mem::take(&mut self.refused_ports)
                .into_keys()
                .filter_map(|name| self.last_ports.get(&name))
                .map(|(u, row)| RowUpdate::LogicalPort(*u, Some(row.clone())))
                .collect();
            if let Some(inc) = &mut self.inc {
                inc.update(back);
            }
            self.errors_at = None;
        }
        if !same {
            self.applied_txn = existing
                .filter(|r| {
                    r.instance_id == status.instance_id && r.generation == status.generation
                })
                .and_then(|r| r.txn_id.as_deref())
                .and_then(|t| t.parse().ok());
        }
        self.held = Some(Held {
            instance_id: status.instance_id.clone(),
            generation: status.generation,
            ports: program.ports.clone(),
            node_name: program.settings.node_name.clone(),
        });
        self.held_program = Some(program);
        self.need_read = false;
        self.uncommitted = false;
    }

    /// Compiles every row of `snap` from scratch (replacing what the
    /// compiler held) and plans the commit that moves the held program to
    /// it. Without a held state, only the errors are computed.
    pub fn plan(&mut self, snap: &Snapshot) -> Plan {
        self.settle_unreported();
        self.set_last_ports(&snap.rows.logical_ports);
        let last = &self.last_ports;
        self.refused_ports
            .retain(|name, (row, _)| last.get(name).is_some_and(|(_, now)| same_port(now, row)));
        // While in sync, the held program is the compiler's: keep it to
        // diff against before the compiler is replaced.
        if self.held.is_some() && self.held_program.is_none() && !self.need_read {
            match &self.inc {
                Some(inc) => self.held_program = Some(inc.program()),
                None => self.need_read = true,
            }
        }
        let mut inc = if self.refused_ports.is_empty() {
            IncrementalCompiler::from_rows(&snap.rows, Limits::default())
        } else {
            let mut rows = snap.rows.clone();
            rows.logical_ports
                .retain(|(_, p)| !self.refused_ports.contains_key(&p.name));
            IncrementalCompiler::from_rows(&rows, Limits::default())
        };
        inc.set_conversion_errors(&snap.conversion_errors);
        self.inc = Some(inc);
        self.full_compiles += 1;
        self.errors_at = None;
        let mut new_ignored = Vec::new();
        for (_, cfg) in &snap.rows.node_config {
            self.note_ignored(cfg, &mut new_ignored);
        }
        self.planned_txn = snap.txn_id;
        let mut plan = self.finish(None);
        plan.new_ignored = new_ignored;
        plan
    }

    /// Applies the monitor's row changes since the last plan to the
    /// compiler (after a first [`Self::plan`]; before it, nothing happens)
    /// and plans the commit. `ports` are the `Logical_Port` rows now (the
    /// state the changes lead to) and `txn_id` the transaction they
    /// reflect. While in sync the commit is the compiler's changes.
    pub fn plan_changes(
        &mut self,
        changes: &[RowChange],
        ports: &[(Uuid, LogicalPort)],
        txn_id: Option<Uuid>,
    ) -> Plan {
        if self.inc.is_none() {
            return Plan::default();
        }
        self.settle_unreported();
        self.set_last_ports(ports);
        // Refused ports whose row changed or went away are refused no more:
        // their rows go (back) to the compiler with this batch.
        let refused_before = self.refused_ports.len();
        let mut back = Vec::new();
        let last = &self.last_ports;
        self.refused_ports
            .retain(|name, (row, _)| match last.get(name) {
                Some((_, now)) if same_port(now, row) => true,
                Some((u, now)) => {
                    back.push(RowChange {
                        table: LogicalPort::TABLE.to_owned(),
                        uuid: *u,
                        kind: ChangeKind::Modify,
                        old: None,
                        new: Some(std::sync::Arc::new(now.to_row())),
                    });
                    false
                }
                None => false,
            });
        if self.refused_ports.len() != refused_before {
            self.errors_at = None;
        }
        // A still-refused port's row stays out of the compiler.
        let mut batch: Cow<'_, [RowChange]> = Cow::Borrowed(changes);
        if !self.refused_ports.is_empty() || !back.is_empty() {
            let refused = &self.refused_ports;
            let mut v: Vec<RowChange> = changes
                .iter()
                .map(|c| {
                    let keep_out = c.table == LogicalPort::TABLE
                        && c.new
                            .as_ref()
                            .and_then(|r| LogicalPort::from_row(r).ok())
                            .is_some_and(|p| refused.contains_key(&p.name));
                    if keep_out {
                        RowChange {
                            kind: ChangeKind::Delete,
                            new: None,
                            ..c.clone()
                        }
                    } else {
                        c.clone()
                    }
                })
                .collect();
            v.extend(back);
            batch = Cow::Owned(v);
        }
        let mut new_ignored = Vec::new();
        for c in batch.iter().filter(|c| c.table == NodeConfig::TABLE) {
            if let Some(cfg) = c.new.as_ref().and_then(|r| NodeConfig::from_row(r).ok()) {
                self.note_ignored(&cfg, &mut new_ignored);
            }
        }
        let Some(inc) = &mut self.inc else {
            return Plan::default();
        };
        let delta = inc.update_from_changes(&batch);
        if !batch.is_empty() {
            self.incremental_updates += 1;
        }
        if txn_id.is_some() {
            self.planned_txn = txn_id;
        }
        let mut plan = self.finish(Some(delta));
        plan.new_ignored = new_ignored;
        plan
    }

    /// A plan whose outcome was never reported leaves `sluiced`'s program
    /// unknown: read it again.
    fn settle_unreported(&mut self) {
        if self.uncommitted {
            self.uncommitted = false;
            self.held_program = None;
            self.need_read = true;
        }
    }

    fn set_last_ports(&mut self, ports: &[(Uuid, LogicalPort)]) {
        self.last_ports = ports
            .iter()
            .map(|(u, p)| (p.name.clone(), (*u, p.clone())))
            .collect();
    }

    fn note_ignored(&mut self, cfg: &NodeConfig, out: &mut Vec<String>) {
        for s in ignored_settings(cfg) {
            if self.ignored.insert(s.clone()) {
                out.push(s);
            }
        }
    }

    /// Errors, then the commit: `delta` (the compiler's changes) while in
    /// sync, else the diff against the program read.
    fn finish(&mut self, delta: Option<NodeChanges>) -> Plan {
        let mut plan = Plan::default();
        let Some(inc) = &self.inc else { return plan };
        if self.errors_at != Some(inc.errors_epoch()) {
            self.errors_at = Some(inc.errors_epoch());
            let refused = self.refused_ports.iter().map(|(name, (_, why))| RowError {
                table: "Logical_Port",
                key: name.clone(),
                sentence: format!("sluiced refused the port, so it is left out until its row changes or sluiced restarts: {why}"),
            });
            let errors: BTreeSet<RowError> = inc
                .errors()
                .into_iter()
                .chain(inc.conversion_errors())
                .chain(refused)
                .collect();
            plan.new_errors = errors.difference(&self.errors).cloned().collect();
            plan.resolved = self.errors.difference(&errors).cloned().collect();
            self.errors = errors;
        }
        let Some(held) = &self.held else { return plan };
        if self.need_read {
            return plan;
        }
        let mut changes = match &self.held_program {
            Some(p) => api::diff(p, &inc.program()),
            None => delta.unwrap_or_default(),
        };
        if changes.is_empty() {
            // Nothing to send: sluiced holds the compiler's program.
            self.held_program = None;
        } else {
            changes.generation = held.generation + 1;
            changes.expected_generation = Some(held.generation);
            self.uncommitted = true;
            plan.commit = Some(changes);
        }
        plan
    }

    /// Rows skipped with an error in the last plan.
    pub fn row_error_count(&self) -> usize {
        self.errors.len()
    }

    /// The planned commit was applied: `sluiced` now holds the compiled
    /// program at `reply.generation`.
    pub fn committed(&mut self, reply: &NodeCommitReply) {
        if let (Some(held), Some(inc)) = (&mut self.held, &self.inc) {
            held.ports = inc.ports().clone();
            held.node_name = inc.settings().node_name.clone();
            held.generation = reply.generation;
        }
        self.held_program = None;
        self.uncommitted = false;
        self.applied_txn = self.planned_txn;
        self.commit_error = None;
    }

    /// The planned commit was applied in parts and only some of them went
    /// through: `sluiced` holds something in between, read it again.
    pub fn partly_committed(&mut self, why: String) {
        self.uncommitted = false;
        self.held_program = None;
        self.need_read = true;
        self.commit_error = Some(why);
    }

    /// The planned commit was refused (not a generation conflict): nothing
    /// of it was applied; `why` goes into `Node_Status.commit_error`.
    pub fn refused(&mut self, why: String) {
        self.after_refusal();
        self.commit_error = Some(why);
    }

    /// Nothing of the planned commit applied: the program read (if the
    /// plan was a diff against it) is still what `sluiced` holds; else it
    /// must be read (the compiler has moved past it).
    fn after_refusal(&mut self) {
        if self.uncommitted && self.held_program.is_none() {
            self.need_read = true;
        }
        self.uncommitted = false;
    }

    /// `sluiced` refused the planned commit at pod port `name`: leave that
    /// `Logical_Port` out (recorded as its row error) until its row changes
    /// or `sluiced` restarts, so the rest of the program applies. False
    /// when `name` is not a `Logical_Port` of the last plan (or is already
    /// left out): then the refusal is about something else.
    pub fn refuse_port(&mut self, name: &str, why: &str) -> bool {
        let Some((uuid, row)) = self.last_ports.get(name).cloned() else {
            return false;
        };
        if self.refused_ports.contains_key(name) {
            return false;
        }
        self.after_refusal();
        self.refused_ports
            .insert(name.to_owned(), (row, why.to_owned()));
        if let Some(inc) = &mut self.inc {
            inc.update([RowUpdate::LogicalPort(uuid, None)]);
        }
        self.errors_at = None;
        true
    }

    /// The row errors of the last plan.
    pub fn errors(&self) -> &BTreeSet<RowError> {
        &self.errors
    }

    /// The pod ports of the held program that `sluiced` does not yet show
    /// present, up and forwarding (the agent polls faster while any is).
    pub fn ports_pending(&self, status: &api::NodeStatus) -> usize {
        self.held.as_ref().map_or(0, |h| {
            h.ports
                .iter()
                .filter(|(name, spec)| {
                    matches!(spec.kind, PortKind::Pod { .. })
                        && !forwarding(status, name, spec.ofport)
                })
                .count()
        })
    }

    /// The writes that make nestdb's status match what `sluiced` holds:
    /// the `Node_Status` row and each `Logical_Port`'s `dp_port` (the
    /// number in the held program) and `up` (present, link up and
    /// forwarding in `status`). Only what differs from `snap` is written;
    /// nothing before the held state is known.
    pub fn status_writes(&self, snap: &Snapshot, status: &api::NodeStatus) -> Vec<StatusWrite> {
        let Some(held) = &self.held else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let want = StatusRow {
            node_name: held.node_name.clone(),
            generation: held.generation,
            txn_id: self.applied_txn.map(|t| t.to_string()),
            instance_id: held.instance_id.clone(),
            row_errors: self
                .errors
                .iter()
                .map(|e| (format!("{} {}", e.table, e.key), e.sentence.clone()))
                .collect(),
            commit_error: self.commit_error.clone(),
            external_ids: BTreeMap::new(),
        };
        match snap.status.first() {
            Some((u, have)) => {
                let want = StatusRow {
                    external_ids: have.external_ids.clone(),
                    ..want
                };
                if *have != want {
                    out.push(StatusWrite::NodeStatus {
                        uuid: Some(*u),
                        row: want,
                    });
                }
            }
            None => out.push(StatusWrite::NodeStatus {
                uuid: None,
                row: want,
            }),
        }
        for (u, lp) in &snap.rows.logical_ports {
            if let Some(w) = port_write(*u, lp, held, status) {
                out.push(w);
            }
        }
        out
    }
}

/// The same port row, leaving out what the agent itself writes.
fn same_port(a: &LogicalPort, b: &LogicalPort) -> bool {
    LogicalPort {
        dp_port: None,
        up: false,
        ..a.clone()
    } == LogicalPort {
        dp_port: None,
        up: false,
        ..b.clone()
    }
}

/// The pod port a `node-commit` refusal names: `node-commit refused at
/// port "NAME": ...` (see `sluice_api::node::item_error`).
pub fn refused_port(message: &str) -> Option<String> {
    let rest = message.strip_prefix("node-commit refused at port \"")?;
    let end = rest.find("\": ")?;
    Some(rest[..end].replace("\\\"", "\""))
}

/// True when `status` shows port `name` at `ofport`, link up and forwarding.
fn forwarding(status: &api::NodeStatus, name: &str, ofport: u16) -> bool {
    status
        .ports
        .get(name)
        .is_some_and(|p| p.ofport == ofport && p.up && p.forwarding)
}

fn port_write(
    uuid: Uuid,
    lp: &LogicalPort,
    held: &Held,
    status: &api::NodeStatus,
) -> Option<StatusWrite> {
    let spec = held.ports.get(&lp.name);
    // A port the program does not have keeps its recorded number (it stays
    // reserved for it) and is down.
    let dp_port = spec.map_or(lp.dp_port, |s| Some(u32::from(s.ofport)));
    let up = spec.is_some_and(|s| forwarding(status, &lp.name, s.ofport));
    let dp_port = (dp_port != lp.dp_port).then_some(dp_port);
    let up = (up != lp.up).then_some(up);
    (dp_port.is_some() || up.is_some()).then(|| StatusWrite::LogicalPort {
        uuid,
        name: lp.name.clone(),
        dp_port,
        up,
    })
}

/// The `external_ids` keys of `Node_Config` the compiler reads.
pub const NODE_CONFIG_KEYS: &[&str] = &[
    "vni",
    "vtep_prefix_len",
    "node_mac",
    "masquerade_ip",
    "underlay_gateway_mac",
    "zone",
];

/// The settings of `cfg` that do not reach the program, each as a sentence
/// (the agent logs each once).
pub fn ignored_settings(cfg: &NodeConfig) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.node_type != NodeType::Baremetal {
        out.push(format!(
            "Node_Config.node_type is {}: it is recorded but does not change the program (every node is programmed as BAREMETAL)",
            cfg.node_type
        ));
    }
    if let Some(b) = &cfg.ovs_bridge {
        out.push(format!(
            "Node_Config.ovs_bridge is {b:?}: ignored, sluiced owns the node's datapath and shares no bridge with Open vSwitch"
        ));
    }
    for c in cfg.pod_cidrs.iter().filter(|c| c.contains(':')) {
        out.push(format!(
            "Node_Config.pod_cidrs holds the IPv6 prefix {c}: ignored, the pod overlay is IPv4"
        ));
    }
    for ip in cfg.node_ips.iter().filter(|ip| matches!(ip, IpAddr::V6(_))) {
        out.push(format!(
            "Node_Config.node_ips holds the IPv6 address {ip}: ignored, NodePorts are served on IPv4 node addresses"
        ));
    }
    for k in cfg.external_ids.keys() {
        if !NODE_CONFIG_KEYS.contains(&k.as_str()) {
            out.push(format!(
                "Node_Config.external_ids:{k} is not a setting the agent knows (known: {}); ignored",
                NODE_CONFIG_KEYS.join(", ")
            ));
        }
    }
    out
}
