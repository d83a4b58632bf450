//! Packet buffers and bursts.
//!
//! A packet buffer ([`PacketBuf`]) is a contiguous frame with headroom in
//! front of it, so that encapsulation (Geneve adds 50 bytes over IPv4) is a
//! pointer move, never a copy or an allocation. Two implementations exist:
//! the DPDK mbuf (`dpdk::Mbuf`, headroom `RTE_PKTMBUF_HEADROOM` = 128) and
//! [`HeapBuf`], a plain heap buffer used by in-memory ports in unit tests.
//!
//! A [`Burst`] is up to [`BURST_SIZE`] packets received on one port; the
//! pipeline processes a burst and stages the packets it forwards in an
//! [`Output`], which the PMD flushes to the ports' tx queues. Both reuse
//! their storage across bursts: the hot path does not allocate.

use crate::drop::DropReason;
use crate::stats::DropCounters;

/// Packets per rx/tx burst, as in OVS and VPP.
pub const BURST_SIZE: usize = 32;

/// Bytes reserved in front of every received frame for encapsulation.
pub const HEADROOM: usize = 128;

/// Largest frame a default buffer holds (data room minus headroom).
pub const MAX_FRAME: usize = 2048;

/// A datapath port number, in the OpenFlow sense (`in_port`, `output:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortNo(pub u16);

impl PortNo {
    /// The datapath's own IP stack (OpenFlow `LOCAL`).
    pub const LOCAL: PortNo = PortNo(0xfffe);
    /// "The port the packet came in on" (OpenFlow `IN_PORT`).
    pub const IN_PORT: PortNo = PortNo(0xfff8);
    /// The control socket's packet-in queue (OpenFlow `CONTROLLER`).
    pub const CONTROLLER: PortNo = PortNo(0xfffd);
    /// No port.
    pub const NONE: PortNo = PortNo(0xffff);
}

impl std::fmt::Display for PortNo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            PortNo::LOCAL => f.write_str("LOCAL"),
            PortNo::IN_PORT => f.write_str("IN_PORT"),
            PortNo::CONTROLLER => f.write_str("CONTROLLER"),
            PortNo::NONE => f.write_str("NONE"),
            PortNo(n) => write!(f, "{n}"),
        }
    }
}

/// A frame in a buffer with headroom. Implementations must keep
/// `data()` contiguous.
pub trait PacketBuf: Sized + Send {
    /// The frame bytes.
    fn data(&self) -> &[u8];
    /// The frame bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Frame length in bytes.
    fn len(&self) -> usize {
        self.data().len()
    }
    /// True when the frame holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Free bytes in front of the frame.
    fn headroom(&self) -> usize;
    /// Free bytes after the frame.
    fn tailroom(&self) -> usize;
    /// Grows the frame by `n` bytes at the front and returns the whole frame,
    /// or `None` (frame unchanged) when the headroom is too small.
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]>;
    /// Removes `n` bytes from the front; false (frame unchanged) if `n > len`.
    fn adj(&mut self, n: usize) -> bool;
    /// Grows the frame by `n` bytes at the end and returns the whole frame,
    /// or `None` (frame unchanged) when the tailroom is too small.
    fn append(&mut self, n: usize) -> Option<&mut [u8]>;
    /// Removes `n` bytes from the end; false (frame unchanged) if `n > len`.
    fn trim(&mut self, n: usize) -> bool;
    /// A copy of this frame in a new buffer (from the same pool for mbufs),
    /// or `None` when no buffer is free.
    fn try_clone(&self) -> Option<Self>;
    /// The receive-side flow hash the NIC computed, if any.
    fn rss_hash(&self) -> Option<u32> {
        None
    }
    /// True when the frame spans several buffers (a DPDK mbuf chain, e.g.
    /// a jumbo frame larger than one mbuf's data room). The pipeline only
    /// handles contiguous frames: the PMD drops chained ones at receive,
    /// counted as `rx_multi_segment`.
    fn is_chained(&self) -> bool {
        false
    }
}

