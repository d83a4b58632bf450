//! The node commit: the whole desired state of one node's datapath
//! ([`NodeProgram`]), the change set that moves `sluiced` from one program
//! to the next in one atomic step ([`NodeChanges`], method `node-commit`),
//! and what `sluiced` reports back (`node-status`).
//!
//! A [`NodeProgram`] is kept in canonical form (see
//! [`NodeProgram::canonicalize`]): maps keyed by name or number, vectors
//! sorted and without duplicates, so that two programs describing the same
//! datapath are `==` and [`diff`] is a merge of sorted collections.
//! [`diff`] and [`apply`] are pure: for canonical programs `old` and `new`,
//! `apply(old, &diff(old, new)) == new` (checked by a proptest).
//!
//! Flows are `ovs-ofctl` text split into their identity (table, priority,
//! match) and their body (cookie, actions); the cookie names the source row
//! (see `sluice-control`'s `agent::compile` for the layout). [`diff`]
//! expresses flow changes as [`FlowOp`]s: a strict `del` for a flow that
//! went away and an `add` (which replaces) for a new or changed one;
//! [`apply`] reads back exactly those (and, best effort, loose `del`/`mod`
//! by textual match items, see [`apply`]).
//!
//! Optimistic concurrency: a [`NodeChanges`] carries the `generation` it
//! creates and, when set, the `expected_generation` `sluiced` must hold;
//! `sluiced` refuses the commit ([`generation_conflict`]) otherwise, and
//! refuses a commit whose item fails with [`item_error`], applying nothing.
//!
//! Plain data: `Send + Sync` values, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::flows::FlowOp;
use crate::service::{ServiceSpec, ServiceUpdate};
use crate::stack::PortSecurity;
use crate::{args, method, ApiError, Empty, ErrorCode, FromArgs, Render};

/// A MAC address.
pub type Mac = [u8; 6];

/// An IPv4 prefix, written `A.B.C.D/N` on the wire. The address keeps
/// whatever host bits it was given (a gateway `10.244.1.1/24` stays that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Cidr {
    /// Address.
    pub ip: Ipv4Addr,
    /// Prefix length (0..=32).
    pub prefix_len: u8,
}

impl Cidr {
    /// `ip/prefix_len` (the length is clamped to 32).
    pub fn new(ip: Ipv4Addr, prefix_len: u8) -> Self {
        Cidr {
            ip,
            prefix_len: prefix_len.min(32),
        }
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ip) & self.mask())
    }

    /// True when `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.ip) & self.mask()
    }

    /// True when the two prefixes share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.ip) & m == u32::from(other.ip) & m
    }

    /// Parses `A.B.C.D/N`.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidArgument`] naming the text.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let (ip, len) = args::cidr(s)?;
        Ok(Cidr::new(ip, len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for Cidr {
    type Error = ApiError;
    fn try_from(s: String) -> Result<Self, ApiError> {
        Cidr::parse(&s)
    }
}

/// What a datapath port is attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PortKind {
    /// A pod: the host end of the veth pair the CNI plugin created.
    Pod {
        /// The host end's Linux interface name.
        interface: String,
    },
    /// The uplink NIC.
    Uplink {
        /// Its DPDK device (PCI address or vdev arguments) as
        /// `Node_Config.uplink_port` names it.
        device: String,
    },
    /// The host exception port (the node's own addresses live behind it).
    Host,
}

/// Which DPDK driver `sluiced` should attach a port with.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum DriverHint {
    /// `sluiced` chooses (its measured best for the kind).
    #[default]
    Auto,
    /// `net_af_xdp`.
    AfXdp,
    /// `net_af_packet`.
    AfPacket,
    /// `net_tap`.
    Tap,
    /// `net_virtio_user` (vhost-kernel).
    VirtioUser,
}

/// One port of the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// OpenFlow port number the flows use.
    pub ofport: u16,
    /// What it is attached to.
    pub kind: PortKind,
    /// Driver preference.
    #[serde(default)]
    pub driver: DriverHint,
}

/// One flow, split into identity (`table`, `priority`, `match_`) and body
/// (`cookie`, `actions`). Two flows with the same identity are the same
/// OpenFlow rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Table.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// The match in `ovs-ofctl` syntax, without table and priority
    /// (empty: everything).
    #[serde(rename = "match")]
    pub match_: String,
    /// Cookie: names the source row.
    pub cookie: u64,
    /// Actions in `ovs-ofctl` syntax.
    pub actions: String,
}

impl Flow {
    /// The `add-flow` text: `cookie=0x..,table=T,priority=P[,MATCH],actions=A`.
    pub fn text(&self) -> String {
        format!(
            "cookie={:#x},{},actions={}",
            self.cookie,
            self.key_text(),
            self.actions
        )
    }

    /// The strict-match text: `table=T,priority=P[,MATCH]`.
    pub fn key_text(&self) -> String {
        if self.match_.is_empty() {
            format!("table={},priority={}", self.table, self.priority)
        } else {
            format!(
                "table={},priority={},{}",
                self.table, self.priority, self.match_
            )
        }
    }

    fn key(&self) -> (u8, u16, &str) {
        (self.table, self.priority, &self.match_)
    }

    /// Reads a flow text as [`Flow::text`] writes it (items split at
    /// top-level commas; `cookie`, `table` and `priority` may be anywhere
    /// and default to 0, 0 and 32768 as in `ovs-ofctl`). `None` when there
    /// is no `actions=`.
    pub fn parse(text: &str) -> Option<Flow> {
        let (head, actions) = split_actions(text)?;
        let h = split_head(head);
        Some(Flow {
            table: h.table.unwrap_or(0),
            priority: h.priority.unwrap_or(32768),
            match_: h.items.join(","),
            cookie: h.cookie.unwrap_or(0),
            actions: actions.trim().to_string(),
        })
    }
}

