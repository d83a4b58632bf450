//! Packet side of connection tracking: parsing the tuple of an IPv4
//! packet (and of the packet embedded in an ICMP error), rewriting it for
//! NAT with incremental checksum updates, and turning a packet into an ICMP
//! port-unreachable reply (the Service reject).
//!
//! Headers are read and written through `wire` views and patched with
//! `wire::checksum` (RFC 1624): every rewritten 16-bit word updates the IPv4 header
//! checksum and the transport checksum that covers it (TCP, UDP unless its
//! checksum is 0, ICMP for the echo id and for every word of an embedded
//! packet). SCTP's CRC32c cannot be patched and is recomputed after a port
//! rewrite. Nothing here panics on short or hostile input: parsing checks
//! every length and a failed write is a [`DropReason::Malformed`].
//!
//! Thread-safety: pure functions over the caller's buffer.

use crate::drop::DropReason;
use crate::flow::key::ipproto;
use crate::packet::PacketBuf;
use crate::wire::checksum::{self, L4Checksum};
use crate::wire::{
    ethernet, icmpv4, ipv4, sctp, tcp, udp, vlan, EtherType, EthernetFrame, Icmpv4DstUnreachable,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, VlanPacket,
};

/// The tuple of a packet or connection direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    /// Source address.
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port (ICMP: echo id).
    pub sport: u16,
    /// Destination port (ICMP: echo id).
    pub dport: u16,
}

impl Tuple {
    /// The tuple of a packet going the other way.
    pub fn reverse(self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// What kind of L4 header a parsed packet has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// TCP, UDP or SCTP (ports at the start of the header).
    Ports,
    /// ICMP echo request (true) or reply (false); ports hold the id.
    Echo(bool),
    /// ICMP error; `inner` is the offset of the embedded IPv4 header.
    IcmpError {
        /// Offset of the embedded IPv4 header in the frame.
        inner: usize,
    },
    /// Another protocol (tracked by addresses only) or other ICMP.
    Other,
}

/// An IPv4 packet's headers as conntrack sees them.
#[derive(Debug, Clone, Copy)]
pub struct Parsed {
    /// Offset of the IPv4 header.
    pub l3: usize,
    /// Offset of the L4 header.
    pub l4: usize,
    /// End of the IPv4 packet (excludes Ethernet padding).
    pub end: usize,
    /// IP protocol.
    pub proto: u8,
    /// Addresses and ports.
    pub tuple: Tuple,
    /// L4 kind.
    pub kind: L4,
}

/// Why a packet cannot be tracked (it gets `+trk+inv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrackable {
    /// Not IPv4.
    NotIpv4,
    /// Truncated or inconsistent headers, or a fragment.
    Malformed,
}

/// Offset of the IPv4 header after up to two VLAN tags, or `None` when
/// the frame is not IPv4.
#[inline]
fn l3_offset(f: &[u8]) -> Option<usize> {
    let eth = EthernetFrame::new_unchecked(f.get(..ethernet::HEADER_LEN)?);
    let mut ty = eth.ethertype();
    let mut off = ethernet::HEADER_LEN;
    for _ in 0..3 {
        match ty {
            EtherType::Ipv4 => return Some(off),
            EtherType::Vlan | EtherType::QinQ => {
                let tag = VlanPacket::new_unchecked(f.get(off..off + vlan::HEADER_LEN)?);
                ty = tag.ethertype();
                off += vlan::HEADER_LEN;
            }
            _ => return None,
        }
    }
    None
}

fn is_icmp_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// The two ports at the start of a TCP, UDP or SCTP header (`b` holds at
/// least [`PORTS_LEN`] bytes). The UDP view reads them: the three share
/// the layout.
#[inline]
fn ports(b: &[u8]) -> (u16, u16) {
    let p = UdpPacket::new_unchecked(b);
    (p.src_port(), p.dst_port())
}

