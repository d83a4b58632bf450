//! `sluice-agent`: the node database's rows turned into the program
//! `sluiced` should hold, and kept there.
//!
//! - [`compile`]: the pure compiler, rows ([`compile::NodeRows`]) to a
//!   [`sluice_api::node::NodeProgram`] and the rows it skipped;
//! - [`incremental`]: the same kept up to date row change by row change
//!   ([`IncrementalCompiler`]): the `NodeChanges` of a change come from the
//!   rows it touched, not from a diff of whole programs;
//! - [`reconcile`]: the [`Reconciler`], the agent's decisions without I/O:
//!   what `sluiced` holds, the one `node-commit` that moves it to the
//!   compiled program (`sluice_api::node::diff`), the status rows to write
//!   back;
//! - [`chunk`]: a change set too big for one request split into commits
//!   that are each valid on their own;
//! - [`daemon`]: the loop around it: the nestdb monitor, the `sluiced`
//!   control socket, retries, status writes;
//! - [`startup`]: socket checks and dropping capabilities at start;
//! - [`metrics`]: the Prometheus counters of the loop.
//!
//! Thread-safety: [`compile`], [`incremental`] and [`reconcile`] are plain
//! functions and values; [`daemon::run`] owns one thread (plus the monitor's).

pub mod chunk;
pub mod compile;
pub mod daemon;
pub mod incremental;
pub mod metrics;
pub mod reconcile;
pub mod startup;

pub use compile::{compile, compile_with, Compiled, Limits, NodeRows, RowError};
pub use incremental::{IncrementalCompiler, RowUpdate, UpdateStats, UpdateTimes};
pub use reconcile::{Held, Plan, Reconciler, Snapshot, StatusWrite};
