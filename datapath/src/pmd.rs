//! Poll-mode threads: one per configured core.
//!
//! A PMD thread is pinned to its core (core_affinity), owns its rx queues
//! and one tx queue on every port (queue id = PMD index), and one
//! [`Pipeline`] instance (per-core state: MAC table, caches). It loops:
//! for each of its rx queues, receive a burst of up to 32, process it,
//! flush the staged output to the ports' tx queues. Time spent in
//! iterations that received packets counts as busy cycles, the rest as
//! idle, as OVS's `pmd-stats-show` does.
//!
//! Every `MAINTAIN_EVERY` iterations it calls `Pipeline::maintain` (aging,
//! program updates). It stops when the shared stop flag is set (SIGTERM,
//! SIGINT, `exit` on the control socket), flushing what it holds.
//!
//! Thread-safety: the only shared state is [`PmdStats`] (single-writer
//! counters) and the stop flag; nothing on the hot path locks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::capture::Capture;
use crate::packet::{Burst, Output, PortNo, BURST_SIZE};
use crate::pipeline::Pipeline;
use crate::port::Port;
use crate::stats::{Counter, DropCounters};
use crate::time::{clock_ns, cycles, Nanos};

/// Iterations between two `maintain` calls.
const MAINTAIN_EVERY: u64 = 1024;

/// Counters of one PMD thread, readable from any thread.
#[derive(Debug, Default)]
pub struct PmdStats {
    /// PMD index (tx queue id).
    pub index: usize,
    /// The CPU it is pinned to (None: not pinned).
    pub core: Option<usize>,
    /// Packets received.
    pub rx_packets: Counter,
    /// Packets handed to tx queues and accepted by the device.
    pub tx_packets: Counter,
    /// Bursts that carried at least one packet.
    pub rx_bursts: Counter,
    /// Cycles spent in iterations that received packets.
    pub busy_cycles: Counter,
    /// Cycles spent in iterations that received nothing.
    pub idle_cycles: Counter,
    /// Loop iterations.
    pub iterations: Counter,
    /// Drops by reason (shared with the pipeline's `Output`).
    pub drops: DropCounters,
}

impl PmdStats {
    /// A human-readable block in the spirit of `dpif-netdev/pmd-stats-show`.
    pub fn render(&self) -> String {
        let rx = self.rx_packets.get();
        let busy = self.busy_cycles.get();
        let idle = self.idle_cycles.get();
        let total = busy + idle;
        let mut s = format!(
            "pmd thread index {}{}:\n  packets received: {}\n  packets sent: {}\n  bursts: {} (avg {:.1} packets/burst)\n  idle cycles: {} ({:.2}%)\n  processing cycles: {} ({:.2}%)\n",
            self.index,
            self.core.map(|c| format!(" core_id {c}")).unwrap_or_default(),
            rx,
            self.tx_packets.get(),
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

/// What one PMD thread serves.
#[derive(Debug, Clone, Default)]
pub struct PmdSpec {
    /// Index among PMDs; also its tx queue id on every port.
    pub index: usize,
    /// CPU to pin to (None: do not pin, for tests).
    pub core: Option<usize>,
    /// (port number, rx queue) pairs this PMD polls.
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

/// Starts a PMD thread.
///
/// `ports` is indexed by port number (`None` for unused numbers); each PMD
/// gets its own handles. `init` runs first on the new thread (DPDK thread
/// registration) and its guard lives as long as the loop.
pub fn spawn<P, L, G, E>(
    spec: PmdSpec,
    mut ports: Vec<Option<P>>,
    mut pipeline: L,
    stop: Arc<AtomicBool>,
    init: impl FnOnce() -> Result<G, E> + Send + 'static,
) -> std::io::Result<PmdThread>
where
    P: Port + 'static,
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
            let _guard = init().map_err(|e| PmdError::Init(Box::new(e)))?;
            let txq = spec.index as u16;
            let mut out = Output::new(ports.len());
            out.drops = st.drops.clone();
            let mut burst = Burst::new(PortNo(0));
            let mut iter: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let t0 = cycles();
                let mut got = 0usize;
                for &(port_no, q) in &spec.rx {
                    let Some(Some(port)) = ports.get_mut(port_no.0 as usize) else {
                        continue;
                    };
                    let n = port.rx_burst(q, &mut burst.pkts, BURST_SIZE);
                    if n == 0 {
                        continue;
                    }
                    got += n;
                    st.rx_bursts.inc();
                    let now = clock_ns();
                    if let Some(c) = &spec.capture {
                        c.tap(port_no, &burst.pkts, now);
                    }
                    burst.in_port = port_no;
                    pipeline.process(now, &mut burst, &mut out);
                    flush(&mut out, &mut ports, txq, &st, spec.capture.as_deref(), now);
                }
                iter += 1;
                if iter.is_multiple_of(MAINTAIN_EVERY) {
                    let now = clock_ns();
                    pipeline.maintain(now, &mut out);
                    if let Some(m) = &spec.mailbox {
                        m.serve(|| pipeline.dump_caches());
                    }
                    flush(&mut out, &mut ports, txq, &st, spec.capture.as_deref(), now);
                    st.iterations.add(MAINTAIN_EVERY);
                }
                let dt = cycles().wrapping_sub(t0);
                if got > 0 {
                    st.rx_packets.add(got as u64);
                    st.busy_cycles.add(dt);
                } else {
                    st.idle_cycles.add(dt);
                }
            }
            st.iterations.add(iter % MAINTAIN_EVERY);
            Ok(())
        })?;
    Ok(PmdThread {
        join: Some(join),
        stats,
    })
}

#[inline]
fn flush<P: Port>(
    out: &mut Output<P::Buf>,
    ports: &mut [Option<P>],
    txq: u16,
    st: &PmdStats,
    capture: Option<&Capture>,
    now: Nanos,
) {
    out.flush(|port_no, q| {
        if let Some(c) = capture {
            c.tap(port_no, q, now);
        }
        if let Some(Some(port)) = ports.get_mut(port_no.0 as usize) {
            let sent = port.tx_burst(txq, q);
            st.tx_packets.add(sent as u64);
        }
    });
    // What a pipeline left for the local stack (none runs on this core:
    // the stack wrapper drains `local` itself) or for a controller (no
    // packet-in listener exists yet) is dropped, each under its own reason.
    drop_unserved(out);
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
}
