//! `sluice-agent`: the node database's rows turned into the program
//! `sluiced` should hold, and kept there.
//!
//! - [`compile`]: the pure compiler, rows ([`compile::NodeRows`]) to a
//!   [`sluice_api::node::NodeProgram`] and the rows it skipped;
//! - [`reconcile`]: the [`Reconciler`], the agent's decisions without I/O:
//!   what `sluiced` holds, the one `node-commit` that moves it to the
//!   compiled program (`sluice_api::node::diff`), the status rows to write
//!   back;
//! - [`daemon`]: the loop around it: the nestdb monitor, the `sluiced`
//!   control socket, retries, status writes;
//! - [`startup`]: socket checks and dropping capabilities at start.
//!
//! Thread-safety: [`compile`] and [`reconcile`] are plain functions and
//! values; [`daemon::run`] owns one thread (plus the monitor's).

pub mod compile;
pub mod daemon;
pub mod reconcile;
pub mod startup;

pub use compile::{compile, compile_with, Compiled, Limits, NodeRows, RowError};
pub use reconcile::{Held, Plan, Reconciler, Snapshot, StatusWrite};
