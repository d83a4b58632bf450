//! A self-healing monitor: keeps a [`Replica`] of selected tables in sync
//! with the server and reports row changes, across server restarts.
//!
//! A [`Monitor`] owns one background thread that connects, fetches the
//! schema, and issues `monitor_cond_since` with the last transaction id it
//! saw. If the server finds that id (`found = true`) only the changes since
//! are applied ("resumed"); otherwise the reply is a full dump, and the
//! replica is replaced by it, with the difference reported as changes so the
//! consumer still sees rows deleted while it was away. Servers without
//! `monitor_cond_since` get `monitor_cond` (update2), and servers without
//! that get `monitor` (update1). After a disconnect the thread reconnects
//! with exponential backoff, capped, with jitter from a seedable RNG; while
//! connected it probes a quiet server with `echo`. Row filters can be
//! changed at runtime ([`Monitor::set_conditions`], `monitor_cond_change`);
//! the handle talks to the thread only through channels, so every protocol
//! exchange happens on the thread that owns the session.
//!
//! Invariants: the replica only changes by whole updates (see
//! [`Replica`]); an update that cannot be applied forces a reconnect with a
//! full dump (the last transaction id is forgotten). Events reach each
//! subscriber in the order the changes were applied.
//!
//! Thread-safety: `Monitor` is `Send + Sync`. The replica and status live
//! behind one mutex; [`Monitor::wait_until`] sleeps on a condition variable
//! signalled after every change. Dropping the monitor stops the thread and
//! closes its connection.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver, Sender};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::error::{ClientError, Error, Result};
use crate::jsonrpc::{Connection, Notification, Remote};
use crate::replica::{Replica, RowChange};
use ovsdb_core::{Condition, Schema, Uuid};

/// Updates of at least this many rows have their application time logged
/// (at `debug`).
const LARGE_UPDATE_ROWS: usize = 1000;

/// The monitor id this client uses on every connection.
const MONITOR_ID: &str = "nestdb-client";

/// Which monitor method to try first; the monitor falls back to the next
/// older method when the server answers "unknown method".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MonitorMethod {
    /// `monitor_cond_since` + `update3`: can resume after reconnecting.
    #[default]
    CondSince,
    /// `monitor_cond` + `update2`.
    Cond,
    /// RFC 7047 `monitor` + `update`.
    Plain,
}

impl MonitorMethod {
    fn name(self) -> &'static str {
        match self {
            MonitorMethod::CondSince => "monitor_cond_since",
            MonitorMethod::Cond => "monitor_cond",
            MonitorMethod::Plain => "monitor",
        }
    }

    fn older(self) -> Option<Self> {
        match self {
            MonitorMethod::CondSince => Some(MonitorMethod::Cond),
            MonitorMethod::Cond => Some(MonitorMethod::Plain),
            MonitorMethod::Plain => None,
        }
    }
}

/// What to monitor in one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableMonitor {
    /// Columns to replicate; `None` means all.
    pub columns: Option<Vec<String>>,
    /// Only replicate rows matching all of these (conditional monitoring;
    /// not available with [`MonitorMethod::Plain`]).
    pub conditions: Option<Vec<Condition>>,
}

/// Reconnect backoff: the n-th consecutive failure waits a uniformly random
/// time in `[d/2, d]` where `d = min(max, initial * 2^n)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
    /// RNG seed for the jitter; `None` picks a random one.
    pub seed: Option<u64>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(8),
            seed: None,
        }
    }
}

/// SplitMix64: tiny, seedable, good enough for jitter.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Exponential backoff with a cap and jitter. Deterministic for a given
/// seed, which is what tests rely on.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff in its initial state.
    pub fn new(config: BackoffConfig) -> Self {
        let seed = config
            .seed
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
        Backoff {
            config,
            failures: 0,
            rng: SplitMix64(seed),
        }
    }

    /// The delay before the next attempt; each call counts one failure.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        let base = self
            .config
            .initial
            .checked_mul(factor)
            .unwrap_or(self.config.max)
            .min(self.config.max);
        self.failures = self.failures.saturating_add(1);
        let half = base / 2;
        let span = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 {
            0
        } else {
            self.rng.next_u64() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Forget past failures (after a successful connection).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Configuration of a [`Monitor`].
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// `unix:PATH` or `tcp:HOST:PORT`.
    pub remote: String,
    /// Database name.
    pub db: String,
    /// Tables to replicate.
    pub tables: BTreeMap<String, TableMonitor>,
    /// Preferred method (falls back automatically).
    pub method: MonitorMethod,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Bound on each request (connect, get_schema, monitor).
    pub request_timeout: Duration,
    /// Send an `echo` after this long without any message from the server,
    /// and reconnect if it is not answered within `request_timeout`.
    /// `None` disables probing.
    pub probe_interval: Option<Duration>,
}

