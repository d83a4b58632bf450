//! A blocking JSON-RPC 1.0 client connection over a Unix or TCP socket:
//! socket setup, framing, request/reply matching, answering the server's
//! `echo` keepalives and forwarding notifications.
//!
//! Each [`Connection`] owns one reader thread that decodes incoming messages
//! with [`Framer`] (so a peer cannot make it buffer more than
//! [`Limits::max_message_bytes`]), completes pending requests by `id`,
//! answers `echo` requests itself (so an idle client is never dropped by an
//! OVSDB server's inactivity probe), refuses other server requests with an
//! error reply and forwards notifications (`update3`, `locked`, …) to a
//! channel; a notification of [`LARGE_MESSAGE`] bytes or more is forwarded
//! with its params as JSON text, undecoded, for the receiver to decode into
//! its own types. Requests can be sent with params already written as JSON
//! text ([`Connection::call_encoded`]).
//!
//! Invariants: request ids are unique per connection; every pending request
//! is completed exactly once — with the reply, or with
//! [`ClientError::Disconnected`] when the connection dies. A framing error,
//! invalid JSON or a message that is not JSON-RPC closes the connection.
//! When the reader thread exits it closes the notification channel, so
//! consumers observe the disconnect. Dropping the [`Connection`] shuts the
//! socket down and joins the reader. All methods take `&self` and are safe
//! to call from several threads; writes are serialised by a mutex.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::framing::{Framer, Limits};
use crate::message::Message;

/// Default bound on the size of one incoming message. A full dump of a
/// large node database is a few MiB; this only stops a runaway peer.
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP host and port.
    Tcp(String, u16),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(h, p) if h.contains(':') => write!(f, "tcp:[{h}]:{p}"),
            Endpoint::Tcp(h, p) => write!(f, "tcp:{h}:{p}"),
        }
    }
}

/// Why a call on a [`Connection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the server failed.
    #[error("could not connect to {remote}: {source}; check that the server is running and listening there")]
    Connect {
        /// The endpoint we tried.
        remote: String,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("I/O error on the connection to {remote}: {source}")]
    Io {
        /// The endpoint the connection goes to.
        remote: String,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed (or was closed by us) before a reply arrived.
    #[error("the connection to {0} is closed; reconnect and retry the request")]
    Disconnected(String),
    /// No reply arrived in time.
    #[error(
        "the server did not answer \"{method}\" within {after:?}; it may be overloaded or hung"
    )]
    Timeout {
        /// The method that timed out.
        method: String,
        /// How long we waited.
        after: Duration,
    },
    /// The server answered with a JSON-RPC error.
    #[error("the server answered \"{method}\" with an error: {error}")]
    Rpc {
        /// The method called.
        method: String,
        /// The `error` member of the reply, as sent.
        error: Value,
    },
    /// The server broke the protocol.
    #[error("the server broke the JSON-RPC protocol: {0}")]
    Protocol(String),
}

/// A server-initiated notification (a request with a null id).
///
/// A large one (at least [`LARGE_MESSAGE`] bytes) arrives undecoded: its
/// params are in `raw_params` as JSON text (checked for syntax) and
/// `params` is null, so a receiver can decode them straight into its own
/// types ([`Notification::params_value`] decodes either form).
#[derive(Debug, Clone)]
pub struct Notification {
    /// The JSON-RPC method, e.g. `"update3"` or `"locked"`.
    pub method: String,
    /// The method's params (an array in OVSDB); null when `raw_params`
    /// holds them.
    pub params: Value,
    /// The params as JSON text, for a large notification.
    pub raw_params: Option<Box<RawValue>>,
}

impl Notification {
    /// The params, decoded (from `raw_params` when the notification came
    /// as text).
    ///
    /// # Errors
    /// The decoding error of the text (which was valid JSON when it
    /// arrived, so only numbers beyond `f64`'s range fail).
    pub fn params_value(&self) -> Result<std::borrow::Cow<'_, Value>, serde_json::Error> {
        match &self.raw_params {
            Some(r) => serde_json::from_str(r.get()).map(std::borrow::Cow::Owned),
            None => Ok(std::borrow::Cow::Borrowed(&self.params)),
        }
    }
}

