//! Typed rows of the Sluice node schema (`deploy/nestdb/sluice.ovsschema`,
//! database `Sluice_Node`).
//!
//! Each table has a plain struct implementing [`TableRow`]: `to_row` gives
//! the columns to insert or update, `from_row` reads a row from a select
//! result or the [`crate::Replica`] and checks it (types, enums, IP address
//! syntax, port ranges), failing with [`Error::Data`] naming the column.
//! IP addresses are [`IpAddr`]; CIDRs stay strings (the datapath parses
//! them). The structs must follow the schema; a unit test checks every
//! `to_row` against it, and the end-to-end tests round-trip them through a
//! real server.
//!
//! Plain values: `Send + Sync`, no shared state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::error::{Error, Result};
use ovsdb_core::{Atom, Datum, Row, Uuid};

/// Name of the node database.
pub const DB: &str = "Sluice_Node";

/// A struct mirroring one table of the node schema.
pub trait TableRow: Sized {
    /// The table's name.
    const TABLE: &'static str;
    /// Read and check a row (extra columns such as `_uuid` are ignored).
    fn from_row(row: &Row) -> Result<Self>;
    /// The row's columns, for insert or update.
    fn to_row(&self) -> Row;
}

fn col<'r>(row: &'r Row, table: &str, c: &str) -> Result<&'r Datum> {
    row.get(c)
        .ok_or_else(|| Error::data(format!("{table} row lacks column \"{c}\"")))
}

fn bad(table: &str, c: &str, d: &Datum, want: &str) -> Error {
    Error::data(format!("{table}.{c} holds {d}, expected {want}"))
}

fn string(row: &Row, t: &str, c: &str) -> Result<String> {
    let d = col(row, t, c)?;
    d.as_str()
        .map(str::to_owned)
        .ok_or_else(|| bad(t, c, d, "a string"))
}

fn opt_string(row: &Row, t: &str, c: &str) -> Result<Option<String>> {
    match row.get(c) {
        None => Ok(None),
        Some(d) if d.is_empty() => Ok(None),
        Some(d) => d
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| bad(t, c, d, "an optional string")),
    }
}

fn int(row: &Row, t: &str, c: &str) -> Result<i64> {
    let d = col(row, t, c)?;
    d.as_i64().ok_or_else(|| bad(t, c, d, "an integer"))
}

fn opt_int(row: &Row, t: &str, c: &str) -> Result<Option<i64>> {
    match row.get(c) {
        None => Ok(None),
        Some(d) if d.is_empty() => Ok(None),
        Some(d) => d
            .as_i64()
            .map(Some)
            .ok_or_else(|| bad(t, c, d, "an optional integer")),
    }
}

fn ranged<T: TryFrom<i64>>(v: i64, t: &str, c: &str, lo: i64, hi: i64) -> Result<T> {
    if !(lo..=hi).contains(&v) {
        return Err(Error::data(format!("{t}.{c} is {v}, outside {lo}..={hi}")));
    }
    T::try_from(v).map_err(|_| Error::data(format!("{t}.{c} is {v}, out of range")))
}

fn boolean(row: &Row, t: &str, c: &str) -> Result<bool> {
    let d = col(row, t, c)?;
    d.as_bool().ok_or_else(|| bad(t, c, d, "a boolean"))
}

fn strings(row: &Row, t: &str, c: &str) -> Result<BTreeSet<String>> {
    let Some(d) = row.get(c) else {
        return Ok(BTreeSet::new());
    };
    match d {
        Datum::Set(s) => s
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(t, c, d, "a set of strings"))
            })
            .collect(),
        Datum::Map(m) if m.is_empty() => Ok(BTreeSet::new()),
        Datum::Map(_) => Err(bad(t, c, d, "a set of strings")),
    }
}

fn ip(s: &str, t: &str, c: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| Error::data(format!("{t}.{c} holds \"{s}\", which is not an IP address")))
}

