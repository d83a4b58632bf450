//! The Service table proper: [`Services`], its published versions and how
//! an update batch becomes a new version.
//!
//! What it owns: the frontend map (`(address, port, protocol)` to the
//! Service behind it) and the by-name map, both split into copy-on-write
//! shards; each Service's endpoints with their counters and the candidate
//! lists (all endpoints, node-local ones) precomputed at update time; the
//! client-affinity shards; and [`ServiceError`], why a batch is refused.
//!
//! Invariants: [`Services::apply`] validates the whole batch before it
//! publishes anything, and publishes in one atomic swap, so readers see the
//! old or the new table, never a mix; endpoint counters survive updates for
//! the endpoints that remain; every frontend belongs to exactly one Service.
//!
//! Thread-safety: [`Services`] is a cheap `Clone` handle, `Send + Sync`;
//! readers load the current version lock-free, writers serialise on a
//! mutex.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use sluice_api::node::{NodeProgram, NodeSettings};

use super::api::{EndpointSpec, ServiceSpec, ServiceUpdate, UpdateSummary};
use super::{lock, proto_name, AFFINITY_SHARDS, SEC, SHARDS};
use crate::conntrack::config::ServiceConfig;
use crate::conntrack::lb::{EndpointStats, LbRef};
use crate::conntrack::Conntrack;
use crate::time::Nanos;

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
pub(super) struct FrontendKey {
    pub(super) ip: u32,
    pub(super) port: u16,
    pub(super) proto: u8,
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
pub(super) struct Endpoint {
    pub(super) spec: EndpointSpec,
    pub(super) ip: u32,
    pub(super) stats: Arc<EndpointStats>,
    /// What a connection balanced here remembers (one reference count
    /// per new connection).
    pub(super) lb: LbRef,
}

#[derive(Debug)]
pub(super) struct Service {
    pub(super) id: u64,
    pub(super) name: Arc<str>,
    pub(super) spec: ServiceSpec,
    pub(super) endpoints: Vec<Endpoint>,
    /// Candidate indexes over all endpoints and over node-local ones.
    pub(super) cluster: Vec<u32>,
    pub(super) local: Vec<u32>,
    pub(super) affinity: Option<Nanos>,
}

#[derive(Debug, Clone)]
pub(super) struct Frontend {
    pub(super) kind: FrontendKind,
    pub(super) svc: Arc<Service>,
}

/// A map split into copy-on-write shards.
#[derive(Debug)]
pub(super) struct Sharded<K, V> {
    pub(super) shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Sharded {
            shards: self.shards.clone(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    pub(super) fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
        }
    }

    pub(super) fn idx<Q: std::hash::Hash + ?Sized>(k: &Q) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(k) as usize % SHARDS
    }

    pub(super) fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.shards[Self::idx(k)].get(k)
    }

    pub(super) fn insert(&mut self, k: K, v: V) -> Option<V> {
        let i = Self::idx(&k);
        Arc::make_mut(&mut self.shards[i]).insert(k, v)
    }

    pub(super) fn remove<Q>(&mut self, k: &Q) -> Option<V>
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

    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// One published version of the table.
#[derive(Debug, Clone)]
pub(super) struct Table {
    pub(super) frontends: Sharded<FrontendKey, Frontend>,
    pub(super) by_name: Sharded<Arc<str>, Arc<Service>>,
    /// The node settings this version was published with (the same as
    /// `Inner::config` once published), so that a new connection's
    /// selection loads one version, not two.
    pub(super) config: Arc<ServiceConfig>,
}

pub(super) type AffinityMap = HashMap<(u64, u32), (u32, u16, Nanos)>;

#[derive(Debug)]
pub(super) struct Inner {
    /// The node settings (node addresses, NodePort range, masquerade
    /// address, cluster CIDRs, zone); replaced with the table when a node
    /// commit changes them.
    pub(super) config: ArcSwap<ServiceConfig>,
    pub(super) table: ArcSwap<Table>,
    pub(super) writer: Mutex<u64>,
    pub(super) affinity: Box<[Mutex<AffinityMap>]>,
}

/// A Service table prepared by [`Services::stage`], not yet visible.
#[derive(Debug)]
pub struct StagedServices<'a> {
    services: &'a Services,
    _writer: std::sync::MutexGuard<'a, u64>,
    table: Table,
    config: Option<Arc<ServiceConfig>>,
    removed: HashSet<(Arc<str>, Ipv4Addr, u16)>,
    summary: UpdateSummary,
}

