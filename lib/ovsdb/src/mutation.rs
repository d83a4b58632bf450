//! Mutations (RFC 7047 §5.1 `<mutation>`, §5.2.4 `mutate`): the mutators, a
//! mutation by column name as a client writes it, and the semantics a server applies.
//!
//! [`apply_mutation`] computes the new value of a column: arithmetic on every element
//! of an integer or real set (checked: overflow is a `range error`, division by zero a
//! `domain error`, the result must satisfy the column's constraints and stay free of
//! duplicates), `insert` (set union; map pairs whose key is new) and `delete` (set
//! difference; map pairs by pair or by key).  The result's size is checked against the
//! column type.  Pure functions on plain data, `Send + Sync`.

use serde_json::{json, Value};

use crate::atoms::AtomSet;
use crate::datum::{Atom, Datum};
use crate::error::{tag, OvsdbError};
use crate::types::ColumnType;

/// Mutators (RFC 7047 §5.1 `<mutator>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    /// `+=`
    Add,
    /// `-=`
    Sub,
    /// `*=`
    Mul,
    /// `/=`
    Div,
    /// `%=`
    Mod,
    /// `insert`: add elements to a set or pairs to a map.
    Insert,
    /// `delete`: remove elements from a set, or keys/pairs from a map.
    Delete,
}

impl Mutator {
    /// Parses the protocol spelling (`"+="`, `"insert"`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "+=" => Self::Add,
            "-=" => Self::Sub,
            "*=" => Self::Mul,
            "/=" => Self::Div,
            "%=" => Self::Mod,
            "insert" => Self::Insert,
            "delete" => Self::Delete,
            _ => return None,
        })
    }

    /// The protocol spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "+=",
            Self::Sub => "-=",
            Self::Mul => "*=",
            Self::Div => "/=",
            Self::Mod => "%=",
            Self::Insert => "insert",
            Self::Delete => "delete",
        }
    }
}

/// One `[column, mutator, value]` mutation by column name.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// Column mutated.
    pub column: String,
    /// Mutator.
    pub mutator: Mutator,
    /// Operand.
    pub value: Datum,
}

impl Mutation {
    /// A mutation.
    pub fn new(column: impl Into<String>, mutator: Mutator, value: impl Into<Datum>) -> Self {
        Mutation {
            column: column.into(),
            mutator,
            value: value.into(),
        }
    }

    /// JSON notation.
    pub fn to_json(&self) -> Value {
        json!([self.column, self.mutator.as_str(), self.value.to_json()])
    }
}

fn arith(a: &Atom, m: Mutator, b: &Atom) -> Result<Atom, OvsdbError> {
    let range = || {
        OvsdbError::new(
            tag::RANGE_ERROR,
            "Result of arithmetic operation is out of range.",
        )
    };
    let division_by_zero = || OvsdbError::new(tag::DOMAIN_ERROR, "Division by zero.");
    match (a, b) {
        (Atom::Integer(x), Atom::Integer(y)) => {
            let r = match m {
                Mutator::Add => x.checked_add(*y),
                Mutator::Sub => x.checked_sub(*y),
                Mutator::Mul => x.checked_mul(*y),
                Mutator::Div | Mutator::Mod if *y == 0 => return Err(division_by_zero()),
                Mutator::Div => x.checked_div(*y),
                Mutator::Mod => x.checked_rem(*y),
                _ => None,
            };
            r.map(Atom::Integer).ok_or_else(range)
        }
        (Atom::Real(x), Atom::Real(y)) => {
            let r = match m {
                Mutator::Add => x + y,
                Mutator::Sub => x - y,
                Mutator::Mul => x * y,
                Mutator::Div if *y == 0.0 => return Err(division_by_zero()),
                Mutator::Div => x / y,
                _ => return Err(range()),
            };
            if r.is_finite() {
                Ok(Atom::Real(r))
            } else {
                Err(range())
            }
        }
        _ => Err(OvsdbError::syntax("mutation argument has the wrong type")),
    }
}

