//! Zero-copy header views over untrusted bytes (smoltcp `wire` style).
//!
//! Each protocol lives in its own file and follows the same shape:
//!
//! - a view type (`Packet<T>` or `Frame<T>`) that wraps any `T: AsRef<[u8]>`
//!   without copying; a private `mod field` holds the byte ranges, getters
//!   need `AsRef<[u8]>` and setters need `AsMut<[u8]>`;
//! - `new_unchecked` (trusted buffers, e.g. ones we are building) and
//!   `new_checked` (untrusted bytes: validates every length and version the
//!   getters rely on, so that no getter can panic afterwards);
//! - a `Repr` type with `parse`, `buffer_len` and `emit`, the high-level
//!   meaning of a header, used to build packets;
//! - protocol numbers as enums with an `Unknown(_)` variant, so no value is
//!   ever rejected just because we do not know its name.
//!
//! Invariants: nothing in this module allocates, logs or locks; getters on a
//! view built with `new_checked` never panic; malformed input is reported as
//! an [`Error`] that names the layer and what is wrong. Views built with
//! `new_unchecked` over too-short buffers panic on access, like slice
//! indexing; use them only on buffers whose length you control.
//!
//! Thread-safety: all types are plain data (`Send`/`Sync` when the buffer
//! is); there is no shared state.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod geneve;
pub mod icmpv4;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod pretty;
pub mod sctp;
mod segment;
pub mod tcp;
pub mod udp;
mod view;
pub mod vlan;

pub use arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use ethernet::{
    Address as EthernetAddress, EtherType, Frame as EthernetFrame, Repr as EthernetRepr,
};
pub use geneve::{GeneveOption, GeneveOptions, Packet as GenevePacket, Repr as GeneveRepr};
pub use icmpv4::{
    DstUnreachable as Icmpv4DstUnreachable, Message as Icmpv4Message, Packet as Icmpv4Packet,
    Repr as Icmpv4Repr, TimeExceeded as Icmpv4TimeExceeded,
};
pub use ip::IpProtocol;
pub use ipv4::{Cidr as Ipv4Cidr, Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use ipv6::{Packet as Ipv6Packet, Repr as Ipv6Repr, UpperLayer as Ipv6UpperLayer};
pub use pretty::PrettyFrame;
pub use sctp::{Packet as SctpPacket, Repr as SctpRepr};
pub use tcp::{Flags as TcpFlags, Packet as TcpPacket, Repr as TcpRepr};
pub use udp::{Packet as UdpPacket, Repr as UdpRepr};
pub use vlan::{Packet as VlanPacket, Repr as VlanRepr};

use core::fmt;

/// The protocol layer an [`Error`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Ethernet II frame header.
    Ethernet,
    /// IEEE 802.1Q / 802.1ad VLAN tag.
    Vlan,
    /// ARP for Ethernet/IPv4.
    Arp,
    /// IPv4 header.
    Ipv4,
    /// IPv6 header and extension headers.
    Ipv6,
    /// ICMPv4 message.
    Icmpv4,
    /// UDP header.
    Udp,
    /// TCP header.
    Tcp,
    /// SCTP common header.
    Sctp,
    /// Geneve header and its options.
    Geneve,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Vlan => "VLAN",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Icmpv4 => "ICMPv4",
            Layer::Udp => "UDP",
            Layer::Tcp => "TCP",
            Layer::Sctp => "SCTP",
            Layer::Geneve => "Geneve",
        })
    }
}

/// Why bytes could not be read as, or written as, a header.
///
/// Every variant names the [`Layer`], so a datapath can count the drop under
/// a precise reason and an operator can read what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (or the length it declares) does.
    #[error(
        "the {layer} header is truncated: it needs {needed} bytes but only {available} are present"
    )]
    Truncated {
        /// Layer being parsed.
        layer: Layer,
        /// Bytes the header needs.
        needed: usize,
        /// Bytes actually present.
        available: usize,
    },
    /// A field holds a value that makes the header impossible to interpret.
    #[error("the {layer} {field} field is invalid: {reason}")]
    Malformed {
        /// Layer being parsed.
        layer: Layer,
        /// Name of the offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The version field names a version this code does not implement.
    #[error("{layer} version {version} is not supported")]
    Version {
        /// Layer being parsed.
        layer: Layer,
        /// Version found on the wire.
        version: u8,
    },
    /// The checksum does not match the bytes it covers.
    #[error(
        "the {layer} checksum does not match the packet contents (corrupted or badly built packet)"
    )]
    Checksum {
        /// Layer being verified.
        layer: Layer,
    },
    /// A well-formed header uses a feature this code does not handle.
    #[error("this {layer} {what} is not supported")]
    Unsupported {
        /// Layer being parsed.
        layer: Layer,
        /// The unsupported feature.
        what: &'static str,
    },
    /// The output buffer is too small for the header being emitted.
    #[error("the buffer holds {available} bytes but emitting the {layer} header needs {needed}; reserve more room")]
    BufferTooSmall {
        /// Layer being emitted.
        layer: Layer,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A value to be emitted does not fit in its field.
    #[error("the {layer} {field} value {value} does not fit in the field (maximum {max})")]
    ValueTooLarge {
        /// Layer being emitted.
        layer: Layer,
        /// Field name.
        field: &'static str,
        /// The value given.
        value: u32,
        /// The largest value the field holds.
        max: u32,
    },
}

impl Error {
    /// The layer this error is about.
    pub fn layer(&self) -> Layer {
        match *self {
            Error::Truncated { layer, .. }
            | Error::Malformed { layer, .. }
            | Error::Version { layer, .. }
            | Error::Checksum { layer }
            | Error::Unsupported { layer, .. }
            | Error::BufferTooSmall { layer, .. }
            | Error::ValueTooLarge { layer, .. } => layer,
        }
    }
}

