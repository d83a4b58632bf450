//! The typed client of the `sluiced` control socket (`sluiced.ctl`).
//!
//! Speaks the unixctl JSON-RPC dialect that `sluiced` serves (and that
//! `ovs-appctl` speaks): one JSON object per request,
//! `{"id":N,"method":"<command>","params":…}`, answered by
//! `{"id":N,"result":…,"error":…}`. Two kinds of call:
//!
//! - [`Client::call`]: a typed [`Method`]: the request goes out as a JSON
//!   object, the reply comes back as `M::Reply`, a failure as an
//!   [`ApiError`] with its code. This is what every Sluice program uses.
//! - [`Client::call_text`]: a text command with string arguments, exactly
//!   what `ovs-appctl -t SOCK <command> <args…>` sends; returns the reply
//!   text. For commands a newer or older `sluiced` has that this crate does
//!   not know, and for tests of the text interface.
//!
//! The server is trusted (it runs as root and the socket is root-only), but
//! every malformed or mismatched reply is still reported as a
//! [`ClientError`] rather than a panic.
//!
//! A [`Client`] can be kept open (the agent does): `sluiced` closes
//! connections that stay idle for minutes, so a call on a long-idle client
//! may fail with [`ClientError::Closed`] or [`ClientError::Io`]. After such a
//! failure (or a timeout) the client reconnects before its next call; it
//! never re-sends a request by itself, because it cannot know whether the
//! server ran it.
//!
//! Thread-safety: a [`Client`] is one connection used by one thread at a
//! time (`&mut self`); open one per thread.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use sluice_jsonrpc::framing::{Framer, Limits};
use sluice_jsonrpc::message::Message;

use crate::{ApiError, Method};

/// The largest reply accepted: a full flow dump of a large program is tens
/// of MiB; this only stops a runaway peer.
pub const MAX_REPLY_BYTES: usize = 256 << 20;

/// Where `sluiced` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = crate::paths::SLUICED_CTL;

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {} ({})", path.display(), io_error_text(source), connect_hint(source))]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `sluiced` processed the request and answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// No reply arrived in time.
    #[error("no reply from {} within {} s; sluiced may be overloaded or stuck (raise --timeout to wait longer)", path.display(), timeout.as_secs_f64())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The connection broke.
    #[error("lost the connection to {}: {}", path.display(), io_error_text(source))]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The server closed the connection without replying.
    #[error("{} closed the connection before replying; see the sluiced log", path.display())]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// The reply does not follow the protocol.
    #[error("{} sent an invalid reply: {detail}", path.display())]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },
}

impl ClientError {
    /// The `sluicectl` exit status for this error: 1 when the server
    /// answered with an error, 2 when it could not be asked.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Api(_) => 1,
            _ => 2,
        }
    }
}

/// An `io::Error` as a sentence fragment for users, without Rust's
/// "(os error N)" suffix: "No such file or directory".
pub fn io_error_text(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

fn connect_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied => "the control socket is root-only; run as root",
        _ => "is sluiced running?",
    }
}

/// One connection to the control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    writer: UnixStream,
    reader: UnixStream,
    framer: Framer,
    timeout: Option<Duration>,
    next_id: u64,
    broken: bool,
}

