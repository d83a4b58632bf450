//! Database schemas (RFC 7047 §3.2, ovsdb(5)): the `.ovsschema` JSON, parsed and
//! printed.
//!
//! Owns the parsed form of an OVSDB schema: name, optional `x.y.z` version and
//! checksum, tables, columns with their [`ColumnType`]s and mutability, `isRoot`,
//! `maxRows` and `indexes`.  Invariants after parsing: names are identifiers and no
//! user column starts with `_`; every `refTable` names a table of the schema; every
//! index names non-ephemeral columns of its table.  Columns are numbered in name order
//! and a server stores row data in that order; the implicit `_uuid` and `_version`
//! columns are not in [`TableSchema::columns`] but [`TableSchema::column_type`] knows
//! them.  As in ovsdb(5), a schema without any root table makes every table a root.
//! The original schema JSON is kept in [`Schema::json`] so that `get_schema` and a
//! server's log return exactly what the operator wrote; [`Schema::to_json`] prints the
//! parsed model.  Immutable after parsing; shared via `Arc` between threads.

use std::collections::BTreeMap;

/// Names (of tables or columns) to their positions: a hash map with a
/// fast, randomly seeded hasher (foldhash): a large transaction looks a
/// column up by name for every value it carries.
pub type NameIndex = hashbrown::HashMap<String, usize>;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value};

use crate::error::OvsdbError;
use crate::types::{AtomicType, ColumnType};

/// The schema of the `_Server` database (ovsdb-server(5)) that clients read before
/// any other.
pub const SERVER_SCHEMA: &str = r#"{"name": "_Server", "version": "1.2.0",
 "tables": {"Database": {"isRoot": true, "columns": {
   "name": {"type": "string"},
   "model": {"type": {"key": {"type": "string", "enum": ["set", ["standalone", "clustered", "relay"]]}}},
   "connected": {"type": "boolean"},
   "leader": {"type": "boolean"},
   "schema": {"type": {"key": {"type": "string"}, "min": 0, "max": 1}},
   "cid": {"type": {"key": {"type": "uuid"}, "min": 0, "max": 1}},
   "sid": {"type": {"key": {"type": "uuid"}, "min": 0, "max": 1}},
   "index": {"type": {"key": {"type": "integer"}, "min": 0, "max": 1}}}}}}"#;

/// One column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSchema {
    /// Column name.
    pub name: String,
    /// Declared type.
    pub ty: ColumnType,
    /// False when `update`/`mutate` may not change the column after insertion.
    pub mutable: bool,
    /// True when the column need not be persisted.
    pub ephemeral: bool,
}

/// One table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Table name.
    pub name: String,
    /// Columns sorted by name (excluding `_uuid` and `_version`).
    pub columns: Vec<ColumnSchema>,
    /// Column name → index into `columns`.
    pub column_index: NameIndex,
    /// Root tables keep rows that nothing references (never garbage collected).
    pub is_root: bool,
    /// Maximum number of rows, if limited.
    pub max_rows: Option<u64>,
    /// Sets of columns (indexes into `columns`) whose combined values must be unique
    /// across rows.
    pub indexes: Vec<Vec<usize>>,
}

impl TableSchema {
    /// The index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.column_index.get(name).copied()
    }

    /// A column by name (not the implicit ones).
    pub fn column_schema(&self, name: &str) -> Option<&ColumnSchema> {
        self.column(name).map(|i| &self.columns[i])
    }

    /// The type of a column, including the implicit `_uuid` and `_version`.
    pub fn column_type(&self, name: &str) -> Option<&ColumnType> {
        static UUID_COLUMN: OnceLock<ColumnType> = OnceLock::new();
        if is_implicit_column(name) {
            return Some(UUID_COLUMN.get_or_init(implicit_column_type));
        }
        self.column_schema(name).map(|c| &c.ty)
    }

    /// The column names, in column order (excluding `_uuid` and `_version`).
    pub fn column_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// The indexes as lists of column names.
    pub fn index_names(&self) -> Vec<Vec<&str>> {
        self.indexes
            .iter()
            .map(|ix| ix.iter().map(|&i| self.columns[i].name.as_str()).collect())
            .collect()
    }

    /// The schema JSON of this table.
    pub fn to_json(&self) -> Value {
        let mut cols = Map::new();
        for c in &self.columns {
            let mut o = Map::new();
            o.insert("type".into(), c.ty.to_json());
            if !c.mutable {
                o.insert("mutable".into(), json!(false));
            }
            if c.ephemeral {
                o.insert("ephemeral".into(), json!(true));
            }
            cols.insert(c.name.clone(), Value::Object(o));
        }
        let mut o = Map::new();
        o.insert("columns".into(), Value::Object(cols));
        if self.is_root {
            o.insert("isRoot".into(), json!(true));
        }
        if let Some(m) = self.max_rows {
            o.insert("maxRows".into(), json!(m));
        }
        if !self.indexes.is_empty() {
            o.insert("indexes".into(), json!(self.index_names()));
        }
        Value::Object(o)
    }
}

