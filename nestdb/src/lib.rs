//! nestdb: an OVSDB-protocol (RFC 7047) node database server.
//!
//! The crate mirrors the layout of Open vSwitch's `ovsdb/` directory: [`jsonrpc`]
//! framing, [`table`] rows, [`transaction`] execution and commit, [`monitor`]s, each session's [`outqueue`], the
//! on-disk [`log`] and [`storage`], the [`server`] event loop, the [`unixctl`]
//! control socket and the Prometheus [`metrics`].  The data model (atoms, data, types, schemas, conditions,
//! mutations, error objects) is [`ovsdb_core`], shared with nestdb-client.

pub use ovsdb_core;

pub mod jsonrpc;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod outqueue;
pub mod server;
pub mod storage;
pub mod table;
pub mod transaction;
pub mod unixctl;
