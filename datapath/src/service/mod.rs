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
//! without `src=`/`dst=`) on a new connection asks [`Services::select`];
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
//! Thread-safety: [`Services`] is a cheap `Clone` handle, `Send + Sync`.
//! Readers are lock-free; writers serialise on a mutex; the affinity table
//! is sharded behind mutexes and touched only by new connections.

pub mod commands;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

pub use crate::conntrack::config::ServiceConfig;
use crate::conntrack::lb::LoadBalancer;
pub use crate::conntrack::lb::{EndpointStats, LbDecision, LbRef, LbTarget};
use crate::conntrack::Conntrack;
use crate::drop::DropReason;
use crate::flow::key::ipproto;
use crate::time::Nanos;

const SHARDS: usize = 256;
const AFFINITY_SHARDS: usize = 64;
const SEC: Nanos = 1_000_000_000;

/// Service protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    fn ipproto(self) -> u8 {
        match self {
            Protocol::Tcp => ipproto::TCP,
            Protocol::Udp => ipproto::UDP,
            Protocol::Sctp => ipproto::SCTP,
        }
    }
}

/// `internalTrafficPolicy` / `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any endpoint of the cluster.
    #[default]
    Cluster,
    /// Only node-local endpoints.
    Local,
}

fn yes() -> bool {
    true
}

/// One endpoint of a Service, as the control agent sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Endpoint address.
    pub ip: Ipv4Addr,
    /// Endpoint (target) port.
    pub port: u16,
    /// `conditions.ready` (default true).
    #[serde(default = "yes")]
    pub ready: bool,
    /// `conditions.serving` (default: equal to `ready`).
    #[serde(default)]
    pub serving: Option<bool>,
    /// `conditions.terminating`.
    #[serde(default)]
    pub terminating: bool,
    /// The endpoint runs on this node.
    #[serde(default)]
    pub node_local: bool,
    /// The endpoint's own zone (informational).
    #[serde(default)]
    pub zone: Option<String>,
    /// `hints.forZones`: the zones this endpoint should serve under
    /// topology-aware routing.
    #[serde(default)]
    pub for_zones: Vec<String>,
}

/// One Service port, as the control agent sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name, e.g. `namespace/name:port-name`.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Service port.
    pub port: u16,
    /// Every clusterIP.
    #[serde(default)]
    pub cluster_ips: Vec<Ipv4Addr>,
    /// NodePort, if any.
    #[serde(default)]
    pub node_port: Option<u16>,
    /// externalIPs.
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    /// LoadBalancer ingress IPs.
    #[serde(default)]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` for `None`
    /// affinity. `Some(0)` means the default (10800).
    #[serde(default)]
    pub session_affinity_seconds: Option<u32>,
    /// `internalTrafficPolicy`.
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    /// `externalTrafficPolicy`.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// Topology-aware routing is on for this Service
    /// (`service.kubernetes.io/topology-mode: Auto` or
    /// `trafficDistribution: PreferClose`): zone hints are honoured.
    #[serde(default)]
    pub topology_aware: bool,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

/// One atomic batch of Service changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    /// Services added or replaced (by name).
    #[serde(default)]
    pub upsert: Vec<ServiceSpec>,
    /// Names of Services removed.
    #[serde(default)]
    pub delete: Vec<String>,
    /// Remove the tracked connections of endpoints that this batch removes
    /// (default: keep them until they end or expire).
    #[serde(default)]
    pub flush_removed_endpoints: bool,
}