impl PartialEq for Notification {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && self.params == other.params
            && self.raw_params.as_ref().map(|r| r.get())
                == other.raw_params.as_ref().map(|r| r.get())
    }
}

/// A notification of at least this many bytes arrives as text
/// ([`Notification::raw_params`]); a message this large has its decoding
/// time logged (at `debug`).
pub const LARGE_MESSAGE: usize = 1 << 20;

/// A large notification's method and params, undecoded; `None` for any
/// other message (or one this does not take apart: a repeated member, an
/// escaped method name), which is decoded whole.
fn raw_notification(frame: &[u8]) -> Option<Notification> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        method: Option<String>,
        #[serde(borrow)]
        params: Option<&'a RawValue>,
        id: Option<Value>,
    }
    // An array would fill the struct by position: only an object is a message.
    if frame.first() != Some(&b'{') {
        return None;
    }
    let env: Envelope<'_> = serde_json::from_slice(frame).ok()?;
    if env.id.is_some_and(|id| !id.is_null()) {
        return None;
    }
    Some(Notification {
        method: env.method?,
        params: Value::Null,
        raw_params: Some(env.params?.to_owned()),
    })
}

/// How to open a [`Connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Bounds connecting (TCP) and every [`Connection::call`]; `None` waits
    /// without limit.
    pub timeout: Option<Duration>,
    /// Bounds on one incoming message; a larger or deeper one closes the
    /// connection.
    pub limits: Limits,
}

