//! Endpoint selection for new connections: [`Services::choose`] (which
//! records client affinity, or with `record` false records nothing),
//! and the conntrack [`LoadBalancer`] contract they implement.
//!
//! Invariants: one frontend lookup and one random index per new connection,
//! whatever the number of Services and endpoints; the semantics (topology
//! hints, affinity, traffic policies, masquerading, reject or drop when no
//! candidate) are the ones described in the module overview.
//!
//! Thread-safety: called by every PMD concurrently; reads the current table
//! version lock-free and locks one affinity shard only for Services with
//! session affinity.

use std::net::Ipv4Addr;

use super::api::TrafficPolicy;
use super::table::{Frontend, FrontendKey, FrontendKind, Services};
use super::{lock, ServiceConfig, AFFINITY_SHARDS};
use crate::conntrack::lb::{LbDecision, LbQuery, LbTarget, LoadBalancer};
use crate::drop::DropReason;
use crate::time::Nanos;

pub(super) fn in_cidr(ip: u32, (net, len): (Ipv4Addr, u8)) -> bool {
    let len = u32::from(len.min(32));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ip & mask == u32::from(net) & mask
}

/// True when `ip` is one of the node's addresses in `config`.
fn is_node_address(config: &ServiceConfig, ip: u32) -> bool {
    config.node_addresses.iter().any(|&a| u32::from(a) == ip)
}

/// True when `ip` is a pod (cluster CIDR) or node address in `config`.
fn is_internal(config: &ServiceConfig, ip: u32) -> bool {
    config.cluster_cidrs.iter().any(|&n| in_cidr(ip, n)) || is_node_address(config, ip)
}

impl Services {
    /// Which endpoints a new connection to frontend `fe` may get, from a
    /// source that is `internal` (a pod or this node) or not: whether the
    /// traffic counts as external, the traffic policy in force and the
    /// candidate endpoint indexes. One rule for the datapath and `lb-trace`.
    pub(super) fn candidates(fe: &Frontend, internal: bool) -> (bool, TrafficPolicy, &[u32]) {
        let svc = &fe.svc;
        let external = fe.kind != FrontendKind::ClusterIp && !internal;
        let policy = if external {
            svc.spec.external_traffic_policy
        } else {
            svc.spec.internal_traffic_policy
        };
        let cands = match policy {
            TrafficPolicy::Local => &svc.local,
            TrafficPolicy::Cluster => &svc.cluster,
        };
        (external, policy, cands)
    }

    /// True when `ip` is one of this node's addresses.
    pub(super) fn is_node_address(&self, ip: u32) -> bool {
        is_node_address(&self.inner.config.load(), ip)
    }

    pub(super) fn is_internal(&self, ip: u32) -> bool {
        is_internal(&self.inner.config.load(), ip)
    }

    /// Chooses the endpoint for the new connection `q`; `rand` is a
    /// uniformly random number. With `record` the client's affinity is
    /// remembered; without it (`trace`'s preview) no state changes.
    pub fn choose(&self, now: Nanos, q: LbQuery, rand: u64, record: bool) -> LbDecision {
        let LbQuery {
            proto,
            src,
            dst,
            dport,
        } = q;
        let table = self.inner.table.load();
        let Some(fe) = table.frontends.get(&FrontendKey {
            ip: dst,
            port: dport,
            proto,
        }) else {
            return LbDecision::NotService;
        };
        let svc = &fe.svc;
        // The node settings come with the table version: one load per
        // new connection.
        let config = &*table.config;
        let from_node = is_node_address(config, src);
        let (external, policy, cands) = Self::candidates(fe, is_internal(config, src));
        if cands.is_empty() {
            return match policy {
                TrafficPolicy::Local => LbDecision::Drop(DropReason::ServiceNoLocalEndpoint),
                TrafficPolicy::Cluster => LbDecision::Reject,
            };
        }
        let mut idx = cands[((u128::from(rand) * cands.len() as u128) >> 64) as usize];
        if let Some(timeout) = svc.affinity {
            let shard = &self.inner.affinity[(src as usize ^ svc.id as usize) % AFFINITY_SHARDS];
            let mut m = lock(shard);
            if let Some(&(ip, port, expires)) = m.get(&(svc.id, src)) {
                if expires > now {
                    if let Some(&i) = cands.iter().find(|&&i| {
                        let e = &svc.endpoints[i as usize];
                        e.ip == ip && e.spec.port == port
                    }) {
                        idx = i;
                    }
                }
            }
            if record {
                let e = &svc.endpoints[idx as usize];
                m.insert((svc.id, src), (e.ip, e.spec.port, now + timeout));
            }
        }
        let e = &svc.endpoints[idx as usize];
        let hairpin = e.ip == src;
        let masq = policy == TrafficPolicy::Cluster && external || hairpin || from_node;
        LbDecision::Forward(LbTarget {
            ip: e.ip,
            port: e.spec.port,
            masquerade: masq.then_some(u32::from(config.masquerade_ip)),
            lb: e.lb.clone(),
        })
    }
}

impl Services {
    /// Removes expired affinity entries of one shard (`i` modulo the
    /// shard count).
    pub fn expire_affinity(&self, now: Nanos, i: usize) {
        lock(&self.inner.affinity[i % AFFINITY_SHARDS]).retain(|_, v| v.2 > now);
    }
}

impl LoadBalancer for Services {
    fn choose(&self, now: Nanos, q: LbQuery, rand: u64, record: bool) -> LbDecision {
        Services::choose(self, now, q, rand, record)
    }

    fn trace(&self, q: LbQuery) -> String {
        Services::trace(self, q.proto, q.src, q.dst, q.dport)
    }

    fn expire_affinity(&self, now: Nanos, shard: usize) {
        Services::expire_affinity(self, now, shard)
    }
}
