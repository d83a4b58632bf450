//! The control socket server: a unix listener, one accept thread and one
//! thread per client connection.
//!
//! Lifecycle: [`CtlServer::start`] creates the socket's parent directory,
//! replaces a stale socket file only if nothing listens on it, binds the new
//! socket inside a private `0700` directory, makes it `0600` and renames it
//! into place, so it is never reachable with looser permissions.
//! [`CtlServer::stop`] (also run on drop) stops accepting, wakes every
//! connection, waits for requests in progress to finish and removes the
//! socket file if it is still the one this server created.
//!
//! Each connection is served by its own thread with blocking I/O: requests
//! on one connection are handled in order, one at a time (as in OVS), and a
//! slow or silent client never holds up the others. A client that stays idle
//! longer than `idle_timeout`, or stalls in the middle of a message longer
//! than `read_timeout`, is disconnected; at most `max_connections` are served
//! at once and further ones get an error reply. Peer credentials are checked
//! on accept: a client whose uid is not allowed gets one error reply and is
//! disconnected without any command running. When every slot is taken, the
//! connection idle the longest (no request arriving or running) is closed to
//! make room, so idle clients cannot lock others out.
//!
//! Memory: every connection charges the bytes it buffers, and the estimated
//! size of what it decodes, to one [`MemoryBudget`] of
//! `max_bytes_in_flight` bytes; a request that does not fit gets an error
//! reply. Text commands take their arguments from the raw request text and
//! never decode `params`, so a hostile 64 MiB request to one costs 64 MiB,
//! not the ~1.1 GB its decoded `Value` would.
//!
//! Thread-safety: [`CtlServer`] is owned by the thread that started it;
//! handlers run on the connection threads, never on PMD threads.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use super::protocol::{encode_reply, RawRequest};
use super::registry::{DispatchContext, Registry};
use super::sys;
use crate::budget::{decoded_size_estimate, Charge, MemoryBudget};
use crate::framing::{Framer, Limits, DEFAULT_MAX_DEPTH};

/// Default path of the control socket (`sluiced`'s; other programs set
/// [`ServerConfig::path`]).
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/sluice/sluiced.ctl";

/// Requests at least this large are followed by returning freed heap to
/// the kernel ([`super::sys::release_free_heap`]).
const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// Which peers may run commands, checked with `SO_PEERCRED` on accept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedPeers {
    /// Root and this process's effective uid (the default).
    #[default]
    RootAndSelf,
    /// Exactly these uids.
    Uids(Vec<u32>),
    /// Anyone who can open the socket file (its mode is then the only
    /// access control, as in OVS's own unixctl).
    Any,
}

/// Settings of a [`CtlServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the socket is created.
    pub path: PathBuf,
    /// The program's name, used in error texts ("see the sluiced log").
    pub program: String,
    /// Mode of the socket file (default `0600`).
    pub socket_mode: u32,
    /// Largest accepted request, in bytes (default 64 MiB: one
    /// `service-update` of 100k Services x 10 endpoints is about 35 MB of
    /// JSON and must fit in one atomic request). By default the socket is
    /// open to root and the daemon's own uid only.
    pub max_message_bytes: usize,
    /// Deepest accepted nesting of a request (default
    /// [`DEFAULT_MAX_DEPTH`]).
    pub max_depth: usize,
    /// How long a client may stall in the middle of a request.
    pub read_timeout: Duration,
    /// How long a connection may stay open without sending anything.
    pub idle_timeout: Duration,
    /// How long writing a reply may block on a client that does not read.
    pub write_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most bytes held for requests by all connections together: the raw
    /// bytes buffered while a request arrives plus the estimated size of
    /// what is decoded from it ([`crate::budget::decoded_size_estimate`];
    /// only structured methods and ids are decoded, text commands read their
    /// arguments from the raw text). A connection whose request would pass
    /// it gets an error reply (and is closed if the request was still
    /// arriving); the others keep being served. Default 1 GiB: a
    /// `service-update` of 100k Services x 10 endpoints (~35 MB of JSON)
    /// decodes to ~340 MB, estimated at ~500 MB, and must fit with room for
    /// the other connections; without the budget, 64 connections could make
    /// the daemon hold 64 x 1.1 GB. At least `max_message_bytes`.
    pub max_bytes_in_flight: usize,
    /// Peers allowed to run commands.
    pub allowed_peers: AllowedPeers,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_SOCKET_PATH),
            program: "sluiced".to_owned(),
            socket_mode: 0o600,
            max_message_bytes: 64 << 20,
            max_depth: DEFAULT_MAX_DEPTH,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_bytes_in_flight: 1 << 30,
            allowed_peers: AllowedPeers::RootAndSelf,
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), CtlError> {
        let invalid = |reason: &str| {
            Err(CtlError::InvalidConfig {
                reason: reason.to_owned(),
            })
        };
        if self.max_message_bytes == 0 || self.max_depth == 0 {
            return invalid("max_message_bytes and max_depth must be at least 1");
        }
        if self.socket_mode & !0o777 != 0 || self.socket_mode & 0o600 != 0o600 {
            return invalid("socket_mode must be permission bits (at most 0777) including 0600");
        }
        if self.max_bytes_in_flight < self.max_message_bytes {
            return invalid("max_bytes_in_flight must be at least max_message_bytes");
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if [self.read_timeout, self.idle_timeout, self.write_timeout]
            .iter()
            .any(Duration::is_zero)
        {
            return invalid("read, idle and write timeouts must be longer than zero");
        }
        Ok(())
    }

    /// The default settings with the socket at `path`.
    pub fn with_path(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }
}