/// Why a Service update was refused (nothing was applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// A name appears twice in one batch.
    #[error(
        "service {0:?} appears more than once in the batch; send each Service once per update"
    )]
    Duplicate(String),
    /// Port 0.
    #[error("service {0:?} has port 0; give it a port between 1 and 65535")]
    ZeroPort(String),
    /// An endpoint with port 0.
    #[error("service {name:?} has endpoint {ip} with port 0; give every endpoint a target port")]
    EndpointZeroPort {
        /// Service name.
        name: String,
        /// Endpoint address.
        ip: Ipv4Addr,
    },
    /// Affinity timeout out of range.
    #[error("service {name:?} has sessionAffinity timeout {seconds} s; use 1 to 86400 seconds")]
    AffinityRange {
        /// Service name.
        name: String,
        /// The timeout given.
        seconds: u32,
    },
    /// Node port outside the configured range.
    #[error("service {name:?} has nodePort {port}, outside the node port range {lo}-{hi}; pick a port inside it")]
    NodePortRange {
        /// Service name.
        name: String,
        /// The node port given.
        port: u16,
        /// Range start.
        lo: u16,
        /// Range end.
        hi: u16,
    },
    /// Two Services claim one frontend.
    #[error("services {a:?} and {b:?} both use {frontend}; give each frontend address, port and protocol to one Service")]
    FrontendConflict {
        /// Frontend `ip:port/proto`.
        frontend: String,
        /// One Service.
        a: String,
        /// The other.
        b: String,
    },
    /// Deleting a Service that does not exist.
    #[error(
        "service {0:?} does not exist; nothing to delete (check the name, e.g. with dump-services)"
    )]
    NoSuchService(String),
    /// Bad JSON.
    #[error("invalid service update: {0}; expected {{\"upsert\": [...], \"delete\": [...], \"flush_removed_endpoints\": bool}}")]
    Json(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct FrontendKey {
    ip: u32,
    port: u16,
    proto: u8,
}

/// Kinds of frontends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// A clusterIP.
    ClusterIp,
    /// A node address with the node port.
    NodePort,
    /// An externalIP.
    ExternalIp,
    /// A LoadBalancer ingress IP.
    LoadBalancer,
}

#[derive(Debug)]
struct Endpoint {
    spec: EndpointSpec,
    ip: u32,
    stats: Arc<EndpointStats>,
}

#[derive(Debug)]
struct Service {
    id: u64,
    name: Arc<str>,
    spec: ServiceSpec,
    endpoints: Vec<Endpoint>,
    /// Candidate indexes over all endpoints and over node-local ones.
    cluster: Vec<u32>,
    local: Vec<u32>,
    affinity: Option<Nanos>,
}

#[derive(Debug, Clone)]
struct Frontend {
    kind: FrontendKind,
    svc: Arc<Service>,
}

/// A map split into copy-on-write shards.
#[derive(Debug)]
struct Sharded<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Sharded {
            shards: self.shards.clone(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
        }
    }

    fn idx<Q: std::hash::Hash + ?Sized>(k: &Q) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(k) as usize % SHARDS
    }

    fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.shards[Self::idx(k)].get(k)
    }

    fn insert(&mut self, k: K, v: V) -> Option<V> {
        let i = Self::idx(&k);
        Arc::make_mut(&mut self.shards[i]).insert(k, v)
    }

    fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let i = Self::idx(k);
        if !self.shards[i].contains_key(k) {
            return None;
        }
        Arc::make_mut(&mut self.shards[i]).remove(k)
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// One published version of the table.
#[derive(Debug, Clone)]
struct Table {
    frontends: Sharded<FrontendKey, Frontend>,
    by_name: Sharded<Arc<str>, Arc<Service>>,
}

type AffinityMap = HashMap<(u64, u32), (u32, u16, Nanos)>;

#[derive(Debug)]
struct Inner {
    config: ServiceConfig,
    table: ArcSwap<Table>,
    writer: Mutex<u64>,
    affinity: Box<[Mutex<AffinityMap>]>,
}

/// The Service table handle.
#[derive(Debug, Clone)]
pub struct Services {
    inner: Arc<Inner>,
}

/// Summary of an applied update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpdateSummary {
    /// Services added or replaced.
    pub upserted: usize,
    /// Services removed.
    pub deleted: usize,
    /// Services installed after the update.
    pub services: usize,
    /// Frontends installed after the update.
    pub frontends: usize,
    /// Connections removed with their endpoints.
    pub flushed: usize,
}

