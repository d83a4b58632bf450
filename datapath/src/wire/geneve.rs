//! Geneve encapsulation headers (RFC 8926) and their option TLVs.
//!
//! [`Packet::new_checked`] validates the whole header before any getter
//! runs: version 0, the options area inside the buffer, and every option's
//! length inside the options area. [`Packet::options`] iterates the TLVs
//! without allocating; on a view built with `new_unchecked` it reports a
//! malformed option as an `Err` item and stops, so it never panics either.
//! Options are built with [`emit_options`]. The header's C bit is kept as
//! read; [`Repr::emit`] sets it whenever an emitted option is critical, as
//! RFC 8926 requires. Plain data, no state, no allocation.

use super::ethernet::EtherType;
use super::{
    check_len, check_room, read_u16, read_u32, write_u16, write_u32, Error, Layer, Result,
};

/// The IANA UDP destination port for Geneve.
pub const UDP_PORT: u16 = 6081;

mod field {
    pub const VER_OPTLEN: usize = 0;
    pub const FLAGS: usize = 1;
    pub const PROTOCOL: usize = 2;
    pub const VNI_RSVD: usize = 4;
    pub const OPTIONS: usize = 8;
}

/// Length of the fixed Geneve header.
pub const HEADER_LEN: usize = field::OPTIONS;

/// Largest options area (Opt Len is 6 bits of 4-byte words).
pub const MAX_OPTIONS_LEN: usize = 63 * 4;

/// Largest option data (Length is 5 bits of 4-byte words).
pub const MAX_OPTION_DATA_LEN: usize = 31 * 4;

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

const FLAG_OAM: u8 = 0x80;
const FLAG_CRITICAL: u8 = 0x40;

/// Length of an option TLV's header (class, type, length).
pub const OPTION_HEADER_LEN: usize = 4;

/// Bit of an option's type that marks it critical.
pub const OPTION_TYPE_CRITICAL: u8 = 0x80;

/// One Geneve option TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneveOption<'a> {
    /// Option class (namespace; 0x0100–0x01ff are for experiments).
    pub class: u16,
    /// Option type; the high bit ([`OPTION_TYPE_CRITICAL`]) marks the
    /// option critical.
    pub kind: u8,
    /// Option data; its length is a multiple of 4 up to 124 bytes.
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// True when a receiver that does not understand this option must drop
    /// the packet.
    pub fn is_critical(&self) -> bool {
        self.kind & OPTION_TYPE_CRITICAL != 0
    }

    /// Bytes this option occupies on the wire (4-byte header + data).
    pub const fn buffer_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data.len()
    }

    /// Writes this option at the front of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if !self.data.len().is_multiple_of(4) || self.data.len() > MAX_OPTION_DATA_LEN {
            return Err(Error::Malformed {
                layer: Layer::Geneve,
                field: "option data",
                reason: "its length must be a multiple of 4 bytes, at most 124",
            });
        }
        let len = self.buffer_len();
        check_room(Layer::Geneve, buf, len)?;
        write_u16(buf, 0, self.class);
        buf[2] = self.kind;
        buf[3] = (self.data.len() / 4) as u8;
        buf[4..len].copy_from_slice(self.data);
        Ok(len)
    }
}

