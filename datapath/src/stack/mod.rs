//! The datapath's own IP stack: smoltcp serving the VTEP/uplink address,
//! and the owner of the underlay neighbour cache.
//!
//! [`LocalStack`] wraps the PMD's pipeline. On the uplink it first takes
//! ARP requests for the local address and ICMP echo requests to it out of
//! the burst, so the VTEP answers ARP and ping like a host whatever the
//! flow program says. It keeps nothing else addressed to the VTEP: ARP
//! replies to it are copied (the stack learns from the copy, the original
//! follows the flow program, which sends ARP from the uplink to the host
//! port), and TCP, UDP other than Geneve, and ICMP other than echo
//! requests stay with the flow program (Geneve is popped there; the rest
//! reaches the host port by `nw_dst=NODE_IP`/the default route). So the
//! VTEP address may also be the node's address on the host port: the host
//! kernel still gets its ARP replies, NodePort and TCP/UDP to the node,
//! and the answers to its own pings; only echo requests and ARP requests
//! for that address are answered by the stack (with the uplink's MAC, where
//! every frame for the address arrives anyway).
//! After the inner pipeline ran a burst, the packets it staged for
//! [`PortNo::LOCAL`] (the `local` flow action) and the intercepted ones are
//! delivered here instead of being dropped: ARP replies feed
//! the [`NeighCache`] (learning only what it asked for) and smoltcp; ARP
//! requests and IPv4 for the local address go to a smoltcp [`Interface`],
//! which answers ARP and ICMP echo like a host; anything else is dropped
//! under `local_not_for_us`. Frames smoltcp and the neighbour cache send
//! (replies, ARP requests for the tunnels' next hops, the gratuitous ARP
//! announcing the VTEP at start and after [`StackControl::set_address`])
//! are staged on the uplink port; the ICMP
//! fragmentation-needed answers the tunnels queue for too-big DF packets
//! go back out of the port the packet came from. A stack built with the
//! address 0.0.0.0 (sluiced.ini has no VTEP; a node commit will bring it)
//! is dormant until [`StackControl::set_address`]: it intercepts, serves
//! and announces nothing, and counts what reaches it.
//!
//! Neither neighbour table can be flooded past a bound: the
//! [`NeighCache`] holds at most its capacity (4,096 by default); when full,
//! a new address evicts the oldest unresolved entry, never a resolved or
//! permanent one, or is refused, and `local-stack/show` counts both, with
//! the PMDs' resolution requests dropped on a full queue. smoltcp's own
//! cache (the senders its replies go to) has a fixed 8 entries and
//! replaces the one expiring first (smoltcp counts nothing; a host whose
//! entry was replaced is asked for again).
//!
//! The local stack is the exception path: it may allocate (smoltcp copies
//! frames through its device queues), and the neighbour cache sits behind a
//! mutex that only this PMD's `maintain`/local delivery and control
//! commands (`dump-neighbours`, `flush-neighbours`) take. The per-packet
//! forwarding path is untouched: bursts without local packets cost three
//! `is_empty` checks (its `local` packets, smoltcp's queue, the inbox).
//!
//! The stack runs on one PMD (PMD 0, its owner) whichever PMDs poll the
//! uplink: every other PMD's pipeline is wrapped in a [`StackRelay`],
//! which takes the same frames out of its uplink bursts (ARP requests and
//! echo requests for the local address; a copy of the ARP replies to it)
//! and the packets its flow program sent to `local`, and hands copies of
//! them to the owner through the [`StackInbox`], a bounded lock-free queue
//! (full: dropped and counted as `local_inbox_full`). The owner drains the
//! inbox after each of its bursts and in `maintain` (at most every 1,024
//! loop iterations, so within milliseconds when it has no traffic of its
//! own), and sends the answers on the uplink from its own tx queue. A
//! relaying PMD's cost is one relaxed load per uplink burst (the local
//! address) and the scan it shares with the owner; the copies are the
//! exception path's.
//!
//! Thread-safety: one `LocalStack` on the owner PMD; one [`StackRelay`] on
//! each other PMD, sharing the [`StackInbox`] (many producers, one
//! consumer); [`StackControl`] is the shared handle for control threads.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::drop::DropReason;
use crate::neigh::cache::{gratuitous_arp, parse_arp, NeighCache, NeighConfig};
use crate::neigh::table::NeighTable;
use crate::packet::{BufAlloc, Burst, Output, PacketBuf, PortNo};
use crate::pipeline::Pipeline;
use crate::stats::Counter;
use crate::time::Nanos;
use crate::tunnel::geneve::IcmpReply;
use sluice_api::stack::{Neighbour, NeighbourDump};

