//! IEEE 802.1Q / 802.1ad VLAN tags.
//!
//! A tag sits where an Ethernet EtherType would be: the outer EtherType
//! (0x8100 for 802.1Q, 0x88a8 for an 802.1ad S-tag) is read by
//! [`super::ethernet::Frame`], and this view starts right after it: the
//! 16-bit TCI (priority, drop-eligible bit, VLAN ID) and the inner EtherType.
//! Stacked tags (QinQ) are two of these views in a row. VID 0 means
//! "priority tag only" and VID 4095 is reserved; both are reported as-is,
//! the policy belongs to the caller. Plain data, no state, no allocation.

use super::ethernet::EtherType;
use super::{check_len, check_room, Error, Layer, Result};

mod field {
    use core::ops::RangeFrom;
    pub const TCI: usize = 0;
    pub const ETHERTYPE: usize = 2;
    pub const PAYLOAD: RangeFrom<usize> = 4..;
}

/// Length of a VLAN tag after the outer EtherType (TCI + inner EtherType).
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// Largest VLAN ID (4095, reserved).
pub const MAX_VID: u16 = 0x0fff;

super::view::header_view! {
    /// A view of a VLAN tag (TCI and inner EtherType).
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than [`HEADER_LEN`].
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking that they hold a whole tag.
    pub struct Packet: check_len;
    /// The raw 16-bit tag control information.
    tci, set_tci: u16 @ field::TCI;
    /// The EtherType of what follows the tag.
    ethertype, set_ethertype: EtherType @ field::ETHERTYPE;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the buffer holds a whole tag.
    pub fn check_len(&self) -> Result<()> {
        check_len(Layer::Vlan, self.buffer.as_ref(), HEADER_LEN)
    }

    /// Priority code point (802.1p class, 0..=7).
    #[inline(always)]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop-eligible indicator.
    #[inline(always)]
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier (0..=4095).
    #[inline(always)]
    pub fn vid(&self) -> u16 {
        self.tci() & MAX_VID
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The bytes after the tag.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the priority code point; only the low 3 bits are used.
    #[inline(always)]
    pub fn set_pcp(&mut self, value: u8) {
        let tci = (self.tci() & 0x1fff) | (u16::from(value & 0x7) << 13);
        self.set_tci(tci);
    }

    /// Sets the drop-eligible indicator.
    #[inline(always)]
    pub fn set_dei(&mut self, value: bool) {
        let tci = (self.tci() & !0x1000) | if value { 0x1000 } else { 0 };
        self.set_tci(tci);
    }

    /// Sets the VLAN ID; only the low 12 bits are used.
    #[inline(always)]
    pub fn set_vid(&mut self, value: u16) {
        let tci = (self.tci() & !MAX_VID) | (value & MAX_VID);
        self.set_tci(tci);
    }

    /// The bytes after the tag, writable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The meaning of a VLAN tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Priority code point, 0..=7.
    pub pcp: u8,
    /// Drop-eligible indicator.
    pub dei: bool,
    /// VLAN identifier, 0..=4095.
    pub vid: u16,
    /// EtherType of what follows.
    pub ethertype: EtherType,
}

impl Repr {
    /// Reads a tag.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            pcp: packet.pcp(),
            dei: packet.dei(),
            vid: packet.vid(),
            ethertype: packet.ethertype(),
        })
    }

    /// Bytes this tag occupies after the outer EtherType.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the tag; rejects a PCP above 7 or a VID above 4095.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if self.pcp > 7 {
            return Err(Error::ValueTooLarge {
                layer: Layer::Vlan,
                field: "priority (PCP)",
                value: self.pcp.into(),
                max: 7,
            });
        }
        if self.vid > MAX_VID {
            return Err(Error::ValueTooLarge {
                layer: Layer::Vlan,
                field: "VLAN ID",
                value: self.vid.into(),
                max: MAX_VID.into(),
            });
        }
        check_room(Layer::Vlan, packet.buffer.as_ref(), HEADER_LEN)?;
        let tci = (u16::from(self.pcp) << 13) | if self.dei { 0x1000 } else { 0 } | self.vid;
        packet.set_tci(tci);
        packet.set_ethertype(self.ethertype);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet;
    use crate::wire::test_support::assert_prefixes_truncated;
    use proptest::prelude::*;

    // PCP 5, DEI 1, VID 0x123, inner IPv4, then two payload bytes.
    static TAG_BYTES: [u8; 6] = [0xb1, 0x23, 0x08, 0x00, 0x45, 0x00];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&TAG_BYTES[..]).unwrap();
        assert_eq!(p.pcp(), 5);
        assert!(p.dei());
        assert_eq!(p.vid(), 0x123);
        assert_eq!(p.ethertype(), EtherType::Ipv4);
        assert_eq!(p.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 6];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_vid(0x123);
        p.set_pcp(5);
        p.set_dei(true);
        p.set_ethertype(EtherType::Ipv4);
        p.payload_mut().copy_from_slice(&[0x45, 0x00]);
        assert_eq!(buf, TAG_BYTES);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_dei(false);
        p.set_pcp(0);
        assert_eq!(p.tci(), 0x0123);
    }

    #[test]
    fn parse_emit_and_limits() {
        let repr = Repr::parse(&Packet::new_checked(&TAG_BYTES[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                pcp: 5,
                dei: true,
                vid: 0x123,
                ethertype: EtherType::Ipv4
            }
        );
        let mut buf = [0u8; 4];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, TAG_BYTES[..4]);
        let bad_vid = Repr { vid: 4096, ..repr };
        assert!(matches!(
            bad_vid.emit(&mut Packet::new_unchecked(&mut buf[..])),
            Err(Error::ValueTooLarge { max: 4095, .. })
        ));
        let bad_pcp = Repr { pcp: 8, ..repr };
        assert!(bad_pcp
            .emit(&mut Packet::new_unchecked(&mut buf[..]))
            .is_err());
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&TAG_BYTES, HEADER_LEN, Packet::new_checked);
    }

    #[test]
    fn etherparse_oracle() {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .vlan(etherparse::VlanHeader::Single(
                etherparse::SingleVlanHeader {
                    pcp: etherparse::VlanPcp::try_new(3).unwrap(),
                    drop_eligible_indicator: false,
                    vlan_id: etherparse::VlanId::try_new(42).unwrap(),
                    ether_type: etherparse::EtherType::IPV4,
                },
            ))
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2);
        let mut pkt = Vec::new();
        builder.write(&mut pkt, &[]).unwrap();
        let eth = ethernet::Frame::new_checked(&pkt[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::Vlan);
        let tag = Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((tag.pcp(), tag.dei(), tag.vid()), (3, false, 42));
        assert_eq!(tag.ethertype(), EtherType::Ipv4);

        // Our tag, read by etherparse.
        let mut frame = pkt.clone();
        let mut p = Packet::new_unchecked(&mut frame[14..]);
        Repr {
            pcp: 6,
            dei: true,
            vid: 4000,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut p)
        .unwrap();
        let sliced = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        match sliced.vlan {
            Some(etherparse::VlanSlice::SingleVlan(v)) => {
                assert_eq!(v.priority_code_point().value(), 6);
                assert!(v.drop_eligible_indicator());
                assert_eq!(v.vlan_identifier().value(), 4000);
            }
            other => panic!("etherparse saw {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let r = Repr::parse(&p).unwrap();
                prop_assert!(r.pcp <= 7 && r.vid <= MAX_VID);
                let mut out = [0u8; 4];
                r.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
                prop_assert_eq!(&out[..], &bytes[..4]);
            }
        }
    }
}
