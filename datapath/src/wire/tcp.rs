//! TCP segment headers (RFC 9293).
//!
//! [`Packet::new_checked`] checks the 20-byte fixed header, a data offset
//! of at least 5 words, and that the options fit in the buffer. The segment
//! is the whole buffer: pass exactly the IPv4 payload, since TCP has no
//! length field of its own. Options stay opaque bytes (the datapath does
//! not act on them). The checksum covers the IPv4 pseudo-header.
//! Plain data, no state, no allocation.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};
use std::net::Ipv4Addr;

use super::checksum;
use super::segment;
use super::{
    check_declared_len, check_room, read_u16, write_u16, ChecksumMode, Error, Layer, Result,
};

mod field {
    // Ports at 0 and 2: `view::transport_ports!`.
    pub const SEQ_NUM: usize = 4;
    pub const ACK_NUM: usize = 8;
    pub const FLAGS: usize = 12;
    pub const WIN_SIZE: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// Length of a TCP header without options.
/// Bytes a view needs to reach the end of the checksum field (the
/// checksum of a TCP header quoted in an ICMP error may be cut off).
pub const CHECKSUM_END: usize = field::CHECKSUM + 2;

pub const HEADER_LEN: usize = 20;

/// Largest TCP header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// The TCP control bits, as they sit in the low 9 bits of bytes 12–13.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// No more data from sender.
    pub const FIN: Flags = Flags(0x001);
    /// Synchronize sequence numbers.
    pub const SYN: Flags = Flags(0x002);
    /// Reset the connection.
    pub const RST: Flags = Flags(0x004);
    /// Push function.
    pub const PSH: Flags = Flags(0x008);
    /// Acknowledgment field significant.
    pub const ACK: Flags = Flags(0x010);
    /// Urgent pointer field significant.
    pub const URG: Flags = Flags(0x020);
    /// ECN-Echo.
    pub const ECE: Flags = Flags(0x040);
    /// Congestion window reduced.
    pub const CWR: Flags = Flags(0x080);
    /// ECN nonce (historic, RFC 3540).
    pub const NS: Flags = Flags(0x100);
    /// No flags.
    pub const EMPTY: Flags = Flags(0);

    const ALL_BITS: u16 = 0x1ff;
    const NAMES: [(Flags, &'static str); 9] = [
        (Flags::FIN, "FIN"),
        (Flags::SYN, "SYN"),
        (Flags::RST, "RST"),
        (Flags::PSH, "PSH"),
        (Flags::ACK, "ACK"),
        (Flags::URG, "URG"),
        (Flags::ECE, "ECE"),
        (Flags::CWR, "CWR"),
        (Flags::NS, "NS"),
    ];

    /// Builds flags from bits; bits above the 9 defined ones are dropped.
    pub const fn from_bits_truncate(bits: u16) -> Flags {
        Flags(bits & Self::ALL_BITS)
    }

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// True when every flag in `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when any flag in `other` is set.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// True when no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags in `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Clears the flags in `other`.
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for Flags {
    /// `SYN|ACK` style; `-` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({self})")
    }
}

super::view::header_view! {
    /// A view of a TCP segment.
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than the header (options included).
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking the header and data offset.
    pub struct Packet: check_len;
    @transport_ports;
    /// Sequence number.
    seq_number, set_seq_number: u32 @ field::SEQ_NUM;
    /// Acknowledgment number.
    ack_number, set_ack_number: u32 @ field::ACK_NUM;
    /// Window size.
    window_len, set_window_len: u16 @ field::WIN_SIZE;
    /// Checksum field.
    checksum, set_checksum: u16 @ field::CHECKSUM;
    /// Urgent pointer.
    urgent_at, set_urgent_at: u16 @ field::URGENT;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks the fixed header, the data offset and the options' length.
    pub fn check_len(&self) -> Result<()> {
        check_declared_len(
            Layer::Tcp,
            self.buffer.as_ref(),
            HEADER_LEN,
            || usize::from(self.header_len()),
            "data offset",
            "it is below the minimum of 5 words",
        )
    }

    /// Header length in bytes, options included (data offset × 4).
    #[inline(always)]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::FLAGS] >> 4) * 4
    }

    /// Control flags.
    #[inline(always)]
    pub fn flags(&self) -> Flags {
        Flags::from_bits_truncate(read_u16(self.buffer.as_ref(), field::FLAGS))
    }

