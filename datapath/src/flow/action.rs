//! Flow actions, the datapath actions they compile to, and the header
//! rewrites behind `set_field`.
//!
//! [`Action`] is what a rule says (OpenFlow level: `goto_table`, `group`,
//! `resubmit`, ...). The slow path translates a packet's walk through the
//! program into a flat list of [`DpAction`]s (datapath level: no tables, no
//! groups, every decision that depends on the packet already taken and its
//! fields added to the megaflow mask), which the caches store and the
//! pipeline executes per packet.
//!
//! Header rewrites ([`rewrite`]) patch bytes in place through `wire` views
//! and fix the IPv4 header checksum and the TCP/UDP checksum incrementally
//! with `wire::checksum` (RFC 1624), so a rewrite costs a few
//! instructions, never a pass over the payload.
//!
//! Thread-safety: plain data; `rewrite` works on the caller's buffer.

use std::net::Ipv4Addr;

use super::key::{ethertype, ipproto, Field, FlowKey, Layout};
use crate::drop::DropReason;
use crate::packet::PortNo;
use crate::wire::checksum::{self as wire_checksum, L4Checksum};
use crate::wire::{
    ethernet, ipv4, ipv6, tcp, udp, EthernetAddress, EthernetFrame, Ipv4Packet, Ipv6Packet,
    TcpPacket, UdpPacket,
};

/// The two port fields at the start of a TCP, UDP or SCTP header.
const PORTS_LEN: usize = 4;

/// Source or destination NAT in a `ct` action (an extension point: the
/// conntrack issue implements it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NatSpec {
    /// Source (`src=`) or destination (`dst=`) translation; `None` for a
    /// bare `nat` (apply the NAT of an existing connection).
    pub kind: Option<NatKind>,
    /// Address range, first and last (equal for one address).
    pub addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Port range, first and last.
    pub ports: Option<(u16, u16)>,
}

/// Direction of a NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Rewrite the source.
    Src,
    /// Rewrite the destination.
    Dst,
}

/// The `ct(...)` action: send the packet through connection tracking.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CtAction {
    /// Commit the connection to the table.
    pub commit: bool,
    /// Conntrack zone.
    pub zone: u16,
    /// Continue processing (recirculate) in this table with `ct_state` set.
    pub table: Option<u8>,
    /// NAT to apply.
    pub nat: Option<NatSpec>,
    /// `exec(set_field:V[/M]->ct_mark)`: (value, mask) written into the
    /// committed connection's mark.
    pub mark: Option<(u32, u32)>,
    /// `exec(set_field:V[/M]->ct_label)`: (value, mask) written into the
    /// committed connection's 128-bit label.
    pub label: Option<(u128, u128)>,
}

/// A group's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupType {
    /// Every bucket gets a copy.
    All,
    /// One bucket, chosen by a hash over the selection fields.
    Select,
}

/// One rule action, as written in flow text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// `output:N`.
    Output(PortNo),
    /// `in_port`: output to the ingress port.
    InPort,
    /// `drop`: explicit drop (only valid alone).
    Drop,
    /// `local`: to the datapath's own IP stack.
    Local,
    /// `controller[:max_len]`: punt to the controller queue.
    Controller {
        /// Bytes of the packet to send (0 = all).
        max_len: u16,
    },
    /// `normal`: L2 learning switch.
    Normal,
    /// `goto_table:N`: continue in a later table.
    GotoTable(u8),
    /// `resubmit([port],[table])`: look the packet up again.
    Resubmit {
        /// Pretend the packet came in on this port.
        port: Option<PortNo>,
        /// Table to look up in (default: the current one).
        table: Option<u8>,
    },
    /// `set_field:V[/M]->F` (also `load:`, `mod_dl_src:` and friends).
    /// Every writable field is at most 64 bits wide
    /// ([`Field::writable`]), so value and mask are `u64`: an action is
    /// 24 bytes, not 48 (memory per flow).
    SetField {
        /// Field written.
        field: Field,
        /// Value (already masked).
        value: u64,
        /// Bits written.
        mask: u64,
    },
    /// `dec_ttl`: decrement the IP TTL, drop when it expires.
    DecTtl,
    /// `group:N`.
    Group(u32),
    /// `ct(...)` (boxed: rare and large, it would triple every action's
    /// size).
    Ct(Box<CtAction>),
    /// `tnl_push`: encapsulate using the key's `tun_*` fields.
    TunnelPush,
    /// `tnl_pop`: decapsulate and fill the key's `tun_*` fields.
    TunnelPop,
}

