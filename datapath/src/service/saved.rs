//! Session-affinity entries as saved state: what a hand-over restart (and
//! the crash state file) carries so that a client pinned to an endpoint
//! stays pinned in the next process. Entries are exported by Service
//! *name* (the numeric ids are per process) with the time each has left,
//! and restored against the Services of the new table by name; an entry
//! whose Service is gone or has no affinity is skipped.
//!
//! Thread-safety: each affinity shard is locked in turn, as the PMDs lock
//! one for a new connection.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::{lock, Services};
pub use crate::conntrack::state::AffinityEntry;
use crate::time::Nanos;

impl Services {
    /// The live affinity entries at `now`.
    pub fn affinity_entries(&self, now: Nanos) -> Vec<AffinityEntry> {
        let table = self.inner.table.load();
        let names: HashMap<u64, Arc<str>> = table
            .by_name
            .values()
            .map(|s| (s.id, s.name.clone()))
            .collect();
        let mut out = Vec::new();
        for shard in self.inner.affinity.iter() {
            for (&(id, client), &(ip, port, expires)) in lock(shard).iter() {
                let Some(name) = names.get(&id) else { continue };
                if expires <= now {
                    continue;
                }
                out.push(AffinityEntry {
                    service: name.to_string(),
                    client: Ipv4Addr::from(client),
                    endpoint: (Ipv4Addr::from(ip), port),
                    remaining: expires - now,
                });
            }
        }
        out
    }

    /// Puts affinity entries back at `now`; returns how many were kept
    /// (those whose Service exists with session affinity).
    pub fn restore_affinity(&self, entries: &[AffinityEntry], now: Nanos) -> usize {
        let table = self.inner.table.load();
        let mut kept = 0;
        for e in entries {
            let Some(svc) = table.by_name.get(e.service.as_str()) else {
                continue;
            };
            if svc.affinity.is_none() {
                continue;
            }
            let client = u32::from(e.client);
            let shard =
                &self.inner.affinity[(client as usize ^ svc.id as usize) % super::AFFINITY_SHARDS];
            lock(shard).insert(
                (svc.id, client),
                (
                    u32::from(e.endpoint.0),
                    e.endpoint.1,
                    now.saturating_add(e.remaining),
                ),
            );
            kept += 1;
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::lb::{LbDecision, LbQuery};
    use crate::service::{ServiceConfig, ServiceUpdate};

    fn table() -> Services {
        let s = Services::new(ServiceConfig::default());
        let eps: Vec<_> = (5..9)
            .map(|i| serde_json::json!({"ip": format!("10.1.0.{i}"), "port": 8080}))
            .collect();
        let u: ServiceUpdate = serde_json::from_value(serde_json::json!({"upsert": [{
            "name": "default/aff:http", "protocol": "tcp", "port": 80,
            "cluster_ips": ["10.96.0.10"], "session_affinity_seconds": 100,
            "endpoints": eps}]}))
        .expect("batch");
        s.apply(&u, None).expect("applies");
        s
    }

    fn pick(s: &Services, now: Nanos, client: u32, rand: u64) -> (u32, u16) {
        let q = LbQuery {
            proto: 6,
            src: client,
            dst: u32::from(Ipv4Addr::new(10, 96, 0, 10)),
            dport: 80,
        };
        match s.choose(now, q, rand, true) {
            LbDecision::Forward(t) => (t.ip, t.port),
            d => panic!("not forwarded: {d:?}"),
        }
    }

    /// Affinity exported from one table and restored into another (a new
    /// process, another clock origin, other Service ids) pins each client
    /// to the same endpoint, for the time it had left.
    #[test]
    fn affinity_moves_to_a_new_table_by_service_name() {
        const SEC: Nanos = 1_000_000_000;
        let old = table();
        let clients: Vec<u32> = (1..=16).map(|c| 0x0a00_0100 | c).collect();
        let pinned: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                pick(
                    &old,
                    10 * SEC,
                    c,
                    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
            })
            .collect();
        let saved = old.affinity_entries(40 * SEC);
        assert_eq!(saved.len(), clients.len());
        assert!(saved
            .iter()
            .all(|e| e.remaining == 70 * SEC && e.service == "default/aff:http"));
        // Another table: its own ids (a second Service first).
        let new = Services::new(ServiceConfig::default());
        let u: ServiceUpdate = serde_json::from_value(serde_json::json!({"upsert": [{
            "name": "default/other:http", "protocol": "tcp", "port": 81,
            "cluster_ips": ["10.96.0.11"], "endpoints": []}]}))
        .expect("batch");
        new.apply(&u, None).expect("applies");
        assert_eq!(
            new.restore_affinity(&saved, 5 * SEC),
            0,
            "no such Service yet"
        );
        let new = {
            let t = table();
            assert_eq!(t.restore_affinity(&saved, 5 * SEC), clients.len());
            t
        };
        assert!(
            new.affinity_entries(76 * SEC).is_empty(),
            "70 s from t = 5 s"
        );
        // Whatever the random draw, each client gets its endpoint back
        // while the affinity lasts (70 s from t = 5 s on the new clock).
        for (i, &c) in clients.iter().enumerate() {
            assert_eq!(
                pick(&new, 60 * SEC, c, u64::MAX - i as u64 * 977),
                pinned[i]
            );
        }
    }
}
