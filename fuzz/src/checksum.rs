//! Internet checksums (RFC 1071) of IPv4, TCP, UDP and ICMP in Ethernet
//! frames, for the packet-path target: [`fix`] makes a fuzzed frame's
//! checksums valid before it enters the pipeline, [`check`] finds a wrong
//! one in a frame the pipeline emitted. Both walk Ethernet (with up to two
//! VLAN tags) → IPv4 → TCP/UDP/ICMP, and into the inner frame of a Geneve
//! packet (UDP port 6081), inner first. What cannot be parsed (not IPv4,
//! truncated headers, a total length past the frame, IP fragments for
//! the L4 checksum) is left alone: there is no checksum to hold to.
//! A UDP checksum of 0 means "none" (RFC 768) and is accepted.
//!
//! Plain functions on byte slices; thread-safe.

const GENEVE_PORT: u16 = 6081;

fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Where the IPv4 header starts in an Ethernet frame.
fn ip_offset(f: &[u8]) -> Option<usize> {
    let mut off = 12;
    for _ in 0..3 {
        let et = u16::from_be_bytes([*f.get(off)?, *f.get(off + 1)?]);
        match et {
            0x0800 => return Some(off + 2),
            0x8100 | 0x88a8 => off += 4,
            _ => return None,
        }
    }
    None
}

/// A located IPv4 packet: header and payload bounds inside the frame.
struct Ip {
    start: usize,
    hlen: usize,
    end: usize,
    proto: u8,
    fragment: bool,
}

fn locate(f: &[u8]) -> Option<Ip> {
    let start = ip_offset(f)?;
    let v = *f.get(start)?;
    if v >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(v & 0xf) * 4;
    if hlen < 20 || f.len() < start + hlen {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([f[start + 2], f[start + 3]]));
    if total < hlen || f.len() < start + total {
        return None;
    }
    let frag = u16::from_be_bytes([f[start + 6], f[start + 7]]);
    Some(Ip {
        start,
        hlen,
        end: start + total,
        proto: f[start + 9],
        fragment: frag & 0x3fff != 0,
    })
}

/// Offset of the checksum field inside the L4 header, and the minimum
/// header length.
fn l4_field(proto: u8) -> Option<(usize, usize)> {
    match proto {
        1 => Some((2, 8)),
        6 => Some((16, 20)),
        17 => Some((6, 8)),
        _ => None,
    }
}

fn l4_sum(f: &[u8], ip: &Ip) -> u32 {
    let l4 = &f[ip.start + ip.hlen..ip.end];
    if ip.proto == 1 {
        return sum(l4, 0);
    }
    let mut acc = sum(&f[ip.start + 12..ip.start + 20], 0);
    acc += u32::from(ip.proto);
    acc += l4.len() as u32;
    sum(l4, acc)
}

/// The inner frame of a Geneve packet: (start, end) in `f`.
fn geneve_inner(f: &[u8], ip: &Ip) -> Option<(usize, usize)> {
    if ip.proto != 17 || ip.fragment {
        return None;
    }
    let udp = ip.start + ip.hlen;
    if ip.end < udp + 8 + 8 {
        return None;
    }
    if u16::from_be_bytes([f[udp + 2], f[udp + 3]]) != GENEVE_PORT {
        return None;
    }
    let opt = usize::from(f[udp + 8] & 0x3f) * 4;
    let inner = udp + 8 + 8 + opt;
    (inner <= ip.end).then_some((inner, ip.end))
}

/// Makes every checksum in `f` valid (inner Geneve frame first).
pub fn fix(f: &mut [u8]) {
    fix_depth(f, 0);
}

fn fix_depth(f: &mut [u8], depth: u8) {
    let Some(ip) = locate(f) else {
        return;
    };
    if depth == 0 {
        if let Some((a, b)) = geneve_inner(f, &ip) {
            fix_depth(&mut f[a..b], 1);
        }
    }
    f[ip.start + 10] = 0;
    f[ip.start + 11] = 0;
    let c = fold(sum(&f[ip.start..ip.start + ip.hlen], 0));
    f[ip.start + 10..ip.start + 12].copy_from_slice(&c.to_be_bytes());
    let Some((field, min)) = l4_field(ip.proto) else {
        return;
    };
    if ip.fragment || ip.end - ip.start - ip.hlen < min {
        return;
    }
    let at = ip.start + ip.hlen + field;
    f[at] = 0;
    f[at + 1] = 0;
    let mut c = fold(l4_sum(f, &ip));
    if ip.proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The first wrong checksum in `f`, described.
pub fn check(f: &[u8]) -> Result<(), String> {
    check_depth(f, 0)
}

fn check_depth(f: &[u8], depth: u8) -> Result<(), String> {
    let Some(ip) = locate(f) else {
        return Ok(());
    };
    if fold(sum(&f[ip.start..ip.start + ip.hlen], 0)) != 0 {
        return Err(format!("IPv4 header checksum wrong (depth {depth})"));
    }
    if depth == 0 {
        if let Some((a, b)) = geneve_inner(f, &ip) {
            check_depth(&f[a..b], 1).map_err(|e| format!("Geneve inner frame: {e}"))?;
        }
    }
    let Some((field, min)) = l4_field(ip.proto) else {
        return Ok(());
    };
    if ip.fragment || ip.end - ip.start - ip.hlen < min {
        return Ok(());
    }
    let at = ip.start + ip.hlen + field;
    if ip.proto == 17 && f[at] == 0 && f[at + 1] == 0 {
        return Ok(());
    }
    if fold(l4_sum(f, &ip)) != 0 {
        let name = match ip.proto {
            1 => "ICMP",
            6 => "TCP",
            _ => "UDP",
        };
        return Err(format!("{name} checksum wrong (depth {depth})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame() -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1000, 80, 7, 100)
            .write(&mut v, b"hello")
            .unwrap();
        v
    }

    #[test]
    fn etherparse_frames_check_and_a_flipped_byte_does_not() {
        let mut f = tcp_frame();
        assert_eq!(check(&f), Ok(()));
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(check(&f).unwrap_err().contains("TCP"));
        fix(&mut f);
        assert_eq!(check(&f), Ok(()));
        f[14 + 8] ^= 1; // TTL
        assert!(check(&f).unwrap_err().contains("IPv4"));
    }
}