impl MonitorConfig {
    /// Monitor all columns of `tables` of `db` at `remote`, with defaults.
    pub fn new(remote: impl Into<String>, db: impl Into<String>, tables: &[&str]) -> Self {
        MonitorConfig {
            remote: remote.into(),
            db: db.into(),
            tables: tables
                .iter()
                .map(|t| ((*t).to_owned(), TableMonitor::default()))
                .collect(),
            method: MonitorMethod::default(),
            backoff: BackoffConfig::default(),
            request_timeout: crate::client::DEFAULT_REQUEST_TIMEOUT,
            probe_interval: Some(Duration::from_secs(5)),
        }
    }
}

/// Connection state and counters of a [`Monitor`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonitorStatus {
    /// True while a monitor session is established and in sync.
    pub connected: bool,
    /// Sessions established so far.
    pub sessions: u64,
    /// Sessions that resumed from the last transaction id.
    pub resumes: u64,
    /// Sessions that received a full dump.
    pub full_dumps: u64,
    /// Whether the most recent session resumed (`None` before the first).
    pub last_resumed: Option<bool>,
    /// The last transaction id seen (monitor_cond_since only).
    pub last_txn_id: Option<Uuid>,
    /// The method the current or last session used.
    pub method: Option<MonitorMethod>,
    /// Why the last session ended or failed to start.
    pub last_error: Option<String>,
}

/// A notification to subscribers of a [`Monitor`].
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// Rows changed; one batch per server update (normally one
    /// transaction), or the difference a full dump made.
    Changes(Vec<RowChange>),
    /// A session is established and the replica is in sync; `resumed`
    /// says whether only the changes since the last session were sent.
    Synced {
        /// True if the server resumed from our last transaction id.
        resumed: bool,
    },
    /// The connection was lost; the monitor is reconnecting.
    Disconnected {
        /// What happened.
        reason: String,
    },
}

#[derive(Debug, Default)]
struct State {
    replica: Replica,
    status: MonitorStatus,
    subscribers: Vec<Sender<MonitorEvent>>,
    /// The live connection, so `stop` can unblock the thread.
    conn: Option<Arc<Connection>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Sends `ev` to every subscriber, dropping those that went away. The
    /// last one gets `ev` itself and the others a copy (an update of a
    /// large transaction carries every row: no copy for a lone subscriber).
    fn emit(&mut self, ev: MonitorEvent) {
        let Some((last, others)) = self.subscribers.split_last() else {
            return;
        };
        let mut gone: Vec<bool> = others.iter().map(|s| s.send(ev.clone()).is_err()).collect();
        gone.push(last.send(ev).is_err());
        let mut gone = gone.into_iter();
        self.subscribers.retain(|_| !gone.next().unwrap_or(false));
    }
}

