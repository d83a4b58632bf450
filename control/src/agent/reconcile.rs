//! The reconciler: `sluice-agent`'s decisions, without its I/O. It holds
//! what `sluiced` holds ([`Held`]: instance id, generation, program), turns
//! a database [`Snapshot`] into the one `node-commit` that moves `sluiced`
//! to the compiled program ([`Reconciler::plan`]), and computes the status
//! rows to write back into nestdb ([`Reconciler::status_writes`]).
//!
//! Invariants:
//! - A commit is planned only against a known [`Held`] state, with
//!   `generation = held + 1` and `expected_generation = Some(held)`; an
//!   empty difference plans nothing.
//! - After [`Reconciler::committed`] the held program is the program that
//!   was planned (for canonical programs `apply(old, diff(old, new)) ==
//!   new`), so the next plan diffs against what `sluiced` now holds.
//! - Row errors are reported once: [`Plan::new_errors`] lists only errors
//!   not in the previous plan, [`Plan::resolved`] those that went away.
//! - Status writes depend only on the snapshot, the held state and
//!   `sluiced`'s `node-status`, never on the agent's own earlier writes, and
//!   `Node_Status.txn_id` changes only with a commit: writing them back
//!   cannot make the next round write again (no loop on its own writes).
//!
//! The I/O shell is [`crate::agent::daemon`]. Thread-safety: a plain value,
//! owned by the agent's one loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use nestdb_client::node::{LogicalPort, NodeConfig, NodeStatus as StatusRow, NodeType};
use nestdb_client::{Replica, Uuid};
use sluice_api::node::{self as api, NodeChanges, NodeCommitReply, NodeProgram, PortKind};

use crate::agent::compile::{compile, NodeRows, RowError};

/// What `sluiced` holds, as last read or committed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// `sluiced`'s instance id (new at every start).
    pub instance_id: String,
    /// The generation in force.
    pub generation: u64,
    /// The program in force (canonical).
    pub program: NodeProgram,
}

/// The database state one round works from.
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
        let status = replica
            .typed::<StatusRow>()
            .filter_map(|(u, r)| r.ok().map(|r| (u, r)))
            .collect();
        Snapshot {
            rows,
            conversion_errors,
            status,
            txn_id,
        }
    }
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
#[derive(Debug, Clone, Default)]
pub struct Reconciler {
    held: Option<Held>,
    /// The last compiled program, what the last plan wanted.
    desired: Option<NodeProgram>,
    /// The row errors of the last plan.
    errors: BTreeSet<RowError>,
    /// Ignored settings already reported.
    ignored: BTreeSet<String>,
    /// The txn id the held program was compiled from, when known.
    applied_txn: Option<Uuid>,
    /// The txn id of the last plan's snapshot.
    planned_txn: Option<Uuid>,
    /// Why the last commit was refused, until one succeeds.
    commit_error: Option<String>,
    /// Pod ports `sluiced` refused, left out of the program until their
    /// row changes or `sluiced` restarts: name to (the row as refused,
    /// sluiced's sentence).
    refused_ports: BTreeMap<String, (LogicalPort, String)>,
    /// The `Logical_Port` rows of the last plan, by name.
    last_ports: BTreeMap<String, LogicalPort>,
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

    /// Forget what `sluiced` holds (it must be read again before the next
    /// plan).
    pub fn forget_held(&mut self) {
        self.held = None;
    }

    /// True when `status` shows a `sluiced` other than the one held (it
    /// restarted) or a generation other than the held one (someone else
    /// committed): the held state must be read again.
    pub fn is_stale(&self, status: &api::NodeStatus) -> bool {
        self.held.as_ref().is_none_or(|h| {
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
        {
            // A new sluiced may accept what the old one refused.
            self.refused_ports.clear();
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
            program,
        });
    }

    /// Compiles `snap` and plans the commit that moves the held program to
    /// it. Without a held state, only the errors are computed.
    pub fn plan(&mut self, snap: &Snapshot) -> Plan {
        self.last_ports = snap
            .rows
            .logical_ports
            .iter()
            .map(|(_, p)| (p.name.clone(), p.clone()))
            .collect();
        let last = &self.last_ports;
        self.refused_ports
            .retain(|name, (row, _)| last.get(name).is_some_and(|now| same_port(now, row)));
        let compiled = if self.refused_ports.is_empty() {
            compile(&snap.rows)
        } else {
            let mut rows = snap.rows.clone();
            rows.logical_ports
                .retain(|(_, p)| !self.refused_ports.contains_key(&p.name));
            compile(&rows)
        };
        let refused = self.refused_ports.iter().map(|(name, (_, why))| RowError {
            table: "Logical_Port",
            key: name.clone(),
            sentence: format!("sluiced refused the port, so it is left out until its row changes or sluiced restarts: {why}"),
        });
        let errors: BTreeSet<RowError> = compiled
            .errors
            .iter()
            .chain(&snap.conversion_errors)
            .cloned()
            .chain(refused)
            .collect();
        let mut plan = Plan {
            new_errors: errors.difference(&self.errors).cloned().collect(),
            resolved: self.errors.difference(&errors).cloned().collect(),
            ..Plan::default()
        };
        self.errors = errors;
        for (_, cfg) in &snap.rows.node_config {
            for s in ignored_settings(cfg) {
                if self.ignored.insert(s.clone()) {
                    plan.new_ignored.push(s);
                }
            }
        }
        self.planned_txn = snap.txn_id;
        if let Some(held) = &self.held {
            let mut changes = api::diff(&held.program, &compiled.program);
            if !changes.is_empty() {
                changes.generation = held.generation + 1;
                changes.expected_generation = Some(held.generation);
                plan.commit = Some(changes);
            }
        }
        self.desired = Some(compiled.program);
        plan
    }

    /// Rows skipped with an error in the last plan.
    pub fn row_error_count(&self) -> usize {
        self.errors.len()
    }

    /// The planned commit was applied: `sluiced` now holds the planned
    /// program at `reply.generation`.
    pub fn committed(&mut self, reply: &NodeCommitReply) {
        if let (Some(held), Some(desired)) = (&mut self.held, &self.desired) {
            held.program = desired.clone();
            held.generation = reply.generation;
        }
        self.applied_txn = self.planned_txn;
        self.commit_error = None;
    }

    /// The planned commit was refused (not a generation conflict): nothing
    /// of it was applied; `why` goes into `Node_Status.commit_error`.
    pub fn refused(&mut self, why: String) {
        self.commit_error = Some(why);
    }

    /// `sluiced` refused the planned commit at pod port `name`: leave that
    /// `Logical_Port` out (recorded as its row error) until its row changes
    /// or `sluiced` restarts, so the rest of the program applies. False
    /// when `name` is not a `Logical_Port` of the last plan (or is already
    /// left out): then the refusal is about something else.
    pub fn refuse_port(&mut self, name: &str, why: &str) -> bool {
        let Some(row) = self.last_ports.get(name) else {
            return false;
        };
        if self.refused_ports.contains_key(name) {
            return false;
        }
        self.refused_ports
            .insert(name.to_owned(), (row.clone(), why.to_owned()));
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
            h.program
                .ports
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
            node_name: held.program.settings.node_name.clone(),
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
    let spec = held.program.ports.get(&lp.name);
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