/// Splits `...,actions=A` (or `... actions=A`) into the head and `A`.
fn split_actions(text: &str) -> Option<(&str, &str)> {
    let i = text.find("actions=")?;
    let head = text[..i].trim_end_matches([',', ' ']);
    Some((head, &text[i + "actions=".len()..]))
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Splits a match text at top-level commas (commas inside parentheses do
/// not split), trimming items and dropping empty ones.
fn items(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    let bytes = text.as_bytes();
    for i in 0..=bytes.len() {
        match bytes.get(i) {
            Some(b'(') => depth += 1,
            Some(b')') => depth -= 1,
            Some(b',') | None if depth <= 0 => {
                let item = text[start..i].trim();
                start = i + 1;
                if !item.is_empty() {
                    out.push(item);
                }
            }
            _ => {}
        }
    }
    out
}

/// A flow head: `cookie`, `table` and `priority` when given, and the other
/// match items in their order.
#[derive(Default)]
struct Head<'a> {
    cookie: Option<u64>,
    table: Option<u8>,
    priority: Option<u16>,
    items: Vec<&'a str>,
}

fn split_head(head: &str) -> Head<'_> {
    let mut h = Head::default();
    for item in items(head) {
        if let Some(v) = item.strip_prefix("table=") {
            h.table = parse_num(v).and_then(|v| u8::try_from(v).ok());
        } else if let Some(v) = item.strip_prefix("priority=") {
            h.priority = parse_num(v).and_then(|v| u16::try_from(v).ok());
        } else if let Some(v) = item.strip_prefix("cookie=") {
            h.cookie = parse_num(v.split('/').next().unwrap_or(""));
        } else {
            h.items.push(item);
        }
    }
    h
}

/// One group: `group_id=ID,SPEC` in `add-group` syntax.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Group id.
    pub id: u32,
    /// Cookie of the source row (kept by the program, not by the syntax).
    pub cookie: u64,
    /// The rest of the text: `type=select,bucket=...`.
    pub spec: String,
}

impl Group {
    /// The `add-group` text.
    pub fn text(&self) -> String {
        format!("group_id={},{}", self.id, self.spec)
    }
}

/// The node-wide settings the datapath needs from `Node_Config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Kubernetes node name.
    pub node_name: String,
    /// Local VTEP address and underlay prefix.
    #[serde(default)]
    pub vtep: Option<Cidr>,
    /// Geneve VNI of the pod overlay.
    #[serde(default)]
    pub vni: u32,
    /// The node's own IPv4 addresses (NodePort frontends), sorted.
    #[serde(default)]
    pub node_ips: Vec<Ipv4Addr>,
    /// NodePort range, inclusive.
    #[serde(default)]
    pub node_port_range: (u16, u16),
    /// This node's IPv4 pod CIDRs, gateway address first (`10.244.1.1/24`),
    /// sorted.
    #[serde(default)]
    pub pod_cidrs: Vec<Cidr>,
    /// Every pod CIDR of the cluster (this node's and remote nodes'),
    /// network form, sorted: Service sources inside are internal.
    #[serde(default)]
    pub cluster_cidrs: Vec<Cidr>,
    /// Uplink MTU.
    #[serde(default)]
    pub mtu: u16,
    /// Source address of masqueraded Service connections.
    #[serde(default)]
    pub masquerade_ip: Option<Ipv4Addr>,
    /// `topology.kubernetes.io/zone` of this node.
    #[serde(default)]
    pub zone: Option<String>,
}

impl NodeSettings {
    fn canonicalize(&mut self) {
        self.node_ips.sort();
        self.node_ips.dedup();
        self.pod_cidrs.sort();
        self.pod_cidrs.dedup();
        self.cluster_cidrs.sort();
        self.cluster_cidrs.dedup();
    }
}

/// The whole desired state of one node's datapath, in canonical form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeProgram {
    /// Ports by name.
    #[serde(default)]
    pub ports: BTreeMap<String, PortSpec>,
    /// Flows sorted by table, descending priority, match; one per identity.
    #[serde(default)]
    pub flows: Vec<Flow>,
    /// Groups by id.
    #[serde(default)]
    pub groups: BTreeMap<u32, Group>,
    /// Services by name (each spec canonical: addresses sorted,
    /// endpoints sorted by address and port).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Remote VTEPs: node name to underlay address.
    #[serde(default)]
    pub vteps: BTreeMap<String, Ipv4Addr>,
    /// Port security by OpenFlow port (addresses sorted).
    #[serde(default)]
    pub port_security: BTreeMap<u16, PortSecurity>,
    /// Permanent underlay neighbours.
    #[serde(default)]
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// Addresses the ARP responder answers for (pod gateways), with the MAC.
    #[serde(default)]
    pub arp_responder: BTreeMap<Ipv4Addr, Mac>,
    /// Node settings.
    #[serde(default)]
    pub settings: NodeSettings,
}

/// Sorts a Service spec's lists (the datapath treats them as sets).
pub fn canonical_service(s: &mut ServiceSpec) {
    s.cluster_ips.sort();
    s.cluster_ips.dedup();
    s.external_ips.sort();
    s.external_ips.dedup();
    s.load_balancer_ips.sort();
    s.load_balancer_ips.dedup();
    for e in &mut s.endpoints {
        e.for_zones.sort();
        e.for_zones.dedup();
    }
    s.endpoints.sort_by_key(|e| (e.ip, e.port));
    s.endpoints
        .dedup_by(|a, b| (a.ip, a.port) == (b.ip, b.port));
}

impl NodeProgram {
    /// Puts the program in canonical form: flows sorted (the last of two
    /// with one identity wins), Service specs and port-security addresses
    /// sorted, names of Services and ports of port security taken from
    /// their keys.
    pub fn canonicalize(&mut self) {
        let mut by_key: BTreeMap<(u8, std::cmp::Reverse<u16>, String), Flow> = BTreeMap::new();
        for f in std::mem::take(&mut self.flows) {
            by_key.insert(
                (f.table, std::cmp::Reverse(f.priority), f.match_.clone()),
                f,
            );
        }
        self.flows = by_key.into_values().collect();
        for (id, g) in &mut self.groups {
            g.id = *id;
        }
        for (name, s) in &mut self.services {
            s.name.clone_from(name);
            canonical_service(s);
        }
        for (port, p) in &mut self.port_security {
            p.port = *port;
            p.ips.sort();
            p.ips.dedup();
        }
        self.settings.canonicalize();
    }

    /// The flow texts in order, one per line, then the groups.
    pub fn flow_lines(&self) -> Vec<String> {
        self.flows.iter().map(Flow::text).collect()
    }
}

/// The largest request `sluiced`'s control socket accepts (its
/// `ServerConfig::max_message_bytes`, 64 MiB): no `node-commit` can be
/// bigger.
pub fn control_socket_limit() -> usize {
    sluice_jsonrpc::unixctl::ServerConfig::default().max_message_bytes
}

