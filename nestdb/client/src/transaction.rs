//! A typed builder for OVSDB `transact` requests (RFC 7047 §4.1.3, §5.2)
//! and typed results.
//!
//! A [`Transaction`] is an ordered list of operations on one database. It is
//! a plain value: build it, optionally [`Transaction::validate`] it against a
//! [`Schema`], and hand it to [`crate::Client::transact`]. Builder misuse
//! (e.g. [`Transaction::named`] after a non-insert) is recorded and reported
//! as [`Error::InvalidTransaction`] when the request is serialised, so the
//! fluent chain never panics.
//!
//! [`Transaction::parse_reply`] maps the server's result array back to one
//! [`OpResult`] per operation, or to [`Error::Transaction`] carrying the
//! server's `error` and `details` and the index of the failing operation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use ovsdb_core::datum::write_json_str;
use ovsdb_core::{
    row_from_json, row_to_json, Condition, Datum, Mutation, OvsdbError, Row, Schema, SymbolTable,
    Uuid,
};

use crate::error::{Error, Result};

/// Build a [`Row`] from `(column, value)` pairs.
pub fn row<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Datum)>) -> Row {
    pairs.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

/// The `until` of a wait operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    /// Wait until the selected rows equal the given rows.
    Equal,
    /// Wait until they differ.
    NotEqual,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Insert {
        table: String,
        row: Row,
        uuid_name: Option<String>,
    },
    Select {
        table: String,
        conditions: Vec<Condition>,
        columns: Option<Vec<String>>,
    },
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: Row,
    },
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    Delete {
        table: String,
        conditions: Vec<Condition>,
    },
    Wait {
        table: String,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: WaitUntil,
        rows: Vec<Row>,
        timeout: Option<Duration>,
    },
    Commit {
        durable: bool,
    },
    Abort,
    Comment(String),
    Assert(String),
}

/// Appends `row` as the JSON object [`row_to_json`] makes (the same bytes).
fn write_row(out: &mut Vec<u8>, row: &Row) {
    out.push(b'{');
    for (i, (c, d)) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, c);
        out.push(b':');
        d.write_json(out);
    }
    out.push(b'}');
}

/// A JSON object of `pairs`, built directly: `json!` would serialise each
/// `Value` member again into a copy (a large transaction's rows twice).
fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_owned(), v);
    }
    Value::Object(m)
}

impl Op {
    fn to_json(&self) -> Value {
        let s = |t: &str| Value::String(t.to_owned());
        match self {
            Op::Insert {
                table,
                row,
                uuid_name,
            } => {
                let mut o = object([
                    ("op", s("insert")),
                    ("table", s(table)),
                    ("row", row_to_json(row)),
                ]);
                if let (Some(n), Some(m)) = (uuid_name, o.as_object_mut()) {
                    m.insert("uuid-name".into(), s(n));
                }
                o
            }
            Op::Select {
                table,
                conditions,
                columns,
            } => {
                let mut o = object([
                    ("op", s("select")),
                    ("table", s(table)),
                    ("where", Condition::all_to_json(conditions)),
                ]);
                if let (Some(c), Some(m)) = (columns, o.as_object_mut()) {
                    m.insert("columns".into(), json!(c));
                }
                o
            }
            Op::Update {
                table,
                conditions,
                row,
            } => object([
                ("op", s("update")),
                ("table", s(table)),
                ("where", Condition::all_to_json(conditions)),
                ("row", row_to_json(row)),
            ]),
            Op::Mutate {
                table,
                conditions,
                mutations,
            } => object([
                ("op", s("mutate")),
                ("table", s(table)),
                ("where", Condition::all_to_json(conditions)),
                (
                    "mutations",
                    Value::Array(mutations.iter().map(Mutation::to_json).collect()),
                ),
            ]),
            Op::Delete { table, conditions } => object([
                ("op", s("delete")),
                ("table", s(table)),
                ("where", Condition::all_to_json(conditions)),
            ]),
            Op::Wait {
                table,
                conditions,
                columns,
                until,
                rows,
                timeout,
            } => {
                let mut o = object([
                    ("op", s("wait")),
                    ("table", s(table)),
                    ("where", Condition::all_to_json(conditions)),
                    ("columns", json!(columns)),
                    (
                        "until",
                        s(if *until == WaitUntil::Equal {
                            "=="
                        } else {
                            "!="
                        }),
                    ),
                    ("rows", Value::Array(rows.iter().map(row_to_json).collect())),
                ]);
                if let (Some(t), Some(m)) = (timeout, o.as_object_mut()) {
                    let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
                    m.insert("timeout".into(), json!(ms));
                }
                o
            }
            Op::Commit { durable } => json!({"op": "commit", "durable": durable}),
            Op::Abort => json!({"op": "abort"}),
            Op::Comment(c) => json!({"op": "comment", "comment": c}),
            Op::Assert(l) => json!({"op": "assert", "lock": l}),
        }
    }

