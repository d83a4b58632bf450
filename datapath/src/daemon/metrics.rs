//! sluiced's Prometheus metrics (`[datapath] metrics_address`): ports,
//! PMDs (packets, busy/idle cycles, cycles per packet, cache tiers, drops
//! by reason), conntrack, Services and their endpoints, tunnels and VTEPs,
//! and the node program's generation.
//!
//! Rendered at each scrape from the same sources the control socket's
//! dumps read (`dump-ports`, `pmd-stats-show`, `conntrack-stats`,
//! `dump-services`, `dump-tunnels`, `node-status`): relaxed loads of the
//! PMDs' single-writer counters, nothing more on the hot path. The PMD
//! counters are absolute (a `pmd-stats-clear` baseline does not apply:
//! Prometheus counters never go back).
//!
//! Thread-safety: [`Sources`] holds shared handles; `render` runs on the
//! metrics thread.

use std::sync::Arc;

use sluice_metrics::{Exposition, Kind};

use super::commands::{absolute_pmd_stats, PmdView};
use super::node::NodeState;
use super::ports::Ports;
use crate::conntrack::Conntrack;
use crate::port::Port;
use crate::service::Services;
use crate::tunnel::Tunnels;

/// What the metrics read.
#[derive(Debug)]
pub struct Sources {
    /// The PMDs' counters.
    pub pmds: Vec<PmdView>,
    /// The ports.
    pub ports: Arc<Ports>,
    /// The node program.
    pub node: Arc<NodeState>,
    /// The stateful features (flow pipeline only).
    pub features: Option<(Conntrack, Services, Tunnels)>,
}

fn counter(e: &mut Exposition, name: &str, help: &str) {
    e.family(name, Kind::Counter, help);
}

fn gauge(e: &mut Exposition, name: &str, help: &str) {
    e.family(name, Kind::Gauge, help);
}

