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
//! Header rewrites ([`rewrite`]) patch bytes in place and fix the IPv4 header
//! checksum and the TCP/UDP checksum incrementally (RFC 1624), so a rewrite
//! costs a few instructions, never a pass over the payload.
//!
//! Thread-safety: plain data; `rewrite` works on the caller's buffer.

use std::net::Ipv4Addr;

use super::key::{ethertype, ipproto, Field, FlowKey, Layout};
use crate::drop::DropReason;
use crate::packet::PortNo;

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
    SetField {
        /// Field written.
        field: Field,
        /// Value (already masked).
        value: u128,
        /// Bits written.
        mask: u128,
    },
    /// `dec_ttl`: decrement the IP TTL, drop when it expires.
    DecTtl,
    /// `group:N`.
    Group(u32),
    /// `ct(...)`.
    Ct(CtAction),
    /// `tnl_push`: encapsulate using the key's `tun_*` fields.
    TunnelPush,
    /// `tnl_pop`: decapsulate and fill the key's `tun_*` fields.
    TunnelPop,
}

/// A datapath action: what the caches store and the pipeline executes.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The Internet checksum of `data` (RFC 1071), ready to store.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changes.
#[inline]
fn csum_replace16(ck: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!ck) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline]
fn csum_replace32(ck: u16, old: u32, new: u32) -> u16 {
    let ck = csum_replace16(ck, (old >> 16) as u16, (new >> 16) as u16);
    csum_replace16(ck, old as u16, new as u16)
}

fn rd16(f: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]))
}

fn wr16(f: &mut [u8], off: usize, v: u16) -> Option<()> {
    f.get_mut(off..off + 2)?.copy_from_slice(&v.to_be_bytes());
    Some(())
}

/// Offset of the L4 checksum and whether zero means "none" (UDP).
fn l4_csum(key: &FlowKey, layout: Layout) -> Option<(usize, bool)> {
    if layout.l4 == 0 {
        return None;
    }
    let l4 = usize::from(layout.l4);
    match key.nw_proto() {
        ipproto::TCP => Some((l4 + 16, false)),
        ipproto::UDP => Some((l4 + 6, true)),
        _ => None,
    }
}

fn fix_l4(
    frame: &mut [u8],
    key: &FlowKey,
    layout: Layout,
    old: u32,
    new: u32,
    wide: bool,
) -> Option<()> {
    if let Some((off, udp)) = l4_csum(key, layout) {
        let ck = rd16(frame, off)?;
        if udp && ck == 0 {
            return Some(());
        }
        let mut n = if wide {
            csum_replace32(ck, old, new)
        } else {
            csum_replace16(ck, old as u16, new as u16)
        };
        if udp && n == 0 {
            n = 0xffff;
        }
        wr16(frame, off, n)?;
    }
    Some(())
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
/// says (a truncated frame): the caller drops the packet.
pub fn rewrite(
    frame: &mut [u8],
    layout: Layout,
    key: &FlowKey,
    field: Field,
    value: u128,
    mask: u128,
) -> Result<(), DropReason> {
    let new = (key.get(field) & !mask) | (value & mask);
    let l3 = usize::from(layout.l3);
    let ok = match field {
        Field::DlDst | Field::DlSrc => {
            let off = if field == Field::DlDst { 0 } else { 6 };
            frame
                .get_mut(off..off + 6)
                .map(|b| b.copy_from_slice(&(new as u64).to_be_bytes()[2..]))
        }
        Field::NwSrc | Field::NwDst if layout.l3 != 0 => {
            let off = l3 + if field == Field::NwSrc { 12 } else { 16 };
            (|| {
                let b = frame.get(off..off + 4)?;
                let old = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let new = new as u32;
                frame
                    .get_mut(off..off + 4)?
                    .copy_from_slice(&new.to_be_bytes());
                let ck = rd16(frame, l3 + 10)?;
                wr16(frame, l3 + 10, csum_replace32(ck, old, new))?;
                fix_l4(frame, key, layout, old, new, true)
            })()
        }
        Field::NwTtl if layout.l3 != 0 => (|| {
            if key.dl_type() == ethertype::IPV6 {
                *frame.get_mut(l3 + 7)? = new as u8;
                return Some(());
            }
            let old = rd16(frame, l3 + 8)?;
            let new = (old & 0x00ff) | ((new as u16) << 8);
            wr16(frame, l3 + 8, new)?;
            let ck = rd16(frame, l3 + 10)?;
            wr16(frame, l3 + 10, csum_replace16(ck, old, new))
        })(),
        Field::TpSrc | Field::TpDst if layout.l4 != 0 => {
            let off = usize::from(layout.l4) + if field == Field::TpSrc { 0 } else { 2 };
            (|| {
                let old = rd16(frame, off)?;
                wr16(frame, off, new as u16)?;
                fix_l4(frame, key, layout, u32::from(old), new as u32, false)
            })()
        }
        Field::NwSrc | Field::NwDst | Field::NwTtl | Field::TpSrc | Field::TpDst => None,
        _ => Some(()),
    };
    ok.ok_or(DropReason::Malformed)
}

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
}