impl ConnectOptions {
    /// `timeout` with the default limits ([`MAX_MESSAGE_BYTES`]).
    pub fn new(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            limits: Limits::new(MAX_MESSAGE_BYTES),
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
    fn connect(endpoint: &Endpoint, timeout: Option<Duration>) -> std::io::Result<Stream> {
        match endpoint {
            Endpoint::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Endpoint::Tcp(host, port) => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    let connected = match timeout {
                        Some(t) => TcpStream::connect_timeout(&addr, t),
                        None => TcpStream::connect(addr),
                    };
                    match connected {
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

type Reply = Result<Result<Value, Value>, ClientError>;

#[derive(Debug, Default)]
struct Pending {
    /// Requests awaiting a reply, by id.
    waiting: HashMap<u64, Sender<Reply>>,
    /// Set once the reader has exited; no new requests are accepted.
    closed: bool,
}

/// A live JSON-RPC connection. See the module docs.
#[derive(Debug)]
pub struct Connection {
    remote: String,
    writer: Arc<Mutex<Stream>>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    timeout: Option<Duration>,
    reader: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (single assignments), so recover from poisoning.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_message(writer: &Mutex<Stream>, remote: &str, msg: &Message) -> Result<(), ClientError> {
    write_bytes(writer, remote, &msg.to_bytes())
}

fn write_bytes(writer: &Mutex<Stream>, remote: &str, bytes: &[u8]) -> Result<(), ClientError> {
    let mut w = lock(writer);
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(|source| ClientError::Io {
            remote: remote.to_owned(),
            source,
        })
}

impl Connection {
    /// Connects to `endpoint` and starts the reader thread. Returns the
    /// connection and the channel of server notifications.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if nothing listens there,
    /// [`ClientError::Io`] if the reader thread cannot be set up.
    pub fn open(
        endpoint: &Endpoint,
        options: ConnectOptions,
    ) -> Result<(Connection, Receiver<Notification>), ClientError> {
        let name = endpoint.to_string();
        let stream =
            Stream::connect(endpoint, options.timeout).map_err(|source| ClientError::Connect {
                remote: name.clone(),
                source,
            })?;
        let read_half = stream.try_clone().map_err(|source| ClientError::Io {
            remote: name.clone(),
            source,
        })?;
        let writer = Arc::new(Mutex::new(stream));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (notify_tx, notify_rx) = unbounded();
        let reader = {
            let writer = Arc::clone(&writer);
            let pending = Arc::clone(&pending);
            let thread_name = name.clone();
            std::thread::Builder::new()
                .name("jsonrpc-reader".into())
                .spawn(move || {
                    reader_loop(
                        read_half,
                        options.limits,
                        &thread_name,
                        &writer,
                        &pending,
                        &notify_tx,
                    )
                })
                .map_err(|source| ClientError::Io {
                    remote: name.clone(),
                    source,
                })?
        };
        Ok((
            Connection {
                remote: name,
                writer,
                pending,
                next_id: AtomicU64::new(1),
                timeout: options.timeout,
                reader: Some(reader),
            },
            notify_rx,
        ))
    }

    /// The endpoint this connection goes to, as text (`unix:PATH`,
    /// `tcp:HOST:PORT`).
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// True once the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.pending).closed
    }

    /// Sends a request and waits (up to the connection's timeout) for its
    /// result.
    ///
    /// # Errors
    /// [`ClientError::Rpc`] if the server answered with an error; the other
    /// variants if it could not be asked or did not answer.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call_with_timeout(method, params, self.timeout)
    }

    /// [`Connection::call`] with an explicit timeout (`None`: wait until
    /// the reply or a disconnect).
    ///
    /// # Errors
    /// As [`Connection::call`].
    pub fn call_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, ClientError> {
        self.call_with(method, timeout, |id| {
            Message::Request {
                method: method.to_owned(),
                params,
                id: json!(id),
            }
            .to_bytes()
        })
    }

    /// [`Connection::call_with_timeout`] with `params` already written as
    /// JSON text (by the caller's own encoder; it is sent as it is, not
    /// checked), so a large request goes out without building a `Value`
    /// of it first.
    ///
    /// # Errors
    /// As [`Connection::call`].
    pub fn call_encoded(
        &self,
        method: &str,
        params_json: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Value, ClientError> {
        self.call_with(method, timeout, |id| {
            let mut out = Vec::with_capacity(params_json.len() + method.len() + 48);
            out.extend_from_slice(br#"{"id":"#);
            out.extend_from_slice(id.to_string().as_bytes());
            out.extend_from_slice(br#","method":"#);
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, method);
            out.extend_from_slice(br#","params":"#);
            out.extend_from_slice(params_json);
            out.push(b'}');
            out
        })
    }

    /// One request: `encode` writes it with the id it is given; waits for
    /// the reply up to `timeout`.
    fn call_with(
        &self,
        method: &str,
        timeout: Option<Duration>,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(1);
        {
            let mut p = lock(&self.pending);
            if p.closed {
                return Err(ClientError::Disconnected(self.remote.clone()));
            }
            p.waiting.insert(id, tx);
        }
        if let Err(e) = write_bytes(&self.writer, &self.remote, &encode(id)) {
            lock(&self.pending).waiting.remove(&id);
            return Err(e);
        }
        let received = match timeout {
            Some(timeout) => rx.recv_timeout(timeout),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let reply = match received {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.pending).waiting.remove(&id);
                return Err(ClientError::Timeout {
                    method: method.to_owned(),
                    after: timeout.unwrap_or_default(),
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(ClientError::Disconnected(self.remote.clone()))
            }
        }?;
        reply.map_err(|error| ClientError::Rpc {
            method: method.to_owned(),
            error,
        })
    }

    /// Sends a notification (no reply expected).
    ///
    /// # Errors
    /// [`ClientError::Io`] if the message cannot be written.
    pub fn notify(&self, method: &str, params: Value) -> Result<(), ClientError> {
        let msg = Message::Notification {
            method: method.to_owned(),
            params,
        };
        write_message(&self.writer, &self.remote, &msg)
    }

    /// Shuts the socket down; pending and future requests fail with
    /// [`ClientError::Disconnected`] and the notification channel closes.
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

fn reader_loop(
    mut read_half: Stream,
    limits: Limits,
    remote: &str,
    writer: &Mutex<Stream>,
    pending: &Mutex<Pending>,
    notify: &Sender<Notification>,
) {
    let mut framer = Framer::with_limits(limits);
    loop {
        let value = match framer.read_frame(&mut read_half) {
            Ok(Some(frame)) => {
                let t = std::time::Instant::now();
                if frame.len() >= LARGE_MESSAGE {
                    if let Some(n) = raw_notification(frame) {
                        tracing::debug!(
                            remote,
                            bytes = frame.len(),
                            parse_ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1e3),
                            "large notification received as text"
                        );
                        // Nobody listening is not an error: the owner may not care.
                        let _ = notify.send(n);
                        continue;
                    }
                }
                match serde_json::from_slice::<Value>(frame) {
                    Ok(v) => {
                        if frame.len() >= LARGE_MESSAGE {
                            tracing::debug!(
                                remote,
                                bytes = frame.len(),
                                parse_ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1e3),
                                "large message decoded"
                            );
                        }
                        v
                    }
                    Err(e) => {
                        tracing::warn!(remote, error = %e, "closing the connection: a message is not JSON");
                        break;
                    }
                }
            }
            Ok(None) => {
                tracing::debug!(remote, "connection closed");
                break;
            }
            Err(e) => {
                // Includes framing errors (too large, too deep, not JSON).
                tracing::warn!(remote, error = %e, "closing the connection");
                break;
            }
        };
        if let Err(e) = dispatch(value, remote, writer, pending, notify) {
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
        let _ = tx.send(Err(ClientError::Disconnected(remote.to_owned())));
    }
    lock(writer).shutdown();
}

fn dispatch(
    value: Value,
    remote: &str,
    writer: &Mutex<Stream>,
    pending: &Mutex<Pending>,
    notify: &Sender<Notification>,
) -> Result<(), ClientError> {
    let message = Message::from_json(value).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let (id, outcome) = match message {
        Message::Notification { method, params } => {
            // Nobody listening is not an error: the owner may not care.
            let _ = notify.send(Notification {
                method,
                params,
                raw_params: None,
            });
            return Ok(());
        }
        Message::Request { method, params, id } => {
            let reply = if method == "echo" {
                Message::reply(id, Ok(params))
            } else {
                Message::reply(id, Err(json!("unknown method")))
            };
            return write_message(writer, remote, &reply);
        }
        Message::Reply { result, id } => (id, Ok(result)),
        Message::Error { error, id } => (id, Err(error)),
    };
    let Some(id) = id.as_u64() else {
        // Replies to ids we never sent (e.g. our own echo) are ignored.
        tracing::debug!(remote, %id, "ignoring reply with a foreign id");
        return Ok(());
    };
    let tx = lock(pending).waiting.remove(&id);
    match tx {
        Some(tx) => {
            let _ = tx.send(Ok(outcome));
        }
        None => tracing::debug!(remote, id, "reply to a request that timed out"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer on a fresh Unix socket that runs `script` on the first
    /// connection; returns where to connect and the script's outcome.
    fn scripted_peer<T: Send + 'static>(
        script: impl FnOnce(UnixStream) -> T + Send + 'static,
    ) -> (tempfile::TempDir, Endpoint, std::thread::JoinHandle<T>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let peer = std::thread::spawn(move || script(listener.accept().unwrap().0));
        (dir, Endpoint::Unix(path), peer)
    }

    fn options(max_message_bytes: usize) -> ConnectOptions {
        ConnectOptions {
            timeout: Some(Duration::from_secs(30)),
            limits: Limits::new(max_message_bytes),
        }
    }

    #[test]
    fn oversized_messages_close_the_connection() {
        let (_dir, endpoint, peer) = scripted_peer(|mut s| {
            let small = json!({"method": "update", "params": ["x".repeat(100)], "id": null});
            let big = json!({"method": "update", "params": ["x".repeat(5000)], "id": null});
            s.write_all(format!("{small}{small}{big}{small}").as_bytes())
                .unwrap();
            // Keep the socket open until the client hangs up.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        });
        let (conn, notes) = Connection::open(&endpoint, options(1024)).unwrap();
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
    fn endpoints_display_as_remotes() {
        assert_eq!(
            Endpoint::Unix("/run/db.sock".into()).to_string(),
            "unix:/run/db.sock"
        );
        assert_eq!(
            Endpoint::Tcp("127.0.0.1".into(), 6640).to_string(),
            "tcp:127.0.0.1:6640"
        );
        assert_eq!(
            Endpoint::Tcp("::1".into(), 6641).to_string(),
            "tcp:[::1]:6641"
        );
    }

    /// A scripted peer: framing without delimiters, echo answered by the
    /// client, other requests refused, replies matched by id, errors
    /// surfaced, notifications forwarded, and a disconnect completing
    /// pending requests.
    #[test]
    fn framing_echo_errors_and_disconnect() {
        let (_dir, endpoint, peer) = scripted_peer(|mut s| {
            // Two messages back to back in one write, then a request.
            s.write_all(br#"{"method":"update","params":[1],"id":null}{"method":"echo","params":["x"],"id":"e1"}{"method":"other","params":[],"id":"o1"}"#)
                .unwrap();
            let mut framer = Framer::new(1 << 20);
            let mut got: Vec<Value> = (0..3)
                .map(|_| framer.read_value(&mut s).unwrap().unwrap())
                .collect();
            // The echo reply, the refusal and our request may arrive in
            // any order.
            let take = |got: &mut Vec<Value>, f: &dyn Fn(&Value) -> bool| {
                let i = got.iter().position(f).unwrap();
                got.remove(i)
            };
            let echo_reply = take(&mut got, &|v| v["id"] == "e1");
            let refusal = take(&mut got, &|v| v["id"] == "o1");
            let req = got.remove(0);
            let reply = json!({"id": req["id"], "result": ["Sluice_Node"], "error": null});
            s.write_all(reply.to_string().as_bytes()).unwrap();
            let req = framer.read_value(&mut s).unwrap().unwrap();
            let error = json!({"id": req["id"], "result": null, "error": {"error": "nope"}});
            s.write_all(error.to_string().as_bytes()).unwrap();
            // Half a message, then hang up.
            s.write_all(br#"{"id": 99, "res"#).unwrap();
            (echo_reply, refusal)
        });
        let (conn, notes) = Connection::open(&endpoint, options(1 << 20)).unwrap();
        let n = notes.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(n.method, "update");
        let r = conn.call("list_dbs", json!([])).unwrap();
        assert_eq!(r, json!(["Sluice_Node"]));
        match conn.call("transact", json!([])) {
            Err(ClientError::Rpc { method, error }) => {
                assert_eq!(method, "transact");
                assert_eq!(error, json!({"error": "nope"}));
            }
            other => panic!("expected an RPC error, got {other:?}"),
        }
        let (echo_reply, refusal) = peer.join().unwrap();
        assert_eq!(
            echo_reply,
            json!({"id": "e1", "result": ["x"], "error": null})
        );
        assert_eq!(
            refusal,
            json!({"id": "o1", "result": null, "error": "unknown method"})
        );
        // The peer hung up: the notification channel closes and calls fail.
        assert!(notes.recv_timeout(Duration::from_secs(30)).is_err());
        assert!(matches!(
            conn.call("list_dbs", json!([])),
            Err(ClientError::Disconnected(_))
        ));
    }

    #[test]
    fn talks_to_the_unixctl_server() {
        use crate::unixctl::{CtlServer, Registry, ServerConfig};
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::with_version("test 1");
        let server = CtlServer::start(
            ServerConfig::with_path(dir.path().join("t.ctl")),
            registry,
            || {},
        )
        .unwrap();
        let endpoint = Endpoint::Unix(server.path().to_path_buf());
        let (conn, _notes) = Connection::open(&endpoint, ConnectOptions::new(None)).unwrap();
        assert_eq!(conn.call("version", json!([])).unwrap(), json!("test 1\n"));
        match conn.call("nope", json!([])) {
            Err(ClientError::Rpc { error, .. }) => {
                assert!(error.as_str().unwrap().contains("not a valid command"))
            }
            other => panic!("expected an RPC error, got {other:?}"),
        }
    }
}
