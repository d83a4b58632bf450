//! Assembly of the overlay features for `sluiced`: configuration keys, the
//! per-PMD pipeline wrapping, and their control commands.
//!
//! [`OverlayConfig`] holds the `[datapath]` keys of the overlay
//! (`vtep_ip`, `vtep_gateway`, `uplink_mtu`, `tunnel_ttl`, `tunnel_df`,
//! `tunnel_udp_checksum`, `arp_gateways`, `proxy_arp`). [`Overlay`] is
//! built once at start from it and the uplink port; for each PMD it hands
//! out the Geneve tunnel hook ([`Overlay::tunnel_hook`]) and wraps the
//! flow pipeline ([`Overlay::wrap`]): every PMD gets port security and the
//! ARP responder ([`Ingress`]); with an uplink, PMD 0 also runs the
//! [`LocalStack`] (VTEP address, neighbour cache) and every other PMD a
//! [`StackRelay`] handing it the stack's frames that PMD receives (the
//! uplink may be polled by any PMD). Without `vtep_ip` the tunnels have no local
//! VTEP (decap drops `tunnel_not_local`, encap `tunnel_unknown_vtep`) and
//! no local stack runs.
//!
//! Thread-safety: `Overlay` is built and used on the daemon's start-up
//! thread; the values it hands out are per-PMD or shared handles.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::ctl::registry::{Registry, RegistryError};
use crate::ctl::typed::register;
use crate::neigh::cache::NeighConfig;
use crate::neigh::ingress::{Ingress, IngressControl, PortBinding};
use crate::neigh::table::NeighTable;
use crate::packet::{BufAlloc, Burst, Output, PacketBuf, PortNo};
use crate::pipeline::Pipeline;
use crate::stack::{LocalStack, StackConfig, StackControl, StackError, StackInbox, StackRelay};
use crate::time::Nanos;
use crate::tunnel::{GeneveTunnels, TunnelConfig, Tunnels};

/// The overlay keys of `[datapath]`.
pub const OVERLAY_KEYS: &[&str] = &[
    "vtep_ip",
    "vtep_gateway",
    "uplink_mtu",
    "tunnel_ttl",
    "tunnel_df",
    "tunnel_udp_checksum",
    "arp_gateways",
    "proxy_arp",
    "host_port",
];

/// Overlay configuration (`[datapath]` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    /// `vtep_ip = 192.168.50.1/24`: the local VTEP address and underlay
    /// prefix.
    pub vtep: Option<(Ipv4Addr, u8)>,
    /// `vtep_gateway`: underlay gateway for off-subnet VTEPs.
    pub gateway: Option<Ipv4Addr>,
    /// `uplink_mtu` (1500).
    pub uplink_mtu: u16,
    /// `tunnel_ttl` (64).
    pub ttl: u8,
    /// `tunnel_df` (true).
    pub df: bool,
    /// `tunnel_udp_checksum` (false).
    pub udp_checksum: bool,
    /// `arp_gateways = 10.244.1.1,10.244.2.1`: pod subnet gateways the
    /// datapath answers ARP for (with the uplink MAC).
    pub arp_gateways: Vec<Ipv4Addr>,
    /// `proxy_arp = 10.244.0.0/16`: prefixes answered by proxy ARP.
    pub proxy_arp: Vec<(Ipv4Addr, u8)>,
    /// `host_port = host`: the `[port:NAME]` (a `net_tap` port) that
    /// becomes the host exception path: the node's addresses and routes
    /// move from the uplink's kernel interface onto it at start and back
    /// at clean stop (see `hostpath`).
    pub host_port: Option<String>,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            vtep: None,
            gateway: None,
            uplink_mtu: 1500,
            ttl: 64,
            df: true,
            udp_checksum: false,
            arp_gateways: Vec::new(),
            proxy_arp: Vec::new(),
            host_port: None,
        }
    }
}

