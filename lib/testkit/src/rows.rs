//! Rows of the node schema (database `Sluice_Node`) for the tests of the
//! compiler, the agent and the packet path, and for the fuzz targets (feature
//! `node-rows`): one builder per table with the values most tests want, so a
//! test writes only what it changes (`LogicalPort { netns: …, ..pod(…) }`),
//! and a monitor dump of typed rows loaded into a [`Replica`].
//!
//! Invariants: the builders are pure (the same arguments give the same
//! row), UUIDs come from [`uuid`] so a test names rows by small numbers, and
//! every builder parses its address arguments with a panic naming the bad
//! text (test input, never user input). Thread-safety: plain functions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nestdb_client::node::{
    Endpoint, LogicalPort, NodeConfig, NodeType, Protocol, RemoteNode, Service, ServicePort,
    ServiceType, SessionAffinity, TrafficPolicy, DB,
};
use nestdb_client::{Datum, Replica, Row, RowChange, Schema, TableRow, Transaction, Uuid};
use serde_json::{json, Map, Value};

/// The node schema the rows belong to.
pub const NODE_SCHEMA: &str = include_str!("../../../deploy/nestdb/sluice.ovsschema");

/// UUID number `n` (`00000000-0000-4000-8000-00000000000n` in hex): rows
/// named by small numbers sort in that order.
pub fn uuid(n: u64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{n:012x}")).expect("a UUID")
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| panic!("{what} {s:?} does not parse"))
}

/// `node-a`, a bare-metal node with VTEP and node address 192.0.2.10, pod
/// CIDR 10.244.1.0/24, node ports 30000-32767, MTU 1500, uplink
/// `0000:01:00.0` and node MAC 02:00:00:00:00:0a.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        node_name: "node-a".into(),
        node_type: NodeType::Baremetal,
        uplink_port: "0000:01:00.0".into(),
        ovs_bridge: None,
        vtep_ip: parse("VTEP", "192.0.2.10"),
        pod_cidrs: BTreeSet::from(["10.244.1.0/24".to_string()]),
        node_ips: BTreeSet::from([parse("node IP", "192.0.2.10")]),
        nodeport_min: 30000,
        nodeport_max: 32767,
        mtu: 1500,
        external_ids: BTreeMap::from([("node_mac".to_string(), "02:00:00:00:00:0a".to_string())]),
    }
}

/// A port named `name` on eth0 with `mac` and the addresses `ips` (with or
/// without a prefix length), no namespace, no pod, not numbered, not up.
pub fn logical_port(name: &str, mac: &str, ip: &str) -> LogicalPort {
    LogicalPort {
        name: name.into(),
        mac: mac.into(),
        ips: BTreeSet::from([ip.to_string()]),
        netns: None,
        interface_name: "eth0".into(),
        pod_namespace: None,
        pod_name: None,
        dp_port: None,
        up: false,
        external_ids: BTreeMap::new(),
    }
}

/// Pod `default/name` of node-a: 10.244.1.`last`/24 with MAC
/// 0a:58:0a:f4:01:`last`, datapath port `dp_port`.
pub fn pod(name: &str, last: u8, dp_port: Option<u32>) -> LogicalPort {
    LogicalPort {
        pod_namespace: Some("default".into()),
        pod_name: Some(name.into()),
        dp_port,
        ..logical_port(
            name,
            &format!("0a:58:0a:f4:01:{last:02x}"),
            &format!("10.244.1.{last}/24"),
        )
    }
}

/// Remote node `name` with VTEP `vtep` and pod CIDR `cidr` (no node
/// addresses).
pub fn remote_node(name: &str, vtep: &str, cidr: &str) -> RemoteNode {
    RemoteNode {
        name: name.into(),
        vtep_ip: parse("VTEP", vtep),
        pod_cidrs: BTreeSet::from([cidr.to_string()]),
        node_ips: BTreeSet::new(),
        external_ids: BTreeMap::new(),
    }
}

/// Service `default/name` of type `ty` at cluster IP `vip` whose ports are
/// the `Service_Port` rows `uuid(p)` for `p` in `ports`; no affinity,
/// policies `Cluster`.
pub fn service(name: &str, ty: ServiceType, vip: &str, ports: &[u64]) -> Service {
    Service {
        name: name.into(),
        namespace: "default".into(),
        service_type: ty,
        cluster_ips: BTreeSet::from([parse("cluster IP", vip)]),
        external_ips: BTreeSet::new(),
        load_balancer_ips: BTreeSet::new(),
        ports: ports.iter().map(|&p| uuid(p)).collect(),
        session_affinity: SessionAffinity::None,
        affinity_timeout: None,
        internal_traffic_policy: TrafficPolicy::Cluster,
        external_traffic_policy: TrafficPolicy::Cluster,
        external_ids: BTreeMap::new(),
    }
}

/// A TCP Service port.
pub fn service_port(
    name: Option<&str>,
    port: u16,
    target: Option<u16>,
    node_port: Option<u16>,
) -> ServicePort {
    ServicePort {
        name: name.map(str::to_string),
        protocol: Protocol::Tcp,
        port,
        target_port: target,
        node_port,
    }
}

