//! Atoms, data and rows, and their JSON notation (RFC 7047 §5.1).
//!
//! An [`Atom`] is one integer, real, boolean, string or UUID (or, inside a
//! transaction a client builds, a named UUID); a [`Datum`] is the value of a column: a
//! sorted set of atoms or a sorted map from atom to atom.  A scalar is a set of exactly
//! one atom and is written as the bare atom, like `ovsdb-server` does.  A [`Row`] is a
//! set of column values by column name (`<row>`).
//!
//! Invariants: a datum never holds duplicate keys (parsing input with duplicates is an
//! error, as in `ovsdb-server`), and its elements are kept in total order (reals
//! ordered with `f64::total_cmp`) so equality, diffing and serialisation are
//! deterministic.  The set and the map are [`AtomSet`] and [`AtomMap`], sorted
//! vectors (a scalar takes no allocation of its own; see [`crate::atoms`]).
//!
//! [`Atom::write_json`] and [`Datum::write_json`] append the JSON text of
//! `to_json` straight to a byte buffer (the same bytes `serde_json` writes for
//! the `Value`): the server writes log records, monitor updates and replies
//! of whole large transactions with them.
//!
//! Parsing comes in two strengths.  [`Datum::from_json`] follows the JSON shape alone
//! (numbers with a fraction or exponent become reals); a client uses it for values it
//! has no schema for.  [`Datum::from_json_typed`] checks a value against a
//! [`ColumnType`]: atom types and constraints, set versus map (`["map", …]` is required
//! for a map column, `["set", …]` or a bare atom for the others) and the element count.
//! Named UUIDs (`["named-uuid", name]`) are resolved there through the [`SymbolTable`]
//! of the transaction being parsed, and rejected outside one.
//!
//! All types are plain values: `Send + Sync`, no interior mutability.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Value};

use crate::atoms::{AtomMap, AtomSet};
use crate::error::{tag, OvsdbError};
use crate::types::{AtomicType, BaseType, ColumnType};
use crate::uuid::Uuid;

/// One OVSDB atomic value (RFC 7047 §5.1 `<atom>`).
#[derive(Debug, Clone)]
pub enum Atom {
    /// A 64-bit signed integer.
    Integer(i64),
    /// A double-precision real.
    Real(f64),
    /// A boolean.
    Boolean(bool),
    /// A UTF-8 string.
    String(String),
    /// A reference to an existing row.
    Uuid(Uuid),
    /// A reference to a row inserted earlier in the same transaction
    /// (`["named-uuid", "<id>"]`); only meaningful inside a transaction, and resolved
    /// to a [`Atom::Uuid`] by typed parsing with a [`SymbolTable`].
    NamedUuid(String),
}

