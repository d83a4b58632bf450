//! Safe wrappers over the system DPDK (22.11, through `dpdk-sys`).
//!
//! - [`eal`]: EAL initialisation (once per process) and cleanup, with
//!   DPDK's log routed into `tracing` so that failures become one clear
//!   error line instead of a page of EAL output.
//! - [`mempool`]: mbuf pools.
//! - [`mbuf`]: [`mbuf::Mbuf`], an owned single-segment mbuf implementing
//!   [`crate::packet::PacketBuf`].
//! - [`ethdev`]: ports (probe from devargs, configure N queues, start,
//!   stop, link state, stats) implementing [`crate::port::Port`].
//!
//! Most of the crate's `unsafe` code is here (the rest: the cycle counter,
//! the classifier's prefetch and the control socket's syscalls); every
//! block states why it is sound.

pub mod eal;
pub mod ethdev;
pub mod log;
pub mod mbuf;
pub mod mempool;
pub mod ring;

use std::ffi::CStr;

/// The DPDK error text for an errno-style code (positive or negative).
pub fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror accepts any int and returns a pointer to a static
    // or thread-local NUL-terminated string that stays valid until the next
    // call on this thread; we copy it out immediately.
    unsafe {
        let p = dpdk_sys::rte_strerror(code.abs());
        if p.is_null() {
            return format!("error {code}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// `rte_errno` of the calling thread.
pub fn errno() -> i32 {
    // SAFETY: reads a thread-local int through our C helper.
    unsafe { dpdk_sys::sluice_rte_errno() }
}

/// The DPDK version string, e.g. "DPDK 22.11.11".
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static string.
    unsafe { CStr::from_ptr(dpdk_sys::rte_version()) }
        .to_string_lossy()
        .into_owned()
}

/// Registers the calling (non-EAL) thread with DPDK so that it gets an
/// lcore id and its own mempool cache. Call once at the start of every PMD
/// thread spawned after EAL init; the guard unregisters on drop.
pub fn register_thread() -> Result<ThreadRegistration, RegisterThreadError> {
    // SAFETY: rte_thread_register is safe to call from any thread after
    // rte_eal_init; it fails (returns -1, sets rte_errno) when no lcore id
    // is free.
    let rc = unsafe { dpdk_sys::rte_thread_register() };
    if rc != 0 {
        return Err(RegisterThreadError(strerror(errno())));
    }
    Ok(ThreadRegistration(std::marker::PhantomData))
}

/// DPDK refused to register a thread (usually: no free lcore id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot register thread with DPDK: {0}")]
pub struct RegisterThreadError(pub String);

/// Keeps a thread registered with DPDK; unregisters on drop. Not `Send`:
/// it belongs to the thread that registered.
#[derive(Debug)]
pub struct ThreadRegistration(std::marker::PhantomData<*const ()>);

impl Drop for ThreadRegistration {
    fn drop(&mut self) {
        // SAFETY: the thread registered itself in `register_thread`.
        unsafe { dpdk_sys::rte_thread_unregister() }
    }
}

/// The current lcore id of the calling thread (`u32::MAX` when none).
pub fn lcore_id() -> u32 {
    // SAFETY: reads a per-thread variable.
    unsafe { dpdk_sys::rte_lcore_id() }
}
