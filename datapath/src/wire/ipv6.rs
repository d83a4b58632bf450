//! IPv6 headers (RFC 8200): the fixed 40-byte header, and a bounded walk
//! over the common extension headers to find the upper-layer protocol.
//!
//! [`Packet::new_checked`] checks version 6 and that the payload length
//! fits in the buffer (the buffer may be longer: Ethernet padding).
//! [`Packet::upper_layer`] follows Hop-by-Hop (first only), Routing,
//! Destination Options, Fragment and AH headers, at most
//! [`MAX_EXTENSION_HEADERS`] of them, every length checked against the
//! payload; it stops at ESP, "no next header", a non-first fragment, or any
//! other protocol. Jumbograms (payload length 0 with a Jumbo option) are
//! not supported and read as an empty payload. Plain data, no state, no
//! allocation.

use std::net::Ipv6Addr;

use super::ip::IpProtocol;
use super::{check_len, check_room, read_u16, read_u32, write_u32, Error, Layer, Result};

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: usize = 0;
    pub const LENGTH: usize = 4;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// Most extension headers [`Packet::upper_layer`] walks before giving up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// A fragment header seen while walking extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    /// Fragment offset in bytes.
    pub offset: u16,
    /// More-fragments flag.
    pub more_frags: bool,
    /// Identification.
    pub ident: u32,
}

/// Where the upper-layer header starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperLayer {
    /// The protocol after the last extension header walked.
    pub protocol: IpProtocol,
    /// Byte offset of that protocol's header from the start of the IPv6
    /// header.
    pub offset: usize,
    /// The fragment header, if one was seen. When its `offset` is not 0 the
    /// bytes at `offset` are the middle of the upper-layer data, not its
    /// header.
    pub fragment: Option<Fragment>,
}

impl UpperLayer {
    /// True when the upper-layer header is present at `offset` (not a
    /// non-first fragment).
    pub fn has_header(&self) -> bool {
        self.fragment.is_none_or(|f| f.offset == 0)
    }
}

super::view::header_view! {
    /// A view of an IPv6 packet.
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than [`HEADER_LEN`].
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking version and payload length.
    pub struct Packet: check;
    /// Payload length (extension headers included).
    payload_len, set_payload_len: u16 @ field::LENGTH;
    /// The Next Header field of the fixed header.
    next_header, set_next_header: IpProtocol @ field::NXT_HDR;
    /// Hop limit.
    hop_limit, set_hop_limit: u8 @ field::HOP_LIMIT;
    /// Source address.
    src_addr, set_src_addr: Ipv6Addr @ field::SRC_ADDR.start;
    /// Destination address.
    dst_addr, set_dst_addr: Ipv6Addr @ field::DST_ADDR.start;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks version and payload length against the buffer.
    pub fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(Layer::Ipv6, b, HEADER_LEN)?;
        if self.version() != 6 {
            return Err(Error::Version {
                layer: Layer::Ipv6,
                version: self.version(),
            });
        }
        check_len(Layer::Ipv6, b, HEADER_LEN + usize::from(self.payload_len()))
    }

    /// Version field.
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    /// Traffic class (DSCP and ECN).
    #[inline(always)]
    pub fn traffic_class(&self) -> u8 {
        (read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) >> 20) as u8
    }

    /// Flow label (20 bits).
    #[inline(always)]
    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000f_ffff
    }

    /// Walks extension headers to the upper-layer protocol. Safe on any
    /// buffer that passed [`Packet::check`]; errors name what is wrong.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        self.check()?;
        let b = self.buffer.as_ref();
        let end = HEADER_LEN + usize::from(self.payload_len());
        let mut proto = self.next_header();
        let mut at = HEADER_LEN;
        let mut fragment = None;
        for walked in 0..=MAX_EXTENSION_HEADERS {
            let len = match proto {
                IpProtocol::HopByHop if walked != 0 => {
                    return Err(Error::Malformed {
                        layer: Layer::Ipv6,
                        field: "next header",
                        reason: "a Hop-by-Hop Options header may only follow the fixed header",
                    });
                }
                IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                    check_ext(b, at, end, 2)?;
                    (usize::from(b[at + 1]) + 1) * 8
                }
                IpProtocol::Ipv6Frag => 8,
                IpProtocol::Ah => {
                    check_ext(b, at, end, 2)?;
                    (usize::from(b[at + 1]) + 2) * 4
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol: proto,
                        offset: at,
                        fragment,
                    })
                }
            };
            if walked == MAX_EXTENSION_HEADERS {
                break;
            }
            check_ext(b, at, end, len)?;
            if proto == IpProtocol::Ipv6Frag {
                let off_flags = read_u16(b, at + 2);
                let frag = Fragment {
                    offset: off_flags & 0xfff8,
                    more_frags: off_flags & 1 != 0,
                    ident: read_u32(b, at + 4),
                };
                fragment = Some(frag);
                if frag.offset != 0 {
                    return Ok(UpperLayer {
                        protocol: IpProtocol::from(b[at]),
                        offset: at + len,
                        fragment,
                    });
                }
            }
            proto = IpProtocol::from(b[at]);
            at += len;
        }
        Err(Error::Unsupported {
            layer: Layer::Ipv6,
            what: "chain of more than 8 extension headers",
        })
    }
}

