//! OVSDB column types (RFC 7047 §3.2 `<type>`, `<base-type>`, `<atomic-type>`).
//!
//! Owns the parsed form of a column's declared type: the atomic key/value types with
//! their constraints (integer/real ranges, string lengths, enums, reference targets)
//! and the min/max element counts that make a column a scalar, an optional value, a set
//! or a map.  Types are immutable after parsing and freely shared between threads.

use crate::datum::{Atom, Datum};
use crate::error::OvsdbError;
use serde_json::{json, Map, Value};

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
            Self::Uuid => Atom::Uuid(uuid::Uuid::nil()),
        }
    }
}

/// Whether a reference keeps its target alive (`strong`) or is dropped when the target
/// is deleted (`weak`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefType {
    /// Target must exist; deleting a referenced row is a referential integrity violation.
    Strong,
    /// Reference silently removed when the target row disappears.
    Weak,
}

/// An atomic type plus its constraints.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseType {
    /// The atomic type.
    pub atomic: AtomicType,
    /// Allowed values, if the schema restricts them.
    pub enumeration: Option<Vec<Atom>>,
    /// Inclusive integer range.
    pub min_integer: Option<i64>,
    /// Inclusive integer range.
    pub max_integer: Option<i64>,
    /// Inclusive real range.
    pub min_real: Option<f64>,
    /// Inclusive real range.
    pub max_real: Option<f64>,
    /// String length bounds, in Unicode code points... counted as OVS does (bytes).
    pub min_length: Option<u64>,
    /// Maximum string length.
    pub max_length: Option<u64>,
    /// Referenced table for UUIDs.
    pub ref_table: Option<String>,
    /// Strength of the reference.
    pub ref_type: RefType,
}

