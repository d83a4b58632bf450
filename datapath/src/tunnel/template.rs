//! Per-VTEP outer header templates: the Ethernet/IPv4/UDP/Geneve headers
//! of a tunnel built once, copied per packet (VPP's `geneve_rewrite()`,
//! OVS's `netdev_geneve_build_header`).
//!
//! An [`OuterTemplate`] holds the 50 header bytes that are the same for
//! every packet towards one remote VTEP (MACs, addresses, TTL, DF,
//! protocol numbers, the UDP destination port, Geneve version and
//! protocol) and the ones-complement sum of its IPv4 header with the
//! variable fields zero. Per packet, [`OuterTemplate::write`] copies the
//! bytes and patches only what varies: IPv4 total length, identification
//! (non-DF tunnels) and header checksum (from the precomputed sum, no pass
//! over the header), UDP source port (flow entropy) and length, Geneve
//! option length, critical bit and VNI, the option TLV when the key has
//! one, the source address when the key overrides it, and the UDP
//! checksum when the tunnel computes it. The result is byte-identical to
//! building every field (see the tests).
//!
//! [`TemplateCache`] is a PMD's map from remote VTEP address to its
//! template and VTEP entry. It is built lazily, on the first packet
//! towards a VTEP whose next hop is resolved, and emptied whenever the
//! tunnel configuration, the VTEP table or the neighbour bindings publish
//! a new generation, so a template never outlives the MAC or the addresses
//! it was built from.
//!
//! Thread-safety: plain data owned by one PMD; no lock, and no allocation
//! per packet (the map only grows on a miss, bounded by the VTEP count).

use std::net::Ipv4Addr;
use std::sync::Arc;

use hashbrown::HashMap;

use super::vtep::Vtep;
use crate::wire::checksum;
use crate::wire::geneve::{self, GeneveOption};
use crate::wire::{
    ethernet, ipv4, udp, EtherType, EthernetAddress, EthernetFrame, GenevePacket, IpProtocol,
    Ipv4Packet, UdpPacket,
};

/// Outer Ethernet header length.
pub const ETH_LEN: usize = ethernet::HEADER_LEN;
/// Outer IPv4 header length (no options).
pub const IP_LEN: usize = ipv4::HEADER_LEN;
/// Outer UDP header length.
pub const UDP_LEN: usize = udp::HEADER_LEN;
/// Outer headers without Geneve options, Ethernet included: 50 bytes.
pub const OUTER_LEN: usize = ETH_LEN + IP_LEN + UDP_LEN + geneve::HEADER_LEN;

/// Where the outer IPv4 header starts.
const IP_AT: usize = ETH_LEN;
/// Where the outer UDP header starts.
const UDP_AT: usize = ETH_LEN + IP_LEN;
/// Where the Geneve header starts.
const GENEVE_AT: usize = UDP_AT + UDP_LEN;

/// What the outer headers towards one remote VTEP are built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateParams {
    /// The underlay next hop's MAC (outer destination MAC).
    pub dst_mac: [u8; 6],
    /// The uplink's MAC (outer source MAC).
    pub src_mac: [u8; 6],
    /// The local VTEP address (outer source unless a packet overrides it).
    pub src: Ipv4Addr,
    /// The remote VTEP address (outer destination).
    pub dst: Ipv4Addr,
    /// Outer TTL.
    pub ttl: u8,
    /// Outer don't-fragment bit.
    pub df: bool,
    /// Outer UDP destination port.
    pub dst_port: u16,
    /// Compute the outer UDP checksum (otherwise 0).
    pub udp_checksum: bool,
}

/// The fields of one packet's outer headers that are not in the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerPacket {
    /// Outer source address (the template's unless the key sets one).
    pub src: Ipv4Addr,
    /// IPv4 identification (0 when DF is set).
    pub ident: u16,
    /// Length of the frame being encapsulated (inner Ethernet onwards).
    pub inner_len: usize,
    /// UDP source port (flow entropy).
    pub sport: u16,
    /// Geneve VNI (24 bits).
    pub vni: u32,
    /// The one option TLV: class, type, data (4 or 8 bytes used).
    pub option: Option<(u16, u8, OptionData)>,
}

/// Option data as emitted: 4 bytes when the value fits in 32 bits, else 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionData {
    bytes: [u8; 8],
    len: usize,
}

impl OptionData {
    /// The encoding of `tun_metadata0` (a big-endian integer): 4 data
    /// bytes when it fits in 32 bits, 8 otherwise.
    #[inline]
    pub fn from_metadata(md: u64) -> OptionData {
        match u32::try_from(md) {
            Ok(v) => {
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&v.to_be_bytes());
                OptionData { bytes, len: 4 }
            }
            Err(_) => OptionData {
                bytes: md.to_be_bytes(),
                len: 8,
            },
        }
    }

    /// The data bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl PerPacket {
    /// Bytes of the option TLV (0 without one).
    #[inline]
    pub fn option_len(&self) -> usize {
        self.option.map_or(0, |(_, _, d)| 4 + d.len)
    }

    /// Bytes the outer headers take: [`OUTER_LEN`] plus the option.
    #[inline]
    pub fn header_len(&self) -> usize {
        OUTER_LEN + self.option_len()
    }

    /// The outer IPv4 total length.
    #[inline]
    pub fn ip_total(&self) -> usize {
        IP_LEN + UDP_LEN + geneve::HEADER_LEN + self.option_len() + self.inner_len
    }
}

