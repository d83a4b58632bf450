//! The compiler: the node database's desired state ([`NodeRows`]: typed
//! rows of `Node_Config`, `Logical_Port`, `Service`/`Service_Port`,
//! `Endpoint`, `Remote_Node`) to the [`NodeProgram`] `sluiced` should hold.
//!
//! [`compile`] is pure and total: it never panics and never emits half a
//! row. A row that cannot be compiled is skipped whole and reported as a
//! [`RowError`] (table, row key, sentence); everything else still compiles.
//! The result does not depend on the order of the rows nor on their UUIDs
//! (only on their contents): ports, Services and nodes are processed in
//! name order, and every conflict is settled in that order.
//!
//! # Ports
//!
//! OpenFlow port 1 is the uplink (`Node_Config.uplink_port`), 2 the host
//! exception port (the node's own addresses live behind it), 3 and up the
//! pods. A `Logical_Port` keeps the number recorded in its `dp_port` when it
//! is in 3..=[`Limits::max_ofport`] and no port earlier in name order holds
//! it; otherwise it gets the lowest free number, in name order. Numbers are
//! therefore stable once the agent has written them back into `dp_port`. A
//! pod port attaches to the host end of its veth, named by
//! `external_ids:host_interface` or else [`host_interface_name`].
//!
//! # Settings read from `Node_Config.external_ids`
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `vni` | Geneve VNI of the pod overlay (1..=16777215) | 1 |
//! | `vtep_prefix_len` | underlay prefix length of `vtep_ip` | 24 |
//! | `node_mac` | the node's MAC (the uplink's, which the host port also wears): the pod gateways' MAC | `0a:58` + the first gateway's IPv4 bytes |
//! | `masquerade_ip` | source of masqueraded Service connections | the first pod CIDR's gateway |
//! | `underlay_gateway_mac` | next hop on the uplink for replies of Service connections that came in on the uplink | none: those replies go to the host port |
//! | `zone` | `topology.kubernetes.io/zone` (topology-aware routing) | none |
//!
//! Pods reach the host (node IPs, and the world through the host's routes)
//! with their frames addressed to the gateway MAC, so `node_mac` must be
//! the host port's MAC for the kernel to accept them; with the default MAC
//! pod-to-pod, overlay and Service traffic work, traffic to the host does
//! not. IPv6 addresses, CIDRs and endpoints are ignored (the overlay is
//! IPv4).
//!
//! # Flow layout
//!
//! Conntrack zone [`CT_ZONE`] holds Service connections. `UPLINK` = 1,
//! `HOST` = 2, `VTEP`, `VNI`, `GW_MAC` from the settings.
//!
//! | table | priority | match | actions | cookie (source row) |
//! |---|---|---|---|---|
//! | 0 classify | 400 | `in_port=UPLINK,tun_id=VNI,tun_dst=VTEP` (decapsulated) | `goto_table:10` | Node_Config |
//! | 0 | 390 | `in_port=UPLINK,tun_dst=VTEP` (other VNI) | `drop` | Node_Config |
//! | 0 | 300 | `udp,in_port=UPLINK,nw_dst=VTEP,tp_dst=6081` | `tnl_pop` | Node_Config |
//! | 0 | 200 | `ip,in_port=UPLINK` | `goto_table:10` | Node_Config |
//! | 0 | 190 | `in_port=UPLINK` (ARP, IPv6, ...) | `output:HOST` | Node_Config |
//! | 0 | 100 | `arp` (host, pods) | `goto_table:30` | Node_Config |
//! | 0 | 60 | `ip,in_port=HOST` | `goto_table:10` | Node_Config |
//! | 0 | 50 | `in_port=HOST` | `output:UPLINK` | Node_Config |
//! | 0 | 50 | `ip,in_port=POD` | `goto_table:10` | Logical_Port |
//! | 10 replies | 100 | `ip,nw_src=ENDPOINT` | `ct(zone=Z,table=11,nat)` (un-NAT replies) | Endpoint (by address) |
//! | 10 | 0 | | `goto_table:11` | Node_Config |
//! | 11 services | 300 | `ip,ct_state=+trk+rpl,ct_mark=0x1` (reply of an uplink connection) | to `underlay_gateway_mac` on UPLINK, else `output:HOST` | Node_Config |
//! | 11 | 110 | `PROTO,in_port=UPLINK,tun_id=0,nw_dst=FRONTEND,tp_dst=PORT` (from the underlay, not the overlay) | `ct(commit,zone=Z,table=20,nat,exec(set_field:0x1->ct_mark))` | Service |
//! | 11 | 100 | `PROTO,nw_dst=FRONTEND,tp_dst=PORT` | `ct(commit,zone=Z,table=20,nat)` | Service |
//! | 11 | 0 | | `goto_table:20` | Node_Config |
//! | 20 l3 | 300 | `ip,nw_dst=POD_IP` | `mod_dl_src:GW_MAC,mod_dl_dst:POD_MAC,dec_ttl,output:POD` | Logical_Port |
//! | 20 | 250 | `ip,nw_dst=LOCAL_POD_CIDR` (no such pod) | `drop` | Node_Config |
//! | 20 | 200 | `ip,nw_dst=REMOTE_POD_CIDR` | `dec_ttl,set_field:VNI->tun_id,set_field:REMOTE_VTEP->tun_dst,tnl_push,output:UPLINK` | Remote_Node |
//! | 20 | 100 | `ip,nw_dst=NODE_IP` | `output:HOST` | Node_Config |
//! | 20 | 10 | `ip,in_port=HOST` | `output:UPLINK` | Node_Config |
//! | 20 | 0 | `ip` | `output:HOST` | Node_Config |
//! | 30 arp | 100 | `arp,arp_tpa=POD_IP` | `output:POD` | Logical_Port |
//! | 30 | 100 | `arp,arp_tpa=NODE_IP` | `output:HOST` | Node_Config |
//! | 30 | 10 | `arp,in_port=HOST` | `output:UPLINK` | Node_Config |
//!
//! Frontends are every clusterIP, externalIP and (type LoadBalancer)
//! LoadBalancer IP at the Service port, and (types NodePort and
//! LoadBalancer) every node IP at the node port. The bare `nat` makes the
//! datapath's Service table choose the endpoint (ClusterIP/NodePort/
//! externalIP/LB, affinity, traffic policies, terminating fallback, zone
//! hints, hairpin masquerade); replies come back through table 10. The ARP
//! responder (before the flow tables) answers for every pod gateway with
//! `GW_MAC`; port security (also before) pins each pod port to its MAC and
//! IPv4 addresses.
//!
//! Cookies: [`cookie`]`(table, key)` is FNV-1a 64 of the table name, a NUL
//! and the row key (Node_Config: `node_name`; Logical_Port and Remote_Node:
//! `name`; Service: `namespace/name`; Endpoint: the address), so a row's
//! flows are `dump-flows cookie=X/-1`.
//!
//! Thread-safety: pure functions over plain values.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use nestdb_client::node::{
    Endpoint, LogicalPort, NodeConfig, Protocol as DbProtocol, RemoteNode, Service, ServicePort,
    ServiceType, SessionAffinity, TrafficPolicy as DbPolicy,
};
use nestdb_client::{Replica, TableRow, Uuid};
use sluice_api::args::fmt_mac;
use sluice_api::node::{
    Cidr, DriverHint, Flow, Mac, NodeProgram, NodeSettings, PortKind, PortSpec,
};
use sluice_api::service::{EndpointSpec, Protocol, ServiceSpec, TrafficPolicy};
use sluice_api::stack::PortSecurity;

