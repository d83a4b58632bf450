//! Monitors: `monitor` (update), `monitor_cond` (update2), `monitor_cond_since`
//! (update3) — RFC 7047 §4.1.5 and ovsdb-server(7) §4.1.12–4.1.15.
//!
//! A [`Monitor`] belongs to one client session and one database.  It holds, per
//! monitored table, the selected columns, which kinds of change are reported
//! (`initial`/`insert`/`delete`/`modify`) and, for conditional monitors, a
//! [`Where`].  [`Monitor::compose`] turns a committed [`Changes`] into the
//! `<table-updates>` (v1) or `<table-updates2>` (v2/v3) object the client is sent;
//! a row that starts or stops matching the condition is reported as an insert or a
//! delete.  [`Monitor::compose_json`] writes the same object's JSON text straight
//! from the rows (byte for byte what `serde_json` gives for `compose`'s value, pinned
//! by a proptest); the server sends that.  Plain data owned by the server thread.

use crate::table::{Changes, Database, Row, RowChange};
use ovsdb_core::datum::write_json_str;
use ovsdb_core::{OvsdbError, Uuid, Where};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Notification format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `monitor` → `update`.
    V1,
    /// `monitor_cond` → `update2`.
    V2,
    /// `monitor_cond_since` → `update3`.
    V3,
}

/// Which changes a table monitor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Select {
    /// Rows present when the monitor starts.
    pub initial: bool,
    /// Inserted rows.
    pub insert: bool,
    /// Deleted rows.
    pub delete: bool,
    /// Modified rows.
    pub modify: bool,
}

/// The monitor of one table.
#[derive(Debug, Clone)]
pub struct TableMonitor {
    /// Table index.
    pub table: usize,
    /// Column indexes reported.
    pub columns: Vec<usize>,
    /// Change kinds reported.
    pub select: Select,
    /// Whether the implicit `_version` column was requested.
    pub version_column: bool,
    /// Row filter (empty: all rows).
    pub condition: Where,
}

/// One client monitor.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// Database name.
    pub db: String,
    /// Client-chosen monitor id (`<json-value>`).
    pub id: Value,
    /// Notification format.
    pub version: Version,
    /// Per-table monitors.
    pub tables: Vec<TableMonitor>,
}

fn parse_select(v: Option<&Value>) -> Result<Select, OvsdbError> {
    let mut s = Select {
        initial: true,
        insert: true,
        delete: true,
        modify: true,
    };
    let Some(v) = v else { return Ok(s) };
    let o = v
        .as_object()
        .ok_or_else(|| OvsdbError::syntax("\"select\" must be an object"))?;
    for (k, b) in o {
        let b = b.as_bool().ok_or_else(|| {
            OvsdbError::syntax(format!("\"select\" member {k} must be a boolean"))
        })?;
        match k.as_str() {
            "initial" => s.initial = b,
            "insert" => s.insert = b,
            "delete" => s.delete = b,
            "modify" => s.modify = b,
            _ => return Err(OvsdbError::syntax(format!("unknown \"select\" member {k}"))),
        }
    }
    Ok(s)
}

