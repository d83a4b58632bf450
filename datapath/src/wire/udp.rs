//! UDP datagrams (RFC 768).
//!
//! [`Packet::new_checked`] checks that the length field is at least 8 and
//! no larger than the buffer; the buffer may be longer (the caller normally
//! passes the IPv4 payload, which then must agree). The checksum covers the
//! IPv4 pseudo-header; 0 means "no checksum" and is accepted by
//! [`Packet::verify_checksum`], and a computed 0 is sent as `0xffff`.
//! Plain data, no state, no allocation.

use std::net::Ipv4Addr;

use super::checksum;
use super::segment;
use super::{
    check_declared_len, check_room, read_u16, write_u16, ChecksumMode, Error, Layer, Result,
};

mod field {
    // Ports at 0 and 2: `view::transport_ports!`.
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Length of a UDP header.
pub const HEADER_LEN: usize = 8;

super::view::header_view! {
    /// A view of a UDP datagram.
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than the header; [`Packet::payload`] panics if the length field is inconsistent.
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking the header and the length field.
    pub struct Packet: check_len;
    @transport_ports;
    /// Checksum field (0 = none).
    checksum, set_checksum: u16 @ field::CHECKSUM;
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the length field.
    #[inline(always)]
    pub fn set_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the header and the length field against the buffer.
    pub fn check_len(&self) -> Result<()> {
        check_declared_len(
            Layer::Udp,
            self.buffer.as_ref(),
            HEADER_LEN,
            || usize::from(self.len()),
            "length",
            "it is smaller than the 8-byte header",
        )
    }

    /// Length field: header plus payload.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// True when the checksum is absent (0) or correct for the given IPv4
    /// addresses.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || segment::verify(self, src, dst)
    }
}

// The checksum covers the datagram up to its length field; a computed 0
// is sent as `0xffff` (0 means "no checksum").
segment::segment_view! {
    Udp, repr: Repr, exact_buffer: false,
    covered: |p| &p.buffer.as_ref()[..usize::from(p.len())],
    store: |p, sum| p.set_checksum(checksum::udp_nonzero(sum)),
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, up to the length field.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Rewrites a port and patches the checksum incrementally; a zero
    /// ("none") checksum stays zero.
    #[inline(always)]
    pub fn rewrite_src_port(&mut self, value: u16) {
        let c = checksum::update_udp16(self.checksum(), self.src_port(), value);
        self.set_src_port(value);
        self.set_checksum(c);
    }

    /// Rewrites the destination port, patching the checksum like
    /// [`Packet::rewrite_src_port`].
    #[inline(always)]
    pub fn rewrite_dst_port(&mut self, value: u16) {
        let c = checksum::update_udp16(self.checksum(), self.dst_port(), value);
        self.set_dst_port(value);
        self.set_checksum(c);
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header,
    /// header and payload (up to the length field).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        // The covered length is the 16-bit length field: it always fits.
        let _ = segment::fill(self, src, dst);
    }

    /// The payload up to the length field, writable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..len]
    }
}

