//! Masked matches over the [`FlowKey`]: the match half of a flow rule.
//!
//! A [`Match`] is a value key and a mask of the same shape, stored sparse
//! (the miniflow idea): a bitmap of the key words the mask touches and,
//! for each of them in word order, the masked key word and the mask word.
//! A typical rule matches two to four words, so a match costs a few dozen
//! bytes instead of two 192-byte keys (memory per flow), and testing a
//! packet reads only those words. [`Match::key`] and [`Match::mask`] give
//! the full keys back by value (control paths).
//!
//! Invariants: the representation is canonical: a word is present exactly
//! when its mask word is non-zero, present words are in ascending order,
//! and `key == key & mask` on each of them (kept by every constructor and
//! setter). So derived equality and hashing are those of (key, mask), and
//! a packet matches when `packet & mask == key` on the present words.
//! Prerequisites (OpenFlow's "nw_dst needs ip") are checked by
//! [`Match::check_prereqs`] when a rule enters a program, so a rule can
//! never match a field that the packet does not carry.
//!
//! Thread-safety: plain data (`Send + Sync`), cloned by value.

use std::borrow::Cow;

use super::key::{ethertype, ipproto, Field, FlowKey, Prereq, KEY_WORDS};

const _: () = assert!(KEY_WORDS <= 32, "the present-word bitmap is a u32");

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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Match {
    /// Bit `i` set: word `i` of the mask is non-zero.
    present: u32,
    /// Per present word, in ascending word order: the masked key word,
    /// then the mask word.
    kv: Cow<'static, [u64]>,
}

impl Default for Match {
    fn default() -> Self {
        Match::ANY
    }
}

impl std::fmt::Debug for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Match")
            .field("key", &self.key())
            .field("mask", &self.mask())
            .finish()
    }
}

/// Iterates the set bits of `bits`, lowest first, as word indices.
#[inline]
fn bit_indices(mut bits: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (bits != 0).then(|| {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            i
        })
    })
}

impl Match {
    /// The match-everything match.
    pub const ANY: Match = Match {
        present: 0,
        kv: Cow::Borrowed(&[]),
    };

    /// A match from a key and mask (the key is masked here).
    pub fn from_parts(key: &FlowKey, mask: &FlowKey) -> Match {
        let mut present = 0u32;
        for i in 0..KEY_WORDS {
            if mask.w[i] != 0 {
                present |= 1 << i;
            }
        }
        if present == 0 {
            return Match::ANY;
        }
        let mut kv = Vec::with_capacity(2 * present.count_ones() as usize);
        for i in bit_indices(present) {
            kv.push(key.w[i] & mask.w[i]);
            kv.push(mask.w[i]);
        }
        Match {
            present,
            kv: Cow::Owned(kv),
        }
    }

    /// The `(masked key, mask)` words at word index `i` (zero when the
    /// match does not look at word `i`).
    #[inline]
    pub fn word(&self, i: usize) -> (u64, u64) {
        let bit = 1u32 << i;
        if self.present & bit == 0 {
            return (0, 0);
        }
        let j = 2 * (self.present & (bit - 1)).count_ones() as usize;
        (self.kv[j], self.kv[j + 1])
    }

    /// Where the match's packed words are (for prefetching).
    #[inline]
    pub fn words_ptr(&self) -> *const u64 {
        self.kv.as_ptr()
    }

    /// Indices of the key words the mask touches, ascending.
    pub fn words(&self) -> impl Iterator<Item = usize> {
        bit_indices(self.present)
    }

    /// Requires `field & mask == value & mask`, replacing any earlier
    /// constraint on the field.
    pub fn set(&mut self, field: Field, value: u128, mask: u128) {
        let mask = mask & field.max_value();
        let (mut k, mut m) = (self.key(), self.mask());
        m.set(field, mask);
        k.set(field, value & mask);
        *self = Match::from_parts(&k, &m);
    }

    /// Requires `field == value` exactly.
    pub fn set_exact(&mut self, field: Field, value: u128) {
        self.set(field, value, field.max_value());
    }

    /// `(value, mask)` of `field`.
    pub fn get(&self, field: Field) -> (u128, u128) {
        (self.key().get(field), self.mask().get(field))
    }

    /// True when `field` is fully specified with value `value`.
    pub fn is_exact(&self, field: Field, value: u128) -> bool {
        self.get(field) == (value, field.max_value())
    }

    /// The masked key (built from the sparse words).
    pub fn key(&self) -> FlowKey {
        let mut k = FlowKey::ZERO;
        for (n, i) in bit_indices(self.present).enumerate() {
            k.w[i] = self.kv[2 * n];
        }
        k
    }

    /// The mask (built from the sparse words).
    pub fn mask(&self) -> FlowKey {
        let mut m = FlowKey::ZERO;
        self.or_mask_into(&mut m);
        m
    }

    /// ORs the mask into `acc` (the slow path's megaflow mask).
    #[inline]
    pub fn or_mask_into(&self, acc: &mut FlowKey) {
        for (n, i) in bit_indices(self.present).enumerate() {
            acc.w[i] |= self.kv[2 * n + 1];
        }
    }

    /// True when the mask is `mask`.
    pub fn mask_is(&self, mask: &FlowKey) -> bool {
        (0..KEY_WORDS).all(|i| self.word(i).1 == mask.w[i])
    }

