//! Conditions: `where` clauses of transaction operations and the `where` of
//! `monitor_cond` requests (RFC 7047 §5.1, ovsdb-server(7) §4.1.12).
//!
//! A [`Condition`] is a conjunction of [`Clause`]s; an empty condition matches every
//! row.  Monitor conditions may also contain the literal clauses `true` and `false`.
//! Arguments are parsed against the column's type (sizes relaxed for `includes` and
//! `excludes`), so evaluation never fails.  Plain data, thread-safe.

use crate::datum::{Datum, SymbolTable};
use crate::error::OvsdbError;
use crate::schema::TableSchema;
use crate::table::Row;
use crate::types::{AtomicType, Type};
use serde_json::Value;
use std::cmp::Ordering;
use uuid::Uuid;

/// Which column a clause looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnRef {
    /// The implicit `_uuid`.
    Uuid,
    /// The implicit `_version`.
    Version,
    /// A schema column by index.
    Column(usize),
}

/// Comparison function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `includes`
    Includes,
    /// `excludes`
    Excludes,
}

impl Function {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "<" => Self::Lt,
            "<=" => Self::Le,
            "==" => Self::Eq,
            "!=" => Self::Ne,
            ">=" => Self::Ge,
            ">" => Self::Gt,
            "includes" => Self::Includes,
            "excludes" => Self::Excludes,
            _ => return None,
        })
    }
}

/// One clause.
#[derive(Debug, Clone, PartialEq)]
pub enum Clause {
    /// Literal `true` or `false` (monitor conditions only).
    Constant(bool),
    /// `[column, function, value]`.
    Compare {
        /// Column compared.
        column: ColumnRef,
        /// Function.
        function: Function,
        /// Argument.
        arg: Datum,
    },
}

/// A conjunction of clauses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Condition {
    /// The clauses; all must hold.
    pub clauses: Vec<Clause>,
}

impl Condition {
    /// Parses a `where` array.  `allow_constants` admits `true`/`false` clauses.
    pub fn from_json(
        v: &Value,
        ts: &TableSchema,
        mut symtab: Option<&mut SymbolTable>,
        allow_constants: bool,
    ) -> Result<Self, OvsdbError> {
        let arr = v.as_array().ok_or_else(|| {
            OvsdbError::syntax(format!("\"where\" must be an array of clauses, not {v}"))
        })?;
        let mut clauses = Vec::with_capacity(arr.len());
        for c in arr {
            if let (true, Some(b)) = (allow_constants, c.as_bool()) {
                clauses.push(Clause::Constant(b));
                continue;
            }
            let parts = c.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
                OvsdbError::syntax(format!("clause {c} must be [column, function, value]"))
            })?;
            let cname = parts[0].as_str().ok_or_else(|| {
                OvsdbError::syntax(format!("clause {c}: column name must be a string"))
            })?;
            let (column, ty) = match cname {
                "_uuid" => (ColumnRef::Uuid, Type::scalar(AtomicType::Uuid)),
                "_version" => (ColumnRef::Version, Type::scalar(AtomicType::Uuid)),
                n => {
                    let i = ts.column(n).ok_or_else(|| {
                        OvsdbError::new(
                            "unknown column",
                            format!("No column {n} in table {}.", ts.name),
                        )
                    })?;
                    (ColumnRef::Column(i), ts.columns[i].ty.clone())
                }
            };
            let fname = parts[1].as_str().unwrap_or_default();
            let function = Function::parse(fname).ok_or_else(|| {
                OvsdbError::new(
                    "unknown operator",
                    format!("No function named {}.", parts[1]),
                )
            })?;
            let ordered = matches!(
                function,
                Function::Lt | Function::Le | Function::Ge | Function::Gt
            );
            if ordered
                && (!matches!(ty.key.atomic, AtomicType::Integer | AtomicType::Real)
                    || ty.max != 1
                    || ty.is_map())
            {
                return Err(OvsdbError::syntax(format!(
                    "Type mismatch: \"{fname}\" operator may not be applied to column {cname} of type {}.",
                    ty.to_json()
                )));
            }
            let arg_ty = match function {
                Function::Includes | Function::Excludes => Type {
                    min: 0,
                    max: u64::MAX,
                    ..ty.clone()
                },
                _ if ordered => Type {
                    min: 1,
                    max: 1,
                    ..ty.clone()
                },
                _ => ty.clone(),
            };
            // Constraints are not checked for condition arguments: comparing against an
            // out-of-range value is legal and simply matches nothing.
            let mut rel = arg_ty.clone();
            rel.key = crate::types::BaseType::plain(arg_ty.key.atomic);
            if let (Some(_), Some(vt)) = (&arg_ty.value, &arg_ty.value) {
                rel.value = Some(crate::types::BaseType::plain(vt.atomic));
            }
            let arg = Datum::from_json(&parts[2], &rel, symtab.as_deref_mut())?;
            clauses.push(Clause::Compare {
                column,
                function,
                arg,
            });
        }
        Ok(Self { clauses })
    }

    /// True when every clause holds for the row.
    pub fn matches(&self, uuid: Uuid, row: &Row) -> bool {
        self.clauses.iter().all(|c| clause_matches(c, uuid, row))
    }

    /// If the condition pins `_uuid == X`, returns X (lets callers skip a table scan).
    pub fn pinned_uuid(&self) -> Option<Uuid> {
        self.clauses.iter().find_map(|c| match c {
            Clause::Compare {
                column: ColumnRef::Uuid,
                function: Function::Eq,
                arg,
            } => arg.first().and_then(crate::datum::Atom::as_uuid),
            _ => None,
        })
    }

    /// True when the condition is exactly `[false]`-like (matches nothing).
    pub fn is_false(&self) -> bool {
        self.clauses.contains(&Clause::Constant(false))
    }
}