/// What is wrong with the value of an overlay key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayKeyError {
    /// The value does not have the expected form.
    #[error("'{value}' is not {what}")]
    NotA {
        /// The value as given.
        value: String,
        /// What it should be.
        what: &'static str,
    },
    /// A prefix length outside 1..32.
    #[error("'{0}' has a prefix length outside 1..32")]
    PrefixLength(String),
    /// `host_port` without a port name.
    #[error("give the name of a [port:NAME] section (a net_tap port)")]
    NoHostPort,
    /// A key this module does not own.
    #[error("'{0}' is not an overlay key")]
    UnknownKey(String),
}

fn not_a(value: &str, what: &'static str) -> OverlayKeyError {
    OverlayKeyError::NotA {
        value: value.to_string(),
        what,
    }
}

fn parse_cidr(v: &str) -> Result<(Ipv4Addr, u8), OverlayKeyError> {
    let (a, l) = v.split_once('/').unwrap_or((v, "32"));
    let ip: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| not_a(v, "an IPv4 address with a prefix (e.g. 192.168.1.5/24)"))?;
    let len: u8 = l
        .trim()
        .parse()
        .ok()
        .filter(|&n| (1..=32).contains(&n))
        .ok_or_else(|| OverlayKeyError::PrefixLength(v.to_string()))?;
    Ok((ip, len))
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_bool(v: &str) -> Result<bool, OverlayKeyError> {
    match v {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(not_a(v, "true or false")),
    }
}

impl OverlayConfig {
    /// Sets key `k` (one of [`OVERLAY_KEYS`]) from the text `v`.
    ///
    /// # Errors
    /// [`OverlayKeyError`]: what is wrong with the value.
    pub fn set(&mut self, k: &str, v: &str) -> Result<(), OverlayKeyError> {
        let v = v.trim();
        match k {
            "vtep_ip" => self.vtep = Some(parse_cidr(v)?),
            "vtep_gateway" => {
                self.gateway = Some(v.parse().map_err(|_| not_a(v, "an IPv4 address"))?)
            }
            "uplink_mtu" => {
                self.uplink_mtu = v
                    .parse()
                    .ok()
                    .filter(|&n| (576..=9216).contains(&n))
                    .ok_or_else(|| not_a(v, "an MTU in 576..9216"))?
            }
            "tunnel_ttl" => {
                self.ttl = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| not_a(v, "a TTL in 1..255"))?
            }
            "tunnel_df" => self.df = parse_bool(v)?,
            "tunnel_udp_checksum" => self.udp_checksum = parse_bool(v)?,
            "arp_gateways" => {
                self.arp_gateways = list(v)
                    .map(|s| s.parse().map_err(|_| not_a(s, "an IPv4 address")))
                    .collect::<Result<_, _>>()?
            }
            "proxy_arp" => self.proxy_arp = list(v).map(parse_cidr).collect::<Result<_, _>>()?,
            "host_port" => {
                if v.is_empty() {
                    return Err(OverlayKeyError::NoHostPort);
                }
                self.host_port = Some(v.to_string())
            }
            other => return Err(OverlayKeyError::UnknownKey(other.to_string())),
        }
        Ok(())
    }
}

/// The flow pipeline of one PMD with the overlay wrappers around it.
pub enum OverlayPipeline<P, A> {
    /// Port security and ARP responder.
    Ingress(Ingress<P>),
    /// The same, plus the local stack (PMD 0, with an uplink).
    Stack(Box<LocalStack<Ingress<P>, A>>),
    /// The same, handing the stack's frames to PMD 0 (the other PMDs, with
    /// an uplink).
    Relay(StackRelay<Ingress<P>>),
}

impl<P, A> std::fmt::Debug for OverlayPipeline<P, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverlayPipeline::Ingress(_) => f.write_str("OverlayPipeline::Ingress"),
            OverlayPipeline::Stack(_) => f.write_str("OverlayPipeline::Stack"),
            OverlayPipeline::Relay(_) => f.write_str("OverlayPipeline::Relay"),
        }
    }
}

