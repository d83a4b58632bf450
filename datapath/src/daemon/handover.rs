//! The hand-over restart (`sluiced --take-over`): a new process takes the
//! node's datapath from the running one, connections, NAT and Service
//! affinity included, with a gap of a few milliseconds instead of an
//! outage. The protocol (three methods on the old process's control
//! socket, and a lease) is documented in `sluice_api::handover`; this
//! module holds both sides.
//!
//! **Old side** ([`OldSide`], registered on every `sluiced`): `prepare`
//! starts the conntrack's creation log, writes the state (conntrack,
//! affinity and the PMDs' learned MACs, in the versioned format of
//! `conntrack::state`) to the file the new process names and connects to
//! its lease socket; a watcher thread reads the lease until it closes.
//! `prepare` also pauses the state saver (waiting for a save under way;
//! it resumes if the hand-over fails). `release` takes
//! the node's addresses back from the host port (TAP devices die with
//! their process), stops polling every port and closes them (af_packet
//! devices after the answer, in a thread, their sockets freed in parallel:
//! see [`close_released`]; the hand-over never waits for that), and
//! writes the connections opened since the
//! snapshot (the delta: those the creation log names, looked up one by
//! one, not a scan of the table, unless the log overflowed; their state
//! changes during the copy are not sent:
//! a restored TCP connection is tracked liberally, and one closed during
//! the copy lingers until its timeout);
//! `commit` marks the hand-over done, answers, and (from a thread, once
//! the released devices are closed) asks the main thread to exit,
//! without the final state save (the new process owns the state file from
//! then on). If the lease closes before `commit` (the new process died, or
//! gave up), the watcher reopens the ports with their devargs, queues and
//! PMDs, re-attaches the host path and resumes the saver: the old process
//! forwards again. A peer that hangs keeps its lease: the DaemonSet's
//! liveness probe (or an operator) kills it, and the rollback follows.
//!
//! **New side** ([`Peer`]): connects, picks a DPDK file prefix other than
//! the old one's (two primaries cannot share one), and drives the steps;
//! `daemon::Daemon` starts its PMDs with no port, restores the snapshot
//! (its learned MACs go to every PMD's table) while the old process
//! forwards, opens the ports two processes can hold at once
//! ([`shareable`]: af_packet, null) unpolled and commits the node program
//! (its pod ports open with it, PMD barrier included), all before
//! `release`; then restores the delta, empties the rx rings of the ports
//! it opened (every frame in them arrived while the old process polled
//! its own socket on the interface: forwarded by it, or lost in the gap,
//! so nothing is forwarded twice), starts polling them in one port-table
//! publication, opens the configured ports that cannot be shared,
//! restores the affinity entries, attaches the host path, moves its
//! control socket into place and calls `commit`. With a port that cannot
//! be shared other than a configured one (af_xdp), the ports open and the
//! program commits after `release` instead. In take-over mode the
//! flow table starts empty (a miss drops), so no frame is switched by the
//! learning-switch default before the program is in.
//!
//! What is not carried over: MACs learned during the copy (relearned from
//! the next frame of each host, flooding once) and the local stack's
//! dynamic ARP entries (the program's permanent neighbours are carried).
//!
//! Thread-safety: [`OldSide`]'s session is behind a mutex taken by control
//! threads and the watcher; the steps are serialised by it.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_api::handover::{
    HandoverPort, PidRequest, PrepareReply, PrepareRequest, ReleaseReply, ReleaseRequest,
    RestartKind, RestartReport,
};
use sluice_api::{ApiError, Empty, ErrorCode};

use super::node::NodeState;
use super::ports::{Ports, ReleasedPort};
use crate::conntrack::Conntrack;
use crate::service::Services;

