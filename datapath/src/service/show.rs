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
