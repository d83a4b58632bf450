//! The control socket: unixctl-compatible JSON-RPC, so `ovs-appctl -t <socket> <cmd>`
//! works against nestdb-server.
//!
//! Each request's method is the command name and its params are string arguments; the
//! reply's `result` is text for humans, or `error` holds a text explaining the failure.
//! Commands: `exit`, `compact`/`ovsdb-server/compact [DB]`, `list-dbs`/
//! `ovsdb-server/list-dbs`, `stats`/`memory/show`, `list-commands`, `version`.
//! Runs on the server thread, with the server's state borrowed mutably.

use crate::server::Server;

/// Commands and their one-line usage.
pub const COMMANDS: &[(&str, &str)] = &[
    ("exit", "exit"),
    ("compact", "compact [DB]"),
    ("ovsdb-server/compact", "ovsdb-server/compact [DB]"),
    ("list-dbs", "list-dbs"),
    ("ovsdb-server/list-dbs", "ovsdb-server/list-dbs"),
    ("stats", "stats"),
    ("memory/show", "memory/show"),
    ("list-commands", "list-commands"),
    ("version", "version"),
];

/// Runs one control command.  `Ok` text is the reply; `Err` text is an error reply.
pub fn dispatch(server: &mut Server, method: &str, args: &[String]) -> Result<String, String> {
    match method {
        "exit" => {
            server.request_exit();
            Ok(String::new())
        }
        "compact" | "ovsdb-server/compact" => {
            if args.len() > 1 {
                return Err(format!("\"{method}\" takes at most one argument (a database name)"));
            }
            server.compact(args.first().map(String::as_str))?;
            Ok(String::new())
        }
        "list-dbs" | "ovsdb-server/list-dbs" => {
            let mut t = String::new();
            for n in server.db_names() {
                t.push_str(&n);
                t.push('\n');
            }
            Ok(t)
        }
        "stats" | "memory/show" => Ok(server.stats_text()),
        "list-commands" => {
            let mut t = String::from("The available commands are:\n");
            for (_, usage) in COMMANDS {
                t.push_str("  ");
                t.push_str(usage);
                t.push('\n');
            }
            Ok(t)
        }
        "version" => Ok(format!("nestdb-server {}\n", env!("CARGO_PKG_VERSION"))),
        _ => Err(format!(
            "\"{method}\" is not a valid command (use \"list-commands\" to see a list of valid commands)"
        )),
    }
}
