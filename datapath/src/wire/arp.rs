//! ARP for Ethernet and IPv4 (RFC 826), the only combination the datapath
//! answers or forwards.
//!
//! [`Packet::new_checked`] rejects any other hardware/protocol type or
//! address length with [`Error::Unsupported`], so the fixed-offset getters
//! below are always right for a checked packet. The ARP payload is 28
//! bytes; trailing Ethernet padding is allowed and ignored. Plain data, no
//! state, no allocation.

use core::fmt;
use std::net::Ipv4Addr;

use super::ethernet::{Address as EthernetAddress, EtherType};
use super::{check_len, check_room, Error, Layer, Result};

mod field {
    use core::ops::Range;
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;

/// ARP hardware type for Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// The ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Who has `tpa`? (1)
    Request,
    /// `spa` is at `sha` (2).
    Reply,
    /// Any other operation code.
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(value: u16) -> Self {
        match value {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(value: Operation) -> Self {
        match value {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Request => f.write_str("request"),
            Operation::Reply => f.write_str("reply"),
            Operation::Unknown(n) => write!(f, "op {n}"),
        }
    }
}

super::view::header_view! {
    /// A view of an Ethernet/IPv4 ARP packet.
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than [`PACKET_LEN`].
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking the length and that this is
    ///   Ethernet/IPv4 ARP.
    pub struct Packet: check;
    /// Hardware type (1 = Ethernet).
    hardware_type, set_hardware_type: u16 @ field::HTYPE;
    /// Protocol type (an EtherType; IPv4 here).
    protocol_type, set_protocol_type: EtherType @ field::PTYPE;
    /// Hardware address length.
    hardware_len, set_hardware_len: u8 @ field::HLEN;
    /// Protocol address length.
    protocol_len, set_protocol_len: u8 @ field::PLEN;
    /// Operation.
    operation, set_operation: Operation @ field::OPER;
    /// Sender hardware address.
    source_hardware_addr, set_source_hardware_addr: EthernetAddress @ field::SHA.start;
    /// Sender protocol address.
    source_protocol_addr, set_source_protocol_addr: Ipv4Addr @ field::SPA.start;
    /// Target hardware address.
    target_hardware_addr, set_target_hardware_addr: EthernetAddress @ field::THA.start;
    /// Target protocol address.
    target_protocol_addr, set_target_protocol_addr: Ipv4Addr @ field::TPA.start;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks length, hardware/protocol types and address lengths.
    pub fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(Layer::Arp, b, field::SHA.start)?;
        if self.hardware_type() != HTYPE_ETHERNET || self.hardware_len() != 6 {
            return Err(Error::Unsupported {
                layer: Layer::Arp,
                what: "hardware type (only Ethernet with 6-byte addresses is handled)",
            });
        }
        if self.protocol_type() != EtherType::Ipv4 || self.protocol_len() != 4 {
            return Err(Error::Unsupported {
                layer: Layer::Arp,
                what: "protocol type (only IPv4 with 4-byte addresses is handled)",
            });
        }
        check_len(Layer::Arp, b, PACKET_LEN)
    }
}

/// The meaning of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Request, reply or other.
    pub operation: Operation,
    /// Sender hardware address.
    pub source_hardware_addr: EthernetAddress,
    /// Sender protocol address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target hardware address (zero in requests).
    pub target_hardware_addr: EthernetAddress,
    /// Target protocol address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Reads an Ethernet/IPv4 ARP packet.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check()?;
        Ok(Repr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// Bytes this packet occupies.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        check_room(Layer::Arp, packet.buffer.as_ref(), PACKET_LEN)?;
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(EtherType::Ipv4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
        Ok(())
    }
}

super::view::field_value_as! {
    Operation => u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::assert_prefixes_truncated;
    use proptest::prelude::*;

    static REQUEST_BYTES: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // eth/ipv4, request
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 2, // target
    ];

    fn request_repr() -> Repr {
        Repr {
            operation: Operation::Request,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            source_protocol_addr: Ipv4Addr::new(10, 0, 0, 1),
            target_hardware_addr: EthernetAddress::ZERO,
            target_protocol_addr: Ipv4Addr::new(10, 0, 0, 2),
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), EtherType::Ipv4);
        assert_eq!((p.hardware_len(), p.protocol_len()), (6, 4));
        assert_eq!(p.operation(), Operation::Request);
        assert_eq!(
            p.source_hardware_addr(),
            EthernetAddress([2, 0, 0, 0, 0, 1])
        );
        assert_eq!(p.source_protocol_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.target_hardware_addr(), EthernetAddress::ZERO);
        assert_eq!(p.target_protocol_addr(), Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn construct_parse_emit() {
        let mut buf = [0xffu8; 28];
        request_repr()
            .emit(&mut Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(buf, REQUEST_BYTES);
        let parsed = Repr::parse(&Packet::new_checked(&REQUEST_BYTES[..]).unwrap()).unwrap();
        assert_eq!(parsed, request_repr());
        // Ethernet minimum-size padding after the ARP payload is fine.
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&REQUEST_BYTES);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&padded[..]).unwrap()).unwrap(),
            request_repr()
        );
        let mut small = [0u8; 27];
        assert!(request_repr()
            .emit(&mut Packet::new_unchecked(&mut small[..]))
            .is_err());
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&REQUEST_BYTES, PACKET_LEN, Packet::new_checked);
    }

    #[test]
    fn other_hardware_or_protocol_rejected() {
        let mut b = REQUEST_BYTES;
        b[1] = 6; // IEEE 802
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Unsupported { .. })
        ));
        let mut b = REQUEST_BYTES;
        b[2..4].copy_from_slice(&[0x86, 0xdd]);
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Unsupported { .. })
        ));
        let mut b = REQUEST_BYTES;
        b[5] = 16;
        assert!(Packet::new_checked(&b[..]).is_err());
    }

    #[test]
    fn operations() {
        assert_eq!(Operation::from(2), Operation::Reply);
        assert_eq!(Operation::from(9), Operation::Unknown(9));
        assert_eq!(u16::from(Operation::Unknown(9)), 9);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let r = Repr::parse(&p).unwrap();
                let mut out = [0u8; 28];
                r.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
                prop_assert_eq!(&out[..], &bytes[..28]);
            }
        }
    }
}