/// OpenFlow port of the uplink.
pub const UPLINK: u16 = 1;
/// OpenFlow port of the host exception port.
pub const HOST: u16 = 2;
/// First pod port number.
pub const FIRST_POD_PORT: u16 = 3;
/// Conntrack zone of Service connections.
pub const CT_ZONE: u16 = 1;
/// Default Geneve VNI.
pub const DEFAULT_VNI: u32 = 1;
/// Default underlay prefix length of the VTEP.
pub const DEFAULT_VTEP_PREFIX: u8 = 24;
/// Geneve's UDP port.
pub const GENEVE_PORT: u16 = 6081;
/// Port name of the uplink in the program.
pub const UPLINK_NAME: &str = "uplink";
/// Port name of the host exception port in the program.
pub const HOST_NAME: &str = "host";

/// Flow tables.
pub mod table {
    /// Classification by ingress port.
    pub const CLASSIFY: u8 = 0;
    /// Replies of Service connections un-NATed.
    pub const REPLIES: u8 = 10;
    /// Service frontends.
    pub const SERVICES: u8 = 11;
    /// Routing by destination.
    pub const L3: u8 = 20;
    /// ARP between pods and the host.
    pub const ARP: u8 = 30;
}

/// The node's desired state as typed rows, with their UUIDs. Order does not
/// matter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRows {
    /// `Node_Config` (at most one row).
    pub node_config: Vec<(Uuid, NodeConfig)>,
    /// `Logical_Port`.
    pub logical_ports: Vec<(Uuid, LogicalPort)>,
    /// `Service`.
    pub services: Vec<(Uuid, Service)>,
    /// `Service_Port`.
    pub service_ports: Vec<(Uuid, ServicePort)>,
    /// `Endpoint`.
    pub endpoints: Vec<(Uuid, Endpoint)>,
    /// `Remote_Node`.
    pub remote_nodes: Vec<(Uuid, RemoteNode)>,
}

impl NodeRows {
    /// The node tables of `replica` as typed rows; a row that does not
    /// convert (a column of the wrong type, bad enum text, an address that
    /// does not parse) is left out and reported as a [`RowError`].
    pub fn from_replica(replica: &Replica) -> (NodeRows, Vec<RowError>) {
        fn take<T: TableRow>(replica: &Replica, errors: &mut Vec<RowError>) -> Vec<(Uuid, T)> {
            let mut out = Vec::new();
            for (u, r) in replica.typed::<T>() {
                match r {
                    Ok(v) => out.push((u, v)),
                    Err(e) => errors.push(RowError {
                        table: T::TABLE,
                        key: u.to_string(),
                        sentence: e.to_string(),
                    }),
                }
            }
            out
        }
        let mut errors = Vec::new();
        let rows = NodeRows {
            node_config: take(replica, &mut errors),
            logical_ports: take(replica, &mut errors),
            services: take(replica, &mut errors),
            service_ports: take(replica, &mut errors),
            endpoints: take(replica, &mut errors),
            remote_nodes: take(replica, &mut errors),
        };
        (rows, errors)
    }
}

/// A row that was not compiled, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowError {
    /// The table.
    pub table: &'static str,
    /// The row: its name where the table has one, else its UUID.
    pub key: String,
    /// What is wrong and what to do, as a sentence.
    pub sentence: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.table, self.key, self.sentence)
    }
}

/// What [`compile`] produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    /// The program (canonical).
    pub program: NodeProgram,
    /// Rows skipped, sorted.
    pub errors: Vec<RowError>,
}

/// Bounds of the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest pod port number (OpenFlow's last physical port is 0xfeff).
    pub max_ofport: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_ofport: 0xfeff }
    }
}