/// A database schema (`<database-schema>`).
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Database name, e.g. `"Sluice_Node"`.
    pub name: String,
    /// Schema version `x.y.z`, if given.
    pub version: Option<String>,
    /// Schema checksum, if given.
    pub cksum: Option<String>,
    /// Tables in name order.
    pub tables: Vec<Arc<TableSchema>>,
    /// Table name → index into `tables`.
    pub table_index: NameIndex,
    /// The schema JSON as given.
    pub json: Value,
}

fn is_id(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

impl Schema {
    /// Parses schema JSON text (an `.ovsschema` file or a `get_schema` reply).
    pub fn from_json_str(text: &str) -> Result<Self, OvsdbError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| OvsdbError::syntax(format!("schema is not valid JSON: {e}")))?;
        Self::from_json(&v)
    }

    /// Parses a schema JSON value.
    pub fn from_json(v: &Value) -> Result<Self, OvsdbError> {
        let o = v
            .as_object()
            .ok_or_else(|| OvsdbError::syntax("schema must be a JSON object"))?;
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| is_id(n))
            .ok_or_else(|| OvsdbError::syntax("schema must have a \"name\" that is an identifier"))?
            .to_owned();
        let version = match o.get("version") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .filter(|s| {
                        s.split('.').count() == 3 && s.split('.').all(|p| p.parse::<u32>().is_ok())
                    })
                    .ok_or_else(|| {
                        OvsdbError::syntax("schema \"version\" must look like \"x.y.z\"")
                    })?
                    .to_owned(),
            ),
        };
        let cksum = o.get("cksum").and_then(Value::as_str).map(str::to_owned);
        let tables_json = o
            .get("tables")
            .and_then(Value::as_object)
            .ok_or_else(|| OvsdbError::syntax("schema must have a \"tables\" object"))?;
        let sorted: BTreeMap<&String, &Value> = tables_json.iter().collect();
        let mut tables = Vec::new();
        for (tname, tv) in &sorted {
            tables.push(parse_table(tname, tv)?);
        }
        // Backward compatibility (ovsdb(5)): with no root table at all, every table is root.
        if !tables.iter().any(|t| t.is_root) {
            for t in &mut tables {
                t.is_root = true;
            }
        }
        let table_index: NameIndex = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        for t in &tables {
            for c in &t.columns {
                for b in std::iter::once(&c.ty.key).chain(c.ty.value.iter()) {
                    if let Some(r) = &b.ref_table {
                        if !table_index.contains_key(r) {
                            return Err(OvsdbError::syntax(format!(
                                "column {}.{} refers to undefined table {r}",
                                t.name, c.name
                            )));
                        }
                    }
                }
            }
        }
        Ok(Self {
            name,
            version,
            cksum,
            tables: tables.into_iter().map(Arc::new).collect(),
            table_index,
            json: v.clone(),
        })
    }

    /// The schema JSON of the parsed model (equivalent to, not necessarily the same
    /// text as, [`Schema::json`]).
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), json!(self.name));
        if let Some(v) = &self.version {
            o.insert("version".into(), json!(v));
        }
        if let Some(c) = &self.cksum {
            o.insert("cksum".into(), json!(c));
        }
        let tables: Map<String, Value> = self
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.to_json()))
            .collect();
        o.insert("tables".into(), Value::Object(tables));
        Value::Object(o)
    }

    /// Looks up a table by name.
    pub fn table(&self, name: &str) -> Option<&Arc<TableSchema>> {
        self.table_with_index(name).map(|(_, t)| t)
    }

    /// Looks up a table by name, with its index into [`Schema::tables`].
    pub fn table_with_index(&self, name: &str) -> Option<(usize, &Arc<TableSchema>)> {
        self.table_index.get(name).map(|&i| (i, &self.tables[i]))
    }

    /// The `_Server` schema.
    pub fn server_schema() -> Self {
        // The constant is valid by construction; covered by a unit test.
        Self::from_json_str(SERVER_SCHEMA)
            .unwrap_or_else(|e| panic!("built-in _Server schema is invalid: {e}"))
    }
}

