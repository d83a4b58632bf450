//! The OVSDB side of one JSON-RPC connection: OVSDB remote syntax
//! ([`Remote`]: `unix:PATH`, `tcp:HOST:PORT`) and a [`Connection`] that
//! turns the shared client connection's errors into this crate's
//! [`Error`]s (a JSON-RPC `error` member becomes an [`OvsdbError`]).
//!
//! Framing, request/reply matching, `echo` keepalive answers and the
//! notification channel are `sluice_jsonrpc::client`'s, written once for
//! every Sluice program; see its documentation for the invariants (every
//! pending request completes exactly once; the notification channel closes
//! when the connection dies). All methods take `&self` and are safe to call
//! from several threads.

use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::Value;
use sluice_jsonrpc::client::{self as rpc, ClientError, ConnectOptions, Endpoint};
use sluice_jsonrpc::Limits;

pub use sluice_jsonrpc::client::Notification;

use crate::error::{Error, Result};
use ovsdb_core::OvsdbError;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A Unix domain socket path (`unix:PATH`).
    Unix(std::path::PathBuf),
    /// A TCP host and port (`tcp:HOST:PORT`, IPv6 hosts in brackets).
    Tcp(String, u16),
}

impl std::str::FromStr for Remote {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidRemote(s.to_owned());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Remote::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let port: u16 = port.parse().map_err(|_| bad())?;
            if host.is_empty() || port == 0 {
                return Err(bad());
            }
            return Ok(Remote::Tcp(host.to_owned(), port));
        }
        Err(bad())
    }
}

impl std::fmt::Display for Remote {
    /// The same syntax as parsed, as `sluice_jsonrpc` writes endpoints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Endpoint::from(self).fmt(f)
    }
}

impl From<&Remote> for Endpoint {
    fn from(remote: &Remote) -> Self {
        match remote {
            Remote::Unix(path) => Endpoint::Unix(path.clone()),
            Remote::Tcp(host, port) => Endpoint::Tcp(host.clone(), *port),
        }
    }
}

/// Parse a JSON-RPC `error` member (a string, or an object with `error` and
/// `details`) into an [`OvsdbError`].
pub(crate) fn parse_rpc_error(v: &Value) -> OvsdbError {
    OvsdbError::from_json(v)
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Rpc { method, error } => Error::Rpc {
                method,
                error: parse_rpc_error(&error),
            },
            other => Error::Connection(other),
        }
    }
}

/// Default bound on the size of one incoming message. A full dump of a
/// large node database is a few MiB; this only stops a runaway peer.
pub const MAX_MESSAGE_BYTES: u64 = rpc::MAX_MESSAGE_BYTES as u64;

/// A live JSON-RPC connection to an OVSDB server. See the module docs.
#[derive(Debug)]
pub struct Connection {
    inner: rpc::Connection,
    timeout: Duration,
}

impl Connection {
    /// Connect to `remote` and start the reader thread. `timeout` bounds
    /// connecting (TCP) and every request made with [`Connection::call`].
    /// Returns the connection and the channel of server notifications.
    pub fn open(
        remote: &Remote,
        timeout: Duration,
    ) -> Result<(Connection, Receiver<Notification>)> {
        Self::open_with_limit(remote, timeout, MAX_MESSAGE_BYTES)
    }

    /// [`Connection::open`] with a custom bound on the size of one incoming
    /// message; a larger message closes the connection.
    pub fn open_with_limit(
        remote: &Remote,
        timeout: Duration,
        max_message_bytes: u64,
    ) -> Result<(Connection, Receiver<Notification>)> {
        let options = ConnectOptions {
            timeout: Some(timeout),
            limits: Limits::new(usize::try_from(max_message_bytes).unwrap_or(usize::MAX)),
        };
        let (inner, notifications) = rpc::Connection::open(&Endpoint::from(remote), options)?;
        Ok((Connection { inner, timeout }, notifications))
    }

