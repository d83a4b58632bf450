//! Typed rows of the Sluice node schema (`deploy/nestdb/sluice.ovsschema`,
//! database `Sluice_Node`).
//!
//! Each table has a plain struct implementing [`TableRow`]: `to_row` gives
//! the columns to insert or update, `from_row` reads a row from a select
//! result or the [`crate::Replica`] and checks it (types, enums, IP address
//! syntax, port ranges), failing with [`Error::Data`] naming the column.
//! IP addresses are [`IpAddr`]; CIDRs stay strings (the datapath parses
//! them). The structs are declared once with `table_row!`, which maps each
//! field to its column and derives both directions from the field's type
//! (`FromColumn`/`FromIntColumn` and `ToDatum`), so reading and writing a
//! column cannot drift apart. The structs must follow the schema; a unit
//! test checks every `to_row` against it, and the end-to-end tests
//! round-trip them through a real server.
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

fn int(row: &Row, t: &str, c: &str) -> Result<i64> {
    let d = col(row, t, c)?;
    d.as_i64().ok_or_else(|| bad(t, c, d, "an integer"))
}

/// The value of an optional scalar column converted by `f` (an absent column
/// and the empty set are `None`).
fn opt_scalar<T>(
    row: &Row,
    t: &str,
    c: &str,
    want: &str,
    f: impl Fn(&Datum) -> Option<T>,
) -> Result<Option<T>> {
    match row.get(c) {
        None => Ok(None),
        Some(d) if d.is_empty() => Ok(None),
        Some(d) => f(d).map(Some).ok_or_else(|| bad(t, c, d, want)),
    }
}

fn opt_int(row: &Row, t: &str, c: &str) -> Result<Option<i64>> {
    opt_scalar(row, t, c, "an optional integer", Datum::as_i64)
}

fn ranged<T: TryFrom<i64>>(v: i64, t: &str, c: &str, lo: i64, hi: i64) -> Result<T> {
    if !(lo..=hi).contains(&v) {
        return Err(Error::data(format!("{t}.{c} is {v}, outside {lo}..={hi}")));
    }
    T::try_from(v).map_err(|_| Error::data(format!("{t}.{c} is {v}, out of range")))
}

fn ip(s: &str, t: &str, c: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| Error::data(format!("{t}.{c} holds \"{s}\", which is not an IP address")))
}

/// The atoms of a set column, each converted by `f` (an absent column and an
/// empty map are the empty set).
fn set_items<T: Ord>(
    row: &Row,
    t: &str,
    c: &str,
    want: &str,
    f: impl Fn(&Atom) -> Option<T>,
) -> Result<BTreeSet<T>> {
    let Some(d) = row.get(c) else {
        return Ok(BTreeSet::new());
    };
    match d {
        Datum::Set(s) => s
            .iter()
            .map(|a| f(a).ok_or_else(|| bad(t, c, d, want)))
            .collect(),
        Datum::Map(m) if m.is_empty() => Ok(BTreeSet::new()),
        Datum::Map(_) => Err(bad(t, c, d, want)),
    }
}

/// The pairs of a map column, each converted by `f` (an absent column and an
/// empty set are the empty map).
fn map_items<V>(
    row: &Row,
    t: &str,
    c: &str,
    want: &str,
    f: impl Fn(&Atom, &Atom) -> Option<Result<(String, V)>>,
) -> Result<BTreeMap<String, V>> {
    let Some(d) = row.get(c) else {
        return Ok(BTreeMap::new());
    };
    match d {
        Datum::Map(m) => m
            .iter()
            .map(|(k, v)| f(k, v).unwrap_or_else(|| Err(bad(t, c, d, want))))
            .collect(),
        Datum::Set(s) if s.is_empty() => Ok(BTreeMap::new()),
        Datum::Set(_) => Err(bad(t, c, d, want)),
    }
}

/// A field type read from one column of a row.
trait FromColumn: Sized {
    /// Reads column `c` of a `t` row.
    fn read(row: &Row, t: &str, c: &str) -> Result<Self>;
}

/// An integer field type read from one column and checked against `lo..=hi`.
trait FromIntColumn: Sized {
    /// Reads column `c` of a `t` row.
    fn read_in(row: &Row, t: &str, c: &str, lo: i64, hi: i64) -> Result<Self>;
}

/// A field type written as one column value.
trait ToDatum {
    /// The column value.
    fn to_datum(&self) -> Datum;
}

impl FromColumn for String {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        let d = col(row, t, c)?;
        d.as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad(t, c, d, "a string"))
    }
}

impl ToDatum for String {
    fn to_datum(&self) -> Datum {
        Datum::from(self.as_str())
    }
}

impl FromColumn for Option<String> {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        opt_scalar(row, t, c, "an optional string", |d| {
            d.as_str().map(str::to_owned)
        })
    }
}

