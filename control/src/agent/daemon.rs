//! `sluice-agent`'s loop: the I/O around the [`Reconciler`].
//!
//! One thread owns everything. It waits for the nestdb [`Monitor`]'s events
//! (or a timer), and then runs one round:
//!
//! 1. the database changed: under the monitor's lock, drain the row-change
//!    batches that reached the replica and read the `Logical_Port` and
//!    `Node_Status` rows and the transaction id they reflect (O(pods)); a
//!    burst of updates is drained at once, so the round works from the
//!    latest state, not every intermediate one. Only the first plan takes
//!    a whole snapshot of the rows (and drops the batches it contains);
//! 2. poll `sluiced`'s `node-status` (every `status_interval`, faster while
//!    a pod port is not forwarding yet); when its instance id or generation
//!    is not the held one, read `node-program` and hold that;
//! 3. plan: the first time, compile every row and diff against the held
//!    program; after that, feed the drained batches to the reconciler's
//!    incremental compiler, whose changes are the commit while `sluiced`
//!    holds what the agent last committed (a diff against `node-program`
//!    only after a `sluiced` restart, a foreign generation or a failed
//!    commit). The commit is one `node-commit`, or, when its JSON passes
//!    [`AgentConfig::max_commit_bytes`], several that are each valid on
//!    their own ([`super::chunk`]). Nothing is sent when it is empty. A
//!    refused commit whose
//!    `node-status` shows another generation or instance is a conflict: read
//!    again and re-plan. A refusal at a pod port leaves that
//!    `Logical_Port` out (its row error says why) and re-plans at once, so
//!    the rest applies. Any other refusal is recorded in
//!    `Node_Status.commit_error` and retried with backoff;
//! 4. write back the status rows that differ (`Node_Status`,
//!    `Logical_Port.dp_port`/`up`; nothing between a commit and the next
//!    `node-status`) and wait (bounded) until the monitor shows them, so
//!    the next round does not write them again.
//!
//! Unreachable sockets never end the loop: each state change is logged
//! once and the call retried with capped backoff. The monitor reconnects to
//! nestdb-server by itself and resumes from its last transaction id.
//!
//! Thread-safety: [`run`] blocks its thread; the monitor runs its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use crossbeam_channel::RecvTimeoutError;
use nestdb_client::node::{NodeStatus as StatusRow, DB};
use nestdb_client::{
    Backoff, BackoffConfig, Client as DbClient, Condition, Datum, Monitor, MonitorConfig,
    MonitorEvent, Replica, RowChange, TableRow, Transaction, Uuid,
};
use sluice_api::node::{
    NodeChanges, NodeCommit, NodeCommitReply, QueryNodeProgram, QueryNodeStatus,
};
use sluice_api::{Client, ClientError, Empty, Method};
use tracing::{debug, info, warn};

use crate::agent::reconcile::{refused_port, Reconciler, Snapshot, StatusWrite};
use crate::agent::startup::AgentError;

/// The tables the agent monitors.
pub const TABLES: &[&str] = &[
    "Node_Config",
    "Logical_Port",
    "Service",
    "Service_Port",
    "Endpoint",
    "Remote_Node",
    "Node_Status",
];

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// nestdb remote (`unix:PATH` or `tcp:HOST:PORT`).
    pub db: String,
    /// `sluiced`'s control socket.
    pub ctl: PathBuf,
    /// How often `node-status` is polled.
    pub status_interval: Duration,
    /// How often while a pod port is not forwarding yet.
    pub pending_interval: Duration,
    /// The longest wait between retries of an unreachable socket or a
    /// refused commit.
    pub retry_max: Duration,
    /// Bound on one `sluiced` call.
    pub call_timeout: Duration,
    /// Bound on waiting for the monitor to show the agent's own writes.
    pub write_settle: Duration,
    /// Largest JSON a single `node-commit` may carry; a bigger change set
    /// is sent as several commits ([`super::chunk::split`]). Default
    /// [`super::chunk::DEFAULT_MAX_COMMIT_BYTES`], half of `sluiced`'s
    /// request limit.
    pub max_commit_bytes: usize,
    /// Where the metrics go (the endpoint renders them).
    pub metrics: std::sync::Arc<super::metrics::AgentMetrics>,
}