impl Atom {
    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
            Atom::NamedUuid(_) => 5,
        }
    }

    /// The atomic type of this atom (a named UUID is a `uuid`).
    pub fn atomic_type(&self) -> AtomicType {
        match self {
            Atom::Integer(_) => AtomicType::Integer,
            Atom::Real(_) => AtomicType::Real,
            Atom::Boolean(_) => AtomicType::Boolean,
            Atom::String(_) => AtomicType::String,
            Atom::Uuid(_) | Atom::NamedUuid(_) => AtomicType::Uuid,
        }
    }

    /// JSON notation of this atom.
    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => Value::from(*i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => Value::Bool(*b),
            Atom::String(s) => Value::String(s.clone()),
            Atom::Uuid(u) => u.to_json(),
            Atom::NamedUuid(n) => Value::Array(vec![
                Value::String("named-uuid".to_owned()),
                Value::String(n.clone()),
            ]),
        }
    }

    /// Appends the JSON text of [`Atom::to_json`] to `out`: the same bytes
    /// `serde_json` writes for that `Value`, without building it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Atom::Integer(i) => {
                use std::io::Write as _;
                let _ = write!(out, "{i}");
            }
            // serde_json writes a non-finite real (a `Value::Null`) as null.
            Atom::Real(r) => {
                let _ = serde_json::to_writer(&mut *out, r);
            }
            Atom::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Atom::String(s) => write_json_str(out, s),
            Atom::Uuid(u) => u.write_json(out),
            Atom::NamedUuid(n) => {
                out.extend_from_slice(b"[\"named-uuid\",");
                write_json_str(out, n);
                out.push(b']');
            }
        }
    }

    /// Parses an atom from its JSON notation without a type: integers stay
    /// integers, numbers with a fraction or exponent become reals, named UUIDs are
    /// kept as [`Atom::NamedUuid`].
    pub fn from_json(v: &Value) -> Result<Self, OvsdbError> {
        let not_an_atom = || OvsdbError::syntax(format!("{v} is not an OVSDB atom"));
        match v {
            Value::Bool(b) => Ok(Atom::Boolean(*b)),
            Value::String(s) => Ok(Atom::String(s.clone())),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Atom::Integer(i))
                } else if n.is_u64() {
                    Err(OvsdbError::syntax(format!(
                        "integer {n} does not fit in 64 signed bits"
                    )))
                } else {
                    n.as_f64()
                        .map(Atom::Real)
                        .ok_or_else(|| OvsdbError::syntax(format!("{n} is not a finite number")))
                }
            }
            Value::Array(a) => match a.as_slice() {
                [t, Value::String(s)] if t == "uuid" => Ok(Atom::Uuid(s.parse()?)),
                [t, Value::String(s)] if t == "named-uuid" => Ok(Atom::NamedUuid(s.clone())),
                _ => Err(not_an_atom()),
            },
            _ => Err(not_an_atom()),
        }
    }

    /// Parses an atom of type `base` from JSON, resolving named UUIDs via `symtab`
    /// when given (they are a syntax error otherwise), and checks the base type's
    /// constraints.
    pub fn from_json_typed(
        v: &Value,
        base: &BaseType,
        symtab: Option<&mut SymbolTable>,
    ) -> Result<Atom, OvsdbError> {
        let atom = Self::from_json_unchecked(v, base.atomic, symtab)?;
        base.check(&atom)?;
        Ok(atom)
    }

    /// Parses an atom of the given atomic type without checking constraints.
    /// Integers are accepted where reals are expected.
    pub fn from_json_unchecked(
        v: &Value,
        atomic: AtomicType,
        symtab: Option<&mut SymbolTable>,
    ) -> Result<Atom, OvsdbError> {
        let bad = || OvsdbError::syntax(format!("expected {} but found {}", atomic.name(), v));
        Ok(match atomic {
            AtomicType::Integer => Atom::Integer(match v {
                Value::Number(n) => n.as_i64().ok_or_else(bad)?,
                _ => return Err(bad()),
            }),
            AtomicType::Real => Atom::Real(match v {
                Value::Number(n) => n.as_f64().ok_or_else(bad)?,
                _ => return Err(bad()),
            }),
            AtomicType::Boolean => Atom::Boolean(v.as_bool().ok_or_else(bad)?),
            AtomicType::String => Atom::String(v.as_str().ok_or_else(bad)?.to_owned()),
            AtomicType::Uuid => {
                let arr = v.as_array().filter(|a| a.len() == 2).ok_or_else(bad)?;
                let text = arr[1].as_str().ok_or_else(bad)?;
                match arr[0].as_str() {
                    Some("uuid") => Atom::Uuid(text.parse()?),
                    Some("named-uuid") => match symtab {
                        Some(st) => Atom::Uuid(st.reference(text)),
                        None => {
                            return Err(OvsdbError::syntax(format!(
                                "named-uuid \"{text}\" is only allowed inside a transaction"
                            )))
                        }
                    },
                    _ => return Err(bad()),
                }
            }
        })
    }

    /// The integer, if this is an integer atom.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The real, if this is a real atom.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Atom::Real(r) => Some(*r),
            _ => None,
        }
    }

    /// The string, if this is a string atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is a boolean atom.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The UUID, if this is a (resolved) UUID atom.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Atom::Uuid(u) => Some(*u),
            _ => None,
        }
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Atom {}
impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Atom {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Atom::Integer(a), Atom::Integer(b)) => a.cmp(b),
            (Atom::Real(a), Atom::Real(b)) => a.total_cmp(b),
            (Atom::Boolean(a), Atom::Boolean(b)) => a.cmp(b),
            (Atom::String(a), Atom::String(b)) => a.cmp(b),
            (Atom::Uuid(a), Atom::Uuid(b)) => a.cmp(b),
            (Atom::NamedUuid(a), Atom::NamedUuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Integer(i) => write!(f, "{i}"),
            Atom::Real(r) => write!(f, "{r}"),
            Atom::Boolean(b) => write!(f, "{b}"),
            Atom::String(s) => write!(f, "{s:?}"),
            Atom::Uuid(u) => write!(f, "{u}"),
            Atom::NamedUuid(n) => write!(f, "@{n}"),
        }
    }
}

impl From<i64> for Atom {
    fn from(v: i64) -> Self {
        Atom::Integer(v)
    }
}
impl From<f64> for Atom {
    fn from(v: f64) -> Self {
        Atom::Real(v)
    }
}
impl From<bool> for Atom {
    fn from(v: bool) -> Self {
        Atom::Boolean(v)
    }
}
impl From<&str> for Atom {
    fn from(v: &str) -> Self {
        Atom::String(v.to_owned())
    }
}
impl From<String> for Atom {
    fn from(v: String) -> Self {
        Atom::String(v)
    }
}
impl From<Uuid> for Atom {
    fn from(v: Uuid) -> Self {
        Atom::Uuid(v)
    }
}

/// Named UUIDs declared (`uuid-name`) or referenced (`named-uuid`) in one transaction.
#[derive(Debug, Default)]
pub struct SymbolTable {
    symbols: hashbrown::HashMap<String, (Uuid, bool)>,
}

impl SymbolTable {
    /// Returns the UUID for `name`, allocating one on first mention.
    pub fn reference(&mut self, name: &str) -> Uuid {
        self.symbols
            .entry(name.to_owned())
            .or_insert_with(|| (Uuid::new_v4(), false))
            .0
    }

    /// Declares `name` as the uuid-name of a row being inserted.
    pub fn declare(&mut self, name: &str) -> Result<Uuid, OvsdbError> {
        let e = self
            .symbols
            .entry(name.to_owned())
            .or_insert_with(|| (Uuid::new_v4(), false));
        if e.1 {
            return Err(OvsdbError::new(
                tag::DUPLICATE_UUID_NAME,
                format!("This \"uuid-name\" appeared on an earlier \"insert\" operation: {name}"),
            ));
        }
        e.1 = true;
        Ok(e.0)
    }

    /// The first name that was referenced but never declared, if any.
    pub fn first_undeclared(&self) -> Option<&str> {
        let mut names: Vec<&String> = self
            .symbols
            .iter()
            .filter(|(_, v)| !v.1)
            .map(|(k, _)| k)
            .collect();
        names.sort();
        names.first().map(|s| s.as_str())
    }
}