impl Sources {
    /// One scrape.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        gauge(&mut e, "sluice_info", "sluiced's version (value 1).");
        e.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        let st = self.node.status();
        gauge(
            &mut e,
            "sluice_node_generation",
            "The node program's generation in force (0: nothing committed since start).",
        );
        e.sample(&[], st.generation as f64);
        gauge(
            &mut e,
            "sluice_uptime_seconds",
            "Seconds since sluiced started.",
        );
        e.sample(&[], st.uptime_ms as f64 / 1e3);
        self.ports(&mut e);
        self.pmds(&mut e);
        if let Some((ct, services, tunnels)) = &self.features {
            conntrack(&mut e, ct);
            self::services(&mut e, services, ct);
            self::tunnels(&mut e, tunnels);
        }
        e.finish()
            .unwrap_or_else(|err| format!("# metrics error: {err}\n"))
    }

    fn ports(&self, e: &mut Exposition) {
        let ports: Vec<_> = self
            .ports
            .list()
            .into_iter()
            .map(|p| {
                let stats = p.handle.stats();
                let up = p.handle.link().up;
                (
                    p.name,
                    p.ofport.to_string(),
                    stats,
                    up,
                    p.fallback.is_some(),
                )
            })
            .collect();
        let l = |p: &(String, String, _, _, _)| -> [(&'static str, String); 2] {
            [("port", p.0.clone()), ("ofport", p.1.clone())]
        };
        type Get = fn(&sluice_api::ports::PortCounters) -> u64;
        let families: [(&str, &str, Get); 7] = [
            (
                "sluice_port_rx_packets_total",
                "Packets received by the port.",
                |s| s.rx_packets,
            ),
            (
                "sluice_port_tx_packets_total",
                "Packets sent by the port.",
                |s| s.tx_packets,
            ),
            (
                "sluice_port_rx_bytes_total",
                "Bytes received by the port.",
                |s| s.rx_bytes,
            ),
            (
                "sluice_port_tx_bytes_total",
                "Bytes sent by the port.",
                |s| s.tx_bytes,
            ),
            (
                "sluice_port_rx_dropped_total",
                "Packets the device dropped on receive (rx ring full).",
                |s| s.rx_dropped,
            ),
            ("sluice_port_rx_errors_total", "Receive errors.", |s| {
                s.rx_errors
            }),
            (
                "sluice_port_tx_errors_total",
                "Transmit errors (packets the device refused).",
                |s| s.tx_errors,
            ),
        ];
        for (name, help, get) in families {
            counter(e, name, help);
            for p in &ports {
                let [a, b] = l(p);
                e.sample(&[(a.0, &a.1), (b.0, &b.1)], get(&p.2) as f64);
            }
        }
        gauge(e, "sluice_port_up", "Link state (1 up).");
        for p in &ports {
            let [a, b] = l(p);
            e.sample(&[(a.0, &a.1), (b.0, &b.1)], f64::from(u8::from(p.3)));
        }
        counter(
            e,
            "sluice_pod_driver_fallbacks_total",
            "Pod ports opened with af_packet because af_xdp, the driver asked for, could not work for them (each logged with why; dump-ports shows it per port).",
        );
        e.sample(&[], self.ports.pod_driver_fallbacks() as f64);
        gauge(
            e,
            "sluice_port_driver_fallback",
            "1 for a pod port asked for with af_xdp and running on af_packet (dump-ports says why), 0 otherwise.",
        );
        for p in &ports {
            let [a, b] = l(p);
            e.sample(&[(a.0, &a.1), (b.0, &b.1)], f64::from(u8::from(p.4)));
        }
    }

    fn pmds(&self, e: &mut Exposition) {
        let pmds: Vec<(String, sluice_api::pmd::PmdStats)> = self
            .pmds
            .iter()
            .map(|v| (v.pmd.index.to_string(), absolute_pmd_stats(v)))
            .collect();
        type Get = fn(&sluice_api::pmd::PmdStats) -> u64;
        let families: [(&str, &str, Get); 12] = [
            (
                "sluice_pmd_rx_packets_total",
                "Packets received by the PMD.",
                |p| p.rx_packets,
            ),
            (
                "sluice_pmd_tx_packets_total",
                "Packets the PMD handed to ports and they accepted.",
                |p| p.tx_packets,
            ),
            ("sluice_pmd_rx_bursts_total", "Non-empty rx bursts.", |p| {
                p.rx_bursts
            }),
            (
                "sluice_pmd_busy_cycles_total",
                "TSC cycles spent on bursts that carried packets.",
                |p| p.busy_cycles,
            ),
            (
                "sluice_pmd_idle_cycles_total",
                "TSC cycles spent polling empty queues.",
                |p| p.idle_cycles,
            ),
            (
                "sluice_pmd_emc_hits_total",
                "Exact-match cache hits.",
                |p| p.emc_hits,
            ),
            (
                "sluice_pmd_megaflow_hits_total",
                "Megaflow cache hits.",
                |p| p.megaflow_hits,
            ),
            (
                "sluice_pmd_megaflow_misses_total",
                "Megaflow cache misses.",
                |p| p.megaflow_misses,
            ),
            (
                "sluice_pmd_upcalls_total",
                "Slow-path classifications.",
                |p| p.upcalls,
            ),
            (
                "sluice_pmd_recirculations_total",
                "Recirculations (ct(table=N), tunnel pop).",
                |p| p.recirculations,
            ),
            (
                "sluice_pmd_ct_cache_hits_total",
                "Per-PMD connection-cache hits.",
                |p| p.ct_cache_hits,
            ),
            (
                "sluice_pmd_ct_cache_misses_total",
                "Per-PMD connection-cache misses (shared table).",
                |p| p.ct_cache_misses,
            ),
        ];
        for (name, help, get) in families {
            counter(e, name, help);
            for (i, p) in &pmds {
                e.sample(&[("pmd", i)], get(p) as f64);
            }
        }
        gauge(
            e,
            "sluice_pmd_cycles_per_packet",
            "Busy cycles per packet received since start.",
        );
        for (i, p) in &pmds {
            let v = if p.rx_packets == 0 {
                0.0
            } else {
                p.busy_cycles as f64 / p.rx_packets as f64
            };
            e.sample(&[("pmd", i)], v);
        }
        counter(
            e,
            "sluice_pmd_drops_total",
            "Packets dropped, by PMD and reason.",
        );
        for (i, p) in &pmds {
            for d in &p.drops {
                e.sample(&[("pmd", i), ("reason", &d.reason)], d.packets as f64);
            }
        }
    }
}

