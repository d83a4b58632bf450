//! Typed column values parsed straight from JSON text with serde visitors
//! ([`TypedDatumSeed`]), without building a `serde_json::Value` first: the
//! path a large transaction's rows take through nestdb-server.
//!
//! Invariant: when the seed succeeds, its [`Datum`] is exactly what
//! [`Datum::from_json_typed`] returns for the same text, type and symbol
//! table (the same atoms, the same constraint and size checks, the same
//! named-UUID references). It only succeeds: on any input the `Value` path
//! would reject, or that it does not handle (it fails with
//! [`NOT_FAST`]), the caller parses the text into a `Value` and takes that
//! path, which produces the error sentence. The only side effect of a failed
//! attempt is a named-UUID reference entered in the symbol table (which the
//! `Value` path makes too, or which stays an unused, undeclared name in a
//! transaction that fails anyway).
//!
//! Thread-safety: plain functions and values.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::atoms::{AtomMap, AtomSet};
use crate::datum::{Atom, Datum, SymbolTable};
use crate::schema::TableSchema;
use crate::types::{AtomicType, BaseType, ColumnType};

/// Parses the `row` object of an `insert` into (column index, datum)
/// pairs, in the order given: what nestdb-server's `Value` path makes of
/// it when that succeeds. Defers ([`NOT_FAST`]) on an unknown or repeated
/// column, or on any value the `Value` path might refuse.
pub struct RowSeed<'a> {
    /// The row's table.
    pub table: &'a TableSchema,
    /// Named UUIDs of the transaction.
    pub symtab: &'a mut SymbolTable,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Vec<(usize, Datum)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Vec<(usize, Datum)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ts = self.table;
        let mut seen = vec![false; ts.columns.len()];
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(ts.columns.len()));
        while let Some(name) = map.next_key::<ColumnName>()? {
            let i = ts.column(&name.0).ok_or_else(not_fast)?;
            if std::mem::replace(&mut seen[i], true) {
                return Err(not_fast());
            }
            let d = map.next_value_seed(TypedDatumSeed {
                ty: &ts.columns[i].ty,
                symtab: Some(&mut *self.symtab),
                check_size: true,
            })?;
            out.push((i, d));
        }
        Ok(out)
    }
}

/// A column name, borrowed from the text when it has no escapes.
struct ColumnName<'de>(std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for ColumnName<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ColumnName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ColumnName(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ColumnName(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The error text of a seed that does not apply (never shown to a peer:
/// the caller retries through `Value`).
pub const NOT_FAST: &str = "not on the fast path";

fn not_fast<E: de::Error>() -> E {
    E::custom(NOT_FAST)
}

/// Parses a value of column type `ty`: as [`Datum::from_json_typed`] with
/// a symbol table, or, with no symbol table and the size checked only for
/// a scalar (`check_size: !ty.is_composite()`), as
/// [`Datum::diff_from_json`] (what a client does with monitor rows).
pub struct TypedDatumSeed<'a> {
    /// The column's type.
    pub ty: &'a ColumnType,
    /// Named UUIDs of the transaction (`None`: a named UUID defers).
    pub symtab: Option<&'a mut SymbolTable>,
    /// Check the number of elements against the type.
    pub check_size: bool,
}

impl<'de> DeserializeSeed<'de> for TypedDatumSeed<'_> {
    type Value = Datum;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Datum, D::Error> {
        let ty = self.ty;
        let datum = d.deserialize_any(DatumVisitor {
            ty,
            symtab: self.symtab,
        })?;
        let n = datum.len() as u64;
        if self.check_size && (n < ty.min || ty.max.is_some_and(|max| n > max)) {
            return Err(not_fast());
        }
        Ok(datum)
    }
}

struct DatumVisitor<'a> {
    ty: &'a ColumnType,
    symtab: Option<&'a mut SymbolTable>,
}

impl DatumVisitor<'_> {
    /// A scalar of a set column: one checked atom.
    fn scalar<E: de::Error>(self, a: Option<Atom>) -> Result<Datum, E> {
        if self.ty.value.is_some() {
            return Err(not_fast());
        }
        let a = a.ok_or_else(not_fast)?;
        checked(&self.ty.key, a).map(Datum::singleton)
    }
}

/// `a` if `base`'s constraints allow it.
fn checked<E: de::Error>(base: &BaseType, a: Atom) -> Result<Atom, E> {
    base.check(&a).map_err(|_| not_fast())?;
    Ok(a)
}

