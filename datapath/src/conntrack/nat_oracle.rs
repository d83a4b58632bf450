//! The NAT packet code as it was before it used `wire` views (raw
//! offsets, in-place checksum patching), kept verbatim as the oracle the
//! view-based code in `nat.rs` is compared against byte for byte.

#![allow(dead_code)]

use crate::conntrack::nat::{Parsed, Tuple, Untrackable, L4};
use crate::drop::DropReason;
use crate::flow::key::ipproto;
use crate::packet::PacketBuf;
use crate::wire::checksum;

fn rd16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

fn rd32(f: &[u8], off: usize) -> Option<u32> {
    let b = f.get(off..off + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn wr16(f: &mut [u8], off: usize, v: u16) -> Option<()> {
    f.get_mut(off..off + 2)?.copy_from_slice(&v.to_be_bytes());
    Some(())
}

/// Offset of the IPv4 header after up to two VLAN tags, or `None` when
/// the frame is not IPv4.
fn l3_offset(f: &[u8]) -> Option<usize> {
    let mut off = 12;
    for _ in 0..3 {
        match rd16(f, off)? {
            0x0800 => return Some(off + 2),
            0x8100 | 0x88a8 => off += 4,
            _ => return None,
        }
    }
    None
}

fn is_icmp_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// Parses the IPv4 header at `l3` (`limit` bounds it) and its L4 ports.
/// `embedded` relaxes the length checks for the truncated packet inside
/// an ICMP error (only 8 bytes of L4 are guaranteed).
fn parse_ip(f: &[u8], l3: usize, embedded: bool) -> Result<Parsed, Untrackable> {
    use Untrackable::Malformed;
    let b0 = *f.get(l3).ok_or(Malformed)?;
    let ihl = usize::from(b0 & 0x0f) * 4;
    if b0 >> 4 != 4 || ihl < 20 || f.len() < l3 + ihl {
        return Err(Malformed);
    }
    let total = usize::from(rd16(f, l3 + 2).ok_or(Malformed)?);
    let end = if embedded {
        f.len()
    } else {
        if total < ihl || l3 + total > f.len() {
            return Err(Malformed);
        }
        l3 + total
    };
    let frag = rd16(f, l3 + 6).ok_or(Malformed)?;
    if frag & 0x3fff != 0 {
        // Fragments are not reassembled: untrackable.
        return Err(Malformed);
    }
    let proto = f[l3 + 9];
    let src = rd32(f, l3 + 12).ok_or(Malformed)?;
    let dst = rd32(f, l3 + 16).ok_or(Malformed)?;
    let l4 = l3 + ihl;
    let mut tuple = Tuple {
        src,
        dst,
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
                (true, _) => 4,
                (false, ipproto::TCP) => 20,
                (false, ipproto::UDP) => 8,
                _ => 12,
            };
            need(min)?;
            tuple.sport = rd16(f, l4).ok_or(Malformed)?;
            tuple.dport = rd16(f, l4 + 2).ok_or(Malformed)?;
            L4::Ports
        }
        ipproto::ICMP => {
            need(8)?;
            let ty = f[l4];
            match ty {
                0 | 8 => {
                    let id = rd16(f, l4 + 4).ok_or(Malformed)?;
                    tuple.sport = id;
                    tuple.dport = id;
                    L4::Echo(ty == 8)
                }
                t if is_icmp_error(t) && !embedded => {
                    need(8 + 20)?;
                    L4::IcmpError { inner: l4 + 8 }
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
pub fn tcp_segment(f: &[u8], p: &Parsed) -> Option<crate::conntrack::tcp::Segment> {
    let l4 = p.l4;
    let doff = usize::from(*f.get(l4 + 12)? >> 4) * 4;
    if doff < 20 || l4 + doff > p.end {
        return None;
    }
    let flags = *f.get(l4 + 13)?;
    let mut wscale = None;
    if flags & crate::conntrack::tcp::flags::SYN != 0 {
        let mut i = l4 + 20;
        while i < l4 + doff {
            match f[i] {
                0 => break,
                1 => i += 1,
                kind => {
                    let len = usize::from(*f.get(i + 1)?);
                    if len < 2 || i + len > l4 + doff {
                        break;
                    }
                    if kind == 3 && len == 3 {
                        wscale = Some(f[i + 2]);
                    }
                    i += len;
                }
            }
        }
    }
    Some(crate::conntrack::tcp::Segment {
        seq: rd32(f, l4 + 4)?,
        ack: rd32(f, l4 + 8)?,
        flags,
        win: rd16(f, l4 + 14)?,
        len: (p.end - l4 - doff) as u32,
        wscale,
    })
}

/// Writes 16-bit words and keeps checksums right.
struct Patcher<'a> {
    f: &'a mut [u8],
    /// Offset of a checksum that covers every word written (the ICMP
    /// checksum when patching an embedded packet).
    cover: Option<usize>,
}

impl Patcher<'_> {
    /// Writes `new` at `off`, updating the covering checksum; returns the
    /// old value.
    fn set16(&mut self, off: usize, new: u16) -> Option<u16> {
        let old = rd16(self.f, off)?;
        if old == new {
            return Some(old);
        }
        wr16(self.f, off, new)?;
        if let Some(c) = self.cover {
            let ck = rd16(self.f, c)?;
            wr16(self.f, c, checksum::update16(ck, old, new))?;
        }
        Some(old)
    }

    /// Applies an update to the checksum at `off` (`udp`: keep 0, avoid 0).
    fn fix(&mut self, off: usize, udp: bool, update: impl Fn(u16) -> u16) -> Option<()> {
        let ck = rd16(self.f, off)?;
        if udp && ck == 0 {
            return Some(());
        }
        let mut n = update(ck);
        if udp {
            n = checksum::udp_nonzero(n);
        }
        self.set16(off, n).map(|_| ())
    }

    /// Rewrites the packet at `p` (its headers up to `avail` bytes) to
    /// carry `to`. Transport checksums beyond `avail` are left alone (the
    /// truncated packet inside an ICMP error).
    fn retarget(&mut self, p: &Parsed, to: Tuple, avail: usize) -> Option<()> {
        let from = p.tuple;
        let l4ck = match (p.proto, p.kind) {
            (ipproto::TCP, L4::Ports) if p.l4 + 18 <= avail => Some((p.l4 + 16, false)),
            (ipproto::UDP, L4::Ports) if p.l4 + 8 <= avail => Some((p.l4 + 6, true)),
            _ => None,
        };
        for (off, old, new) in [(12, from.src, to.src), (16, from.dst, to.dst)] {
            if old == new {
                continue;
            }
            self.set16(p.l3 + off, (new >> 16) as u16)?;
            self.set16(p.l3 + off + 2, new as u16)?;
            self.fix(p.l3 + 10, false, |c| checksum::update32(c, old, new))?;
            if let Some((ck, udp)) = l4ck {
                self.fix(ck, udp, |c| checksum::update32(c, old, new))?;
            }
        }
        match p.kind {
            L4::Ports => {
                for (off, old, new) in [(0, from.sport, to.sport), (2, from.dport, to.dport)] {
                    if old == new {
                        continue;
                    }
                    self.set16(p.l4 + off, new)?;
                    if let Some((ck, udp)) = l4ck {
                        self.fix(ck, udp, |c| checksum::update16(c, old, new))?;
                    }
                }
            }
            L4::Echo(_) if from.sport != to.sport && p.l4 + 8 <= avail => {
                self.set16(p.l4 + 4, to.sport)?;
                self.fix(p.l4 + 2, false, |c| {
                    checksum::update16(c, from.sport, to.sport)
                })?;
            }
            _ => {}
        }
        Some(())
    }
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
pub fn rewrite(f: &mut [u8], p: &Parsed, to: Tuple) -> Result<(), DropReason> {
    if p.tuple == to {
        return Ok(());
    }
    Patcher { f, cover: None }
        .retarget(p, to, p.end)
        .ok_or(DropReason::Malformed)?;
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
    let icmp_ck = outer.l4 + 2;
    let mut pt = Patcher {
        f: &mut f[..outer.end],
        cover: Some(icmp_ck),
    };
    pt.retarget(inner, inner_to, outer.end)
        .ok_or(DropReason::Malformed)?;
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
    Patcher { f, cover: None }
        .retarget(outer, to, outer.end)
        .ok_or(DropReason::Malformed)
}

/// Turns the packet `p` into an ICMP destination-unreachable / port-
/// unreachable reply from its destination to its source (Ethernet
/// addresses swapped, VLAN tags kept). Returns `None` when the buffer
/// cannot be resized.
pub fn make_port_unreachable<B: PacketBuf>(pkt: &mut B, p: &Parsed) -> Option<()> {
    let ihl = p.l4 - p.l3;
    let quoted = (ihl + 8).min(p.end - p.l3);
    let mut quote = [0u8; 68];
    quote[..quoted].copy_from_slice(pkt.data().get(p.l3..p.l3 + quoted)?);
    let ip_len = 20 + 8 + quoted;
    let want = p.l3 + ip_len;
    let have = pkt.len();
    if want > have {
        pkt.append(want - have)?;
    } else if want < have && !pkt.trim(have - want) {
        return None;
    }
    let f = pkt.data_mut();
    let mut macs = [0u8; 12];
    macs.copy_from_slice(f.get(0..12)?);
    f[0..6].copy_from_slice(&macs[6..12]);
    f[6..12].copy_from_slice(&macs[0..6]);
    let ip = f.get_mut(p.l3..p.l3 + ip_len)?;
    ip.fill(0);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = ipproto::ICMP;
    ip[12..16].copy_from_slice(&p.tuple.dst.to_be_bytes());
    ip[16..20].copy_from_slice(&p.tuple.src.to_be_bytes());
    let ck = checksum::finish(checksum::data(&ip[..20]));
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    ip[20] = 3;
    ip[21] = 3;
    ip[28..28 + quoted].copy_from_slice(&quote[..quoted]);
    let ck = checksum::finish(checksum::data(&ip[20..]));
    ip[22..24].copy_from_slice(&ck.to_be_bytes());
    Some(())
}
