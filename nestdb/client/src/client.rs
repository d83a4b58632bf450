//! The blocking request/response client: `list_dbs`, `get_schema`,
//! `transact`, `echo` and the lock methods (RFC 7047 §4.1).
//!
//! A [`Client`] owns one [`Connection`]; it does not reconnect (use
//! [`crate::Monitor`] for a self-healing replica). Lock notifications
//! (`locked`, `stolen`) are queued and read with
//! [`Client::next_lock_event`] / [`Client::wait_for_lock`]; other
//! notifications are ignored. `Client` is `Send + Sync`: requests from
//! several threads are multiplexed on the one connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};

use crate::error::{ClientError, Error, Result};
use crate::jsonrpc::{Connection, Notification, Remote};
use crate::transaction::{Transaction, TransactionOutcome};
use ovsdb_core::Schema;

/// Default bound on how long a request may wait for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A lock notification from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockEvent {
    /// A queued `lock` request was granted.
    Locked(String),
    /// Another client stole the lock; we no longer hold it.
    Stolen(String),
}

/// A connected OVSDB client. See the module docs.
#[derive(Debug)]
pub struct Client {
    conn: Connection,
    notifications: Mutex<Receiver<Notification>>,
}

impl Client {
    /// Connect to `remote` (`unix:PATH` or `tcp:HOST:PORT`).
    pub fn connect(remote: &str) -> Result<Client> {
        Self::connect_with_timeout(remote, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Connect with a custom per-request timeout.
    pub fn connect_with_timeout(remote: &str, timeout: Duration) -> Result<Client> {
        let remote: Remote = remote.parse()?;
        let (conn, notifications) = Connection::open(&remote, timeout)?;
        Ok(Client {
            conn,
            notifications: Mutex::new(notifications),
        })
    }

    /// The remote this client talks to.
    pub fn remote(&self) -> &str {
        self.conn.remote()
    }

    /// True once the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// The underlying connection, for methods this type does not wrap.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Names of the databases the server holds.
    pub fn list_dbs(&self) -> Result<Vec<String>> {
        let v = self.conn.call("list_dbs", json!([]))?;
        serde_json::from_value(v.clone())
            .map_err(|_| Error::Protocol(format!("list_dbs returned {v}, not an array of names")))
    }

    /// Fetch and parse the schema of `db`.
    pub fn get_schema(&self, db: &str) -> Result<Schema> {
        let v = self.conn.call("get_schema", json!([db]))?;
        Schema::from_json(&v).map_err(|e| Error::Schema(e.to_string()))
    }

    /// Run a transaction. Operation failures and commit failures come back
    /// as [`Error::Transaction`] with the server's `error` and `details`.
    pub fn transact(&self, txn: &Transaction) -> Result<TransactionOutcome> {
        self.transact_with_timeout(txn, self.conn.timeout())
    }

    /// [`Client::transact`] with its own reply timeout, for transactions
    /// that `wait` on a condition longer than the default request timeout.
    pub fn transact_with_timeout(
        &self,
        txn: &Transaction,
        timeout: Duration,
    ) -> Result<TransactionOutcome> {
        // Written straight from the rows: a large transaction's request is
        // tens of megabytes of JSON.
        let params = txn.params_json()?;
        let result = self.conn.call_encoded("transact", &params, timeout)?;
        txn.parse_reply(&result)
    }

    /// Round-trip an `echo` request; returns what the server echoed.
    pub fn echo(&self, payload: Value) -> Result<Value> {
        self.conn.call("echo", payload)
    }

    /// Request `lock`. Returns true if it was granted at once; otherwise the
    /// request is queued and a [`LockEvent::Locked`] follows when granted.
    pub fn lock(&self, id: &str) -> Result<bool> {
        let v = self.conn.call("lock", json!([id]))?;
        locked_flag(&v)
    }

    /// Take `lock` from whoever holds it (they get [`LockEvent::Stolen`]).
    pub fn steal(&self, id: &str) -> Result<()> {
        let v = self.conn.call("steal", json!([id]))?;
        if locked_flag(&v)? {
            Ok(())
        } else {
            Err(Error::LockNotHeld(id.to_owned()))
        }
    }

    /// Release `lock` or cancel a queued request for it.
    pub fn unlock(&self, id: &str) -> Result<()> {
        self.conn.call("unlock", json!([id])).map(drop)
    }

    /// Wait up to `timeout` for the next lock notification. `Ok(None)` means
    /// none arrived in time.
    pub fn next_lock_event(&self, timeout: Duration) -> Result<Option<LockEvent>> {
        let deadline = Instant::now() + timeout;
        let rx = self
            .notifications
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match rx.recv_timeout(left) {
                Ok(n) => n,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Connection(ClientError::Disconnected(
                        self.remote().to_owned(),
                    )))
                }
            };
            let name = || {
                // A notification of a megabyte or more comes as text.
                let params = n
                    .params_value()
                    .map_err(|e| Error::Protocol(format!("{} notification: {e}", n.method)))?;
                params
                    .get(0)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::Protocol(format!("{} notification lacks a lock name", n.method))
                    })
            };
            match n.method.as_str() {
                "locked" => return Ok(Some(LockEvent::Locked(name()?))),
                "stolen" => return Ok(Some(LockEvent::Stolen(name()?))),
                _ => continue,
            }
        }
    }

    /// Wait up to `timeout` until `lock` is granted (after a queued
    /// [`Client::lock`]). Fails with [`Error::LockNotHeld`] on timeout.
    pub fn wait_for_lock(&self, id: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_lock_event(left)? {
                Some(LockEvent::Locked(l)) if l == id => return Ok(()),
                Some(_) => continue,
                None => return Err(Error::LockNotHeld(id.to_owned())),
            }
        }
    }
}

fn locked_flag(v: &Value) -> Result<bool> {
    v.get("locked")
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::Protocol(format!("expected {{\"locked\": bool}}, got {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Client>();
        check::<crate::Monitor>();
        check::<crate::Replica>();
        check::<crate::Error>();
    }

    #[test]
    fn connect_errors_are_actionable() {
        let dir = tempfile::tempdir().unwrap();
        let remote = format!("unix:{}", dir.path().join("nobody-here.sock").display());
        let err = Client::connect(&remote).unwrap_err();
        assert!(
            matches!(err, Error::Connection(ClientError::Connect { .. })),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("nobody-here.sock") && msg.contains("is running"),
            "{msg}"
        );
        assert!(matches!(
            Client::connect("localhost:6640"),
            Err(Error::InvalidRemote(_))
        ));
    }
}
