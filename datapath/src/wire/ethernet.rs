//! Ethernet II frames: MAC addresses, EtherTypes and the 14-byte header.
//!
//! [`Frame`] is a view over a buffer that starts with an Ethernet header;
//! [`Frame::new_checked`] only needs 14 bytes, so every getter is safe
//! after it. The payload is whatever follows the header (VLAN tags are
//! parsed by [`super::vlan`]). Frames are not padded or FCS-checked here:
//! the NIC strips the FCS and minimum-size padding is the caller's choice.
//! Plain data, no state, no allocation.

use core::fmt;
use core::str::FromStr;

use super::view::FieldValue;
use super::{check_len, check_room, AddressParseError, Layer, Result};

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: Address = Address([0xff; 6]);
    /// `00:00:00:00:00:00`.
    pub const ZERO: Address = Address([0; 6]);

    /// Reads an address from the first six bytes of `bytes`, or `None` if
    /// there are fewer than six.
    pub fn from_bytes(bytes: &[u8]) -> Option<Address> {
        let b: [u8; 6] = bytes.get(..6)?.try_into().ok()?;
        Some(Address(b))
    }

    /// The six octets.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// The address as the low 48 bits of a `u64`, first octet most
    /// significant (how flow keys hold MAC addresses).
    #[inline(always)]
    pub const fn to_u64(&self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The inverse of [`Address::to_u64`]; bits above the low 48 are
    /// ignored.
    #[inline(always)]
    pub const fn from_u64(value: u64) -> Address {
        let b = value.to_be_bytes();
        Address([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// True for `ff:ff:ff:ff:ff:ff`.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// True when the group bit (least significant bit of the first octet) is
    /// set; broadcast is a multicast address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// True for individual (non-group) addresses.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// True when the locally-administered bit is set.
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Address {
    type Err = AddressParseError;

    /// Parses `aa:bb:cc:dd:ee:ff` (also accepts `-` separators, any case).
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or(AddressParseError::Mac)?;
            if part.is_empty() || part.len() > 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(AddressParseError::Mac);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| AddressParseError::Mac)?;
        }
        if parts.next().is_some() {
            return Err(AddressParseError::Mac);
        }
        Ok(Address(out))
    }
}

/// The EtherType field: what the payload of an Ethernet frame (or of a VLAN
/// tag, or of a Geneve header) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EtherType {
    /// IPv4 (0x0800).
    Ipv4,
    /// ARP (0x0806).
    Arp,
    /// IPv6 (0x86dd).
    Ipv6,
    /// IEEE 802.1Q customer VLAN tag (0x8100).
    Vlan,
    /// IEEE 802.1ad service VLAN tag, "QinQ" (0x88a8).
    QinQ,
    /// Transparent Ethernet bridging (0x6558): Geneve's protocol type for an
    /// inner Ethernet frame.
    TransparentEthernet,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::QinQ,
            0x6558 => EtherType::TransparentEthernet,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88a8,
            EtherType::TransparentEthernet => 0x6558,
            EtherType::Unknown(other) => other,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtherType::Ipv4 => f.write_str("ipv4"),
            EtherType::Arp => f.write_str("arp"),
            EtherType::Ipv6 => f.write_str("ipv6"),
            EtherType::Vlan => f.write_str("802.1q"),
            EtherType::QinQ => f.write_str("802.1ad"),
            EtherType::TransparentEthernet => f.write_str("teb"),
            EtherType::Unknown(n) => write!(f, "0x{n:04x}"),
        }
    }
}