impl FromColumn for bool {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        let d = col(row, t, c)?;
        d.as_bool().ok_or_else(|| bad(t, c, d, "a boolean"))
    }
}

impl ToDatum for bool {
    fn to_datum(&self) -> Datum {
        Datum::from(*self)
    }
}

impl FromColumn for IpAddr {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        ip(&String::read(row, t, c)?, t, c)
    }
}

impl ToDatum for IpAddr {
    fn to_datum(&self) -> Datum {
        Datum::from(self.to_string())
    }
}

impl FromColumn for Option<Uuid> {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        opt_scalar(row, t, c, "a row reference", Datum::as_uuid)
    }
}

fn opt<T: Into<Atom>>(v: Option<T>) -> Datum {
    v.map_or_else(Datum::empty_set, |v| Datum::from(v.into()))
}

impl ToDatum for Option<String> {
    fn to_datum(&self) -> Datum {
        opt(self.clone())
    }
}

impl ToDatum for Option<Uuid> {
    fn to_datum(&self) -> Datum {
        opt(*self)
    }
}

impl FromColumn for BTreeSet<String> {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        set_items(row, t, c, "a set of strings", |a| {
            a.as_str().map(str::to_owned)
        })
    }
}

impl FromColumn for BTreeSet<IpAddr> {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        BTreeSet::<String>::read(row, t, c)?
            .iter()
            .map(|s| ip(s, t, c))
            .collect()
    }
}

impl FromColumn for BTreeSet<Uuid> {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        set_items(row, t, c, "a set of row references", Atom::as_uuid)
    }
}

impl ToDatum for BTreeSet<String> {
    fn to_datum(&self) -> Datum {
        Datum::set(self.iter().map(String::as_str))
    }
}

impl ToDatum for BTreeSet<IpAddr> {
    fn to_datum(&self) -> Datum {
        Datum::set(self.iter().map(ToString::to_string))
    }
}

impl ToDatum for BTreeSet<Uuid> {
    fn to_datum(&self) -> Datum {
        Datum::set(self.iter().copied())
    }
}

