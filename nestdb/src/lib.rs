//! nestdb: an OVSDB-protocol (RFC 7047) node database server.
//!
//! The crate mirrors the layout of Open vSwitch's `ovsdb/` directory: [`jsonrpc`]
//! framing, [`types`]/[`datum`] values, [`schema`], [`table`] rows, [`transaction`]
//! execution and commit, [`condition`]s, [`monitor`]s, the on-disk [`log`] and
//! [`storage`], the [`server`] event loop, and the [`unixctl`] control socket.

pub mod condition;
pub mod datum;
pub mod error;
pub mod jsonrpc;
pub mod log;
pub mod monitor;
pub mod schema;
pub mod server;
pub mod storage;
pub mod table;
pub mod transaction;
pub mod types;
pub mod unixctl;
