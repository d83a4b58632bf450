//! Control methods of connection tracking: `dump-conntrack`,
//! `flush-conntrack` and `conntrack-stats` (with their OVS names
//! `dpctl/dump-conntrack`, `dpctl/flush-conntrack`, `dpctl/ct-stats-show`),
//! served as [`sluice_api::conntrack`] types next to the feature.
//!
//! Thread-safety: the handlers hold a [`Conntrack`] handle and take shard
//! locks one at a time, as the PMDs do.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use sluice_api::conntrack::{
    ConnCacheStats, ConnDump, ConnEntry, ConnTuple, ConntrackStats, ConntrackStatsReply,
    DumpConntrack, FlushConntrack, Flushed,
};

use super::config::SEC;
use super::{Conn, ConnFilter, ConnKey, Conntrack};
use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::time::Nanos;

fn filter(f: &sluice_api::conntrack::ConnFilter) -> ConnFilter {
    ConnFilter {
        zone: f.zone,
        ip: f.ip,
    }
}

fn tuple(k: &ConnKey) -> ConnTuple {
    ConnTuple {
        src: Ipv4Addr::from(k.tuple.src),
        dst: Ipv4Addr::from(k.tuple.dst),
        sport: k.tuple.sport,
        dport: k.tuple.dport,
    }
}

/// One connection as the API shows it.
pub fn entry(c: &Conn, now: Nanos) -> ConnEntry {
    let marks = c.marks();
    ConnEntry {
        proto: c.keys[0].proto,
        orig: tuple(&c.keys[0]),
        reply: tuple(&c.keys[1]),
        zone: c.keys[0].zone,
        mark: marks.mark,
        label: marks.label,
        timeout_s: c.expires().saturating_sub(now) / SEC,
        packets: c.packets(),
        tcp_state: c.tcp_state().map(|s| s.name().to_string()),
        service: c.lb.as_ref().map(|lb| lb.service.to_string()),
    }
}

/// The live connections selected by `f`, sorted by their dump line.
pub fn dump(ct: &Conntrack, f: &ConnFilter, now: Nanos) -> ConnDump {
    let mut connections = Vec::new();
    ct.for_each(|c| {
        if f.matches(c) && c.expires() > now {
            connections.push(entry(c, now));
        }
    });
    connections.sort_by_cached_key(ConnEntry::line);
    ConnDump { connections }
}

/// The `conntrack-stats` counters.
pub fn stats(ct: &Conntrack) -> ConntrackStatsReply {
    let s = ct.stats();
    let counts = ct.state_counts();
    let get = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    ConntrackStatsReply {
        connections: counts.total,
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
        Ok(dump(&c, &filter(&f), now))
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