/// The meaning of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl Repr {
    /// Reads a header; under [`ChecksumMode::Verify`] a non-zero checksum
    /// must be correct for `src`/`dst`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        mode: ChecksumMode,
    ) -> Result<Repr> {
        packet.check_len()?;
        if mode == ChecksumMode::Verify && !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum { layer: Layer::Udp });
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    /// Bytes of header plus payload.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header (checksum 0) for a payload the caller places or
    /// has placed after it; call [`Packet::fill_checksum`] once the payload
    /// is in. The buffer must hold header and payload.
    pub fn emit_header<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let len = self.buffer_len();
        let len16 = u16::try_from(len).map_err(|_| Error::ValueTooLarge {
            layer: Layer::Udp,
            field: "length",
            value: u32::try_from(len).unwrap_or(u32::MAX),
            max: u16::MAX.into(),
        })?;
        check_room(Layer::Udp, packet.buffer.as_ref(), len)?;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len16);
        packet.set_checksum(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::{assert_checksum_checked, assert_prefixes_truncated};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);

    // 53 → 40000, 4-byte payload.
    static PACKET_BYTES: [u8; 12] = [
        0x00, 0x35, 0x9c, 0x40, 0x00, 0x0c, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn with_checksum() -> [u8; 12] {
        let mut b = PACKET_BYTES;
        Packet::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
        b
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(p.src_port(), 53);
        assert_eq!(p.dst_port(), 40000);
        assert_eq!(p.len(), 12);
        assert_eq!(p.checksum(), 0);
        assert!(p.verify_checksum(SRC, DST), "zero means no checksum");
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn construct_and_emit() {
        let mut buf = [0u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(53);
        p.set_dst_port(40000);
        p.set_len(12);
        p.set_checksum(0);
        p.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(buf, PACKET_BYTES);

        let repr = Repr {
            src_port: 53,
            dst_port: 40000,
            payload_len: 4,
        };
        let mut buf = [0u8; 12];
        repr.emit(
            &mut Packet::new_unchecked(&mut buf[..]),
            &[0xde, 0xad, 0xbe, 0xef],
            Some((SRC, DST)),
        )
        .unwrap();
        assert_eq!(buf, with_checksum());
        assert!(repr
            .emit(&mut Packet::new_unchecked(&mut buf[..]), &[1], None)
            .is_err());
        let mut small = [0u8; 11];
        assert!(matches!(
            repr.emit_header(&mut Packet::new_unchecked(&mut small[..])),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn parse_and_checksum() {
        let b = with_checksum();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(192, 168, 1, 3)));
        assert_eq!(
            Repr::parse(&p, SRC, DST, ChecksumMode::Verify).unwrap(),
            Repr {
                src_port: 53,
                dst_port: 40000,
                payload_len: 4
            }
        );
        let mut bad = b;
        bad[11] ^= 0xff;
        assert_checksum_checked(Layer::Udp, &bad, |b, mode| {
            Repr::parse(&Packet::new_checked(b).unwrap(), SRC, DST, mode).map(|_| ())
        });
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&PACKET_BYTES, PACKET_BYTES.len(), Packet::new_checked);
    }

    #[test]
    fn bad_length_field_rejected() {
        let mut b = PACKET_BYTES;
        b[5] = 7;
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Malformed { .. })
        ));
        b[5] = 13;
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Truncated { needed: 13, .. })
        ));
    }

    #[test]
    fn port_rewrite_keeps_checksum_valid_and_zero_stays_zero() {
        let mut b = with_checksum();
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.rewrite_src_port(1234);
        p.rewrite_dst_port(4321);
        assert!(p.verify_checksum(SRC, DST));
        assert_ne!(p.checksum(), 0);
        let mut z = PACKET_BYTES;
        let mut p = Packet::new_unchecked(&mut z[..]);
        p.rewrite_dst_port(9);
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.dst_port(), 9);
    }

    #[test]
    fn etherparse_oracle_both_ways() {
        let builder =
            etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 64).udp(53, 40000);
        let mut pkt = Vec::new();
        builder.write(&mut pkt, &[0xde, 0xad, 0xbe, 0xef]).unwrap();
        let p = Packet::new_checked(&pkt[20..]).unwrap();
        let r = Repr::parse(&p, SRC, DST, ChecksumMode::Verify).unwrap();
        assert_eq!((r.src_port, r.dst_port, r.payload_len), (53, 40000, 4));
        assert_eq!(&pkt[20..], &with_checksum()[..], "same bytes as ours");

        // Ours inside an etherparse-built IPv4 header.
        let mut frame = pkt.clone();
        let mut p = Packet::new_unchecked(&mut frame[20..]);
        p.rewrite_src_port(7);
        let sliced = etherparse::SlicedPacket::from_ip(&frame).unwrap();
        match sliced.transport {
            Some(etherparse::TransportSlice::Udp(u)) => {
                assert_eq!(u.source_port(), 7);
                let want = u
                    .to_header()
                    .calc_checksum_ipv4_raw(SRC.octets(), DST.octets(), u.payload())
                    .unwrap();
                assert_eq!(u.checksum(), want);
            }
            other => panic!("etherparse saw {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = p.payload();
                let _ = Repr::parse(&p, SRC, DST, ChecksumMode::Verify);
                prop_assert!(Repr::parse(&p, SRC, DST, ChecksumMode::Trust).is_ok());
            }
        }

        #[test]
        fn checksum_matches_etherparse(src in any::<u32>(), dst in any::<u32>(), sp in any::<u16>(),
                                       dp in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (s, d) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let r = Repr { src_port: sp, dst_port: dp, payload_len: payload.len() };
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]), &payload, Some((s, d))).unwrap();
            let h = etherparse::UdpHeader::from_slice(&buf).unwrap().0;
            prop_assert_eq!(h.checksum, h.calc_checksum_ipv4_raw(s.octets(), d.octets(), &payload).unwrap());
            prop_assert_eq!(h.length as usize, buf.len());
        }
    }
}