    /// True when the match looks at nothing (matches every packet).
    #[inline]
    pub fn is_any(&self) -> bool {
        self.present == 0
    }

    /// True when `pkt` satisfies this match: a compare of the present
    /// words only.
    #[inline]
    pub fn matches(&self, pkt: &FlowKey) -> bool {
        let mut diff = 0u64;
        for (n, i) in bit_indices(self.present).enumerate() {
            diff |= (pkt.w[i] & self.kv[2 * n + 1]) ^ self.kv[2 * n];
        }
        diff == 0
    }

    /// True when `pkt & mask` equals this match's key on the word indices
    /// in `words` (a specialised index's compare: `mask` is the index's
    /// mask, which on those words is this match's).
    #[inline]
    pub fn key_matches_words(&self, pkt: &FlowKey, mask: &FlowKey, words: &[u8]) -> bool {
        let mut diff = 0u64;
        for &i in words {
            let i = usize::from(i);
            diff |= (pkt.w[i] & mask.w[i]) ^ self.word(i).0;
        }
        diff == 0
    }

    /// Fields with a non-zero mask, in canonical order, as
    /// `(field, value, mask)`.
    pub fn fields(&self) -> impl Iterator<Item = (Field, u128, u128)> + 'static {
        let (key, mask) = (self.key(), self.mask());
        Field::ALL.iter().filter_map(move |&f| {
            let m = mask.get(f);
            (m != 0).then(|| (f, key.get(f), m))
        })
    }

    /// True when every packet matching `self` also matches `other`
    /// (`other` is looser or equal), as `ovs-ofctl del-flows` selects.
    pub fn is_within(&self, other: &Match) -> bool {
        (other.present & !self.present) == 0
            && other.words().all(|i| {
                let (ok, om) = other.word(i);
                let (sk, sm) = self.word(i);
                om & !sm == 0 && sk & om == ok
            })
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
    use proptest::prelude::*;

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
        let mut net = ip.clone();
        net.set(Field::NwDst, 0x0a00_0000, 0xff00_0000);
        assert!(net.is_within(&ip));
        assert!(!ip.is_within(&net));
        assert!(net.is_within(&Match::ANY));
        assert!(net.is_within(&net));
    }

    /// A random key and mask over a few random words (dense reference).
    fn sparse_words() -> impl Strategy<Value = (FlowKey, FlowKey)> {
        proptest::collection::vec((0usize..KEY_WORDS, any::<u64>(), any::<u64>()), 0..6).prop_map(
            |ws| {
                let (mut k, mut m) = (FlowKey::ZERO, FlowKey::ZERO);
                for (i, kw, mw) in ws {
                    k.w[i] = kw;
                    m.w[i] = mw;
                }
                (k, m)
            },
        )
    }

    proptest! {
        /// The sparse match behaves as the dense (key & mask, mask) pair
        /// it was built from: same key and mask back, same verdict on any
        /// packet, equality and containment as on the dense pair.
        #[test]
        fn sparse_match_equals_dense(
            (k, m) in sparse_words(),
            (k2, m2) in sparse_words(),
            pkt in proptest::collection::vec(any::<u64>(), KEY_WORDS),
            agree in any::<bool>(),
        ) {
            let a = Match::from_parts(&k, &m);
            prop_assert_eq!(a.key(), k.and(&m));
            prop_assert_eq!(a.mask(), m);
            prop_assert!(a.mask_is(&m));
            let mut p = FlowKey::ZERO;
            p.w.copy_from_slice(&pkt);
            if agree {
                // A packet that satisfies the match outside noise bits.
                for i in 0..KEY_WORDS {
                    p.w[i] = (p.w[i] & !m.w[i]) | (k.w[i] & m.w[i]);
                }
            }
            prop_assert_eq!(a.matches(&p), p.matches_masked(&m, &k.and(&m)));
            let words = m.nonzero_words();
            prop_assert_eq!(
                a.key_matches_words(&p, &m, &words),
                p.matches_masked_words(&m, &k.and(&m), &words)
            );
            for i in 0..KEY_WORDS {
                prop_assert_eq!(a.word(i), (k.w[i] & m.w[i], m.w[i]));
            }
            let b = Match::from_parts(&k2, &m2);
            prop_assert_eq!(a == b, k.and(&m) == k2.and(&m2) && m == m2);
            let dense_within = m2.is_subset_of(&m) && k.and(&m).and(&m2) == k2.and(&m2);
            prop_assert_eq!(a.is_within(&b), dense_within);
            let mut acc = m2;
            a.or_mask_into(&mut acc);
            let mut want = m2;
            want.or_assign(&m);
            prop_assert_eq!(acc, want);
            prop_assert_eq!(a.is_any(), m == FlowKey::ZERO);
        }
    }

    #[test]
    fn any_is_empty_and_default() {
        assert_eq!(Match::default(), Match::ANY);
        assert!(Match::ANY.is_any());
        assert_eq!(
            Match::from_parts(&FlowKey::ZERO, &FlowKey::ZERO),
            Match::ANY
        );
        let mut m = Match::ANY;
        m.set_exact(Field::DlType, 0x0800);
        m.set(Field::DlType, 0, 0);
        assert_eq!(m, Match::ANY, "clearing the last field gives ANY back");
    }
}