/// Writes `options` one after another at the front of `buf`; returns the
/// options area length to pass as [`Repr::options`].
pub fn emit_options(buf: &mut [u8], options: &[GeneveOption<'_>]) -> Result<usize> {
    let total: usize = options.iter().map(GeneveOption::buffer_len).sum();
    if total > MAX_OPTIONS_LEN {
        return Err(Error::ValueTooLarge {
            layer: Layer::Geneve,
            field: "options length",
            value: u32::try_from(total).unwrap_or(u32::MAX),
            max: MAX_OPTIONS_LEN as u32,
        });
    }
    check_room(Layer::Geneve, buf, total)?;
    let mut at = 0;
    for opt in options {
        at += opt.emit(&mut buf[at..])?;
    }
    Ok(at)
}

/// Iterator over the option TLVs of an options area.
///
/// Yields `Err` once for a truncated or overlong option and then stops.
#[derive(Debug, Clone)]
pub struct GeneveOptions<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> GeneveOptions<'a> {
    /// Iterates the options in `area` (the raw options bytes).
    pub fn new(area: &'a [u8]) -> GeneveOptions<'a> {
        GeneveOptions {
            rest: area,
            failed: false,
        }
    }

    /// Walks every option, returning the first error and whether any
    /// option is critical.
    pub fn validate(area: &'a [u8]) -> Result<bool> {
        let mut critical = false;
        for opt in GeneveOptions::new(area) {
            critical |= opt?.is_critical();
        }
        Ok(critical)
    }
}

impl<'a> Iterator for GeneveOptions<'a> {
    type Item = Result<GeneveOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        if rest.len() < 4 {
            self.failed = true;
            return Some(Err(Error::Truncated {
                layer: Layer::Geneve,
                needed: 4,
                available: rest.len(),
            }));
        }
        let data_len = usize::from(rest[3] & 0x1f) * 4;
        if rest.len() < 4 + data_len {
            self.failed = true;
            return Some(Err(Error::Malformed {
                layer: Layer::Geneve,
                field: "option length",
                reason: "the option runs past the end of the options area",
            }));
        }
        let opt = GeneveOption {
            class: read_u16(rest, 0),
            kind: rest[2],
            data: &rest[4..4 + data_len],
        };
        self.rest = &rest[4 + data_len..];
        Some(Ok(opt))
    }
}

super::view::header_view! {
    /// A view of a Geneve header (the UDP payload of a Geneve packet).
    ///
    /// - [`Packet::new_unchecked`]: Wraps `buffer` without checking it. Getters panic if it is
    ///   shorter than the header; [`Packet::options`] never panics.
    /// - [`Packet::new_checked`]: Wraps untrusted bytes, checking version, lengths and every
    ///   option.
    pub struct Packet: check;
    /// Protocol type of the payload (usually
    /// [`EtherType::TransparentEthernet`]).
    protocol, set_protocol: EtherType @ field::PROTOCOL;
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks version, the options area and every option's length.
    pub fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_len(Layer::Geneve, b, HEADER_LEN)?;
        if self.version() != 0 {
            return Err(Error::Version {
                layer: Layer::Geneve,
                version: self.version(),
            });
        }
        check_len(Layer::Geneve, b, self.header_len())?;
        GeneveOptions::validate(&b[HEADER_LEN..self.header_len()]).map(|_| ())
    }

    /// Version (0 is the only one defined).
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPTLEN] >> 6
    }

    /// Length of the options area in bytes.
    #[inline(always)]
    pub fn options_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_OPTLEN] & 0x3f) * 4
    }

    /// Header length: fixed part plus options.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// O bit: an OAM (control) packet, not data.
    #[inline(always)]
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_OAM != 0
    }

    /// C bit: critical options are present.
    #[inline(always)]
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_CRITICAL != 0
    }

    /// Virtual network identifier (24 bits).
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VNI_RSVD) >> 8
    }

    /// The raw options area, clamped to the buffer.
    #[inline(always)]
    pub fn options_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self.header_len().min(b.len());
        &b[HEADER_LEN.min(end)..end]
    }

    /// Iterates the options.
    #[inline(always)]
    pub fn options(&self) -> GeneveOptions<'_> {
        GeneveOptions::new(self.options_bytes())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The encapsulated payload after the options.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 0 and the options length in bytes (a multiple of 4,
    /// at most [`MAX_OPTIONS_LEN`]; larger values are truncated to 6 bits).
    #[inline(always)]
    pub fn set_version_and_options_len(&mut self, options_len: usize) {
        self.buffer.as_mut()[field::VER_OPTLEN] = ((options_len / 4) & 0x3f) as u8;
    }

    /// Sets the O and C bits (reserved bits cleared).
    #[inline]
    pub fn set_flags(&mut self, oam: bool, critical: bool) {
        let mut f = 0;
        if oam {
            f |= FLAG_OAM;
        }
        if critical {
            f |= FLAG_CRITICAL;
        }
        self.buffer.as_mut()[field::FLAGS] = f;
    }

    /// Sets the VNI (low 24 bits) and clears the reserved byte.
    #[inline]
    pub fn set_vni(&mut self, value: u32) {
        write_u32(
            self.buffer.as_mut(),
            field::VNI_RSVD,
            (value & MAX_VNI) << 8,
        );
    }

    /// The options area, writable (length from the Opt Len field).
    #[inline(always)]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The payload after the options, writable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// The meaning of a Geneve header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// O bit.
    pub oam: bool,
    /// C bit as read (emission also sets it if any option is critical).
    pub critical: bool,
    /// Payload protocol type.
    pub protocol: EtherType,
    /// Virtual network identifier (24 bits).
    pub vni: u32,
    /// Raw, validated options area (see [`emit_options`],
    /// [`GeneveOptions`]).
    pub options: &'a [u8],
}

