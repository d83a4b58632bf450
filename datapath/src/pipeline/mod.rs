//! The sans-IO pipeline: what happens to a burst between rx and tx.
//!
//! A [`Pipeline`] owns one core's state (MAC table, caches, conntrack shard)
//! and never reads a clock, touches a device or allocates per packet: `now`
//! comes in as an argument, packets go out through [`Output`]. (The one
//! exception is the CPU cycle counter, read for cycle accounting only and
//! never for a decision: see [`perf`].) A PMD thread
//! owns one pipeline instance; tests drive it directly with in-memory
//! buffers and a fake clock.

pub mod cont;
pub mod flow;
pub mod hooks;
pub mod l2;
pub mod perf;
pub mod trace;

use crate::packet::{Burst, Output, PacketBuf, PortNo};
use crate::time::Nanos;

/// Packet processing for one core.
pub trait Pipeline<B: PacketBuf>: Send {
    /// Processes every packet of `burst` (leaving it empty): each packet is
    /// staged on `out` for some port(s) or dropped with a counted reason.
    fn process(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>);

    /// Periodic housekeeping between bursts (expiry, cache revalidation,
    /// picking up a new program). Called by the PMD at least every few
    /// milliseconds; must be cheap when there is nothing to do.
    fn maintain(&mut self, _now: Nanos, _out: &mut Output<B>) {}

    /// The datapath's ports changed (`port-add`, `port-del`): `ports` is
    /// every port now, for flooding. Called by the PMD between bursts when
    /// it picks up a new port table, before any packet of a new port; a
    /// pipeline forgets what it learnt about removed ports (MAC entries,
    /// cached translations). May allocate.
    fn set_ports(&mut self, _ports: &[PortNo]) {}

    /// A text dump of this core's caches (`dump-cache`). Runs on the PMD
    /// thread between bursts, when the control socket asks for it; may
    /// allocate (it is not per packet).
    fn dump_caches(&self) -> String {
        String::from("(this pipeline keeps no flow cache)\n")
    }
}

/// Sent frames, per port, then each port's frames in order.
#[cfg(test)]
pub(crate) type SentFrames = Vec<Vec<Vec<u8>>>;

/// The burst-equivalence harness of the pipelines' proptests: feeds
/// `frames` (in-port, bytes) to `a` in bursts of consecutive frames from
/// one port (up to 32) and, frame by frame, to `b` in bursts of one, at
/// time 7, both with `ports` output ports. Returns what each pipeline sent
/// (per port, in order) and its `Output` (for its drop counters).
#[cfg(test)]
pub(crate) fn bursts_and_one_frame_bursts<A, B>(
    a: &mut A,
    b: &mut B,
    frames: &[(u16, Vec<u8>)],
    ports: usize,
) -> (
    SentFrames,
    SentFrames,
    Output<crate::packet::HeapBuf>,
    Output<crate::packet::HeapBuf>,
)
where
    A: Pipeline<crate::packet::HeapBuf>,
    B: Pipeline<crate::packet::HeapBuf>,
{
    use crate::packet::HeapBuf;
    let (mut oa, mut ob) = (Output::new(ports), Output::new(ports));
    let (mut sent_a, mut sent_b) = (vec![Vec::new(); ports], vec![Vec::new(); ports]);
    let collect = |o: &mut Output<HeapBuf>, sent: &mut SentFrames| {
        o.flush(|port, q| {
            for pkt in q.drain(..) {
                sent[usize::from(port.0)].push(pkt.data().to_vec());
            }
        });
    };
    let mut i = 0;
    while i < frames.len() {
        let port = frames[i].0;
        let mut burst = Burst::new(PortNo(port));
        while i < frames.len() && frames[i].0 == port && burst.pkts.len() < 32 {
            burst.pkts.push(HeapBuf::from_frame(&frames[i].1));
            let mut one = Burst::new(PortNo(port));
            one.pkts.push(HeapBuf::from_frame(&frames[i].1));
            b.process(7, &mut one, &mut ob);
            collect(&mut ob, &mut sent_b);
            i += 1;
        }
        a.process(7, &mut burst, &mut oa);
        collect(&mut oa, &mut sent_a);
    }
    (sent_a, sent_b, oa, ob)
}
