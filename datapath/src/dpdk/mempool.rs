//! mbuf pools.
//!
//! A [`Mempool`] is created once at start for all ports of a NUMA socket
//! and shared by every PMD thread (DPDK mempools are thread-safe; each
//! registered lcore has its own cache of `cache_size` buffers, so the hot
//! path rarely touches the shared ring).

use std::ffi::CString;
use std::ptr::NonNull;

use thiserror::Error;

use super::mbuf::Mbuf;
use crate::packet::{BufAlloc, HEADROOM, MAX_FRAME};

/// Why a pool could not be created.
#[derive(Debug, Error)]
#[error("cannot create mbuf pool '{name}' of {count} buffers: {reason}")]
pub struct MempoolError {
    name: String,
    count: u32,
    reason: String,
}

/// An mbuf pool. Freed on drop (all its mbufs must have been returned:
/// drop ports and PMDs first).
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<dpdk_sys::rte_mempool>,
    name: String,
}

// SAFETY: rte_mempool is designed for concurrent use from many threads
// (lockless ring plus per-lcore caches).
unsafe impl Send for Mempool {}
// SAFETY: as above; all operations we expose are thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `count` mbufs with [`HEADROOM`] bytes of headroom
    /// and room for [`MAX_FRAME`]-byte frames, with a per-lcore cache.
    pub fn new(name: &str, count: u32, cache_size: u32) -> Result<Mempool, MempoolError> {
        let err = |reason: String| MempoolError {
            name: name.to_string(),
            count,
            reason,
        };
        let cname = CString::new(name).map_err(|_| err("name contains a NUL byte".into()))?;
        // SAFETY: reads a compile-time constant through our helper.
        let headroom = unsafe { dpdk_sys::sluice_pktmbuf_headroom_default() } as usize;
        if headroom < HEADROOM {
            return Err(err(format!(
                "DPDK was built with RTE_PKTMBUF_HEADROOM={headroom}, Sluice needs {HEADROOM}"
            )));
        }
        let data_room = (headroom + MAX_FRAME) as u16;
        // SAFETY: valid NUL-terminated name; EAL is initialised (callers
        // hold an `Eal`); SOCKET_ID_ANY is -1.
        let p = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(cname.as_ptr(), count, cache_size, 0, data_room, -1)
        };
        match NonNull::new(p) {
            Some(ptr) => Ok(Mempool {
                ptr,
                name: name.to_string(),
            }),
            None => Err(err(super::strerror(super::errno()))),
        }
    }

    /// The raw pool pointer, for ethdev queue setup.
    pub fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.ptr.as_ptr()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free buffers (approximate: excludes per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid for our lifetime.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.ptr.as_ptr()) }
    }

    /// An empty mbuf, or `None` when the pool is exhausted.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid; rte_pktmbuf_alloc returns NULL or a
        // reset mbuf that we now own.
        let m = unsafe { dpdk_sys::rte_pktmbuf_alloc(self.ptr.as_ptr()) };
        // SAFETY: a non-null mbuf fresh from the pool, owned by us.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m) })
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: we own the pool; its mbufs have been returned (ports are
        // stopped and closed before the pool is dropped).
        unsafe { dpdk_sys::rte_mempool_free(self.ptr.as_ptr()) }
    }
}

/// Allocation of mbufs from a shared pool (the pipeline's [`BufAlloc`]).
#[derive(Debug, Clone, Copy)]
pub struct PoolAlloc<'a>(pub &'a Mempool);

impl BufAlloc<Mbuf> for PoolAlloc<'_> {
    fn alloc(&mut self) -> Option<Mbuf> {
        self.0.alloc()
    }
}
