//! The classifier cascade: exact-match cache → megaflow cache → slow path.
//!
//! Per packet, a PMD looks the [`crate::flow::key::FlowKey`] up in its
//! [`emc::Emc`] (one hash probe, full-key compare), then in its
//! [`megaflow::MegaflowCache`] (one probe per distinct mask), and only then
//! runs [`slowpath::translate`] over the whole program, installing the
//! resulting megaflow (and EMC entry). All three tiers are per PMD: no
//! sharing, no locks. Cached results are `Arc<slowpath::Xlate>` built from
//! one program generation; when a new program is published the pipeline
//! flushes the EMC and revalidates (or, when large, flushes) the megaflow
//! cache before its next burst.
//!
//! Memory per PMD: an EMC slot is 208 bytes, a 16-byte tag and a 192-byte
//! key (4096 slots: 832 KiB); a megaflow
//! entry is about 210 bytes plus its `Xlate` (shared by the EMC).

pub mod emc;
pub mod megaflow;
pub mod slowpath;

use crate::stats::Counter;

/// Hit and miss counters of one cache tier on one PMD (single writer).
#[derive(Debug, Default)]
pub struct TierStats {
    /// Lookups answered by this tier.
    pub hit: Counter,
    /// Lookups passed on to the next tier.
    pub miss: Counter,
}