fn ips(row: &Row, t: &str, c: &str) -> Result<BTreeSet<IpAddr>> {
    strings(row, t, c)?.iter().map(|s| ip(s, t, c)).collect()
}

fn string_map(row: &Row, t: &str, c: &str) -> Result<BTreeMap<String, String>> {
    let Some(d) = row.get(c) else {
        return Ok(BTreeMap::new());
    };
    match d {
        Datum::Map(m) => m
            .iter()
            .map(|(k, v)| match (k.as_str(), v.as_str()) {
                (Some(k), Some(v)) => Ok((k.to_owned(), v.to_owned())),
                _ => Err(bad(t, c, d, "a string-to-string map")),
            })
            .collect(),
        Datum::Set(s) if s.is_empty() => Ok(BTreeMap::new()),
        Datum::Set(_) => Err(bad(t, c, d, "a string-to-string map")),
    }
}

fn uuids(row: &Row, t: &str, c: &str) -> Result<BTreeSet<Uuid>> {
    let Some(d) = row.get(c) else {
        return Ok(BTreeSet::new());
    };
    match d {
        Datum::Set(s) => s
            .iter()
            .map(|a| {
                a.as_uuid()
                    .ok_or_else(|| bad(t, c, d, "a set of row references"))
            })
            .collect(),
        Datum::Map(_) => Err(bad(t, c, d, "a set of row references")),
    }
}

fn enum_value<E: Copy>(row: &Row, t: &str, c: &str, values: &[(&str, E)]) -> Result<E> {
    let s = string(row, t, c)?;
    values
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, e)| *e)
        .ok_or_else(|| {
            let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
            Error::data(format!(
                "{t}.{c} is \"{s}\", expected one of {}",
                names.join(", ")
            ))
        })
}

fn set_of<I: IntoIterator<Item = T>, T: ToString>(items: I) -> Datum {
    Datum::set(items.into_iter().map(|i| i.to_string()))
}

fn opt<T: Into<Atom>>(v: Option<T>) -> Datum {
    v.map_or_else(Datum::empty_set, |v| Datum::from(v.into()))
}

fn map_of(m: &BTreeMap<String, String>) -> Datum {
    Datum::map(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            const VALUES: &'static [(&'static str, $name)] = &[$(($text, $name::$variant)),+];

            /// The value as stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// `Node_Config.node_type`.
    NodeType {
        /// A physical machine: the datapath owns the uplink NIC.
        Baremetal = "BAREMETAL",
        /// A virtual machine.
        Virtual = "VIRTUAL",
        /// An edge/gateway node.
        Edge = "EDGE",
    }
);

string_enum!(
    /// `Service.type`.
    ServiceType {
        /// Cluster-internal virtual IP only.
        ClusterIp = "ClusterIP",
        /// Also reachable on every node's IPs at `node_port`.
        NodePort = "NodePort",
        /// Also reachable on load-balancer ingress IPs.
        LoadBalancer = "LoadBalancer",
    }
);

string_enum!(
    /// `Service.session_affinity`.
    SessionAffinity {
        /// Every connection picks an endpoint independently.
        None = "None",
        /// Connections from one client IP stick to one endpoint.
        ClientIp = "ClientIP",
    }
);

string_enum!(
    /// `Service.internal_traffic_policy` / `external_traffic_policy`.
    TrafficPolicy {
        /// Any ready endpoint in the cluster.
        Cluster = "Cluster",
        /// Only endpoints on this node.
        Local = "Local",
    }
);

string_enum!(
    /// `Service_Port.protocol`.
    Protocol {
        /// TCP
        Tcp = "TCP",
        /// UDP
        Udp = "UDP",
        /// SCTP
        Sctp = "SCTP",
    }
);

