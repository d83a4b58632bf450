//! Transactions: the `transact` method's operations, validation and commit
//! (RFC 7047 §5.2, ovsdb-server(7)).
//!
//! [`execute`] runs the operations of one `transact` request against a read-only
//! [`Database`], recording row changes in an overlay.  Nothing is visible to anyone
//! until the server applies the returned [`Changes`] after the log record is durable.
//! Commit-time checks run in the order ovsdb-server uses: undefined named UUIDs, garbage
//! collection of unreferenced non-root rows, referential integrity of deletions, weak
//! reference clean-up, strong reference targets, column sizes, `maxRows`, then index
//! uniqueness.  Any failure discards the overlay.  The result array is a list of
//! [`OpResult`]s (an insert's result kept as its UUID), written into the reply by
//! [`reply_bytes`].  Operations come as decoded `Value`s or as JSON text
//! ([`OpText`]): text is decoded one operation at a time as it runs, and an insert's
//! `row` is parsed straight into typed values ([`ovsdb_core::datum_de::RowSeed`]),
//! falling back to the `Value` path (which words the error) on anything the visitors
//! do not take, so both forms give the same results.  Single-threaded by construction.

use crate::table::{Changes, Database, Row, RowChange};
use ovsdb_core::datum_de::RowSeed;
use ovsdb_core::{
    apply_mutation, Atom, AtomicType, ColumnType, Datum, Mutator, OvsdbError, RefType, SymbolTable,
    TableSchema, Uuid, Where,
};
use serde::de::DeserializeSeed;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One operation of a `transact` request: a decoded `Value`, or its JSON
/// text, decoded only when the operation runs (an insert's row goes
/// straight into typed values: see [`ovsdb_core::datum_de`]).
#[derive(Debug, Clone)]
pub enum OpText {
    /// Decoded.
    Parsed(Value),
    /// Its JSON text (syntactically valid: cut from a decoded request).
    Raw(Box<RawValue>),
}

/// An operation as [`execute`] reads it.
#[derive(Debug, Clone, Copy)]
pub enum OpRef<'a> {
    /// Decoded.
    Parsed(&'a Value),
    /// JSON text.
    Raw(&'a RawValue),
}

/// What [`execute`] accepts as one operation.
pub trait AsOp {
    /// The operation.
    fn as_op(&self) -> OpRef<'_>;
}

impl AsOp for Value {
    fn as_op(&self) -> OpRef<'_> {
        OpRef::Parsed(self)
    }
}

impl AsOp for OpText {
    fn as_op(&self) -> OpRef<'_> {
        match self {
            OpText::Parsed(v) => OpRef::Parsed(v),
            OpText::Raw(r) => OpRef::Raw(r),
        }
    }
}

/// An `insert` given as text whose members are all allowed ones: the
/// members but `row`, decoded, and the `row`'s text. `None` for anything
/// else (which is decoded whole and takes the ordinary path).
fn split_insert(raw: &RawValue) -> Option<(Map<String, Value>, Option<&RawValue>)> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get()).ok()?;
    if members.get("op").map(|r| r.get()) != Some("\"insert\"") {
        return None;
    }
    let mut row = None;
    let mut o = Map::new();
    for (k, v) in members {
        match k.as_str() {
            "row" => row = Some(v),
            "op" | "table" | "uuid-name" | "uuid" => {
                o.insert(k, serde_json::from_str(v.get()).ok()?);
            }
            _ => return None,
        }
    }
    Some((o, row))
}

/// What the caller knows about the requesting session.
pub struct ExecContext<'a> {
    /// Whether the session owns the named lock (for `assert`).
    pub owns_lock: &'a dyn Fn(&str) -> bool,
    /// True when a blocked `wait` has reached its timeout and must now fail.
    pub wait_expired: bool,
    /// Name of a reserved database (`_Server`) whose tables clients may not modify.
    pub read_only: Option<&'a str>,
}

/// One operation's entry in the `transact` result array. An insert's
/// `{"uuid": ["uuid", …]}` is kept as its UUID: a large transaction is mostly
/// inserts, and one JSON object per row would be hundreds of bytes each.
#[derive(Debug, Clone, PartialEq)]
pub enum OpResult {
    /// `{"uuid": ["uuid", "<uuid>"]}`.
    Inserted(Uuid),
    /// Any other result (an error object, select rows, counts, `{}`, null).
    Json(Value),
}

impl OpResult {
    /// The result as a JSON value.
    pub fn to_json(&self) -> Value {
        match self {
            OpResult::Inserted(u) => json!({"uuid": ["uuid", u.to_string()]}),
            OpResult::Json(v) => v.clone(),
        }
    }

    /// True for an error object (`{"error": …}`).
    pub fn is_error(&self) -> bool {
        self.get("error").is_some()
    }

    /// Member `key` of the result object, as `Value::get` on
    /// [`OpResult::to_json`] would find it (an insert's `uuid` is not
    /// kept as a value: `None`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            OpResult::Inserted(_) => None,
            OpResult::Json(v) => v.get(key),
        }
    }

    /// True when the result is a JSON object (everything but null padding).
    pub fn is_object(&self) -> bool {
        match self {
            OpResult::Inserted(_) => true,
            OpResult::Json(v) => v.is_object(),
        }
    }

    /// True for the null that pads the results after a failed operation.
    pub fn is_null(&self) -> bool {
        matches!(self, OpResult::Json(Value::Null))
    }

    /// Appends the JSON text of [`OpResult::to_json`] (the same bytes
    /// `serde_json` writes for it).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            OpResult::Inserted(u) => {
                out.extend_from_slice(b"{\"uuid\":");
                u.write_json(out);
                out.push(b'}');
            }
            // Writing JSON into a Vec cannot fail.
            OpResult::Json(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
    }
}

/// The `transact` result array as a JSON value.
pub fn results_json(results: &[OpResult]) -> Value {
    Value::Array(results.iter().map(OpResult::to_json).collect())
}

/// The reply to `transact` request `id` carrying `results`: the same bytes
/// as `Message::Reply { result: results_json(results), id }.to_bytes()`,
/// written without building the array.
pub fn reply_bytes(id: &Value, results: &[OpResult]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * results.len() + 64);
    out.extend_from_slice(b"{\"id\":");
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(b",\"result\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        r.write_json(&mut out);
    }
    out.extend_from_slice(b"],\"error\":null}");
    out
}

/// Result of executing one `transact` request.
#[derive(Debug)]
pub enum Outcome {
    /// The transaction finished (successfully or not).  `changes` is set when it
    /// succeeded and modified the database.
    Done {
        /// The JSON-RPC `result` array.
        results: Vec<OpResult>,
        /// Changes to make durable and apply, if any.
        changes: Option<Changes>,
        /// Whether a `commit` operation asked for durability.
        durable: bool,
    },
    /// A `wait` operation is not yet satisfied and has a non-zero timeout: retry after
    /// the next commit, or after `timeout_ms` with `wait_expired` set.
    Blocked {
        /// The smallest timeout among blocked waits, in milliseconds.
        timeout_ms: u64,
    },
}

type Key = (usize, Uuid);

/// Reference count changes by referenced row.
type Delta = hashbrown::HashMap<Uuid, i64>;

/// The rows of one table that a transaction has touched, in the order it
/// first touched them (`None`: deleted). A hash map, not a tree: a large
/// insert looks every new row up several times, and the checks walk the
/// rows in the order they were made (which is also their order in memory);
/// whatever depends on an order (the first error reported, the changes)
/// sorts by UUID where it needs to.
type TableOverlay = indexmap::IndexMap<Uuid, Option<Arc<Row>>, hashbrown::DefaultHashBuilder>;

/// A table's default row (every column at its type's default) and, per
/// column, the error its default value gives against the column's
/// constraints (a required enum column's default `""` is not allowed).
struct TableDefaults {
    row: Vec<Datum>,
    errors: Vec<Option<OvsdbError>>,
    any_error: bool,
}

