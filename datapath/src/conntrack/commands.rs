//! Control commands of connection tracking: `dump-conntrack`,
//! `flush-conntrack` and `conntrack-stats`, registered next to the feature.
//!
//! Thread-safety: the handlers hold a [`Conntrack`] handle and take shard
//! locks one at a time, as the PMDs do.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{ConnFilter, Conntrack};
use crate::ctl::registry::{Registry, RegistryError};
use crate::time::Nanos;

/// Parses `zone=N` and `ip=A.B.C.D` arguments.
pub fn parse_filter(args: &[String]) -> Result<ConnFilter, String> {
    let mut f = ConnFilter::default();
    for a in args {
        if let Some(z) = a.strip_prefix("zone=") {
            f.zone = Some(z.parse().map_err(|_| {
                format!("invalid zone {z:?}: use zone=N with N between 0 and 65535")
            })?);
        } else if let Some(ip) = a.strip_prefix("ip=") {
            f.ip = Some(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| format!("invalid address {ip:?}: use ip=A.B.C.D"))?,
            );
        } else {
            return Err(format!(
                "unknown argument {a:?}: expected zone=N and/or ip=A.B.C.D"
            ));
        }
    }
    Ok(f)
}

/// `conntrack-stats` text.
pub fn stats_text(ct: &Conntrack) -> String {
    let s = ct.stats();
    let counts = ct.state_counts();
    let mut out = format!(
        "connections: {} (limit {})\n",
        counts.total,
        ct.config().max_connections
    );
    for (state, n) in &counts.by_state {
        out += &format!("  {state}: {n}\n");
    }
    out += &format!("  dnat: {}\n  snat: {}\n", counts.dnat, counts.snat);
    for (name, v) in [
        ("created", &s.created),
        ("expired", &s.expired),
        ("evictions", &s.evictions),
        ("limit hits", &s.limit_hits),
        ("invalid", &s.invalid),
        ("related", &s.related),
        ("rejects", &s.rejects),
    ] {
        out += &format!("{name}: {}\n", v.load(Ordering::Relaxed));
    }
    // One connection cache per PMD: hits are established packets served
    // without a lock; misses went to the shared table.
    for (i, c) in ct.cache_counts().iter().enumerate() {
        let total = c.hits + c.misses;
        let pct = if total == 0 {
            0.0
        } else {
            100.0 * c.hits as f64 / total as f64
        };
        out += &format!(
            "connection cache pmd {i}: hits {} misses {} ({pct:.1}% hits, {} entries)\n",
            c.hits,
            c.misses,
            ct.config().cache_entries
        );
    }
    out
}

/// Registers the conntrack commands; `clock` gives the datapath's time.
pub fn register_commands(
    reg: &Registry,
    ct: Conntrack,
    clock: fn() -> Nanos,
) -> Result<(), RegistryError> {
    let c = ct.clone();
    reg.register(
        "dump-conntrack",
        "[zone=N] [ip=A.B.C.D]",
        0,
        2,
        Arc::new(move |a| {
            let f = parse_filter(a)?;
            let now = clock();
            // PMDs sweep as traffic flows; an idle datapath is swept here.
            c.sweep(now);
            Ok(c.dump(&f, now))
        }),
    )?;
    let c = ct.clone();
    reg.register(
        "flush-conntrack",
        "[zone=N] [ip=A.B.C.D]",
        0,
        2,
        Arc::new(move |a| {
            let n = c.flush(&parse_filter(a)?);
            Ok(format!("flushed {n} connections"))
        }),
    )?;
    reg.register(
        "conntrack-stats",
        "",
        0,
        0,
        Arc::new(move |_| {
            ct.sweep(clock());
            Ok(stats_text(&ct))
        }),
    )
}
