//! [`Mbuf`]: an owned, single-segment DPDK mbuf as a [`PacketBuf`].
//!
//! Ports are configured without scatter, but some drivers still chain
//! mbufs for frames larger than one mbuf's data room (net_pcap on a live
//! interface with a 9000-byte MTU does): such chains are reported by
//! [`PacketBuf::is_chained`] and the PMD drops them at receive, counted as
//! `rx_multi_segment`, so every mbuf that reaches the pipeline is one
//! contiguous segment. Headroom is DPDK's
//! `RTE_PKTMBUF_HEADROOM` (128 bytes). Dropping an `Mbuf` returns it to its
//! pool.

use std::ptr::NonNull;

use crate::packet::PacketBuf;

/// An owned mbuf. Exactly one `Mbuf` refers to a given mbuf.
#[derive(Debug)]
pub struct Mbuf(NonNull<dpdk_sys::rte_mbuf>);

// SAFETY: an mbuf is plain memory owned by whoever holds the pointer;
// moving ownership across threads is how DPDK pipelines work.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Takes ownership of a raw single-segment mbuf.
    ///
    /// # Safety
    /// `m` must be a valid mbuf that nobody else owns or frees.
    #[inline]
    pub unsafe fn from_raw(m: NonNull<dpdk_sys::rte_mbuf>) -> Mbuf {
        Mbuf(m)
    }

    /// Gives up ownership (for `rte_eth_tx_burst`).
    #[inline]
    pub fn into_raw(self) -> *mut dpdk_sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    #[inline]
    fn raw(&self) -> &dpdk_sys::rte_mbuf {
        // SAFETY: we own a valid mbuf for our lifetime.
        unsafe { self.0.as_ref() }
    }

    #[inline]
    fn raw_mut(&mut self) -> &mut dpdk_sys::rte_mbuf {
        // SAFETY: we own a valid mbuf exclusively.
        unsafe { self.0.as_mut() }
    }

    /// Number of segments (1 for every mbuf that reaches the pipeline: the
    /// PMD drops chains at receive).
    pub fn nb_segs(&self) -> u16 {
        self.raw().nb_segs
    }

    #[inline]
    fn set_len(&mut self, data_off: u16, len: u16) {
        let m = self.raw_mut();
        m.data_off = data_off;
        m.data_len = len;
        m.pkt_len = len as u32;
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; freeing returns it (and any chained
        // segments) to its pool exactly once.
        unsafe { dpdk_sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl PacketBuf for Mbuf {
    #[inline]
    fn is_chained(&self) -> bool {
        self.raw().nb_segs > 1
    }

    #[inline]
    fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's
        // data room (DPDK invariant for a valid single-segment mbuf).
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        let m = self.raw();
        // SAFETY: as in `data`, and we own the mbuf exclusively (refcnt 1:
        // we never share mbufs, clones are copies).
        unsafe {
            std::slice::from_raw_parts_mut(
                (m.buf_addr as *mut u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.raw().data_len as usize
    }

    #[inline]
    fn headroom(&self) -> usize {
        self.raw().data_off as usize
    }

    #[inline]
    fn tailroom(&self) -> usize {
        let m = self.raw();
        m.buf_len as usize - m.data_off as usize - m.data_len as usize
    }

    #[inline]
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.headroom() {
            return None;
        }
        let (off, len) = (self.raw().data_off, self.raw().data_len);
        self.set_len(off - n as u16, len + n as u16);
        Some(self.data_mut())
    }

    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        let (off, len) = (self.raw().data_off, self.raw().data_len);
        self.set_len(off + n as u16, len - n as u16);
        true
    }

    #[inline]
    fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.tailroom() {
            return None;
        }
        let (off, len) = (self.raw().data_off, self.raw().data_len);
        self.set_len(off, len + n as u16);
        Some(self.data_mut())
    }

    #[inline]
    fn trim(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        let (off, len) = (self.raw().data_off, self.raw().data_len);
        self.set_len(off, len - n as u16);
        true
    }

    fn try_clone(&self) -> Option<Mbuf> {
        let m = self.raw();
        // SAFETY: copies our (valid) mbuf into a new one from the same
        // pool; returns NULL when the pool is exhausted.
        let c = unsafe { dpdk_sys::rte_pktmbuf_copy(self.0.as_ptr(), m.pool, 0, u32::MAX) };
        // SAFETY: a fresh mbuf owned by us.
        NonNull::new(c).map(|c| unsafe { Mbuf::from_raw(c) })
    }

    #[inline]
    fn rss_hash(&self) -> Option<u32> {
        let m = self.raw();
        // SAFETY: reads a constant through our helper.
        let flag = unsafe { dpdk_sys::sluice_mbuf_rss_flag() } as u64;
        if m.ol_flags & flag == 0 {
            return None;
        }
        // SAFETY: the hash union's `rss` member is valid when the flag is set.
        Some(unsafe { m.__bindgen_anon_2.hash.rss })
    }
}

impl Mbuf {
    /// The raw pointer, still owned by this `Mbuf`.
    #[inline]
    pub fn as_raw(&self) -> *mut dpdk_sys::rte_mbuf {
        self.0.as_ptr()
    }
}