/// The two port fields at the start of a TCP, UDP or SCTP header.
const PORTS_LEN: usize = 4;

/// Parses the IPv4 header at `l3` (`limit` bounds it) and its L4 ports.
/// `embedded` relaxes the length checks for the truncated packet inside
/// an ICMP error (only 8 bytes of L4 are guaranteed).
#[inline]
fn parse_ip(f: &[u8], l3: usize, embedded: bool) -> Result<Parsed, Untrackable> {
    use Untrackable::Malformed;
    let ip = Ipv4Packet::new_unchecked(f.get(l3..l3 + ipv4::HEADER_LEN).ok_or(Malformed)?);
    let ihl = usize::from(ip.header_len());
    if ip.version() != 4 || ihl < ipv4::HEADER_LEN || f.len() < l3 + ihl {
        return Err(Malformed);
    }
    let total = usize::from(ip.total_len());
    let end = if embedded {
        f.len()
    } else {
        if total < ihl || l3 + total > f.len() {
            return Err(Malformed);
        }
        l3 + total
    };
    if ip.is_fragment() {
        // Fragments are not reassembled: untrackable.
        return Err(Malformed);
    }
    let proto = u8::from(ip.next_header());
    let l4 = l3 + ihl;
    let mut tuple = Tuple {
        src: ip.src_addr().into(),
        dst: ip.dst_addr().into(),
        sport: 0,
        dport: 0,
    };
    let need = |n: usize| {
        if l4 + n <= end {
            Ok(())
        } else {
            Err(Malformed)
        }
    };
    let kind = match proto {
        ipproto::TCP | ipproto::UDP | ipproto::SCTP => {
            let min = match (embedded, proto) {
                (true, _) => PORTS_LEN,
                (false, ipproto::TCP) => tcp::HEADER_LEN,
                (false, ipproto::UDP) => udp::HEADER_LEN,
                _ => sctp::HEADER_LEN,
            };
            need(min)?;
            (tuple.sport, tuple.dport) = ports(&f[l4..l4 + PORTS_LEN]);
            L4::Ports
        }
        ipproto::ICMP => {
            need(icmpv4::HEADER_LEN)?;
            let icmp = Icmpv4Packet::new_unchecked(&f[l4..l4 + icmpv4::HEADER_LEN]);
            match u8::from(icmp.msg_type()) {
                ty @ (0 | 8) => {
                    let id = icmp.echo_ident();
                    tuple.sport = id;
                    tuple.dport = id;
                    L4::Echo(ty == 8)
                }
                t if is_icmp_error(t) && !embedded => {
                    need(icmpv4::HEADER_LEN + ipv4::HEADER_LEN)?;
                    L4::IcmpError {
                        inner: l4 + icmpv4::HEADER_LEN,
                    }
                }
                _ => L4::Other,
            }
        }
        _ => L4::Other,
    };
    Ok(Parsed {
        l3,
        l4,
        end,
        proto,
        tuple,
        kind,
    })
}

/// Parses an Ethernet frame for conntrack.
#[inline]
pub fn parse(f: &[u8]) -> Result<Parsed, Untrackable> {
    let l3 = l3_offset(f).ok_or(Untrackable::NotIpv4)?;
    parse_ip(f, l3, false)
}

/// Parses the packet embedded in the ICMP error `outer`.
pub fn parse_embedded(f: &[u8], outer: &Parsed) -> Result<Parsed, Untrackable> {
    match outer.kind {
        L4::IcmpError { inner } => parse_ip(&f[..outer.end], inner, true),
        _ => Err(Untrackable::Malformed),
    }
}