impl Monitor {
    /// Parses `<monitor-requests>` / `<monitor-cond-requests>`.
    pub fn parse(
        db: &Database,
        db_name: &str,
        id: Value,
        version: Version,
        requests: &Value,
    ) -> Result<Self, OvsdbError> {
        let o = requests.as_object().ok_or_else(|| {
            OvsdbError::syntax("monitor requests must be an object keyed by table name")
        })?;
        let mut tables = Vec::new();
        for (tname, req) in o {
            let (ti, ts) = db
                .schema
                .table_with_index(tname)
                .ok_or_else(|| OvsdbError::syntax(format!("no table named {tname}")))?;
            let reqs: Vec<&Value> = match req {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            let mut tm = TableMonitor {
                table: ti,
                columns: Vec::new(),
                select: Select {
                    initial: false,
                    insert: false,
                    delete: false,
                    modify: false,
                },
                condition: Where::default(),
                version_column: false,
            };
            for r in reqs {
                let ro = r.as_object().ok_or_else(|| {
                    OvsdbError::syntax(format!("monitor request for {tname} must be an object"))
                })?;
                match ro.get("columns") {
                    None => tm.columns.extend(0..ts.columns.len()),
                    Some(cols) => {
                        let arr = cols
                            .as_array()
                            .ok_or_else(|| OvsdbError::syntax("\"columns\" must be an array"))?;
                        for c in arr {
                            let n = c.as_str().unwrap_or_default();
                            match ts.column(n) {
                                Some(i) => tm.columns.push(i),
                                None if n == "_version" => tm.version_column = true,
                                None if n == "_uuid" => {}
                                None => {
                                    return Err(OvsdbError::syntax(format!(
                                        "{c} is not a valid column name"
                                    )))
                                }
                            }
                        }
                    }
                }
                let s = parse_select(ro.get("select"))?;
                tm.select.initial |= s.initial;
                tm.select.insert |= s.insert;
                tm.select.delete |= s.delete;
                tm.select.modify |= s.modify;
                if let Some(w) = ro.get("where") {
                    if version == Version::V1 {
                        return Err(OvsdbError::syntax(
                            "\"where\" is only allowed in monitor_cond requests",
                        ));
                    }
                    tm.condition = Where::from_json(w, ts, None, true)?;
                }
            }
            tm.columns.sort_unstable();
            tm.columns.dedup();
            tables.push(tm);
        }
        Ok(Self {
            db: db_name.to_owned(),
            id,
            version,
            tables,
        })
    }

    /// Replaces conditions (`monitor_cond_change`); returns the updates that bring the
    /// client from the old to the new condition.
    pub fn change_conditions(
        &mut self,
        db: &Database,
        requests: &Value,
    ) -> Result<Value, OvsdbError> {
        let o = requests
            .as_object()
            .ok_or_else(|| OvsdbError::syntax("condition change requests must be an object"))?;
        let mut new_conds = Vec::new();
        for (tname, req) in o {
            let (ti, ts) = db
                .schema
                .table_with_index(tname)
                .ok_or_else(|| OvsdbError::syntax(format!("no table named {tname}")))?;
            if !self.tables.iter().any(|t| t.table == ti) {
                return Err(OvsdbError::syntax(format!(
                    "table {tname} is not monitored"
                )));
            }
            let reqs: Vec<&Value> = match req {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for r in reqs {
                if let Some(w) = r.get("where") {
                    new_conds.push((ti, Where::from_json(w, ts, None, true)?));
                }
            }
        }
        let mut out = Map::new();
        for (ti, cond) in new_conds {
            let Some(k) = self.tables.iter().position(|t| t.table == ti) else {
                continue;
            };
            let ts = &db.schema.tables[ti];
            let mut rows = Map::new();
            for (u, r) in &db.tables[ti].rows {
                let tm = &self.tables[k];
                let was = tm.condition.matches(*u, r.version, &r.data);
                let is = cond.matches(*u, r.version, &r.data);
                let v = match (was, is) {
                    (false, true) => json_obj("insert", self.row_json(tm, ts, r, true)),
                    (true, false) => json_obj("delete", Value::Null),
                    _ => continue,
                };
                rows.insert(u.to_string(), v);
            }
            if !rows.is_empty() {
                out.insert(ts.name.clone(), Value::Object(rows));
            }
            self.tables[k].condition = cond;
        }
        Ok(Value::Object(out))
    }

    /// The initial contents (rows matching the conditions of tables with `initial`).
    pub fn initial(&self, db: &Database) -> Value {
        let mut out = Map::new();
        for tm in &self.tables {
            if !tm.select.initial {
                continue;
            }
            let ts = &db.schema.tables[tm.table];
            let mut rows = Map::new();
            for (u, r) in &db.tables[tm.table].rows {
                if tm.condition.matches(*u, r.version, &r.data) {
                    let body = self.row_json(tm, ts, r, true);
                    let v = match self.version {
                        Version::V1 => json_obj("new", body),
                        _ => json_obj("initial", body),
                    };
                    rows.insert(u.to_string(), v);
                }
            }
            if !rows.is_empty() {
                out.insert(ts.name.clone(), Value::Object(rows));
            }
        }
        Value::Object(out)
    }

    fn row_json(
        &self,
        tm: &TableMonitor,
        ts: &ovsdb_core::TableSchema,
        r: &Row,
        insert: bool,
    ) -> Value {
        let mut o = Map::new();
        for &c in &tm.columns {
            let col = &ts.columns[c];
            if insert && self.version != Version::V1 && col.ty.is_default(&r.data[c]) {
                continue;
            }
            o.insert(col.name.clone(), r.data[c].to_json());
        }
        if tm.version_column {
            o.insert(
                "_version".into(),
                ovsdb_core::Atom::Uuid(r.version).to_json(),
            );
        }
        Value::Object(o)
    }

    /// The update of one changed row for table monitor `tm`, or None when the
    /// monitor does not report it.
    fn row_update(
        &self,
        tm: &TableMonitor,
        ts: &ovsdb_core::TableSchema,
        ch: &RowChange,
    ) -> Option<Value> {
        let old_m = ch
            .old
            .as_ref()
            .is_some_and(|r| tm.condition.matches(ch.uuid, r.version, &r.data));
        let new_m = ch
            .new
            .as_ref()
            .is_some_and(|r| tm.condition.matches(ch.uuid, r.version, &r.data));
        let (sel_ins, sel_del) = (tm.select.insert, tm.select.delete);
        let v = match (old_m, new_m, &ch.old, &ch.new) {
            (false, true, _, Some(new)) if sel_ins => {
                let body = self.row_json(tm, ts, new, true);
                match self.version {
                    Version::V1 => json_obj("new", body),
                    _ => json_obj("insert", body),
                }
            }
            (true, false, Some(old), _) if sel_del => match self.version {
                Version::V1 => json_obj("old", self.row_json(tm, ts, old, false)),
                _ => json_obj("delete", Value::Null),
            },
            (true, true, Some(old), Some(new)) if tm.select.modify => {
                let changed: Vec<usize> = tm
                    .columns
                    .iter()
                    .copied()
                    .filter(|&c| old.data[c] != new.data[c])
                    .collect();
                if changed.is_empty() {
                    return None;
                }
                let version = tm.version_column.then(|| {
                    (
                        ovsdb_core::Atom::Uuid(old.version),
                        ovsdb_core::Atom::Uuid(new.version),
                    )
                });
                match self.version {
                    Version::V1 => {
                        let mut o = Map::new();
                        for &c in &changed {
                            o.insert(ts.columns[c].name.clone(), old.data[c].to_json());
                        }
                        if let Some((ov, _)) = &version {
                            o.insert("_version".into(), ov.to_json());
                        }
                        let mut both = Map::new();
                        both.insert("old".into(), Value::Object(o));
                        both.insert("new".into(), self.row_json(tm, ts, new, false));
                        Value::Object(both)
                    }
                    _ => {
                        let mut o = Map::new();
                        for &c in &changed {
                            let ty = &ts.columns[c].ty;
                            o.insert(
                                ts.columns[c].name.clone(),
                                ovsdb_core::Datum::diff(&old.data[c], &new.data[c], ty).to_json(),
                            );
                        }
                        if let Some((_, nv)) = &version {
                            o.insert("_version".into(), nv.to_json());
                        }
                        json_obj("modify", Value::Object(o))
                    }
                }
            }
            _ => return None,
        };
        Some(v)
    }

    /// The changes of `changes` for table monitor `tm`'s table.
    fn table_changes<'c>(tm: &TableMonitor, changes: &'c Changes) -> &'c [RowChange] {
        let lo = changes.rows.partition_point(|c| c.table < tm.table);
        let n = changes.rows[lo..].partition_point(|c| c.table == tm.table);
        &changes.rows[lo..lo + n]
    }