/// A datapath action: what the caches store and the pipeline executes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DpAction {
    /// Send a copy (the original for the last action) to a port.
    Output(PortNo),
    /// Punt to the controller queue (rate-limited).
    Controller {
        /// Bytes to keep (0 = all).
        max_len: u16,
    },
    /// L2 learning switch lookup, done per packet against the MAC table.
    Normal,
    /// Write `value` under `mask` into `field` (key and, for header fields,
    /// the packet bytes).
    Set {
        /// Field written.
        field: Field,
        /// Value.
        value: u128,
        /// Bits written.
        mask: u128,
    },
    /// Connection tracking hook; recirculates when `table` is set.
    Ct(CtAction),
    /// Tunnel encapsulation hook.
    TunnelPush,
    /// Tunnel decapsulation hook.
    TunnelPop,
    /// Run the nested actions on a copy of the packet and key (group `all`
    /// buckets).
    Clone(Box<[DpAction]>),
    /// Stop and drop (if nothing was output), counted under this reason.
    Drop(DropReason),
}

/// The Internet checksum of `data` (RFC 1071), ready to store
/// ([`wire::checksum::data`] then [`wire::checksum::finish`]).
pub fn checksum(data: &[u8]) -> u16 {
    wire_checksum::finish(wire_checksum::data(data))
}

/// The transport checksum of the packet described by `key`/`layout`, read
/// through a TCP or UDP view, or `None` when the frame is too short to hold
/// it. Protocols without a pseudo-header checksum give
/// [`L4Checksum::None`].
#[inline]
fn l4_checksum(frame: &[u8], key: &FlowKey, layout: Layout) -> Option<L4Checksum> {
    if layout.l4 == 0 {
        return Some(L4Checksum::None);
    }
    let l4 = frame.get(usize::from(layout.l4)..)?;
    Some(match key.nw_proto() {
        ipproto::TCP if l4.len() >= tcp::HEADER_LEN => {
            L4Checksum::Tcp(TcpPacket::new_unchecked(l4).checksum())
        }
        ipproto::UDP if l4.len() >= udp::HEADER_LEN => {
            L4Checksum::Udp(UdpPacket::new_unchecked(l4).checksum())
        }
        ipproto::TCP | ipproto::UDP => return None,
        _ => L4Checksum::None,
    })
}

/// Stores an updated transport checksum (the frame length was checked by
/// [`l4_checksum`]).
#[inline]
fn store_l4_checksum(frame: &mut [u8], layout: Layout, c: L4Checksum) {
    let l4 = &mut frame[usize::from(layout.l4)..];
    match c {
        L4Checksum::Tcp(c) => TcpPacket::new_unchecked(l4).set_checksum(c),
        L4Checksum::Udp(c) => UdpPacket::new_unchecked(l4).set_checksum(c),
        L4Checksum::None => {}
    }
}

/// The IPv4 header at `layout.l3`, when the frame holds all 20 bytes.
#[inline]
fn ipv4_at(frame: &mut [u8], layout: Layout) -> Option<Ipv4Packet<&mut [u8]>> {
    let l3 = usize::from(layout.l3);
    frame
        .get_mut(l3..l3 + ipv4::HEADER_LEN)
        .map(Ipv4Packet::new_unchecked)
}

/// True when the packet described by `key` carries the header `field`
/// lives in, so that writing it is meaningful. Metadata fields are always
/// writable.
pub fn header_present(key: &FlowKey, field: Field) -> bool {
    let ip4 = key.dl_type() == ethertype::IPV4;
    let later = key.get(Field::IpFrag) & 2 != 0;
    match field {
        Field::NwSrc | Field::NwDst => ip4,
        Field::NwTtl => ip4 || key.dl_type() == ethertype::IPV6,
        Field::TpSrc | Field::TpDst => {
            (ip4 || key.dl_type() == ethertype::IPV6)
                && !later
                && matches!(key.nw_proto(), ipproto::TCP | ipproto::UDP)
        }
        _ => true,
    }
}