/// The flow cookie of a source row: FNV-1a 64 of `table`, NUL, `key`.
pub fn cookie(table: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The default Linux name of a pod port's host-side veth: `sl` and 12 hex
/// digits of the port name's FNV-1a hash (15 characters at most, as Linux
/// requires). The CNI plugin uses the same function.
pub fn host_interface_name(port_name: &str) -> String {
    format!("sl{:012x}", cookie("Logical_Port", port_name) >> 16)
}

/// Compiles `rows` with the default [`Limits`].
pub fn compile(rows: &NodeRows) -> Compiled {
    compile_with(rows, &Limits::default())
}

/// A pod port once its row checked out.
struct Pod {
    name: String,
    ofport: u16,
    recorded: Option<u32>,
    mac: Mac,
    ips: Vec<Ipv4Addr>,
    interface: String,
}

/// The node settings once `Node_Config` checked out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    name: String,
    settings: NodeSettings,
    /// Local pod CIDRs, gateway address form.
    gateways: Vec<Cidr>,
    gw_mac: Mac,
    vtep: Ipv4Addr,
    uplink_device: String,
    uplink_return: Option<Mac>,
}

#[derive(Default)]
pub(crate) struct Ctx {
    pub(crate) errors: Vec<RowError>,
    pub(crate) flows: Vec<Flow>,
}

impl Ctx {
    fn error(&mut self, table: &'static str, key: impl Into<String>, sentence: String) {
        self.errors.push(RowError {
            table,
            key: key.into(),
            sentence,
        });
    }

    fn flow(&mut self, cookie: u64, table: u8, priority: u16, m: String, actions: String) {
        self.flows.push(Flow {
            table,
            priority,
            match_: m,
            cookie,
            actions,
        });
    }
}

/// Compiles `rows` (see the module documentation).
pub fn compile_with(rows: &NodeRows, limits: &Limits) -> Compiled {
    let mut cx = Ctx {
        errors: Vec::new(),
        flows: Vec::new(),
    };
    let mut program = NodeProgram::default();
    let (node, errors) = compile_node(rows.node_config.iter().map(|(_, c)| c).collect());
    cx.errors.extend(errors);
    let Some(node) = node else {
        return finish(program, cx);
    };
    let (settings, sections) = sections(
        &node,
        rows.remote_nodes.iter().map(|(_, r)| r).collect(),
        rows.logical_ports.iter().map(|(_, r)| r).collect(),
        limits,
    );
    program.settings = settings;
    for section in sections {
        program.ports.extend(section.ports);
        program.port_security.extend(section.port_security);
        program.arp_responder.extend(section.arp_responder);
        program.vteps.extend(section.vteps);
        cx.flows.extend(section.cx.flows);
        cx.errors.extend(section.cx.errors);
    }

    // Services.
    for spec in services(&mut cx, &node, rows) {
        program.services.insert(spec.name.clone(), spec);
    }
    finish(program, cx)
}

/// The node from the `Node_Config` rows (exactly one, which checks out),
/// or the errors that stop everything.
pub(crate) fn compile_node(configs: Vec<&NodeConfig>) -> (Option<Node>, Vec<RowError>) {
    let err = |key: String, sentence: String| RowError {
        table: "Node_Config",
        key,
        sentence,
    };
    match configs.as_slice() {
        [] => (
            None,
            vec![err(
                "-".into(),
                "there is no Node_Config row; nothing is programmed until the node's configuration is written".into(),
            )],
        ),
        [cfg] => match node_settings(cfg) {
            Ok(n) => (Some(n), Vec::new()),
            Err(s) => (None, vec![err(cfg.node_name.clone(), s)]),
        },
        many => (
            None,
            many.iter()
                .map(|cfg| {
                    err(
                        cfg.node_name.clone(),
                        format!("there are {} Node_Config rows; keep exactly one", many.len()),
                    )
                })
                .collect(),
        ),
    }
}

/// What one part of the rows contributes to the program besides the
/// Services: the node's own part, the remote nodes, the pods. Sections
/// never share a key (reserved port names, disjoint addresses), so the
/// program is their union; the incremental compiler recomputes and
/// replaces them one by one.
#[derive(Default)]
pub(crate) struct Section {
    pub(crate) ports: BTreeMap<String, PortSpec>,
    pub(crate) port_security: BTreeMap<u16, PortSecurity>,
    pub(crate) arp_responder: BTreeMap<Ipv4Addr, Mac>,
    pub(crate) vteps: BTreeMap<String, Ipv4Addr>,
    pub(crate) cx: Ctx,
}

/// The node's own section: its flows, the uplink and host ports, the
/// gateways' ARP answers.
pub(crate) fn node_section(node: &Node) -> Section {
    let mut s = Section::default();
    node_flows(&mut s.cx, node);
    s.ports.insert(
        UPLINK_NAME.into(),
        PortSpec {
            ofport: UPLINK,
            kind: PortKind::Uplink {
                device: node.uplink_device.clone(),
            },
            driver: DriverHint::Auto,
        },
    );
    s.ports.insert(
        HOST_NAME.into(),
        PortSpec {
            ofport: HOST,
            kind: PortKind::Host,
            driver: DriverHint::Auto,
        },
    );
    for g in &node.gateways {
        s.arp_responder.insert(g.ip, node.gw_mac);
    }
    s
}

/// The remote nodes' section (in name order, each checked against the
/// ones before it) and the cluster's pod CIDRs, sorted.
pub(crate) fn remote_section(node: &Node, mut remotes: Vec<&RemoteNode>) -> (Section, Vec<Cidr>) {
    let mut s = Section::default();
    let cx = &mut s.cx;
    let mut cluster: Vec<Cidr> = node.gateways.iter().map(|g| net(*g)).collect();
    remotes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut vtep_owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for r in remotes {
        match remote_node(node, r, &cluster, &vtep_owner) {
            Ok((vtep, cidrs)) => {
                let c = cookie("Remote_Node", &r.name);
                for cidr in &cidrs {
                    cx.flow(
                        c,
                        table::L3,
                        200,
                        format!("ip,nw_dst={cidr}"),
                        format!(
                            "dec_ttl,set_field:{:#x}->tun_id,set_field:{vtep}->tun_dst,tnl_push,output:{UPLINK}",
                            node.settings.vni
                        ),
                    );
                }
                cluster.extend(cidrs);
                vtep_owner.insert(vtep, r.name.clone());
                s.vteps.insert(r.name.clone(), vtep);
            }
            Err(e) => cx.error("Remote_Node", r.name.clone(), e),
        }
    }
    cluster.sort();
    (s, cluster)
}

