//! IPv4 headers (RFC 791) and IPv4 prefixes.
//!
//! [`Packet::new_checked`] validates everything the getters rely on:
//! version 4, IHL of at least 5 words, the header (with options) inside the
//! buffer, and a total length between the header length and the buffer
//! length. The buffer may be longer than the total length (Ethernet
//! padding); [`Packet::payload`] stops at the total length. The header
//! checksum is verified by [`Repr::parse`] under [`ChecksumMode::Verify`].
//! Addresses are `std::net::Ipv4Addr` throughout the wire module.
//! Plain data, no state, no allocation.

use core::fmt;
use core::str::FromStr;
use std::net::Ipv4Addr;

use super::checksum;
use super::ip::IpProtocol;
use super::view::FieldValue;
use super::{
    check_len, check_room, read_u16, write_u16, AddressParseError, ChecksumMode, Error, Layer,
    Result,
};

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Largest IPv4 header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

super::view::header_view! {
    /// A view of an IPv4 packet.
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than the header; [`Packet::payload`] panics if the total length field is
    ///   inconsistent.
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking version, header length and total
    ///   length against the buffer.
    pub struct Packet: check_header, check_total_len;
    /// The DSCP and ECN bits together, as one byte (the old TOS byte, OVS
    /// `nw_tos`).
    tos: u8 @ field::DSCP_ECN;
    /// Total length (header + payload) in bytes.
    total_len, set_total_len: u16 @ field::LENGTH;
    /// Identification.
    ident, set_ident: u16 @ field::IDENT;
    /// Time to live.
    hop_limit, set_hop_limit: u8 @ field::TTL;
    /// The upper-layer protocol.
    next_header, set_next_header: IpProtocol @ field::PROTOCOL;
    /// The header checksum field.
    checksum, set_checksum: u16 @ field::CHECKSUM;
    /// Source address.
    src_addr, set_src_addr: Ipv4Addr @ field::SRC_ADDR.start;
    /// Destination address.
    dst_addr, set_dst_addr: Ipv4Addr @ field::DST_ADDR.start;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps the (possibly cut short) copy of a datagram quoted inside an
    /// ICMP error: checks the header only, not that the whole datagram is
    /// present. [`Packet::payload`] must not be used on such a view; use
    /// [`Packet::quoted_payload`].
    pub fn new_checked_quoted(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_header()?;
        Ok(p)
    }

    fn check_header(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(Layer::Ipv4, b, HEADER_LEN)?;
        if self.version() != 4 {
            return Err(Error::Version {
                layer: Layer::Ipv4,
                version: self.version(),
            });
        }
        let hl = usize::from(self.header_len());
        if hl < HEADER_LEN {
            return Err(Error::Malformed {
                layer: Layer::Ipv4,
                field: "header length (IHL)",
                reason: "it is below the minimum of 5 words",
            });
        }
        check_len(Layer::Ipv4, b, hl)
    }

    fn check_total_len(&self) -> Result<()> {
        let total = usize::from(self.total_len());
        if total < usize::from(self.header_len()) {
            return Err(Error::Malformed {
                layer: Layer::Ipv4,
                field: "total length",
                reason: "it is smaller than the header length",
            });
        }
        check_len(Layer::Ipv4, self.buffer.as_ref(), total)
    }

    /// Version field (4 for a checked packet).
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes, options included (IHL × 4).
    #[inline(always)]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The IPv4 options bytes (empty without options).
    #[inline(always)]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.header_len())]
    }

    /// Differentiated services code point.
    #[inline(always)]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// Explicit congestion notification bits.
    #[inline(always)]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Don't-fragment flag.
    #[inline(always)]
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// More-fragments flag.
    #[inline(always)]
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field × 8).
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF) & FRAG_OFFSET_MASK) << 3
    }

    /// True when this packet is a fragment (first or later).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// True when the header checksum is correct.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        let hl = usize::from(self.header_len());
        checksum::data(&self.buffer.as_ref()[..hl]) == 0xffff
    }

    /// The bytes of an ICMP-quoted datagram after its header: up to the
    /// total length or the end of the buffer, whichever comes first.
    #[inline]
    pub fn quoted_payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let hl = usize::from(self.header_len());
        let end = usize::from(self.total_len()).clamp(hl, b.len());
        &b[hl..end]
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload: from the end of the header to the total length.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        let b = self.buffer.as_ref();
        &b[usize::from(self.header_len())..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version to 4 and the header length (bytes, multiple of 4).
    #[inline(always)]
    pub fn set_version_and_header_len(&mut self, header_len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) & 0x0f);
    }

    /// Rewrites the source address and patches the header checksum
    /// incrementally (RFC 1624); returns the old address so the caller can
    /// patch the transport checksum (see [`checksum::update_ipv4_address`]).
    #[inline]
    pub fn rewrite_src_addr(&mut self, value: Ipv4Addr) -> Ipv4Addr {
        self.rewrite_addr(field::SRC_ADDR.start, value)
    }

    /// [`Packet::rewrite_src_addr`] for the destination address.
    #[inline]
    pub fn rewrite_dst_addr(&mut self, value: Ipv4Addr) -> Ipv4Addr {
        self.rewrite_addr(field::DST_ADDR.start, value)
    }

    /// Writes the address at `at` and patches the header checksum; returns
    /// the old address.
    #[inline(always)]
    fn rewrite_addr(&mut self, at: usize, value: Ipv4Addr) -> Ipv4Addr {
        let old: Ipv4Addr = FieldValue::read(self.buffer.as_ref(), at);
        let c = checksum::update32(self.checksum(), old.into(), value.into());
        value.write(self.buffer.as_mut(), at);
        self.set_checksum(c);
        old
    }

    /// Sets the TTL and patches the header checksum incrementally through
    /// the 16-bit word the TTL shares with the protocol.
    #[inline]
    pub fn rewrite_hop_limit(&mut self, value: u8) {
        let old = read_u16(self.buffer.as_ref(), field::TTL);
        let new = (old & 0x00ff) | (u16::from(value) << 8);
        let c = checksum::update16(self.checksum(), old, new);
        self.set_hop_limit(value);
        self.set_checksum(c);
    }

    /// Sets the DSCP (6 bits) keeping ECN.
    #[inline(always)]
    pub fn set_dscp(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (value << 2);
    }

    /// Sets the ECN bits (2 bits) keeping DSCP.
    #[inline(always)]
    pub fn set_ecn(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & !0x03) | (value & 0x03);
    }

    /// Sets flags and fragment offset together (offset in bytes, multiple
    /// of 8).
    #[inline]
    pub fn set_fragment(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        write_u16(self.buffer.as_mut(), field::FLG_OFF, v);
    }

    /// Decrements the TTL by one and patches the header checksum
    /// incrementally (RFC 1624). Returns the new TTL, or `None` (and
    /// changes nothing) when the TTL is already 0 or 1, i.e. the packet
    /// must not be forwarded.
    #[inline]
    pub fn decrement_ttl(&mut self) -> Option<u8> {
        let ttl = self.hop_limit();
        if ttl <= 1 {
            return None;
        }
        let b = self.buffer.as_ref();
        let old = read_u16(b, field::TTL);
        let new = old - 0x0100;
        let csum = checksum::update16(self.checksum(), old, new);
        self.set_hop_limit(ttl - 1);
        self.set_checksum(csum);
        Some(ttl - 1)
    }

    /// Recomputes the header checksum from scratch.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = usize::from(self.header_len());
        let sum = checksum::data(&self.buffer.as_ref()[..hl]);
        self.set_checksum(checksum::finish(sum));
    }

    /// The payload up to the total length, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (hl, total) = (
            usize::from(self.header_len()),
            usize::from(self.total_len()),
        );
        &mut self.buffer.as_mut()[hl..total]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The meaning of an IPv4 header.
