//! An in-memory port for unit tests: frames are injected into its rx side
//! and collected from its tx side by the test, through a shared handle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{LinkState, Port, PortStats};
use crate::packet::HeapBuf;

#[derive(Debug, Default)]
struct Queues {
    rx: VecDeque<HeapBuf>,
    tx: Vec<HeapBuf>,
    stats: PortStats,
    /// Tx capacity per burst, to test full queues (None: unlimited).
    tx_limit: Option<usize>,
}

/// A port backed by memory. Clone the [`MemPortHandle`] to inject and
/// collect frames from the test.
#[derive(Debug, Clone)]
pub struct MemPort {
    name: String,
    q: Arc<Mutex<Queues>>,
}

/// The test's side of a [`MemPort`].
#[derive(Debug, Clone)]
pub struct MemPortHandle {
    q: Arc<Mutex<Queues>>,
}

impl MemPort {
    /// A new port and the handle that feeds it.
    pub fn new(name: &str) -> (MemPort, MemPortHandle) {
        let q = Arc::new(Mutex::new(Queues::default()));
        (
            MemPort {
                name: name.to_string(),
                q: q.clone(),
            },
            MemPortHandle { q },
        )
    }
}

fn lock(q: &Mutex<Queues>) -> std::sync::MutexGuard<'_, Queues> {
    // A test that panicked while holding the lock already failed; keep going.
    q.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemPortHandle {
    /// Queues a frame for the port to receive.
    pub fn inject(&self, frame: &[u8]) {
        lock(&self.q).rx.push_back(HeapBuf::from_frame(frame));
    }
    /// Takes every frame the port transmitted so far.
    pub fn collect(&self) -> Vec<Vec<u8>> {
        use crate::packet::PacketBuf;
        std::mem::take(&mut lock(&self.q).tx)
            .into_iter()
            .map(|b| b.data().to_vec())
            .collect()
    }
    /// Frames queued for the port that it has not received yet.
    pub fn pending(&self) -> usize {
        lock(&self.q).rx.len()
    }
    /// Limits how many packets one tx burst accepts.
    pub fn set_tx_limit(&self, limit: Option<usize>) {
        lock(&self.q).tx_limit = limit;
    }
}

impl Port for MemPort {
    type Buf = HeapBuf;

    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, _queue: u16, out: &mut Vec<HeapBuf>, max: usize) -> usize {
        use crate::packet::PacketBuf;
        let mut q = lock(&self.q);
        let n = max.min(q.rx.len());
        for _ in 0..n {
            if let Some(b) = q.rx.pop_front() {
                q.stats.rx_packets += 1;
                q.stats.rx_bytes += b.len() as u64;
                out.push(b);
            }
        }
        n
    }

    fn tx_burst(&mut self, _queue: u16, pkts: &mut Vec<HeapBuf>) -> usize {
        use crate::packet::PacketBuf;
        let mut q = lock(&self.q);
        let n = q.tx_limit.unwrap_or(usize::MAX).min(pkts.len());
        for b in pkts.drain(..n) {
            q.stats.tx_packets += 1;
            q.stats.tx_bytes += b.len() as u64;
            q.tx.push(b);
        }
        n
    }

    fn stats(&self) -> PortStats {
        lock(&self.q).stats
    }

    fn link(&self) -> LinkState {
        LinkState {
            up: true,
            speed_mbps: 0,
            full_duplex: true,
        }
    }
}
