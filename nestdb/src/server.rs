//! The server: listeners, client sessions, method dispatch, locks and the event loop.
//!
//! One thread runs [`Server::run`], a `poll(2)` loop over nonblocking sockets.  Each
//! loop iteration (1) accepts connections, (2) reads and dispatches complete JSON-RPC
//! messages from every readable session, (3) fsyncs the log of every database that
//! committed something, and only then (4) writes queued replies and notifications.  So
//! a client never sees a transaction acknowledged, nor a monitor update, before it is
//! durable, and transactions arriving together share one fsync (group commit).
//! Output is buffered per session up to a backlog limit; a client that stops reading
//! is disconnected rather than blocking the server.  What all sessions hold together
//! (output backlogs and unparsed input) is bounded by `max_memory`: past it the session
//! holding the most is disconnected.  A peer that sends malformed or oversize input, or
//! a message whose estimated decoded cost passes `max_message_memory` (which bounds
//! how long one message can hold up this single loop), gets an error and is
//! disconnected without affecting other sessions.  Unix peers are identified with
//! `SO_PEERCRED` on accept: only root and the server's own uid may write; other peers
//! may only read (see `Server::refusal`).  A `transact` from a peer that may write is
//! decoded without a `serde_json::Value` tree of its operations: each operation stays
//! JSON text until it runs, and an insert's row goes straight into typed values
//! ([`crate::transaction::OpText`]); a transaction changing 1,000 rows or more has its
//! phase times (decode, execute, stage, monitor updates, fsync) logged at `info`.
//! The control socket ([`crate::unixctl`]) runs its connections on its own threads and
//! posts commands to this loop, which polls its wake-up descriptor and runs them here.

use crate::jsonrpc::{parse_message, FrameError, Framer, Message};
use crate::monitor::{merge_changes, Monitor, Version};
use crate::outqueue::OutQueue;
use crate::storage::{now_ms, Storage, StorageError};
use crate::table::Changes;
use crate::transaction::{execute, reply_bytes, ExecContext, OpResult, OpText, Outcome};
use crate::unixctl::{Control, ControlSocket};
use ovsdb_core::{OvsdbError, Schema, Uuid};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sluice_jsonrpc::{decoded_size_estimate, unixctl};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default client socket.
pub const DEFAULT_REMOTE: &str = "punix:/var/run/nestdb/nestdb-server.sock";

/// Set by the SIGTERM/SIGINT handler; checked by the event loop.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A `--remote` string is not understood.
    #[error("remote \"{0}\" is not supported; use punix:PATH or ptcp:PORT[:IP]")]
    BadRemote(String),
    /// Binding a listener failed.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// Address.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Opening a database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Two database files hold databases with the same name.
    #[error("database {0} is served twice; each database file must have a distinct schema name")]
    DuplicateDb(String),
    /// The control socket could not be started.
    #[error(transparent)]
    Control(#[from] sluice_jsonrpc::unixctl::CtlError),
    /// Durable write failed: the server cannot keep its promise and stops.
    #[error("cannot write the database log, stopping so no change is acknowledged without being durable: {0}")]
    Io(String),
    /// poll() failed.
    #[error("poll failed: {0}")]
    Poll(std::io::Error),
    /// The metrics endpoint could not start.
    #[error("--metrics-address: {0}")]
    Metrics(#[from] sluice_metrics::ServerError),
}

/// A listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A Unix socket path.
    Punix(PathBuf),
    /// A TCP port and bind address.
    Ptcp(SocketAddr),
}