/// Something that hands out empty packet buffers (an mbuf pool, or the heap
/// in tests). Used by the pipeline to build frames it originates (ARP
/// replies, ICMP errors).
pub trait BufAlloc<B: PacketBuf> {
    /// An empty buffer with [`HEADROOM`] bytes of headroom, or `None` when
    /// the pool is exhausted.
    fn alloc(&mut self) -> Option<B>;
}

/// A heap-backed packet buffer for in-memory ports and unit tests.
#[derive(Clone, PartialEq, Eq)]
pub struct HeapBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for HeapBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeapBuf({} bytes: ", self.len())?;
        for b in self.data().iter().take(64) {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

impl HeapBuf {
    /// An empty buffer with default headroom and room for [`MAX_FRAME`].
    pub fn empty() -> Self {
        HeapBuf {
            buf: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(),
            start: HEADROOM,
            end: HEADROOM,
        }
    }

    /// A buffer holding a copy of `frame`, with default headroom. Frames
    /// longer than [`MAX_FRAME`] get a larger buffer.
    pub fn from_frame(frame: &[u8]) -> Self {
        let cap = HEADROOM + frame.len().max(MAX_FRAME);
        let mut buf = vec![0u8; cap].into_boxed_slice();
        buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        HeapBuf {
            buf,
            start: HEADROOM,
            end: HEADROOM + frame.len(),
        }
    }
}

impl PacketBuf for HeapBuf {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }
    fn headroom(&self) -> usize {
        self.start
    }
    fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        Some(self.data_mut())
    }
    fn adj(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.start += n;
        true
    }
    fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.tailroom() {
            return None;
        }
        self.end += n;
        Some(self.data_mut())
    }
    fn trim(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.end -= n;
        true
    }
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

/// Heap allocation of [`HeapBuf`]s, for tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapAlloc;

impl BufAlloc<HeapBuf> for HeapAlloc {
    fn alloc(&mut self) -> Option<HeapBuf> {
        Some(HeapBuf::empty())
    }
}

/// Up to [`BURST_SIZE`] packets received on one port.
#[derive(Debug)]
pub struct Burst<B> {
    /// The port every packet of this burst arrived on.
    pub in_port: PortNo,
    /// The packets; the pipeline takes them out (`drain(..)`) as it
    /// forwards or drops them.
    pub pkts: Vec<B>,
}

impl<B> Burst<B> {
    /// An empty burst with room for [`BURST_SIZE`] packets.
    pub fn new(in_port: PortNo) -> Self {
        Burst {
            in_port,
            pkts: Vec::with_capacity(BURST_SIZE),
        }
    }
}

/// Where the pipeline puts the packets of a burst: one staging queue per
/// output port, plus the per-core drop counters. The PMD flushes the queues
/// to the ports after each burst.
#[derive(Debug)]
pub struct Output<B> {
    /// Staged packets per port index (`PortNo.0` for ordinary ports).
    queues: Vec<Vec<B>>,
    /// Indices of queues that hold packets, in first-use order.
    dirty: Vec<u16>,
    /// Packets for the datapath's own IP stack ([`PortNo::LOCAL`]).
    pub local: Vec<B>,
    /// Packets punted to the controller queue ([`PortNo::CONTROLLER`]).
    pub controller: Vec<B>,
    /// Drops by reason, owned by this core.
    pub drops: DropCounters,
}

impl<B> Output<B> {
    /// Staging for ports `0..n_ports`.
    pub fn new(n_ports: usize) -> Self {
        Output {
            queues: (0..n_ports)
                .map(|_| Vec::with_capacity(BURST_SIZE))
                .collect(),
            dirty: Vec::with_capacity(n_ports),
            local: Vec::with_capacity(BURST_SIZE),
            controller: Vec::with_capacity(BURST_SIZE),
            drops: DropCounters::default(),
        }
    }

    /// Makes room for ports `0..n_ports` (never shrinks: a queue of a
    /// removed port stays empty). Allocates; called when the port table
    /// changes, not per burst.
    pub fn grow(&mut self, n_ports: usize) {
        while self.queues.len() < n_ports {
            self.queues.push(Vec::with_capacity(BURST_SIZE));
        }
    }

