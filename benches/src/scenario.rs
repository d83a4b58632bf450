//! Traffic scenarios: the frames a generator replays and the flow program
//! that forwards them, for Sluice and for the OVS-DPDK peer.
//!
//! Every scenario sends from OpenFlow port [`IN_PORT`] (the `net_pcap`
//! input) to port [`OUT_PORT`] (the `net_null` sink). Frames are 64 bytes
//! on the wire (60 in the pcap; the NIC would add the 4-byte FCS), except
//! Geneve frames, which carry a whole inner frame. One frame per distinct
//! flow, up to [`MAX_FRAMES`]; the generator replays the file forever
//! (`infinite_rx=1`), so with N flows every flow recurs every N packets.
//!
//! Addresses (all locally administered / private):
//! - pod A (the sender): MAC `02:00:00:00:00:01`, IPs from `10.244.0.1`
//!   upward; flow `j` uses source IP `10.244.0.1 + j / 60000` and source
//!   port `1024 + j % 60000`, so flows are distinct 5-tuples;
//! - pod B (the l2 receiver): MAC `02:00:00:00:00:02`, `10.244.255.2`;
//! - the router (l3): MAC `02:00:00:00:00:fe`, next hop `02:00:00:00:01:01`;
//!   route `i` (of [`L3_ROUTES`]) is `10.(1 + i / 256).(i % 256).0/24`;
//! - Services: VIP `s` is `10.96.0.0 + s`, TCP port 80; endpoint `e` of a
//!   service is `10.245.0.0 + 10 s + e`, port 8080;
//! - VTEPs: local `172.16.0.1`, remote `172.16.0.2`, VNI 5001.
//!
//! Thread-safety: pure functions.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};
use sluice_api::service::{EndpointSpec, Protocol, ServiceSpec, ServiceUpdate};
use sluice_api::stack::NeighSetRequest;
use sluice_api::tunnel::AddVtepRequest;

/// A control call the scenario needs before its program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setup {
    /// `add-vtep`.
    Vtep(AddVtepRequest),
    /// `neigh/set`.
    Neighbour(NeighSetRequest),
}

/// OpenFlow port of the traffic source in every peer.
pub const IN_PORT: u16 = 1;
/// OpenFlow port of the sink in every peer.
pub const OUT_PORT: u16 = 2;
/// Most frames written into one pcap (net_pcap loads them all into mbufs).
pub const MAX_FRAMES: usize = 1 << 20;
/// Routes in the l3 scenario.
pub const L3_ROUTES: u32 = 10_000;
/// Endpoints per Service.
pub const ENDPOINTS_PER_SERVICE: u32 = 10;
/// Most segments per connection in the `dnat` pcap: its SYN, then ACKs.
pub const DNAT_SEGMENTS: usize = 8;
/// Most frames of a `dnat` pcap while a connection still gets more than
/// its SYN: OVS preloads the pcap into its shared pool of 262,144 mbufs,
/// so with many connections each gets fewer ACKs (100k connections: SYN +
/// 1 ACK; 1M: the SYN only, which only Sluice can preload).
pub const DNAT_FRAME_BUDGET: usize = 240_000;
/// OpenFlow port of the Geneve tunnel port in the OVS peer's `br-int`.
pub const OVS_TUNNEL_PORT: u16 = 3;
/// OpenFlow port of the patch port to `br-phy` in the OVS peer's `br-int`
/// (the `mixed` layout).
pub const OVS_PATCH_PORT: u16 = 4;
/// Conntrack zone of the Service scenarios.
pub const SERVICE_ZONE: u16 = 1;
/// The remote node's pod CIDR (reached over Geneve).
pub const OVERLAY_PODS: &str = "10.246.0.0/16";
/// Table-0 entry of the Services in `mixed`: TCP to the Service CIDR only.
const MIXED_SERVICE_ENTRY: &str = "priority=150,tcp,nw_dst=10.96.0.0/12";
/// Frame length without FCS (64 bytes on the wire).
pub const FRAME_LEN: usize = 60;

/// Pod A's MAC.
pub const POD_A_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Pod B's MAC.
pub const POD_B_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// The router's MAC.
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
/// The next hop's MAC.
pub const NEXT_HOP_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
/// The remote VTEP's MAC.
pub const REMOTE_VTEP_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
/// Local VTEP address.
pub const LOCAL_VTEP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);
/// Remote VTEP address.
pub const REMOTE_VTEP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
/// Geneve VNI of the overlay.
pub const VNI: u32 = 5001;
/// Geneve UDP port.
pub const GENEVE_PORT: u16 = 6081;

