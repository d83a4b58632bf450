//! The Service table: kube-proxy's Service semantics at O(1).
//!
//! What it owns: a map from frontend `(address, port, protocol)` to the
//! Service behind it, for every clusterIP, every externalIP, every
//! LoadBalancer ingress IP and, for NodePort Services, every local node
//! address with the node port. A Service holds its endpoints (address,
//! port, conditions ready/serving/terminating, node-local flag, optional
//! zone hint) and, precomputed at update time, the candidate lists a new
//! connection picks from: ready endpoints, or serving+terminating ones when
//! none is ready, once over all endpoints and once over node-local ones.
//! Selection is one hash lookup and one random index: cost does not grow
//! with the number of Services or endpoints.
//!
//! How the datapath uses it: a `ct(commit,nat)` action (a *bare* `nat`,
//! without `src=`/`dst=`) on a new connection asks [`Services::choose`];
//! the conntrack entry then remembers the endpoint (DNAT, plus SNAT to the
//! masquerade address when needed), so a connection keeps its endpoint for
//! its whole life and established traffic never consults this table. We
//! chose `ct(nat)` over a separate `lb` action so that the flow program
//! needs no change and the decision is taken exactly where the translation
//! is stored. Semantics:
//!
//! - endpoints are chosen uniformly at random among the candidates;
//! - topology-aware routing (`topology_aware`, kube-proxy's zone hints):
//!   when the node has a zone ([`ServiceConfig::node_zone`]), every ready
//!   endpoint carries `for_zones` hints and one of them names this zone,
//!   cluster-wide candidates are the ready endpoints hinted for this zone;
//!   otherwise hints are ignored (as kube-proxy does);
//! - `sessionAffinity: ClientIP` pins a client address to its endpoint for
//!   `timeout_seconds` (default 10800, 1–86400) after its last new
//!   connection, while that endpoint stays a candidate;
//! - `internalTrafficPolicy`/`externalTrafficPolicy: Local` restrict to
//!   node-local endpoints and never masquerade (client IP preserved);
//!   traffic is *external* when it reaches a NodePort, externalIP or
//!   LoadBalancer frontend from outside the cluster CIDRs and node
//!   addresses;
//! - external traffic with policy `Cluster`, a pod reaching itself
//!   (hairpin) and traffic from a node address are masqueraded (SNAT to
//!   [`ServiceConfig::masquerade_ip`] with a port from the conntrack
//!   masquerade range);
//! - no candidate: policy `Local` drops (`service_no_local_endpoint`),
//!   otherwise the packet is answered with ICMP port unreachable, for TCP,
//!   UDP and SCTP alike (as kube-proxy's iptables `REJECT`).
//!
//! A flow program using it (pods behind port 2, the rest on port 1):
//!
//! ```text
//! table=0,priority=10,ip actions=ct(commit,zone=1,nat,table=1)
//! table=1,priority=20,ct_state=+trk+inv actions=drop
//! table=1,priority=10,ip,nw_dst=10.244.0.0/16 actions=output:2
//! table=1,priority=5,ip actions=output:1
//! ```
//!
//! and an update (`sluicectl call service-update '<json>'`, or the
//! `service-update` JSON-RPC method with the object as `params`):
//!
//! ```text
//! {"upsert": [{"name": "default/web:http", "protocol": "tcp", "port": 80,
//!   "cluster_ips": ["10.96.0.10"], "node_port": 30080,
//!   "session_affinity_seconds": 10800, "external_traffic_policy": "Local",
//!   "endpoints": [{"ip": "10.244.1.5", "port": 8080, "node_local": true},
//!                 {"ip": "10.244.2.7", "port": 8080, "ready": false,
//!                  "serving": true, "terminating": true}]}],
//!  "delete": ["default/old:http"], "flush_removed_endpoints": false}
//! ```
//!
//! Updates: [`Services::apply`] takes a [`ServiceUpdate`] batch, validates
//! all of it, builds a new table and publishes it in one atomic swap
//! (`ArcSwap`): PMDs see either the old or the new table, never a mix. The
//! table is split into copy-on-write shards so one change clones only the
//! shards it touches. Endpoint counters survive updates for endpoints that
//! remain. Connections to removed endpoints keep working until they end or
//! expire, unless the batch sets `flush_removed_endpoints`.
//!
//! Files: [`api`] (the serde types of an update batch and its reply),
//! `table` (the table, its versions and `apply`), `selection` (choosing an
//! endpoint, the conntrack load-balancer contract), `show` (`lb-trace` and
//! `dump-services` text) and [`commands`].
//!
//! Thread-safety: [`Services`] is a cheap `Clone` handle, `Send + Sync`.
//! Readers are lock-free; writers serialise on a mutex; the affinity table
//! is sharded behind mutexes and touched only by new connections.

pub mod api;
pub mod commands;
mod saved;
mod selection;
pub use saved::AffinityEntry;
mod show;
mod table;
#[cfg(test)]
mod tests;

use std::sync::Mutex;

pub use crate::conntrack::config::ServiceConfig;
pub use crate::conntrack::lb::{EndpointStats, LbDecision, LbEndpoint, LbRef, LbTarget};
use crate::flow::key::ipproto;
use crate::time::Nanos;
pub use api::*;
pub use table::*;

// The test module (`use super::*`) sees the names this module imported
// before it was split into submodules.
#[cfg(test)]
use {
    crate::conntrack::Conntrack, crate::drop::DropReason, std::net::Ipv4Addr,
    std::sync::atomic::Ordering,
};

const SHARDS: usize = 256;
const AFFINITY_SHARDS: usize = 64;
const SEC: Nanos = 1_000_000_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn proto_name(p: u8) -> &'static str {
    match p {
        ipproto::TCP => "tcp",
        ipproto::UDP => "udp",
        ipproto::SCTP => "sctp",
        _ => "ip",
    }
}
