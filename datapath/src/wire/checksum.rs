//! Internet checksum (RFC 1071) helpers and RFC 1624 incremental updates.
//!
//! Sums are carried in `u32`/`u64` accumulators and folded to 16 bits with
//! end-around carry. Two representations matter:
//!
//! - a *folded sum* (`u16`, not complemented) is what [`data`],
//!   [`pseudo_header_v4`] and [`combine`] return, so partial sums can be
//!   added together;
//! - a *checksum* (`u16`, complemented) is what goes on the wire;
//!   [`finish`] turns a folded sum into one.
//!
//! Incremental updates ([`update16`], [`update32`], [`update_ipv4_address`])
//! implement RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`, which gives the
//! same bits as a full recomputation whenever the covered data is not all
//! zero (always true for real headers). A UDP checksum of 0 means "no
//! checksum": [`update_udp16`] and [`update_ipv4_address`] leave it 0, and a
//! computed UDP checksum of 0 is sent as `0xffff` (RFC 768).
//!
//! Pure functions, no state, no allocation.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Folds a 64-bit accumulator into a 16-bit ones-complement sum.
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Ones-complement sum of `data` as big-endian 16-bit words, folded. An odd
/// trailing byte is padded with a zero byte, as RFC 1071 says.
#[inline]
pub fn data(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Four 16-bit words per iteration; u64 cannot overflow for any
        // buffer smaller than 2^48 bytes.
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    fold(acc)
}

/// Ones-complement sum of several folded sums.
#[inline(always)]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Turns a folded sum into the value carried in a checksum field.
#[inline(always)]
pub fn finish(sum: u16) -> u16 {
    !sum
}

/// Folded sum of the IPv4 pseudo-header used by TCP and UDP checksums
/// (RFC 793/768): source, destination, zero, protocol, L4 length.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    fold(
        u64::from(u16::from_be_bytes([s[0], s[1]]))
            + u64::from(u16::from_be_bytes([s[2], s[3]]))
            + u64::from(u16::from_be_bytes([d[0], d[1]]))
            + u64::from(u16::from_be_bytes([d[2], d[3]]))
            + u64::from(protocol)
            + u64::from(length),
    )
}

/// Folded sum of a TCP or UDP segment over IPv4 with its pseudo-header:
/// what [`finish`] turns into the segment's checksum, and `0xffff` when the
/// checksum the segment carries is correct. `length` is the L4 length the
/// pseudo-header carries (the length of `segment`). Always inlined, like
/// the sums it combines were where they were written out.
#[inline(always)]
pub fn ipv4_segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    length: u16,
    segment: &[u8],
) -> u16 {
    combine(&[pseudo_header_v4(src, dst, protocol, length), data(segment)])
}

/// Folded sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
#[inline]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    combine(&[
        data(&src.octets()),
        data(&dst.octets()),
        fold(u64::from(length)),
        u16::from(next_header),
    ])
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word covered by
/// `checksum` changed from `old` to `new`.
#[inline(always)]
pub fn update16(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!checksum) + u64::from(!old) + u64::from(new))
}

/// [`update16`] for a 32-bit field (two adjacent words, e.g. an IPv4
/// address or a TCP sequence number), aligned on a 16-bit boundary.
#[inline]
pub fn update32(checksum: u16, old: u32, new: u32) -> u16 {
    !fold(
        u64::from(!checksum)
            + u64::from(!(old >> 16) as u16)
            + u64::from(!(old as u16))
            + u64::from((new >> 16) as u16)
            + u64::from(new as u16),
    )
}

/// [`update16`] for a UDP checksum: 0 ("no checksum") stays 0, and a
/// result of 0 is sent as `0xffff`.
#[inline]
pub fn update_udp16(checksum: u16, old: u16, new: u16) -> u16 {
    if checksum == 0 {
        return 0;
    }
    udp_nonzero(update16(checksum, old, new))
}

/// The transport checksum that covers an IPv4 address through the
/// pseudo-header, for [`update_ipv4_address`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// A TCP checksum field's current value.
    Tcp(u16),
    /// A UDP checksum field's current value (0 = none).
    Udp(u16),
    /// No pseudo-header checksum (ICMP, non-first fragments, others).
    None,
}

impl L4Checksum {
    /// The field's value, or `None` when there is no such checksum.
    #[inline]
    pub fn value(self) -> Option<u16> {
        match self {
            L4Checksum::Tcp(c) | L4Checksum::Udp(c) => Some(c),
            L4Checksum::None => None,
        }
    }

