//! The plugin's side of the node database: reads `Node_Config`, writes,
//! finds and deletes a pod's `Logical_Port` row, and waits for the agent's
//! `up` with an OVSDB `wait` operation (the server holds the transaction
//! until `up` is true or the timeout passes, so nothing polls).
//!
//! Rows this plugin writes carry `external_ids:cni_network` (the network
//! name), `cni_container_id`, `cni_ifname` and `host_interface`, so DEL
//! and GC find what belongs to them.
//!
//! Thread-safety: one [`Db`] is one client connection, used by one
//! invocation.

use std::collections::BTreeMap;
use std::time::Duration;

use nestdb_client::node::{LogicalPort, NodeConfig, DB};
use nestdb_client::{row, Client, Condition, Datum, Error, TableRow, Transaction, WaitUntil};

use super::spec::{code, CniError};

/// `external_ids` keys of rows this plugin writes.
pub mod key {
    /// The CNI network name.
    pub const NETWORK: &str = "cni_network";
    /// `CNI_CONTAINERID`.
    pub const CONTAINER: &str = "cni_container_id";
    /// `CNI_IFNAME`.
    pub const IFNAME: &str = "cni_ifname";
    /// The host end of the veth (read by the agent's compiler).
    pub const HOST_INTERFACE: &str = "host_interface";
}

/// Extra time the client gives the server beyond a `wait`'s own timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(10);

/// A connection to nestdb.
#[derive(Debug)]
pub struct Db {
    client: Client,
    remote: String,
}

fn unreachable(remote: &str, e: &Error) -> CniError {
    CniError::new(
        code::TRY_AGAIN,
        "nestdb is unreachable",
        format!("{e} (remote {remote}; set \"nestdb\" in the network configuration if it listens elsewhere)"),
    )
}

impl Db {
    /// Connects to `remote`.
    pub fn connect(remote: &str) -> Result<Db, CniError> {
        let client = Client::connect(remote).map_err(|e| unreachable(remote, &e))?;
        Ok(Db {
            client,
            remote: remote.to_string(),
        })
    }

    fn failed(&self, what: &str, e: &Error) -> CniError {
        match e {
            Error::Transaction { .. } | Error::Data(_) => {
                CniError::new(code::IO, format!("nestdb refused to {what}"), e.to_string())
            }
            _ => unreachable(&self.remote, e),
        }
    }

    /// The node's `Node_Config`.
    pub fn node_config(&self) -> Result<NodeConfig, CniError> {
        let out = self
            .client
            .transact(&Transaction::new(DB).select(NodeConfig::TABLE, vec![]))
            .map_err(|e| self.failed("read Node_Config", &e))?;
        let rows = out
            .results
            .first()
            .and_then(|r| r.rows())
            .unwrap_or_default();
        let first = rows.first().ok_or_else(|| {
            CniError::new(
                code::TRY_AGAIN,
                "the node is not configured yet",
                format!("nestdb at {} holds no Node_Config row; the node's bootstrap writes it before pods can attach", self.remote),
            )
        })?;
        NodeConfig::from_row(first).map_err(|e| self.failed("read Node_Config", &e))
    }

    /// The `Logical_Port` named `name`, if any.
    pub fn port(&self, name: &str) -> Result<Option<LogicalPort>, CniError> {
        let ports = self.select_ports(vec![Condition::eq("name", name)])?;
        Ok(ports.into_iter().next())
    }

    /// Every `Logical_Port` this plugin wrote for network `network`.
    pub fn ports_of(&self, network: &str) -> Result<Vec<LogicalPort>, CniError> {
        self.select_ports(vec![Condition::includes(
            "external_ids",
            Datum::map([(key::NETWORK, network)]),
        )])
    }

    /// The `Logical_Port` rows that match every condition of `conditions`.
    fn select_ports(&self, conditions: Vec<Condition>) -> Result<Vec<LogicalPort>, CniError> {
        let out = self
            .client
            .transact(&Transaction::new(DB).select(LogicalPort::TABLE, conditions))
            .map_err(|e| self.failed("read Logical_Port", &e))?;
        let rows = out
            .results
            .first()
            .and_then(|r| r.rows())
            .unwrap_or_default();
        rows.iter()
            .map(LogicalPort::from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.failed("read Logical_Port", &e))
    }

    /// Inserts `port`; fails with [`code::ALREADY_ATTACHED`] when a row of
    /// that name exists.
    pub fn insert(&self, port: &LogicalPort) -> Result<(), CniError> {
        let txn = Transaction::new(DB)
            .wait(
                LogicalPort::TABLE,
                vec![Condition::eq("name", port.name.as_str())],
                &["name"],
                WaitUntil::Equal,
                vec![],
                Some(Duration::ZERO),
            )
            .insert(LogicalPort::TABLE, port.to_row());
        match self.client.transact(&txn) {
            Ok(_) => Ok(()),
            Err(Error::Transaction { error, .. }) if error.tag == "timed out" => {
                Err(CniError::new(
                    code::ALREADY_ATTACHED,
                    "the container is already attached",
                    format!(
                        "Logical_Port {} exists; DEL it before adding it again",
                        port.name
                    ),
                ))
            }
            Err(e) => Err(self.failed("insert the Logical_Port", &e)),
        }
    }

    /// Deletes the row named `name` (absent is fine).
    pub fn delete(&self, name: &str) -> Result<(), CniError> {
        self.client
            .transact(
                &Transaction::new(DB).delete(LogicalPort::TABLE, vec![Condition::eq("name", name)]),
            )
            .map(|_| ())
            .map_err(|e| self.failed("delete the Logical_Port", &e))
    }

    /// Waits up to `timeout` for the agent to set `up` on `name`.
    pub fn wait_up(&self, name: &str, timeout: Duration) -> Result<(), CniError> {
        let txn = Transaction::new(DB).wait(
            LogicalPort::TABLE,
            vec![Condition::eq("name", name)],
            &["up"],
            WaitUntil::Equal,
            vec![row([("up", Datum::from(true))])],
            Some(timeout),
        );
        match self.client.transact_with_timeout(&txn, timeout + REPLY_MARGIN) {
            Ok(_) => Ok(()),
            Err(Error::Transaction { error, .. }) if error.tag == "timed out" => Err(CniError::new(
                code::TRY_AGAIN,
                "timed out waiting for the port to come up",
                format!(
                    "sluice-agent did not set Logical_Port {name} up within {} ms; check that sluice-agent and sluiced are running (the attachment was rolled back)",
                    timeout.as_millis()
                ),
            )),
            Err(e) => Err(self.failed("wait for the port", &e)),
        }
    }
}

/// The `Logical_Port` name of an attachment: unique per (container,
/// interface), as the spec makes that pair unique per network.
pub fn port_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}_{ifname}")
}

/// The `external_ids` of a new row.
pub fn external_ids(
    network: &str,
    container: &str,
    ifname: &str,
    host: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (key::NETWORK.to_string(), network.to_string()),
        (key::CONTAINER.to_string(), container.to_string()),
        (key::IFNAME.to_string(), ifname.to_string()),
        (key::HOST_INTERFACE.to_string(), host.to_string()),
    ])
}
