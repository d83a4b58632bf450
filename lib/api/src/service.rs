//! Kubernetes Services in the datapath: the atomic update batch the agent
//! sends (`service-update`), the table's dump (`dump-services`) and the
//! load-balancing trace (`lb-trace`).
//!
//! The spec types are kube-proxy's model: one [`ServiceSpec`] per Service
//! port, with ClusterIPs, NodePort, externalIPs, LoadBalancer IPs, session
//! affinity, traffic policies, topology hints and EndpointSlice conditions.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{args, method, ApiError, Empty, FromArgs, Render, Text};

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
    /// The IP protocol number.
    pub fn ipproto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// `tcp`, `udp` or `sctp`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses `tcp`, `udp` or `sctp`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            p => Err(ApiError::invalid(format!(
                "unknown protocol {p:?}: use tcp, udp or sctp"
            ))),
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

impl EndpointSpec {
    /// A ready endpoint at `ip`:`port`: serving as it is ready, not
    /// terminating, not node-local, no zone and no zone hints.
    pub fn ready(ip: Ipv4Addr, port: u16) -> EndpointSpec {
        EndpointSpec {
            ip,
            port,
            ready: true,
            serving: None,
            terminating: false,
            node_local: false,
            zone: None,
            for_zones: Vec::new(),
        }
    }
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

impl ServiceSpec {
    /// A ClusterIP Service `name` at `cluster_ip`:`port` over `protocol`
    /// with `endpoints`: no node port, external or LoadBalancer addresses,
    /// no session affinity, both traffic policies `Cluster`, no
    /// topology-aware routing.
    pub fn cluster_ip(
        name: impl Into<String>,
        protocol: Protocol,
        cluster_ip: Ipv4Addr,
        port: u16,
        endpoints: Vec<EndpointSpec>,
    ) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            protocol,
            port,
            cluster_ips: vec![cluster_ip],
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            session_affinity_seconds: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            topology_aware: false,
            endpoints,
        }
    }
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

impl FromArgs for ServiceUpdate {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let text = a.first().map(String::as_str).unwrap_or("{}");
        serde_json::from_str(text)
            .map_err(|e| ApiError::invalid(format!("invalid service update: {e}")))
    }
}

/// Summary of an applied update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl Render for UpdateSummary {
    fn render(&self) -> String {
        // The text form has always been the summary's JSON.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// How a frontend is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontendKind {
    /// A clusterIP.
    Cluster,
    /// A node address and the NodePort.
    NodePort,
    /// An externalIP.
    External,
    /// A LoadBalancer ingress IP.
    Lb,
}

impl FrontendKind {
    fn name(self) -> &'static str {
        match self {
            FrontendKind::Cluster => "cluster",
            FrontendKind::NodePort => "nodeport",
            FrontendKind::External => "external",
            FrontendKind::Lb => "lb",
        }
    }
}

/// One address:port a Service answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Kind.
    pub kind: FrontendKind,
}

/// One endpoint with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// On this node.
    pub node_local: bool,
    /// `hints.forZones`.
    pub for_zones: Vec<String>,
    /// Connections sent to it.
    pub connections: u64,
    /// Connections to it still open.
    pub active: u64,
    /// Packets of its connections (live ones included).
    pub packets: u64,
}

/// One Service in the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Name.
    pub name: String,
    /// Protocol (`tcp`, `udp`, `sctp`).
    pub protocol: Protocol,
    /// Frontends, sorted.
    pub frontends: Vec<Frontend>,
    /// ClientIP affinity timeout in seconds.
    pub affinity_seconds: Option<u64>,
    /// `internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// Topology-aware routing.
    pub topology_aware: bool,
    /// Endpoints in the order given.
    pub endpoints: Vec<EndpointInfo>,
}

/// `dump-services` reply, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDump {
    /// The Services.
    pub services: Vec<ServiceInfo>,
}

