//! Target `packet_path`: bursts of arbitrary frames through the whole
//! sans-IO packet path of one PMD, as `sluiced` assembles it for PMD 0 of a
//! node with a VTEP: the local stack (`LocalStack`: VTEP ARP/ICMP, the
//! underlay neighbour cache) around port security and the ARP responder
//! (`Ingress`) around the flow pipeline (`FlowPipeline`) whose hooks are
//! conntrack/NAT with the Service table and the Geneve tunnels. The flow
//! program, Services, VTEPs, port security bindings and responder
//! addresses are what `sluice-agent` compiles (`control::agent::compile`)
//! for a representative node: two pods, a remote node, a NodePort Service
//! to a remote endpoint and a ClusterIP UDP Service to a local pod. The
//! conntrack table (64 connections) and the caches are small so that
//! limits are reached.
//! No DPDK: buffers are heap buffers whose creation and release are
//! counted.
//!
//! Input: byte 0 holds flags (bit 0: keep the frames' checksums as given
//! instead of fixing them). Then records: a header byte (bits 0-2: the
//! ingress port, bit 3: start a new burst, bits 4-7: how far the clock
//! moves first, in powers of 8 ns, with `maintain` run when it moves),
//! a little-endian u16 length and that many frame bytes. Consecutive
//! records on one port form a burst of up to 32 frames.
//!
//! The datapath is built once per thread, around the program's flow
//! tables (parsed once: nothing in the packet path changes them), and kept
//! from one input to the next: between two inputs its connections and
//! neighbours are flushed and its clock moves an hour (see `Run::reset`),
//! which brings it to the state of a node whose PMD has run for a while
//! and is idle. Building a datapath per input cost half of every
//! execution. A finding that does not replay alone needs what earlier
//! inputs left (the flow caches, random number generators): with
//! `SLUICE_FUZZ_FRESH` set, every input gets a new datapath, which tells
//! the two apart; `cargo test -p sluice-fuzz` replays the crash
//! reproducers both ways.
//!
//! Invariants, checked after every burst, every `maintain` and every
//! reset:
//! - nothing panics;
//! - every buffer is accounted for: each one released was sent (staged on
//!   a port, or punted to the controller queue, which the PMD drops and
//!   counts), counted under a drop reason, or consumed by the local stack
//!   (its `rx` less its `local_not_for_us` drops); none is held between
//!   bursts, and the local-stack queue is empty;
//! - with fixed input checksums, every emitted IPv4 header, TCP, UDP and
//!   ICMP checksum (also inside Geneve) is valid;
//! - counters agree: the per-port anti-spoofing counters add up to the
//!   `port_security_*` drop reasons, and the stack's `tx` never exceeds
//!   the frames sent;
//! - a reset leaves no connection.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use nestdb_client::node::{LogicalPort, NodeConfig, Protocol, ServicePort, ServiceType};
use sluice_api::node::NodeProgram;
use sluice_control::agent::compile::{compile, NodeRows};
use sluice_datapath::conntrack::{Conntrack, ConntrackConfig, ConntrackHandle};
use sluice_datapath::drop::DropReason;
use sluice_datapath::flow::tables::FlowTables;
use sluice_datapath::neigh::ingress::{PortBinding, PortSecurityCounters};
use sluice_datapath::neigh::table::NeighMap;
use sluice_datapath::packet::testbuf::{BufTag, TaggedBuf};
use sluice_datapath::packet::{BufAlloc, Burst, HeapBuf, Output, PacketBuf, PortNo};
use sluice_datapath::pipeline::flow::{FlowPipeline, FlowPipelineConfig};
use sluice_datapath::pipeline::hooks::Hooks;
use sluice_datapath::pipeline::Pipeline;
use sluice_datapath::service::{ServiceConfig, Services};
use sluice_datapath::stack::overlay::{Overlay, OverlayConfig, OverlayPipeline};
use sluice_datapath::tunnel::GeneveTunnels;
use sluice_testkit::rows::{self, uuid};

use crate::checksum;