/// Why the control socket could not be started.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket's directory could not be created.
    #[error("cannot create control socket directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A live server already answers on the path.
    #[error("another process is already listening on control socket {}; stop it or choose another socket path", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket, so it is left alone.
    #[error("{} exists and is not a socket; remove it or choose another control socket path", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Checking, binding, or placing the socket failed.
    #[error("cannot {action} control socket {}: {source}", path.display())]
    Socket {
        /// What was being done, e.g. "bind".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A [`ServerConfig`] limit is unusable.
    #[error("invalid control socket configuration: {reason}")]
    InvalidConfig {
        /// Which setting is wrong and why.
        reason: String,
    },
    /// The accept thread could not be spawned.
    #[error("cannot start the control socket thread: {0}")]
    Spawn(io::Error),
}

type ExitCallback = Box<dyn Fn() + Send + Sync>;

struct Connection {
    stream: UnixStream,
    thread: JoinHandle<()>,
    activity: Arc<Activity>,
}

/// What the accept thread needs to pick an idle connection to evict.
#[derive(Default)]
struct Activity {
    /// A request is arriving or running.
    busy: AtomicBool,
    /// Value of [`Shared::clock`] at this connection's last input.
    last_input: AtomicU64,
}

struct Shared {
    registry: Registry,
    on_exit: ExitCallback,
    config: ServerConfig,
    allowed_uids: Option<Vec<u32>>,
    budget: Arc<MemoryBudget>,
    stopping: AtomicBool,
    next_conn: AtomicU64,
    /// A logical clock ticked by every read, ordering connections by
    /// their last input.
    clock: AtomicU64,
    conns: Mutex<HashMap<u64, Connection>>,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Connection>> {
        // The map stays consistent even if a holder panicked: every critical
        // section is a single insert, remove or take.
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running control socket. Dropping it stops it.
pub struct CtlServer {
    path: PathBuf,
    socket_id: (u64, u64),
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
    wake: UnixStream,
}

impl std::fmt::Debug for CtlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtlServer")
            .field("path", &self.path)
            .field("running", &self.accept_thread.is_some())
            .finish()
    }
}