    /// The bound on each request made with [`Connection::call`].
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The remote this connection goes to.
    pub fn remote(&self) -> &str {
        self.inner.remote()
    }

    /// True once the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Send a request and wait (up to the connection's timeout) for its
    /// result. A JSON-RPC error reply becomes [`Error::Rpc`].
    pub fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.call_with_timeout(method, params, self.timeout)
    }

    /// [`Connection::call`] with an explicit timeout.
    pub fn call_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        Ok(self
            .inner
            .call_with_timeout(method, params, Some(timeout))?)
    }

    /// [`Connection::call_with_timeout`] with `params` already written as
    /// JSON text (sent as it is).
    pub fn call_encoded(
        &self,
        method: &str,
        params_json: &[u8],
        timeout: Duration,
    ) -> Result<Value> {
        Ok(self
            .inner
            .call_encoded(method, params_json, Some(timeout))?)
    }

    /// Send a notification (no reply expected).
    pub fn notify(&self, method: &str, params: Value) -> Result<()> {
        Ok(self.inner.notify(method, params)?)
    }

    /// Shut the socket down; pending and future requests fail with
    /// [`ClientError::Disconnected`] and the notification channel closes.
    pub fn close(&self) {
        self.inner.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_remotes() {
        assert_eq!(
            "unix:/run/db.sock".parse::<Remote>().unwrap(),
            Remote::Unix("/run/db.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:6640".parse::<Remote>().unwrap(),
            Remote::Tcp("127.0.0.1".into(), 6640)
        );
        let v6 = "tcp:[::1]:6641".parse::<Remote>().unwrap();
        assert_eq!(v6, Remote::Tcp("::1".into(), 6641));
        assert_eq!(v6.to_string(), "tcp:[::1]:6641");
        for bad in [
            "",
            "unix:",
            "tcp:host",
            "tcp::80",
            "tcp:h:0",
            "tcp:h:99999",
            "ssl:h:1",
            "/p",
        ] {
            let err = bad.parse::<Remote>().unwrap_err();
            assert!(err.to_string().contains("unix:PATH"), "{bad}: {err}");
        }
    }

    /// The shared connection's errors arrive as this crate's: an OVSDB
    /// error object becomes an [`OvsdbError`], transport failures keep
    /// their kind. (Framing, limits and disconnects are tested with the
    /// connection in `sluice-jsonrpc`.)
    #[test]
    fn client_errors_map_to_ovsdb_errors() {
        let rpc = |error| {
            Error::from(ClientError::Rpc {
                method: "get_schema".into(),
                error,
            })
        };
        match rpc(json!({"error": "unknown database", "details": "no Foo"})) {
            Error::Rpc { method, error } => {
                assert_eq!(method, "get_schema");
                assert_eq!(error.tag, "unknown database");
                assert_eq!(error.details.as_deref(), Some("no Foo"));
            }
            other => panic!("expected an RPC error, got {other:?}"),
        }
        match rpc(json!("unknown method")) {
            Error::Rpc { error, .. } => assert_eq!(error.tag, "unknown method"),
            other => panic!("expected an RPC error, got {other:?}"),
        }
        assert!(matches!(
            Error::from(ClientError::Disconnected("unix:/x".into())),
            Error::Connection(ClientError::Disconnected(r)) if r == "unix:/x"
        ));
        assert!(matches!(
            Error::from(ClientError::Timeout {
                method: "echo".into(),
                after: Duration::from_secs(1)
            }),
            Error::Connection(ClientError::Timeout { .. })
        ));
        assert!(matches!(
            Error::from(ClientError::Protocol("bad".into())),
            Error::Connection(ClientError::Protocol(p)) if p == "bad"
        ));
        let io = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(matches!(
            Error::from(ClientError::Io {
                remote: "r".into(),
                source: io()
            }),
            Error::Connection(ClientError::Io { .. })
        ));
        assert!(matches!(
            Error::from(ClientError::Connect {
                remote: "r".into(),
                source: io()
            }),
            Error::Connection(ClientError::Connect { .. })
        ));
    }
}