/// The pods' section: ports, port security and flows of every pod that
/// checks out, numbered (see the module documentation).
pub(crate) fn pod_section(node: &Node, lps: Vec<&LogicalPort>, limits: &Limits) -> Section {
    let mut s = Section::default();
    for pod in pods(&mut s.cx, node, lps, limits) {
        let c = cookie("Logical_Port", &pod.name);
        s.ports.insert(
            pod.name.clone(),
            PortSpec {
                ofport: pod.ofport,
                kind: PortKind::Pod {
                    interface: pod.interface.clone(),
                },
                driver: DriverHint::Auto,
            },
        );
        s.port_security.insert(
            pod.ofport,
            PortSecurity {
                port: pod.ofport,
                mac: pod.mac,
                ips: pod.ips.clone(),
            },
        );
        s.cx.flow(
            c,
            table::CLASSIFY,
            50,
            format!("ip,in_port={}", pod.ofport),
            format!("goto_table:{}", table::REPLIES),
        );
        for ip in &pod.ips {
            s.cx.flow(
                c,
                table::L3,
                300,
                format!("ip,nw_dst={ip}"),
                format!(
                    "mod_dl_src:{},mod_dl_dst:{},dec_ttl,output:{}",
                    fmt_mac(&node.gw_mac),
                    fmt_mac(&pod.mac),
                    pod.ofport
                ),
            );
            s.cx.flow(
                c,
                table::ARP,
                100,
                format!("arp,arp_tpa={ip}"),
                format!("output:{}", pod.ofport),
            );
        }
    }
    s
}

/// The node settings with the cluster's pod CIDRs.
pub(crate) fn settings_of(node: &Node, cluster: Vec<Cidr>) -> NodeSettings {
    NodeSettings {
        cluster_cidrs: cluster,
        ..node.settings.clone()
    }
}

/// The settings and the three sections (node, remote nodes, pods).
fn sections(
    node: &Node,
    remotes: Vec<&RemoteNode>,
    lps: Vec<&LogicalPort>,
    limits: &Limits,
) -> (NodeSettings, [Section; 3]) {
    let (remote, cluster) = remote_section(node, remotes);
    (
        settings_of(node, cluster),
        [node_section(node), remote, pod_section(node, lps, limits)],
    )
}

fn finish(mut program: NodeProgram, mut cx: Ctx) -> Compiled {
    program.flows = cx.flows;
    program.canonicalize();
    cx.errors.sort();
    cx.errors.dedup();
    Compiled {
        program,
        errors: cx.errors,
    }
}

/// The network form of a prefix.
fn net(c: Cidr) -> Cidr {
    Cidr::new(c.network(), c.prefix_len)
}

fn ext<'a>(ids: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
    ids.get(k).map(String::as_str)
}

fn parse_mac(s: &str) -> Option<Mac> {
    sluice_api::args::mac(s).ok()
}

fn ipv6_vtep(v: std::net::Ipv6Addr) -> String {
    format!("vtep_ip {v} is IPv6; the pod overlay is IPv4: give the node's IPv4 underlay address")
}

fn node_settings(cfg: &NodeConfig) -> Result<Node, String> {
    let ids = &cfg.external_ids;
    let vtep = match cfg.vtep_ip {
        IpAddr::V4(v) => v,
        IpAddr::V6(v) => return Err(ipv6_vtep(v)),
    };
    let vni = match ext(ids, "vni") {
        None => DEFAULT_VNI,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|v| (1..=0xff_ffff).contains(v))
            .ok_or_else(|| {
                format!("external_ids:vni is {s:?}; give a Geneve VNI between 1 and 16777215")
            })?,
    };
    let vtep_prefix = match ext(ids, "vtep_prefix_len") {
        None => DEFAULT_VTEP_PREFIX,
        Some(s) => s.parse::<u8>().ok().filter(|l| (1..=32).contains(l)).ok_or_else(|| {
            format!("external_ids:vtep_prefix_len is {s:?}; give the underlay prefix length, 1 to 32")
        })?,
    };
    let mut gateways = Vec::new();
    for text in &cfg.pod_cidrs {
        if text.contains(':') {
            continue; // IPv6: not in the overlay.
        }
        let c = Cidr::parse(text).map_err(|_| {
            format!("pod_cidrs holds {text:?}, which is not an IPv4 prefix; write it as A.B.C.D/N")
        })?;
        if c.prefix_len > 30 {
            return Err(format!(
                "pod CIDR {text} is too small for a gateway and pods; use a prefix of /30 or shorter"
            ));
        }
        let gw = Cidr::new(Ipv4Addr::from(u32::from(c.network()) + 1), c.prefix_len);
        if let Some(o) = gateways.iter().find(|o: &&Cidr| o.overlaps(&gw)) {
            return Err(format!(
                "pod CIDRs {} and {} overlap; give the node disjoint pod CIDRs",
                net(*o),
                net(gw)
            ));
        }
        gateways.push(gw);
    }
    gateways.sort();
    if gateways.is_empty() {
        return Err(
            "pod_cidrs holds no IPv4 prefix; give the node its IPv4 pod CIDR (e.g. 10.244.1.0/24)"
                .into(),
        );
    }
    let gw_mac = match ext(ids, "node_mac") {
        Some(s) => parse_mac(s).ok_or_else(|| {
            format!(
                "external_ids:node_mac is {s:?}, not a MAC address; write it as aa:bb:cc:dd:ee:ff"
            )
        })?,
        None => {
            let o = gateways[0].ip.octets();
            [0x0a, 0x58, o[0], o[1], o[2], o[3]]
        }
    };
    let masquerade_ip = match ext(ids, "masquerade_ip") {
        Some(s) => s
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("external_ids:masquerade_ip is {s:?}, not an IPv4 address"))?,
        None => gateways[0].ip,
    };
    let uplink_return = match ext(ids, "underlay_gateway_mac") {
        Some(s) => Some(parse_mac(s).ok_or_else(|| {
            format!("external_ids:underlay_gateway_mac is {s:?}, not a MAC address; write it as aa:bb:cc:dd:ee:ff")
        })?),
        None => None,
    };
    let node_ips: Vec<Ipv4Addr> = cfg
        .node_ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .collect();
    if let Some(ip) = node_ips
        .iter()
        .find(|ip| gateways.iter().any(|g| g.contains(**ip)))
    {
        return Err(format!(
            "node IP {ip} lies inside the node's pod CIDR; node addresses and pod CIDRs must not overlap"
        ));
    }
    let mut settings = NodeSettings {
        node_name: cfg.node_name.clone(),
        vtep: Some(Cidr::new(vtep, vtep_prefix)),
        vni,
        node_ips,
        node_port_range: (cfg.nodeport_min, cfg.nodeport_max),
        pod_cidrs: gateways.clone(),
        cluster_cidrs: Vec::new(),
        mtu: cfg.mtu,
        masquerade_ip: Some(masquerade_ip),
        zone: ext(ids, "zone").map(str::to_string),
    };
    settings.node_ips.sort();
    Ok(Node {
        name: cfg.node_name.clone(),
        settings,
        gateways,
        gw_mac,
        vtep,
        uplink_device: cfg.uplink_port.clone(),
        uplink_return,
    })
}

