//! Rows, tables and the in-memory database.
//!
//! A [`Database`] owns one [`Table`] per schema table.  Rows are immutable
//! `Arc<Row>` values replaced as a whole on change, so monitors and the transaction
//! history can keep old versions cheaply.  The database also maintains, as invariants
//! updated only by [`Database::apply`]: the strong reference count of every row (for
//! referential integrity and garbage collection) and one ordered map per schema index
//! (for uniqueness checks).  Owned by the server thread; not shared.

use ovsdb_core::{Atom, Datum, OvsdbError, RefType, Schema, TableSchema, Uuid};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One row: its version and one datum per schema column (in column order).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Changes whenever the row's contents change.
    pub version: Uuid,
    /// Column values, indexed like `TableSchema::columns`.
    pub data: Vec<Datum>,
}

impl Row {
    /// A row with every column at its default value.
    pub fn default_for(ts: &TableSchema) -> Self {
        Self {
            version: Uuid::new_v4(),
            data: ts.columns.iter().map(|c| c.ty.default_datum()).collect(),
        }
    }

    /// The JSON object of this row, restricted to `columns` when given (names may
    /// include `_uuid` and `_version`).
    pub fn to_json(&self, ts: &TableSchema, uuid: Uuid, columns: Option<&[String]>) -> Value {
        let mut o = Map::new();
        match columns {
            None => {
                o.insert("_uuid".into(), Atom::Uuid(uuid).to_json());
                o.insert("_version".into(), Atom::Uuid(self.version).to_json());
                for (c, d) in ts.columns.iter().zip(&self.data) {
                    o.insert(c.name.clone(), d.to_json());
                }
            }
            Some(cols) => {
                for name in cols {
                    let v = match name.as_str() {
                        "_uuid" => Atom::Uuid(uuid).to_json(),
                        "_version" => Atom::Uuid(self.version).to_json(),
                        n => match ts.column(n) {
                            Some(i) => self.data[i].to_json(),
                            None => continue,
                        },
                    };
                    o.insert(name.clone(), v);
                }
            }
        }
        Value::Object(o)
    }

    /// UUIDs this row references strongly (with multiplicity).
    pub fn strong_refs<'a>(&'a self, ts: &'a TableSchema) -> impl Iterator<Item = Uuid> + 'a {
        ts.columns
            .iter()
            .zip(&self.data)
            .filter_map(|(c, d)| {
                let k = c.ty.key.ref_table.is_some() && c.ty.key.ref_type == RefType::Strong;
                let v =
                    c.ty.value
                        .as_ref()
                        .is_some_and(|v| v.ref_table.is_some() && v.ref_type == RefType::Strong);
                // Only the reference columns' atoms are walked.
                (k || v).then(|| {
                    let keys = d.keys().filter(move |_| k).filter_map(Atom::as_uuid);
                    let vals = d.values().filter(move |_| v).filter_map(Atom::as_uuid);
                    keys.chain(vals)
                })
            })
            .flatten()
    }
}

/// One row-level change of a committed transaction.
#[derive(Debug, Clone)]
pub struct RowChange {
    /// Table index in the schema.
    pub table: usize,
    /// Row UUID.
    pub uuid: Uuid,
    /// Row before the transaction (None for inserts).
    pub old: Option<Arc<Row>>,
    /// Row after the transaction (None for deletes).
    pub new: Option<Arc<Row>>,
}

/// The effect of one committed transaction.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Row changes sorted by (table, uuid); never contains no-op changes.
    pub rows: Vec<RowChange>,
    /// Comments from `comment` operations, joined by newlines.
    pub comment: Option<String>,
}

/// A table's rows.
#[derive(Debug, Clone)]
pub struct Table {
    /// The table's schema.
    pub schema: Arc<TableSchema>,
    /// Rows by UUID.
    pub rows: BTreeMap<Uuid, Arc<Row>>,
    /// One map per schema index: index key → row.
    pub indexes: Vec<BTreeMap<Vec<Datum>, Uuid>>,
}

impl Table {
    /// The key of `row` for index number `i`.
    pub fn index_key(&self, i: usize, row: &Row) -> Vec<Datum> {
        self.schema.indexes[i]
            .iter()
            .map(|&c| row.data[c].clone())
            .collect()
    }
}

/// An in-memory database.
#[derive(Debug, Clone)]
pub struct Database {
    /// The schema.
    pub schema: Arc<Schema>,
    /// Tables in schema order.
    pub tables: Vec<Table>,
    /// Strong reference count per referenced row.
    pub refcount: hashbrown::HashMap<Uuid, u32>,
}