impl Remote {
    /// Parses `punix:PATH` or `ptcp:PORT[:IP]`.
    pub fn parse(s: &str) -> Result<Self, ServerError> {
        if let Some(p) = s.strip_prefix("punix:") {
            if p.is_empty() {
                return Err(ServerError::BadRemote(s.into()));
            }
            return Ok(Remote::Punix(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("ptcp:") {
            let (port, ip) = match rest.split_once(':') {
                Some((p, ip)) => (p, ip.trim_matches(['[', ']'])),
                None => (rest, "0.0.0.0"),
            };
            let port: u16 = port.parse().map_err(|_| ServerError::BadRemote(s.into()))?;
            let ip: IpAddr = ip.parse().map_err(|_| ServerError::BadRemote(s.into()))?;
            return Ok(Remote::Ptcp(SocketAddr::new(ip, port)));
        }
        Err(ServerError::BadRemote(s.into()))
    }
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database files.
    pub databases: Vec<PathBuf>,
    /// Schema used to create missing database files.
    pub schema: Option<PathBuf>,
    /// Client listeners.
    pub remotes: Vec<Remote>,
    /// Control socket path.
    pub unixctl: Option<PathBuf>,
    /// Largest accepted JSON-RPC message, bytes.
    pub max_message_size: usize,
    /// Largest per-client output backlog before disconnecting it, bytes.
    pub max_backlog: usize,
    /// Most bytes all sessions together may hold in output backlogs and
    /// unparsed input; past it the session holding the most is disconnected.
    pub max_memory: usize,
    /// Largest estimated size of one decoded message
    /// ([`sluice_jsonrpc::decoded_size_estimate`]), bytes; a larger message
    /// is a protocol error. This, not the byte size, bounds how long one
    /// message can hold up the event loop: decoding time follows the number
    /// of JSON values, which the estimate counts.
    pub max_message_memory: usize,
    /// Log size that triggers automatic compaction, bytes.
    pub compact_threshold: u64,
    /// Idle time after which a TCP client is probed with `echo` (None: never).
    pub inactivity_probe: Option<Duration>,
    /// Where Prometheus metrics are served (None: nowhere).
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            databases: Vec::new(),
            schema: None,
            remotes: Vec::new(),
            unixctl: None,
            max_message_size: 32 << 20,
            max_backlog: 64 << 20,
            max_memory: 512 << 20,
            max_message_memory: 128 << 20,
            compact_threshold: 10 << 20,
            inactivity_probe: Some(Duration::from_secs(5)),
            metrics_address: None,
        }
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn fd(&self) -> RawFd {
        match self {
            Conn::Unix(s) => s.as_raw_fd(),
            Conn::Tcp(s) => s.as_raw_fd(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write_vectored(bufs),
            Conn::Tcp(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l, _) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }
    fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listener::Unix(l, _) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                Ok(Conn::Unix(s))
            }
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(true)?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
        }
    }
}

struct Session {
    conn: Conn,
    parser: Framer,
    out: OutQueue,
    monitors: Vec<Monitor>,
    closing: bool,
    last_input: Instant,
    probe_sent: bool,
    probes: bool,
    /// The peer may change databases and take locks: a Unix peer whose
    /// `SO_PEERCRED` uid is root or the server's own, or any TCP peer.
    privileged: bool,
    /// The peer's uid, for messages (Unix peers).
    peer_uid: Option<u32>,
}

impl Session {
    fn send(&mut self, m: &Message) {
        self.out.push(m.to_bytes());
    }
    fn backlog(&self) -> usize {
        self.out.len()
    }
    /// Bytes this session makes the server hold: output not yet written and
    /// input not yet parsed.
    fn held(&self) -> usize {
        self.backlog() + self.parser.buffered()
    }
}

/// Transaction operations that only read, which peers without write
/// permission may run.
const READ_ONLY_OPS: &[&str] = &["select", "wait", "comment", "assert", "abort"];

struct Db {
    name: String,
    storage: Storage,
    dirty: bool,
    /// When each transaction staged since the last sync arrived.
    staged: Vec<Instant>,
    /// The phase times of the large transactions staged since the last
    /// sync (logged once their fsync is done).
    large: Vec<TxnTimes>,
}

/// A transaction changing at least this many rows has its phase times
/// logged at `info` (smaller ones at `debug`).
const LARGE_TXN_ROWS: usize = 1000;

/// The phase times of one committed transaction, for the log line that
/// shows where a large transaction's time went.
#[derive(Debug, Clone, Default)]
struct TxnTimes {
    rows: usize,
    request_bytes: usize,
    parse: Duration,
    execute: Duration,
    stage: Duration,
    monitors: Duration,
    monitor_bytes: usize,
}

struct PendingTxn {
    session: u64,
    id: Value,
    db: usize,
    ops: Vec<OpText>,
    deadline: Option<Instant>,
}

/// Counters shown by the `stats` control command.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that failed.
    pub failed_txns: u64,
    /// fsync batches.
    pub syncs: u64,
    /// Sessions accepted.
    pub sessions_accepted: u64,
    /// Sessions dropped for protocol errors.
    pub protocol_errors: u64,
    /// Sessions dropped for exceeding the backlog.
    pub backlog_drops: u64,
    /// Sessions dropped because all sessions together held more than
    /// `max_memory`.
    pub memory_drops: u64,
    /// Requests refused because the peer may not write.
    pub permission_denied: u64,
}

/// The nestdb server.
pub struct Server {
    config: Config,
    dbs: Vec<Db>,
    listeners: Vec<Listener>,
    control: Option<ControlSocket>,
    sessions: BTreeMap<u64, Session>,
    next_session: u64,
    locks: HashMap<String, VecDeque<u64>>,
    pending: Vec<PendingTxn>,
    retry_pending: bool,
    server_id: Uuid,
    exit_requested: bool,
    stats: Stats,
    accept_paused_until: Option<Instant>,
    /// What the metrics endpoint shows (None: no endpoint).
    metrics: Option<(Arc<crate::metrics::Metrics>, sluice_metrics::MetricsServer)>,
    /// The decode time and size of the request being handled.
    last_parse: (Duration, usize),
}

/// The phase times of a committed transaction: at `info` when it changed
/// at least [`LARGE_TXN_ROWS`] rows, else at `debug`. `fsync` is that of
/// the batch the transaction was made durable in.
fn log_txn_times(db: &str, t: &TxnTimes, fsync: Duration) {
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    macro_rules! line {
        ($lvl:ident) => {
            tracing::$lvl!(
                db,
                rows = t.rows,
                request_bytes = t.request_bytes,
                parse_ms = ms(t.parse),
                execute_ms = ms(t.execute),
                stage_ms = ms(t.stage),
                monitors_ms = ms(t.monitors),
                monitor_bytes = t.monitor_bytes,
                fsync_ms = ms(fsync),
                "transaction committed"
            )
        };
    }
    if t.rows >= LARGE_TXN_ROWS {
        line!(info);
    } else {
        line!(debug);
    }
}

/// `f`'s value and how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

/// The text of a monitor notification, `{"id":null,"method":…,"params":[id,
/// (txn,) updates]}` (what `Message::Notification` encodes to), around the
/// already written `updates`.
#[cfg(test)]
fn notification_bytes(method: &str, id: &Value, txn: Option<&str>, updates: &[u8]) -> Vec<u8> {
    let mut out = notification_head(method, id, txn, updates.len());
    out.extend_from_slice(updates);
    out.extend_from_slice(b"]}");
    out
}

