//! Per-core counters that one PMD thread writes and any thread reads.
//!
//! Each counter has exactly one writer (the PMD that owns it), so an
//! increment is a relaxed load and store: no locked instruction, no shared
//! cache line written by two cores. Readers (the control socket) see values
//! that are at most one increment stale, and sum across cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::drop::DropReason;

/// A single-writer counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning thread may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Resets to zero (`pmd-stats-clear`); racy against the writer by
    /// design, like OVS, which keeps a baseline instead: see [`Baseline`].
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed)
    }
}

/// Drop counters of one core, indexed by [`DropReason`]. Cloning shares
/// the counters (the PMD writes, the control socket reads).
#[derive(Debug, Clone)]
pub struct DropCounters(Arc<[Counter]>);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters((0..DropReason::COUNT).map(|_| Counter::default()).collect())
    }
}

impl DropCounters {
    /// Counts one drop.
    #[inline]
    pub fn inc(&self, r: DropReason) {
        self.0[r as usize].inc()
    }
    /// Counts `n` drops.
    #[inline]
    pub fn add(&self, r: DropReason, n: u64) {
        self.0[r as usize].add(n)
    }
    /// Drops counted for `r`.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize].get()
    }
    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
    /// Non-zero reasons with their counts.
    pub fn nonzero(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

/// A snapshot of counters taken at `*-stats-clear`, subtracted when
/// showing, so that clearing never races with the single writer.
#[derive(Debug, Default, Clone)]
pub struct Baseline(pub Vec<u64>);