fn in_cidr(ip: u32, (net, len): (Ipv4Addr, u8)) -> bool {
    let len = u32::from(len.min(32));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    ip & mask == u32::from(net) & mask
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Services {
    /// An empty table.
    pub fn new(config: ServiceConfig) -> Services {
        Services {
            inner: Arc::new(Inner {
                config,
                table: ArcSwap::from_pointee(Table {
                    frontends: Sharded::new(),
                    by_name: Sharded::new(),
                }),
                writer: Mutex::new(0),
                affinity: (0..AFFINITY_SHARDS)
                    .map(|_| Mutex::new(AffinityMap::new()))
                    .collect(),
            }),
        }
    }

    /// The node settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// Number of Services.
    pub fn len(&self) -> usize {
        self.inner.table.load().by_name.len()
    }

    /// True when no Service is installed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of frontends.
    pub fn frontend_count(&self) -> usize {
        self.inner.table.load().frontends.len()
    }

    fn frontends_of(&self, s: &ServiceSpec) -> Vec<(FrontendKey, FrontendKind)> {
        let proto = s.protocol.ipproto();
        let fk = |ip: Ipv4Addr, port| FrontendKey {
            ip: u32::from(ip),
            port,
            proto,
        };
        let mut v = Vec::new();
        v.extend(
            s.cluster_ips
                .iter()
                .map(|&ip| (fk(ip, s.port), FrontendKind::ClusterIp)),
        );
        if let Some(np) = s.node_port {
            v.extend(
                self.inner
                    .config
                    .node_addresses
                    .iter()
                    .map(|&ip| (fk(ip, np), FrontendKind::NodePort)),
            );
        }
        v.extend(
            s.external_ips
                .iter()
                .map(|&ip| (fk(ip, s.port), FrontendKind::ExternalIp)),
        );
        v.extend(
            s.load_balancer_ips
                .iter()
                .map(|&ip| (fk(ip, s.port), FrontendKind::LoadBalancer)),
        );
        v
    }

    fn validate(&self, s: &ServiceSpec) -> Result<(), ServiceError> {
        if s.port == 0 {
            return Err(ServiceError::ZeroPort(s.name.clone()));
        }
        if let Some(e) = s.endpoints.iter().find(|e| e.port == 0) {
            return Err(ServiceError::EndpointZeroPort {
                name: s.name.clone(),
                ip: e.ip,
            });
        }
        if let Some(sec) = s.session_affinity_seconds {
            if sec > 86_400 {
                return Err(ServiceError::AffinityRange {
                    name: s.name.clone(),
                    seconds: sec,
                });
            }
        }
        if let Some(np) = s.node_port {
            let (lo, hi) = self.inner.config.node_port_range;
            if np < lo || np > hi {
                return Err(ServiceError::NodePortRange {
                    name: s.name.clone(),
                    port: np,
                    lo,
                    hi,
                });
            }
        }
        Ok(())
    }

    /// Applies `update` atomically. Connections of removed endpoints are
    /// flushed from `conntrack` when the batch asks for it.
    pub fn apply(
        &self,
        update: &ServiceUpdate,
        conntrack: Option<&Conntrack>,
    ) -> Result<UpdateSummary, ServiceError> {
        let mut next_id = lock(&self.inner.writer);
        let old = self.inner.table.load_full();
        let mut t: Table = (*old).clone();
        let mut seen = HashSet::new();
        for s in &update.upsert {
            if !seen.insert(s.name.as_str()) {
                return Err(ServiceError::Duplicate(s.name.clone()));
            }
            self.validate(s)?;
        }
        for name in &update.delete {
            if !seen.insert(name.as_str()) {
                return Err(ServiceError::Duplicate(name.clone()));
            }
            if t.by_name.get(name.as_str()).is_none() {
                return Err(ServiceError::NoSuchService(name.clone()));
            }
        }
        let mut removed: HashSet<(Arc<str>, Ipv4Addr, u16)> = HashSet::new();
        let mut unlink = |t: &mut Table, old: &Arc<Service>, keep: &HashSet<(Ipv4Addr, u16)>| {
            for (k, _) in self.frontends_of(&old.spec) {
                if t.frontends
                    .get(&k)
                    .is_some_and(|f| Arc::ptr_eq(&f.svc, old))
                {
                    t.frontends.remove(&k);
                }
            }
            for e in &old.endpoints {
                if !keep.contains(&(e.spec.ip, e.spec.port)) {
                    removed.insert((old.name.clone(), e.spec.ip, e.spec.port));
                }
            }
        };
        for name in &update.delete {
            if let Some(old) = t.by_name.remove(name.as_str()) {
                unlink(&mut t, &old, &HashSet::new());
            }
        }
        for s in &update.upsert {
            let prev = t.by_name.get(s.name.as_str()).cloned();
            let keep: HashSet<(Ipv4Addr, u16)> =
                s.endpoints.iter().map(|e| (e.ip, e.port)).collect();
            if let Some(old) = &prev {
                unlink(&mut t, old, &keep);
            }
            let svc = Arc::new(self.build(s, prev.as_deref(), &mut next_id));
            for (k, kind) in self.frontends_of(s) {
                if let Some(other) = t.frontends.get(&k) {
                    return Err(ServiceError::FrontendConflict {
                        frontend: format!(
                            "{}:{}/{}",
                            Ipv4Addr::from(k.ip),
                            k.port,
                            proto_name(k.proto)
                        ),
                        a: other.svc.name.to_string(),
                        b: s.name.clone(),
                    });
                }
                t.frontends.insert(
                    k,
                    Frontend {
                        kind,
                        svc: svc.clone(),
                    },
                );
            }
            t.by_name.insert(svc.name.clone(), svc);
        }
        let summary = UpdateSummary {
            upserted: update.upsert.len(),
            deleted: update.delete.len(),
            services: t.by_name.len(),
            frontends: t.frontends.len(),
            flushed: 0,
        };
        self.inner.table.store(Arc::new(t));
        drop(next_id);
        let flushed = match conntrack {
            Some(ct) if update.flush_removed_endpoints && !removed.is_empty() => {
                ct.flush_where(|c| {
                    c.lb.as_ref().is_some_and(|lb| {
                        removed.contains(&(lb.service.clone(), lb.endpoint.0, lb.endpoint.1))
                    })
                })
            }
            _ => 0,
        };
        Ok(UpdateSummary { flushed, ..summary })
    }

    fn build(&self, s: &ServiceSpec, prev: Option<&Service>, next_id: &mut u64) -> Service {
        let id = prev.map(|p| p.id).unwrap_or_else(|| {
            *next_id += 1;
            *next_id
        });
        let endpoints: Vec<Endpoint> = s
            .endpoints
            .iter()
            .map(|e| {
                let stats = prev
                    .and_then(|p| {
                        p.endpoints
                            .iter()
                            .find(|o| o.spec.ip == e.ip && o.spec.port == e.port)
                    })
                    .map(|o| o.stats.clone())
                    .unwrap_or_default();
                Endpoint {
                    spec: e.clone(),
                    ip: u32::from(e.ip),
                    stats,
                }
            })
            .collect();
        // Topology-aware routing (kube-proxy's CategorizeEndpoints): zone
        // hints narrow the cluster-wide candidates only when the Service
        // asks for it, the node has a zone, every ready endpoint carries
        // hints and at least one is hinted for this node's zone.
        let is_ready = |e: &EndpointSpec| e.ready && !e.terminating;
        let zone = self.inner.config.node_zone.as_deref();
        let hint_zone = zone.filter(|z| {
            s.topology_aware
                && s.endpoints
                    .iter()
                    .filter(|e| is_ready(e))
                    .all(|e| !e.for_zones.is_empty())
                && s.endpoints
                    .iter()
                    .any(|e| is_ready(e) && e.for_zones.iter().any(|h| h == z))
        });
        let candidates = |local_only: bool| -> Vec<u32> {
            let pick = |f: &dyn Fn(&EndpointSpec) -> bool| -> Vec<u32> {
                endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| (!local_only || e.spec.node_local) && f(&e.spec))
                    .map(|(i, _)| i as u32)
                    .collect()
            };
            let ready = pick(&|e| {
                is_ready(e)
                    && (local_only || hint_zone.is_none_or(|z| e.for_zones.iter().any(|h| h == z)))
            });
            if !ready.is_empty() {
                return ready;
            }
            pick(&|e| e.serving.unwrap_or(e.ready) && e.terminating)
        };
        Service {
            id,
            name: Arc::from(s.name.as_str()),
            cluster: candidates(false),
            local: candidates(true),
            affinity: s.session_affinity_seconds.map(|sec| {
                let sec = if sec == 0 { 10_800 } else { sec };
                Nanos::from(sec) * SEC
            }),
            spec: s.clone(),
            endpoints,
        }
    }

    fn is_internal(&self, ip: u32) -> bool {
        let c = &self.inner.config;
        c.cluster_cidrs.iter().any(|&n| in_cidr(ip, n))
            || c.node_addresses.iter().any(|&a| u32::from(a) == ip)
    }

    /// Chooses the endpoint for a new connection from `src` to
    /// `dst:dport` over `proto`; `rand` is a uniformly random number.
    pub fn select(
        &self,
        now: Nanos,
        proto: u8,
        src: u32,
        dst: u32,
        dport: u16,
        rand: u64,
    ) -> LbDecision {
        self.choose(now, proto, src, dst, dport, rand, true)
    }

    /// [`Services::select`] without recording the client's affinity: what
    /// a new connection would get (`trace`). Changes no state.
    pub fn preview(
        &self,
        now: Nanos,
        proto: u8,
        src: u32,
        dst: u32,
        dport: u16,
        rand: u64,
    ) -> LbDecision {
        self.choose(now, proto, src, dst, dport, rand, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        now: Nanos,
        proto: u8,
        src: u32,
        dst: u32,
        dport: u16,
        rand: u64,
        record: bool,
    ) -> LbDecision {
        let table = self.inner.table.load();
        let Some(fe) = table.frontends.get(&FrontendKey {
            ip: dst,
            port: dport,
            proto,
        }) else {
            return LbDecision::NotService;
        };
        let svc = &fe.svc;
        let from_node = self
            .inner
            .config
            .node_addresses
            .iter()
            .any(|&a| u32::from(a) == src);
        let external = fe.kind != FrontendKind::ClusterIp && !self.is_internal(src);
        let policy = if external {
            svc.spec.external_traffic_policy
        } else {
            svc.spec.internal_traffic_policy
        };
        let cands = match policy {
            TrafficPolicy::Local => &svc.local,
            TrafficPolicy::Cluster => &svc.cluster,
        };
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
            masquerade: masq.then_some(u32::from(self.inner.config.masquerade_ip)),
            lb: LbRef {
                service: svc.name.clone(),
                endpoint: (e.spec.ip, e.spec.port),
                stats: e.stats.clone(),
            },
        })
    }

    /// Explains, without changing any state, what a new connection from
    /// `src` to `dst:dport` would get (`lb-trace`).
    pub fn trace(&self, proto: u8, src: u32, dst: u32, dport: u16) -> String {
        let table = self.inner.table.load();
        let Some(fe) = table.frontends.get(&FrontendKey {
            ip: dst,
            port: dport,
            proto,
        }) else {
            return format!(
                "{}:{dport}/{}: not a Service frontend (committed untranslated)\n",
                Ipv4Addr::from(dst),
                proto_name(proto)
            );
        };
        let svc = &fe.svc;
        let external = fe.kind != FrontendKind::ClusterIp && !self.is_internal(src);
        let policy = if external {
            svc.spec.external_traffic_policy
        } else {
            svc.spec.internal_traffic_policy
        };
        let cands = match policy {
            TrafficPolicy::Local => &svc.local,
            TrafficPolicy::Cluster => &svc.cluster,
        };
        let mut out = format!(
            "service {} frontend {:?} traffic {} policy {:?}\n",
            svc.name,
            fe.kind,
            if external { "external" } else { "internal" },
            policy
        );
        if cands.is_empty() {
            out += match policy {
                TrafficPolicy::Local => "no node-local endpoint: drop\n",
                TrafficPolicy::Cluster => "no usable endpoint: reject (ICMP port unreachable)\n",
            };
            return out;
        }
        let eps: Vec<String> = cands
            .iter()
            .map(|&i| {
                let e = &svc.endpoints[i as usize];
                format!("{}:{}", e.spec.ip, e.spec.port)
            })
            .collect();
        out += &format!("candidates (uniform): {}\n", eps.join(" "));
        if let Some(t) = svc.affinity {
            out += &format!("session affinity ClientIP, {} s\n", t / SEC);
        }
        let from_node = self
            .inner
            .config
            .node_addresses
            .iter()
            .any(|&a| u32::from(a) == src);
        let hairpin = cands.iter().any(|&i| svc.endpoints[i as usize].ip == src);
        if policy == TrafficPolicy::Cluster && external || from_node {
            out += &format!("masquerade to {}\n", self.inner.config.masquerade_ip);
        } else if hairpin {
            out += &format!(
                "masquerade to {} if the client's own endpoint is chosen (hairpin)\n",
                self.inner.config.masquerade_ip
            );
        }
        out
    }

    /// Removes expired affinity entries of one shard (`i` modulo the
    /// shard count).
    pub fn expire_affinity(&self, now: Nanos, i: usize) {
        lock(&self.inner.affinity[i % AFFINITY_SHARDS]).retain(|_, v| v.2 > now);
    }

    /// `dump-services` text: each Service, its frontends and endpoints
    /// with their counters, sorted by name.
    pub fn dump(&self) -> String {
        self.dump_with(None)
    }

    /// [`Services::dump`] adding the packets of live connections from
    /// `conntrack` to each endpoint's counter (finished connections are
    /// already in it).
    pub fn dump_with(&self, conntrack: Option<&Conntrack>) -> String {
        let live = conntrack
            .map(|c| c.live_endpoint_packets())
            .unwrap_or_default();
        let table = self.inner.table.load();
        let mut svcs: BTreeMap<&str, &Arc<Service>> = BTreeMap::new();
        for s in table.by_name.values() {
            svcs.insert(&s.name, s);
        }
        let mut out = String::new();
        for (name, s) in svcs {
            let mut fes: Vec<String> = self
                .frontends_of(&s.spec)
                .into_iter()
                .map(|(k, kind)| {
                    format!(
                        "{}:{}({})",
                        Ipv4Addr::from(k.ip),
                        k.port,
                        match kind {
                            FrontendKind::ClusterIp => "cluster",
                            FrontendKind::NodePort => "nodeport",
                            FrontendKind::ExternalIp => "external",
                            FrontendKind::LoadBalancer => "lb",
                        }
                    )
                })
                .collect();
            fes.sort();
            out += &format!(
                "{name} {} {}{}{}{}{}\n",
                proto_name(s.spec.protocol.ipproto()),
                fes.join(","),
                match s.affinity {
                    Some(t) => format!(" affinity=ClientIP/{}s", t / SEC),
                    None => String::new(),
                },
                if s.spec.internal_traffic_policy == TrafficPolicy::Local {
                    " itp=Local"
                } else {
                    ""
                },
                if s.spec.external_traffic_policy == TrafficPolicy::Local {
                    " etp=Local"
                } else {
                    ""
                },
                if s.spec.topology_aware {
                    " topology=Auto"
                } else {
                    ""
                },
            );
            for e in &s.endpoints {
                let sp = &e.spec;
                let mut cond = Vec::new();
                if sp.ready {
                    cond.push("ready");
                }
                if sp.serving.unwrap_or(sp.ready) {
                    cond.push("serving");
                }
                if sp.terminating {
                    cond.push("terminating");
                }
                if sp.node_local {
                    cond.push("local");
                }
                let zones = if sp.for_zones.is_empty() {
                    String::new()
                } else {
                    format!(" zones={}", sp.for_zones.join(","))
                };
                out += &format!(
                    "  {}:{} {}{zones} connections={} active={} packets={}\n",
                    sp.ip,
                    sp.port,
                    cond.join(","),
                    e.stats.connections.load(Ordering::Relaxed),
                    e.stats.active.load(Ordering::Relaxed),
                    e.stats.packets.load(Ordering::Relaxed)
                        + live
                            .get(&(s.name.clone(), sp.ip, sp.port))
                            .copied()
                            .unwrap_or(0),
                );
            }
        }
        out
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        ipproto::TCP => "tcp",
        ipproto::UDP => "udp",
        ipproto::SCTP => "sctp",
        _ => "ip",
    }
}

impl LoadBalancer for Services {
    fn select(
        &self,
        now: Nanos,
        proto: u8,
        src: u32,
        dst: u32,
        dport: u16,
        rand: u64,
    ) -> LbDecision {
        Services::select(self, now, proto, src, dst, dport, rand)
    }

    fn preview(
        &self,
        now: Nanos,
        proto: u8,
        src: u32,
        dst: u32,
        dport: u16,
        rand: u64,
    ) -> LbDecision {
        Services::preview(self, now, proto, src, dst, dport, rand)
    }

    fn trace(&self, proto: u8, src: u32, dst: u32, dport: u16) -> String {
        Services::trace(self, proto, src, dst, dport)
    }

    fn expire_affinity(&self, now: Nanos, shard: usize) {
        Services::expire_affinity(self, now, shard)
    }
}