/// Why a hand-over could not be started by the new process.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The lease socket.
    #[error("cannot create the hand-over lease socket {path}: {source}")]
    Lease {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A step failed on the old process's side.
    #[error("the running sluiced refused hand-over step '{step}': {source}")]
    Step {
        /// The step.
        step: &'static str,
        /// Its error.
        source: sluice_api::ClientError,
    },
    /// The state it wrote.
    #[error("cannot read the hand-over state {path}: {why}; the running sluiced keeps forwarding")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// The last restart's report, shared by the daemon and `restart-report`.
pub type ReportCell = Arc<Mutex<RestartReport>>;

/// Unix time now, ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a port opened with `devargs` can be open in two processes at
/// once (each gets every frame: an af_packet socket, a null device), so
/// that a hand-over's new process opens it before the old one releases
/// it. An AF_XDP socket owns its queue; a TAP, a NIC or a vhost socket
/// has one owner.
pub fn shareable(devargs: &str) -> bool {
    devargs.starts_with("net_af_packet") || devargs.starts_with("net_null")
}

/// Closes the released af_packet devices (from the `handover-close`
/// thread, after `release` answered).
///
/// The kernel frees a packet socket when its last reference goes (for a
/// DPDK af_packet queue, when the driver unmaps its ring), and each free
/// waits for about three RCU grace periods (`packet_release`,
/// `packet_set_ring` for each ring: `synchronize_net`), one socket after
/// the other: seconds on a loaded machine, more with many pod ports. So
/// the sockets are duplicated first, the driver closes its devices (fast:
/// its references are not the last), and the duplicates are closed from
/// one thread each, their grace periods overlapping. No DPDK call runs
/// concurrently with another.
///
/// `SLUICED_TEST_HANDOVER_HOLD_CLOSE=FIFO` (tests): the thread first opens
/// that FIFO for reading, which blocks until a writer opens it: a test
/// holds the close for as long as it likes and checks that the hand-over
/// does not wait for it.
fn close_released(devices: super::ports::UnpolledPorts) {
    if let Some(fifo) = std::env::var_os("SLUICED_TEST_HANDOVER_HOLD_CLOSE") {
        tracing::info!(
            "hand-over: the close of the released devices waits for a writer on {fifo:?}"
        );
        let _ = std::fs::File::open(&fifo);
    }
    let t = Instant::now();
    let sockets = packet_socket_dups();
    let n = sockets.len();
    devices.close();
    let driver_ms = t.elapsed().as_secs_f64() * 1e3;
    close_in_parallel(sockets);
    tracing::info!(
        "hand-over: released af_packet devices closed in {:.1} ms (driver {driver_ms:.1} ms, then {n} packet sockets freed in parallel)",
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// Inodes of the packet sockets of this network namespace
/// (`/proc/net/packet`, last column).
fn packet_socket_inodes() -> std::collections::HashSet<u64> {
    std::fs::read_to_string("/proc/net/packet")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect()
}

/// Duplicates of this process's packet socket descriptors (at a
/// hand-over's release, all belong to the released af_packet devices).
/// (`unsafe` allowed here: the descriptors are the driver's, known only
/// by number.)
#[allow(unsafe_code)]
fn packet_socket_dups() -> Vec<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
    let inodes = packet_socket_inodes();
    if inodes.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok());
        if !inode.is_some_and(|i| inodes.contains(&i)) {
            continue;
        }
        // SAFETY: `fd` was open when listed; if another thread closed it
        // since, the duplication fails (EBADF) or duplicates whatever took
        // its number, and closing that duplicate later only drops a
        // reference. The borrow ends before this iteration does.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(dup) = borrowed.try_clone_to_owned() {
            if dup.as_raw_fd() != fd {
                out.push(dup);
            }
        }
    }
    out
}

/// Closes `fds` from one thread each (joined), so that the kernel's
/// waits for each socket's free overlap (inline when a thread does not
/// start).
fn close_in_parallel(fds: Vec<std::os::fd::OwnedFd>) {
    let mut threads = Vec::new();
    for fd in fds {
        // A thread that does not start drops its closure, and the
        // descriptor with it, here.
        if let Ok(h) = std::thread::Builder::new()
            .name("handover-free".into())
            .stack_size(64 << 10)
            .spawn(move || drop(fd))
        {
            threads.push(h);
        }
    }
    for h in threads {
        let _ = h.join();
    }
}

