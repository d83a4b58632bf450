//! ICMPv4 messages (RFC 792, RFC 1191): echo, destination unreachable
//! (including "fragmentation needed" with the next-hop MTU) and time
//! exceeded, plus the datagram quoted by error messages.
//!
//! The message is the whole buffer (pass exactly the IPv4 payload); the
//! checksum covers all of it and has no pseudo-header.
//! [`Packet::new_checked`] needs the 8-byte header. [`Repr::parse`] further
//! requires error messages to quote at least an IPv4 header, so a datapath
//! can find the flow the error belongs to. Plain data, no state, no
//! allocation.

use core::fmt;

use super::checksum;
use super::ipv4;
use super::{check_len, check_room, write_u16, ChecksumMode, Error, Layer, Result};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQNO: usize = 6;
    pub const MTU: usize = 6;
}

/// Length of the ICMPv4 header (type, code, checksum, 4 bytes of
/// type-specific data).
pub const HEADER_LEN: usize = 8;

/// ICMPv4 message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// Echo reply (0).
    EchoReply,
    /// Destination unreachable (3).
    DstUnreachable,
    /// Redirect (5).
    Redirect,
    /// Echo request (8).
    EchoRequest,
    /// Time exceeded (11).
    TimeExceeded,
    /// Parameter problem (12).
    ParamProblem,
    /// Any other type.
    Unknown(u8),
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            0 => Message::EchoReply,
            3 => Message::DstUnreachable,
            5 => Message::Redirect,
            8 => Message::EchoRequest,
            11 => Message::TimeExceeded,
            12 => Message::ParamProblem,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> Self {
        match value {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::Redirect => 5,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::ParamProblem => 12,
            Message::Unknown(other) => other,
        }
    }
}

impl Message {
    /// True for messages that quote the offending datagram.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Message::DstUnreachable
                | Message::Redirect
                | Message::TimeExceeded
                | Message::ParamProblem
        )
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::EchoReply => f.write_str("echo reply"),
            Message::DstUnreachable => f.write_str("destination unreachable"),
            Message::Redirect => f.write_str("redirect"),
            Message::EchoRequest => f.write_str("echo request"),
            Message::TimeExceeded => f.write_str("time exceeded"),
            Message::ParamProblem => f.write_str("parameter problem"),
            Message::Unknown(n) => write!(f, "type {n}"),
        }
    }
}

/// Code of a destination-unreachable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DstUnreachable {
    /// Network unreachable (0).
    NetUnreachable,
    /// Host unreachable (1).
    HostUnreachable,
    /// Protocol unreachable (2).
    ProtoUnreachable,
    /// Port unreachable (3).
    PortUnreachable,
    /// Fragmentation needed and DF set (4); carries the next-hop MTU.
    FragRequired,
    /// Source route failed (5).
    SrcRouteFailed,
    /// Communication administratively prohibited (13).
    AdminProhibited,
    /// Any other code.
    Unknown(u8),
}

impl From<u8> for DstUnreachable {
    fn from(value: u8) -> Self {
        match value {
            0 => DstUnreachable::NetUnreachable,
            1 => DstUnreachable::HostUnreachable,
            2 => DstUnreachable::ProtoUnreachable,
            3 => DstUnreachable::PortUnreachable,
            4 => DstUnreachable::FragRequired,
            5 => DstUnreachable::SrcRouteFailed,
            13 => DstUnreachable::AdminProhibited,
            other => DstUnreachable::Unknown(other),
        }
    }
}

impl From<DstUnreachable> for u8 {
    fn from(value: DstUnreachable) -> Self {
        match value {
            DstUnreachable::NetUnreachable => 0,
            DstUnreachable::HostUnreachable => 1,
            DstUnreachable::ProtoUnreachable => 2,
            DstUnreachable::PortUnreachable => 3,
            DstUnreachable::FragRequired => 4,
            DstUnreachable::SrcRouteFailed => 5,
            DstUnreachable::AdminProhibited => 13,
            DstUnreachable::Unknown(other) => other,
        }
    }
}

/// Code of a time-exceeded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeExceeded {
    /// TTL expired in transit (0).
    TtlExpired,
    /// Fragment reassembly time exceeded (1).
    FragExpired,
    /// Any other code.
    Unknown(u8),
}

