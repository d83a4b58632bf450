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
use crate::time::Nanos;

/// One client's affinity to an endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityEntry {
    /// The Service's name.
    pub service: String,
    /// The client address.
    pub client: Ipv4Addr,
    /// The endpoint address and port the client is pinned to.
    pub endpoint: (Ipv4Addr, u16),
    /// Time left before the affinity expires, ns.
    pub remaining: Nanos,
}

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
