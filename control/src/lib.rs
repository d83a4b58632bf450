//! Sluice control plane: the operator's CLI (`sluicectl`), the agent's
//! pure core ([`agent`]: rows to program, and the diff), the node bootstrap
//! ([`bootstrap`]), health probes ([`probe`]) and the CNI plugin ([`cni`]:
//! pods attached to the datapath through nestdb). Every call to
//! `sluiced` goes through the typed client of [`sluice_api`].

pub use sluice_api::client::{io_error_text, Client, ClientError, DEFAULT_SOCKET};

pub mod agent;
pub mod bootstrap;
pub mod cni;
pub mod probe;