/// TCP segment fields for the state machine.
#[inline]
pub fn tcp_segment(f: &[u8], p: &Parsed) -> Option<super::tcp::Segment> {
    let l4 = p.l4;
    let tcp = TcpPacket::new_unchecked(f.get(l4..)?.get(..tcp::HEADER_LEN)?);
    let doff = usize::from(tcp.header_len());
    if doff < tcp::HEADER_LEN || l4 + doff > p.end {
        return None;
    }
    let flags = tcp.flags().bits() as u8;
    let mut wscale = None;
    if flags & super::tcp::flags::SYN != 0 {
        let header = TcpPacket::new_unchecked(&f[l4..l4 + doff]);
        let mut opts = tcp::OptionIter::new(header.options());
        for (kind, data) in opts.by_ref() {
            if let (3, &[shift]) = (kind, data) {
                wscale = Some(shift);
            }
        }
        if opts.lone_kind() {
            // A lone kind byte at the end of the options: its length byte
            // would be the first payload byte, which cannot fit either; a
            // frame that ends here is not a segment.
            f.get(l4 + doff)?;
        }
    }
    Some(super::tcp::Segment {
        seq: tcp.seq_number(),
        ack: tcp.ack_number(),
        flags,
        win: tcp.window_len(),
        len: (p.end - l4 - doff) as u32,
        wscale,
    })
}

/// The checksum that covers every word a rewrite changes (the ICMP
/// checksum of an error quoting the packet being patched), updated word by
/// word as the old code patched it in place, skipping unchanged words.
/// `ON` is false for a plain rewrite, where nothing covers the packet and
/// the bookkeeping compiles away.
struct Cover<const ON: bool>(u16);

impl<const ON: bool> Cover<ON> {
    #[inline(always)]
    fn word(&mut self, old: u16, new: u16) {
        if ON && old != new {
            self.0 = checksum::update16(self.0, old, new);
        }
    }

    #[inline(always)]
    fn addr(&mut self, old: u32, new: u32) {
        self.word((old >> 16) as u16, (new >> 16) as u16);
        self.word(old as u16, new as u16);
    }
}