/// The node's MAC (uplink and pod gateways).
pub const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
/// The remote node's VTEP MAC.
pub const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
/// The local VTEP address.
pub const VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The remote node's VTEP address.
pub const PEER_VTEP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// Pod `a-client`: MAC and address.
pub const CLIENT: ([u8; 6], Ipv4Addr) = ([0x0a, 0x58, 10, 244, 1, 5], Ipv4Addr::new(10, 244, 1, 5));
/// Pod `a-peer`: MAC and address.
pub const PEER: ([u8; 6], Ipv4Addr) = ([0x0a, 0x58, 10, 244, 1, 6], Ipv4Addr::new(10, 244, 1, 6));
/// The remote endpoint of the NodePort Service.
pub const SERVER: ([u8; 6], Ipv4Addr) = ([0x0a, 0x58, 10, 244, 2, 7], Ipv4Addr::new(10, 244, 2, 7));

thread_local! {
    static CREATED: Cell<u64> = const { Cell::new(0) };
    static FREED: Cell<u64> = const { Cell::new(0) };
    static PROGRAM: NodeProgram = program();
    /// The program's flow tables, parsed once: the pipeline only reads
    /// them (no flow of the program has a timeout or a `learn` action, so
    /// no packet or `maintain` changes a rule; rule counters do not decide
    /// anything), so every input starts from the same tables.
    static TABLES: FlowTables = PROGRAM.with(flow_tables);
    /// `SLUICE_FUZZ_VERBOSE` set: print what each input did (replays).
    static VERBOSE: bool = std::env::var_os("SLUICE_FUZZ_VERBOSE").is_some();
    /// `SLUICE_FUZZ_FRESH` set: a new datapath for every input.
    static FRESH: bool = std::env::var_os("SLUICE_FUZZ_FRESH").is_some();
    /// The datapath inputs run on, kept from one input to the next.
    static KEPT: RefCell<Option<Run>> = const { RefCell::new(None) };
}

/// A tag whose creation and release are counted (per thread): a buffer
/// carrying one is counted from its creation to its release.
#[derive(Debug)]
pub struct Counted(());

impl Counted {
    fn new() -> Self {
        CREATED.with(|c| c.set(c.get() + 1));
        Counted(())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        FREED.with(|c| c.set(c.get() + 1));
    }
}

impl BufTag for Counted {
    fn clone_tag(&self) -> Option<Self> {
        Some(Counted::new())
    }
}

/// A heap buffer whose creation and release are counted (per thread).
pub type CountedBuf = TaggedBuf<Counted>;

fn counted(b: HeapBuf) -> CountedBuf {
    TaggedBuf {
        buf: b,
        tag: Counted::new(),
    }
}

/// Counted heap allocation.
#[derive(Debug, Default)]
pub struct CountedAlloc;

impl BufAlloc<CountedBuf> for CountedAlloc {
    fn alloc(&mut self) -> Option<CountedBuf> {
        Some(counted(HeapBuf::empty()))
    }
}

fn mac(m: [u8; 6]) -> String {
    sluice_api::args::fmt_mac(&m)
}

fn pod(name: &str, (m, ip): ([u8; 6], Ipv4Addr)) -> LogicalPort {
    rows::logical_port(name, &mac(m), &ip.to_string())
}

/// Service `uuid(n)` with one port `p` (`uuid(n + 1)`) and one endpoint
/// (`uuid(n + 2)`).
#[allow(clippy::too_many_arguments)]
fn service(
    r: &mut NodeRows,
    n: u64,
    name: &str,
    kind: ServiceType,
    cluster_ip: &str,
    proto: Protocol,
    port: u16,
    target: u16,
    node_port: Option<u16>,
    endpoint: Ipv4Addr,
    local: bool,
) {
    r.services
        .push((uuid(n), rows::service(name, kind, cluster_ip, &[n + 1])));
    r.service_ports.push((
        uuid(n + 1),
        ServicePort {
            protocol: proto,
            ..rows::service_port(Some("p"), port, Some(target), node_port)
        },
    ));
    let node = if local { "node-a" } else { "node-b" };
    let ip = endpoint.to_string();
    r.endpoints.push((
        uuid(n + 2),
        rows::endpoint(Some(n), &ip, &[("p", target)], node, local),
    ));
}