/// The local stack's address and where it is reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    /// The VTEP/uplink address.
    pub ip: Ipv4Addr,
    /// Its prefix length on the underlay.
    pub prefix_len: u8,
    /// The uplink's MAC.
    pub mac: [u8; 6],
    /// The uplink port (where the stack's frames are sent).
    pub uplink: PortNo,
    /// The uplink's IP MTU.
    pub mtu: u16,
}

/// Why the local stack could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// The address is not usable.
    #[error("{ip}/{prefix_len} cannot be the VTEP address: give a unicast IPv4 address with a prefix length of 1 to 32")]
    BadAddress {
        /// The address.
        ip: Ipv4Addr,
        /// The prefix length.
        prefix_len: u8,
    },
}

/// Counters of the local stack.
#[derive(Debug, Default)]
pub struct StackStats {
    /// Frames delivered by the `local` action.
    pub rx: Counter,
    /// Frames the stack and the neighbour cache sent.
    pub tx: Counter,
    /// ARP replies fed to the neighbour cache.
    pub arp_replies: Counter,
    /// Frames other PMDs handed over through the [`StackInbox`] (included
    /// in `rx` or `arp_replies` once the stack took them).
    pub relayed: Counter,
}

/// What another PMD hands the stack.
#[derive(Debug)]
enum Relayed {
    /// A copy of an ARP reply to the local address (the frame went on).
    Learn(Vec<u8>),
    /// A frame for the stack (intercepted, or sent to `local`).
    Deliver(Vec<u8>),
}

/// Frames PMDs other than the stack's receive for it, on their way to the
/// stack's PMD (see the module documentation): a bounded lock-free queue,
/// and the local address the relays intercept for.
#[derive(Debug)]
pub struct StackInbox {
    queue: ArrayQueue<Relayed>,
    /// The local address (`u32::from`; 0: dormant), set by the stack.
    ip: AtomicU32,
    uplink: PortNo,
}

/// Frames the inbox holds at most.
pub const INBOX_FRAMES: usize = 256;

/// What the uplink scan does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intercept {
    /// Not the stack's: the flow program has it.
    Pass,
    /// An ARP reply to the local address: learnt from a copy, then passed.
    LearnAndPass,
    /// The stack's (ARP request for, or echo request to, the address).
    Take,
}

/// How the uplink scan treats frame `f` when the local address is `ip`.
#[inline]
fn intercept_kind(ip: [u8; 4], f: &[u8]) -> Intercept {
    match f.get(12..14) {
        Some([0x08, 0x06]) if f.get(38..42) == Some(&ip[..]) => {
            if f.get(20..22) == Some(&[0, 2]) {
                Intercept::LearnAndPass
            } else {
                Intercept::Take
            }
        }
        Some([0x08, 0x00]) if f.get(30..34) == Some(&ip[..]) && is_echo_request(f) => {
            Intercept::Take
        }
        _ => Intercept::Pass,
    }
}

impl StackInbox {
    /// An empty inbox for a stack on `uplink` (dormant until the stack
    /// attaches it).
    pub fn new(uplink: PortNo) -> Self {
        StackInbox {
            queue: ArrayQueue::new(INBOX_FRAMES),
            ip: AtomicU32::new(0),
            uplink,
        }
    }

    fn set_ip(&self, ip: Ipv4Addr) {
        self.ip.store(u32::from(ip), Ordering::Release);
    }

    /// Frames waiting for the stack.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no frame waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `r`; false when full.
    fn push(&self, r: Relayed) -> bool {
        self.queue.push(r).is_ok()
    }

