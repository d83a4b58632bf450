//! One JSON-RPC 1.0 connection to an OVSDB server (RFC 7047 §4): remote
//! parsing, socket setup, message framing, request/response matching and
//! answering the server's `echo` keepalives.
//!
//! Framing: messages are back-to-back JSON objects with no delimiter; a
//! streaming JSON parser splits them. Each [`Connection`] owns one reader
//! thread that parses incoming messages, completes pending requests by `id`,
//! answers `echo` requests itself (so an idle client is never dropped by the
//! server's inactivity probe) and forwards notifications (`update`,
//! `update2`, `update3`, `locked`, `stolen`, …) to a channel.
//!
//! Invariants: request ids are unique per connection; every pending request
//! is completed exactly once — with the reply, or with
//! [`Error::Disconnected`] when the connection dies. When the reader thread
//! exits it closes the notification channel, so consumers observe the
//! disconnect. Dropping the [`Connection`] shuts the socket down and joins
//! the reader. All methods take `&self` and are safe to call from several
//! threads; writes are serialised by a mutex.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Value};

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
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Tcp(h, p) if h.contains(':') => write!(f, "tcp:[{h}]:{p}"),
            Remote::Tcp(h, p) => write!(f, "tcp:{h}:{p}"),
        }
    }
}

/// A connected socket of either kind.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(remote: &Remote, timeout: Duration) -> std::io::Result<Stream> {
        match remote {
            Remote::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Remote::Tcp(host, port) => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("host \"{host}\" resolved to no address"),
                    )
                }))
            }
        }
    }

    fn try_clone(&self) -> std::io::Result<Stream> {
        match self {
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
        }
    }

    fn shutdown(&self) {
        // Errors only mean the socket is already gone.
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A server-initiated notification (a request with a null id).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The JSON-RPC method, e.g. `"update3"` or `"locked"`.
    pub method: String,
    /// The method's params (always an array in OVSDB).
    pub params: Value,
}

type Reply = Result<Value>;

#[derive(Debug, Default)]
struct Pending {
    /// Requests awaiting a reply, by id.
    waiting: HashMap<u64, Sender<Reply>>,
    /// Set once the reader has exited; no new requests are accepted.
    closed: bool,
}

/// Parse a JSON-RPC `error` member (a string, or an object with `error` and
/// `details`) into an [`OvsdbError`].
pub(crate) fn parse_rpc_error(v: &Value) -> OvsdbError {
    OvsdbError::from_json(v)
}

