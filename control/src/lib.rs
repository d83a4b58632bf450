//! Sluice control plane: agent, sluicectl, CNI plugin.
//!
//! - [`ctl_client`]: client of the `sluiced` control socket, used by the
//!   `sluicectl` binary and by the agent.

pub mod ctl_client;