/// The kinds of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// MAC forwarding pod A → pod B.
    L2,
    /// Routing by destination prefix over [`L3_ROUTES`] routes.
    L3,
    /// Pod → ClusterIP TCP connections: each connection's SYN, then
    /// [`DNAT_SEGMENTS`]` - 1` ACKs per connection, client direction only
    /// (which endpoint a switch picks is its own hash, so the endpoints'
    /// replies cannot be built in advance).
    Dnat,
    /// Pod → ClusterIP TCP SYNs, every packet a new connection.
    DnatNew,
    /// Pod → remote pod over Geneve.
    Encap,
    /// Geneve from the remote VTEP → local pod.
    Decap,
    /// A node's realistic mix, every 20 frames (see [`mixed_slot`]):
    /// 5 Service connections (`dnat`: each connection's SYN before its
    /// ACKs), 4 pod → pod on the node (`l2`), 4 routed out (`l3`), 3 pod →
    /// remote pod (`encap`), 2 remote pod → pod (`decap`), 1 ARP request
    /// and 1 ICMP echo.
    Mixed,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 7] = [
        Kind::L2,
        Kind::L3,
        Kind::Mixed,
        Kind::Dnat,
        Kind::DnatNew,
        Kind::Encap,
        Kind::Decap,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::L2 => "l2",
            Kind::L3 => "l3",
            Kind::Dnat => "dnat",
            Kind::DnatNew => "dnat-new",
            Kind::Encap => "encap",
            Kind::Decap => "decap",
            Kind::Mixed => "mixed",
        }
    }

    /// Parses [`Kind::name`].
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Whether the scenario needs Services (conntrack + NAT).
    pub fn uses_services(self) -> bool {
        matches!(self, Kind::Dnat | Kind::DnatNew | Kind::Mixed)
    }

    /// Whether the scenario needs the Geneve overlay (VTEPs).
    pub fn uses_overlay(self) -> bool {
        matches!(self, Kind::Encap | Kind::Decap | Kind::Mixed)
    }
}

/// What frame `j` of the `mixed` scenario is, and its index among the
/// frames of that part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixedPart {
    /// An ARP request.
    Arp,
    /// An ICMP echo request, routed.
    Icmp,
    /// Pod → pod on the node.
    L2,
    /// Routed out by prefix.
    L3,
    /// Frame `k` of the Service connections.
    Dnat(u32),
    /// Pod → remote pod over Geneve.
    Encap,
    /// Geneve from the remote VTEP.
    Decap,
}

/// Frames per round of the `mixed` scenario.
pub const MIXED_ROUND: u32 = 20;
/// Service frames per round of the `mixed` scenario.
const MIXED_DNAT: u32 = 5;
/// Slot of the first Service frame in a round.
const MIXED_DNAT_FIRST: u32 = 10;

/// The part frame `j` of the `mixed` scenario belongs to.
pub fn mixed_slot(j: u32) -> MixedPart {
    let slot = j % MIXED_ROUND;
    match slot {
        0 => MixedPart::Arp,
        1 => MixedPart::Icmp,
        2..=5 => MixedPart::L2,
        6..=9 => MixedPart::L3,
        10..=14 => MixedPart::Dnat((j / MIXED_ROUND) * MIXED_DNAT + slot - MIXED_DNAT_FIRST),
        15..=17 => MixedPart::Encap,
        _ => MixedPart::Decap,
    }
}

/// Number of Service frames among the first `n` frames of `mixed`.
fn mixed_dnat_frames(n: u32) -> u32 {
    (n / MIXED_ROUND) * MIXED_DNAT
        + (n % MIXED_ROUND)
            .saturating_sub(MIXED_DNAT_FIRST)
            .min(MIXED_DNAT)
}

/// One scenario: a kind with its scale parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// Traffic kind.
    pub kind: Kind,
    /// Distinct flows (client connections for `dnat`).
    pub flows: u32,
    /// Services (only `dnat`, `dnat-new`).
    pub services: u32,
}

/// A flow program in `ovs-ofctl` syntax: groups first, then flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowProgram {
    /// `add-group` lines.
    pub groups: Vec<String>,
    /// `add-flow` lines.
    pub flows: Vec<String>,
}

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn add(ip: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip).wrapping_add(n))
}

/// Source address and port of flow `j`.
pub fn client(j: u32) -> (Ipv4Addr, u16) {
    (
        add(Ipv4Addr::new(10, 244, 0, 1), j / 60_000),
        1024 + (j % 60_000) as u16,
    )
}

/// Destination prefix (network address) of l3 route `i`.
pub fn route(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, (1 + i / 256) as u8, (i % 256) as u8, 0)
}

/// VIP of Service `s`.
pub fn vip(s: u32) -> Ipv4Addr {
    add(Ipv4Addr::new(10, 96, 0, 0), s)
}

/// Endpoint `e` of Service `s`.
pub fn endpoint(s: u32, e: u32) -> Ipv4Addr {
    add(Ipv4Addr::new(10, 245, 0, 0), s * ENDPOINTS_PER_SERVICE + e)
}

fn pad(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < FRAME_LEN {
        f.resize(FRAME_LEN, 0);
    }
    f
}

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], s: Ipv4Addr, d: Ipv4Addr, sp: u16, dp: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(s.octets(), d.octets(), 64)
        .udp(sp, dp);
    let payload = [0u8; FRAME_LEN - 42];
    let mut f = Vec::with_capacity(b.size(payload.len()));
    // Writing into a Vec cannot fail and the sizes are far below limits.
    let _ = b.write(&mut f, &payload);
    pad(f)
}

/// Initial sequence number of the clients.
const CLIENT_ISN: u32 = 1_000;
/// Initial sequence number of the endpoints.
const SERVER_ISN: u32 = 50_000;