/// Applies one mutation to the value `d` of column `cname` of type `ty`, checking the
/// result against the type.
pub fn apply_mutation(
    d: &Datum,
    m: Mutator,
    arg: &Datum,
    ty: &ColumnType,
    cname: &str,
) -> Result<Datum, OvsdbError> {
    let out = match m {
        Mutator::Insert => match (d, arg) {
            (Datum::Set(s), Datum::Set(a)) => Datum::Set(s.union(a)),
            (Datum::Map(s), Datum::Map(a)) => {
                let mut n = s.clone();
                for (k, v) in a {
                    n.insert_if_absent(k.clone(), v.clone());
                }
                Datum::Map(n)
            }
            _ => {
                return Err(OvsdbError::syntax(
                    "insert mutation argument has the wrong type",
                ))
            }
        },
        Mutator::Delete => match (d, arg) {
            (Datum::Set(s), Datum::Set(a)) => Datum::Set(s.difference(a)),
            (Datum::Map(s), Datum::Map(a)) => Datum::Map(
                s.iter()
                    .filter(|(k, v)| a.get(k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            (Datum::Map(s), Datum::Set(keys)) => Datum::Map(
                s.iter()
                    .filter(|(k, _)| !keys.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            _ => {
                return Err(OvsdbError::syntax(
                    "delete mutation argument has the wrong type",
                ))
            }
        },
        _ => {
            let b = arg
                .first()
                .ok_or_else(|| OvsdbError::syntax("arithmetic mutation needs one argument"))?;
            let Datum::Set(s) = d else {
                return Err(OvsdbError::constraint(
                    "arithmetic mutation does not apply to maps",
                ));
            };
            let mut n = AtomSet::new();
            for a in s {
                let r = arith(a, m, b)?;
                ty.key.check(&r)?;
                if !n.insert(r) {
                    return Err(OvsdbError::constraint(format!(
                        "Result of \"{cname}\" mutation contains duplicate values."
                    )));
                }
            }
            Datum::Set(n)
        }
    };
    let n = out.len() as u64;
    let kind = if ty.is_map() { "map" } else { "set" };
    if let Some(max) = ty.max.filter(|max| n > *max) {
        return Err(OvsdbError::constraint(format!(
            "Attempted to store {n} elements in {kind} column {cname}, but the schema allows at most {max}."
        )));
    }
    if n < ty.min {
        return Err(OvsdbError::constraint(format!(
            "Attempted to store {n} elements in {kind} column {cname}, but the schema requires at least {}.",
            ty.min
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutators_and_mutations_print_as_rfc_triples() {
        for m in ["+=", "-=", "*=", "/=", "%=", "insert", "delete"] {
            assert_eq!(Mutator::parse(m).map(Mutator::as_str), Some(m));
        }
        assert_eq!(
            Mutation::new("ports", Mutator::Insert, Datum::named_uuid("p80")).to_json(),
            json!(["ports", "insert", ["named-uuid", "p80"]])
        );
    }

    #[test]
    fn arithmetic_checks_range_domain_constraints_and_size() {
        let n = ColumnType::from_json(
            &json!({"key": {"type": "integer", "minInteger": 0, "maxInteger": 100}}),
        )
        .unwrap();
        let five = Datum::from(5i64);
        let add = |d: &Datum, m, a: i64| apply_mutation(d, m, &Datum::from(a), &n, "n");
        assert_eq!(add(&five, Mutator::Add, 2).unwrap(), Datum::from(7i64));
        assert_eq!(add(&five, Mutator::Mod, 3).unwrap(), Datum::from(2i64));
        assert_eq!(add(&five, Mutator::Div, 0).unwrap_err().tag, "domain error");
        assert_eq!(
            add(&five, Mutator::Add, 200).unwrap_err().tag,
            "constraint violation"
        );
        let big = Datum::from(i64::MAX);
        let any = ColumnType::scalar(crate::types::AtomicType::Integer);
        assert_eq!(
            apply_mutation(&big, Mutator::Add, &Datum::from(1i64), &any, "n")
                .unwrap_err()
                .tag,
            "range error"
        );
        let s = ColumnType::from_json(&json!({"key": "string", "min": 0, "max": 2})).unwrap();
        let ab = Datum::set(["a", "b"]);
        assert_eq!(
            apply_mutation(&ab, Mutator::Insert, &Datum::from("c"), &s, "s")
                .unwrap_err()
                .tag,
            "constraint violation"
        );
        assert_eq!(
            apply_mutation(&ab, Mutator::Delete, &Datum::from("a"), &s, "s").unwrap(),
            Datum::from("b")
        );
        let m = ColumnType::from_json(
            &json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"}),
        )
        .unwrap();
        let kv = Datum::map([("k", "v"), ("x", "y")]);
        assert_eq!(
            apply_mutation(&kv, Mutator::Delete, &Datum::set(["k"]), &m, "m").unwrap(),
            Datum::map([("x", "y")])
        );
        assert_eq!(
            apply_mutation(&kv, Mutator::Insert, &Datum::map([("k", "new")]), &m, "m").unwrap(),
            kv
        );
    }
}