/// The rows of the representative node, as sluice-agent reads them.
pub fn rows() -> NodeRows {
    let mut r = NodeRows {
        node_config: vec![(
            uuid(1),
            NodeConfig {
                uplink_port: "net_null0".into(),
                vtep_ip: VTEP.into(),
                node_ips: BTreeSet::from([VTEP.into()]),
                external_ids: BTreeMap::from([
                    ("node_mac".to_string(), mac(NODE_MAC)),
                    (
                        "underlay_gateway_mac".to_string(),
                        mac([2, 0, 0, 0, 0, 0xfe]),
                    ),
                ]),
                ..rows::node_config()
            },
        )],
        logical_ports: vec![
            (uuid(10), pod("a-client", CLIENT)),
            (uuid(11), pod("a-peer", PEER)),
        ],
        remote_nodes: vec![(
            uuid(20),
            rows::remote_node("node-b", &PEER_VTEP.to_string(), "10.244.2.0/24"),
        )],
        ..Default::default()
    };
    service(
        &mut r,
        30,
        "web",
        ServiceType::NodePort,
        "10.96.0.10",
        Protocol::Tcp,
        80,
        8080,
        Some(30080),
        SERVER.1,
        false,
    );
    service(
        &mut r,
        40,
        "dns",
        ServiceType::ClusterIp,
        "10.96.0.53",
        Protocol::Udp,
        53,
        5353,
        None,
        PEER.1,
        true,
    );
    r
}

fn program() -> NodeProgram {
    let c = compile(&rows());
    assert!(
        c.errors.is_empty(),
        "the fuzz node does not compile: {:?}",
        c.errors
    );
    c.program
}

/// The flow tables of `p` (its groups and flows, parsed).
pub fn flow_tables(p: &NodeProgram) -> FlowTables {
    let tables = FlowTables::new();
    for g in p.groups.values() {
        tables.add_group(&g.text(), 0).expect("a group loads");
    }
    tables
        .add_flows(&p.flow_lines().join("\n"), 0)
        .expect("the program loads");
    tables
}

type Flow = FlowPipeline<Hooks<ConntrackHandle, GeneveTunnels>>;

/// One PMD's datapath built from the program as sluiced builds PMD 0.
pub struct Datapath {
    /// The wrapped pipeline.
    pub pipe: OverlayPipeline<Flow, CountedAlloc>,
    /// The connection table (with the Services) behind the pipeline's hook.
    pub ct: Conntrack,
    /// The overlay's shared state (tunnels, port security).
    pub overlay: Overlay,
    /// The ports, by OpenFlow number.
    pub ports: Vec<PortNo>,
    /// The uplink.
    pub uplink: PortNo,
}

impl Datapath {
    /// Builds the datapath of `p`.
    pub fn new(p: &NodeProgram) -> Datapath {
        Datapath::with_tables(p, flow_tables(p))
    }