/// A client TCP segment: a SYN (`syn`), or a pure ACK of an established
/// connection whose sequence numbers stay valid for a conntrack with TCP
/// window tracking however often the pcap is replayed (a replay is a
/// retransmission).
fn tcp(s: Ipv4Addr, d: Ipv4Addr, sp: u16, dp: u16, syn: bool, dst_mac: [u8; 6]) -> Vec<u8> {
    let (seq, ack) = (CLIENT_ISN + u32::from(!syn), SERVER_ISN + 1);
    let b = PacketBuilder::ethernet2(POD_A_MAC, dst_mac)
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(sp, dp, seq, 65_000);
    let b = if syn { b.syn() } else { b.ack(ack) };
    let mut f = Vec::with_capacity(FRAME_LEN);
    let _ = b.write(&mut f, &[]);
    pad(f)
}

fn icmp_echo(j: u32, d: Ipv4Addr) -> Vec<u8> {
    let (s, _) = client(j);
    let b = PacketBuilder::ethernet2(POD_A_MAC, ROUTER_MAC)
        .ipv4(s.octets(), d.octets(), 64)
        .icmpv4_echo_request((j & 0xffff) as u16, (j >> 16) as u16);
    let mut f = Vec::with_capacity(FRAME_LEN);
    let _ = b.write(&mut f, &[0u8; FRAME_LEN - 42]);
    pad(f)
}

/// An ARP request from `spa` for `tpa`, broadcast.
pub fn arp_request(spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&POD_A_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&POD_A_MAC);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    pad(f)
}

/// Wraps `inner` in Ethernet/IPv4/UDP/Geneve from the remote VTEP to the
/// local one (no options; the outer UDP checksum is zero, as allowed).
pub fn geneve(inner: &[u8], src_port: u16) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + inner.len());
    // Version 0, no options, protocol Transparent Ethernet Bridging.
    payload.extend_from_slice(&[0, 0, 0x65, 0x58]);
    payload.extend_from_slice(&(VNI << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(REMOTE_VTEP_MAC, ROUTER_MAC)
        .ipv4(REMOTE_VTEP.octets(), LOCAL_VTEP.octets(), 64)
        .udp(src_port, GENEVE_PORT);
    let mut f = Vec::with_capacity(b.size(payload.len()));
    let _ = b.write(&mut f, &payload);
    f
}

/// Largest `service-update` request the runner sends: sluiced's control
/// socket takes requests of up to 64 MiB, so 10k Services x 10 endpoints
/// (about 3.5 MB of JSON) and the growth to 100k (about 32 MB) are each
/// one atomic update.
pub const SERVICE_BATCH_BYTES: usize = 60 << 20;

/// The name of Service `s` in the Service table.
pub fn service_name(s: u32) -> String {
    format!("bench/svc-{s}:http")
}

/// Service `s` as a `service-update` upsert entry: ClusterIP [`vip`]`(s)`
/// TCP port 80, [`ENDPOINTS_PER_SERVICE`] endpoints [`endpoint`]`(s, e)`
/// port 8080; `replace` swaps endpoint 9 for `10.255.255.254` (one
/// endpoint change).
pub fn service_spec(s: u32, replace: bool) -> ServiceSpec {
    let endpoints = (0..ENDPOINTS_PER_SERVICE)
        .map(|e| {
            let ip = if replace && e + 1 == ENDPOINTS_PER_SERVICE {
                Ipv4Addr::new(10, 255, 255, 254)
            } else {
                endpoint(s, e)
            };
            EndpointSpec::ready(ip, 8080)
        })
        .collect();
    ServiceSpec::cluster_ip(service_name(s), Protocol::Tcp, vip(s), 80, endpoints)
}

/// One `service-update` batch that upserts `specs`.
pub fn upsert(specs: Vec<ServiceSpec>) -> ServiceUpdate {
    ServiceUpdate {
        upsert: specs,
        ..ServiceUpdate::default()
    }
}

/// `service-update` batches for Services `range`, each at most
/// `max_bytes` of JSON (at least one Service per batch).
pub fn service_batches(range: std::ops::Range<u32>, max_bytes: usize) -> Vec<ServiceUpdate> {
    let mut out = Vec::new();
    let mut cur: Vec<ServiceSpec> = Vec::new();
    let mut size = 0;
    for s in range {
        let spec = service_spec(s, false);
        let len = serde_json::to_string(&spec).map_or(0, |t| t.len()) + 1;
        if !cur.is_empty() && size + len + 16 > max_bytes {
            out.push(upsert(std::mem::take(&mut cur)));
            size = 0;
        }
        size += len;
        cur.push(spec);
    }
    if !cur.is_empty() {
        out.push(upsert(cur));
    }
    out
}

/// `n` distinct /32 host routes (l3 flows), for measuring the memory a flow
/// takes.
pub fn host_route_flows(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "priority=32,ip,nw_dst={} actions=mod_dl_dst:{},output:{OUT_PORT}",
                add(Ipv4Addr::new(10, 128, 0, 0), i),
                mac(NEXT_HOP_MAC)
            )
        })
        .collect()
}

impl Scenario {
    /// A scenario with `flows` flows and, for Service kinds, `services`
    /// Services (clamped to at least 1 each).
    pub fn new(kind: Kind, flows: u32, services: u32) -> Self {
        Self {
            kind,
            flows: flows.max(1),
            services: if kind.uses_services() {
                services.max(1)
            } else {
                0
            },
        }
    }

