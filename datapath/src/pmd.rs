//! Poll-mode threads: one per configured core.
//!
//! A PMD thread is pinned to its core (core_affinity), owns its rx queues
//! and one tx queue on every port (queue id = PMD index), and one
//! [`Pipeline`] instance (per-core state: caches; the MAC table is shared, see `pipeline::l2`). It loops:
//! for each of its rx queues, receive a burst of up to 32, process it,
//! flush the staged output to the ports' tx queues. Time spent in
//! iterations that received packets counts as busy cycles, the rest as
//! idle, as OVS's `pmd-stats-show` does; busy cycles are further split into
//! rx, process, tx and other by a chain of cycle-counter reads (a few per
//! burst, never per packet), whose parts add up to the busy total
//! (`pmd-perf-show`; the flow pipeline splits `process` itself, see
//! `pipeline::perf`).
//!
//! Every `MAINTAIN_EVERY` iterations (every `MAINTAIN_EVERY_NO_RX` when it
//! polls no queue) it calls `Pipeline::maintain` (aging, program updates,
//! the local stack's inbox). It stops when the shared stop flag is set (SIGTERM,
//! SIGINT, `exit` on the control socket), flushing what it holds.
//!
//! Ports come and go while the PMDs run (`port-add`, `port-del`): the
//! port handles, every PMD's rx queues and the list of ports to flood to
//! are one immutable [`PortTable`], published RCU-style through
//! [`SharedPorts`]. A PMD compares the published generation with its own
//! (one relaxed load) at the start of every iteration, that is between
//! bursts, and only when it changed loads the new table, clones its
//! handles and tells the pipeline the new port list
//! ([`Pipeline::set_ports`]); it then records the generation it runs as
//! its epoch. A writer that removes a port waits
//! ([`SharedPorts::wait_for_pmds`]) until every PMD's epoch reached the
//! generation without it: from then on no burst that started with the old
//! table is in flight and the device can be stopped. The hot path takes no
//! lock and allocates nothing; a reload allocates (it is not per burst).
//!
//! A node commit (`node-commit`) changes several of the structures PMDs
//! read (port table, flow program, Service table, VTEPs, ingress) and must
//! be seen whole: [`SharedPorts::barrier`] parks every PMD at a burst
//! boundary while the prepared parts are stored (VPP's worker barrier),
//! and a parked PMD that waits more than [`PARK_PATIENCE`] for the
//! committing thread to start storing gives the attempt up and forwards
//! on (the committer tries again): a descheduled or stopped committer
//! cannot hold a PMD longer than that. While it stores, the committer
//! runs at the lowest real-time priority when allowed (`RtBoost`; with
//! `current_cpu`, this module's only `unsafe`: the `sched_setscheduler`
//! and `sched_getcpu` calls), so that an
//! ordinary thread does not preempt it then. Outside a commit it costs one
//! relaxed load per iteration.
//!
//! Thread-safety: the shared state is [`PmdStats`] (single-writer
//! counters), the stop flag and [`SharedPorts`] (an `ArcSwap` plus atomic
//! generation and epochs; writers serialise on a mutex); nothing on the
//! hot path locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;

use crate::capture::Capture;
use crate::packet::{Burst, Output, PacketBuf, PortNo, BURST_SIZE};
use crate::pipeline::Pipeline;
use crate::port::Port;
use crate::stats::{Counter, DropCounters};
use crate::time::{clock_ns, cycles, Nanos};

/// How long a PMD with no rx queue sleeps between iterations (it still
/// passes burst boundaries, serves its mailbox and parks for barriers).
const NO_RX_SLEEP: Duration = Duration::from_micros(100);

/// Iterations between two `maintain` calls.
const MAINTAIN_EVERY: u64 = 1024;

/// Iterations between two `maintain` calls of a PMD with no rx queue
/// (each iteration sleeps [`NO_RX_SLEEP`]): its `maintain` still serves
/// the local stack's inbox, the mailbox and timers within milliseconds.
const MAINTAIN_EVERY_NO_RX: u64 = 16;

/// Counters of one PMD thread, readable from any thread.
#[derive(Debug, Default)]
pub struct PmdStats {
    /// PMD index (tx queue id).
    pub index: usize,
    /// The CPU it is pinned to (None: not pinned).
    pub core: Option<usize>,
    /// Packets received. Read it with `tx_packets` through
    /// [`PmdStats::packets`], which gives a pair from one iteration.
    pub rx_packets: Counter,
    /// Packets handed to tx queues and accepted by the device.
    pub tx_packets: Counter,
    /// Sequence count around the iteration's update of `rx_packets` and
    /// `tx_packets`: odd while the PMD writes them (a seqlock, so a reader
    /// never pairs one iteration's received count with another's sent count,
    /// which a rate measurement would take for lost packets).
    pub packets_seq: std::sync::atomic::AtomicU64,
    /// Bursts that carried at least one packet.
    pub rx_bursts: Counter,
    /// Cycles spent in iterations that received packets.
    pub busy_cycles: Counter,
    /// Cycles spent in iterations that received nothing.
    pub idle_cycles: Counter,
    /// Of `busy_cycles`: polling rx queues (`rx_burst`, also of queues
    /// that were empty in that iteration).
    pub rx_cycles: Counter,
    /// Of `busy_cycles`: in [`Pipeline::process`] (with the chained-frame
    /// check and the capture tap).
    pub process_cycles: Counter,
    /// Of `busy_cycles`: flushing staged output to tx queues.
    pub tx_cycles: Counter,
    /// Of `busy_cycles`: the rest (loop, port-table and barrier checks,
    /// `maintain`). `rx + process + tx + other = busy` exactly.
    pub other_cycles: Counter,
    /// Loop iterations.
    pub iterations: Counter,
    /// Drops by reason (shared with the pipeline's `Output`).
    pub drops: DropCounters,
    /// Loop iterations by wall-clock length, parking in a commit barrier
    /// and port-table reloads included: bucket 0 counts those under
    /// 1,024 ns, bucket `k` those in [2^(9+k), 2^(10+k)) ns, the last one
    /// everything longer. The longest is the PMD's longest stall.
    pub iteration_ns_log2: [Counter; ITERATION_BUCKETS],
    /// The longest loop iteration (ns), as in `iteration_ns_log2`.
    pub longest_iteration_ns: Counter,
    /// With `SLUICE_PMD_CPU_TIMING` set in sluiced's environment (off by
    /// default: it costs a system call per iteration), the thread's CPU
    /// time (`CLOCK_THREAD_CPUTIME_ID`) per iteration is measured too;
    /// this is [`CpuTiming`].
    pub cpu: CpuTiming,
}

/// Loop iterations by the CPU time the PMD thread got in them (see
/// [`PmdStats::cpu`]): a long iteration with little CPU time was
/// preempted (or parked in a commit barrier), one with as much CPU as wall
/// time did work. Buckets as [`PmdStats::iteration_ns_log2`].
#[derive(Debug, Default)]
pub struct CpuTiming {
    /// Every iteration by its CPU time.
    pub iteration_ns_log2: [Counter; ITERATION_BUCKETS],
    /// The iterations of at least [`LONG_ITERATION_NS`] wall time, by
    /// their CPU time.
    pub long_iteration_ns_log2: [Counter; ITERATION_BUCKETS],
    /// Of those long iterations: wall time, CPU time, and wall time parked
    /// in a commit barrier, summed (ns).
    pub long_wall_ns: Counter,
    /// See `long_wall_ns`.
    pub long_cpu_ns: Counter,
    /// See `long_wall_ns`.
    pub long_parked_ns: Counter,
    /// The CPU time and the time parked of the longest iteration (wall).
    pub longest_cpu_ns: Counter,
    /// See `longest_cpu_ns`.
    pub longest_parked_ns: Counter,
}

/// The wall time from which [`CpuTiming`] calls an iteration long (1 ms).
pub const LONG_ITERATION_NS: u64 = 1 << 20;

/// The calling thread's CPU time (ns).
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

impl CpuTiming {
    /// Records an iteration of `wall` ns that took `cpu` ns of CPU and was
    /// parked `parked` ns; `longest`: it is the longest so far.
    #[cold]
    fn record(&self, wall: u64, cpu: u64, parked: u64, longest: bool) {
        self.iteration_ns_log2[iteration_bucket(cpu)].inc();
        if wall >= LONG_ITERATION_NS {
            self.long_iteration_ns_log2[iteration_bucket(cpu)].inc();
            self.long_wall_ns.add(wall);
            self.long_cpu_ns.add(cpu);
            self.long_parked_ns.add(parked);
        }
        if longest {
            self.longest_cpu_ns.set(cpu);
            self.longest_parked_ns.set(parked);
        }
    }
}

/// Buckets of [`PmdStats::iteration_ns_log2`].
pub const ITERATION_BUCKETS: usize = 24;

