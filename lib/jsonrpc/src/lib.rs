//! JSON-RPC 1.0 as OVSDB (RFC 7047) and OVS's unixctl speak it, written once
//! for every Sluice program: `nestdb-server` and `nestdb-client` (OVSDB),
//! `sluiced`'s control socket and its clients (unixctl).
//!
//! - [`framing`]: the streaming decoder that splits a byte stream into JSON
//!   values (no delimiter), with explicit [`Limits`] (message bytes, nesting
//!   depth) and [`FrameError`]s a user can act on.
//! - [`message`]: [`Message`] (request, notification, reply, error reply),
//!   its classification and its encoding.
//! - [`budget`]: the memory cap shared by all connections of a server
//!   ([`MemoryBudget`]) and the estimate of what decoding a message costs.
//! - [`client`]: a blocking [`Connection`] over a Unix or TCP socket: send a
//!   request, wait (bounded) for the matching reply, receive notifications.
//! - [`unixctl`]: the control-socket server (command registry, one thread
//!   per client, root-only peer check, `ovs-appctl` compatibility).
//!
//! No DPDK and no async runtime: blocking I/O on plain threads.

pub mod budget;
pub mod client;
pub mod framing;
pub mod message;
pub mod unixctl;

pub use budget::{decoded_size_estimate, BudgetExceeded, Charge, MemoryBudget};
pub use client::{ClientError, Connection, Endpoint, Notification, LARGE_MESSAGE};
pub use framing::{FrameError, Framer, Limits};
pub use message::{Message, MessageError};