    /// Builds the datapath of `p` around `tables`, the flow tables of `p`
    /// (see [`flow_tables`]), which packets do not change: every other
    /// part (conntrack, Services, tunnels, port security, caches, the local
    /// stack) is new.
    pub fn with_tables(p: &NodeProgram, tables: FlowTables) -> Datapath {
        let s = &p.settings;
        let services = Services::new(ServiceConfig {
            node_addresses: s.node_ips.clone(),
            node_port_range: s.node_port_range,
            masquerade_ip: s.masquerade_ip.expect("a masquerade address"),
            cluster_cidrs: s
                .cluster_cidrs
                .iter()
                .map(|c| (c.ip, c.prefix_len))
                .collect(),
            node_zone: s.zone.clone(),
        });
        services
            .apply(
                &sluice_api::service::ServiceUpdate {
                    upsert: p.services.values().cloned().collect(),
                    delete: vec![],
                    flush_removed_endpoints: false,
                },
                None,
            )
            .expect("Services apply");
        let ct = Conntrack::with_services(
            ConntrackConfig {
                max_connections: 64,
                shards: 4,
                cache_entries: 16,
                ..ConntrackConfig::default()
            },
            services,
        );
        let vtep = s.vtep.expect("a VTEP");
        let mut oc = OverlayConfig::default();
        oc.set("vtep_ip", &format!("{}/{}", vtep.ip, vtep.prefix_len))
            .expect("vtep_ip");
        let ports: Vec<PortNo> = p.ports.values().map(|s| PortNo(s.ofport)).collect();
        let uplink = PortNo(sluice_control::agent::compile::UPLINK);
        let mut overlay = Overlay::new(&oc, 1, Some((uplink, NODE_MAC)));
        overlay
            .tunnels
            .neigh
            .publish(NeighMap::from_iter([(PEER_VTEP, PEER_MAC)]));
        for (node, ip) in &p.vteps {
            overlay.tunnels.vteps.add(node, *ip).expect("a VTEP");
        }
        for (port, sec) in &p.port_security {
            overlay.ingress.bind_port(
                PortNo(*port),
                PortBinding {
                    mac: sec.mac,
                    ips: sec.ips.clone(),
                },
            );
        }
        for (ip, m) in &p.arp_responder {
            overlay.ingress.add_address(*ip, *m);
        }
        let flow = FlowPipeline::with_hooks(
            tables,
            FlowPipelineConfig {
                ports: ports.clone(),
                // Small caches: cheap to build for every input, and full
                // (eviction paths) after a few flows.
                emc_entries: 16,
                megaflow_capacity: 32,
                mac_capacity: 16,
                ..FlowPipelineConfig::default()
            },
            Hooks {
                ct: ct.handle(1),
                tunnels: overlay.tunnel_hook(0),
            },
        );
        let pipe = overlay
            .wrap(0, flow, CountedAlloc)
            .expect("the local stack");
        Datapath {
            pipe,
            ct,
            overlay,
            ports,
            uplink,
        }
    }
}

/// What has happened to buffers so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ledger {
    created: u64,
    freed: u64,
    sent: u64,
    dropped: u64,
    consumed: u64,
}

/// Where the clock of a new datapath starts.
const START_NS: u64 = 1_000_000_000;
/// How far the clock moves between two inputs on one datapath: an hour,
/// past the MAC table's aging and the neighbour timeouts, so that what an
/// input learnt has expired by the next one (connections are flushed).
const GAP_NS: u64 = 3_600 * 1_000_000_000;
/// A datapath whose clock has passed this is replaced by a new one. One
/// record moves the clock by at most 2^45 ns, so an input of 8 KiB (2,731
/// records) by less than 2^57 ns: the clock never overflows.
const CLOCK_LIMIT: u64 = 1 << 62;

/// A datapath and what the harness has seen it do.
struct Run {
    dp: Datapath,
    out: Output<CountedBuf>,
    /// The ports an input's records choose from: the datapath's, and one
    /// it does not have.
    sel: Vec<PortNo>,
    now: u64,
    fixed: bool,
    sent: u64,
    punted: u64,
    stack_tx: u64,
    /// The ledger when the books were last settled.
    books: Ledger,
    /// The port security counters of every bound port (bound once, when
    /// the datapath is built).
    port_sec: Vec<Arc<PortSecurityCounters>>,
}

impl Run {
    /// A new datapath (the flow tables shared, every other part new).
    fn new() -> Run {
        let tables = TABLES.with(FlowTables::clone);
        let dp = PROGRAM.with(|p| Datapath::with_tables(p, tables));
        let n_ports = dp.ports.iter().map(|p| p.0 as usize + 1).max().unwrap_or(1) + 1;
        let mut sel: Vec<PortNo> = dp.ports.clone();
        sel.sort();
        sel.push(PortNo(n_ports as u16 + 3));
        let port_sec = dp
            .overlay
            .ingress
            .counters()
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        let mut r = Run {
            dp,
            out: Output::new(n_ports),
            sel,
            now: START_NS,
            fixed: true,
            sent: 0,
            punted: 0,
            stack_tx: 0,
            books: Ledger::default(),
            port_sec,
        };
        r.books = r.ledger();
        r
    }

