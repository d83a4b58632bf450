//! The serde types of the `service-update` control method: the batch
//! ([`ServiceUpdate`]) and its parts ([`ServiceSpec`], [`EndpointSpec`],
//! [`Protocol`], [`TrafficPolicy`]), and its reply ([`UpdateSummary`]).
//!
//! What it owns: the wire shape of a Service update, field names and
//! defaults included (`ready`/`serving` default to true, unknown fields are
//! refused). Validation against the node's configuration happens when the
//! table applies the batch, not here. These types are expected to move to a
//! shared API crate used by `sluicectl`, the agent and the benches.
//!
//! Thread-safety: plain data (`Send + Sync`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::flow::key::ipproto;

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
    pub(super) fn ipproto(self) -> u8 {
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

pub(super) fn yes() -> bool {
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