/// The `Node_Config` row: this node's identity and datapath settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Kubernetes node name.
    pub node_name: String,
    /// Kind of node.
    pub node_type: NodeType,
    /// DPDK port name of the uplink NIC.
    pub uplink_port: String,
    /// OVS bridge shared with the host, if any.
    pub ovs_bridge: Option<String>,
    /// Overlay tunnel endpoint address.
    pub vtep_ip: IpAddr,
    /// Pod CIDRs of this node (IPv4 and/or IPv6).
    pub pod_cidrs: BTreeSet<String>,
    /// The node's own addresses.
    pub node_ips: BTreeSet<IpAddr>,
    /// NodePort range, inclusive.
    pub nodeport_min: u16,
    /// NodePort range, inclusive.
    pub nodeport_max: u16,
    /// Uplink MTU.
    pub mtu: u16,
    /// Free-form identifiers.
    pub external_ids: BTreeMap<String, String>,
}

impl TableRow for NodeConfig {
    const TABLE: &'static str = "Node_Config";

    fn from_row(row: &Row) -> Result<Self> {
        let t = Self::TABLE;
        let cfg = NodeConfig {
            node_name: string(row, t, "node_name")?,
            node_type: enum_value(row, t, "node_type", NodeType::VALUES)?,
            uplink_port: string(row, t, "uplink_port")?,
            ovs_bridge: opt_string(row, t, "ovs_bridge")?,
            vtep_ip: ip(&string(row, t, "vtep_ip")?, t, "vtep_ip")?,
            pod_cidrs: strings(row, t, "pod_cidrs")?,
            node_ips: ips(row, t, "node_ips")?,
            nodeport_min: ranged(int(row, t, "nodeport_min")?, t, "nodeport_min", 1, 65535)?,
            nodeport_max: ranged(int(row, t, "nodeport_max")?, t, "nodeport_max", 1, 65535)?,
            mtu: ranged(int(row, t, "mtu")?, t, "mtu", 576, 9216)?,
            external_ids: string_map(row, t, "external_ids")?,
        };
        if cfg.nodeport_min > cfg.nodeport_max {
            return Err(Error::data(format!(
                "Node_Config nodeport range {}..={} is empty",
                cfg.nodeport_min, cfg.nodeport_max
            )));
        }
        Ok(cfg)
    }

    fn to_row(&self) -> Row {
        crate::transaction::row([
            ("node_name", Datum::from(self.node_name.as_str())),
            ("node_type", Datum::from(self.node_type.as_str())),
            ("uplink_port", Datum::from(self.uplink_port.as_str())),
            ("ovs_bridge", opt(self.ovs_bridge.clone())),
            ("vtep_ip", Datum::from(self.vtep_ip.to_string())),
            ("pod_cidrs", set_of(&self.pod_cidrs)),
            ("node_ips", set_of(&self.node_ips)),
            ("nodeport_min", Datum::from(i64::from(self.nodeport_min))),
            ("nodeport_max", Datum::from(i64::from(self.nodeport_max))),
            ("mtu", Datum::from(i64::from(self.mtu))),
            ("external_ids", map_of(&self.external_ids)),
        ])
    }
}

/// A `Logical_Port` row: one pod interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalPort {
    /// Unique port name.
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Pod addresses (optionally with a prefix length).
    pub ips: BTreeSet<String>,
    /// Path of the pod's network namespace.
    pub netns: Option<String>,
    /// Interface name inside the pod (≤ 15 chars).
    pub interface_name: String,
    /// Pod namespace.
    pub pod_namespace: Option<String>,
    /// Pod name.
    pub pod_name: Option<String>,
    /// Datapath port number, once the agent has created the port.
    pub dp_port: Option<u32>,
    /// Link state.
    pub up: bool,
    /// Free-form identifiers, e.g. the pod UID.
    pub external_ids: BTreeMap<String, String>,
}

impl TableRow for LogicalPort {
    const TABLE: &'static str = "Logical_Port";