    /// Between two inputs: brings the datapath back to a running node's
    /// with no connections and no neighbours, as an operator would
    /// (`flush-conntrack`, `flush-neighbours`), then lets an hour pass
    /// with one `maintain` (the MAC table ages out). The flow caches (EMC,
    /// megaflows, continuations) are kept: they must not change what a
    /// packet gets, and flushing them cost a third of an input (the
    /// continuation cache resets its 2,560 entries). What the datapath's
    /// API cannot reset (those caches, random number generators, the
    /// stack's announcement already sent, counters) is what a PMD that has
    /// run for a while carries anyway.
    fn reset(&mut self) {
        self.dp.ct.flush_where(|_| true);
        if let Some(s) = self.dp.overlay.stack() {
            s.flush_neighbours();
        }
        let neigh = &self.dp.overlay.tunnels.neigh;
        while neigh.take_wanted().is_some() {}
        neigh.publish(NeighMap::from_iter([(PEER_VTEP, PEER_MAC)]));
        self.now += GAP_NS;
        self.dp.pipe.maintain(self.now, &mut self.out);
        self.settle("reset");
        assert_eq!(
            self.dp.ct.len(),
            0,
            "connections left after flush-conntrack and an hour"
        );
    }

    fn ledger(&self) -> Ledger {
        let rx = match &self.dp.pipe {
            OverlayPipeline::Stack(s) => s.control().stats.rx.get(),
            OverlayPipeline::Ingress(_) | OverlayPipeline::Relay(_) => 0,
        };
        let not_for_us = self.out.drops.get(DropReason::LocalNotForUs);
        Ledger {
            created: CREATED.with(Cell::get),
            freed: FREED.with(Cell::get),
            sent: self.sent + self.punted,
            dropped: self.out.drops.total(),
            consumed: rx - not_for_us,
        }
    }

    fn stack_tx(&self) -> u64 {
        match &self.dp.pipe {
            OverlayPipeline::Stack(s) => s.control().stats.tx.get(),
            OverlayPipeline::Ingress(_) | OverlayPipeline::Relay(_) => 0,
        }
    }

    /// Transmits what is staged (checking each frame) and checks the
    /// books against those of the last settlement.
    fn settle(&mut self, what: &str) {
        let before = self.books;
        let n = self.out.n_ports();
        for p in 0..n {
            for b in self.out.take(PortNo(p as u16)) {
                if VERBOSE.with(|v| *v) {
                    eprintln!("  {what}: sent {} bytes on port {p}", b.data().len());
                }
                if self.fixed {
                    if let Err(e) = checksum::check(b.data()) {
                        panic!("{what}: frame sent on port {p}: {e}: {:02x?}", b.data());
                    }
                }
                self.sent += 1;
            }
        }
        self.punted += self.out.controller.len() as u64;
        self.out.controller.clear();
        assert!(
            self.out.local.is_empty(),
            "{what}: frames left for the local stack"
        );
        let after = self.ledger();
        let d = |a: u64, b: u64| a - b;
        let freed = d(after.freed, before.freed);
        let fates = d(after.sent, before.sent)
            + d(after.dropped, before.dropped)
            + d(after.consumed, before.consumed);
        assert_eq!(
            freed, fates,
            "{what}: {freed} buffers released but {fates} accounted for (sent, dropped, consumed): {:?} → {:?}; drops {:?}",
            before, after, self.out.drops.nonzero()
        );
        assert_eq!(
            after.created,
            after.freed,
            "{what}: {} buffers held after the burst",
            after.created - after.freed
        );
        let tx = self.stack_tx();
        assert!(
            tx - self.stack_tx <= d(after.sent, before.sent),
            "{what}: the local stack counted {} frames sent, only {} were",
            tx - self.stack_tx,
            d(after.sent, before.sent)
        );
        self.stack_tx = tx;
        self.books = after;
        let mut sec = [0u64; 3];
        for c in &self.port_sec {
            sec[0] += c.mac.get();
            sec[1] += c.ip.get();
            sec[2] += c.arp.get();
        }
        let drops = [
            self.out.drops.get(DropReason::PortSecurityMac),
            self.out.drops.get(DropReason::PortSecurityIp),
            self.out.drops.get(DropReason::PortSecurityArp),
        ];
        assert_eq!(
            sec, drops,
            "{what}: per-port security counters disagree with the drop reasons"
        );
    }

