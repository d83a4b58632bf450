//! The local replica of monitored tables and the application of server
//! updates to it: `update` (RFC 7047 §4.1.6, "update1"), `update2` and
//! `update3` (ovsdb-server(7)) and full dumps.
//!
//! Invariants: the replica holds, per monitored table, the rows by UUID with
//! every monitored column present (columns the server omitted because they
//! hold their default value are filled with that default). Applying an
//! update is all-or-nothing: it is checked against a scratch copy of the
//! touched rows first, so a malformed update leaves the replica unchanged
//! and returns an error (the monitor then resynchronises with a full dump).
//! Each successful application returns the [`RowChange`]s it made, which is
//! what change notifications carry; a change shares its row with the replica
//! (one copy of each row, behind an `Arc`). A large update that arrives as
//! JSON text is applied straight from it ([`Replica::apply_updates2_text`]:
//! serde visitors into typed values, no `Value` tree), with the same result.
//!
//! A `Replica` is a plain value; the monitor shares it behind a mutex.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

use crate::error::{Error, Result};
use ovsdb_core::{datum_de, Datum, Row, Schema, TableSchema, Uuid};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// The row appeared (insert, or present in a dump but not before).
    Insert,
    /// One or more columns changed.
    Modify,
    /// The row disappeared.
    Delete,
}

/// One row change applied to the replica.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// Table name.
    pub table: String,
    /// Row UUID.
    pub uuid: Uuid,
    /// Insert, modify or delete.
    pub kind: ChangeKind,
    /// The row before (None for inserts).
    pub old: Option<Arc<Row>>,
    /// The row after (None for deletes): the replica's own copy, shared,
    /// not a second one.
    pub new: Option<Arc<Row>>,
}

/// The local copy of the monitored tables. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    schema: Option<Arc<Schema>>,
    /// Monitored columns per table (all columns if not restricted).
    columns: BTreeMap<String, Vec<String>>,
    /// Rows are shared with the [`RowChange`]s that report them.
    tables: BTreeMap<String, BTreeMap<Uuid, Arc<Row>>>,
}

impl Replica {
    /// An empty replica of `tables` of `schema`; `None` columns means all.
    pub fn new(
        schema: Arc<Schema>,
        tables: &BTreeMap<String, Option<Vec<String>>>,
    ) -> Result<Replica> {
        let mut r = Replica::default();
        r.configure(schema, tables)?;
        Ok(r)
    }

    /// (Re)configure the schema and monitored tables, keeping the rows of
    /// tables that stay monitored.
    pub fn configure(
        &mut self,
        schema: Arc<Schema>,
        tables: &BTreeMap<String, Option<Vec<String>>>,
    ) -> Result<()> {
        let mut columns = BTreeMap::new();
        for (t, cols) in tables {
            let ts = schema
                .table(t)
                .ok_or_else(|| Error::unknown_table(&schema.name, t))?;
            let cols = match cols {
                Some(c) => {
                    for name in c {
                        if ts.column_type(name).is_none() {
                            return Err(Error::UnknownName {
                                kind: "column",
                                name: format!("{t}.{name}"),
                                db: schema.name.clone(),
                            });
                        }
                    }
                    c.clone()
                }
                None => ts.column_names().map(str::to_owned).collect(),
            };
            columns.insert(t.clone(), cols);
        }
        self.tables.retain(|t, _| columns.contains_key(t));
        for t in columns.keys() {
            self.tables.entry(t.clone()).or_default();
        }
        self.columns = columns;
        self.schema = Some(schema);
        Ok(())
    }

    /// The schema the replica was configured with.
    pub fn schema(&self) -> Option<&Arc<Schema>> {
        self.schema.as_ref()
    }

    /// All rows of `table`, by UUID (`None` if the table is not monitored).
    pub fn table(&self, table: &str) -> Option<&BTreeMap<Uuid, Arc<Row>>> {
        self.tables.get(table)
    }

