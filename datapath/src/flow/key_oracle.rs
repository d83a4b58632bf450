//! Flow key extraction as it was before it used `wire` views (raw
//! offsets), kept verbatim as the oracle the view-based extractor in
//! `key.rs` is compared against.

use super::{ethertype, frag, ipproto, Field, FlowKey, Layout, VLAN_CFI};
use crate::packet::PortNo;

#[inline]
fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

#[inline]
fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[inline]
fn mac48(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off + 6)?;
    Some(s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

#[inline]
fn be128(b: &[u8], off: usize) -> Option<u128> {
    let s = b.get(off..off + 16)?;
    Some(s.iter().fold(0u128, |acc, &x| (acc << 8) | u128::from(x)))
}

/// [`extract`] into a caller-owned key (overwritten entirely), returning
/// where the L3 and L4 headers start. The hot path uses this to avoid
/// moving the 192-byte key around.
#[inline]
pub fn extract_into(frame: &[u8], in_port: PortNo, k: &mut FlowKey) -> Layout {
    *k = FlowKey::ZERO;
    let mut layout = Layout::default();
    k.set(Field::InPort, u128::from(in_port.0));
    let (Some(dst), Some(src), Some(mut ty)) = (mac48(frame, 0), mac48(frame, 6), be16(frame, 12))
    else {
        return layout;
    };
    k.set(Field::DlDst, u128::from(dst));
    k.set(Field::DlSrc, u128::from(src));
    let mut off = 14usize;
    if ty == ethertype::VLAN || ty == ethertype::QINQ {
        let (Some(tci), Some(inner)) = (be16(frame, 14), be16(frame, 16)) else {
            return layout;
        };
        k.set(Field::VlanTci, u128::from(tci | VLAN_CFI));
        ty = inner;
        off = 18;
    }
    k.set(Field::DlType, u128::from(ty));
    match ty {
        ethertype::IPV4 => extract_ipv4(frame, off, k, &mut layout),
        ethertype::IPV6 => extract_ipv6(frame, off, k, &mut layout),
        ethertype::ARP => extract_arp(frame, off, k, &mut layout),
        _ => {}
    }
    layout
}

fn extract_ipv4(frame: &[u8], off: usize, k: &mut FlowKey, layout: &mut Layout) {
    let Some(hdr) = frame.get(off..off + 20) else {
        return;
    };
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if hdr[0] >> 4 != 4 || ihl < 20 || frame.len() < off + ihl {
        return;
    }
    layout.l3 = off as u16;
    let proto = hdr[9];
    k.set(Field::NwTos, u128::from(hdr[1]));
    k.set(Field::NwTtl, u128::from(hdr[8]));
    k.set(Field::NwProto, u128::from(proto));
    k.set(
        Field::NwSrc,
        u128::from(u32::from_be_bytes([hdr[12], hdr[13], hdr[14], hdr[15]])),
    );
    k.set(
        Field::NwDst,
        u128::from(u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]])),
    );
    let frag_word = u16::from_be_bytes([hdr[6], hdr[7]]);
    let more = frag_word & 0x2000 != 0;
    let offset = frag_word & 0x1fff;
    let mut frag_bits = 0u8;
    if more || offset != 0 {
        frag_bits |= frag::ANY;
    }
    if offset != 0 {
        frag_bits |= frag::LATER;
    }
    k.set(Field::IpFrag, u128::from(frag_bits));
    if offset == 0 {
        extract_l4(frame, off + ihl, proto, ipproto::ICMP, k, layout);
    }
}

fn extract_ipv6(frame: &[u8], off: usize, k: &mut FlowKey, layout: &mut Layout) {
    let Some(hdr) = frame.get(off..off + 40) else {
        return;
    };
    if hdr[0] >> 4 != 6 {
        return;
    }
    layout.l3 = off as u16;
    let tclass = ((hdr[0] & 0x0f) << 4) | (hdr[1] >> 4);
    let next = hdr[6];
    k.set(Field::NwTos, u128::from(tclass));
    k.set(Field::NwProto, u128::from(next));
    k.set(Field::NwTtl, u128::from(hdr[7]));
    k.set(Field::Ipv6Src, be128(frame, off + 8).unwrap_or(0));
    k.set(Field::Ipv6Dst, be128(frame, off + 24).unwrap_or(0));
    extract_l4(frame, off + 40, next, ipproto::ICMPV6, k, layout);
}

fn extract_l4(frame: &[u8], off: usize, proto: u8, icmp: u8, k: &mut FlowKey, layout: &mut Layout) {
    match proto {
        ipproto::TCP => {
            if let (Some(sp), Some(dp), Some(flags)) = (
                be16(frame, off),
                be16(frame, off + 2),
                be16(frame, off + 12),
            ) {
                if frame.len() >= off + 20 {
                    layout.l4 = off as u16;
                    k.set(Field::TpSrc, u128::from(sp));
                    k.set(Field::TpDst, u128::from(dp));
                    k.set(Field::TcpFlags, u128::from(flags & 0x0fff));
                }
            }
        }
        ipproto::UDP | ipproto::SCTP => {
            let need = if proto == ipproto::UDP { 8 } else { 12 };
            if let (Some(sp), Some(dp)) = (be16(frame, off), be16(frame, off + 2)) {
                if frame.len() >= off + need {
                    layout.l4 = off as u16;
                    k.set(Field::TpSrc, u128::from(sp));
                    k.set(Field::TpDst, u128::from(dp));
                }
            }
        }
        p if p == icmp => {
            if let (Some(&ty), Some(&code)) = (frame.get(off), frame.get(off + 1)) {
                if frame.len() >= off + 4 {
                    layout.l4 = off as u16;
                    k.set(Field::IcmpType, u128::from(ty));
                    k.set(Field::IcmpCode, u128::from(code));
                }
            }
        }
        _ => {}
    }
}

fn extract_arp(frame: &[u8], off: usize, k: &mut FlowKey, layout: &mut Layout) {
    // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
    let Some(hdr) = frame.get(off..off + 28) else {
        return;
    };
    if hdr[0..6] != [0, 1, 8, 0, 6, 4] {
        return;
    }
    layout.l3 = off as u16;
    k.set(
        Field::ArpOp,
        u128::from(u16::from_be_bytes([hdr[6], hdr[7]])),
    );
    k.set(Field::ArpSha, u128::from(mac48(hdr, 8).unwrap_or(0)));
    k.set(Field::ArpSpa, u128::from(be32(hdr, 14).unwrap_or(0)));
    k.set(Field::ArpTha, u128::from(mac48(hdr, 18).unwrap_or(0)));
    k.set(Field::ArpTpa, u128::from(be32(hdr, 24).unwrap_or(0)));
}