    /// The checksum after one 16-bit word it covers (a port, an echo id)
    /// changed from `old` to `new`: [`update16`] for TCP, [`update_udp16`]
    /// for UDP (0 stays 0, a result of 0 is sent as `0xffff`).
    #[inline]
    pub fn update16(self, old: u16, new: u16) -> L4Checksum {
        match self {
            L4Checksum::Tcp(c) => L4Checksum::Tcp(update16(c, old, new)),
            L4Checksum::Udp(c) => L4Checksum::Udp(update_udp16(c, old, new)),
            L4Checksum::None => L4Checksum::None,
        }
    }

    /// [`L4Checksum::update16`] for a 32-bit field (an IPv4 address in the
    /// pseudo-header).
    #[inline]
    pub fn update32(self, old: u32, new: u32) -> L4Checksum {
        match self {
            L4Checksum::Tcp(c) => L4Checksum::Tcp(update32(c, old, new)),
            L4Checksum::Udp(0) => L4Checksum::Udp(0),
            L4Checksum::Udp(c) => L4Checksum::Udp(udp_nonzero(update32(c, old, new))),
            L4Checksum::None => L4Checksum::None,
        }
    }
}

/// Updates both the IPv4 header checksum and the transport checksum after
/// a NAT rewrite of one IPv4 address from `old` to `new`. Returns the new
/// IP checksum and the new transport checksum (same variant as given).
#[inline]
pub fn update_ipv4_address(
    ip_checksum: u16,
    l4: L4Checksum,
    old: Ipv4Addr,
    new: Ipv4Addr,
) -> (u16, L4Checksum) {
    let (o, n) = (u32::from(old), u32::from(new));
    (update32(ip_checksum, o, n), l4.update32(o, n))
}