/// A live JSON-RPC connection. See the module docs.
#[derive(Debug)]
pub struct Connection {
    remote: String,
    writer: Arc<Mutex<Stream>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    timeout: Duration,
    reader: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (single assignments), so recover from poisoning.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_message(writer: &Mutex<Stream>, remote: &str, msg: &Value) -> Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(|e| Error::Protocol(e.to_string()))?;
    let mut w = lock(writer);
    w.write_all(&bytes)
        .and_then(|()| w.flush())
        .map_err(|source| Error::Io {
            remote: remote.to_owned(),
            source,
        })
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
        let name = remote.to_string();
        let stream = Stream::connect(remote, timeout).map_err(|source| Error::Connect {
            remote: name.clone(),
            source,
        })?;
        let read_half = stream.try_clone().map_err(|source| Error::Io {
            remote: name.clone(),
            source,
        })?;
        let writer = Arc::new(Mutex::new(stream));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (notify_tx, notify_rx) = unbounded();
        let reader = {
            let writer = Arc::clone(&writer);
            let pending = Arc::clone(&pending);
            let name = name.clone();
            std::thread::Builder::new()
                .name("nestdb-rpc-reader".into())
                .spawn(move || {
                    reader_loop(
                        read_half,
                        max_message_bytes,
                        &name,
                        &writer,
                        &pending,
                        &notify_tx,
                    )
                })
                .map_err(|source| Error::Io {
                    remote: remote.to_string(),
                    source,
                })?
        };
        Ok((
            Connection {
                remote: name,
                writer,
                pending,
                next_id: AtomicU64::new(1),
                timeout,
                reader: Some(reader),
            },
            notify_rx,
        ))
    }

    /// The remote this connection goes to.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// True once the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.pending).closed
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(1);
        {
            let mut p = lock(&self.pending);
            if p.closed {
                return Err(Error::Disconnected(self.remote.clone()));
            }
            p.waiting.insert(id, tx);
        }
        let msg = json!({"method": method, "params": params, "id": id});
        if let Err(e) = write_message(&self.writer, &self.remote, &msg) {
            lock(&self.pending).waiting.remove(&id);
            return Err(e);
        }
        let reply = match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.pending).waiting.remove(&id);
                return Err(Error::Timeout {
                    method: method.to_owned(),
                    after: timeout,
                });
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Disconnected(self.remote.clone())),
        }?;
        match (reply.get("error"), reply.get("result")) {
            (Some(err), _) if !err.is_null() => Err(Error::Rpc {
                method: method.to_owned(),
                error: parse_rpc_error(err),
            }),
            (_, Some(result)) => Ok(result.clone()),
            _ => Err(Error::Protocol(format!(
                "reply to \"{method}\" has neither result nor error: {reply}"
            ))),
        }
    }

    /// Send a notification (no reply expected).
    pub fn notify(&self, method: &str, params: Value) -> Result<()> {
        write_message(
            &self.writer,
            &self.remote,
            &json!({"method": method, "params": params, "id": null}),
        )
    }

    /// Shut the socket down; pending and future requests fail with
    /// [`Error::Disconnected`] and the notification channel closes.
    pub fn close(&self) {
        lock(&self.writer).shutdown();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
        if let Some(h) = self.reader.take() {
            // The reader only fails by panicking, which it does not do on
            // any input; nothing useful to report from a destructor.
            let _ = h.join();
        }
    }
}

/// Default bound on the size of one incoming message. A full dump of a
/// large node database is a few MiB; this only stops a runaway peer.
pub const MAX_MESSAGE_BYTES: u64 = 128 << 20;

/// Counts the bytes the JSON parser consumes for the current message and
/// fails the read once the budget is spent, so a peer cannot make us buffer
/// an unbounded message. The reader loop refills the budget per message.
struct MessageBudget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
}

impl<R: Read> Read for MessageBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "message exceeds the maximum size",
            ));
        }
        let cap = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..cap])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

fn reader_loop(
    read_half: Stream,
    max_message_bytes: u64,
    remote: &str,
    writer: &Mutex<Stream>,
    pending: &Mutex<Pending>,
    notify: &Sender<Notification>,
) {
    let budget = Rc::new(Cell::new(max_message_bytes));
    let reader = MessageBudget {
        inner: BufReader::with_capacity(64 * 1024, read_half),
        left: Rc::clone(&budget),
    };
    let messages = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    for msg in messages {
        budget.set(max_message_bytes);
        let msg = match msg {
            Ok(m) => m,
            Err(e) if e.is_eof() || e.is_io() => {
                // Includes an exhausted message budget (reported as I/O).
                tracing::debug!(remote, error = %e, "connection closed");
                break;
            }
            Err(e) => {
                tracing::warn!(remote, error = %e, "server sent invalid JSON; closing the connection");
                break;
            }
        };
        if let Err(e) = dispatch(msg, remote, writer, pending, notify) {
            tracing::warn!(remote, error = %e, "closing the connection");
            break;
        }
    }
    let waiting = {
        let mut p = lock(pending);
        p.closed = true;
        std::mem::take(&mut p.waiting)
    };
    for (_, tx) in waiting {
        // The requester may have timed out and gone; that is fine.
        let _ = tx.send(Err(Error::Disconnected(remote.to_owned())));
    }
    lock(writer).shutdown();
}