    fn from_row(row: &Row) -> Result<Self> {
        let t = Self::TABLE;
        Ok(LogicalPort {
            name: string(row, t, "name")?,
            mac: string(row, t, "mac")?,
            ips: strings(row, t, "ips")?,
            netns: opt_string(row, t, "netns")?,
            interface_name: string(row, t, "interface_name")?,
            pod_namespace: opt_string(row, t, "pod_namespace")?,
            pod_name: opt_string(row, t, "pod_name")?,
            dp_port: opt_int(row, t, "dp_port")?
                .map(|p| ranged(p, t, "dp_port", 0, i64::from(u32::MAX)))
                .transpose()?,
            up: boolean(row, t, "up")?,
            external_ids: string_map(row, t, "external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        crate::transaction::row([
            ("name", Datum::from(self.name.as_str())),
            ("mac", Datum::from(self.mac.as_str())),
            ("ips", set_of(&self.ips)),
            ("netns", opt(self.netns.clone())),
            ("interface_name", Datum::from(self.interface_name.as_str())),
            ("pod_namespace", opt(self.pod_namespace.clone())),
            ("pod_name", opt(self.pod_name.clone())),
            ("dp_port", opt(self.dp_port.map(i64::from))),
            ("up", Datum::from(self.up)),
            ("external_ids", map_of(&self.external_ids)),
        ])
    }
}

/// A `Service` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Service type.
    pub service_type: ServiceType,
    /// Cluster IPs (one per family).
    pub cluster_ips: BTreeSet<IpAddr>,
    /// External IPs.
    pub external_ips: BTreeSet<IpAddr>,
    /// Load-balancer ingress IPs.
    pub load_balancer_ips: BTreeSet<IpAddr>,
    /// References to this service's `Service_Port` rows.
    pub ports: BTreeSet<Uuid>,
    /// Session affinity.
    pub session_affinity: SessionAffinity,
    /// ClientIP affinity timeout in seconds (1..=86400).
    pub affinity_timeout: Option<u32>,
    /// Policy for traffic from inside the cluster.
    pub internal_traffic_policy: TrafficPolicy,
    /// Policy for traffic from outside the cluster.
    pub external_traffic_policy: TrafficPolicy,
    /// Free-form identifiers, e.g. the service UID.
    pub external_ids: BTreeMap<String, String>,
}

impl TableRow for Service {
    const TABLE: &'static str = "Service";

    fn from_row(row: &Row) -> Result<Self> {
        let t = Self::TABLE;
        Ok(Service {
            name: string(row, t, "name")?,
            namespace: string(row, t, "namespace")?,
            service_type: enum_value(row, t, "type", ServiceType::VALUES)?,
            cluster_ips: ips(row, t, "cluster_ips")?,
            external_ips: ips(row, t, "external_ips")?,
            load_balancer_ips: ips(row, t, "load_balancer_ips")?,
            ports: uuids(row, t, "ports")?,
            session_affinity: enum_value(row, t, "session_affinity", SessionAffinity::VALUES)?,
            affinity_timeout: opt_int(row, t, "affinity_timeout")?
                .map(|v| ranged(v, t, "affinity_timeout", 1, 86400))
                .transpose()?,
            internal_traffic_policy: enum_value(
                row,
                t,
                "internal_traffic_policy",
                TrafficPolicy::VALUES,
            )?,
            external_traffic_policy: enum_value(
                row,
                t,
                "external_traffic_policy",
                TrafficPolicy::VALUES,
            )?,
            external_ids: string_map(row, t, "external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        crate::transaction::row([
            ("name", Datum::from(self.name.as_str())),
            ("namespace", Datum::from(self.namespace.as_str())),
            ("type", Datum::from(self.service_type.as_str())),
            ("cluster_ips", set_of(&self.cluster_ips)),
            ("external_ips", set_of(&self.external_ips)),
            ("load_balancer_ips", set_of(&self.load_balancer_ips)),
            ("ports", Datum::set(self.ports.iter().copied())),
            (
                "session_affinity",
                Datum::from(self.session_affinity.as_str()),
            ),
            (
                "affinity_timeout",
                opt(self.affinity_timeout.map(i64::from)),
            ),
            (
                "internal_traffic_policy",
                Datum::from(self.internal_traffic_policy.as_str()),
            ),
            (
                "external_traffic_policy",
                Datum::from(self.external_traffic_policy.as_str()),
            ),
            ("external_ids", map_of(&self.external_ids)),
        ])
    }
}

/// A `Service_Port` row (owned by the `Service` that references it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (required by Kubernetes when a service has several).
    pub name: Option<String>,
    /// L4 protocol.
    pub protocol: Protocol,
    /// Service port.
    pub port: u16,
    /// Endpoint port; `None` when the Service names its target port (the
    /// number then comes from each endpoint's `ports[name]`).
    pub target_port: Option<u16>,
    /// Node port, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
}

