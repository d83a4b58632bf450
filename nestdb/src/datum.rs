//! Atoms and datums, and their JSON notation (RFC 7047 §5.1).
//!
//! An [`Atom`] is one integer, real, boolean, string or UUID; a [`Datum`] is the value of
//! a column: a sorted set of atoms or a sorted map from atom to atom.  Scalars are sets of
//! exactly one atom.  Invariant: a datum never holds duplicate keys, and its elements are
//! kept in total order (reals ordered with `f64::total_cmp`) so equality and diffing are
//! structural.  Named UUIDs (`["named-uuid", name]`) are resolved through a
//! [`SymbolTable`] owned by the transaction being parsed.  Plain data, thread-safe.

use crate::error::OvsdbError;
use crate::types::{AtomicType, BaseType, Type};
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// One OVSDB atomic value.
#[derive(Debug, Clone)]
pub enum Atom {
    /// Integer.
    Integer(i64),
    /// Real.
    Real(f64),
    /// Boolean.
    Boolean(bool),
    /// String.
    String(String),
    /// UUID.
    Uuid(Uuid),
}

impl Atom {
    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
        }
    }

    /// The atomic type of this atom.
    pub fn atomic_type(&self) -> AtomicType {
        match self {
            Atom::Integer(_) => AtomicType::Integer,
            Atom::Real(_) => AtomicType::Real,
            Atom::Boolean(_) => AtomicType::Boolean,
            Atom::String(_) => AtomicType::String,
            Atom::Uuid(_) => AtomicType::Uuid,
        }
    }

    /// The JSON notation of this atom.
    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.to_string()]),
        }
    }

    /// Returns the UUID if this atom is one.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match self {
            Atom::Uuid(u) => Some(*u),
            _ => None,
        }
    }

    /// Parses an atom of type `base` from JSON, resolving named UUIDs via `symtab` when
    /// given, and checks the base type's constraints.
    pub fn from_json(
        v: &Value,
        base: &BaseType,
        symtab: Option<&mut SymbolTable>,
    ) -> Result<Atom, OvsdbError> {
        let atom = Self::from_json_unchecked(v, base.atomic, symtab)?;
        base.check_constraints(&atom)?;
        Ok(atom)
    }

    /// Parses an atom of the given atomic type without checking constraints.
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
                    Some("uuid") => Atom::Uuid(Uuid::parse_str(text).map_err(|_| {
                        OvsdbError::syntax(format!("\"{text}\" is not a valid UUID"))
                    })?),
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
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// Named UUIDs declared (`uuid-name`) or referenced (`named-uuid`) in one transaction.
#[derive(Debug, Default)]
pub struct SymbolTable {
    symbols: HashMap<String, (Uuid, bool)>,
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
                "duplicate uuid-name",
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

/// The value of a column: a set (scalars are one-element sets) or a map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datum {
    /// A set of atoms.
    Set(BTreeSet<Atom>),
    /// A map from key atoms to value atoms.
    Map(BTreeMap<Atom, Atom>),
}

impl Datum {
    /// An empty set or map.
    pub fn empty(map: bool) -> Self {
        if map {
            Datum::Map(BTreeMap::new())
        } else {
            Datum::Set(BTreeSet::new())
        }
    }

    /// A set of one atom.
    pub fn singleton(a: Atom) -> Self {
        Datum::Set(BTreeSet::from([a]))
    }