impl Client {
    /// Connects to the control socket at `path`. Calls wait for their reply
    /// without limit until [`Client::set_timeout`] sets one.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if nothing listens there.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let connect_err = |source| ClientError::Connect {
            path: path.clone(),
            source,
        };
        let writer = UnixStream::connect(&path).map_err(connect_err)?;
        let reader = writer.try_clone().map_err(connect_err)?;
        Ok(Self {
            path,
            writer,
            reader,
            framer: Framer::with_limits(Limits::new(MAX_REPLY_BYTES)),
            timeout: None,
            next_id: 0,
            broken: false,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Limits how long each call waits for its reply (`None`: forever).
    ///
    /// # Errors
    /// [`ClientError::Io`] if the socket rejects the setting (a zero
    /// duration is treated as `None`).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        let timeout = timeout.filter(|t| !t.is_zero());
        self.writer
            .set_read_timeout(timeout)
            .and_then(|()| self.writer.set_write_timeout(timeout))
            .map_err(|source| self.io_error(source))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Calls method `M` with `request` and returns its typed reply.
    ///
    /// # Errors
    /// [`ClientError::Api`] with the server's code and sentence if it
    /// refused or failed the request; [`ClientError::Protocol`] if the reply
    /// is not an `M::Reply`; other variants if the server could not be
    /// asked.
    pub fn call<M: Method>(&mut self, request: &M::Request) -> Result<M::Reply, ClientError> {
        let id = self.next_id;
        let frame = encode_request(id, M::NAME, request)
            .map_err(|e| self.protocol(format!("cannot encode the {} request: {e}", M::NAME)))?;
        let result = self.transact_frame(id, frame)?;
        M::Reply::deserialize(&result).map_err(|e| {
            self.protocol(format!(
                "the reply to {} is not what this client expects ({e}); are sluicectl and sluiced the same version?",
                M::NAME
            ))
        })
    }

    /// Calls method `M` with a request already serialized as JSON text
    /// (`params`, e.g. the parts [`encode_params`] wrote): the text goes
    /// into the request frame as it is, so a large request is encoded only
    /// once. The text must be one JSON object or array.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_encoded<M: Method>(&mut self, params: &[u8]) -> Result<M::Reply, ClientError> {
        let id = self.next_id;
        let frame = request_frame(id, M::NAME, params);
        let result = self.transact_frame(id, frame)?;
        M::Reply::deserialize(&result).map_err(|e| {
            self.protocol(format!(
                "the reply to {} is not what this client expects ({e}); are sluicectl and sluiced the same version?",
                M::NAME
            ))
        })
    }

    /// Calls `method` with raw JSON `params` and returns the raw JSON
    /// result: the escape hatch for methods this crate does not define
    /// (`sluicectl call-method`). Programs use [`Client::call`].
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_raw(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.transact(method, params)
    }

    /// Runs text command `command` with string arguments and returns its
    /// reply text (a non-text result is returned as pretty-printed JSON).
    ///
    /// # Errors
    /// [`ClientError::Api`] with the server's text if the command failed;
    /// other variants if the server could not be asked.
    pub fn call_text<S: AsRef<str>>(
        &mut self,
        command: &str,
        args: &[S],
    ) -> Result<String, ClientError> {
        let params: Vec<Value> = args.iter().map(|a| json!(a.as_ref())).collect();
        match self.transact(command, Value::Array(params))? {
            Value::String(text) => Ok(text),
            other => Ok(format!("{other:#}\n")),
        }
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout.unwrap_or_default(),
            },
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// Replaces the connection with a new one to the same socket, keeping the
    /// timeout. Calls do this by themselves after a failure that left the
    /// connection unusable, so callers normally never need it.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if the socket cannot be reached.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        let mut fresh = Self::connect(&self.path)?;
        fresh.set_timeout(self.timeout)?;
        fresh.next_id = self.next_id;
        *self = fresh;
        Ok(())
    }

    fn transact(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        let request = Message::Request {
            method: method.to_owned(),
            params,
            id: json!(id),
        };
        self.transact_frame(id, request.to_bytes())
    }

    /// Sends `frame` (a whole request whose id is `id`, the next one) and
    /// reads its reply.
    fn transact_frame(&mut self, id: u64, frame: Vec<u8>) -> Result<Value, ClientError> {
        if self.broken {
            self.reconnect()?;
        }
        let outcome = self.exchange(id, &frame);
        // After anything but a clean reply the stream may hold a partial or
        // late reply, or be closed: never reuse it.
        if let Err(e) = &outcome {
            if !matches!(e, ClientError::Api(_)) {
                self.broken = true;
            }
        }
        outcome
    }

    fn exchange(&mut self, id: u64, frame: &[u8]) -> Result<Value, ClientError> {
        self.next_id = id + 1;
        self.writer
            .write_all(frame)
            .map_err(|source| self.io_error(source))?;

        let reply = match self.framer.read_value(&mut self.reader) {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(ClientError::Closed {
                    path: self.path.clone(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(self.protocol(format!("malformed reply ({e})")))
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ClientError::Closed {
                    path: self.path.clone(),
                })
            }
            Err(e) => return Err(self.io_error(e)),
        };
        let (reply_id, outcome) = match Message::from_json(reply) {
            Ok(Message::Reply { result, id }) => (id, Ok(result)),
            Ok(Message::Error { error, id }) => (id, Err(error)),
            Ok(other) => {
                return Err(self.protocol(format!("expected a reply, got {}", other.to_json())))
            }
            Err(e) => return Err(self.protocol(e.to_string())),
        };
        // A null id is the server refusing the connection before it could
        // read a request (permission, connection limit, framing).
        let refusal = reply_id.is_null() && outcome.is_err();
        if reply_id != json!(id) && !refusal {
            return Err(self.protocol(format!("expected reply id {id}, got {reply_id}")));
        }
        let error = match outcome {
            Ok(result) => return Ok(result),
            Err(error) => error,
        };
        match error {
            Value::String(message) => Err(ClientError::Api(ApiError::from_wire(&message))),
            other => match ApiError::deserialize(&other) {
                Ok(e) => Err(ClientError::Api(e)),
                Err(_) => Err(ClientError::Api(ApiError::failed(other.to_string()))),
            },
        }
    }
}