fn conntrack(e: &mut Exposition, ct: &Conntrack) {
    let s = crate::conntrack::commands::stats(ct);
    gauge(
        e,
        "sluice_conntrack_connections",
        "Connections in the table.",
    );
    e.sample(&[], s.connections as f64);
    gauge(e, "sluice_conntrack_limit", "The table's limit.");
    e.sample(&[], s.limit as f64);
    gauge(
        e,
        "sluice_conntrack_connections_by_state",
        "Connections by protocol state.",
    );
    for (state, n) in &s.by_state {
        e.sample(&[("state", state)], *n as f64);
    }
    let families: [(&str, &str, u64); 6] = [
        (
            "sluice_conntrack_created_total",
            "Connections created.",
            s.created,
        ),
        (
            "sluice_conntrack_expired_total",
            "Connections expired.",
            s.expired,
        ),
        (
            "sluice_conntrack_evictions_total",
            "Connections evicted to make room.",
            s.evictions,
        ),
        (
            "sluice_conntrack_limit_hits_total",
            "New connections refused at the limit.",
            s.limit_hits,
        ),
        (
            "sluice_conntrack_invalid_total",
            "Packets conntrack found invalid.",
            s.invalid,
        ),
        (
            "sluice_conntrack_rejects_total",
            "Connections rejected (no endpoint).",
            s.rejects,
        ),
    ];
    for (name, help, v) in families {
        counter(e, name, help);
        e.sample(&[], v as f64);
    }
}

fn services(e: &mut Exposition, services: &Services, ct: &Conntrack) {
    let v = services.view(Some(ct));
    gauge(
        e,
        "sluice_service_endpoints",
        "Endpoints of a Service (ready or not).",
    );
    for s in &v.services {
        e.sample(&[("service", &s.name)], s.endpoints.len() as f64);
    }
    type Get = fn(&sluice_api::service::EndpointInfo) -> u64;
    let families: [(&str, Kind, &str, Get); 3] = [
        (
            "sluice_service_endpoint_connections_total",
            Kind::Counter,
            "Connections sent to the endpoint.",
            |x| x.connections,
        ),
        (
            "sluice_service_endpoint_packets_total",
            Kind::Counter,
            "Packets of connections to the endpoint.",
            |x| x.packets,
        ),
        (
            "sluice_service_endpoint_active_connections",
            Kind::Gauge,
            "Connections to the endpoint in the table.",
            |x| x.active,
        ),
    ];
    for (name, kind, help, get) in families {
        e.family(name, kind, help);
        for s in &v.services {
            for ep in &s.endpoints {
                let endpoint = format!("{}:{}", ep.ip, ep.port);
                e.sample(
                    &[("service", &s.name), ("endpoint", &endpoint)],
                    get(ep) as f64,
                );
            }
        }
    }
}

fn tunnels(e: &mut Exposition, t: &Tunnels) {
    let d = crate::tunnel::commands::dump_tunnels(t);
    counter(
        e,
        "sluice_tunnel_encapsulated_total",
        "Packets Geneve-encapsulated.",
    );
    e.sample(&[], d.encapsulated as f64);
    counter(
        e,
        "sluice_tunnel_decapsulated_total",
        "Packets Geneve-decapsulated.",
    );
    e.sample(&[], d.decapsulated as f64);
    counter(
        e,
        "sluice_tunnel_drops_total",
        "Tunnel packets dropped, by reason.",
    );
    for x in &d.drops {
        e.sample(&[("reason", &x.reason)], x.packets as f64);
    }
    type Get = fn(&sluice_api::tunnel::RemoteVtep) -> u64;
    let families: [(&str, &str, Get); 4] = [
        (
            "sluice_vtep_tx_packets_total",
            "Packets sent to the remote VTEP.",
            |r| r.tx_packets,
        ),
        (
            "sluice_vtep_tx_bytes_total",
            "Bytes sent to the remote VTEP.",
            |r| r.tx_bytes,
        ),
        (
            "sluice_vtep_rx_packets_total",
            "Packets received from the remote VTEP.",
            |r| r.rx_packets,
        ),
        (
            "sluice_vtep_rx_bytes_total",
            "Bytes received from the remote VTEP.",
            |r| r.rx_bytes,
        ),
    ];
    for (name, help, get) in families {
        counter(e, name, help);
        for r in &d.remotes {
            let ip = r.ip.to_string();
            e.sample(&[("node", &r.node), ("vtep", &ip)], get(r) as f64);
        }
    }
}