/// A published Service update whose removed endpoints' connections may
/// still need flushing ([`Published::flush`], outside any PMD barrier).
#[derive(Debug)]
#[must_use = "flush the removed endpoints' connections"]
pub struct Published {
    removed: HashSet<(Arc<str>, Ipv4Addr, u16)>,
    summary: UpdateSummary,
}

impl StagedServices<'_> {
    /// What publishing will change.
    pub fn summary(&self) -> UpdateSummary {
        self.summary.clone()
    }

    /// Makes the prepared table (and settings) the ones in force.
    pub fn publish(self) -> Published {
        let inner = &self.services.inner;
        let mut table = self.table;
        if let Some(c) = self.config {
            table.config = c.clone();
            inner.config.store(c);
        }
        inner.table.store(Arc::new(table));
        Published {
            removed: self.removed,
            summary: self.summary,
        }
    }
}

impl Published {
    /// Flushes the connections of removed endpoints from `conntrack` (when
    /// the batch asked for it); returns the summary with the count.
    pub fn flush(self, conntrack: Option<&Conntrack>) -> UpdateSummary {
        let removed = self.removed;
        let flushed = match conntrack {
            Some(ct) if !removed.is_empty() => ct.flush_where(|c| {
                c.lb.as_ref().is_some_and(|lb| {
                    removed.contains(&(lb.service.clone(), lb.endpoint.0, lb.endpoint.1))
                })
            }),
            _ => 0,
        };
        UpdateSummary {
            flushed,
            ..self.summary
        }
    }
}

/// The Service table handle.
#[derive(Debug, Clone)]
pub struct Services {
    pub(super) inner: Arc<Inner>,
}

impl ServiceConfig {
    /// The Service table's settings from a node program's settings: node
    /// addresses, NodePort range, masquerade address (unspecified when
    /// none), cluster CIDRs (network form) and zone.
    pub fn for_settings(s: &NodeSettings) -> ServiceConfig {
        ServiceConfig {
            node_addresses: s.node_ips.clone(),
            node_port_range: s.node_port_range,
            masquerade_ip: s.masquerade_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            cluster_cidrs: s
                .cluster_cidrs
                .iter()
                .map(|c| (c.network(), c.prefix_len))
                .collect(),
            node_zone: s.zone.clone(),
        }
    }
}

impl Services {
    /// A table configured from `program`'s settings
    /// ([`ServiceConfig::for_settings`]) holding its Services: what a
    /// node commit of `program` onto an empty sluiced makes of them.
    pub fn for_program(program: &NodeProgram) -> Result<Services, ServiceError> {
        let services = Services::new(ServiceConfig::for_settings(&program.settings));
        let update = ServiceUpdate {
            upsert: program.services.values().cloned().collect(),
            delete: vec![],
            flush_removed_endpoints: false,
        };
        services.apply(&update, None)?;
        Ok(services)
    }

    /// An empty table.
    pub fn new(config: ServiceConfig) -> Services {
        let config = Arc::new(config);
        Services {
            inner: Arc::new(Inner {
                config: ArcSwap::new(config.clone()),
                table: ArcSwap::from_pointee(Table {
                    frontends: Sharded::new(),
                    by_name: Sharded::new(),
                    config,
                }),
                writer: Mutex::new(0),
                affinity: (0..AFFINITY_SHARDS)
                    .map(|_| Mutex::new(AffinityMap::new()))
                    .collect(),
            }),
        }
    }