/// The start of [`notification_bytes`], up to where the updates go, in a
/// buffer with room for `room` more bytes.
fn notification_head(method: &str, id: &Value, txn: Option<&str>, room: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(room + 128);
    out.extend_from_slice(br#"{"id":null,"method":"#);
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, method);
    out.extend_from_slice(br#","params":["#);
    let _ = serde_json::to_writer(&mut out, id);
    if let Some(t) = txn {
        out.push(b',');
        let _ = serde_json::to_writer(&mut out, t);
    }
    out.push(b',');
    out
}

/// A `transact` request's operations as JSON text.
type RawOps = Vec<Box<RawValue>>;

/// A `transact` request from `frame` with its operations left as JSON
/// text (checked for syntax, decoded one at a time when they run): no
/// `Value` tree of a large transaction is built. `None` for any other
/// message, or one this does not take apart (an escaped method name, a
/// repeated member, a notification), which is decoded whole as before.
fn decode_transact(frame: &[u8]) -> Option<(Message, RawOps)> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        method: Option<&'a RawValue>,
        // Split into its elements in the same pass (a `params` that is
        // not an array fails the whole envelope, and the message is
        // decoded whole, as before).
        #[serde(borrow)]
        params: Option<Vec<&'a RawValue>>,
        id: Option<Value>,
    }
    // An array would fill the struct by position: only an object is a message.
    if frame.first() != Some(&b'{') {
        return None;
    }
    let env: Envelope<'_> = serde_json::from_slice(frame).ok()?;
    if env.method?.get() != "\"transact\"" {
        return None;
    }
    let id = env.id.filter(|v| !v.is_null())?;
    let mut params = env.params?.into_iter();
    let db: Value = serde_json::from_str(params.next()?.get()).ok()?;
    let ops = params.map(|r| r.to_owned()).collect();
    Some((
        Message::Request {
            method: "transact".into(),
            params: Value::Array(vec![db]),
            id,
        },
        ops,
    ))
}

/// Decodes one delimited message after checking that its estimated decoded
/// size is within `max_decoded` bytes (a `transact`'s operations as text
/// when `raw_transact`, see [`decode_transact`]).
fn decode_frame(
    frame: &[u8],
    max_decoded: usize,
    raw_transact: bool,
) -> Result<(Message, Option<RawOps>), String> {
    let estimate = decoded_size_estimate(frame);
    if estimate > max_decoded {
        return Err(format!(
            "a {}-byte message would take about {} MiB of memory and time to decode, more than the {} MiB limit (--max-message-memory); send smaller transactions",
            frame.len(),
            estimate >> 20,
            max_decoded >> 20
        ));
    }
    if raw_transact {
        if let Some((m, ops)) = decode_transact(frame) {
            return Ok((m, Some(ops)));
        }
    }
    let value = serde_json::from_slice(frame)
        .map_err(|e| FrameError::InvalidJson(e.to_string()).to_string())?;
    parse_message(value).map(|m| (m, None))
}

/// Whether a new connection's peer may write, and its uid: Unix peers are
/// checked with `SO_PEERCRED` (root and the server's own uid may write);
/// TCP peers carry no credentials and get full access, as with
/// ovsdb-server, so a TCP remote must only be reachable by trusted peers.
fn peer_rights(conn: &Conn) -> (bool, Option<u32>) {
    match conn {
        Conn::Tcp(_) => (true, None),
        Conn::Unix(stream) => match unixctl::peer_cred(stream) {
            Ok(cred) => (
                cred.uid == 0 || cred.uid == unixctl::effective_uid(),
                Some(cred.uid),
            ),
            Err(e) => {
                tracing::warn!("cannot read a client's credentials ({e}); it may only read");
                (false, None)
            }
        },
    }
}