fn from_i64(atomic: AtomicType, v: i64) -> Option<Atom> {
    match atomic {
        AtomicType::Integer => Some(Atom::Integer(v)),
        AtomicType::Real => Some(Atom::Real(v as f64)),
        _ => None,
    }
}

fn from_u64(atomic: AtomicType, v: u64) -> Option<Atom> {
    match atomic {
        AtomicType::Integer => i64::try_from(v).ok().map(Atom::Integer),
        AtomicType::Real => Some(Atom::Real(v as f64)),
        _ => None,
    }
}

fn from_f64(atomic: AtomicType, v: f64) -> Option<Atom> {
    (atomic == AtomicType::Real).then_some(Atom::Real(v))
}

/// The first element of a JSON array value: the tag.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    Set,
    Map,
    Uuid,
    NamedUuid,
    Other,
}

struct TagVisitor;

impl Visitor<'_> for TagVisitor {
    type Value = Tag;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tag string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag, E> {
        Ok(match v {
            "set" => Tag::Set,
            "map" => Tag::Map,
            "uuid" => Tag::Uuid,
            "named-uuid" => Tag::NamedUuid,
            _ => Tag::Other,
        })
    }
}

struct TagSeed;

impl<'de> DeserializeSeed<'de> for TagSeed {
    type Value = Tag;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tag, D::Error> {
        d.deserialize_str(TagVisitor)
    }
}

/// After the last expected element of an array: there must be no more.
fn end<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<(), A::Error> {
    match seq.next_element::<IgnoredAny>()? {
        None => Ok(()),
        Some(_) => Err(not_fast()),
    }
}

/// The UUID of `["uuid", text]` / `["named-uuid", text]` after its tag.
fn uuid_after_tag<'de, A: SeqAccess<'de>>(
    tag: Tag,
    seq: &mut A,
    symtab: Option<&mut SymbolTable>,
) -> Result<Atom, A::Error> {
    let text: String = seq.next_element()?.ok_or_else(not_fast)?;
    end(seq)?;
    Ok(match (tag, symtab) {
        (Tag::Uuid, _) => Atom::Uuid(text.parse().map_err(|_| not_fast())?),
        (Tag::NamedUuid, Some(st)) => Atom::Uuid(st.reference(&text)),
        _ => return Err(not_fast()),
    })
}