    /// A short label such as `l3/10000` or `dnat/1000x10`.
    pub fn label(&self) -> String {
        if self.kind.uses_services() {
            format!("{}/{}f/{}svc", self.kind.name(), self.flows, self.services)
        } else {
            format!("{}/{}f", self.kind.name(), self.flows)
        }
    }

    /// Segments per connection in a `dnat` pcap: [`DNAT_SEGMENTS`], fewer
    /// when that would exceed [`DNAT_FRAME_BUDGET`] frames, at least 1.
    pub fn dnat_segments(&self) -> usize {
        (DNAT_FRAME_BUDGET / self.flows.max(1) as usize).clamp(1, DNAT_SEGMENTS)
    }

    /// Number of frames in the pcap.
    pub fn frame_count(&self) -> usize {
        let n = match self.kind {
            Kind::Dnat => self.flows as usize * self.dnat_segments(),
            _ => self.flows as usize,
        };
        n.clamp(1, MAX_FRAMES)
    }

    /// Frame `j` of the scenario.
    pub fn frame(&self, j: u32) -> Vec<u8> {
        let (src, sport) = client(j);
        match self.kind {
            Kind::L2 => l2_frame(src, sport),
            Kind::L3 => self.l3_frame(j),
            // frame_count() is flows x dnat_segments().
            Kind::Dnat => self.service_segment(j, self.flows),
            Kind::DnatNew => tcp(src, vip(j % self.services), sport, 80, true, ROUTER_MAC),
            Kind::Encap => self.encap_frame(j),
            Kind::Decap => self.decap_frame(j),
            Kind::Mixed => match mixed_slot(j) {
                MixedPart::Arp => arp_request(src, Ipv4Addr::new(10, 244, 0, 254)),
                MixedPart::Icmp => icmp_echo(j, route(j % L3_ROUTES)),
                MixedPart::L2 => l2_frame(src, sport),
                MixedPart::L3 => self.l3_frame(j),
                MixedPart::Dnat(k) => self.service_segment(k, self.mixed_connections()),
                MixedPart::Encap => self.encap_frame(j),
                MixedPart::Decap => self.decap_frame(j),
            },
        }
    }

    /// Service frame `k` of `conns` client connections: the SYN of every
    /// connection first (`k < conns`), then their ACKs, round-robin.
    fn service_segment(&self, k: u32, conns: u32) -> Vec<u8> {
        let c = k % conns;
        let (src, sport) = client(c);
        tcp(
            src,
            vip(c % self.services),
            sport,
            80,
            k < conns,
            ROUTER_MAC,
        )
    }

    fn encap_frame(&self, j: u32) -> Vec<u8> {
        let (src, sport) = client(j);
        udp(
            POD_A_MAC,
            ROUTER_MAC,
            src,
            Ipv4Addr::new(10, 246, 0, 2),
            sport,
            5001,
        )
    }

    fn decap_frame(&self, j: u32) -> Vec<u8> {
        let (_, sport) = client(j);
        let inner = udp(
            [2, 0, 0, 0, 3, 3],
            POD_A_MAC,
            Ipv4Addr::new(10, 246, 0, 2),
            add(Ipv4Addr::new(10, 244, 0, 1), j / 60_000),
            sport,
            5001,
        );
        geneve(&inner, sport)
    }

    /// Service connections of a `mixed` pcap: its Service frames are each
    /// connection's SYN and then ACKs, [`DNAT_SEGMENTS`] frames per
    /// connection (at least one connection).
    pub fn mixed_connections(&self) -> u32 {
        (mixed_dnat_frames(self.frame_count() as u32) / DNAT_SEGMENTS as u32).max(1)
    }

    fn l3_frame(&self, j: u32) -> Vec<u8> {
        let (src, sport) = client(j);
        let r = j % L3_ROUTES;
        let host = 1 + (j / L3_ROUTES) % 254;
        udp(POD_A_MAC, ROUTER_MAC, src, add(route(r), host), sport, 5001)
    }

    /// Every frame of the pcap, in order.
    pub fn frames(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        (0..self.frame_count() as u32).map(|j| self.frame(j))
    }

    fn l2_flows(out: &mut Vec<String>) {
        out.push(format!(
            "priority=100,in_port={IN_PORT},dl_dst={} actions=output:{OUT_PORT}",
            mac(POD_B_MAC)
        ));
    }

    fn l3_flows(out: &mut Vec<String>) {
        for i in 0..L3_ROUTES {
            out.push(format!(
                "priority=24,ip,dl_dst={},nw_dst={}/24 actions=mod_dl_src:{},mod_dl_dst:{},dec_ttl,output:{OUT_PORT}",
                mac(ROUTER_MAC),
                route(i),
                mac(ROUTER_MAC),
                mac(NEXT_HOP_MAC),
            ));
        }
    }

    /// The OVN-style Service program (conntrack zone 1, one select group
    /// per Service with `selection_method=dp_hash` as OVN's load balancers
    /// use: the datapath hashes and recirculates, so a new connection is a
    /// megaflow hit, not an upcall as with `hash`, whose megaflows match
    /// the whole 5-tuple; ct_mark bit 1 for connections we DNATed, so that
    /// a replayed segment that conntrack still calls `+new` is forwarded).
    /// `exec` adds the `exec(set_field:1->ct_mark)`.
    fn service_program(&self, exec: bool) -> FlowProgram {
        self.service_program_for(exec, "priority=100,tcp")
    }