fn node_flows(cx: &mut Ctx, n: &Node) {
    let c = cookie("Node_Config", &n.name);
    let (vtep, vni) = (n.vtep, n.settings.vni);
    use table::*;
    let f = |cx: &mut Ctx, t: u8, p: u16, m: String, a: String| cx.flow(c, t, p, m, a);
    f(
        cx,
        CLASSIFY,
        400,
        format!("in_port={UPLINK},tun_id={vni:#x},tun_dst={vtep}"),
        format!("goto_table:{REPLIES}"),
    );
    f(
        cx,
        CLASSIFY,
        390,
        format!("in_port={UPLINK},tun_dst={vtep}"),
        "drop".into(),
    );
    f(
        cx,
        CLASSIFY,
        300,
        format!("udp,in_port={UPLINK},nw_dst={vtep},tp_dst={GENEVE_PORT}"),
        "tnl_pop".into(),
    );
    f(
        cx,
        CLASSIFY,
        200,
        format!("ip,in_port={UPLINK}"),
        format!("goto_table:{REPLIES}"),
    );
    f(
        cx,
        CLASSIFY,
        190,
        format!("in_port={UPLINK}"),
        format!("output:{HOST}"),
    );
    f(cx, CLASSIFY, 100, "arp".into(), format!("goto_table:{ARP}"));
    f(
        cx,
        CLASSIFY,
        60,
        format!("ip,in_port={HOST}"),
        format!("goto_table:{REPLIES}"),
    );
    f(
        cx,
        CLASSIFY,
        50,
        format!("in_port={HOST}"),
        format!("output:{UPLINK}"),
    );
    f(
        cx,
        REPLIES,
        0,
        String::new(),
        format!("goto_table:{SERVICES}"),
    );
    let back = match n.uplink_return {
        Some(mac) => format!(
            "mod_dl_src:{},mod_dl_dst:{},output:{UPLINK}",
            fmt_mac(&n.gw_mac),
            fmt_mac(&mac)
        ),
        None => format!("output:{HOST}"),
    };
    f(
        cx,
        SERVICES,
        300,
        "ip,ct_state=+rpl+trk,ct_mark=0x1".into(),
        back,
    );
    f(cx, SERVICES, 0, String::new(), format!("goto_table:{L3}"));
    for g in &n.gateways {
        f(cx, L3, 250, format!("ip,nw_dst={}", net(*g)), "drop".into());
    }
    for ip in &n.settings.node_ips {
        f(
            cx,
            L3,
            100,
            format!("ip,nw_dst={ip}"),
            format!("output:{HOST}"),
        );
        f(
            cx,
            ARP,
            100,
            format!("arp,arp_tpa={ip}"),
            format!("output:{HOST}"),
        );
    }
    f(
        cx,
        L3,
        10,
        format!("ip,in_port={HOST}"),
        format!("output:{UPLINK}"),
    );
    f(cx, L3, 0, "ip".into(), format!("output:{HOST}"));
    f(
        cx,
        ARP,
        10,
        format!("arp,in_port={HOST}"),
        format!("output:{UPLINK}"),
    );
}