fn parse_table(name: &str, v: &Value) -> Result<TableSchema, OvsdbError> {
    if !is_id(name) || name.starts_with('_') {
        return Err(OvsdbError::syntax(format!(
            "\"{name}\" is not a valid table name"
        )));
    }
    let o = v
        .as_object()
        .ok_or_else(|| OvsdbError::syntax(format!("table {name} must be a JSON object")))?;
    let cols = o.get("columns").and_then(Value::as_object).ok_or_else(|| {
        OvsdbError::syntax(format!("table {name} must have a \"columns\" object"))
    })?;
    let sorted: BTreeMap<&String, &Value> = cols.iter().collect();
    let mut columns = Vec::new();
    for (cname, cv) in sorted {
        if !is_id(cname) || cname.starts_with('_') {
            return Err(OvsdbError::syntax(format!(
                "{name}.{cname} is not a valid column name (names starting with _ are reserved)"
            )));
        }
        let co: &Map<String, Value> = cv.as_object().ok_or_else(|| {
            OvsdbError::syntax(format!("column {name}.{cname} must be a JSON object"))
        })?;
        let ty =
            ColumnType::from_json(co.get("type").ok_or_else(|| {
                OvsdbError::syntax(format!("column {name}.{cname} has no \"type\""))
            })?)
            .map_err(|e| OvsdbError::syntax(format!("column {name}.{cname}: {}", e.details())))?;
        let flag = |k: &str, d: bool| -> Result<bool, OvsdbError> {
            match co.get(k) {
                None => Ok(d),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(OvsdbError::syntax(format!(
                    "{name}.{cname}: \"{k}\" must be a boolean"
                ))),
            }
        };
        columns.push(ColumnSchema {
            name: cname.clone(),
            ty,
            mutable: flag("mutable", true)?,
            ephemeral: flag("ephemeral", false)?,
        });
    }
    let column_index: NameIndex = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    let is_root = match o.get("isRoot") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(OvsdbError::syntax(format!(
                "table {name}: \"isRoot\" must be a boolean"
            )))
        }
    };
    let max_rows = match o.get("maxRows") {
        None => None,
        Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            OvsdbError::syntax(format!(
                "table {name}: \"maxRows\" must be a positive integer"
            ))
        })?),
    };
    let mut indexes = Vec::new();
    if let Some(ix) = o.get("indexes") {
        let arr = ix.as_array().ok_or_else(|| {
            OvsdbError::syntax(format!("table {name}: \"indexes\" must be an array"))
        })?;
        for index in arr {
            let cols = index.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
                OvsdbError::syntax(format!(
                    "table {name}: each index must be a non-empty array"
                ))
            })?;
            let mut idx = Vec::new();
            for c in cols {
                let cn = c.as_str().unwrap_or_default();
                let i = column_index.get(cn).copied().ok_or_else(|| {
                    OvsdbError::syntax(format!("table {name}: index refers to unknown column {c}"))
                })?;
                if columns[i].ephemeral {
                    return Err(OvsdbError::syntax(format!(
                        "table {name}: ephemeral column {cn} may not be indexed"
                    )));
                }
                idx.push(i);
            }
            indexes.push(idx);
        }
    }
    Ok(TableSchema {
        name: name.to_owned(),
        columns,
        column_index,
        is_root,
        max_rows,
        indexes,
    })
}