impl FromColumn for BTreeMap<String, String> {
    fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
        map_items(row, t, c, "a string-to-string map", |k, v| {
            Some(Ok((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        })
    }
}

impl ToDatum for BTreeMap<String, String> {
    fn to_datum(&self) -> Datum {
        Datum::map(self.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl FromIntColumn for BTreeMap<String, u16> {
    fn read_in(row: &Row, t: &str, c: &str, lo: i64, hi: i64) -> Result<Self> {
        map_items(row, t, c, "a map of port names to numbers", |k, v| {
            let (k, v) = (k.as_str()?, v.as_i64()?);
            Some(ranged(v, t, c, lo, hi).map(|v| (k.to_owned(), v)))
        })
    }
}

impl ToDatum for BTreeMap<String, u16> {
    fn to_datum(&self) -> Datum {
        Datum::map(self.iter().map(|(k, v)| (k.as_str(), i64::from(*v))))
    }
}

macro_rules! int_columns {
    ($($ty:ty),+) => {$(
        impl FromIntColumn for $ty {
            fn read_in(row: &Row, t: &str, c: &str, lo: i64, hi: i64) -> Result<Self> {
                ranged(int(row, t, c)?, t, c, lo, hi)
            }
        }

        impl FromIntColumn for Option<$ty> {
            fn read_in(row: &Row, t: &str, c: &str, lo: i64, hi: i64) -> Result<Self> {
                opt_int(row, t, c)?.map(|v| ranged(v, t, c, lo, hi)).transpose()
            }
        }

        impl ToDatum for $ty {
            fn to_datum(&self) -> Datum {
                Datum::from(i64::from(*self))
            }
        }

        impl ToDatum for Option<$ty> {
            fn to_datum(&self) -> Datum {
                opt(self.map(i64::from))
            }
        }
    )+};
}

int_columns!(u16, u32);

// OVSDB integers are i64: a u64 column is bounded to 0..=i64::MAX by its
// `in` range, so the conversion back cannot fail for values read from a row.
impl FromIntColumn for u64 {
    fn read_in(row: &Row, t: &str, c: &str, lo: i64, hi: i64) -> Result<Self> {
        ranged(int(row, t, c)?, t, c, lo, hi)
    }
}

impl ToDatum for u64 {
    fn to_datum(&self) -> Datum {
        Datum::from(i64::try_from(*self).unwrap_or(i64::MAX))
    }
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

        impl FromColumn for $name {
            fn read(row: &Row, t: &str, c: &str) -> Result<Self> {
                let s = String::read(row, t, c)?;
                Self::VALUES
                    .iter()
                    .find(|(name, _)| *name == s)
                    .map(|(_, e)| *e)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Self::VALUES.iter().map(|(n, _)| *n).collect();
                        Error::data(format!(
                            "{t}.{c} is \"{s}\", expected one of {}",
                            names.join(", ")
                        ))
                    })
            }
        }

        impl ToDatum for $name {
            fn to_datum(&self) -> Datum {
                Datum::from(self.as_str())
            }
        }
    };
}

/// Reads one field: with `lo..=hi` bounds for integer fields, plainly otherwise.
macro_rules! read_field {
    ($row:ident, $t:ident, $col:literal) => {
        FromColumn::read($row, $t, $col)?
    };
    ($row:ident, $t:ident, $col:literal, $lo:literal, $hi:expr) => {
        FromIntColumn::read_in($row, $t, $col, $lo, $hi)?
    };
}

/// Declares a row struct, each field mapped to a column (with bounds for
/// integers), and its [`TableRow`] implementation; `check` names a function
/// that validates the row as a whole after its columns are read.
macro_rules! table_row {
    (
        $(#[$doc:meta])*
        $name:ident = $table:literal $(, check $check:path)? {
            $(
                $(#[$fdoc:meta])*
                $field:ident: $ty:ty = $col:literal $(in $lo:literal ..= $hi:expr)?
            ),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)+
        }

        impl TableRow for $name {
            const TABLE: &'static str = $table;

            fn from_row(row: &Row) -> Result<Self> {
                let t = Self::TABLE;
                let value = $name {
                    $($field: read_field!(row, t, $col $(, $lo, $hi)?),)+
                };
                $($check(&value)?;)?
                Ok(value)
            }

            fn to_row(&self) -> Row {
                crate::transaction::row([$(($col, self.$field.to_datum())),+])
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

table_row!(
    /// The `Node_Config` row: this node's identity and datapath settings.
    NodeConfig = "Node_Config", check nodeport_range_is_not_empty {
        /// Kubernetes node name.
        node_name: String = "node_name",
        /// Kind of node.
        node_type: NodeType = "node_type",
        /// DPDK port name of the uplink NIC.
        uplink_port: String = "uplink_port",
        /// OVS bridge shared with the host, if any.
        ovs_bridge: Option<String> = "ovs_bridge",
        /// Overlay tunnel endpoint address.
        vtep_ip: IpAddr = "vtep_ip",
        /// Pod CIDRs of this node (IPv4 and/or IPv6).
        pod_cidrs: BTreeSet<String> = "pod_cidrs",
        /// The node's own addresses.
        node_ips: BTreeSet<IpAddr> = "node_ips",
        /// NodePort range, inclusive.
        nodeport_min: u16 = "nodeport_min" in 1..=65535,
        /// NodePort range, inclusive.
        nodeport_max: u16 = "nodeport_max" in 1..=65535,
        /// Uplink MTU.
        mtu: u16 = "mtu" in 576..=9216,
        /// Free-form identifiers.
        external_ids: BTreeMap<String, String> = "external_ids",
    }
);

fn nodeport_range_is_not_empty(cfg: &NodeConfig) -> Result<()> {
    if cfg.nodeport_min > cfg.nodeport_max {
        return Err(Error::data(format!(
            "Node_Config nodeport range {}..={} is empty",
            cfg.nodeport_min, cfg.nodeport_max
        )));
    }
    Ok(())
}

table_row!(
    /// A `Logical_Port` row: one pod interface.
    LogicalPort = "Logical_Port" {
        /// Unique port name.
        name: String = "name",
        /// MAC address, `aa:bb:cc:dd:ee:ff`.
        mac: String = "mac",
        /// Pod addresses (optionally with a prefix length).
        ips: BTreeSet<String> = "ips",
        /// Path of the pod's network namespace.
        netns: Option<String> = "netns",
        /// Interface name inside the pod (≤ 15 chars).
        interface_name: String = "interface_name",
        /// Pod namespace.
        pod_namespace: Option<String> = "pod_namespace",
        /// Pod name.
        pod_name: Option<String> = "pod_name",
        /// Datapath port number, once the agent has created the port.
        dp_port: Option<u32> = "dp_port" in 0..=i64::from(u32::MAX),
        /// Link state.
        up: bool = "up",
        /// Free-form identifiers, e.g. the pod UID.
        external_ids: BTreeMap<String, String> = "external_ids",
    }
);

table_row!(
    /// A `Service` row.
    Service = "Service" {
        /// Service name.
        name: String = "name",
        /// Service namespace.
        namespace: String = "namespace",
        /// Service type.
        service_type: ServiceType = "type",
        /// Cluster IPs (one per family).
        cluster_ips: BTreeSet<IpAddr> = "cluster_ips",
        /// External IPs.
        external_ips: BTreeSet<IpAddr> = "external_ips",
        /// Load-balancer ingress IPs.
        load_balancer_ips: BTreeSet<IpAddr> = "load_balancer_ips",
        /// References to this service's `Service_Port` rows.
        ports: BTreeSet<Uuid> = "ports",
        /// Session affinity.
        session_affinity: SessionAffinity = "session_affinity",
        /// ClientIP affinity timeout in seconds (1..=86400).
        affinity_timeout: Option<u32> = "affinity_timeout" in 1..=86400,
        /// Policy for traffic from inside the cluster.
        internal_traffic_policy: TrafficPolicy = "internal_traffic_policy",
        /// Policy for traffic from outside the cluster.
        external_traffic_policy: TrafficPolicy = "external_traffic_policy",
        /// Free-form identifiers, e.g. the service UID.
        external_ids: BTreeMap<String, String> = "external_ids",
    }
);

table_row!(
    /// A `Service_Port` row (owned by the `Service` that references it).
    ServicePort = "Service_Port" {
        /// Port name (required by Kubernetes when a service has several).
        name: Option<String> = "name",
        /// L4 protocol.
        protocol: Protocol = "protocol",
        /// Service port.
        port: u16 = "port" in 1..=65535,
        /// Endpoint port; `None` when the Service names its target port (the
        /// number then comes from each endpoint's `ports[name]`).
        target_port: Option<u16> = "target_port" in 1..=65535,
        /// Node port, for NodePort and LoadBalancer services.
        node_port: Option<u16> = "node_port" in 1..=65535,
    }
);

table_row!(
    /// An `Endpoint` row: one backend address of a service.
    Endpoint = "Endpoint" {
        /// The service (weak reference: cleared when the service is deleted).
        service: Option<Uuid> = "service",
        /// Backend address.
        ip: IpAddr = "ip",
        /// Port name to port number.
        ports: BTreeMap<String, u16> = "ports" in 1..=65535,
        /// Ready for traffic.
        ready: bool = "ready",
        /// Serving (may be terminating but still serving).
        serving: bool = "serving",
        /// Terminating.
        terminating: bool = "terminating",
        /// Node hosting the endpoint.
        node_name: Option<String> = "node_name",
        /// True if the endpoint is on this node.
        is_local: bool = "is_local",
        /// Topology-aware routing zone hints.
        zone_hints: BTreeSet<String> = "zone_hints",
        /// Free-form identifiers.
        external_ids: BTreeMap<String, String> = "external_ids",
    }
);

table_row!(
    /// A `Remote_Node` row: another node of the cluster and its VTEP.
    RemoteNode = "Remote_Node" {
        /// Kubernetes node name.
        name: String = "name",
        /// The node's tunnel endpoint.
        vtep_ip: IpAddr = "vtep_ip",
        /// Pod CIDRs routed to it.
        pod_cidrs: BTreeSet<String> = "pod_cidrs",
        /// Its node addresses.
        node_ips: BTreeSet<IpAddr> = "node_ips",
        /// Free-form identifiers.
        external_ids: BTreeMap<String, String> = "external_ids",
    }
);

table_row!(
    /// The `Node_Status` row: what `sluice-agent` applied to this node's
    /// datapath, written by the agent only (see `deploy/nestdb/README.md`).
    NodeStatus = "Node_Status" {
        /// The node the agent programs (`Node_Config.node_name`; empty
        /// before there is a usable `Node_Config`).
        node_name: String = "node_name",
        /// The generation `sluiced` holds (0: nothing committed since it
        /// started).
        generation: u64 = "generation" in 0..=i64::MAX,
        /// The nestdb transaction id of the database state the program was
        /// compiled from (`monitor_cond_since`'s last-txn-id).
        txn_id: Option<String> = "txn_id",
        /// `sluiced`'s instance id (new at every start of `sluiced`).
        instance_id: String = "instance_id",
        /// Rows that were not compiled: `"TABLE KEY"` to the sentence that
        /// says what is wrong.
        row_errors: BTreeMap<String, String> = "row_errors",
        /// Why the last `node-commit` was refused, while it keeps being
        /// refused (nothing of it was applied).
        commit_error: Option<String> = "commit_error",
        /// Free-form identifiers.
        external_ids: BTreeMap<String, String> = "external_ids",
    }
);

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
        round_trip(
            &NodeStatus {
                node_name: "node-a".into(),
                generation: 7,
                txn_id: Some("2b1c6f0e-3d5a-4f1e-9c1a-7e2f3b4c5d6e".into()),
                instance_id: "4f1e9c1a".into(),
                row_errors: BTreeMap::from([(
                    "Logical_Port pod-b".to_string(),
                    "mac \"zz\" is not a MAC address".to_string(),
                )]),
                commit_error: None,
                external_ids: BTreeMap::new(),
            },
            &schema,
        );
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