/// A column value: a set of atoms or a map (RFC 7047 §5.1 `<value>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datum {
    /// A set; a scalar is a one-element set, an absent optional value the
    /// empty set.
    Set(AtomSet),
    /// A map from keys to values.
    Map(AtomMap),
}

impl Datum {
    /// The empty set.
    pub fn empty_set() -> Self {
        Datum::Set(AtomSet::new())
    }

    /// The empty map.
    pub fn empty_map() -> Self {
        Datum::Map(AtomMap::new())
    }

    /// An empty map (`map` true) or set.
    pub fn empty(map: bool) -> Self {
        if map {
            Self::empty_map()
        } else {
            Self::empty_set()
        }
    }

    /// A set of one atom.
    pub fn singleton(a: Atom) -> Self {
        Datum::Set(AtomSet::one(a))
    }

    /// A map of one pair.
    pub fn singleton_pair(k: Atom, v: Atom) -> Self {
        Datum::Map(AtomMap::from([(k, v)]))
    }

    /// A set of the given atoms (duplicates collapse).
    pub fn set<A: Into<Atom>>(atoms: impl IntoIterator<Item = A>) -> Self {
        Datum::Set(atoms.into_iter().map(Into::into).collect())
    }

    /// A map of the given pairs (a later duplicate key wins).
    pub fn map<K: Into<Atom>, V: Into<Atom>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Datum::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A reference to the row inserted earlier in the same transaction under `name`.
    pub fn named_uuid(name: impl Into<String>) -> Self {
        Datum::singleton(Atom::NamedUuid(name.into()))
    }

    /// Number of elements (set members or map pairs).
    pub fn len(&self) -> usize {
        match self {
            Datum::Set(s) => s.len(),
            Datum::Map(m) => m.len(),
        }
    }