/// Checks that an extension header of `len` bytes at `at` ends by `end`.
fn check_ext(b: &[u8], at: usize, end: usize, len: usize) -> Result<()> {
    debug_assert!(end <= b.len());
    if at + len > end {
        return Err(Error::Truncated {
            layer: Layer::Ipv6,
            needed: at + len,
            available: end,
        });
    }
    Ok(())
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload (extension headers included), up to the payload length.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, traffic class and flow label together.
    #[inline(always)]
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let v = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        write_u32(self.buffer.as_mut(), field::VER_TC_FLOW, v);
    }

    /// The payload up to the payload length, writable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The meaning of the fixed IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next Header of the fixed header.
    pub next_header: IpProtocol,
    /// Payload length (extension headers included).
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Reads the fixed header.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Repr> {
        packet.check()?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// Bytes of the fixed header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let len = u16::try_from(self.payload_len).map_err(|_| Error::ValueTooLarge {
            layer: Layer::Ipv6,
            field: "payload length",
            value: u32::try_from(self.payload_len).unwrap_or(u32::MAX),
            max: u16::MAX.into(),
        })?;
        if self.flow_label > 0x000f_ffff {
            return Err(Error::ValueTooLarge {
                layer: Layer::Ipv6,
                field: "flow label",
                value: self.flow_label,
                max: 0x000f_ffff,
            });
        }
        check_room(Layer::Ipv6, packet.buffer.as_ref(), HEADER_LEN)?;
        packet.set_version_tc_flow(self.traffic_class, self.flow_label);
        packet.set_payload_len(len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::assert_prefixes_truncated;
    use proptest::prelude::*;

    fn repr(next: IpProtocol, payload_len: usize) -> Repr {
        Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: next,
            payload_len,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
        }
    }

    static HEADER_BYTES: [u8; 44] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x04, 0x11,
        0x40, // ver, tc 0xb8, flow 0x12345, len 4, UDP, hl 64
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // src
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // dst
        1, 2, 3, 4,
    ];

    /// Fixed header + the given extension/payload bytes.
    fn build(next: IpProtocol, rest: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN + rest.len()];
        repr(next, rest.len())
            .emit(&mut Packet::new_unchecked(&mut v[..]))
            .unwrap();
        v[HEADER_LEN..].copy_from_slice(rest);
        v
    }

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), IpProtocol::Udp);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn construct_parse_emit() {
        assert_eq!(build(IpProtocol::Udp, &[1, 2, 3, 4]), HEADER_BYTES);
        let p = Packet::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), repr(IpProtocol::Udp, 4));
        let mut small = [0u8; 39];
        assert!(repr(IpProtocol::Udp, 0)
            .emit(&mut Packet::new_unchecked(&mut small[..]))
            .is_err());
        let mut buf = [0u8; 40];
        let big = Repr {
            flow_label: 0x100000,
            ..repr(IpProtocol::Udp, 0)
        };
        assert!(big.emit(&mut Packet::new_unchecked(&mut buf[..])).is_err());
    }

    #[test]
    fn every_truncation_and_bad_version_rejected() {
        assert_prefixes_truncated(&HEADER_BYTES, HEADER_BYTES.len(), Packet::new_checked);
        let mut b = HEADER_BYTES;
        b[0] = 0x4b;
        assert_eq!(
            Packet::new_checked(&b[..]),
            Err(Error::Version {
                layer: Layer::Ipv6,
                version: 4
            })
        );
    }

    #[test]
    fn upper_layer_without_extensions() {
        let p = Packet::new_checked(&HEADER_BYTES[..]).unwrap();
        let u = p.upper_layer().unwrap();
        assert_eq!(u.protocol, IpProtocol::Udp);
        assert_eq!(u.offset, 40);
        assert!(u.has_header());
    }

    #[test]
    fn upper_layer_through_extension_chain() {
        // HBH (8) → Routing (16) → Fragment (first, M=1) → DestOpts (8) → AH (12) → TCP
        let mut rest = Vec::new();
        rest.extend_from_slice(&[43, 0, 1, 4, 0, 0, 0, 0]); // HBH: next Routing
        rest.extend_from_slice(&[44, 1, 0, 0, 0, 0, 0, 0]); // Routing, len 16
        rest.extend_from_slice(&[0; 8]);
        rest.extend_from_slice(&[60, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]); // Frag: off 0, M
        rest.extend_from_slice(&[51, 0, 1, 4, 0, 0, 0, 0]); // DestOpts: next AH
        rest.extend_from_slice(&[6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]); // AH, len (1+2)*4 = 12
        rest.extend_from_slice(&[0; 20]); // TCP header
        let pkt = build(IpProtocol::HopByHop, &rest);
        let u = Packet::new_checked(&pkt[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!(u.protocol, IpProtocol::Tcp);
        assert_eq!(u.offset, 40 + 8 + 16 + 8 + 8 + 12);
        assert_eq!(
            u.fragment,
            Some(Fragment {
                offset: 0,
                more_frags: true,
                ident: 0xdead_beef
            })
        );
        assert!(u.has_header());

        // etherparse agrees on protocol and where the payload starts.
        let s = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
        match s.net {
            Some(etherparse::NetSlice::Ipv6(v6)) => {
                assert_eq!(v6.payload().ip_number, etherparse::IpNumber::TCP);
                assert_eq!(v6.payload().payload.len(), pkt.len() - u.offset);
            }
            other => panic!("etherparse saw {other:?}"),
        }

        // Every truncation of the chain is an error, never a panic.
        for cut in 0..rest.len() {
            let mut short = pkt[..40 + cut].to_vec();
            Packet::new_unchecked(&mut short[..]).set_payload_len(cut as u16);
            if let Ok(p) = Packet::new_checked(&short[..]) {
                if let Ok(u) = p.upper_layer() {
                    assert!(u.offset <= short.len(), "offset past the end at cut {cut}");
                    // The chain is 52 bytes; shorter cuts cannot get past it.
                    assert_eq!(u.protocol == IpProtocol::Tcp, cut >= 52, "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn non_first_fragment_has_no_upper_header() {
        let rest = [17, 0, 0x05, 0xa8, 0, 0, 0, 7, 9, 9, 9, 9];
        let pkt = build(IpProtocol::Ipv6Frag, &rest);
        let u = Packet::new_checked(&pkt[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!(u.protocol, IpProtocol::Udp);
        assert_eq!(u.offset, 48);
        assert_eq!(u.fragment.map(|f| f.offset), Some(1448));
        assert!(!u.has_header());
    }

    #[test]
    fn stops_at_esp_and_no_next_header() {
        let pkt = build(IpProtocol::Esp, &[0; 16]);
        let u = Packet::new_checked(&pkt[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!((u.protocol, u.offset), (IpProtocol::Esp, 40));
        let pkt = build(IpProtocol::Ipv6Opts, &[59, 0, 1, 4, 0, 0, 0, 0]);
        let u = Packet::new_checked(&pkt[..])
            .unwrap()
            .upper_layer()
            .unwrap();
        assert_eq!((u.protocol, u.offset), (IpProtocol::Ipv6NoNxt, 48));
    }

    #[test]
    fn malformed_chains_rejected() {
        // HBH after another extension header.
        let pkt = build(
            IpProtocol::Ipv6Opts,
            &[0, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0],
        );
        assert!(matches!(
            Packet::new_checked(&pkt[..]).unwrap().upper_layer(),
            Err(Error::Malformed { .. })
        ));
        // Extension header claiming more bytes than the payload has.
        let pkt = build(IpProtocol::Ipv6Route, &[17, 3, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            Packet::new_checked(&pkt[..]).unwrap().upper_layer(),
            Err(Error::Truncated { .. })
        ));
        // Nine Destination Options headers in a row.
        let mut rest = Vec::new();
        for _ in 0..9 {
            rest.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        }
        rest.extend_from_slice(&[0; 8]);
        let pkt = build(IpProtocol::Ipv6Opts, &rest);
        assert!(matches!(
            Packet::new_checked(&pkt[..]).unwrap().upper_layer(),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn etherparse_builds_we_parse() {
        let src: Ipv6Addr = "fe80::1".parse().unwrap();
        let dst: Ipv6Addr = "ff02::1".parse().unwrap();
        let builder = etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 7).udp(546, 547);
        let mut pkt = Vec::new();
        builder.write(&mut pkt, b"dhcp").unwrap();
        let p = Packet::new_checked(&pkt[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!((r.src_addr, r.dst_addr, r.hop_limit), (src, dst, 7));
        assert_eq!(r.payload_len, 12);
        let u = p.upper_layer().unwrap();
        assert_eq!((u.protocol, u.offset), (IpProtocol::Udp, 40));
    }

    #[test]
    fn etherparse_parses_what_we_emit() {
        let h = etherparse::Ipv6Header::from_slice(&HEADER_BYTES).unwrap().0;
        assert_eq!(h.traffic_class, 0xb8);
        assert_eq!(h.flow_label.value(), 0x12345);
        assert_eq!(h.payload_length, 4);
        assert_eq!(h.next_header, etherparse::IpNumber::UDP);
        assert_eq!(h.hop_limit, 64);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..160), next in any::<u8>()) {
            let mut bytes = bytes;
            if bytes.len() >= HEADER_LEN {
                // Make most inputs pass the fixed-header check so the walk runs.
                let plen = (bytes.len() - HEADER_LEN) as u16;
                let mut p = Packet::new_unchecked(&mut bytes[..]);
                p.set_version_tc_flow(0, 0);
                p.set_payload_len(plen);
                p.set_next_header(next.into());
            }
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = p.payload();
                let _ = Repr::parse(&p).unwrap();
                if let Ok(u) = p.upper_layer() {
                    prop_assert!(u.offset <= bytes.len());
                }
            }
        }
    }
}