impl AgentConfig {
    /// The defaults for `db` and `ctl`.
    pub fn new(db: impl Into<String>, ctl: impl Into<PathBuf>) -> Self {
        AgentConfig {
            db: db.into(),
            ctl: ctl.into(),
            status_interval: Duration::from_secs(1),
            pending_interval: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            write_settle: Duration::from_secs(5),
            max_commit_bytes: super::chunk::DEFAULT_MAX_COMMIT_BYTES,
            metrics: Default::default(),
        }
    }
}

fn backoff(max: Duration) -> Backoff {
    Backoff::new(BackoffConfig {
        initial: Duration::from_millis(100),
        max,
        seed: None,
    })
}

/// `sluiced`'s control socket: one kept connection, reachability logged
/// once per change, retries with backoff.
struct Sluiced {
    path: PathBuf,
    timeout: Duration,
    retry_max: Duration,
    client: Option<Client>,
    /// `None` before the first call.
    reachable: Option<bool>,
    backoff: Backoff,
    retry_at: Instant,
}

impl Sluiced {
    fn call<M: Method>(&mut self, req: &M::Request) -> Result<M::Reply, ClientError> {
        let r = self.connected().and_then(|c| c.call::<M>(req));
        self.note(&r);
        r
    }

    /// Records a call's outcome: reachability (logged once per change)
    /// and the backoff.
    fn note<T>(&mut self, r: &Result<T, ClientError>) {
        match r {
            Ok(_) | Err(ClientError::Api(_)) => {
                if self.reachable == Some(false) {
                    info!(socket = %self.path.display(), "sluiced is reachable again");
                }
                self.reachable = Some(true);
                self.backoff.reset();
            }
            Err(e) => {
                self.client = None;
                if self.reachable != Some(false) {
                    warn!(socket = %self.path.display(), "sluiced is unreachable: {e}; retrying with backoff (up to {:?})", self.backoff_max());
                }
                self.reachable = Some(false);
                self.retry_at = Instant::now() + self.backoff.next_delay();
            }
        }
    }

    /// [`Sluiced::call`] with the request already JSON text.
    fn call_encoded<M: Method>(&mut self, params: &[u8]) -> Result<M::Reply, ClientError> {
        let r = self.connected().and_then(|c| c.call_encoded::<M>(params));
        self.note(&r);
        r
    }

    fn backoff_max(&self) -> Duration {
        self.retry_max
    }

    /// The kept connection, made if there is none.
    fn connected(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            let mut c = Client::connect(&self.path)?;
            c.set_timeout(Some(self.timeout))?;
            self.client = Some(c);
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => unreachable!("connected just above"),
        }
    }
}

/// The nestdb connection used for status writes.
struct Writer {
    remote: String,
    client: Option<DbClient>,
    reachable: Option<bool>,
    retry_at: Instant,
    backoff: Backoff,
}

impl Writer {
    fn transact(&mut self, txn: &Transaction) -> Result<(), String> {
        let r = (|| {
            if self.client.as_ref().is_none_or(DbClient::is_closed) {
                self.client = Some(DbClient::connect(&self.remote).map_err(|e| e.to_string())?);
            }
            let c = self.client.as_ref().ok_or("not connected")?;
            c.transact(txn).map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        })();
        match &r {
            Ok(()) => {
                if self.reachable == Some(false) {
                    info!(remote = %self.remote, "status writes to nestdb work again");
                }
                self.reachable = Some(true);
                self.backoff.reset();
            }
            Err(e) => {
                self.client = None;
                if self.reachable != Some(false) {
                    warn!(remote = %self.remote, "cannot write the status into nestdb: {e}; retrying");
                }
                self.reachable = Some(false);
                self.retry_at = Instant::now() + self.backoff.next_delay();
            }
        }
        r
    }
}