impl<B, P, A> Pipeline<B> for OverlayPipeline<P, A>
where
    B: PacketBuf,
    P: Pipeline<B>,
    A: BufAlloc<B> + Send,
{
    fn dump_caches(&self) -> String {
        match self {
            OverlayPipeline::Ingress(p) => p.dump_caches(),
            OverlayPipeline::Stack(p) => p.dump_caches(),
            OverlayPipeline::Relay(p) => p.dump_caches(),
        }
    }

    fn process(&mut self, now: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
        match self {
            OverlayPipeline::Ingress(p) => p.process(now, burst, out),
            OverlayPipeline::Stack(p) => p.process(now, burst, out),
            OverlayPipeline::Relay(p) => p.process(now, burst, out),
        }
    }

    fn maintain(&mut self, now: Nanos, out: &mut Output<B>) {
        match self {
            OverlayPipeline::Ingress(p) => p.maintain(now, out),
            OverlayPipeline::Stack(p) => p.maintain(now, out),
            OverlayPipeline::Relay(p) => p.maintain(now, out),
        }
    }

    fn set_ports(&mut self, ports: &[PortNo]) {
        match self {
            OverlayPipeline::Ingress(p) => p.set_ports(ports),
            OverlayPipeline::Stack(p) => p.set_ports(ports),
            OverlayPipeline::Relay(p) => p.set_ports(ports),
        }
    }
}

/// An allocator that makes new buffers by cloning a seed buffer (for mbufs:
/// from the seed's pool) and emptying the copy. Lets a PMD originate
/// frames without a borrowed pool handle. The seed holds one byte, because
/// DPDK's `rte_pktmbuf_copy` refuses to copy an empty mbuf.
#[derive(Debug)]
pub struct SeedAlloc<B>(B);

impl<B: PacketBuf> SeedAlloc<B> {
    /// An allocator cloning `seed` (grown to one byte when empty).
    pub fn new(mut seed: B) -> Self {
        if seed.is_empty() {
            if let Some(d) = seed.append(1) {
                d[0] = 0;
            }
        }
        SeedAlloc(seed)
    }
}

impl<B: PacketBuf> BufAlloc<B> for SeedAlloc<B> {
    fn alloc(&mut self) -> Option<B> {
        let mut b = self.0.try_clone()?;
        let n = b.len();
        b.trim(n);
        Some(b)
    }
}

/// The overlay features of one daemon.
#[derive(Debug)]
pub struct Overlay {
    config: OverlayConfig,
    /// Tunnels (always present; without a VTEP they drop).
    pub tunnels: Tunnels,
    /// Port security and ARP responder control.
    pub ingress: IngressControl,
    uplink: Option<(PortNo, [u8; 6])>,
    stack: Option<StackControl>,
    /// With an uplink: where the PMDs other than the stack's hand it the
    /// frames they receive for it.
    inbox: Option<Arc<StackInbox>>,
}

impl Overlay {
    /// Builds the shared state for `n_pmds` PMDs; `uplink` is the uplink
    /// port and its MAC.
    pub fn new(config: &OverlayConfig, n_pmds: usize, uplink: Option<(PortNo, [u8; 6])>) -> Self {
        let mac = uplink.map_or([0x02, 0, 0, 0, 0, 1], |u| u.1);
        let (ip, prefix_len) = config.vtep.unwrap_or((Ipv4Addr::UNSPECIFIED, 24));
        let tcfg = TunnelConfig {
            local_ip: ip,
            prefix_len,
            gateway: config.gateway,
            local_mac: mac,
            uplink_mtu: config.uplink_mtu,
            ttl: config.ttl,
            df: config.df,
            udp_checksum: config.udp_checksum,
            ..TunnelConfig::default()
        };
        let tunnels = Tunnels::new(tcfg, n_pmds, NeighTable::new());
        let ingress = IngressControl::default();
        ingress.update(|c| {
            for g in &config.arp_gateways {
                c.arp.addresses.insert(*g, mac);
            }
            for &(net, len) in &config.proxy_arp {
                c.arp.proxy.push((net, len, mac));
            }
        });
        Overlay {
            config: config.clone(),
            tunnels,
            ingress,
            uplink,
            stack: None,
            inbox: uplink.map(|(port, _)| Arc::new(StackInbox::new(port))),
        }
    }