/// `request` as the `params` of a request: its compact JSON, written
/// straight from the typed value (no [`Value`] tree), with a request that
/// has no fields (JSON `null`) written as `{}`, the structured form.
///
/// # Errors
/// The request cannot be serialized as JSON (a map with non-string keys).
pub fn encode_params<T: serde::Serialize>(request: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    serde_json::to_writer(&mut out, request)?;
    if out == b"null" {
        out = b"{}".to_vec();
    }
    Ok(out)
}

/// The request frame `{"id":ID,"method":METHOD,"params":PARAMS}` around
/// `params`, already JSON text.
pub fn request_frame(id: u64, method: &str, params: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(params.len() + method.len() + 40);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"method\":");
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, method);
    out.extend_from_slice(b",\"params\":");
    out.extend_from_slice(params);
    out.push(b'}');
    out
}

/// The whole request frame of `request` for `method`, serialized once
/// straight into the frame buffer: the same JSON (as a value) as
/// `Message::Request` of `serde_json::to_value(request)`, which the
/// structured dispatch of `sluiced` reads (checked by a proptest).
///
/// # Errors
/// As [`encode_params`].
pub fn encode_request<T: serde::Serialize>(
    id: u64,
    method: &str,
    request: &T,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b",\"method\":");
    serde_json::to_writer(&mut out, method)?;
    out.extend_from_slice(b",\"params\":");
    let at = out.len();
    serde_json::to_writer(&mut out, request)?;
    if &out[at..] == b"null" {
        out.truncate(at);
        out.extend_from_slice(b"{}");
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A one-connection fake server: reads one request, then writes `reply`
    /// (with `{id}` replaced by the request id) unless it is `None`, in which
    /// case it closes the connection. Returns the request it read.
    fn fake_server(
        dir: &Path,
        reply: Option<&'static str>,
        hold_open: bool,
    ) -> (PathBuf, thread::JoinHandle<Value>) {
        let path = dir.join("fake.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut de = serde_json::Deserializer::from_reader(stream.try_clone().unwrap());
            let request = Value::deserialize(&mut de).unwrap();
            if let Some(reply) = reply {
                let reply = reply.replace("{id}", &request["id"].to_string());
                stream.write_all(reply.as_bytes()).unwrap();
            }
            if hold_open {
                // Wait for the client to hang up.
                let mut buf = [0u8; 16];
                let _ = stream.read(&mut buf);
            }
            request
        });
        (path, handle)
    }

    #[test]
    fn call_sends_the_unixctl_request_and_returns_text() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_server(
            dir.path(),
            Some(r#"{"id":{id},"result":"ok\n","error":null}"#),
            false,
        );
        let mut client = Client::connect(&path).unwrap();
        assert_eq!(
            client
                .call_text("add-flow", &["priority=1,actions=drop"])
                .unwrap(),
            "ok\n"
        );
        assert_eq!(
            server.join().unwrap(),
            json!({"id": 0, "method": "add-flow", "params": ["priority=1,actions=drop"]})
        );
    }

    #[test]
    fn typed_call_sends_the_request_object_and_reads_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_server(
            dir.path(),
            Some(r#"{"id":{id},"result":{"flows":[]},"error":null}"#),
            false,
        );
        let mut client = Client::connect(&path).unwrap();
        let reply = client
            .call::<crate::flows::DumpFlows>(&crate::flows::DumpFlowsRequest {
                filter: "table=0".into(),
            })
            .unwrap();
        assert!(reply.flows.is_empty());
        let req = server.join().unwrap();
        assert_eq!(req["method"], "dump-flows");
        assert_eq!(req["params"], json!({"filter": "table=0"}));
    }

    #[test]
    fn typed_call_keeps_the_error_code_and_refuses_a_foreign_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _server) = fake_server(
            dir.path(),
            Some(
                r#"{"id":{id},"result":null,"error":"{\"code\":\"not-found\",\"message\":\"no port named 'x'\"}"}"#,
            ),
            false,
        );
        let mut client = Client::connect(&path).unwrap();
        let err = client
            .call::<crate::ports::DumpPorts>(&crate::ports::DumpPortsRequest {
                port: Some("x".into()),
            })
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Api(e) if e.code == crate::ErrorCode::NotFound),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 1);
        let dir2 = tempfile::tempdir().unwrap();
        let (path, _server) = fake_server(
            dir2.path(),
            Some(r#"{"id":{id},"result":{"flows":"not a list"},"error":null}"#),
            false,
        );
        let mut client = Client::connect(&path).unwrap();
        let err = client
            .call::<crate::flows::DumpFlows>(&Default::default())
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Protocol { detail, .. } if detail.contains("dump-flows")),
            "{err:?}"
        );
    }

    #[test]
    fn server_error_is_returned_verbatim_with_exit_code_1() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _server) = fake_server(
            dir.path(),
            Some(r#"{"id":{id},"result":null,"error":"bad flow\n"}"#),
            false,
        );
        let err = Client::connect(&path)
            .unwrap()
            .call_text::<&str>("add-flow", &[])
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Api(e) if e.message == "bad flow" && e.code == crate::ErrorCode::Failed)
        );
        assert_eq!(err.to_string(), "bad flow");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn refusal_with_null_id_is_a_server_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _server) = fake_server(
            dir.path(),
            Some(r#"{"id":null,"result":null,"error":"permission denied: uid 1000\n"}"#),
            false,
        );
        let err = Client::connect(&path)
            .unwrap()
            .call_text::<&str>("version", &[])
            .unwrap_err();
        assert_eq!(err.to_string(), "permission denied: uid 1000");
    }

    #[test]
    fn mismatched_id_and_garbage_are_protocol_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _server) = fake_server(
            dir.path(),
            Some(r#"{"id":77,"result":"x","error":null}"#),
            false,
        );
        let err = Client::connect(&path)
            .unwrap()
            .call_text::<&str>("version", &[])
            .unwrap_err();
        assert!(
            err.to_string().contains("expected reply id 0, got 77"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 2);

        let dir = tempfile::tempdir().unwrap();
        let (path, _server) = fake_server(dir.path(), Some("[1,2]"), false);
        let err = Client::connect(&path)
            .unwrap()
            .call_text::<&str>("version", &[])
            .unwrap_err();
        assert!(err.to_string().contains("not a JSON-RPC message"), "{err}");
    }

    #[test]
    fn closed_without_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _server) = fake_server(dir.path(), None, false);
        let err = Client::connect(&path)
            .unwrap()
            .call_text::<&str>("version", &[])
            .unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("closed the connection before replying"));
    }

    #[test]
    fn timeout_is_reported_not_hung() {
        let dir = tempfile::tempdir().unwrap();
        let (path, server) = fake_server(dir.path(), Some(""), true);
        let mut client = Client::connect(&path).unwrap();
        client
            .set_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let err = client.call_text::<&str>("version", &[]).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(err.to_string().starts_with("no reply from"), "{err}");
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn a_failed_connection_is_replaced_before_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            // First connection: read the request, hang up without replying.
            let (first, _) = listener.accept().unwrap();
            let mut de = serde_json::Deserializer::from_reader(first.try_clone().unwrap());
            let first_request = Value::deserialize(&mut de).unwrap();
            // Both handles must go for the client to see end-of-file.
            drop(de);
            drop(first);
            // Second connection: answer properly.
            let (mut second, _) = listener.accept().unwrap();
            let mut de = serde_json::Deserializer::from_reader(second.try_clone().unwrap());
            let request = Value::deserialize(&mut de).unwrap();
            let reply = json!({"id": request["id"], "result": "again\n", "error": null});
            second.write_all(reply.to_string().as_bytes()).unwrap();
            (first_request, request)
        });
        let mut client = Client::connect(&path).unwrap();
        client.set_timeout(Some(Duration::from_secs(60))).unwrap();
        let err = client.call_text("version", &["x"]).unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");
        assert_eq!(client.call_text("version", &["y"]).unwrap(), "again\n");
        let (first, second) = server.join().unwrap();
        assert_eq!(first["params"], json!(["x"]));
        // Only the new request went over the new connection, with a fresh id.
        assert_eq!(second["params"], json!(["y"]));
        assert_eq!(second["id"], json!(1));
    }

    #[test]
    fn connect_error_names_the_path_and_the_likely_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.ctl");
        let err = Client::connect(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to {}: No such file or directory (is sluiced running?)",
                path.display()
            )
        );
        assert_eq!(err.exit_code(), 2);
    }
}