    /// A relaying PMD's uplink scan: the stack's frames leave the burst
    /// for the inbox (copied; the buffers are freed), ARP replies to the
    /// local address are copied there and stay. Packets keep their order.
    fn intercept<B: PacketBuf>(&self, burst: &mut Burst<B>, out: &mut Output<B>) {
        let ip = self.ip.load(Ordering::Acquire);
        if ip == 0 {
            return;
        }
        let ip = ip.to_be_bytes();
        let n = burst.pkts.len();
        let mut keep = 0;
        for i in 0..n {
            let f = burst.pkts[i].data();
            let take = match intercept_kind(ip, f) {
                Intercept::Pass => false,
                Intercept::LearnAndPass => {
                    if !self.push(Relayed::Learn(f.to_vec())) {
                        out.drops.inc(DropReason::LocalInboxFull);
                    }
                    false
                }
                Intercept::Take => true,
            };
            if !take {
                burst.pkts.swap(keep, i);
                keep += 1;
            }
        }
        for p in burst.pkts.drain(keep..) {
            self.hand_over(p, out);
        }
    }

    /// Hands one frame for the stack over (its buffer is freed here).
    fn hand_over<B: PacketBuf>(&self, p: B, out: &mut Output<B>) {
        if !self.push(Relayed::Deliver(p.data().to_vec())) {
            out.drop(DropReason::LocalInboxFull, p);
        }
    }
}

/// A PMD's pipeline when the local stack runs on another PMD: hands the
/// frames the stack serves to it (see the module documentation).
pub struct StackRelay<P> {
    inner: P,
    inbox: Arc<StackInbox>,
}

impl<P> std::fmt::Debug for StackRelay<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackRelay")
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

impl<P> StackRelay<P> {
    /// Wraps `inner`, relaying to the stack that drains `inbox`.
    pub fn new(inner: P, inbox: Arc<StackInbox>) -> Self {
        StackRelay { inner, inbox }
    }

    /// The wrapped pipeline.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    fn relay_local<B: PacketBuf>(&self, out: &mut Output<B>) {
        let mut local = std::mem::take(&mut out.local);
        for p in local.drain(..) {
            self.inbox.hand_over(p, out);
        }
        out.local = local;
    }
}

impl<B: PacketBuf, P: Pipeline<B>> Pipeline<B> for StackRelay<P> {
    fn dump_caches(&self) -> String {
        self.inner.dump_caches()
    }

    fn set_ports(&mut self, ports: &[PortNo]) {
        self.inner.set_ports(ports);
    }

    fn process(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        if burst.in_port == self.inbox.uplink {
            self.inbox.intercept(burst, out);
        }
        self.inner.process(now, burst, out);
        if !out.local.is_empty() {
            self.relay_local(out);
        }
    }

    fn maintain(&mut self, now: Nanos, out: &mut Output<B>) {
        self.inner.maintain(now, out);
        if !out.local.is_empty() {
            self.relay_local(out);
        }
    }
}

/// Shared handle: neighbour cache access for control commands, counters.
#[derive(Debug, Clone)]
pub struct StackControl {
    /// The underlay neighbour cache (owned by the stack's PMD).
    pub neigh: Arc<Mutex<NeighCache<()>>>,
    /// Counters.
    pub stats: Arc<StackStats>,
    /// The current configuration.
    pub config: Arc<ArcSwap<StackConfig>>,
    /// An address change the stack applies at its next `maintain`.
    pending: Arc<Mutex<Option<(Ipv4Addr, u8)>>>,
}

impl StackControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, NeighCache<()>> {
        self.neigh.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The neighbour cache, as `dump-neighbours` shows it.
    pub fn dump_neighbours(&self) -> NeighbourDump {
        NeighbourDump {
            neighbours: self
                .lock()
                .dump()
                .iter()
                .map(|n| Neighbour {
                    ip: n.ip,
                    mac: n.mac,
                    state: n.state.name().to_string(),
                    queued: n.queued as u64,
                })
                .collect(),
        }
    }

    /// Moves the local address to `ip`/`prefix_len`: applied by the stack's
    /// PMD at its next `maintain`, which flushes the neighbour cache and
    /// sends a gratuitous ARP for the new address.
    ///
    /// # Errors
    /// [`StackError::BadAddress`] when the address cannot be used.
    pub fn set_address(&self, ip: Ipv4Addr, prefix_len: u8) -> Result<(), StackError> {
        check_address(ip, prefix_len)?;
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((ip, prefix_len));
        Ok(())
    }

    /// Forgets every neighbour (`flush-neighbours`).
    pub fn flush_neighbours(&self) {
        self.lock().flush();
    }