/// What `node-commit` carries: the changes from the program `sluiced`
/// holds (`expected_generation`) to the one it is told to hold
/// (`generation`). Applied in this order: ports removed, ports added,
/// settings, VTEPs, neighbours, ARP responder, port security, groups, flow
/// ops, Services; all of it becomes visible at once or none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeChanges {
    /// The generation this commit creates.
    pub generation: u64,
    /// Refuse unless `sluiced` holds this generation (None: any).
    #[serde(default)]
    pub expected_generation: Option<u64>,
    /// Ports removed (by name), before `ports_added`.
    #[serde(default)]
    pub ports_removed: Vec<String>,
    /// Ports added; a changed port is removed and added again.
    #[serde(default)]
    pub ports_added: BTreeMap<String, PortSpec>,
    /// New node settings (None: unchanged).
    #[serde(default)]
    pub settings: Option<NodeSettings>,
    /// Remote VTEPs removed.
    #[serde(default)]
    pub vteps_removed: Vec<String>,
    /// Remote VTEPs added or moved.
    #[serde(default)]
    pub vteps_set: BTreeMap<String, Ipv4Addr>,
    /// Permanent neighbours removed.
    #[serde(default)]
    pub neighbours_removed: Vec<Ipv4Addr>,
    /// Permanent neighbours set.
    #[serde(default)]
    pub neighbours_set: BTreeMap<Ipv4Addr, Mac>,
    /// ARP responder addresses removed.
    #[serde(default)]
    pub arp_removed: Vec<Ipv4Addr>,
    /// ARP responder addresses set.
    #[serde(default)]
    pub arp_set: BTreeMap<Ipv4Addr, Mac>,
    /// Port security removed (by OpenFlow port).
    #[serde(default)]
    pub port_security_removed: Vec<u16>,
    /// Port security set.
    #[serde(default)]
    pub port_security_set: Vec<PortSecurity>,
    /// Groups removed.
    #[serde(default)]
    pub groups_removed: Vec<u32>,
    /// Groups added or replaced.
    #[serde(default)]
    pub groups_set: Vec<Group>,
    /// Flow operations, in order.
    #[serde(default)]
    pub flow_ops: Vec<FlowOp>,
    /// Service changes.
    #[serde(default)]
    pub services: ServiceUpdate,
}

impl NodeChanges {
    /// True when the commit would change nothing but the generation.
    pub fn is_empty(&self) -> bool {
        self.ports_removed.is_empty()
            && self.ports_added.is_empty()
            && self.settings.is_none()
            && self.vteps_removed.is_empty()
            && self.vteps_set.is_empty()
            && self.neighbours_removed.is_empty()
            && self.neighbours_set.is_empty()
            && self.arp_removed.is_empty()
            && self.arp_set.is_empty()
            && self.port_security_removed.is_empty()
            && self.port_security_set.is_empty()
            && self.groups_removed.is_empty()
            && self.groups_set.is_empty()
            && self.flow_ops.is_empty()
            && self.services.upsert.is_empty()
            && self.services.delete.is_empty()
    }

    /// What the commit changes, counted.
    pub fn counts(&self) -> CommitCounts {
        CommitCounts {
            ports_added: self.ports_added.len(),
            ports_removed: self.ports_removed.len(),
            settings: self.settings.is_some(),
            vteps: self.vteps_set.len() + self.vteps_removed.len(),
            neighbours: self.neighbours_set.len() + self.neighbours_removed.len(),
            arp: self.arp_set.len() + self.arp_removed.len(),
            port_security: self.port_security_set.len() + self.port_security_removed.len(),
            groups: self.groups_set.len() + self.groups_removed.len(),
            flow_ops: self.flow_ops.len(),
            services_upserted: self.services.upsert.len(),
            services_deleted: self.services.delete.len(),
        }
    }
}

impl FromArgs for NodeChanges {
    fn from_args(a: &[String]) -> Result<Self, ApiError> {
        let text = a.first().map(String::as_str).unwrap_or("");
        serde_json::from_str(text).map_err(|e| {
            ApiError::invalid(format!(
                "node-commit takes the change set as one JSON object ({{\"generation\": N, \"expected_generation\": N, \"ports_added\": {{...}}, \"flow_ops\": [...], \"services\": {{...}}, ...}}): {e}"
            ))
        })
    }
}

/// What a commit changed, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCounts {
    /// Ports added.
    pub ports_added: usize,
    /// Ports removed.
    pub ports_removed: usize,
    /// The settings changed.
    pub settings: bool,
    /// VTEPs set or removed.
    pub vteps: usize,
    /// Neighbours set or removed.
    pub neighbours: usize,
    /// ARP responder addresses set or removed.
    pub arp: usize,
    /// Port-security bindings set or removed.
    pub port_security: usize,
    /// Groups set or removed.
    pub groups: usize,
    /// Flow operations.
    pub flow_ops: usize,
    /// Services added or replaced.
    pub services_upserted: usize,
    /// Services removed.
    pub services_deleted: usize,
}

/// `node-commit` reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCommitReply {
    /// The generation now in force.
    pub generation: u64,
    /// What changed.
    pub counts: CommitCounts,
}

impl Render for NodeCommitReply {
    fn render(&self) -> String {
        let c = &self.counts;
        format!(
            "generation {}: ports +{} -{}, settings {}, vteps {}, neighbours {}, arp {}, port security {}, groups {}, flow ops {}, services +{} -{}\n",
            self.generation,
            c.ports_added,
            c.ports_removed,
            if c.settings { "changed" } else { "unchanged" },
            c.vteps,
            c.neighbours,
            c.arp,
            c.port_security,
            c.groups,
            c.flow_ops,
            c.services_upserted,
            c.services_deleted
        )
    }
}

/// One item of a commit, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitItem {
    /// A port, by name.
    Port(String),
    /// The settings.
    Settings,
    /// A VTEP, by node.
    Vtep(String),
    /// A neighbour.
    Neighbour(Ipv4Addr),
    /// An ARP responder address.
    Arp(Ipv4Addr),
    /// A port-security binding.
    PortSecurity(u16),
    /// A group.
    Group(u32),
    /// The flow operation at this index, with its text.
    FlowOp(usize, String),
    /// A Service, by name.
    Service(String),
}

impl fmt::Display for CommitItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitItem::Port(n) => write!(f, "port {n:?}"),
            CommitItem::Settings => write!(f, "the node settings"),
            CommitItem::Vtep(n) => write!(f, "the VTEP of node {n:?}"),
            CommitItem::Neighbour(ip) => write!(f, "neighbour {ip}"),
            CommitItem::Arp(ip) => write!(f, "ARP responder address {ip}"),
            CommitItem::PortSecurity(p) => write!(f, "port security of port {p}"),
            CommitItem::Group(g) => write!(f, "group {g}"),
            CommitItem::FlowOp(i, t) => write!(f, "flow operation {i} ({t})"),
            CommitItem::Service(n) => write!(f, "Service {n:?}"),
        }
    }
}