/// Frames a port counts as lost.
fn lost(c: &sluice_api::ports::PortCounters) -> u64 {
    c.rx_dropped + c.rx_errors + c.tx_errors
}

// ---------------------------------------------------------------- old side

#[derive(Debug)]
struct Session {
    pid: u32,
    /// Closes the released af_packet devices after the reply (joined
    /// before a rollback reopens them, and after `commit` before the
    /// process is asked to exit).
    closing: Option<std::thread::JoinHandle<()>>,
    /// Set by `release`: what to reopen on a rollback.
    released: Option<Vec<ReleasedPort>>,
    committed: bool,
    /// Lost-frame counters at `prepare`, by port name.
    lost_at_prepare: std::collections::BTreeMap<String, u64>,
}

/// What the old side reaches into.
pub struct OldParts {
    /// The ports.
    pub ports: Arc<Ports>,
    /// The node program and generation.
    pub node: Arc<NodeState>,
    /// The connections.
    pub conntrack: Conntrack,
    /// The Services (affinity).
    pub services: Services,
    /// This process's DPDK file prefix.
    pub file_prefix: String,
    /// The host exception path, when attached, and how to attach it again.
    pub hostpath: Arc<Mutex<Option<crate::hostpath::HostPath>>>,
    /// Re-attaches the host path after a rollback.
    pub attach_hostpath: Box<dyn Fn() -> Option<crate::hostpath::HostPath> + Send + Sync>,
    /// Pauses the state saver (set while released).
    pub saver_paused: Arc<AtomicBool>,
    /// Set on commit: the daemon exits without saving the state.
    pub handed_over: Arc<AtomicBool>,
    /// Wakes the main thread to exit.
    pub on_exit: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for OldParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OldParts")
            .field("file_prefix", &self.file_prefix)
            .finish_non_exhaustive()
    }
}

/// The running process's side of a hand-over.
#[derive(Debug)]
pub struct OldSide {
    parts: OldParts,
    session: Mutex<Option<Session>>,
}

/// How long `prepare` waits for every PMD to hand over its learned MACs
/// (a PMD that does not answer in time only costs relearning).
const MAC_COLLECT_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

fn refused(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Failed, msg)
}