fn dispatch(
    msg: Value,
    remote: &str,
    writer: &Mutex<Stream>,
    pending: &Mutex<Pending>,
    notify: &Sender<Notification>,
) -> Result<()> {
    let Some(obj) = msg.as_object() else {
        return Err(Error::Protocol(format!(
            "expected a JSON object, got {msg}"
        )));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    if let Some(method) = obj.get("method") {
        let method = method
            .as_str()
            .ok_or_else(|| Error::Protocol(format!("method must be a string in {msg}")))?;
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        if id.is_null() {
            // Nobody listening is not an error: the owner may not care.
            let _ = notify.send(Notification {
                method: method.to_owned(),
                params,
            });
            return Ok(());
        }
        let reply = if method == "echo" {
            json!({"result": params, "error": null, "id": id})
        } else {
            json!({"result": null, "error": "unknown method", "id": id})
        };
        return write_message(writer, remote, &reply);
    }
    let Some(id) = id.as_u64() else {
        // Replies to ids we never sent (e.g. our own echo) are ignored.
        tracing::debug!(remote, %msg, "ignoring reply with a foreign id");
        return Ok(());
    };
    let tx = lock(pending).waiting.remove(&id);
    match tx {
        Some(tx) => {
            let _ = tx.send(Ok(msg));
        }
        None => tracing::debug!(remote, id, "reply to a request that timed out"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_messages_close_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let small = json!({"method": "update", "params": ["x".repeat(100)], "id": null});
            let big = json!({"method": "update", "params": ["x".repeat(5000)], "id": null});
            s.write_all(format!("{small}{small}{big}{small}").as_bytes())
                .unwrap();
            // Keep the socket open until the client hangs up.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let (conn, notes) =
            Connection::open_with_limit(&Remote::Unix(path), Duration::from_secs(30), 1024)
                .unwrap();
        for _ in 0..2 {
            let n = notes.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(n.params[0].as_str().map(str::len), Some(100));
        }
        // The big message is refused and nothing after it is delivered.
        assert!(notes.recv_timeout(Duration::from_secs(30)).is_err());
        assert!(conn.is_closed());
        drop(conn);
        peer.join().unwrap();
    }

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

    /// A scripted peer on a socketpair: framing without delimiters, echo
    /// answered by the client, replies matched by id, notifications
    /// forwarded, and a disconnect completing pending requests.
    #[test]
    fn framing_echo_and_disconnect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Two messages back to back in one write, then a request.
            s.write_all(br#"{"method":"update","params":[1],"id":null}{"method":"echo","params":["x"],"id":"e1"}"#)
                .unwrap();
            let mut de =
                serde_json::Deserializer::from_reader(s.try_clone().unwrap()).into_iter::<Value>();
            // The echo reply and our request may arrive in either order.
            let a = de.next().unwrap().unwrap();
            let b = de.next().unwrap().unwrap();
            let (echo_reply, req) = if a["id"] == "e1" { (a, b) } else { (b, a) };
            let reply = json!({"id": req["id"], "result": ["Sluice_Node"], "error": null});
            s.write_all(reply.to_string().as_bytes()).unwrap();
            // Half a message, then hang up.
            s.write_all(br#"{"id": 99, "res"#).unwrap();
            echo_reply
        });
        let (conn, notes) = Connection::open(&Remote::Unix(path), Duration::from_secs(30)).unwrap();
        let n = notes.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(n.method, "update");
        let r = conn.call("list_dbs", json!([])).unwrap();
        assert_eq!(r, json!(["Sluice_Node"]));
        let echo_reply = peer.join().unwrap();
        assert_eq!(
            echo_reply,
            json!({"id": "e1", "result": ["x"], "error": null})
        );
        // The peer hung up: the notification channel closes and calls fail.
        assert!(notes.recv_timeout(Duration::from_secs(30)).is_err());
        assert!(matches!(
            conn.call("list_dbs", json!([])),
            Err(Error::Disconnected(_))
        ));
    }
}