    fn burst(&mut self, port: PortNo, frames: Vec<Vec<u8>>) {
        let mut burst = Burst::new(port);
        for mut f in frames {
            if self.fixed {
                checksum::fix(&mut f);
            }
            burst.pkts.push(counted(HeapBuf::from_frame(&f)));
        }
        self.dp.pipe.process(self.now, &mut burst, &mut self.out);
        assert!(
            burst.pkts.is_empty(),
            "the pipeline left packets in the burst"
        );
        self.settle("burst");
    }

    fn maintain(&mut self) {
        self.dp.pipe.maintain(self.now, &mut self.out);
        self.settle("maintain");
    }
}

/// Runs the packet path on `data`: on this thread's datapath, reset
/// since the previous input (see `Run::reset`), or, with
/// `SLUICE_FUZZ_FRESH` set in the environment, on a new one (slower; what
/// the harness did before it kept one, to tell a finding that needs the
/// state earlier inputs left from one that does not).
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if FRESH.with(|f| *f) {
        return run_fresh(data);
    }
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.as_ref().is_some_and(|r| r.now >= CLOCK_LIMIT) {
            *k = None;
        }
        let new = k.is_none();
        let r = k.get_or_insert_with(Run::new);
        if !new {
            r.reset();
        }
        r.input(flags, rest);
    });
}

/// Runs the packet path on `data` on a new datapath (what `run` does with
/// `SLUICE_FUZZ_FRESH` set).
pub fn run_fresh(data: &[u8]) {
    if let Some((&flags, rest)) = data.split_first() {
        Run::new().input(flags, rest);
    }
}

impl Run {
    /// One input: `flags`, then records (see the module's documentation).
    fn input(&mut self, flags: u8, mut rest: &[u8]) {
        let generation = TABLES.with(FlowTables::generation);
        self.fixed = flags & 1 == 0;
        let mut pending: Option<(PortNo, Vec<Vec<u8>>)> = None;
        while rest.len() >= 3 {
            let h = rest[0];
            let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])) % 2048;
            let len = len.min(rest.len() - 3);
            let frame = rest[3..3 + len].to_vec();
            rest = &rest[3 + len..];
            let port = self.sel[usize::from(h & 7) % self.sel.len()];
            let advance = h >> 4;
            let new_burst = h & 8 != 0 || advance != 0;
            if let Some((p, frames)) = pending.take() {
                if new_burst || p != port || frames.len() >= 32 {
                    self.burst(p, frames);
                } else {
                    pending = Some((p, frames));
                }
            }
            if advance != 0 {
                // At most 2^45 ns (9.8 hours) a step (see CLOCK_LIMIT).
                self.now += 1u64 << (3 * u32::from(advance));
                self.maintain();
            }
            pending
                .get_or_insert_with(|| (port, Vec::new()))
                .1
                .push(frame);
        }
        if let Some((p, frames)) = pending {
            self.burst(p, frames);
        }
        self.maintain();
        assert_eq!(
            TABLES.with(FlowTables::generation),
            generation,
            "the packet path changed the flow tables every input shares"
        );
        if VERBOSE.with(|v| *v) {
            eprintln!("  drops so far: {:?}", self.out.drops.nonzero());
        }
    }
}