impl<'de> Visitor<'de> for DatumVisitor<'_> {
    type Value = Datum;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an OVSDB value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Datum, E> {
        let a = (self.ty.key.atomic == AtomicType::Boolean).then_some(Atom::Boolean(v));
        self.scalar(a)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Datum, E> {
        let a = from_i64(self.ty.key.atomic, v);
        self.scalar(a)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Datum, E> {
        let a = from_u64(self.ty.key.atomic, v);
        self.scalar(a)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Datum, E> {
        let a = from_f64(self.ty.key.atomic, v);
        self.scalar(a)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Datum, E> {
        let a = (self.ty.key.atomic == AtomicType::String).then(|| Atom::String(v.to_owned()));
        self.scalar(a)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Datum, E> {
        let a = (self.ty.key.atomic == AtomicType::String).then_some(Atom::String(v));
        self.scalar(a)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Datum, A::Error> {
        let tag = seq.next_element_seed(TagSeed)?.ok_or_else(not_fast)?;
        let ty = self.ty;
        match (&ty.value, tag) {
            (Some(vt), Tag::Map) => {
                let m = seq
                    .next_element_seed(PairsSeed {
                        key: &ty.key,
                        value: vt,
                        symtab: self.symtab,
                    })?
                    .ok_or_else(not_fast)?;
                end(&mut seq)?;
                Ok(Datum::Map(m))
            }
            (None, Tag::Set) => {
                let s = seq
                    .next_element_seed(SetSeed {
                        base: &ty.key,
                        symtab: self.symtab,
                    })?
                    .ok_or_else(not_fast)?;
                end(&mut seq)?;
                Ok(Datum::Set(s))
            }
            (None, Tag::Uuid | Tag::NamedUuid) if ty.key.atomic == AtomicType::Uuid => {
                let a = uuid_after_tag(tag, &mut seq, self.symtab)?;
                checked(&ty.key, a).map(Datum::singleton)
            }
            _ => Err(not_fast()),
        }
    }
}

/// One atom of type `base` (a set element, a map key or value).
struct AtomSeed<'a> {
    base: &'a BaseType,
    symtab: Option<&'a mut SymbolTable>,
}

impl<'de> DeserializeSeed<'de> for AtomSeed<'_> {
    type Value = Atom;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Atom, D::Error> {
        let base = self.base;
        let a = d.deserialize_any(AtomVisitor {
            atomic: base.atomic,
            symtab: self.symtab,
        })?;
        checked(base, a)
    }
}

struct AtomVisitor<'a> {
    atomic: AtomicType,
    symtab: Option<&'a mut SymbolTable>,
}

impl<'de> Visitor<'de> for AtomVisitor<'_> {
    type Value = Atom;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an OVSDB atom")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Atom, E> {
        (self.atomic == AtomicType::Boolean)
            .then_some(Atom::Boolean(v))
            .ok_or_else(not_fast)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Atom, E> {
        from_i64(self.atomic, v).ok_or_else(not_fast)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Atom, E> {
        from_u64(self.atomic, v).ok_or_else(not_fast)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Atom, E> {
        from_f64(self.atomic, v).ok_or_else(not_fast)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Atom, E> {
        (self.atomic == AtomicType::String)
            .then(|| Atom::String(v.to_owned()))
            .ok_or_else(not_fast)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Atom, E> {
        (self.atomic == AtomicType::String)
            .then_some(Atom::String(v))
            .ok_or_else(not_fast)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Atom, A::Error> {
        if self.atomic != AtomicType::Uuid {
            return Err(not_fast());
        }
        let tag = seq.next_element_seed(TagSeed)?.ok_or_else(not_fast)?;
        uuid_after_tag(tag, &mut seq, self.symtab)
    }
}

/// The array of a `["set", […]]`.
struct SetSeed<'a> {
    base: &'a BaseType,
    symtab: Option<&'a mut SymbolTable>,
}

impl<'de> DeserializeSeed<'de> for SetSeed<'_> {
    type Value = AtomSet;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AtomSet, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SetSeed<'_> {
    type Value = AtomSet;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of atoms")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<AtomSet, A::Error> {
        let mut s = AtomSet::new();
        while let Some(a) = seq.next_element_seed(AtomSeed {
            base: self.base,
            symtab: self.symtab.as_deref_mut(),
        })? {
            if !s.insert(a) {
                return Err(not_fast());
            }
        }
        Ok(s)
    }
}

/// The array of pairs of a `["map", […]]`.
struct PairsSeed<'a> {
    key: &'a BaseType,
    value: &'a BaseType,
    symtab: Option<&'a mut SymbolTable>,
}

impl<'de> DeserializeSeed<'de> for PairsSeed<'_> {
    type Value = AtomMap;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AtomMap, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PairsSeed<'_> {
    type Value = AtomMap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<AtomMap, A::Error> {
        let mut m = AtomMap::new();
        while let Some((k, v)) = seq.next_element_seed(PairSeed {
            key: self.key,
            value: self.value,
            symtab: self.symtab.as_deref_mut(),
        })? {
            if m.insert(k, v).is_some() {
                return Err(not_fast());
            }
        }
        Ok(m)
    }
}

/// One `[key, value]` of a map.
struct PairSeed<'a> {
    key: &'a BaseType,
    value: &'a BaseType,
    symtab: Option<&'a mut SymbolTable>,
}