impl TableRow for ServicePort {
    const TABLE: &'static str = "Service_Port";

    fn from_row(row: &Row) -> Result<Self> {
        let t = Self::TABLE;
        Ok(ServicePort {
            name: opt_string(row, t, "name")?,
            protocol: enum_value(row, t, "protocol", Protocol::VALUES)?,
            port: ranged(int(row, t, "port")?, t, "port", 1, 65535)?,
            target_port: opt_int(row, t, "target_port")?
                .map(|v| ranged(v, t, "target_port", 1, 65535))
                .transpose()?,
            node_port: opt_int(row, t, "node_port")?
                .map(|v| ranged(v, t, "node_port", 1, 65535))
                .transpose()?,
        })
    }

    fn to_row(&self) -> Row {
        crate::transaction::row([
            ("name", opt(self.name.clone())),
            ("protocol", Datum::from(self.protocol.as_str())),
            ("port", Datum::from(i64::from(self.port))),
            ("target_port", opt(self.target_port.map(i64::from))),
            ("node_port", opt(self.node_port.map(i64::from))),
        ])
    }
}

/// An `Endpoint` row: one backend address of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The service (weak reference: cleared when the service is deleted).
    pub service: Option<Uuid>,
    /// Backend address.
    pub ip: IpAddr,
    /// Port name to port number.
    pub ports: BTreeMap<String, u16>,
    /// Ready for traffic.
    pub ready: bool,
    /// Serving (may be terminating but still serving).
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// Node hosting the endpoint.
    pub node_name: Option<String>,
    /// True if the endpoint is on this node.
    pub is_local: bool,
    /// Topology-aware routing zone hints.
    pub zone_hints: BTreeSet<String>,
    /// Free-form identifiers.
    pub external_ids: BTreeMap<String, String>,
}

impl TableRow for Endpoint {
    const TABLE: &'static str = "Endpoint";

