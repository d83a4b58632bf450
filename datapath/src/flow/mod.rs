//! The OpenFlow-like flow program: keys, matches, actions, tables.
//!
//! - [`key`]: the packed [`key::FlowKey`] and the one-parse-per-packet
//!   [`key::extract`].
//! - [`matches`], [`action`], [`program`]: masked matches, actions and the
//!   immutable [`program::FlowProgram`] built by all-or-nothing bundles.
//! - [`text`]: the `ovs-ofctl` syntax for flows and groups.
//! - [`tables`]: [`tables::FlowTables`], the control-side handle that
//!   publishes programs to the PMDs and answers dump/replace/trace.
//!
//! - [`commands`]: the control methods (`add-flow`, `dump-flows`,
//!   `flow-bundle`, `trace`, ...).
//!
//! The caches that make lookups fast live in `crate::classifier`.

pub mod action;
pub mod commands;
pub mod key;
pub mod matches;
pub mod program;
pub mod tables;
pub mod text;