///
/// Options are not represented: [`Repr::emit`] writes a 20-byte header, and
/// parsing a header with options keeps only the fixed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Upper-layer protocol.
    pub next_header: IpProtocol,
    /// Payload length in bytes (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub hop_limit: u8,
    /// DSCP (6 bits).
    pub dscp: u8,
    /// ECN (2 bits).
    pub ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
    /// More-fragments flag.
    pub more_frags: bool,
    /// Fragment offset in bytes (multiple of 8).
    pub frag_offset: u16,
}

impl Repr {
    /// A plain unfragmented header with DF set, TTL 64 and DSCP/ECN 0.
    pub fn new(
        src_addr: Ipv4Addr,
        dst_addr: Ipv4Addr,
        next_header: IpProtocol,
        payload_len: usize,
    ) -> Repr {
        Repr {
            src_addr,
            dst_addr,
            next_header,
            payload_len,
            hop_limit: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    /// Reads a header; verifies the checksum under
    /// [`ChecksumMode::Verify`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>, mode: ChecksumMode) -> Result<Repr> {
        packet.check_header()?;
        packet.check_total_len()?;
        if mode == ChecksumMode::Verify && !packet.verify_checksum() {
            return Err(Error::Checksum { layer: Layer::Ipv4 });
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.total_len()) - usize::from(packet.header_len()),
            hop_limit: packet.hop_limit(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    /// Bytes of the header [`Repr::emit`] writes (20).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header with a correct checksum. The buffer must
    /// hold the header; the payload is not touched.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let total = HEADER_LEN + self.payload_len;
        if total > usize::from(u16::MAX) {
            return Err(Error::ValueTooLarge {
                layer: Layer::Ipv4,
                field: "total length",
                value: u32::try_from(total).unwrap_or(u32::MAX),
                max: u16::MAX.into(),
            });
        }
        if self.dscp > 63 || self.ecn > 3 {
            return Err(Error::ValueTooLarge {
                layer: Layer::Ipv4,
                field: "DSCP/ECN",
                value: (u32::from(self.dscp) << 2) | u32::from(self.ecn),
                max: 0xff,
            });
        }
        if !self.frag_offset.is_multiple_of(8) || self.frag_offset > FRAG_OFFSET_MASK << 3 {
            return Err(Error::Malformed {
                layer: Layer::Ipv4,
                field: "fragment offset",
                reason: "it must be a multiple of 8 no larger than 65528",
            });
        }
        check_room(Layer::Ipv4, packet.buffer.as_ref(), HEADER_LEN)?;
        packet.set_version_and_header_len(HEADER_LEN as u8);
        packet.buffer.as_mut()[field::DSCP_ECN] = (self.dscp << 2) | self.ecn;
        packet.set_total_len(total as u16);
        packet.set_ident(self.ident);
        packet.set_fragment(self.dont_frag, self.more_frags, self.frag_offset);
        packet.set_hop_limit(self.hop_limit);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
        Ok(())
    }
}

/// An IPv4 prefix: an address and a prefix length 0..=32.
///
/// The address is kept as given (host bits may be set, as in an interface
/// address `10.0.0.5/24`); [`Cidr::network`] masks them off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    address: Ipv4Addr,
    prefix_len: u8,
}

impl Cidr {
    /// Builds a prefix; fails when `prefix_len` is above 32.
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> core::result::Result<Cidr, AddressParseError> {
        if prefix_len > 32 {
            return Err(AddressParseError::PrefixLen(prefix_len));
        }
        Ok(Cidr {
            address,
            prefix_len,
        })
    }

