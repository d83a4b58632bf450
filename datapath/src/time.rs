//! Time: the one definition of a timestamp and the clocks that produce it.
//!
//! [`Nanos`] is monotonic time in nanoseconds. The packet core never reads a
//! clock: every sans-IO function takes `now: Nanos` as an argument, and only
//! the I/O shell (PMD threads, the daemon, control commands) reads
//! [`clock_ns`]. [`cycles`] reads the CPU's cycle counter for per-stage cycle
//! accounting. This module depends on nothing else in the crate, so every
//! layer may use it.
//!
//! Thread-safety: [`clock_ns`] is callable from any thread; its epoch is set
//! once per process, by the first call, and all threads share it.

use std::time::Instant;

/// Monotonic time in nanoseconds, supplied by the caller.
pub type Nanos = u64;

/// Reads the CPU's cycle counter (TSC on x86_64; nanoseconds elsewhere).
#[inline]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions on x86_64.
        #[allow(unsafe_code, unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        clock_ns()
    }
}

/// Monotonic nanoseconds since the first call in this process.
#[inline]
pub fn clock_ns() -> Nanos {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as Nanos
}