/// True when `name` is one of the implicit columns every row has.
pub fn is_implicit_column(name: &str) -> bool {
    name == "_uuid" || name == "_version"
}

/// The type of the implicit `_uuid` / `_version` columns.
pub fn implicit_column_type() -> ColumnType {
    ColumnType::scalar(AtomicType::Uuid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum::{Atom, Datum};
    use crate::types::RefType;

    // From nestdb.

    #[test]
    fn server_schema_parses() {
        let s = Schema::server_schema();
        assert_eq!(s.name, "_Server");
        let t = s.table("Database").unwrap();
        assert!(t.is_root);
        assert!(t.column("schema").is_some());
    }

    #[test]
    fn no_root_tables_means_all_root_and_indexes_resolve() {
        let s = Schema::from_json_str(
            r#"{"name":"X","tables":{"A":{"columns":{"n":{"type":"integer"}},"indexes":[["n"]]}}}"#,
        )
        .unwrap();
        let a = s.table("A").unwrap();
        assert!(a.is_root);
        assert_eq!(a.indexes, vec![vec![0]]);
    }

    #[test]
    fn rejects_bad_schemas() {
        for bad in [
            "[]",
            r#"{"name":"X"}"#,
            r#"{"name":"X","tables":{"A":{"columns":{"r":{"type":{"key":{"type":"uuid","refTable":"Nope"}}}}}}}"#,
            r#"{"name":"X","tables":{"A":{"columns":{"n":{"type":"integer"}},"indexes":[["m"]]}}}"#,
            r#"{"name":"X","tables":{"A":{"columns":{"_n":{"type":"integer"}}}}}"#,
            r#"{"name":"X","version":"1.x","tables":{}}"#,
        ] {
            assert!(Schema::from_json_str(bad).is_err(), "{bad} accepted");
        }
    }

    // From nestdb-client.

    #[test]
    fn rejects_dangling_references() {
        let err = Schema::from_json(&json!({"name": "D", "tables": {"A": {"columns": {
            "r": {"type": {"key": {"type": "uuid", "refTable": "Nope"}}}}}}}))
        .unwrap_err();
        assert!(err.to_string().contains("Nope"), "{err}");
    }

    #[test]
    fn node_schema_parses() {
        let text = include_str!("../../../deploy/nestdb/sluice.ovsschema");
        let s = Schema::from_json_str(text).unwrap();
        assert_eq!(s.name, "Sluice_Node");
        assert!(s.version.is_some());
        let sp = s.table("Service_Port").unwrap();
        assert!(!sp.is_root, "Service_Port rows are owned by Service");
        let svc = s.table("Service").unwrap();
        assert_eq!(svc.index_names(), vec![vec!["namespace", "name"]]);
        let ports = &svc.column_schema("ports").unwrap().ty;
        assert_eq!(ports.key.ref_table.as_deref(), Some("Service_Port"));
        assert_eq!(ports.key.ref_type, RefType::Strong);
        let to = &svc.column_schema("affinity_timeout").unwrap().ty.key;
        assert!(to.check(&Atom::Integer(86400)).is_ok());
        assert!(to.check(&Atom::Integer(86401)).is_err());
        let nt = &s
            .table("Node_Config")
            .unwrap()
            .column_schema("node_type")
            .unwrap()
            .ty
            .key;
        assert!(nt.check(&Atom::from("BAREMETAL")).is_ok());
        assert!(s.table("Nope").is_none());
    }

    #[test]
    fn prints_what_it_parsed() {
        let text = include_str!("../../../deploy/nestdb/sluice.ovsschema");
        let s = Schema::from_json_str(text).unwrap();
        let printed = s.to_json();
        let again = Schema::from_json(&printed).unwrap();
        assert_eq!(again.tables, s.tables);
        assert_eq!((&again.version, &again.cksum), (&s.version, &s.cksum));
        let svc = s.table("Service").unwrap();
        assert_eq!(
            svc.column_type("_uuid").unwrap().key.atomic,
            AtomicType::Uuid
        );
        assert!(svc.column_names().any(|c| c == "ports"));
        assert_eq!(
            svc.column_type("ports").unwrap().default_datum(),
            Datum::empty_set()
        );
    }
}