/// Rewrites the packet at `p` (its headers up to `avail` bytes) to carry
/// `to`, keeping the IPv4 and transport checksums and `cover` right.
/// Transport checksums beyond `avail` are left alone (the truncated packet
/// inside an ICMP error).
#[inline]
fn retarget<const COVER: bool>(
    f: &mut [u8],
    p: &Parsed,
    to: Tuple,
    avail: usize,
    cover: &mut Cover<COVER>,
) -> Option<()> {
    let from = p.tuple;
    // Where the transport checksum ends, when it is there to patch.
    let l4ck_end = match (p.proto, p.kind) {
        (ipproto::TCP, L4::Ports) => p.l4 + tcp::CHECKSUM_END,
        (ipproto::UDP, L4::Ports) => p.l4 + udp::HEADER_LEN,
        _ => usize::MAX,
    };
    let mut l4ck = if l4ck_end <= avail {
        let b = f.get(p.l4..l4ck_end)?;
        if p.proto == ipproto::TCP {
            L4Checksum::Tcp(TcpPacket::new_unchecked(b).checksum())
        } else {
            L4Checksum::Udp(UdpPacket::new_unchecked(b).checksum())
        }
    } else {
        L4Checksum::None
    };
    let mut l4_changed = false;
    // Updates the transport checksum and the cover with it.
    let mut fix_l4 = |l4ck: &mut L4Checksum, cover: &mut Cover<COVER>, next: L4Checksum| {
        if let (true, Some(old), Some(new)) = (COVER, l4ck.value(), next.value()) {
            cover.word(old, new);
        }
        *l4ck = next;
        l4_changed = true;
    };
    let mut ip = Ipv4Packet::new_unchecked(f.get_mut(p.l3..p.l3 + ipv4::HEADER_LEN)?);
    // One address (`src`: source, else destination) from `old` to `new`.
    let mut addr = |ip: &mut Ipv4Packet<&mut [u8]>,
                    l4ck: &mut L4Checksum,
                    cover: &mut Cover<COVER>,
                    src: bool,
                    old: u32,
                    new: u32| {
        if src {
            ip.set_src_addr(new.into());
        } else {
            ip.set_dst_addr(new.into());
        }
        cover.addr(old, new);
        let ck = ip.checksum();
        let n = checksum::update32(ck, old, new);
        ip.set_checksum(n);
        cover.word(ck, n);
        let next = l4ck.update32(old, new);
        fix_l4(l4ck, cover, next);
    };
    if from.src != to.src {
        addr(&mut ip, &mut l4ck, cover, true, from.src, to.src);
    }
    if from.dst != to.dst {
        addr(&mut ip, &mut l4ck, cover, false, from.dst, to.dst);
    }
    match p.kind {
        L4::Ports => {
            let mut hdr = UdpPacket::new_unchecked(f.get_mut(p.l4..p.l4 + PORTS_LEN)?);
            if from.sport != to.sport {
                hdr.set_src_port(to.sport);
                cover.word(from.sport, to.sport);
                let next = l4ck.update16(from.sport, to.sport);
                fix_l4(&mut l4ck, cover, next);
            }
            if from.dport != to.dport {
                hdr.set_dst_port(to.dport);
                cover.word(from.dport, to.dport);
                let next = l4ck.update16(from.dport, to.dport);
                fix_l4(&mut l4ck, cover, next);
            }
        }
        L4::Echo(_) if from.sport != to.sport && p.l4 + icmpv4::HEADER_LEN <= avail => {
            let mut icmp = Icmpv4Packet::new_unchecked(f.get_mut(p.l4..p.l4 + icmpv4::HEADER_LEN)?);
            icmp.set_echo_ident(to.sport);
            cover.word(from.sport, to.sport);
            let ck = icmp.checksum();
            let n = checksum::update16(ck, from.sport, to.sport);
            icmp.set_checksum(n);
            cover.word(ck, n);
        }
        _ => {}
    }
    if l4_changed {
        match l4ck {
            L4Checksum::Tcp(c) => TcpPacket::new_unchecked(&mut f[p.l4..l4ck_end]).set_checksum(c),
            L4Checksum::Udp(c) => UdpPacket::new_unchecked(&mut f[p.l4..l4ck_end]).set_checksum(c),
            L4Checksum::None => {}
        }
    }
    Some(())
}

/// The sum RFC 1624 eqn. 3 adds for a 16-bit word going from `old` to
/// `new` (`~m + m'`).
#[inline(always)]
fn delta16(old: u16, new: u16) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// [`delta16`] of both halves of a 32-bit field.
#[inline(always)]
fn delta32(old: u32, new: u32) -> u64 {
    delta16((old >> 16) as u16, (new >> 16) as u16) + delta16(old as u16, new as u16)
}