/// The loop's state besides the reconciler.
struct Loop {
    config: AgentConfig,
    sluiced: Sluiced,
    writer: Writer,
    /// In sync with nestdb at least once.
    synced: bool,
    db_reachable: bool,
    /// Monitor events since the last snapshot.
    db_changed: bool,
    /// The `Logical_Port` and `Node_Status` rows and the transaction id,
    /// as of the last drain.
    snap: Option<Snapshot>,
    /// Row-change batches drained and not yet given to the reconciler
    /// (kept only once the rows were loaded: before that the whole
    /// snapshot of the first plan holds them).
    pending: Vec<RowChange>,
    /// The first plan loaded every row.
    loaded: bool,
    events: Receiver<MonitorEvent>,
    need_plan: bool,
    /// The last `node-status`; `None` also right after a commit, until it
    /// is read again (so no port state from before the commit is written).
    status: Option<sluice_api::node::NodeStatus>,
    next_poll: Instant,
    commit_retry_at: Instant,
    commit_backoff: Backoff,
    last_refusal: Option<String>,
    /// The last error answer to a query (logged once).
    last_query_error: Option<String>,
    /// Logged "up to date" for this held state.
    said_up_to_date: bool,
    /// When the first database change not yet committed arrived.
    dirty_since: Option<Instant>,
    /// When a large batch was committed, until the status write that
    /// follows it (whose time is then logged).
    large_status: Option<Instant>,
    /// A large batch, the first whole compile, a read of `sluiced`'s whole
    /// program or a full resynchronisation of the monitor happened: its
    /// transient memory goes back to the system after the round (glibc
    /// keeps freed memory otherwise: the resident size would stay at that
    /// operation's high-water mark for good).
    trim_heap: bool,
}

