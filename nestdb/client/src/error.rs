//! Errors returned by the nestdb client.
//!
//! One enum, [`Error`], covers every failure the client can report: bad
//! remotes, connection failures (the shared `sluice_jsonrpc` client's
//! [`ClientError`], carried as is), protocol violations by the peer,
//! JSON-RPC errors, OVSDB
//! transaction errors (the server's RFC 7047 error object, an
//! [`OvsdbError`] from `ovsdb-core`, and the failing operation) and
//! malformed data. Messages are sentences that say what went wrong and, where
//! possible, what to do about it. The type is `Send + Sync` so it can cross
//! the client's reader and monitor threads.

use std::time::Duration;

use ovsdb_core::OvsdbError;
pub use sluice_jsonrpc::client::ClientError;

/// The result type used throughout this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while talking to an OVSDB server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The remote string is not `unix:PATH` or `tcp:HOST:PORT`.
    #[error("invalid remote \"{0}\": expected \"unix:PATH\" or \"tcp:HOST:PORT\"")]
    InvalidRemote(String),

    /// The connection failed: connecting, I/O, a closed connection, a
    /// reply that did not come in time, or a peer that broke JSON-RPC. The
    /// shared client's error, with its sentence, unchanged.
    #[error(transparent)]
    Connection(ClientError),

    /// The peer sent something that is not valid JSON-RPC/OVSDB.
    #[error("the server sent a malformed message: {0}")]
    Protocol(String),

    /// The server answered a JSON-RPC request with an error object.
    #[error("the server rejected \"{method}\": {error}")]
    Rpc {
        /// The method that was rejected.
        method: String,
        /// The server's error (tag and details).
        error: OvsdbError,
    },

    /// An OVSDB transaction failed; see RFC 7047 §4.1.3 for error tags.
    #[error("transaction on database \"{db}\" failed: {}", describe_failure(*op_index, error))]
    Transaction {
        /// The database the transaction targeted.
        db: String,
        /// The server's error (tag and details).
        error: OvsdbError,
        /// Index of the operation that failed, or `None` when the failure is
        /// about the transaction as a whole (e.g. a referential integrity check
        /// at commit time).
        op_index: Option<usize>,
    },

    /// A transaction could not be built (caught before sending).
    #[error("invalid transaction: {0}")]
    InvalidTransaction(String),

    /// A JSON value does not follow RFC 7047 notation for the expected type.
    #[error("invalid OVSDB data: {0}")]
    Data(String),

    /// A database schema could not be parsed.
    #[error("invalid database schema: {0}")]
    Schema(String),

    /// A table or column name is not in the schema.
    #[error("unknown {kind} \"{name}\" in database \"{db}\"; check the schema")]
    UnknownName {
        /// `"table"` or `"column"`.
        kind: &'static str,
        /// The name that was not found.
        name: String,
        /// The database whose schema was consulted.
        db: String,
    },

    /// [`crate::Monitor::wait_until`] gave up.
    #[error("the replica did not reach the expected state within {after:?} (monitor connected: {connected}, last error: {last_error})")]
    NotConverged {
        /// How long we waited.
        after: Duration,
        /// Whether the monitor was connected when we gave up.
        connected: bool,
        /// The monitor's last connection error, or "none".
        last_error: String,
    },

    /// A lock request was refused or the lock is not held.
    #[error("lock \"{0}\" is held by another client")]
    LockNotHeld(String),
}

fn describe_failure(op_index: Option<usize>, error: &OvsdbError) -> String {
    let what = match op_index {
        Some(i) => format!("operation {i} failed with \"{}\"", error.tag),
        None => format!("the transaction failed with \"{}\"", error.tag),
    };
    match &error.details {
        Some(details) => format!("{what}: {details}"),
        None => what,
    }
}

/// Data that does not follow RFC 7047 notation or the schema's types.
impl From<OvsdbError> for Error {
    fn from(e: OvsdbError) -> Self {
        Error::Data(e.to_string())
    }
}

impl Error {
    /// The error for a table the schema of database `db` does not have.
    pub(crate) fn unknown_table(db: &str, name: &str) -> Self {
        Error::UnknownName {
            kind: "table",
            name: name.to_owned(),
            db: db.to_owned(),
        }
    }

    /// Build a [`Error::Data`] error from anything printable.
    pub(crate) fn data(msg: impl Into<String>) -> Self {
        Error::Data(msg.into())
    }

    /// True if the error means the connection is unusable and a new one is
    /// needed (as opposed to a problem with one request).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Connection(
                ClientError::Connect { .. }
                    | ClientError::Io { .. }
                    | ClientError::Disconnected(_)
                    | ClientError::Timeout { .. }
            )
        )
    }
}
