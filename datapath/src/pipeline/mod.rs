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
