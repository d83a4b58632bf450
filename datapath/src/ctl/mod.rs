//! The control socket `sluiced.ctl`: a unixctl-compatible JSON-RPC server.
//!
//! `ovs-appctl -t /var/run/sluice/sluiced.ctl <command> <args…>` and
//! `sluicectl` both work against it. The wire protocol is OVS's (see
//! `lib/unixctl.c` and `lib/jsonrpc.c` in Open vSwitch): JSON objects back to
//! back on a unix stream socket, requests
//! `{"id":N,"method":"<command>","params":["arg",…]}` and replies
//! `{"id":N,"result":"<text>","error":null}` or
//! `{"id":N,"result":null,"error":"<text>"}`. Programs such as the agent also
//! call structured *methods* whose `params` and `result` are any JSON.
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
//! # Command names
//!
//! `sluicectl` sends exactly these unixctl commands with string arguments, so
//! each `sluicectl X ARGS` equals `ovs-appctl -t SOCK X ARGS`. Feature owners
//! register these names (usage strings as shown) so both tools reach them:
//!
//! | command | arguments | owner |
//! | --- | --- | --- |
//! | `list-commands`, `version`, `exit` | none | built in |
//! | `add-flow` | `FLOW` | flow |
//! | `del-flows` | `[--strict] [MATCH]` (no MATCH: every flow) | flow |
//! | `mod-flows` | `[--strict] FLOW` | flow |
//! | `dump-flows` | `[table=N] [MATCH]` (at most 2 strings) | flow |
//! | `trace` | `FLOW` or `HEXPACKET` | flow/pipeline |
//! | `dump-ports` | `[PORT]` | port |
//! | `pmd-stats-show`, `pmd-stats-clear` | none | pmd |
//! | `dump-cache` | none | classifier |
//! | `capture` | `PORT FILE [COUNT]` (FILE absolute, pcap) | port |
//! | `dump-conntrack`, `flush-conntrack` | `[zone=N]` | conntrack |
//! | `conntrack-stats` | none | conntrack |
//! | `dump-services` | none | service |
//! | `dump-tunnels` | none | tunnel |
//! | `dump-neighbours`, `flush-neighbours` | none | neigh |
//!
//! Structured method `flow-bundle` (owner: flow) applies a list of flow
//! operations atomically (all or none, one program publication). `params` is
//! an array of `{"op":"add","flow":"<ovs-ofctl flow>"}`,
//! `{"op":"del","match":"<match>","strict":false}` (an empty match deletes
//! every flow) and `{"op":"mod","flow":"<flow>","strict":false}`.
//! `sluicectl add-flows FILE` sends one `add` per flow line;
//! `sluicectl replace-flows FILE` sends `{"op":"del","match":""}` followed by
//! the adds. The result is free-form JSON (e.g. counts).
//!
//! # Machine-readable output
//!
//! A request whose `params` is an object (`{"args":["…"]}`) asks for JSON:
//! it goes to the structured method of that name if the feature registered
//! one (with [`Registry::register_method`]), else to the text command, whose
//! text then comes back as a JSON string. `sluicectl --format json` uses
//! this, so a feature can add JSON output without a new command name.

pub use sluice_jsonrpc as jsonrpc;
pub use sluice_jsonrpc::unixctl::{registry, server};
pub mod typed;

pub use registry::{CommandHandler, MethodHandler, Registry, RegistryError};
pub use server::{CtlError, CtlServer, ServerConfig, DEFAULT_SOCKET_PATH};
pub use sluice_jsonrpc::unixctl::PeerCred;