/// Runs the agent until `stop` is set (checked at least every
/// `status_interval`). Transient failures never end it.
pub fn run(config: AgentConfig, stop: &AtomicBool) -> Result<(), AgentError> {
    let mut mc = MonitorConfig::new(config.db.clone(), DB, TABLES);
    mc.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: config.retry_max,
        seed: None,
    };
    let monitor = Monitor::start(mc)?;
    let events = monitor.subscribe();
    let now = Instant::now();
    let mut lp = Loop {
        sluiced: Sluiced {
            path: config.ctl.clone(),
            timeout: config.call_timeout,
            retry_max: config.retry_max,
            client: None,
            reachable: None,
            backoff: backoff(config.retry_max),
            retry_at: now,
        },
        writer: Writer {
            remote: config.db.clone(),
            client: None,
            reachable: None,
            retry_at: now,
            backoff: backoff(config.retry_max),
        },
        synced: false,
        db_reachable: true,
        db_changed: true,
        snap: None,
        pending: Vec::new(),
        loaded: false,
        events,
        need_plan: true,
        status: None,
        next_poll: now,
        commit_retry_at: now,
        commit_backoff: backoff(config.retry_max),
        last_refusal: None,
        last_query_error: None,
        said_up_to_date: false,
        dirty_since: None,
        large_status: None,
        trim_heap: false,
        config,
    };
    let mut rec = Reconciler::new();
    info!(db = %lp.config.db, ctl = %lp.config.ctl.display(), "sluice-agent started: monitoring the node database");
    while !stop.load(Ordering::Relaxed) {
        let wait = lp
            .next_wake()
            .saturating_duration_since(Instant::now())
            .min(lp.config.status_interval);
        match lp.events.recv_timeout(wait) {
            Ok(ev) => {
                lp.on_event(ev, &monitor);
                while let Ok(ev) = lp.events.try_recv() {
                    lp.on_event(ev, &monitor);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(AgentError::MonitorStopped),
        }
        if lp.synced {
            lp.round(&monitor, &mut rec);
        }
    }
    Ok(())
}

/// Under the monitor's lock: the events that reached `events` (so exactly
/// the batches the replica holds) and the snapshot of the replica (whole
/// when `full`, else only ports and status) with the transaction id.
fn drain_and_snapshot(
    monitor: &Monitor,
    events: &Receiver<MonitorEvent>,
    full: bool,
) -> (Vec<MonitorEvent>, Snapshot) {
    let mut out = None;
    let mut evs = Vec::new();
    // A zero timeout evaluates the predicate once, under the monitor's lock.
    let _ = monitor.wait_until(Duration::ZERO, |r, s| {
        evs.extend(events.try_iter());
        out = Some(if full {
            Snapshot::from_replica(r, s.last_txn_id)
        } else {
            Snapshot::ports_of_replica(r, s.last_txn_id)
        });
        true
    });
    (evs, out.unwrap_or_default())
}

impl Loop {
    fn next_wake(&self) -> Instant {
        let mut t = self.next_poll.max(self.sluiced.retry_at);
        if self.need_plan {
            t = t.min(self.commit_retry_at.max(self.sluiced.retry_at));
        }
        t
    }

    fn on_event(&mut self, ev: MonitorEvent, monitor: &Monitor) {
        match ev {
            MonitorEvent::Changes(batch) => {
                if self.loaded {
                    self.pending.extend(batch);
                }
                self.db_changed = true;
                self.dirty_since.get_or_insert_with(Instant::now);
            }
            MonitorEvent::Synced { resumed } => {
                let st = monitor.status();
                let txn = st
                    .last_txn_id
                    .map_or_else(|| "none".to_owned(), |t| t.to_string());
                if resumed {
                    info!(
                        "nestdb monitor resumed from the last transaction id {txn}: only the changes since arrive"
                    );
                } else {
                    info!("nestdb monitor in sync (full dump, last transaction id {txn})");
                }
                if !self.db_reachable {
                    info!("nestdb-server is reachable again");
                }
                self.db_reachable = true;
                // A full dump (not a resumed monitor) decoded every row
                // again and replaced the replica's: O(database) transient
                // memory even when few rows differ.
                self.trim_heap |= !resumed && self.loaded;
                self.synced = true;
                self.db_changed = true;
            }
            MonitorEvent::Disconnected { reason } => {
                if self.db_reachable {
                    warn!(
                        "lost nestdb-server ({reason}); reconnecting with backoff (up to {:?}), then resuming from the last transaction id",
                        self.config.retry_max
                    );
                }
                self.db_reachable = false;
            }
        }
    }

    /// Drains the monitor's events and refreshes the snapshot (whole
    /// when `full`: the batches drained are then in it and dropped).
    fn refresh(&mut self, monitor: &Monitor, full: bool) -> Snapshot {
        let t = Instant::now();
        let (evs, snap) = drain_and_snapshot(monitor, &self.events, full);
        for ev in evs {
            self.on_event(ev, monitor);
        }
        if full {
            self.pending.clear();
        }
        debug!(ms = t.elapsed().as_secs_f64() * 1e3, full, "snapshot taken");
        self.db_changed = false;
        self.need_plan = true;
        self.snap = Some(Snapshot {
            rows: crate::agent::compile::NodeRows {
                logical_ports: snap.rows.logical_ports.clone(),
                ..Default::default()
            },
            conversion_errors: Vec::new(),
            status: snap.status.clone(),
            txn_id: snap.txn_id,
        });
        snap
    }

    fn round(&mut self, monitor: &Monitor, rec: &mut Reconciler) {
        let now = Instant::now();
        if self.db_changed || self.snap.is_none() {
            self.refresh(monitor, false);
        }
        if now >= self.next_poll && now >= self.sluiced.retry_at {
            self.poll(rec);
        }
        if rec.held().is_none() {
            // Keep the compiler current (and the queue short) while
            // sluiced is not known: its program is read before a commit.
            if rec.loaded() && self.pending.len() >= PENDING_MAX {
                self.plan(monitor, rec);
            }
            return;
        }
        if self.need_plan && Instant::now() >= self.commit_retry_at {
            self.plan(monitor, rec);
        }
        if std::mem::take(&mut self.trim_heap) {
            trim_heap();
        }
        if self.db_reachable && Instant::now() >= self.writer.retry_at {
            self.write_status(monitor, rec);
        }
    }

    /// `node-status`, and `node-program` when the held state is stale.
    fn poll(&mut self, rec: &mut Reconciler) {
        // Whatever happens, not again before the next interval (an
        // unreachable socket also waits for `retry_at`).
        self.next_poll = Instant::now() + self.config.status_interval;
        let Some(status) = self.read::<QueryNodeStatus>() else {
            return;
        };
        if rec.is_stale(&status) {
            let Some(program) = self.read::<QueryNodeProgram>() else {
                return;
            };
            // The program may have moved between the two reads: read the
            // status again and retry at the next round if it did.
            let Some(again) = self.read::<QueryNodeStatus>() else {
                return;
            };
            if again.generation != status.generation || again.instance_id != status.instance_id {
                self.next_poll = Instant::now();
                return;
            }
            match rec.held() {
                None => info!(
                    instance = %status.instance_id,
                    "sluiced holds generation {}: {} ports, {} flows, {} Services",
                    status.generation,
                    program.ports.len(),
                    program.flows.len(),
                    program.services.len()
                ),
                Some(h) if h.instance_id != status.instance_id => warn!(
                    "sluiced restarted (instance {} is now {}, generation {}): pushing the whole program",
                    h.instance_id, status.instance_id, status.generation
                ),
                Some(h) if h.generation != status.generation => warn!(
                    "sluiced holds generation {}, not the {} this agent left it at: diffing against what it holds",
                    status.generation, h.generation
                ),
                Some(_) => debug!(
                    generation = status.generation,
                    "read sluiced's program again after a commit that did not apply"
                ),
            }
            let existing = self.snap.as_ref().and_then(|s| s.status.first());
            // A read only because a refused commit left the program unknown
            // keeps the refusal's backoff.
            let moved = rec.held().is_none_or(|h| {
                h.instance_id != status.instance_id || h.generation != status.generation
            });
            rec.set_held(&status, program, existing.map(|(_, r)| r));
            // The program read, and the whole-program diff the next plan
            // makes against it, are O(program) transient memory (hundreds
            // of MiB at 100k Services) even when nothing is sent: give it
            // back after that plan, as after a large batch.
            self.trim_heap = true;
            self.need_plan = true;
            if moved {
                self.commit_retry_at = Instant::now();
            }
            self.said_up_to_date = false;
        }
        let interval = if rec.ports_pending(&status) > 0 {
            self.config.pending_interval
        } else {
            self.config.status_interval
        };
        self.status = Some(status);
        self.next_poll = Instant::now() + interval;
    }

    /// One query of `sluiced`. An answer that is an error (a `sluiced`
    /// without the node methods) is logged once per distinct sentence.
    fn read<M: Method<Request = Empty>>(&mut self) -> Option<M::Reply> {
        match self.sluiced.call::<M>(&Empty {}) {
            Ok(r) => {
                self.last_query_error = None;
                Some(r)
            }
            Err(ClientError::Api(e)) => {
                if self.last_query_error.as_deref() != Some(e.message.as_str()) {
                    warn!(
                        "sluiced cannot answer {}: {}; is it older than this agent? retrying",
                        M::NAME,
                        e.message
                    );
                    self.last_query_error = Some(e.message);
                }
                None
            }
            Err(_) => None,
        }
    }

    fn plan(&mut self, monitor: &Monitor, rec: &mut Reconciler) {
        let t_plan = Instant::now();
        let mut batch_rows = 0;
        let plan = if rec.loaded() {
            let Some(snap) = &self.snap else { return };
            let batch = std::mem::take(&mut self.pending);
            batch_rows = batch.len();
            self.trim_heap |= batch_rows >= LARGE_BATCH;
            rec.plan_changes(&batch, &snap.rows.logical_ports, snap.txn_id)
        } else {
            self.trim_heap = true;
            let full = self.refresh(monitor, true);
            let p = rec.plan(&full);
            self.loaded = true;
            info!(
                ms = format!("{:.1}", t_plan.elapsed().as_secs_f64() * 1e3),
                services = full.rows.services.len(),
                endpoints = full.rows.endpoints.len(),
                ports = full.rows.logical_ports.len(),
                "compiled every row (from here on only the rows that change are compiled)"
            );
            p
        };
        let plan_ms = t_plan.elapsed().as_secs_f64() * 1e3;
        let txn_id = self.snap.as_ref().and_then(|s| s.txn_id);
        for e in &plan.new_errors {
            warn!(table = e.table, row = %e.key, "row skipped: {}", e.sentence);
        }
        for e in &plan.resolved {
            info!(table = e.table, row = %e.key, "row compiles again");
        }
        for s in &plan.new_ignored {
            warn!("{s}");
        }
        let m = &self.config.metrics;
        {
            use std::sync::atomic::Ordering::Relaxed;
            m.row_errors.store(rec.row_error_count() as u64, Relaxed);
            m.full_compiles.store(rec.full_compiles(), Relaxed);
            m.incremental_updates
                .store(rec.incremental_updates(), Relaxed);
        }
        let Some(held_generation) = rec.held().map(|h| h.generation) else {
            return;
        };
        let Some(changes) = plan.commit else {
            if rec.needs_read() {
                // The program must be read first (next poll).
                return;
            }
            self.dirty_since = None;
            if !self.said_up_to_date {
                info!(
                    generation = held_generation,
                    "sluiced's program is up to date: nothing to send"
                );
                self.said_up_to_date = true;
            }
            self.need_plan = false;
            return;
        };
        let t_commit = Instant::now();
        let generation = changes.generation;
        let times = rec.compiler().map(|c| c.last_times()).unwrap_or_default();
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        match self.send(changes) {
            Ok(reply) => {
                let commit_ms = t_commit.elapsed().as_secs_f64() * 1e3;
                if batch_rows >= LARGE_BATCH {
                    info!(
                        rows = batch_rows,
                        convert_ms = ms(times.convert),
                        compile_ms = ms(times.compile),
                        changes_ms = ms(times.changes),
                        "large batch planned (typed rows, incremental compile, changes)"
                    );
                    self.large_status = Some(Instant::now());
                }
                rec.committed(&reply);
                {
                    use std::sync::atomic::Ordering::Relaxed;
                    let m = &self.config.metrics;
                    m.plan_seconds.observe(plan_ms / 1e3);
                    m.commit_seconds.observe(commit_ms / 1e3);
                    if let Some(t) = self.dirty_since.take() {
                        m.sync_seconds.observe(t.elapsed().as_secs_f64());
                    }
                    m.commits.fetch_add(1, Relaxed);
                    m.generation.store(reply.generation, Relaxed);
                }
                let c = reply.counts;
                info!(
                    generation = reply.generation,
                    txn = %txn_id.map_or_else(|| "none".into(), |t: Uuid| t.to_string()),
                    plan_ms = format!("{plan_ms:.1}"),
                    commit_ms = format!("{commit_ms:.1}"),
                    "committed: ports +{} -{}, flow ops {}, Services +{} -{}, VTEPs {}, port security {}, ARP {}, neighbours {}, groups {}, settings {}",
                    c.ports_added, c.ports_removed, c.flow_ops, c.services_upserted,
                    c.services_deleted, c.vteps, c.port_security, c.arp, c.neighbours, c.groups,
                    if c.settings { "changed" } else { "unchanged" }
                );
                self.need_plan = false;
                self.said_up_to_date = true;
                self.last_refusal = None;
                self.commit_backoff.reset();
                // Ports just added: read their state now, and write none
                // from before the commit.
                self.status = None;
                self.next_poll = Instant::now();
            }
            Err(SendError::Whole(ClientError::Api(e))) => {
                // A conflict shows in node-status; anything else is a
                // refusal of this change set.
                if let Ok(st) = self.sluiced.call::<QueryNodeStatus>(&Empty {}) {
                    if rec.is_stale(&st) {
                        warn!(
                            "node-commit of generation {} conflicted ({}); re-reading what sluiced holds",
                            generation, e.message
                        );
                        rec.forget_held();
                        self.next_poll = Instant::now();
                        return;
                    }
                }
                if let Some(port) = refused_port(&e.message) {
                    if rec.refuse_port(&port, &e.message) {
                        // Left out: re-plan now without it (its row error
                        // is logged by that plan), after reading sluiced's
                        // program if the reconciler needs it.
                        self.commit_retry_at = Instant::now();
                        self.next_poll = Instant::now();
                        return;
                    }
                }
                if self.last_refusal.as_deref() != Some(e.message.as_str()) {
                    warn!(
                        "sluiced refused the commit of generation {}: {}; retrying with backoff",
                        generation, e.message
                    );
                    self.last_refusal = Some(e.message.clone());
                }
                self.config
                    .metrics
                    .refusals
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                rec.refused(e.message);
                self.commit_retry_at = Instant::now() + self.commit_backoff.next_delay();
                self.next_poll = self.next_poll.min(Instant::now());
            }
            Err(SendError::Partial { sent, parts, error }) => {
                warn!(
                    "sluiced took {sent} of the {parts} parts of the change set, then: {error}; reading what it holds and sending the rest"
                );
                rec.partly_committed(format!(
                    "sluiced took {sent} of {parts} parts of a commit too big for one request, then: {error}"
                ));
                self.commit_retry_at = Instant::now() + self.commit_backoff.next_delay();
                self.next_poll = Instant::now();
            }
            // Unreachable: logged by `call`; retried at `retry_at` (the
            // reconciler reads the program again before the next commit,
            // since this one may or may not have applied).
            Err(SendError::Whole(_)) => {}
        }
    }

    /// One `node-commit`, or several when the change set's JSON passes
    /// `max_commit_bytes` (each valid on its own, generations one apart):
    /// the reply of the last.
    fn send(&mut self, changes: NodeChanges) -> Result<NodeCommitReply, SendError> {
        // Each item serialized once; the parts' JSON goes into the request
        // frames as it is.
        let parts = super::chunk::encode(&changes, self.config.max_commit_bytes).map_err(|e| {
            SendError::Whole(ClientError::Api(sluice_api::ApiError::invalid(format!(
                "the change set cannot be encoded as JSON: {e}"
            ))))
        })?;
        drop(changes);
        let n = parts.len();
        if n > 1 {
            info!(
                parts = n,
                limit = self.config.max_commit_bytes,
                "the change set is bigger than one request may be: sending it in {n} commits, each valid on its own"
            );
        }
        let mut last = None;
        for (i, p) in parts.into_iter().enumerate() {
            match self.sluiced.call_encoded::<NodeCommit>(&p.json) {
                Ok(r) => last = Some(r),
                Err(e) if i == 0 => return Err(SendError::Whole(e)),
                Err(e) => {
                    return Err(SendError::Partial {
                        sent: i,
                        parts: n,
                        error: e.to_string(),
                    })
                }
            }
        }
        last.ok_or(SendError::Partial {
            sent: 0,
            parts: 0,
            error: "there was nothing to send".into(),
        })
    }

    fn write_status(&mut self, monitor: &Monitor, rec: &Reconciler) {
        let (Some(snap), Some(status)) = (&self.snap, &self.status) else {
            return;
        };
        let writes = rec.status_writes(snap, status);
        if writes.is_empty() {
            return;
        }
        let mut txn = Transaction::new(DB);
        for w in &writes {
            match w {
                StatusWrite::NodeStatus { uuid: None, row } => {
                    txn = txn.insert(StatusRow::TABLE, row.to_row());
                }
                StatusWrite::NodeStatus { uuid: Some(u), row } => {
                    txn = txn.update(StatusRow::TABLE, vec![uuid_is(*u)], row.to_row());
                }
                StatusWrite::LogicalPort {
                    uuid,
                    name,
                    dp_port,
                    up,
                } => {
                    let mut cols = BTreeMap::new();
                    if let Some(d) = dp_port {
                        cols.insert(
                            "dp_port".to_owned(),
                            d.map_or_else(Datum::empty_set, |d| Datum::from(i64::from(d))),
                        );
                    }
                    if let Some(u) = up {
                        cols.insert("up".to_owned(), Datum::from(*u));
                        info!(port = %name, "Logical_Port.up := {u}");
                    }
                    txn = txn.update("Logical_Port", vec![uuid_is(*uuid)], cols);
                }
            }
        }
        let t = Instant::now();
        if self.writer.transact(&txn).is_err() {
            return;
        }
        if let Some(since) = self.large_status.take() {
            info!(
                writes = writes.len(),
                transact_ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1e3),
                since_commit_ms = format!("{:.1}", since.elapsed().as_secs_f64() * 1e3),
                "status written after a large commit"
            );
        }
        debug!(writes = writes.len(), "status written");
        // Wait until the monitor shows the writes, so the next round does
        // not write them again from a stale snapshot.
        let settled = monitor.wait_until(self.config.write_settle, |r, _| reflected(r, &writes));
        if settled.is_err() {
            debug!("the monitor did not show the status writes in time");
        }
    }
}