/// Writes `value` under `mask` into header field `field` of `frame`, whose
/// headers are described by `key` (before the write) and `layout`, fixing
/// checksums incrementally. Metadata fields leave the bytes alone. Fails
/// with [`DropReason::Malformed`] when the header is not where the layout
/// says (a truncated frame: an IPv4 field needs the whole 20-byte header
/// there, a TCP/UDP port the header up to its checksum), before writing
/// anything: the caller drops the packet.
pub fn rewrite(
    frame: &mut [u8],
    layout: Layout,
    key: &FlowKey,
    field: Field,
    value: u128,
    mask: u128,
) -> Result<(), DropReason> {
    let new = (key.get(field) & !mask) | (value & mask);
    let ok = match field {
        Field::DlDst => frame.get_mut(..ethernet::DST_ADDR_END).map(|eth| {
            EthernetFrame::new_unchecked(eth).set_dst_addr(EthernetAddress::from_u64(new as u64))
        }),
        Field::DlSrc => frame.get_mut(..ethernet::SRC_ADDR_END).map(|eth| {
            EthernetFrame::new_unchecked(eth).set_src_addr(EthernetAddress::from_u64(new as u64))
        }),
        Field::NwSrc | Field::NwDst if layout.l3 != 0 => (|| {
            let l4 = l4_checksum(frame, key, layout)?;
            let mut ip = ipv4_at(frame, layout)?;
            let new = Ipv4Addr::from(new as u32);
            let old = if field == Field::NwSrc {
                ip.rewrite_src_addr(new)
            } else {
                ip.rewrite_dst_addr(new)
            };
            store_l4_checksum(frame, layout, l4.update32(old.into(), new.into()));
            Some(())
        })(),
        Field::NwTtl if layout.l3 != 0 => {
            let l3 = usize::from(layout.l3);
            if key.dl_type() == ethertype::IPV6 {
                frame
                    .get_mut(l3..l3 + ipv6::HEADER_LEN)
                    .map(|h| Ipv6Packet::new_unchecked(h).set_hop_limit(new as u8))
            } else {
                ipv4_at(frame, layout).map(|mut ip| ip.rewrite_hop_limit(new as u8))
            }
        }
        Field::TpSrc | Field::TpDst if layout.l4 != 0 => (|| {
            let l4 = l4_checksum(frame, key, layout)?;
            let at = usize::from(layout.l4);
            // TCP, UDP and SCTP all start with the two ports; the UDP view
            // reads and writes them for any of the three.
            let mut ports = UdpPacket::new_unchecked(frame.get_mut(at..at + PORTS_LEN)?);
            let new = new as u16;
            let old = if field == Field::TpSrc {
                let old = ports.src_port();
                ports.set_src_port(new);
                old
            } else {
                let old = ports.dst_port();
                ports.set_dst_port(new);
                old
            };
            store_l4_checksum(frame, layout, l4.update16(old, new));
            Some(())
        })(),
        Field::NwSrc | Field::NwDst | Field::NwTtl | Field::TpSrc | Field::TpDst => None,
        _ => Some(()),
    };
    ok.ok_or(DropReason::Malformed)
}