    /// One row.
    pub fn row(&self, table: &str, uuid: &Uuid) -> Option<&Row> {
        self.tables.get(table)?.get(uuid).map(Arc::as_ref)
    }

    /// Number of rows in `table` (0 if not monitored).
    pub fn len(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, BTreeMap::len)
    }

    /// True if no monitored table has rows.
    pub fn is_empty(&self) -> bool {
        self.tables.values().all(BTreeMap::is_empty)
    }

    /// The first row of `table` whose `column` equals `value`.
    pub fn find(&self, table: &str, column: &str, value: &Datum) -> Option<(Uuid, &Row)> {
        self.tables
            .get(table)?
            .iter()
            .find(|(_, r)| r.get(column) == Some(value))
            .map(|(u, r)| (*u, r.as_ref()))
    }

    /// The rows of `T`'s table as typed values; a row that does not convert
    /// yields its error (naming the column) instead of being skipped.
    pub fn typed<T: crate::node::TableRow>(&self) -> impl Iterator<Item = (Uuid, Result<T>)> + '_ {
        self.tables
            .get(T::TABLE)
            .into_iter()
            .flatten()
            .map(|(u, r)| (*u, T::from_row(r)))
    }

    fn table_schema(&self, table: &str) -> Result<(&TableSchema, &[String])> {
        let schema = self
            .schema
            .as_ref()
            .ok_or_else(|| Error::Protocol("an update arrived before the schema".into()))?;
        let cols = self.columns.get(table).ok_or_else(|| {
            Error::Protocol(format!(
                "an update names table \"{table}\", which is not monitored"
            ))
        })?;
        let ts = schema
            .table(table)
            .ok_or_else(|| Error::unknown_table(&schema.name, table))?;
        Ok((ts, cols))
    }

    /// Parse a full row as sent in `initial`/`insert`/`new`, filling in
    /// defaults for monitored columns the server omitted.
    fn parse_row(&self, table: &str, v: &Value, fill_defaults: bool) -> Result<Row> {
        let (ts, cols) = self.table_schema(table)?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Protocol(format!("row of {table} is not an object: {v}")))?;
        let mut row = Row::new();
        for (c, val) in obj {
            let ty = ts.column_type(c).ok_or_else(|| {
                Error::Protocol(format!("update for {table} has unknown column \"{c}\""))
            })?;
            let d = Datum::diff_from_json(val, ty)
                .map_err(|e| Error::Protocol(format!("column {table}.{c}: {e}")))?;
            row.insert(c.clone(), d);
        }
        if fill_defaults {
            for c in cols {
                if !row.contains_key(c) {
                    if let Some(ty) = ts.column_type(c) {
                        row.insert(c.clone(), ty.default_datum());
                    }
                }
            }
        }
        Ok(row)
    }

    fn apply_diff(&self, table: &str, row: &mut Row, diff: &Value) -> Result<()> {
        let (ts, _) = self.table_schema(table)?;
        let obj = diff.as_object().ok_or_else(|| {
            Error::Protocol(format!("modify of {table} is not an object: {diff}"))
        })?;
        for (c, val) in obj {
            let ty = ts.column_type(c).ok_or_else(|| {
                Error::Protocol(format!("modify for {table} has unknown column \"{c}\""))
            })?;
            let d = Datum::diff_from_json(val, ty)
                .map_err(|e| Error::Protocol(format!("diff of {table}.{c}: {e}")))?;
            let cur = row.entry(c.clone()).or_insert_with(|| ty.default_datum());
            cur.apply_diff(&d, ty)
                .map_err(|e| Error::Protocol(format!("diff of {table}.{c}: {e}")))?;
        }
        Ok(())
    }

    /// Apply `<table-updates2>` (from `update2`, `update3` or a
    /// `monitor_cond[_since]` reply). Returns the changes made.
    pub fn apply_updates2(&mut self, updates: &Value) -> Result<Vec<RowChange>> {
        self.apply_with(updates, |this, table, uuid, upd, cur| {
            let obj = upd.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
                Error::Protocol(format!("row update for {table} {uuid} is malformed: {upd}"))
            })?;
            let Some((kind, body)) = obj.iter().next() else {
                return Err(Error::Protocol(format!(
                    "empty row update for {table} {uuid}"
                )));
            };
            match (kind.as_str(), cur) {
                ("initial" | "insert", _) => Ok(Some(this.parse_row(table, body, true)?)),
                ("modify", Some(old)) => {
                    let mut new = old.clone();
                    this.apply_diff(table, &mut new, body)?;
                    Ok(Some(new))
                }
                ("modify", None) => Err(Error::Protocol(format!(
                    "modify for unknown row {uuid} of {table}"
                ))),
                ("delete", Some(_)) => Ok(None),
                ("delete", None) => Err(Error::Protocol(format!(
                    "delete for unknown row {uuid} of {table}"
                ))),
                (other, _) => Err(Error::Protocol(format!(
                    "unknown row update kind \"{other}\" for {table} {uuid}"
                ))),
            }
        })
    }

    /// Apply RFC 7047 `<table-updates>` (from `update` or a `monitor`
    /// reply). Returns the changes made.
    pub fn apply_updates1(&mut self, updates: &Value) -> Result<Vec<RowChange>> {
        self.apply_with(updates, |this, table, uuid, upd, cur| {
            match (upd.get("old"), upd.get("new"), cur) {
                (_, Some(new), Some(old)) => {
                    // "new" holds every monitored column; overlay to be safe.
                    let mut row = old.clone();
                    row.extend(this.parse_row(table, new, false)?);
                    Ok(Some(row))
                }
                (_, Some(new), None) => Ok(Some(this.parse_row(table, new, true)?)),
                (Some(_), None, Some(_)) => Ok(None),
                (Some(_), None, None) => Err(Error::Protocol(format!(
                    "delete for unknown row {uuid} of {table}"
                ))),
                (None, None, _) => Err(Error::Protocol(format!(
                    "row update for {table} {uuid} has neither old nor new"
                ))),
            }
        })
    }

    /// Shared driver: compute every row's new state against the current
    /// replica first, then commit them all, so errors change nothing.
    fn apply_with(
        &mut self,
        updates: &Value,
        row_update: impl Fn(&Self, &str, Uuid, &Value, Option<&Row>) -> Result<Option<Row>>,
    ) -> Result<Vec<RowChange>> {
        let tables = updates.as_object().ok_or_else(|| {
            Error::Protocol(format!("table updates must be an object: {updates}"))
        })?;
        let mut planned = Vec::new();
        for (table, rows) in tables {
            let rows = rows.as_object().ok_or_else(|| {
                Error::Protocol(format!("updates for table {table} must be an object"))
            })?;
            for (uuid, upd) in rows {
                let uuid: Uuid = uuid
                    .parse()
                    .map_err(|e| Error::Protocol(format!("row key in {table}: {e}")))?;
                let cur = self.row(table, &uuid);
                let new = row_update(self, table, uuid, upd, cur)?;
                planned.push((table.clone(), uuid, new));
            }
        }
        Ok(self.commit_planned(planned))
    }

    /// Applies rows planned against the current contents (all checked):
    /// the changes they make.
    fn commit_planned(&mut self, planned: Vec<(String, Uuid, Option<Row>)>) -> Vec<RowChange> {
        let mut changes = Vec::with_capacity(planned.len());
        for (table, uuid, new) in planned {
            if !self.tables.contains_key(&table) {
                self.tables.insert(table.clone(), BTreeMap::new());
            }
            let Some(rows) = self.tables.get_mut(&table) else {
                continue;
            };
            let new = new.map(Arc::new);
            let old = match &new {
                Some(n) => rows.insert(uuid, Arc::clone(n)),
                None => rows.remove(&uuid),
            };
            let kind = match (&old, &new) {
                (None, Some(_)) => ChangeKind::Insert,
                (Some(_), Some(_)) => ChangeKind::Modify,
                (Some(_), None) => ChangeKind::Delete,
                (None, None) => continue,
            };
            if kind == ChangeKind::Modify && old == new {
                continue;
            }
            changes.push(RowChange {
                table,
                uuid,
                kind,
                old,
                new,
            });
        }
        changes
    }

    /// [`Replica::apply_updates2`] of `<table-updates2>` given as JSON
    /// text: the rows are parsed straight into typed values (serde
    /// visitors, [`ovsdb_core::datum_de`]) without a `Value` tree of the
    /// update. The same changes in the same order; on anything the visitors
    /// do not take (a malformed update among them) the text is decoded and
    /// applied as a `Value`, which gives the error.
    pub fn apply_updates2_text(&mut self, text: &str) -> Result<Vec<RowChange>> {
        let mut planned = Vec::new();
        let mut de = serde_json::Deserializer::from_str(text);
        let fast = TableUpdatesSeed {
            replica: self,
            planned: &mut planned,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .is_ok();
        // The `Value` path goes through tables and rows in sorted order
        // (and keeps the last of repeated keys): the same order here, and
        // repeated keys go that way.
        planned.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let repeated = planned
            .windows(2)
            .any(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1);
        if fast && !repeated {
            return Ok(self.commit_planned(planned));
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Protocol(format!("table updates are not valid JSON: {e}")))?;
        self.apply_updates2(&v)
    }

    /// Replace the contents with a full dump (`<table-updates2>` of
    /// `initial` rows, or `<table-updates>` when `update1` is true) and
    /// return the difference from the previous contents, so a client that
    /// had to resynchronise still sees deletions that happened meanwhile.
    pub fn replace_with_dump(&mut self, dump: &Value, update1: bool) -> Result<Vec<RowChange>> {
        let mut fresh = Replica {
            schema: self.schema.clone(),
            columns: self.columns.clone(),
            tables: self
                .columns
                .keys()
                .map(|t| (t.clone(), BTreeMap::new()))
                .collect(),
        };
        if update1 {
            fresh.apply_updates1(dump)?;
        } else {
            fresh.apply_updates2(dump)?;
        }
        let mut changes = Vec::new();
        for (table, new_rows) in &fresh.tables {
            let empty = BTreeMap::new();
            let old_rows = self.tables.get(table).unwrap_or(&empty);
            for (uuid, old) in old_rows {
                match new_rows.get(uuid) {
                    None => changes.push(RowChange {
                        table: table.clone(),
                        uuid: *uuid,
                        kind: ChangeKind::Delete,
                        old: Some(old.clone()),
                        new: None,
                    }),
                    Some(new) if new != old => changes.push(RowChange {
                        table: table.clone(),
                        uuid: *uuid,
                        kind: ChangeKind::Modify,
                        old: Some(old.clone()),
                        new: Some(new.clone()),
                    }),
                    Some(_) => {}
                }
            }
            for (uuid, new) in new_rows {
                if !old_rows.contains_key(uuid) {
                    changes.push(RowChange {
                        table: table.clone(),
                        uuid: *uuid,
                        kind: ChangeKind::Insert,
                        old: None,
                        new: Some(new.clone()),
                    });
                }
            }
        }
        self.tables = fresh.tables;
        Ok(changes)
    }
}

