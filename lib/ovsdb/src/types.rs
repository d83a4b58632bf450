//! OVSDB column types (RFC 7047 §3.2 `<type>`, `<base-type>`, `<atomic-type>`).
//!
//! Owns the parsed form of a column's declared type: the atomic key/value types with
//! their constraints (integer/real ranges, string lengths, enums, reference targets)
//! and the min/max element counts that make a column a scalar, an optional value, a set
//! or a map.  Parsing is as strict as `ovsdb-server`'s: a constraint member that does
//! not apply to the atomic type (say `refTable` on a string) is rejected, `min` is 0 or
//! 1, `max` is at least 1 and at least `min`, and every `enum` value satisfies the
//! other constraints.  Types are immutable after parsing and freely shared between
//! threads.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::datum::{Atom, Datum};
use crate::error::OvsdbError;
use crate::uuid::Uuid;

/// The five OVSDB atomic types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicType {
    /// 64-bit signed integer.
    Integer,
    /// IEEE double.
    Real,
    /// `true` / `false`.
    Boolean,
    /// UTF-8 string.
    String,
    /// 128-bit UUID, possibly a reference to a row.
    Uuid,
}

impl AtomicType {
    /// Parses the schema spelling (`"integer"`, `"real"`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "integer" => Self::Integer,
            "real" => Self::Real,
            "boolean" => Self::Boolean,
            "string" => Self::String,
            "uuid" => Self::Uuid,
            _ => return None,
        })
    }

    /// The schema spelling of this type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Integer => "integer",
            Self::Real => "real",
            Self::Boolean => "boolean",
            Self::String => "string",
            Self::Uuid => "uuid",
        }
    }

    /// The default atom of this type (0, 0.0, false, "", all-zero UUID).
    pub fn default_atom(self) -> Atom {
        match self {
            Self::Integer => Atom::Integer(0),
            Self::Real => Atom::Real(0.0),
            Self::Boolean => Atom::Boolean(false),
            Self::String => Atom::String(String::new()),
            Self::Uuid => Atom::Uuid(Uuid::NIL),
        }
    }

    fn parse(name: &str) -> Result<Self, OvsdbError> {
        Self::from_name(name).ok_or_else(|| {
            OvsdbError::syntax(format!(
                "unknown atomic type \"{name}\" (expected integer, real, boolean, string or uuid)"
            ))
        })
    }
}

/// Whether a reference keeps its target alive (`strong`) or is dropped when the target
/// is deleted (`weak`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefType {
    /// Target must exist; deleting a referenced row is a referential integrity violation.
    #[default]
    Strong,
    /// Reference silently removed when the target row disappears.
    Weak,
}

/// An atomic type plus its constraints (`<base-type>`).
#[derive(Debug, Clone, PartialEq)]
pub struct BaseType {
    /// The atomic type.
    pub atomic: AtomicType,
    /// Allowed values, if the schema restricts them.
    pub enum_values: Option<BTreeSet<Atom>>,
    /// Inclusive integer range.
    pub min_integer: Option<i64>,
    /// Inclusive integer range.
    pub max_integer: Option<i64>,
    /// Inclusive real range.
    pub min_real: Option<f64>,
    /// Inclusive real range.
    pub max_real: Option<f64>,
    /// Minimum string length, in Unicode characters (RFC 7047).
    pub min_length: Option<u64>,
    /// Maximum string length.
    pub max_length: Option<u64>,
    /// Referenced table for UUIDs.
    pub ref_table: Option<String>,
    /// Strength of the reference.
    pub ref_type: RefType,
}

/// The members a `<base-type>` object may have for each atomic type.
fn allowed_members(atomic: AtomicType) -> &'static [&'static str] {
    match atomic {
        AtomicType::Integer => &["type", "enum", "minInteger", "maxInteger"],
        AtomicType::Real => &["type", "enum", "minReal", "maxReal"],
        AtomicType::Boolean => &["type", "enum"],
        AtomicType::String => &["type", "enum", "minLength", "maxLength"],
        AtomicType::Uuid => &["type", "enum", "refTable", "refType"],
    }
}

impl BaseType {
    /// An unconstrained base type.
    pub fn plain(atomic: AtomicType) -> Self {
        Self {
            atomic,
            enum_values: None,
            min_integer: None,
            max_integer: None,
            min_real: None,
            max_real: None,
            min_length: None,
            max_length: None,
            ref_table: None,
            ref_type: RefType::Strong,
        }
    }

