//! `sluice-agent`'s pure core: the node database's rows turned into the
//! program `sluiced` should hold ([`compile`]), and the change set that gets
//! it there (`sluice_api::node::diff`).
//!
//! Nothing here does I/O: the rows come in as plain values
//! ([`compile::NodeRows`]), so the whole translation is testable without a
//! database or a datapath. The monitor, the `node-commit` call and the
//! status reporting wrap it.
//!
//! Thread-safety: plain functions over plain values.

pub mod compile;

pub use compile::{compile, compile_with, Compiled, Limits, NodeRows, RowError};