impl<'a> Repr<'a> {
    /// Reads a header, options included.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check()?;
        let b: &'a [u8] = packet.buffer.as_ref();
        Ok(Repr {
            oam: packet.oam(),
            critical: packet.critical(),
            protocol: packet.protocol(),
            vni: packet.vni(),
            options: &b[HEADER_LEN..packet.header_len()],
        })
    }

    /// Iterates the options.
    pub fn options(&self) -> GeneveOptions<'a> {
        GeneveOptions::new(self.options)
    }

    /// Bytes of the header with its options.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Writes the header and copies the options.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if self.vni > MAX_VNI {
            return Err(Error::ValueTooLarge {
                layer: Layer::Geneve,
                field: "VNI",
                value: self.vni,
                max: MAX_VNI,
            });
        }
        if !self.options.len().is_multiple_of(4) || self.options.len() > MAX_OPTIONS_LEN {
            return Err(Error::Malformed {
                layer: Layer::Geneve,
                field: "options",
                reason: "their total length must be a multiple of 4 bytes, at most 252",
            });
        }
        let any_critical = GeneveOptions::validate(self.options)?;
        check_room(Layer::Geneve, packet.buffer.as_ref(), self.buffer_len())?;
        packet.set_version_and_options_len(self.options.len());
        packet.set_flags(self.oam, self.critical || any_critical);
        packet.set_protocol(self.protocol);
        packet.set_vni(self.vni);
        packet.options_mut().copy_from_slice(self.options);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_support::assert_prefixes_truncated;
    use proptest::prelude::*;

    // Geneve with one 8-byte option (class 0x0102, type 0x80 critical,
    // 4 bytes of data), C set, Ethernet payload, VNI 0x123456, then two
    // payload bytes.
    static GENEVE_BYTES: [u8; 22] = [
        0x02, 0x40, 0x65, 0x58, 0x12, 0x34, 0x56, 0x00, // ver 0, optlen 2, C, 0x6558, VNI
        0x01, 0x02, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef, // option
        0xaa, 0xbb, // payload
        0x01, 0x02, 0x03, 0x04,
    ];
    const OPT_DATA: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&GENEVE_BYTES[..]).unwrap();
        assert_eq!(p.version(), 0);
        assert_eq!(p.options_len(), 8);
        assert_eq!(p.header_len(), 16);
        assert!(!p.oam());
        assert!(p.critical());
        assert_eq!(p.protocol(), EtherType::TransparentEthernet);
        assert_eq!(p.vni(), 0x123456);
        let opts: Vec<_> = p.options().collect::<Result<_>>().unwrap();
        assert_eq!(
            opts,
            vec![GeneveOption {
                class: 0x0102,
                kind: 0x80,
                data: &OPT_DATA
            }]
        );
        assert!(opts[0].is_critical());
        assert_eq!(p.payload(), &GENEVE_BYTES[16..]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 22];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_options_len(8);
        p.set_flags(false, true);
        p.set_protocol(EtherType::TransparentEthernet);
        p.set_vni(0x123456);
        let n = emit_options(
            p.options_mut(),
            &[GeneveOption {
                class: 0x0102,
                kind: 0x80,
                data: &OPT_DATA,
            }],
        )
        .unwrap();
        assert_eq!(n, 8);
        p.payload_mut().copy_from_slice(&GENEVE_BYTES[16..]);
        assert_eq!(buf, GENEVE_BYTES);
    }

    #[test]
    fn parse_and_emit() {
        let p = Packet::new_checked(&GENEVE_BYTES[..]).unwrap();
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.vni, 0x123456);
        assert_eq!(r.options, &GENEVE_BYTES[8..16]);
        assert_eq!(r.buffer_len(), 16);
        assert_eq!(r.options().count(), 1);
        let mut buf = [0u8; 22];
        buf[16..].copy_from_slice(&GENEVE_BYTES[16..]);
        r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, GENEVE_BYTES);

        // C is set on emit when an option is critical even if the Repr
        // says otherwise.
        let quiet = Repr {
            critical: false,
            ..r
        };
        quiet
            .emit(&mut Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        assert!(Packet::new_unchecked(&buf[..]).critical());
    }

    #[test]
    fn no_options() {
        let r = Repr {
            oam: true,
            critical: false,
            protocol: EtherType::Ipv4,
            vni: MAX_VNI,
            options: &[],
        };
        let mut buf = [0u8; 8];
        r.emit(&mut Packet::new_unchecked(&mut buf[..])).unwrap();
        assert_eq!(buf, [0x00, 0x80, 0x08, 0x00, 0xff, 0xff, 0xff, 0x00]);
        let p = Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), r);
        assert_eq!(p.options().next(), None);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn every_truncation_is_rejected() {
        assert_prefixes_truncated(&GENEVE_BYTES, 16, Packet::new_checked);
        assert!(Packet::new_checked(&GENEVE_BYTES[..16]).is_ok());
    }

    #[test]
    fn bad_version_and_option_lengths_rejected() {
        let mut b = GENEVE_BYTES;
        b[0] |= 0x40;
        assert_eq!(
            Packet::new_checked(&b[..]),
            Err(Error::Version {
                layer: Layer::Geneve,
                version: 1
            })
        );
        // Option claims 8 bytes of data inside a 8-byte options area.
        let mut b = GENEVE_BYTES;
        b[11] = 2;
        assert!(matches!(
            Packet::new_checked(&b[..]),
            Err(Error::Malformed {
                field: "option length",
                ..
            })
        ));
        // The unchecked iterator yields that error once, then stops.
        let p = Packet::new_unchecked(&b[..]);
        let items: Vec<_> = p.options().collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
        // A 4-byte options area whose option header claims one word of
        // data; and 3 leftover bytes that cannot hold an option header.
        let mut b = GENEVE_BYTES;
        b[0] = 0x01;
        assert!(Packet::new_checked(&b[..]).is_err());
        assert_eq!(GeneveOptions::new(&[1, 2, 3]).count(), 1);
        assert!(GeneveOptions::validate(&[1, 2, 3]).is_err());
    }

    #[test]
    fn emit_validates() {
        let mut buf = [0u8; 300];
        let too_big_vni = Repr {
            oam: false,
            critical: false,
            protocol: EtherType::TransparentEthernet,
            vni: MAX_VNI + 1,
            options: &[],
        };
        assert!(matches!(
            too_big_vni.emit(&mut Packet::new_unchecked(&mut buf[..])),
            Err(Error::ValueTooLarge { .. })
        ));
        let bad_opts = Repr {
            vni: 1,
            options: &[0, 1, 2, 9],
            ..too_big_vni
        };
        assert!(bad_opts
            .emit(&mut Packet::new_unchecked(&mut buf[..]))
            .is_err());
        let odd = GeneveOption {
            class: 1,
            kind: 2,
            data: &[1, 2, 3],
        };
        assert!(odd.emit(&mut buf).is_err());
        let big = [0u8; 124];
        let opt = GeneveOption {
            class: 1,
            kind: 2,
            data: &big,
        };
        let fill = GeneveOption {
            data: &big[..120],
            ..opt
        };
        // 128 + 124 = 252 bytes: exactly the largest options area.
        assert_eq!(
            emit_options(&mut buf, &[opt, fill]).unwrap(),
            MAX_OPTIONS_LEN
        );
        assert!(matches!(
            emit_options(&mut buf, &[opt, opt]),
            Err(Error::ValueTooLarge { value: 256, .. })
        ));
        assert!(emit_options(&mut buf[..10], &[opt]).is_err());
    }

    #[test]
    fn geneve_inside_udp_parsed_by_etherparse() {
        // etherparse does not know Geneve; check it sees our header as the
        // UDP payload at the right length, and that we read it back.
        let mut opts = [0u8; 16];
        let n = emit_options(
            &mut opts,
            &[
                GeneveOption {
                    class: 0x0104,
                    kind: 1,
                    data: &[1, 2, 3, 4],
                },
                GeneveOption {
                    class: 0xffff,
                    kind: 2,
                    data: &[],
                },
            ],
        )
        .unwrap();
        assert_eq!(n, 12);
        let repr = Repr {
            oam: false,
            critical: false,
            protocol: EtherType::TransparentEthernet,
            vni: 5001,
            options: &opts[..n],
        };
        let mut geneve = [0u8; 20 + 14];
        repr.emit(&mut Packet::new_unchecked(&mut geneve[..]))
            .unwrap();
        let builder =
            etherparse::PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(49000, UDP_PORT);
        let mut pkt = Vec::new();
        builder.write(&mut pkt, &geneve).unwrap();
        let s = etherparse::SlicedPacket::from_ip(&pkt).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = s.transport else {
            panic!("etherparse saw no UDP");
        };
        assert_eq!(u.destination_port(), UDP_PORT);
        let p = Packet::new_checked(u.payload()).unwrap();
        assert_eq!(p.vni(), 5001);
        assert!(!p.critical());
        let kinds: Vec<_> = p.options().map(|o| o.unwrap().class).collect();
        assert_eq!(kinds, vec![0x0104, 0xffff]);
        assert_eq!(p.payload().len(), 14);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let unchecked = Packet::new_unchecked(&bytes[..]);
            if bytes.len() >= HEADER_LEN {
                for opt in unchecked.options() {
                    let _ = opt;
                }
            }
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let r = Repr::parse(&p).unwrap();
                prop_assert!(p.options().all(|o| o.is_ok()));
                let mut out = vec![0u8; r.buffer_len()];
                r.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
                prop_assert_eq!(Packet::new_checked(&out[..]).map(|q| q.vni()), Ok(p.vni()));
            }
        }

        #[test]
        fn emitted_options_iterate_back(
            specs in proptest::collection::vec((any::<u16>(), any::<u8>(), 0usize..8), 0..6),
        ) {
            let data = [0x5au8; 28];
            let opts: Vec<GeneveOption> = specs.iter()
                .map(|&(class, kind, words)| GeneveOption { class, kind, data: &data[..words * 4] })
                .collect();
            let mut area = [0u8; MAX_OPTIONS_LEN];
            let n = emit_options(&mut area, &opts).unwrap();
            let back: Vec<_> = GeneveOptions::new(&area[..n]).collect::<Result<_>>().unwrap();
            prop_assert_eq!(back, opts);
        }
    }
}