/// The precomputed outer headers towards one remote VTEP.
#[derive(Debug, Clone)]
pub struct OuterTemplate {
    bytes: [u8; OUTER_LEN],
    /// Folded ones-complement sum of the template's IPv4 header, with
    /// total length, identification and checksum zero.
    ip_sum: u16,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    udp_checksum: bool,
}

impl OuterTemplate {
    /// Builds the template for `p`.
    pub fn new(p: &TemplateParams) -> OuterTemplate {
        let mut bytes = [0u8; OUTER_LEN];
        let mut eth = EthernetFrame::new_unchecked(&mut bytes[..ETH_LEN]);
        eth.set_dst_addr(EthernetAddress(p.dst_mac));
        eth.set_src_addr(EthernetAddress(p.src_mac));
        eth.set_ethertype(EtherType::Ipv4);
        let mut ip = Ipv4Packet::new_unchecked(&mut bytes[IP_AT..UDP_AT]);
        ip.set_version_and_header_len(IP_LEN as u8);
        ip.set_fragment(p.df, false, 0);
        ip.set_hop_limit(p.ttl);
        ip.set_next_header(IpProtocol::Udp);
        ip.set_src_addr(p.src);
        ip.set_dst_addr(p.dst);
        let ip_sum = checksum::data(&bytes[IP_AT..UDP_AT]);
        UdpPacket::new_unchecked(&mut bytes[UDP_AT..GENEVE_AT]).set_dst_port(p.dst_port);
        GenevePacket::new_unchecked(&mut bytes[GENEVE_AT..])
            .set_protocol(EtherType::TransparentEthernet);
        OuterTemplate {
            bytes,
            ip_sum,
            src: p.src,
            dst: p.dst,
            udp_checksum: p.udp_checksum,
        }
    }

    /// Writes the outer headers of one packet at the front of `frame` (the
    /// whole frame after `prepend(pp.header_len())`; the inner frame
    /// follows the headers).
    ///
    /// # Panics
    /// When `frame` is shorter than `pp.header_len()` (the caller
    /// prepended exactly that much).
    #[inline]
    pub fn write(&self, frame: &mut [u8], pp: &PerPacket) {
        let (hdr, _) = frame.split_at_mut(pp.header_len());
        hdr[..OUTER_LEN].copy_from_slice(&self.bytes);
        let ip_total = pp.ip_total() as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut hdr[IP_AT..UDP_AT]);
        ip.set_total_len(ip_total);
        ip.set_ident(pp.ident);
        // The template's sum plus the variable words: the same bits as a
        // sum over the finished header, since both are non-zero sums of
        // the same words modulo 0xffff.
        let mut sum = checksum::combine(&[self.ip_sum, ip_total, pp.ident]);
        if pp.src != self.src {
            ip.set_src_addr(pp.src);
            let (old, new) = (u32::from(self.src), u32::from(pp.src));
            sum = checksum::combine(&[
                sum,
                !(old >> 16) as u16,
                !(old as u16),
                (new >> 16) as u16,
                new as u16,
            ]);
        }
        ip.set_checksum(checksum::finish(sum));
        let mut u = UdpPacket::new_unchecked(&mut hdr[UDP_AT..GENEVE_AT]);
        u.set_src_port(pp.sport);
        u.set_len(ip_total - IP_LEN as u16);
        let mut g = GenevePacket::new_unchecked(&mut hdr[GENEVE_AT..]);
        g.set_version_and_options_len(pp.option_len());
        let critical = pp
            .option
            .is_some_and(|(_, kind, _)| kind & geneve::OPTION_TYPE_CRITICAL != 0);
        g.set_flags(false, critical);
        g.set_vni(pp.vni);
        if let Some((class, kind, data)) = pp.option {
            let opt = GeneveOption {
                class,
                kind,
                data: data.as_bytes(),
            };
            // Cannot fail: 4 or 8 data bytes, room reserved by header_len.
            let _ = opt.emit(g.options_mut());
        }
        if self.udp_checksum {
            UdpPacket::new_unchecked(&mut frame[UDP_AT..]).fill_checksum(pp.src, self.dst);
        }
    }
}

/// A cached template and the VTEP entry it was built for (its counters).
#[derive(Debug)]
pub struct CachedVtep {
    /// The remote VTEP.
    pub vtep: Arc<Vtep>,
    /// Its outer headers.
    pub template: OuterTemplate,
}

/// A PMD's templates, keyed by remote VTEP address, valid for one
/// generation of the configuration, the VTEP table and the neighbours.
#[derive(Debug, Default)]
pub struct TemplateCache {
    generations: (u64, u64, u64),
    map: HashMap<Ipv4Addr, CachedVtep>,
}

impl TemplateCache {
    /// Empties the cache when any of the three generations moved.
    #[inline]
    pub fn validate(&mut self, config: u64, vteps: u64, neigh: u64) {
        let g = (config, vteps, neigh);
        if g != self.generations {
            self.map.clear();
            self.generations = g;
        }
    }

    /// The cached entry for `dst`.
    #[inline]
    pub fn get(&self, dst: Ipv4Addr) -> Option<&CachedVtep> {
        self.map.get(&dst)
    }

    /// Caches `entry` for `dst` (miss path) and returns it.
    pub fn insert(&mut self, dst: Ipv4Addr, entry: CachedVtep) -> &CachedVtep {
        self.map.entry(dst).insert(entry).into_mut()
    }

    /// Number of cached templates.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