    /// The table-updates for committed changes; an empty object means "nothing to send".
    pub fn compose(&self, db: &Database, changes: &Changes) -> Value {
        let mut out = Map::new();
        for tm in &self.tables {
            let ts = &db.schema.tables[tm.table];
            let mut rows = Map::new();
            for ch in Self::table_changes(tm, changes) {
                if let Some(v) = self.row_update(tm, ts, ch) {
                    rows.insert(ch.uuid.to_string(), v);
                }
            }
            if !rows.is_empty() {
                out.insert(ts.name.clone(), Value::Object(rows));
            }
        }
        Value::Object(out)
    }

    /// The JSON text of [`Monitor::compose`]'s table-updates: the same bytes
    /// `serde_json` writes for that object, written straight from the rows
    /// (a large transaction's update is tens of megabytes, and building it as
    /// `Value`s first cost more than writing it), or None when there is
    /// nothing to send.
    pub fn compose_json(&self, db: &Database, changes: &Changes) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.write_update(db, changes, &mut out).then_some(out)
    }

    /// Appends the text of [`Monitor::compose_json`] to `out` (where the
    /// notification that carries it is being written: a large update is
    /// tens of megabytes, not copied again); false, with `out` as it was,
    /// when there is nothing to report.
    pub fn write_update(&self, db: &Database, changes: &Changes, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let mut any_table = false;
        for tm in &self.tables {
            let rows = Self::table_changes(tm, changes);
            if rows.is_empty() {
                continue;
            }
            let ts = &db.schema.tables[tm.table];
            let keys = key_order(tm, ts);
            if out.len() == start {
                out.reserve(200 * changes.rows.len() + 64);
            }
            let mut any_row = false;
            for ch in rows {
                let mark = out.len();
                if any_row {
                    out.push(b',');
                } else {
                    out.push(if any_table { b',' } else { b'{' });
                    write_json_str(out, &ts.name);
                    out.extend_from_slice(b":{");
                }
                out.push(b'"');
                ch.uuid.write_text(out);
                out.extend_from_slice(b"\":");
                if self.write_row_update(tm, ts, &keys, ch, out) {
                    any_table = true;
                    any_row = true;
                } else {
                    out.truncate(mark);
                }
            }
            if any_row {
                out.push(b'}');
            }
        }
        if !any_table {
            out.truncate(start);
            return false;
        }
        out.push(b'}');
        true
    }

    /// Appends the JSON text of [`Monitor::row_update`]'s value for `ch` (the
    /// same bytes) and returns true, or returns false, leaving `out` as it
    /// may be, when the monitor does not report the change.
    fn write_row_update(
        &self,
        tm: &TableMonitor,
        ts: &ovsdb_core::TableSchema,
        keys: &[(Vec<u8>, Option<usize>)],
        ch: &RowChange,
        out: &mut Vec<u8>,
    ) -> bool {
        let old_m = ch
            .old
            .as_ref()
            .is_some_and(|r| tm.condition.matches(ch.uuid, r.version, &r.data));
        let new_m = ch
            .new
            .as_ref()
            .is_some_and(|r| tm.condition.matches(ch.uuid, r.version, &r.data));
        let (sel_ins, sel_del) = (tm.select.insert, tm.select.delete);
        let v1 = self.version == Version::V1;
        match (old_m, new_m, &ch.old, &ch.new) {
            (false, true, _, Some(new)) if sel_ins => {
                out.extend_from_slice(if v1 { b"{\"new\":" } else { b"{\"insert\":" });
                self.write_row(ts, keys, new, true, out);
                out.push(b'}');
            }
            (true, false, Some(old), _) if sel_del => {
                if v1 {
                    out.extend_from_slice(b"{\"old\":");
                    self.write_row(ts, keys, old, false, out);
                    out.push(b'}');
                } else {
                    out.extend_from_slice(b"{\"delete\":null}");
                }
            }
            (true, true, Some(old), Some(new)) if tm.select.modify => {
                if !tm.columns.iter().any(|&c| old.data[c] != new.data[c]) {
                    return false;
                }
                // The changed columns (and `_version`) in key order.
                let changed = keys
                    .iter()
                    .filter(|(_, c)| c.is_none_or(|c| old.data[c] != new.data[c]));
                if v1 {
                    out.extend_from_slice(b"{\"new\":");
                    self.write_row(ts, keys, new, false, out);
                    out.extend_from_slice(b",\"old\":{");
                    for (i, (k, c)) in changed.enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k);
                        match c {
                            Some(c) => old.data[*c].write_json(out),
                            None => old.version.write_json(out),
                        }
                    }
                    out.extend_from_slice(b"}}");
                } else {
                    out.extend_from_slice(b"{\"modify\":{");
                    for (i, (k, c)) in changed.enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k);
                        match c {
                            Some(c) => {
                                let ty = &ts.columns[*c].ty;
                                ovsdb_core::Datum::diff(&old.data[*c], &new.data[*c], ty)
                                    .write_json(out)
                            }
                            None => new.version.write_json(out),
                        }
                    }
                    out.extend_from_slice(b"}}");
                }
            }
            _ => return false,
        }
        true
    }

    /// Appends the JSON text of [`Monitor::row_json`]'s object (`keys` from
    /// [`key_order`] for the table monitor).
    fn write_row(
        &self,
        ts: &ovsdb_core::TableSchema,
        keys: &[(Vec<u8>, Option<usize>)],
        r: &Row,
        insert: bool,
        out: &mut Vec<u8>,
    ) {
        let skip_defaults = insert && self.version != Version::V1;
        out.push(b'{');
        let mut first = true;
        for (k, c) in keys {
            if let Some(c) = *c {
                if skip_defaults && ts.columns[c].ty.is_default(&r.data[c]) {
                    continue;
                }
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(k);
            match c {
                Some(c) => r.data[*c].write_json(out),
                None => r.version.write_json(out),
            }
        }
        out.push(b'}');
    }
}

