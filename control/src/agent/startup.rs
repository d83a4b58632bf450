//! What `sluice-agent` checks and gives up before it starts: it can reach
//! both sockets ([`check_socket`]), and it holds no capability
//! ([`drop_capabilities`]): it needs none beyond access to the nestdb and
//! `sluiced` sockets.
//!
//! A socket that is refused for good (permission denied, not a socket) is
//! an [`AgentError`] naming the socket, the errno and what to do; a socket
//! that is not there yet (the other process is starting) is a
//! [`SocketState::NotYet`] the agent logs and keeps retrying.
//!
//! Thread-safety: capabilities are per thread; call
//! [`drop_capabilities`] on the main thread before any thread is spawned so
//! that every later thread starts without them.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A socket refuses the agent for a reason retrying cannot fix.
    #[error("cannot connect to the {what} socket {}: {text} ({errno}); {hint}", path.display())]
    Socket {
        /// Which socket ("nestdb-server", "sluiced control").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The errno's name, e.g. `EACCES`.
        errno: String,
        /// The error as text.
        text: String,
        /// What to do.
        hint: String,
    },
    /// The `--db` remote is not `unix:PATH` or `tcp:HOST:PORT`.
    #[error("--db {0:?} is not a nestdb remote; give unix:PATH (e.g. unix:/var/run/nestdb/nestdb-server.sock) or tcp:HOST:PORT")]
    BadRemote(String),
    /// The node database predates the status table.
    #[error("the node database {db} has schema version {version}, without the Node_Status table sluice-agent reports into; stop nestdb-server, run `ovsdb-tool convert DBFILE /usr/share/sluice/sluice.ovsschema` (1.1.0 or later) and start it again")]
    OldSchema {
        /// The remote.
        db: String,
        /// Its schema version.
        version: String,
    },
    /// The monitor could not be started.
    #[error("cannot start the nestdb monitor: {0}")]
    Monitor(#[from] nestdb_client::Error),
    /// The monitor thread stopped by itself.
    #[error("the nestdb monitor stopped unexpectedly; restart sluice-agent")]
    MonitorStopped,
    /// The metrics endpoint cannot start.
    #[error("--metrics-address: {0}")]
    Metrics(#[from] sluice_metrics::ServerError),
}

/// A socket that can be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketState {
    /// A connection was made.
    Reachable,
    /// Not now (no such file, connection refused): the sentence says why.
    NotYet(String),
}

/// The errno name of `e`, e.g. `EACCES`, or `errno N`.
pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ENOTSOCK) => "ENOTSOCK",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::ENAMETOOLONG) => "ENAMETOOLONG",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(n) => return format!("errno {n}"),
        None => return format!("{:?}", e.kind()),
    };
    name.to_owned()
}

/// The path of a `unix:PATH` remote; `None` for `tcp:`; an error for
/// anything else.
pub fn unix_path(remote: &str) -> Result<Option<PathBuf>, AgentError> {
    if let Some(p) = remote.strip_prefix("unix:") {
        Ok(Some(PathBuf::from(p)))
    } else if remote.starts_with("tcp:") {
        Ok(None)
    } else {
        Err(AgentError::BadRemote(remote.to_owned()))
    }
}

/// Tries to connect to the `what` socket at `path` once.
pub fn check_socket(what: &'static str, path: &Path) -> Result<SocketState, AgentError> {
    let e = match UnixStream::connect(path) {
        Ok(_) => return Ok(SocketState::Reachable),
        Err(e) => e,
    };
    let text = sluice_api::client::io_error_text(&e);
    let errno = errno_name(&e);
    let fatal = |hint: String| {
        Err(AgentError::Socket {
            what,
            path: path.to_owned(),
            errno: errno.clone(),
            text: text.clone(),
            hint,
        })
    };
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => fatal(format!(
            "run sluice-agent as root (the {what} socket is root-only, mode 0600) or give the agent's user write access to the socket and search access to its directory"
        )),
        Some(libc::ENOTSOCK | libc::ENOTDIR | libc::ENAMETOOLONG) => fatal(format!(
            "the path is not a {what} socket; pass the right one (--db unix:PATH or --ctl PATH)"
        )),
        _ => Ok(SocketState::NotYet(format!(
            "cannot connect to the {what} socket {}: {text} ({errno}); {what} is not running yet or listens elsewhere (see --db/--ctl); retrying",
            path.display()
        ))),
    }
}

/// Checks that the node database at `remote` has the tables the agent
/// uses. `Ok` also when it cannot be asked now (the monitor retries).
pub fn check_schema(remote: &str) -> Result<(), AgentError> {
    let Ok(client) = nestdb_client::Client::connect(remote) else {
        return Ok(());
    };
    let Ok(schema) = client.get_schema(nestdb_client::node::DB) else {
        return Ok(());
    };
    if schema.table("Node_Status").is_some() {
        return Ok(());
    }
    Err(AgentError::OldSchema {
        db: remote.to_owned(),
        version: schema.version.unwrap_or_else(|| "(none)".into()),
    })
}

/// What [`drop_capabilities`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The capabilities the process held (effective or permitted), by name.
    pub held: Vec<String>,
    /// Sets that could not be cleared, with why (the agent still runs).
    pub failures: Vec<String>,
}

/// Clears the ambient, bounding, inheritable, effective and permitted
/// capability sets of the calling thread (bounding first: clearing it needs
/// `CAP_SETPCAP`, which the later steps drop).
pub fn drop_capabilities() -> Dropped {
    use caps::CapSet;
    let mut out = Dropped::default();
    let mut held: Vec<caps::Capability> = Vec::new();
    for set in [CapSet::Effective, CapSet::Permitted] {
        if let Ok(s) = caps::read(None, set) {
            held.extend(s);
        }
    }
    held.sort_by_key(|c| c.index());
    held.dedup();
    out.held = held.iter().map(ToString::to_string).collect();
    if let Err(e) = caps::clear(None, CapSet::Ambient) {
        out.failures.push(format!("ambient: {e}"));
    }
    if let Ok(bounding) = caps::read(None, CapSet::Bounding) {
        for c in bounding {
            if let Err(e) = caps::drop(None, CapSet::Bounding, c) {
                out.failures.push(format!("bounding {c}: {e}"));
                break;
            }
        }
    }
    for (name, set) in [
        ("inheritable", CapSet::Inheritable),
        ("effective", CapSet::Effective),
        ("permitted", CapSet::Permitted),
    ] {
        if let Err(e) = caps::clear(None, set) {
            out.failures.push(format!("{name}: {e}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes() {
        assert_eq!(
            unix_path("unix:/run/x.sock").unwrap(),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(unix_path("tcp:127.0.0.1:6640").unwrap(), None);
        let e = unix_path("/run/x.sock").unwrap_err().to_string();
        assert!(e.contains("unix:PATH"), "{e}");
    }

    #[test]
    fn missing_socket_is_retried_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("none.sock");
        match check_socket("sluiced control", &p).unwrap() {
            SocketState::NotYet(s) => {
                assert!(s.contains("ENOENT") && s.contains("none.sock"), "{s}")
            }
            SocketState::Reachable => panic!("connected to nothing"),
        }
    }

    #[test]
    fn a_path_through_a_file_is_fatal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plain");
        std::fs::write(&p, "x").unwrap();
        let e = check_socket("nestdb-server", &p.join("sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ENOTDIR") && e.contains("--db"), "{e}");
    }
}