/// The [`PmdStats::iteration_ns_log2`] bucket of an iteration of `ns`.
#[inline]
pub fn iteration_bucket(ns: u64) -> usize {
    ((64 - (ns >> 10).leading_zeros()) as usize).min(ITERATION_BUCKETS - 1)
}

impl PmdStats {
    /// Adds one iteration's received and sent packets as one update
    /// (the PMD thread only).
    #[inline]
    fn add_packets(&self, rx: u64, tx: u64) {
        let seq = self.packets_seq.load(Ordering::Relaxed);
        self.packets_seq
            .store(seq.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.rx_packets.add(rx);
        self.tx_packets.add(tx);
        self.packets_seq
            .store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Packets received and sent, as of the end of one loop iteration (a
    /// consistent pair: see `packets_seq`). Retries while the PMD is
    /// between the two adds, which takes it a few instructions.
    pub fn packets(&self) -> (u64, u64) {
        loop {
            let before = self.packets_seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let rx = self.rx_packets.get();
            let tx = self.tx_packets.get();
            std::sync::atomic::fence(Ordering::Acquire);
            if self.packets_seq.load(Ordering::Relaxed) == before {
                return (rx, tx);
            }
        }
    }

    /// A human-readable block in the spirit of `dpif-netdev/pmd-stats-show`.
    pub fn render(&self) -> String {
        let (rx, tx) = self.packets();
        let busy = self.busy_cycles.get();
        let idle = self.idle_cycles.get();
        let total = busy + idle;
        let mut s = format!(
            "pmd thread index {}{}:\n  packets received: {}\n  packets sent: {}\n  bursts: {} (avg {:.1} packets/burst)\n  idle cycles: {} ({:.2}%)\n  processing cycles: {} ({:.2}%)\n",
            self.index,
            self.core.map(|c| format!(" core_id {c}")).unwrap_or_default(),
            rx,
            tx,
            self.rx_bursts.get(),
            rx as f64 / self.rx_bursts.get().max(1) as f64,
            idle,
            100.0 * idle as f64 / total.max(1) as f64,
            busy,
            100.0 * busy as f64 / total.max(1) as f64,
        );
        if rx > 0 {
            s += &format!(
                "  avg processing cycles per packet: {:.1}\n",
                busy as f64 / rx as f64
            );
        }
        s += &format!(
            "  longest iteration: {} ns\n",
            self.longest_iteration_ns.get()
        );
        let drops = self.drops.nonzero();
        s += &format!("  dropped: {}\n", drops.iter().map(|d| d.1).sum::<u64>());
        for (r, n) in drops {
            s += &format!("    {}: {}\n", r.key(), n);
        }
        s
    }
}

/// Why a PMD thread failed, or did not answer the control thread.
#[derive(Debug, thiserror::Error)]
pub enum PmdError {
    /// [`Mailbox::ask`] timed out.
    #[error("the PMD thread did not answer in time (is it stuck or stopped?)")]
    NoAnswer,
    /// The thread could not be pinned to its core.
    #[error("PMD {index}: cannot pin to core {core}")]
    Pin {
        /// PMD index.
        index: usize,
        /// The configured core.
        core: usize,
    },
    /// The thread's `init` (DPDK thread registration) failed.
    #[error(transparent)]
    Init(Box<dyn std::error::Error + Send + Sync>),
    /// The thread panicked.
    #[error("PMD thread {0} panicked")]
    Panicked(usize),
}

/// The control registry's handlers answer with text.
impl From<PmdError> for String {
    fn from(e: PmdError) -> String {
        e.to_string()
    }
}

/// The ports every PMD uses, as one immutable value (see the module
/// documentation). `ports[n]` is the handle of ofport `n`; `rx[i]` the
/// (ofport, rx queue) pairs PMD `i` polls; `ofports` every port, in
/// order, for flooding.
#[derive(Debug, Clone)]
pub struct PortTable<P> {
    /// Increases with every publication.
    pub generation: u64,
    /// Handles by OpenFlow port number (`None`: no port).
    pub ports: Vec<Option<P>>,
    /// Each PMD's rx queues, by PMD index.
    pub rx: Vec<Vec<(PortNo, u16)>>,
    /// Every port number in the table.
    pub ofports: Vec<PortNo>,
}

impl<P> PortTable<P> {
    /// An empty table for `n_pmds` PMDs.
    pub fn empty(n_pmds: usize) -> Self {
        PortTable {
            generation: 0,
            ports: Vec::new(),
            rx: (0..n_pmds).map(|_| Vec::new()).collect(),
            ofports: Vec::new(),
        }
    }

    /// Adds (or replaces) port `no` whose rx queue `q` is polled by PMD
    /// `pmds[q]`.
    pub fn insert(&mut self, no: PortNo, port: P, pmds: &[usize]) {
        self.remove(no);
        let i = no.0 as usize;
        if self.ports.len() <= i {
            self.ports.resize_with(i + 1, || None);
        }
        self.ports[i] = Some(port);
        for (q, &pmd) in pmds.iter().enumerate() {
            if self.rx.len() <= pmd {
                self.rx.resize_with(pmd + 1, Vec::new);
            }
            self.rx[pmd].push((no, q as u16));
        }
        self.ofports.push(no);
        self.ofports.sort_unstable();
    }

    /// Removes port `no` (its handle and every rx queue); whether it was
    /// there.
    pub fn remove(&mut self, no: PortNo) -> bool {
        let had = matches!(self.ports.get(no.0 as usize), Some(Some(_)));
        if let Some(slot) = self.ports.get_mut(no.0 as usize) {
            *slot = None;
        }
        while matches!(self.ports.last(), Some(None)) {
            self.ports.pop();
        }
        for r in &mut self.rx {
            r.retain(|&(p, _)| p != no);
        }
        self.ofports.retain(|&p| p != no);
        had
    }
}

/// The published [`PortTable`], the generation PMDs compare against, and
/// each PMD's epoch (the generation it runs, `u64::MAX` once it stopped).
#[derive(Debug)]
pub struct SharedPorts<P> {
    table: ArcSwap<PortTable<P>>,
    published: AtomicU64,
    epochs: Box<[CachePadded<AtomicU64>]>,
    writer: Mutex<()>,
    /// The commit barrier (see [`SharedPorts::barrier`]).
    barrier: CommitBarrier,
}

/// How long a PMD parked for a node commit waits for the committing
/// thread to start publishing before it gives the attempt up and goes
/// back to forwarding (the committer then tries again): the longest a
/// descheduled or paused committer can hold a PMD. A few bursts' worth:
/// enough for the other PMDs to reach their burst boundary.
pub const PARK_PATIENCE: Duration = Duration::from_micros(200);

/// How long the committing thread waits for the PMDs to park without
/// giving up its CPU; after that it yields between checks (a PMD may
/// share its core, or be in a long iteration).
const COMMITTER_SPIN: Duration = Duration::from_millis(2);

/// The states of [`CommitBarrier::phase`] (its low two bits; the rest is
/// the attempt number).
const IDLE: u64 = 0;
const HOLD: u64 = 1;
const PUBLISHING: u64 = 2;
const ABORTED: u64 = 3;

/// The workers' barrier of a node commit (VPP's
/// `vlib_worker_thread_barrier_sync`), made abortable by the PMDs so that
/// the committing thread's scheduling never holds them:
/// 1. the committer (on its CPU, spinning) raises attempt `a` (`HOLD`);
/// 2. each PMD, at its next burst boundary, parks for `a` (its `parked`
///    slot says `a`) and spins while the phase is `a`'s, without yielding
///    its core unless the committer waits on the same CPU;
/// 3. once every PMD is parked for `a` (or stopped), the committer claims
///    the attempt (`HOLD` → `PUBLISHING`, one compare-and-swap), stores
///    the prepared parts (pointer stores only) and lowers it (`IDLE`);
/// 4. a PMD parked longer than [`PARK_PATIENCE`] while the attempt is
///    still `HOLD` (the committer was descheduled, or another PMD is in a
///    long iteration) gives it up (`HOLD` → `ABORTED`, the same
///    compare-and-swap): every PMD resumes forwarding and the committer,
///    whose claim then fails, raises a new attempt.
///
/// Exactly one of the claim and the give-up succeeds, so no PMD
/// processes a packet while the parts are swapped, and every PMD resumes
/// with all of them: a commit is seen whole or not at all. What a
/// descheduled committer can cost a PMD is bounded by [`PARK_PATIENCE`]
/// before the claim; after it, by the publication itself (a few pointer
/// stores, everything expensive being prepared before and released after).
#[derive(Debug)]
struct CommitBarrier {
    /// `attempt << 2 | state`.
    phase: AtomicU64,
    /// Per PMD: the attempt it is parked for (0: not parked).
    parked: Box<[CachePadded<AtomicU64>]>,
    /// Serialises barrier holders; the last attempt number.
    holder: Mutex<u64>,
    /// Attempts given up by a parked PMD.
    aborted: AtomicU64,
    /// The CPU the committer last ran on while waiting for the PMDs
    /// (`usize::MAX`: unknown): a PMD parked on that CPU yields it.
    committer_cpu: std::sync::atomic::AtomicUsize,
}

/// The PMDs were not all parked at a burst boundary at once in time.
#[derive(Debug, thiserror::Error)]
#[error("PMD thread {pmd} did not reach a burst boundary within {waited:?} (is it stuck?; {attempts} attempt(s) to park every PMD at once); nothing was changed")]
pub struct BarrierError {
    /// The PMD waited for last.
    pub pmd: usize,
    /// How long we waited.
    pub waited: Duration,
    /// Attempts made (each but the last given up by a PMD).
    pub attempts: u32,
}

/// The CPU the calling thread runs on (`usize::MAX` if unknown).
#[allow(unsafe_code)]
fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions and touches no memory of
    // ours.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).unwrap_or(usize::MAX)
}

/// The committing thread at the lowest real-time priority
/// (`SCHED_FIFO`, priority 1) while it publishes a claimed barrier
/// attempt, so that no ordinary
/// thread preempts it while the PMDs wait for its stores (on a loaded
/// machine a preempted committer held them for tens of milliseconds);
/// its policy is restored on drop. Without the privilege (no
/// `CAP_SYS_NICE`, or no real-time budget in its cgroup) the thread keeps
/// its priority, said once in the log; a thread already real-time is left
/// alone.
struct RtBoost {
    restore: Option<(libc::c_int, libc::sched_param)>,
}

/// The real-time boost was refused once (not tried again).
static RT_REFUSED: AtomicBool = AtomicBool::new(false);

impl RtBoost {
    #[allow(unsafe_code)]
    fn new() -> Self {
        let none = RtBoost { restore: None };
        if RT_REFUSED.load(Ordering::Relaxed) {
            return none;
        }
        // SAFETY: with pid 0 these act on the calling thread only; the
        // parameter pointers are to live locals of the right type.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut old: libc::sched_param = std::mem::zeroed();
            if policy < 0 || libc::sched_getparam(0, &mut old) != 0 {
                return none;
            }
            let base = policy & !libc::SCHED_RESET_ON_FORK;
            if base == libc::SCHED_FIFO || base == libc::SCHED_RR {
                return none;
            }
            let rt = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) != 0 {
                let e = std::io::Error::last_os_error();
                if !RT_REFUSED.swap(true, Ordering::Relaxed) {
                    tracing::info!("node commits publish at the committing thread's usual priority (SCHED_FIFO refused: {e}); under CPU load a preempted committer can hold the PMDs longer: grant CAP_SYS_NICE to avoid it");
                }
                return none;
            }
            RtBoost {
                restore: Some((policy, old)),
            }
        }
    }
}

