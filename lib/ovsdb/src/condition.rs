//! Conditions (RFC 7047 §5.1 `<condition>`): the `where` clauses of transaction
//! operations and the `where` of `monitor_cond` requests (ovsdb-server(7) §4.1.12).
//!
//! Two views of the same grammar:
//!
//! - [`Condition`] is one `[column, function, value]` triple by column name, as a
//!   client writes it ([`Condition::to_json`]);
//! - [`Where`] is a parsed conjunction of [`Clause`]s resolved against a
//!   [`TableSchema`], as a server evaluates it.  An empty `Where` matches every row;
//!   monitor conditions may also contain the literal clauses `true` and `false`.
//!   Arguments are parsed against the column's type (sizes relaxed for `includes` and
//!   `excludes`, constraints not checked), so evaluation never fails.
//!
//! Plain data, `Send + Sync`.

use std::cmp::Ordering;

use serde_json::{json, Value};

use crate::datum::{Atom, Datum, SymbolTable};
use crate::error::{tag, OvsdbError};
use crate::schema::TableSchema;
use crate::types::{AtomicType, BaseType, ColumnType};
use crate::uuid::Uuid;

/// Comparison functions (RFC 7047 §5.1 `<function>`).
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
    /// Parses the protocol spelling (`"<"`, `"includes"`, ...).
    pub fn parse(s: &str) -> Option<Self> {
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

    /// The protocol spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Ge => ">=",
            Self::Gt => ">",
            Self::Includes => "includes",
            Self::Excludes => "excludes",
        }
    }

    /// True for the ordering functions, which apply only to integer and real scalars.
    pub fn is_ordered(self) -> bool {
        matches!(self, Self::Lt | Self::Le | Self::Ge | Self::Gt)
    }
}

/// One `[column, function, value]` condition by column name.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Column compared.
    pub column: String,
    /// Comparison.
    pub function: Function,
    /// Right-hand side.
    pub value: Datum,
}

impl Condition {
    /// A condition with any function.
    pub fn new(column: impl Into<String>, function: Function, value: impl Into<Datum>) -> Self {
        Condition {
            column: column.into(),
            function,
            value: value.into(),
        }
    }

    /// `column == value`
    pub fn eq(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Eq, value)
    }

    /// `column != value`
    pub fn ne(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Ne, value)
    }

    /// `column includes value`
    pub fn includes(column: impl Into<String>, value: impl Into<Datum>) -> Self {
        Self::new(column, Function::Includes, value)
    }

    /// `_uuid == uuid`: selects one row.
    pub fn uuid(uuid: Uuid) -> Self {
        Self::eq("_uuid", uuid)
    }

    /// JSON notation.
    pub fn to_json(&self) -> Value {
        json!([self.column, self.function.as_str(), self.value.to_json()])
    }

    /// A `where` array of conditions.
    pub fn all_to_json(conditions: &[Condition]) -> Value {
        Value::Array(conditions.iter().map(Condition::to_json).collect())
    }
}

/// Which column a parsed clause looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnRef {
    /// The implicit `_uuid`.
    Uuid,
    /// The implicit `_version`.
    Version,
    /// A schema column by index.
    Column(usize),
}

/// One parsed clause.
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

/// A parsed `where`: a conjunction of clauses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Where {
    /// The clauses; all must hold.
    pub clauses: Vec<Clause>,
}

