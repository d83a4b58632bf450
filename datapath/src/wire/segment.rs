//! What TCP and UDP segments share beyond their ports (which
//! `view::transport_ports!` gives every transport view): the Internet
//! checksum over the IPv4 pseudo-header (RFC 9293 §3.1, RFC 768) and
//! `Repr::emit`. Written once here; [`segment_view!`] implements
//! [`Segment`] and [`SegmentMut`] for a protocol's `Packet` and writes its
//! `Repr::emit` on [`emit`], and `tcp` and `udp` say only how they differ:
//! which bytes the checksum covers (TCP the whole buffer, which must be
//! exactly the segment since TCP has no length field; UDP up to its length
//! field) and how a computed checksum is stored (UDP sends a computed 0 as
//! `0xffff`, 0 meaning "no checksum"). SCTP's CRC32c covers the whole
//! packet and has no pseudo-header: nothing to share.
//!
//! Every function is `#[inline(always)]` and generic over the view, so a
//! caller compiles to what its own copy compiled to: no dynamic dispatch,
//! no extra bounds check.
//!
//! Thread-safety: plain functions over the caller's buffer, no state.

use std::net::Ipv4Addr;

use super::checksum;
use super::ip::IpProtocol;
use super::{Error, Layer, Result};

/// A transport header view whose checksum covers the IPv4 pseudo-header.
pub(crate) trait Segment {
    /// The layer errors name.
    const LAYER: Layer;
    /// The protocol number in the pseudo-header.
    const PROTOCOL: IpProtocol;
    /// The buffer must be exactly header and payload (no length field):
    /// the covered bytes are the whole buffer.
    const EXACT_BUFFER: bool;
    /// The bytes the checksum covers: header and payload.
    fn covered(&self) -> &[u8];
}

/// A writable [`Segment`].
pub(crate) trait SegmentMut: Segment {
    /// The payload, writable.
    fn payload_area(&mut self) -> &mut [u8];
    /// Writes the checksum field as it is (0 before summing).
    fn write_checksum(&mut self, value: u16);
    /// Stores a computed checksum.
    #[inline(always)]
    fn store_checksum(&mut self, value: u16) {
        self.write_checksum(value);
    }
}

/// The length the pseudo-header carries: the covered bytes', which must
/// fit in 16 bits.
#[inline(always)]
fn covered_len<P: Segment>(p: &P) -> Result<u16> {
    let len = p.covered().len();
    u16::try_from(len).map_err(|_| Error::ValueTooLarge {
        layer: P::LAYER,
        field: "segment length",
        value: u32::try_from(len).unwrap_or(u32::MAX),
        max: u16::MAX.into(),
    })
}

/// The folded sum of the pseudo-header and the covered bytes, checksum
/// field included: `0xffff` when the stored checksum is right.
#[inline(always)]
fn sum<P: Segment>(p: &P, src: Ipv4Addr, dst: Ipv4Addr, len: u16) -> u16 {
    checksum::ipv4_segment(src, dst, P::PROTOCOL.into(), len, p.covered())
}

/// True when the stored checksum is right for `src` → `dst`.
#[inline(always)]
pub(crate) fn verify<P: Segment>(p: &P, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
    covered_len(p).is_ok_and(|len| sum(p, src, dst, len) == 0xffff)
}

/// Computes and stores the checksum for `src` → `dst`. Fails, leaving the
/// segment as it was, when the covered bytes exceed 65535.
#[inline(always)]
pub(crate) fn fill<P: SegmentMut>(p: &mut P, src: Ipv4Addr, dst: Ipv4Addr) -> Result<()> {
    let len = covered_len(p)?;
    p.write_checksum(0);
    let s = sum(p, src, dst, len);
    p.store_checksum(checksum::finish(s));
    Ok(())
}

/// The steps of `Repr::emit`: `payload` must be the representation's
/// `payload_len` long (and the buffer its `buffer_len` when
/// [`Segment::EXACT_BUFFER`]); then `header` writes the header, the
/// payload goes behind it and, when `addrs` is given, the checksum is
/// filled.
#[inline(always)]
pub(crate) fn emit<P: SegmentMut>(
    packet: &mut P,
    payload: &[u8],
    (payload_len, buffer_len): (usize, usize),
    addrs: Option<(Ipv4Addr, Ipv4Addr)>,
    header: impl FnOnce(&mut P) -> Result<()>,
) -> Result<()> {
    if P::EXACT_BUFFER && packet.covered().len() != buffer_len {
        return Err(Error::Malformed {
            layer: P::LAYER,
            field: "buffer",
            reason: "its length must be the representation's buffer_len (the segment has no length field)",
        });
    }
    if payload.len() != payload_len {
        return Err(Error::Malformed {
            layer: P::LAYER,
            field: "payload",
            reason: "its length differs from the representation's payload_len",
        });
    }
    header(packet)?;
    packet.payload_area().copy_from_slice(payload);
    if let Some((src, dst)) = addrs {
        fill(packet, src, dst)?;
    }
    Ok(())
}