    /// The local stack's control handle (PMD 0 runs the stack when an
    /// uplink is configured, whichever PMDs poll it; set once the
    /// pipelines are wrapped).
    pub fn stack(&self) -> Option<&StackControl> {
        self.stack.as_ref()
    }

    /// The tunnel hook for PMD `pmd`.
    pub fn tunnel_hook(&self, pmd: usize) -> GeneveTunnels {
        self.tunnels.hook(pmd)
    }

    /// Wraps PMD `pmd`'s pipeline. With an uplink, PMD 0 runs the local
    /// stack (`alloc` gives it buffers) and every other PMD relays the
    /// stack's frames it receives to it.
    ///
    /// # Errors
    /// A sentence when the local stack cannot be built.
    pub fn wrap<P, A>(
        &mut self,
        pmd: usize,
        inner: P,
        alloc: A,
    ) -> Result<OverlayPipeline<P, A>, StackError> {
        let ingress = Ingress::new(inner, self.ingress.clone());
        // With an uplink, PMD 0 always runs the stack: without a VTEP in
        // sluiced.ini it is dormant until a node commit (or `set-vtep`)
        // gives it one.
        match (pmd, self.config.vtep, self.uplink) {
            (0, vtep, Some((uplink, mac))) => {
                let (ip, prefix_len) = vtep.unwrap_or((Ipv4Addr::UNSPECIFIED, 24));
                let mut s = LocalStack::new(
                    ingress,
                    alloc,
                    StackConfig {
                        ip,
                        prefix_len,
                        mac,
                        uplink,
                        mtu: self.config.uplink_mtu,
                    },
                    self.tunnels.neigh.clone(),
                    NeighConfig::default(),
                )?;
                s.set_icmp_source(self.tunnels.icmp_queue());
                if let Some(inbox) = &self.inbox {
                    s.set_inbox(inbox.clone());
                }
                self.stack = Some(s.control());
                Ok(OverlayPipeline::Stack(Box::new(s)))
            }
            _ => Ok(match &self.inbox {
                Some(inbox) => OverlayPipeline::Relay(StackRelay::new(ingress, inbox.clone())),
                None => OverlayPipeline::Ingress(ingress),
            }),
        }
    }