impl Drop for RtBoost {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if let Some((policy, old)) = self.restore.take() {
            // SAFETY: as in `new`: the calling thread, a live local.
            let r = unsafe { libc::sched_setscheduler(0, policy, &old) };
            if r != 0 {
                tracing::warn!(
                    "the committing thread could not return to its scheduling policy: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// A PMD did not pick up a port table in time.
#[derive(Debug, thiserror::Error)]
#[error("PMD thread {pmd} did not pass a burst boundary within {waited:?} (is it stuck?); the port table generation {generation} is published but the old ports may still be in use")]
pub struct PmdWaitError {
    /// The PMD index.
    pub pmd: usize,
    /// The generation waited for.
    pub generation: u64,
    /// How long we waited.
    pub waited: Duration,
}

/// A port table built by [`SharedPorts::prepare`], published by
/// [`PreparedTable::publish`] (one pointer swap, for a commit barrier).
/// It holds the writers' lock from preparation until dropped, so no other
/// update interleaves; the table it replaced is freed when it is dropped,
/// outside the barrier. Dropped unpublished, nothing changes.
#[derive(Debug)]
pub struct PreparedTable<'a, P> {
    shared: &'a SharedPorts<P>,
    _writer: std::sync::MutexGuard<'a, ()>,
    next: Option<Arc<PortTable<P>>>,
    old: Option<Arc<PortTable<P>>>,
    generation: u64,
}

impl<P> PreparedTable<'_, P> {
    /// The generation the table gets once published.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether [`PreparedTable::publish`] ran.
    pub fn is_published(&self) -> bool {
        self.old.is_some()
    }

    /// Makes the table the one in force: a pointer swap and a store; no
    /// lock, no allocation, no free (the old table is kept until `self`
    /// is dropped). A second call does nothing.
    pub fn publish(&mut self) {
        if let Some(next) = self.next.take() {
            self.old = Some(self.shared.table.swap(next));
            self.shared
                .published
                .store(self.generation, Ordering::Release);
        }
    }
}

impl<P: Clone> SharedPorts<P> {
    /// Publishes `table` (its generation is set to 0 then increased by
    /// every [`SharedPorts::update`]) for `n_pmds` PMDs.
    pub fn new(n_pmds: usize, mut table: PortTable<P>) -> Self {
        table.generation = 0;
        if table.rx.len() < n_pmds {
            table.rx.resize_with(n_pmds, Vec::new);
        }
        SharedPorts {
            table: ArcSwap::from_pointee(table),
            published: AtomicU64::new(0),
            epochs: (0..n_pmds)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            writer: Mutex::new(()),
            barrier: CommitBarrier {
                phase: AtomicU64::new(IDLE),
                parked: (0..n_pmds)
                    .map(|_| CachePadded::new(AtomicU64::new(0)))
                    .collect(),
                holder: Mutex::new(0),
                aborted: AtomicU64::new(0),
                committer_cpu: std::sync::atomic::AtomicUsize::new(usize::MAX),
            },
        }
    }

    /// Runs `f` while every PMD is parked between bursts (or stopped): the
    /// changes `f` publishes (port table, flow program, Service table,
    /// VTEPs, ingress, settings) become visible to every PMD at once, when
    /// they resume. `f` must only store what was prepared before: the PMDs
    /// wait for it. See [`CommitBarrier`] for how a PMD that waits too
    /// long for the committer gives the attempt up (then another is made,
    /// until `timeout`).
    ///
    /// # Errors
    /// [`BarrierError`] when the PMDs were not all parked at once within
    /// `timeout`; then `f` did not run and the PMDs resume unchanged.
    pub fn barrier<R>(&self, timeout: Duration, f: impl FnOnce() -> R) -> Result<R, BarrierError> {
        self.barrier_with(timeout, || (), f).map(|(r, _)| r)
    }

    /// [`SharedPorts::barrier`], calling `parked` each time every PMD is
    /// parked, before the attempt is claimed (a test hook: a committer
    /// paused there must not hold the PMDs). Returns what `f` returned and
    /// the number of attempts.
    ///
    /// # Errors
    /// As [`SharedPorts::barrier`].
    pub fn barrier_with<R>(
        &self,
        timeout: Duration,
        mut parked: impl FnMut(),
        f: impl FnOnce() -> R,
    ) -> Result<(R, u32), BarrierError> {
        let b = &self.barrier;
        let mut last = b.holder.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = Instant::now();
        let mut attempts = 0u32;
        // Lowers the barrier on every path (also if `f` panics): the PMDs
        // resume.
        struct Lower<'a>(&'a AtomicU64);
        impl Drop for Lower<'_> {
            fn drop(&mut self) {
                self.0.store(IDLE, Ordering::Release);
            }
        }
        loop {
            attempts += 1;
            *last += 1;
            let a = *last;
            let hold = (a << 2) | HOLD;
            let lower = Lower(&b.phase);
            b.phase.store(hold, Ordering::SeqCst);
            let t_attempt = Instant::now();
            let mut waiting = 0;
            let all_parked = loop {
                b.committer_cpu.store(current_cpu(), Ordering::Relaxed);
                let missing = b.parked.iter().enumerate().find(|(i, p)| {
                    p.load(Ordering::SeqCst) != a
                        && self.epochs[*i].load(Ordering::Acquire) != u64::MAX
                });
                match missing {
                    None => break true,
                    Some((i, _)) => waiting = i,
                }
                if b.phase.load(Ordering::Acquire) != hold {
                    // A parked PMD gave the attempt up.
                    break false;
                }
                if t0.elapsed() > timeout {
                    return Err(BarrierError {
                        pmd: waiting,
                        waited: timeout,
                        attempts,
                    });
                }
                if t_attempt.elapsed() < COMMITTER_SPIN {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            };
            if all_parked {
                parked();
                // From here until the barrier is lowered no ordinary
                // thread takes this one's CPU.
                let boost = RtBoost::new();
                if b.phase
                    .compare_exchange(
                        hold,
                        (a << 2) | PUBLISHING,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    )
                    .is_ok()
                {
                    let r = f();
                    drop(lower);
                    drop(boost);
                    return Ok((r, attempts));
                }
            }
            // Given up by a PMD: it and the others forward a burst, then
            // park for the next attempt.
            drop(lower);
            if t0.elapsed() > timeout {
                return Err(BarrierError {
                    pmd: waiting,
                    waited: timeout,
                    attempts,
                });
            }
        }
    }