impl CtlServer {
    /// Creates the socket and starts serving `registry` on it. `on_exit` is
    /// what the `exit` command calls; it runs on a connection thread, so it
    /// should signal the main thread rather than stop this server itself
    /// (although calling [`CtlServer::stop`] from it does not deadlock).
    ///
    /// # Errors
    /// [`CtlError`] if the socket cannot be created or is in use.
    pub fn start(
        config: ServerConfig,
        registry: Registry,
        on_exit: impl Fn() + Send + Sync + 'static,
    ) -> Result<Self, CtlError> {
        config.validate()?;
        let (listener, socket_id) = bind_socket(&config.path, config.socket_mode)?;
        let set_nonblocking = |e| CtlError::Socket {
            action: "configure",
            path: config.path.clone(),
            source: e,
        };
        listener.set_nonblocking(true).map_err(set_nonblocking)?;
        let (wake, wake_rx) = UnixStream::pair().map_err(set_nonblocking)?;
        let allowed_uids = match &config.allowed_peers {
            AllowedPeers::RootAndSelf => Some(vec![0, sys::effective_uid()]),
            AllowedPeers::Uids(uids) => Some(uids.clone()),
            AllowedPeers::Any => None,
        };
        let path = config.path.clone();
        let budget = MemoryBudget::new(config.max_bytes_in_flight);
        let shared = Arc::new(Shared {
            budget,
            registry,
            on_exit: Box::new(on_exit),
            config,
            allowed_uids,
            stopping: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let accept_shared = shared.clone();
        let accept_thread = thread::Builder::new()
            .name("sluice-ctl".to_owned())
            .spawn(move || accept_loop(&accept_shared, &listener, &wake_rx));
        let accept_thread = match accept_thread {
            Ok(thread) => thread,
            Err(e) => {
                remove_if_ours(&path, socket_id);
                return Err(CtlError::Spawn(e));
            }
        };
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(Self {
            path,
            socket_id,
            shared,
            accept_thread: Some(accept_thread),
            wake,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry this server dispatches to.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Stops accepting, lets requests in progress finish and reply, closes
    /// every connection and removes the socket file. Idempotent.
    pub fn stop(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // If the write fails the accept thread is already gone.
        let _ = self.wake.write_all(b"x");
        if accept_thread.join().is_err() {
            tracing::error!("control socket accept thread panicked");
        }
        let conns = std::mem::take(&mut *self.shared.conns());
        let me = thread::current().id();
        for conn in conns.values() {
            // Wakes a blocked read with end-of-file; a reply being written
            // still goes out.
            let _ = conn.stream.shutdown(std::net::Shutdown::Read);
        }
        for (_, conn) in conns {
            if conn.thread.thread().id() != me && conn.thread.join().is_err() {
                tracing::error!("control connection thread panicked");
            }
        }
        remove_if_ours(&self.path, self.socket_id);
        tracing::info!(path = %self.path.display(), "control socket stopped");
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes `path` if it is still the socket inode this server created.
fn remove_if_ours(path: &Path, socket_id: (u64, u64)) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if (meta.dev(), meta.ino()) == socket_id {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove control socket");
            }
        }
    }
}

/// Creates the listening socket at `path` with `mode`; returns it with
/// the (device, inode) of the socket file.
fn bind_socket(path: &Path, mode: u32) -> Result<(UnixListener, (u64, u64)), CtlError> {
    let sock_err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| CtlError::Socket {
            action,
            path: p,
            source,
        }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|source| CtlError::CreateDir {
        path: parent.clone(),
        source,
    })?;
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(CtlError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(CtlError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale control socket");
                match fs::remove_file(path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(sock_err("remove stale", path)(e))
                    }
                    _ => {}
                }
            }
            Err(e) => return Err(sock_err("probe existing", path)(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err("inspect", path)(e)),
    }

    // Bind inside a private directory so the socket is never reachable
    // before it has its mode, then move it into place.
    static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);
    let private = parent.join(format!(
        ".ctl{}.{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(sock_err("create private directory for", path))?;
    let tmp = private.join("s");
    let placed = (|| {
        let listener = UnixListener::bind(&tmp).map_err(sock_err("bind", path))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(sock_err("set the mode of", path))?;
        fs::rename(&tmp, path).map_err(sock_err("move into place", path))?;
        let meta = fs::symlink_metadata(path).map_err(sock_err("inspect", path))?;
        Ok((listener, (meta.dev(), meta.ino())))
    })();
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_dir(&private);
    placed
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener, wake: &UnixStream) {
    loop {
        let (_, woken) = match sys::wait_readable(listener, wake) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!(error = %e, "control socket poll failed; no longer accepting");
                return;
            }
        };
        if woken || shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => spawn_connection(shared, stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Typically EMFILE: back off instead of spinning on a
                // listener that stays readable.
                tracing::warn!(error = %e, "control socket accept failed");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, mut stream: UnixStream) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(shared.config.write_timeout)))
        .and_then(|()| stream.try_clone());
    let clone = match setup {
        Ok(clone) => clone,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up control connection");
            return;
        }
    };
    // Held across spawn and insert so a thread that ends at once cannot try
    // to remove its entry before it exists.
    let mut conns = shared.conns();
    if conns.len() >= shared.config.max_connections {
        evict_idle(&mut conns);
    }
    if conns.len() >= shared.config.max_connections {
        let reply = encode_reply(
            &Value::Null,
            &Err(format!(
                "too many control connections (limit {}); try again later\n",
                shared.config.max_connections
            )),
        );
        let _ = stream.write_all(&reply);
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let conn_shared = shared.clone();
    let activity = Arc::new(Activity::default());
    activity.last_input.store(
        shared.clock.fetch_add(1, Ordering::Relaxed),
        Ordering::Relaxed,
    );
    let conn_activity = activity.clone();
    let spawned = thread::Builder::new()
        .name(format!("sluice-ctl-{id}"))
        .spawn(move || {
            serve_connection(&conn_shared, stream, &conn_activity);
            conn_shared.conns().remove(&id);
        });
    match spawned {
        Ok(thread) => {
            conns.insert(
                id,
                Connection {
                    stream: clone,
                    thread,
                    activity,
                },
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot spawn control connection thread"),
    }
}

/// Makes room for a new connection by closing the one whose last input is
/// the oldest among those with no request arriving or running, so idle
/// clients cannot hold every slot while others wait. Its thread sees the
/// end of its stream and exits on its own.
fn evict_idle(conns: &mut HashMap<u64, Connection>) {
    let idle = conns
        .iter()
        .filter(|(_, c)| !c.activity.busy.load(Ordering::Acquire))
        .min_by_key(|(_, c)| c.activity.last_input.load(Ordering::Relaxed))
        .map(|(id, _)| *id);
    if let Some(conn) = idle.and_then(|id| conns.remove(&id)) {
        tracing::info!("control connection limit reached; closing the connection idle the longest");
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// What to do with one request.
enum Admission {
    Allowed,
    Denied(String),
}

fn admission(shared: &Shared, stream: &UnixStream) -> Admission {
    let Some(allowed_uids) = &shared.allowed_uids else {
        return Admission::Allowed;
    };
    match sys::peer_cred(stream) {
        Ok(cred) if allowed_uids.contains(&cred.uid) => Admission::Allowed,
        Ok(cred) => {
            tracing::warn!(uid = cred.uid, pid = cred.pid, "control client refused");
            Admission::Denied(format!(
                "permission denied: uid {} may not use the {} control socket; run the command as root or as the daemon's user\n",
                cred.uid, shared.config.program
            ))
        }
        Err(e) => Admission::Denied(format!(
            "permission denied: cannot read the client's credentials ({e})\n"
        )),
    }
}

/// Runs one request, turning a panicking handler into an error reply so
/// the connection (and its slot in the connection limit) survives.
fn dispatch_guarded(
    shared: &Shared,
    method: &str,
    params: Option<&serde_json::value::RawValue>,
    ctx: &DispatchContext<'_>,
    decode: &mut dyn FnMut(&serde_json::value::RawValue) -> Result<Value, String>,
    charge: &mut dyn FnMut(&serde_json::value::RawValue) -> Result<(), String>,
) -> Result<Value, String> {
    let run = || {
        shared
            .registry
            .dispatch_raw_charged(method, params, ctx, decode, charge)
    };
    match panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!(command = %method, "control command handler panicked");
            Err(format!(
                "internal error: the \"{}\" handler panicked; see the {} log\n",
                method, shared.config.program
            ))
        }
    }
}

fn serve_connection(shared: &Shared, mut stream: UnixStream, activity: &Activity) {
    let config = &shared.config;
    let admission = admission(shared, &stream);
    let ctx = DispatchContext {
        on_exit: &*shared.on_exit,
    };
    let mut framer = Framer::with_limits(Limits {
        max_message_bytes: config.max_message_bytes,
        max_depth: config.max_depth,
    });
    let mut buf = vec![0u8; 64 * 1024];
    // The memory this connection's framer holds (its buffer's capacity,
    // which is what it really reserves), charged to the server-wide budget
    // before the buffer grows.
    let mut buffered = shared.budget.empty_charge();
    loop {
        let timeout = match (&admission, framer.has_partial()) {
            (Admission::Allowed, false) => config.idle_timeout,
            _ => config.read_timeout,
        };
        if stream.set_read_timeout(Some(timeout)).is_err() {
            return;
        }
        activity.busy.store(framer.has_partial(), Ordering::Release);
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                activity.busy.store(true, Ordering::Release);
                activity.last_input.store(
                    shared.clock.fetch_add(1, Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                n
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if framer.has_partial() {
                    let message = format!(
                        "timed out after {:?} waiting for the rest of the request; closing the connection\n",
                        timeout
                    );
                    let _ = stream.write_all(&encode_reply(&Value::Null, &Err(message)));
                }
                tracing::debug!("control connection timed out");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "control connection read failed");
                return;
            }
        };
        if let Err(e) = buffered.resize(framer.capacity_after_push(n)) {
            tracing::warn!(error = %e, "control request refused for lack of memory; closing the connection");
            let _ = stream.write_all(&encode_reply(
                &Value::Null,
                &Err(format!("{e}; closing the connection\n")),
            ));
            return;
        }
        framer.push(&buf[..n]);
        loop {
            let (frame_len, id, outcome) = match framer.next_frame_ref() {
                Ok(Some(frame)) => {
                    let (id, outcome) = handle_frame(shared, &admission, &ctx, frame);
                    (frame.len(), id, outcome)
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = stream.write_all(&encode_reply(&Value::Null, &Err(format!("{e}\n"))));
                    return;
                }
            };
            if frame_len >= LARGE_REQUEST_BYTES {
                framer.compact();
                super::sys::release_free_heap();
            }
            // The capacity only shrinks here, and shrinking a charge
            // cannot fail.
            let _ = buffered.resize(framer.capacity().min(buffered.bytes()));
            if let Err(e) = stream.write_all(&encode_reply(&id, &outcome)) {
                tracing::debug!(error = %e, "control reply could not be written");
                return;
            }
            if let Admission::Denied(_) = admission {
                return;
            }
        }
    }
}

/// Validates and runs one message, decoding only what must be decoded
/// (the id, and `params` for a structured method) after charging its
/// estimated size to the server's budget; returns the reply's id and
/// outcome.
fn handle_frame(
    shared: &Shared,
    admission: &Admission,
    ctx: &DispatchContext<'_>,
    frame: &[u8],
) -> (Value, Result<Value, String>) {
    let raw = match RawRequest::parse(frame) {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            return (
                Value::Null,
                Err("message is not a JSON object\n".to_owned()),
            )
        }
        Err(e) => {
            return (
                Value::Null,
                Err(format!("malformed JSON in request: {e}\n")),
            )
        }
    };
    // Held until the decoded values are dropped, after the handler ran.
    let charges: std::cell::RefCell<Vec<Charge>> = Default::default();
    // What decoding `raw` may take, charged to the budget (a method that
    // reads its params from the text, without a value tree, is charged
    // the same estimate: an upper bound of what it builds).
    let charge = |raw: &serde_json::value::RawValue| -> Result<(), String> {
        let estimate = decoded_size_estimate(raw.get().as_bytes());
        let charge = shared.budget.try_charge(estimate).map_err(|e| {
            tracing::warn!(error = %e, "control request refused for lack of memory");
            e.to_string()
        })?;
        charges.borrow_mut().push(charge);
        Ok(())
    };
    let mut decode = |raw: &serde_json::value::RawValue| -> Result<Value, String> {
        charge(raw)?;
        serde_json::from_str(raw.get()).map_err(|e| format!("malformed JSON in request: {e}"))
    };
    let request = match raw.validate(&mut decode) {
        Ok(request) => request,
        Err((id, message)) => return (id, Err(format!("{message}\n"))),
    };
    match admission {
        Admission::Denied(message) => (request.id, Err(message.clone())),
        Admission::Allowed => {
            let outcome = dispatch_guarded(
                shared,
                &request.method,
                request.params,
                ctx,
                &mut decode,
                &mut |raw| charge(raw),
            );
            (request.id, outcome)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

    /// Reads exactly one reply (byte by byte, so a following reply stays in
    /// the socket); fails the test after 30 s instead of hanging.
    fn read_reply(stream: &mut UnixStream) -> Value {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut framer = Framer::new(1 << 24);
        let mut buf = [0u8; 1];
        loop {
            let n = stream
                .read(&mut buf)
                .expect("server did not reply within 30 s");
            assert!(n > 0, "server closed the connection without replying");
            framer.push(&buf[..n]);
            if let Some(frame) = framer.next_frame().unwrap() {
                return serde_json::from_slice(&frame).unwrap();
            }
        }
    }

    /// Asserts the server closes `stream` (EOF or reset) within 30 s.
    fn assert_closed(stream: &mut UnixStream) {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("server did not close the connection: {e}"),
            }
        }
    }

    fn call(stream: &mut UnixStream, id: u64, method: &str, params: Value) -> Value {
        let req = json!({"id": id, "method": method, "params": params});
        stream.write_all(req.to_string().as_bytes()).unwrap();
        read_reply(stream)
    }

    fn test_registry() -> Registry {
        let r = Registry::with_version("sluiced (Sluice) test");
        r.register(
            "echo",
            "ARG...",
            0,
            3,
            Arc::new(|args: &[String]| Ok(args.join(","))),
        )
        .unwrap();
        r.register(
            "fail",
            "",
            0,
            0,
            Arc::new(|_: &[String]| Err("it failed".into())),
        )
        .unwrap();
        r
    }

    fn start(dir: &Path, config: impl FnOnce(&mut ServerConfig)) -> CtlServer {
        let mut cfg = ServerConfig::with_path(dir.join("run/sluice/sluiced.ctl"));
        config(&mut cfg);
        CtlServer::start(cfg, test_registry(), || {}).expect("server starts")
    }

    #[test]
    fn serves_commands_with_ovs_reply_shapes_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |_| {});
        let mode = fs::metadata(server.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "socket mode is {mode:o}");
        let mut s = UnixStream::connect(server.path()).unwrap();
        assert_eq!(
            call(&mut s, 1, "echo", json!(["a", "b"])),
            json!({"id": 1, "result": "a,b\n", "error": null})
        );
        assert_eq!(
            call(&mut s, 2, "fail", json!([])),
            json!({"id": 2, "result": null, "error": "it failed\n"})
        );
        assert_eq!(
            call(&mut s, 3, "echo", json!(["1", "2", "3", "4"])),
            json!({"id": 3, "result": null, "error": "\"echo\" command takes at most 3 arguments\n"})
        );
        // The private bind directory is gone.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("run/sluice"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("sluiced.ctl")]);
    }

    #[test]
    fn several_requests_in_one_write_get_replies_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |_| {});
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.write_all(
            br#"{"id":1,"method":"echo","params":["x"]} {"id":2,"method":"version","params":[]}{"id":3,"meth"#,
        )
        .unwrap();
        assert_eq!(read_reply(&mut s)["result"], "x\n");
        assert_eq!(read_reply(&mut s)["result"], "sluiced (Sluice) test\n");
        s.write_all(br#"od":"echo","params":["y"]}"#).unwrap();
        assert_eq!(
            read_reply(&mut s),
            json!({"id": 3, "result": "y\n", "error": null})
        );
    }

    #[test]
    fn many_concurrent_clients_each_get_their_own_replies() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |_| {});
        let path = server.path().to_path_buf();
        let clients: Vec<_> = (0..16)
            .map(|client| {
                let path = path.clone();
                thread::spawn(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    for i in 0..50u64 {
                        let arg = format!("c{client}-{i}");
                        let reply = call(&mut s, i, "echo", json!([arg]));
                        assert_eq!(
                            reply,
                            json!({"id": i, "result": format!("{arg}\n"), "error": null})
                        );
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().expect("client thread");
        }
    }

    #[test]
    fn malformed_json_gets_an_error_and_the_connection_survives() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |_| {});
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.write_all(br#"{"id":1,"method":"echo",}"#).unwrap();
        let reply = read_reply(&mut s);
        assert_eq!(reply["id"], Value::Null);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed JSON in request"),
            "{reply}"
        );
        assert_eq!(call(&mut s, 2, "echo", json!(["ok"]))["result"], "ok\n");
        // A non-request message gets an error with its id.
        s.write_all(br#"{"id":9,"result":"x","error":null}"#)
            .unwrap();
        let reply = read_reply(&mut s);
        assert_eq!(reply["id"], 9);
        assert!(reply["error"]
            .as_str()
            .unwrap()
            .contains("only accepts requests"));
    }

    #[test]
    fn garbage_and_oversize_messages_close_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |c| c.max_message_bytes = 256);
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let reply = read_reply(&mut s);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .contains("not speaking JSON-RPC"),
            "{reply}"
        );
        assert_closed(&mut s);

        let mut s = UnixStream::connect(server.path()).unwrap();
        let big = format!(
            r#"{{"id":1,"method":"echo","params":["{}"]}}"#,
            "a".repeat(1000)
        );
        // The server may close before reading everything; ignore EPIPE.
        let _ = s.write_all(big.as_bytes());
        let reply = read_reply(&mut s);
        assert!(
            reply["error"].as_str().unwrap().contains("256-byte limit"),
            "{reply}"
        );
        assert_closed(&mut s);

        // A valid request before garbage in the same write still runs.
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.write_all(br#"{"id":4,"method":"echo","params":["first"]}!!"#)
            .unwrap();
        assert_eq!(
            read_reply(&mut s),
            json!({"id": 4, "result": "first\n", "error": null})
        );
        let reply = read_reply(&mut s);
        assert!(
            reply["error"].as_str().unwrap().contains("byte 0x21"),
            "{reply}"
        );
        assert_closed(&mut s);

        // Others are still served.
        let mut s = UnixStream::connect(server.path()).unwrap();
        assert_eq!(call(&mut s, 1, "echo", json!(["z"]))["result"], "z\n");
    }

    #[test]
    fn too_deep_requests_close_the_connection_and_limits_are_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |c| {
            c.max_depth = 4;
            c.socket_mode = 0o660;
            c.allowed_peers = AllowedPeers::Any;
            c.program = "testd".to_owned();
        });
        let mode = fs::metadata(server.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "socket mode is {mode:o}");
        let mut s = UnixStream::connect(server.path()).unwrap();
        assert_eq!(
            call(&mut s, 1, "echo", json!({"args": ["x"]}))["result"],
            "x\n"
        );
        s.write_all(br#"{"id":2,"method":"echo","params":[[[["x"]]]]}"#)
            .unwrap();
        let reply = read_reply(&mut s);
        assert!(
            reply["error"].as_str().unwrap().contains("4 levels deep"),
            "{reply}"
        );
        assert_closed(&mut s);
        for bad in [0o1600, 0o400] {
            let err = CtlServer::start(
                ServerConfig {
                    socket_mode: bad,
                    ..ServerConfig::with_path(dir.path().join("bad.ctl"))
                },
                Registry::new(),
                || {},
            )
            .unwrap_err();
            assert!(matches!(err, CtlError::InvalidConfig { .. }), "{err}");
        }
    }

    #[test]
    fn silent_and_half_message_clients_do_not_block_others_and_time_out() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |c| {
            c.read_timeout = Duration::from_millis(200);
            c.idle_timeout = Duration::from_millis(200);
        });
        let mut silent = UnixStream::connect(server.path()).unwrap();
        let mut half = UnixStream::connect(server.path()).unwrap();
        half.write_all(br#"{"id":1,"method":"ec"#).unwrap();
        let mut good = UnixStream::connect(server.path()).unwrap();
        assert_eq!(
            call(&mut good, 1, "echo", json!(["served"]))["result"],
            "served\n"
        );
        let reply = read_reply(&mut half);
        assert!(
            reply["error"].as_str().unwrap().contains("timed out"),
            "{reply}"
        );
        assert_closed(&mut half);
        assert_closed(&mut silent);
    }

    #[test]
    fn unauthorized_uid_gets_an_error_and_is_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Registry::new();
        let counter = ran.clone();
        r.register(
            "touch",
            "",
            0,
            0,
            Arc::new(move |_: &[String]| {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(String::new())
            }),
        )
        .unwrap();
        let me = sys::effective_uid();
        let other = if me == 4242 { 4243 } else { 4242 };
        let mut cfg = ServerConfig::with_path(dir.path().join("c.ctl"));
        cfg.allowed_peers = AllowedPeers::Uids(vec![other]);
        let server = CtlServer::start(cfg, r, || {}).unwrap();
        let mut s = UnixStream::connect(server.path()).unwrap();
        let reply = call(&mut s, 5, "touch", json!([]));
        assert_eq!(reply["id"], 5);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("permission denied: uid {me} ")),
            "{reply}"
        );
        assert_closed(&mut s);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn stale_socket_is_replaced_but_live_socket_and_regular_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ctl");
        // A stale socket: bound, then its listener closed.
        drop(UnixListener::bind(&path).unwrap());
        let mut first = CtlServer::start(ServerConfig::with_path(&path), Registry::new(), || {})
            .expect("stale socket replaced");
        let err =
            CtlServer::start(ServerConfig::with_path(&path), Registry::new(), || {}).unwrap_err();
        assert!(matches!(err, CtlError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("already listening"), "{err}");
        // The failed second start did not remove the live socket.
        assert!(UnixStream::connect(&path).is_ok());
        first.stop();
        assert!(!path.exists(), "socket removed on stop");
        first.stop();

        let file = dir.path().join("plain");
        fs::write(&file, b"keep me").unwrap();
        let err =
            CtlServer::start(ServerConfig::with_path(&file), Registry::new(), || {}).unwrap_err();
        assert!(matches!(err, CtlError::NotASocket { .. }), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn stop_wakes_idle_connections_and_removes_only_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ctl");
        let mut server =
            CtlServer::start(ServerConfig::with_path(&path), Registry::new(), || {}).unwrap();
        let mut idle = UnixStream::connect(&path).unwrap();
        // Make sure the connection is being served before stopping.
        assert_eq!(
            call(&mut idle, 1, "version", json!([]))["error"],
            Value::Null
        );
        // Someone replaced the socket file: stop must not delete theirs.
        fs::remove_file(&path).unwrap();
        let _theirs = UnixListener::bind(&path).unwrap();
        // stop() must return although the idle timeout is 300 s.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let stopper = thread::spawn(move || {
            server.stop();
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("stop() did not return within 60 s while a client was idle");
        stopper.join().unwrap();
        assert_closed(&mut idle);
        assert!(
            path.exists(),
            "a socket this server did not create was removed"
        );
    }

    #[test]
    fn exit_calls_back_and_commands_registered_later_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let exits = Arc::new(AtomicUsize::new(0));
        let counter = exits.clone();
        let registry = Registry::new();
        let server = CtlServer::start(
            ServerConfig::with_path(dir.path().join("s.ctl")),
            registry.clone(),
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        let mut s = UnixStream::connect(server.path()).unwrap();
        assert!(call(&mut s, 1, "late", json!([]))["error"]
            .as_str()
            .unwrap()
            .contains("is not a valid command"));
        registry
            .register("late", "", 0, 0, Arc::new(|_: &[String]| Ok("here".into())))
            .unwrap();
        registry
            .register_method("late-json", Arc::new(|p: &Value| Ok(json!({"got": p}))))
            .unwrap();
        assert_eq!(call(&mut s, 2, "late", json!([]))["result"], "here\n");
        assert_eq!(
            call(&mut s, 3, "late-json", json!({"a": 1}))["result"],
            json!({"got": {"a": 1}})
        );
        assert_eq!(
            call(&mut s, 4, "exit", json!([])),
            json!({"id": 4, "result": "", "error": null})
        );
        assert_eq!(exits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn panicking_handler_gets_an_error_reply_and_the_connection_survives() {
        let dir = tempfile::tempdir().unwrap();
        let r = test_registry();
        r.register(
            "boom",
            "",
            0,
            0,
            Arc::new(|_: &[String]| panic!("handler bug")),
        )
        .unwrap();
        let server = CtlServer::start(
            ServerConfig {
                max_connections: 1,
                ..ServerConfig::with_path(dir.path().join("s.ctl"))
            },
            r,
            || {},
        )
        .unwrap();
        let mut s = UnixStream::connect(server.path()).unwrap();
        assert_eq!(
            call(&mut s, 1, "boom", json!([]))["error"],
            "internal error: the \"boom\" handler panicked; see the sluiced log\n"
        );
        assert_eq!(
            call(&mut s, 2, "echo", json!(["after"]))["result"],
            "after\n"
        );
    }

    #[test]
    fn unusable_limits_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.ctl");
        let err = CtlServer::start(
            ServerConfig {
                read_timeout: Duration::ZERO,
                ..ServerConfig::with_path(&path)
            },
            Registry::new(),
            || {},
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("timeouts must be longer than zero"),
            "{err}"
        );
        assert!(!path.exists(), "no socket is created for a refused config");
    }

    /// A registry with `block`, whose handler signals `started` and waits
    /// for `release` (bounded, so a failing test cannot hang).
    fn blocking_registry() -> (
        Registry,
        crossbeam_channel::Receiver<()>,
        crossbeam_channel::Sender<()>,
    ) {
        let r = test_registry();
        let (started_tx, started_rx) = crossbeam_channel::unbounded();
        let (release_tx, release_rx) = crossbeam_channel::unbounded::<()>();
        r.register(
            "block",
            "",
            0,
            0,
            Arc::new(move |_: &[String]| {
                let _ = started_tx.send(());
                release_rx
                    .recv_timeout(Duration::from_secs(60))
                    .map_err(|_| "never released".to_owned())?;
                Ok("released".to_owned())
            }),
        )
        .unwrap();
        (r, started_rx, release_tx)
    }

    #[test]
    fn connection_limit_rejects_with_an_error_when_no_connection_is_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (r, started, release) = blocking_registry();
        let mut cfg = ServerConfig::with_path(dir.path().join("s.ctl"));
        cfg.max_connections = 1;
        let server = CtlServer::start(cfg, r, || {}).unwrap();
        let mut first = UnixStream::connect(server.path()).unwrap();
        first
            .write_all(br#"{"id":1,"method":"block","params":[]}"#)
            .unwrap();
        started
            .recv_timeout(Duration::from_secs(30))
            .expect("the blocking request did not start within 30 s");
        let mut second = UnixStream::connect(server.path()).unwrap();
        let reply = read_reply(&mut second);
        assert!(reply["error"]
            .as_str()
            .unwrap()
            .contains("too many control connections"));
        assert_closed(&mut second);
        release.send(()).unwrap();
        assert_eq!(read_reply(&mut first)["result"], "released\n");
    }

    #[test]
    fn the_connection_idle_the_longest_makes_room_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), |c| c.max_connections = 2);
        let mut oldest = UnixStream::connect(server.path()).unwrap();
        assert_eq!(call(&mut oldest, 1, "echo", json!(["a"]))["result"], "a\n");
        let mut recent = UnixStream::connect(server.path()).unwrap();
        assert_eq!(call(&mut recent, 1, "echo", json!(["b"]))["result"], "b\n");
        let mut newcomer = UnixStream::connect(server.path()).unwrap();
        assert_eq!(
            call(&mut newcomer, 1, "echo", json!(["c"]))["result"],
            "c\n"
        );
        assert_closed(&mut oldest);
        assert_eq!(call(&mut recent, 2, "echo", json!(["d"]))["result"], "d\n");
    }

    fn budget_registry() -> Registry {
        let r = test_registry();
        r.register_method(
            "count",
            Arc::new(|p: &Value| Ok(json!(p.as_array().map_or(0, Vec::len)))),
        )
        .unwrap();
        r
    }

    #[test]
    fn a_method_request_beyond_the_memory_budget_gets_an_error_and_the_connection_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::with_path(dir.path().join("s.ctl"));
        cfg.max_message_bytes = 1 << 20;
        cfg.max_bytes_in_flight = 4 << 20;
        let server = CtlServer::start(cfg, budget_registry(), || {}).unwrap();
        let mut s = UnixStream::connect(server.path()).unwrap();
        // 500k zeros: under the message limit, but ~32 MB once decoded.
        let zeros = vec![0u8; 500_000];
        let reply = call(&mut s, 1, "count", json!(zeros));
        assert_eq!(reply["id"], 1);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .starts_with("the server is out of request memory"),
            "{reply}"
        );
        // The same request as a text command never decodes its params.
        let reply = call(&mut s, 2, "version", json!(zeros));
        assert_eq!(
            reply["error"],
            "\"version\" command takes at most 0 arguments\n"
        );
        assert_eq!(call(&mut s, 3, "count", json!([1, 2, 3]))["result"], 3);
        // Between requests only the connection's buffer stays charged.
        assert!(server.shared.budget.in_use() <= 1 << 20);
        drop(s);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while server.shared.budget.in_use() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the closed connection's charge was not released within 30 s"
            );
            thread::yield_now();
        }
    }

    #[test]
    fn buffered_bytes_beyond_the_budget_close_that_connection_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::with_path(dir.path().join("s.ctl"));
        cfg.max_message_bytes = 4 << 20;
        cfg.max_bytes_in_flight = 4 << 20;
        let server = CtlServer::start(cfg, budget_registry(), || {}).unwrap();
        let budget = server.shared.budget.clone();
        // A partial request of 1.5 MB holds half the budget (its buffer
        // has grown to 2 MiB).
        let mut holder = UnixStream::connect(server.path()).unwrap();
        let head = br#"{"id":1,"method":"echo","params":[""#;
        holder.write_all(head).unwrap();
        holder.write_all(&vec![b'x'; 1_500_000]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while budget.in_use() < 2 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not buffer the partial request within 30 s"
            );
            thread::yield_now();
        }
        // Another 2.5 MB partial request does not fit: error and close.
        let mut greedy = UnixStream::connect(server.path()).unwrap();
        let _ = greedy.write_all(head);
        let _ = greedy.write_all(&vec![b'y'; 2_500_000]);
        let reply = read_reply(&mut greedy);
        assert!(
            reply["error"]
                .as_str()
                .unwrap()
                .contains("out of request memory"),
            "{reply}"
        );
        assert_closed(&mut greedy);
        // Small requests still fit and are served.
        let mut small = UnixStream::connect(server.path()).unwrap();
        assert_eq!(call(&mut small, 1, "echo", json!(["ok"]))["result"], "ok\n");
        // The holder completes its request and the budget is given back.
        holder.write_all(br#""]}"#).unwrap();
        let reply = read_reply(&mut holder);
        assert_eq!(reply["result"].as_str().unwrap().len(), 1_500_001);
        drop(holder);
        drop(small);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while budget.in_use() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} bytes still charged 30 s after every request completed",
                budget.in_use()
            );
            thread::yield_now();
        }
    }

    #[test]
    fn budget_smaller_than_a_message_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::with_path(dir.path().join("s.ctl"));
        cfg.max_bytes_in_flight = cfg.max_message_bytes - 1;
        let err = CtlServer::start(cfg, Registry::new(), || {}).unwrap_err();
        assert!(err.to_string().contains("max_bytes_in_flight"), "{err}");
    }
}
