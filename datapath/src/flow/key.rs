//! The flow key: every header and metadata field the flow program can match,
//! packed into [`KEY_WORDS`] 64-bit words, and [`extract`], the one parse per
//! packet that fills it.
//!
//! A [`FlowKey`] is plain data: a mask is the same struct, `key & mask` is
//! word-wise, and hashing and masked comparison loop over words with no
//! per-field branches (the layout of OVS's `struct flow`, without the
//! miniflow compression). The hot path hashes and compares only the words
//! the current program can look at ([`FlowKey::hash_words`],
//! [`FlowKey::eq_words`]): a few words instead of [`KEY_WORDS`]. Each field lives at a fixed `(word, shift, bits)`
//! place described by [`Field`]; values are read and written through
//! [`FlowKey::get`] and [`FlowKey::set`]. Fields wider than 64 bits (IPv6
//! addresses) span two consecutive words, high word first.
//!
//! Invariants: bits of a word that belong to no field are always zero in
//! keys produced by [`extract`] and in masks built from fields, so word-wise
//! equality is field-wise equality. [`extract`] never panics and never reads
//! out of bounds: a truncated header leaves the fields it would have filled
//! at zero (OVS behaviour), so malformed packets still classify. Headers
//! are read through `wire` views over length-checked sub-slices.
//!
//! Thread-safety: `FlowKey` is `Copy` data with no interior mutability.

use std::fmt;

use crate::packet::PortNo;
use crate::wire::{
    arp, ethernet, ipv4, ipv6, sctp, tcp, udp, vlan, ArpPacket, EtherType, EthernetFrame,
    Icmpv4Packet, Ipv4Packet, Ipv6Packet, SctpPacket, TcpPacket, UdpPacket, VlanPacket,
};

/// Number of 64-bit words in a [`FlowKey`].
pub const KEY_WORDS: usize = 24;
const _: () = assert!(
    KEY_WORDS.is_multiple_of(3),
    "hash lanes need a multiple of 3 words"
);

/// Ethertypes the extractor understands.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol numbers the extractor understands.
pub mod ipproto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// `ip_frag` bits (OVS `FLOW_NW_FRAG_*`).
pub mod frag {
    /// The packet is a fragment (first or later).
    pub const ANY: u8 = 1;
    /// The packet is a fragment with a non-zero offset (no L4 header).
    pub const LATER: u8 = 2;
}

/// The `vlan_tci` bit that says a tag is present (OVS convention: the CFI
/// bit, which Ethernet never sets).
pub const VLAN_CFI: u16 = 0x1000;

/// `ct_state` bits (OVS values).
pub mod ct_state {
    /// Start of a new connection.
    pub const NEW: u8 = 0x01;
    /// Part of an established connection.
    pub const EST: u8 = 0x02;
    /// Related to an established connection.
    pub const REL: u8 = 0x04;
    /// In the reply direction.
    pub const RPL: u8 = 0x08;
    /// Invalid (could not be tracked).
    pub const INV: u8 = 0x10;
    /// Tracked: conntrack has seen the packet.
    pub const TRK: u8 = 0x20;
    /// Source NAT applied.
    pub const SNAT: u8 = 0x40;
    /// Destination NAT applied.
    pub const DNAT: u8 = 0x80;
    /// Names in bit order, for text syntax.
    pub const NAMES: [(&str, u8); 8] = [
        ("new", NEW),
        ("est", EST),
        ("rel", REL),
        ("rpl", RPL),
        ("inv", INV),
        ("trk", TRK),
        ("snat", SNAT),
        ("dnat", DNAT),
    ];
}

/// TCP flag names in bit order (the low 9 bits of `tcp_flags`).
pub const TCP_FLAG_NAMES: [(&str, u16); 9] = [
    ("fin", 0x001),
    ("syn", 0x002),
    ("rst", 0x004),
    ("psh", 0x008),
    ("ack", 0x010),
    ("urg", 0x020),
    ("ece", 0x040),
    ("cwr", 0x080),
    ("ns", 0x100),
];

/// How a field's value is written in flow text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldFormat {
    /// Decimal or `0x` hex integer, hex when printed.
    Hex,
    /// Decimal integer, decimal when printed.
    Decimal,
    /// An OpenFlow port number or name (`LOCAL`).
    Port,
    /// `aa:bb:cc:dd:ee:ff`.
    Mac,
    /// Dotted quad, CIDR prefix or dotted mask.
    Ipv4,
    /// RFC 5952 address, optional prefix length.
    Ipv6,
    /// `ct_state` flags (`+trk+est`).
    CtState,
    /// `tcp_flags` flags (`+syn-ack`).
    TcpFlags,
    /// `ip_frag` keywords (`no`, `first`, `later`, `yes`, `not_later`).
    Frag,
}

/// What a packet must be for a field to be meaningful (OpenFlow
/// prerequisites). Matching a field without its prerequisite is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prereq {
    /// Always meaningful.
    None,
    /// `dl_type` IPv4.
    Ipv4,
    /// `dl_type` IPv4 or IPv6.
    Ip,
    /// `dl_type` IPv6.
    Ipv6,
    /// `dl_type` ARP.
    Arp,
    /// IPv4/IPv6 with `nw_proto` TCP, UDP or SCTP.
    L4Ports,
    /// IPv4/IPv6 TCP.
    Tcp,
    /// IPv4 ICMP or IPv6 ICMPv6.
    Icmp,
}