    /// `neigh/set IP MAC`: a permanent underlay neighbour (like OVS's
    /// `tnl/neigh/set`), for next hops that do not answer ARP.
    pub fn set_neighbour(&self, ip: Ipv4Addr, mac: [u8; 6]) {
        self.lock().set_permanent(ip, mac);
    }

    /// `neigh/del IP`: removes a neighbour entry; false when there was none.
    pub fn del_neighbour(&self, ip: Ipv4Addr) -> bool {
        self.lock().remove(ip).is_some()
    }
}

/// Registers `dump-neighbours`, `flush-neighbours`, `neigh/set`,
/// `neigh/del` (with OVS's `tnl/neigh/*` names) and `local-stack/show`.
///
/// # Errors
/// [`RegistryError`] if a name is already registered.
pub fn register_commands(registry: &Registry, control: &StackControl) -> Result<(), RegistryError> {
    use sluice_api::stack::{
        DumpNeighbours, FlushNeighbours, LocalStackReply, LocalStackShow, NeighDel, NeighSet,
    };
    use sluice_api::{ApiError, Empty};
    let c = control.clone();
    register::<DumpNeighbours>(registry, move |_| Ok(c.dump_neighbours()))?;
    let c = control.clone();
    register::<FlushNeighbours>(registry, move |_| {
        c.flush_neighbours();
        Ok(Empty {})
    })?;
    let c = control.clone();
    register::<NeighSet>(registry, move |r| {
        c.set_neighbour(r.ip, r.mac);
        Ok(r)
    })?;
    let c = control.clone();
    register::<NeighDel>(registry, move |r| {
        if c.del_neighbour(r.ip) {
            Ok(Empty {})
        } else {
            Err(ApiError::not_found(format!(
                "no neighbour entry for {}",
                r.ip
            )))
        }
    })?;
    let c = control.clone();
    register::<LocalStackShow>(registry, move |_| {
        let cfg = c.config.load();
        let (neigh_entries, n, neigh_want_dropped) = {
            let cache = c.lock();
            (
                cache.len() as u64,
                cache.stats(),
                cache.table().want_dropped(),
            )
        };
        Ok(LocalStackReply {
            neigh_entries,
            neigh_evicted: n.evicted,
            neigh_refused: n.refused,
            neigh_want_dropped,
            ip: cfg.ip,
            prefix_len: cfg.prefix_len,
            mac: cfg.mac,
            uplink: cfg.uplink.0,
            rx: c.stats.rx.get(),
            tx: c.stats.tx.get(),
            arp_replies: c.stats.arp_replies.get(),
        })
    })?;
    Ok(())
}

/// Registers the local stack's methods for a datapath that runs none
/// (no `vtep_ip`, or no uplink): each answers with an `unavailable` error
/// that says what to configure, instead of the command not existing.
///
/// # Errors
/// [`RegistryError`] if a name is already registered.
pub fn register_unavailable(registry: &Registry) -> Result<(), RegistryError> {
    use sluice_api::stack::{DumpNeighbours, FlushNeighbours, LocalStackShow, NeighDel, NeighSet};
    use sluice_api::{ApiError, ErrorCode};
    fn none<T>() -> Result<T, ApiError> {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "no local IP stack runs in this sluiced: set vtep_ip in [datapath] and ovs_uplink_port in [nsx_node_agent]",
        ))
    }
    register::<DumpNeighbours>(registry, |_| none())?;
    register::<FlushNeighbours>(registry, |_| none())?;
    register::<NeighSet>(registry, |_| none())?;
    register::<NeighDel>(registry, |_| none())?;
    register::<LocalStackShow>(registry, |_| none())
}