/// Checks a remote node: its VTEP and IPv4 pod CIDRs (network form).
fn remote_node(
    n: &Node,
    r: &RemoteNode,
    cluster: &[Cidr],
    vtep_owner: &BTreeMap<Ipv4Addr, String>,
) -> Result<(Ipv4Addr, Vec<Cidr>), String> {
    if r.name == n.name {
        return Err(format!(
            "it names this node ({}); a node is not its own remote",
            n.name
        ));
    }
    let vtep = match r.vtep_ip {
        IpAddr::V4(v) => v,
        IpAddr::V6(v) => return Err(ipv6_vtep(v)),
    };
    if vtep == n.vtep {
        return Err(format!("vtep_ip {vtep} is this node's own VTEP address"));
    }
    if let Some(o) = vtep_owner.get(&vtep) {
        return Err(format!("vtep_ip {vtep} is already the VTEP of node {o}"));
    }
    let mut cidrs: Vec<Cidr> = Vec::new();
    for text in &r.pod_cidrs {
        if text.contains(':') {
            continue;
        }
        let c = net(Cidr::parse(text).map_err(|_| {
            format!("pod_cidrs holds {text:?}, which is not an IPv4 prefix; write it as A.B.C.D/N")
        })?);
        if let Some(o) = cluster.iter().chain(&cidrs).find(|o| o.overlaps(&c)) {
            return Err(format!(
                "pod CIDR {c} overlaps {o}, already routed elsewhere; pod CIDRs of nodes must be disjoint"
            ));
        }
        cidrs.push(c);
    }
    cidrs.sort();
    Ok((vtep, cidrs))
}

/// Checks the logical ports and gives them OpenFlow numbers.
fn pods(cx: &mut Ctx, n: &Node, mut rows: Vec<&LogicalPort>, limits: &Limits) -> Vec<Pod> {
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ok: Vec<Pod> = Vec::new();
    let mut owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut iface_owner: BTreeMap<String, String> = BTreeMap::new();
    for lp in rows {
        let check = || -> Result<Pod, String> {
            if lp.name == UPLINK_NAME || lp.name == HOST_NAME {
                return Err(format!(
                    "the port name {:?} is reserved for the node's own port; rename the Logical_Port",
                    lp.name
                ));
            }
            let mac = parse_mac(&lp.mac).ok_or_else(|| {
                format!(
                    "mac {:?} is not a MAC address; write it as aa:bb:cc:dd:ee:ff",
                    lp.mac
                )
            })?;
            if mac[0] & 1 != 0 {
                return Err(format!(
                    "mac {} is a multicast address; give the pod a unicast MAC",
                    lp.mac
                ));
            }
            let mut ips = Vec::new();
            for text in &lp.ips {
                let addr = text.split('/').next().unwrap_or("");
                match addr.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => {
                        if !n.gateways.iter().any(|g| g.contains(ip)) {
                            return Err(format!(
                                "address {ip} is outside this node's pod CIDRs ({}); give the pod an address from them",
                                n.gateways.iter().map(|g| net(*g).to_string()).collect::<Vec<_>>().join(", ")
                            ));
                        }
                        if n.gateways.iter().any(|g| g.ip == ip) {
                            return Err(format!("address {ip} is the pod CIDR's gateway"));
                        }
                        if let Some(o) = owner.get(&ip) {
                            return Err(format!("address {ip} is already used by port {o}"));
                        }
                        ips.push(ip);
                    }
                    Ok(IpAddr::V6(_)) => {}
                    Err(_) => {
                        return Err(format!(
                            "ips holds {text:?}, which is not an IP address; write A.B.C.D or A.B.C.D/N"
                        ))
                    }
                }
            }
            ips.sort();
            ips.dedup();
            let interface = match ext(&lp.external_ids, "host_interface") {
                Some(i) if !i.is_empty() && i.len() <= 15 && !i.contains(['/', ' ']) => {
                    i.to_string()
                }
                Some(i) => {
                    return Err(format!(
                        "external_ids:host_interface {i:?} is not a Linux interface name (1 to 15 characters, no '/' or space)"
                    ))
                }
                None => host_interface_name(&lp.name),
            };
            if let Some(o) = iface_owner.get(&interface) {
                return Err(format!(
                    "its host interface {interface} is already port {o}'s; give each pod its own veth"
                ));
            }
            Ok(Pod {
                name: lp.name.clone(),
                ofport: 0,
                recorded: lp.dp_port,
                mac,
                ips,
                interface,
            })
        };
        match check() {
            Ok(p) => {
                for ip in &p.ips {
                    owner.insert(*ip, p.name.clone());
                }
                iface_owner.insert(p.interface.clone(), p.name.clone());
                ok.push(p)
            }
            Err(s) => cx.error("Logical_Port", lp.name.clone(), s),
        }
    }
    number(cx, ok, limits)
}

/// Gives each checked pod its OpenFlow number: the recorded `dp_port` when
/// it is in range and not taken by a port earlier in name order, else the
/// lowest free one; a pod for which no number is left is an error.
fn number(cx: &mut Ctx, pods: Vec<Pod>, limits: &Limits) -> Vec<Pod> {
    let range = u32::from(FIRST_POD_PORT)..=u32::from(limits.max_ofport);
    let mut taken: BTreeSet<u16> = BTreeSet::new();
    let mut pods = pods;
    for p in pods.iter_mut() {
        if let Some(n) = p.recorded.filter(|n| range.contains(n)) {
            let n = n as u16; // in range, so it fits
            if taken.insert(n) {
                p.ofport = n;
            }
        }
    }
    let mut next = FIRST_POD_PORT;
    let mut out = Vec::new();
    for mut p in pods {
        if p.ofport == 0 {
            while taken.contains(&next) && next < limits.max_ofport {
                next += 1;
            }
            if next > limits.max_ofport || taken.contains(&next) {
                cx.error(
                    "Logical_Port",
                    p.name.clone(),
                    format!(
                        "no OpenFlow port number is left ({FIRST_POD_PORT} to {} are all in use); remove unused Logical_Port rows",
                        limits.max_ofport
                    ),
                );
                continue;
            }
            taken.insert(next);
            p.ofport = next;
        }
        out.push(p);
    }
    out
}

/// The frontends of a spec: `(address, port)` pairs.
pub(crate) fn frontends_of(n: &Node, s: &ServiceSpec) -> Vec<(Ipv4Addr, u16)> {
    let mut v: Vec<(Ipv4Addr, u16)> = s
        .cluster_ips
        .iter()
        .chain(&s.external_ips)
        .chain(&s.load_balancer_ips)
        .map(|ip| (*ip, s.port))
        .collect();
    if let Some(np) = s.node_port {
        v.extend(n.settings.node_ips.iter().map(|ip| (*ip, np)));
    }
    v.sort();
    v.dedup();
    v
}