/// The members a table monitor reports, in the order a JSON object writes
/// its keys (by name): each one's `"name":` text and its column index (None
/// for `_version`).
fn key_order(tm: &TableMonitor, ts: &ovsdb_core::TableSchema) -> Vec<(Vec<u8>, Option<usize>)> {
    let mut keys: Vec<(&str, Option<usize>)> = tm
        .columns
        .iter()
        .map(|&c| (ts.columns[c].name.as_str(), Some(c)))
        .collect();
    if tm.version_column {
        keys.push(("_version", None));
    }
    keys.sort_by(|a, b| a.0.cmp(b.0));
    keys.into_iter()
        .map(|(name, c)| {
            let mut k = Vec::with_capacity(name.len() + 3);
            write_json_str(&mut k, name);
            k.push(b':');
            (k, c)
        })
        .collect()
}

fn json_obj(k: &str, v: Value) -> Value {
    let mut o = Map::new();
    o.insert(k.into(), v);
    Value::Object(o)
}

/// Merges consecutive committed changes into one (earliest old, latest new per row),
/// for `monitor_cond_since` resumption.
pub fn merge_changes<'a>(entries: impl Iterator<Item = &'a Arc<Changes>>) -> Changes {
    let mut rows: BTreeMap<(usize, Uuid), RowChange> = BTreeMap::new();
    for ch in entries {
        for rc in &ch.rows {
            rows.entry((rc.table, rc.uuid))
                .and_modify(|e| e.new = rc.new.clone())
                .or_insert_with(|| rc.clone());
        }
    }
    Changes {
        rows: rows
            .into_values()
            .filter(|c| !(c.old.is_none() && c.new.is_none()))
            .collect(),
        comment: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transaction::{execute, ExecContext, Outcome};
    use ovsdb_core::Schema;
    use serde_json::json;

    fn db() -> Database {
        Database::new(Arc::new(
            Schema::from_json_str(
                r#"{"name":"T","tables":{"A":{"columns":{"n":{"type":"integer"},
                "s":{"type":{"key":"string","min":0,"max":"unlimited"}}}}}}"#,
            )
            .unwrap(),
        ))
    }

    fn commit(d: &mut Database, ops: Value) -> Changes {
        let ctx = ExecContext {
            owns_lock: &|_| false,
            wait_expired: false,
            read_only: None,
        };
        let Outcome::Done {
            changes: Some(c), ..
        } = execute(d, ops.as_array().unwrap(), &ctx)
        else {
            panic!("transaction failed")
        };
        d.apply(&c);
        c
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x3071),
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// compose_json writes the same table-updates text as compose, for every
        /// notification format, conditions, column subsets and select flags,
        /// over random inserts, updates, mutations and deletions.
        #[test]
        fn compose_json_is_compose(
            txns in proptest::collection::vec(
                proptest::collection::vec((0u8..4, -3i64..4, -3i64..4, "[ab\"]{0,2}"), 1..5),
                1..6),
        ) {
            let mut d = db();
            let requests = [
                json!({"A": {}}),
                json!({"A": [{"where": [["n", ">", 0]]}]}),
                json!({"A": [{"columns": ["n"]}]}),
                json!({"A": [{"columns": ["s", "_version", "n"]}]}),
                json!({"A": [{"select": {"insert": false, "modify": true}, "where": [["s", "includes", "a"]]}]}),
            ];
            let mut monitors = Vec::new();
            for v in [Version::V1, Version::V2, Version::V3] {
                for (i, r) in requests.iter().enumerate() {
                    let r = if v == Version::V1 {
                        // monitor (v1) takes no conditions.
                        let mut r = r.clone();
                        if let Some(a) = r["A"].as_array_mut() {
                            for x in a {
                                x.as_object_mut().unwrap().remove("where");
                            }
                        }
                        r
                    } else {
                        r.clone()
                    };
                    monitors.push(Monitor::parse(&d, "T", json!(i), v, &r).unwrap());
                }
            }
            for ops in txns {
                let ops: Vec<Value> = ops
                    .into_iter()
                    .map(|(kind, a, b, s)| match kind {
                        0 => json!({"op":"insert","table":"A","row":{"n":a,"s":["set",[s]]}}),
                        1 => json!({"op":"update","table":"A","where":[["n","==",a]],"row":{"n":b}}),
                        2 => json!({"op":"mutate","table":"A","where":[["n","==",a]],
                                    "mutations":[["s","insert",["set",[s]]]]}),
                        _ => json!({"op":"delete","table":"A","where":[["n","==",a]]}),
                    })
                    .collect();
                let ctx = ExecContext {
                    owns_lock: &|_| false,
                    wait_expired: false,
                    read_only: None,
                };
                let Outcome::Done { changes: Some(c), .. } = execute(&d, &ops, &ctx) else {
                    continue;
                };
                d.apply(&c);
                for m in &monitors {
                    // Byte for byte what serde_json writes for compose's Value.
                    let want = m.compose(&d, &c);
                    let want = (want != json!({})).then(|| serde_json::to_string(&want).unwrap());
                    let got = m.compose_json(&d, &c).map(|b| String::from_utf8(b).unwrap());
                    proptest::prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn update2_reports_condition_transitions() {
        let mut d = db();
        let m = Monitor::parse(
            &d,
            "T",
            json!(1),
            Version::V2,
            &json!({"A": [{"where": [["n", ">", 5]]}]}),
        )
        .unwrap();
        let c = commit(&mut d, json!([{"op":"insert","table":"A","row":{"n":1}}]));
        assert_eq!(
            m.compose(&d, &c),
            json!({}),
            "non-matching insert is invisible"
        );
        let c = commit(
            &mut d,
            json!([{"op":"update","table":"A","where":[],"row":{"n":7}}]),
        );
        let u = m.compose(&d, &c);
        let (uuid, v) = u["A"].as_object().unwrap().iter().next().unwrap();
        assert_eq!(*v, json!({"insert": {"n": 7}}));
        let c = commit(
            &mut d,
            json!([{"op":"mutate","table":"A","where":[],"mutations":[["s","insert","x"]]}]),
        );
        assert_eq!(m.compose(&d, &c)["A"][uuid], json!({"modify": {"s": "x"}}));
        let c = commit(
            &mut d,
            json!([{"op":"update","table":"A","where":[],"row":{"n":2}}]),
        );
        assert_eq!(m.compose(&d, &c)["A"][uuid], json!({"delete": null}));
    }

    #[test]
    fn update1_has_old_and_new_and_cond_change_diffs() {
        let mut d = db();
        let m = Monitor::parse(
            &d,
            "T",
            json!(null),
            Version::V1,
            &json!({"A": {"columns": ["n"]}}),
        )
        .unwrap();
        commit(&mut d, json!([{"op":"insert","table":"A","row":{"n":1}}]));
        assert_eq!(m.initial(&d)["A"].as_object().unwrap().len(), 1);
        let c = commit(
            &mut d,
            json!([{"op":"update","table":"A","where":[],"row":{"n":3}}]),
        );
        let u = m.compose(&d, &c);
        let v = u["A"].as_object().unwrap().values().next().unwrap();
        assert_eq!(*v, json!({"old": {"n": 1}, "new": {"n": 3}}));
        let mut m2 = Monitor::parse(
            &d,
            "T",
            json!(2),
            Version::V2,
            &json!({"A": {"where": [false]}}),
        )
        .unwrap();
        assert_eq!(m2.initial(&d), json!({}));
        let u = m2
            .change_conditions(&d, &json!({"A": [{"where": [true]}]}))
            .unwrap();
        assert_eq!(
            u["A"].as_object().unwrap().values().next().unwrap(),
            &json!({"insert": {"n": 3}})
        );
        assert!(Monitor::parse(&d, "T", json!(3), Version::V1, &json!({"Nope": {}})).is_err());
        assert!(
            Monitor::parse(&d, "T", json!(3), Version::V1, &json!({"A": {"where": []}})).is_err()
        );
    }

    #[test]
    fn merge_keeps_earliest_old_and_latest_new() {
        let mut d = db();
        let a = Arc::new(commit(
            &mut d,
            json!([{"op":"insert","table":"A","row":{"n":1}}]),
        ));
        let b = Arc::new(commit(
            &mut d,
            json!([{"op":"update","table":"A","where":[],"row":{"n":2}}]),
        ));
        let m = merge_changes([&a, &b].into_iter());
        assert_eq!(m.rows.len(), 1);
        assert!(m.rows[0].old.is_none());
        let c = Arc::new(commit(
            &mut d,
            json!([{"op":"delete","table":"A","where":[]}]),
        ));
        assert!(merge_changes([&a, &b, &c].into_iter()).rows.is_empty());
    }
}