/// [`retarget`] for the common case, a TCP or UDP packet whose headers are
/// whole (`p` from [`parse`]), without a cover: the words that change are
/// written and each checksum is updated once, with the sum of every
/// change's RFC 1624 term (`~m + m'`) folded once, instead of once per
/// word. The same checksums as [`retarget`]: a ones'-complement fold of a
/// fold plus a term is the fold of the whole sum (`fold(fold(a) + b) ==
/// fold(a + b)`), and the UDP rule (0 stays 0, a result of 0 is sent as
/// `0xffff`) is applied to the result as [`retarget`] applies it to each
/// step, which gives the same final value. `None`, having changed
/// nothing, for anything else ([`retarget`] then does it).
#[inline]
fn retarget_ports(f: &mut [u8], p: &Parsed, to: Tuple) -> Option<()> {
    let udp = match (p.proto, p.kind) {
        (ipproto::TCP, L4::Ports) => false,
        (ipproto::UDP, L4::Ports) => true,
        _ => return None,
    };
    let ck_at = if udp { 6 } else { 16 };
    let hdr_len = if udp {
        udp::HEADER_LEN
    } else {
        tcp::HEADER_LEN
    };
    if p.l3 + ipv4::HEADER_LEN > p.l4 || p.l4 + hdr_len > p.end {
        return None;
    }
    let f = f.get_mut(..p.end)?;
    let from = p.tuple;
    let be16 = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    // Addresses: covered by the IPv4 header checksum and, through the
    // pseudo-header, by the transport one.
    let mut addrs = 0u64;
    if from.src != to.src {
        f[p.l3 + 12..p.l3 + 16].copy_from_slice(&to.src.to_be_bytes());
        addrs += delta32(from.src, to.src);
    }
    if from.dst != to.dst {
        f[p.l3 + 16..p.l3 + 20].copy_from_slice(&to.dst.to_be_bytes());
        addrs += delta32(from.dst, to.dst);
    }
    if addrs != 0 {
        let ck = be16(f, p.l3 + 10);
        let n = !checksum::fold(u64::from(!ck) + addrs);
        f[p.l3 + 10..p.l3 + 12].copy_from_slice(&n.to_be_bytes());
    }
    let mut l4 = addrs;
    if from.sport != to.sport {
        f[p.l4..p.l4 + 2].copy_from_slice(&to.sport.to_be_bytes());
        l4 += delta16(from.sport, to.sport);
    }
    if from.dport != to.dport {
        f[p.l4 + 2..p.l4 + 4].copy_from_slice(&to.dport.to_be_bytes());
        l4 += delta16(from.dport, to.dport);
    }
    let at = p.l4 + ck_at;
    let ck = be16(f, at);
    if l4 != 0 && !(udp && ck == 0) {
        let mut n = !checksum::fold(u64::from(!ck) + l4);
        if udp {
            n = checksum::udp_nonzero(n);
        }
        f[at..at + 2].copy_from_slice(&n.to_be_bytes());
    }
    Some(())
}

/// Recomputes the SCTP CRC32c after a port rewrite.
fn fill_sctp(f: &mut [u8], p: &Parsed) {
    if let Some(b) = f.get_mut(p.l4..p.end) {
        if let Ok(mut s) = crate::wire::sctp::Packet::new_checked(b) {
            s.fill_checksum();
        }
    }
}

/// Rewrites packet `p` in `f` so that its tuple becomes `to`.
#[inline]
pub fn rewrite(f: &mut [u8], p: &Parsed, to: Tuple) -> Result<(), DropReason> {
    if p.tuple == to {
        return Ok(());
    }
    if retarget_ports(f, p, to).is_some() {
        return Ok(());
    }
    retarget(f, p, to, p.end, &mut Cover::<false>(0)).ok_or(DropReason::Malformed)?;
    if p.proto == ipproto::SCTP && (p.tuple.sport != to.sport || p.tuple.dport != to.dport) {
        fill_sctp(f, p);
    }
    Ok(())
}

/// Rewrites an ICMP error: the embedded packet `inner` gets tuple
/// `inner_to`, and the outer addresses that named the translated
/// endpoints are translated too (`outer_to`, applied only where the outer
/// address equals the corresponding embedded one).
pub fn rewrite_icmp_error(
    f: &mut [u8],
    outer: &Parsed,
    inner: &Parsed,
    inner_to: Tuple,
) -> Result<(), DropReason> {
    let f = f.get_mut(..outer.end).ok_or(DropReason::Malformed)?;
    let icmp = f
        .get(outer.l4..outer.l4 + icmpv4::HEADER_LEN)
        .map(|b| Icmpv4Packet::new_unchecked(b).checksum())
        .ok_or(DropReason::Malformed)?;
    let mut cover = Cover::<true>(icmp);
    retarget(f, inner, inner_to, outer.end, &mut cover).ok_or(DropReason::Malformed)?;
    Icmpv4Packet::new_unchecked(&mut f[outer.l4..outer.l4 + icmpv4::HEADER_LEN])
        .set_checksum(cover.0);
    // The error travels opposite to the embedded packet: its destination
    // is the embedded source and, when the endpoint itself reported the
    // error, its source is the embedded destination.
    let mut to = outer.tuple;
    if outer.tuple.dst == inner.tuple.src {
        to.dst = inner_to.src;
    }
    if outer.tuple.src == inner.tuple.dst {
        to.src = inner_to.dst;
    }
    retarget(f, outer, to, outer.end, &mut Cover::<false>(0)).ok_or(DropReason::Malformed)
}