    /// Barrier attempts given up by a parked PMD because the committer
    /// did not claim them within [`PARK_PATIENCE`].
    pub fn barrier_aborts(&self) -> u64 {
        self.barrier.aborted.load(Ordering::Relaxed)
    }

    /// Called by PMD `index` at a burst boundary: parks while a barrier
    /// attempt is raised. One relaxed load when none is.
    #[inline]
    fn park_if_held(&self, index: usize) {
        let p = self.barrier.phase.load(Ordering::Relaxed);
        if p & 3 != HOLD {
            return;
        }
        self.park(index, p);
    }

    #[cold]
    fn park(&self, index: usize, hold: u64) {
        let b = &self.barrier;
        let Some(parked) = b.parked.get(index) else {
            return;
        };
        let a = hold >> 2;
        let publishing = (a << 2) | PUBLISHING;
        parked.store(a, Ordering::SeqCst);
        let since = Instant::now();
        let cpu = current_cpu();
        loop {
            let p = b.phase.load(Ordering::Acquire);
            if p == hold {
                if since.elapsed() > PARK_PATIENCE
                    && b.phase
                        .compare_exchange(
                            hold,
                            (a << 2) | ABORTED,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                {
                    b.aborted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            } else if p != publishing {
                // Lowered, given up, or a newer attempt (parked for at
                // the next boundary, after a burst).
                break;
            }
            // Spin without yielding: the core is the PMD's, and on a
            // shared one a yield hands it to another thread for a whole
            // time slice (milliseconds), counted as parked. Unless the
            // committer waits on this very CPU (threads not pinned, or
            // the PMD on the control threads' core): then it must run.
            if b.committer_cpu.load(Ordering::Relaxed) == cpu {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        parked.store(0, Ordering::Release);
    }

    /// A copy of the table in force changed by `f`, for
    /// [`PreparedTable::publish`] (inside a commit barrier); returns what
    /// `f` returned. Other writers wait until it is dropped.
    pub fn prepare<R>(&self, f: impl FnOnce(&mut PortTable<P>) -> R) -> (R, PreparedTable<'_, P>) {
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = PortTable::clone(&self.table.load());
        let r = f(&mut t);
        t.generation += 1;
        let generation = t.generation;
        (
            r,
            PreparedTable {
                shared: self,
                _writer: w,
                next: Some(Arc::new(t)),
                old: None,
                generation,
            },
        )
    }
    /// The table in force.
    pub fn load(&self) -> Arc<PortTable<P>> {
        self.table.load_full()
    }

    /// Number of PMDs the table serves.
    pub fn n_pmds(&self) -> usize {
        self.epochs.len()
    }

    /// Publishes a copy of the current table changed by `f` (writers are
    /// serialised); returns what `f` returned and the new generation.
    /// PMDs pick it up at their next burst boundary.
    pub fn update<R>(&self, f: impl FnOnce(&mut PortTable<P>) -> R) -> (R, u64) {
        let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = PortTable::clone(&self.table.load());
        let r = f(&mut t);
        t.generation += 1;
        let g = t.generation;
        self.table.store(Arc::new(t));
        self.published.store(g, Ordering::Release);
        (r, g)
    }

    /// Waits until every PMD runs generation `generation` or later (or has
    /// stopped): no burst that began with an older table is still in
    /// flight. Polls the epochs (a control-thread wait, never a PMD's).
    ///
    /// # Errors
    /// [`PmdWaitError`] when a PMD did not get there within `timeout`.
    pub fn wait_for_pmds(&self, generation: u64, timeout: Duration) -> Result<(), PmdWaitError> {
        let t0 = Instant::now();
        for (pmd, e) in self.epochs.iter().enumerate() {
            while e.load(Ordering::Acquire) < generation {
                if t0.elapsed() > timeout {
                    return Err(PmdWaitError {
                        pmd,
                        generation,
                        waited: timeout,
                    });
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }

    /// The generation PMD `pmd` runs (`u64::MAX`: stopped).
    pub fn epoch(&self, pmd: usize) -> u64 {
        self.epochs
            .get(pmd)
            .map_or(u64::MAX, |e| e.load(Ordering::Acquire))
    }

    #[inline]
    fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// One PMD's private copy of what it needs from the [`PortTable`].
struct LocalPorts<P> {
    generation: u64,
    ports: Vec<Option<P>>,
    rx: Vec<(PortNo, u16)>,
}

impl<P: Clone> LocalPorts<P> {
    /// Takes the published table (on a generation change; allocates).
    #[cold]
    fn reload<B: crate::packet::PacketBuf, L: Pipeline<B>>(
        &mut self,
        shared: &SharedPorts<P>,
        index: usize,
        pipeline: &mut L,
        out: &mut Output<B>,
    ) {
        let t = shared.load();
        self.generation = t.generation;
        self.ports.clone_from(&t.ports);
        self.rx.clone_from(t.rx.get(index).unwrap_or(&Vec::new()));
        out.grow(t.ports.len());
        pipeline.set_ports(&t.ofports);
        if let Some(e) = shared.epochs.get(index) {
            e.store(self.generation, Ordering::Release);
        }
    }
}

/// What one PMD thread serves.
#[derive(Debug, Clone, Default)]
pub struct PmdSpec {
    /// Index among PMDs; also its tx queue id on every port.
    pub index: usize,
    /// CPU to pin to (None: do not pin, for tests).
    pub core: Option<usize>,
    /// (port number, rx queue) pairs this PMD polls, for [`spawn`] (fixed
    /// ports); [`spawn_shared`] reads them from the [`PortTable`].
    pub rx: Vec<(PortNo, u16)>,
    /// The capture tap (`capture PORT FILE`), shared by all PMDs.
    pub capture: Option<Arc<Capture>>,
    /// Where the control socket asks this PMD to describe its caches.
    pub mailbox: Option<Arc<Mailbox>>,
}

/// A request slot through which a control thread asks one PMD for a text
/// dump of its per-core state (`dump-cache`). The PMD checks the flag with
/// one relaxed load every few hundred microseconds and answers between
/// bursts; the asking thread waits for the answer with a bound.
#[derive(Debug, Default)]
pub struct Mailbox {
    requested: AtomicBool,
    answer: std::sync::Mutex<Option<String>>,
    ready: std::sync::Condvar,
}

impl Mailbox {
    /// Asks the PMD and waits at most `timeout` for its answer.
    pub fn ask(&self, timeout: std::time::Duration) -> Result<String, PmdError> {
        let mut ans = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        *ans = None;
        self.requested.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        while ans.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.requested.store(false, Ordering::Relaxed);
                return Err(PmdError::NoAnswer);
            }
            ans = self
                .ready
                .wait_timeout(ans, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(ans.take().unwrap_or_default())
    }

    /// Called by the PMD: answers a pending request with `f()`.
    #[inline]
    fn serve(&self, f: impl FnOnce() -> String) {
        if self.requested.load(Ordering::Relaxed) && self.requested.swap(false, Ordering::Acquire) {
            let text = f();
            *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
            self.ready.notify_all();
        }
    }
}

/// A running PMD thread.
#[derive(Debug)]
pub struct PmdThread {
    join: Option<JoinHandle<Result<(), PmdError>>>,
    /// Its counters.
    pub stats: Arc<PmdStats>,
}

impl PmdThread {
    /// Waits for the thread to finish (after the stop flag is set).
    pub fn join(mut self) -> Result<(), PmdError> {
        match self.join.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(PmdError::Panicked(self.stats.index)),
            None => Ok(()),
        }
    }
}

/// Starts a PMD thread over a fixed set of ports.
///
/// `ports` is indexed by port number (`None` for unused numbers); each PMD
/// gets its own handles. `init` runs first on the new thread (DPDK thread
/// registration) and its guard lives as long as the loop.
pub fn spawn<P, L, G, E>(
    spec: PmdSpec,
    ports: Vec<Option<P>>,
    pipeline: L,
    stop: Arc<AtomicBool>,
    init: impl FnOnce() -> Result<G, E> + Send + 'static,
) -> std::io::Result<PmdThread>
where
    P: Port + Clone + Sync + 'static,
    L: Pipeline<P::Buf> + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut table = PortTable::empty(spec.index + 1);
    table.ofports = (0..ports.len())
        .filter(|&i| ports[i].is_some())
        .map(|i| PortNo(i as u16))
        .collect();
    table.ports = ports;
    table.rx[spec.index] = spec.rx.clone();
    let shared = Arc::new(SharedPorts::new(spec.index + 1, table));
    // Every other PMD of this table is absent: mark it stopped.
    for (i, e) in shared.epochs.iter().enumerate() {
        if i != spec.index {
            e.store(u64::MAX, Ordering::Release);
        }
    }
    spawn_shared(spec, shared, pipeline, stop, init)
}

/// Starts a PMD thread whose ports are the published [`PortTable`] of
/// `shared` (PMD `spec.index` of it); see the module documentation.
pub fn spawn_shared<P, L, G, E>(
    spec: PmdSpec,
    shared: Arc<SharedPorts<P>>,
    mut pipeline: L,
    stop: Arc<AtomicBool>,
    init: impl FnOnce() -> Result<G, E> + Send + 'static,
) -> std::io::Result<PmdThread>
where
    P: Port + Clone + Sync + 'static,
    L: Pipeline<P::Buf> + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let stats = Arc::new(PmdStats {
        index: spec.index,
        core: spec.core,
        ..Default::default()
    });
    let st = stats.clone();
    let join = std::thread::Builder::new()
        .name(format!("pmd{}", spec.index))
        .spawn(move || {
            if let Some(core) = spec.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    return Err(PmdError::Pin {
                        index: spec.index,
                        core,
                    });
                }
            }
            let _stopped = EpochOnExit(&shared, spec.index);
            let _guard = init().map_err(|e| PmdError::Init(Box::new(e)))?;
            let txq = spec.index as u16;
            let mut out = Output::new(0);
            out.drops = st.drops.clone();
            let mut local = LocalPorts {
                generation: u64::MAX,
                ports: Vec::new(),
                rx: Vec::new(),
            };
            let mut burst = Burst::new(PortNo(0));
            let mut since_maintain: u64 = 0;
            let cpu_timing = std::env::var_os("SLUICE_PMD_CPU_TIMING").is_some();
            let mut cpu_last = if cpu_timing { thread_cpu_ns() } else { 0 };
            while !stop.load(Ordering::Relaxed) {
                let started = clock_ns();
                // A burst boundary: wait out a node commit, then pick up a
                // new port table.
                shared.park_if_held(spec.index);
                let parked = if cpu_timing {
                    clock_ns().saturating_sub(started)
                } else {
                    0
                };
                if shared.published() != local.generation {
                    local.reload(&shared, spec.index, &mut pipeline, &mut out);
                }
                let LocalPorts { ports, rx, .. } = &mut local;
                // Per-stage cycles (`pmd-perf-show`): a chain of counter
                // reads, a few per burst, each closing one stage, so the
                // stages of a busy iteration add up to it exactly.
                let t0 = cycles();
                let mut last = t0;
                let mut lap = |acc: &mut u64| {
                    let t = cycles();
                    *acc += t.wrapping_sub(last);
                    last = t;
                };
                let (mut c_rx, mut c_proc, mut c_tx) = (0u64, 0u64, 0u64);
                let mut got = 0usize;
                let mut sent = 0u64;
                for &(port_no, q) in rx.iter() {
                    let Some(Some(port)) = ports.get_mut(port_no.0 as usize) else {
                        continue;
                    };
                    let n = port.rx_burst(q, &mut burst.pkts, BURST_SIZE);
                    lap(&mut c_rx);
                    if n == 0 {
                        continue;
                    }
                    got += n;
                    st.rx_bursts.inc();
                    drop_chained(&mut burst, &mut out);
                    // The iteration's start time (one clock read per
                    // iteration, not one more per burst).
                    let now = started;
                    if let Some(c) = &spec.capture {
                        c.tap(port_no, &burst.pkts, now);
                    }
                    burst.in_port = port_no;
                    pipeline.process(now, &mut burst, &mut out);
                    lap(&mut c_proc);
                    sent += flush(&mut out, ports, txq, spec.capture.as_deref(), now);
                    lap(&mut c_tx);
                }
                since_maintain += 1;
                let every = if rx.is_empty() {
                    MAINTAIN_EVERY_NO_RX
                } else {
                    MAINTAIN_EVERY
                };
                if since_maintain >= every {
                    let now = clock_ns();
                    pipeline.maintain(now, &mut out);
                    if let Some(m) = &spec.mailbox {
                        m.serve(|| pipeline.dump_caches());
                    }
                    sent += flush(&mut out, ports, txq, spec.capture.as_deref(), now);
                    st.iterations.add(since_maintain);
                    since_maintain = 0;
                }
                let t1 = cycles();
                let dt = t1.wrapping_sub(t0);
                if got > 0 || sent > 0 {
                    st.add_packets(got as u64, sent);
                }
                if got > 0 {
                    st.busy_cycles.add(dt);
                    st.rx_cycles.add(c_rx);
                    st.process_cycles.add(c_proc);
                    st.tx_cycles.add(c_tx);
                    st.other_cycles.add(dt.saturating_sub(c_rx + c_proc + c_tx));
                } else {
                    st.idle_cycles.add(dt);
                }
                let ns = clock_ns().saturating_sub(started);
                st.iteration_ns_log2[iteration_bucket(ns)].inc();
                let longest = ns > st.longest_iteration_ns.get();
                if longest {
                    st.longest_iteration_ns.set(ns);
                }
                if cpu_timing {
                    let c = thread_cpu_ns();
                    st.cpu
                        .record(ns, c.saturating_sub(cpu_last), parked, longest);
                    cpu_last = c;
                }
                // No queue to poll (a hand-over's processes before and
                // after they own the ports, or no port yet): give the core
                // to whoever polls (another process's PMD pinned to it).
                if local.rx.is_empty() {
                    std::thread::sleep(NO_RX_SLEEP);
                }
            }
            st.iterations.add(since_maintain);
            Ok(())
        })?;
    Ok(PmdThread {
        join: Some(join),
        stats,
    })
}

/// Marks a PMD stopped in its table's epochs when its thread ends (also
/// on an early error), so that writers never wait for it.
struct EpochOnExit<'a, P>(&'a SharedPorts<P>, usize);

impl<P> Drop for EpochOnExit<'_, P> {
    fn drop(&mut self) {
        if let Some(e) = self.0.epochs.get(self.1) {
            e.store(u64::MAX, Ordering::Release);
        }
    }
}

/// Sends what the pipeline staged; returns the packets the devices took.
#[inline]
fn flush<P: Port>(
    out: &mut Output<P::Buf>,
    ports: &mut [Option<P>],
    txq: u16,
    capture: Option<&Capture>,
    now: Nanos,
) -> u64 {
    let mut sent = 0u64;
    out.flush(|port_no, q| {
        if let Some(c) = capture {
            c.tap(port_no, q, now);
        }
        if let Some(Some(port)) = ports.get_mut(port_no.0 as usize) {
            sent += port.tx_burst(txq, q) as u64;
        }
    });
    // What a pipeline left for the local stack (none runs on this core:
    // the stack wrapper drains `local` itself) or for a controller (no
    // packet-in listener exists yet) is dropped, each under its own reason.
    drop_unserved(out);
    sent
}

/// Drops and counts (`rx_multi_segment`) received frames that span several
/// buffers, keeping the others in order: the pipeline reads frames as one
/// contiguous slice. One flag test per packet; nothing moves unless a
/// chained frame is present.
#[inline]
fn drop_chained<B: PacketBuf>(burst: &mut Burst<B>, out: &mut Output<B>) {
    if !burst.pkts.iter().any(PacketBuf::is_chained) {
        return;
    }
    for p in burst.pkts.extract_if(.., |p| p.is_chained()) {
        out.drop(crate::drop::DropReason::RxMultiSegment, p);
    }
}

/// Drops, with their reasons, packets left in `out.local` and
/// `out.controller` after a burst.
#[inline]
fn drop_unserved<B>(out: &mut Output<B>) {
    use crate::drop::DropReason;
    if !out.local.is_empty() {
        out.drops
            .add(DropReason::LocalNoStack, out.local.len() as u64);
        out.local.clear();
    }
    if !out.controller.is_empty() {
        out.drops
            .add(DropReason::NoController, out.controller.len() as u64);
        out.controller.clear();
    }
}

#[cfg(test)]
mod tests {
    /// Iteration lengths land in power-of-two buckets of 1,024 ns.
    #[test]
    fn iteration_buckets() {
        use super::{iteration_bucket, ITERATION_BUCKETS};
        assert_eq!(iteration_bucket(0), 0);
        assert_eq!(iteration_bucket(1023), 0);
        assert_eq!(iteration_bucket(1024), 1);
        assert_eq!(iteration_bucket(2047), 1);
        assert_eq!(iteration_bucket(2048), 2);
        assert_eq!(iteration_bucket(1 << 20), 11);
        assert_eq!(iteration_bucket(u64::MAX), ITERATION_BUCKETS - 1);
    }