/// `<table-updates2>` text: each row's new state planned against the
/// replica (as `apply_updates2` plans it). Fails (and the caller takes
/// the `Value` path) on anything unexpected.
struct TableUpdatesSeed<'a> {
    replica: &'a Replica,
    planned: &'a mut Vec<(String, Uuid, Option<Row>)>,
}

fn defer<E: de::Error>() -> E {
    E::custom(datum_de::NOT_FAST)
}

impl<'de> DeserializeSeed<'de> for TableUpdatesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TableUpdatesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("table updates")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(table) = map.next_key::<String>()? {
            let (ts, cols) = self.replica.table_schema(&table).map_err(|_| defer())?;
            map.next_value_seed(RowUpdatesSeed {
                replica: self.replica,
                table: &table,
                ts,
                cols,
                planned: &mut *self.planned,
            })?;
        }
        Ok(())
    }
}

/// One table's `{uuid: row-update2}`.
struct RowUpdatesSeed<'a> {
    replica: &'a Replica,
    table: &'a str,
    ts: &'a TableSchema,
    cols: &'a [String],
    planned: &'a mut Vec<(String, Uuid, Option<Row>)>,
}

impl<'de> DeserializeSeed<'de> for RowUpdatesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowUpdatesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("row updates")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let uuid: Uuid = key.parse().map_err(|_| defer())?;
            let cur = self.replica.row(self.table, &uuid);
            let new = map.next_value_seed(RowUpdateSeed {
                ts: self.ts,
                cols: self.cols,
                cur,
            })?;
            self.planned.push((self.table.to_owned(), uuid, new));
        }
        Ok(())
    }
}