fn bind_unix(path: &Path) -> Result<Listener, ServerError> {
    let err = |source| ServerError::Listen {
        what: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    if path.exists() {
        // A socket left behind by a previous run: refuse if something still answers.
        if UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                ErrorKind::AddrInUse,
                "another server is listening on this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(Listener::Unix(l, path.to_owned()))
}

impl Server {
    /// Opens the databases and binds every listener.
    pub fn new(config: Config) -> Result<Self, ServerError> {
        let mut dbs = vec![Db {
            name: "_Server".into(),
            storage: Storage::in_memory(Schema::server_schema()),
            dirty: false,
            staged: Vec::new(),
            large: Vec::new(),
        }];
        for path in &config.databases {
            let storage = Storage::open(path, config.schema.as_deref(), config.compact_threshold)?;
            let name = storage.db.schema.name.clone();
            if dbs.iter().any(|d| d.name == name) {
                return Err(ServerError::DuplicateDb(name));
            }
            dbs.push(Db {
                name,
                storage,
                dirty: false,
                staged: Vec::new(),
                large: Vec::new(),
            });
        }
        let mut listeners = Vec::new();
        for r in &config.remotes {
            listeners.push(match r {
                Remote::Punix(p) => bind_unix(p)?,
                Remote::Ptcp(a) => {
                    let l = TcpListener::bind(a).map_err(|source| ServerError::Listen {
                        what: a.to_string(),
                        source,
                    })?;
                    l.set_nonblocking(true)
                        .map_err(|source| ServerError::Listen {
                            what: a.to_string(),
                            source,
                        })?;
                    Listener::Tcp(l)
                }
            });
        }
        let control = match &config.unixctl {
            Some(p) => Some(ControlSocket::start(p, config.max_message_size)?),
            None => None,
        };
        let mut s = Self {
            config,
            dbs,
            listeners,
            control,
            sessions: BTreeMap::new(),
            next_session: 1,
            locks: HashMap::new(),
            pending: Vec::new(),
            retry_pending: false,
            server_id: Uuid::new_v4(),
            exit_requested: false,
            stats: Stats::default(),
            accept_paused_until: None,
            metrics: None,
            last_parse: (Duration::ZERO, 0),
        };
        if let Some(addr) = s.config.metrics_address {
            let m = Arc::new(crate::metrics::Metrics::default());
            let r = m.clone();
            let server = sluice_metrics::MetricsServer::start(addr, move || r.render())?;
            s.metrics = Some((m, server));
        }
        s.populate_server_db();
        Ok(s)
    }

    /// Bound TCP ports (useful with `ptcp:0`).
    pub fn tcp_ports(&self) -> Vec<u16> {
        self.listeners
            .iter()
            .filter_map(|l| match l {
                Listener::Tcp(t) => t.local_addr().ok().map(|a| a.port()),
                _ => None,
            })
            .collect()
    }

    fn populate_server_db(&mut self) {
        let mut ops = Vec::new();
        for d in &self.dbs {
            ops.push(json!({"op": "insert", "table": "Database", "row": {
                "name": d.name, "model": "standalone", "connected": true, "leader": true,
                "schema": d.storage.db.schema.json.to_string()}}));
        }
        let ctx = ExecContext {
            owns_lock: &|_| false,
            wait_expired: false,
            read_only: None,
        };
        if let Outcome::Done {
            changes: Some(c), ..
        } = execute(&self.dbs[0].storage.db, &ops, &ctx)
        {
            self.dbs[0].storage.stage(c, now_ms());
        }
    }

    /// Runs until `exit` is requested or SIGTERM/SIGINT arrives.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.exit_requested && !STOP.load(Ordering::Relaxed) {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let accepting = self.accept_paused_until.is_none_or(|t| t <= Instant::now());
            if accepting {
                self.accept_paused_until = None;
            }
            for l in &self.listeners {
                fds.push(libc::pollfd {
                    // A negative fd makes poll() ignore the entry while accepting is paused.
                    fd: if accepting { l.fd() } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if let Some(c) = &self.control {
                fds.push(libc::pollfd {
                    fd: c.wake_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let nl = fds.len();
            let ids: Vec<u64> = self.sessions.keys().copied().collect();
            for id in &ids {
                let s = &self.sessions[id];
                let mut ev = libc::POLLIN;
                if s.backlog() > 0 {
                    ev |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: s.conn.fd(),
                    events: ev,
                    revents: 0,
                });
            }
            let timeout = self.poll_timeout_ms();
            // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd structs
            // that stays alive and unaliased for the duration of the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            for (i, fd) in fds.iter().enumerate().take(self.listeners.len()) {
                if fd.revents & libc::POLLIN != 0 {
                    self.accept_all(i);
                }
            }
            if nl > self.listeners.len() && fds[nl - 1].revents != 0 {
                self.run_control_commands();
            }
            for (k, id) in ids.iter().enumerate() {
                let re = fds[nl + k].revents;
                if re & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_session(*id, &mut buf);
                }
            }
            self.run_pending();
            self.check_probes();
            self.sync()?;
            self.flush_all();
            self.bound_memory();
            self.maybe_compact();
            self.reap();
        }
        for s in self.sessions.values_mut() {
            s.closing = true;
        }
        self.sync()?;
        self.flush_all();
        Ok(())
    }

    fn poll_timeout_ms(&self) -> i32 {
        let now = Instant::now();
        let mut t = Duration::from_millis(1000);
        for p in &self.pending {
            if let Some(d) = p.deadline {
                t = t.min(d.saturating_duration_since(now));
            }
        }
        if let Some(t0) = self.accept_paused_until {
            t = t.min(t0.saturating_duration_since(now));
        }
        if let Some(interval) = self.config.inactivity_probe {
            for s in self.sessions.values().filter(|s| s.probes) {
                let wait = if s.probe_sent {
                    interval.saturating_mul(2)
                } else {
                    interval
                };
                if let Some(due) = s.last_input.checked_add(wait) {
                    t = t.min(due.saturating_duration_since(now));
                }
            }
        }
        // Round up so a deadline is never polled for as 0 ms repeatedly before it passes.
        (t.as_micros().div_ceil(1000)) as i32
    }

    fn accept_all(&mut self, li: usize) {
        for _ in 0..64 {
            match self.listeners[li].accept() {
                Ok(conn) => {
                    let probes =
                        matches!(conn, Conn::Tcp(_)) && self.config.inactivity_probe.is_some();
                    let (privileged, peer_uid) = peer_rights(&conn);
                    let id = self.next_session;
                    self.next_session += 1;
                    self.stats.sessions_accepted += 1;
                    self.sessions.insert(
                        id,
                        Session {
                            conn,
                            parser: Framer::new(self.config.max_message_size),
                            out: OutQueue::default(),
                            monitors: Vec::new(),
                            closing: false,
                            last_input: Instant::now(),
                            probe_sent: false,
                            probes,
                            privileged,
                            peer_uid,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Typically EMFILE: out of descriptors.  Stop accepting briefly
                    // instead of spinning on a listener that stays readable; existing
                    // sessions keep being served.
                    tracing::warn!("accept failed: {e}; pausing new connections for 100 ms");
                    self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            }
        }
    }

    fn read_session(&mut self, id: u64, buf: &mut [u8]) {
        let mut msgs = Vec::new();
        {
            let Some(s) = self.sessions.get_mut(&id) else {
                return;
            };
            // Bounded work per session per iteration keeps one busy peer from starving others.
            for _ in 0..16 {
                match s.conn.read(buf) {
                    Ok(0) => {
                        s.closing = true;
                        break;
                    }
                    Ok(n) => {
                        s.last_input = Instant::now();
                        s.probe_sent = false;
                        s.parser.push(&buf[..n]);
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        s.closing = true;
                        break;
                    }
                }
            }
            let max_decoded = self.config.max_message_memory;
            // Only a peer that may write gets its operations decoded one at a
            // time (the permission check reads every operation's name).
            let raw = s.privileged;
            loop {
                match s.parser.next_frame_ref() {
                    Ok(Some(frame)) => match timed(|| decode_frame(frame, max_decoded, raw)) {
                        (Ok(m), t) => msgs.push(Ok((m, t, frame.len()))),
                        (Err(e), _) => {
                            msgs.push(Err(e));
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        msgs.push(Err(e.to_string()));
                        break;
                    }
                }
            }
        }
        for m in msgs {
            let (m, parse, bytes) = match m {
                Ok(m) => m,
                Err(text) => {
                    self.protocol_error(id, &text);
                    return;
                }
            };
            self.last_parse = (parse, bytes);
            self.handle(id, m.0, m.1);
        }
    }

    /// Tells the peer what was wrong (as ovsdb-server does, in an error reply with a
    /// null id) and disconnects it.
    fn protocol_error(&mut self, id: u64, text: &str) {
        self.stats.protocol_errors += 1;
        tracing::info!("session {id}: {text}; disconnecting");
        if let Some(s) = self.sessions.get_mut(&id) {
            s.send(&Message::Error {
                error: json!({"error": "protocol error", "details": text}),
                id: Value::Null,
            });
            s.closing = true;
        }
    }

    fn send(&mut self, id: u64, m: Message) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.send(&m);
        }
    }

    fn reply(&mut self, sid: u64, id: Value, r: Result<Value, Value>) {
        let m = match r {
            Ok(result) => Message::Reply { result, id },
            Err(error) => Message::Error { error, id },
        };
        self.send(sid, m);
    }

    fn lookup_db(&self, params: &Value, i: usize) -> Result<usize, Value> {
        let name = params
            .get(i)
            .and_then(Value::as_str)
            .ok_or_else(|| json!({"error": "syntax error", "details": format!("parameter {i} must be a database name")}))?;
        self.dbs
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| json!("unknown database"))
    }

    /// Why session `sid` may not run `method` with `params`, if it may not:
    /// a peer without write permission may read (`list_dbs`, `get_schema`,
    /// monitors, `transact` with only read operations) but not change a
    /// database or take a lock.
    fn refusal(&self, sid: u64, method: &str, params: &Value) -> Option<Value> {
        let s = self.sessions.get(&sid)?;
        if s.privileged {
            return None;
        }
        let what = match method {
            "lock" | "steal" | "unlock" => format!("\"{method}\""),
            "transact" => {
                let writes = params.as_array().into_iter().flatten().skip(1).find(|op| {
                    !op.get("op")
                        .and_then(Value::as_str)
                        .is_some_and(|name| READ_ONLY_OPS.contains(&name))
                })?;
                match writes.get("op").and_then(Value::as_str) {
                    Some(op) => format!("a transaction with a \"{op}\" operation"),
                    None => "a transaction with an operation that is not a read".to_owned(),
                }
            }
            _ => return None,
        };
        let uid = s
            .peer_uid
            .map_or_else(|| "unknown".to_owned(), |u| u.to_string());
        Some(json!({
            "error": "permission error",
            "details": format!(
                "{what} needs write permission, which only root and the server's own user have; \
                 this connection (uid {uid}) may only read (select, wait, monitors); connect as root"
            ),
        }))
    }

    /// Handles one message; `raw_ops` are the operations of a `transact`
    /// request decoded by [`decode_transact`] (its `params` then holds only
    /// the database name).
    fn handle(&mut self, sid: u64, m: Message, raw_ops: Option<RawOps>) {
        if let Message::Request { method, params, id } = &m {
            if let Some(error) = self.refusal(sid, method, params) {
                self.stats.permission_denied += 1;
                tracing::info!(
                    "session {sid}: refused {method} from a peer without write permission"
                );
                self.reply(sid, id.clone(), Err(error));
                return;
            }
        }
        let (method, params, id) = match m {
            Message::Request { method, params, id } => (method, params, id),
            Message::Notification { method, params } => {
                // Client notifications need no reply, and none of them changes state
                // here (`set_db_change_aware` only matters for databases added or
                // removed at run time, which nestdb does not do).
                tracing::debug!("session {sid}: ignoring notification {method} {params}");
                return;
            }
            // Replies to our echo probes.
            Message::Reply { .. } | Message::Error { .. } => return,
        };
        let r: Result<Value, Value> = match method.as_str() {
            "echo" => Ok(params),
            "list_dbs" => Ok(json!(self
                .dbs
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>())),
            "get_schema" => self
                .lookup_db(&params, 0)
                .map(|i| self.dbs[i].storage.db.schema.json.clone()),
            "get_server_id" => Ok(json!(self.server_id.to_string())),
            "set_db_change_aware" => Ok(json!({})),
            "transact" => {
                match self.lookup_db(&params, 0) {
                    Ok(db) => {
                        // Moved, not copied: a large transaction's operations are
                        // tens of megabytes of JSON.
                        let ops: Vec<OpText> = match raw_ops {
                            Some(ops) => ops.into_iter().map(OpText::Raw).collect(),
                            None => match params {
                                Value::Array(mut a) if !a.is_empty() => {
                                    a.remove(0);
                                    a.into_iter().map(OpText::Parsed).collect()
                                }
                                _ => Vec::new(),
                            },
                        };
                        self.run_transaction(sid, id, db, ops, None);
                    }
                    Err(e) => self.reply(sid, id, Err(e)),
                }
                return;
            }
            "monitor" => self.monitor(sid, &params, Version::V1).map(|(_, _, u)| u),
            "monitor_cond" => self.monitor(sid, &params, Version::V2).map(|(_, _, u)| u),
            "monitor_cond_since" => self
                .monitor(sid, &params, Version::V3)
                .map(|(found, last, u)| json!([found, last.to_string(), u])),
            "monitor_cond_change" => {
                match self.monitor_cond_change(sid, &params) {
                    Ok(update) => {
                        self.reply(sid, id, Ok(json!({})));
                        if let Some(u) = update {
                            self.send(sid, u);
                        }
                    }
                    Err(e) => self.reply(sid, id, Err(e)),
                }
                return;
            }
            "monitor_cancel" => {
                let mid = params.get(0).cloned().unwrap_or(Value::Null);
                match self.sessions.get_mut(&sid) {
                    Some(s) => match s.monitors.iter().position(|m| m.id == mid) {
                        Some(i) => {
                            s.monitors.remove(i);
                            Ok(json!({}))
                        }
                        None => Err(json!("unknown monitor")),
                    },
                    None => return,
                }
            }
            "lock" | "steal" | "unlock" => self.lock_method(sid, &method, &params),
            _ => Err(
                json!({"error": "unknown method", "details": format!("The server does not implement method \"{method}\".")}),
            ),
        };
        self.reply(sid, id, r);
    }

    fn monitor(
        &mut self,
        sid: u64,
        params: &Value,
        version: Version,
    ) -> Result<(bool, Uuid, Value), Value> {
        let db = self.lookup_db(params, 0)?;
        let want = if version == Version::V3 { 4 } else { 3 };
        let arr = params
            .as_array()
            .filter(|a| a.len() == want || (version != Version::V3 && a.len() == 2));
        let Some(arr) = arr else {
            return Err(OvsdbError::syntax(format!(
                "monitor parameters must be an array of {want} elements"
            ))
            .to_json());
        };
        let mid = arr.get(1).cloned().unwrap_or(Value::Null);
        let requests = arr.get(2).cloned().unwrap_or(json!({}));
        let storage = &self.dbs[db].storage;
        let m = Monitor::parse(
            &storage.db,
            &self.dbs[db].name,
            mid.clone(),
            version,
            &requests,
        )
        .map_err(|e| e.to_json())?;
        let Some(s) = self.sessions.get(&sid) else {
            return Err(json!(null));
        };
        if s.monitors.iter().any(|x| x.id == mid) {
            return Err(json!("duplicate monitor ID"));
        }
        let mut found = false;
        let updates = if version == Version::V3 {
            let last = arr
                .get(3)
                .and_then(Value::as_str)
                .and_then(|t| Uuid::parse_str(t).ok());
            match last {
                Some(l) if l == storage.last_txn && !l.is_nil() => {
                    found = true;
                    json!({})
                }
                Some(l) => match storage.history.iter().position(|h| h.id == l) {
                    Some(p) => {
                        found = true;
                        let merged =
                            merge_changes(storage.history.iter().skip(p + 1).map(|h| &h.changes));
                        m.compose(&storage.db, &merged)
                    }
                    None => m.initial(&storage.db),
                },
                None => m.initial(&storage.db),
            }
        } else {
            m.initial(&storage.db)
        };
        let last = storage.last_txn;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.monitors.push(m);
        }
        Ok((found, last, updates))
    }

    fn monitor_cond_change(&mut self, sid: u64, params: &Value) -> Result<Option<Message>, Value> {
        let arr = params.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
            OvsdbError::syntax("monitor_cond_change takes [old-id, new-id, requests]").to_json()
        })?;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Ok(None);
        };
        let i = s
            .monitors
            .iter()
            .position(|m| m.id == arr[0])
            .ok_or_else(|| json!("unknown monitor"))?;
        if arr[0] != arr[1] && s.monitors.iter().any(|m| m.id == arr[1]) {
            return Err(json!("duplicate monitor ID"));
        }
        let db = self
            .dbs
            .iter()
            .position(|d| d.name == s.monitors[i].db)
            .ok_or_else(|| json!("unknown database"))?;
        let storage = &self.dbs[db].storage;
        let m = &mut s.monitors[i];
        if m.version == Version::V1 {
            return Err(OvsdbError::syntax(
                "monitor_cond_change applies only to conditional monitors",
            )
            .to_json());
        }
        let updates = m
            .change_conditions(&storage.db, &arr[2])
            .map_err(|e| e.to_json())?;
        m.id = arr[1].clone();
        if updates.as_object().is_some_and(|o| o.is_empty()) {
            return Ok(None);
        }
        Ok(Some(match m.version {
            Version::V3 => Message::Notification {
                method: "update3".into(),
                params: json!([m.id, storage.last_txn.to_string(), updates]),
            },
            _ => Message::Notification {
                method: "update2".into(),
                params: json!([m.id, updates]),
            },
        }))
    }

    fn lock_method(&mut self, sid: u64, method: &str, params: &Value) -> Result<Value, Value> {
        let name = params
            .get(0)
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| OvsdbError::syntax(format!("{method} takes one lock name")).to_json())?
            .to_owned();
        let q = self.locks.entry(name.clone()).or_default();
        match method {
            "lock" => {
                if q.contains(&sid) {
                    return Err(OvsdbError::syntax(format!(
                        "This session already requested lock {name}."
                    ))
                    .to_json());
                }
                q.push_back(sid);
                Ok(json!({"locked": q.front() == Some(&sid)}))
            }
            "steal" => {
                if q.contains(&sid) {
                    // As ovsdb-server: steal is for sessions that have not asked yet.
                    return Err(OvsdbError::syntax(format!(
                        "This session already owns or is waiting for lock {name}; unlock it first."
                    ))
                    .to_json());
                }
                let victim = q.front().copied();
                q.retain(|&x| x != sid);
                q.push_front(sid);
                if let Some(v) = victim.filter(|&v| v != sid) {
                    self.send(
                        v,
                        Message::Notification {
                            method: "stolen".into(),
                            params: json!([name]),
                        },
                    );
                }
                Ok(json!({"locked": true}))
            }
            _ => {
                if !q.contains(&sid) {
                    if q.is_empty() {
                        self.locks.remove(&name);
                    }
                    return Err(OvsdbError::syntax(format!(
                        "This session neither owns nor waits for lock {name}."
                    ))
                    .to_json());
                }
                let was_owner = q.front() == Some(&sid);
                q.retain(|&x| x != sid);
                let next = if was_owner { q.front().copied() } else { None };
                if q.is_empty() {
                    self.locks.remove(&name);
                }
                if let Some(n) = next {
                    self.send(
                        n,
                        Message::Notification {
                            method: "locked".into(),
                            params: json!([name]),
                        },
                    );
                }
                Ok(json!({}))
            }
        }
    }

    fn owns_lock(&self, sid: u64, name: &str) -> bool {
        self.locks.get(name).and_then(|q| q.front()) == Some(&sid)
    }

    /// Executes a transaction; on success stages it and queues reply and monitor updates.
    fn run_transaction(
        &mut self,
        sid: u64,
        id: Value,
        db: usize,
        ops: Vec<OpText>,
        pending_deadline: Option<Option<Instant>>,
    ) {
        let expired = matches!(pending_deadline, Some(Some(d)) if d <= Instant::now());
        let t_exec = Instant::now();
        let outcome = {
            let owns = |l: &str| self.owns_lock(sid, l);
            let ctx = ExecContext {
                owns_lock: &owns,
                wait_expired: expired,
                // _Server is maintained by the server itself.
                read_only: (db == 0).then_some("_Server"),
            };
            execute(&self.dbs[db].storage.db, &ops, &ctx)
        };
        match outcome {
            Outcome::Blocked { timeout_ms } => {
                let deadline = match pending_deadline {
                    Some(d) => d,
                    // A timeout beyond what Instant can represent never expires.
                    None => Instant::now().checked_add(Duration::from_millis(timeout_ms)),
                };
                self.pending.push(PendingTxn {
                    session: sid,
                    id,
                    db,
                    ops,
                    deadline,
                });
            }
            Outcome::Done {
                results, changes, ..
            } => {
                let failed = results.iter().any(OpResult::is_error);
                if failed {
                    self.stats.failed_txns += 1;
                }
                if let Some(c) = changes {
                    let times = TxnTimes {
                        rows: c.rows.len(),
                        request_bytes: self.last_parse.1,
                        parse: self.last_parse.0,
                        execute: t_exec.elapsed(),
                        ..TxnTimes::default()
                    };
                    self.commit(db, c, times);
                }
                // Written straight from the results (the bytes a `Message::Reply`
                // of their JSON array gives): a large insert has one per row.
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.out.push(reply_bytes(&id, &results));
                }
            }
        }
    }

    fn commit(&mut self, db: usize, changes: Changes, mut times: TxnTimes) {
        self.stats.commits += 1;
        let d = &mut self.dbs[db];
        d.staged.push(Instant::now());
        let t_stage = Instant::now();
        let entry = d.storage.stage(changes, now_ms());
        times.stage = t_stage.elapsed();
        let t_monitors = Instant::now();
        d.dirty = true;
        let name = d.name.clone();
        let dbref = &self.dbs[db].storage.db;
        let txn_id = entry.id.to_string();
        for s in self.sessions.values_mut() {
            let mut notes = Vec::new();
            for m in s.monitors.iter().filter(|m| m.db == name) {
                let (method, txn) = match m.version {
                    Version::V1 => ("update", None),
                    Version::V2 => ("update2", None),
                    Version::V3 => ("update3", Some(txn_id.as_str())),
                };
                // The update is written in place in its notification.
                let mut n = notification_head(method, &m.id, txn, 0);
                if !m.write_update(dbref, &entry.changes, &mut n) {
                    continue;
                }
                n.extend_from_slice(b"]}");
                notes.push(n);
            }
            for n in notes {
                times.monitor_bytes += n.len();
                s.out.push(n);
            }
        }
        times.monitors = t_monitors.elapsed();
        self.dbs[db].large.push(times);
        self.retry_pending = true;
    }

    fn run_pending(&mut self) {
        let now = Instant::now();
        let expired = self
            .pending
            .iter()
            .any(|p| p.deadline.is_some_and(|d| d <= now));
        if !self.retry_pending && !expired {
            return;
        }
        self.retry_pending = false;
        let pending = std::mem::take(&mut self.pending);
        // Retried requests were decoded earlier: no decode time of theirs.
        self.last_parse = (Duration::ZERO, 0);
        for p in pending {
            if !self.sessions.contains_key(&p.session) {
                continue;
            }
            self.run_transaction(p.session, p.id, p.db, p.ops, Some(p.deadline));
        }
    }

    fn check_probes(&mut self) {
        let Some(interval) = self.config.inactivity_probe else {
            return;
        };
        let now = Instant::now();
        for (id, s) in self.sessions.iter_mut() {
            if !s.probes || now.duration_since(s.last_input) < interval {
                continue;
            }
            if s.probe_sent {
                if now.duration_since(s.last_input) >= interval.saturating_mul(2) {
                    tracing::info!("session {id}: no response to inactivity probe; disconnecting");
                    s.closing = true;
                }
            } else {
                s.send(&Message::Request {
                    method: "echo".into(),
                    params: json!([]),
                    id: json!("echo"),
                });
                s.probe_sent = true;
            }
        }
    }

    fn sync(&mut self) -> Result<(), ServerError> {
        for d in &mut self.dbs {
            if d.dirty {
                let t = Instant::now();
                d.storage
                    .sync()
                    .map_err(|e| ServerError::Io(e.to_string()))?;
                let fsync = t.elapsed();
                d.dirty = false;
                self.stats.syncs += 1;
                for x in d.large.drain(..) {
                    log_txn_times(&d.name, &x, fsync);
                }
            }
            if let Some((m, _)) = &self.metrics {
                let now = Instant::now();
                for t in d.staged.drain(..) {
                    m.commit_seconds
                        .observe(now.duration_since(t).as_secs_f64());
                }
            } else {
                d.staged.clear();
            }
        }
        self.publish_metrics();
        Ok(())
    }

    /// Copies what the metrics show (once per loop iteration; cheap).
    fn publish_metrics(&self) {
        let Some((m, _)) = &self.metrics else {
            return;
        };
        let snap = crate::metrics::Snapshot {
            stats: self.stats.clone(),
            sessions: self.sessions.len(),
            monitors: self.sessions.values().map(|s| s.monitors.len()).sum(),
            dbs: self
                .dbs
                .iter()
                .filter(|d| d.name != "_Server")
                .map(|d| crate::metrics::DbSnapshot {
                    name: d.name.clone(),
                    log_bytes: d.storage.log_len(),
                    rows: d.storage.db.tables.iter().map(|t| t.rows.len()).sum(),
                })
                .collect(),
        };
        m.publish(snap);
    }

    fn flush_all(&mut self) {
        let max = self.config.max_backlog;
        for (id, s) in self.sessions.iter_mut() {
            while s.backlog() > 0 {
                match s.out.write_to(&mut s.conn) {
                    Ok(0) => {
                        s.closing = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        s.closing = true;
                        s.out.clear();
                        break;
                    }
                }
            }
            if s.backlog() > max && !s.closing {
                tracing::warn!(
                    "session {id}: {} bytes of output backlog exceed the {max}-byte limit (client not reading); disconnecting",
                    s.backlog()
                );
                self.stats.backlog_drops += 1;
                s.closing = true;
                s.out.clear();
            }
        }
    }

    /// Keeps what all sessions hold (output backlogs and unparsed input)
    /// within `max_memory` by disconnecting, one at a time, the session
    /// holding the most, with the reason logged.
    fn bound_memory(&mut self) {
        let max = self.config.max_memory;
        let mut total: usize = self
            .sessions
            .values()
            .filter(|s| !s.closing)
            .map(Session::held)
            .sum();
        while total > max {
            let Some((&id, s)) = self
                .sessions
                .iter_mut()
                .filter(|(_, s)| !s.closing)
                .max_by_key(|(_, s)| s.held())
            else {
                return;
            };
            let held = s.held();
            tracing::warn!(
                "session {id}: all sessions hold {total} bytes, over the {max}-byte limit (--max-memory); \
                 disconnecting this one, which holds the most ({} bytes of output it has not read, {} bytes of unparsed input)",
                s.backlog(),
                s.parser.buffered()
            );
            self.stats.memory_drops += 1;
            s.closing = true;
            s.out.clear();
            s.parser = Framer::new(self.config.max_message_size);
            total -= held;
        }
    }

    fn maybe_compact(&mut self) {
        for d in &mut self.dbs {
            if d.storage.should_compact() {
                if let Err(e) = d.storage.compact() {
                    tracing::warn!("{}: automatic compaction failed: {e}", d.name);
                }
            }
        }
    }

    fn reap(&mut self) {
        let dead: Vec<u64> = self
            .sessions
            .iter()
            // A closing session had one flush attempt this iteration (for its final
            // error reply); whatever the peer has not taken by now is dropped.
            .filter(|(_, s)| s.closing)
            .map(|(k, _)| *k)
            .collect();
        for id in dead {
            self.sessions.remove(&id);
            self.pending.retain(|p| p.session != id);
            let names: Vec<String> = self
                .locks
                .iter()
                .filter(|(_, q)| q.contains(&id))
                .map(|(n, _)| n.clone())
                .collect();
            for n in names {
                self.lock_method(id, "unlock", &json!([n])).ok();
            }
        }
    }

    // ---- control socket ----

    /// Runs the commands the control socket posted and answers them.
    fn run_control_commands(&mut self) {
        let posted = match &self.control {
            Some(c) => c.take_posted(),
            None => return,
        };
        for p in posted {
            let outcome = p.command.run(self);
            p.answer(outcome);
        }
    }

    /// Requests a clean exit after this loop iteration.
    pub fn request_exit(&mut self) {
        self.exit_requested = true;
    }

    /// Names of served databases (including `_Server`).
    pub fn db_names(&self) -> Vec<String> {
        self.dbs.iter().map(|d| d.name.clone()).collect()
    }

    /// Compacts one database (or all with `None`).
    pub fn compact(&mut self, name: Option<&str>) -> Result<(), String> {
        self.sync().map_err(|e| e.to_string())?;
        let mut any = false;
        for d in self.dbs.iter_mut().skip(1) {
            if name.is_none_or(|n| n == d.name) {
                any = true;
                d.storage
                    .compact()
                    .map_err(|e| format!("{}: compaction failed: {e}", d.name))?;
            }
        }
        if !any {
            return Err(format!("{}: unknown database", name.unwrap_or("")));
        }
        Ok(())
    }

    /// Human-readable statistics.
    pub fn stats_text(&self) -> String {
        let mut t = format!(
            "sessions:{} commits:{} failed-transactions:{} syncs:{} accepted:{} protocol-errors:{} backlog-drops:{} memory-drops:{} permission-denied:{} pending-waits:{}\n",
            self.sessions.len(),
            self.stats.commits,
            self.stats.failed_txns,
            self.stats.syncs,
            self.stats.sessions_accepted,
            self.stats.protocol_errors,
            self.stats.backlog_drops,
            self.stats.memory_drops,
            self.stats.permission_denied,
            self.pending.len()
        );
        let monitors: usize = self.sessions.values().map(|s| s.monitors.len()).sum();
        t.push_str(&format!("monitors:{monitors} locks:{}\n", self.locks.len()));
        for d in &self.dbs {
            t.push_str(&format!(
                "{}: rows:{} log-bytes:{} compactions:{} last-txn:{}\n",
                d.name,
                d.storage.db.row_count(),
                d.storage.log_len(),
                d.storage.compactions,
                d.storage.last_txn
            ));
        }
        t
    }

    /// Stops the control socket and removes socket files this server created.
    pub fn cleanup(&mut self) {
        self.control = None;
        for l in &self.listeners {
            if let Listener::Unix(_, p) = l {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Control for Server {
    fn request_exit(&mut self) {
        Server::request_exit(self);
    }
    fn compact(&mut self, db: Option<&str>) -> Result<(), String> {
        Server::compact(self, db)
    }
    fn db_names(&self) -> Vec<String> {
        Server::db_names(self)
    }
    fn stats_text(&self) -> String {
        Server::stats_text(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_bytes_are_what_message_encodes() {
        let updates = json!({"A": {"00000000-0000-0000-0000-000000000001": {"insert": {"n": 1}}}});
        let text = serde_json::to_vec(&updates).unwrap();
        for (method, id, txn) in [
            ("update", json!(null), None),
            ("update2", json!(["m", 1]), None),
            (
                "update3",
                json!("mon \"x\""),
                Some("7b5e0e43-0000-4000-8000-000000000000"),
            ),
        ] {
            let params = match txn {
                Some(t) => json!([id, t, updates]),
                None => json!([id, updates]),
            };
            let want = Message::Notification {
                method: method.into(),
                params,
            }
            .to_bytes();
            assert_eq!(
                String::from_utf8(notification_bytes(method, &id, txn, &text)).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
    }
}