fn clause_matches(c: &Clause, uuid: Uuid, row: &Row) -> bool {
    let Clause::Compare {
        column,
        function,
        arg,
    } = c
    else {
        return matches!(c, Clause::Constant(true));
    };
    let owned;
    let value: &Datum = match column {
        ColumnRef::Uuid => {
            owned = Datum::singleton(crate::datum::Atom::Uuid(uuid));
            &owned
        }
        ColumnRef::Version => {
            owned = Datum::singleton(crate::datum::Atom::Uuid(row.version));
            &owned
        }
        ColumnRef::Column(i) => &row.data[*i],
    };
    match function {
        Function::Eq => value == arg,
        Function::Ne => value != arg,
        Function::Includes => value.includes(arg),
        Function::Excludes => value.excludes(arg),
        Function::Lt | Function::Le | Function::Gt | Function::Ge => {
            let (Some(a), Some(b)) = (value.first(), arg.first()) else {
                return false;
            };
            let ord = match (a, b) {
                (crate::datum::Atom::Real(x), crate::datum::Atom::Real(y)) => {
                    match x.partial_cmp(y) {
                        Some(o) => o,
                        None => return false,
                    }
                }
                _ => a.cmp(b),
            };
            match function {
                Function::Lt => ord == Ordering::Less,
                Function::Le => ord != Ordering::Greater,
                Function::Gt => ord == Ordering::Greater,
                _ => ord != Ordering::Less,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::DatabaseSchema;
    use serde_json::json;

    fn table() -> std::sync::Arc<TableSchema> {
        DatabaseSchema::parse(
            r#"{"name":"T","tables":{"A":{"columns":{"n":{"type":"integer"},
            "s":{"type":{"key":"string","min":0,"max":"unlimited"}}}}}}"#,
        )
        .unwrap()
        .tables[0]
            .clone()
    }

    fn row(n: i64, s: &[&str]) -> Row {
        let t = table();
        let mut r = Row::default_for(&t);
        r.data[0] = Datum::singleton(crate::datum::Atom::Integer(n));
        r.data[1] = Datum::Set(
            s.iter()
                .map(|x| crate::datum::Atom::String((*x).into()))
                .collect(),
        );
        r
    }

    #[test]
    fn evaluates_every_function() {
        let t = table();
        let r = row(5, &["a", "b"]);
        let u = Uuid::new_v4();
        let cases = [
            (json!([["n", "<", 6]]), true),
            (json!([["n", "<=", 5]]), true),
            (json!([["n", ">", 5]]), false),
            (json!([["n", ">=", 5]]), true),
            (json!([["n", "==", 5]]), true),
            (json!([["n", "!=", 5]]), false),
            (json!([["s", "includes", "a"]]), true),
            (json!([["s", "includes", ["set", ["a", "c"]]]]), false),
            (json!([["s", "excludes", "c"]]), true),
            (json!([["s", "==", ["set", ["b", "a"]]]]), true),
            (json!([["n", "==", 5], ["s", "excludes", "a"]]), false),
            (json!([]), true),
        ];
        for (w, want) in cases {
            let c = Condition::from_json(&w, &t, None, false).unwrap();
            assert_eq!(c.matches(u, &r), want, "{w}");
        }
        let c = Condition::from_json(
            &json!([["_uuid", "==", ["uuid", u.to_string()]]]),
            &t,
            None,
            false,
        )
        .unwrap();
        assert!(c.matches(u, &r));
        assert_eq!(c.pinned_uuid(), Some(u));
    }

    #[test]
    fn rejects_bad_clauses() {
        let t = table();
        for (w, tag) in [
            (json!([["x", "==", 1]]), "unknown column"),
            (json!([["n", "~", 1]]), "unknown operator"),
            (json!([["s", "<", "a"]]), "syntax error"),
            (json!([["n", "==", "a"]]), "syntax error"),
            (json!({"n": 1}), "syntax error"),
            (json!([true]), "syntax error"),
        ] {
            let e = Condition::from_json(&w, &t, None, false).unwrap_err();
            assert_eq!(e.tag, tag, "{w}");
        }
        assert!(Condition::from_json(&json!([false]), &t, None, true)
            .unwrap()
            .is_false());
    }
}