/// One `{"initial"|"insert"|"modify"|"delete": …}`: the row after it.
struct RowUpdateSeed<'a> {
    ts: &'a TableSchema,
    cols: &'a [String],
    cur: Option<&'a Row>,
}

impl<'de> DeserializeSeed<'de> for RowUpdateSeed<'_> {
    type Value = Option<Row>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowUpdateSeed<'_> {
    type Value = Option<Row>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a row update")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let kind: String = map.next_key()?.ok_or_else(defer)?;
        let new = match (kind.as_str(), self.cur) {
            ("initial" | "insert", _) => Some(map.next_value_seed(RowTextSeed {
                ts: self.ts,
                cols: self.cols,
                base: None,
            })?),
            ("modify", Some(old)) => Some(map.next_value_seed(RowTextSeed {
                ts: self.ts,
                cols: self.cols,
                base: Some(old.clone()),
            })?),
            ("delete", Some(_)) => {
                map.next_value::<IgnoredAny>()?;
                None
            }
            _ => return Err(defer()),
        };
        if map.next_key::<IgnoredAny>()?.is_some() {
            return Err(defer());
        }
        Ok(new)
    }
}

/// A row's columns: a whole row with defaults filled in (`base` none), or
/// a modify's diffs applied to `base`.
struct RowTextSeed<'a> {
    ts: &'a TableSchema,
    cols: &'a [String],
    base: Option<Row>,
}

