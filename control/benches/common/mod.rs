//! Workloads shared by the compiler benchmarks: a node's rows with N
//! Services × E endpoints, and a deterministic stream of endpoint changes.
//!
//! Each Service has one TCP port (80 → 8080) and a ClusterIP from
//! 10.96.0.0/12; endpoint addresses are drawn from a pool of 150,000 pod
//! addresses (Kubernetes' documented limit of pods per cluster) in
//! 10.128.0.0/10, so a pod backs several Services as in a real cluster.
//! The node has 30 local pods and 50 remote nodes.

#![allow(dead_code)] // each bench uses part of it

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use nestdb_client::node::{
    Endpoint, LogicalPort, NodeConfig, NodeType, Protocol, RemoteNode, Service, ServicePort,
    ServiceType, SessionAffinity, TrafficPolicy,
};
use nestdb_client::Uuid;
use sluice_control::agent::{NodeRows, RowUpdate};

/// Pod addresses endpoints are drawn from.
pub const POD_POOL: u32 = 150_000;

pub fn uuid(n: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{n:012x}")).expect("valid")
}

fn svc_uuid(i: u64) -> u64 {
    0x1000_0000 + i * 64
}

fn ep_uuid(i: u64, j: u64) -> u64 {
    svc_uuid(i) + 2 + j
}

/// The address of pod `k` of the pool.
pub fn pod_ip(k: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 1 + k,
    ))
}

pub fn endpoint(svc: u64, pod: u32) -> Endpoint {
    Endpoint {
        service: Some(uuid(svc_uuid(svc))),
        ip: pod_ip(pod),
        ports: BTreeMap::from([("http".to_string(), 8080)]),
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some(format!("node-{}", pod % 50)),
        is_local: false,
        zone_hints: BTreeSet::new(),
        external_ids: BTreeMap::new(),
    }
}

/// The pod of endpoint `j` of Service `i`.
pub fn pod_of(i: u64, j: u64, eps: u64) -> u32 {
    ((i * eps + j).wrapping_mul(2_654_435_761) % u64::from(POD_POOL)) as u32
}

/// A node with `services` Services of `eps` endpoints each.
pub fn rows(services: u64, eps: u64) -> NodeRows {
    let mut rows = NodeRows {
        node_config: vec![(
            uuid(1),
            NodeConfig {
                node_name: "node-a".into(),
                node_type: NodeType::Baremetal,
                uplink_port: "0000:01:00.0".into(),
                ovs_bridge: None,
                vtep_ip: "192.0.2.10".parse().expect("ip"),
                pod_cidrs: BTreeSet::from(["10.244.0.0/24".into()]),
                node_ips: BTreeSet::from(["192.0.2.10".parse().expect("ip")]),
                nodeport_min: 30000,
                nodeport_max: 32767,
                mtu: 1500,
                external_ids: BTreeMap::from([("node_mac".into(), "02:00:00:00:00:0a".into())]),
            },
        )],
        ..Default::default()
    };
    for p in 0..30u64 {
        rows.logical_ports.push((
            uuid(0x100 + p),
            LogicalPort {
                name: format!("default_pod-{p}"),
                mac: format!("0a:58:0a:f4:00:{:02x}", p + 2),
                ips: BTreeSet::from([format!("10.244.0.{}", p + 2)]),
                netns: None,
                interface_name: "eth0".into(),
                pod_namespace: Some("default".into()),
                pod_name: Some(format!("pod-{p}")),
                dp_port: Some(3 + p as u32),
                up: true,
                external_ids: BTreeMap::new(),
            },
        ));
    }
    for r in 0..50u64 {
        rows.remote_nodes.push((
            uuid(0x1000 + r),
            RemoteNode {
                name: format!("node-{r}"),
                vtep_ip: format!("192.0.2.{}", 100 + r).parse().expect("ip"),
                pod_cidrs: BTreeSet::from([format!("10.244.{}.0/24", r + 1)]),
                node_ips: BTreeSet::new(),
                external_ids: BTreeMap::new(),
            },
        ));
    }
    for i in 0..services {
        let s = svc_uuid(i);
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32);
        rows.services.push((
            uuid(s),
            Service {
                name: format!("svc-{i}"),
                namespace: format!("ns-{}", i % 100),
                service_type: ServiceType::ClusterIp,
                cluster_ips: BTreeSet::from([IpAddr::V4(vip)]),
                external_ips: BTreeSet::new(),
                load_balancer_ips: BTreeSet::new(),
                ports: BTreeSet::from([uuid(s + 1)]),
                session_affinity: SessionAffinity::None,
                affinity_timeout: None,
                internal_traffic_policy: TrafficPolicy::Cluster,
                external_traffic_policy: TrafficPolicy::Cluster,
                external_ids: BTreeMap::new(),
            },
        ));
        rows.service_ports.push((
            uuid(s + 1),
            ServicePort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: Some(8080),
                node_port: None,
            },
        ));
        for j in 0..eps {
            rows.endpoints
                .push((uuid(ep_uuid(i, j)), endpoint(i, pod_of(i, j, eps))));
        }
    }
    rows
}

/// A stream of endpoint changes over a node built by [`rows`]: in turn an
/// endpoint's readiness flips, an endpoint is deleted, and it comes back
/// on another pod (Services and endpoints picked pseudo-randomly).
pub struct Changes {
    services: u64,
    eps: u64,
    x: u64,
    n: u64,
    /// The endpoint deleted last, to re-add.
    deleted: Option<(u64, u64)>,
    /// Endpoints whose readiness is flipped.
    not_ready: BTreeSet<(u64, u64)>,
}

impl Changes {
    pub fn new(services: u64, eps: u64) -> Self {
        Changes {
            services,
            eps,
            x: 0x9e37_79b9_7f4a_7c15,
            n: 0,
            deleted: None,
            not_ready: BTreeSet::new(),
        }
    }

    fn rand(&mut self) -> u64 {
        self.x ^= self.x << 13;
        self.x ^= self.x >> 7;
        self.x ^= self.x << 17;
        self.x
    }

    /// The next change and its kind (`ready`, `delete`, `add`).
    pub fn next_change(&mut self) -> (RowUpdate, &'static str) {
        self.n += 1;
        if let Some((i, j)) = self.deleted.take() {
            let pod = (self.rand() % u64::from(POD_POOL)) as u32;
            return (
                RowUpdate::Endpoint(uuid(ep_uuid(i, j)), Some(endpoint(i, pod))),
                "add",
            );
        }
        let i = self.rand() % self.services;
        if self.n % 3 == 1 || self.eps < 2 {
            // Endpoint 0 is never deleted, only flipped.
            let mut e = endpoint(i, pod_of(i, 0, self.eps));
            if !self.not_ready.remove(&(i, 0)) {
                self.not_ready.insert((i, 0));
                e.ready = false;
            }
            (RowUpdate::Endpoint(uuid(ep_uuid(i, 0)), Some(e)), "ready")
        } else {
            let j = 1 + self.rand() % (self.eps - 1);
            self.deleted = Some((i, j));
            (RowUpdate::Endpoint(uuid(ep_uuid(i, j)), None), "delete")
        }
    }
}
