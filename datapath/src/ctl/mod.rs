//! The control socket `sluiced.ctl`: a unixctl-compatible JSON-RPC server.
//!
//! `ovs-appctl -t /var/run/sluice/sluiced.ctl <command> <args…>` and
//! `sluicectl` both work against it. The wire protocol is OVS's (see
//! `lib/unixctl.c` and `lib/jsonrpc.c` in Open vSwitch): JSON objects back to
//! back on a unix stream socket, requests
//! `{"id":N,"method":"<command>","params":["arg",…]}` and replies
//! `{"id":N,"result":"<text>","error":null}` or
//! `{"id":N,"result":null,"error":"<text>"}`. Programs such as the agent
//! call the same names as structured *methods* whose `params` and `result`
//! are the typed `sluice-api` request and reply.
//!
//! The server itself is the shared unixctl server of the `sluice-jsonrpc`
//! crate (also used by `nestdb-server`); this module re-exports it under
//! the names sluiced's features use:
//!
//! - [`registry`]: the shared command table ([`Registry`]); features register
//!   their commands next to their own code, at any time.
//! - [`server`]: the socket, its permissions and lifetime, one thread per
//!   client, peer credential checks ([`CtlServer`], [`ServerConfig`]).
//! - [`jsonrpc`]: stream framing ([`jsonrpc::Framer`]) and messages.
//!
//! Wiring it into a daemon:
//!
//! ```no_run
//! use std::sync::{mpsc, Arc};
//! use sluice_datapath::ctl::{CtlServer, Registry, ServerConfig};
//!
//! let registry = Registry::new();
//! // A feature registers its introspection command next to its own code,
//! // before or after the server starts.
//! registry.register(
//!     "dump-neighbours",
//!     "",
//!     0,
//!     0,
//!     Arc::new(|_args: &[String]| Ok("10.0.0.1 02:00:00:00:00:01\n".to_owned())),
//! )?;
//! let (exit_tx, exit_rx) = mpsc::channel();
//! let mut server = CtlServer::start(ServerConfig::default(), registry.clone(), move || {
//!     let _ = exit_tx.send(());
//! })?;
//! // Returns when someone runs `ovs-appctl -t /var/run/sluice/sluiced.ctl exit`.
//! exit_rx.recv()?;
//! server.stop();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Handlers run on control threads, never on PMD threads: a handler that
//! needs PMD state reads shared counters or publishes a new program (RCU);
//! it never blocks a PMD.
//!
//! # Methods
//!
//! Every method sluiced serves is a `sluice_api::Method` (its name, OVS
//! aliases, usage, request and reply types live in the `sluice-api`
//! crate, the one place they are defined). Features serve them with
//! [`typed::register`], next to their own code: each method answers both
//! as a structured method (`params` the request object, `result` the reply
//! object, errors an `ApiError` with its code) and as a unixctl text
//! command (string arguments parsed by the request's `FromArgs`, the reply
//! rendered by its `Render`), so `sluicectl X ARGS` prints exactly what
//! `ovs-appctl -t SOCK X ARGS` prints. The OVS names (`ofproto/trace`,
//! `dpctl/dump-flows`, `dpif-netdev/pmd-stats-show`, `tnl/neigh/show`, ...)
//! are aliases of the same handlers. `list-commands` lists them all.

pub use sluice_jsonrpc as jsonrpc;
pub use sluice_jsonrpc::unixctl::{registry, server};
pub mod typed;

pub use registry::{CommandHandler, MethodHandler, Registry, RegistryError};
pub use server::{CtlError, CtlServer, ServerConfig, DEFAULT_SOCKET_PATH};
pub use sluice_jsonrpc::unixctl::PeerCred;