impl<'de> DeserializeSeed<'de> for RowTextSeed<'_> {
    type Value = Row;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Row, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowTextSeed<'_> {
    type Value = Row;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a row")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Row, A::Error> {
        let modify = self.base.is_some();
        let mut row = self.base.unwrap_or_default();
        let mut seen: Vec<String> = Vec::new();
        while let Some(c) = map.next_key::<String>()? {
            let ty = self.ts.column_type(&c).ok_or_else(defer)?;
            // As `Datum::diff_from_json`: sizes checked only for scalars.
            let d = map.next_value_seed(datum_de::TypedDatumSeed {
                ty,
                symtab: None,
                check_size: !ty.is_composite(),
            })?;
            if modify {
                // A repeated column would be applied twice here, once there.
                if seen.contains(&c) {
                    return Err(defer());
                }
                seen.push(c.clone());
                let cur = row.entry(c).or_insert_with(|| ty.default_datum());
                cur.apply_diff(&d, ty).map_err(|_| defer())?;
            } else {
                row.insert(c, d);
            }
        }
        if !modify {
            for c in self.cols {
                if !row.contains_key(c) {
                    if let Some(ty) = self.ts.column_type(c) {
                        row.insert(c.clone(), ty.default_datum());
                    }
                }
            }
        }
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica() -> Replica {
        let schema = Schema::from_json(&json!({"name": "D", "tables": {"T": {"columns": {
            "name": {"type": "string"},
            "n": {"type": "integer"},
            "tags": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
            "ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
            "opt": {"type": {"key": "string", "min": 0, "max": 1}}
        }}}}))
        .unwrap();
        Replica::new(Arc::new(schema), &BTreeMap::from([("T".to_string(), None)])).unwrap()
    }

    const U1: &str = "11111111-1111-1111-1111-111111111111";
    const U2: &str = "22222222-2222-2222-2222-222222222222";

    #[test]
    fn update2_insert_fills_defaults_then_modify_and_delete() {
        let mut r = replica();
        let u1: Uuid = U1.parse().unwrap();
        let ch = r
            .apply_updates2(
                &json!({"T": {U1: {"insert": {"name": "a", "tags": ["set", ["x", "y"]]}}}}),
            )
            .unwrap();
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].kind, ChangeKind::Insert);
        let row = r.row("T", &u1).unwrap();
        assert_eq!(
            row["n"],
            Datum::from(0i64),
            "omitted scalar gets its default"
        );
        assert_eq!(row["ids"], Datum::empty_map());
        assert_eq!(row["opt"], Datum::empty_set());

        let ch = r
            .apply_updates2(&json!({"T": {U1: {"modify": {
                "n": 5, "tags": ["set", ["y", "z"]], "ids": ["map", [["k", "v"]]], "opt": "o"}}}}))
            .unwrap();
        assert_eq!(ch[0].kind, ChangeKind::Modify);
        assert_eq!(ch[0].old.as_ref().unwrap()["n"], Datum::from(0i64));
        let row = r.row("T", &u1).unwrap();
        assert_eq!(row["n"], Datum::from(5i64));
        assert_eq!(row["tags"], Datum::set(["x", "z"]));
        assert_eq!(row["ids"], Datum::map([("k", "v")]));
        assert_eq!(row["opt"], Datum::from("o"));
        assert_eq!(
            r.find("T", "name", &Datum::from("a")).map(|(u, _)| u),
            Some(u1)
        );

        let ch = r
            .apply_updates2(&json!({"T": {U1: {"delete": null}}}))
            .unwrap();
        assert_eq!(ch[0].kind, ChangeKind::Delete);
        assert_eq!(r.len("T"), 0);
    }

    #[test]
    fn bad_updates_leave_the_replica_unchanged() {
        let mut r = replica();
        r.apply_updates2(&json!({"T": {U1: {"insert": {"name": "a"}}}}))
            .unwrap();
        let before = r.table("T").cloned();
        for bad in [
            json!({"T": {U1: {"modify": {"n": 1}}, U2: {"modify": {"n": 2}}}}),
            json!({"T": {U1: {"delete": null}, U2: {"delete": null}}}),
            json!({"T": {U1: {"modify": {"nope": 1}}}}),
            json!({"T": {U1: {"modify": {"n": "str"}}}}),
            json!({"T": {U1: {"frobnicate": {}}}}),
            json!({"T": {"not-a-uuid": {"insert": {}}}}),
            json!({"Other": {U2: {"insert": {}}}}),
            json!([1, 2]),
        ] {
            assert!(r.apply_updates2(&bad).is_err(), "{bad} should be rejected");
            assert_eq!(
                r.table("T").cloned(),
                before,
                "{bad} must not change the replica"
            );
        }
    }

    #[test]
    fn update1_semantics() {
        let mut r = replica();
        let u1: Uuid = U1.parse().unwrap();
        r.apply_updates1(&json!({"T": {U1: {"new": {"name": "a", "n": 1}}}}))
            .unwrap();
        let ch = r
            .apply_updates1(&json!({"T": {U1: {"old": {"n": 1}, "new": {"name": "a", "n": 2}}}}))
            .unwrap();
        assert_eq!(ch[0].kind, ChangeKind::Modify);
        assert_eq!(r.row("T", &u1).unwrap()["n"], Datum::from(2i64));
        let ch = r
            .apply_updates1(&json!({"T": {U1: {"old": {"name": "a"}}}}))
            .unwrap();
        assert_eq!(ch[0].kind, ChangeKind::Delete);
        assert!(r.is_empty());
    }

    #[test]
    fn dump_reports_the_difference() {
        let mut r = replica();
        r.apply_updates2(&json!({"T": {
            U1: {"insert": {"name": "gone"}},
            U2: {"insert": {"name": "stays", "n": 1}}}}))
            .unwrap();
        let u3 = "33333333-3333-3333-3333-333333333333";
        let ch = r
            .replace_with_dump(
                &json!({"T": {U2: {"initial": {"name": "stays", "n": 2}}, u3: {"initial": {"name": "new"}}}}),
                false,
            )
            .unwrap();
        let kinds: Vec<_> = ch.iter().map(|c| (c.uuid.to_string(), c.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (U1.to_string(), ChangeKind::Delete),
                (U2.to_string(), ChangeKind::Modify),
                (u3.to_string(), ChangeKind::Insert)
            ]
        );
        assert_eq!(r.len("T"), 2);
    }

    /// The text path and the `Value` path on the same replica state and
    /// update: the same result (changes, or an error) and the same rows.
    fn both_paths(setup: &Value, update: &Value) {
        let (mut a, mut b) = (replica(), replica());
        a.apply_updates2(setup).unwrap();
        b.apply_updates2(setup).unwrap();
        let via_value = a.apply_updates2(update);
        let via_text = b.apply_updates2_text(&update.to_string());
        match (&via_value, &via_text) {
            (Ok(x), Ok(y)) => assert_eq!(x, y, "{update}"),
            (Err(x), Err(y)) => assert_eq!(x.to_string(), y.to_string(), "{update}"),
            _ => panic!("{update}: {via_value:?} vs {via_text:?}"),
        }
        assert_eq!(a.table("T"), b.table("T"), "{update}");
    }

    #[test]
    fn text_updates_are_applied_as_values_are() {
        let setup = json!({"T": {U1: {"insert": {"name": "a", "n": 1, "tags": ["set", ["x"]]}}}});
        let u3 = "33333333-3333-3333-3333-333333333333";
        let updates = [
            json!({"T": {U2: {"insert": {"name": "b", "tags": ["set", ["x", "y"]], "ids": ["map", [["k", "v"]]], "opt": ["set", []]}}}}),
            json!({"T": {u3: {"initial": {"name": "c"}}, U2: {"insert": {"n": -3}}}}),
            json!({"T": {U1: {"modify": {"n": 5, "tags": ["set", ["x", "z"]], "ids": ["map", [["a", "b"]]]}}}}),
            json!({"T": {U1: {"modify": {"opt": "o"}}}}),
            json!({"T": {U1: {"delete": null}}}),
            json!({"T": {U1: {"delete": null}, U2: {"insert": {}}}}),
            json!({}),
            json!({"T": {}}),
            // Each of these is refused, with the same sentence either way.
            json!({"T": {U2: {"modify": {"n": 1}}}}),
            json!({"T": {U2: {"delete": null}}}),
            json!({"T": {U2: {"insert": {"nope": 1}}}}),
            json!({"T": {U2: {"insert": {"n": "one"}}}}),
            json!({"T": {U2: {"insert": {"n": 1.5}}}}),
            json!({"T": {U2: {"insert": {"name": "a"}, "modify": {}}}}),
            json!({"T": {U2: {"upsert": {}}}}),
            json!({"T": {"not-a-uuid": {"insert": {}}}}),
            json!({"Other": {U2: {"insert": {}}}}),
            json!({"T": {U1: {"modify": {"tags": ["set", ["x"]]}}, U2: {"insert": {"n": "bad"}}}}),
            json!({"T": []}),
            json!([]),
        ];
        for u in &updates {
            both_paths(&setup, u);
        }
        // Repeated keys: the text path leaves them to the `Value` path.
        let mut b = replica();
        b.apply_updates2(&setup).unwrap();
        let text = format!(
            r#"{{"T": {{"{U2}": {{"insert": {{"n": 1}}}}, "{U2}": {{"insert": {{"n": 2}}}}}}}}"#
        );
        let ch = b.apply_updates2_text(&text).unwrap();
        assert_eq!(ch.len(), 1);
        assert_eq!(
            b.row("T", &U2.parse().unwrap()).unwrap()["n"],
            Datum::from(2i64)
        );
    }
}
