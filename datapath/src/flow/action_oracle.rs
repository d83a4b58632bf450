//! The `set_field` header rewrite as it was before it used `wire` views
//! (raw offsets, its own RFC 1624 code), kept verbatim as the oracle the
//! view-based [`super::rewrite`] is compared against.

use crate::drop::DropReason;
use crate::flow::key::{ethertype, ipproto, Field, FlowKey, Layout};

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