    /// Number of ports this output can stage for.
    pub fn n_ports(&self) -> usize {
        self.queues.len()
    }

    /// Stages `pkt` for transmission on `port`. A packet for a port that
    /// does not exist is dropped and counted. Always inlined: called once
    /// per forwarded packet, and out of line its prologue, epilogue and
    /// the move of `pkt` cost about as much as the push itself.
    #[inline(always)]
    pub fn send(&mut self, port: PortNo, pkt: B) {
        match port {
            PortNo::LOCAL => self.local.push(pkt),
            PortNo::CONTROLLER => self.controller.push(pkt),
            PortNo(n) => match self.queues.get_mut(n as usize) {
                Some(q) => {
                    if q.is_empty() {
                        self.dirty.push(n);
                    }
                    q.push(pkt);
                }
                None => self.drop(DropReason::NoSuchPort, pkt),
            },
        }
    }

    /// Drops `pkt` (its buffer is freed) and counts it under `reason`.
    #[inline]
    pub fn drop(&mut self, reason: DropReason, pkt: B) {
        self.drops.inc(reason);
        drop(pkt);
    }

    /// Calls `f(port, queue)` for every port with staged packets. `f` sends
    /// what it can and leaves the unsent packets in the queue; those are
    /// dropped and counted as [`DropReason::TxQueueFull`].
    pub fn flush(&mut self, mut f: impl FnMut(PortNo, &mut Vec<B>)) {
        for i in 0..self.dirty.len() {
            let n = self.dirty[i];
            let q = &mut self.queues[n as usize];
            f(PortNo(n), q);
            let unsent = q.len() as u64;
            if unsent > 0 {
                self.drops.add(DropReason::TxQueueFull, unsent);
                q.clear();
            }
        }
        self.dirty.clear();
    }

    /// Staged packets for `port` (tests and tracing).
    pub fn staged(&self, port: PortNo) -> &[B] {
        self.queues
            .get(port.0 as usize)
            .map(|q| q.as_slice())
            .unwrap_or(&[])
    }

    /// Takes the staged packets for `port` (tests).
    pub fn take(&mut self, port: PortNo) -> Vec<B> {
        self.dirty.retain(|&n| n != port.0);
        self.queues
            .get_mut(port.0 as usize)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// One delegating test buffer for the unit tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub mod testbuf;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heapbuf_prepend_adj_round_trip() {
        let mut b = HeapBuf::from_frame(&[1, 2, 3, 4]);
        assert_eq!(b.headroom(), HEADROOM);
        let front = b.prepend(2).expect("headroom");
        front[0] = 9;
        front[1] = 8;
        assert_eq!(b.data(), &[9, 8, 1, 2, 3, 4]);
        assert!(b.adj(2));
        assert_eq!(b.data(), &[1, 2, 3, 4]);
        assert!(b.prepend(HEADROOM + 1).is_none());
        assert_eq!(
            b.data(),
            &[1, 2, 3, 4],
            "failed prepend leaves frame unchanged"
        );
        assert!(!b.adj(5));
        assert!(b.trim(1));
        assert_eq!(b.data(), &[1, 2, 3]);
        b.append(1).unwrap()[3] = 7;
        assert_eq!(b.data(), &[1, 2, 3, 7]);
    }

    #[test]
    fn output_counts_unsent_and_unknown_ports() {
        let mut out: Output<HeapBuf> = Output::new(2);
        out.send(PortNo(1), HeapBuf::from_frame(&[1]));
        out.send(PortNo(1), HeapBuf::from_frame(&[2]));
        out.send(PortNo(7), HeapBuf::from_frame(&[3]));
        assert_eq!(out.drops.get(DropReason::NoSuchPort), 1);
        let mut seen = vec![];
        out.flush(|p, q| {
            seen.push((p, q.len()));
            q.remove(0); // "send" one, leave one unsent
        });
        assert_eq!(seen, vec![(PortNo(1), 2)]);
        assert_eq!(out.drops.get(DropReason::TxQueueFull), 1);
        assert!(out.staged(PortNo(1)).is_empty());
    }
}