    /// [`Scenario::service_program`] sending the packets `entry` matches
    /// (`priority=...,match`) in table 0 through conntrack.
    fn service_program_for(&self, exec: bool, entry: &str) -> FlowProgram {
        let mut p = FlowProgram::default();
        let mark = if exec {
            ",exec(set_field:1->ct_mark)"
        } else {
            ""
        };
        for s in 0..self.services {
            let mut g = format!("group_id={},type=select,selection_method=dp_hash", s + 1);
            for e in 0..ENDPOINTS_PER_SERVICE {
                let _ = write!(
                    g,
                    ",bucket=bucket_id:{e},weight:100,actions=ct(commit,zone=1,table=2,nat(dst={}:8080){mark})",
                    endpoint(s, e)
                );
            }
            p.groups.push(g);
            p.flows.push(format!(
                "table=1,priority=100,ct_state=+new+trk,tcp,nw_dst={},tp_dst=80 actions=group:{}",
                vip(s),
                s + 1
            ));
        }
        p.flows
            .push(format!("table=0,{entry} actions=ct(zone=1,table=1,nat)"));
        p.flows.push(format!(
            "table=1,priority=200,ct_state=+est+trk,tcp actions=output:{OUT_PORT}"
        ));
        p.flows.push(format!(
            "table=1,priority=150,ct_state=+new+trk,ct_mark=1,tcp actions=output:{OUT_PORT}"
        ));
        p.flows
            .push(format!("table=2,priority=0 actions=output:{OUT_PORT}"));
        p
    }

    /// The program for Sluice's flow pipeline (ovs-ofctl syntax). For the
    /// Service kinds it is Sluice's own pattern: every TCP packet through
    /// `ct(commit,nat)` with a *bare* `nat`, which makes the conntrack ask
    /// the Service table (programmed with [`Scenario::service_update`]) for
    /// a new connection's endpoint; the rest is the same as OVS's.
    pub fn sluice_program(&self) -> FlowProgram {
        match self.kind {
            Kind::Dnat | Kind::DnatNew => Self::sluice_service_flows("priority=100,tcp"),
            Kind::Mixed => {
                let mut p = Self::sluice_service_flows(MIXED_SERVICE_ENTRY);
                Self::l2_flows(&mut p.flows);
                Self::l3_flows(&mut p.flows);
                Self::arp_flows(&mut p.flows);
                Self::sluice_encap_flows(&mut p.flows);
                Self::sluice_decap_flows(&mut p.flows);
                p
            }
            _ => self.common_program(),
        }
    }

    /// Sluice's Service pattern: what `entry` matches through
    /// `ct(commit,nat)` with a bare `nat`, then out.
    fn sluice_service_flows(entry: &str) -> FlowProgram {
        FlowProgram {
            groups: Vec::new(),
            flows: vec![
                format!("table=0,{entry} actions=ct(zone={SERVICE_ZONE},commit,table=1,nat)"),
                format!("table=1,priority=0 actions=output:{OUT_PORT}"),
            ],
        }
    }

    /// The `service-update` batches that install this scenario's Services
    /// in Sluice's Service table (none for other kinds); see
    /// [`service_batches`].
    pub fn service_update(&self) -> Vec<ServiceUpdate> {
        if self.kind.uses_services() {
            service_batches(0..self.services, SERVICE_BATCH_BYTES)
        } else {
            Vec::new()
        }
    }

    /// Extra `[datapath]` configuration lines Sluice needs for the
    /// scenario (the local VTEP for the overlay kinds).
    pub fn sluice_config(&self) -> String {
        if self.kind.uses_overlay() {
            format!("vtep_ip = {LOCAL_VTEP}/24\n")
        } else {
            String::new()
        }
    }

    /// Control-socket calls to make before the flow program (the remote
    /// VTEP for the overlay kinds).
    pub fn sluice_setup(&self) -> Vec<Setup> {
        if !self.kind.uses_overlay() {
            return Vec::new();
        }
        vec![
            Setup::Vtep(AddVtepRequest {
                node: "node-b".into(),
                ip: REMOTE_VTEP,
            }),
            // net_null answers no ARP: pin the remote VTEP's MAC.
            Setup::Neighbour(NeighSetRequest {
                ip: REMOTE_VTEP,
                mac: REMOTE_VTEP_MAC,
            }),
        ]
    }

    /// The equivalent program for OVS (`ovs-ofctl -O OpenFlow15`): the
    /// OVN pattern for Services; for the overlay kinds the flows of
    /// `br-int` (the tunnel itself is OVS's Geneve port, see
    /// [`crate::peer::ovs_layout`]). `None` when the runner has no OVS
    /// configuration for the kind.
    pub fn ovs_program(&self) -> Option<FlowProgram> {
        let mut p = match self.kind {
            Kind::Dnat | Kind::DnatNew => return Some(self.service_program(true)),
            Kind::Mixed => {
                let mut p = self.service_program_for(true, MIXED_SERVICE_ENTRY);
                Self::l2_flows(&mut p.flows);
                Self::l3_flows(&mut p.flows);
                Self::arp_flows(&mut p.flows);
                p
            }
            Kind::Encap | Kind::Decap => FlowProgram::default(),
            _ => return Some(self.common_program()),
        };
        if matches!(self.kind, Kind::Encap | Kind::Mixed) {
            p.flows.push(format!(
                "priority=100,in_port={IN_PORT},ip,nw_dst={OVERLAY_PODS} actions=output:{OVS_TUNNEL_PORT}"
            ));
        }
        if matches!(self.kind, Kind::Decap | Kind::Mixed) {
            p.flows.push(format!(
                "priority=100,in_port={OVS_TUNNEL_PORT},tun_id={VNI},dl_dst={} actions=output:{OUT_PORT}",
                mac(POD_A_MAC)
            ));
        }
        Some(p)
    }