impl From<u8> for TimeExceeded {
    fn from(value: u8) -> Self {
        match value {
            0 => TimeExceeded::TtlExpired,
            1 => TimeExceeded::FragExpired,
            other => TimeExceeded::Unknown(other),
        }
    }
}

impl From<TimeExceeded> for u8 {
    fn from(value: TimeExceeded) -> Self {
        match value {
            TimeExceeded::TtlExpired => 0,
            TimeExceeded::FragExpired => 1,
            TimeExceeded::Unknown(other) => other,
        }
    }
}

super::view::header_view! {
    /// A view of an ICMPv4 message.
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than [`HEADER_LEN`].
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking that the header is present.
    pub struct Packet: check_len;
    /// Message type.
    msg_type, set_msg_type: Message @ field::TYPE;
    /// Message code (meaning depends on the type).
    msg_code, set_msg_code: u8 @ field::CODE;
    /// Checksum field.
    checksum, set_checksum: u16 @ field::CHECKSUM;
    /// Echo identifier (echo request/reply).
    echo_ident, set_echo_ident: u16 @ field::ECHO_IDENT;
    /// Echo sequence number (echo request/reply).
    echo_seq_no, set_echo_seq_no: u16 @ field::ECHO_SEQNO;
    /// Next-hop MTU (destination unreachable, fragmentation needed).
    next_hop_mtu: u16 @ field::MTU;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the header is present.
    pub fn check_len(&self) -> Result<()> {
        check_len(Layer::Icmpv4, self.buffer.as_ref(), HEADER_LEN)
    }

    /// True when the checksum over the whole message is correct.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// Everything after the 8-byte header: echo data, or the quoted
    /// datagram of an error message.
    #[inline(always)]
    pub fn data(&self) -> &'a [u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// For error messages, a view of the quoted datagram's IPv4 header
    /// (checked; the quoted datagram is usually cut short, so use
    /// [`ipv4::Packet::quoted_payload`] for its first payload bytes, e.g.
    /// the original ports).
    pub fn original_datagram(&self) -> Result<ipv4::Packet<&'a [u8]>> {
        if !self.msg_type().is_error() {
            return Err(Error::Unsupported {
                layer: Layer::Icmpv4,
                what: "message type for a quoted datagram (only error messages quote one)",
            });
        }
        ipv4::Packet::new_checked_quoted(self.data())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the 4 type-specific bytes to zero then the next-hop MTU.
    #[inline(always)]
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT, 0);
        write_u16(self.buffer.as_mut(), field::MTU, value);
    }

    /// Recomputes the checksum over the whole buffer.
    #[inline(always)]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::data(self.buffer.as_ref()));
        self.set_checksum(c);
    }

    /// The data after the header, writable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// The meaning of the ICMPv4 messages the datapath handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Repr<'a> {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo data.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo data.
        data: &'a [u8],
    },
    /// Destination unreachable.
    DstUnreachable {
        /// Why.
        reason: DstUnreachable,
        /// Next-hop MTU; meaningful for [`DstUnreachable::FragRequired`],
        /// 0 otherwise.
        next_hop_mtu: u16,
        /// The quoted datagram (IPv4 header and leading payload bytes).
        original: &'a [u8],
    },
    /// Time exceeded.
    TimeExceeded {
        /// Why.
        reason: TimeExceeded,
        /// The quoted datagram (IPv4 header and leading payload bytes).
        original: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Reads a message. Other types (redirect, parameter problem, unknown)
    /// are [`Error::Unsupported`]; error messages must quote at least an
    /// IPv4 header.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Packet<&'a T>,
        mode: ChecksumMode,
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if mode == ChecksumMode::Verify && !packet.verify_checksum() {
            return Err(Error::Checksum {
                layer: Layer::Icmpv4,
            });
        }
        match packet.msg_type() {
            Message::EchoRequest | Message::EchoReply if packet.msg_code() != 0 => {
                Err(Error::Malformed {
                    layer: Layer::Icmpv4,
                    field: "code",
                    reason: "echo messages must have code 0",
                })
            }
            Message::EchoRequest => Ok(Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data: packet.data(),
            }),
            Message::EchoReply => Ok(Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data: packet.data(),
            }),
            Message::DstUnreachable => {
                packet.original_datagram()?;
                let reason = DstUnreachable::from(packet.msg_code());
                Ok(Repr::DstUnreachable {
                    reason,
                    next_hop_mtu: if reason == DstUnreachable::FragRequired {
                        packet.next_hop_mtu()
                    } else {
                        0
                    },
                    original: packet.data(),
                })
            }
            Message::TimeExceeded => {
                packet.original_datagram()?;
                Ok(Repr::TimeExceeded {
                    reason: TimeExceeded::from(packet.msg_code()),
                    original: packet.data(),
                })
            }
            Message::Redirect | Message::ParamProblem | Message::Unknown(_) => {
                Err(Error::Unsupported {
                    layer: Layer::Icmpv4,
                    what: "message type",
                })
            }
        }
    }

    /// Bytes of header plus data.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => data.len(),
                Repr::DstUnreachable { original, .. } | Repr::TimeExceeded { original, .. } => {
                    original.len()
                }
            }
    }

    /// Writes the whole message (header, data, checksum) into the front of
    /// the buffer, which must be exactly [`Repr::buffer_len`] long (the
    /// checksum covers the whole buffer).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let len = self.buffer_len();
        check_room(Layer::Icmpv4, packet.buffer.as_ref(), len)?;
        if packet.buffer.as_ref().len() != len {
            return Err(Error::Malformed {
                layer: Layer::Icmpv4,
                field: "buffer",
                reason: "its length must equal the message length, which the checksum covers",
            });
        }
        let data = match *self {
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                let t = if matches!(self, Repr::EchoRequest { .. }) {
                    Message::EchoRequest
                } else {
                    Message::EchoReply
                };
                packet.set_msg_type(t);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                data
            }
            Repr::DstUnreachable {
                reason,
                next_hop_mtu,
                original,
            } => {
                packet.set_msg_type(Message::DstUnreachable);
                packet.set_msg_code(reason.into());
                packet.set_next_hop_mtu(next_hop_mtu);
                original
            }
            Repr::TimeExceeded { reason, original } => {
                packet.set_msg_type(Message::TimeExceeded);
                packet.set_msg_code(reason.into());
                packet.set_next_hop_mtu(0);
                original
            }
        };
        packet.data_mut().copy_from_slice(data);
        packet.fill_checksum();
        Ok(())
    }
}