mod field {
    use core::ops::{Range, RangeFrom};
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Length of an Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// Bytes a [`Frame`] view needs for [`Frame::dst_addr`] and
/// [`Frame::set_dst_addr`] (a runt frame may hold the addresses but not
/// the EtherType).
pub const DST_ADDR_END: usize = field::DESTINATION.end;

/// Bytes a [`Frame`] view needs for [`Frame::src_addr`] and
/// [`Frame::set_src_addr`].
pub const SRC_ADDR_END: usize = field::SOURCE.end;

super::view::header_view! {
    /// A view of an Ethernet II frame.
    ///
    /// - [`Frame::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than [`HEADER_LEN`].
    /// - [`Frame::new_checked`]: Wraps untrusted bytes, checking that they hold a whole header.
    pub struct Frame: check_len;
    /// The EtherType field.
    ethertype, set_ethertype: EtherType @ field::ETHERTYPE;
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination MAC address.
    #[inline(always)]
    pub fn set_dst_addr(&mut self, value: Address) {
        FieldValue::write(value, self.buffer.as_mut(), field::DESTINATION.start);
    }
    /// Sets the source MAC address.
    #[inline(always)]
    pub fn set_src_addr(&mut self, value: Address) {
        FieldValue::write(value, self.buffer.as_mut(), field::SOURCE.start);
    }
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks that the buffer holds a whole header.
    pub fn check_len(&self) -> Result<()> {
        check_len(Layer::Ethernet, self.buffer.as_ref(), HEADER_LEN)
    }

    /// Header length (always [`HEADER_LEN`]).
    pub const fn header_len() -> usize {
        HEADER_LEN
    }

    /// Length of a frame carrying `payload_len` bytes.
    pub const fn buffer_len(payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Destination MAC address.
    #[inline]
    pub fn dst_addr(&self) -> Address {
        FieldValue::read(self.buffer.as_ref(), field::DESTINATION.start)
    }

    /// Source MAC address.
    #[inline]
    pub fn src_addr(&self) -> Address {
        FieldValue::read(self.buffer.as_ref(), field::SOURCE.start)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Frame<&'a T> {
    /// The bytes after the header, borrowed for the buffer's lifetime.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// The bytes after the header, writable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Frame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The meaning of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source MAC address.
    pub src_addr: Address,
    /// Destination MAC address.
    pub dst_addr: Address,
    /// What the payload is.
    pub ethertype: EtherType,
}

impl Repr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &Frame<&T>) -> Result<Repr> {
        frame.check_len()?;
        Ok(Repr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Bytes this header occupies.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the front of `frame`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) -> Result<()> {
        check_room(Layer::Ethernet, frame.buffer.as_ref(), HEADER_LEN)?;
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
        Ok(())
    }
}

super::view::field_value_bytes! {
    Address: 6, |b| Address(b), |v| v.0;
}

super::view::field_value_as! {
    EtherType => u16,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::assert_prefixes_truncated;

    #[test]
    fn address_as_u64_round_trips() {
        let a: Address = "02:ab:cd:ef:01:23".parse().unwrap();
        assert_eq!(a.to_u64(), 0x02ab_cdef_0123);
        assert_eq!(Address::from_u64(0xffff_02ab_cdef_0123), a);
        assert_eq!(Address::from_u64(a.to_u64()), a);
    }
    use crate::wire::Error;
    use proptest::prelude::*;

    static FRAME_BYTES: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb, 0xcc, 0xdd,
    ];
    const DST: Address = Address([0x02, 0, 0, 0, 0, 1]);
    const SRC: Address = Address([0x02, 0, 0, 0, 0, 2]);

    #[test]
    fn deconstruct() {
        let f = Frame::new_checked(&FRAME_BYTES[..]).unwrap();
        assert_eq!(f.dst_addr(), DST);
        assert_eq!(f.src_addr(), SRC);
        assert_eq!(f.ethertype(), EtherType::Ipv4);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 18];
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_dst_addr(DST);
        f.set_src_addr(SRC);
        f.set_ethertype(EtherType::Ipv4);
        f.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(buf, FRAME_BYTES);
    }

    #[test]
    fn parse_and_emit() {
        let repr = Repr::parse(&Frame::new_checked(&FRAME_BYTES[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                src_addr: SRC,
                dst_addr: DST,
                ethertype: EtherType::Ipv4
            }
        );
        let mut buf = FRAME_BYTES;
        buf[..14].fill(0);
        repr.emit(&mut Frame::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, FRAME_BYTES);
        let mut small = [0u8; 13];
        assert!(matches!(
            repr.emit(&mut Frame::new_unchecked(&mut small[..])),
            Err(Error::BufferTooSmall { needed: 14, .. })
        ));
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&FRAME_BYTES, HEADER_LEN, Frame::new_checked);
        assert!(matches!(
            Frame::new_checked(&FRAME_BYTES[..HEADER_LEN - 1]),
            Err(Error::Truncated { needed: 14, .. })
        ));
        assert!(Frame::new_checked(&FRAME_BYTES[..HEADER_LEN]).is_ok());
    }