/// Returns the heap memory freed by a large batch (the update's text, the
/// row changes, the change set and its encoding) to the system: glibc
/// keeps freed memory in its arenas (one per thread that allocated it),
/// so without this the agent's resident size stays at its high-water mark.
/// Logs the resident size before and after (what the agent holds live is
/// the second figure).
fn trim_heap() {
    let t = Instant::now();
    let before = rss_mib();
    // SAFETY: `malloc_trim` only gives free pages of glibc's arenas back
    // to the kernel, under glibc's own arena locks; it reads or writes no
    // memory this program holds.
    unsafe {
        libc::malloc_trim(0);
    }
    info!(
        rss_before_mib = before,
        rss_after_mib = rss_mib(),
        ms = format!("{:.1}", t.elapsed().as_secs_f64() * 1e3),
        "freed heap memory returned to the system after a large batch"
    );
}

/// The resident set size in MiB (0 if `/proc/self/statm` cannot be read).
fn rss_mib() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    // SAFETY: `sysconf` reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (pages * u64::try_from(page).unwrap_or(4096)) >> 20
}

/// A batch of at least this many row changes has its planning phases
/// and the status write after it logged (at `info`).
const LARGE_BATCH: usize = 1000;

/// How many drained row changes may wait while `sluiced` is not known
/// before they are given to the compiler anyway.
const PENDING_MAX: usize = 10_000;