    /// Issue 18, defect 7: chained (multi-segment) frames are dropped and
    /// counted at receive, the others keep their order.
    #[test]
    fn chained_frames_are_dropped_and_counted() {
        use crate::drop::DropReason;
        use crate::packet::testbuf::{Chained, TaggedBuf};
        type Seg = TaggedBuf<Chained>;
        let frame = |i: u8, chained| Seg::from_frame(&[i; 60], Chained(chained));
        let mut burst = Burst::new(PortNo(1));
        burst.pkts.extend([
            frame(1, false),
            frame(2, true),
            frame(3, false),
            frame(4, true),
            frame(5, false),
        ]);
        let mut out: Output<Seg> = Output::new(2);
        super::drop_chained(&mut burst, &mut out);
        let kept: Vec<u8> = burst.pkts.iter().map(|p| p.data()[0]).collect();
        assert_eq!(kept, [1, 3, 5], "the others keep their order");
        assert_eq!(out.drops.get(DropReason::RxMultiSegment), 2);
        // A burst without chained frames is left alone.
        super::drop_chained(&mut burst, &mut out);
        assert_eq!(burst.pkts.len(), 3);
        assert_eq!(out.drops.get(DropReason::RxMultiSegment), 2);
    }

    #[test]
    fn unserved_local_and_controller_packets_are_dropped_by_reason() {
        use crate::drop::DropReason;
        use crate::packet::HeapBuf;
        let mut out: Output<HeapBuf> = Output::new(1);
        out.send(PortNo::LOCAL, HeapBuf::from_frame(&[0; 60]));
        out.send(PortNo::CONTROLLER, HeapBuf::from_frame(&[0; 60]));
        out.send(PortNo::CONTROLLER, HeapBuf::from_frame(&[0; 60]));
        super::drop_unserved(&mut out);
        assert!(out.local.is_empty() && out.controller.is_empty());
        assert_eq!(out.drops.get(DropReason::LocalNoStack), 1);
        assert_eq!(out.drops.get(DropReason::NoController), 2);
        assert_eq!(out.drops.get(DropReason::NoSuchPort), 0);
    }