/// smoltcp's view of the local port: frames in, frames out.
#[derive(Debug, Default)]
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct RxTok(Vec<u8>);
struct TxTok<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let f = self.rx.pop_front()?;
        Some((RxTok(f), TxTok(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Self::TxToken<'_>> {
        Some(TxTok(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c
    }
}

/// The local stack in front of (after) an inner pipeline.
pub struct LocalStack<P, A> {
    inner: P,
    alloc: A,
    config: Arc<StackConfig>,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    control: StackControl,
    announced: bool,
    /// ICMP fragmentation-needed answers from the tunnels, to send.
    icmp: Option<Arc<ArrayQueue<IcmpReply>>>,
    /// Frames the other PMDs received for the stack.
    inbox: Arc<StackInbox>,
}

impl<P, A> std::fmt::Debug for LocalStack<P, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStack")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn check_address(ip: Ipv4Addr, prefix_len: u8) -> Result<(), StackError> {
    if ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || prefix_len == 0
        || prefix_len > 32
    {
        return Err(StackError::BadAddress { ip, prefix_len });
    }
    Ok(())
}

/// An untagged Ethernet frame carrying an ICMP echo request (IPv4, first
/// fragment or unfragmented).
fn is_echo_request(f: &[u8]) -> bool {
    let Some(&vihl) = f.get(14) else {
        return false;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let first = f.get(20..22).is_some_and(|o| o[0] & 0x1f == 0 && o[1] == 0);
    f.get(23) == Some(&1) && ihl >= 20 && first && f.get(14 + ihl) == Some(&8)
}

fn instant(now: Nanos) -> Instant {
    Instant::from_micros(i64::try_from(now / 1000).unwrap_or(i64::MAX))
}

impl<P, A> LocalStack<P, A> {
    /// Wraps `inner`; `neigh` is the table the tunnels read; frames the
    /// stack originates are allocated from `alloc`.
    ///
    /// # Errors
    /// [`StackError`] when the address cannot be used.
    pub fn new(
        inner: P,
        alloc: A,
        config: StackConfig,
        neigh: NeighTable,
        neigh_config: NeighConfig,
    ) -> Result<Self, StackError> {
        // 0.0.0.0: dormant until `set_address` (a node commit carries the
        // VTEP): nothing is intercepted, served or announced.
        if !config.ip.is_unspecified() {
            check_address(config.ip, config.prefix_len)?;
        }
        let mut device = QueueDevice {
            mtu: usize::from(config.mtu),
            ..QueueDevice::default()
        };
        let iface_cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        let mut iface = Interface::new(iface_cfg, &mut device, Instant::from_micros(0));
        let cidr = IpCidr::new(IpAddress::Ipv4(config.ip), config.prefix_len);
        if !config.ip.is_unspecified() {
            iface.update_ip_addrs(|a| {
                // One address in an empty list always fits.
                let _ = a.push(cidr);
            });
        }
        let neigh_config = NeighConfig {
            local_ip: config.ip,
            local_mac: config.mac,
            ..neigh_config
        };
        let inbox = Arc::new(StackInbox::new(config.uplink));
        inbox.set_ip(config.ip);
        let config = Arc::new(config);
        let control = StackControl {
            neigh: Arc::new(Mutex::new(NeighCache::new(neigh_config, neigh))),
            stats: Arc::default(),
            config: Arc::new(ArcSwap::new(config.clone())),
            pending: Arc::default(),
        };
        Ok(LocalStack {
            inner,
            alloc,
            config,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            control,
            announced: false,
            icmp: None,
            inbox,
        })
    }

    /// The inbox the [`StackRelay`]s of the other PMDs hand frames to.
    pub fn inbox(&self) -> Arc<StackInbox> {
        self.inbox.clone()
    }

    /// Drains `inbox` instead of its own (an [`Overlay`](overlay::Overlay)
    /// makes the inbox before the pipelines, whatever their order).
    pub fn set_inbox(&mut self, inbox: Arc<StackInbox>) {
        inbox.set_ip(self.config.ip);
        self.inbox = inbox;
    }

    /// Sends the ICMP fragmentation-needed answers the tunnels queue
    /// (see `tunnel::geneve`), drained after every burst and in
    /// `maintain`.
    pub fn set_icmp_source(&mut self, queue: Arc<ArrayQueue<IcmpReply>>) {
        self.icmp = Some(queue);
    }

    /// The shared handle for control commands.
    pub fn control(&self) -> StackControl {
        self.control.clone()
    }

    /// The wrapped pipeline.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped pipeline, mutably.
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// On the uplink, ARP requests for the local address and ICMP echo
    /// requests to it go straight to the stack, whatever the flow program
    /// says, so the VTEP answers ARP and ping like a host. ARP replies to
    /// the local address are learnt from a copy and stay in the burst for
    /// the flow program (the host kernel may have asked: the VTEP address
    /// can be the node's address on the host port). Everything else to the
    /// VTEP (Geneve, TCP, other UDP, other ICMP) stays with the flow
    /// tables. Packets keep their order.
    fn intercept<B: PacketBuf>(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        if self.config.ip.is_unspecified() {
            return;
        }
        let ip = self.config.ip.octets();
        let n = burst.pkts.len();
        let mut keep = 0;
        for i in 0..n {
            let f = burst.pkts[i].data();
            let ours = match intercept_kind(ip, f) {
                Intercept::Pass => false,
                Intercept::LearnAndPass => {
                    self.learn_arp_reply(now, f);
                    false
                }
                Intercept::Take => true,
            };
            if !ours {
                burst.pkts.swap(keep, i);
                keep += 1;
            }
        }
        out.local.extend(burst.pkts.drain(keep..));
    }

    /// An ARP reply for the local address: the neighbour cache learns what
    /// it asked for, smoltcp learns the sender. Not counted in `rx` (frames
    /// the stack consumed): from `intercept` it reads a copy and the frame
    /// goes on.
    fn learn_arp_reply(&mut self, now: Nanos, f: &[u8]) {
        // Nothing is queued in this cache (the tunnels drop and count on a
        // miss), so nothing is released here.
        let _ = self.control.lock().on_arp(now, f);
        self.control.stats.arp_replies.inc();
        self.device.rx.push_back(f.to_vec());
    }

    /// What the stack serves besides ARP replies: ARP requests for its
    /// address, and ICMP echo requests to its address (sent to its MAC, or
    /// broadcast/multicast). Anything else handed to it is counted as
    /// `local_not_for_us`, never silently consumed.
    fn is_for_us(&self, f: &[u8]) -> bool {
        use crate::wire::icmpv4::{Message, Packet as Icmp};
        use crate::wire::ip::IpProtocol;
        use crate::wire::ipv4::Packet as Ipv4;
        if self.config.ip.is_unspecified() {
            return false;
        }
        if let Some((op, _, _, _, tpa)) = parse_arp(f) {
            return op == 1 && tpa == self.config.ip;
        }
        if f.len() < 14 || f[12..14] != [0x08, 0x00] {
            return false;
        }
        if f[0..6] != self.config.mac && f[0] & 1 == 0 {
            return false;
        }
        let Ok(ip) = Ipv4::new_checked(&f[14..]) else {
            return false;
        };
        ip.dst_addr() == self.config.ip
            && ip.next_header() == IpProtocol::Icmp
            && Icmp::new_checked(ip.payload())
                .is_ok_and(|icmp| icmp.msg_type() == Message::EchoRequest)
    }
}

impl<P, A> LocalStack<P, A> {
    /// Sends one originated frame on the uplink.
    fn emit<B: PacketBuf>(&mut self, frame: &[u8], out: &mut Output<B>)
    where
        A: BufAlloc<B>,
    {
        let uplink = self.config.uplink;
        self.emit_to(uplink, frame, out);
    }

    /// Applies an address change requested through [`StackControl`].
    fn apply_address_change(&mut self) {
        let change = self
            .control
            .pending
            .try_lock()
            .ok()
            .and_then(|mut p| p.take());
        let Some((ip, prefix_len)) = change else {
            return;
        };
        let mut cfg = (*self.config).clone();
        cfg.ip = ip;
        cfg.prefix_len = prefix_len;
        let cfg = Arc::new(cfg);
        self.config = cfg.clone();
        self.control.config.store(cfg);
        self.inbox.set_ip(ip);
        let cidr = IpCidr::new(IpAddress::Ipv4(ip), prefix_len);
        self.iface.update_ip_addrs(|a| {
            a.clear();
            let _ = a.push(cidr);
        });
        let mut cache = self.control.lock();
        cache.set_local(ip, self.config.mac);
        cache.flush();
        drop(cache);
        // Announce the new address at once (below, in `maintain`).
        self.announced = false;
    }

    /// Sends queued ICMP fragmentation-needed answers.
    fn send_icmp<B: PacketBuf>(&mut self, out: &mut Output<B>)
    where
        A: BufAlloc<B>,
    {
        let Some(q) = self.icmp.clone() else {
            return;
        };
        while let Some(r) = q.pop() {
            self.emit_to(r.port, &r.frame[..r.len.min(r.frame.len())], out);
        }
    }

    /// Sends one originated frame on `port`.
    fn emit_to<B: PacketBuf>(&mut self, port: PortNo, frame: &[u8], out: &mut Output<B>)
    where
        A: BufAlloc<B>,
    {
        let Some(mut b) = self.alloc.alloc() else {
            out.drops.inc(DropReason::NoBuffer);
            return;
        };
        match b.append(frame.len()) {
            Some(d) => {
                d.copy_from_slice(frame);
                self.control.stats.tx.inc();
                out.send(port, b);
            }
            None => out.drop(DropReason::NoBuffer, b),
        }
    }

    /// Delivers the inner pipeline's `local` packets and runs smoltcp.
    fn deliver<B: PacketBuf>(&mut self, now: Nanos, out: &mut Output<B>)
    where
        A: BufAlloc<B>,
    {
        let mut local = std::mem::take(&mut out.local);
        for p in local.drain(..) {
            self.control.stats.rx.inc();
            let f = p.data();
            if let Some((2, ..)) = parse_arp(f) {
                self.learn_arp_reply(now, f);
                continue;
            }
            if self.is_for_us(f) {
                self.device.rx.push_back(f.to_vec());
            } else {
                out.drop(DropReason::LocalNotForUs, p);
            }
        }
        // Give the (now empty) vector back so its capacity is reused.
        out.local = local;
        self.drain_inbox(now, out);
        self.poll_stack(now, out);
    }

    /// Takes the frames the other PMDs handed over, as `deliver` takes
    /// its own.
    fn drain_inbox<B: PacketBuf>(&mut self, now: Nanos, out: &mut Output<B>) {
        let inbox = self.inbox.clone();
        while let Some(r) = inbox.queue.pop() {
            self.control.stats.relayed.inc();
            match r {
                Relayed::Learn(f) => self.learn_arp_reply(now, &f),
                Relayed::Deliver(f) => {
                    self.control.stats.rx.inc();
                    if let Some((2, ..)) = parse_arp(&f) {
                        self.learn_arp_reply(now, &f);
                    } else if self.is_for_us(&f) {
                        self.device.rx.push_back(f);
                    } else {
                        out.drops.inc(DropReason::LocalNotForUs);
                    }
                }
            }
        }
    }

    fn poll_stack<B: PacketBuf>(&mut self, now: Nanos, out: &mut Output<B>)
    where
        A: BufAlloc<B>,
    {
        if self.device.rx.is_empty() && self.device.tx.is_empty() {
            // Nothing to receive; smoltcp may still have timers (ARP
            // retries for its own replies), polled in `maintain`.
            return;
        }
        self.iface
            .poll(instant(now), &mut self.device, &mut self.sockets);
        while let Some(f) = self.device.tx.pop_front() {
            self.emit(&f, out);
        }
    }
}

impl<B: PacketBuf, P: Pipeline<B>, A: BufAlloc<B> + Send> Pipeline<B> for LocalStack<P, A> {
    fn dump_caches(&self) -> String {
        self.inner.dump_caches()
    }

    fn set_ports(&mut self, ports: &[PortNo]) {
        self.inner.set_ports(ports);
    }

    fn process(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        if burst.in_port == self.config.uplink {
            self.intercept(now, burst, out);
        }
        self.inner.process(now, burst, out);
        if !out.local.is_empty() || !self.device.rx.is_empty() || !self.inbox.is_empty() {
            self.deliver(now, out);
        }
        if self.icmp.as_ref().is_some_and(|q| !q.is_empty()) {
            self.send_icmp(out);
        }
    }

    fn maintain(&mut self, now: Nanos, out: &mut Output<B>) {
        self.inner.maintain(now, out);
        if !out.local.is_empty() || !self.inbox.is_empty() {
            self.deliver(now, out);
        }
        self.apply_address_change();
        let mut frames: Vec<[u8; 42]> = Vec::new();
        if !self.announced && !self.config.ip.is_unspecified() {
            self.announced = true;
            frames.push(gratuitous_arp(self.config.mac, self.config.ip));
        }
        {
            let mut cache = self.control.lock();
            cache.take_wanted(now);
            cache.poll(now, |f| frames.push(f));
        }
        for f in &frames {
            self.emit(f, out);
        }
        self.send_icmp(out);
        self.iface
            .poll(instant(now), &mut self.device, &mut self.sockets);
        while let Some(f) = self.device.tx.pop_front() {
            self.emit(&f, out);
        }
    }
}

pub mod overlay;

#[cfg(test)]
mod tests;
