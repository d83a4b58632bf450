//! The unixctl control-socket server, shared by `sluiced` and `nestdb-server`.
//!
//! `ovs-appctl -t <socket> <command> <args…>` works against it. The wire
//! protocol is OVS's (see `lib/unixctl.c` and `lib/jsonrpc.c` in Open
//! vSwitch): JSON objects back to back on a unix stream socket, requests
//! `{"id":N,"method":"<command>","params":["arg",…]}` and replies
//! `{"id":N,"result":"<text>","error":null}` or
//! `{"id":N,"result":null,"error":"<text>"}`. Programs may also call
//! structured *methods* whose `params` and `result` are any JSON.
//!
//! - [`registry`]: the shared command table ([`Registry`]); owners register
//!   their commands next to their own code, at any time.
//! - [`server`]: the socket, its permissions and lifetime, one thread per
//!   client, peer credential checks ([`CtlServer`], [`ServerConfig`]).
//! - [`protocol`]: request validation and reply encoding (the framing is
//!   [`crate::framing`]).
//! - `sys`: the system calls std lacks (`SO_PEERCRED`, `geteuid`, `poll`,
//!   `malloc_trim`), the only `unsafe` code here.
//!
//! Handlers run on the server's connection threads. A program whose state
//! lives on one event loop (nestdb-server) registers handlers that post the
//! command to that loop and wait, bounded, for its answer.

mod args;
pub mod protocol;
pub mod registry;
pub mod server;
mod sys;

pub use registry::{CommandHandler, DispatchContext, MethodHandler, Registry, RegistryError};
pub use server::{AllowedPeers, CtlError, CtlServer, ServerConfig, DEFAULT_SOCKET_PATH};
pub use sys::{effective_uid, peer_cred, PeerCred};