    fn arp_flows(out: &mut Vec<String>) {
        out.push(format!("priority=50,arp actions=output:{OUT_PORT}"));
    }

    fn sluice_encap_flows(out: &mut Vec<String>) {
        out.push(format!(
            "priority=100,ip,nw_dst={OVERLAY_PODS} actions=set_field:{VNI}->tun_id,set_field:{REMOTE_VTEP}->tun_dst,tnl_push,output:{OUT_PORT}"
        ));
    }

    fn sluice_decap_flows(out: &mut Vec<String>) {
        out.push(format!(
            "priority=200,udp,nw_dst={LOCAL_VTEP},tp_dst={GENEVE_PORT} actions=tnl_pop"
        ));
        out.push(format!(
            "priority=90,tun_id={VNI},dl_dst={} actions=output:{OUT_PORT}",
            mac(POD_A_MAC)
        ));
    }

    fn common_program(&self) -> FlowProgram {
        let mut p = FlowProgram::default();
        match self.kind {
            Kind::L2 => Self::l2_flows(&mut p.flows),
            Kind::L3 => Self::l3_flows(&mut p.flows),
            Kind::Encap => Self::sluice_encap_flows(&mut p.flows),
            Kind::Decap => Self::sluice_decap_flows(&mut p.flows),
            Kind::Mixed | Kind::Dnat | Kind::DnatNew => {}
        }
        p
    }
}