super::view::field_value_as! {
    Message => u8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::IpProtocol;
    use crate::wire::test_support::assert_prefixes_truncated;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    // Echo request, ident 0x1234, seq 1, data "ping", checksum filled.
    static ECHO_BYTES: [u8; 12] = [
        0x08, 0x00, 0x06, 0xfa, 0x12, 0x34, 0x00, 0x01, b'p', b'i', b'n', b'g',
    ];

    /// An IPv4 header (20 bytes, total length 1500, UDP) plus the first 8
    /// bytes of its UDP header, as quoted by an ICMP error.
    fn quoted() -> [u8; 28] {
        let mut q = [0u8; 28];
        ipv4::Repr::new(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            IpProtocol::Udp,
            1480,
        )
        .emit(&mut ipv4::Packet::new_unchecked(&mut q[..]))
        .unwrap();
        q[20..28].copy_from_slice(&[0x30, 0x39, 0x00, 0x35, 0x05, 0xc8, 0x00, 0x00]);
        q
    }

    #[test]
    fn checksum_of_static_echo_is_right() {
        let mut b = ECHO_BYTES;
        Packet::new_unchecked(&mut b[..]).fill_checksum();
        assert_eq!(b, ECHO_BYTES, "the static bytes carry the right checksum");
    }

    #[test]
    fn deconstruct_echo() {
        let p = Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        assert_eq!(p.msg_type(), Message::EchoRequest);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.data(), b"ping");
        assert!(p.verify_checksum());
        assert!(p.original_datagram().is_err());
    }

    #[test]
    fn construct_echo() {
        let mut buf = [0u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(Message::EchoRequest);
        p.set_msg_code(0);
        p.set_echo_ident(0x1234);
        p.set_echo_seq_no(1);
        p.data_mut().copy_from_slice(b"ping");
        p.fill_checksum();
        assert_eq!(buf, ECHO_BYTES);
    }

    #[test]
    fn parse_and_emit_echo() {
        let p = Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        let r = Repr::parse(&p, ChecksumMode::Verify).unwrap();
        assert_eq!(
            r,
            Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"ping"
            }
        );
        let mut buf = [0u8; 12];
        r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, ECHO_BYTES);
        // The reply to it differs in type and checksum only.
        let reply = Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"ping",
        };
        reply
            .emit(&mut Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(buf[0], 0);
        assert!(Packet::new_unchecked(&buf[..]).verify_checksum());
        let mut wrong_len = [0u8; 13];
        assert!(reply
            .emit(&mut Packet::new_unchecked(&mut wrong_len[..]))
            .is_err());
    }

    #[test]
    fn frag_needed_round_trip_and_quoted_datagram() {
        let q = quoted();
        let r = Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            next_hop_mtu: 1450,
            original: &q,
        };
        let mut buf = [0u8; 36];
        r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(&buf[..8], &[3, 4, buf[2], buf[3], 0, 0, 0x05, 0xaa]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.next_hop_mtu(), 1450);
        assert_eq!(Repr::parse(&p, ChecksumMode::Verify).unwrap(), r);
        let orig = p.original_datagram().unwrap();
        assert_eq!(orig.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(orig.next_header(), IpProtocol::Udp);
        assert_eq!(orig.total_len(), 1500, "quoted header keeps its length");
        assert_eq!(&orig.quoted_payload()[..4], &[0x30, 0x39, 0x00, 0x35]);
    }

    #[test]
    fn time_exceeded_round_trip() {
        let q = quoted();
        let r = Repr::TimeExceeded {
            reason: TimeExceeded::TtlExpired,
            original: &q,
        };
        let mut buf = [0u8; 36];
        r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.msg_type(), Message::TimeExceeded);
        assert_eq!(Repr::parse(&p, ChecksumMode::Verify).unwrap(), r);
    }

    #[test]
    fn error_without_quoted_header_rejected() {
        let q = quoted();
        let r = Repr::TimeExceeded {
            reason: TimeExceeded::TtlExpired,
            original: &q[..19],
        };
        let mut buf = [0u8; 27];
        r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert!(matches!(
            Repr::parse(&p, ChecksumMode::Verify),
            Err(Error::Truncated {
                layer: Layer::Ipv4,
                ..
            })
        ));
    }

    #[test]
    fn bad_checksum_code_and_type_rejected() {
        let mut b = ECHO_BYTES;
        b[11] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, ChecksumMode::Verify),
            Err(Error::Checksum {
                layer: Layer::Icmpv4
            })
        );
        let mut b = ECHO_BYTES;
        b[1] = 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(matches!(
            Repr::parse(&p, ChecksumMode::Trust),
            Err(Error::Malformed { .. })
        ));
        let mut b = ECHO_BYTES;
        b[0] = 42;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(matches!(
            Repr::parse(&p, ChecksumMode::Trust),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&ECHO_BYTES, HEADER_LEN, Packet::new_checked);
    }

    #[test]
    fn codes_round_trip() {
        for n in 0..=u8::MAX {
            assert_eq!(u8::from(Message::from(n)), n);
            assert_eq!(u8::from(DstUnreachable::from(n)), n);
            assert_eq!(u8::from(TimeExceeded::from(n)), n);
        }
    }

    #[test]
    fn etherparse_oracle_both_ways() {
        let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(0x1234, 1);
        let mut pkt = Vec::new();
        builder.write(&mut pkt, b"ping").unwrap();
        assert_eq!(&pkt[20..], &ECHO_BYTES[..], "byte-identical to etherparse");

        let q = quoted();
        let mut buf = [0u8; 36];
        Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            next_hop_mtu: 1400,
            original: &q,
        }
        .emit(&mut Packet::new_unchecked(&mut buf[..]))
        .unwrap();
        let s = etherparse::Icmpv4Slice::from_slice(&buf).unwrap();
        match s.icmp_type() {
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
            ) => assert_eq!(next_hop_mtu, 1400),
            other => panic!("etherparse saw {other:?}"),
        }
        assert_eq!(s.checksum(), s.icmp_type().calc_checksum(s.payload()));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = p.original_datagram().map(|o| (o.quoted_payload().len(), o.options().len()));
                let _ = Repr::parse(&p, ChecksumMode::Verify);
                if let Ok(r) = Repr::parse(&p, ChecksumMode::Trust) {
                    prop_assert_eq!(r.buffer_len(), bytes.len());
                }
            }
        }
    }
}