impl BaseType {
    /// An unconstrained base type.
    pub fn plain(atomic: AtomicType) -> Self {
        Self {
            atomic,
            enumeration: None,
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
        match v {
            Value::String(s) => AtomicType::from_name(s)
                .map(Self::plain)
                .ok_or_else(|| OvsdbError::syntax(format!("unknown atomic type \"{s}\""))),
            Value::Object(o) => {
                let tname = o.get("type").and_then(Value::as_str).ok_or_else(|| {
                    OvsdbError::syntax("base type object must have a \"type\" string")
                })?;
                let atomic = AtomicType::from_name(tname).ok_or_else(|| {
                    OvsdbError::syntax(format!("unknown atomic type \"{tname}\""))
                })?;
                let mut b = Self::plain(atomic);
                let int = |k: &str| -> Result<Option<i64>, OvsdbError> {
                    match o.get(k) {
                        None => Ok(None),
                        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                            OvsdbError::syntax(format!("\"{k}\" must be an integer"))
                        }),
                    }
                };
                let real = |k: &str| -> Result<Option<f64>, OvsdbError> {
                    match o.get(k) {
                        None => Ok(None),
                        Some(v) => v
                            .as_f64()
                            .map(Some)
                            .ok_or_else(|| OvsdbError::syntax(format!("\"{k}\" must be a number"))),
                    }
                };
                match atomic {
                    AtomicType::Integer => {
                        b.min_integer = int("minInteger")?;
                        b.max_integer = int("maxInteger")?;
                    }
                    AtomicType::Real => {
                        b.min_real = real("minReal")?;
                        b.max_real = real("maxReal")?;
                    }
                    AtomicType::String => {
                        b.min_length = int("minLength")?.map(|v| v.max(0) as u64);
                        b.max_length = int("maxLength")?.map(|v| v.max(0) as u64);
                    }
                    AtomicType::Uuid => {
                        if let Some(t) = o.get("refTable") {
                            b.ref_table = Some(
                                t.as_str()
                                    .ok_or_else(|| {
                                        OvsdbError::syntax("\"refTable\" must be a string")
                                    })?
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
                    }
                    AtomicType::Boolean => {}
                }
                if let Some(e) = o.get("enum") {
                    let set = Datum::from_json_untyped_set(e, &Self::plain(atomic))?;
                    b.enumeration = Some(set);
                }
                Ok(b)
            }
            _ => Err(OvsdbError::syntax(
                "base type must be a string or an object",
            )),
        }
    }

    /// The schema JSON of this base type.
    pub fn to_json(&self) -> Value {
        let plain = self.enumeration.is_none()
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
        if let Some(e) = &self.enumeration {
            let items: Vec<Value> = e.iter().map(Atom::to_json).collect();
            o.insert(
                "enum".into(),
                if items.len() == 1 {
                    items[0].clone()
                } else {
                    json!(["set", items])
                },
            );
        }
        if let Some(v) = self.min_integer {
            o.insert("minInteger".into(), json!(v));
        }
        if let Some(v) = self.max_integer {
            o.insert("maxInteger".into(), json!(v));
        }
        if let Some(v) = self.min_real {
            o.insert("minReal".into(), json!(v));
        }
        if let Some(v) = self.max_real {
            o.insert("maxReal".into(), json!(v));
        }
        if let Some(v) = self.min_length {
            o.insert("minLength".into(), json!(v));
        }
        if let Some(v) = self.max_length {
            o.insert("maxLength".into(), json!(v));
        }
        if let Some(t) = &self.ref_table {
            o.insert("refTable".into(), json!(t));
            if self.ref_type == RefType::Weak {
                o.insert("refType".into(), json!("weak"));
            }
        }
        Value::Object(o)
    }

    /// Checks an atom of the right atomic type against this type's constraints.
    pub fn check_constraints(&self, atom: &Atom) -> Result<(), OvsdbError> {
        if let Some(e) = &self.enumeration {
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
                if self.min_length.is_some_and(|m| n < m) {
                    return Err(OvsdbError::constraint(format!(
                        "\"{s}\" length {n} is less than minimum allowed length {}",
                        self.min_length.unwrap_or(0)
                    )));
                }
                if self.max_length.is_some_and(|m| n > m) {
                    return Err(OvsdbError::constraint(format!(
                        "\"{s}\" length {n} is greater than maximum allowed length {}",
                        self.max_length.unwrap_or(0)
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

/// A full column type: key, optional value (for maps), and element-count bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Type {
    /// Key type (the element type for sets and scalars).
    pub key: BaseType,
    /// Value type for maps.
    pub value: Option<BaseType>,
    /// Minimum number of elements (0 or 1).
    pub min: u64,
    /// Maximum number of elements (`u64::MAX` for "unlimited").
    pub max: u64,
}

impl Type {
    /// A scalar of the given atomic type.
    pub fn scalar(atomic: AtomicType) -> Self {
        Self {
            key: BaseType::plain(atomic),
            value: None,
            min: 1,
            max: 1,
        }
    }

    /// Parses `<type>`.
    pub fn from_json(v: &Value) -> Result<Self, OvsdbError> {
        match v {
            Value::String(_) => Ok(Self {
                key: BaseType::from_json(v)?,
                value: None,
                min: 1,
                max: 1,
            }),
            Value::Object(o) => {
                let key = BaseType::from_json(
                    o.get("key")
                        .ok_or_else(|| OvsdbError::syntax("type object must have a \"key\""))?,
                )?;
                let value = o.get("value").map(BaseType::from_json).transpose()?;
                let min = match o.get("min") {
                    None => 1,
                    Some(v) => v
                        .as_u64()
                        .filter(|m| *m <= 1)
                        .ok_or_else(|| OvsdbError::syntax("\"min\" must be 0 or 1"))?,
                };
                let max = match o.get("max") {
                    None => 1,
                    Some(Value::String(s)) if s == "unlimited" => u64::MAX,
                    Some(v) => v.as_u64().filter(|m| *m >= 1).ok_or_else(|| {
                        OvsdbError::syntax("\"max\" must be a positive integer or \"unlimited\"")
                    })?,
                };
                if min > max {
                    return Err(OvsdbError::syntax("\"min\" must not exceed \"max\""));
                }
                Ok(Self {
                    key,
                    value,
                    min,
                    max,
                })
            }
            _ => Err(OvsdbError::syntax("type must be a string or an object")),
        }
    }

    /// The schema JSON of this type.
    pub fn to_json(&self) -> Value {
        if self.value.is_none() && self.min == 1 && self.max == 1 && self.key.to_json().is_string()
        {
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
        if self.max == u64::MAX {
            o.insert("max".into(), json!("unlimited"));
        } else if self.max != 1 {
            o.insert("max".into(), json!(self.max));
        }
        Value::Object(o)
    }

    /// True for map types.
    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// True when the column holds more than one element (a set or map with
    /// `max` above 1): only those get element-wise diffs in update2 and
    /// `_is_diff` records.
    pub fn is_composite(&self) -> bool {
        self.max > 1
    }

    /// True when the column always holds exactly one atom (not a set or map).
    pub fn is_scalar(&self) -> bool {
        self.min == 1 && self.max == 1 && self.value.is_none()
    }

    /// The default datum: empty when `min` is 0, otherwise the default atom(s).
    pub fn default_datum(&self) -> Datum {
        if self.min == 0 {
            Datum::empty(self.is_map())
        } else {
            match &self.value {
                None => Datum::singleton(self.key.atomic.default_atom()),
                Some(v) => {
                    Datum::singleton_pair(self.key.atomic.default_atom(), v.atomic.default_atom())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_map_type_with_constraints() {
        let t = Type::from_json(&json!({"key": {"type":"string","maxLength":3},
            "value": {"type":"integer","minInteger":0,"maxInteger":10}, "min":0, "max":"unlimited"}))
        .unwrap();
        assert!(t.is_map());
        assert_eq!(t.max, u64::MAX);
        assert!(t
            .key
            .check_constraints(&Atom::String("abcd".into()))
            .is_err());
        let v = t.value.as_ref().unwrap();
        assert!(v.check_constraints(&Atom::Integer(11)).is_err());
        assert!(v.check_constraints(&Atom::Integer(10)).is_ok());
        assert_eq!(Type::from_json(&t.to_json()).unwrap(), t);
    }

    #[test]
    fn enum_constraint_rejects_other_values() {
        let t =
            Type::from_json(&json!({"key":{"type":"string","enum":["set",["a","b"]]}})).unwrap();
        assert!(t.key.check_constraints(&Atom::String("a".into())).is_ok());
        let e = t
            .key
            .check_constraints(&Atom::String("c".into()))
            .unwrap_err();
        assert_eq!(e.tag, "constraint violation");
    }

    #[test]
    fn rejects_bad_type_json() {
        assert!(Type::from_json(&json!("int")).is_err());
        assert!(Type::from_json(&json!({"key":"string","min":2})).is_err());
        assert!(Type::from_json(&json!({"key":"string","max":0})).is_err());
        assert!(Type::from_json(&json!(5)).is_err());
    }
}