    use super::*;
    use crate::pipeline::l2::L2Pipeline;
    use crate::port::memory::MemPort;

    /// Waits (bounded: 60 s, generous for a loaded machine) until the port
    /// transmitted something.
    fn wait_for_frames(h: &crate::port::memory::MemPortHandle, what: &str) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let got = h.collect();
            if !got.is_empty() {
                return got;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    /// One PMD running the flow pipeline with every burst sampled: after
    /// 96 packets (a new flow, then cache hits) the stage counters have
    /// moved where the packets went (rx, parse, the slow path, the EMC,
    /// actions, tx), stayed at zero where they did not (conntrack,
    /// encap/decap, wrappers), and `pmd-perf-show`'s stages add up
    /// exactly to the busy cycles.
    #[cfg(feature = "dpdk")]
    #[test]
    fn stage_cycles_move_and_add_up_to_busy_cycles() {
        use crate::daemon::commands::{pmd_perf, PmdView};
        use crate::flow::key::testpkt::tcp4;
        use crate::flow::tables::FlowTables;
        use crate::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
        let (p0, h0) = MemPort::new("a");
        let (p1, h1) = MemPort::new("b");
        let tables = FlowTables::new();
        tables
            .add_flows(
                "priority=10,in_port=0,tcp actions=dec_ttl,output:1\npriority=0 actions=drop",
                0,
            )
            .expect("flows");
        let pipeline = FlowPipeline::new(
            tables,
            FlowPipelineConfig {
                ports: vec![PortNo(0), PortNo(1)],
                emc_insert_inv_prob: 1,
                perf_sample_every: 1,
                ..Default::default()
            },
        );
        let fstats = pipeline.stats();
        let stop = Arc::new(AtomicBool::new(false));
        let pmd = spawn(
            PmdSpec {
                index: 0,
                core: None,
                rx: vec![(PortNo(0), 0), (PortNo(1), 0)],
                capture: None,
                mailbox: None,
            },
            vec![Some(p0), Some(p1)],
            pipeline,
            stop.clone(),
            || Ok::<(), std::convert::Infallible>(()),
        )
        .unwrap();
        let f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, 64);
        let mut got = 0;
        for _ in 0..3 {
            for _ in 0..32 {
                h0.inject(&f);
            }
            let want = got + 32;
            let deadline = Instant::now() + Duration::from_secs(60);
            while got < want {
                got += h1.collect().len();
                assert!(
                    Instant::now() < deadline,
                    "timed out: {got} of {want} frames forwarded"
                );
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let stats = pmd.stats.clone();
        pmd.join().unwrap();
        let perf = &fstats.perf;
        assert_eq!(perf.packets.get(), 96);
        assert_eq!(stats.rx_packets.get(), 96);
        assert_eq!(
            perf.sampled_bursts.get(),
            perf.bursts.get(),
            "every burst sampled"
        );
        assert_eq!(perf.sampled_packets.get(), 96);
        assert_eq!(
            perf.sampled_total(),
            perf.body.get(),
            "sampled split = exact body"
        );
        let view = pmd_perf(&PmdView {
            pmd: stats.clone(),
            flow: Some(fstats.clone()),
            ct_cache: None,
        });
        let c = |name: &str| {
            view.stages
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no stage {name} in {view:?}"))
                .cycles
        };
        for moved in [
            "rx",
            "parse (key extraction, hash)",
            "classify: emc",
            "classify: classifier (upcall)",
            "actions",
            "tx",
        ] {
            assert!(c(moved) > 0, "{moved} did not move: {view:?}");
        }
        for still in ["conntrack", "encap/decap"] {
            assert_eq!(c(still), 0, "{still} moved: {view:?}");
        }
        assert_eq!(
            view.stages.iter().map(|s| s.cycles).sum::<u64>(),
            stats.busy_cycles.get(),
            "stages add up to the busy cycles: {view:?}"
        );
        assert_eq!(
            stats.rx_cycles.get()
                + stats.process_cycles.get()
                + stats.tx_cycles.get()
                + stats.other_cycles.get(),
            stats.busy_cycles.get()
        );
        assert!(perf.parse.get() + perf.body.get() <= stats.process_cycles.get());
        let text = sluice_api::Render::render(&sluice_api::pmd::PmdPerfReply { pmds: vec![view] });
        assert!(text.contains("packets received: 96"), "{text}");
        assert!(text.contains("classify: emc"), "{text}");
    }

    /// Two in-memory ports, one unpinned PMD running the L2 pipeline: a
    /// broadcast then a unicast reply cross the switch, and the counters
    /// add up. The wait is bounded by packet counts, not time.
    #[test]
    fn pmd_forwards_between_memory_ports() {
        let (p0, h0) = MemPort::new("a");
        let (p1, h1) = MemPort::new("b");
        let stop = Arc::new(AtomicBool::new(false));
        let mailbox = Arc::new(Mailbox::default());
        let pipeline = L2Pipeline::new(vec![PortNo(0), PortNo(1)], 64, u64::MAX);
        let pmd = spawn(
            PmdSpec {
                index: 0,
                core: None,
                rx: vec![(PortNo(0), 0), (PortNo(1), 0)],
                capture: None,
                mailbox: Some(mailbox.clone()),
            },
            vec![Some(p0), Some(p1)],
            pipeline,
            stop.clone(),
            || Ok::<(), std::convert::Infallible>(()),
        )
        .unwrap();
        let a = [2, 0, 0, 0, 0, 0xa];
        let b = [2, 0, 0, 0, 0, 0xb];
        let frame = |dst: [u8; 6], src: [u8; 6]| {
            let mut f = dst.to_vec();
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0x08, 0x00]);
            f.resize(60, 0);
            f
        };
        h0.inject(&frame([0xff; 6], a));
        let got1 = wait_for_frames(&h1, "the broadcast on port 1");
        assert_eq!(got1, vec![frame([0xff; 6], a)], "broadcast reached port 1");
        h1.inject(&frame(a, b));
        let got0 = wait_for_frames(&h0, "the unicast reply on port 0");
        assert_eq!(got0, vec![frame(a, b)], "unicast reply reached port 0");
        let dump = mailbox
            .ask(std::time::Duration::from_secs(60))
            .expect("the running PMD answers");
        assert_eq!(dump, "(this pipeline keeps no flow cache)\n");
        stop.store(true, Ordering::Relaxed);
        let stats = pmd.stats.clone();
        pmd.join().unwrap();
        assert_eq!(stats.rx_packets.get(), 2);
        assert_eq!(stats.tx_packets.get(), 2);
        assert_eq!(stats.drops.total(), 0);
        assert!(stats.render().contains("packets received: 2"));
    }

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0);
        f
    }

