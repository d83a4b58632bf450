//! DPDK rings, and ethdev ports backed by them (`net_ring` created with
//! `rte_eth_from_rings`).
//!
//! A ring-backed port is a real DPDK ethdev driven by the real `net_ring`
//! PMD: the PMD threads use it exactly as a NIC, while a test or a
//! generator thread on the other side enqueues and dequeues mbufs. Used by
//! the in-process DPDK integration tests and by pktgen.

use std::ffi::CString;
use std::ptr::NonNull;

use super::ethdev::{Ethdev, EthdevConfig, EthdevError};
use super::mbuf::Mbuf;
use super::mempool::Mempool;

/// A multi-producer/multi-consumer ring of mbufs. Freed on drop (after
/// the port using it is closed); mbufs still in it are freed.
#[derive(Debug)]
pub struct Ring {
    ptr: NonNull<dpdk_sys::rte_ring>,
}

// SAFETY: rte_ring is a lockless MPMC queue designed for cross-thread use.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

/// Why a ring could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The name cannot be passed to C.
    #[error("ring name {0:?} contains NUL")]
    Nul(String),
    /// DPDK refused (name taken, no memory, count not a power of two).
    #[error("cannot create ring '{name}': {reason}")]
    Create {
        /// The ring's name.
        name: String,
        /// DPDK's reason.
        reason: String,
    },
}

impl Ring {
    /// Creates a ring of `count` slots (a power of two; one slot is kept
    /// empty, so it holds `count - 1` mbufs).
    pub fn new(name: &str, count: u32) -> Result<Ring, RingError> {
        let cname = CString::new(name).map_err(|_| RingError::Nul(name.to_string()))?;
        // SAFETY: valid name; EAL initialised; flags 0 = MP/MC.
        let p = unsafe { dpdk_sys::rte_ring_create(cname.as_ptr(), count, -1, 0) };
        NonNull::new(p)
            .map(|ptr| Ring { ptr })
            .ok_or_else(|| RingError::Create {
                name: name.to_string(),
                reason: super::strerror(super::errno()),
            })
    }

    /// The raw pointer.
    pub fn as_ptr(&self) -> *mut dpdk_sys::rte_ring {
        self.ptr.as_ptr()
    }

    /// Enqueues mbufs from the front of `pkts`; those that did not fit
    /// stay. Returns how many were enqueued.
    pub fn enqueue(&self, pkts: &mut Vec<Mbuf>) -> usize {
        let raw: Vec<*mut libc::c_void> = pkts.iter().map(|m| m.as_raw() as *mut _).collect();
        // SAFETY: raw holds valid mbuf pointers we own; the ring takes
        // ownership of the first `n`.
        let n = unsafe {
            dpdk_sys::rte_ring_enqueue_burst(
                self.ptr.as_ptr(),
                raw.as_ptr(),
                raw.len() as u32,
                std::ptr::null_mut(),
            )
        } as usize;
        for m in pkts.drain(..n) {
            let _ = m.into_raw();
        }
        n
    }

    /// Dequeues up to `max` mbufs into `out`.
    pub fn dequeue(&self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = vec![std::ptr::null_mut::<libc::c_void>(); max];
        // SAFETY: raw has room for `max` pointers; the mbufs dequeued are
        // ours.
        let n = unsafe {
            dpdk_sys::rte_ring_dequeue_burst(
                self.ptr.as_ptr(),
                raw.as_mut_ptr(),
                max as u32,
                std::ptr::null_mut(),
            )
        } as usize;
        for &p in &raw[..n] {
            if let Some(p) = NonNull::new(p as *mut dpdk_sys::rte_mbuf) {
                // SAFETY: the ring held owned mbufs; now we own them.
                out.push(unsafe { Mbuf::from_raw(p) });
            }
        }
        n
    }

    /// Mbufs currently in the ring.
    pub fn len(&self) -> usize {
        // SAFETY: valid ring.
        unsafe { dpdk_sys::rte_ring_count(self.ptr.as_ptr()) as usize }
    }

    /// True when the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let mut left = Vec::new();
        while self.dequeue(&mut left, 64) > 0 {
            left.clear();
        }
        // SAFETY: we own the ring and nobody uses it any more (its port is
        // closed before the ring is dropped).
        unsafe { dpdk_sys::rte_ring_free(self.ptr.as_ptr()) }
    }
}

impl Ethdev {
    /// A `net_ring` port named `name` that receives from `rx` and
    /// transmits into `tx` (one queue each way).
    pub fn from_rings(
        name: &str,
        rx: &Ring,
        tx: &Ring,
        pool: &Mempool,
    ) -> Result<Ethdev, EthdevError> {
        let cname = CString::new(name).map_err(|_| EthdevError::BadDevargs {
            port: name.into(),
            devargs: name.into(),
        })?;
        let rxs = [rx.as_ptr()];
        let txs = [tx.as_ptr()];
        // SAFETY: valid name and ring arrays of the given lengths.
        let rc = unsafe {
            dpdk_sys::rte_eth_from_rings(cname.as_ptr(), rxs.as_ptr(), 1, txs.as_ptr(), 1, 0)
        };
        if rc < 0 {
            return Err(EthdevError::Probe {
                port: name.into(),
                devargs: name.into(),
                reason: super::strerror(super::errno()),
            });
        }
        let cfg = EthdevConfig {
            name: name.into(),
            devargs: format!("net_ring:{name}"),
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
        };
        Ethdev::adopt(rc as u16, &cfg, pool)
    }
}