/// The error of a refused commit: which item and why; nothing was applied.
pub fn item_error(code: ErrorCode, item: &CommitItem, why: &str) -> ApiError {
    ApiError::new(
        code,
        format!("node-commit refused at {item}: {why}; nothing was applied"),
    )
}

/// The error of a commit whose `expected_generation` is not what `sluiced`
/// holds.
pub fn generation_conflict(held: u64, expected: u64) -> ApiError {
    ApiError::failed(format!(
        "node-commit refused: sluiced holds generation {held}, not the expected {expected}; read node-status and diff against what it holds; nothing was applied"
    ))
}

/// One port as `node-status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// OpenFlow port number.
    pub ofport: u16,
    /// Link up.
    pub up: bool,
    /// Polled by a PMD and forwarding.
    pub forwarding: bool,
}

/// `node-status` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The generation in force (0: nothing committed since start).
    pub generation: u64,
    /// New at every start of `sluiced`.
    pub instance_id: String,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Ports by name.
    pub ports: BTreeMap<String, PortStatus>,
}

impl Render for NodeStatus {
    fn render(&self) -> String {
        let mut s = format!(
            "generation {}\ninstance {}\nuptime {}.{:03}s\n",
            self.generation,
            self.instance_id,
            self.uptime_ms / 1000,
            self.uptime_ms % 1000
        );
        for (name, p) in &self.ports {
            s += &format!(
                "  port {:>3} ({name}): {}, {}\n",
                p.ofport,
                if p.up { "up" } else { "down" },
                if p.forwarding {
                    "forwarding"
                } else {
                    "not forwarding"
                }
            );
        }
        s
    }
}

method!(
    /// Applies a whole change set to the node's datapath atomically.
    NodeCommit, "node-commit", "JSON-CHANGES", (1, 1), NodeChanges => NodeCommitReply);
method!(
    /// The generation in force, the instance id and the ports' state.
    QueryNodeStatus, "node-status", "", (0, 0), Empty => NodeStatus);
method!(
    /// The program `sluiced` holds: every committed change applied, in
    /// canonical form (what the agent diffs against after its own restart).
    QueryNodeProgram, "node-program", "", (0, 0), Empty => NodeProgram);

impl Render for NodeProgram {
    fn render(&self) -> String {
        let mut s = format!(
            "node {}: {} ports, {} flows, {} groups, {} Services, {} VTEPs, {} port-security bindings, {} neighbours, {} ARP responder addresses\n",
            self.settings.node_name,
            self.ports.len(),
            self.flows.len(),
            self.groups.len(),
            self.services.len(),
            self.vteps.len(),
            self.port_security.len(),
            self.neighbours.len(),
            self.arp_responder.len()
        );
        for (name, p) in &self.ports {
            s += &format!("  port {:>3} {name}: {:?}\n", p.ofport, p.kind);
        }
        for (node, ip) in &self.vteps {
            s += &format!("  vtep {node}: {ip}\n");
        }
        s
    }
}

/// The canonical order of flows: table, descending priority, match.
fn order(f: &Flow) -> (u8, std::cmp::Reverse<u16>, &str) {
    (f.table, std::cmp::Reverse(f.priority), &f.match_)
}

/// Sorted in canonical order, one flow per identity.
fn is_canonical(flows: &[Flow]) -> bool {
    flows.windows(2).all(|w| order(&w[0]) < order(&w[1]))
}

/// Entries of `new` not equal in `old` (set) and keys of `old` not in
/// `new` (removed).
fn map_diff<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (BTreeMap<K, V>, Vec<K>) {
    let set = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .cloned()
        .collect();
    (set, removed)
}

/// The changes that turn `old` into `new` (both canonical). `generation`
/// is 0 and `expected_generation` None: the caller stamps them.
pub fn diff(old: &NodeProgram, new: &NodeProgram) -> NodeChanges {
    let mut c = NodeChanges::default();
    // Ports: changed ones are removed and added again.
    for (name, p) in &old.ports {
        if new.ports.get(name) != Some(p) {
            c.ports_removed.push(name.clone());
        }
    }
    for (name, p) in &new.ports {
        if old.ports.get(name) != Some(p) {
            c.ports_added.insert(name.clone(), p.clone());
        }
    }
    if old.settings != new.settings {
        c.settings = Some(new.settings.clone());
    }
    (c.vteps_set, c.vteps_removed) = map_diff(&old.vteps, &new.vteps);
    (c.neighbours_set, c.neighbours_removed) = map_diff(&old.neighbours, &new.neighbours);
    (c.arp_set, c.arp_removed) = map_diff(&old.arp_responder, &new.arp_responder);
    let (ps, psr) = map_diff(&old.port_security, &new.port_security);
    c.port_security_set = ps.into_values().collect();
    c.port_security_removed = psr;
    let (gs, gr) = map_diff(&old.groups, &new.groups);
    c.groups_set = gs.into_values().collect();
    c.groups_removed = gr;
    // Flows: strict deletes of identities that went away, then adds. A
    // merge of the two sorted lists (linear, no allocation) when both are
    // canonical, else through maps.
    let (mut dels, mut adds): (Vec<&Flow>, Vec<&Flow>) = (Vec::new(), Vec::new());
    if is_canonical(&old.flows) && is_canonical(&new.flows) {
        let (mut i, mut j) = (0, 0);
        while i < old.flows.len() || j < new.flows.len() {
            match (old.flows.get(i), new.flows.get(j)) {
                (Some(a), Some(b)) => match order(a).cmp(&order(b)) {
                    std::cmp::Ordering::Less => {
                        dels.push(a);
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        adds.push(b);
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if a != b {
                            adds.push(b);
                        }
                        i += 1;
                        j += 1;
                    }
                },
                (Some(a), None) => {
                    dels.push(a);
                    i += 1;
                }
                (None, Some(b)) => {
                    adds.push(b);
                    j += 1;
                }
                (None, None) => break,
            }
        }
    } else {
        let old_f: BTreeMap<_, &Flow> = old.flows.iter().map(|f| (f.key(), f)).collect();
        let new_f: BTreeMap<_, &Flow> = new.flows.iter().map(|f| (f.key(), f)).collect();
        dels = old_f
            .iter()
            .filter(|(k, _)| !new_f.contains_key(*k))
            .map(|(_, f)| *f)
            .collect();
        adds = new_f
            .iter()
            .filter(|(k, f)| old_f.get(*k) != Some(*f))
            .map(|(_, f)| *f)
            .collect();
    }
    c.flow_ops.extend(dels.into_iter().map(|f| FlowOp::Del {
        match_: f.key_text(),
        strict: true,
    }));
    c.flow_ops
        .extend(adds.into_iter().map(|f| FlowOp::Add { flow: f.text() }));
    let (su, sd) = map_diff(&old.services, &new.services);
    c.services.upsert = su.into_values().collect();
    c.services.delete = sd;
    c
}