macro_rules! fields {
    ($($(#[$doc:meta])* $name:ident = $text:literal, $word:expr, $shift:expr, $bits:expr, $fmt:ident, $pre:ident, $wr:expr;)*) => {
        /// A matchable (and possibly writable) field of the [`FlowKey`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Field {
            $($(#[$doc])* $name,)*
        }

        impl Field {
            /// Every field, in canonical printing order.
            pub const ALL: &'static [Field] = &[$(Field::$name,)*];

            /// The field's name in flow text.
            pub fn name(self) -> &'static str {
                match self { $(Field::$name => $text,)* }
            }

            #[inline(always)]
            fn place(self) -> (usize, u32, u32) {
                match self { $(Field::$name => ($word, $shift, $bits),)* }
            }

            /// How values are written in flow text.
            pub fn format(self) -> FieldFormat {
                match self { $(Field::$name => FieldFormat::$fmt,)* }
            }

            /// The prerequisite for matching this field.
            pub fn prereq(self) -> Prereq {
                match self { $(Field::$name => Prereq::$pre,)* }
            }

            /// True when `set_field`/`load` may write this field.
            pub fn writable(self) -> bool {
                match self { $(Field::$name => $wr,)* }
            }
        }
    };
}

fields! {
    /// Ingress port.
    InPort = "in_port", 0, 0, 16, Port, None, false;
    /// Recirculation id: 0 on ingress, `table + 1` after `ct(table=N)`.
    RecircId = "recirc_id", 4, 56, 8, Hex, None, false;
    /// Ethernet source.
    DlSrc = "dl_src", 1, 0, 48, Mac, None, true;
    /// Ethernet destination.
    DlDst = "dl_dst", 2, 0, 48, Mac, None, true;
    /// Ethertype (inner, after one VLAN tag).
    DlType = "dl_type", 0, 16, 16, Hex, None, false;
    /// VLAN TCI with [`VLAN_CFI`] set when tagged, 0 when untagged.
    VlanTci = "vlan_tci", 0, 32, 16, Hex, None, false;
    /// IPv4 source.
    NwSrc = "nw_src", 3, 0, 32, Ipv4, Ipv4, true;
    /// IPv4 destination.
    NwDst = "nw_dst", 3, 32, 32, Ipv4, Ipv4, true;
    /// IP protocol / IPv6 next header.
    NwProto = "nw_proto", 0, 48, 8, Decimal, Ip, false;
    /// IP TOS / traffic class byte.
    NwTos = "nw_tos", 0, 56, 8, Decimal, Ip, false;
    /// IP TTL / hop limit.
    NwTtl = "nw_ttl", 1, 48, 8, Decimal, Ip, true;
    /// Fragment bits, see [`frag`].
    IpFrag = "ip_frag", 1, 56, 8, Frag, Ip, false;
    /// IPv6 source.
    Ipv6Src = "ipv6_src", 16, 0, 128, Ipv6, Ipv6, false;
    /// IPv6 destination.
    Ipv6Dst = "ipv6_dst", 18, 0, 128, Ipv6, Ipv6, false;
    /// TCP/UDP/SCTP source port.
    TpSrc = "tp_src", 4, 0, 16, Decimal, L4Ports, true;
    /// TCP/UDP/SCTP destination port.
    TpDst = "tp_dst", 4, 16, 16, Decimal, L4Ports, true;
    /// TCP flags (low 12 bits of the offset/flags word).
    TcpFlags = "tcp_flags", 2, 48, 12, TcpFlags, Tcp, false;
    /// ICMP type.
    IcmpType = "icmp_type", 5, 48, 8, Decimal, Icmp, false;
    /// ICMP code.
    IcmpCode = "icmp_code", 5, 56, 8, Decimal, Icmp, false;
    /// ARP opcode.
    ArpOp = "arp_op", 6, 48, 16, Decimal, Arp, false;
    /// ARP sender protocol address.
    ArpSpa = "arp_spa", 20, 0, 32, Ipv4, Arp, false;
    /// ARP target protocol address.
    ArpTpa = "arp_tpa", 20, 32, 32, Ipv4, Arp, false;
    /// ARP sender hardware address.
    ArpSha = "arp_sha", 5, 0, 48, Mac, Arp, false;
    /// ARP target hardware address.
    ArpTha = "arp_tha", 6, 0, 48, Mac, Arp, false;
    /// Tunnel id (Geneve VNI).
    TunId = "tun_id", 7, 0, 64, Hex, None, true;
    /// Tunnel outer IPv4 source.
    TunSrc = "tun_src", 8, 0, 32, Ipv4, None, true;
    /// Tunnel outer IPv4 destination.
    TunDst = "tun_dst", 8, 32, 32, Ipv4, None, true;
    /// Class of the one Geneve option the key carries.
    TunGnvClass = "tun_gnv_class", 9, 0, 16, Hex, None, true;
    /// Type of the one Geneve option the key carries.
    TunGnvType = "tun_gnv_type", 9, 16, 8, Hex, None, true;
    /// First 8 bytes of the Geneve option's value.
    TunMetadata0 = "tun_metadata0", 10, 0, 64, Hex, None, true;
    /// Connection tracking state, see [`ct_state`].
    CtState = "ct_state", 4, 48, 8, CtState, None, false;
    /// Connection tracking zone.
    CtZone = "ct_zone", 4, 32, 16, Decimal, None, false;
    /// Connection tracking mark.
    CtMark = "ct_mark", 9, 32, 32, Hex, None, false;
    /// Connection tracking label (128 bits).
    CtLabel = "ct_label", 21, 0, 128, Hex, None, false;
    /// Register 0.
    Reg0 = "reg0", 12, 0, 32, Hex, None, true;
    /// Register 1.
    Reg1 = "reg1", 12, 32, 32, Hex, None, true;
    /// Register 2.
    Reg2 = "reg2", 13, 0, 32, Hex, None, true;
    /// Register 3.
    Reg3 = "reg3", 13, 32, 32, Hex, None, true;
    /// Register 4.
    Reg4 = "reg4", 14, 0, 32, Hex, None, true;
    /// Register 5.
    Reg5 = "reg5", 14, 32, 32, Hex, None, true;
    /// Register 6.
    Reg6 = "reg6", 15, 0, 32, Hex, None, true;
    /// Register 7.
    Reg7 = "reg7", 15, 32, 32, Hex, None, true;
    /// 64-bit metadata carried between tables.
    Metadata = "metadata", 11, 0, 64, Hex, None, true;
}

impl Field {
    /// Width in bits.
    pub fn bits(self) -> u32 {
        self.place().2
    }

    /// The all-ones value for this field.
    pub fn max_value(self) -> u128 {
        let b = self.bits();
        if b == 128 {
            u128::MAX
        } else {
            (1u128 << b) - 1
        }
    }

    /// Looks a field up by its flow-text name (and a few OVS aliases).
    pub fn from_name(name: &str) -> Option<Field> {
        let canonical = match name {
            "eth_src" => "dl_src",
            "eth_dst" => "dl_dst",
            "eth_type" => "dl_type",
            "ip_src" => "nw_src",
            "ip_dst" => "nw_dst",
            "ip_proto" => "nw_proto",
            "ip_ttl" => "nw_ttl",
            "nw_frag" => "ip_frag",
            "tcp_src" | "udp_src" | "sctp_src" => "tp_src",
            "tcp_dst" | "udp_dst" | "sctp_dst" => "tp_dst",
            "tun_ipv4_src" => "tun_src",
            "tun_ipv4_dst" => "tun_dst",
            "icmpv6_type" => "icmp_type",
            "icmpv6_code" => "icmp_code",
            other => other,
        };
        if let Some(rest) = canonical.strip_prefix("NXM_NX_REG") {
            return rest.parse::<u8>().ok().and_then(|n| Field::reg(n as usize));
        }
        Field::ALL.iter().copied().find(|f| f.name() == canonical)
    }

    /// Register `n` (0–7).
    pub fn reg(n: usize) -> Option<Field> {
        const REGS: [Field; 8] = [
            Field::Reg0,
            Field::Reg1,
            Field::Reg2,
            Field::Reg3,
            Field::Reg4,
            Field::Reg5,
            Field::Reg6,
            Field::Reg7,
        ];
        REGS.get(n).copied()
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the L3 and L4 headers of a frame start, found by [`extract`] and
/// used by actions that rewrite header bytes. An offset of 0 means "absent".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layout {
    /// Offset of the IPv4/IPv6/ARP header.
    pub l3: u16,
    /// Offset of the TCP/UDP/SCTP/ICMP header.
    pub l4: u16,
}

/// The parsed header and metadata fields of one packet, or a mask over them.
#[derive(Clone, Copy, Eq, Default)]
#[repr(C, align(64))]
pub struct FlowKey {
    /// The packed fields; see [`Field`] for the layout.
    pub w: [u64; KEY_WORDS],
}

impl PartialEq for FlowKey {
    /// Word-wise and branch-free (the derived comparison of a 192-byte
    /// array calls `memcmp`, which shows in EMC hit profiles).
    #[inline]
    fn eq(&self, other: &FlowKey) -> bool {
        let mut diff = 0u64;
        for i in 0..KEY_WORDS {
            diff |= self.w[i] ^ other.w[i];
        }
        diff == 0
    }
}

impl std::hash::Hash for FlowKey {
    /// Consistent with `==`: the same words.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.w.hash(state);
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlowKey{")?;
        let mut first = true;
        for &field in Field::ALL {
            let v = self.get(field);
            if v != 0 {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{}={:#x}", field.name(), v)?;
            }
        }
        f.write_str("}")
    }
}

/// Finaliser of MurmurHash3: full avalanche of a 64-bit value.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;
const HASH_SEED0: u64 = 0x243f_6a88_85a3_08d3;
const HASH_SEED1: u64 = 0x1319_8a2e_0370_7344;
const HASH_SEED2: u64 = 0xa409_3822_299f_31d0;

impl FlowKey {
    /// The all-zero key (also the empty mask).
    pub const ZERO: FlowKey = FlowKey { w: [0; KEY_WORDS] };

    /// Reads `field`.
    #[inline]
    pub fn get(&self, field: Field) -> u128 {
        let (word, shift, bits) = field.place();
        if bits == 128 {
            (u128::from(self.w[word]) << 64) | u128::from(self.w[word + 1])
        } else if bits == 64 {
            u128::from(self.w[word])
        } else {
            u128::from((self.w[word] >> shift) & ((1u64 << bits) - 1))
        }
    }

    /// Writes `field`; bits of `value` beyond the field's width are ignored.
    #[inline]
    pub fn set(&mut self, field: Field, value: u128) {
        let (word, shift, bits) = field.place();
        if bits == 128 {
            self.w[word] = (value >> 64) as u64;
            self.w[word + 1] = value as u64;
        } else if bits == 64 {
            self.w[word] = value as u64;
        } else {
            let m = ((1u64 << bits) - 1) << shift;
            self.w[word] = (self.w[word] & !m) | (((value as u64) << shift) & m);
        }
    }

    /// Writes the bits of `value` selected by `mask` into `field`.
    #[inline]
    pub fn set_masked(&mut self, field: Field, value: u128, mask: u128) {
        // One lookup of the field's place and a masked merge per word
        // (was a `get` and a `set`, each a lookup and 128-bit arithmetic:
        // the encap list's tunnel-field sets run it per packet).
        let (word, shift, bits) = field.place();
        let merge = |w: &mut u64, v: u64, m: u64| *w = (*w & !m) | (v & m);
        if bits == 128 {
            merge(&mut self.w[word], (value >> 64) as u64, (mask >> 64) as u64);
            merge(&mut self.w[word + 1], value as u64, mask as u64);
        } else {
            let width = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let m = ((mask as u64) & width) << shift;
            merge(&mut self.w[word], (value as u64) << shift, m);
        }
    }

    /// Word-wise AND.
    #[inline]
    pub fn and(&self, mask: &FlowKey) -> FlowKey {
        let mut out = FlowKey::ZERO;
        for i in 0..KEY_WORDS {
            out.w[i] = self.w[i] & mask.w[i];
        }
        out
    }

    /// Word-wise OR into `self` (mask union).
    #[inline]
    pub fn or_assign(&mut self, other: &FlowKey) {
        for i in 0..KEY_WORDS {
            self.w[i] |= other.w[i];
        }
    }

    /// True when `self & mask == masked` (masked is already masked).
    #[inline]
    pub fn matches_masked(&self, mask: &FlowKey, masked: &FlowKey) -> bool {
        let mut diff = 0u64;
        for i in 0..KEY_WORDS {
            diff |= (self.w[i] & mask.w[i]) ^ masked.w[i];
        }
        diff == 0
    }

    /// True when every bit of `self` is also set in `other` (as masks).
    pub fn is_subset_of(&self, other: &FlowKey) -> bool {
        (0..KEY_WORDS).all(|i| self.w[i] & !other.w[i] == 0)
    }

    /// The 64-bit hash of the whole key. Three independent lanes keep the
    /// multiply chain short; the final mix avalanches every input bit.
    #[inline]
    pub fn hash(&self) -> u64 {
        let (mut a, mut b, mut c) = (HASH_SEED0, HASH_SEED1, HASH_SEED2);
        for w in self.w.chunks_exact(3) {
            a = (a.rotate_left(23) ^ w[0]).wrapping_mul(HASH_MUL);
            b = (b.rotate_left(23) ^ w[1]).wrapping_mul(HASH_MUL);
            c = (c.rotate_left(23) ^ w[2]).wrapping_mul(HASH_MUL);
        }
        fmix64(a ^ b.rotate_left(21) ^ c.rotate_left(42))
    }

    /// The hash of the words of `self` at the indices in `words` (the live
    /// words of a program: the non-zero words of its live mask, see
    /// `classifier::slowpath::live_mask`): two keys equal on those
    /// words hash alike. Two independent lanes keep the multiply chain
    /// short; a program that matches few fields hashes a few words
    /// instead of [`KEY_WORDS`].
    #[inline]
    pub fn hash_words(&self, words: &[u8]) -> u64 {
        let (mut a, mut b) = (HASH_SEED0, HASH_SEED1);
        let mut pairs = words.chunks_exact(2);
        for p in &mut pairs {
            a = (a.rotate_left(23) ^ self.w[usize::from(p[0])]).wrapping_mul(HASH_MUL);
            b = (b.rotate_left(23) ^ self.w[usize::from(p[1])]).wrapping_mul(HASH_MUL);
        }
        if let [i] = pairs.remainder() {
            a = (a.rotate_left(23) ^ self.w[usize::from(*i)]).wrapping_mul(HASH_MUL);
        }
        fmix64(a ^ b.rotate_left(32) ^ words.len() as u64)
    }

    /// True when `self` and `other` are equal on the words at the indices
    /// in `words`.
    #[inline]
    pub fn eq_words(&self, other: &FlowKey, words: &[u8]) -> bool {
        let mut diff = 0u64;
        for &i in words {
            let i = usize::from(i);
            diff |= self.w[i] ^ other.w[i];
        }
        diff == 0
    }

    /// The hash of `self` on the bits of `live` only, over the word
    /// indices in `words` (the non-zero words of `live`): equal to
    /// `self.and(live).hash_words(words)`, so keys that differ only
    /// outside `live` hash alike. The EMC's hash (`live`: the program's
    /// live mask).
    #[inline]
    pub fn hash_live(&self, live: &FlowKey, words: &[u8]) -> u64 {
        let (mut a, mut b) = (HASH_SEED0, HASH_SEED1);
        let mut pairs = words.chunks_exact(2);
        for p in &mut pairs {
            let (i, j) = (usize::from(p[0]), usize::from(p[1]));
            a = (a.rotate_left(23) ^ (self.w[i] & live.w[i])).wrapping_mul(HASH_MUL);
            b = (b.rotate_left(23) ^ (self.w[j] & live.w[j])).wrapping_mul(HASH_MUL);
        }
        if let [i] = pairs.remainder() {
            let i = usize::from(*i);
            a = (a.rotate_left(23) ^ (self.w[i] & live.w[i])).wrapping_mul(HASH_MUL);
        }
        fmix64(a ^ b.rotate_left(32) ^ words.len() as u64)
    }

    /// True when `self` and `other` agree on every bit of `live` in the
    /// words at the indices in `words` (the non-zero words of `live`).
    #[inline]
    pub fn eq_live(&self, other: &FlowKey, live: &FlowKey, words: &[u8]) -> bool {
        let mut diff = 0u64;
        for &i in words {
            let i = usize::from(i);
            diff |= (self.w[i] ^ other.w[i]) & live.w[i];
        }
        diff == 0
    }

    /// True when `self` and `other` agree on every bit of `mask`: one
    /// branch-free pass over the whole key (vectorised), for keys already
    /// in cache (the pipeline's batch check); [`FlowKey::eq_live`] reads
    /// only the mask's words, for keys that may not be.
    #[inline]
    pub fn eq_masked(&self, other: &FlowKey, mask: &FlowKey) -> bool {
        let mut diff = 0u64;
        for i in 0..KEY_WORDS {
            diff |= (self.w[i] ^ other.w[i]) & mask.w[i];
        }
        diff == 0
    }

    /// The hash of `self & mask`, equal to `self.and(mask).hash()`.
    #[inline]
    pub fn hash_masked(&self, mask: &FlowKey) -> u64 {
        let (mut a, mut b, mut c) = (HASH_SEED0, HASH_SEED1, HASH_SEED2);
        for (w, m) in self.w.chunks_exact(3).zip(mask.w.chunks_exact(3)) {
            a = (a.rotate_left(23) ^ (w[0] & m[0])).wrapping_mul(HASH_MUL);
            b = (b.rotate_left(23) ^ (w[1] & m[1])).wrapping_mul(HASH_MUL);
            c = (c.rotate_left(23) ^ (w[2] & m[2])).wrapping_mul(HASH_MUL);
        }
        fmix64(a ^ b.rotate_left(21) ^ c.rotate_left(42))
    }

    /// The hash of `self & mask` over only the word indices in `words`
    /// (the non-zero words of `mask`, as a megaflow subtable keeps them).
    /// Both sides of a comparison must use the same `words`.
    #[inline]
    pub fn hash_masked_words(&self, mask: &FlowKey, words: &[u8]) -> u64 {
        let mut h = HASH_SEED0;
        for &i in words {
            let i = usize::from(i);
            h = (h.rotate_left(23) ^ (self.w[i] & mask.w[i])).wrapping_mul(HASH_MUL);
        }
        fmix64(h)
    }

    /// True when `self & mask == masked` on the word indices in `words`.
    #[inline]
    pub fn matches_masked_words(&self, mask: &FlowKey, masked: &FlowKey, words: &[u8]) -> bool {
        let mut diff = 0u64;
        for &i in words {
            let i = usize::from(i);
            diff |= (self.w[i] & mask.w[i]) ^ masked.w[i];
        }
        diff == 0
    }

    /// Indices of the non-zero words of this mask.
    pub fn nonzero_words(&self) -> Vec<u8> {
        (0..KEY_WORDS)
            .filter(|&i| self.w[i] != 0)
            .map(|i| i as u8)
            .collect()
    }

    /// The mask with every bit of `field` set.
    pub fn field_mask(field: Field) -> FlowKey {
        let mut m = FlowKey::ZERO;
        m.set(field, field.max_value());
        m
    }

    /// The ingress port.
    pub fn in_port(&self) -> PortNo {
        PortNo(self.get(Field::InPort) as u16)
    }

    /// The (inner) ethertype.
    pub fn dl_type(&self) -> u16 {
        self.get(Field::DlType) as u16
    }

    /// The IP protocol (0 for non-IP).
    pub fn nw_proto(&self) -> u8 {
        self.get(Field::NwProto) as u8
    }
}

/// Every word index of a key, in order: the live words of a program that
/// could look at anything.
pub const ALL_WORDS: [u8; KEY_WORDS] = {
    let mut w = [0u8; KEY_WORDS];
    let mut i = 0;
    while i < KEY_WORDS {
        w[i] = i as u8;
        i += 1;
    }
    w
};

/// Parses `frame` (untrusted bytes) into a flow key with `in_port` set.
///
/// One tagged VLAN (802.1Q or 802.1ad) is understood; IPv4 options are
/// skipped by IHL; IPv6 is classified by its fixed header (next header,
/// addresses, hop limit, traffic class) and, when the next header is TCP,
/// UDP, SCTP or ICMPv6 directly, its L4 fields (extension headers are not
/// walked). Truncated headers leave their fields zero.
pub fn extract(frame: &[u8], in_port: PortNo) -> FlowKey {
    extract_with_layout(frame, in_port).0
}

/// [`extract`], also returning where the L3 and L4 headers start.
pub fn extract_with_layout(frame: &[u8], in_port: PortNo) -> (FlowKey, Layout) {
    let mut k = FlowKey::ZERO;
    let layout = extract_into(frame, in_port, &mut k);
    (k, layout)
}

/// [`extract`] into a caller-owned key (overwritten entirely), returning
/// where the L3 and L4 headers start. The hot path uses this to avoid
/// moving the 192-byte key around.
///
/// Headers are read through `wire` views built with `new_unchecked` over
/// sub-slices whose length was checked first (the checks this function
/// has always made), so no getter can panic and no length is re-checked.
///
/// The Ethernet/IPv4 fields (key words 0 to 5) are gathered in
/// registers ([`Head`]: a field write is a shift and an OR, not a
/// read-modify-write of the key in memory) and the key is written once,
/// zeros included; IPv6 and ARP, out of line, write their fields into
/// `out` after that store.
#[inline]
pub fn extract_into(frame: &[u8], in_port: PortNo, out: &mut FlowKey) -> Layout {
    let mut h = Head::default();
    let mut layout = Layout::default();
    h.put(Field::InPort, in_port.0);
    let Some(eth) = frame.get(..ethernet::HEADER_LEN) else {
        h.store(out);
        return layout;
    };
    let eth = EthernetFrame::new_unchecked(eth);
    h.put(Field::DlDst, eth.dst_addr().to_u64());
    h.put(Field::DlSrc, eth.src_addr().to_u64());
    let mut ty = u16::from(eth.ethertype());
    let mut off = ethernet::HEADER_LEN;
    if ty == ethertype::VLAN || ty == ethertype::QINQ {
        let Some(tag) = frame.get(off..off + vlan::HEADER_LEN) else {
            h.store(out);
            return layout;
        };
        let tag = VlanPacket::new_unchecked(tag);
        h.put(Field::VlanTci, tag.tci() | VLAN_CFI);
        ty = u16::from(tag.ethertype());
        off += vlan::HEADER_LEN;
    }
    h.put(Field::DlType, ty);
    match ty {
        ethertype::IPV4 => {
            extract_ipv4(frame, off, &mut h, &mut layout);
            h.store(out);
        }
        ethertype::IPV6 => {
            h.store(out);
            extract_ipv6(frame, off, out, &mut layout);
        }
        ethertype::ARP => {
            h.store(out);
            extract_arp(frame, off, out, &mut layout);
        }
        _ => h.store(out),
    }
    layout
}

/// Words of the key the parse writes most: [`Field`]s of at most 48 bits
/// in words `0..HEAD_WORDS` (Ethernet, VLAN, IPv4, L4 ports and flags,
/// ICMP type and code).
const HEAD_WORDS: usize = 6;

/// The first [`HEAD_WORDS`] words of a key being parsed, held in
/// registers by the compiler (every field place is a constant once
/// inlined); each field is written at most once per parse, so a write is
/// an OR into zero bits.
#[derive(Default)]
struct Head {
    w: [u64; HEAD_WORDS],
}

impl Head {
    /// ORs `value` (cut to the field's width, which costs nothing when
    /// its type is no wider) into `field`'s place; a field outside the
    /// head words is ignored (none of the callers writes one: the unit
    /// tests compare with the oracle parser).
    #[inline(always)]
    fn put<T: Into<u64>>(&mut self, field: Field, value: T) {
        let (word, shift, bits) = field.place();
        debug_assert!(
            bits < 64 && word < HEAD_WORDS,
            "{field:?} is not a head field"
        );
        let mut v: u64 = value.into();
        if 8 * std::mem::size_of::<T>() as u32 > bits {
            v &= (1u64 << (bits & 63)) - 1;
        }
        if let Some(w) = self.w.get_mut(word) {
            *w |= v << shift;
        }
    }

    /// The whole key: these words, the rest zero.
    #[inline(always)]
    fn store(&self, out: &mut FlowKey) {
        *out = FlowKey::ZERO;
        out.w[..HEAD_WORDS].copy_from_slice(&self.w);
    }
}

/// Where the L4 parse writes its fields: the registers of an IPv4 parse
/// or the key of an IPv6 one.
trait L4Sink {
    fn put_l4<T: Into<u64>>(&mut self, field: Field, value: T);
}

impl L4Sink for Head {
    #[inline(always)]
    fn put_l4<T: Into<u64>>(&mut self, field: Field, value: T) {
        self.put(field, value);
    }
}

impl L4Sink for FlowKey {
    #[inline(always)]
    fn put_l4<T: Into<u64>>(&mut self, field: Field, value: T) {
        self.set(field, u128::from(value.into()));
    }
}

// Inlined into `extract_into` (the hot IPv4 path): `layout` then stays in
// registers; out of line, its two 16-bit fields were stored separately
// and reloaded as one 32-bit value (a store-forwarding stall that the
// pipeline's parse stage profile showed at the call's return).
#[inline(always)]
fn extract_ipv4(frame: &[u8], off: usize, k: &mut Head, layout: &mut Layout) {
    let Some(hdr) = frame.get(off..off + ipv4::HEADER_LEN) else {
        return;
    };
    let ip = Ipv4Packet::new_unchecked(hdr);
    let ihl = usize::from(ip.header_len());
    if ip.version() != 4 || ihl < ipv4::HEADER_LEN || frame.len() < off + ihl {
        return;
    }
    layout.l3 = off as u16;
    let proto = u8::from(ip.next_header());
    k.put(Field::NwTos, ip.tos());
    k.put(Field::NwTtl, ip.hop_limit());
    k.put(Field::NwProto, proto);
    k.put(Field::NwSrc, u32::from(ip.src_addr()));
    k.put(Field::NwDst, u32::from(ip.dst_addr()));
    let later = ip.frag_offset() != 0;
    let mut frag_bits = 0u8;
    if ip.more_frags() || later {
        frag_bits |= frag::ANY;
    }
    if later {
        frag_bits |= frag::LATER;
    }
    k.put(Field::IpFrag, frag_bits);
    if !later {
        extract_l4(frame, off + ihl, proto, ipproto::ICMP, k, layout);
    }
}

fn extract_ipv6(frame: &[u8], off: usize, k: &mut FlowKey, layout: &mut Layout) {
    let Some(hdr) = frame.get(off..off + ipv6::HEADER_LEN) else {
        return;
    };
    let ip = Ipv6Packet::new_unchecked(hdr);
    if ip.version() != 6 {
        return;
    }
    layout.l3 = off as u16;
    let next = u8::from(ip.next_header());
    k.set(Field::NwTos, u128::from(ip.traffic_class()));
    k.set(Field::NwProto, u128::from(next));
    k.set(Field::NwTtl, u128::from(ip.hop_limit()));
    k.set(Field::Ipv6Src, u128::from(ip.src_addr()));
    k.set(Field::Ipv6Dst, u128::from(ip.dst_addr()));
    extract_l4(
        frame,
        off + ipv6::HEADER_LEN,
        next,
        ipproto::ICMPV6,
        k,
        layout,
    );
}

#[inline(always)]
fn extract_l4<K: L4Sink>(
    frame: &[u8],
    off: usize,
    proto: u8,
    icmp: u8,
    k: &mut K,
    layout: &mut Layout,
) {
    match proto {
        ipproto::TCP => {
            if let Some(hdr) = frame.get(off..off + tcp::HEADER_LEN) {
                let tcp = TcpPacket::new_unchecked(hdr);
                layout.l4 = off as u16;
                k.put_l4(Field::TpSrc, tcp.src_port());
                k.put_l4(Field::TpDst, tcp.dst_port());
                k.put_l4(Field::TcpFlags, tcp.flags_bits());
            }
        }
        ipproto::UDP => {
            if let Some(hdr) = frame.get(off..off + udp::HEADER_LEN) {
                let udp = UdpPacket::new_unchecked(hdr);
                layout.l4 = off as u16;
                k.put_l4(Field::TpSrc, udp.src_port());
                k.put_l4(Field::TpDst, udp.dst_port());
            }
        }
        ipproto::SCTP => {
            if let Some(hdr) = frame.get(off..off + sctp::HEADER_LEN) {
                let sctp = SctpPacket::new_unchecked(hdr);
                layout.l4 = off as u16;
                k.put_l4(Field::TpSrc, sctp.src_port());
                k.put_l4(Field::TpDst, sctp.dst_port());
            }
        }
        p if p == icmp => {
            // ICMPv6 (RFC 4443) puts type and code where ICMPv4 does; only
            // those two bytes are read.
            if let Some(hdr) = frame.get(off..off + ICMP_TYPE_CODE_CHECKSUM) {
                let icmp = Icmpv4Packet::new_unchecked(hdr);
                layout.l4 = off as u16;
                k.put_l4(Field::IcmpType, u8::from(icmp.msg_type()));
                k.put_l4(Field::IcmpCode, icmp.msg_code());
            }
        }
        _ => {}
    }
}

/// Bytes of an ICMP header the key needs present (type, code, checksum),
/// OVS's minimum for filling `icmp_type`/`icmp_code`.
const ICMP_TYPE_CODE_CHECKSUM: usize = 4;

fn extract_arp(frame: &[u8], off: usize, k: &mut FlowKey, layout: &mut Layout) {
    // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
    let Some(hdr) = frame.get(off..off + arp::PACKET_LEN) else {
        return;
    };
    let arp = ArpPacket::new_unchecked(hdr);
    if arp.hardware_type() != arp::HTYPE_ETHERNET
        || arp.protocol_type() != EtherType::Ipv4
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
    {
        return;
    }
    layout.l3 = off as u16;
    k.set(Field::ArpOp, u128::from(u16::from(arp.operation())));
    k.set(
        Field::ArpSha,
        u128::from(arp.source_hardware_addr().to_u64()),
    );
    k.set(
        Field::ArpSpa,
        u128::from(u32::from(arp.source_protocol_addr())),
    );
    k.set(
        Field::ArpTha,
        u128::from(arp.target_hardware_addr().to_u64()),
    );
    k.set(
        Field::ArpTpa,
        u128::from(u32::from(arp.target_protocol_addr())),
    );
}

/// Test frames shared by the flow and classifier tests.
#[cfg(test)]
pub(crate) mod testpkt {
    /// An Ethernet/IPv4/TCP frame with valid checksums.
    pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = ttl;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = crate::flow::action::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 0x50;
        tcp[13] = 0x02;
        let c = l4_checksum(&f, 6);
        f[50..52].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// An Ethernet/IPv4/UDP frame with a valid UDP checksum.
    pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut f = tcp4(src, dst, sport, dport, 64);
        f.truncate(14 + 20 + 8);
        f[23] = 17;
        f[16..18].copy_from_slice(&28u16.to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let c = crate::flow::action::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[38..40].copy_from_slice(&8u16.to_be_bytes());
        f[40..42].copy_from_slice(&[0, 0]);
        let c = l4_checksum(&f, 17);
        f[40..42].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// The TCP/UDP checksum of an IPv4 frame from scratch (oracle).
    pub fn l4_checksum(f: &[u8], proto: u8) -> u16 {
        let l4 = &f[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(l4);
        let ck_off = if proto == 6 { 16 } else { 6 };
        pseudo[12 + ck_off] = 0;
        pseudo[12 + ck_off + 1] = 0;
        crate::flow::action::checksum(&pseudo)
    }

    /// An ARP request frame.
    pub fn arp_request(spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[28..32].copy_from_slice(&spa);
        f[38..42].copy_from_slice(&tpa);
        f
    }
}

#[cfg(test)]
#[path = "key_oracle.rs"]
mod oracle;

#[cfg(test)]
mod tests {
    use super::testpkt::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_is_three_cache_lines() {
        assert_eq!(std::mem::size_of::<FlowKey>(), 192);
        assert_eq!(std::mem::align_of::<FlowKey>(), 64);
    }

    #[test]
    fn field_places_do_not_overlap() {
        let mut seen = FlowKey::ZERO;
        for &f in Field::ALL {
            let m = FlowKey::field_mask(f);
            for i in 0..KEY_WORDS {
                assert_eq!(seen.w[i] & m.w[i], 0, "{f} overlaps another field");
            }
            seen.or_assign(&m);
            assert_eq!(m.get(f), f.max_value());
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn extract_tcp_over_vlan() {
        let plain = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1234, 80, 64);
        let mut f = plain[..12].to_vec();
        f.extend_from_slice(&[0x81, 0x00, 0x20, 0x05]);
        f.extend_from_slice(&plain[12..]);
        let (k, layout) = extract_with_layout(&f, PortNo(3));
        assert_eq!(k.in_port(), PortNo(3));
        assert_eq!(k.get(Field::VlanTci), 0x3005);
        assert_eq!(k.dl_type(), 0x0800);
        assert_eq!(k.get(Field::NwSrc), 0x0a00_0001);
        assert_eq!(k.get(Field::NwDst), 0x0a00_0002);
        assert_eq!(k.get(Field::TpSrc), 1234);
        assert_eq!(k.get(Field::TpDst), 80);
        assert_eq!(k.get(Field::TcpFlags), 0x002);
        assert_eq!(k.get(Field::NwTtl), 64);
        assert_eq!(layout, Layout { l3: 18, l4: 38 });
    }

    #[test]
    fn extract_arp_and_later_fragment() {
        let k = extract(&arp_request([10, 0, 0, 1], [10, 0, 0, 9]), PortNo(1));
        assert_eq!(k.dl_type(), 0x0806);
        assert_eq!(k.get(Field::ArpOp), 1);
        assert_eq!(k.get(Field::ArpSpa), 0x0a00_0001);
        assert_eq!(k.get(Field::ArpTpa), 0x0a00_0009);
        assert_eq!(k.get(Field::ArpSha), 0x0200_0000_0001);
        assert_eq!(k.get(Field::NwSrc), 0, "ARP does not alias IPv4 fields");

        let mut f = tcp4([1, 1, 1, 1], [2, 2, 2, 2], 5, 6, 9);
        f[20] = 0x00;
        f[21] = 0x10; // offset 16 * 8 bytes
        let k = extract(&f, PortNo(0));
        assert_eq!(k.get(Field::IpFrag), u128::from(frag::ANY | frag::LATER));
        assert_eq!(k.get(Field::TpDst), 0, "later fragments carry no L4");
    }

    #[test]
    fn extract_ipv6_udp() {
        let mut f = vec![0u8; 14 + 40 + 8];
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[14] = 0x60;
        f[20] = 17;
        f[21] = 33;
        f[22 + 15] = 1;
        f[38 + 15] = 2;
        f[54..56].copy_from_slice(&53u16.to_be_bytes());
        f[56..58].copy_from_slice(&5353u16.to_be_bytes());
        let k = extract(&f, PortNo(0));
        assert_eq!(k.dl_type(), 0x86dd);
        assert_eq!(k.nw_proto(), 17);
        assert_eq!(k.get(Field::NwTtl), 33);
        assert_eq!(k.get(Field::Ipv6Src), 1);
        assert_eq!(k.get(Field::Ipv6Dst), 2);
        assert_eq!(k.get(Field::TpSrc), 53);
        assert_eq!(k.get(Field::TpDst), 5353);
    }

    #[test]
    fn truncated_headers_leave_fields_zero() {
        let f = tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 3);
        for len in 0..f.len() {
            let k = extract(&f[..len], PortNo(0));
            if len < 14 {
                assert_eq!(k.get(Field::DlType), 0);
            }
            if len < 34 {
                assert_eq!(k.get(Field::NwSrc), 0, "len {len}");
            }
            if len < 54 {
                assert_eq!(k.get(Field::TpSrc), 0, "len {len}");
            }
        }
    }

    #[test]
    fn masked_hash_equals_hash_of_masked_key() {
        let k = extract(&tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 3), PortNo(4));
        let m = FlowKey::field_mask(Field::NwDst);
        assert_eq!(k.hash_masked(&m), k.and(&m).hash());
        assert_ne!(k.hash(), k.and(&m).hash());
    }

    proptest! {
        /// `set_masked` (one place lookup, word-wise merge) writes what
        /// the read-merge-write through `get` and `set` writes, for every
        /// field (64- and 128-bit ones included) and any value and mask,
        /// and leaves the other fields alone.
        #[test]
        fn set_masked_is_get_merge_set(
            words in proptest::collection::vec(any::<u64>(), KEY_WORDS),
            f in 0..Field::ALL.len(),
            value in any::<u128>(),
            mask in prop_oneof![Just(u128::MAX), Just(0xffu128), any::<u128>()],
        ) {
            let field = Field::ALL[f];
            let mut k = FlowKey::ZERO;
            k.w.copy_from_slice(&words);
            let mut want = k;
            let old = want.get(field);
            want.set(field, (old & !mask) | (value & mask));
            k.set_masked(field, value, mask);
            prop_assert_eq!(k, want);
        }

        #[test]
        fn extract_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), ty in 0usize..4) {
            let mut f = bytes;
            if f.len() >= 14 {
                let t = [0x0800u16, 0x86dd, 0x0806, 0x8100][ty];
                f[12..14].copy_from_slice(&t.to_be_bytes());
            }
            let (k, layout) = extract_with_layout(&f, PortNo(1));
            prop_assert!(usize::from(layout.l3) <= f.len());
            prop_assert!(usize::from(layout.l4) <= f.len());
            prop_assert_eq!(k.in_port(), PortNo(1));
        }

        #[test]
        fn extract_agrees_with_etherparse(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(), ttl in any::<u8>()) {
            let f = tcp4(src, dst, sp, dp, ttl);
            let k = extract(&f, PortNo(0));
            let p = etherparse::SlicedPacket::from_ethernet(&f).expect("valid frame");
            match p.net {
                Some(etherparse::NetSlice::Ipv4(ip)) => {
                    prop_assert_eq!(k.get(Field::NwSrc), u128::from(u32::from_be_bytes(ip.header().source())));
                    prop_assert_eq!(k.get(Field::NwTtl), u128::from(ip.header().ttl()));
                }
                _ => prop_assert!(false, "not ipv4"),
            }
            match p.transport {
                Some(etherparse::TransportSlice::Tcp(t)) => {
                    prop_assert_eq!(k.get(Field::TpSrc), u128::from(t.source_port()));
                    prop_assert_eq!(k.get(Field::TpDst), u128::from(t.destination_port()));
                }
                _ => prop_assert!(false, "not tcp"),
            }
        }

        /// The view-based extractor fills the same key and layout as the
        /// offset-based code it replaced, on well-formed, mutated and
        /// truncated frames of every kind it parses.
        #[test]
        fn extract_matches_the_offset_code(
            kind in 0usize..6, tagged in any::<bool>(),
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(),
            next in prop_oneof![Just(6u8), Just(17), Just(58), Just(132), any::<u8>()],
            muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let mut f = match kind {
                0 => tcp4(src, dst, sp, dp, 9),
                1 => udp4(src, dst, sp, dp),
                2 => arp_request(src, dst),
                3 => {
                    let mut f = tcp4(src, dst, sp, dp, 9);
                    f[23] = next; // any protocol over IPv4
                    f
                }
                4 => {
                    let mut f = vec![0u8; 14 + 40 + 20];
                    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                    f[14] = 0x6a;
                    f[15] = 0xb0;
                    f[20] = next;
                    f[21] = 7;
                    f[22..26].copy_from_slice(&src);
                    f[50..54].copy_from_slice(&dst);
                    f[54..56].copy_from_slice(&sp.to_be_bytes());
                    f[56..58].copy_from_slice(&dp.to_be_bytes());
                    f
                }
                _ => {
                    let mut f = tcp4(src, dst, sp, dp, 9);
                    f[20..22].copy_from_slice(&dp.to_be_bytes()); // fragments
                    f
                }
            };
            if tagged {
                f.splice(12..12, [0x81, 0x00, 0x30, 0x07]);
            }
            for (at, v) in muts {
                let n = f.len();
                f[at % n] = v;
            }
            if let Some(c) = cut {
                let n = f.len();
                f.truncate(c % (n + 1));
            }
            let (mut a, mut b) = (FlowKey::ZERO, FlowKey::ZERO);
            let la = extract_into(&f, PortNo(5), &mut a);
            let lb = oracle::extract_into(&f, PortNo(5), &mut b);
            prop_assert_eq!(la, lb);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn extract_arbitrary_bytes_matches_the_offset_code(
            bytes in proptest::collection::vec(any::<u8>(), 0..120), ty in 0usize..5,
        ) {
            let mut f = bytes;
            if f.len() >= 14 {
                let t = [0x0800u16, 0x86dd, 0x0806, 0x8100, 0x88a8][ty];
                f[12..14].copy_from_slice(&t.to_be_bytes());
            }
            let (mut a, mut b) = (FlowKey::ZERO, FlowKey::ZERO);
            prop_assert_eq!(extract_into(&f, PortNo(1), &mut a), oracle::extract_into(&f, PortNo(1), &mut b));
            prop_assert_eq!(a, b);
        }
    }
}
