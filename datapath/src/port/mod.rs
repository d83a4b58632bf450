//! Ports: where bursts come from and go to.
//!
//! The pipeline never knows which implementation it is fed by. [`Port`] is
//! implemented by the DPDK ethdev port (`dpdk::ethdev::DpdkPort`, any PMD, which
//! depends on this module, not the reverse) and by
//! [`memory::MemPort`] for unit tests. A port value is a handle that a PMD
//! thread owns for the queues it serves; several handles to one DPDK port
//! may exist, one per thread, each using its own queue ids.

pub mod memory;

use crate::packet::PacketBuf;

/// Link state and device counters are the control API's own types
/// (`dump-ports` shows them as they are).
pub use sluice_api::ports::{LinkState, PortCounters as PortStats};

/// A source and sink of packet bursts.
pub trait Port: Send {
    /// The buffer type this port produces and consumes.
    type Buf: PacketBuf;

    /// The port's name (from the configuration).
    fn name(&self) -> &str;

    /// Receives up to `max` packets from rx queue `queue`, appending them
    /// to `out`. Returns how many were received.
    fn rx_burst(&mut self, queue: u16, out: &mut Vec<Self::Buf>, max: usize) -> usize;

    /// Transmits packets from the front of `pkts` on tx queue `queue`,
    /// removing the ones sent; packets the device did not take stay in
    /// `pkts`. Returns how many were sent.
    fn tx_burst(&mut self, queue: u16, pkts: &mut Vec<Self::Buf>) -> usize;

    /// Device counters.
    fn stats(&self) -> PortStats;

    /// Link state.
    fn link(&self) -> LinkState;
}
