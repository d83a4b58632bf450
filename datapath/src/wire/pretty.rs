//! One-line, tcpdump-like rendering of a whole Ethernet frame, for traces,
//! `ofproto/trace`-style control commands and test failure messages.
//!
//! [`PrettyFrame`] walks Ethernet → VLAN tags → ARP / IPv4 / IPv6 →
//! ICMPv4 / UDP / TCP / SCTP → Geneve → inner Ethernet (once), using the
//! checked constructors only, so any byte string renders without panicking:
//! the first layer that fails to parse is printed as `[<error>]` and
//! rendering stops. Not for the hot path (it formats text); it allocates
//! only what the `Formatter` sink does.

use core::fmt;

use super::ethernet::{EtherType, Frame};
use super::ip::IpProtocol;
use super::{arp, geneve, icmpv4, ipv4, ipv6, sctp, tcp, udp, vlan};

/// Most VLAN tags rendered before giving up (QinQ uses two).
const MAX_VLAN_TAGS: usize = 4;

/// Displays the frame in `self.0` on one line.
#[derive(Debug, Clone, Copy)]
pub struct PrettyFrame<'a>(pub &'a [u8]);

impl fmt::Display for PrettyFrame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ethernet(f, self.0, true)
    }
}

fn ethernet(f: &mut fmt::Formatter<'_>, bytes: &[u8], allow_tunnel: bool) -> fmt::Result {
    let frame = match Frame::new_checked(bytes) {
        Ok(frame) => frame,
        Err(e) => return write!(f, "[{e}]"),
    };
    write!(f, "{} > {}", frame.src_addr(), frame.dst_addr())?;
    let mut ethertype = frame.ethertype();
    let mut rest = frame.payload();
    let mut tags = 0;
    while matches!(ethertype, EtherType::Vlan | EtherType::QinQ) {
        if tags == MAX_VLAN_TAGS {
            return f.write_str(" [too many VLAN tags]");
        }
        let tag = match vlan::Packet::new_checked(rest) {
            Ok(tag) => tag,
            Err(e) => return write!(f, " [{e}]"),
        };
        write!(f, " vlan {} p{}", tag.vid(), tag.pcp())?;
        ethertype = tag.ethertype();
        rest = tag.payload();
        tags += 1;
    }
    match ethertype {
        EtherType::Arp => arp_line(f, rest),
        EtherType::Ipv4 => ipv4_line(f, rest, allow_tunnel),
        EtherType::Ipv6 => ipv6_line(f, rest),
        other => write!(f, " ethertype {other} len {}", rest.len()),
    }
}

fn arp_line(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    match arp::Packet::new_checked(bytes) {
        Ok(p) => match p.operation() {
            arp::Operation::Request => write!(
                f,
                " arp who-has {} tell {}",
                p.target_protocol_addr(),
                p.source_protocol_addr()
            ),
            arp::Operation::Reply => write!(
                f,
                " arp reply {} is-at {}",
                p.source_protocol_addr(),
                p.source_hardware_addr()
            ),
            other => write!(f, " arp {other}"),
        },
        Err(e) => write!(f, " [{e}]"),
    }
}