    /// True for the empty set or the empty map.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key atoms (set members or map keys), in order.
    pub fn keys(&self) -> impl Iterator<Item = &Atom> + '_ {
        // Not boxed: callers walk the atoms of every column of every row.
        let (set, map) = match self {
            Datum::Set(s) => (Some(s.iter()), None),
            Datum::Map(m) => (None, Some(m.keys())),
        };
        set.into_iter().flatten().chain(map.into_iter().flatten())
    }

    /// The value atoms of a map (empty for sets).
    pub fn values(&self) -> impl Iterator<Item = &Atom> + '_ {
        match self {
            Datum::Set(_) => None,
            Datum::Map(m) => Some(m.values()),
        }
        .into_iter()
        .flatten()
    }

    /// The first key atom, if any (the atom of a scalar).
    pub fn first(&self) -> Option<&Atom> {
        self.keys().next()
    }

    /// All UUID atoms in keys and values.
    pub fn uuids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.keys().chain(self.values()).filter_map(Atom::as_uuid)
    }

    /// The single atom of a one-element set (a scalar column's value).
    pub fn as_atom(&self) -> Option<&Atom> {
        match self {
            Datum::Set(s) if s.len() == 1 => s.iter().next(),
            _ => None,
        }
    }

    /// The scalar string value, if this is a one-element set of a string.
    pub fn as_str(&self) -> Option<&str> {
        self.as_atom().and_then(Atom::as_str)
    }

    /// The scalar integer value.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_atom().and_then(Atom::as_i64)
    }

    /// The scalar boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        self.as_atom().and_then(Atom::as_bool)
    }

    /// The scalar UUID value.
    pub fn as_uuid(&self) -> Option<Uuid> {
        self.as_atom().and_then(Atom::as_uuid)
    }

    /// The set, if this is a set.
    pub fn as_set(&self) -> Option<&AtomSet> {
        match self {
            Datum::Set(s) => Some(s),
            Datum::Map(_) => None,
        }
    }

    /// The map, if this is a map.
    pub fn as_map(&self) -> Option<&AtomMap> {
        match self {
            Datum::Map(m) => Some(m),
            Datum::Set(_) => None,
        }
    }

    /// True when every key (and, for maps, pair) of `other` is in `self`.
    pub fn includes(&self, other: &Datum) -> bool {
        match (self, other) {
            (Datum::Set(a), Datum::Set(b)) => b.is_subset(a),
            (Datum::Map(a), Datum::Map(b)) => b.iter().all(|(k, v)| a.get(k) == Some(v)),
            _ => false,
        }
    }

    /// True when no key (or pair) of `other` is in `self`.
    pub fn excludes(&self, other: &Datum) -> bool {
        match (self, other) {
            (Datum::Set(a), Datum::Set(b)) => b.iter().all(|x| !a.contains(x)),
            (Datum::Map(a), Datum::Map(b)) => b.iter().all(|(k, v)| a.get(k) != Some(v)),
            _ => true,
        }
    }

    /// JSON notation: a one-element set is written as the bare atom, other
    /// sets as `["set", […]]`, maps as `["map", [[k, v], …]]`.
    pub fn to_json(&self) -> Value {
        // Built directly: `json!` would serialise each inner `Value` again.
        let tagged = |tag: &str, items: Vec<Value>| {
            Value::Array(vec![Value::String(tag.to_owned()), Value::Array(items)])
        };
        match self {
            Datum::Set(s) if s.len() == 1 => s.iter().next().map_or(Value::Null, Atom::to_json),
            Datum::Set(s) => tagged("set", s.iter().map(Atom::to_json).collect()),
            Datum::Map(m) => tagged(
                "map",
                m.iter()
                    .map(|(k, v)| Value::Array(vec![k.to_json(), v.to_json()]))
                    .collect(),
            ),
        }
    }

    /// Appends the JSON text of [`Datum::to_json`] to `out`: the same bytes
    /// `serde_json` writes for that `Value` (compact), without building it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Datum::Set(s) if s.len() == 1 => {
                if let Some(a) = s.iter().next() {
                    a.write_json(out);
                }
            }
            Datum::Set(s) => {
                out.extend_from_slice(b"[\"set\",[");
                for (i, a) in s.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    a.write_json(out);
                }
                out.extend_from_slice(b"]]");
            }
            Datum::Map(m) => {
                out.extend_from_slice(b"[\"map\",[");
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    k.write_json(out);
                    out.push(b',');
                    v.write_json(out);
                    out.push(b']');
                }
                out.extend_from_slice(b"]]");
            }
        }
    }

    /// Parses a value following only the JSON shape (no schema).
    pub fn from_json(v: &Value) -> Result<Self, OvsdbError> {
        if let Some([Value::String(t), Value::Array(items)]) = v.as_array().map(Vec::as_slice) {
            match t.as_str() {
                "set" => {
                    let mut set = AtomSet::new();
                    for item in items {
                        if !set.insert(Atom::from_json(item)?) {
                            return Err(OvsdbError::syntax(format!(
                                "set {v} contains a duplicate"
                            )));
                        }
                    }
                    return Ok(Datum::Set(set));
                }
                "map" => {
                    let mut map = AtomMap::new();
                    for pair in items {
                        let Some([k, val]) = pair.as_array().map(Vec::as_slice) else {
                            return Err(OvsdbError::syntax(format!(
                                "map entry {pair} is not a [key, value] pair"
                            )));
                        };
                        if map
                            .insert(Atom::from_json(k)?, Atom::from_json(val)?)
                            .is_some()
                        {
                            return Err(OvsdbError::syntax(format!(
                                "map {v} contains a duplicate key"
                            )));
                        }
                    }
                    return Ok(Datum::Map(map));
                }
                _ => {}
            }
        }
        Ok(Datum::singleton(Atom::from_json(v)?))
    }

    /// Parses a value of type `ty`, checking atom types and constraints, the shape
    /// (a map column needs `["map", …]`) and the element count.  Named UUIDs are
    /// resolved through `symtab` and rejected without one.
    pub fn from_json_typed(
        v: &Value,
        ty: &ColumnType,
        symtab: Option<&mut SymbolTable>,
    ) -> Result<Datum, OvsdbError> {
        Self::parse_typed(v, ty, symtab, true)
    }

    /// [`Datum::from_json_typed`], checking the element count only when
    /// `check_size` (a diff may hold any number of elements).
    fn parse_typed(
        v: &Value,
        ty: &ColumnType,
        mut symtab: Option<&mut SymbolTable>,
        check_size: bool,
    ) -> Result<Datum, OvsdbError> {
        let d = if let Some(vt) = &ty.value {
            let arr = v
                .as_array()
                .filter(|a| a.len() == 2 && a[0] == "map")
                .ok_or_else(|| {
                    OvsdbError::syntax(format!("expected [\"map\", [...]] but found {v}"))
                })?;
            let pairs = arr[1].as_array().ok_or_else(|| {
                OvsdbError::syntax("the second element of a map must be an array of pairs")
            })?;
            let mut m = AtomMap::new();
            for p in pairs {
                let pa = p.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                    OvsdbError::syntax(format!("map element {p} must be a 2-element array"))
                })?;
                let k = Atom::from_json_typed(&pa[0], &ty.key, symtab.as_deref_mut())?;
                let val = Atom::from_json_typed(&pa[1], vt, symtab.as_deref_mut())?;
                if m.insert(k, val).is_some() {
                    return Err(OvsdbError::syntax(format!(
                        "map contains duplicate key {}",
                        pa[0]
                    )));
                }
            }
            Datum::Map(m)
        } else {
            let is_set = v.as_array().is_some_and(|a| a.len() == 2 && a[0] == "set");
            if is_set {
                let items = v[1].as_array().ok_or_else(|| {
                    OvsdbError::syntax("the second element of a set must be an array")
                })?;
                let mut s = AtomSet::new();
                for it in items {
                    let a = Atom::from_json_typed(it, &ty.key, symtab.as_deref_mut())?;
                    if !s.insert(a) {
                        return Err(OvsdbError::syntax(format!(
                            "set contains duplicate value {it}"
                        )));
                    }
                }
                Datum::Set(s)
            } else {
                Datum::singleton(Atom::from_json_typed(v, &ty.key, symtab)?)
            }
        };
        let n = d.len() as u64;
        if check_size && (n < ty.min || ty.max.is_some_and(|max| n > max)) {
            return Err(OvsdbError::syntax(format!(
                "{v} must have {} to {} members but {n} are present",
                ty.min,
                ty.max_text()
            )));
        }
        Ok(d)
    }

    /// Parses a set of atoms of `base` without its enum (used for a schema's `enum`):
    /// any number of elements, each checked against the other constraints.
    pub fn from_json_enum(v: &Value, base: &BaseType) -> Result<BTreeSet<Atom>, OvsdbError> {
        let ty = ColumnType {
            key: BaseType {
                enum_values: None,
                ..base.clone()
            },
            value: None,
            min: 0,
            max: None,
        };
        match Datum::from_json_typed(v, &ty, None)? {
            Datum::Set(s) => Ok(s.into_iter().collect()),
            Datum::Map(_) => Err(OvsdbError::syntax(format!("enum {v} must be a set"))),
        }
    }

    /// The update2/`_is_diff` difference from `old` to `new` for a column of type `ty`
    /// (the inverse of [`Datum::apply_diff`]), as ovsdb-server computes it
    /// (`ovsdb_datum_diff`): the new value for columns holding at most one element
    /// (a cleared optional column is sent as `["set",[]]`), the symmetric difference
    /// for sets, and for maps the removed pairs, the changed keys with their new
    /// values and the added pairs.
    pub fn diff(old: &Datum, new: &Datum, ty: &ColumnType) -> Datum {
        if !ty.is_composite() {
            return new.clone();
        }
        match (old, new) {
            (Datum::Set(a), Datum::Set(b)) => Datum::Set(a.symmetric_difference(b)),
            (Datum::Map(a), Datum::Map(b)) => {
                let mut d = AtomMap::new();
                for (k, v) in a {
                    match b.get(k) {
                        None => {
                            d.insert(k.clone(), v.clone());
                        }
                        Some(nv) if nv != v => {
                            d.insert(k.clone(), nv.clone());
                        }
                        _ => {}
                    }
                }
                for (k, v) in b {
                    if !a.contains_key(k) {
                        d.insert(k.clone(), v.clone());
                    }
                }
                Datum::Map(d)
            }
            // Shapes differ only for empty values: the diff is the new value.
            _ => new.clone(),
        }
    }

    /// Applies an update2/update3/`_is_diff` difference for a column of type `ty`
    /// (ovsdb-server(7), "update2 notification"):
    ///
    /// * columns holding at most one element: the diff *is* the new value;
    /// * sets: the new value is the symmetric difference of old and diff;
    /// * maps: a diff key absent from the old map is inserted, a key present
    ///   with the same value is removed, a key present with a different
    ///   value takes the diff's value.
    pub fn apply_diff(&mut self, diff: &Datum, ty: &ColumnType) -> Result<(), OvsdbError> {
        if !ty.is_composite() {
            *self = diff.clone();
            return Ok(());
        }
        match (&mut *self, diff) {
            (Datum::Set(old), Datum::Set(d)) => {
                for atom in d {
                    if !old.remove(atom) {
                        old.insert(atom.clone());
                    }
                }
            }
            // An empty diff changes nothing, whatever its shape.
            (_, d) if d.is_empty() => {}
            (Datum::Map(old), Datum::Map(d)) => {
                for (k, v) in d {
                    match old.get(k) {
                        Some(cur) if cur == v => {
                            old.remove(k);
                        }
                        _ => {
                            old.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (Datum::Set(old), Datum::Map(d)) if old.is_empty() => {
                *self = Datum::Map(d.clone());
            }
            _ => {
                return Err(OvsdbError::syntax(
                    "a diff's shape (set or map) does not match the column's value",
                ))
            }
        }
        Ok(())
    }

    /// Parses the value of a diff (or of a row a server sent) for a column of type
    /// `ty`: element counts are not checked for sets and maps, whose diffs may hold
    /// more elements than a value.
    pub fn diff_from_json(v: &Value, ty: &ColumnType) -> Result<Datum, OvsdbError> {
        if !ty.is_composite() {
            return Datum::from_json_typed(v, ty, None);
        }
        // Any number of elements (no copy of the type: this runs for every
        // composite column of every row a client decodes).
        Datum::parse_typed(v, ty, None, false)
    }
}

/// Appends `s` as a JSON string (quoted and escaped exactly as `serde_json`
/// writes it) to `out`.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl<A: Into<Atom>> From<A> for Datum {
    fn from(a: A) -> Self {
        Datum::singleton(a.into())
    }
}

impl fmt::Display for Datum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// A row as the protocol writes it (`<row>`): column name to value.  Rows read from a
/// server may omit columns (e.g. those not selected).
pub type Row = BTreeMap<String, Datum>;

/// Serialises a row as a JSON object of column values.
pub fn row_to_json(row: &Row) -> Value {
    Value::Object(row.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// Parses a JSON object of column values without type information.
pub fn row_from_json(v: &Value) -> Result<Row, OvsdbError> {
    let obj = v
        .as_object()
        .ok_or_else(|| OvsdbError::syntax(format!("a row must be a JSON object, got {v}")))?;
    obj.iter()
        .map(|(k, v)| {
            Datum::from_json(v)
                .map(|d| (k.clone(), d))
                .map_err(|e| OvsdbError::syntax(format!("column \"{k}\": {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ty(v: Value) -> ColumnType {
        ColumnType::from_json(&v).expect("test column type parses")
    }

    fn set_ty(atomic: AtomicType) -> ColumnType {
        ColumnType {
            key: BaseType::plain(atomic),
            value: None,
            min: 0,
            max: None,
        }
    }

    fn applied(old: &Datum, diff: &Datum, ty: &ColumnType) -> Datum {
        let mut d = old.clone();
        d.apply_diff(diff, ty).unwrap();
        d
    }

    // From nestdb-client.

    #[test]
    fn atoms_round_trip() {
        let u = Uuid::new_v4();
        for atom in [
            Atom::Integer(-42),
            Atom::Real(1.5),
            Atom::Boolean(true),
            Atom::String("eth0".into()),
            Atom::Uuid(u),
            Atom::NamedUuid("row1".into()),
        ] {
            let j = atom.to_json();
            assert_eq!(Atom::from_json(&j).unwrap(), atom, "round trip of {j}");
        }
        assert_eq!(Atom::Uuid(u).to_json(), json!(["uuid", u.to_string()]));
    }

    #[test]
    fn datum_json_notation() {
        // Scalars are bare atoms; other sets are tagged.
        assert_eq!(Datum::from("a").to_json(), json!("a"));
        assert_eq!(Datum::empty_set().to_json(), json!(["set", []]));
        assert_eq!(Datum::set([2i64, 1]).to_json(), json!(["set", [1, 2]]));
        assert_eq!(
            Datum::map([("b", 2i64), ("a", 1)]).to_json(),
            json!(["map", [["a", 1], ["b", 2]]])
        );
        for d in [
            Datum::from(7i64),
            Datum::set(["x", "y", "z"]),
            Datum::map([("k", "v")]),
            Datum::empty_map(),
            Datum::set([Uuid::new_v4(), Uuid::new_v4()]),
        ] {
            assert_eq!(Datum::from_json(&d.to_json()).unwrap(), d);
        }
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        for bad in [
            json!(null),
            json!({"a": 1}),
            json!(["uuid", "not-a-uuid"]),
            json!(["set", [1, 1]]),
            json!(["map", [[1]]]),
            json!(["map", [[1, 2], [1, 3]]]),
            json!(["set", [["set", []]]]),
            json!(18446744073709551615u64),
        ] {
            assert!(Datum::from_json(&bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn typed_parse_checks_constraints() {
        let parse = |v: Value, t: &ColumnType| Datum::from_json_typed(&v, t, None);
        let port = ty(json!({"key": {"type": "integer", "minInteger": 1, "maxInteger": 65535}}));
        assert_eq!(parse(json!(80), &port).unwrap(), Datum::from(80i64));
        assert!(parse(json!(0), &port).is_err());
        assert!(parse(json!("80"), &port).is_err());
        assert!(parse(json!(["set", []]), &port).is_err());

        let proto = ty(json!({"key": {"type": "string", "enum": ["set", ["TCP", "UDP"]]}}));
        assert!(parse(json!("UDP"), &proto).is_ok());
        assert!(parse(json!("ICMP"), &proto).is_err());

        // RFC 7047 §5.1: a map column's value is ["map", …] and a set column's is a
        // set or an atom; the old client also took ["set", []] for an empty map and
        // ["map", []] for an empty set, which ovsdb-server rejects.
        let ids = ty(json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}));
        assert!(parse(json!(["set", []]), &ids).is_err());
        assert_eq!(parse(json!(["map", []]), &ids).unwrap(), Datum::empty_map());
        assert!(parse(json!("x"), &ids).is_err());
        let tags = ty(json!({"key": "string", "min": 0, "max": "unlimited"}));
        assert!(parse(json!(["map", []]), &tags).is_err());
        assert_eq!(
            parse(json!(["set", []]), &tags).unwrap(),
            Datum::empty_set()
        );
        assert!(parse(json!(["map", [["a", "b"]]]), &tags).is_err());

        let real = ty(json!("real"));
        assert_eq!(parse(json!(3), &real).unwrap(), Datum::from(3.0));
    }

    #[test]
    fn set_diff_is_symmetric_difference() {
        let t = ty(json!({"key": "string", "min": 0, "max": "unlimited"}));
        let mut d = Datum::set(["a", "b", "c"]);
        d.apply_diff(&Datum::set(["b", "d"]), &t).unwrap();
        assert_eq!(d, Datum::set(["a", "c", "d"]));
        // Applying the same diff again restores the old value.
        d.apply_diff(&Datum::set(["b", "d"]), &t).unwrap();
        assert_eq!(d, Datum::set(["a", "b", "c"]));
    }

    #[test]
    fn map_diff_inserts_updates_and_deletes() {
        let t = ty(json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}));
        let mut d = Datum::map([("keep", "1"), ("change", "old"), ("drop", "x")]);
        let diff = Datum::map([("change", "new"), ("drop", "x"), ("add", "y")]);
        d.apply_diff(&diff, &t).unwrap();
        assert_eq!(
            d,
            Datum::map([("keep", "1"), ("change", "new"), ("add", "y")])
        );

        let mut empty = Datum::empty_map();
        empty.apply_diff(&Datum::map([("a", "b")]), &t).unwrap();
        assert_eq!(empty, Datum::map([("a", "b")]));
    }

    #[test]
    fn single_valued_diff_replaces() {
        let scalar = ty(json!("integer"));
        let mut d = Datum::from(1i64);
        d.apply_diff(&Datum::from(2i64), &scalar).unwrap();
        assert_eq!(d, Datum::from(2i64));

        let optional = ty(json!({"key": "string", "min": 0, "max": 1}));
        let mut d = Datum::from("a");
        d.apply_diff(&Datum::from("b"), &optional).unwrap();
        assert_eq!(d, Datum::from("b"));
        d.apply_diff(&Datum::empty_set(), &optional).unwrap();
        assert_eq!(d, Datum::empty_set());
    }

    // From nestdb.

    #[test]
    fn optional_scalar_diff_is_the_new_value() {
        // As ovsdb-server (ovsdb_datum_diff: not composite → new value).
        let t = ColumnType {
            key: BaseType::plain(AtomicType::Integer),
            value: None,
            min: 0,
            max: Some(1),
        };
        let five = Datum::from_json_typed(&json!(5), &t, None).unwrap();
        let seven = Datum::from_json_typed(&json!(7), &t, None).unwrap();
        let empty = Datum::from_json_typed(&json!(["set", []]), &t, None).unwrap();
        assert_eq!(Datum::diff(&five, &seven, &t), seven);
        assert_eq!(
            Datum::diff(&seven, &empty, &t).to_json(),
            json!(["set", []])
        );
        assert_eq!(applied(&five, &seven, &t), seven);
        assert_eq!(applied(&seven, &empty, &t), empty);
        let parsed = Datum::diff_from_json(&json!(["set", []]), &t).unwrap();
        assert_eq!(parsed, empty);
    }

    #[test]
    fn json_round_trip_of_sets_maps_and_scalars() {
        let t = set_ty(AtomicType::String);
        let d = Datum::from_json_typed(&json!(["set", ["b", "a"]]), &t, None).unwrap();
        assert_eq!(d.to_json(), json!(["set", ["a", "b"]]));
        let one = Datum::from_json_typed(&json!("x"), &t, None).unwrap();
        assert_eq!(one.to_json(), json!("x"));
        let mt = ColumnType {
            value: Some(BaseType::plain(AtomicType::Integer)),
            ..set_ty(AtomicType::String)
        };
        let m = Datum::from_json_typed(&json!(["map", [["k", 1]]]), &mt, None).unwrap();
        assert_eq!(m.to_json(), json!(["map", [["k", 1]]]));
    }

    #[test]
    fn rejects_duplicates_wrong_types_and_sizes() {
        let t = set_ty(AtomicType::Integer);
        assert!(Datum::from_json_typed(&json!(["set", [1, 1]]), &t, None).is_err());
        assert!(Datum::from_json_typed(&json!("1"), &t, None).is_err());
        let scalar = ColumnType::scalar(AtomicType::Integer);
        let e = Datum::from_json_typed(&json!(["set", []]), &scalar, None).unwrap_err();
        assert_eq!(e.tag, "syntax error");
        assert!(Datum::from_json_typed(
            &json!(["uuid", "nope"]),
            &ColumnType::scalar(AtomicType::Uuid),
            None
        )
        .is_err());
    }

    #[test]
    fn named_uuids_resolve_consistently() {
        let mut st = SymbolTable::default();
        let t = ColumnType::scalar(AtomicType::Uuid);
        let a = Datum::from_json_typed(&json!(["named-uuid", "r"]), &t, Some(&mut st)).unwrap();
        assert_eq!(st.first_undeclared(), Some("r"));
        let u = st.declare("r").unwrap();
        assert_eq!(a.first().and_then(Atom::as_uuid), Some(u));
        assert!(st.declare("r").is_err());
        assert_eq!(st.first_undeclared(), None);
        assert!(Datum::from_json_typed(&json!(["named-uuid", "r"]), &t, None).is_err());
    }

    #[test]
    fn diff_and_apply_diff_are_inverse() {
        let mt = ColumnType {
            value: Some(BaseType::plain(AtomicType::Integer)),
            ..set_ty(AtomicType::String)
        };
        let parse = |v: Value, t: &ColumnType| Datum::from_json_typed(&v, t, None).unwrap();
        let old = parse(json!(["map", [["a", 1], ["b", 2], ["c", 3]]]), &mt);
        let new = parse(json!(["map", [["a", 1], ["b", 5], ["d", 4]]]), &mt);
        let d = Datum::diff(&old, &new, &mt);
        assert_eq!(d.to_json(), json!(["map", [["b", 5], ["c", 3], ["d", 4]]]));
        assert_eq!(applied(&old, &d, &mt), new);
        let st = set_ty(AtomicType::String);
        let o = parse(json!(["set", ["a", "b"]]), &st);
        let n = parse(json!(["set", ["b", "c"]]), &st);
        let sd = Datum::diff(&o, &n, &st);
        assert_eq!(sd.to_json(), json!(["set", ["a", "c"]]));
        assert_eq!(applied(&o, &sd, &st), n);
    }

    fn arb_atom() -> impl Strategy<Value = Atom> {
        prop_oneof![
            (-3i64..3).prop_map(Atom::Integer),
            "[a-c]{0,2}".prop_map(Atom::String),
            any::<bool>().prop_map(Atom::Boolean),
        ]
    }

    fn arb_any_atom() -> impl Strategy<Value = Atom> {
        prop_oneof![
            any::<i64>().prop_map(Atom::Integer),
            any::<f64>().prop_map(Atom::Real),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(1e300)]
                .prop_map(Atom::Real),
            any::<bool>().prop_map(Atom::Boolean),
            "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}\u{2028}])*".prop_map(Atom::String),
            any::<u128>().prop_map(|b| Atom::Uuid(Uuid(uuid::Uuid::from_u128(b)))),
            "[a-z0-9_\"]{1,8}".prop_map(Atom::NamedUuid),
        ]
    }

    proptest! {
        // Fixed seed and no regression files: the same cases on every run.
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        // The direct writer is byte for byte what serde_json writes for
        // `to_json`'s Value, for every kind of atom (escapes, non-ASCII and
        // control characters, every real including the non-finite ones).
        #[test]
        fn write_json_is_to_json_text(
            set in proptest::collection::btree_set(arb_any_atom(), 0..4),
            map in proptest::collection::btree_map(arb_any_atom(), arb_any_atom(), 0..4),
        ) {
            for d in [Datum::Set(set.iter().cloned().collect()), Datum::Map(map.clone().into_iter().collect())] {
                let mut out = Vec::new();
                d.write_json(&mut out);
                prop_assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&d.to_json()).unwrap()
                );
            }
            for a in set.iter().chain(map.values()) {
                let mut out = Vec::new();
                a.write_json(&mut out);
                prop_assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&a.to_json()).unwrap()
                );
            }
        }

        #[test]
        fn json_round_trips(set in proptest::collection::btree_set(arb_atom(), 0..6),
                            map in proptest::collection::btree_map(arb_atom(), arb_atom(), 0..6)) {
            let s = Datum::Set(set.into_iter().collect());
            prop_assert_eq!(Datum::from_json(&s.to_json()).unwrap(), s);
            let m = Datum::Map(map.into_iter().collect());
            let back = Datum::from_json(&m.to_json()).unwrap();
            if m.is_empty() {
                prop_assert!(back.is_empty());
            } else {
                prop_assert_eq!(back, m);
            }
        }

        #[test]
        fn is_default_agrees_with_default_datum(
            set in proptest::collection::btree_set(arb_atom(), 0..3),
            map in proptest::collection::btree_map(arb_atom(), arb_atom(), 0..3),
            key in prop_oneof![Just("integer"), Just("string"), Just("boolean")],
            value in prop_oneof![Just("integer"), Just("string"), Just("boolean")],
            min in 0u64..2,
        ) {
            let types = [
                ty(json!({"key": key, "min": min, "max": "unlimited"})),
                ty(json!({"key": key, "value": value, "min": min, "max": "unlimited"})),
            ];
            for t in &types {
                for d in [Datum::Set(set.iter().cloned().collect()), Datum::Map(map.clone().into_iter().collect()),
                          t.default_datum(), Datum::empty_set(), Datum::empty_map()] {
                    prop_assert_eq!(t.is_default(&d), d == t.default_datum(), "{:?} {:?}", t, d);
                }
            }
        }

        #[test]
        fn keys_and_values_walk_sets_and_maps(
            set in proptest::collection::btree_set(arb_atom(), 0..4),
            map in proptest::collection::btree_map(arb_atom(), arb_atom(), 0..4),
        ) {
            let s = Datum::Set(set.iter().cloned().collect());
            prop_assert_eq!(s.keys().cloned().collect::<Vec<_>>(), set.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(s.values().count(), 0);
            let m = Datum::Map(map.clone().into_iter().collect());
            prop_assert_eq!(m.keys().cloned().collect::<Vec<_>>(), map.keys().cloned().collect::<Vec<_>>());
            prop_assert_eq!(m.values().cloned().collect::<Vec<_>>(), map.values().cloned().collect::<Vec<_>>());
        }

        #[test]
        fn set_diffs_apply(old in proptest::collection::btree_set("[a-e]", 0..5),
                           new in proptest::collection::btree_set("[a-e]", 0..5)) {
            let t = ty(json!({"key": "string", "min": 0, "max": "unlimited"}));
            let (old, new) = (Datum::set(old), Datum::set(new));
            let mut cur = old.clone();
            cur.apply_diff(&Datum::diff(&old, &new, &t), &t).unwrap();
            prop_assert_eq!(cur, new);
        }

        #[test]
        fn map_diffs_apply(old in proptest::collection::btree_map("[a-e]", "[xy]", 0..5),
                           new in proptest::collection::btree_map("[a-e]", "[xy]", 0..5)) {
            let t = ty(json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}));
            let (old, new) = (Datum::map(old), Datum::map(new));
            let mut cur = old.clone();
            cur.apply_diff(&Datum::diff(&old, &new, &t), &t).unwrap();
            prop_assert_eq!(cur, new);
        }

        #[test]
        fn diff_then_apply_reconstructs_sets_and_maps(
            a in proptest::collection::btree_map("[a-d]", "[x-z]", 0..5),
            b in proptest::collection::btree_map("[a-d]", "[x-z]", 0..5),
        ) {
            let mt = ColumnType {
                value: Some(BaseType::plain(AtomicType::String)),
                ..set_ty(AtomicType::String)
            };
            let to_map = |m: &BTreeMap<String, String>| {
                Datum::Map(m.iter().map(|(k, v)| (Atom::String(k.clone()), Atom::String(v.clone()))).collect())
            };
            let (old, new) = (to_map(&a), to_map(&b));
            prop_assert_eq!(applied(&old, &Datum::diff(&old, &new, &mt), &mt), new);
            let st = set_ty(AtomicType::String);
            let to_set = |m: &BTreeMap<String, String>| {
                Datum::Set(m.keys().map(|k| Atom::String(k.clone())).collect())
            };
            let (old, new) = (to_set(&a), to_set(&b));
            prop_assert_eq!(applied(&old, &Datum::diff(&old, &new, &st), &st), new);
        }
    }

    #[test]
    fn rows_round_trip_without_a_schema() {
        let u = Uuid::new_v4();
        let row: Row = [
            ("name".to_string(), Datum::from("pod-a")),
            ("peer".to_string(), Datum::from(u)),
            ("ids".to_string(), Datum::map([("k", "v")])),
        ]
        .into_iter()
        .collect();
        assert_eq!(row_from_json(&row_to_json(&row)).unwrap(), row);
        assert!(row_from_json(&json!([1])).is_err());
    }
}