/// Bytes of the offending datagram's payload an ICMP error quotes after
/// its IP header (RFC 792).
const QUOTED_L4: usize = 8;

/// Turns the packet `p` into an ICMP destination-unreachable / port-
/// unreachable reply from its destination to its source (Ethernet
/// addresses swapped, VLAN tags kept). Returns `None` when the buffer
/// cannot be resized.
pub fn make_port_unreachable<B: PacketBuf>(pkt: &mut B, p: &Parsed) -> Option<()> {
    let ihl = p.l4 - p.l3;
    let quoted = (ihl + QUOTED_L4).min(p.end - p.l3);
    let mut quote = [0u8; ipv4::MAX_HEADER_LEN + QUOTED_L4];
    quote[..quoted].copy_from_slice(pkt.data().get(p.l3..p.l3 + quoted)?);
    let ip_len = ipv4::HEADER_LEN + icmpv4::HEADER_LEN + quoted;
    let want = p.l3 + ip_len;
    let have = pkt.len();
    if want > have {
        pkt.append(want - have)?;
    } else if want < have && !pkt.trim(have - want) {
        return None;
    }
    let f = pkt.data_mut();
    let mut eth = EthernetFrame::new_unchecked(f.get_mut(..ethernet::HEADER_LEN)?);
    let (src, dst) = (eth.src_addr(), eth.dst_addr());
    eth.set_dst_addr(src);
    eth.set_src_addr(dst);
    let buf = f.get_mut(p.l3..p.l3 + ip_len)?;
    buf.fill(0);
    let mut ip = Ipv4Packet::new_unchecked(&mut *buf);
    ip.set_version_and_header_len(ipv4::HEADER_LEN as u8);
    ip.set_total_len(ip_len as u16);
    ip.set_hop_limit(64);
    ip.set_next_header(IpProtocol::Icmp);
    ip.set_src_addr(p.tuple.dst.into());
    ip.set_dst_addr(p.tuple.src.into());
    ip.fill_checksum();
    let mut icmp = Icmpv4Packet::new_unchecked(&mut buf[ipv4::HEADER_LEN..]);
    icmp.set_msg_type(Icmpv4Message::DstUnreachable);
    icmp.set_msg_code(u8::from(Icmpv4DstUnreachable::PortUnreachable));
    icmp.data_mut()[..quoted].copy_from_slice(&quote[..quoted]);
    icmp.fill_checksum();
    Some(())
}