/// The L2 workload's frame: UDP from pod A's MAC and `src:sport` to pod B
/// (10.244.255.2:5001).
fn l2_frame(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    udp(
        POD_A_MAC,
        POD_B_MAC,
        src,
        Ipv4Addr::new(10, 244, 255, 2),
        sport,
        5001,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn parse(f: &[u8]) -> SlicedPacket<'_> {
        SlicedPacket::from_ethernet(f).expect("etherparse parses our frame")
    }

    #[test]
    fn l2_frames_are_64_bytes_and_distinct_flows() {
        let sc = Scenario::new(Kind::L2, 1000, 0);
        let frames: Vec<_> = sc.frames().collect();
        assert_eq!(frames.len(), 1000);
        let mut tuples = std::collections::HashSet::new();
        for f in &frames {
            assert_eq!(f.len(), FRAME_LEN);
            let p = parse(f);
            let Some(NetSlice::Ipv4(ip)) = &p.net else {
                panic!("not IPv4")
            };
            let Some(TransportSlice::Udp(u)) = &p.transport else {
                panic!("not UDP")
            };
            assert_eq!(
                ip.header().destination_addr(),
                Ipv4Addr::new(10, 244, 255, 2)
            );
            tuples.insert((ip.header().source_addr(), u.source_port()));
        }
        assert_eq!(tuples.len(), 1000);
    }

    #[test]
    fn l3_frames_hit_their_route() {
        let sc = Scenario::new(Kind::L3, 20_000, 0);
        for j in [0u32, 1, 9_999, 10_000, 19_999] {
            let f = sc.frame(j);
            let p = parse(&f);
            let Some(NetSlice::Ipv4(ip)) = &p.net else {
                panic!("not IPv4")
            };
            let d = u32::from(ip.header().destination_addr()) & 0xffff_ff00;
            assert_eq!(Ipv4Addr::from(d), route(j % L3_ROUTES));
            assert_eq!(ip.header().ttl(), 64);
        }
        assert_eq!(sc.sluice_program().flows.len(), L3_ROUTES as usize);
    }

    #[test]
    fn dnat_frames_are_established_client_segments() {
        let sc = Scenario::new(Kind::Dnat, 100, 10);
        assert_eq!(sc.frame_count(), 100 * DNAT_SEGMENTS);
        let syn = sc.frame(13);
        let p = parse(&syn);
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        assert!(t.syn() && !t.ack());
        let f = sc.frame(113);
        let p = parse(&f);
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        assert_eq!(t.destination_port(), 80);
        assert!(t.ack() && !t.syn());
        assert_eq!(t.sequence_number(), CLIENT_ISN + 1);
        assert_eq!(t.acknowledgment_number(), SERVER_ISN + 1);
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().destination_addr(), vip(3));
        let prog = sc.ovs_program().unwrap();
        assert_eq!(prog.groups.len(), 10);
        assert!(prog.groups[0].contains("exec(set_field:1->ct_mark)"));
        // Sluice: no groups, a bare `nat` that consults the Service table.
        let sl = sc.sluice_program();
        assert!(sl.groups.is_empty());
        assert_eq!(
            sl.flows[0],
            "table=0,priority=100,tcp actions=ct(zone=1,commit,table=1,nat)"
        );
        assert_eq!(sc.service_update().len(), 1);
        assert!(Scenario::new(Kind::L3, 10, 0).service_update().is_empty());
    }

    #[test]
    fn dnat_segments_shrink_with_connections() {
        assert_eq!(Scenario::new(Kind::Dnat, 1_000, 10).frame_count(), 8_000);
        assert_eq!(Scenario::new(Kind::Dnat, 100_000, 10).dnat_segments(), 2);
        assert_eq!(
            Scenario::new(Kind::Dnat, 100_000, 10).frame_count(),
            200_000
        );
        let big = Scenario::new(Kind::Dnat, 1_000_000, 10);
        assert_eq!(big.dnat_segments(), 1);
        assert_eq!(big.frame_count(), 1_000_000);
        // With one segment every frame is its connection's SYN.
        let f = big.frame(999_999);
        let p = parse(&f);
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        assert!(t.syn());
    }

    #[test]
    fn service_update_batches_follow_the_table_format() {
        let spec = service_spec(7, false);
        let j = serde_json::to_value(&spec).unwrap();
        assert_eq!(j["name"], "bench/svc-7:http");
        assert_eq!(j["protocol"], "tcp");
        assert_eq!(j["port"], 80);
        assert_eq!(j["cluster_ips"], serde_json::json!(["10.96.0.7"]));
        assert_eq!(spec.endpoints.len(), ENDPOINTS_PER_SERVICE as usize);
        assert_eq!(j["endpoints"][0]["ip"], "10.245.0.70");
        assert_eq!(j["endpoints"][0]["port"], 8080);
        let changed = service_spec(7, true);
        assert_eq!(changed.endpoints[9].ip, Ipv4Addr::new(10, 255, 255, 254));
        assert_eq!(changed.endpoints[8], spec.endpoints[8]);

        // 10k Services are one update; under a small limit they split,
        // every Service exactly once, in order.
        assert_eq!(service_batches(0..10_000, SERVICE_BATCH_BYTES).len(), 1);
        let small = 900 * 1024;
        let batches = service_batches(0..10_000, small);
        assert!(batches.len() > 1);
        let mut next = 0;
        for b in &batches {
            assert!(
                serde_json::to_string(b).unwrap().len() <= small,
                "batch too large"
            );
            assert!(b.delete.is_empty(), "only upsert");
            for spec in &b.upsert {
                assert_eq!(spec.name, service_name(next));
                next += 1;
            }
        }
        assert_eq!(next, 10_000);
        // A limit smaller than one Service still sends each one.
        assert_eq!(service_batches(5..8, 10).len(), 3);
        assert!(service_batches(0..0, 100).is_empty());
    }

    #[test]
    fn host_routes_are_distinct() {
        let f = host_route_flows(70_000);
        assert_eq!(f.len(), 70_000);
        assert!(f[0].contains("nw_dst=10.128.0.0 "));
        assert!(f[69_999].contains("nw_dst=10.129.17.111 "));
        let set: std::collections::HashSet<_> = f.iter().collect();
        assert_eq!(set.len(), f.len());
    }

    #[test]
    fn dnat_new_frames_are_syns() {
        let sc = Scenario::new(Kind::DnatNew, 5, 3);
        let f4 = sc.frame(4);
        let p = parse(&f4);
        let Some(TransportSlice::Tcp(t)) = &p.transport else {
            panic!("not TCP")
        };
        assert!(t.syn() && !t.ack());
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().destination_addr(), vip(1));
    }

    #[test]
    fn mixed_round_has_every_part_in_its_share() {
        let sc = Scenario::new(Kind::Mixed, 400, 7);
        assert_eq!(sc.services, 7);
        assert_eq!(sc.label(), "mixed/400f/7svc");
        let (mut arp, mut icmp, mut l2, mut l3, mut dnat, mut enc, mut dec) = (0, 0, 0, 0, 0, 0, 0);
        for (j, f) in sc.frames().enumerate() {
            let p = parse(&f);
            let eth = etherparse::Ethernet2Header::from_slice(&f).unwrap().0;
            match mixed_slot(j as u32) {
                MixedPart::Arp => {
                    assert_eq!(&f[12..14], &[0x08, 0x06]);
                    assert_eq!(eth.destination, [0xff; 6]);
                    arp += 1;
                }
                MixedPart::Icmp => {
                    assert!(matches!(p.transport, Some(TransportSlice::Icmpv4(_))));
                    icmp += 1;
                }
                MixedPart::L2 => {
                    assert_eq!(eth.destination, POD_B_MAC);
                    l2 += 1;
                }
                MixedPart::L3 => {
                    let Some(NetSlice::Ipv4(ip)) = &p.net else {
                        panic!("not IPv4")
                    };
                    assert_eq!(ip.header().destination_addr().octets()[0], 10);
                    assert!(ip.header().destination_addr().octets()[1] <= 40);
                    l3 += 1;
                }
                MixedPart::Dnat(_) => {
                    let Some(NetSlice::Ipv4(ip)) = &p.net else {
                        panic!("not IPv4")
                    };
                    assert_eq!(ip.header().destination_addr().octets()[..2], [10, 96]);
                    assert!(matches!(p.transport, Some(TransportSlice::Tcp(_))));
                    dnat += 1;
                }
                MixedPart::Encap => {
                    let Some(NetSlice::Ipv4(ip)) = &p.net else {
                        panic!("not IPv4")
                    };
                    assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(10, 246, 0, 2));
                    enc += 1;
                }
                MixedPart::Decap => {
                    let Some(TransportSlice::Udp(u)) = &p.transport else {
                        panic!("not UDP")
                    };
                    assert_eq!(u.destination_port(), GENEVE_PORT);
                    dec += 1;
                }
            }
        }
        assert_eq!(
            (arp, icmp, l2, l3, dnat, enc, dec),
            (20, 20, 80, 80, 100, 60, 40)
        );
        assert_eq!(mixed_dnat_frames(400), 100);
        assert_eq!(mixed_dnat_frames(13), 3);
        assert_eq!(mixed_dnat_frames(39), 10);
    }

    #[test]
    fn mixed_connections_send_their_syn_before_their_acks() {
        let sc = Scenario::new(Kind::Mixed, 1000, 3);
        let conns = sc.mixed_connections();
        assert_eq!(conns, 250 / DNAT_SEGMENTS as u32);
        let mut seen: std::collections::HashMap<(Ipv4Addr, u16), (bool, u32)> =
            std::collections::HashMap::new();
        for (j, f) in sc.frames().enumerate() {
            if !matches!(mixed_slot(j as u32), MixedPart::Dnat(_)) {
                continue;
            }
            let p = parse(&f);
            let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) = (&p.net, &p.transport)
            else {
                panic!("frame {j} is not IPv4/TCP")
            };
            let key = (ip.header().source_addr(), t.source_port());
            let e = seen.entry(key).or_insert((false, 0));
            if t.syn() {
                assert!(
                    !e.0 && e.1 == 0,
                    "frame {j}: a second SYN or a SYN after ACKs"
                );
                e.0 = true;
            } else {
                assert!(e.0, "frame {j}: an ACK before its connection's SYN");
                e.1 += 1;
            }
            // The connection's Service never changes.
            let s = u32::from(ip.header().destination_addr()) - u32::from(vip(0));
            assert!(s < 3);
        }
        assert_eq!(seen.len() as u32, conns);
        assert!(
            seen.values().all(|&(syn, acks)| syn && acks >= 6),
            "{seen:?}"
        );
    }

    #[test]
    fn mixed_programs_have_services_overlay_and_routes() {
        let sc = Scenario::new(Kind::Mixed, 100, 4);
        assert!(sc.sluice_config().contains("vtep_ip = 172.16.0.1/24"));
        assert_eq!(sc.sluice_setup().len(), 2);
        let upd = sc.service_update();
        assert_eq!(upd.len(), 1);
        assert_eq!(upd[0].upsert.len(), 4);
        let sl = sc.sluice_program().flows.join("\n");
        for want in [
            "table=0,priority=150,tcp,nw_dst=10.96.0.0/12 actions=ct(zone=1,commit,table=1,nat)",
            "tnl_push,output:2",
            "actions=tnl_pop",
            "priority=90,tun_id=5001,dl_dst=02:00:00:00:00:01 actions=output:2",
            "priority=50,arp actions=output:2",
            "dl_dst=02:00:00:00:00:02 actions=output:2",
            "nw_dst=10.40.15.0/24",
        ] {
            assert!(sl.contains(want), "sluice program lacks {want}");
        }
        let ovs = sc.ovs_program().unwrap();
        assert_eq!(ovs.groups.len(), 4);
        let o = ovs.flows.join("\n");
        for want in [
            "table=0,priority=150,tcp,nw_dst=10.96.0.0/12 actions=ct(zone=1,table=1,nat)",
            "in_port=1,ip,nw_dst=10.246.0.0/16 actions=output:3",
            "in_port=3,tun_id=5001,dl_dst=02:00:00:00:00:01 actions=output:2",
            "priority=50,arp actions=output:2",
        ] {
            assert!(o.contains(want), "ovs program lacks {want}");
        }
        assert!(!o.contains("tnl_pop") && !o.contains("tnl_push"));
    }

    #[test]
    fn decap_frames_are_geneve_with_inner_frame() {
        let sc = Scenario::new(Kind::Decap, 3, 0);
        assert!(sc.sluice_config().contains("vtep_ip = 172.16.0.1/24"));
        assert!(matches!(&sc.sluice_setup()[0], Setup::Vtep(v) if v.node == "node-b"));
        assert_eq!(
            sc.sluice_setup()[1],
            Setup::Neighbour(NeighSetRequest {
                ip: Ipv4Addr::new(172, 16, 0, 2),
                mac: [2, 0, 0, 0, 2, 2],
            })
        );
        let f = sc.frame(2);
        let p = parse(&f);
        let Some(TransportSlice::Udp(u)) = &p.transport else {
            panic!("not UDP")
        };
        assert_eq!(u.destination_port(), GENEVE_PORT);
        let payload = u.payload();
        assert_eq!(&payload[2..4], &[0x65, 0x58]);
        assert_eq!(
            u32::from_be_bytes([0, payload[4], payload[5], payload[6]]),
            VNI
        );
        let inner = parse(&payload[8..]);
        assert!(matches!(inner.transport, Some(TransportSlice::Udp(_))));
    }

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
        assert_eq!(Kind::from_name("nope"), None);
    }
}
