//! Database schemas (RFC 7047 §3.2, ovsdb(5)).
//!
//! Owns the parsed form of an OVSDB schema: tables, columns with their [`Type`]s and
//! mutability, `isRoot`, `maxRows` and `indexes`.  Columns are numbered in name order;
//! rows store their data in that order.  The original schema JSON is kept so that
//! `get_schema` and the on-disk log return exactly what the operator wrote.
//! Immutable after parsing; shared via `Arc` between threads.

use crate::error::OvsdbError;
use crate::types::{AtomicType, Type};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The schema of the `_Server` database that clients read before any other.
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
    pub ty: Type,
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
    pub column_index: HashMap<String, usize>,
    /// Root tables are never garbage collected.
    pub is_root: bool,
    /// Maximum number of rows, if limited.
    pub max_rows: Option<u64>,
    /// Sets of columns whose combined values must be unique across rows.
    pub indexes: Vec<Vec<usize>>,
}

impl TableSchema {
    /// The index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.column_index.get(name).copied()
    }
}

/// A database schema.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSchema {
    /// Database name.
    pub name: String,
    /// Schema version `x.y.z`.
    pub version: String,
    /// Optional checksum string.
    pub cksum: Option<String>,
    /// Tables in name order.
    pub tables: Vec<Arc<TableSchema>>,
    /// Table name → index into `tables`.
    pub table_index: HashMap<String, usize>,
    /// The schema JSON as given.
    pub json: Value,
}

fn is_id(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && s.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

impl DatabaseSchema {
    /// Parses schema JSON text.
    pub fn parse(text: &str) -> Result<Self, OvsdbError> {
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
            None => "0.0.0".to_owned(),
            Some(v) => v
                .as_str()
                .filter(|s| {
                    s.split('.').count() == 3 && s.split('.').all(|p| p.parse::<u32>().is_ok())
                })
                .ok_or_else(|| OvsdbError::syntax("schema \"version\" must look like \"x.y.z\""))?
                .to_owned(),
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
        let table_index: HashMap<String, usize> = tables
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

    /// Looks up a table by name.
    pub fn table(&self, name: &str) -> Option<(usize, &Arc<TableSchema>)> {
        self.table_index.get(name).map(|&i| (i, &self.tables[i]))
    }

    /// The `_Server` schema.
    pub fn server_schema() -> Self {
        // The constant is valid by construction; covered by a unit test.
        Self::parse(SERVER_SCHEMA)
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
                "{name}.{cname} is not a valid column name"
            )));
        }
        let co: &Map<String, Value> = cv.as_object().ok_or_else(|| {
            OvsdbError::syntax(format!("column {name}.{cname} must be a JSON object"))
        })?;
        let ty =
            Type::from_json(co.get("type").ok_or_else(|| {
                OvsdbError::syntax(format!("column {name}.{cname} has no \"type\""))
            })?)
            .map_err(|e| OvsdbError::syntax(format!("column {name}.{cname}: {}", e.details)))?;
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
    let column_index: HashMap<String, usize> = columns
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
pub fn implicit_column_type() -> Type {
    Type::scalar(AtomicType::Uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_schema_parses() {
        let s = DatabaseSchema::server_schema();
        assert_eq!(s.name, "_Server");
        let (_, t) = s.table("Database").unwrap();
        assert!(t.is_root);
        assert!(t.column("schema").is_some());
    }

    #[test]
    fn no_root_tables_means_all_root_and_indexes_resolve() {
        let s = DatabaseSchema::parse(
            r#"{"name":"X","tables":{"A":{"columns":{"n":{"type":"integer"}},"indexes":[["n"]]}}}"#,
        )
        .unwrap();
        let (_, a) = s.table("A").unwrap();
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
            assert!(DatabaseSchema::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