    fn from_row(row: &Row) -> Result<Self> {
        let t = Self::TABLE;
        let service = match row.get("service") {
            None => None,
            Some(d) if d.is_empty() => None,
            Some(d) => Some(
                d.as_uuid()
                    .ok_or_else(|| bad(t, "service", d, "a row reference"))?,
            ),
        };
        let ports = match row.get("ports") {
            None => BTreeMap::new(),
            Some(d @ Datum::Map(m)) => m
                .iter()
                .map(|(k, v)| match (k.as_str(), v.as_i64()) {
                    (Some(k), Some(v)) => Ok((k.to_owned(), ranged(v, t, "ports", 1, 65535)?)),
                    _ => Err(bad(t, "ports", d, "a map of port names to numbers")),
                })
                .collect::<Result<_>>()?,
            Some(d) if d.is_empty() => BTreeMap::new(),
            Some(d) => return Err(bad(t, "ports", d, "a map of port names to numbers")),
        };
        Ok(Endpoint {
            service,
            ip: ip(&string(row, t, "ip")?, t, "ip")?,
            ports,
            ready: boolean(row, t, "ready")?,
            serving: boolean(row, t, "serving")?,
            terminating: boolean(row, t, "terminating")?,
            node_name: opt_string(row, t, "node_name")?,
            is_local: boolean(row, t, "is_local")?,
            zone_hints: strings(row, t, "zone_hints")?,
            external_ids: string_map(row, t, "external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        crate::transaction::row([
            ("service", opt(self.service)),
            ("ip", Datum::from(self.ip.to_string())),
            (
                "ports",
                Datum::map(self.ports.iter().map(|(k, v)| (k.as_str(), i64::from(*v)))),
            ),
            ("ready", Datum::from(self.ready)),
            ("serving", Datum::from(self.serving)),
            ("terminating", Datum::from(self.terminating)),
            ("node_name", opt(self.node_name.clone())),
            ("is_local", Datum::from(self.is_local)),
            ("zone_hints", set_of(&self.zone_hints)),
            ("external_ids", map_of(&self.external_ids)),
        ])
    }
}

/// A `Remote_Node` row: another node of the cluster and its VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    /// Kubernetes node name.
    pub name: String,
    /// The node's tunnel endpoint.
    pub vtep_ip: IpAddr,
    /// Pod CIDRs routed to it.
    pub pod_cidrs: BTreeSet<String>,
    /// Its node addresses.
    pub node_ips: BTreeSet<IpAddr>,
    /// Free-form identifiers.
    pub external_ids: BTreeMap<String, String>,
}

impl TableRow for RemoteNode {
    const TABLE: &'static str = "Remote_Node";

    fn from_row(row: &Row) -> Result<Self> {
        let t = Self::TABLE;
        Ok(RemoteNode {
            name: string(row, t, "name")?,
            vtep_ip: ip(&string(row, t, "vtep_ip")?, t, "vtep_ip")?,
            pod_cidrs: strings(row, t, "pod_cidrs")?,
            node_ips: ips(row, t, "node_ips")?,
            external_ids: string_map(row, t, "external_ids")?,
        })
    }

    fn to_row(&self) -> Row {
        crate::transaction::row([
            ("name", Datum::from(self.name.as_str())),
            ("vtep_ip", Datum::from(self.vtep_ip.to_string())),
            ("pod_cidrs", set_of(&self.pod_cidrs)),
            ("node_ips", set_of(&self.node_ips)),
            ("external_ids", map_of(&self.external_ids)),
        ])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::transaction::Transaction;
    use ovsdb_core::Schema;

    pub(crate) fn samples() -> (
        NodeConfig,
        LogicalPort,
        Service,
        ServicePort,
        Endpoint,
        RemoteNode,
    ) {
        let ids = BTreeMap::from([("k8s-uid".to_string(), "6b1e".to_string())]);
        (
            NodeConfig {
                node_name: "node-a".into(),
                node_type: NodeType::Baremetal,
                uplink_port: "0000:3b:00.0".into(),
                ovs_bridge: None,
                vtep_ip: "192.0.2.10".parse().unwrap(),
                pod_cidrs: BTreeSet::from(["10.244.1.0/24".into(), "fd00:1::/64".into()]),
                node_ips: BTreeSet::from(["192.0.2.10".parse().unwrap()]),
                nodeport_min: 30000,
                nodeport_max: 32767,
                mtu: 1500,
                external_ids: ids.clone(),
            },
            LogicalPort {
                name: "default_web-0".into(),
                mac: "0a:58:0a:f4:01:05".into(),
                ips: BTreeSet::from(["10.244.1.5".into()]),
                netns: Some("/var/run/netns/cni-1234".into()),
                interface_name: "eth0".into(),
                pod_namespace: Some("default".into()),
                pod_name: Some("web-0".into()),
                dp_port: Some(4),
                up: true,
                external_ids: ids.clone(),
            },
            Service {
                name: "web".into(),
                namespace: "default".into(),
                service_type: ServiceType::NodePort,
                cluster_ips: BTreeSet::from([
                    "10.96.0.10".parse().unwrap(),
                    "fd00:96::a".parse().unwrap(),
                ]),
                external_ips: BTreeSet::new(),
                load_balancer_ips: BTreeSet::new(),
                ports: BTreeSet::new(),
                session_affinity: SessionAffinity::ClientIp,
                affinity_timeout: Some(10800),
                internal_traffic_policy: TrafficPolicy::Cluster,
                external_traffic_policy: TrafficPolicy::Local,
                external_ids: ids.clone(),
            },
            ServicePort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: Some(8080),
                node_port: Some(30080),
            },
            Endpoint {
                service: None,
                ip: "10.244.1.5".parse().unwrap(),
                ports: BTreeMap::from([("http".to_string(), 8080)]),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some("node-a".into()),
                is_local: true,
                zone_hints: BTreeSet::from(["zone-a".into()]),
                external_ids: ids.clone(),
            },
            RemoteNode {
                name: "node-b".into(),
                vtep_ip: "192.0.2.11".parse().unwrap(),
                pod_cidrs: BTreeSet::from(["10.244.2.0/24".into()]),
                node_ips: BTreeSet::from(["192.0.2.11".parse().unwrap()]),
                external_ids: ids,
            },
        )
    }