/// The flows of `flows` a filter selects: the filter's table (if given),
/// priority (if strict) and match items must all be in the flow's
/// (textually, after splitting at top-level commas); strict also needs the
/// same number of match items.
fn selects(flow: &Flow, filter: &str, strict: bool) -> bool {
    let f = split_head(filter);
    if f.table.is_some_and(|t| t != flow.table) {
        return false;
    }
    let mine: BTreeSet<&str> = items(&flow.match_).into_iter().collect();
    if strict {
        f.priority.unwrap_or(32768) == flow.priority
            && mine.len() == f.items.len()
            && f.items.iter().all(|i| mine.contains(i))
    } else {
        f.items.iter().all(|i| mine.contains(i))
    }
}

/// `old` with `changes` applied (the result is canonical). Flow operations
/// are interpreted textually: `add` parses the text with [`Flow::parse`]
/// (a text without `actions=` is ignored; a `group_id=` text adds a
/// group with cookie 0); `del` and `mod` select flows whose match items
/// include the filter's ([`FlowOp::Del`] with `strict` needs the same
/// priority and item set). This is exact for what [`diff`] produces.
///
/// Cost: a copy of `old` plus [`apply_in_place`]'s; a holder of the
/// program that can change it in place should call that instead.
pub fn apply(old: &NodeProgram, changes: &NodeChanges) -> NodeProgram {
    let mut p = old.clone();
    p.canonicalize();
    apply_in_place(&mut p, changes);
    p
}

/// Above this many flow operations (and above a thirty-second of the
/// flows held), [`apply_in_place`] rebuilds the flow list through a map
/// instead of inserting and removing in the sorted list one by one (each
/// of which moves the list's tail).
const FLOW_OPS_IN_PLACE: usize = 64;

/// Where a flow of identity `key` is (Ok) or goes (Err) in canonical
/// `flows`.
fn flow_slot(flows: &[Flow], key: (u8, std::cmp::Reverse<u16>, &str)) -> Result<usize, usize> {
    flows.binary_search_by(|f| order(f).cmp(&key))
}

/// Applies `changes` to the canonical program `p` in place, with the
/// semantics of [`apply`]: the result is canonical and equal to
/// `apply(p, changes)`. Cost grows with the change, not with the program:
/// a flow added or removed by identity is one binary search and one move
/// of the sorted list's tail; a Service upserted is one map insert (only
/// that spec is made canonical). Loose deletes, modifications and strict
/// deletes of identities not held scan the flows, as [`apply`] does; a
/// change set with many flow operations rebuilds the flow list once.
///
/// `p` must be canonical (every program [`apply`] or this function
/// returns is); a non-canonical `p` gives a program that may not be.
pub fn apply_in_place(p: &mut NodeProgram, changes: &NodeChanges) {
    for name in &changes.ports_removed {
        p.ports.remove(name);
    }
    for (name, spec) in &changes.ports_added {
        p.ports.insert(name.clone(), spec.clone());
    }
    if let Some(s) = &changes.settings {
        p.settings = s.clone();
        p.settings.canonicalize();
    }
    for n in &changes.vteps_removed {
        p.vteps.remove(n);
    }
    p.vteps
        .extend(changes.vteps_set.iter().map(|(k, v)| (k.clone(), *v)));
    for n in &changes.neighbours_removed {
        p.neighbours.remove(n);
    }
    p.neighbours.extend(changes.neighbours_set.clone());
    for n in &changes.arp_removed {
        p.arp_responder.remove(n);
    }
    p.arp_responder.extend(changes.arp_set.clone());
    for n in &changes.port_security_removed {
        p.port_security.remove(n);
    }
    for s in &changes.port_security_set {
        let mut s = s.clone();
        s.ips.sort();
        s.ips.dedup();
        p.port_security.insert(s.port, s);
    }
    for g in &changes.groups_removed {
        p.groups.remove(g);
    }
    for g in &changes.groups_set {
        p.groups.insert(g.id, g.clone());
    }
    let ops = &changes.flow_ops;
    if ops.len() > FLOW_OPS_IN_PLACE && ops.len() > p.flows.len() / 32 {
        flow_ops_through_map(p, ops);
    } else {
        for op in ops {
            flow_op_in_place(p, op);
        }
    }
    for n in &changes.services.delete {
        p.services.remove(n);
    }
    for s in &changes.services.upsert {
        let mut s = s.clone();
        canonical_service(&mut s);
        p.services.insert(s.name.clone(), s);
    }
}

/// A `group_id=ID,SPEC` text given as a flow add: the group it sets.
fn group_of_add(flow: &str) -> Option<Option<Group>> {
    let rest = flow.trim().strip_prefix("group_id=")?;
    let (id, spec) = rest.split_once(',').unwrap_or((rest, ""));
    Some(
        parse_num(id)
            .and_then(|i| u32::try_from(i).ok())
            .map(|id| Group {
                id,
                cookie: 0,
                spec: spec.to_string(),
            }),
    )
}

/// One flow operation on the sorted flow list.
fn flow_op_in_place(p: &mut NodeProgram, op: &FlowOp) {
    match op {
        FlowOp::Add { flow } => {
            if let Some(g) = group_of_add(flow) {
                if let Some(g) = g {
                    p.groups.insert(g.id, g);
                }
            } else if let Some(f) = Flow::parse(flow) {
                match flow_slot(&p.flows, order(&f)) {
                    Ok(i) => p.flows[i] = f,
                    Err(i) => p.flows.insert(i, f),
                }
            }
        }
        FlowOp::Del { match_, strict } => {
            let h = split_head(match_);
            let items = h.items.join(",");
            let exact = (
                h.table.unwrap_or(0),
                std::cmp::Reverse(h.priority.unwrap_or(32768)),
                items.as_str(),
            );
            match flow_slot(&p.flows, exact) {
                Ok(i) if *strict => {
                    p.flows.remove(i);
                }
                _ => p.flows.retain(|f| !selects(f, match_, *strict)),
            }
        }
        FlowOp::Mod { flow, strict } => {
            if let Some((head, actions)) = split_actions(flow) {
                for f in p.flows.iter_mut() {
                    if selects(f, head, *strict) {
                        f.actions = actions.trim().to_string();
                    }
                }
            }
        }
    }
}