    /// The address as given.
    pub const fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The prefix length.
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask as a number (`/24` → `0xffffff00`).
    pub const fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix_len)
        }
    }

    /// The netmask as an address.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The prefix with host bits cleared.
    pub fn network(&self) -> Cidr {
        Cidr {
            address: Ipv4Addr::from(u32::from(self.address) & self.mask()),
            prefix_len: self.prefix_len,
        }
    }

    /// The directed broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) | !self.mask())
    }

    /// True when `addr` is inside this prefix.
    #[inline(always)]
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        (u32::from(addr) ^ u32::from(self.address)) & self.mask() == 0
    }

    /// True when every address of `other` is inside this prefix.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.address)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = AddressParseError;

    /// Parses `a.b.c.d/len`; a bare address means `/32`.
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l),
            None => (s, "32"),
        };
        let address: Ipv4Addr = addr.parse().map_err(|_| AddressParseError::Cidr)?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|c| c.is_ascii_digit()) {
            return Err(AddressParseError::Cidr);
        }
        let prefix_len: u16 = len.parse().map_err(|_| AddressParseError::Cidr)?;
        let prefix_len =
            u8::try_from(prefix_len).map_err(|_| AddressParseError::PrefixLen(u8::MAX))?;
        Cidr::new(address, prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::{assert_checksum_checked, assert_prefixes_truncated};
    use proptest::prelude::*;

    // 20-byte header + 4-byte payload: UDP, 10.0.0.1 → 10.0.0.2, TTL 64,
    // DF, ident 0x1234, DSCP 46 (EF), ECN 1.
    static PACKET_BYTES: [u8; 24] = [
        0x45, 0xb9, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x13, 0xe6, 10, 0, 0, 1, 10, 0,
        0, 2, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    fn packet_repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(10, 0, 0, 1),
            dst_addr: Ipv4Addr::new(10, 0, 0, 2),
            next_header: IpProtocol::Udp,
            payload_len: 4,
            hop_limit: 64,
            dscp: 46,
            ecn: 1,
            ident: 0x1234,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.ecn(), 1);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.next_header(), IpProtocol::Udp);
        assert_eq!(p.checksum(), 0x13e6);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert!(p.options().is_empty());
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 24];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(20);
        p.set_dscp(46);
        p.set_ecn(1);
        p.set_total_len(24);
        p.set_ident(0x1234);
        p.set_fragment(true, false, 0);
        p.set_hop_limit(64);
        p.set_next_header(IpProtocol::Udp);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.fill_checksum();
        p.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn parse_and_emit() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, ChecksumMode::Verify).unwrap(),
            packet_repr()
        );
        let mut buf = [0u8; 24];
        buf[20..].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        packet_repr()
            .emit(&mut Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn bad_checksum_rejected_unless_trusted() {
        let mut b = PACKET_BYTES;
        b[11] ^= 1;
        assert_checksum_checked(Layer::Ipv4, &b, |b, mode| {
            Repr::parse(&Packet::new_checked(b).unwrap(), mode).map(|_| ())
        });
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&PACKET_BYTES, PACKET_BYTES.len(), Packet::new_checked);
    }

    #[test]
    fn bad_versions_and_lengths_rejected() {
        let mut b = PACKET_BYTES;
        b[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&b[..]),
            Err(Error::Version {
                layer: Layer::Ipv4,
                version: 6
            })
        );
        let mut b = PACKET_BYTES;
        b[0] = 0x44; // IHL 4
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Malformed { .. })
        ));
        let mut b = PACKET_BYTES;
        b[0] = 0x46; // IHL 6 (24 bytes): header fits, total 24 == header
        assert!(Packet::new_checked(&b[..]).is_ok());
        b[0] = 0x47; // IHL 7 > buffer
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Truncated { needed: 28, .. })
        ));
        let mut b = PACKET_BYTES;
        b[3] = 19; // total < header
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Malformed { .. })
        ));
        let mut b = PACKET_BYTES;
        b[3] = 25; // total > buffer
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Truncated { needed: 25, .. })
        ));
    }

    #[test]
    fn padding_after_total_length_is_not_payload() {
        let mut padded = [0u8; 46];
        padded[..24].copy_from_slice(&PACKET_BYTES);
        let p = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn options_and_fragments() {
        // IHL 6 with a 4-byte option (NOP NOP NOP EOL), MF set, offset 1480.
        let mut buf = [0u8; 28];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(24);
        p.set_total_len(28);
        p.set_fragment(false, true, 1480);
        p.set_hop_limit(3);
        p.set_next_header(IpProtocol::Tcp);
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert!(p.more_frags() && !p.dont_frag());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
        assert_eq!(p.payload().len(), 4);
        let r = Repr::parse(&p, ChecksumMode::Verify).unwrap();
        assert_eq!(r.payload_len, 4);
        assert_eq!(r.frag_offset, 1480);
        let bad = Repr {
            frag_offset: 3,
            ..r
        };
        let mut out = [0u8; 20];
        assert!(bad.emit(&mut Packet::new_unchecked(&mut out[..])).is_err());
    }

    #[test]
    fn decrement_ttl_patches_checksum() {
        let mut b = PACKET_BYTES;
        let mut p = Packet::new_unchecked(&mut b[..]);
        assert_eq!(p.decrement_ttl(), Some(63));
        assert!(p.verify_checksum());
        let mut expect = PACKET_BYTES;
        expect[8] = 63;
        Packet::new_unchecked(&mut expect[..]).fill_checksum();
        assert_eq!(b, expect);
        let mut b = PACKET_BYTES;
        b[8] = 1;
        let mut p = Packet::new_unchecked(&mut b[..]);
        assert_eq!(p.decrement_ttl(), None);
        assert_eq!(p.hop_limit(), 1);
    }

    #[test]
    fn emit_rejects_oversize() {
        let r = Repr {
            payload_len: 65516,
            ..packet_repr()
        };
        let mut out = [0u8; 20];
        assert!(matches!(
            r.emit(&mut Packet::new_unchecked(&mut out[..])),
            Err(Error::ValueTooLarge { .. })
        ));
        let r = Repr {
            payload_len: 65515,
            ..packet_repr()
        };
        assert!(r.emit(&mut Packet::new_unchecked(&mut out[..])).is_ok());
        let mut small = [0u8; 19];
        assert!(matches!(
            packet_repr().emit(&mut Packet::new_unchecked(&mut small[..])),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn etherparse_builds_we_parse() {
        let builder = etherparse::PacketBuilder::ipv4([192, 168, 1, 1], [172, 16, 0, 9], 17)
            .tcp(1234, 80, 1, 4096);
        let mut pkt = Vec::new();
        builder.write(&mut pkt, b"hello").unwrap();
        let p = Packet::new_checked(&pkt[..]).unwrap();
        let r = Repr::parse(&p, ChecksumMode::Verify).unwrap();
        assert_eq!(r.src_addr, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(r.dst_addr, Ipv4Addr::new(172, 16, 0, 9));
        assert_eq!(r.hop_limit, 17);
        assert_eq!(r.next_header, IpProtocol::Tcp);
        assert_eq!(r.payload_len, 20 + 5);
    }

    #[test]
    fn etherparse_parses_what_we_emit() {
        let mut buf = [0u8; 24];
        packet_repr()
            .emit(&mut Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        let (h, rest) = etherparse::Ipv4Header::from_slice(&buf).unwrap();
        assert_eq!(h.source, [10, 0, 0, 1]);
        assert_eq!(h.destination, [10, 0, 0, 2]);
        assert_eq!(h.time_to_live, 64);
        assert_eq!(h.protocol, etherparse::IpNumber::UDP);
        assert_eq!(h.identification, 0x1234);
        assert!(h.dont_fragment);
        assert_eq!(h.dscp.value(), 46);
        assert_eq!(h.ecn.value(), 1);
        assert_eq!(h.total_len, 24);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(rest.len(), 4);
    }

    #[test]
    fn cidr() {
        let c: Cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(c.address(), Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(c.prefix_len(), 16);
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(c.network().to_string(), "10.1.0.0/16");
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 1, 255, 255));
        assert!(c.contains(Ipv4Addr::new(10, 1, 200, 7)));
        assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert!(c.contains_cidr(&"10.1.5.0/24".parse().unwrap()));
        assert!(!c.contains_cidr(&"10.0.0.0/8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(255, 255, 255, 255)));
        let host: Cidr = "192.0.2.1".parse().unwrap();
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!host.contains(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(AddressParseError::PrefixLen(33))
        );
        assert_eq!(
            "10.0.0.0/300".parse::<Cidr>(),
            Err(AddressParseError::PrefixLen(255))
        );
        for bad in [
            "",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/8/1",
            "10.0.0.0/1234",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
        assert!(Cidr::new(Ipv4Addr::UNSPECIFIED, 33).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = p.options();
                let _ = p.payload();
                let _ = p.verify_checksum();
                let _ = p.quoted_payload();
                let _ = Repr::parse(&p, ChecksumMode::Verify);
                let _ = Repr::parse(&p, ChecksumMode::Trust).unwrap();
            }
            if let Ok(p) = Packet::new_checked_quoted(&bytes[..]) {
                let _ = p.options();
                let _ = p.quoted_payload();
            }
        }

        #[test]
        fn cidr_contains_matches_mask(addr in any::<u32>(), other in any::<u32>(), len in 0u8..=32) {
            let c = Cidr::new(addr.into(), len).unwrap();
            let expect = len == 0 || (addr >> (32 - u32::from(len))) == (other >> (32 - u32::from(len)));
            prop_assert_eq!(c.contains(other.into()), expect);
            prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
        }

        #[test]
        fn emit_parse_round_trip(src in any::<u32>(), dst in any::<u32>(), proto in any::<u8>(),
                                 len in 0usize..1400, ttl in any::<u8>(), ident in any::<u16>(),
                                 dscp in 0u8..64, ecn in 0u8..4, df in any::<bool>()) {
            let r = Repr {
                src_addr: src.into(), dst_addr: dst.into(), next_header: proto.into(),
                payload_len: len, hop_limit: ttl, dscp, ecn, ident, dont_frag: df,
                more_frags: false, frag_offset: 0,
            };
            let mut buf = vec![0u8; 20 + len];
            r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p, ChecksumMode::Verify).unwrap(), r);
            let (h, _) = etherparse::Ipv4Header::from_slice(&buf).unwrap();
            prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
        }

        #[test]
        fn rewrites_patch_the_checksum_like_recomputation(
            src in any::<u32>(), dst in any::<u32>(), ttl in any::<u8>(),
            new_src in any::<u32>(), new_dst in any::<u32>(), new_ttl in any::<u8>(),
        ) {
            let r = Repr {
                src_addr: src.into(), dst_addr: dst.into(), next_header: IpProtocol::Tcp,
                payload_len: 0, hop_limit: ttl, dscp: 0, ecn: 0, ident: 7, dont_frag: true,
                more_frags: false, frag_offset: 0,
            };
            let mut buf = [0u8; 20];
            r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
            let mut p = Packet::new_unchecked(&mut buf[..]);
            prop_assert_eq!(p.rewrite_src_addr(new_src.into()), Ipv4Addr::from(src));
            prop_assert_eq!(p.rewrite_dst_addr(new_dst.into()), Ipv4Addr::from(dst));
            p.rewrite_hop_limit(new_ttl);
            let mut want = buf;
            let mut w = Packet::new_unchecked(&mut want[..]);
            w.fill_checksum();
            prop_assert_eq!(buf, want);
            let p = Packet::new_unchecked(&buf[..]);
            prop_assert_eq!(p.src_addr(), Ipv4Addr::from(new_src));
            prop_assert_eq!(p.dst_addr(), Ipv4Addr::from(new_dst));
            prop_assert_eq!(p.hop_limit(), new_ttl);
            prop_assert_eq!(p.tos(), 0);
        }
    }
}