struct Txn<'a> {
    db: &'a Database,
    /// Per table, its defaults once an insert needed them.
    defaults: Vec<Option<Arc<TableDefaults>>>,
    /// Per table (schema order), the rows touched.
    overlay: Vec<TableOverlay>,
    symtab: SymbolTable,
    comments: Vec<String>,
    durable: bool,
}

enum OpError {
    Failed(OvsdbError),
    Blocked(u64),
}

impl From<OvsdbError> for OpError {
    fn from(e: OvsdbError) -> Self {
        OpError::Failed(e)
    }
}

const OP_MEMBERS: &[(&str, &[&str])] = &[
    ("insert", &["op", "table", "row", "uuid-name", "uuid"]),
    ("select", &["op", "table", "where", "columns"]),
    ("update", &["op", "table", "where", "row"]),
    ("mutate", &["op", "table", "where", "mutations"]),
    ("delete", &["op", "table", "where"]),
    (
        "wait",
        &[
            "op", "table", "where", "columns", "until", "rows", "timeout",
        ],
    ),
    ("commit", &["op", "durable"]),
    ("abort", &["op"]),
    ("comment", &["op", "comment"]),
    ("assert", &["op", "lock"]),
];

/// Executes the operations `ops` (the `transact` params after the database name).
pub fn execute<O: AsOp>(db: &Database, ops: &[O], ctx: &ExecContext<'_>) -> Outcome {
    let mut txn = Txn {
        db,
        defaults: vec![None; db.tables.len()],
        overlay: (0..db.tables.len())
            .map(|_| TableOverlay::default())
            .collect(),
        symtab: SymbolTable::default(),
        comments: Vec::new(),
        durable: false,
    };
    let mut results = Vec::with_capacity(ops.len() + 1);
    let mut failed = false;
    for (i, op) in ops.iter().enumerate() {
        match txn.execute_op(op.as_op(), i, ops.len(), ctx) {
            Ok(v) => results.push(v),
            Err(OpError::Blocked(t)) => return Outcome::Blocked { timeout_ms: t },
            Err(OpError::Failed(e)) => {
                results.push(OpResult::Json(e.to_json()));
                failed = true;
                break;
            }
        }
    }
    while results.len() < ops.len() {
        results.push(OpResult::Json(Value::Null));
    }
    if failed {
        return Outcome::Done {
            results,
            changes: None,
            durable: false,
        };
    }
    match txn.commit() {
        Ok(changes) => Outcome::Done {
            results,
            changes,
            durable: txn.durable,
        },
        Err(e) => {
            results.push(OpResult::Json(e.to_json()));
            Outcome::Done {
                results,
                changes: None,
                durable: false,
            }
        }
    }
}

fn member<'v>(o: &'v Map<String, Value>, k: &str, opname: &str) -> Result<&'v Value, OvsdbError> {
    o.get(k).ok_or_else(|| {
        OvsdbError::syntax(format!(
            "Required '{k}' member is missing from \"{opname}\" operation."
        ))
    })
}

impl<'a> Txn<'a> {
    fn table(
        &self,
        o: &Map<String, Value>,
        opname: &str,
    ) -> Result<(usize, Arc<TableSchema>), OvsdbError> {
        let v = member(o, "table", opname)?;
        let name = v
            .as_str()
            .ok_or_else(|| OvsdbError::syntax(format!("\"table\" must be a string, not {v}")))?;
        self.db
            .schema
            .table_with_index(name)
            .map(|(i, t)| (i, t.clone()))
            .ok_or_else(|| OvsdbError::syntax(format!("No table named {name}.")))
    }

    fn get(&self, t: usize, u: Uuid) -> Option<Arc<Row>> {
        match self.overlay[t].get(&u) {
            Some(r) => r.clone(),
            None => self.db.tables[t].rows.get(&u).cloned(),
        }
    }

    fn exists(&self, t: usize, u: Uuid) -> bool {
        match self.overlay[t].get(&u) {
            Some(r) => r.is_some(),
            None => self.db.tables[t].rows.contains_key(&u),
        }
    }

    /// Rows of table `t` matching `cond`, in UUID order.
    fn matching(&self, t: usize, cond: &Where) -> Vec<(Uuid, Arc<Row>)> {
        if let Some(u) = cond.pinned_uuid() {
            return self
                .get(t, u)
                .filter(|r| cond.matches(u, r.version, &r.data))
                .map(|r| vec![(u, r)])
                .unwrap_or_default();
        }
        let mut out = Vec::new();
        for (u, r) in &self.db.tables[t].rows {
            if self.overlay[t].contains_key(u) {
                continue;
            }
            if cond.matches(*u, r.version, &r.data) {
                out.push((*u, r.clone()));
            }
        }
        for (u, r) in &self.overlay[t] {
            if let Some(r) = r {
                if cond.matches(*u, r.version, &r.data) {
                    out.push((*u, r.clone()));
                }
            }
        }
        out.sort_by_key(|(u, _)| *u);
        out
    }

    fn where_clause(
        &mut self,
        o: &Map<String, Value>,
        ts: &TableSchema,
        opname: &str,
    ) -> Result<Where, OvsdbError> {
        let w = member(o, "where", opname)?;
        Where::from_json(w, ts, Some(&mut self.symtab), false)
    }

    /// Parses a `row` object into (column index, datum) pairs.
    fn parse_row(
        &mut self,
        v: &Value,
        ts: &TableSchema,
        updating: bool,
    ) -> Result<Vec<(usize, Datum)>, OvsdbError> {
        let o = v
            .as_object()
            .ok_or_else(|| OvsdbError::syntax(format!("\"row\" must be a JSON object, not {v}")))?;
        let mut out = Vec::with_capacity(o.len());
        for (name, val) in o {
            let Some(i) = ts.column(name) else {
                if ovsdb_core::schema::is_implicit_column(name) {
                    return Err(OvsdbError::constraint(format!(
                        "Cannot update immutable column {name} in table {}.",
                        ts.name
                    )));
                }
                return Err(OvsdbError::new(
                    "unknown column",
                    format!("No column {name} in table {}.", ts.name),
                ));
            };
            let col = &ts.columns[i];
            if updating && !col.mutable {
                return Err(OvsdbError::constraint(format!(
                    "Cannot update immutable column {name} in table {}.",
                    ts.name
                )));
            }
            let d = Datum::from_json_typed(val, &col.ty, Some(&mut self.symtab))?;
            out.push((i, d));
        }
        Ok(out)
    }

