//! SCTP common header (RFC 9260) and its CRC32c checksum.
//!
//! The datapath needs SCTP only for load balancing and NAT: ports, the
//! verification tag and a correct checksum after rewriting ports. Chunks
//! stay opaque bytes. The packet is the whole buffer (pass exactly the IP
//! payload). The CRC32c (Castagnoli) is computed with a 256-entry table
//! built at compile time and stored in the checksum field least-significant
//! byte first, as RFC 9260 appendix A and the Linux stack do. Unlike the
//! Internet checksum it cannot be patched incrementally: after a port
//! rewrite call [`Packet::fill_checksum`]. Plain data, no state, no
//! allocation.

use super::{check_len, check_room, ChecksumMode, Error, Layer, Result};

mod field {
    use core::ops::Range;
    // Ports at 0 and 2: `view::transport_ports!`.
    pub const VERIFICATION_TAG: usize = 4;
    pub const CHECKSUM: Range<usize> = 8..12;
}

/// Length of the SCTP common header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

const CRC32C_POLY_REFLECTED: u32 = 0x82f6_3b78;

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC32C_TABLE: [u32; 256] = crc32c_table();

/// Feeds `data` into a running CRC32c state (start with `!0`).
#[inline]
fn crc32c_update(mut state: u32, data: &[u8]) -> u32 {
    for &b in data {
        state = CRC32C_TABLE[((state ^ u32::from(b)) & 0xff) as usize] ^ (state >> 8);
    }
    state
}

/// CRC32c (Castagnoli) of `data`, as RFC 3720 and RFC 9260 define it.
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

super::view::header_view! {
    /// A view of an SCTP packet.
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than [`HEADER_LEN`].
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking that the common header is
    ///   present.
    pub struct Packet: check_len;
    @transport_ports;
    /// Verification tag.
    verification_tag, set_verification_tag: u32 @ field::VERIFICATION_TAG;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the common header is present.
    pub fn check_len(&self) -> Result<()> {
        check_len(Layer::Sctp, self.buffer.as_ref(), HEADER_LEN)
    }

    /// The checksum field, decoded (it is stored least-significant byte
    /// first).
    #[inline(always)]
    pub fn checksum(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The CRC32c of the packet with the checksum field taken as zero.
    pub fn compute_checksum(&self) -> u32 {
        let b = self.buffer.as_ref();
        let mut state = crc32c_update(!0, &b[..field::CHECKSUM.start]);
        state = crc32c_update(state, &[0; 4]);
        state = crc32c_update(state, &b[HEADER_LEN..]);
        !state
    }

    /// True when the checksum is correct.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        self.checksum() == self.compute_checksum()
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The chunks after the common header, opaque.
    #[inline(always)]
    pub fn chunks(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Stores `value` in the checksum field (least-significant byte first).
    #[inline(always)]
    pub fn set_checksum(&mut self, value: u32) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_le_bytes());
    }

    /// Computes and stores the CRC32c over the whole packet.
    #[inline(always)]
    pub fn fill_checksum(&mut self) {
        let c = self.compute_checksum();
        self.set_checksum(c);
    }

    /// The chunks after the common header, writable.
    #[inline(always)]
    pub fn chunks_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The meaning of an SCTP common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Verification tag.
    pub verification_tag: u32,
}

impl Repr {
    /// Reads the common header; under [`ChecksumMode::Verify`] the CRC32c
    /// must be correct.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>, mode: ChecksumMode) -> Result<Repr> {
        packet.check_len()?;
        if mode == ChecksumMode::Verify && !packet.verify_checksum() {
            return Err(Error::Checksum { layer: Layer::Sctp });
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            verification_tag: packet.verification_tag(),
        })
    }

    /// Bytes of the common header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the common header and then the CRC32c over the whole buffer
    /// (so place the chunks first, or call [`Packet::fill_checksum`] after).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        check_room(Layer::Sctp, packet.buffer.as_ref(), HEADER_LEN)?;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_verification_tag(self.verification_tag);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::{assert_checksum_checked, assert_prefixes_truncated};
    use proptest::prelude::*;

    #[test]
    fn crc32c_reference_vectors() {
        // The standard check value and the RFC 3720 appendix B.4 vectors.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&dec), 0x113f_db5c);
    }

    #[test]
    fn checksum_bytes_are_stored_like_rfc3720() {
        // RFC 3720 B.4 lists the 32-zero-byte CRC as bytes aa 36 91 8a.
        let mut buf = [0u8; 32];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_checksum(crc32c(&[0u8; 32]));
        assert_eq!(&buf[8..12], &[0xaa, 0x36, 0x91, 0x8a]);
    }

    /// INIT chunk (type 1) between ports 5000 → 36412 (S1AP/NGAP style).
    fn init_packet() -> [u8; 32] {
        let mut b = [0u8; 32];
        b[12..32].copy_from_slice(&[
            0x01, 0x00, 0x00, 0x14, // INIT, flags, length 20
            0x11, 0x22, 0x33, 0x44, // initiate tag
            0x00, 0x01, 0x00, 0x00, // a_rwnd
            0x00, 0x0a, 0x00, 0x0a, // streams
            0x00, 0x00, 0x00, 0x01, // initial TSN
        ]);
        Repr {
            src_port: 5000,
            dst_port: 36412,
            verification_tag: 0,
        }
        .emit(&mut Packet::new_unchecked(&mut b[..]))
        .unwrap();
        b
    }

    #[test]
    fn deconstruct_and_construct() {
        let b = init_packet();
        assert_eq!(&b[..8], &[0x13, 0x88, 0x8e, 0x3c, 0, 0, 0, 0]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.src_port(), 5000);
        assert_eq!(p.dst_port(), 36412);
        assert_eq!(p.verification_tag(), 0);
        assert_eq!(p.chunks()[0], 1);
        assert!(p.verify_checksum());
        // The checksum is the CRC32c of the packet with a zero field.
        let mut zeroed = b;
        zeroed[8..12].fill(0);
        assert_eq!(p.checksum(), crc32c(&zeroed));
    }

    #[test]
    fn parse_and_checksum_errors() {
        let b = init_packet();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, ChecksumMode::Verify).unwrap(),
            Repr {
                src_port: 5000,
                dst_port: 36412,
                verification_tag: 0
            }
        );
        let mut bad = b;
        bad[31] ^= 0x80;
        assert_checksum_checked(Layer::Sctp, &bad, |b, mode| {
            Repr::parse(&Packet::new_checked(b).unwrap(), mode).map(|_| ())
        });
    }

    #[test]
    fn port_rewrite_then_fill() {
        let mut b = init_packet();
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_dst_port(38412);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.dst_port(), 38412);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let b = init_packet();
        assert_prefixes_truncated(&b, HEADER_LEN, Packet::new_checked);
        let mut small = [0u8; 11];
        assert!(Repr {
            src_port: 1,
            dst_port: 2,
            verification_tag: 3
        }
        .emit(&mut Packet::new_unchecked(&mut small[..]))
        .is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = p.chunks();
                let _ = Repr::parse(&p, ChecksumMode::Verify);
                prop_assert!(Repr::parse(&p, ChecksumMode::Trust).is_ok());
            }
        }

        #[test]
        fn split_crc_matches_whole(data in proptest::collection::vec(any::<u8>(), 0..100), cut in 0usize..100) {
            let cut = cut.min(data.len());
            let state = crc32c_update(crc32c_update(!0, &data[..cut]), &data[cut..]);
            prop_assert_eq!(!state, crc32c(&data));
        }
    }
}
