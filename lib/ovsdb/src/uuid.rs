//! OVSDB UUIDs (RFC 7047 §5.1 `<uuid>`): row identities and references.
//!
//! Owns [`Uuid`], a thin wrapper around [`uuid::Uuid`] that reads and writes the
//! protocol's notation, `["uuid", "<36 characters>"]`.  Invariant: parsing accepts only
//! the 36-character hyphenated 8-4-4-4-12 form that RFC 7047 (and `ovsdb-server`'s
//! `uuid_from_string`) require, and printing always produces it in lower case.  Named
//! UUIDs (`["named-uuid", name]`) are atoms, see [`crate::Atom::NamedUuid`] and
//! [`crate::SymbolTable`].  A plain `Copy` value: `Send + Sync`.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::error::OvsdbError;

/// An OVSDB row UUID (`["uuid", "…"]` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub uuid::Uuid);

/// The order of the 16 bytes (most significant first), as `uuid::Uuid`'s
/// own, compared as one 128-bit number instead of a byte slice (a
/// `memcmp` call): UUIDs key the server's row maps, and a large
/// transaction's searches compare millions of them.
impl Ord for Uuid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_u128().cmp(&other.0.as_u128())
    }
}

impl PartialOrd for Uuid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Uuid {
    /// The all-zero UUID, the default value of a `uuid` column.
    pub const NIL: Uuid = Uuid(uuid::Uuid::nil());

    /// The all-zero UUID (same as [`Uuid::NIL`]).
    pub const fn nil() -> Self {
        Self::NIL
    }

    /// The all-ones UUID, the largest value in UUID order.
    pub const fn max() -> Self {
        Uuid(uuid::Uuid::max())
    }

    /// A fresh random (version 4) UUID.
    ///
    /// The bytes come from `rand`'s thread-local generator (ChaCha12, seeded
    /// and periodically reseeded from the operating system), not from one
    /// `getrandom` system call per UUID as `uuid::Uuid::new_v4` makes: a large
    /// transaction draws three UUIDs per row (row, version, named UUID).
    pub fn new_v4() -> Self {
        Uuid(uuid::Builder::from_random_bytes(rand::random()).into_uuid())
    }

    /// Parses the 36-character hyphenated form (`8-4-4-4-12` hex digits).
    pub fn parse_str(s: &str) -> Result<Self, OvsdbError> {
        s.parse()
    }

    /// True for the all-zero UUID.
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    /// The 16 bytes of the UUID, most significant first.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// JSON notation: `["uuid", "<36 hex digits and dashes>"]`.
    pub fn to_json(&self) -> Value {
        Value::Array(vec![
            Value::String("uuid".to_owned()),
            Value::String(self.to_string()),
        ])
    }

    /// Appends the JSON text of [`Uuid::to_json`] to `out` (the same bytes
    /// `serde_json` writes for it), without building a `Value`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"[\"uuid\",\"");
        self.write_text(out);
        out.push(b'"');
        out.push(b']');
    }

    /// Appends the 36-character hyphenated text to `out`.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.extend_from_slice(self.0.hyphenated().encode_lower(&mut buf).as_bytes());
    }

    /// Parses `["uuid", "…"]`.
    pub fn from_json(v: &Value) -> Result<Self, OvsdbError> {
        match v.as_array().map(Vec::as_slice) {
            Some([tag, Value::String(s)]) if tag == "uuid" => s.parse(),
            _ => Err(OvsdbError::syntax(format!(
                "expected [\"uuid\", \"…\"] but found {v}"
            ))),
        }
    }
}

impl From<uuid::Uuid> for Uuid {
    fn from(u: uuid::Uuid) -> Self {
        Uuid(u)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for Uuid {
    type Err = OvsdbError;

    fn from_str(s: &str) -> Result<Self, OvsdbError> {
        // RFC 7047 requires the 36-character hyphenated form; the uuid crate would also
        // accept the simple, braced and URN forms.
        if s.len() != 36 {
            return Err(OvsdbError::syntax(format!(
                "\"{s}\" is not a UUID in 8-4-4-4-12 hex form"
            )));
        }
        uuid::Uuid::parse_str(s)
            .map(Uuid)
            .map_err(|e| OvsdbError::syntax(format!("\"{s}\" is not a valid UUID: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_hyphenated_form_parses() {
        let u = Uuid::new_v4();
        assert_eq!(u.to_string().parse::<Uuid>().unwrap(), u);
        assert_eq!(Uuid::from_json(&u.to_json()).unwrap(), u);
        assert!(u.0.simple().to_string().parse::<Uuid>().is_err());
        assert!(Uuid::from_json(&json!(["named-uuid", u.to_string()])).is_err());
        assert!(Uuid::nil().is_nil() && Uuid::NIL < Uuid::max());
    }

    #[test]
    fn fresh_uuids_are_version_4_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let u = Uuid::new_v4();
            assert_eq!(u.0.get_version_num(), 4);
            assert_eq!(u.0.get_variant(), uuid::Variant::RFC4122);
            assert!(seen.insert(u), "a repeated UUID: {u}");
        }
    }

    proptest::proptest! {
        /// The 128-bit comparison is the byte order of `uuid::Uuid` (and
        /// of the text), including UUIDs that differ in one byte only.
        #[test]
        fn order_is_the_byte_order(a in proptest::array::uniform16(0u8..), b in proptest::array::uniform16(0u8..), i in 0usize..16, x in 0u8..) {
            let mut c = a;
            c[i] = x;
            for (p, q) in [(a, b), (a, c)] {
                let (u, v) = (Uuid(uuid::Uuid::from_bytes(p)), Uuid(uuid::Uuid::from_bytes(q)));
                proptest::prop_assert_eq!(u.cmp(&v), p.cmp(&q));
                proptest::prop_assert_eq!(u.cmp(&v), u.to_string().cmp(&v.to_string()));
            }
        }
    }
}