/// Result of wire parsing and emission.
pub type Result<T> = core::result::Result<T, Error>;

/// Whether `Repr::parse` verifies checksums.
///
/// `Verify` is right for bytes from the network when the NIC has not
/// already checked them; `Trust` skips the work when the checksum was
/// verified in hardware or is known to be recomputed later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumMode {
    /// Reject packets whose checksum is wrong with [`Error::Checksum`].
    #[default]
    Verify,
    /// Do not look at the checksum.
    Trust,
}

/// Error for textual addresses and prefixes ([`EthernetAddress`],
/// [`Ipv4Cidr`]) given by a user or a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressParseError {
    /// Not six colon-separated hex octets.
    #[error(
        "expected a MAC address written as six colon-separated hex octets, like 02:00:0a:00:00:01"
    )]
    Mac,
    /// Not `a.b.c.d/len`.
    #[error("expected an IPv4 prefix written as address/length, like 10.0.0.0/8")]
    Cidr,
    /// Prefix length above 32.
    #[error("an IPv4 prefix length must be between 0 and 32, not {0}")]
    PrefixLen(u8),
}

/// Returns `Err(Truncated)` when `buf` is shorter than `needed`.
#[inline]
pub(crate) fn check_len(layer: Layer, buf: &[u8], needed: usize) -> Result<()> {
    if buf.len() < needed {
        Err(Error::Truncated {
            layer,
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Checks a header whose length is declared in one of its fields: `buf`
/// must hold the `min`-byte fixed part, the declared length (`declared`,
/// read once the fixed part is known present) must be at least `min`
/// (else `Malformed` on `field` with `reason`), and `buf` must hold it.
#[inline]
pub(crate) fn check_declared_len(
    layer: Layer,
    buf: &[u8],
    min: usize,
    declared: impl FnOnce() -> usize,
    field: &'static str,
    reason: &'static str,
) -> Result<()> {
    check_len(layer, buf, min)?;
    let len = declared();
    if len < min {
        return Err(Error::Malformed {
            layer,
            field,
            reason,
        });
    }
    check_len(layer, buf, len)
}

/// Returns `Err(BufferTooSmall)` when `buf` is shorter than `needed`.
#[inline]
pub(crate) fn check_room(layer: Layer, buf: &[u8], needed: usize) -> Result<()> {
    check_len(layer, buf, needed).map_err(|_| Error::BufferTooSmall {
        layer,
        needed,
        available: buf.len(),
    })
}

/// Reads a big-endian u16 at `at`. The caller guarantees the bounds.
#[inline]
pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    view::FieldValue::read(buf, at)
}

/// Reads a big-endian u32 at `at`. The caller guarantees the bounds.
#[inline]
pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    view::FieldValue::read(buf, at)
}

/// Writes a big-endian u16 at `at`. The caller guarantees the bounds.
#[inline]
pub(crate) fn write_u16(buf: &mut [u8], at: usize, value: u16) {
    view::FieldValue::write(value, buf, at)
}

/// Writes a big-endian u32 at `at`. The caller guarantees the bounds.
#[inline]
pub(crate) fn write_u32(buf: &mut [u8], at: usize, value: u32) {
    view::FieldValue::write(value, buf, at)
}

/// Assertions the protocol files' tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{ChecksumMode, Error, Layer, Result};

    /// Asserts that `check` reports every prefix of `bytes` shorter than
    /// `up_to` bytes as [`Error::Truncated`].
    pub(crate) fn assert_prefixes_truncated<'a, V>(
        bytes: &'a [u8],
        up_to: usize,
        check: impl Fn(&'a [u8]) -> Result<V>,
    ) {
        for len in 0..up_to {
            assert!(
                matches!(check(&bytes[..len]), Err(Error::Truncated { .. })),
                "a prefix of {len} bytes was not reported as truncated"
            );
        }
    }

    /// Asserts that `parse` rejects `bad` (bytes with a wrong `layer`
    /// checksum) under [`ChecksumMode::Verify`] and accepts it under
    /// [`ChecksumMode::Trust`].
    pub(crate) fn assert_checksum_checked<R>(
        layer: Layer,
        bad: &[u8],
        parse: impl Fn(&[u8], ChecksumMode) -> Result<R>,
    ) {
        assert_eq!(
            parse(bad, ChecksumMode::Verify).err(),
            Some(Error::Checksum { layer }),
            "a bad {layer} checksum was not reported"
        );
        assert!(
            parse(bad, ChecksumMode::Trust).is_ok(),
            "a bad {layer} checksum was checked under ChecksumMode::Trust"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_sentences_naming_the_layer() {
        let e = Error::Truncated {
            layer: Layer::Ipv4,
            needed: 20,
            available: 13,
        };
        assert_eq!(
            e.to_string(),
            "the IPv4 header is truncated: it needs 20 bytes but only 13 are present"
        );
        assert_eq!(e.layer(), Layer::Ipv4);
        let e = Error::Version {
            layer: Layer::Geneve,
            version: 1,
        };
        assert_eq!(e.to_string(), "Geneve version 1 is not supported");
    }

    #[test]
    fn check_len_and_room() {
        assert!(check_len(Layer::Udp, &[0; 8], 8).is_ok());
        assert_eq!(
            check_len(Layer::Udp, &[0; 7], 8),
            Err(Error::Truncated {
                layer: Layer::Udp,
                needed: 8,
                available: 7
            })
        );
        assert!(matches!(
            check_room(Layer::Tcp, &[0; 3], 20),
            Err(Error::BufferTooSmall { needed: 20, .. })
        ));
    }
}
