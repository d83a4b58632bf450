//! The classifier cascade: exact-match cache → megaflow cache → slow path;
//! and beside it the direct path ([`direct`]), which looks packets of
//! programs with specialised tables up in those tables' indexes
//! ([`special`]) without any cache.
//!
//! Per packet, a PMD looks the [`crate::flow::key::FlowKey`] up in its
//! [`emc::Emc`] (one hash probe, a compare of the key words the program
//! can look at), then in its
//! [`megaflow::MegaflowCache`] (one probe per distinct mask), and only then
//! runs [`slowpath::translate`] over the whole program (tables of one
//! shape through their [`special`] index), installing the
//! resulting megaflow (and, with probability 1 / `emc_insert_inv_prob`,
//! an EMC entry: see [`emc`]). All three tiers are per PMD: no
//! sharing, no locks. Cached results are `Arc<slowpath::Xlate>` built from
//! one program generation; when a new program is published the pipeline
//! flushes the EMC and revalidates (or, when large, flushes) the megaflow
//! cache before its next burst.
//!
//! Memory per PMD: an EMC slot is 64 bytes, hash, translation and the
//! program's live key words packed, when they are at most six (16384
//! slots: 1 MiB; 128 or 256 bytes a slot for wider programs; none when the EMC
//! is disabled); a megaflow
//! entry is 64 bytes (its mask's words packed beside the translation;
//! 256 for masks of more than seven words) plus a control byte, plus its
//! `Xlate` (shared by the EMC), whose action list is shared by every
//! megaflow with the same actions.

pub mod direct;
pub mod emc;
pub mod megaflow;
mod rule_index;
pub mod slowpath;
pub mod special;

use crate::stats::Counter;

/// Hit and miss counters of one cache tier on one PMD (single writer).
#[derive(Debug, Default)]
pub struct TierStats {
    /// Lookups answered by this tier.
    pub hit: Counter,
    /// Lookups passed on to the next tier.
    pub miss: Counter,
}

/// A read prefetch of the cache line holding `*p` (no-op off x86-64).
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE, which `_mm_prefetch` needs, is part of the x86-64
        // baseline; a prefetch is a hint that never faults, whatever the
        // address (callers pass pointers to live data anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