    /// Appends the JSON text of [`Op::to_json`] (the same bytes, members
    /// in `serde_json`'s sorted order); inserts and updates are written
    /// from their rows directly.
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Op::Insert {
                table,
                row,
                uuid_name,
            } => {
                out.extend_from_slice(br#"{"op":"insert","row":"#);
                write_row(out, row);
                out.extend_from_slice(br#","table":"#);
                write_json_str(out, table);
                if let Some(n) = uuid_name {
                    out.extend_from_slice(br#","uuid-name":"#);
                    write_json_str(out, n);
                }
                out.push(b'}');
            }
            Op::Update {
                table,
                conditions,
                row,
            } => {
                out.extend_from_slice(br#"{"op":"update","row":"#);
                write_row(out, row);
                out.extend_from_slice(br#","table":"#);
                write_json_str(out, table);
                out.extend_from_slice(br#","where":"#);
                // Writing JSON into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &Condition::all_to_json(conditions));
                out.push(b'}');
            }
            other => {
                let _ = serde_json::to_writer(&mut *out, &other.to_json());
            }
        }
    }

    fn table(&self) -> Option<&str> {
        match self {
            Op::Insert { table, .. }
            | Op::Select { table, .. }
            | Op::Update { table, .. }
            | Op::Mutate { table, .. }
            | Op::Delete { table, .. }
            | Op::Wait { table, .. } => Some(table),
            _ => None,
        }
    }
}

/// An OVSDB transaction under construction.
///
/// ```
/// use nestdb_client::{row, Condition, Datum, Transaction};
/// let txn = Transaction::new("Sluice_Node")
///     .insert("Logical_Port", row([("name", Datum::from("pod-a")),
///                                   ("mac", Datum::from("0a:58:0a:f4:00:05"))]))
///     .named("lp1")
///     .select("Logical_Port", vec![Condition::eq("name", "pod-a")])
///     .comment("cni add pod-a");
/// assert_eq!(txn.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    db: String,
    ops: Vec<Op>,
    build_error: Option<String>,
}

impl Transaction {
    /// An empty transaction on database `db`.
    pub fn new(db: impl Into<String>) -> Self {
        Transaction {
            db: db.into(),
            ops: Vec::new(),
            build_error: None,
        }
    }

    /// The target database.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    /// Insert a row (its UUID is in the result).
    pub fn insert(self, table: impl Into<String>, row: Row) -> Self {
        self.push(Op::Insert {
            table: table.into(),
            row,
            uuid_name: None,
        })
    }

    /// Name the row inserted by the previous operation, so later operations
    /// can refer to it with [`Datum::named_uuid`]. Calling this after
    /// anything other than an insert makes the transaction invalid.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        match self.ops.last_mut() {
            Some(Op::Insert { uuid_name, .. }) => *uuid_name = Some(name),
            _ => {
                self.build_error.get_or_insert(format!(
                    "named(\"{name}\") must directly follow an insert operation"
                ));
            }
        }
        self
    }

    /// Select all columns of the rows matching `conditions`.
    pub fn select(self, table: impl Into<String>, conditions: Vec<Condition>) -> Self {
        self.push(Op::Select {
            table: table.into(),
            conditions,
            columns: None,
        })
    }

    /// Select only `columns` of the rows matching `conditions`.
    pub fn select_columns(
        self,
        table: impl Into<String>,
        conditions: Vec<Condition>,
        columns: &[&str],
    ) -> Self {
        self.push(Op::Select {
            table: table.into(),
            conditions,
            columns: Some(columns.iter().map(|c| (*c).to_owned()).collect()),
        })
    }

    /// Set the columns in `row` on every row matching `conditions`.
    pub fn update(self, table: impl Into<String>, conditions: Vec<Condition>, row: Row) -> Self {
        self.push(Op::Update {
            table: table.into(),
            conditions,
            row,
        })
    }

    /// Apply `mutations` to every row matching `conditions`.
    pub fn mutate(
        self,
        table: impl Into<String>,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    ) -> Self {
        self.push(Op::Mutate {
            table: table.into(),
            conditions,
            mutations,
        })
    }

    /// Delete every row matching `conditions`.
    pub fn delete(self, table: impl Into<String>, conditions: Vec<Condition>) -> Self {
        self.push(Op::Delete {
            table: table.into(),
            conditions,
        })
    }

    /// Wait (up to `timeout`, or forever if `None`) until the `columns` of
    /// the rows matching `conditions` do (`Equal`) or do not (`NotEqual`)
    /// equal `rows`. A zero timeout makes this an atomic precondition.
    pub fn wait(
        self,
        table: impl Into<String>,
        conditions: Vec<Condition>,
        columns: &[&str],
        until: WaitUntil,
        rows: Vec<Row>,
        timeout: Option<Duration>,
    ) -> Self {
        self.push(Op::Wait {
            table: table.into(),
            conditions,
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            until,
            rows,
            timeout,
        })
    }

    /// Require the transaction to be durably committed before it succeeds.
    pub fn commit(self, durable: bool) -> Self {
        self.push(Op::Commit { durable })
    }

    /// Abort the transaction (useful in tests and to probe constraints).
    pub fn abort(self) -> Self {
        self.push(Op::Abort)
    }

    /// Add a comment to the server's log.
    pub fn comment(self, comment: impl Into<String>) -> Self {
        self.push(Op::Comment(comment.into()))
    }

    /// Fail the transaction unless this client holds `lock`.
    pub fn assert_lock(self, lock: impl Into<String>) -> Self {
        self.push(Op::Assert(lock.into()))
    }

    /// The `params` of the `transact` request: `[db, op…]`.
    pub fn to_params(&self) -> Result<Value> {
        self.to_params_check()?;
        let mut params = vec![json!(self.db)];
        params.extend(self.ops.iter().map(Op::to_json));
        Ok(Value::Array(params))
    }

    /// The `params` of the `transact` request as JSON text: the bytes
    /// `serde_json` writes for [`Transaction::to_params`], with the rows of
    /// inserts and updates written straight from their values (no `Value`
    /// tree of a large transaction is built).
    pub fn params_json(&self) -> Result<Vec<u8>> {
        self.to_params_check()?;
        let mut out = Vec::with_capacity(64 * self.ops.len() + 32);
        out.push(b'[');
        write_json_str(&mut out, &self.db);
        for op in &self.ops {
            out.push(b',');
            op.write_json(&mut out);
        }
        out.push(b']');
        Ok(out)
    }

    fn to_params_check(&self) -> Result<()> {
        if let Some(e) = &self.build_error {
            return Err(Error::InvalidTransaction(e.clone()));
        }
        if self.ops.is_empty() {
            return Err(Error::InvalidTransaction(
                "the transaction has no operations".into(),
            ));
        }
        Ok(())
    }

    /// Check table and column names and value types against `schema`
    /// before sending, so mistakes get a local, precise error.
    pub fn validate(&self, schema: &Schema) -> Result<()> {
        if let Some(e) = &self.build_error {
            return Err(Error::InvalidTransaction(e.clone()));
        }
        if schema.name != self.db {
            return Err(Error::InvalidTransaction(format!(
                "the transaction targets \"{}\" but the schema is for \"{}\"",
                self.db, schema.name
            )));
        }
        for (i, op) in self.ops.iter().enumerate() {
            let Some(tname) = op.table() else { continue };
            let table = schema
                .table(tname)
                .ok_or_else(|| Error::unknown_table(&schema.name, tname))?;
            let col = |name: &str| {
                table.column_type(name).ok_or_else(|| Error::UnknownName {
                    kind: "column",
                    name: format!("{tname}.{name}"),
                    db: schema.name.clone(),
                })
            };
            let check_row = |row: &Row| -> Result<()> {
                for (c, d) in row {
                    // Named UUIDs stand for rows of this transaction: any UUID will do.
                    let mut names = SymbolTable::default();
                    Datum::from_json_typed(&d.to_json(), col(c)?, Some(&mut names)).map_err(
                        |e| {
                            Error::InvalidTransaction(format!(
                                "operation {i}, column {tname}.{c}: {e}"
                            ))
                        },
                    )?;
                }
                Ok(())
            };
            let check_conditions = |conds: &[Condition]| -> Result<()> {
                conds.iter().try_for_each(|c| col(&c.column).map(|_| ()))
            };
            match op {
                Op::Insert { row, .. } => check_row(row)?,
                Op::Update {
                    row, conditions, ..
                } => {
                    check_conditions(conditions)?;
                    check_row(row)?;
                }
                Op::Select {
                    conditions,
                    columns,
                    ..
                } => {
                    check_conditions(conditions)?;
                    for c in columns.iter().flatten() {
                        col(c)?;
                    }
                }
                Op::Mutate {
                    conditions,
                    mutations,
                    ..
                } => {
                    check_conditions(conditions)?;
                    for m in mutations {
                        col(&m.column)?;
                    }
                }
                Op::Delete { conditions, .. } => check_conditions(conditions)?,
                Op::Wait {
                    conditions,
                    columns,
                    ..
                } => {
                    check_conditions(conditions)?;
                    for c in columns {
                        col(c)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Interpret the `result` of a `transact` reply.
    pub fn parse_reply(&self, result: &Value) -> Result<TransactionOutcome> {
        let items = result.as_array().ok_or_else(|| {
            Error::Protocol(format!("a transact result must be an array, got {result}"))
        })?;
        // The first error object wins: a failing operation, or one extra
        // element after the operations when the commit itself failed.
        for (i, item) in items.iter().enumerate() {
            if let Some(err) = item.get("error") {
                return Err(Error::Transaction {
                    db: self.db.clone(),
                    error: OvsdbError {
                        tag: err
                            .as_str()
                            .map_or_else(|| err.to_string(), str::to_owned)
                            .into(),
                        details: item
                            .get("details")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    },
                    op_index: (i < self.ops.len()).then_some(i),
                });
            }
        }
        if items.len() < self.ops.len() {
            return Err(Error::Protocol(format!(
                "the server returned {} results for {} operations",
                items.len(),
                self.ops.len()
            )));
        }
        let mut results = Vec::with_capacity(self.ops.len());
        let mut named = BTreeMap::new();
        for (op, item) in self.ops.iter().zip(items) {
            let count = || {
                item.get("count").and_then(Value::as_u64).ok_or_else(|| {
                    Error::Protocol(format!("expected {{\"count\": n}}, got {item}"))
                })
            };
            let r = match op {
                Op::Insert { uuid_name, .. } => {
                    let uuid = Uuid::from_json(item.get("uuid").unwrap_or(&Value::Null))
                        .map_err(|e| Error::Protocol(format!("insert result {item}: {e}")))?;
                    if let Some(n) = uuid_name {
                        named.insert(n.clone(), uuid);
                    }
                    OpResult::Insert(uuid)
                }
                Op::Select { .. } => {
                    let rows = item
                        .get("rows")
                        .and_then(Value::as_array)
                        .ok_or_else(|| {
                            Error::Protocol(format!("expected {{\"rows\": […]}}, got {item}"))
                        })?
                        .iter()
                        .map(|r| row_from_json(r).map_err(Error::from))
                        .collect::<Result<Vec<_>>>()?;
                    OpResult::Select(rows)
                }
                Op::Update { .. } => OpResult::Update(count()?),
                Op::Mutate { .. } => OpResult::Mutate(count()?),
                Op::Delete { .. } => OpResult::Delete(count()?),
                _ => OpResult::Empty,
            };
            results.push(r);
        }
        Ok(TransactionOutcome { results, named })
    }
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    /// `insert`: the new row's UUID.
    Insert(Uuid),
    /// `select`: the matching rows (only the selected columns).
    Select(Vec<Row>),
    /// `update`: number of rows matched.
    Update(u64),
    /// `mutate`: number of rows matched.
    Mutate(u64),
    /// `delete`: number of rows deleted.
    Delete(u64),
    /// `wait`, `commit`, `abort`, `comment`, `assert`.
    Empty,
}

impl OpResult {
    /// The inserted row's UUID, for an insert.
    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            OpResult::Insert(u) => Some(*u),
            _ => None,
        }
    }

    /// The selected rows, for a select.
    pub fn rows(&self) -> Option<&[Row]> {
        match self {
            OpResult::Select(r) => Some(r),
            _ => None,
        }
    }

    /// The row count, for update/mutate/delete.
    pub fn count(&self) -> Option<u64> {
        match self {
            OpResult::Update(n) | OpResult::Mutate(n) | OpResult::Delete(n) => Some(*n),
            _ => None,
        }
    }
}

/// All results of a successful transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionOutcome {
    /// One result per operation, in order.
    pub results: Vec<OpResult>,
    /// UUIDs of inserted rows by their [`Transaction::named`] name.
    pub named: BTreeMap<String, Uuid>,
}

impl TransactionOutcome {
    /// The UUID of the row inserted under `name`.
    pub fn uuid_of(&self, name: &str) -> Option<Uuid> {
        self.named.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovsdb_core::Mutator;

    fn schema() -> Schema {
        Schema::from_json_str(include_str!("../../../deploy/nestdb/sluice.ovsschema")).unwrap()
    }

    #[test]
    fn builds_rfc7047_operations() {
        let txn = Transaction::new("Sluice_Node")
            .insert("Service_Port", row([("port", Datum::from(80i64))]))
            .named("p80")
            .mutate(
                "Service",
                vec![Condition::eq("name", "web")],
                vec![Mutation::new(
                    "ports",
                    Mutator::Insert,
                    Datum::named_uuid("p80"),
                )],
            )
            .delete("Endpoint", vec![])
            .assert_lock("agent")
            .commit(true);
        let p = txn.to_params().unwrap();
        assert_eq!(p[0], json!("Sluice_Node"));
        assert_eq!(
            p[1],
            json!({"op": "insert", "table": "Service_Port", "row": {"port": 80}, "uuid-name": "p80"})
        );
        assert_eq!(
            p[2]["mutations"],
            json!([["ports", "insert", ["named-uuid", "p80"]]])
        );
        assert_eq!(p[2]["where"], json!([["name", "==", "web"]]));
        assert_eq!(
            p[3],
            json!({"op": "delete", "table": "Endpoint", "where": []})
        );
        assert_eq!(p[4], json!({"op": "assert", "lock": "agent"}));
        assert_eq!(p[5], json!({"op": "commit", "durable": true}));
    }

    #[test]
    fn params_json_is_the_text_of_to_params() {
        let odd = "quote \" backslash \\ newline \n tab \t nul \u{0} é \u{1f600}";
        let full = row([
            ("name", Datum::from(odd)),
            ("port", Datum::from(-80i64)),
            ("weight", Datum::from(1.5f64)),
            ("up", Datum::from(true)),
            ("ref", Datum::named_uuid("p80")),
            ("id", Datum::from(Uuid::new_v4())),
            ("empty", Datum::empty_set()),
            ("set", Datum::set(["b", "a", "c"])),
            ("map", Datum::map([("k\"1", "v"), ("k2", odd)])),
            ("nomap", Datum::empty_map()),
        ]);
        let txns = [
            Transaction::new("Sluice_Node")
                .insert("Service_Port", full.clone())
                .named("p80")
                .insert("T", Row::new())
                .update("Service", vec![Condition::eq("name", odd)], full.clone())
                .update("Service", vec![], Row::new())
                .mutate(
                    "Service",
                    vec![Condition::eq("name", "web")],
                    vec![Mutation::new(
                        "ports",
                        Mutator::Insert,
                        Datum::named_uuid("p80"),
                    )],
                )
                .select("Endpoint", vec![Condition::eq("ip", "10.0.0.1")])
                .delete("Endpoint", vec![])
                .wait(
                    "T",
                    vec![],
                    &["name"],
                    WaitUntil::NotEqual,
                    vec![full],
                    Some(Duration::from_millis(5)),
                )
                .comment(odd)
                .assert_lock("agent")
                .commit(true)
                .abort(),
            Transaction::new(odd).insert("Endpoint", row([("ip", Datum::from("10.0.0.1"))])),
        ];
        for txn in txns {
            let via_value = serde_json::to_vec(&txn.to_params().unwrap()).unwrap();
            let direct = txn.params_json().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&direct),
                String::from_utf8_lossy(&via_value)
            );
        }
        let bad = Transaction::new("D").comment("x").named("oops");
        assert!(matches!(
            bad.params_json(),
            Err(Error::InvalidTransaction(_))
        ));
        assert!(Transaction::new("D").params_json().is_err());
    }

    #[test]
    fn misuse_is_reported_not_panicked() {
        let txn = Transaction::new("D").comment("x").named("oops");
        assert!(matches!(txn.to_params(), Err(Error::InvalidTransaction(_))));
        assert!(Transaction::new("D").to_params().is_err());
    }

    #[test]
    fn parses_results_and_named_uuids() {
        let u = Uuid::new_v4();
        let txn = Transaction::new("D")
            .insert("T", Row::new())
            .named("a")
            .select("T", vec![])
            .update("T", vec![], Row::new())
            .comment("c");
        let reply = json!([{"uuid": u.to_json()}, {"rows": [{"x": 1}]}, {"count": 2}, {}]);
        let out = txn.parse_reply(&reply).unwrap();
        assert_eq!(out.uuid_of("a"), Some(u));
        assert_eq!(out.results[1].rows().unwrap()[0]["x"], Datum::from(1i64));
        assert_eq!(out.results[2].count(), Some(2));
        assert_eq!(out.results[3], OpResult::Empty);
    }

    #[test]
    fn surfaces_server_errors_with_details() {
        let txn = Transaction::new("D").insert("T", Row::new()).comment("c");
        let reply = json!([{"uuid": Uuid::new_v4().to_json()}, {}, {"error": "referential integrity violation", "details": "row is referenced"}]);
        match txn.parse_reply(&reply) {
            Err(Error::Transaction {
                error, op_index, ..
            }) => {
                assert_eq!(error.tag, "referential integrity violation");
                assert_eq!(error.details.as_deref(), Some("row is referenced"));
                assert_eq!(op_index, None, "an extra element is a commit failure");
            }
            other => panic!("expected a transaction error, got {other:?}"),
        }
        let reply = json!([{"error": "constraint violation", "details": "bad"}, null]);
        match txn.parse_reply(&reply) {
            Err(Error::Transaction { op_index, .. }) => assert_eq!(op_index, Some(0)),
            other => panic!("expected a transaction error, got {other:?}"),
        }
        assert!(matches!(
            txn.parse_reply(&json!({})),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn validates_against_schema() {
        let s = schema();
        let good = Transaction::new("Sluice_Node").insert(
            "Service_Port",
            row([
                ("protocol", Datum::from("TCP")),
                ("port", Datum::from(443i64)),
            ]),
        );
        good.validate(&s).unwrap();
        let bad_enum = Transaction::new("Sluice_Node")
            .insert("Service_Port", row([("protocol", Datum::from("ICMP"))]));
        assert!(bad_enum.validate(&s).is_err());
        let bad_col =
            Transaction::new("Sluice_Node").select("Service", vec![Condition::eq("nmae", "x")]);
        let err = bad_col.validate(&s).unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
        assert!(Transaction::new("Other").comment("x").validate(&s).is_err());
    }
}