fn v4s(set: &BTreeSet<IpAddr>) -> Vec<Ipv4Addr> {
    set.iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
        .collect()
}

fn protocol(p: DbProtocol) -> Protocol {
    match p {
        DbProtocol::Tcp => Protocol::Tcp,
        DbProtocol::Udp => Protocol::Udp,
        DbProtocol::Sctp => Protocol::Sctp,
    }
}

fn policy(p: DbPolicy) -> TrafficPolicy {
    match p {
        DbPolicy::Cluster => TrafficPolicy::Cluster,
        DbPolicy::Local => TrafficPolicy::Local,
    }
}

/// The Service specs of one Service row (one per Service port).
pub(crate) fn service_specs<'a>(
    n: &Node,
    s: &Service,
    port_of: &dyn Fn(&Uuid) -> Option<&'a ServicePort>,
    eps: &[&Endpoint],
) -> Result<Vec<ServiceSpec>, String> {
    let base = format!("{}/{}", s.namespace, s.name);
    let mut sps: Vec<&ServicePort> = Vec::new();
    for u in &s.ports {
        sps.push(port_of(u).ok_or_else(|| {
            format!("it references Service_Port {u}, which does not exist; write the Service and its ports in one transaction")
        })?);
    }
    sps.sort_by(|a, b| {
        (&a.name, a.protocol, a.port, a.target_port, a.node_port).cmp(&(
            &b.name,
            b.protocol,
            b.port,
            b.target_port,
            b.node_port,
        ))
    });
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for p in &sps {
        let name = p.name.clone().unwrap_or_default();
        if !names.insert(name.clone()) {
            return Err(if name.is_empty() {
                "it has more than one unnamed port; name every port of a multi-port Service".into()
            } else {
                format!("it has two ports named {name:?}; port names must be unique")
            });
        }
        if !numbers.insert((p.protocol, p.port)) {
            return Err(format!(
                "it declares port {}/{} twice; each protocol and port once",
                p.port, p.protocol
            ));
        }
    }
    let with_node_port = s.service_type != ServiceType::ClusterIp;
    let (lo, hi) = n.settings.node_port_range;
    let mut eps: Vec<&Endpoint> = eps.to_vec();
    eps.sort_by(|a, b| {
        (
            a.ip,
            &a.ports,
            !a.ready,
            !a.serving,
            a.terminating,
            !a.is_local,
            &a.zone_hints,
            &a.external_ids,
        )
            .cmp(&(
                b.ip,
                &b.ports,
                !b.ready,
                !b.serving,
                b.terminating,
                !b.is_local,
                &b.zone_hints,
                &b.external_ids,
            ))
    });
    let mut out = Vec::new();
    for p in sps {
        let node_port = match p.node_port.filter(|_| with_node_port) {
            Some(np) if np < lo || np > hi => {
                return Err(format!(
                    "port {}/{} has nodePort {np}, outside the node-port range {lo}-{hi} of Node_Config; pick a node port inside it",
                    p.port, p.protocol
                ))
            }
            np => np,
        };
        let pname = p.name.clone().unwrap_or_default();
        let endpoints = eps
            .iter()
            .filter_map(|e| {
                let IpAddr::V4(ip) = e.ip else { return None };
                let port = e.ports.get(&pname).copied().or(p.target_port)?;
                Some(EndpointSpec {
                    ip,
                    port,
                    ready: e.ready,
                    serving: Some(e.serving),
                    terminating: e.terminating,
                    node_local: e.is_local,
                    zone: ext(&e.external_ids, "zone").map(str::to_string),
                    for_zones: e.zone_hints.iter().cloned().collect(),
                })
            })
            .collect();
        let mut spec = ServiceSpec {
            name: if pname.is_empty() {
                base.clone()
            } else {
                format!("{base}:{pname}")
            },
            protocol: protocol(p.protocol),
            port: p.port,
            cluster_ips: v4s(&s.cluster_ips),
            node_port,
            external_ips: v4s(&s.external_ips),
            load_balancer_ips: if s.service_type == ServiceType::LoadBalancer {
                v4s(&s.load_balancer_ips)
            } else {
                Vec::new()
            },
            session_affinity_seconds: match s.session_affinity {
                SessionAffinity::None => None,
                SessionAffinity::ClientIp => Some(s.affinity_timeout.unwrap_or(10_800)),
            },
            internal_traffic_policy: policy(s.internal_traffic_policy),
            external_traffic_policy: policy(s.external_traffic_policy),
            topology_aware: ext(&s.external_ids, "topology_mode") == Some("Auto")
                || ext(&s.external_ids, "traffic_distribution") == Some("PreferClose"),
            endpoints,
        };
        sluice_api::node::canonical_service(&mut spec);
        if !frontends_of(n, &spec).is_empty() {
            out.push(spec);
        }
    }
    Ok(out)
}

/// The error of a Service whose frontend an earlier Service (in name
/// order) holds.
pub(crate) fn frontend_conflict(ip: Ipv4Addr, port: u16, proto: &str, owner: &str) -> String {
    format!(
        "its frontend {ip}:{port}/{proto} is already Service {owner}'s; give each address, port and protocol to one Service"
    )
}

/// The error of a Service one of whose port's Service names an earlier
/// Service (in name order) holds.
pub(crate) fn name_conflict(name: &str) -> String {
    format!(
        "its port's Service name {name:?} is already another Service's; Kubernetes names contain no ':'"
    )
}

/// The error of an Endpoint whose Service does not exist.
pub(crate) fn dangling_endpoint(service: Uuid) -> String {
    format!("it references Service {service}, which does not exist")
}