/// Many flow operations: through a map keyed by identity, once.
fn flow_ops_through_map(p: &mut NodeProgram, ops: &[FlowOp]) {
    let mut flows: BTreeMap<(u8, std::cmp::Reverse<u16>, String), Flow> =
        std::mem::take(&mut p.flows)
            .into_iter()
            .map(|f| {
                (
                    (f.table, std::cmp::Reverse(f.priority), f.match_.clone()),
                    f,
                )
            })
            .collect();
    for op in ops {
        match op {
            FlowOp::Add { flow } => {
                if let Some(g) = group_of_add(flow) {
                    if let Some(g) = g {
                        p.groups.insert(g.id, g);
                    }
                } else if let Some(f) = Flow::parse(flow) {
                    flows.insert(
                        (f.table, std::cmp::Reverse(f.priority), f.match_.clone()),
                        f,
                    );
                }
            }
            FlowOp::Del { match_, strict } => {
                // The exact identity first (what `diff` sends), else a scan.
                let h = split_head(match_);
                let exact = (
                    h.table.unwrap_or(0),
                    std::cmp::Reverse(h.priority.unwrap_or(32768)),
                    h.items.join(","),
                );
                if !(*strict && flows.remove(&exact).is_some()) {
                    flows.retain(|_, f| !selects(f, match_, *strict));
                }
            }
            FlowOp::Mod { flow, strict } => {
                if let Some((head, actions)) = split_actions(flow) {
                    for f in flows.values_mut() {
                        if selects(f, head, *strict) {
                            f.actions = actions.trim().to_string();
                        }
                    }
                }
            }
        }
    }
    p.flows = flows.into_values().collect();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{EndpointSpec, Protocol};

    /// The whole-program `apply` as it was first written (clone, rebuild
    /// every flow through a map, canonicalize everything): the reference
    /// the incremental [`apply_in_place`] must equal.
    /// `old` with `changes` applied (the result is canonical). Flow operations
    /// are interpreted textually: `add` parses the text with [`Flow::parse`]
    /// (a text without `actions=` is ignored; a `group_id=` text adds a
    /// group with cookie 0); `del` and `mod` select flows whose match items
    /// include the filter's ([`FlowOp::Del`] with `strict` needs the same
    /// priority and item set). This is exact for what [`diff`] produces.
    fn apply_reference(old: &NodeProgram, changes: &NodeChanges) -> NodeProgram {
        let mut p = old.clone();
        for name in &changes.ports_removed {
            p.ports.remove(name);
        }
        for (name, spec) in &changes.ports_added {
            p.ports.insert(name.clone(), spec.clone());
        }
        if let Some(s) = &changes.settings {
            p.settings = s.clone();
        }
        for n in &changes.vteps_removed {
            p.vteps.remove(n);
        }
        p.vteps
            .extend(changes.vteps_set.iter().map(|(k, v)| (k.clone(), *v)));
        for n in &changes.neighbours_removed {
            p.neighbours.remove(n);
        }
        p.neighbours.extend(changes.neighbours_set.clone());
        for n in &changes.arp_removed {
            p.arp_responder.remove(n);
        }
        p.arp_responder.extend(changes.arp_set.clone());
        for n in &changes.port_security_removed {
            p.port_security.remove(n);
        }
        for s in &changes.port_security_set {
            p.port_security.insert(s.port, s.clone());
        }
        for g in &changes.groups_removed {
            p.groups.remove(g);
        }
        for g in &changes.groups_set {
            p.groups.insert(g.id, g.clone());
        }
        let mut flows: BTreeMap<(u8, std::cmp::Reverse<u16>, String), Flow> =
            std::mem::take(&mut p.flows)
                .into_iter()
                .map(|f| {
                    (
                        (f.table, std::cmp::Reverse(f.priority), f.match_.clone()),
                        f,
                    )
                })
                .collect();
        for op in &changes.flow_ops {
            match op {
                FlowOp::Add { flow } => {
                    if let Some(rest) = flow.trim().strip_prefix("group_id=") {
                        let (id, spec) = rest.split_once(',').unwrap_or((rest, ""));
                        if let Some(id) = parse_num(id).and_then(|i| u32::try_from(i).ok()) {
                            p.groups.insert(
                                id,
                                Group {
                                    id,
                                    cookie: 0,
                                    spec: spec.to_string(),
                                },
                            );
                        }
                    } else if let Some(f) = Flow::parse(flow) {
                        flows.insert(
                            (f.table, std::cmp::Reverse(f.priority), f.match_.clone()),
                            f,
                        );
                    }
                }
                FlowOp::Del { match_, strict } => {
                    // The exact identity first (what `diff` sends), else a scan.
                    let h = split_head(match_);
                    let exact = (
                        h.table.unwrap_or(0),
                        std::cmp::Reverse(h.priority.unwrap_or(32768)),
                        h.items.join(","),
                    );
                    if !(*strict && flows.remove(&exact).is_some()) {
                        flows.retain(|_, f| !selects(f, match_, *strict));
                    }
                }
                FlowOp::Mod { flow, strict } => {
                    if let Some((head, actions)) = split_actions(flow) {
                        for f in flows.values_mut() {
                            if selects(f, head, *strict) {
                                f.actions = actions.trim().to_string();
                            }
                        }
                    }
                }
            }
        }
        p.flows = flows.into_values().collect();
        for n in &changes.services.delete {
            p.services.remove(n);
        }
        for s in &changes.services.upsert {
            p.services.insert(s.name.clone(), s.clone());
        }
        p.canonicalize();
        p
    }
    use proptest::prelude::*;

    fn flow(table: u8, priority: u16, m: &str, cookie: u64, actions: &str) -> Flow {
        Flow {
            table,
            priority,
            match_: m.into(),
            cookie,
            actions: actions.into(),
        }
    }

    fn svc(name: &str, vip: [u8; 4], eps: &[[u8; 4]]) -> ServiceSpec {
        let endpoints = eps
            .iter()
            .map(|&ip| EndpointSpec {
                serving: Some(true),
                ..EndpointSpec::ready(ip.into(), 8080)
            })
            .collect();
        ServiceSpec::cluster_ip(name, Protocol::Tcp, vip.into(), 80, endpoints)
    }

    fn sample() -> NodeProgram {
        let mut p = NodeProgram::default();
        p.ports.insert(
            "uplink".into(),
            PortSpec {
                ofport: 1,
                kind: PortKind::Uplink {
                    device: "0000:01:00.0".into(),
                },
                driver: DriverHint::Auto,
            },
        );
        p.ports.insert(
            "pod-a".into(),
            PortSpec {
                ofport: 3,
                kind: PortKind::Pod {
                    interface: "veth-a".into(),
                },
                driver: DriverHint::AfXdp,
            },
        );
        p.flows = vec![
            flow(0, 100, "in_port=3", 7, "goto_table:10"),
            flow(10, 50, "ip,nw_dst=10.244.1.5", 7, "output:3"),
        ];
        p.services.insert(
            "default/web:http".into(),
            svc("", [10, 96, 0, 10], &[[10, 244, 1, 5]]),
        );
        p.vteps
            .insert("node-b".into(), Ipv4Addr::new(192, 0, 2, 11));
        p.port_security.insert(
            3,
            PortSecurity {
                port: 0,
                mac: [0x0a, 0x58, 10, 244, 1, 5],
                ips: vec![Ipv4Addr::new(10, 244, 1, 5)],
            },
        );
        p.arp_responder
            .insert(Ipv4Addr::new(10, 244, 1, 1), [0x0a, 0x58, 10, 244, 1, 1]);
        p.settings.vni = 1;
        p.canonicalize();
        p
    }

    #[test]
    fn flow_text_round_trips() {
        let f = flow(
            10,
            50,
            "ip,nw_dst=10.244.1.5",
            0x2a,
            "ct(commit,zone=1,nat,table=20)",
        );
        assert_eq!(
            f.text(),
            "cookie=0x2a,table=10,priority=50,ip,nw_dst=10.244.1.5,actions=ct(commit,zone=1,nat,table=20)"
        );
        assert_eq!(Flow::parse(&f.text()), Some(f));
        let bare = flow(3, 0, "", 1, "drop");
        assert_eq!(bare.text(), "cookie=0x1,table=3,priority=0,actions=drop");
        assert_eq!(Flow::parse(&bare.text()), Some(bare));
        assert_eq!(Flow::parse("ip"), None);
    }

    #[test]
    fn diff_of_equal_programs_is_empty_and_apply_reaches_new() {
        let a = sample();
        assert!(diff(&a, &a).is_empty());
        let mut b = a.clone();
        b.flows[1].actions = "output:4".into();
        b.flows.push(flow(20, 1, "arp", 9, "output:2"));
        b.ports.remove("pod-a");
        b.port_security.clear();
        b.services.clear();
        b.vteps
            .insert("node-b".into(), Ipv4Addr::new(192, 0, 2, 12));
        b.canonicalize();
        let d = diff(&a, &b);
        assert_eq!(d.ports_removed, vec!["pod-a".to_string()]);
        assert_eq!(d.services.delete, vec!["default/web:http".to_string()]);
        assert_eq!(d.port_security_removed, vec![3]);
        assert_eq!(d.vteps_set.len(), 1);
        assert_eq!(
            d.flow_ops,
            vec![
                FlowOp::Add {
                    flow: "cookie=0x7,table=10,priority=50,ip,nw_dst=10.244.1.5,actions=output:4"
                        .into()
                },
                FlowOp::Add {
                    flow: "cookie=0x9,table=20,priority=1,arp,actions=output:2".into()
                },
            ]
        );
        assert_eq!(apply(&a, &d), b);
        // Non-canonical input (flows out of order) takes the map path and
        // reaches the same program.
        let mut unsorted = b.clone();
        unsorted.flows.reverse();
        assert_eq!(apply(&a, &diff(&a, &unsorted)), b);
        let back = diff(&b, &a);
        assert!(back
            .flow_ops
            .iter()
            .any(|o| matches!(o, FlowOp::Del { strict: true, .. })));
        assert_eq!(apply(&b, &back), a);
    }

    #[test]
    fn apply_reads_loose_ops() {
        let a = sample();
        let c = NodeChanges {
            flow_ops: vec![
                FlowOp::Mod {
                    flow: "table=10,ip actions=drop".into(),
                    strict: false,
                },
                FlowOp::Del {
                    match_: "table=0".into(),
                    strict: false,
                },
            ],
            ..Default::default()
        };
        let b = apply(&a, &c);
        assert_eq!(b.flows.len(), 1);
        assert_eq!(b.flows[0].actions, "drop");
    }

    #[test]
    fn changes_round_trip_as_json_and_from_args() {
        let a = NodeProgram::default();
        let mut d = diff(&a, &sample());
        d.generation = 3;
        d.expected_generation = Some(2);
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(NodeChanges::from_args(&[text]).unwrap(), d);
        let e = NodeChanges::from_args(&["{\"generation\":1,\"bogus\":2}".into()]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("bogus"), "{}", e.message);
        let p: NodeProgram =
            serde_json::from_str(&serde_json::to_string(&sample()).unwrap()).unwrap();
        assert_eq!(p, sample());
        assert!(Empty::from_args(&[]).is_ok());
    }

    #[test]
    fn replies_render() {
        let r = NodeCommitReply {
            generation: 4,
            counts: diff(&NodeProgram::default(), &sample()).counts(),
        };
        assert_eq!(
            r.render(),
            "generation 4: ports +2 -0, settings changed, vteps 1, neighbours 0, arp 1, port security 1, groups 0, flow ops 2, services +1 -0\n"
        );
        let s = NodeStatus {
            generation: 4,
            instance_id: "3f2a".into(),
            uptime_ms: 12_345,
            ports: BTreeMap::from([(
                "pod-a".to_string(),
                PortStatus {
                    ofport: 3,
                    up: true,
                    forwarding: false,
                },
            )]),
        };
        assert_eq!(
            s.render(),
            "generation 4\ninstance 3f2a\nuptime 12.345s\n  port   3 (pod-a): up, not forwarding\n"
        );
    }

    #[test]
    fn errors_name_the_item() {
        let e = item_error(
            ErrorCode::InvalidArgument,
            &CommitItem::FlowOp(2, "table=0,bogus=1,actions=drop".into()),
            "bogus=1: unknown match field",
        );
        assert_eq!(
            e.message,
            "node-commit refused at flow operation 2 (table=0,bogus=1,actions=drop): bogus=1: unknown match field; nothing was applied"
        );
        assert!(generation_conflict(5, 4)
            .message
            .contains("holds generation 5"));
    }

    #[test]
    fn cidr_helpers() {
        let c = Cidr::parse("10.244.1.1/24").unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 244, 1, 0));
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert!(c.overlaps(&Cidr::parse("10.244.0.0/16").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.244.2.0/24").unwrap()));
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"10.244.1.1/24\"");
        assert!(serde_json::from_str::<Cidr>("\"10.0.0.0/33\"").is_err());
    }

    fn arb_flow() -> impl Strategy<Value = Flow> {
        (
            0u8..4,
            prop_oneof![Just(0u16), Just(10), Just(100)],
            prop_oneof![
                Just(String::new()),
                Just("ip".to_string()),
                (0u8..4).prop_map(|i| format!("ip,nw_dst=10.0.0.{i}")),
                (1u16..4).prop_map(|p| format!("in_port={p}")),
            ],
            0u64..3,
            prop_oneof![
                Just("drop"),
                Just("output:1"),
                Just("ct(commit,zone=1,nat,table=2)")
            ],
        )
            .prop_map(|(t, p, m, c, a)| flow(t, p, &m, c, a))
    }

    fn arb_program() -> impl Strategy<Value = NodeProgram> {
        (
            prop::collection::btree_map(
                "[a-c]",
                (1u16..6, any::<bool>()).prop_map(|(o, pod)| PortSpec {
                    ofport: o,
                    kind: if pod {
                        PortKind::Pod {
                            interface: format!("veth{o}"),
                        }
                    } else {
                        PortKind::Host
                    },
                    driver: DriverHint::Auto,
                }),
                0..3,
            ),
            prop::collection::vec(arb_flow(), 0..8),
            prop::collection::btree_map(
                "s[a-c]",
                (0u8..3, prop::collection::vec(0u8..4, 0..3)),
                0..3,
            ),
            prop::collection::btree_map("n[a-c]", 0u8..3, 0..3),
            prop::collection::btree_map(3u16..6, 0u8..3, 0..3),
            prop::collection::btree_map(0u8..3, 0u8..3, 0..3),
            prop::collection::btree_map(0u32..3, 0u8..2, 0..2),
            (any::<bool>(), 0u32..3),
        )
            .prop_map(|(ports, flows, svcs, vteps, ps, arp, groups, (mtu, vni))| {
                let mut p = NodeProgram {
                    ports,
                    flows,
                    services: svcs
                        .into_iter()
                        .map(|(n, (vip, eps))| {
                            let eps: Vec<[u8; 4]> = eps.iter().map(|&e| [10, 244, 0, e]).collect();
                            (n.clone(), svc(&n, [10, 96, 0, vip], &eps))
                        })
                        .collect(),
                    vteps: vteps
                        .into_iter()
                        .map(|(n, i)| (n, Ipv4Addr::new(192, 0, 2, i)))
                        .collect(),
                    port_security: ps
                        .into_iter()
                        .map(|(port, i)| {
                            (
                                port,
                                PortSecurity {
                                    port,
                                    mac: [2, 0, 0, 0, 0, i],
                                    ips: vec![Ipv4Addr::new(10, 244, 0, i)],
                                },
                            )
                        })
                        .collect(),
                    neighbours: arp
                        .iter()
                        .map(|(&k, &v)| (Ipv4Addr::new(192, 0, 2, k), [2, 0, 0, 0, 1, v]))
                        .collect(),
                    arp_responder: arp
                        .into_iter()
                        .map(|(k, v)| (Ipv4Addr::new(10, 244, k, 1), [2, 0, 0, 0, 2, v]))
                        .collect(),
                    groups: groups
                        .into_iter()
                        .map(|(id, b)| {
                            (
                                id,
                                Group {
                                    id,
                                    cookie: u64::from(b),
                                    spec: format!("type=all,bucket=output:{b}"),
                                },
                            )
                        })
                        .collect(),
                    settings: NodeSettings {
                        mtu: if mtu { 1500 } else { 9000 },
                        vni,
                        ..Default::default()
                    },
                };
                p.canonicalize();
                p
            })
    }

    proptest! {
        #[test]
        fn apply_of_diff_reaches_the_new_program(a in arb_program(), b in arb_program()) {
            let d = diff(&a, &b);
            prop_assert_eq!(apply(&a, &d), b.clone());
            prop_assert_eq!(d.is_empty(), a == b);
            // And through JSON, as sluiced receives it.
            let wire: NodeChanges = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
            prop_assert_eq!(apply(&a, &wire), b);
        }

        /// The incremental apply equals the whole-program reference for
        /// diffs and for arbitrary operations: loose and strict deletes
        /// (held identities or not, items in another order), modifies,
        /// adds of held identities, group adds in flow text, Service
        /// upserts with unsorted lists; and, with the operations repeated
        /// past the in-place limit, through the map path too.
        #[test]
        fn apply_in_place_equals_the_reference(
            a in arb_program(),
            b in arb_program(),
            extra in prop::collection::vec((0u8..6, arb_flow(), any::<bool>()), 0..12),
            repeat in prop_oneof![Just(1usize), Just(12)],
        ) {
            let mut c = diff(&a, &b);
            for (kind, f, strict) in extra {
                c.flow_ops.push(match kind {
                    0 => FlowOp::Add { flow: f.text() },
                    1 => FlowOp::Del { match_: f.key_text(), strict },
                    2 => FlowOp::Del {
                        match_: format!("table={},{}", f.table, f.match_.split(',').rev().collect::<Vec<_>>().join(",")),
                        strict,
                    },
                    3 => FlowOp::Mod { flow: format!("{},actions=output:9", f.key_text()), strict },
                    4 => FlowOp::Add { flow: format!("group_id={},type=all,bucket=output:{}", f.table, f.priority) },
                    _ => FlowOp::Del { match_: format!("table={}", f.table), strict: false },
                });
            }
            c.flow_ops = c.flow_ops.iter().cycle().take(c.flow_ops.len() * repeat).cloned().collect();
            if let Some(s) = b.services.values().next() {
                let mut s = s.clone();
                s.endpoints.reverse();
                s.cluster_ips.push(Ipv4Addr::new(10, 96, 1, 1));
                s.cluster_ips.reverse();
                c.services.upsert.push(s);
            }
            let mut p = a.clone();
            apply_in_place(&mut p, &c);
            prop_assert_eq!(&p, &apply_reference(&a, &c));
            prop_assert_eq!(p, apply(&a, &c));
        }
    }
}