impl Render for ServiceDump {
    fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.services {
            let fes: Vec<String> = s
                .frontends
                .iter()
                .map(|f| format!("{}:{}({})", f.ip, f.port, f.kind.name()))
                .collect();
            out += &format!(
                "{} {} {}{}{}{}{}\n",
                s.name,
                s.protocol.name(),
                fes.join(","),
                s.affinity_seconds
                    .map(|t| format!(" affinity=ClientIP/{t}s"))
                    .unwrap_or_default(),
                if s.internal_traffic_policy == TrafficPolicy::Local {
                    " itp=Local"
                } else {
                    ""
                },
                if s.external_traffic_policy == TrafficPolicy::Local {
                    " etp=Local"
                } else {
                    ""
                },
                if s.topology_aware {
                    " topology=Auto"
                } else {
                    ""
                },
            );
            for e in &s.endpoints {
                let mut cond = Vec::new();
                if e.ready {
                    cond.push("ready");
                }
                if e.serving {
                    cond.push("serving");
                }
                if e.terminating {
                    cond.push("terminating");
                }
                if e.node_local {
                    cond.push("local");
                }
                let zones = if e.for_zones.is_empty() {
                    String::new()
                } else {
                    format!(" zones={}", e.for_zones.join(","))
                };
                out += &format!(
                    "  {}:{} {}{zones} connections={} active={} packets={}\n",
                    e.ip,
                    e.port,
                    cond.join(","),
                    e.connections,
                    e.active,
                    e.packets
                );
            }
        }
        out
    }
}

/// `lb-trace`: which endpoint a new connection would get, or the entry of
/// an existing one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbTraceRequest {
    /// Protocol.
    pub protocol: Protocol,
    /// Client address.
    pub src: Ipv4Addr,
    /// Client port (when given, an existing connection is looked up first).
    #[serde(default)]
    pub sport: Option<u16>,
    /// Frontend address.
    pub dst: Ipv4Addr,
    /// Frontend port.
    pub dport: u16,
    /// Conntrack zone.
    #[serde(default)]
    pub zone: u16,
}

impl FromArgs for LbTraceRequest {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let get = |i: usize| a.get(i).map(String::as_str).unwrap_or("");
        let protocol = Protocol::parse(get(0))?;
        let ip = |s: &str| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| ApiError::invalid(format!("invalid address {s:?}: use A.B.C.D")))
        };
        let (src, sport) = match get(1).split_once(':') {
            Some((s, p)) => (ip(s)?, Some(args::port(p)?)),
            None => (ip(get(1))?, None),
        };
        let (dst, dport) = (ip(get(2))?, args::port(get(3))?);
        let zone = match a.get(4) {
            None => 0,
            Some(z) => z
                .strip_prefix("zone=")
                .and_then(|z| z.parse::<u16>().ok())
                .ok_or_else(|| ApiError::invalid(format!("invalid {z:?}: use zone=N")))?,
        };
        Ok(LbTraceRequest {
            protocol,
            src,
            sport,
            dst,
            dport,
            zone,
        })
    }
}

method!(
    /// Applies a batch of Service changes atomically.
    UpdateServices, "service-update", "JSON-BATCH", (1, 1), ServiceUpdate => UpdateSummary);
method!(
    /// The Service table with counters.
    DumpServices, "dump-services", "", (0, 0), Empty => ServiceDump);
method!(
    /// Explains the load-balancing decision for a connection.
    LbTrace, "lb-trace", "tcp|udp|sctp SRC[:SPORT] DST PORT [zone=N]", (4, 5), LbTraceRequest => Text);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_defaults_and_refuses_unknown_fields() {
        let u: ServiceUpdate = serde_json::from_str(
            r#"{"upsert":[{"name":"a","protocol":"tcp","port":80,"endpoints":[{"ip":"10.0.0.5","port":8080}]}]}"#,
        )
        .unwrap();
        assert!(u.upsert[0].endpoints[0].ready, "ready defaults to true");
        assert_eq!(u.upsert[0].internal_traffic_policy, TrafficPolicy::Cluster);
        assert!(serde_json::from_str::<ServiceUpdate>(r#"{"upsert":[],"bogus":1}"#).is_err());
    }

    #[test]
    fn lb_trace_arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let r =
            LbTraceRequest::from_args(&s(&["tcp", "10.0.0.1:4000", "10.96.0.1", "80", "zone=2"]))
                .unwrap();
        assert_eq!((r.sport, r.dport, r.zone), (Some(4000), 80, 2));
        assert!(
            LbTraceRequest::from_args(&s(&["icmp", "10.0.0.1", "10.96.0.1", "80"]))
                .unwrap_err()
                .message
                .contains("unknown protocol")
        );
        assert!(
            LbTraceRequest::from_args(&s(&["tcp", "10.0.0.1", "10.96.0.1", "80", "zone"])).is_err()
        );
    }
}