    /// The port table is republished while a PMD runs: an added port is
    /// polled and flooded to from the next burst boundary on, a deleted
    /// one is neither, and the writer's wait returns only once the PMD
    /// runs the new generation. Waits are bounded by packet counts and
    /// epochs, not time.
    #[test]
    fn pmd_sees_ports_added_and_deleted_between_bursts() {
        let (p1, h1) = MemPort::new("a");
        let (p2, h2) = MemPort::new("b");
        let (p3, h3) = MemPort::new("c");
        let mut table = PortTable::empty(1);
        table.insert(PortNo(1), p1, &[0]);
        let shared = Arc::new(SharedPorts::new(1, table));
        let stop = Arc::new(AtomicBool::new(false));
        let pipeline = L2Pipeline::new(vec![PortNo(1)], 64, u64::MAX);
        let pmd = spawn_shared(
            PmdSpec {
                index: 0,
                ..Default::default()
            },
            shared.clone(),
            pipeline,
            stop.clone(),
            || Ok::<(), std::convert::Infallible>(()),
        )
        .unwrap();
        let wait = |g| shared.wait_for_pmds(g, std::time::Duration::from_secs(60));

        // Add ports 2 and 3 (3 with its queue on the only PMD too).
        let (_, g) = shared.update(|t| t.insert(PortNo(2), p2, &[0]));
        let (_, g3) = shared.update(|t| t.insert(PortNo(3), p3, &[0]));
        assert!(g3 > g);
        wait(g3).unwrap();
        assert_eq!(shared.epoch(0), g3);
        let (a, b, c) = (
            [2, 0, 0, 0, 0, 0xa],
            [2, 0, 0, 0, 0, 0xb],
            [2, 0, 0, 0, 0, 0xc],
        );
        // A broadcast from the new port 2 floods to 1 and 3.
        h2.inject(&frame([0xff; 6], b));
        assert_eq!(
            wait_for_frames(&h1, "flood on 1"),
            vec![frame([0xff; 6], b)]
        );
        assert_eq!(
            wait_for_frames(&h3, "flood on 3"),
            vec![frame([0xff; 6], b)]
        );
        h3.inject(&frame([0xff; 6], c));
        wait_for_frames(&h1, "flood from 3 on 1");
        wait_for_frames(&h2, "flood from 3 on 2");

        // Delete port 2: after the wait the PMD no longer holds it.
        let (had, g) = shared.update(|t| t.remove(PortNo(2)));
        assert!(had);
        wait(g).unwrap();
        assert!(shared.load().ports.get(2).is_none_or(Option::is_none));
        // A frame queued on the deleted port is never received...
        h2.inject(&frame([0xff; 6], b));
        // ...a unicast to b's learnt MAC (flushed with the port) floods to
        // the remaining port only, and port 1's broadcast reaches 3, not 2.
        h1.inject(&frame(b, a));
        assert_eq!(
            wait_for_frames(&h3, "flood of unknown b on 3"),
            vec![frame(b, a)]
        );
        h1.inject(&frame([0xff; 6], a));
        assert_eq!(
            wait_for_frames(&h3, "broadcast on 3"),
            vec![frame([0xff; 6], a)]
        );
        assert!(h2.collect().is_empty(), "nothing is sent to a deleted port");

        // Re-add number 2 as a new port: it works.
        let (p4, h4) = MemPort::new("d");
        let (_, g) = shared.update(|t| t.insert(PortNo(2), p4, &[0]));
        wait(g).unwrap();
        h3.inject(&frame([0xff; 6], c));
        assert_eq!(
            wait_for_frames(&h4, "flood on the re-added port"),
            vec![frame([0xff; 6], c)]
        );
        wait_for_frames(&h1, "flood from 3 on 1 again");
        assert!(h2.collect().is_empty(), "the old port got nothing");
        stop.store(true, Ordering::Relaxed);
        let stats = pmd.stats.clone();
        pmd.join().unwrap();
        assert_eq!(
            shared.epoch(0),
            u64::MAX,
            "a stopped PMD is never waited for"
        );
        shared
            .wait_for_pmds(u64::MAX - 1, std::time::Duration::ZERO)
            .unwrap();
        // b, c, a (unicast), a (broadcast), c: the frame queued on the
        // deleted port was never received.
        assert_eq!(stats.rx_packets.get(), 5);
        assert_eq!(stats.drops.total(), 0);
    }

    /// Two PMD threads, each polling two ports, with one shared MAC table
    /// (`pipeline::l2`): an address learned by PMD 0 is forwarded to by
    /// PMD 1 without a flood and the other way round, and an address that
    /// moves to a port of PMD 1 is relearned for PMD 0 too. Each step waits
    /// for its frame (bounded), so the counters read after it are final.
    #[test]
    fn two_pmds_share_mac_learning_without_flooding() {
        use crate::pipeline::l2::MacTable;
        let (p1, h1) = MemPort::new("p1");
        let (p2, h2) = MemPort::new("p2");
        let (p3, h3) = MemPort::new("p3");
        let (p4, h4) = MemPort::new("p4");
        let mut table = PortTable::empty(2);
        table.insert(PortNo(1), p1, &[0]);
        table.insert(PortNo(2), p2, &[0]);
        table.insert(PortNo(3), p3, &[1]);
        table.insert(PortNo(4), p4, &[1]);
        let shared = Arc::new(SharedPorts::new(2, table));
        let stop = Arc::new(AtomicBool::new(false));
        let macs = MacTable::new(64, u64::MAX);
        let ports = vec![PortNo(1), PortNo(2), PortNo(3), PortNo(4)];
        let mut l2 = Vec::new();
        let mut pmds = Vec::new();
        for index in 0..2 {
            let pl = L2Pipeline::with_table(ports.clone(), macs.clone());
            l2.push(pl.stats());
            pmds.push(
                spawn_shared(
                    PmdSpec {
                        index,
                        ..Default::default()
                    },
                    shared.clone(),
                    pl,
                    stop.clone(),
                    || Ok::<(), std::convert::Infallible>(()),
                )
                .unwrap(),
            );
        }
        let (a, b, c) = (
            [2, 0, 0, 0, 0, 0xa],
            [2, 0, 0, 0, 0, 0xb],
            [2, 0, 0, 0, 0, 0xc],
        );
        // A broadcasts on port 1 (PMD 0): flooded, A learned.
        h1.inject(&frame([0xff; 6], a));
        for h in [&h2, &h3, &h4] {
            assert_eq!(
                wait_for_frames(h, "the broadcast"),
                vec![frame([0xff; 6], a)]
            );
        }
        // C on port 3 (PMD 1) to A: port 1 only.
        h3.inject(&frame(a, c));
        assert_eq!(wait_for_frames(&h1, "C to A"), vec![frame(a, c)]);
        assert_eq!(
            (l2[1].unicast.get(), l2[1].flooded.get()),
            (1, 0),
            "PMD 1 knew A from PMD 0's learning"
        );
        // A to C (PMD 0): port 3 only, C learned by PMD 1.
        h1.inject(&frame(c, a));
        assert_eq!(wait_for_frames(&h3, "A to C"), vec![frame(c, a)]);
        assert_eq!((l2[0].unicast.get(), l2[0].flooded.get()), (1, 1));
        // A moves to port 4 (PMD 1) and talks to C there.
        h4.inject(&frame(c, a));
        assert_eq!(
            wait_for_frames(&h3, "A to C from port 4"),
            vec![frame(c, a)]
        );
        // B on port 2 (PMD 0) to A: to port 4, where A is now.
        h2.inject(&frame(a, b));
        assert_eq!(wait_for_frames(&h4, "B to A"), vec![frame(a, b)]);
        assert_eq!(
            (l2[0].unicast.get(), l2[0].flooded.get()),
            (2, 1),
            "PMD 0 relearned A's move seen by PMD 1"
        );
        stop.store(true, Ordering::Relaxed);
        for p in pmds {
            p.join().unwrap();
        }
        for (h, what) in [
            (&h1, "port 1"),
            (&h2, "port 2"),
            (&h3, "port 3"),
            (&h4, "port 4"),
        ] {
            assert!(h.collect().is_empty(), "{what} got a flooded copy");
        }
        assert_eq!(l2[1].flooded.get(), 0);
        assert_eq!(macs.len(), 3);
    }