    /// A map of one pair.
    pub fn singleton_pair(k: Atom, v: Atom) -> Self {
        Datum::Map(BTreeMap::from([(k, v)]))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Datum::Set(s) => s.len(),
            Datum::Map(m) => m.len(),
        }
    }

    /// True when the datum has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key atoms, in order.
    pub fn keys(&self) -> Box<dyn Iterator<Item = &Atom> + '_> {
        match self {
            Datum::Set(s) => Box::new(s.iter()),
            Datum::Map(m) => Box::new(m.keys()),
        }
    }

    /// The value atoms of a map (empty for sets).
    pub fn values(&self) -> Box<dyn Iterator<Item = &Atom> + '_> {
        match self {
            Datum::Set(_) => Box::new(std::iter::empty()),
            Datum::Map(m) => Box::new(m.values()),
        }
    }

    /// The single atom of a scalar datum.
    pub fn first(&self) -> Option<&Atom> {
        self.keys().next()
    }

    /// JSON notation: a bare atom for one-element sets, `["set", [...]]` otherwise,
    /// `["map", [[k, v], ...]]` for maps.
    pub fn to_json(&self) -> Value {
        match self {
            Datum::Set(s) if s.len() == 1 => {
                s.iter().next().map(Atom::to_json).unwrap_or(Value::Null)
            }
            Datum::Set(s) => json!(["set", s.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Datum::Map(m) => json!([
                "map",
                m.iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// Parses a datum of type `ty`, checking atom constraints and the element count.
    pub fn from_json(
        v: &Value,
        ty: &Type,
        mut symtab: Option<&mut SymbolTable>,
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
            let mut m = BTreeMap::new();
            for p in pairs {
                let pa = p.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
                    OvsdbError::syntax(format!("map element {p} must be a 2-element array"))
                })?;
                let k = Atom::from_json(&pa[0], &ty.key, symtab.as_deref_mut())?;
                let val = Atom::from_json(&pa[1], vt, symtab.as_deref_mut())?;
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
                let mut s = BTreeSet::new();
                for it in items {
                    let a = Atom::from_json(it, &ty.key, symtab.as_deref_mut())?;
                    if !s.insert(a) {
                        return Err(OvsdbError::syntax(format!(
                            "set contains duplicate value {it}"
                        )));
                    }
                }
                Datum::Set(s)
            } else {
                Datum::singleton(Atom::from_json(v, &ty.key, symtab)?)
            }
        };
        let n = d.len() as u64;
        if n < ty.min || n > ty.max {
            return Err(OvsdbError::syntax(format!(
                "{v} must have {} to {} members but {n} are present",
                ty.min,
                if ty.max == u64::MAX {
                    "unlimited".to_string()
                } else {
                    ty.max.to_string()
                }
            )));
        }
        Ok(d)
    }

    /// Parses a set of atoms of `base` (used for schema `enum`), without constraint checks.
    pub fn from_json_untyped_set(v: &Value, base: &BaseType) -> Result<Vec<Atom>, OvsdbError> {
        let ty = Type {
            key: BaseType::plain(base.atomic),
            value: None,
            min: 0,
            max: u64::MAX,
        };
        Ok(Datum::from_json(v, &ty, None)?.keys().cloned().collect())
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

    /// The update2/`_is_diff` difference from `old` to `new` for a column of type `ty`:
    /// the new value for columns holding at most one element (scalars and optional
    /// scalars, as ovsdb-server: a cleared optional column is sent as `["set",[]]`),
    /// the symmetric difference for sets, and for maps the removed keys (old pair),
    /// changed keys (new pair) and added keys.
    pub fn diff(old: &Datum, new: &Datum, ty: &Type) -> Datum {
        if !ty.is_composite() {
            return new.clone();
        }
        match (old, new) {
            (Datum::Set(a), Datum::Set(b)) => {
                Datum::Set(a.symmetric_difference(b).cloned().collect())
            }
            (Datum::Map(a), Datum::Map(b)) => {
                let mut d = BTreeMap::new();
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
            _ => new.clone(),
        }
    }

    /// Applies an update2/`_is_diff` difference produced by [`Datum::diff`].
    pub fn apply_diff(&self, diff: &Datum, ty: &Type) -> Datum {
        if !ty.is_composite() {
            return diff.clone();
        }
        match (self, diff) {
            (Datum::Set(a), Datum::Set(d)) => {
                Datum::Set(a.symmetric_difference(d).cloned().collect())
            }
            (Datum::Map(a), Datum::Map(d)) => {
                let mut m = a.clone();
                for (k, v) in d {
                    match m.get(k) {
                        Some(old) if old == v => {
                            m.remove(k);
                        }
                        _ => {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                }
                Datum::Map(m)
            }
            _ => diff.clone(),
        }
    }

    /// Parses the value of a diff for a column of type `ty` (sizes are not checked).
    pub fn diff_from_json(v: &Value, ty: &Type) -> Result<Datum, OvsdbError> {
        if !ty.is_composite() {
            return Datum::from_json(v, ty, None);
        }
        let relaxed = Type {
            min: 0,
            max: u64::MAX,
            ..ty.clone()
        };
        Datum::from_json(v, &relaxed, None)
    }

    /// All UUID atoms in keys and values.
    pub fn uuids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.keys().chain(self.values()).filter_map(Atom::as_uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set_ty(atomic: AtomicType) -> Type {
        Type {
            key: BaseType::plain(atomic),
            value: None,
            min: 0,
            max: u64::MAX,
        }
    }

    #[test]
    fn optional_scalar_diff_is_the_new_value() {
        // As ovsdb-server (ovsdb_datum_diff: not composite → new value).
        let t = Type {
            key: BaseType::plain(AtomicType::Integer),
            value: None,
            min: 0,
            max: 1,
        };
        let five = Datum::from_json(&json!(5), &t, None).unwrap();
        let seven = Datum::from_json(&json!(7), &t, None).unwrap();
        let empty = Datum::from_json(&json!(["set", []]), &t, None).unwrap();
        assert_eq!(Datum::diff(&five, &seven, &t), seven);
        assert_eq!(
            Datum::diff(&seven, &empty, &t).to_json(),
            json!(["set", []])
        );
        assert_eq!(five.apply_diff(&seven, &t), seven);
        assert_eq!(seven.apply_diff(&empty, &t), empty);
        let parsed = Datum::diff_from_json(&json!(["set", []]), &t).unwrap();
        assert_eq!(parsed, empty);
    }

    #[test]
    fn json_round_trip_of_sets_maps_and_scalars() {
        let t = set_ty(AtomicType::String);
        let d = Datum::from_json(&json!(["set", ["b", "a"]]), &t, None).unwrap();
        assert_eq!(d.to_json(), json!(["set", ["a", "b"]]));
        let one = Datum::from_json(&json!("x"), &t, None).unwrap();
        assert_eq!(one.to_json(), json!("x"));
        let mt = Type {
            value: Some(BaseType::plain(AtomicType::Integer)),
            ..set_ty(AtomicType::String)
        };
        let m = Datum::from_json(&json!(["map", [["k", 1]]]), &mt, None).unwrap();
        assert_eq!(m.to_json(), json!(["map", [["k", 1]]]));
    }

    #[test]
    fn rejects_duplicates_wrong_types_and_sizes() {
        let t = set_ty(AtomicType::Integer);
        assert!(Datum::from_json(&json!(["set", [1, 1]]), &t, None).is_err());
        assert!(Datum::from_json(&json!("1"), &t, None).is_err());
        let scalar = Type::scalar(AtomicType::Integer);
        let e = Datum::from_json(&json!(["set", []]), &scalar, None).unwrap_err();
        assert_eq!(e.tag, "syntax error");
        assert!(Datum::from_json(
            &json!(["uuid", "nope"]),
            &Type::scalar(AtomicType::Uuid),
            None
        )
        .is_err());
    }

    #[test]
    fn named_uuids_resolve_consistently() {
        let mut st = SymbolTable::default();
        let t = Type::scalar(AtomicType::Uuid);
        let a = Datum::from_json(&json!(["named-uuid", "r"]), &t, Some(&mut st)).unwrap();
        assert_eq!(st.first_undeclared(), Some("r"));
        let u = st.declare("r").unwrap();
        assert_eq!(a.first().and_then(Atom::as_uuid), Some(u));
        assert!(st.declare("r").is_err());
        assert_eq!(st.first_undeclared(), None);
        assert!(Datum::from_json(&json!(["named-uuid", "r"]), &t, None).is_err());
    }

    #[test]
    fn diff_and_apply_diff_are_inverse() {
        let mt = Type {
            value: Some(BaseType::plain(AtomicType::Integer)),
            ..set_ty(AtomicType::String)
        };
        let old =
            Datum::from_json(&json!(["map", [["a", 1], ["b", 2], ["c", 3]]]), &mt, None).unwrap();
        let new =
            Datum::from_json(&json!(["map", [["a", 1], ["b", 5], ["d", 4]]]), &mt, None).unwrap();
        let d = Datum::diff(&old, &new, &mt);
        assert_eq!(d.to_json(), json!(["map", [["b", 5], ["c", 3], ["d", 4]]]));
        assert_eq!(old.apply_diff(&d, &mt), new);
        let st = set_ty(AtomicType::String);
        let o = Datum::from_json(&json!(["set", ["a", "b"]]), &st, None).unwrap();
        let n = Datum::from_json(&json!(["set", ["b", "c"]]), &st, None).unwrap();
        let sd = Datum::diff(&o, &n, &st);
        assert_eq!(sd.to_json(), json!(["set", ["a", "c"]]));
        assert_eq!(o.apply_diff(&sd, &st), n);
    }

    proptest::proptest! {
        #[test]
        fn diff_then_apply_reconstructs_sets_and_maps(
            a in proptest::collection::btree_map("[a-d]", "[x-z]", 0..5),
            b in proptest::collection::btree_map("[a-d]", "[x-z]", 0..5),
        ) {
            let mt = Type {
                value: Some(BaseType::plain(AtomicType::String)),
                ..set_ty(AtomicType::String)
            };
            let to_map = |m: &std::collections::BTreeMap<String, String>| {
                Datum::Map(m.iter().map(|(k, v)| (Atom::String(k.clone()), Atom::String(v.clone()))).collect())
            };
            let (old, new) = (to_map(&a), to_map(&b));
            proptest::prop_assert_eq!(old.apply_diff(&Datum::diff(&old, &new, &mt), &mt), new);
            let st = set_ty(AtomicType::String);
            let to_set = |m: &std::collections::BTreeMap<String, String>| {
                Datum::Set(m.keys().map(|k| Atom::String(k.clone())).collect())
            };
            let (old, new) = (to_set(&a), to_set(&b));
            proptest::prop_assert_eq!(old.apply_diff(&Datum::diff(&old, &new, &st), &st), new);
        }
    }
}