/// A running monitor. See the module docs.
#[derive(Debug)]
pub struct Monitor {
    shared: Arc<Shared>,
    tables: Vec<String>,
    commands: Sender<Command>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Validate `config` and start the monitor thread. Connection problems
    /// are not errors here: the thread keeps retrying and reports them in
    /// [`Monitor::status`] and as [`MonitorEvent::Disconnected`].
    pub fn start(config: MonitorConfig) -> Result<Monitor> {
        let remote: Remote = config.remote.parse()?;
        if config.tables.is_empty() {
            return Err(Error::InvalidTransaction(
                "a monitor needs at least one table".into(),
            ));
        }
        if config.backoff.initial.is_zero() || config.backoff.max < config.backoff.initial {
            return Err(Error::InvalidTransaction(
                "backoff needs 0 < initial <= max".into(),
            ));
        }
        let shared = Arc::new(Shared::default());
        let tables = config.tables.keys().cloned().collect();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let (cmd_tx, cmd_rx) = unbounded();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("nestdb-monitor".into())
                .spawn(move || Worker::new(config, remote, shared, stop_rx, cmd_rx).run())
                .map_err(|source| {
                    Error::Connection(ClientError::Io {
                        remote: "monitor thread".into(),
                        source,
                    })
                })?
        };
        Ok(Monitor {
            shared,
            tables,
            commands: cmd_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Replace the row filter of a monitored `table` (`None`: all rows).
    /// Takes effect asynchronously: on a live `monitor_cond[_since]`
    /// session through `monitor_cond_change` (rows entering the filter
    /// arrive as inserts, rows leaving it as deletes), otherwise at the next
    /// session. Use [`Monitor::wait_until`] to wait for the result.
    pub fn set_conditions(&self, table: &str, conditions: Option<Vec<Condition>>) -> Result<()> {
        if !self.tables.iter().any(|t| t == table) {
            return Err(Error::InvalidTransaction(format!(
                "table \"{table}\" is not monitored; monitored tables: {}",
                self.tables.join(", ")
            )));
        }
        self.commands
            .send(Command::SetConditions {
                table: table.to_owned(),
                conditions,
            })
            .map_err(|_| {
                Error::Connection(ClientError::Disconnected(
                    "the monitor thread (it was stopped)".into(),
                ))
            })
    }

    /// A new channel of events from now on. Subscribe before the first
    /// [`MonitorEvent::Synced`] to see the initial rows as inserts. The
    /// channel is unbounded so the monitor never blocks on a slow consumer;
    /// drop the receiver to unsubscribe. For a callback style, run
    /// `for ev in rx.iter() { … }` on a thread of your own.
    pub fn subscribe(&self) -> Receiver<MonitorEvent> {
        let (tx, rx) = unbounded();
        self.shared.lock().subscribers.push(tx);
        rx
    }

    /// Run `f` on the replica under the lock (keep it short: updates wait).
    pub fn with_replica<R>(&self, f: impl FnOnce(&Replica) -> R) -> R {
        f(&self.shared.lock().replica)
    }

    /// A copy of the replica.
    pub fn snapshot(&self) -> Replica {
        self.shared.lock().replica.clone()
    }

    /// Current status.
    pub fn status(&self) -> MonitorStatus {
        self.shared.lock().status.clone()
    }

    /// Block until `pred(replica, status)` holds or `timeout` passes. The
    /// predicate is re-evaluated after every change.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Replica, &MonitorStatus) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if pred(&state.replica, &state.status) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NotConverged {
                    after: timeout,
                    connected: state.status.connected,
                    last_error: state
                        .status
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "none".into()),
                });
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Stop the monitor thread and close its connection.
    pub fn stop(&mut self) {
        // Dropping the sender wakes the thread wherever it waits.
        self.stop.take();
        if let Some(conn) = self.shared.lock().conn.take() {
            conn.close();
        }
        if let Some(h) = self.thread.take() {
            // The worker does not panic on any input; nothing to report.
            let _ = h.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

enum SessionEnd {
    Stopped,
    Lost(String),
}

/// Requests from the [`Monitor`] handle to its thread.
#[derive(Debug)]
enum Command {
    SetConditions {
        table: String,
        conditions: Option<Vec<Condition>>,
    },
}

struct Worker {
    config: MonitorConfig,
    remote: Remote,
    shared: Arc<Shared>,
    stop: Receiver<()>,
    commands: Receiver<Command>,
    method: MonitorMethod,
    last_txn_id: Option<Uuid>,
}

impl Worker {
    fn new(
        config: MonitorConfig,
        remote: Remote,
        shared: Arc<Shared>,
        stop: Receiver<()>,
        commands: Receiver<Command>,
    ) -> Self {
        Worker {
            method: config.method,
            config,
            remote,
            shared,
            stop,
            commands,
            last_txn_id: None,
        }
    }

    fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff.clone());
        loop {
            let (end, synced) = self.session();
            let reason = match end {
                SessionEnd::Stopped => break,
                SessionEnd::Lost(reason) => reason,
            };
            if synced {
                backoff.reset();
            }
            {
                let mut st = self.shared.lock();
                st.conn = None;
                let was_connected = std::mem::replace(&mut st.status.connected, false);
                st.status.last_error = Some(reason.clone());
                if was_connected {
                    st.emit(MonitorEvent::Disconnected {
                        reason: reason.clone(),
                    });
                }
                self.shared.changed.notify_all();
            }
            let delay = backoff.next_delay();
            tracing::info!(remote = %self.remote, %reason, ?delay, "monitor session ended; reconnecting");
            if self.pause(delay) {
                break;
            }
        }
    }

    /// Wait out a backoff delay, taking commands meanwhile. True if stopped.
    fn pause(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            select! {
                recv(self.stop) -> _ => return true,
                recv(self.commands) -> cmd => match cmd {
                    Ok(cmd) => self.record(cmd),
                    Err(_) => return true,
                },
                default(left) => return false,
            }
        }
    }

    /// Store a command's effect in the configuration for later sessions.
    fn record(&mut self, cmd: Command) {
        match cmd {
            Command::SetConditions { table, conditions } => {
                if let Some(tm) = self.config.tables.get_mut(&table) {
                    tm.conditions = conditions;
                }
                // A resumed session would not resend rows that only now
                // match; the next session must start from a full dump.
                self.last_txn_id = None;
            }
        }
    }

    /// Apply a command on the live session.
    fn execute(&mut self, conn: &Connection, cmd: Command) -> Result<()> {
        let Command::SetConditions { table, conditions } = &cmd;
        let request = json!({ table.clone(): [{
            "where": conditions.as_deref().map_or_else(|| json!([true]), Condition::all_to_json)
        }]});
        self.record(cmd);
        if self.method == MonitorMethod::Plain {
            let msg = "the server only supports plain \"monitor\", which cannot filter rows";
            self.shared.lock().status.last_error = Some(msg.into());
            return Ok(());
        }
        conn.call(
            "monitor_cond_change",
            json!([MONITOR_ID, MONITOR_ID, request]),
        )
        .map(drop)
    }

    /// One connection's life. Returns how it ended and whether it got in
    /// sync (which resets the backoff).
    fn session(&mut self) -> (SessionEnd, bool) {
        let (conn, notes) = match Connection::open(&self.remote, self.config.request_timeout) {
            Ok(c) => c,
            Err(e) => return (SessionEnd::Lost(e.to_string()), false),
        };
        let conn = Arc::new(conn);
        {
            let mut st = self.shared.lock();
            if self.stop_requested() {
                return (SessionEnd::Stopped, false);
            }
            st.conn = Some(Arc::clone(&conn));
        }
        if let Err(e) = self.start_monitor(&conn) {
            if self.stop_requested() {
                return (SessionEnd::Stopped, false);
            }
            return (SessionEnd::Lost(e.to_string()), false);
        }
        // No probing means waiting (practically) forever between messages.
        let probe = self
            .config
            .probe_interval
            .unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
        loop {
            select! {
                recv(self.stop) -> _ => return (SessionEnd::Stopped, true),
                recv(self.commands) -> cmd => match cmd {
                    Ok(cmd) => {
                        if let Err(e) = self.execute(&conn, cmd) {
                            let reason = format!("changing monitor conditions failed: {e}");
                            return (SessionEnd::Lost(reason), true);
                        }
                    }
                    Err(_) => return (SessionEnd::Stopped, true),
                },
                recv(notes) -> n => match n {
                    Ok(n) => {
                        if let Err(e) = self.handle(&n) {
                            // Our replica may now be wrong: resync in full.
                            self.last_txn_id = None;
                            return (SessionEnd::Lost(e.to_string()), true);
                        }
                    }
                    Err(_) => {
                        return (
                            SessionEnd::Lost(format!("the connection to {} closed", self.remote)),
                            true,
                        )
                    }
                },
                default(probe) => {
                    // Quiet for a whole interval: make sure the peer is alive
                    // (a dead TCP peer otherwise goes unnoticed for hours).
                    if let Err(e) = conn.call("echo", json!(["nestdb-client probe"])) {
                        if self.stop_requested() {
                            return (SessionEnd::Stopped, true);
                        }
                        let reason = format!("the server stopped answering echo probes: {e}");
                        return (SessionEnd::Lost(reason), true);
                    }
                }
            }
        }
    }

    fn stop_requested(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected) | Ok(())
        )
    }

    fn requests(&self, method: MonitorMethod) -> Result<Value> {
        let mut reqs = Map::new();
        for (t, tm) in &self.config.tables {
            let mut r = Map::new();
            if let Some(c) = &tm.columns {
                r.insert("columns".into(), json!(c));
            }
            if let Some(conds) = &tm.conditions {
                if method == MonitorMethod::Plain {
                    return Err(Error::InvalidTransaction(format!(
                        "table {t} has monitor conditions but the server only supports plain \"monitor\""
                    )));
                }
                r.insert("where".into(), Condition::all_to_json(conds));
            }
            reqs.insert(t.clone(), Value::Array(vec![Value::Object(r)]));
        }
        Ok(Value::Object(reqs))
    }

    fn start_monitor(&mut self, conn: &Connection) -> Result<()> {
        let schema = Arc::new(
            conn.call("get_schema", json!([self.config.db]))
                .and_then(|v| Schema::from_json(&v).map_err(|e| Error::Schema(e.to_string())))?,
        );
        let tables: BTreeMap<String, Option<Vec<String>>> = self
            .config
            .tables
            .iter()
            .map(|(t, m)| (t.clone(), m.columns.clone()))
            .collect();
        self.shared.lock().replica.configure(schema, &tables)?;
        loop {
            let method = self.method;
            let reqs = self.requests(method)?;
            let db = &self.config.db;
            let params = match method {
                MonitorMethod::CondSince => {
                    let since = self.last_txn_id.unwrap_or(Uuid::NIL).to_string();
                    json!([db, MONITOR_ID, reqs, since])
                }
                _ => json!([db, MONITOR_ID, reqs]),
            };
            let reply = match conn.call(method.name(), params) {
                Err(Error::Rpc { error, .. }) if error.tag.contains("unknown method") => {
                    match method.older() {
                        Some(older) => {
                            tracing::info!(
                                method = method.name(),
                                "server lacks monitor method; falling back"
                            );
                            self.method = older;
                            continue;
                        }
                        None => {
                            return Err(Error::Rpc {
                                method: method.name().into(),
                                error,
                            })
                        }
                    }
                }
                other => other?,
            };
            return self.apply_initial(method, &reply);
        }
    }

    fn apply_initial(&mut self, method: MonitorMethod, reply: &Value) -> Result<()> {
        let mut st = self.shared.lock();
        let (resumed, changes) = match method {
            MonitorMethod::CondSince => {
                let (found, last, updates) = match reply.as_array().map(Vec::as_slice) {
                    Some([Value::Bool(f), Value::String(l), u]) => (*f, l.parse::<Uuid>()?, u),
                    _ => {
                        return Err(Error::Protocol(format!(
                            "monitor_cond_since reply must be [found, last-txn-id, updates], got {reply}"
                        )))
                    }
                };
                // Only trust "found" if we asked for a real id.
                let resumed = found && self.last_txn_id.is_some();
                let changes = if resumed {
                    st.replica.apply_updates2(updates)?
                } else {
                    st.replica.replace_with_dump(updates, false)?
                };
                self.last_txn_id = (last != Uuid::NIL).then_some(last);
                (resumed, changes)
            }
            MonitorMethod::Cond => (false, st.replica.replace_with_dump(reply, false)?),
            MonitorMethod::Plain => (false, st.replica.replace_with_dump(reply, true)?),
        };
        let status = &mut st.status;
        status.connected = true;
        status.sessions += 1;
        if resumed {
            status.resumes += 1;
        } else {
            status.full_dumps += 1;
        }
        status.last_resumed = Some(resumed);
        status.last_txn_id = self.last_txn_id;
        status.method = Some(method);
        status.last_error = None;
        if !changes.is_empty() {
            st.emit(MonitorEvent::Changes(changes));
        }
        st.emit(MonitorEvent::Synced { resumed });
        self.shared.changed.notify_all();
        tracing::info!(remote = %self.remote, method = method.name(), resumed, "monitor in sync");
        Ok(())
    }

    fn handle(&mut self, n: &Notification) -> Result<()> {
        let t = Instant::now();
        let decoded;
        let params = match &n.raw_params {
            // A large update: its rows go straight from the text into the
            // replica; anything else is decoded first.
            Some(raw) => match self.handle_text(&n.method, raw.get(), t) {
                Some(done) => return done,
                None => {
                    decoded = serde_json::from_str::<Value>(raw.get())
                        .map_err(|e| Error::Protocol(format!("{} notification: {e}", n.method)))?;
                    &decoded
                }
            },
            None => &n.params,
        };
        let params = params.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let mut st = self.shared.lock();
        let changes = match (n.method.as_str(), params) {
            ("update3", [id, last, updates]) if id == MONITOR_ID => {
                let last: Uuid = last
                    .as_str()
                    .ok_or_else(|| {
                        Error::Protocol(format!("update3 last-txn-id {last} is not a string"))
                    })?
                    .parse()?;
                let ch = st.replica.apply_updates2(updates)?;
                self.last_txn_id = (last != Uuid::NIL).then_some(last);
                st.status.last_txn_id = self.last_txn_id;
                ch
            }
            ("update2", [id, updates]) if id == MONITOR_ID => st.replica.apply_updates2(updates)?,
            ("update", [id, updates]) if id == MONITOR_ID => st.replica.apply_updates1(updates)?,
            ("monitor_canceled", _) => {
                return Err(Error::Protocol(
                    "the server canceled the monitor (database removed or schema changed)".into(),
                ))
            }
            ("update" | "update2" | "update3", _) => {
                return Err(Error::Protocol(format!(
                    "malformed {} notification: {}",
                    n.method,
                    Value::Array(params.to_vec())
                )))
            }
            _ => return Ok(()),
        };
        self.publish(st, changes, t);
        Ok(())
    }

    /// Reports what an update changed (after it was applied at `t`).
    fn publish(&self, mut st: MutexGuard<'_, State>, changes: Vec<RowChange>, t: Instant) {
        if changes.len() >= LARGE_UPDATE_ROWS {
            tracing::debug!(
                rows = changes.len(),
                apply_ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1e3),
                "large update applied to the replica"
            );
        }
        if !changes.is_empty() {
            st.emit(MonitorEvent::Changes(changes));
        }
        self.shared.changed.notify_all();
    }

    /// An `update3`/`update2` of this monitor given as text
    /// ([`Notification::raw_params`]), applied straight from it; `None`
    /// when it is something else (decoded and handled as a `Value`).
    fn handle_text(&mut self, method: &str, params: &str, t: Instant) -> Option<Result<()>> {
        let (updates, last) = match method {
            "update3" => {
                let (id, last, updates): (String, String, &RawValue) =
                    serde_json::from_str(params).ok()?;
                (id == MONITOR_ID).then_some((updates, Some(last)))?
            }
            "update2" => {
                let (id, updates): (String, &RawValue) = serde_json::from_str(params).ok()?;
                (id == MONITOR_ID).then_some((updates, None))?
            }
            _ => return None,
        };
        let last: Option<Uuid> = match last.map(|l| l.parse::<Uuid>()) {
            Some(Ok(l)) => Some(l),
            Some(Err(_)) => return None,
            None => None,
        };
        let mut st = self.shared.lock();
        let changes = match st.replica.apply_updates2_text(updates.get()) {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        if let Some(last) = last {
            self.last_txn_id = (last != Uuid::NIL).then_some(last);
            st.status.last_txn_id = self.last_txn_id;
        }
        self.publish(st, changes, t);
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_deterministically() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            seed: Some(7),
        };
        let mut a = Backoff::new(cfg.clone());
        let mut b = Backoff::new(cfg);
        let da: Vec<_> = (0..12).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..12).map(|_| b.next_delay()).collect();
        assert_eq!(da, db, "same seed, same delays");
        for (i, d) in da.iter().enumerate() {
            let base = Duration::from_millis(100 * (1u64 << i.min(20))).min(Duration::from_secs(1));
            assert!(
                *d >= base / 2 && *d <= base,
                "attempt {i}: {d:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        assert!(da[4..].iter().all(|d| *d <= Duration::from_secs(1)));
        a.reset();
        assert!(a.next_delay() <= Duration::from_millis(100));
        let mut c = Backoff::new(BackoffConfig {
            seed: Some(8),
            ..BackoffConfig::default()
        });
        let dc: Vec<_> = (0..12).map(|_| c.next_delay()).collect();
        assert_ne!(da, dc, "different seeds give different jitter");
    }

    #[test]
    fn start_rejects_bad_config() {
        let mut cfg = MonitorConfig::new("nonsense", "D", &["T"]);
        assert!(matches!(
            Monitor::start(cfg.clone()),
            Err(Error::InvalidRemote(_))
        ));
        cfg.remote = "unix:/nonexistent/sock".into();
        cfg.tables.clear();
        assert!(Monitor::start(cfg).is_err());
    }

    #[test]
    fn unreachable_server_is_reported_and_stop_is_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = MonitorConfig::new(
            format!("unix:{}", dir.path().join("absent.sock").display()),
            "D",
            &["T"],
        );
        cfg.backoff.seed = Some(1);
        let mut m = Monitor::start(cfg).unwrap();
        m.wait_until(Duration::from_secs(60), |_, s| s.last_error.is_some())
            .unwrap();
        let err = m.status().last_error.unwrap();
        assert!(err.contains("could not connect"), "{err}");
        assert!(!m.status().connected);
        m.stop();
    }
}