/// Why [`Loop::send`] failed.
#[derive(Debug)]
enum SendError {
    /// The first (or only) commit failed: nothing applied.
    Whole(ClientError),
    /// Some parts applied, then one failed.
    Partial {
        sent: usize,
        parts: usize,
        error: String,
    },
}

fn uuid_is(u: Uuid) -> Condition {
    Condition::uuid(u)
}

/// True when `replica` shows every write (a row written and since deleted
/// counts as shown).
fn reflected(replica: &Replica, writes: &[StatusWrite]) -> bool {
    writes.iter().all(|w| match w {
        StatusWrite::NodeStatus { row, .. } => replica.typed::<StatusRow>().any(|(_, r)| {
            r.is_ok_and(|r| {
                StatusRow {
                    external_ids: row.external_ids.clone(),
                    ..r
                } == *row
            })
        }),
        StatusWrite::LogicalPort {
            uuid, dp_port, up, ..
        } => match replica.row("Logical_Port", uuid) {
            None => true,
            Some(r) => {
                let dp_ok = dp_port
                    .is_none_or(|d| r.get("dp_port").and_then(Datum::as_i64) == d.map(i64::from));
                let up_ok = up.is_none_or(|u| r.get("up").and_then(Datum::as_bool) == Some(u));
                dp_ok && up_ok
            }
        },
    })
}