impl<'de> DeserializeSeed<'de> for PairSeed<'_> {
    type Value = (Atom, Atom);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(Atom, Atom), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PairSeed<'_> {
    type Value = (Atom, Atom);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [key, value] pair")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(Atom, Atom), A::Error> {
        let k = seq
            .next_element_seed(AtomSeed {
                base: self.key,
                symtab: self.symtab.as_deref_mut(),
            })?
            .ok_or_else(not_fast)?;
        let v = seq
            .next_element_seed(AtomSeed {
                base: self.value,
                symtab: self.symtab.as_deref_mut(),
            })?
            .ok_or_else(not_fast)?;
        end(&mut seq)?;
        Ok((k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ty(json: &str) -> ColumnType {
        ColumnType::from_json(&serde_json::from_str(json).unwrap()).unwrap()
    }

    /// The seed's result, or None when it defers to the `Value` path.
    fn fast(text: &str, t: &ColumnType, st: &mut SymbolTable) -> Option<Datum> {
        let mut de = serde_json::Deserializer::from_str(text);
        TypedDatumSeed {
            ty: t,
            symtab: Some(st),
            check_size: true,
        }
        .deserialize(&mut de)
        .ok()
    }

    /// Both paths on `text`: when the seed succeeds, the `Value` path does
    /// too, with the same datum.
    fn same(text: &str, type_json: &str) {
        let t = ty(type_json);
        // One symbol table: the same named UUIDs on both sides.
        let mut st = SymbolTable::default();
        let v: Value = serde_json::from_str(text).unwrap();
        let slow = Datum::from_json_typed(&v, &t, Some(&mut st)).ok();
        let quick = fast(text, &t, &mut st);
        agree(text, type_json, slow, quick);
        // As a monitor row's value: no named UUIDs, no size check but for
        // a scalar.
        let slow = Datum::diff_from_json(&v, &t).ok();
        let mut de = serde_json::Deserializer::from_str(text);
        let quick = TypedDatumSeed {
            ty: &t,
            symtab: None,
            check_size: !t.is_composite(),
        }
        .deserialize(&mut de)
        .ok();
        agree(text, type_json, slow, quick);
    }

    fn agree(text: &str, type_json: &str, slow: Option<Datum>, quick: Option<Datum>) {
        match (&slow, &quick) {
            (Some(s), Some(q)) => assert_eq!(s, q, "{text} as {type_json}"),
            (_, None) => {}
            (None, Some(q)) => {
                panic!("{text} as {type_json}: the seed accepted {q:?}, the Value path refuses")
            }
        }
    }

    #[test]
    fn the_seed_agrees_with_the_value_path() {
        let types = [
            r#""string""#,
            r#""integer""#,
            r#""real""#,
            r#""boolean""#,
            r#""uuid""#,
            r#"{"key": {"type": "uuid", "refTable": "T"}, "min": 0, "max": "unlimited"}"#,
            r#"{"key": {"type": "integer", "minInteger": 1, "maxInteger": 65535}}"#,
            r#"{"key": {"type": "string", "enum": ["set", ["TCP", "UDP"]]}}"#,
            r#"{"key": {"type": "string", "maxLength": 3}, "min": 0, "max": 2}"#,
            r#"{"key": "string", "value": "string", "min": 0, "max": "unlimited"}"#,
            r#"{"key": "integer", "value": {"type": "real", "minReal": 0}, "min": 0, "max": "unlimited"}"#,
            r#"{"key": "real", "min": 0, "max": "unlimited"}"#,
        ];
        let values = [
            r#""x""#,
            r#""TCP""#,
            r#""abcd""#,
            "0",
            "-7",
            "65536",
            "18446744073709551615",
            "1.5",
            "1.0",
            "-0.5",
            "true",
            "null",
            "{}",
            "[]",
            r#"["uuid", "5f8c43e8-3d9a-4c58-8d5b-2c1f2b0c3d4e"]"#,
            r#"["uuid", "not-a-uuid"]"#,
            r#"["named-uuid", "a"]"#,
            r#"["named-uuid", "new"]"#,
            r#"["named-uuid", "a", "b"]"#,
            r#"["set", []]"#,
            r#"["set", ["x", "y"]]"#,
            r#"["set", ["x", "x"]]"#,
            r#"["set", [1, 2, 3]]"#,
            r#"["set", [1.5, 2]]"#,
            r#"["set", [["named-uuid", "a"], ["named-uuid", "b"]]]"#,
            r#"["set", [["named-uuid", "a"], ["named-uuid", "a"]]]"#,
            r#"["set", "x"]"#,
            r#"["set", ["x"], 1]"#,
            r#"["map", []]"#,
            r#"["map", [["k", "v"], ["k2", "v2"]]]"#,
            r#"["map", [["k", "v"], ["k", "v2"]]]"#,
            r#"["map", [[1, 2.5], [2, -1]]]"#,
            r#"["map", [[1, 2.5, 3]]]"#,
            r#"["map", [["k"]]]"#,
            r#"["map", {}]"#,
            r#"["other", []]"#,
            r#"[1, 2]"#,
        ];
        for t in types {
            for v in values {
                same(v, t);
            }
        }
    }

    #[test]
    fn the_seed_handles_the_common_shapes() {
        let mut st = SymbolTable::default();
        let t = ty(r#"{"key": "string", "value": "string", "min": 0, "max": "unlimited"}"#);
        assert!(fast(r#"["map", [["a", "b"]]]"#, &t, &mut st).is_some());
        let t = ty(r#"{"key": {"type": "uuid", "refTable": "T"}, "min": 0, "max": "unlimited"}"#);
        let d = fast(r#"["set", [["named-uuid", "n"]]]"#, &t, &mut st).unwrap();
        assert_eq!(d, Datum::singleton(Atom::Uuid(st.reference("n"))));
        let t = ty(r#""real""#);
        assert_eq!(fast("2", &t, &mut st), Some(Datum::from(2.0f64)));
        let t = ty(r#""integer""#);
        assert_eq!(fast("2.0", &t, &mut st), None);
    }
}