impl OldSide {
    /// The old side over `parts`.
    pub fn new(parts: OldParts) -> Arc<OldSide> {
        Arc::new(OldSide {
            parts,
            session: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Step 1.
    ///
    /// # Errors
    /// Another hand-over is under way, or the state or lease failed.
    pub fn prepare(self: &Arc<Self>, r: &PrepareRequest) -> Result<PrepareReply, ApiError> {
        let mut s = self.lock();
        if let Some(cur) = s.as_ref() {
            return Err(refused(format!(
                "a hand-over to pid {} is under way; wait for it to finish or fail",
                cur.pid
            )));
        }
        let t0 = Instant::now();
        let p = &self.parts;
        // The state saver stops (once a save under way has finished): its
        // pass over the table would compete with the snapshot for the
        // CPU, and the new process owns the state files once it commits
        // (it reads them back before appending). It resumes if the
        // hand-over fails.
        p.saver_paused.store(true, Ordering::Relaxed);
        super::state::wait_for_round();
        let resume_saver = || p.saver_paused.store(false, Ordering::Relaxed);
        // Every connection created from here on is logged: the delta is
        // the log, not a scan. (One created during the scan may be in
        // both; the new process skips the second copy.)
        p.conntrack.log_creations();
        let mut saved = super::state::snapshot(&p.conntrack, Some(&p.services));
        let (macs, tables) =
            crate::pipeline::l2::collect_macs(p.ports.shared().n_pmds(), MAC_COLLECT_WAIT);
        saved.macs = macs;
        let n_macs = saved.macs.len();
        let (conns, affinity, bytes) = super::state::write(Path::new(&r.state_path), &saved)
            .map_err(|e| {
                p.conntrack.take_creations();
                resume_saver();
                refused(format!("cannot write the state to {}: {e}", r.state_path))
            })?;
        drop(saved);
        let save_us = t0.elapsed().as_micros() as u64;
        let lease = UnixStream::connect(&r.lease_path).map_err(|e| {
            p.conntrack.take_creations();
            resume_saver();
            refused(format!(
                "cannot connect to the new process's lease {}: {e}",
                r.lease_path
            ))
        })?;
        let list = p.ports.list();
        let lost_at_prepare = list
            .iter()
            .map(|s| (s.name.clone(), lost(&crate::port::Port::stats(&s.handle))))
            .collect();
        let ports = list
            .iter()
            .map(|s| HandoverPort {
                name: s.name.clone(),
                ofport: s.ofport,
                kind: s.kind.clone(),
                devargs: s.devargs.clone(),
                rx_queues: s.pmds.len() as u16,
            })
            .collect();
        let status = p.node.status();
        *s = Some(Session {
            pid: r.pid,
            closing: None,
            released: None,
            committed: false,
            lost_at_prepare,
        });
        drop(s);
        let me = self.clone();
        let pid = r.pid;
        std::thread::Builder::new()
            .name("handover-lease".into())
            .spawn(move || me.watch(lease, pid))
            .map_err(|e| refused(format!("cannot start the lease watcher: {e}")))?;
        tracing::info!(
            "hand-over to pid {pid} (version {}): wrote {conns} connections, {affinity} affinity entries and {n_macs} learned MACs of {tables} PMDs ({bytes} bytes) in {:.1} ms; still forwarding",
            r.version,
            save_us as f64 / 1e3
        );
        Ok(PrepareReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            file_prefix: p.file_prefix.clone(),
            generation: status.generation,
            program: p.node.program(),
            ports,
            conns: conns as u64,
            affinity: affinity as u64,
            state_bytes: bytes as u64,
            save_us,
        })
    }

    /// Reads the lease until it closes; rolls back unless committed.
    fn watch(&self, mut lease: UnixStream, pid: u32) {
        let mut buf = [0u8; 64];
        // The new process never writes: any return means it closed the
        // lease (on purpose after commit, or by dying).
        loop {
            match lease.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let mut s = self.lock();
        let Some(sess) = s.take() else { return };
        if sess.pid != pid {
            *s = Some(sess);
            return;
        }
        if sess.committed {
            return;
        }
        // The delta will not be asked for: stop logging creations.
        self.parts.conntrack.take_creations();
        match sess.released {
            None => {
                self.parts.saver_paused.store(false, Ordering::Relaxed);
                tracing::warn!(
                    "hand-over to pid {pid} abandoned before the ports moved (its lease closed); still forwarding"
                )
            }
            Some(ports) => {
                tracing::warn!(
                    "hand-over to pid {pid} failed after the ports were released (its lease closed): taking the ports back"
                );
                if let Some(h) = sess.closing {
                    let _ = h.join();
                }
                self.rollback(&ports);
            }
        }
    }

    fn rollback(&self, ports: &[ReleasedPort]) {
        let t0 = Instant::now();
        let mut failed = 0;
        for p in ports {
            if let Err(e) = self.parts.ports.reopen(p) {
                failed += 1;
                tracing::error!(
                    "port {}: cannot reopen after the failed hand-over: {e}",
                    p.name
                );
            }
        }
        let hp = (self.parts.attach_hostpath)();
        *self
            .parts
            .hostpath
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = hp;
        self.parts.saver_paused.store(false, Ordering::Relaxed);
        tracing::warn!(
            "forwarding again on {} of {} ports after the failed hand-over ({:.1} ms)",
            ports.len() - failed,
            ports.len(),
            t0.elapsed().as_secs_f64() * 1e3
        );
    }

    /// Step 2.
    ///
    /// # Errors
    /// No matching session, or the ports could not be released (then
    /// nothing changed).
    pub fn release(&self, r: &ReleaseRequest) -> Result<ReleaseReply, ApiError> {
        let t0 = Instant::now();
        let mut s = self.lock();
        let sess = match s.as_mut() {
            Some(x) if x.pid == r.pid && x.released.is_none() => x,
            _ => {
                return Err(refused(format!(
                    "no prepared hand-over to pid {}: call handover-prepare first",
                    r.pid
                )))
            }
        };
        let p = &self.parts;
        // (Paused since `prepare`.)
        p.saver_paused.store(true, Ordering::Relaxed);
        // The addresses go back to the uplink before the TAP dies with
        // the port.
        if let Some(h) = p.hostpath.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if let Err(e) = h.detach() {
                tracing::error!("hand-over: {e}");
            }
        }
        let (released, mut unpolled) = match p.ports.release_all() {
            Ok(r) => r,
            Err(e) => {
                let hp = (p.attach_hostpath)();
                *p.hostpath.lock().unwrap_or_else(|e| e.into_inner()) = hp;
                p.saver_paused.store(false, Ordering::Relaxed);
                return Err(refused(format!("cannot release the ports: {e}")));
            }
        };
        let frames_lost = released
            .iter()
            .map(|x| {
                lost(&x.stats).saturating_sub(*sess.lost_at_prepare.get(&x.name).unwrap_or(&0))
            })
            .sum();
        let rx_packets = released.iter().map(|x| x.stats.rx_packets).sum();
        sess.released = Some(released);
        // Several af_packet sockets may share an interface (each in its
        // own fanout group), so the new process opens its own while these
        // close in the background: nothing polls them any more. Any
        // other device (a TAP, a NIC) closes before the reply.
        let background = unpolled.split(|d| d.starts_with("net_af_packet"));
        unpolled.close();
        sess.closing = std::thread::Builder::new()
            .name("handover-close".into())
            .spawn(move || close_released(background))
            .ok();
        let delta = match p.conntrack.take_creations() {
            Some(keys) => {
                let mut d = crate::conntrack::state::save_keys(
                    &p.conntrack,
                    crate::time::clock_ns(),
                    &keys,
                );
                d.affinity = p.services.affinity_entries(crate::time::clock_ns());
                d
            }
            // The log overflowed: a scan finds them (the new process
            // skips those it has).
            None => super::state::snapshot(&p.conntrack, Some(&p.services)),
        };
        let (conns, _, bytes) = match super::state::write(Path::new(&r.delta_path), &delta) {
            Ok(x) => x,
            Err(e) => {
                // The new process cannot have the delta: it gives up,
                // closes the lease, and the watcher rolls back.
                return Err(refused(format!(
                    "cannot write the delta to {}: {e}",
                    r.delta_path
                )));
            }
        };
        tracing::info!(
            "hand-over to pid {}: ports released, {conns} connections in the delta",
            r.pid
        );
        Ok(ReleaseReply {
            conns: conns as u64,
            state_bytes: bytes as u64,
            frames_lost,
            rx_packets,
            release_us: t0.elapsed().as_micros() as u64,
        })
    }

    /// Step 3.
    ///
    /// # Errors
    /// No released hand-over to this pid.
    pub fn commit(&self, r: &PidRequest) -> Result<Empty, ApiError> {
        let mut s = self.lock();
        let closing = match s.as_mut() {
            Some(x) if x.pid == r.pid && x.released.is_some() => {
                x.committed = true;
                x.closing.take()
            }
            _ => {
                return Err(refused(format!(
                    "no released hand-over to pid {}: nothing to commit",
                    r.pid
                )))
            }
        };
        drop(s);
        self.parts.handed_over.store(true, Ordering::Relaxed);
        tracing::info!("hand-over to pid {} committed: exiting", r.pid);
        // The released devices must be closed before the process tears
        // down the EAL (closing them concurrently with it crashes in the
        // af_packet driver), which can take seconds: the new process,
        // forwarding already, gets its answer now.
        let closing = Arc::new(Mutex::new(closing));
        let exit = {
            let closing = closing.clone();
            let on_exit = self.parts.on_exit.clone();
            move || {
                let h = closing.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(h) = h {
                    let _ = h.join();
                }
                on_exit();
            }
        };
        if std::thread::Builder::new()
            .name("handover-exit".into())
            .spawn(exit)
            .is_err()
        {
            // No thread: close and exit from here (the answer waits).
            let h = closing.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = h {
                let _ = h.join();
            }
            (self.parts.on_exit)();
        }
        Ok(Empty {})
    }
}

/// Registers the hand-over methods and `restart-report`.
///
/// # Errors
/// A name is already registered.
pub fn register(
    registry: &crate::ctl::Registry,
    old: Arc<OldSide>,
    report: ReportCell,
) -> Result<(), crate::ctl::RegistryError> {
    use crate::ctl::typed::register;
    use sluice_api::handover as api;
    let o = old.clone();
    register::<api::HandoverPrepare>(registry, move |r| o.prepare(&r))?;
    let o = old.clone();
    register::<api::HandoverRelease>(registry, move |r| o.release(&r))?;
    register::<api::HandoverCommit>(registry, move |r| old.commit(&r))?;
    register::<api::QueryRestartReport>(registry, move |_| {
        Ok(report.lock().unwrap_or_else(|e| e.into_inner()).clone())
    })?;
    Ok(())
}

// ---------------------------------------------------------------- new side

/// The new process's side: the connection to the old one, its lease and
/// the files it writes.
#[derive(Debug)]
pub struct Peer {
    client: sluice_api::Client,
    lease: UnixListener,
    lease_path: PathBuf,
    /// The snapshot.
    pub state_path: PathBuf,
    /// The delta.
    pub delta_path: PathBuf,
    /// The old process's answer to step 1.
    pub prepared: PrepareReply,
    /// When step 1 was asked.
    pub started: Instant,
    /// The report being filled.
    pub report: RestartReport,
}

/// The DPDK file prefix the new process uses: the configured one, or
/// when the old process runs with it, the configured one with `-b` (and
/// back): two primaries never share a prefix, and a prefix never grows.
pub fn take_over_prefix(configured: &str, old: &str) -> String {
    if old == configured {
        format!("{configured}-b")
    } else {
        configured.to_string()
    }
}

impl Peer {
    /// Connects to the running sluiced at `ctl` and asks for its state
    /// (step 1). `Ok(None)`: nothing runs there (a plain start follows).
    ///
    /// # Errors
    /// [`HandoverError`]: the old process refused or failed.
    pub fn connect(ctl: &Path) -> Result<Option<Peer>, HandoverError> {
        let mut client = match sluice_api::Client::connect(ctl) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(
                    "--take-over: no running sluiced at {} ({e}); starting fresh",
                    ctl.display()
                );
                return Ok(None);
            }
        };
        let _ = client.set_timeout(Some(std::time::Duration::from_secs(60)));
        let pid = std::process::id();
        let dir = ctl
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let name = ctl.file_name().map_or_else(
            || "sluiced".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let lease_path = dir.join(format!(".{name}.lease.{pid}"));
        let _ = std::fs::remove_file(&lease_path);
        let lease = UnixListener::bind(&lease_path).map_err(|source| HandoverError::Lease {
            path: lease_path.clone(),
            source,
        })?;
        let state_path = dir.join(format!(".{name}.handover.{pid}"));
        let delta_path = dir.join(format!(".{name}.delta.{pid}"));
        let started = Instant::now();
        let prepared = client
            .call::<sluice_api::handover::HandoverPrepare>(&PrepareRequest {
                pid,
                state_path: state_path.display().to_string(),
                lease_path: lease_path.display().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .map_err(|source| HandoverError::Step {
                step: "prepare",
                source,
            })?;
        tracing::info!(
            "--take-over: sluiced {} (generation {}) wrote {} connections ({} bytes) in {:.1} ms",
            prepared.version,
            prepared.generation,
            prepared.conns,
            prepared.state_bytes,
            prepared.save_us as f64 / 1e3
        );
        Ok(Some(Peer {
            client,
            lease,
            lease_path,
            state_path,
            delta_path,
            report: RestartReport {
                kind: RestartKind::HandOver,
                state_ms: prepared.save_us as f64 / 1e3,
                previous_version: Some(prepared.version.clone()),
                at_unix_ms: unix_ms(),
                ..Default::default()
            },
            prepared,
            started,
        }))
    }

    /// Reads and restores a state file the old process wrote; returns
    /// what it held. The file is removed.
    ///
    /// # Errors
    /// [`HandoverError::State`]: unreadable or not decodable.
    pub fn restore(
        &mut self,
        path: &Path,
        ct: &Conntrack,
    ) -> Result<crate::conntrack::state::SavedState, HandoverError> {
        let bad = |why: String| HandoverError::State {
            path: path.to_path_buf(),
            why,
        };
        let t0 = Instant::now();
        let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let _ = std::fs::remove_file(path);
        let saved = crate::conntrack::state::decode(&data).map_err(|e| bad(e.to_string()))?;
        let r = ct.restore(&saved, crate::time::clock_ns());
        if !saved.macs.is_empty() {
            self.report.macs_carried += saved.macs.len() as u64;
            crate::pipeline::l2::import_macs(saved.macs.clone());
        }
        self.report.state_bytes += data.len() as u64;
        self.report.state_ms += t0.elapsed().as_secs_f64() * 1e3;
        self.report.conns_carried += r.restored as u64;
        self.report.conns_skipped += r.skipped as u64;
        Ok(saved)
    }

    /// Step 2: the old process stops polling and closes its ports.
    ///
    /// # Errors
    /// [`HandoverError::Step`].
    pub fn release(&mut self) -> Result<ReleaseReply, HandoverError> {
        let r = self
            .client
            .call::<sluice_api::handover::HandoverRelease>(&ReleaseRequest {
                pid: std::process::id(),
                delta_path: self.delta_path.display().to_string(),
            })
            .map_err(|source| HandoverError::Step {
                step: "release",
                source,
            })?;
        self.report.frames_lost += r.frames_lost;
        self.report.state_ms += r.release_us as f64 / 1e3;
        Ok(r)
    }

    /// Step 3: the old process exits; the lease is closed.
    ///
    /// # Errors
    /// [`HandoverError::Step`].
    pub fn commit(mut self) -> Result<RestartReport, HandoverError> {
        let mut report = std::mem::take(&mut self.report);
        let r = self
            .client
            .call::<sluice_api::handover::HandoverCommit>(&PidRequest {
                pid: std::process::id(),
            });
        let _ = std::fs::remove_file(&self.lease_path);
        r.map_err(|source| HandoverError::Step {
            step: "commit",
            source,
        })?;
        report.duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        Ok(report)
    }

    /// The lease listener (kept open until [`Peer::commit`]).
    pub fn lease(&self) -> &UnixListener {
        &self.lease
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lease_path);
        let _ = std::fs::remove_file(&self.state_path);
        let _ = std::fs::remove_file(&self.delta_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_alternates_and_never_grows() {
        assert_eq!(take_over_prefix("sluice", "sluice"), "sluice-b");
        assert_eq!(take_over_prefix("sluice", "sluice-b"), "sluice");
        assert_eq!(take_over_prefix("x", "other"), "x");
    }
}