    /// The node settings in force.
    pub fn config(&self) -> Arc<ServiceConfig> {
        self.inner.config.load_full()
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

    pub(super) fn frontends_of(&self, s: &ServiceSpec) -> Vec<(FrontendKey, FrontendKind)> {
        frontends_of(&self.inner.config.load(), s)
    }
}

/// Every frontend of `s` under the node settings `config`.
fn frontends_of(config: &ServiceConfig, s: &ServiceSpec) -> Vec<(FrontendKey, FrontendKind)> {
    {
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
                config
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
}

impl Services {
    pub(super) fn validate(config: &ServiceConfig, s: &ServiceSpec) -> Result<(), ServiceError> {
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
            let (lo, hi) = config.node_port_range;
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
        Ok(self.stage(update, None)?.publish().flush(conntrack))
    }

    /// Prepares `update` (and, when given and different, new node
    /// settings: every Service's frontends are rebuilt for them) without
    /// publishing it. The result holds the writer lock until it is
    /// published or dropped (then nothing changes). `node-commit` stages
    /// the Services with the other parts of a commit and publishes them
    /// all under one PMD barrier.
    ///
    /// # Errors
    /// [`ServiceError`]: the first problem of the batch; nothing changes.
    pub fn stage(
        &self,
        update: &ServiceUpdate,
        config: Option<ServiceConfig>,
    ) -> Result<StagedServices<'_>, ServiceError> {
        let mut next_id = lock(&self.inner.writer);
        let old = self.inner.table.load_full();
        let old_cfg = self.inner.config.load_full();
        let new_cfg = config.filter(|c| *c != *old_cfg).map(Arc::new);
        let cfg: &ServiceConfig = new_cfg.as_deref().unwrap_or(&old_cfg);
        let mut t: Table = (*old).clone();
        let mut seen = HashSet::new();
        for s in &update.upsert {
            if !seen.insert(s.name.as_str()) {
                return Err(ServiceError::Duplicate(s.name.clone()));
            }
            Self::validate(cfg, s)?;
        }
        for name in &update.delete {
            if !seen.insert(name.as_str()) {
                return Err(ServiceError::Duplicate(name.clone()));
            }
            if t.by_name.get(name.as_str()).is_none() {
                return Err(ServiceError::NoSuchService(name.clone()));
            }
        }
        // New settings change frontends (NodePorts on the node addresses)
        // and candidates (zone): every other Service is upserted again
        // with its own spec (ids and endpoint counters are kept).
        let mut upserts: Vec<&ServiceSpec> = update.upsert.iter().collect();
        if new_cfg.is_some() {
            let mut rest: Vec<&Arc<Service>> = old
                .by_name
                .values()
                .filter(|s| !seen.contains(&*s.name))
                .collect();
            rest.sort_by(|a, b| a.name.cmp(&b.name));
            for s in rest {
                Self::validate(cfg, &s.spec)?;
                upserts.push(&s.spec);
            }
        }
        let mut removed: HashSet<(Arc<str>, Ipv4Addr, u16)> = HashSet::new();
        // Frontends of a Service in force were built with the old settings.
        let mut unlink = |t: &mut Table, old: &Arc<Service>, keep: &HashSet<(Ipv4Addr, u16)>| {
            for (k, _) in frontends_of(&old_cfg, &old.spec) {
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
        // Unlink everything being replaced first, so that a frontend moving
        // from one Service to another in the same batch is not a conflict.
        let mut prevs = Vec::with_capacity(upserts.len());
        for s in &upserts {
            let prev = t.by_name.get(s.name.as_str()).cloned();
            let keep: HashSet<(Ipv4Addr, u16)> =
                s.endpoints.iter().map(|e| (e.ip, e.port)).collect();
            if let Some(old) = &prev {
                unlink(&mut t, old, &keep);
            }
            prevs.push(prev);
        }
        for (s, prev) in upserts.iter().zip(prevs) {
            let svc = Arc::new(self.build(cfg, s, prev.as_deref(), &mut next_id));
            for (k, kind) in frontends_of(cfg, s) {
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
        Ok(StagedServices {
            services: self,
            _writer: next_id,
            table: t,
            config: new_cfg,
            removed: if update.flush_removed_endpoints {
                removed
            } else {
                HashSet::new()
            },
            summary,
        })
    }

    pub(super) fn build(
        &self,
        config: &ServiceConfig,
        s: &ServiceSpec,
        prev: Option<&Service>,
        next_id: &mut u64,
    ) -> Service {
        let id = prev.map(|p| p.id).unwrap_or_else(|| {
            *next_id += 1;
            *next_id
        });
        let name: Arc<str> = prev
            .map(|p| p.name.clone())
            .filter(|n| **n == *s.name)
            .unwrap_or_else(|| Arc::from(s.name.as_str()));
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
                    lb: LbRef::new(name.clone(), (e.ip, e.port), stats.clone()),
                    stats,
                }
            })
            .collect();
        // Topology-aware routing (kube-proxy's CategorizeEndpoints): zone
        // hints narrow the cluster-wide candidates only when the Service
        // asks for it, the node has a zone, every ready endpoint carries
        // hints and at least one is hinted for this node's zone.
        let is_ready = |e: &EndpointSpec| e.ready && !e.terminating;
        let zone = config.node_zone.as_deref();
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
            name,
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
}
