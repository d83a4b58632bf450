//! The frames and parse routines that `benches/wire.rs` measures with
//! criterion and `examples/fastpath_ir.rs` counts instructions of: one
//! definition, included by both with `#[path]`.

use sluice_datapath::wire::{
    self, ChecksumMode, EtherType, EthernetFrame, GeneveOption, GenevePacket, GeneveRepr,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr,
};

pub fn eth_ipv4_tcp_frame() -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 80, 1, 65535)
        .ack(7);
    let mut pkt = Vec::new();
    builder
        .write(&mut pkt, &[0x5a; 64])
        .expect("building the benchmark frame");
    pkt
}

/// Parses one Eth/IPv4/TCP frame; returns the ports so nothing is elided.
#[inline]
pub fn parse_eth_ipv4_tcp(frame: &[u8], l4: ChecksumMode) -> wire::Result<(u16, u16)> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != EtherType::Ipv4 {
        return Ok((0, 0));
    }
    let ip = Ipv4Packet::new_checked(eth.payload())?;
    let ip_repr = Ipv4Repr::parse(&ip, ChecksumMode::Verify)?;
    if ip_repr.next_header != IpProtocol::Tcp {
        return Ok((0, 0));
    }
    let tcp = TcpPacket::new_checked(ip.payload())?;
    let tcp_repr = TcpRepr::parse(&tcp, ip_repr.src_addr, ip_repr.dst_addr, l4)?;
    Ok((tcp_repr.src_port, tcp_repr.dst_port))
}

pub fn geneve_payload() -> Vec<u8> {
    let mut opts = [0u8; 24];
    let n = wire::geneve::emit_options(
        &mut opts,
        &[
            GeneveOption {
                class: 0x0104,
                kind: 0x01,
                data: &[0, 0, 0, 42],
            },
            GeneveOption {
                class: 0x0105,
                kind: 0x02,
                data: &[1, 2, 3, 4, 5, 6, 7, 8],
            },
        ],
    )
    .expect("emitting benchmark options");
    let repr = GeneveRepr {
        oam: false,
        critical: false,
        protocol: EtherType::TransparentEthernet,
        vni: 5001,
        options: &opts[..n],
    };
    let inner = eth_ipv4_tcp_frame();
    let mut buf = vec![0u8; repr.buffer_len() + inner.len()];
    repr.emit(&mut GenevePacket::new_unchecked(&mut buf[..]))
        .expect("emitting the benchmark Geneve header");
    buf[repr.buffer_len()..].copy_from_slice(&inner);
    buf
}

#[inline]
pub fn parse_geneve(buf: &[u8]) -> wire::Result<u32> {
    let g = GenevePacket::new_checked(buf)?;
    let mut acc = g.vni();
    for opt in g.options() {
        let opt = opt?;
        acc ^= u32::from(opt.class) ^ u32::from(opt.kind);
    }
    let inner = EthernetFrame::new_checked(g.payload())?;
    acc ^= u32::from(u16::from(inner.ethertype()));
    Ok(acc)
}