impl Where {
    /// Parses a `where` array for table `ts`.  `allow_constants` admits `true`/`false`
    /// clauses (monitor conditions); named UUIDs resolve through `symtab`.
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
                "_uuid" => (ColumnRef::Uuid, ColumnType::scalar(AtomicType::Uuid)),
                "_version" => (ColumnRef::Version, ColumnType::scalar(AtomicType::Uuid)),
                n => {
                    let i = ts.column(n).ok_or_else(|| {
                        OvsdbError::new(
                            tag::UNKNOWN_COLUMN,
                            format!("No column {n} in table {}.", ts.name),
                        )
                    })?;
                    (ColumnRef::Column(i), ts.columns[i].ty.clone())
                }
            };
            let fname = parts[1].as_str().unwrap_or_default();
            let function = Function::parse(fname).ok_or_else(|| {
                OvsdbError::new(
                    tag::UNKNOWN_OPERATOR,
                    format!("No function named {}.", parts[1]),
                )
            })?;
            let ordered = function.is_ordered();
            if ordered
                && (!matches!(ty.key.atomic, AtomicType::Integer | AtomicType::Real)
                    || ty.max != Some(1)
                    || ty.is_map())
            {
                return Err(OvsdbError::syntax(format!(
                    "Type mismatch: \"{fname}\" operator may not be applied to column {cname} of type {}.",
                    ty.to_json()
                )));
            }
            let (min, max) = match function {
                Function::Includes | Function::Excludes => (0, None),
                _ if ordered => (1, Some(1)),
                _ => (ty.min, ty.max),
            };
            // Constraints are not checked for condition arguments: comparing against an
            // out-of-range value is legal and simply matches nothing.
            let arg_ty = ColumnType {
                key: BaseType::plain(ty.key.atomic),
                value: ty.value.as_ref().map(|v| BaseType::plain(v.atomic)),
                min,
                max,
            };
            let arg = Datum::from_json_typed(&parts[2], &arg_ty, symtab.as_deref_mut())?;
            clauses.push(Clause::Compare {
                column,
                function,
                arg,
            });
        }
        Ok(Self { clauses })
    }

    /// True when every clause holds for the row `uuid` whose `_version` is `version`
    /// and whose column values, in column order, are `data`.
    pub fn matches(&self, uuid: Uuid, version: Uuid, data: &[Datum]) -> bool {
        self.clauses
            .iter()
            .all(|c| clause_matches(c, uuid, version, data))
    }

    /// If the condition pins `_uuid == X`, returns X (lets callers skip a table scan).
    pub fn pinned_uuid(&self) -> Option<Uuid> {
        self.clauses.iter().find_map(|c| match c {
            Clause::Compare {
                column: ColumnRef::Uuid,
                function: Function::Eq,
                arg,
            } => arg.first().and_then(Atom::as_uuid),
            _ => None,
        })
    }

    /// True when the condition contains a literal `false` (matches nothing).
    pub fn is_false(&self) -> bool {
        self.clauses.contains(&Clause::Constant(false))
    }
}

fn clause_matches(c: &Clause, uuid: Uuid, version: Uuid, data: &[Datum]) -> bool {
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
            owned = Datum::singleton(Atom::Uuid(uuid));
            &owned
        }
        ColumnRef::Version => {
            owned = Datum::singleton(Atom::Uuid(version));
            &owned
        }
        ColumnRef::Column(i) => &data[*i],
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
                (Atom::Real(x), Atom::Real(y)) => match x.partial_cmp(y) {
                    Some(o) => o,
                    None => return false,
                },
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
    use crate::schema::Schema;
    use std::sync::Arc;

    fn table() -> Arc<TableSchema> {
        Schema::from_json_str(
            r#"{"name":"T","tables":{"A":{"columns":{"n":{"type":"integer"},
            "s":{"type":{"key":"string","min":0,"max":"unlimited"}}}}}}"#,
        )
        .unwrap()
        .tables[0]
            .clone()
    }

    fn row(n: i64, s: &[&str]) -> Vec<Datum> {
        vec![
            Datum::singleton(Atom::Integer(n)),
            Datum::Set(s.iter().map(|x| Atom::String((*x).into())).collect()),
        ]
    }

    #[test]
    fn evaluates_every_function() {
        let t = table();
        let r = row(5, &["a", "b"]);
        let u = Uuid::new_v4();
        let v = Uuid::new_v4();
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
            let c = Where::from_json(&w, &t, None, false).unwrap();
            assert_eq!(c.matches(u, v, &r), want, "{w}");
        }
        let c = Where::from_json(
            &json!([["_uuid", "==", ["uuid", u.to_string()]]]),
            &t,
            None,
            false,
        )
        .unwrap();
        assert!(c.matches(u, v, &r));
        assert_eq!(c.pinned_uuid(), Some(u));
        let c = Where::from_json(
            &json!([["_version", "==", ["uuid", v.to_string()]]]),
            &t,
            None,
            false,
        )
        .unwrap();
        assert!(c.matches(u, v, &r));
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
            let e = Where::from_json(&w, &t, None, false).unwrap_err();
            assert_eq!(e.tag, tag, "{w}");
        }
        assert!(Where::from_json(&json!([false]), &t, None, true)
            .unwrap()
            .is_false());
        let always = Where::from_json(&json!([true]), &t, None, true).unwrap();
        assert!(always.matches(Uuid::new_v4(), Uuid::new_v4(), &row(1, &[])));
    }

    #[test]
    fn named_conditions_print_as_rfc_triples() {
        let u = Uuid::new_v4();
        assert_eq!(
            Condition::all_to_json(&[Condition::eq("name", "web"), Condition::uuid(u)]),
            json!([
                ["name", "==", "web"],
                ["_uuid", "==", ["uuid", u.to_string()]]
            ])
        );
        for f in ["<", "<=", "==", "!=", ">=", ">", "includes", "excludes"] {
            assert_eq!(Function::parse(f).map(Function::as_str), Some(f));
        }
        // What a client writes, a server parses.
        let w = Condition::all_to_json(&[Condition::includes("s", Datum::set(["a"]))]);
        let parsed = Where::from_json(&w, &table(), None, false).unwrap();
        assert!(parsed.matches(u, u, &row(0, &["a"])));
    }
}