/// Implements [`Segment`] and [`SegmentMut`] for the protocol's
/// `Packet<T>` (which has `payload_mut` and `set_checksum`) and writes its
/// `Repr::emit` (`Repr` has `payload_len`, `buffer_len` and
/// `emit_header`):
///
/// ```text
/// segment_view! {
///     Tcp, repr: Repr<'_>, exact_buffer: true,
///     covered: |p| p.buffer.as_ref(),
///     store: |p, sum| p.set_checksum(sum),
/// }
/// ```
macro_rules! segment_view {
    (
        $proto:ident, repr: $repr:ty, exact_buffer: $exact:literal,
        covered: |$c:ident| $covered:expr,
        store: |$s:ident, $sum:ident| $store:expr $(,)?
    ) => {
        impl<T: AsRef<[u8]>> $crate::wire::segment::Segment for Packet<T> {
            const LAYER: $crate::wire::Layer = $crate::wire::Layer::$proto;
            const PROTOCOL: $crate::wire::IpProtocol = $crate::wire::IpProtocol::$proto;
            const EXACT_BUFFER: bool = $exact;
            #[inline(always)]
            fn covered(&self) -> &[u8] {
                let $c = self;
                $covered
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $crate::wire::segment::SegmentMut for Packet<T> {
            #[inline(always)]
            fn payload_area(&mut self) -> &mut [u8] {
                self.payload_mut()
            }
            #[inline(always)]
            fn write_checksum(&mut self, value: u16) {
                self.set_checksum(value);
            }
            #[inline(always)]
            fn store_checksum(&mut self, $sum: u16) {
                let $s = self;
                $store
            }
        }

        impl $repr {
            /// Writes header and `payload` (which must be `payload_len`
            /// long) and, when `addrs` is given, the checksum over the IPv4
            /// pseudo-header. The buffer must hold header and payload; a
            /// protocol with no length field (TCP) needs it exactly
            /// [`Repr::buffer_len`] long.
            pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
                &self,
                packet: &mut Packet<T>,
                payload: &[u8],
                addrs: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
            ) -> $crate::wire::Result<()> {
                $crate::wire::segment::emit(
                    packet,
                    payload,
                    (self.payload_len, self.buffer_len()),
                    addrs,
                    |p| self.emit_header(p),
                )
            }
        }
    };
}

pub(crate) use segment_view;

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of raw bytes: checksum at 2..4, two bytes of header.
    struct Raw(Vec<u8>);

    impl Segment for Raw {
        const LAYER: Layer = Layer::Udp;
        const PROTOCOL: IpProtocol = IpProtocol::Udp;
        const EXACT_BUFFER: bool = false;
        fn covered(&self) -> &[u8] {
            &self.0
        }
    }

    impl SegmentMut for Raw {
        fn payload_area(&mut self) -> &mut [u8] {
            &mut self.0[4..]
        }
        fn write_checksum(&mut self, value: u16) {
            self.0[2..4].copy_from_slice(&value.to_be_bytes());
        }
    }

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

    #[test]
    fn emit_checks_the_payload_then_fills_a_checksum_that_verifies() {
        let mut p = Raw(vec![0; 7]);
        let header = |p: &mut Raw| {
            p.0[..2].copy_from_slice(&[0xab, 0xcd]);
            Ok(())
        };
        assert!(matches!(
            emit(&mut p, b"ab", (3, 7), None, header),
            Err(Error::Malformed {
                layer: Layer::Udp,
                ..
            })
        ));
        assert_eq!(p.0, [0; 7], "nothing written on a refused payload");
        emit(&mut p, b"xyz", (3, 7), Some((SRC, DST)), header).unwrap();
        assert_eq!(&p.0[..2], &[0xab, 0xcd]);
        assert_eq!(&p.0[4..], b"xyz");
        assert!(verify(&p, SRC, DST));
        assert!(!verify(&p, DST, Ipv4Addr::new(192, 0, 2, 3)));
        p.0[6] ^= 1;
        assert!(!verify(&p, SRC, DST));
    }

    #[test]
    fn a_segment_too_long_for_the_pseudo_header_is_refused_untouched() {
        let mut p = Raw(vec![0xee; 65536]);
        assert!(matches!(
            fill(&mut p, SRC, DST),
            Err(Error::ValueTooLarge {
                field: "segment length",
                ..
            })
        ));
        assert!(p.0.iter().all(|&b| b == 0xee));
        assert!(!verify(&p, SRC, DST));
    }
}