    fn round_trip<T: TableRow + PartialEq + std::fmt::Debug>(v: &T, schema: &Schema) {
        let row = v.to_row();
        assert_eq!(&T::from_row(&row).unwrap(), v);
        // Every column exists in the schema with a compatible type.
        Transaction::new(DB)
            .insert(T::TABLE, row.clone())
            .validate(schema)
            .unwrap_or_else(|e| panic!("{} does not follow the schema: {e}", T::TABLE));
        // And every schema column is covered by the struct.
        let cols: Vec<&str> = schema.table(T::TABLE).unwrap().column_names().collect();
        assert_eq!(
            row.keys().map(String::as_str).collect::<Vec<_>>(),
            cols,
            "{} columns",
            T::TABLE
        );
    }

    #[test]
    fn typed_rows_round_trip_and_follow_the_schema() {
        let schema =
            Schema::from_json_str(include_str!("../../../deploy/nestdb/sluice.ovsschema")).unwrap();
        let (n, lp, s, sp, ep, rn) = samples();
        round_trip(&n, &schema);
        round_trip(&lp, &schema);
        round_trip(&s, &schema);
        round_trip(&sp, &schema);
        round_trip(&ep, &schema);
        round_trip(&rn, &schema);
    }

    #[test]
    fn bad_rows_name_the_column() {
        let (_, lp, s, sp, ep, _) = samples();
        let mut row = lp.to_row();
        row.insert("up".into(), Datum::from("yes"));
        let e = LogicalPort::from_row(&row).unwrap_err().to_string();
        assert!(e.contains("Logical_Port.up"), "{e}");

        let mut row = s.to_row();
        row.insert("type".into(), Datum::from("ExternalName"));
        let e = Service::from_row(&row).unwrap_err().to_string();
        assert!(e.contains("ExternalName") && e.contains("ClusterIP"), "{e}");

        let mut row = sp.to_row();
        row.insert("port".into(), Datum::from(70000i64));
        assert!(ServicePort::from_row(&row).is_err());

        let mut row = ep.to_row();
        row.insert("ip".into(), Datum::from("10.0.0.300"));
        let e = Endpoint::from_row(&row).unwrap_err().to_string();
        assert!(e.contains("not an IP address"), "{e}");

        let mut row = lp.to_row();
        row.remove("name");
        assert!(LogicalPort::from_row(&row)
            .unwrap_err()
            .to_string()
            .contains("lacks column"));
    }
}