    /// Registers the overlay commands: `dump-tunnels`, `add-vtep`,
    /// `del-vtep`, `tunnel-mtu`, `tunnel/trace`, `set-vtep IP/LEN` (moves
    /// the local VTEP; announced by gratuitous ARP), `dump-neighbours`, `flush-neighbours`,
    /// `local-stack/show` (with a local stack), `dump-port-security`,
    /// `set-port-security PORT MAC IP[,IP...]`, `del-port-security PORT`.
    ///
    /// # Errors
    /// [`RegistryError`] if a name is already registered.
    pub fn register_commands(&self, registry: &Registry) -> Result<(), RegistryError> {
        crate::tunnel::commands::register_commands(registry, &self.tunnels)?;
        match &self.stack {
            Some(s) => crate::stack::register_commands(registry, s)?,
            None => crate::stack::register_unavailable(registry)?,
        }
        use sluice_api::stack::{DelPortSecurity, DumpPortSecurity, SetPortSecurity};
        use sluice_api::tunnel::SetVtep;
        use sluice_api::{ApiError, Empty};
        let (t, st) = (self.tunnels.clone(), self.stack.clone());
        register::<SetVtep>(registry, move |r| {
            if let Some(st) = &st {
                st.set_address(r.ip, r.prefix_len)
                    .map_err(|e| ApiError::invalid(e.to_string()))?;
            }
            t.set_local(r.ip, r.prefix_len);
            Ok(Empty {})
        })?;
        let c = self.ingress.clone();
        register::<DumpPortSecurity>(registry, move |_| Ok(c.view()))?;
        let c = self.ingress.clone();
        register::<SetPortSecurity>(registry, move |r| {
            c.bind_port(
                PortNo(r.port),
                PortBinding {
                    mac: r.mac,
                    ips: r.ips,
                },
            );
            Ok(Empty {})
        })?;
        let c = self.ingress.clone();
        register::<DelPortSecurity>(registry, move |r| {
            c.unbind_port(PortNo(r.port));
            Ok(Empty {})
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{HeapAlloc, HeapBuf};

    #[test]
    fn config_keys_parse_and_refuse_with_sentences() {
        let mut c = OverlayConfig::default();
        c.set("vtep_ip", "192.168.50.1/24").expect("vtep");
        assert_eq!(c.vtep, Some((Ipv4Addr::new(192, 168, 50, 1), 24)));
        c.set("arp_gateways", "10.244.1.1, 10.244.2.1").expect("gw");
        assert_eq!(c.arp_gateways.len(), 2);
        c.set("proxy_arp", "10.244.0.0/16").expect("proxy");
        c.set("tunnel_udp_checksum", "yes").expect("csum");
        assert!(c.udp_checksum);
        assert!(c
            .set("uplink_mtu", "100")
            .unwrap_err()
            .to_string()
            .contains("576..9216"));
        assert!(c
            .set("vtep_ip", "1.2.3.4/40")
            .unwrap_err()
            .to_string()
            .contains("prefix length"));
        assert!(c
            .set("tunnel_df", "maybe")
            .unwrap_err()
            .to_string()
            .contains("true or false"));
        // Every key but the free-text port name refuses garbage.
        for k in OVERLAY_KEYS.iter().filter(|k| **k != "host_port") {
            assert!(c.set(k, "garbage!").is_err(), "{k}");
        }
        assert!(c.set("host_port", "").is_err());
        c.set("host_port", "host").expect("host_port");
        assert_eq!(c.host_port.as_deref(), Some("host"));
    }

    /// Passes everything to port 1.
    struct Fwd;
    impl<B: PacketBuf> Pipeline<B> for Fwd {
        fn process(&mut self, _: Nanos, burst: &mut Burst<B>, out: &mut Output<B>) {
            for p in burst.pkts.drain(..) {
                out.send(PortNo(1), p);
            }
        }
    }

    #[test]
    fn pmd0_gets_the_stack_and_commands_register() {
        let mut c = OverlayConfig::default();
        c.set("vtep_ip", "192.168.50.1/24").expect("vtep");
        let mut o = Overlay::new(&c, 2, Some((PortNo(2), [2, 0, 0, 0, 0, 9])));
        let p0 = o.wrap(0, Fwd, HeapAlloc).expect("pmd0");
        let p1 = o.wrap(1, Fwd, HeapAlloc).expect("pmd1");
        assert!(matches!(p0, OverlayPipeline::Stack(_)));
        assert!(matches!(p1, OverlayPipeline::Relay(_)));
        let r = Registry::new();
        o.register_commands(&r).expect("register");
        let names = r.command_names();
        for n in [
            "dump-tunnels",
            "add-vtep",
            "dump-neighbours",
            "flush-neighbours",
            "set-port-security",
            "tunnel-mtu",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn seed_alloc_gives_empty_buffers() {
        let mut a = SeedAlloc::new(HeapBuf::empty());
        let b = a.alloc().expect("buffer");
        assert!(b.is_empty());
        assert!(b.headroom() > 0);
    }
}