    fn execute_op(
        &mut self,
        op: OpRef<'_>,
        i: usize,
        n: usize,
        ctx: &ExecContext<'_>,
    ) -> Result<OpResult, OpError> {
        if let (OpRef::Raw(r), None) = (op, ctx.read_only) {
            if let Some(done) = self.fast_insert(r) {
                return done.map(OpResult::Inserted);
            }
        }
        let decoded: Value;
        let (op, raw_row) = match op {
            OpRef::Parsed(v) => (v, None),
            OpRef::Raw(r) => match split_insert(r) {
                Some((o, row)) => {
                    decoded = Value::Object(o);
                    (&decoded, row)
                }
                None => {
                    decoded = serde_json::from_str(r.get()).map_err(|e| {
                        OvsdbError::syntax(format!("ops[{i}] is not valid JSON: {e}"))
                    })?;
                    (&decoded, None)
                }
            },
        };
        let o = op
            .as_object()
            .ok_or_else(|| OvsdbError::syntax(format!("ops[{i}] is not an object")))?;
        let opname = o
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| OvsdbError::syntax(format!("ops[{i}] has no \"op\" string member")))?;
        let allowed = OP_MEMBERS
            .iter()
            .find(|(name, _)| *name == opname)
            .map(|(_, m)| *m)
            .ok_or_else(|| OvsdbError::syntax(format!("No operation \"{opname}\"")))?;
        if let Some(extra) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(OvsdbError::syntax(format!(
                "Parsing ovsdb operation {} of {n} failed: Member '{extra}' is present but not allowed here.",
                i + 1
            ))
            .into());
        }
        if let (Some(db), "insert" | "update" | "mutate" | "delete") = (ctx.read_only, opname) {
            return Err(OvsdbError::new(
                "not allowed",
                format!("{opname} operation not allowed on table in reserved database {db}"),
            )
            .into());
        }
        if opname == "insert" {
            return self.op_insert(o, raw_row).map(OpResult::Inserted);
        }
        match opname {
            "select" => self.op_select(o),
            "update" => self.op_update(o),
            "mutate" => self.op_mutate(o),
            "delete" => self.op_delete(o),
            "wait" => self.op_wait(o, ctx),
            "commit" => {
                let d = member(o, "durable", opname)?;
                self.durable = d
                    .as_bool()
                    .ok_or_else(|| OvsdbError::syntax("\"durable\" must be a boolean"))?;
                Ok(json!({}))
            }
            "abort" => Err(OvsdbError::new("aborted", "Aborted by request.").into()),
            "comment" => {
                let c = member(o, "comment", opname)?
                    .as_str()
                    .ok_or_else(|| OvsdbError::syntax("\"comment\" must be a string"))?;
                self.comments.push(c.to_owned());
                Ok(json!({}))
            }
            "assert" => {
                let l = member(o, "lock", opname)?
                    .as_str()
                    .ok_or_else(|| OvsdbError::syntax("\"lock\" must be a string"))?;
                if (ctx.owns_lock)(l) {
                    Ok(json!({}))
                } else {
                    Err(OvsdbError::new("not owner", format!("Asserted lock {l} not held.")).into())
                }
            }
            _ => Err(OvsdbError::syntax(format!("No operation \"{opname}\"")).into()),
        }
        .map(OpResult::Json)
    }

    /// An insert given as text in the shape a client writes (members `op`,
    /// `table`, `row` and `uuid-name` at most once each, no escapes in the
    /// names, a table that exists, a non-empty `uuid-name`), run without
    /// decoding anything but the row: the same result as the general path
    /// ([`Txn::execute_op`] and [`Txn::op_insert`]), which takes everything
    /// else (`None`), so every error keeps its wording.
    fn fast_insert(&mut self, raw: &RawValue) -> Option<Result<Uuid, OpError>> {
        // A present `uuid-name` must be a string (a null is not "absent").
        fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
            <&str as serde::Deserialize>::deserialize(d).map(Some)
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Insert<'a> {
            op: &'a str,
            table: &'a str,
            #[serde(borrow)]
            row: &'a RawValue,
            #[serde(rename = "uuid-name", default, borrow, deserialize_with = "present")]
            uuid_name: Option<&'a str>,
        }
        let ins: Insert<'_> = serde_json::from_str(raw.get()).ok()?;
        if ins.op != "insert" || ins.uuid_name == Some("") {
            return None;
        }
        let (t, ts) = self
            .db
            .schema
            .table_with_index(ins.table)
            .map(|(i, t)| (i, t.clone()))?;
        let uuid = match ins.uuid_name {
            Some(name) => match self.symtab.declare(name) {
                Ok(u) => u,
                Err(e) => return Some(Err(e.into())),
            },
            None => Uuid::new_v4(),
        };
        Some(
            self.insert_row(&Map::new(), Some(ins.row), t, &ts, uuid)
                .map(|()| uuid),
        )
    }

    /// Table `t`'s default row and the errors its defaults give, worked
    /// out once per transaction.
    fn defaults(&mut self, t: usize, ts: &TableSchema) -> Arc<TableDefaults> {
        self.defaults[t]
            .get_or_insert_with(|| {
                let row: Vec<Datum> = ts.columns.iter().map(|c| c.ty.default_datum()).collect();
                let errors: Vec<Option<OvsdbError>> = ts
                    .columns
                    .iter()
                    .zip(&row)
                    .map(|(c, d)| {
                        let keys = d.keys().try_for_each(|a| c.ty.key.check(a));
                        let values = match &c.ty.value {
                            Some(vt) => d.values().try_for_each(|a| vt.check(a)),
                            None => Ok(()),
                        };
                        keys.and(values).err()
                    })
                    .collect();
                Arc::new(TableDefaults {
                    any_error: errors.iter().any(Option::is_some),
                    row,
                    errors,
                })
            })
            .clone()
    }

    /// Inserts a row; returns its UUID.
    fn op_insert(
        &mut self,
        o: &Map<String, Value>,
        raw_row: Option<&RawValue>,
    ) -> Result<Uuid, OpError> {
        let (t, ts) = self.table(o, "insert")?;
        let uuid = match (o.get("uuid-name"), o.get("uuid")) {
            (Some(n), _) => {
                let name = n.as_str().filter(|s| !s.is_empty()).ok_or_else(|| {
                    OvsdbError::syntax("\"uuid-name\" must be a non-empty string")
                })?;
                let u = self.symtab.declare(name)?;
                if let Some(given) = o.get("uuid") {
                    let g = parse_plain_uuid(given)?;
                    return self.insert_row(o, raw_row, t, &ts, g).map(|_| g);
                }
                u
            }
            (None, Some(given)) => parse_plain_uuid(given)?,
            (None, None) => Uuid::new_v4(),
        };
        self.insert_row(o, raw_row, t, &ts, uuid)?;
        Ok(uuid)
    }

    fn insert_row(
        &mut self,
        o: &Map<String, Value>,
        raw_row: Option<&RawValue>,
        t: usize,
        ts: &TableSchema,
        uuid: Uuid,
    ) -> Result<(), OpError> {
        if self.exists(t, uuid) {
            return Err(OvsdbError::new("duplicate uuid", format!("This UUID would duplicate a UUID already present within the table or deleted within the same transaction: {uuid}")).into());
        }
        let parsed = match raw_row {
            // Straight into typed values; anything the seed defers on is
            // decoded and parsed as usual, which gives the error.
            Some(raw) => match (RowSeed {
                table: ts,
                symtab: &mut self.symtab,
            })
            .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
            {
                Ok(row) => Some(row),
                Err(_) => {
                    let v: Value = serde_json::from_str(raw.get()).map_err(|e| {
                        OvsdbError::syntax(format!("\"row\" is not valid JSON: {e}"))
                    })?;
                    Some(self.parse_row(&v, ts, false)?)
                }
            },
            None => match o.get("row") {
                Some(rv) => Some(self.parse_row(rv, ts, false)?),
                None => None,
            },
        };
        // The defaults, then the given values in their place.
        let defaults = self.defaults(t, ts);
        let mut data = defaults.row.clone();
        // Which columns were given matters only when a default is refused.
        let mut given = vec![false; if defaults.any_error { data.len() } else { 0 }];
        for (i, d) in parsed.into_iter().flatten() {
            data[i] = d;
            if let Some(g) = given.get_mut(i) {
                *g = true;
            }
        }
        // Like ovsdb-server, columns left at their default must satisfy the constraints
        // too (e.g. "" is not a valid value of a required enum column); the given
        // values were checked as they were parsed. The first such column in
        // column order is reported.
        if defaults.any_error {
            for (e, given) in defaults.errors.iter().zip(&given) {
                if let (false, Some(e)) = (given, e) {
                    return Err(e.clone().into());
                }
            }
        }
        let row = Row {
            version: Uuid::new_v4(),
            data,
        };
        self.overlay[t].insert(uuid, Some(Arc::new(row)));
        Ok(())
    }

    fn op_select(&mut self, o: &Map<String, Value>) -> Result<Value, OpError> {
        let (t, ts) = self.table(o, "select")?;
        let cond = self.where_clause(o, &ts, "select")?;
        let columns = parse_columns(o.get("columns"), &ts)?;
        let rows: Vec<Value> = self
            .matching(t, &cond)
            .iter()
            .map(|(u, r)| r.to_json(&ts, *u, columns.as_deref()))
            .collect();
        Ok(json!({ "rows": rows }))
    }

    fn op_update(&mut self, o: &Map<String, Value>) -> Result<Value, OpError> {
        let (t, ts) = self.table(o, "update")?;
        let cond = self.where_clause(o, &ts, "update")?;
        let row = self.parse_row(member(o, "row", "update")?, &ts, true)?;
        let matched = self.matching(t, &cond);
        for (u, r) in &matched {
            let mut nr = (**r).clone();
            for (i, d) in &row {
                nr.data[*i] = d.clone();
            }
            self.overlay[t].insert(*u, Some(Arc::new(nr)));
        }
        Ok(json!({ "count": matched.len() }))
    }

    fn op_delete(&mut self, o: &Map<String, Value>) -> Result<Value, OpError> {
        let (t, ts) = self.table(o, "delete")?;
        let cond = self.where_clause(o, &ts, "delete")?;
        let matched = self.matching(t, &cond);
        for (u, _) in &matched {
            self.overlay[t].insert(*u, None);
        }
        Ok(json!({ "count": matched.len() }))
    }

    fn op_mutate(&mut self, o: &Map<String, Value>) -> Result<Value, OpError> {
        let (t, ts) = self.table(o, "mutate")?;
        let cond = self.where_clause(o, &ts, "mutate")?;
        let mv = member(o, "mutations", "mutate")?;
        let arr = mv.as_array().ok_or_else(|| {
            OvsdbError::syntax(format!("\"mutations\" must be an array, not {mv}"))
        })?;
        let mut mutations = Vec::with_capacity(arr.len());
        for m in arr {
            mutations.push(self.parse_mutation(m, &ts)?);
        }
        let matched = self.matching(t, &cond);
        for (u, r) in &matched {
            let mut nr = (**r).clone();
            for (ci, mutator, arg) in &mutations {
                let col = &ts.columns[*ci];
                nr.data[*ci] = apply_mutation(&nr.data[*ci], *mutator, arg, &col.ty, &col.name)?;
            }
            self.overlay[t].insert(*u, Some(Arc::new(nr)));
        }
        Ok(json!({ "count": matched.len() }))
    }

    fn parse_mutation(
        &mut self,
        m: &Value,
        ts: &TableSchema,
    ) -> Result<(usize, Mutator, Datum), OvsdbError> {
        let parts = m.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
            OvsdbError::syntax(format!("mutation {m} must be [column, mutator, value]"))
        })?;
        let cname = parts[0]
            .as_str()
            .ok_or_else(|| OvsdbError::syntax(format!("mutation {m}: column must be a string")))?;
        let ci = match ts.column(cname) {
            Some(i) => i,
            None if ovsdb_core::schema::is_implicit_column(cname) => {
                return Err(OvsdbError::constraint(format!(
                    "Cannot mutate immutable column {cname} in table {}.",
                    ts.name
                )))
            }
            None => {
                return Err(OvsdbError::new(
                    "unknown column",
                    format!("No column {cname} in table {}.", ts.name),
                ))
            }
        };
        let col = &ts.columns[ci];
        if !col.mutable {
            return Err(OvsdbError::constraint(format!(
                "Cannot mutate immutable column {cname} in table {}.",
                ts.name
            )));
        }
        let mname = parts[1].as_str().unwrap_or_default();
        let mutator = Mutator::parse(mname).ok_or_else(|| {
            OvsdbError::new("unknown mutator", format!("No mutator named {}.", parts[1]))
        })?;
        let ty = &col.ty;
        let arg = match mutator {
            Mutator::Insert | Mutator::Delete => {
                // As in ovsdb-server, the argument may be smaller than the column's
                // minimum but not larger than its maximum.
                let relaxed = ColumnType {
                    min: 0,
                    ..ty.clone()
                };
                if ty.is_map() && mutator == Mutator::Delete && !is_map_json(&parts[2]) {
                    let keys = ColumnType {
                        value: None,
                        ..relaxed
                    };
                    Datum::from_json_typed(&parts[2], &keys, Some(&mut self.symtab))?
                } else {
                    Datum::from_json_typed(&parts[2], &relaxed, Some(&mut self.symtab))?
                }
            }
            _ => {
                let numeric = match mutator {
                    Mutator::Mod => ty.key.atomic == AtomicType::Integer,
                    _ => matches!(ty.key.atomic, AtomicType::Integer | AtomicType::Real),
                };
                if !numeric || ty.is_map() {
                    return Err(OvsdbError::syntax(format!(
                        "Type mismatch: \"{mname}\" operator may not be applied to column {cname} of type {}.",
                        ty.to_json()
                    )));
                }
                let scalar = ColumnType {
                    key: ovsdb_core::BaseType::plain(ty.key.atomic),
                    value: None,
                    min: 1,
                    max: Some(1),
                };
                Datum::from_json_typed(&parts[2], &scalar, Some(&mut self.symtab))?
            }
        };
        Ok((ci, mutator, arg))
    }

    fn op_wait(&mut self, o: &Map<String, Value>, ctx: &ExecContext<'_>) -> Result<Value, OpError> {
        let (t, ts) = self.table(o, "wait")?;
        let cond = self.where_clause(o, &ts, "wait")?;
        let columns = parse_columns(o.get("columns"), &ts)?;
        let until = member(o, "until", "wait")?
            .as_str()
            .ok_or_else(|| OvsdbError::syntax("\"until\" must be \"==\" or \"!=\""))?;
        let want_equal = match until {
            "==" => true,
            "!=" => false,
            other => {
                return Err(OvsdbError::syntax(format!(
                    "\"until\" must be \"==\" or \"!=\", not \"{other}\""
                ))
                .into())
            }
        };
        let timeout =
            match o.get("timeout") {
                None => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    OvsdbError::syntax("\"timeout\" must be a non-negative integer")
                })?),
            };
        let rows_v = member(o, "rows", "wait")?
            .as_array()
            .ok_or_else(|| OvsdbError::syntax("\"rows\" must be an array"))?;
        let proj_cols: Vec<usize> = match &columns {
            Some(c) => c.iter().filter_map(|n| ts.column(n)).collect(),
            None => (0..ts.columns.len()).collect(),
        };
        let mut expected: Vec<Vec<Datum>> = Vec::new();
        for rv in rows_v {
            let parsed = self.parse_row(rv, &ts, false)?;
            let mut full = Row::default_for(&ts);
            for (i, d) in parsed {
                full.data[i] = d;
            }
            expected.push(proj_cols.iter().map(|&i| full.data[i].clone()).collect());
        }
        let mut actual: Vec<Vec<Datum>> = self
            .matching(t, &cond)
            .iter()
            .map(|(_, r)| proj_cols.iter().map(|&i| r.data[i].clone()).collect())
            .collect();
        expected.sort();
        actual.sort();
        if (expected == actual) == want_equal {
            return Ok(json!({}));
        }
        match timeout {
            Some(0) => Err(OvsdbError::new("timed out", "\"wait\" timed out").into()),
            _ if ctx.wait_expired => Err(OvsdbError::new("timed out", "\"wait\" timed out").into()),
            Some(ms) => Err(OpError::Blocked(ms)),
            None => Err(OpError::Blocked(u64::MAX)),
        }
    }

    /// Validates the overlay and turns it into committed changes.
    ///
    /// Every check walks the overlay (the rows this transaction touched) once,
    /// plus, for weak references into tables that lost rows, the rows that
    /// refer to those tables: linear in the size of the transaction.
    fn commit(&mut self) -> Result<Option<Changes>, OvsdbError> {
        if let Some(name) = self.symtab.first_undeclared() {
            return Err(OvsdbError::referential(format!(
                "named-uuid \"{name}\" is used but no \"insert\" operation declares it"
            )));
        }
        let delta = self.collect_garbage();
        self.check_deleted_references(&delta)?;
        self.clear_weak_references()?;
        self.check_sizes_and_strong_references()?;
        self.check_max_rows()?;
        self.check_indexes()?;
        let mut rows = Vec::with_capacity(self.overlay.iter().map(|o| o.len()).sum());
        for (t, overlay) in std::mem::take(&mut self.overlay).into_iter().enumerate() {
            // Changes are sorted by (table, UUID).
            let mut entries: Vec<(Uuid, Option<Arc<Row>>)> = overlay.into_iter().collect();
            entries.sort_unstable_by_key(|(u, _)| *u);
            for (u, new) in entries {
                let old = if self.db.tables[t].rows.is_empty() {
                    None
                } else {
                    self.db.tables[t].rows.get(&u).cloned()
                };
                let new = match (&old, new) {
                    (None, None) => continue,
                    (Some(o), Some(n)) if o.data == n.data => continue,
                    (_, Some(mut n)) => {
                        // The overlay holds the only reference: set the version in place.
                        Arc::make_mut(&mut n).version = Uuid::new_v4();
                        Some(n)
                    }
                    (_, None) => None,
                };
                rows.push(RowChange {
                    table: t,
                    uuid: u,
                    old,
                    new,
                });
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let comment = if self.comments.is_empty() {
            None
        } else {
            Some(self.comments.join("\n"))
        };
        Ok(Some(Changes { rows, comment }))
    }

    /// Per table, per column: the tables its key and value atoms refer to with
    /// references of kind `kind` (None: not such a reference).
    fn ref_targets(&self, kind: RefType) -> Vec<Vec<(Option<usize>, Option<usize>)>> {
        let target = |b: &ovsdb_core::BaseType| {
            (b.ref_type == kind)
                .then(|| {
                    b.ref_table
                        .as_deref()
                        .and_then(|r| self.db.schema.table_with_index(r))
                        .map(|(i, _)| i)
                })
                .flatten()
        };
        self.db
            .schema
            .tables
            .iter()
            .map(|ts| {
                ts.columns
                    .iter()
                    .map(|c| (target(&c.ty.key), c.ty.value.as_ref().and_then(target)))
                    .collect()
            })
            .collect()
    }

    /// Column sizes (`min`/`max`) and the targets of strong references of every
    /// row the transaction leaves in place. The error reported is that of the
    /// first such row in (table, UUID) order, as the rows were once walked.
    fn check_sizes_and_strong_references(&self) -> Result<(), OvsdbError> {
        let targets = self.ref_targets(RefType::Strong);
        for (t, overlay) in self.overlay.iter().enumerate() {
            let mut first: Option<(Uuid, OvsdbError)> = None;
            for (&u, row) in overlay {
                let Some(row) = row else { continue };
                if first.as_ref().is_some_and(|(f, _)| *f < u) {
                    continue;
                }
                if let Err(e) = self.check_row(&targets[t], t, u, row) {
                    first = Some((u, e));
                }
            }
            if let Some((_, e)) = first {
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`Txn::check_sizes_and_strong_references`] for one row: the first
    /// column, in column order, that breaks its size or refers to a row
    /// that does not exist.
    fn check_row(
        &self,
        targets: &[(Option<usize>, Option<usize>)],
        t: usize,
        u: Uuid,
        row: &Row,
    ) -> Result<(), OvsdbError> {
        let ts = &self.db.schema.tables[t];
        for (ci, (c, d)) in ts.columns.iter().zip(&row.data).enumerate() {
            let n = d.len() as u64;
            if n < c.ty.min || c.ty.max.is_some_and(|max| n > max) {
                return Err(OvsdbError::constraint(format!(
                    "Column {}.{} of row {u} has {n} elements but must have between {} and {}.",
                    ts.name,
                    c.name,
                    c.ty.min,
                    c.ty.max_text()
                )));
            }
            let (kt, vt) = targets[ci];
            let check = |rti: usize, a: &Atom| match a.as_uuid() {
                Some(target) if !self.exists(rti, target) => Err(OvsdbError::referential(format!(
                    "Table {} column {} row {u} references nonexistent row {target} in table {}.",
                    ts.name, c.name, self.db.schema.tables[rti].name
                ))),
                _ => Ok(()),
            };
            if let Some(rti) = kt {
                for a in d.keys() {
                    check(rti, a)?;
                }
            }
            if let Some(rti) = vt {
                for a in d.values() {
                    check(rti, a)?;
                }
            }
        }
        Ok(())
    }

    /// Reference count deltas implied by the overlay.
    fn ref_deltas(&self) -> Delta {
        let mut delta: Delta = Delta::default();
        for (t, overlay) in self.overlay.iter().enumerate() {
            let ts = &self.db.schema.tables[t];
            let committed = &self.db.tables[t].rows;
            for (&u, new) in overlay {
                if let Some(old) = committed.get(&u) {
                    for r in old.strong_refs(ts) {
                        *delta.entry(r).or_insert(0) -= 1;
                    }
                }
                if let Some(new) = new {
                    for r in new.strong_refs(ts) {
                        *delta.entry(r).or_insert(0) += 1;
                    }
                }
            }
        }
        delta
    }

    fn final_refcount(&self, delta: &Delta, u: Uuid) -> i64 {
        i64::from(self.db.refcount.get(&u).copied().unwrap_or(0))
            + delta.get(&u).copied().unwrap_or(0)
    }

    /// Deletes non-root rows left without strong references, to a fixed point.
    /// Returns the reference count deltas of the final overlay.
    fn collect_garbage(&mut self) -> Delta {
        loop {
            let delta = self.ref_deltas();
            let mut candidates: BTreeSet<Key> = BTreeSet::new();
            for (t, overlay) in self.overlay.iter().enumerate() {
                if self.db.schema.tables[t].is_root {
                    continue;
                }
                for (&u, new) in overlay {
                    if new.is_some() {
                        candidates.insert((t, u));
                    }
                }
            }
            for (&u, &d) in &delta {
                if d < 0 {
                    for (t, ts) in self.db.schema.tables.iter().enumerate() {
                        if !ts.is_root && self.exists(t, u) {
                            candidates.insert((t, u));
                        }
                    }
                }
            }
            let garbage: Vec<Key> = candidates
                .into_iter()
                .filter(|&(t, u)| self.exists(t, u) && self.final_refcount(&delta, u) <= 0)
                .collect();
            if garbage.is_empty() {
                return delta;
            }
            for (t, u) in garbage {
                self.overlay[t].insert(u, None);
            }
        }
    }

    fn check_deleted_references(&self, delta: &Delta) -> Result<(), OvsdbError> {
        for (t, overlay) in self.overlay.iter().enumerate() {
            // The first in UUID order is reported.
            let first = overlay
                .iter()
                .filter(|(u, new)| {
                    new.is_none()
                        && self.db.tables[t].rows.contains_key(*u)
                        && self.final_refcount(delta, **u) > 0
                })
                .map(|(u, _)| *u)
                .min();
            if let Some(u) = first {
                let n = self.final_refcount(delta, u);
                return Err(OvsdbError::referential(format!(
                    "cannot delete {} row {u} because of {n} remaining reference(s)",
                    self.db.schema.tables[t].name
                )));
            }
        }
        Ok(())
    }

    /// Removes weak references to rows that do not exist after this transaction.
    /// A row is copied only when it has such a reference.
    fn clear_weak_references(&mut self) -> Result<(), OvsdbError> {
        let targets = self.ref_targets(RefType::Weak);
        let has_weak: Vec<bool> = targets
            .iter()
            .map(|cols| cols.iter().any(|(k, v)| k.is_some() || v.is_some()))
            .collect();
        let mut lost_rows = vec![false; self.db.tables.len()];
        for (t, overlay) in self.overlay.iter().enumerate() {
            lost_rows[t] = overlay.values().any(Option::is_none);
        }
        let mut work: Vec<Key> = Vec::new();
        for (t, overlay) in self.overlay.iter().enumerate() {
            if has_weak[t] {
                work.extend(
                    overlay
                        .iter()
                        .filter(|(_, v)| v.is_some())
                        .map(|(u, _)| (t, *u)),
                );
            }
        }
        for (t, cols) in targets.iter().enumerate() {
            let refers = cols
                .iter()
                .any(|(k, v)| k.is_some_and(|i| lost_rows[i]) || v.is_some_and(|i| lost_rows[i]));
            if refers {
                work.extend(
                    self.db.tables[t]
                        .rows
                        .keys()
                        .filter(|u| !self.overlay[t].contains_key(*u))
                        .map(|u| (t, *u)),
                );
            }
        }
        let mut updates = Vec::new();
        for (t, u) in work {
            let Some(row) = self.get(t, u) else { continue };
            let dangling = |a: &Atom, target: Option<usize>| match (target, a.as_uuid()) {
                (Some(ti), Some(x)) => !self.exists(ti, x),
                _ => false,
            };
            let cols = &targets[t];
            let stale = |ci: usize, d: &Datum| {
                let (kt, vt) = cols[ci];
                d.keys().any(|a| dangling(a, kt)) || d.values().any(|a| dangling(a, vt))
            };
            if !row.data.iter().enumerate().any(|(ci, d)| stale(ci, d)) {
                continue;
            }
            let mut new = (*row).clone();
            for (ci, d) in new.data.iter_mut().enumerate() {
                if !stale(ci, d) {
                    continue;
                }
                let (kt, vt) = cols[ci];
                *d = match d {
                    Datum::Set(s) => {
                        Datum::Set(s.iter().filter(|a| !dangling(a, kt)).cloned().collect())
                    }
                    Datum::Map(m) => Datum::Map(
                        m.iter()
                            .filter(|(k, v)| !dangling(k, kt) && !dangling(v, vt))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                };
            }
            updates.push(((t, u), new));
        }
        for ((t, u), new) in updates {
            self.overlay[t].insert(u, Some(Arc::new(new)));
        }
        Ok(())
    }

    fn check_max_rows(&self) -> Result<(), OvsdbError> {
        for (t, ts) in self.db.schema.tables.iter().enumerate() {
            let Some(max) = ts.max_rows else { continue };
            let mut n = self.db.tables[t].rows.len() as i64;
            for (u, v) in &self.overlay[t] {
                let existed = self.db.tables[t].rows.contains_key(u);
                n += i64::from(v.is_some()) - i64::from(existed);
            }
            if n > max as i64 {
                return Err(OvsdbError::constraint(format!(
                    "Transaction causes \"{}\" table to contain {n} rows, greater than the schema-defined limit of {max} row(s).",
                    ts.name
                )));
            }
        }
        Ok(())
    }

    fn check_indexes(&self) -> Result<(), OvsdbError> {
        for (t, table) in self.db.tables.iter().enumerate() {
            let ts = &table.schema;
            if ts.indexes.is_empty() || self.overlay[t].is_empty() {
                continue;
            }
            // In UUID order: the clash reported is the first in that order.
            let mut rows: Vec<(&Uuid, &Arc<Row>)> = self.overlay[t]
                .iter()
                .filter_map(|(u, v)| v.as_ref().map(|r| (u, r)))
                .collect();
            rows.sort_unstable_by_key(|(u, _)| **u);
            for (ix, cols) in ts.indexes.iter().enumerate() {
                let mut seen: BTreeMap<Vec<Datum>, Uuid> = BTreeMap::new();
                for &(u, row) in &rows {
                    let key = table.index_key(ix, row);
                    let clash = |other: Uuid| {
                        let names: Vec<&str> =
                            cols.iter().map(|&c| ts.columns[c].name.as_str()).collect();
                        OvsdbError::constraint(format!(
                            "Transaction causes multiple rows in \"{}\" table to have identical values ({}) for index on column{} \"{}\".  First row has UUID {other}; second row has UUID {u}.",
                            ts.name,
                            key.iter().map(|d| d.to_json().to_string()).collect::<Vec<_>>().join(", "),
                            if names.len() > 1 { "s" } else { "" },
                            names.join("\", \"")
                        ))
                    };
                    if let Some(other) = seen.insert(key.clone(), *u) {
                        return Err(clash(other));
                    }
                    if let Some(&other) = table.indexes[ix].get(&key) {
                        if other != *u {
                            // The committed holder of this key only clashes if it still has it.
                            let still = match self.overlay[t].get(&other) {
                                None => true,
                                Some(None) => false,
                                Some(Some(r)) => table.index_key(ix, r) == key,
                            };
                            if still {
                                return Err(clash(other));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn parse_plain_uuid(v: &Value) -> Result<Uuid, OvsdbError> {
    match Atom::from_json_unchecked(v, AtomicType::Uuid, None)? {
        Atom::Uuid(u) => Ok(u),
        _ => Err(OvsdbError::syntax("\"uuid\" must be [\"uuid\", <uuid>]")),
    }
}

fn is_map_json(v: &Value) -> bool {
    v.as_array()
        .is_some_and(|a| a.first().is_some_and(|f| f == "map"))
}

fn parse_columns(v: Option<&Value>, ts: &TableSchema) -> Result<Option<Vec<String>>, OvsdbError> {
    let Some(v) = v else { return Ok(None) };
    let arr = v
        .as_array()
        .ok_or_else(|| OvsdbError::syntax("\"columns\" must be an array of column names"))?;
    let mut out = Vec::with_capacity(arr.len());
    for c in arr {
        let n = c
            .as_str()
            .ok_or_else(|| OvsdbError::syntax("\"columns\" must be an array of column names"))?;
        if ts.column(n).is_none() && !ovsdb_core::schema::is_implicit_column(n) {
            return Err(OvsdbError::new(
                "unknown column",
                format!("No column {n} in table {}.", ts.name),
            ));
        }
        out.push(n.to_owned());
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovsdb_core::Schema;

    const SCHEMA: &str = r#"{"name":"T","tables":{
      "A":{"isRoot":true,"indexes":[["name"]],"columns":{
         "name":{"type":"string"},
         "n":{"type":{"key":{"type":"integer","minInteger":0,"maxInteger":100}}},
         "s":{"type":{"key":"string","min":0,"max":2}},
         "m":{"type":{"key":"string","value":"string","min":0,"max":"unlimited"}},
         "b":{"type":{"key":{"type":"uuid","refTable":"B"},"min":0,"max":"unlimited"}},
         "w":{"type":{"key":{"type":"uuid","refTable":"A","refType":"weak"},"min":0,"max":"unlimited"}},
         "fixed":{"type":"integer","mutable":false}}},
      "B":{"columns":{"x":{"type":"integer"}}}}}"#;

    fn db() -> Database {
        Database::new(Arc::new(Schema::from_json_str(SCHEMA).unwrap()))
    }

    fn run(db: &mut Database, ops: Value) -> Vec<Value> {
        let ctx = ExecContext {
            owns_lock: &|l| l == "mine",
            wait_expired: false,
            read_only: None,
        };
        match execute(db, ops.as_array().unwrap(), &ctx) {
            Outcome::Done {
                results, changes, ..
            } => {
                if let Some(c) = changes {
                    db.apply(&c);
                }
                results.iter().map(OpResult::to_json).collect()
            }
            Outcome::Blocked { .. } => panic!("unexpectedly blocked"),
        }
    }

    fn err(v: &Value) -> &str {
        v["error"].as_str().unwrap_or("")
    }

    /// `text` with every UUID (8-4-4-4-12 hex digits) written as `U`.
    fn blank_uuids(text: &str) -> String {
        let is_uuid = |w: &[u8]| {
            w.len() == 36
                && w.iter().enumerate().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => *c == b'-',
                    _ => c.is_ascii_hexdigit(),
                })
        };
        let b = text.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if b.get(i..i + 36).is_some_and(is_uuid) {
                out.push('U');
                i += 36;
            } else {
                out.push(b[i] as char);
                i += 1;
            }
        }
        out
    }

    /// `ops` run as decoded values and as text (each on a fresh database):
    /// the same results but for the inserted UUIDs, and the same rows.
    fn both_forms(ops: &Value) {
        let ctx = ExecContext {
            owns_lock: &|l| l == "mine",
            wait_expired: false,
            read_only: None,
        };
        let text: Vec<OpText> = ops
            .as_array()
            .unwrap()
            .iter()
            .map(|o| OpText::Raw(RawValue::from_string(o.to_string()).unwrap()))
            .collect();
        let shape = |out: Outcome| match out {
            Outcome::Done {
                results, changes, ..
            } => {
                let results: Vec<Value> = results
                    .iter()
                    .map(|r| match r {
                        OpResult::Inserted(_) => json!("inserted"),
                        other => json!(blank_uuids(&other.to_json().to_string())),
                    })
                    .collect();
                // Rows and results as JSON text with every UUID blanked
                // (inserted rows get random ones).
                let blank = |d: &Datum| blank_uuids(&d.to_json().to_string());
                let rows: Vec<Option<Vec<String>>> = changes
                    .map(|c| {
                        c.rows
                            .iter()
                            .map(|r| r.new.as_ref().map(|n| n.data.iter().map(blank).collect()))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut rows = rows;
                rows.sort();
                (results, rows)
            }
            Outcome::Blocked { .. } => panic!("unexpectedly blocked"),
        };
        let a = shape(execute(&db(), ops.as_array().unwrap(), &ctx));
        let b = shape(execute(&db(), &text, &ctx));
        assert_eq!(a, b, "{ops}");
    }

    /// Operations given as text (how nestdb-server takes a `transact` from
    /// a peer that may write) behave as decoded ones: inserts whose rows
    /// the typed visitors take, and every way an insert can be refused.
    #[test]
    fn operations_as_text_behave_as_values() {
        let cases = [
            json!([{"op":"insert","table":"A","row":{"name":"x","n":5,"s":["set",["p","q"]],"m":["map",[["k","v"]]],"b":["named-uuid","nb"]}},
                   {"op":"insert","table":"B","row":{"x":1},"uuid-name":"nb"}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid-name":"a"},
                   {"op":"insert","table":"A","row":{"name":"y","w":["set",[["named-uuid","a"]]]}}]),
            json!([{"op":"insert","table":"A","row":{"name":"x","n":101}}]),
            json!([{"op":"insert","table":"A","row":{"name":"x","n":1.5}}]),
            json!([{"op":"insert","table":"A","row":{"name":"x","s":["set",["p","q","r"]]}}]),
            json!([{"op":"insert","table":"A","row":{"name":"x","nope":1}}]),
            json!([{"op":"insert","table":"A","row":{"name":"x","_uuid":["uuid","5f8c43e8-3d9a-4c58-8d5b-2c1f2b0c3d4e"]}}]),
            json!([{"op":"insert","table":"A","row":{"name":"x","b":["named-uuid","missing"]}}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid-name":"a"},
                   {"op":"insert","table":"A","row":{"name":"y"},"uuid-name":"a"}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"}},
                   {"op":"insert","table":"A","row":{"name":"x"}}]),
            json!([{"op":"insert","table":"Nope","row":{}}]),
            json!([{"op":"insert","row":{}}]),
            json!([{"op":"insert","table":"A","row":[]}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"extra":1}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid":"5f8c43e8-3d9a-4c58-8d5b-2c1f2b0c3d4e"}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid-name":""}]),
            json!([{"op":"insert","table":"A"}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"}},
                   {"op":"update","table":"A","where":[["name","==","x"]],"row":{"n":7}},
                   {"op":"select","table":"A","where":[],"columns":["name","n"]},
                   {"op":"mutate","table":"A","where":[],"mutations":[["n","+=",1]]},
                   {"op":"comment","comment":"c"},
                   {"op":"assert","lock":"mine"}]),
            json!([{"op":"delete","table":"A","where":[]}, 1, "x", {"op":"nope"}]),
            json!([{"op":"abort"}]),
            // What the fast insert path must leave to the general one.
            json!([{"op":"insert","table":"A","row":null}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid-name":null}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid-name":5}]),
            json!([{"op":"insert","table":"A","row":5}]),
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid":["uuid","5f8c43e8-3d9a-4c58-8d5b-2c1f2b0c3d4e"]}]),
            json!([{"op":"insert","table":7,"row":{"name":"x"}}]),
            json!([{"op":"insert","table":"A","row":{}}]),
        ];
        for ops in &cases {
            both_forms(ops);
        }
    }

    /// The transact reply written from the results is byte for byte the
    /// `Message::Reply` of their JSON array, for inserts, other results,
    /// errors, the null padding and ids of every kind.
    #[test]
    fn reply_bytes_are_the_reply_message() {
        let d = db();
        let ctx = ExecContext {
            owns_lock: &|_| false,
            wait_expired: false,
            read_only: None,
        };
        for ops in [
            json!([{"op":"insert","table":"B","row":{"x":1},"uuid-name":"b1"},
                   {"op":"insert","table":"A","row":{"name":"a\"é","b":["named-uuid","b1"]}},
                   {"op":"select","table":"B","where":[]},
                   {"op":"comment","comment":"c"}]),
            json!([{"op":"insert","table":"B","row":{"x":1}},
                   {"op":"insert","table":"Nope","row":{}},
                   {"op":"select","table":"B","where":[]}]),
            json!([{"op":"insert","table":"A","row":{"name":"x","b":["named-uuid","zz"]}}]),
        ] {
            let Outcome::Done { results, .. } = execute(&d, ops.as_array().unwrap(), &ctx) else {
                panic!("blocked")
            };
            for id in [json!(1), json!("x\n"), json!(null), json!([1, {"a": 2}])] {
                let want = crate::jsonrpc::Message::Reply {
                    result: results_json(&results),
                    id: id.clone(),
                }
                .to_bytes();
                assert_eq!(
                    String::from_utf8(reply_bytes(&id, &results)).unwrap(),
                    String::from_utf8(want).unwrap()
                );
            }
        }
    }

    #[test]
    fn insert_with_named_uuid_and_select() {
        let mut d = db();
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"B","row":{"x":1},"uuid-name":"b1"},
                   {"op":"insert","table":"A","row":{"name":"a","b":["named-uuid","b1"]}},
                   {"op":"select","table":"A","where":[["name","==","a"]],"columns":["b"]}]),
        );
        assert_eq!(r[2]["rows"][0]["b"], r[0]["uuid"]);
        assert_eq!(d.row_count(), 2);
    }

    #[test]
    fn garbage_collects_unreferenced_non_root_rows() {
        let mut d = db();
        let r = run(&mut d, json!([{"op":"insert","table":"B","row":{"x":1}}]));
        assert!(r[0]["uuid"].is_array());
        assert_eq!(d.tables[1].rows.len(), 0, "orphan B row must be collected");
        run(
            &mut d,
            json!([{"op":"insert","table":"B","row":{"x":1},"uuid-name":"b"},
                   {"op":"insert","table":"A","row":{"name":"a","b":["named-uuid","b"]}}]),
        );
        assert_eq!(d.tables[1].rows.len(), 1);
        run(
            &mut d,
            json!([{"op":"update","table":"A","where":[],"row":{"b":["set",[]]}}]),
        );
        assert_eq!(
            d.tables[1].rows.len(),
            0,
            "B row unreferenced after update must be collected"
        );
    }

    #[test]
    fn referential_integrity_is_enforced() {
        let mut d = db();
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a","b":["uuid","00000000-0000-0000-0000-000000000001"]}}]),
        );
        assert_eq!(r.len(), 2);
        assert_eq!(err(&r[1]), "referential integrity violation");
        run(
            &mut d,
            json!([{"op":"insert","table":"B","row":{"x":1},"uuid-name":"b"},
                   {"op":"insert","table":"A","row":{"name":"a","b":["named-uuid","b"]}}]),
        );
        let r = run(&mut d, json!([{"op":"delete","table":"B","where":[]}]));
        assert_eq!(err(&r[1]), "referential integrity violation");
        assert_eq!(d.tables[1].rows.len(), 1);
    }

    #[test]
    fn weak_references_are_cleared_on_delete() {
        let mut d = db();
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid-name":"x"},
                   {"op":"insert","table":"A","row":{"name":"y","w":["named-uuid","x"]}}]),
        );
        assert!(r.iter().all(|v| v.get("error").is_none()), "{r:?}");
        run(
            &mut d,
            json!([{"op":"delete","table":"A","where":[["name","==","x"]]}]),
        );
        let r = run(
            &mut d,
            json!([{"op":"select","table":"A","where":[],"columns":["w"]}]),
        );
        assert_eq!(r[0]["rows"][0]["w"], json!(["set", []]));
    }

    #[test]
    fn weak_clean_up_touches_only_rows_with_dangling_references() {
        let mut d = db();
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"x"},"uuid-name":"x"},
                   {"op":"insert","table":"A","row":{"name":"y"},"uuid-name":"y"},
                   {"op":"insert","table":"A","row":{"name":"p","w":["named-uuid","x"]}},
                   {"op":"insert","table":"A","row":{"name":"q","w":["set",[["named-uuid","y"],
                       ["uuid","00000000-0000-0000-0000-000000000001"]]]}}]),
        );
        assert!(r.iter().all(|v| v.get("error").is_none()), "{r:?}");
        let w = |d: &mut Database, name: &str| {
            run(
                d,
                json!([{"op":"select","table":"A","where":[["name","==",name]],"columns":["w"]}]),
            )[0]["rows"][0]["w"]
                .clone()
        };
        // An inserted row keeps its reference to a row that exists and loses
        // the one to a row that does not.
        assert_eq!(w(&mut d, "q"), r[1]["uuid"]);
        let ctx = ExecContext {
            owns_lock: &|_| false,
            wait_expired: false,
            read_only: None,
        };
        let ops = json!([{"op":"delete","table":"A","where":[["name","==","x"]]}]);
        let Outcome::Done {
            changes: Some(c), ..
        } = execute(&d, ops.as_array().unwrap(), &ctx)
        else {
            panic!("the delete did not commit")
        };
        // The deleted row and the one row that referred to it; q is untouched.
        let name_col = d.schema.tables[0].column("name").unwrap();
        let names: Vec<String> = c
            .rows
            .iter()
            .map(|ch| {
                let r = ch.old.as_ref().expect("a change of an existing row");
                r.data[name_col]
                    .to_json()
                    .as_str()
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, ["p", "x"], "{names:?}");
        d.apply(&c);
        assert_eq!(w(&mut d, "p"), json!(["set", []]));
        assert_eq!(w(&mut d, "q"), r[1]["uuid"]);
    }

    #[test]
    fn constraints_indexes_and_mutability() {
        let mut d = db();
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a","n":101}}]),
        );
        assert_eq!(err(&r[0]), "constraint violation");
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a","s":["set",["1","2","3"]]}}]),
        );
        assert_eq!(err(&r[0]), "syntax error");
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a"}},{"op":"insert","table":"A","row":{"name":"a"}}]),
        );
        assert_eq!(r.len(), 3);
        assert_eq!(err(&r[2]), "constraint violation");
        run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a"}}]),
        );
        let r = run(
            &mut d,
            json!([{"op":"update","table":"A","where":[],"row":{"fixed":3}}]),
        );
        assert_eq!(err(&r[0]), "constraint violation");
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a"}}]),
        );
        assert_eq!(err(&r[1]), "constraint violation", "index on name");
        let r = run(&mut d, json!([{"op":"insert","table":"Nope","row":{}}]));
        assert_eq!(err(&r[0]), "syntax error", "unknown table");
        let r = run(&mut d, json!([{"op":"insert","table":"A","row":{"zz":1}}]));
        assert_eq!(err(&r[0]), "unknown column");
    }

    #[test]
    fn mutate_operations() {
        let mut d = db();
        run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a","n":5,"m":["map",[["k","v"]]]}}]),
        );
        let r = run(
            &mut d,
            json!([{"op":"mutate","table":"A","where":[],"mutations":[["n","*=",3],["s","insert","x"],["m","delete",["set",["k"]]],["m","insert",["map",[["q","r"]]]]]},
                   {"op":"select","table":"A","where":[],"columns":["n","s","m"]}]),
        );
        assert_eq!(r[0], json!({"count": 1}));
        assert_eq!(
            r[1]["rows"][0],
            json!({"n":15,"s":"x","m":["map",[["q","r"]]]})
        );
        let r = run(
            &mut d,
            json!([{"op":"mutate","table":"A","where":[],"mutations":[["n","/=",0]]}]),
        );
        assert_eq!(err(&r[0]), "domain error");
        let r = run(
            &mut d,
            json!([{"op":"mutate","table":"A","where":[],"mutations":[["n","+=",100]]}]),
        );
        assert_eq!(err(&r[0]), "constraint violation");
        let r = run(
            &mut d,
            json!([{"op":"mutate","table":"A","where":[],"mutations":[["s","insert",["set",["y","z"]]]]}]),
        );
        assert_eq!(err(&r[0]), "constraint violation");
    }

    #[test]
    fn wait_abort_comment_assert() {
        let mut d = db();
        run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"a"}}]),
        );
        let r = run(
            &mut d,
            json!([{"op":"wait","table":"A","where":[],"columns":["name"],"until":"==","rows":[{"name":"a"}],"timeout":0}]),
        );
        assert_eq!(r[0], json!({}));
        let r = run(
            &mut d,
            json!([{"op":"wait","table":"A","where":[],"columns":["name"],"until":"==","rows":[],"timeout":0}]),
        );
        assert_eq!(err(&r[0]), "timed out");
        let ctx = ExecContext {
            owns_lock: &|_| false,
            wait_expired: false,
            read_only: None,
        };
        let ops = json!([{"op":"wait","table":"A","where":[],"columns":["name"],"until":"==","rows":[],"timeout":500}]);
        assert!(matches!(
            execute(&d, ops.as_array().unwrap(), &ctx),
            Outcome::Blocked { timeout_ms: 500 }
        ));
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"b"}},{"op":"abort"},{"op":"comment","comment":"x"}]),
        );
        assert_eq!(err(&r[1]), "aborted");
        assert_eq!(r[2], Value::Null);
        assert_eq!(d.tables[0].rows.len(), 1);
        let r = run(&mut d, json!([{"op":"assert","lock":"other"}]));
        assert_eq!(err(&r[0]), "not owner");
        let r = run(
            &mut d,
            json!([{"op":"assert","lock":"mine"},{"op":"comment","comment":"ok"}]),
        );
        assert_eq!(r, vec![json!({}), json!({})]);
        let r = run(
            &mut d,
            json!([{"op":"select","table":"A","where":[],"bogus":1}]),
        );
        assert_eq!(err(&r[0]), "syntax error");
        let r = run(&mut d, json!([{"op":"frobnicate"}]));
        assert_eq!(err(&r[0]), "syntax error");
        let r = run(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"name":"c","w":["named-uuid","nope"]}}]),
        );
        assert_eq!(err(&r[1]), "referential integrity violation");
    }
}