#[cfg(test)]
#[path = "action_oracle.rs"]
mod oracle;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::extract_with_layout;
    use crate::flow::key::testpkt::{l4_checksum, tcp4, udp4};

    fn check_all(f: &[u8], proto: u8) {
        assert_eq!(checksum(&f[14..34]), 0, "ip header checksum");
        let ck_off = if proto == 6 { 50 } else { 40 };
        assert_eq!(
            u16::from_be_bytes([f[ck_off], f[ck_off + 1]]),
            l4_checksum(f, proto),
            "l4 checksum"
        );
    }

    #[test]
    fn rewrites_fix_checksums_incrementally() {
        for (mut f, proto) in [
            (tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 80, 64), 6u8),
            (udp4([192, 168, 1, 1], [172, 16, 0, 9], 53, 5353), 17),
        ] {
            check_all(&f, proto);
            for (field, v) in [
                (Field::NwSrc, 0xc0a8_6401u128),
                (Field::NwDst, 0x0102_0304),
                (Field::TpSrc, 4242),
                (Field::TpDst, 8080),
                (Field::NwTtl, 7),
            ] {
                let (k, l) = extract_with_layout(&f, PortNo(0));
                rewrite(&mut f, l, &k, field, v, field.max_value()).expect("rewrite");
                let (k2, _) = extract_with_layout(&f, PortNo(0));
                assert_eq!(k2.get(field), v, "{field}");
                check_all(&f, proto);
            }
        }
    }

    #[test]
    fn masked_mac_rewrite_and_truncation() {
        let mut f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 3);
        let (k, l) = extract_with_layout(&f, PortNo(0));
        rewrite(
            &mut f,
            l,
            &k,
            Field::DlDst,
            0xaabb_ccdd_eeff,
            0xffff_0000_0000,
        )
        .expect("mac");
        assert_eq!(&f[0..6], &[0xaa, 0xbb, 0, 0, 0, 2]);
        let mut short = f[..40].to_vec();
        let l = Layout { l3: 14, l4: 34 };
        assert_eq!(
            rewrite(&mut short, l, &k, Field::TpDst, 9, 0xffff),
            Err(DropReason::Malformed)
        );
    }

    proptest::proptest! {
        /// The view-based rewrite writes the same bytes and fails the same
        /// way as the offset-based code it replaced.
        #[test]
        fn rewrite_matches_the_offset_code(
            udp in proptest::prelude::any::<bool>(),
            src in proptest::prelude::any::<[u8; 4]>(),
            dst in proptest::prelude::any::<[u8; 4]>(),
            ports in proptest::prelude::any::<(u16, u16)>(),
            zero_udp_checksum in proptest::prelude::any::<bool>(),
            field in 0usize..7,
            value in proptest::prelude::any::<u128>(),
            mask in proptest::prelude::any::<u128>(),
            muts in proptest::collection::vec(proptest::prelude::any::<(usize, u8)>(), 0..2),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
            ipv6 in proptest::prelude::any::<bool>(),
        ) {
            let mut f = if udp { udp4(src, dst, ports.0, ports.1) } else { tcp4(src, dst, ports.0, ports.1, 64) };
            if udp && zero_udp_checksum {
                f[40..42].fill(0);
            }
            for (at, v) in muts {
                let n = f.len();
                f[at % n] = v;
            }
            let (mut k, l) = extract_with_layout(&f, PortNo(0));
            if ipv6 {
                k.set(Field::DlType, u128::from(ethertype::IPV6));
            }
            if let Some(c) = cut {
                let n = f.len();
                f.truncate(c % (n + 1));
            }
            let field = [Field::DlSrc, Field::DlDst, Field::NwSrc, Field::NwDst, Field::NwTtl, Field::TpSrc, Field::TpDst][field];
            let (value, mask) = (value & field.max_value(), mask & field.max_value());
            // A layout found on the frame being rewritten (the contract):
            // the same result and the same bytes.
            let (k2, l2) = extract_with_layout(&f, PortNo(0));
            let (mut a, mut b) = (f.clone(), f.clone());
            let ra = rewrite(&mut a, l2, &k2, field, value, mask);
            let rb = oracle::rewrite(&mut b, l2, &k2, field, value, mask);
            proptest::prop_assert_eq!(ra, rb);
            if ra.is_ok() {
                proptest::prop_assert_eq!(a, b);
            }
            // A stale layout (found before the frame was cut): the views
            // want the whole 20-byte IPv4 header where the old code wanted
            // only the bytes up to the field, so they may refuse more, but
            // whatever they accept they write identically.
            let (mut a, mut b) = (f.clone(), f.clone());
            let ra = rewrite(&mut a, l, &k, field, value, mask);
            let rb = oracle::rewrite(&mut b, l, &k, field, value, mask);
            if ra.is_ok() {
                proptest::prop_assert_eq!(rb, Ok(()));
                proptest::prop_assert_eq!(a, b);
            }
        }
    }
}