    /// Parses `<base-type>`.
    pub fn from_json(v: &Value) -> Result<Self, OvsdbError> {
        let o = match v {
            Value::String(s) => return AtomicType::parse(s).map(Self::plain),
            Value::Object(o) => o,
            _ => {
                return Err(OvsdbError::syntax(format!(
                    "base type {v} must be a string or an object"
                )))
            }
        };
        let tname = o.get("type").and_then(Value::as_str).ok_or_else(|| {
            OvsdbError::syntax(format!("base type {v} must have a \"type\" string"))
        })?;
        let atomic = AtomicType::parse(tname)?;
        let allowed = allowed_members(atomic);
        if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(OvsdbError::syntax(format!(
                "member \"{k}\" of base type {v} does not apply to type \"{tname}\""
            )));
        }
        let mut b = Self::plain(atomic);
        let int = |k: &str| -> Result<Option<i64>, OvsdbError> {
            o.get(k)
                .map(|v| {
                    v.as_i64()
                        .ok_or_else(|| OvsdbError::syntax(format!("\"{k}\" must be an integer")))
                })
                .transpose()
        };
        let real = |k: &str| -> Result<Option<f64>, OvsdbError> {
            o.get(k)
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| OvsdbError::syntax(format!("\"{k}\" must be a number")))
                })
                .transpose()
        };
        b.min_integer = int("minInteger")?;
        b.max_integer = int("maxInteger")?;
        b.min_real = real("minReal")?;
        b.max_real = real("maxReal")?;
        b.min_length = int("minLength")?.map(|v| v.max(0) as u64);
        b.max_length = int("maxLength")?.map(|v| v.max(0) as u64);
        if let Some(t) = o.get("refTable") {
            b.ref_table = Some(
                t.as_str()
                    .ok_or_else(|| OvsdbError::syntax("\"refTable\" must be a string"))?
                    .to_owned(),
            );
        }
        if let Some(t) = o.get("refType") {
            b.ref_type = match t.as_str() {
                Some("strong") => RefType::Strong,
                Some("weak") => RefType::Weak,
                _ => {
                    return Err(OvsdbError::syntax(
                        "\"refType\" must be \"strong\" or \"weak\"",
                    ))
                }
            };
        }
        if let Some(e) = o.get("enum") {
            // The enum is itself a set of values of the base type without the enum.
            b.enum_values = Some(Datum::from_json_enum(e, &b)?);
        }
        Ok(b)
    }

    /// The schema JSON of this base type (a bare type name when unconstrained).
    pub fn to_json(&self) -> Value {
        let plain = self.enum_values.is_none()
            && self.min_integer.is_none()
            && self.max_integer.is_none()
            && self.min_real.is_none()
            && self.max_real.is_none()
            && self.min_length.is_none()
            && self.max_length.is_none()
            && self.ref_table.is_none();
        if plain {
            return json!(self.atomic.name());
        }
        let mut o = Map::new();
        o.insert("type".into(), json!(self.atomic.name()));
        if let Some(e) = &self.enum_values {
            o.insert(
                "enum".into(),
                Datum::Set(e.iter().cloned().collect()).to_json(),
            );
        }
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.into(), v);
            }
        };
        put("minInteger", self.min_integer.map(|v| json!(v)));
        put("maxInteger", self.max_integer.map(|v| json!(v)));
        put("minReal", self.min_real.map(|v| json!(v)));
        put("maxReal", self.max_real.map(|v| json!(v)));
        put("minLength", self.min_length.map(|v| json!(v)));
        put("maxLength", self.max_length.map(|v| json!(v)));
        if let Some(t) = &self.ref_table {
            o.insert("refTable".into(), json!(t));
            if self.ref_type == RefType::Weak {
                o.insert("refType".into(), json!("weak"));
            }
        }
        Value::Object(o)
    }

    /// Checks an atom against this base type: its atomic type (a syntax error; a
    /// named UUID counts as a `uuid`) and its constraints (a constraint violation).
    pub fn check(&self, atom: &Atom) -> Result<(), OvsdbError> {
        if atom.atomic_type() != self.atomic {
            return Err(OvsdbError::syntax(format!(
                "{atom} is not of type {}",
                self.atomic.name()
            )));
        }
        if let Some(e) = &self.enum_values {
            if !e.contains(atom) {
                return Err(OvsdbError::constraint(format!(
                    "{} is not one of the allowed values ({})",
                    atom.to_json(),
                    e.iter()
                        .map(|a| a.to_json().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            return Ok(());
        }
        match atom {
            Atom::Integer(i)
                if self.min_integer.is_some_and(|m| *i < m)
                    || self.max_integer.is_some_and(|m| *i > m) =>
            {
                return Err(OvsdbError::constraint(format!(
                    "{i} is not in the valid range {}",
                    range_text(self.min_integer, self.max_integer)
                )));
            }
            Atom::Real(r)
                if self.min_real.is_some_and(|m| *r < m)
                    || self.max_real.is_some_and(|m| *r > m) =>
            {
                return Err(OvsdbError::constraint(format!(
                    "{r} is not in the valid range {}",
                    range_text(self.min_real, self.max_real)
                )));
            }
            Atom::String(s) => {
                let n = s.chars().count() as u64;
                if let Some(m) = self.min_length.filter(|m| n < *m) {
                    return Err(OvsdbError::constraint(format!(
                        "\"{s}\" length {n} is less than minimum allowed length {m}"
                    )));
                }
                if let Some(m) = self.max_length.filter(|m| n > *m) {
                    return Err(OvsdbError::constraint(format!(
                        "\"{s}\" length {n} is greater than maximum allowed length {m}"
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn range_text<T: std::fmt::Display>(min: Option<T>, max: Option<T>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("{a} to {b} (inclusive)"),
        (Some(a), None) => format!("{a} or greater"),
        (None, Some(b)) => format!("{b} or less"),
        (None, None) => "(unbounded)".into(),
    }
}

/// A full column type (`<type>`): key, optional value (for maps), and element-count
/// bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    /// Key type (the element type for sets and scalars).
    pub key: BaseType,
    /// Value type; `Some` makes the column a map.
    pub value: Option<BaseType>,
    /// Minimum number of elements: 0 or 1.
    pub min: u64,
    /// Maximum number of elements; `None` is "unlimited".
    pub max: Option<u64>,
}

impl ColumnType {
    /// A scalar of the given atomic type.
    pub fn scalar(atomic: AtomicType) -> Self {
        Self {
            key: BaseType::plain(atomic),
            value: None,
            min: 1,
            max: Some(1),
        }
    }

    /// Parses `<type>`.
    pub fn from_json(v: &Value) -> Result<Self, OvsdbError> {
        let o = match v {
            Value::String(_) => {
                return Ok(Self {
                    key: BaseType::from_json(v)?,
                    value: None,
                    min: 1,
                    max: Some(1),
                })
            }
            Value::Object(o) => o,
            _ => {
                return Err(OvsdbError::syntax(format!(
                    "column type {v} must be a string or an object"
                )))
            }
        };
        let key = BaseType::from_json(
            o.get("key")
                .ok_or_else(|| OvsdbError::syntax(format!("column type {v} lacks a \"key\"")))?,
        )?;
        let value = o.get("value").map(BaseType::from_json).transpose()?;
        let min = match o.get("min") {
            None => 1,
            Some(m) => m
                .as_u64()
                .filter(|m| *m <= 1)
                .ok_or_else(|| OvsdbError::syntax(format!("\"min\" in {v} must be 0 or 1")))?,
        };
        let max = match o.get("max") {
            None => Some(1),
            Some(Value::String(s)) if s == "unlimited" => None,
            Some(m) => Some(m.as_u64().filter(|m| *m >= 1).ok_or_else(|| {
                OvsdbError::syntax(format!(
                    "\"max\" in {v} must be a positive integer or \"unlimited\""
                ))
            })?),
        };
        if max.is_some_and(|max| min > max) {
            return Err(OvsdbError::syntax(format!(
                "\"min\" must not exceed \"max\" in {v}"
            )));
        }
        Ok(Self {
            key,
            value,
            min,
            max,
        })
    }

    /// The schema JSON of this type (a bare base type for plain scalars).
    pub fn to_json(&self) -> Value {
        if self.is_scalar() && self.key.to_json().is_string() {
            return self.key.to_json();
        }
        let mut o = Map::new();
        o.insert("key".into(), self.key.to_json());
        if let Some(v) = &self.value {
            o.insert("value".into(), v.to_json());
        }
        if self.min != 1 {
            o.insert("min".into(), json!(self.min));
        }
        match self.max {
            None => {
                o.insert("max".into(), json!("unlimited"));
            }
            Some(1) => {}
            Some(m) => {
                o.insert("max".into(), json!(m));
            }
        }
        Value::Object(o)
    }

    /// True for map types.
    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// True when the column may hold more than one element (a set or map with
    /// `max` above 1): only those get element-wise diffs in update2 and
    /// `_is_diff` records.
    pub fn is_composite(&self) -> bool {
        self.max != Some(1)
    }

    /// True when the column always holds exactly one atom (not a set or map).
    pub fn is_scalar(&self) -> bool {
        self.min == 1 && self.max == Some(1) && self.value.is_none()
    }

    /// `max` as the schema writes it: a number or `unlimited`.
    pub fn max_text(&self) -> String {
        self.max
            .map_or_else(|| "unlimited".to_string(), |m| m.to_string())
    }

    /// True when `d` equals [`ColumnType::default_datum`], without building it
    /// (no allocation: the server asks this for every column of every row it
    /// logs or sends).
    pub fn is_default(&self, d: &Datum) -> bool {
        match (d, &self.value) {
            (Datum::Set(s), None) if self.min == 0 => s.is_empty(),
            (Datum::Set(s), None) => {
                s.len() == 1 && s.first() == Some(&self.key.atomic.default_atom())
            }
            (Datum::Map(m), Some(_)) if self.min == 0 => m.is_empty(),
            (Datum::Map(m), Some(v)) => {
                m.len() == 1
                    && m.first_key_value()
                        == Some((&self.key.atomic.default_atom(), &v.atomic.default_atom()))
            }
            _ => false,
        }
    }

    /// The default datum: empty when `min` is 0, otherwise the default atom (or
    /// default key → default value pair).
    pub fn default_datum(&self) -> Datum {
        match (&self.value, self.min) {
            (None, 0) => Datum::empty_set(),
            (Some(_), 0) => Datum::empty_map(),
            (None, _) => Datum::singleton(self.key.atomic.default_atom()),
            (Some(v), _) => {
                Datum::singleton_pair(self.key.atomic.default_atom(), v.atomic.default_atom())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From nestdb.

    #[test]
    fn parses_map_type_with_constraints() {
        let t = ColumnType::from_json(&json!({"key": {"type":"string","maxLength":3},
            "value": {"type":"integer","minInteger":0,"maxInteger":10}, "min":0, "max":"unlimited"}))
        .unwrap();
        assert!(t.is_map());
        assert_eq!(t.max, None);
        assert!(t.key.check(&Atom::String("abcd".into())).is_err());
        let v = t.value.as_ref().unwrap();
        assert!(v.check(&Atom::Integer(11)).is_err());
        assert!(v.check(&Atom::Integer(10)).is_ok());
        assert_eq!(ColumnType::from_json(&t.to_json()).unwrap(), t);
    }

    #[test]
    fn enum_constraint_rejects_other_values() {
        let t = ColumnType::from_json(&json!({"key":{"type":"string","enum":["set",["a","b"]]}}))
            .unwrap();
        assert!(t.key.check(&Atom::String("a".into())).is_ok());
        let e = t.key.check(&Atom::String("c".into())).unwrap_err();
        assert_eq!(e.tag, "constraint violation");
    }

    #[test]
    fn rejects_bad_type_json() {
        assert!(ColumnType::from_json(&json!("int")).is_err());
        assert!(ColumnType::from_json(&json!({"key":"string","min":2})).is_err());
        assert!(ColumnType::from_json(&json!({"key":"string","max":0})).is_err());
        assert!(ColumnType::from_json(&json!(5)).is_err());
    }

    // From nestdb-client.

    #[test]
    fn parses_column_types() {
        let t = ColumnType::from_json(
            &json!({"key": "string", "value": "integer", "min": 0, "max": "unlimited"}),
        )
        .unwrap();
        assert!(t.is_map());
        assert_eq!(t.max, None);
        assert_eq!(t.default_datum(), Datum::empty_map());
        assert!(t.is_default(&Datum::empty_map()));
        assert!(!t.is_default(&Datum::empty_set()));
        let s = ColumnType::from_json(&json!("boolean")).unwrap();
        assert!(s.is_scalar());
        assert_eq!(s.default_datum(), Datum::from(false));
        for bad in [
            json!({"key": "str"}),
            json!({"key": "string", "min": 2}),
            json!({"key": "string", "max": 0}),
            json!({"key": {"type": "string", "refTable": "X"}}),
            json!({"key": {"type": "integer", "enum": ["set", ["a"]]}}),
            json!(7),
        ] {
            assert!(
                ColumnType::from_json(&bad).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn constraints_print_and_reparse_and_bind_enums() {
        for v in [
            json!({"key": {"type": "uuid", "refTable": "T", "refType": "weak"}, "min": 0}),
            json!({"key": {"type": "real", "minReal": 0.5, "maxReal": 2.5}, "max": 4}),
            json!({"key": {"type": "string", "minLength": 1, "enum": "a"}}),
            json!({"key": {"type": "integer", "enum": ["set", [1, 2]]}, "min": 0, "max": "unlimited"}),
        ] {
            let t = ColumnType::from_json(&v).unwrap();
            assert_eq!(t.to_json(), v, "printing {v}");
        }
        // An enum value must satisfy the other constraints, as in ovsdb-server.
        assert!(ColumnType::from_json(
            &json!({"key": {"type": "integer", "maxInteger": 3, "enum": ["set", [1, 5]]}})
        )
        .is_err());
        // A constraint of another type is an error, not ignored.
        assert!(
            ColumnType::from_json(&json!({"key": {"type": "string", "minInteger": 1}})).is_err()
        );
        // A type mismatch is a syntax error, a constraint a constraint violation.
        let b = BaseType::plain(AtomicType::Integer);
        assert_eq!(b.check(&Atom::from("x")).unwrap_err().tag, "syntax error");
    }
}