fn ipv4_line(f: &mut fmt::Formatter<'_>, bytes: &[u8], allow_tunnel: bool) -> fmt::Result {
    let ip = match ipv4::Packet::new_checked(bytes) {
        Ok(ip) => ip,
        Err(e) => return write!(f, " [{e}]"),
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    write!(f, " ipv4 {src} > {dst} ttl {}", ip.hop_limit())?;
    if ip.frag_offset() != 0 {
        return write!(f, " frag offset {}", ip.frag_offset());
    }
    let payload = ip.payload();
    match ip.next_header() {
        IpProtocol::Icmp => icmp_line(f, payload),
        IpProtocol::Udp => match udp::Packet::new_checked(payload) {
            Ok(u) => {
                write!(f, " udp {} > {}", u.src_port(), u.dst_port())?;
                if allow_tunnel && u.dst_port() == geneve::UDP_PORT {
                    geneve_line(f, u.payload())
                } else {
                    write!(f, " len {}", u.payload().len())
                }
            }
            Err(e) => write!(f, " [{e}]"),
        },
        IpProtocol::Tcp => tcp_line(f, payload),
        IpProtocol::Sctp => match sctp::Packet::new_checked(payload) {
            Ok(s) => write!(f, " sctp {} > {}", s.src_port(), s.dst_port()),
            Err(e) => write!(f, " [{e}]"),
        },
        other => write!(f, " proto {other} len {}", payload.len()),
    }
}

fn ipv6_line(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let ip = match ipv6::Packet::new_checked(bytes) {
        Ok(ip) => ip,
        Err(e) => return write!(f, " [{e}]"),
    };
    write!(
        f,
        " ipv6 {} > {} hlim {}",
        ip.src_addr(),
        ip.dst_addr(),
        ip.hop_limit()
    )?;
    match ip.upper_layer() {
        Ok(u) if !u.has_header() => write!(f, " {} fragment", u.protocol),
        Ok(u) => match (
            u.protocol,
            bytes.get(u.offset..40 + usize::from(ip.payload_len())),
        ) {
            (IpProtocol::Tcp, Some(seg)) => tcp_line(f, seg),
            (IpProtocol::Udp, Some(seg)) => match udp::Packet::new_checked(seg) {
                Ok(p) => write!(f, " udp {} > {}", p.src_port(), p.dst_port()),
                Err(e) => write!(f, " [{e}]"),
            },
            (proto, _) => write!(f, " {proto}"),
        },
        Err(e) => write!(f, " [{e}]"),
    }
}

fn icmp_line(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    match icmpv4::Packet::new_checked(bytes) {
        Ok(p) => match p.msg_type() {
            icmpv4::Message::EchoRequest | icmpv4::Message::EchoReply => write!(
                f,
                " icmp {} id {} seq {}",
                p.msg_type(),
                p.echo_ident(),
                p.echo_seq_no()
            ),
            icmpv4::Message::DstUnreachable
                if icmpv4::DstUnreachable::from(p.msg_code())
                    == icmpv4::DstUnreachable::FragRequired =>
            {
                write!(f, " icmp frag-needed mtu {}", p.next_hop_mtu())
            }
            t => write!(f, " icmp {t} code {}", p.msg_code()),
        },
        Err(e) => write!(f, " [{e}]"),
    }
}

fn tcp_line(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    match tcp::Packet::new_checked(bytes) {
        Ok(t) => write!(
            f,
            " tcp {} > {} [{}] seq {} ack {} win {} len {}",
            t.src_port(),
            t.dst_port(),
            t.flags(),
            t.seq_number(),
            t.ack_number(),
            t.window_len(),
            bytes.len() - usize::from(t.header_len())
        ),
        Err(e) => write!(f, " [{e}]"),
    }
}

fn geneve_line(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let g = match geneve::Packet::new_checked(bytes) {
        Ok(g) => g,
        Err(e) => return write!(f, " [{e}]"),
    };
    write!(f, " geneve vni {}", g.vni())?;
    let n = g.options().count();
    if n > 0 {
        write!(f, " options {n}")?;
    }
    if g.oam() {
        f.write_str(" oam")?;
    }
    let inner = &bytes[g.header_len()..];
    match g.protocol() {
        EtherType::TransparentEthernet => {
            f.write_str(" | ")?;
            ethernet(f, inner, false)
        }
        other => write!(f, " protocol {other} len {}", inner.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tcp_frame() -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 100, 512)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    #[test]
    fn renders_tcp_syn() {
        assert_eq!(
            PrettyFrame(&tcp_frame()).to_string(),
            "02:00:00:00:00:01 > 02:00:00:00:00:02 ipv4 10.0.0.1 > 10.0.0.2 ttl 64 \
             tcp 40000 > 80 [SYN] seq 100 ack 0 win 512 len 0"
        );
    }

    #[test]
    fn renders_geneve_with_inner_frame_and_vlan() {
        let inner = tcp_frame();
        let mut g = [0u8; 8];
        geneve::Repr {
            oam: false,
            critical: false,
            protocol: EtherType::TransparentEthernet,
            vni: 77,
            options: &[],
        }
        .emit(&mut geneve::Packet::new_unchecked(&mut g[..]))
        .unwrap();
        let mut udp_payload = g.to_vec();
        udp_payload.extend_from_slice(&inner);
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
            .single_vlan(etherparse::VlanId::try_new(100).unwrap())
            .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 63)
            .udp(50000, geneve::UDP_PORT);
        let mut outer = Vec::new();
        b.write(&mut outer, &udp_payload).unwrap();
        let text = PrettyFrame(&outer).to_string();
        assert!(
            text.starts_with(
                "02:00:00:00:00:03 > 02:00:00:00:00:04 vlan 100 p0 ipv4 192.168.0.1 > \
                 192.168.0.2 ttl 63 udp 50000 > 6081 geneve vni 77 | 02:00:00:00:00:01"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("[SYN] seq 100 ack 0 win 512 len 0"),
            "{text}"
        );
    }

    #[test]
    fn renders_truncation_as_error_text() {
        let frame = tcp_frame();
        let text = PrettyFrame(&frame[..30]).to_string();
        assert!(
            text.ends_with(
                "[the IPv4 header is truncated: it needs 20 bytes but only 16 are present]"
            ),
            "{text}"
        );
        assert_eq!(
            PrettyFrame(&[]).to_string(),
            "[the Ethernet header is truncated: it needs 14 bytes but only 0 are present]"
        );
    }

    #[test]
    fn renders_arp_icmp_and_ipv6() {
        let mut a = vec![0u8; 14 + 28];
        Frame::new_unchecked(&mut a[..]).set_ethertype(EtherType::Arp);
        arp::Repr {
            operation: arp::Operation::Request,
            source_hardware_addr: crate::wire::EthernetAddress([2, 0, 0, 0, 0, 1]),
            source_protocol_addr: [10, 0, 0, 1].into(),
            target_hardware_addr: crate::wire::EthernetAddress::ZERO,
            target_protocol_addr: [10, 0, 0, 9].into(),
        }
        .emit(&mut arp::Packet::new_unchecked(&mut a[14..]))
        .unwrap();
        assert!(PrettyFrame(&a)
            .to_string()
            .ends_with("arp who-has 10.0.0.9 tell 10.0.0.1"));

        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(7, 9);
        let mut v = Vec::new();
        b.write(&mut v, b"x").unwrap();
        assert!(PrettyFrame(&v)
            .to_string()
            .ends_with("icmp echo request id 7 seq 9"));

        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(
                [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                1,
            )
            .udp(546, 547);
        let mut v = Vec::new();
        b.write(&mut v, b"").unwrap();
        assert!(PrettyFrame(&v)
            .to_string()
            .ends_with("ipv6 fe80::1 > ff02::1 hlim 1 udp 546 > 547"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = PrettyFrame(&bytes).to_string();
        }

        #[test]
        fn mutated_real_frames_never_panic(idx in 0usize..54, val in any::<u8>(), cut in 0usize..60) {
            let mut frame = tcp_frame();
            frame[idx] = val;
            frame.truncate(cut.min(frame.len()));
            let _ = PrettyFrame(&frame).to_string();
        }
    }
}