#[cfg(test)]
#[path = "nat_oracle.rs"]
mod oracle;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::HeapBuf;
    use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, PacketBuilder};
    use proptest::prelude::*;

    /// An Ethernet/IPv4 frame: `kind` 0 TCP, 1 UDP, 2 UDP without checksum,
    /// 3 ICMP echo request, 4 another protocol; `tags` VLAN tags inserted.
    fn frame(kind: u8, tags: usize, t: Tuple, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
            t.src.to_be_bytes(),
            t.dst.to_be_bytes(),
            64,
        );
        let mut v = Vec::new();
        match kind {
            0 => b.tcp(t.sport, t.dport, 7, 1024).write(&mut v, payload),
            1 | 2 => b.udp(t.sport, t.dport).write(&mut v, payload),
            3 => b.icmpv4_echo_request(t.sport, 1).write(&mut v, payload),
            _ => b.write(&mut v, 99.into(), payload),
        }
        .expect("build");
        if kind == 2 {
            v[40..42].fill(0);
        }
        for i in 0..tags {
            let tpid: [u8; 2] = if i == 0 { [0x88, 0xa8] } else { [0x81, 0x00] };
            v.splice(12..12, [tpid[0], tpid[1], 0x20, i as u8 + 1]);
        }
        v
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()).prop_map(
            |(src, dst, sport, dport)| Tuple {
                src,
                dst,
                sport,
                dport,
            },
        )
    }

    /// Optionally overwrites one byte, so malformed and badly-checksummed
    /// inputs are compared too.
    fn mutate(f: &mut [u8], m: Option<(usize, u8)>) {
        if let Some((at, v)) = m {
            if !f.is_empty() {
                let n = f.len();
                f[at % n] = v;
            }
        }
    }

    fn same_parse(a: &Result<Parsed, Untrackable>, b: &Result<Parsed, Untrackable>) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    proptest! {
        #[test]
        fn parse_rewrite_and_segment_match_the_offset_code(
            kind in 0u8..5, tags in 0usize..3, t in tuple(), to in tuple(),
            keep in proptest::collection::vec(any::<bool>(), 4),
            payload in proptest::collection::vec(any::<u8>(), 0..40),
            m in proptest::option::of((any::<usize>(), any::<u8>())),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let mut f = frame(kind, tags, t, &payload);
            mutate(&mut f, m);
            if let Some(c) = cut {
                let n = f.len();
                f.truncate(c % (n + 1));
            }
            let (new, old) = (parse(&f), oracle::parse(&f));
            prop_assert!(same_parse(&new, &old), "{:?} vs {:?}", new, old);
            prop_assert!(new.is_ok() || m.is_some() || cut.is_some(), "intact frames parse");
            let Ok(p) = new else { return Ok(()) };
            prop_assert_eq!(
                format!("{:?}", tcp_segment(&f, &p)),
                format!("{:?}", oracle::tcp_segment(&f, &p))
            );
            // Keep some fields so partial rewrites are covered.
            let to = Tuple {
                src: if keep[0] { p.tuple.src } else { to.src },
                dst: if keep[1] { p.tuple.dst } else { to.dst },
                sport: if keep[2] { p.tuple.sport } else { to.sport },
                dport: if keep[3] { p.tuple.dport } else { to.dport },
            };
            let (mut a, mut b) = (f.clone(), f.clone());
            prop_assert_eq!(rewrite(&mut a, &p, to), oracle::rewrite(&mut b, &p, to));
            prop_assert_eq!(a, b);
            let (mut a, mut b) = (HeapBuf::from_frame(&f), HeapBuf::from_frame(&f));
            prop_assert_eq!(make_port_unreachable(&mut a, &p), oracle::make_port_unreachable(&mut b, &p));
            prop_assert_eq!(a.data(), b.data());
        }

        /// The one-fold rewrite of TCP and UDP packets gives the bytes of
        /// the word-by-word one (and of the offset code), whatever the
        /// checksums held: 0 and `0xffff` (ones'-complement zeros, and
        /// UDP's "no checksum") included.
        #[test]
        fn one_fold_rewrite_matches_the_word_by_word_one(
            udp in any::<bool>(), t in tuple(), to in tuple(),
            keep in proptest::collection::vec(any::<bool>(), 4),
            ip_ck in prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
            l4_ck in prop_oneof![Just(0u16), Just(0xffff), any::<u16>()],
            payload in proptest::collection::vec(any::<u8>(), 0..20),
            zero_result in any::<bool>(),
        ) {
            let mut f = frame(if udp { 1 } else { 0 }, 0, t, &payload);
            f[24..26].copy_from_slice(&ip_ck.to_be_bytes());
            let to = Tuple {
                src: if keep[0] { t.src } else { to.src },
                dst: if keep[1] { t.dst } else { to.dst },
                sport: if keep[2] { t.sport } else { to.sport },
                dport: if keep[3] { t.dport } else { to.dport },
            };
            // With `zero_result`, the transport checksum whose update is
            // 0 (sent as 0xffff by UDP): `c` with `!fold(!c + d) == 0` is
            // `fold(d)`, `d` the sum of the changes' terms.
            let l4_ck = if zero_result {
                let mut d = 0u64;
                if t.src != to.src { d += delta32(t.src, to.src); }
                if t.dst != to.dst { d += delta32(t.dst, to.dst); }
                if t.sport != to.sport { d += delta16(t.sport, to.sport); }
                if t.dport != to.dport { d += delta16(t.dport, to.dport); }
                checksum::fold(d)
            } else {
                l4_ck
            };
            let at = 34 + if udp { 6 } else { 16 };
            f[at..at + 2].copy_from_slice(&l4_ck.to_be_bytes());
            let p = parse(&f).expect("parse");
            prop_assert_eq!(p.tuple, t);
            let (mut a, mut b, mut c) = (f.clone(), f.clone(), f.clone());
            prop_assert_eq!(retarget_ports(&mut a, &p, to), Some(()));
            prop_assert_eq!(retarget(&mut b, &p, to, p.end, &mut Cover::<false>(0)), Some(()));
            prop_assert_eq!(oracle::rewrite(&mut c, &p, to), Ok(()));
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(&a, &c);
        }

        #[test]
        fn icmp_error_rewrite_matches_the_offset_code(
            kind in 0u8..3, t in tuple(), to in tuple(), same_src in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..16),
            m in proptest::option::of((any::<usize>(), any::<u8>())),
        ) {
            // The embedded packet (whose IP header and 8 bytes are quoted)
            // and the error about it, sent back towards its source.
            let inner = frame(kind, 0, t, &payload);
            let quoted = &inner[14..(14 + 20 + 8).min(inner.len())];
            let reporter = if same_src { t.dst } else { 0x0a00_00fe };
            let mut f = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
                .ipv4(reporter.to_be_bytes(), t.src.to_be_bytes(), 64)
                .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port))
                .write(&mut f, quoted)
                .expect("build");
            mutate(&mut f, m);
            let (new, old) = (parse(&f), oracle::parse(&f));
            prop_assert!(same_parse(&new, &old));
            prop_assert!(new.is_ok() || m.is_some(), "intact errors parse");
            let Ok(outer) = new else { return Ok(()) };
            let (new, old) = (parse_embedded(&f, &outer), oracle::parse_embedded(&f, &outer));
            prop_assert!(same_parse(&new, &old));
            prop_assert!(new.is_ok() || m.is_some(), "intact errors parse");
            let Ok(inner) = new else { return Ok(()) };
            let (mut a, mut b) = (f.clone(), f.clone());
            prop_assert_eq!(
                rewrite_icmp_error(&mut a, &outer, &inner, to),
                oracle::rewrite_icmp_error(&mut b, &outer, &inner, to)
            );
            prop_assert_eq!(a, b);
        }

        #[test]
        fn arbitrary_bytes_parse_like_the_offset_code(
            bytes in proptest::collection::vec(any::<u8>(), 0..120), ty in 0usize..3,
        ) {
            let mut f = bytes;
            if f.len() >= 14 {
                let tpid = [0x0800u16, 0x8100, 0x88a8][ty];
                f[12..14].copy_from_slice(&tpid.to_be_bytes());
                if f.len() > 14 && ty == 0 {
                    f[14] = 0x45;
                }
            }
            let (new, old) = (parse(&f), oracle::parse(&f));
            prop_assert!(same_parse(&new, &old));
            if let Ok(p) = new {
                prop_assert_eq!(
                    format!("{:?}", tcp_segment(&f, &p)),
                    format!("{:?}", oracle::tcp_segment(&f, &p))
                );
            }
        }
    }
}