/// A ready, serving endpoint of Service `uuid(svc)` (none: dangling) at
/// `ip` with the named `ports`, on node `node`.
pub fn endpoint(
    svc: Option<u64>,
    ip: &str,
    ports: &[(&str, u16)],
    node: &str,
    is_local: bool,
) -> Endpoint {
    Endpoint {
        service: svc.map(uuid),
        ip: parse("endpoint address", ip),
        ports: ports.iter().map(|&(n, p)| (n.to_string(), p)).collect(),
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some(node.into()),
        is_local,
        zone_hints: BTreeSet::new(),
        external_ids: BTreeMap::new(),
    }
}

/// One transaction inserting the ClusterIP Services `svc-I` (namespace
/// `default`) for I in `services`, for the size probes: each has one TCP
/// port 80 → 8080 (row named `pI`), its cluster IP `cluster_ip(I)` (row
/// named `sI`), and `eps` ready, serving, non-local endpoints, endpoint E
/// at `endpoint_ip(I, E)`. The operations go port, Service, endpoints,
/// Service after Service, so the results give each row's UUID in that
/// order.
pub fn services_txn(
    services: std::ops::Range<u32>,
    eps: u32,
    cluster_ip: impl Fn(u32) -> String,
    endpoint_ip: impl Fn(u32, u32) -> String,
) -> Transaction {
    let mut txn = Transaction::new(DB);
    for i in services {
        let (sp, sv) = (format!("p{i}"), format!("s{i}"));
        txn = txn
            .insert(
                "Service_Port",
                nestdb_client::row([
                    ("protocol", Datum::from("TCP")),
                    ("port", Datum::from(80i64)),
                    ("target_port", Datum::from(8080i64)),
                ]),
            )
            .named(&sp)
            .insert(
                "Service",
                nestdb_client::row([
                    ("name", Datum::from(format!("svc-{i}"))),
                    ("namespace", Datum::from("default")),
                    ("type", Datum::from("ClusterIP")),
                    ("cluster_ips", Datum::from(cluster_ip(i))),
                    ("ports", Datum::named_uuid(&sp)),
                    ("session_affinity", Datum::from("None")),
                    ("internal_traffic_policy", Datum::from("Cluster")),
                    ("external_traffic_policy", Datum::from("Cluster")),
                ]),
            )
            .named(&sv);
        for e in 0..eps {
            txn = txn.insert(
                "Endpoint",
                nestdb_client::row([
                    ("service", Datum::named_uuid(&sv)),
                    ("ip", Datum::from(endpoint_ip(i, e))),
                    ("ready", Datum::from(true)),
                    ("serving", Datum::from(true)),
                    ("terminating", Datum::from(false)),
                    ("is_local", Datum::from(false)),
                ]),
            );
        }
    }
    txn
}

/// Every row of table `T` the server holds, typed.
pub fn select<T: TableRow>(db: &nestdb_client::Client) -> Vec<T> {
    let out = db
        .transact(&Transaction::new(DB).select(T::TABLE, vec![]))
        .unwrap_or_else(|e| panic!("select {}: {e}", T::TABLE));
    out.results[0]
        .rows()
        .unwrap_or_default()
        .iter()
        .map(|r| T::from_row(r).unwrap_or_else(|e| panic!("a {} row: {e}", T::TABLE)))
        .collect()
}

/// The real `ovsdb-client transact` of `ops` (JSON operations) on the node
/// database at `remote`; its reply. Fails the test if the tool fails or an
/// operation has an error.
pub fn ovsdb_client_transact(remote: &str, ops: &[Value]) -> Value {
    let mut txn = vec![json!(DB)];
    txn.extend(ops.iter().cloned());
    let out = std::process::Command::new("ovsdb-client")
        .args(["transact", remote])
        .arg(Value::Array(txn).to_string())
        .output()
        .expect("run ovsdb-client");
    assert!(
        out.status.success(),
        "ovsdb-client transact failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ovsdb-client transact printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let ok = v
        .as_array()
        .is_some_and(|rs| rs.iter().all(|r| r.get("error").is_none()));
    assert!(ok, "transaction failed: {v}");
    v
}

/// A monitor dump (`{table: {uuid: {"initial": row}}}`) of typed rows,
/// loaded into a replica of every table of the node schema.
#[derive(Debug, Default)]
pub struct Dump(Map<String, Value>);

impl Dump {
    /// Adds `rows` to their table.
    pub fn put<T: TableRow>(&mut self, rows: &[(Uuid, T)]) -> &mut Self {
        for (u, r) in rows {
            self.put_row(T::TABLE, *u, &r.to_row());
        }
        self
    }

    /// Adds one untyped row (one the typed rows could not hold).
    pub fn put_row(&mut self, table: &str, uuid: Uuid, row: &Row) -> &mut Self {
        let cols: Map<String, Value> = row.iter().map(|(k, d)| (k.clone(), d.to_json())).collect();
        self.0
            .entry(table)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a table is an object")
            .insert(uuid.to_string(), json!({ "initial": cols }));
        self
    }

    /// A replica of the node schema loaded with the dump, and the changes
    /// the load reported.
    pub fn replica(&self) -> (Replica, Vec<RowChange>) {
        let schema = Schema::from_json_str(NODE_SCHEMA).expect("the node schema parses");
        let tables: BTreeMap<String, Option<Vec<String>>> = schema
            .tables
            .iter()
            .map(|t| (t.name.clone(), None))
            .collect();
        let mut replica = Replica::new(Arc::new(schema), &tables).expect("a node replica");
        let changes = replica
            .replace_with_dump(&Value::Object(self.0.clone()), false)
            .expect("the dump loads");
        (replica, changes)
    }
}
