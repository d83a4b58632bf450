//! Masked matches over the [`FlowKey`]: the match half of a flow rule.
//!
//! A [`Match`] is a value key and a mask of the same shape. Invariant:
//! `key == key & mask`, kept by every constructor and setter, so a packet
//! matches when `packet & mask == key`, a word-wise compare. Prerequisites
//! (OpenFlow's "nw_dst needs ip") are checked by [`Match::check_prereqs`]
//! when a rule enters a program, so a rule can never match a field that the
//! packet does not carry.
//!
//! Thread-safety: plain `Copy` data.

use super::key::{ethertype, ipproto, Field, FlowKey, Prereq};

/// Why a match is not acceptable in a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// A field was matched without the protocol it belongs to.
    #[error("{field} needs {needs} in the same match (for example `{hint},{field}=...`)")]
    MissingPrereq {
        /// The field matched.
        field: Field,
        /// What the match must also say.
        needs: &'static str,
        /// A protocol shorthand that satisfies it.
        hint: &'static str,
    },
}

/// A masked match: which bits of which fields must have which values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Match {
    key: FlowKey,
    mask: FlowKey,
}

impl Match {
    /// The match-everything match.
    pub const ANY: Match = Match {
        key: FlowKey::ZERO,
        mask: FlowKey::ZERO,
    };

    /// A match from a key and mask (the key is masked here).
    pub fn from_parts(key: &FlowKey, mask: &FlowKey) -> Match {
        Match {
            key: key.and(mask),
            mask: *mask,
        }
    }

    /// Requires `field & mask == value & mask`, replacing any earlier
    /// constraint on the field.
    pub fn set(&mut self, field: Field, value: u128, mask: u128) {
        let mask = mask & field.max_value();
        self.mask.set(field, mask);
        self.key.set(field, value & mask);
    }

    /// Requires `field == value` exactly.
    pub fn set_exact(&mut self, field: Field, value: u128) {
        self.set(field, value, field.max_value());
    }

    /// `(value, mask)` of `field`.
    pub fn get(&self, field: Field) -> (u128, u128) {
        (self.key.get(field), self.mask.get(field))
    }

    /// True when `field` is fully specified with value `value`.
    pub fn is_exact(&self, field: Field, value: u128) -> bool {
        self.get(field) == (value, field.max_value())
    }

    /// The masked key.
    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    /// The mask.
    pub fn mask(&self) -> &FlowKey {
        &self.mask
    }

    /// True when `pkt` satisfies this match.
    #[inline]
    pub fn matches(&self, pkt: &FlowKey) -> bool {
        pkt.matches_masked(&self.mask, &self.key)
    }

    /// Fields with a non-zero mask, in canonical order, as
    /// `(field, value, mask)`.
    pub fn fields(&self) -> impl Iterator<Item = (Field, u128, u128)> + '_ {
        Field::ALL.iter().filter_map(move |&f| {
            let m = self.mask.get(f);
            (m != 0).then(|| (f, self.key.get(f), m))
        })
    }

    /// True when every packet matching `self` also matches `other`
    /// (`other` is looser or equal), as `ovs-ofctl del-flows` selects.
    pub fn is_within(&self, other: &Match) -> bool {
        other.mask.is_subset_of(&self.mask) && self.key.and(&other.mask) == other.key
    }

    fn dl_type_is(&self, types: &[u16]) -> bool {
        types
            .iter()
            .any(|&t| self.is_exact(Field::DlType, u128::from(t)))
    }

    fn nw_proto_is(&self, protos: &[u8]) -> bool {
        protos
            .iter()
            .any(|&p| self.is_exact(Field::NwProto, u128::from(p)))
    }

    /// Checks that every matched field's prerequisite is also matched.
    pub fn check_prereqs(&self) -> Result<(), MatchError> {
        use ethertype::{ARP, IPV4, IPV6};
        for (field, _, _) in self.fields() {
            let ok = match field.prereq() {
                Prereq::None => true,
                Prereq::Ipv4 => self.dl_type_is(&[IPV4]),
                Prereq::Ip => self.dl_type_is(&[IPV4, IPV6]),
                Prereq::Ipv6 => self.dl_type_is(&[IPV6]),
                Prereq::Arp => self.dl_type_is(&[ARP]),
                Prereq::L4Ports => {
                    self.dl_type_is(&[IPV4, IPV6])
                        && self.nw_proto_is(&[ipproto::TCP, ipproto::UDP, ipproto::SCTP])
                }
                Prereq::Tcp => self.dl_type_is(&[IPV4, IPV6]) && self.nw_proto_is(&[ipproto::TCP]),
                Prereq::Icmp => {
                    (self.dl_type_is(&[IPV4]) && self.nw_proto_is(&[ipproto::ICMP]))
                        || (self.dl_type_is(&[IPV6]) && self.nw_proto_is(&[ipproto::ICMPV6]))
                }
            };
            if !ok {
                let (needs, hint) = match field.prereq() {
                    Prereq::Ipv4 => ("dl_type=0x0800", "ip"),
                    Prereq::Ip => ("dl_type=0x0800 or 0x86dd", "ip"),
                    Prereq::Ipv6 => ("dl_type=0x86dd", "ipv6"),
                    Prereq::Arp => ("dl_type=0x0806", "arp"),
                    Prereq::L4Ports => ("nw_proto tcp, udp or sctp", "tcp"),
                    Prereq::Tcp => ("nw_proto=6", "tcp"),
                    Prereq::Icmp => ("nw_proto icmp or icmp6", "icmp"),
                    Prereq::None => ("nothing", ""),
                };
                return Err(MatchError::MissingPrereq { field, needs, hint });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::{extract, testpkt::tcp4};
    use crate::packet::PortNo;

    #[test]
    fn masked_match_and_prereqs() {
        let mut m = Match::ANY;
        m.set(Field::NwDst, 0x0a00_0000, 0xffff_ff00);
        assert!(matches!(
            m.check_prereqs(),
            Err(MatchError::MissingPrereq {
                field: Field::NwDst,
                ..
            })
        ));
        m.set_exact(Field::DlType, 0x0800);
        assert_eq!(m.check_prereqs(), Ok(()));
        let hit = extract(&tcp4([1, 1, 1, 1], [10, 0, 0, 77], 1, 2, 3), PortNo(0));
        let miss = extract(&tcp4([1, 1, 1, 1], [10, 0, 1, 77], 1, 2, 3), PortNo(0));
        assert!(m.matches(&hit));
        assert!(!m.matches(&miss));
        assert!(Match::ANY.matches(&miss));
    }

    #[test]
    fn within_is_loose_containment() {
        let mut ip = Match::ANY;
        ip.set_exact(Field::DlType, 0x0800);
        let mut net = ip;
        net.set(Field::NwDst, 0x0a00_0000, 0xff00_0000);
        assert!(net.is_within(&ip));
        assert!(!ip.is_within(&net));
        assert!(net.is_within(&Match::ANY));
        assert!(net.is_within(&net));
    }
}
