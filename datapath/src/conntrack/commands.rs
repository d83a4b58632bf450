//! Control methods of connection tracking: `dump-conntrack`,
//! `flush-conntrack` and `conntrack-stats` (with their OVS names
//! `dpctl/dump-conntrack`, `dpctl/flush-conntrack`, `dpctl/ct-stats-show`),
//! served as [`sluice_api::conntrack`] types next to the feature.
//!
//! Thread-safety: the handlers hold a [`Conntrack`] handle and take shard
//! locks one at a time, as the PMDs do.

use std::sync::atomic::Ordering;

use sluice_api::conntrack::{
    ConnCacheStats, ConntrackStats, ConntrackStatsReply, DumpConntrack, FlushConntrack, Flushed,
};

use super::{ConnFilter, Conntrack};
use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::time::Nanos;

fn filter(f: &sluice_api::conntrack::ConnFilter) -> ConnFilter {
    ConnFilter {
        zone: f.zone,
        ip: f.ip,
    }
}

/// The `conntrack-stats` counters.
pub fn stats(ct: &Conntrack) -> ConntrackStatsReply {
    let s = ct.stats();
    let counts = ct.state_counts();
    let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    ConntrackStatsReply {
        // The table's live counter (exact at any moment); the per-state
        // and NAT counts come from a walk of the shards while the PMDs go
        // on, which can see a connection evicted from a shard it already
        // passed and its replacement in one it had not.
        connections: ct.len() as u64,
        limit: ct.config().max_connections as u64,
        by_state: counts.by_state,
        dnat: counts.dnat,
        snat: counts.snat,
        created: get(&s.created),
        expired: get(&s.expired),
        evictions: get(&s.evictions),
        limit_hits: get(&s.limit_hits),
        invalid: get(&s.invalid),
        related: get(&s.related),
        rejects: get(&s.rejects),
        caches: ct
            .cache_counts()
            .iter()
            .map(|c| ConnCacheStats {
                hits: c.hits,
                misses: c.misses,
                entries: ct.config().cache_entries as u64,
            })
            .collect(),
    }
}

/// Registers the conntrack methods; `clock` gives "now" for ageing.
///
/// # Errors
/// [`RegistryError`] if a name is already registered.
pub fn register_commands(
    reg: &Registry,
    ct: Conntrack,
    clock: fn() -> Nanos,
) -> Result<(), RegistryError> {
    let c = ct.clone();
    register::<DumpConntrack>(reg, move |f| {
        let now = clock();
        c.sweep(now);
        Ok(c.view(&filter(&f), now))
    })?;
    let c = ct.clone();
    register::<FlushConntrack>(reg, move |f| {
        Ok(Flushed {
            connections: c.flush(&filter(&f)) as u64,
        })
    })?;
    register::<ConntrackStats>(reg, move |_| {
        ct.sweep(clock());
        Ok(stats(&ct))
    })
}