    /// Reads two values a commit always sets together; counts the bursts
    /// that saw them differ, and sends every packet back out.
    struct PairReader {
        pair: Arc<(AtomicU64, AtomicU64)>,
        torn: Arc<AtomicU64>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl<B: PacketBuf> Pipeline<B> for PairReader {
        fn process(&mut self, _now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
            if let Some(g) = &self.gate {
                // Stuck until the test releases it.
                let _ = g.recv();
            }
            let a = self.pair.0.load(Ordering::Acquire);
            for p in burst.pkts.drain(..) {
                // Spread the two reads over the burst.
                std::hint::black_box(p.data().len());
                out.send(burst.in_port, p);
            }
            if self.pair.1.load(Ordering::Acquire) != a {
                self.torn.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A commit published under the barrier is seen whole: while a PMD
    /// forwards, 500 barriers each store two values; no burst ever sees
    /// them differ, and inside the barrier the PMD is parked. Bounded by
    /// packet counts, not time.
    #[test]
    fn barrier_commits_are_seen_whole_by_the_pmd() {
        let (p1, h1) = MemPort::new("a");
        let mut table = PortTable::empty(1);
        table.insert(PortNo(1), p1, &[0]);
        let shared = Arc::new(SharedPorts::new(1, table));
        let stop = Arc::new(AtomicBool::new(false));
        let pair = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let torn = Arc::new(AtomicU64::new(0));
        let pmd = spawn_shared(
            PmdSpec::default(),
            shared.clone(),
            PairReader {
                pair: pair.clone(),
                torn: torn.clone(),
                gate: None,
            },
            stop.clone(),
            || Ok::<(), std::convert::Infallible>(()),
        )
        .unwrap();
        let f = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut sent = 0;
        for i in 1..=500u64 {
            h1.inject(&f);
            sent += 1;
            let parked = shared
                .barrier(Duration::from_secs(60), || {
                    pair.0.store(i, Ordering::Release);
                    // The PMD is parked: nothing reads between the stores.
                    let parked = shared.barrier.parked[0].load(Ordering::Acquire) != 0;
                    pair.1.store(i, Ordering::Release);
                    parked
                })
                .expect("the PMD parks");
            assert!(parked, "barrier {i}: the PMD was not parked");
        }
        let mut got = 0;
        while got < sent {
            got += wait_for_frames(&h1, "the frames sent back").len();
        }
        stop.store(true, Ordering::Relaxed);
        pmd.join().unwrap();
        assert_eq!(got, sent);
        assert_eq!(torn.load(Ordering::Relaxed), 0, "a burst saw half a commit");
    }

    /// A PMD stuck in a burst makes the barrier fail with its index, the
    /// commit does not run, and the PMD carries on once unstuck.
    #[test]
    fn barrier_fails_cleanly_when_a_pmd_is_stuck() {
        let (p1, h1) = MemPort::new("a");
        let mut table = PortTable::empty(1);
        table.insert(PortNo(1), p1, &[0]);
        let shared = Arc::new(SharedPorts::new(1, table));
        let stop = Arc::new(AtomicBool::new(false));
        let (release, gate) = std::sync::mpsc::channel();
        let pmd = spawn_shared(
            PmdSpec::default(),
            shared.clone(),
            PairReader {
                pair: Arc::default(),
                torn: Arc::default(),
                gate: Some(gate),
            },
            stop.clone(),
            || Ok::<(), std::convert::Infallible>(()),
        )
        .unwrap();
        // Let the PMD start, then make it take one burst and get stuck.
        shared
            .wait_for_pmds(0, Duration::from_secs(60))
            .expect("the PMD starts");
        h1.inject(&frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]));
        // The queue is drained once the PMD holds the burst.
        let deadline = Instant::now() + Duration::from_secs(60);
        while h1.pending() > 0 {
            assert!(Instant::now() < deadline, "the PMD never took the frame");
            std::thread::yield_now();
        }
        let mut ran = false;
        let e = shared
            .barrier(Duration::from_millis(200), || ran = true)
            .expect_err("a stuck PMD fails the barrier");
        assert_eq!(e.pmd, 0);
        assert!(!ran, "the commit ran without the PMD parked");
        assert!(e.to_string().contains("nothing was changed"), "{e}");
        release.send(()).unwrap();
        let _ = wait_for_frames(&h1, "the frame once unstuck");
        // And a barrier works again.
        shared
            .barrier(Duration::from_secs(60), || ())
            .expect("the PMD parks once unstuck");
        stop.store(true, Ordering::Relaxed);
        drop(release);
        pmd.join().unwrap();
    }

    /// A committer stopped after every PMD parked, before it publishes
    /// (what a descheduled committing thread looks like to the PMDs), does
    /// not hold the PMD: 100 frames injected meanwhile come back out one
    /// by one (each waited for, bounded); once the committer resumes, its
    /// claim of the given-up attempt fails, a new attempt publishes, and
    /// no burst ever saw half of the commit.
    #[test]
    fn a_committer_stopped_in_the_barrier_does_not_hold_the_pmd() {
        let (p1, h1) = MemPort::new("a");
        let mut table = PortTable::empty(1);
        table.insert(PortNo(1), p1, &[0]);
        let shared = Arc::new(SharedPorts::new(1, table));
        let stop = Arc::new(AtomicBool::new(false));
        let pair = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let torn = Arc::new(AtomicU64::new(0));
        let pmd = spawn_shared(
            PmdSpec::default(),
            shared.clone(),
            PairReader {
                pair: pair.clone(),
                torn: torn.clone(),
                gate: None,
            },
            stop.clone(),
            || Ok::<(), std::convert::Infallible>(()),
        )
        .unwrap();
        let f = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut stopped_once = false;
        let mut forwarded_while_stopped = 0;
        let (parked_seen, attempts) = shared
            .barrier_with(
                Duration::from_secs(60),
                || {
                    if stopped_once {
                        return;
                    }
                    stopped_once = true;
                    // Every PMD is parked for this attempt, and the
                    // committer stops here: the PMD must give the attempt
                    // up and forward every frame.
                    for i in 0..100 {
                        h1.inject(&f);
                        let got = wait_for_frames(
                            &h1,
                            &format!(
                                "frame {i} forwarded while the committer is stopped in the barrier (the PMD is held)"
                            ),
                        );
                        forwarded_while_stopped += got.len();
                    }
                },
                || {
                    pair.0.store(1, Ordering::Release);
                    let parked = shared.barrier.parked[0].load(Ordering::Acquire) != 0;
                    pair.1.store(1, Ordering::Release);
                    parked
                },
            )
            .expect("the commit is published once the committer resumes");
        assert!(parked_seen, "the PMD was not parked while publishing");
        assert_eq!(forwarded_while_stopped, 100);
        assert!(
            attempts >= 2,
            "the stopped attempt was published ({attempts} attempt)"
        );
        assert!(shared.barrier_aborts() >= 1);
        // The PMD runs with the commit.
        h1.inject(&f);
        wait_for_frames(&h1, "a frame after the commit");
        stop.store(true, Ordering::Relaxed);
        pmd.join().unwrap();
        assert_eq!(pair.0.load(Ordering::Relaxed), 1);
        assert_eq!(torn.load(Ordering::Relaxed), 0, "a burst saw half a commit");
    }

    /// The calling thread's scheduling policy (`/proc/thread-self/stat`,
    /// field 41: 0 normal, 1 FIFO).
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 1..];
        after
            .split_whitespace()
            .nth(38)
            .and_then(|v| v.parse().ok())
            .expect("policy field")
    }

    /// The publication runs at real-time priority when the process may
    /// (else the refusal is recorded), and the committing thread returns
    /// to its own policy after.
    #[test]
    fn the_committer_publishes_at_real_time_priority_then_returns_to_its_own() {
        let shared = SharedPorts::<u8>::new(1, PortTable::empty(1));
        // No PMD runs: the only one is stopped.
        shared.epochs[0].store(u64::MAX, Ordering::Release);
        let before = policy();
        assert_eq!(before, 0, "the test thread starts with the normal policy");
        let inside = shared
            .barrier(Duration::from_secs(60), policy)
            .expect("no PMD to wait for");
        assert_eq!(policy(), before, "the policy is restored after the barrier");
        if inside == 0 {
            // Refused (no CAP_SYS_NICE or no real-time budget): said once
            // in the log, and not tried again.
            assert!(
                RT_REFUSED.load(Ordering::Relaxed),
                "the stores ran at the normal policy without a refusal"
            );
            eprintln!("SCHED_FIFO refused here: the boost is off");
            return;
        }
        assert_eq!(inside, 1, "the stores ran with SCHED_FIFO");
    }

    #[test]
    fn port_table_insert_and_remove_keep_queues_and_flood_list() {
        let mut t: PortTable<u8> = PortTable::empty(2);
        t.insert(PortNo(5), 5, &[1, 0]);
        t.insert(PortNo(2), 2, &[0]);
        assert_eq!(t.ofports, vec![PortNo(2), PortNo(5)]);
        assert_eq!(t.rx[0], vec![(PortNo(5), 1), (PortNo(2), 0)]);
        assert_eq!(t.rx[1], vec![(PortNo(5), 0)]);
        assert_eq!(t.ports.len(), 6);
        assert!(t.remove(PortNo(5)));
        assert!(!t.remove(PortNo(5)));
        assert_eq!(t.ports.len(), 3, "trailing empty slots are trimmed");
        assert_eq!(t.rx[1], vec![]);
        assert_eq!(t.ofports, vec![PortNo(2)]);
    }
}