    /// The 12 bits after the data offset (the 9 defined flags and the 3
    /// reserved bits), as OVS's `tcp_flags` match field holds them.
    #[inline(always)]
    pub fn flags_bits(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS) & 0x0fff
    }

    /// The options bytes, opaque.
    #[inline(always)]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.header_len())]
    }

    /// True when the checksum over the pseudo-header and the whole buffer
    /// is correct.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        segment::verify(self, src, dst)
    }
}

// The checksum covers the whole buffer (TCP has no length field).
segment::segment_view! {
    Tcp, repr: Repr<'_>, exact_buffer: true,
    covered: |p| p.buffer.as_ref(),
    store: |p, sum| p.set_checksum(sum),
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The segment data after the header.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the header length in bytes (multiple of 4), keeping flags.
    #[inline(always)]
    pub fn set_header_len(&mut self, value: u8) {
        let b = &mut self.buffer.as_mut()[field::FLAGS];
        *b = (*b & 0x0f) | (((value / 4) & 0x0f) << 4);
    }

    /// Sets the control flags, keeping the data offset.
    #[inline(always)]
    pub fn set_flags(&mut self, value: Flags) {
        let b = self.buffer.as_mut();
        let cur = read_u16(b, field::FLAGS);
        write_u16(b, field::FLAGS, (cur & 0xf000) | value.bits());
    }

    /// Rewrites the source port and patches the checksum incrementally.
    #[inline(always)]
    pub fn rewrite_src_port(&mut self, value: u16) {
        let c = checksum::update16(self.checksum(), self.src_port(), value);
        self.set_src_port(value);
        self.set_checksum(c);
    }

    /// Rewrites the destination port and patches the checksum
    /// incrementally.
    #[inline(always)]
    pub fn rewrite_dst_port(&mut self, value: u16) {
        let c = checksum::update16(self.checksum(), self.dst_port(), value);
        self.set_dst_port(value);
        self.set_checksum(c);
    }

    /// Computes and stores the checksum over the IPv4 pseudo-header and
    /// the whole buffer. Fails if the buffer is longer than 65535 bytes.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
        segment::fill(self, src, dst)
    }

    /// The options bytes, writable.
    #[inline(always)]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = usize::from(self.header_len());
        &mut self.buffer.as_mut()[HEADER_LEN..hl]
    }

    /// The segment data, writable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = usize::from(self.header_len());
        &mut self.buffer.as_mut()[hl..]
    }
}

/// The meaning of a TCP header. Options are carried as opaque bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number.
    pub ack_number: u32,
    /// Control flags.
    pub flags: Flags,
    /// Window size.
    pub window_len: u16,
    /// Urgent pointer.
    pub urgent_at: u16,
    /// Options (length a multiple of 4, at most 40).
    pub options: &'a [u8],
    /// Segment data length.
    pub payload_len: usize,
}

impl<'a> Repr<'a> {
    /// Reads a header; under [`ChecksumMode::Verify`] the checksum must be
    /// correct for `src`/`dst`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        mode: ChecksumMode,
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if mode == ChecksumMode::Verify && !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum { layer: Layer::Tcp });
        }
        let b: &'a [u8] = packet.buffer.as_ref();
        let hl = usize::from(packet.header_len());
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_at: packet.urgent_at(),
            options: &b[HEADER_LEN..hl],
            payload_len: b.len() - hl,
        })
    }

    /// Header length (with options).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Bytes of header plus data.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header and options (checksum 0); the buffer must hold
    /// header and data. Call [`Packet::fill_checksum`] once the data is in.
    pub fn emit_header<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if !self.options.len().is_multiple_of(4) || self.options.len() > MAX_HEADER_LEN - HEADER_LEN
        {
            return Err(Error::Malformed {
                layer: Layer::Tcp,
                field: "options",
                reason: "their length must be a multiple of 4 and at most 40 bytes",
            });
        }
        check_room(Layer::Tcp, packet.buffer.as_ref(), self.buffer_len())?;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.buffer.as_mut()[field::FLAGS] = 0;
        packet.set_header_len(self.header_len() as u8);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_checksum(0);
        packet.set_urgent_at(self.urgent_at);
        packet.options_mut().copy_from_slice(self.options);
        Ok(())
    }
}

/// Walks the TLV options of a TCP header (RFC 9293 §3.1): yields
/// `(kind, data)` for each option with a length, skips NOPs, and stops at
/// End of Option List, at a malformed length (below 2 or past the end) or
/// at a kind byte with no room for its length. [`OptionIter::lone_kind`]
/// says whether it stopped on the last reason, which a caller may treat
/// differently (the length would be the first payload byte).
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    opts: &'a [u8],
    at: usize,
    lone_kind: bool,
}