/// Maps a computed UDP checksum of 0 to `0xffff` (RFC 768).
#[inline]
pub fn udp_nonzero(checksum: u16) -> u16 {
    if checksum == 0 {
        0xffff
    } else {
        checksum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC 1071 section 3 worked example.
    #[test]
    fn rfc1071_example() {
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        assert_eq!(finish(data(&bytes)), 0x220d);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(data(&[0x12]), 0x1200);
        assert_eq!(data(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(data(&[]), 0);
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // Header from the Wikipedia IPv4 checksum example.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(data(&hdr)), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(data(&hdr), 0xffff, "a correct header sums to all ones");
    }

    #[test]
    fn pseudo_header_matches_bytes() {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(192, 168, 7, 9);
        let mut ph = [0u8; 12];
        ph[0..4].copy_from_slice(&src.octets());
        ph[4..8].copy_from_slice(&dst.octets());
        ph[9] = 17;
        ph[10..12].copy_from_slice(&1234u16.to_be_bytes());
        assert_eq!(pseudo_header_v4(src, dst, 17, 1234), data(&ph));

        let s6: Ipv6Addr = "fe80::1".parse().unwrap();
        let d6: Ipv6Addr = "2001:db8::ffff:1".parse().unwrap();
        let mut ph6 = [0u8; 40];
        ph6[0..16].copy_from_slice(&s6.octets());
        ph6[16..32].copy_from_slice(&d6.octets());
        ph6[32..36].copy_from_slice(&70000u32.to_be_bytes());
        ph6[39] = 6;
        assert_eq!(pseudo_header_v6(s6, d6, 6, 70000), data(&ph6));
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(update_udp16(0, 0x1234, 0x4321), 0);
        let (_, l4) = update_ipv4_address(
            0x1111,
            L4Checksum::Udp(0),
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
        );
        assert_eq!(l4, L4Checksum::Udp(0));
        assert_eq!(udp_nonzero(0), 0xffff);
        assert_eq!(udp_nonzero(7), 7);
    }

    /// Builds a 20-byte header-like buffer whose first word is never zero,
    /// so sums are never the all-zero special case.
    fn header_with(words: &[u16; 9]) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0] = 0x45;
        for (i, w) in words.iter().enumerate() {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&w.to_be_bytes());
        }
        b
    }

    proptest! {
        #[test]
        fn update16_equals_recomputation(words in any::<[u16; 9]>(), idx in 0usize..9, new in any::<u16>()) {
            let before = header_with(&words);
            let csum = finish(data(&before));
            let mut after_words = words;
            after_words[idx] = new;
            let after = header_with(&after_words);
            prop_assert_eq!(update16(csum, words[idx], new), finish(data(&after)));
        }

        #[test]
        fn update32_equals_recomputation(words in any::<[u16; 9]>(), idx in 0usize..8, new in any::<u32>()) {
            let before = header_with(&words);
            let csum = finish(data(&before));
            let old = (u32::from(words[idx]) << 16) | u32::from(words[idx + 1]);
            let mut after_words = words;
            after_words[idx] = (new >> 16) as u16;
            after_words[idx + 1] = new as u16;
            let after = header_with(&after_words);
            prop_assert_eq!(update32(csum, old, new), finish(data(&after)));
        }

        #[test]
        fn address_rewrite_equals_recomputation(
            src in any::<u32>(), dst in any::<u32>(), new_src in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 1..64),
            udp in any::<bool>(),
        ) {
            // IPv4 header with the addresses, plus an L4 checksum over the
            // pseudo-header and a payload that starts with a nonzero byte.
            let mut payload = payload;
            payload[0] |= 1;
            let ip = |s: u32| {
                let mut h = [0x45u8, 0, 0, 40, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                h[12..16].copy_from_slice(&s.to_be_bytes());
                h[16..20].copy_from_slice(&dst.to_be_bytes());
                finish(data(&h))
            };
            let proto = if udp { 17 } else { 6 };
            let l4 = |s: u32| {
                let sum = combine(&[
                    pseudo_header_v4(s.into(), dst.into(), proto, payload.len() as u16),
                    data(&payload),
                ]);
                if udp { udp_nonzero(finish(sum)) } else { finish(sum) }
            };
            let given = if udp { L4Checksum::Udp(l4(src)) } else { L4Checksum::Tcp(l4(src)) };
            let (new_ip, new_l4) = update_ipv4_address(ip(src), given, src.into(), new_src.into());
            prop_assert_eq!(new_ip, ip(new_src));
            let want = if udp { L4Checksum::Udp(l4(new_src)) } else { L4Checksum::Tcp(l4(new_src)) };
            prop_assert_eq!(new_l4, want);
        }

        #[test]
        fn split_sums_combine(bytes in proptest::collection::vec(any::<u8>(), 0..200), cut in 0usize..100) {
            let cut = (cut * 2).min(bytes.len() & !1);
            prop_assert_eq!(combine(&[data(&bytes[..cut]), data(&bytes[cut..])]), data(&bytes));
        }

        /// `update32` is exactly two sequential `update16`s (what the
        /// fast path did before it used these helpers), for any input.
        #[test]
        fn update32_is_two_update16s(ck in any::<u16>(), old in any::<u32>(), new in any::<u32>()) {
            let two = update16(update16(ck, (old >> 16) as u16, (new >> 16) as u16), old as u16, new as u16);
            prop_assert_eq!(update32(ck, old, new), two);
        }

        #[test]
        fn l4_updates_equal_recomputation(
            words in any::<[u16; 9]>(), idx in 0usize..8, new in any::<u32>(), udp in any::<bool>(),
        ) {
            // A transport checksum over a header-like buffer (first word
            // never zero), updated for a 16-bit and a 32-bit change.
            let full = |w: &[u16; 9]| {
                let c = finish(data(&header_with(w)));
                if udp { udp_nonzero(c) } else { c }
            };
            let wrap = |c: u16| if udp { L4Checksum::Udp(c) } else { L4Checksum::Tcp(c) };
            let mut w16 = words;
            w16[idx] = new as u16;
            prop_assert_eq!(wrap(full(&words)).update16(words[idx], new as u16), wrap(full(&w16)));
            let old32 = (u32::from(words[idx]) << 16) | u32::from(words[idx + 1]);
            let mut w32 = words;
            w32[idx] = (new >> 16) as u16;
            w32[idx + 1] = new as u16;
            prop_assert_eq!(wrap(full(&words)).update32(old32, new), wrap(full(&w32)));
            // No checksum stays none.
            prop_assert_eq!(L4Checksum::Udp(0).update16(1, 2), L4Checksum::Udp(0));
            prop_assert_eq!(L4Checksum::Udp(0).update32(1, 2), L4Checksum::Udp(0));
            prop_assert_eq!(L4Checksum::None.update32(1, 2).value(), None);
        }
    }
}