impl Database {
    /// An empty database.
    pub fn new(schema: Arc<Schema>) -> Self {
        let tables = schema
            .tables
            .iter()
            .map(|t| Table {
                schema: t.clone(),
                rows: BTreeMap::new(),
                indexes: vec![BTreeMap::new(); t.indexes.len()],
            })
            .collect();
        Self {
            schema,
            tables,
            refcount: hashbrown::HashMap::new(),
        }
    }

    /// Applies committed changes, maintaining reference counts and indexes.
    pub fn apply(&mut self, changes: &Changes) {
        for ch in &changes.rows {
            let table = &mut self.tables[ch.table];
            let ts = table.schema.clone();
            if let Some(old) = &ch.old {
                for u in old.strong_refs(&ts) {
                    if let Some(c) = self.refcount.get_mut(&u) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            self.refcount.remove(&u);
                        }
                    }
                }
                for i in 0..ts.indexes.len() {
                    let k = table.index_key(i, old);
                    if table.indexes[i].get(&k) == Some(&ch.uuid) {
                        table.indexes[i].remove(&k);
                    }
                }
            }
            match &ch.new {
                Some(new) => {
                    for u in new.strong_refs(&ts) {
                        *self.refcount.entry(u).or_insert(0) += 1;
                    }
                    for i in 0..ts.indexes.len() {
                        let k = table.index_key(i, new);
                        table.indexes[i].insert(k, ch.uuid);
                    }
                    table.rows.insert(ch.uuid, new.clone());
                }
                None => {
                    table.rows.remove(&ch.uuid);
                }
            }
        }
    }

    /// Converts a log record (ovsdb(5) transaction record, with or without `_is_diff`)
    /// into changes against the current contents.
    pub fn changes_from_record(&self, rec: &Value) -> Result<Changes, OvsdbError> {
        let o = rec
            .as_object()
            .ok_or_else(|| OvsdbError::syntax("transaction record must be a JSON object"))?;
        let is_diff = o.get("_is_diff").and_then(Value::as_bool).unwrap_or(false);
        let mut rows = Vec::new();
        for (tname, tv) in o {
            if tname.starts_with('_') {
                continue;
            }
            let (ti, ts) = self
                .schema
                .table_with_index(tname)
                .ok_or_else(|| OvsdbError::syntax(format!("record names unknown table {tname}")))?;
            let tobj = tv.as_object().ok_or_else(|| {
                OvsdbError::syntax(format!("record for table {tname} must be an object"))
            })?;
            for (us, rv) in tobj {
                let uuid = Uuid::parse_str(us)
                    .map_err(|_| OvsdbError::syntax(format!("record has invalid row UUID {us}")))?;
                let old = self.tables[ti].rows.get(&uuid).cloned();
                let new = match rv {
                    Value::Null => None,
                    Value::Object(cols) => {
                        let (mut row, diff) = match &old {
                            Some(r) => ((**r).clone(), is_diff),
                            None => (Row::default_for(ts), false),
                        };
                        row.version = Uuid::new_v4();
                        for (cname, cv) in cols {
                            let Some(ci) = ts.column(cname) else {
                                if cname == "_version" {
                                    if let Some(u) = cv.get(1).and_then(Value::as_str) {
                                        row.version = Uuid::parse_str(u).unwrap_or(row.version);
                                    }
                                }
                                continue;
                            };
                            let ty = &ts.columns[ci].ty;
                            if diff {
                                let d = Datum::diff_from_json(cv, ty)?;
                                row.data[ci].apply_diff(&d, ty)?;
                            } else {
                                row.data[ci] = Datum::from_json_typed(cv, ty, None)?;
                            }
                        }
                        Some(Arc::new(row))
                    }
                    _ => {
                        return Err(OvsdbError::syntax(format!(
                            "record row {us} must be an object or null"
                        )))
                    }
                };
                if old.is_none() && new.is_none() {
                    continue;
                }
                rows.push(RowChange {
                    table: ti,
                    uuid,
                    old,
                    new,
                });
            }
        }
        rows.sort_by_key(|c| (c.table, c.uuid));
        let comment = o.get("_comment").and_then(Value::as_str).map(str::to_owned);
        Ok(Changes { rows, comment })
    }

    /// The log record (without `_is_diff`: changed columns carry full values) for `changes`.
    pub fn record_for(&self, changes: &Changes, date_ms: u64) -> Value {
        let mut rec = Map::new();
        for ch in &changes.rows {
            let ts = &self.schema.tables[ch.table];
            let tobj = rec
                .entry(ts.name.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let v = match (&ch.old, &ch.new) {
                (_, None) => Value::Null,
                (old, Some(new)) => {
                    let mut o = Map::new();
                    for (i, c) in ts.columns.iter().enumerate() {
                        // As in ovsdb-server, ephemeral columns are not written to disk.
                        if c.ephemeral {
                            continue;
                        }
                        let changed = match old {
                            Some(old) => old.data[i] != new.data[i],
                            None => !c.ty.is_default(&new.data[i]),
                        };
                        if changed {
                            o.insert(c.name.clone(), new.data[i].to_json());
                        }
                    }
                    Value::Object(o)
                }
            };
            if let Value::Object(t) = tobj {
                t.insert(ch.uuid.to_string(), v);
            }
        }
        rec.insert("_date".into(), Value::from(date_ms));
        if let Some(c) = &changes.comment {
            rec.insert("_comment".into(), Value::from(c.clone()));
        }
        Value::Object(rec)
    }

    /// The JSON text of [`Database::record_for`], byte for byte what
    /// `serde_json::to_vec(&self.record_for(changes, date_ms))` gives (keys in
    /// sorted order, compact), written straight from the rows: a large
    /// transaction's record is tens of megabytes of JSON, and building it as a
    /// `Value` first took more time than writing it.
    pub fn record_json(&self, changes: &Changes, date_ms: u64) -> Vec<u8> {
        use std::io::Write as _;
        // Writing JSON text into a Vec cannot fail.
        fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        // Top-level keys in string order: the tables that changed, `_comment`, `_date`.
        enum Key<'a> {
            Table(usize, std::ops::Range<usize>),
            Comment(&'a str),
            Date,
        }
        let mut keys: Vec<(&str, Key<'_>)> = Vec::new();
        let mut i = 0;
        while i < changes.rows.len() {
            let t = changes.rows[i].table;
            let end = i + changes.rows[i..].partition_point(|c| c.table == t);
            keys.push((&self.schema.tables[t].name, Key::Table(t, i..end)));
            i = end;
        }
        if let Some(c) = &changes.comment {
            keys.push(("_comment", Key::Comment(c)));
        }
        keys.push(("_date", Key::Date));
        keys.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::with_capacity(256 * changes.rows.len() + 64);
        out.push(b'{');
        for (k, (name, key)) in keys.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            put(&mut out, *name);
            out.push(b':');
            match key {
                Key::Comment(c) => put(&mut out, *c),
                Key::Date => {
                    let _ = write!(out, "{date_ms}");
                }
                Key::Table(t, range) => {
                    let ts = &self.schema.tables[*t];
                    let mut cols: Vec<usize> = (0..ts.columns.len())
                        .filter(|&c| !ts.columns[c].ephemeral)
                        .collect();
                    cols.sort_by(|&a, &b| ts.columns[a].name.cmp(&ts.columns[b].name));
                    // Rows in UUID order, which is also their text's order.
                    out.push(b'{');
                    for (r, ch) in changes.rows[range.clone()].iter().enumerate() {
                        if r > 0 {
                            out.push(b',');
                        }
                        out.push(b'"');
                        ch.uuid.write_text(&mut out);
                        out.extend_from_slice(b"\":");
                        let Some(new) = &ch.new else {
                            out.extend_from_slice(b"null");
                            continue;
                        };
                        out.push(b'{');
                        let mut first = true;
                        for &c in &cols {
                            let col = &ts.columns[c];
                            let changed = match &ch.old {
                                Some(old) => old.data[c] != new.data[c],
                                None => !col.ty.is_default(&new.data[c]),
                            };
                            if !changed {
                                continue;
                            }
                            if !first {
                                out.push(b',');
                            }
                            first = false;
                            put(&mut out, col.name.as_str());
                            out.push(b':');
                            new.data[c].write_json(&mut out);
                        }
                        out.push(b'}');
                    }
                    out.push(b'}');
                }
            }
        }
        out.push(b'}');
        out
    }

    /// Changes that insert every current row (used for compaction and initial dumps).
    pub fn snapshot_changes(&self) -> Changes {
        let mut rows = Vec::new();
        for (ti, t) in self.tables.iter().enumerate() {
            for (u, r) in &t.rows {
                rows.push(RowChange {
                    table: ti,
                    uuid: *u,
                    old: None,
                    new: Some(r.clone()),
                });
            }
        }
        Changes {
            rows,
            comment: None,
        }
    }

    /// Total number of rows.
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn db() -> Database {
        let s = Schema::from_json_str(
            r#"{"name":"T","tables":{"A":{"isRoot":true,"columns":{"n":{"type":"integer"},
            "s":{"type":{"key":"string","min":0,"max":"unlimited"}},
            "r":{"type":{"key":{"type":"uuid","refTable":"B"},"min":0,"max":1}}},"indexes":[["n"]]},
            "B":{"columns":{"x":{"type":"integer"}}}}}"#,
        )
        .unwrap();
        Database::new(Arc::new(s))
    }

    #[test]
    fn replays_ovsdb_server_diff_records() {
        let mut d = db();
        let u = "d496c744-26a3-4800-8ca4-167f0a1d6c19";
        let b = "00000000-0000-0000-0000-0000000000bb";
        for rec in [
            json!({"_is_diff":true,"B":{b:{"x":3}},"A":{u:{"n":1,"s":["set",["a","b"]],"r":["uuid",b]}}}),
            json!({"_is_diff":true,"A":{u:{"s":["set",["a","c"]]}}}),
        ] {
            let ch = d.changes_from_record(&rec).unwrap();
            d.apply(&ch);
        }
        let row = &d.tables[0].rows[&Uuid::parse_str(u).unwrap()];
        assert_eq!(row.data[2].to_json(), json!(["set", ["b", "c"]]));
        assert_eq!(d.refcount.get(&Uuid::parse_str(b).unwrap()), Some(&1));
        assert_eq!(d.tables[0].indexes[0].len(), 1);
        // Deleting A drops the reference count to zero.
        let ch = d.changes_from_record(&json!({"A":{u:null}})).unwrap();
        d.apply(&ch);
        assert!(d.refcount.is_empty());
        assert!(d.tables[0].indexes[0].is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7ec0),
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// The streamed record is the same text as the `Value` record, for
        /// inserts, modifications (changed columns only) and deletions.
        #[test]
        fn record_json_is_the_value_record_text(
            rows in proptest::collection::btree_map(
                (0usize..2, 0u8..8),
                (proptest::option::of((-2i64..3, proptest::collection::btree_set("[ab\"\\\\é]{0,2}", 0..3), proptest::option::of(0u8..4))),
                 proptest::option::of((-2i64..3, proptest::collection::btree_set("[ab\"\\\\é]{0,2}", 0..3), proptest::option::of(0u8..4)))),
                0..8),
            comment in proptest::option::of("[a-z\n\"]{0,5}"),
            date in 0u64..u64::MAX,
        ) {
            let d = db();
            let row = |t: usize, (n, s, r): (i64, std::collections::BTreeSet<String>, Option<u8>)| {
                let mut row = Row::default_for(&d.schema.tables[t]);
                if t == 0 {
                    row.data[0] = Datum::from(n);
                    row.data[2] = Datum::Set(s.into_iter().map(Atom::String).collect());
                    row.data[1] = Datum::Set(
                        r.map(|b| Atom::Uuid(Uuid(uuid::Uuid::from_bytes([b; 16])))).into_iter().collect(),
                    );
                } else {
                    row.data[0] = Datum::from(n);
                }
                Arc::new(row)
            };
            let mut changes = Changes { rows: Vec::new(), comment };
            for ((t, u), (old, new)) in rows {
                if old.is_none() && new.is_none() {
                    continue;
                }
                changes.rows.push(RowChange {
                    table: t,
                    uuid: Uuid(uuid::Uuid::from_bytes([u; 16])),
                    old: old.map(|o| row(t, o)),
                    new: new.map(|n| row(t, n)),
                });
            }
            let want = serde_json::to_vec(&d.record_for(&changes, date)).unwrap();
            let got = d.record_json(&changes, date);
            proptest::prop_assert_eq!(String::from_utf8(got).unwrap(), String::from_utf8(want).unwrap());
        }
    }

    #[test]
    fn record_round_trips_through_replay() {
        let mut d = db();
        let rec = json!({"A":{"d496c744-26a3-4800-8ca4-167f0a1d6c19":{"n":7}}});
        let ch = d.changes_from_record(&rec).unwrap();
        let out = d.record_for(&ch, 5);
        assert_eq!(out["A"], rec["A"]);
        d.apply(&ch);
        let mut d2 = db();
        d2.apply(&d2.changes_from_record(&out).unwrap());
        assert_eq!(d2.tables[0].rows.len(), 1);
        assert!(d.changes_from_record(&json!({"Nope":{}})).is_err());
        assert!(d.changes_from_record(&json!({"A":{"zz":{}}})).is_err());
    }
}