impl<'a> OptionIter<'a> {
    /// The options of `opts` (the bytes [`Packet::options`] returns).
    pub fn new(opts: &'a [u8]) -> Self {
        OptionIter {
            opts,
            at: 0,
            lone_kind: false,
        }
    }

    /// True when the walk stopped at a kind byte that ends the options.
    pub fn lone_kind(&self) -> bool {
        self.lone_kind
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let kind = *self.opts.get(self.at)?;
            match kind {
                0 => {
                    self.at = self.opts.len();
                    return None;
                }
                1 => self.at += 1,
                kind => {
                    let Some(&len) = self.opts.get(self.at + 1) else {
                        self.lone_kind = true;
                        self.at = self.opts.len();
                        return None;
                    };
                    let len = usize::from(len);
                    if len < 2 || self.at + len > self.opts.len() {
                        self.at = self.opts.len();
                        return None;
                    }
                    let data = &self.opts[self.at + 2..self.at + len];
                    self.at += len;
                    return Some((kind, data));
                }
            }
        }
    }
}

#[cfg(test)]
mod option_tests {
    use super::OptionIter;

    #[test]
    fn options_walk_like_rfc_9293() {
        // MSS 1460, NOP, window scale 7, SACK permitted, EOL, garbage.
        let o = [2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2, 0, 9, 9];
        let got: Vec<_> = OptionIter::new(&o).collect();
        assert_eq!(
            got,
            vec![(2, &[0x05, 0xb4][..]), (3, &[7][..]), (4, &[][..])]
        );
        // A length below 2 or past the end stops the walk.
        assert_eq!(OptionIter::new(&[3, 1, 7]).count(), 0);
        assert_eq!(OptionIter::new(&[1, 3, 9, 7]).count(), 0);
        // A kind byte with no room for its length.
        let mut it = OptionIter::new(&[1, 1, 3]);
        assert_eq!(it.next(), None);
        assert!(it.lone_kind());
        assert!(!OptionIter::new(&[0, 3]).lone_kind());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::{assert_checksum_checked, assert_prefixes_truncated};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    // 49152 → 443, seq 0x01020304, ack 0x0a0b0c0d, data offset 6 (one
    // 4-byte MSS option 1460), SYN|ACK, window 0xffff, checksum 0, urgent 0,
    // then 3 data bytes.
    static SEGMENT_BYTES: [u8; 27] = [
        0xc0, 0x00, 0x01, 0xbb, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x60, 0x12, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, b'a', b'b', b'c',
    ];
    const MSS: [u8; 4] = [0x02, 0x04, 0x05, 0xb4];

    fn repr() -> Repr<'static> {
        Repr {
            src_port: 49152,
            dst_port: 443,
            seq_number: 0x0102_0304,
            ack_number: 0x0a0b_0c0d,
            flags: Flags::SYN | Flags::ACK,
            window_len: 0xffff,
            urgent_at: 0,
            options: &MSS,
            payload_len: 3,
        }
    }