/// The flows of one accepted Service's frontends (`PROTO` name per
/// address, port and IP protocol number).
pub(crate) fn frontend_flows(
    cx: &mut Ctx,
    key: &str,
    frontends: &BTreeMap<(Ipv4Addr, u16, u8), &'static str>,
) {
    let c = cookie("Service", key);
    for (&(ip, port, _), &p) in frontends {
        cx.flow(
            c,
            table::SERVICES,
            110,
            format!("{p},in_port={UPLINK},tun_id=0,nw_dst={ip},tp_dst={port}"),
            format!(
                "ct(commit,zone={CT_ZONE},table={},nat,exec(set_field:0x1->ct_mark))",
                table::L3
            ),
        );
        cx.flow(
            c,
            table::SERVICES,
            100,
            format!("{p},nw_dst={ip},tp_dst={port}"),
            format!("ct(commit,zone={CT_ZONE},table={},nat)", table::L3),
        );
    }
}

/// The reply flow of a Service endpoint's address.
pub(crate) fn reply_flow(ip: Ipv4Addr) -> Flow {
    Flow {
        table: table::REPLIES,
        priority: 100,
        match_: format!("ip,nw_src={ip}"),
        cookie: cookie("Endpoint", &ip.to_string()),
        actions: format!("ct(zone={CT_ZONE},table={},nat)", table::SERVICES),
    }
}

/// The Services: specs, frontend flows, reply flows.
fn services(cx: &mut Ctx, n: &Node, rows: &NodeRows) -> Vec<ServiceSpec> {
    let ports: BTreeMap<Uuid, &ServicePort> =
        rows.service_ports.iter().map(|(u, p)| (*u, p)).collect();
    let by_uuid: BTreeMap<Uuid, &Service> = rows.services.iter().map(|(u, s)| (*u, s)).collect();
    let mut eps: BTreeMap<Uuid, Vec<&Endpoint>> = BTreeMap::new();
    for (u, e) in &rows.endpoints {
        match e.service {
            None => {} // its Service was deleted (weak reference)
            Some(s) if by_uuid.contains_key(&s) => eps.entry(s).or_default().push(e),
            Some(s) => cx.error("Endpoint", u.to_string(), dangling_endpoint(s)),
        }
    }
    let mut svcs: Vec<(&Uuid, &Service)> = rows.services.iter().map(|(u, s)| (u, s)).collect();
    svcs.sort_by(|a, b| (&a.1.namespace, &a.1.name).cmp(&(&b.1.namespace, &b.1.name)));
    let mut owner: BTreeMap<(Ipv4Addr, u16, u8), String> = BTreeMap::new();
    let mut reply_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for (u, s) in svcs {
        let key = format!("{}/{}", s.namespace, s.name);
        let specs = match service_specs(
            n,
            s,
            &|u| ports.get(u).copied(),
            eps.get(u).map_or(&[][..], Vec::as_slice),
        ) {
            Ok(v) => v,
            Err(e) => {
                cx.error("Service", key, e);
                continue;
            }
        };
        let mut mine: BTreeMap<(Ipv4Addr, u16, u8), &'static str> = BTreeMap::new();
        let mut conflict = None;
        for spec in &specs {
            for (ip, port) in frontends_of(n, spec) {
                let k = (ip, port, spec.protocol.ipproto());
                if let Some(o) = owner.get(&k) {
                    conflict = Some(frontend_conflict(ip, port, spec.protocol.name(), o));
                }
                mine.insert(k, spec.protocol.name());
            }
        }
        if let Some(dup) = specs.iter().find(|s| names.contains(&s.name)) {
            conflict = Some(name_conflict(&dup.name));
        }
        if let Some(c) = conflict {
            cx.error("Service", key, c);
            continue;
        }
        names.extend(specs.iter().map(|s| s.name.clone()));
        frontend_flows(cx, &key, &mine);
        for k in mine.keys() {
            owner.insert(*k, key.clone());
        }
        for spec in specs {
            reply_ips.extend(spec.endpoints.iter().map(|e| e.ip));
            out.push(spec);
        }
    }
    cx.flows.extend(reply_ips.into_iter().map(reply_flow));
    out
}

/// The program and errors as text, for golden files and `--dry-run`:
/// sections in a fixed order, one item per line.
pub fn render(c: &Compiled) -> String {
    let p = &c.program;
    let mut s = String::from("# ports\n");
    for (name, port) in &p.ports {
        let kind = match &port.kind {
            PortKind::Pod { interface } => format!("pod interface={interface}"),
            PortKind::Uplink { device } => format!("uplink device={device}"),
            PortKind::Host => "host".to_string(),
        };
        s += &format!("{:>5} {name} {kind}\n", port.ofport);
    }
    s += "# port security\n";
    for ps in p.port_security.values() {
        let ips: Vec<String> = ps.ips.iter().map(|i| i.to_string()).collect();
        s += &format!("{} {} {}\n", ps.port, fmt_mac(&ps.mac), ips.join(","));
    }
    s += "# arp responder\n";
    for (ip, mac) in &p.arp_responder {
        s += &format!("{ip} {}\n", fmt_mac(mac));
    }
    s += "# vteps\n";
    for (node, ip) in &p.vteps {
        s += &format!("{node} {ip}\n");
    }
    s += "# settings\n";
    s += &serde_json::to_string(&p.settings).unwrap_or_default();
    s += "\n# services\n";
    for spec in p.services.values() {
        s += &serde_json::to_string(spec).unwrap_or_default();
        s.push('\n');
    }
    s += "# flows\n";
    for f in &p.flows {
        s += &f.text();
        s.push('\n');
    }
    s += "# errors\n";
    for e in &c.errors {
        s += &format!("{e}\n");
    }
    s
}
