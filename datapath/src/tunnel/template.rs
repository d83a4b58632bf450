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
//! checksum when the tunnel computes it. The common case (no option, the
//! template's source, no UDP checksum) takes a branch-free path: one copy
//! and six stores. The result is byte-identical to building every field
//! (see the tests).
//!
//! [`TemplateCache`] is a PMD's map from remote VTEP address to its
//! template and VTEP entry, remembering the entry found last (a burst
//! towards one VTEP costs one compare per packet). It is built lazily, on
//! the first packet towards a VTEP whose next hop is resolved, and
//! emptied whenever the
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
        self.option
            .map_or(0, |(_, _, d)| geneve::OPTION_HEADER_LEN + d.len)
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
        if pp.option.is_none() && pp.src == self.src && !self.udp_checksum {
            self.write_plain(frame, pp);
            return;
        }
        self.write_general(frame, pp);
    }

    /// The common case (no option, the template's source, no UDP
    /// checksum): one copy and six stores, no branch on rare features.
    /// The Geneve option length and flags are the template's zeros.
    #[inline(always)]
    fn write_plain(&self, frame: &mut [u8], pp: &PerPacket) {
        let Some(hdr) = frame.first_chunk_mut::<OUTER_LEN>() else {
            // Unreachable by the contract (the caller prepended
            // `header_len()`); the general path reports it.
            return self.write_general(frame, pp);
        };
        *hdr = self.bytes;
        let ip_total = pp.ip_total() as u16;
        let sum = checksum::combine(&[self.ip_sum, ip_total, pp.ident]);
        let mut ip = Ipv4Packet::new_unchecked(&mut hdr[IP_AT..UDP_AT]);
        ip.set_total_len(ip_total);
        ip.set_ident(pp.ident);
        ip.set_checksum(checksum::finish(sum));
        let mut u = UdpPacket::new_unchecked(&mut hdr[UDP_AT..GENEVE_AT]);
        u.set_src_port(pp.sport);
        u.set_len(ip_total - IP_LEN as u16);
        GenevePacket::new_unchecked(&mut hdr[GENEVE_AT..]).set_vni(pp.vni);
    }

    /// Every case: option, source override, UDP checksum.
    fn write_general(&self, frame: &mut [u8], pp: &PerPacket) {
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
///
/// Entries live in a vector indexed by a map; the entry the previous
/// packet used is remembered, so a burst of packets towards one VTEP (the
/// common case: one flow batch) finds its template with one compare
/// instead of a hash lookup.
#[derive(Debug, Default)]
pub struct TemplateCache {
    generations: (u64, u64, u64),
    index: HashMap<Ipv4Addr, usize>,
    entries: Vec<CachedVtep>,
    /// The address and index of the entry found last.
    last: Option<(Ipv4Addr, usize)>,
}

impl TemplateCache {
    /// Empties the cache when any of the three generations moved.
    #[inline]
    pub fn validate(&mut self, config: u64, vteps: u64, neigh: u64) {
        let g = (config, vteps, neigh);
        if g != self.generations {
            self.index.clear();
            self.entries.clear();
            self.last = None;
            self.generations = g;
        }
    }

    /// The cached entry for `dst`.
    #[inline]
    pub fn get(&mut self, dst: Ipv4Addr) -> Option<&CachedVtep> {
        let i = match self.last {
            Some((d, i)) if d == dst => i,
            _ => {
                let i = *self.index.get(&dst)?;
                self.last = Some((dst, i));
                i
            }
        };
        self.entries.get(i)
    }

    /// Caches `entry` for `dst` (miss path) and returns it.
    pub fn insert(&mut self, dst: Ipv4Addr, entry: CachedVtep) -> &CachedVtep {
        let i = match self.index.get(&dst) {
            Some(&i) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                self.index.insert(dst, self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        self.last = Some((dst, i));
        &self.entries[i]
    }

    /// Number of cached templates.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The outer headers as encap wrote them field by field before
    /// templates (kept verbatim as the oracle).
    #[allow(clippy::too_many_arguments)]
    fn field_by_field(
        f: &mut [u8],
        p: &TemplateParams,
        src: Ipv4Addr,
        ident: u16,
        sport: u16,
        vni: u32,
        opt: Option<(u16, u8, u64)>,
        inner_len: usize,
    ) {
        let opt_data_len = opt.map(|(_, _, md)| if md <= u64::from(u32::MAX) { 4 } else { 8 });
        let opt_len = opt_data_len.map_or(0, |d| 4 + d);
        let ip_total = 20 + 8 + 8 + opt_len + inner_len;
        let dst = p.dst;
        f[0..6].copy_from_slice(&p.dst_mac);
        f[6..12].copy_from_slice(&p.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&(ip_total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&ident.to_be_bytes());
        ip[6..8].copy_from_slice(&(if p.df { 0x4000u16 } else { 0 }).to_be_bytes());
        ip[8] = p.ttl;
        ip[9] = 17;
        ip[10..12].copy_from_slice(&[0, 0]);
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let c = checksum::finish(checksum::data(ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let u = 34;
        let udp_len = (ip_total - 20) as u16;
        f[u..u + 2].copy_from_slice(&sport.to_be_bytes());
        f[u + 2..u + 4].copy_from_slice(&p.dst_port.to_be_bytes());
        f[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
        f[u + 6..u + 8].copy_from_slice(&[0, 0]);
        let g = u + 8;
        let (class, kind, md) = opt.unwrap_or((0, 0, 0));
        let critical = opt_data_len.is_some() && kind & 0x80 != 0;
        f[g] = (opt_len / 4) as u8;
        f[g + 1] = if critical { 0x40 } else { 0 };
        f[g + 2..g + 4].copy_from_slice(&0x6558u16.to_be_bytes());
        f[g + 4..g + 8].copy_from_slice(&(vni << 8).to_be_bytes());
        if let Some(dlen) = opt_data_len {
            let o = g + 8;
            f[o..o + 2].copy_from_slice(&class.to_be_bytes());
            f[o + 2] = kind;
            f[o + 3] = (dlen / 4) as u8;
            if dlen == 4 {
                f[o + 4..o + 8].copy_from_slice(&(md as u32).to_be_bytes());
            } else {
                f[o + 4..o + 12].copy_from_slice(&md.to_be_bytes());
            }
        }
        if p.udp_checksum {
            let pseudo = checksum::pseudo_header_v4(src, dst, 17, udp_len);
            let sum = checksum::combine(&[pseudo, checksum::data(&f[u..])]);
            let c = checksum::udp_nonzero(checksum::finish(sum));
            f[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
        }
    }

    fn params() -> impl Strategy<Value = TemplateParams> {
        (
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            any::<u32>(),
            any::<u32>(),
            any::<u8>(),
            any::<bool>(),
            any::<u16>(),
            any::<bool>(),
        )
            .prop_map(
                |(dst_mac, src_mac, src, dst, ttl, df, dst_port, udp_checksum)| TemplateParams {
                    dst_mac,
                    src_mac,
                    src: src.into(),
                    dst: dst.into(),
                    ttl,
                    df,
                    dst_port,
                    udp_checksum,
                },
            )
    }

    proptest! {
        #[test]
        fn template_output_is_byte_identical_to_field_by_field(
            p in params(),
            src_override in proptest::option::of(any::<u32>()),
            ident in any::<u16>(),
            sport in any::<u16>(),
            vni in 0u32..=geneve::MAX_VNI,
            opt in proptest::option::of((any::<u16>(), any::<u8>(), prop_oneof![
                any::<u32>().prop_map(u64::from),
                any::<u64>(),
            ])),
            inner in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let src = src_override.map_or(p.src, Ipv4Addr::from);
            let pp = PerPacket {
                src,
                ident,
                inner_len: inner.len(),
                sport,
                vni,
                option: opt.map(|(c, k, md)| (c, k, OptionData::from_metadata(md))),
            };
            let hdr = pp.header_len();
            let mut want = vec![0u8; hdr + inner.len()];
            want[hdr..].copy_from_slice(&inner);
            let mut got = want.clone();
            // Garbage where the headers go: the template must write every byte.
            got[..hdr].fill(0xa5);
            field_by_field(&mut want, &p, src, ident, sport, vni, opt, inner.len());
            OuterTemplate::new(&p).write(&mut got, &pp);
            prop_assert_eq!(&got[..hdr], &want[..hdr]);
            prop_assert_eq!(&got[hdr..], &inner[..]);
        }
    }

    #[test]
    fn cache_empties_when_a_generation_moves() {
        let p = TemplateParams {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            ttl: 64,
            df: true,
            dst_port: geneve::UDP_PORT,
            udp_checksum: false,
        };
        let table = super::super::vtep::VtepTable::new(1);
        table.add("n", p.dst).expect("vtep");
        let vtep = table.entries().remove(0);
        let mut c = TemplateCache::default();
        c.validate(1, 1, 1);
        c.insert(
            p.dst,
            CachedVtep {
                vtep,
                template: OuterTemplate::new(&p),
            },
        );
        c.validate(1, 1, 1);
        assert_eq!(c.len(), 1);
        for g in [(2, 1, 1), (2, 2, 1), (2, 2, 2)] {
            c.validate(g.0, g.1, g.2);
            assert!(c.is_empty() && c.get(p.dst).is_none(), "{g:?}");
            c.insert(
                p.dst,
                CachedVtep {
                    vtep: table.entries().remove(0),
                    template: OuterTemplate::new(&p),
                },
            );
        }
    }
}