    /// [`repr`] emitted with payload `abc` and its checksum for SRC → DST.
    fn emitted() -> [u8; 27] {
        let mut buf = [0u8; 27];
        repr()
            .emit(
                &mut Packet::new_unchecked(&mut buf[..]),
                b"abc",
                Some((SRC, DST)),
            )
            .unwrap();
        buf
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&SEGMENT_BYTES[..]).unwrap();
        assert_eq!(p.src_port(), 49152);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq_number(), 0x0102_0304);
        assert_eq!(p.ack_number(), 0x0a0b_0c0d);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), Flags::SYN | Flags::ACK);
        assert_eq!(p.window_len(), 0xffff);
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &MSS);
        assert_eq!(p.payload(), b"abc");
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 27];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(49152);
        p.set_dst_port(443);
        p.set_seq_number(0x0102_0304);
        p.set_ack_number(0x0a0b_0c0d);
        p.set_header_len(24);
        p.set_flags(Flags::SYN | Flags::ACK);
        p.set_window_len(0xffff);
        p.options_mut().copy_from_slice(&MSS);
        p.payload_mut().copy_from_slice(b"abc");
        assert_eq!(buf, SEGMENT_BYTES);
    }

    #[test]
    fn parse_and_emit() {
        let buf = emitted();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(
            Repr::parse(&p, SRC, DST, ChecksumMode::Verify).unwrap(),
            repr()
        );
        let mut no_csum = buf;
        no_csum[16..18].fill(0);
        assert_eq!(no_csum, SEGMENT_BYTES);

        let mut bad = buf;
        bad[26] ^= 1;
        assert_checksum_checked(Layer::Tcp, &bad, |b, mode| {
            Repr::parse(&Packet::new_checked(b).unwrap(), SRC, DST, mode).map(|_| ())
        });
    }

    #[test]
    fn emit_validates() {
        let mut buf = [0u8; 27];
        let odd = Repr {
            options: &[1, 1, 1],
            ..repr()
        };
        assert!(odd
            .emit_header(&mut Packet::new_unchecked(&mut buf[..]))
            .is_err());
        assert!(repr()
            .emit(&mut Packet::new_unchecked(&mut buf[..]), b"ab", None)
            .is_err());
        let mut small = [0u8; 26];
        assert!(matches!(
            repr().emit_header(&mut Packet::new_unchecked(&mut small[..])),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&SEGMENT_BYTES, 24, Packet::new_checked);
        // Data is optional: every length from the header on is a segment.
        for len in 24..=SEGMENT_BYTES.len() {
            assert_eq!(
                Packet::new_checked(&SEGMENT_BYTES[..len])
                    .unwrap()
                    .payload()
                    .len(),
                len - 24
            );
        }
    }

    #[test]
    fn bad_data_offset_rejected() {
        let mut b = SEGMENT_BYTES;
        b[12] = 0x40;
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Malformed { .. })
        ));
        b[12] = 0xf0; // 60 bytes > 27
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Truncated { needed: 60, .. })
        ));
    }

    #[test]
    fn flags_text_and_ops() {
        let mut f = Flags::SYN | Flags::ACK;
        assert_eq!(f.to_string(), "SYN|ACK");
        assert!(f.contains(Flags::SYN));
        assert!(!f.contains(Flags::SYN | Flags::FIN));
        assert!(f.intersects(Flags::SYN | Flags::FIN));
        f.remove(Flags::SYN);
        f |= Flags::FIN;
        assert_eq!(f, Flags::FIN | Flags::ACK);
        assert_eq!(Flags::EMPTY.to_string(), "-");
        assert_eq!(Flags::from_bits_truncate(0xffff).bits(), 0x1ff);
        assert_eq!(format!("{:?}", Flags::NS | Flags::CWR), "Flags(CWR|NS)");
    }

    #[test]
    fn port_rewrite_keeps_checksum_valid() {
        let mut buf = emitted();
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.rewrite_src_port(1);
        p.rewrite_dst_port(65535);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn etherparse_oracle_both_ways() {
        let builder = etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 64)
            .tcp(49152, 443, 0x0102_0304, 0xffff)
            .syn()
            .ack(0x0a0b_0c0d)
            .options_raw(&MSS)
            .unwrap();
        let mut pkt = Vec::new();
        builder.write(&mut pkt, b"abc").unwrap();
        let p = Packet::new_checked(&pkt[20..]).unwrap();
        assert_eq!(
            Repr::parse(&p, SRC, DST, ChecksumMode::Verify).unwrap(),
            repr()
        );

        let buf = emitted();
        assert_eq!(&buf[..], &pkt[20..], "byte-identical to etherparse");
        let t = etherparse::TcpSlice::from_slice(&buf).unwrap();
        assert!(t.syn() && t.ack() && !t.fin());
        assert_eq!(t.options(), &MSS);
        assert_eq!(
            t.checksum(),
            t.calc_checksum_ipv4(SRC.octets(), DST.octets()).unwrap()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = p.options();
                let _ = p.payload();
                let _ = Repr::parse(&p, SRC, DST, ChecksumMode::Verify);
                let r = Repr::parse(&p, SRC, DST, ChecksumMode::Trust).unwrap();
                prop_assert_eq!(r.buffer_len(), bytes.len());
            }
        }

        #[test]
        fn checksum_matches_etherparse(src in any::<u32>(), dst in any::<u32>(), seq in any::<u32>(),
                                       flags in 0u16..0x200, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (s, d) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let r = Repr { seq_number: seq, flags: Flags::from_bits_truncate(flags),
                           payload_len: payload.len(), ..repr() };
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]), &payload, Some((s, d))).unwrap();
            let t = etherparse::TcpSlice::from_slice(&buf).unwrap();
            prop_assert_eq!(t.checksum(), t.calc_checksum_ipv4(s.octets(), d.octets()).unwrap());
            prop_assert_eq!(t.sequence_number(), seq);
            prop_assert_eq!(t.ns(), flags & 0x100 != 0);
            prop_assert_eq!(t.cwr(), flags & 0x80 != 0);
        }
    }
}
