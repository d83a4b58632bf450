//! Read-only text views of the Service table: `lb-trace`'s
//! [`Services::trace`] and `dump-services` ([`Services::dump`],
//! [`Services::dump_with`], which adds the packets of live connections).
//!
//! Invariants: nothing here changes the table, the affinity state or a
//! counter.
//!
//! Thread-safety: runs on the control thread over one table version.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::api::TrafficPolicy;
use super::table::{FrontendKey, FrontendKind, Service, Services};
use super::{proto_name, SEC};
use crate::conntrack::Conntrack;

impl Services {
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
        let (external, policy, cands) = Self::candidates(fe, self.is_internal(src));
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
        let from_node = self.is_node_address(src);
        let hairpin = cands.iter().any(|&i| svc.endpoints[i as usize].ip == src);
        if policy == TrafficPolicy::Cluster && external || from_node {
            out += &format!("masquerade to {}\n", self.inner.config.load().masquerade_ip);
        } else if hairpin {
            out += &format!(
                "masquerade to {} if the client's own endpoint is chosen (hairpin)\n",
                self.inner.config.load().masquerade_ip
            );
        }
        out
    }
}

impl Services {
    /// `dump-services` text: each Service, its frontends and endpoints
    /// with their counters, sorted by name.
    pub fn dump(&self) -> String {
        self.dump_with(None)
    }

    /// [`Services::dump`] adding the packets of live connections from
    /// `conntrack` to each endpoint's counter (finished connections are
    /// already in it).
    pub fn dump_with(&self, conntrack: Option<&Conntrack>) -> String {
        sluice_api::Render::render(&self.view(conntrack))
    }

    /// The table as [`sluice_api::service::ServiceDump`]: each Service,
    /// sorted by name, with its frontends and its endpoints' counters
    /// (live connections' packets from `conntrack` included).
    pub fn view(&self, conntrack: Option<&Conntrack>) -> sluice_api::service::ServiceDump {
        use sluice_api::service as api;
        let live = conntrack
            .map(|c| c.live_endpoint_packets())
            .unwrap_or_default();
        let table = self.inner.table.load();
        let mut svcs: BTreeMap<&str, &Arc<Service>> = BTreeMap::new();
        for s in table.by_name.values() {
            svcs.insert(&s.name, s);
        }
        let mut services = Vec::with_capacity(svcs.len());
        for (name, s) in svcs {
            let mut frontends: Vec<api::Frontend> = self
                .frontends_of(&s.spec)
                .into_iter()
                .map(|(k, kind)| api::Frontend {
                    ip: Ipv4Addr::from(k.ip),
                    port: k.port,
                    kind: match kind {
                        FrontendKind::ClusterIp => api::FrontendKind::Cluster,
                        FrontendKind::NodePort => api::FrontendKind::NodePort,
                        FrontendKind::ExternalIp => api::FrontendKind::External,
                        FrontendKind::LoadBalancer => api::FrontendKind::Lb,
                    },
                })
                .collect();
            // Sorted as their text ("ip:port(kind)"), as dumps always were.
            frontends.sort_by_cached_key(|f| format!("{}:{}({:?})", f.ip, f.port, f.kind));
            let endpoints = s
                .endpoints
                .iter()
                .map(|e| {
                    let sp = &e.spec;
                    api::EndpointInfo {
                        ip: sp.ip,
                        port: sp.port,
                        ready: sp.ready,
                        serving: sp.serving.unwrap_or(sp.ready),
                        terminating: sp.terminating,
                        node_local: sp.node_local,
                        for_zones: sp.for_zones.clone(),
                        connections: e.stats.connections.load(Ordering::Relaxed),
                        active: e.stats.active.load(Ordering::Relaxed),
                        packets: e.stats.packets.load(Ordering::Relaxed)
                            + live
                                .get(&(s.name.clone(), sp.ip, sp.port))
                                .copied()
                                .unwrap_or(0),
                    }
                })
                .collect();
            services.push(api::ServiceInfo {
                name: name.to_string(),
                protocol: s.spec.protocol,
                frontends,
                affinity_seconds: s.affinity.map(|t| t / SEC),
                internal_traffic_policy: s.spec.internal_traffic_policy,
                external_traffic_policy: s.spec.external_traffic_policy,
                topology_aware: s.spec.topology_aware,
                endpoints,
            });
        }
        api::ServiceDump { services }
    }
}
