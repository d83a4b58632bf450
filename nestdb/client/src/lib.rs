//! Blocking Rust client for OVSDB-protocol servers (RFC 7047): nestdb-server
//! and Open vSwitch's ovsdb-server.
//!
//! The crate owns the client side of the protocol for Sluice: the control
//! agent uses [`Monitor`] to keep a [`Replica`] of the node database and
//! react to [`RowChange`]s, and the CNI plugin uses [`Client::transact`] to
//! record logical ports. It is built on std threads (no async runtime):
//!
//! - the data model ([`Atom`], [`Datum`], [`Uuid`], [`Row`]), database
//!   [`Schema`]s, [`Condition`]s, [`Mutation`]s and the RFC 7047 error object
//!   ([`OvsdbError`]) come from [`ovsdb_core`], shared with nestdb-server, and
//!   are re-exported here;
//! - [`transaction`]: the typed `transact` builder and results;
//! - [`jsonrpc`]: OVSDB remotes and one connection (framing, request
//!   matching and `echo` handling are the shared `sluice-jsonrpc` crate's);
//! - [`client`]: `list_dbs`, `get_schema`, `transact`, locks;
//! - [`replica`] and [`monitor`]: `monitor_cond_since` with resume, update
//!   application and automatic reconnect;
//! - [`node`]: typed rows of the Sluice node schema ([`TableRow`]).
//!
//! ```no_run
//! use nestdb_client::{row, Client, Datum, Monitor, MonitorConfig, MonitorEvent, Transaction};
//! # fn main() -> nestdb_client::Result<()> {
//! let client = Client::connect("unix:/var/run/nestdb/nestdb-server.sock")?;
//! let out = client.transact(
//!     &Transaction::new("Sluice_Node")
//!         .insert("Remote_Node", row([("name", Datum::from("node-b")),
//!                                     ("vtep_ip", Datum::from("10.0.0.2"))]))
//!         .named("rn"),
//! )?;
//! println!("inserted {:?}", out.uuid_of("rn"));
//!
//! let monitor = Monitor::start(MonitorConfig::new(
//!     "unix:/var/run/nestdb/nestdb-server.sock", "Sluice_Node", &["Remote_Node"]))?;
//! let events = monitor.subscribe();
//! for ev in events.iter() {
//!     if let MonitorEvent::Changes(changes) = ev {
//!         for c in changes { println!("{:?} {} {}", c.kind, c.table, c.uuid); }
//!     }
//! }
//! # Ok(()) }
//! ```

pub use ovsdb_core;

pub mod client;
pub mod error;
pub mod jsonrpc;
pub mod monitor;
pub mod node;
pub mod replica;
pub mod transaction;

pub use client::{Client, LockEvent, DEFAULT_REQUEST_TIMEOUT};
pub use error::{ClientError, Error, Result};
pub use jsonrpc::{Connection, Notification, Remote};
pub use monitor::{
    Backoff, BackoffConfig, Monitor, MonitorConfig, MonitorEvent, MonitorMethod, MonitorStatus,
    TableMonitor,
};
pub use node::TableRow;
pub use ovsdb_core::{
    Atom, AtomicType, BaseType, ColumnSchema, ColumnType, Condition, Datum, Function, Mutation,
    Mutator, OvsdbError, RefType, Row, Schema, TableSchema, Uuid,
};
pub use replica::{ChangeKind, Replica, RowChange};
pub use transaction::{row, OpResult, Transaction, TransactionOutcome, WaitUntil};