    #[test]
    fn address_classes() {
        assert!(Address::BROADCAST.is_broadcast());
        assert!(Address::BROADCAST.is_multicast());
        assert!(!Address::BROADCAST.is_unicast());
        let mcast = Address([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(mcast.is_multicast() && !mcast.is_broadcast());
        assert!(SRC.is_unicast() && SRC.is_local());
        assert!(!Address([0x00, 0x1b, 0x21, 1, 2, 3]).is_local());
    }

    #[test]
    fn address_text() {
        let a: Address = "02:AB:cd:00:0f:10".parse().unwrap();
        assert_eq!(a, Address([0x02, 0xab, 0xcd, 0x00, 0x0f, 0x10]));
        assert_eq!(a.to_string(), "02:ab:cd:00:0f:10");
        assert_eq!("02-ab-cd-00-0f-10".parse::<Address>(), Ok(a));
        for bad in [
            "",
            "02:ab:cd:00:0f",
            "02:ab:cd:00:0f:10:11",
            "02:ab:cd:00:0f:1g",
            "02:ab:cd:00:0f:100",
            "02:ab::00:0f:10",
            "+2:ab:cd:00:0f:10",
        ] {
            assert_eq!(
                bad.parse::<Address>(),
                Err(AddressParseError::Mac),
                "{bad:?}"
            );
        }
        assert_eq!(Address::from_bytes(&[1, 2, 3, 4, 5]), None);
        assert_eq!(
            Address::from_bytes(&[1, 2, 3, 4, 5, 6, 7]),
            Some(Address([1, 2, 3, 4, 5, 6]))
        );
    }

    #[test]
    fn ethertype_numbers() {
        for n in [0x0800u16, 0x0806, 0x86dd, 0x8100, 0x88a8, 0x6558, 0x1234] {
            assert_eq!(u16::from(EtherType::from(n)), n);
        }
        assert_eq!(EtherType::from(0x8100), EtherType::Vlan);
        assert_eq!(EtherType::from(0x88a8), EtherType::QinQ);
        assert_eq!(EtherType::from(0x1234), EtherType::Unknown(0x1234));
        assert_eq!(u16::from(EtherType::Ipv6), etherparse::EtherType::IPV6.0);
    }

    #[test]
    fn etherparse_oracle() {
        let builder = etherparse::PacketBuilder::ethernet2(SRC.0, DST.0)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000);
        let mut pkt = Vec::new();
        builder.write(&mut pkt, &[1, 2, 3]).unwrap();
        let f = Frame::new_checked(&pkt[..]).unwrap();
        assert_eq!(f.src_addr(), SRC);
        assert_eq!(f.dst_addr(), DST);
        assert_eq!(f.ethertype(), EtherType::Ipv4);

        // Our emitted header, read back by etherparse.
        let mut buf = [0u8; 14];
        Repr {
            src_addr: SRC,
            dst_addr: DST,
            ethertype: EtherType::Arp,
        }
        .emit(&mut Frame::new_unchecked(&mut buf[..]))
        .unwrap();
        let (eth, _) = etherparse::Ethernet2Header::from_slice(&buf).unwrap();
        assert_eq!(eth.source, SRC.0);
        assert_eq!(eth.destination, DST.0);
        assert_eq!(eth.ether_type, etherparse::EtherType::ARP);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(f) = Frame::new_checked(&bytes[..]) {
                let r = Repr::parse(&f).unwrap();
                prop_assert_eq!(r.ethertype, f.ethertype());
                prop_assert_eq!(f.payload().len(), bytes.len() - HEADER_LEN);
            } else {
                prop_assert!(bytes.len() < HEADER_LEN);
            }
        }

        #[test]
        fn text_round_trip(b in any::<[u8; 6]>()) {
            let a = Address(b);
            prop_assert_eq!(a.to_string().parse::<Address>(), Ok(a));
        }
    }
}
